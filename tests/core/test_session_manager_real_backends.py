"""End to end with the real backends (``twomemo`` and ``oldmemo``) on the in-memory XMPP.

The toy backend covers the orchestration in detail; this file checks that the session manager drives
the real protocol implementations the same way: both namespaces, priority order, key exchange
completion, history sync with pre key hiding, signed labels (OMEMO 2) next to label-less legacy
OMEMO, session replacement and SQLite persistence across a restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

import oldmemo
import twomemo
from omemo._core.encrypt import encrypt as core_encrypt
from omemo.storage import Storage
from omemo.storages import MemoryStorage, SQLiteStorage
from omemo.testing import InMemoryXMPP
from omemo.trust import BTBVTrust
from omemo.types import SignedLabel

ALICE, BOB = "alice@example.org", "bob@example.org"
NS2, NSL = twomemo.twomemo.NAMESPACE, oldmemo.oldmemo.NAMESPACE


async def _create(
    net: InMemoryXMPP, jid: str, storage: Storage, label: Optional[str] = None, legacy_first: bool = False
) -> Any:
    backends: List[Any] = [twomemo.Twomemo(storage), oldmemo.Oldmemo(storage)]
    if legacy_first:
        backends.reverse()
    cls = net.session_manager_class(jid, BTBVTrust)
    return await cls.create(backends, storage, jid, label, BTBVTrust.UNDECIDED)


async def _deliver(net: InMemoryXMPP, manager: Any, jid: str) -> List[Tuple[Optional[bytes], Any, Any]]:
    own, _ = await manager.get_own_device_information()
    return [await manager.decrypt(message) for message in net.take(jid, own.device_id)]


async def test_both_namespaces_end_to_end() -> None:
    net = InMemoryXMPP()
    alice = await _create(net, ALICE, MemoryStorage(), label="alice phone")
    bob = await _create(net, BOB, MemoryStorage())
    await alice.after_history_sync()
    await bob.after_history_sync()
    for order in ([NS2, NSL], [NSL, NS2]):
        messages, errors = await alice.encrypt(
            frozenset({BOB}), {NS2: b"<envelope/>", NSL: b"body"}, backend_priority_order=order
        )
        assert not errors and [m.namespace for m in messages] == [order[0]]
        for message in messages:
            net.send(message)
        [(plaintext, sender, _)] = await _deliver(net, bob, BOB)
        assert plaintext == (b"<envelope/>" if order[0] == NS2 else b"body")
        assert sender.label == "alice phone" and sender.trust_level_name == "UNDECIDED"
        # The key exchange is completed automatically.
        [(empty, _, _)] = await _deliver(net, alice, ALICE)
        assert empty is None
    # Signed label in the OMEMO 2 list, label-less (unsigned, dropped on the wire) in the legacy list.
    own, _ = await alice.get_own_device_information()
    entry2 = net.device_lists[(NS2, ALICE)][own.device_id]
    entry_legacy = net.device_lists[(NSL, ALICE)][own.device_id]
    assert isinstance(entry2, SignedLabel) and entry2.signature
    assert entry_legacy == SignedLabel("alice phone", b"")
    # Replacement of broken sessions reaches Bob in both namespaces.
    (bob_device,) = await alice.get_device_information(BOB)
    assert await alice.replace_sessions(bob_device) == {}
    results = await _deliver(net, bob, BOB)
    assert [r[0] for r in results] == [None, None]
    await alice.shutdown()
    await bob.shutdown()


async def test_history_sync_and_restart_with_sqlite(tmp_path: Path) -> None:
    net = InMemoryXMPP()
    async with SQLiteStorage(tmp_path / "alice.db") as alice_storage:
        alice = await _create(net, ALICE, alice_storage)
        await alice.after_history_sync()
        async with SQLiteStorage(tmp_path / "bob.db") as bob_storage:
            bob = await _create(net, BOB, bob_storage)  # stays in history sync mode
            for text in (b"one", b"two"):
                messages, _ = await alice.encrypt(frozenset({BOB}), {NS2: text, NSL: text})
                for message in messages:
                    net.send(message)
            assert [r[0] for r in await _deliver(net, bob, BOB)] == [b"one", b"two"]
            own_alice, _ = await alice.get_own_device_information()
            assert net.inbox(ALICE, own_alice.device_id) == []  # deferred
            await bob.after_history_sync()
            assert len(net.inbox(ALICE, own_alice.device_id)) == 1  # one per session
            await bob.shutdown()
        # Restart Bob from his database: same device, sessions intact.
        async with SQLiteStorage(tmp_path / "bob.db") as bob_storage:
            bob = await _create(net, BOB, bob_storage)
            await bob.after_history_sync()
            await _deliver(net, alice, ALICE)
            messages, _ = await alice.encrypt(frozenset({BOB}), {NS2: b"three", NSL: b"three"})
            for message in messages:
                assert all(kex is None for _, kex in message.keys)  # confirmed session
                net.send(message)
            assert [r[0] for r in await _deliver(net, bob, BOB)] == [b"three"]
            await bob.shutdown()
        await alice.shutdown()


async def test_legacy_first_priority_by_load_order() -> None:
    net = InMemoryXMPP()
    alice = await _create(net, ALICE, MemoryStorage(), legacy_first=True)
    bob = await _create(net, BOB, MemoryStorage())
    messages, _ = await alice.encrypt(frozenset({BOB}), {NS2: b"x", NSL: b"y"})
    assert [m.namespace for m in messages] == [NSL]
    await alice.shutdown()
    await bob.shutdown()


async def _bob_knows_alice_in_omemo2_only() -> Tuple[InMemoryXMPP, Any, Any]:
    """Alice and Bob after one OMEMO 2 exchange (no PEP notifications: Bob never saw her legacy list)."""
    net = InMemoryXMPP()
    alice = await _create(net, ALICE, MemoryStorage())
    bob = await _create(net, BOB, MemoryStorage())
    await alice.after_history_sync()
    await bob.after_history_sync()
    messages, _ = await alice.encrypt(frozenset({BOB}), {NS2: b"<envelope/>"}, backend_priority_order=[NS2])
    for message in messages:
        net.send(message)
    await _deliver(net, bob, BOB)
    await _deliver(net, alice, ALICE)
    return net, alice, bob


async def test_a_reply_in_the_namespace_of_a_message_from_a_device_known_in_another() -> None:
    # Bob knows Alice's device from OMEMO 2 only (her legacy device list never reached him); her
    # first legacy message makes him look at her legacy list, so that he can answer in that namespace.
    net, alice, bob = await _bob_knows_alice_in_omemo2_only()
    (known,) = await bob.get_device_information(ALICE)
    assert (NSL, True) not in known.active
    messages, _ = await alice.encrypt(frozenset({BOB}), {NSL: b"legacy"}, backend_priority_order=[NSL])
    for message in messages:
        net.send(message)
    [(plaintext, _, _)] = await _deliver(net, bob, BOB)
    assert plaintext == b"legacy"
    replies, errors = await bob.encrypt(frozenset({ALICE}), {NSL: b"reply"}, backend_priority_order=[NSL])
    assert not errors and [m.namespace for m in replies] == [NSL]
    await alice.shutdown()
    await bob.shutdown()


async def test_the_namespace_lookup_happens_once_per_account() -> None:
    # Alice writes in legacy OMEMO, but her legacy device list does not list her device: Bob looks it up
    # once, not for every message (a peer must not make each message cost a download).
    net, alice, bob = await _bob_knows_alice_in_omemo2_only()
    net.device_lists[(NSL, ALICE)] = {}
    net.calls.clear()
    for text in (b"one", b"two", b"three"):
        messages, _ = await alice.encrypt(frozenset({BOB}), {NSL: text}, backend_priority_order=[NSL])
        for message in messages:
            net.send(message)
    assert [r[0] for r in await _deliver(net, bob, BOB)] == [b"one", b"two", b"three"]
    lookups = [call for call in net.calls if call[:3] == ("download_device_list", NSL, ALICE)]
    assert len(lookups) == 1
    await alice.shutdown()
    await bob.shutdown()


async def test_a_huge_device_list_of_another_account_is_cut(caplog: pytest.LogCaptureFixture) -> None:
    net = InMemoryXMPP()
    alice = await _create(net, ALICE, MemoryStorage())
    await alice.after_history_sync()
    huge = {device_id: None for device_id in range(1, 5001)}
    with caplog.at_level("WARNING", logger="omemo.core"):
        await alice.update_device_list(NS2, BOB, huge)
    assert "names 5000 devices; using the first 1000" in caplog.text
    manager = alice._omemo_core
    assert await manager.devices.device_ids(BOB) == list(range(1, 1001))
    # The own list is never cut (cutting it would unpublish own devices).
    own, _ = await alice.get_own_device_information()
    own_huge = {**huge, own.device_id: None}
    await alice.update_device_list(NS2, ALICE, own_huge)
    assert len(await manager.devices.device_ids(ALICE)) == 5001
    await alice.shutdown()


async def test_a_device_is_answered_in_the_namespace_it_writes_in() -> None:
    # Bob's device announces both namespaces but writes legacy (as slixmpp-omemo 2.2 does): with the
    # integrations' option, Alice answers it in legacy, unless she has no legacy plaintext (a stanza
    # without body); when it writes OMEMO 2, she goes back to OMEMO 2. Empty messages (key exchange
    # completion) do not count. The public encrypt keeps python-omemo's rule: the order decides.
    net = InMemoryXMPP()
    alice = await _create(net, ALICE, MemoryStorage())
    bob = await _create(net, BOB, MemoryStorage())
    await alice.after_history_sync()
    await bob.after_history_sync()
    for namespace in (NS2, NSL):
        await alice.refresh_device_list(namespace, BOB)
        await bob.refresh_device_list(namespace, ALICE)
    both = {NS2: b"<envelope/>", NSL: b"body"}

    async def alice_writes(plaintext: Dict[str, bytes], public: bool = False) -> List[str]:
        if public:
            messages, errors = await alice.encrypt(frozenset({BOB}), plaintext)
        else:
            messages, errors = await core_encrypt(
                alice._omemo_core, frozenset({BOB}), plaintext, None, None, answer_in_last_namespace=True
            )
        assert not errors
        for message in messages:
            net.send(message)
        await _deliver(net, bob, BOB)
        await _deliver(net, alice, ALICE)  # an empty message completing a key exchange, if any
        return [m.namespace for m in messages]

    async def bob_writes(namespace: str) -> None:
        messages, _ = await bob.encrypt(frozenset({ALICE}), both, backend_priority_order=[namespace])
        for message in messages:
            net.send(message)
        [(plaintext, _, _)] = await _deliver(net, alice, ALICE)
        assert plaintext == both[namespace]
        await _deliver(net, bob, BOB)

    assert await alice_writes(both) == [NS2]  # nothing known yet: her order
    await bob_writes(NSL)
    assert await alice_writes(both) == [NSL]
    assert await alice_writes(both, public=True) == [NS2]
    assert await alice_writes({NS2: b"<envelope/>"}) == [NS2]  # no legacy plaintext: no choice
    assert await alice_writes(both) == [NSL]
    await bob_writes(NS2)
    assert await alice_writes(both) == [NS2]
    await alice.shutdown()
    await bob.shutdown()


async def test_a_used_pre_key_is_republished_away_after_a_crash_before_the_upload(tmp_path: Path) -> None:
    # Bob decrypts a key exchange (its pre key is deleted, committed) and dies before the bundle upload
    # (here: the upload fails and the process "restarts" on the same database). The next start sees the
    # unpublished change and publishes the bundle without that pre key, so nobody gets it again.
    net = InMemoryXMPP()
    alice = await _create(net, ALICE, MemoryStorage())
    await alice.after_history_sync()
    async with SQLiteStorage(tmp_path / "bob.db") as storage:
        bob = await _create(net, BOB, storage)
        await bob.after_history_sync()
        bob_id = (await bob.get_own_device_information())[0].device_id
        messages, _ = await alice.encrypt(
            frozenset({BOB}), {NS2: b"<envelope/>"}, backend_priority_order=[NS2]
        )
        (message,) = messages
        (kex,) = [kex for _, kex in message.keys if kex is not None]
        used = kex.pre_key_id
        assert used in net.bundles[(NS2, BOB, bob_id)].pre_keys  # type: ignore[attr-defined]
        net.fail("upload_bundle", times=None)
        await bob.decrypt(message)
        assert used in net.bundles[(NS2, BOB, bob_id)].pre_keys  # type: ignore[attr-defined]
        net.clear_failures()
    async with SQLiteStorage(tmp_path / "bob.db") as storage:  # the restart
        bob = await _create(net, BOB, storage)
        assert used not in net.bundles[(NS2, BOB, bob_id)].pre_keys  # type: ignore[attr-defined]
        await bob.shutdown()
    await alice.shutdown()


async def test_the_handover_commits_with_the_ratchet_or_not_at_all(tmp_path: Path) -> None:
    net = InMemoryXMPP()
    alice = await _create(net, ALICE, MemoryStorage())
    await alice.after_history_sync()
    async with SQLiteStorage(tmp_path / "gateway.db") as storage:
        bob = await _create(net, BOB, storage)
        await bob.after_history_sync()
        for text in (b"first", b"second"):  # the first carries the key exchange, the second not
            messages, _ = await alice.encrypt(frozenset({BOB}), {NS2: text}, backend_priority_order=[NS2])
            (message,) = messages

            async def failing(plaintext: Optional[bytes], device: Any, text: bytes = text) -> None:
                await storage.store(f"/gateway/{text.decode()}", "half")
                raise RuntimeError("the gateway's own write failed")

            with pytest.raises(RuntimeError):
                await bob.decrypt_with_handover(message, failing)
            assert (await storage.load(f"/gateway/{text.decode()}")).is_nothing  # rolled back with it

            async def handover(plaintext: Optional[bytes], device: Any, text: bytes = text) -> None:
                assert device.bare_jid == ALICE
                await storage.store(f"/gateway/{text.decode()}", (plaintext or b"").decode())

            plaintext, _, _ = await bob.decrypt_with_handover(message, handover)  # the retry works
            assert plaintext == text
            assert (await storage.load(f"/gateway/{text.decode()}")).from_just() == text.decode()
            for owed in net.take(ALICE, (await alice.get_own_device_information())[0].device_id):
                await alice.decrypt(owed)
        await bob.shutdown()
    await alice.shutdown()


async def test_the_handover_is_refused_without_transactions() -> None:
    class PlainStorage(MemoryStorage):
        transaction = None  # type: ignore[assignment]

    net = InMemoryXMPP()
    alice = await _create(net, ALICE, MemoryStorage())
    bob = await _create(net, BOB, PlainStorage())
    messages, _ = await alice.encrypt(frozenset({BOB}), {NS2: b"hi"}, backend_priority_order=[NS2])
    (message,) = messages

    async def handover(plaintext: Optional[bytes], device: Any) -> None:
        raise AssertionError("not called")

    with pytest.raises(TypeError, match="PlainStorage has none"):
        await bob.decrypt_with_handover(message, handover)
    plaintext, _, _ = await bob.decrypt(message)  # nothing consumed
    assert plaintext == b"hi"
    await bob.shutdown()
    await alice.shutdown()
