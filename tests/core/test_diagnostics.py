"""Explained failures (omemo.diagnostics): every reason reached through the public API, with the real
backends on an in-memory network, and the documentation's table in step with the texts."""

from __future__ import annotations

import base64
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, List, Optional

import pytest

import oldmemo
import twomemo
from omemo import sce
from omemo._core.encrypt import encrypt as core_encrypt
from omemo.backend import DuplicateMessage, MessageKeyReused
from omemo.diagnostics import REASONS, Reason, explain, explain_encryption_error, format_report
from omemo.message import Message
from omemo.session_manager import DeviceListDownloadFailed, EncryptionError
from omemo.storages import MemoryStorage, SQLiteStorage
from omemo.trust import BTBVTrust
from omemo.types import OMEMOException

from .xml_network import NS2, NSL, create, device_id, network

ALICE, BOB, CAROL = "alice@example.org", "bob@example.org", "carol@example.org"
BOTH = {NS2: b"<envelope/>", NSL: b"body"}
DOCS = Path(__file__).resolve().parents[2] / "docs" / "diagnostics.md"


async def _setup() -> Any:
    net = network()
    alice, bob = await create(net, ALICE), await create(net, BOB)
    for namespace in (NS2, NSL):
        await alice.refresh_device_list(namespace, BOB)
        await bob.refresh_device_list(namespace, ALICE)
    return net, alice, bob


async def _send(net: Any, sender: Any, to: str, order: Optional[List[str]] = None) -> List[Message]:
    messages, errors = await sender.encrypt(frozenset({to}), BOTH, order or [NS2])
    assert not errors
    return list(messages)


async def _failure(manager: Any, message: Message) -> OMEMOException:
    with pytest.raises(OMEMOException) as raised:
        await manager.decrypt(message)
    return raised.value


async def test_not_for_this_device_names_who_it_was_for() -> None:
    net, alice, bob = await _setup()
    carol = await create(net, CAROL)
    (message,) = await _send(net, alice, BOB)
    diagnosis = explain(await _failure(carol, message))
    assert diagnosis.reason is Reason.NOT_FOR_THIS_DEVICE
    assert f"{await device_id(bob)} of {BOB}" in diagnosis.detail


async def test_no_session_and_unknown_pre_key() -> None:
    net, alice, bob = await _setup()
    first, second = await _send(net, alice, BOB), await _send(net, alice, BOB)  # both carry the exchange
    await bob.decrypt(first[0])  # the pre key is used (and deleted: no history sync)
    for message in net.take(ALICE, await device_id(alice)):
        await alice.decrypt(message)  # the exchange completes
    await bob.forget_device(ALICE, await device_id(alice))  # the session is lost here
    assert explain(await _failure(bob, second[0])).reason is Reason.UNKNOWN_PRE_KEY
    (later,) = await _send(net, alice, BOB)  # no key exchange any more
    assert explain(await _failure(bob, later)).reason is Reason.NO_SESSION


async def test_too_many_skipped_duplicate_and_authentication_failure() -> None:
    net, alice, bob = await _setup()
    (first,) = await _send(net, alice, BOB)
    await bob.decrypt(first)
    for message in net.take(ALICE, await device_id(alice)):
        await alice.decrypt(message)
    assert explain(await _failure(bob, first)).reason is Reason.DUPLICATE
    (tampered,) = await _send(net, alice, BOB)
    content = tampered.content
    assert isinstance(content, twomemo.twomemo.ContentImpl)
    flipped = bytes([content.ciphertext[0] ^ 1]) + content.ciphertext[1:]
    altered = tampered._replace(content=twomemo.twomemo.ContentImpl(flipped))
    assert explain(await _failure(bob, altered)).reason is Reason.AUTHENTICATION_FAILED
    for _ in range(1001):
        (last,) = await _send(net, alice, BOB)
    assert explain(await _failure(bob, last)).reason is Reason.TOO_MANY_SKIPPED


async def test_sender_distrusted_and_unknown() -> None:
    net, alice, bob = await _setup()
    (message,) = await _send(net, alice, BOB)
    (device,) = await bob.get_device_information(ALICE)
    await bob.set_trust(ALICE, device.identity_key, "DISTRUSTED")
    assert explain(await _failure(bob, message)).reason is Reason.SENDER_DISTRUSTED
    # Carol never saw Alice's device: it is not listed any more and has no bundle.
    carol = await create(net, CAROL)
    await alice.refresh_device_list(NS2, CAROL)
    (to_carol,) = await _send(net, alice, CAROL)
    net.device_lists[(NS2, ALICE)] = {}
    net.device_lists[(NSL, ALICE)] = {}
    net.bundle_xml.clear()
    assert explain(await _failure(carol, to_carol)).reason is Reason.SENDER_UNKNOWN


def _spoil(net: Any, namespace: str, jid: str, device: int, how: str) -> None:
    if how == "missing":
        del net.bundle_xml[(namespace, jid, device)]
        return
    if how == "malformed":
        net.bundle_xml[(namespace, jid, device)] = f"<bundle xmlns='{namespace}'/>".encode()
        return
    root = ET.fromstring(net.bundle_xml[(namespace, jid, device)])
    if how == "signature":
        tag = "spks" if namespace == NS2 else "signedPreKeySignature"
        (element,) = root.iter(f"{{{namespace}}}{tag}")
        data = bytearray(base64.b64decode(element.text or ""))
        data[10] ^= 1
        element.text = base64.b64encode(bytes(data)).decode()
    else:
        container = "prekeys"
        for parent in root.iter(f"{{{namespace}}}{container}"):
            for child in list(parent):
                parent.remove(child)
    net.bundle_xml[(namespace, jid, device)] = ET.tostring(root)


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("signature", Reason.BUNDLE_SIGNATURE_INVALID),
        ("pre keys", Reason.BUNDLE_WITHOUT_PRE_KEYS),
        ("missing", Reason.BUNDLE_NOT_FOUND),
        ("malformed", Reason.BUNDLE_REJECTED),
    ],
)
async def test_bad_bundles_are_explained_per_device(how: str, reason: Reason) -> None:
    net = network()
    alice, bob = await create(net, ALICE), await create(net, BOB)
    _spoil(net, NS2, BOB, await device_id(bob), how)
    for namespace in (NS2, NSL):
        await alice.refresh_device_list(namespace, BOB)
    # The device is reached in legacy; the OMEMO 2 error says why not there.
    messages, errors = await alice.encrypt(frozenset({BOB}), BOTH, [NS2, NSL])
    assert [m.namespace for m in messages] == [NSL]
    (error,) = errors
    diagnosis = explain_encryption_error(error)
    assert diagnosis.reason is reason and f"device {await device_id(bob)} of {BOB}" in diagnosis.detail


async def test_device_list_unreadable_stale_device_envelope_and_whole_account() -> None:
    net, alice, _ = await _setup()
    net.fail("download_device_list", bare_jid=CAROL)
    with pytest.raises(DeviceListDownloadFailed) as raised:
        await alice.refresh_device_list(NS2, CAROL)
    assert explain(raised.value).reason is Reason.DEVICE_LIST_UNREADABLE
    with pytest.raises(sce.SCEError) as refused:
        envelope = sce.build_envelope([], to="room@muc", from_=ALICE)
        sce.parse_envelope(envelope, expected_from=ALICE, expected_to="other@muc")
    assert explain(refused.value).reason is Reason.ENVELOPE_REFUSED
    # A stale device, and an account none of whose devices can be reached, from encrypt's results.
    for _ in range(2000):
        await alice.encrypt(frozenset({BOB}), BOTH, [NS2])
    core = alice._omemo_core
    _, errors = await core_encrypt(core, frozenset({BOB}), BOTH, [NS2], None, skip_unreachable=True)
    kinds = sorted(explain_encryption_error(e).reason.value for e in errors)
    assert kinds == [Reason.NO_ELIGIBLE_DEVICES.value, Reason.STALE_DEVICE.value]
    whole = next(e for e in errors if e.device_id == 0)
    assert explain_encryption_error(whole).detail.startswith(f"{BOB} as a whole")


def test_every_exception_maps_somewhere_and_unknown_ones_are_other() -> None:
    assert explain(RuntimeError("boom")).reason is Reason.OTHER
    assert explain(ValueError("bad element")).reason is Reason.MALFORMED
    assert set(REASONS) == set(Reason)
    error = EncryptionError(NS2, BOB, 7, ValueError("x"))
    assert explain_encryption_error(error).detail == f"device 7 of {BOB} ({NS2}): x"


def test_the_documentation_table_is_the_reasons() -> None:
    rows = [line for line in DOCS.read_text().splitlines() if line.startswith("| `")]
    documented = {}
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        documented[re.sub(r"`", "", cells[0])] = (cells[1], cells[2])
    assert documented == {reason.value: texts for reason, texts in REASONS.items()}


async def test_a_health_report_finds_each_problem_without_changing_anything() -> None:
    net = network()
    alice, bob = await create(net, ALICE), await create(net, BOB)
    second = await create(net, BOB)  # a second device of Bob whose OMEMO 2 bundle lost its pre keys
    _spoil(net, NS2, BOB, await device_id(second), "pre keys")
    for namespace in (NS2, NSL):
        await alice.refresh_device_list(namespace, BOB)
    (message,) = await _send(net, alice, BOB, [NSL])  # legacy: sessions with both devices
    first_id = await device_id(bob)
    bob_device = next(d for d in await alice.get_device_information(BOB) if d.device_id == first_id)
    sessions_before = await alice.get_sending_chain_length(bob_device)
    net.fail("download_device_list", namespace=NS2, bare_jid=BOB)
    report = await alice.get_health_report(BOB)
    assert [(e.namespace, e.readable) for e in report.device_lists] == [(NS2, False), (NSL, True)]
    assert explain(report.device_lists[0].error or RuntimeError()).reason is Reason.DEVICE_LIST_UNREADABLE
    by_id = {device.device_id: device for device in report.devices}
    first, spoiled = by_id[await device_id(bob)], by_id[await device_id(second)]
    assert dict(first.bundles) == {NS2: None, NSL: None} and dict(first.activity.unanswered) == {NSL: 1}
    problems = dict(spoiled.bundles)
    assert (
        problems[NSL] is None
        and explain(problems[NS2] or RuntimeError()).reason is Reason.BUNDLE_WITHOUT_PRE_KEYS
    )
    text = format_report(report)
    assert "NOT READABLE (device-list-unreadable)" in text and "bundle-without-pre-keys" in text
    # Nothing changed: the session is the same, and Bob still decrypts what Alice sent before.
    assert await alice.get_sending_chain_length(bob_device) == sessions_before
    plaintext, _, _ = await bob.decrypt(message)
    assert plaintext == b"body"


async def _sqlite_manager(net: Any, jid: str, storage: Any) -> Any:
    cls = net.session_manager_class(jid, BTBVTrust)
    backends = [twomemo.Twomemo(storage), oldmemo.Oldmemo(storage)]
    manager = await cls.create(backends, storage, jid, None, BTBVTrust.UNDECIDED)
    await manager.after_history_sync()
    return manager


async def _talk(net: Any, sender: Any, receiver: Any, to: str, back: str) -> List[Optional[bytes]]:
    """One message sender -> receiver (OMEMO 2), decrypted; what the sender then gets, decrypted."""
    (message,) = await _send(net, sender, to)
    plaintext, _, _ = await receiver.decrypt(message)
    for owed in net.take(back, await device_id(sender)):
        await sender.decrypt(owed)
    return [plaintext]


async def test_a_device_restored_from_an_older_backup_is_detected(tmp_path: Path) -> None:
    # Alice restores her database from a backup: her next message reuses a message key that Bob already
    # used for another message. Bob tells it from a duplicate delivery.
    net = network()
    path, backup = tmp_path / "alice.db", tmp_path / "alice-backup.db"
    bob = await create(net, BOB)
    async with SQLiteStorage(path) as storage:
        alice = await _sqlite_manager(net, ALICE, storage)
        for namespace in (NS2, NSL):
            await alice.refresh_device_list(namespace, BOB)
            await bob.refresh_device_list(namespace, ALICE)
        await _talk(net, alice, bob, BOB, ALICE)
        await _talk(net, bob, alice, ALICE, BOB)
        await alice.shutdown()
    shutil.copyfile(path, backup)
    async with SQLiteStorage(path) as storage:
        alice = await _sqlite_manager(net, ALICE, storage)
        (first,) = await _send(net, alice, BOB)
        await bob.decrypt(first)
        assert explain(await _failure(bob, first)).reason is Reason.DUPLICATE  # the same message again
        await alice.shutdown()
    shutil.copyfile(backup, path)  # the restore
    async with SQLiteStorage(path) as storage:
        alice = await _sqlite_manager(net, ALICE, storage)
        (again,) = await _send(net, alice, BOB)  # the same message key, another message
        failure = await _failure(bob, again)
        assert isinstance(failure, MessageKeyReused) and isinstance(failure, DuplicateMessage)
        diagnosis = explain(failure)
        assert diagnosis.reason is Reason.RESTORED_BACKUP and "replace_sessions" in diagnosis.advice
        await alice.shutdown()


async def test_our_own_restored_backup_shows_as_sessions_out_of_step(tmp_path: Path) -> None:
    net = network()
    path, backup = tmp_path / "bob.db", tmp_path / "bob-backup.db"
    alice = await create(net, ALICE)
    async with SQLiteStorage(path) as storage:
        bob = await _sqlite_manager(net, BOB, storage)
        for namespace in (NS2, NSL):
            await alice.refresh_device_list(namespace, BOB)
            await bob.refresh_device_list(namespace, ALICE)
        await _talk(net, alice, bob, BOB, ALICE)
        await bob.shutdown()
    shutil.copyfile(path, backup)
    async with SQLiteStorage(path) as storage:
        bob = await _sqlite_manager(net, BOB, storage)
        for _ in range(2):  # the ratchet moves on (new keys both ways)
            await _talk(net, bob, alice, ALICE, BOB)
            await _talk(net, alice, bob, BOB, ALICE)
        await bob.shutdown()
    shutil.copyfile(backup, path)  # Bob restores his older backup
    async with SQLiteStorage(path) as storage:
        bob = await _sqlite_manager(net, BOB, storage)
        first = explain(await _failure(bob, (await _send(net, alice, BOB))[0]))
        second = explain(await _failure(bob, (await _send(net, alice, BOB))[0]))
        assert first.reason is Reason.AUTHENTICATION_FAILED  # one failure: could be an altered message
        assert second.reason is Reason.RESTORED_BACKUP and "in a row" in second.detail
        await bob.shutdown()


async def test_a_message_of_a_namespace_not_loaded() -> None:
    net, alice, _ = await _setup()
    storage = MemoryStorage()
    only_omemo2 = await net.session_manager_class(CAROL, BTBVTrust).create(
        [twomemo.Twomemo(storage)], storage, CAROL, None, BTBVTrust.UNDECIDED
    )
    await alice.refresh_device_list(NSL, CAROL)  # Carol publishes no legacy list: nothing to encrypt for
    (legacy,) = await _send(net, alice, BOB, [NSL])
    assert explain(await _failure(only_omemo2, legacy)).reason is Reason.UNKNOWN_NAMESPACE
