"""SessionManager.encrypt / decrypt and the automatic empty messages (PROTOCOL.md 5.4-5.6, 5.8).

Every exception path of the encryption and decryption flows, transactional decryption, the
namespace priority order with two backends, key exchange bookkeeping and staleness prevention, with the
toy backend on the in-memory XMPP.
"""

from __future__ import annotations

from typing import Any, Dict

import pytest

from omemo.backend import DecryptionFailed, KeyExchangeFailed, TooManySkippedMessageKeys
from omemo.message import Message
from omemo.session import Initiation
from omemo.session_manager import (
    BundleNotFound,
    MessageNotForUs,
    MessageSendingFailed,
    NoEligibleDevices,
    NoSession,
    PublicDataInconsistency,
    SenderDistrusted,
    SenderNotFound,
    UnknownNamespace,
)
from omemo.testing import InMemoryXMPP

from .fake_backend import (
    NS_A,
    NS_B,
    Account,
    FakeBackend,
    FakeEncryptedKeyMaterial,
    FakeSession,
    make_account,
)

ALICE, BOB, CAROL = "alice@example.org", "bob@example.org", "carol@example.org"


async def send(
    sender: Account, recipients: set[str], text: bytes = b"hi", **kwargs: Any
) -> Dict[Message, Any]:
    plaintext = {ns: text for ns in sender.backends}
    messages: Dict[Message, Any]
    messages, errors = await sender.manager.encrypt(frozenset(recipients), plaintext, **kwargs)
    assert not errors, errors
    for message in messages:
        sender.network.send(message)
    return messages


async def pair(
    namespaces_a: tuple[str, ...] = (NS_A,), namespaces_b: tuple[str, ...] = (NS_A,)
) -> tuple[Account, Account]:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE, namespaces_a)
    bob = await make_account(net, BOB, namespaces_b)
    return alice, bob


async def test_round_trip_and_session_completion() -> None:
    alice, bob = await pair()
    messages = await send(alice, {BOB}, b"hello")
    (message,) = messages
    ((_, kex),) = message.keys
    assert kex is not None  # first message initiates the session
    [(plaintext, sender, _)] = await bob.receive_all()
    assert plaintext == b"hello"
    assert (sender.bare_jid, sender.device_id) == (ALICE, alice.device_id)
    # Bob completed the session at once with an empty message carrying no key exchange.
    [reply] = alice.network.inbox(ALICE, alice.device_id)
    assert reply.content.empty
    assert all(k is None for _, k in reply.keys)
    [(none, _, _)] = await alice.receive_all()
    assert none is None
    # Now Alice's session is confirmed: no more key exchange attached.
    (message,) = await send(alice, {BOB}, b"again")
    assert all(k is None for _, k in message.keys)
    [(plaintext, _, _)] = await bob.receive_all()
    assert plaintext == b"again"
    assert bob.network.inbox(ALICE, alice.device_id) == []  # no further empty message


async def test_key_exchange_repeated_until_confirmed() -> None:
    alice, bob = await pair()
    await send(alice, {BOB}, b"one")
    await send(alice, {BOB}, b"two")
    inbox = bob.network.take(BOB, bob.device_id)
    assert all(kex is not None for message in inbox for _, kex in message.keys)
    for message in inbox:
        plaintext, _, _ = await bob.manager.decrypt(message)
    assert plaintext == b"two"
    session = await bob.backends[NS_A].load_session(ALICE, alice.device_id)
    assert session is not None and session.initiation is Initiation.PASSIVE
    # One pre key was consumed (deleted, not in history sync), refilled to 100, bundle republished.
    backend = bob.backends[NS_A]
    assert len(await backend.visible_pre_key_ids()) == 100
    assert await backend.hidden_pre_key_ids() == []
    assert max(await backend.visible_pre_key_ids()) == 101


async def test_own_other_devices_receive_copies() -> None:
    net = InMemoryXMPP()
    alice1 = await make_account(net, ALICE)
    alice2 = await make_account(net, ALICE)
    bob = await make_account(net, BOB)
    await alice1.manager.refresh_device_list(NS_A, ALICE)
    await send(alice1, {BOB}, b"multi")
    assert [r[0] for r in await bob.receive_all()] == [b"multi"]
    assert [r[0] for r in await alice2.receive_all()] == [b"multi"]
    assert net.inbox(ALICE, alice1.device_id) == [] or all(
        m.content.empty for m in net.inbox(ALICE, alice1.device_id)
    )


async def test_priority_order_with_two_namespaces() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE, (NS_A, NS_B))
    bob_both = await make_account(net, BOB, (NS_A, NS_B))
    carol_b = await make_account(net, CAROL, (NS_B,))
    messages, _ = await alice.manager.encrypt(frozenset({BOB, CAROL}), {NS_A: b"a", NS_B: b"b"})
    by_ns = {m.namespace: {(e.bare_jid, e.device_id) for e, _ in m.keys} for m in messages}
    assert by_ns == {NS_A: {(BOB, bob_both.device_id)}, NS_B: {(CAROL, carol_b.device_id)}}
    messages, _ = await alice.manager.encrypt(
        frozenset({BOB, CAROL}), {NS_A: b"a", NS_B: b"b"}, backend_priority_order=[NS_B, NS_A]
    )
    by_ns = {m.namespace: {(e.bare_jid, e.device_id) for e, _ in m.keys} for m in messages}
    assert by_ns == {NS_B: {(BOB, bob_both.device_id), (CAROL, carol_b.device_id)}}
    # A priority order that leaves a recipient's only namespace out makes it ineligible.
    with pytest.raises(NoEligibleDevices) as info:
        await alice.manager.encrypt(frozenset({CAROL}), {NS_A: b"a"}, backend_priority_order=[NS_A])
    assert info.value.bare_jids == frozenset({CAROL})


async def test_inactive_namespace_is_not_used() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE, (NS_A, NS_B))
    bob = await make_account(net, BOB, (NS_A, NS_B))
    await alice.manager.refresh_device_lists(BOB)
    await alice.manager.update_device_list(NS_A, BOB, {})  # bob left NS_A
    messages, _ = await alice.manager.encrypt(frozenset({BOB}), {NS_A: b"a", NS_B: b"b"})
    assert {m.namespace for m in messages} == {NS_B}
    del bob


async def test_encrypt_errors() -> None:
    alice, _ = await pair()
    with pytest.raises(UnknownNamespace, match="urn:nope"):
        await alice.manager.encrypt(frozenset({BOB}), {NS_A: b"x"}, backend_priority_order=["urn:nope"])
    with pytest.raises(ValueError, match=NS_A):
        await alice.manager.encrypt(frozenset({BOB}), {NS_B: b"x"})
    with pytest.raises(NoEligibleDevices, match=CAROL):
        await alice.manager.encrypt(frozenset({CAROL}), {NS_A: b"x"})


async def test_no_eligible_devices_stores_no_session() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE)
    bob = await make_account(net, BOB)
    carol = await make_account(net, CAROL)
    del net.bundles[(NS_A, CAROL, carol.device_id)]
    await alice.manager.refresh_device_list(NS_A, CAROL)
    with pytest.raises(NoEligibleDevices, match=f"{CAROL} \\(no trusted device") as info:
        await alice.manager.encrypt(frozenset({BOB, CAROL}), {NS_A: b"x"})
    assert info.value.bare_jids == frozenset({CAROL})
    assert await alice.backends[NS_A].load_session(BOB, bob.device_id) is None
    assert "store_session" not in alice.backends[NS_A].calls


async def test_unreachable_devices_are_reported_not_fatal() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE)
    bob1 = await make_account(net, BOB)
    bob2 = await make_account(net, BOB)
    bob3 = await make_account(net, BOB)
    await alice.manager.refresh_device_list(NS_A, BOB)
    await alice.manager.get_device_information(BOB)  # identity keys are known now
    del net.bundles[(NS_A, BOB, bob2.device_id)]
    bundle3 = net.bundles[(NS_A, BOB, bob3.device_id)]
    bundle3.pre_keys = frozenset()  # type: ignore[attr-defined]
    messages, errors = await alice.manager.encrypt(frozenset({BOB}), {NS_A: b"x"})
    assert {(e.namespace, e.bare_jid, e.device_id, type(e.exception)) for e in errors} == {
        (NS_A, BOB, bob2.device_id, BundleNotFound),
        (NS_A, BOB, bob3.device_id, KeyExchangeFailed),
    }
    ((message, _),) = messages.items()
    assert {e.device_id for e, _ in message.keys} == {bob1.device_id}


async def test_bundle_with_other_identity_key_is_rejected_on_encrypt() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE)
    bob = await make_account(net, BOB)
    mallory = await make_account(net, "mallory@example.org")
    await alice.manager.get_device_information(BOB)
    await alice.manager.refresh_device_list(NS_A, BOB)
    await alice.manager.get_device_information(BOB)
    # Replace Bob's bundle by one with another identity key.
    fake = net.bundles[(NS_A, "mallory@example.org", mallory.device_id)]
    fake._bare_jid, fake._device_id = BOB, bob.device_id  # type: ignore[attr-defined]
    net.bundles[(NS_A, BOB, bob.device_id)] = fake
    with pytest.raises(NoEligibleDevices, match=f"device {bob.device_id} of {BOB}.*PublicDataInconsistency"):
        await alice.manager.encrypt(frozenset({BOB}), {NS_A: b"x"})


async def test_decrypt_errors() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE)
    bob = await make_account(net, BOB)
    carol = await make_account(net, CAROL)
    messages, _ = await alice.manager.encrypt(frozenset({BOB}), {NS_A: b"x"})
    (message,) = messages
    with pytest.raises(MessageNotForUs, match=carol.jid):
        await carol.manager.decrypt(message)
    with pytest.raises(UnknownNamespace, match=f"device {alice.device_id} of {ALICE}"):
        await bob.manager.decrypt(message._replace(namespace=NS_B))
    # A device that is not in any device list.
    with pytest.raises(SenderNotFound, match="4242"):
        await bob.manager.decrypt(message._replace(device_id=4242))
    # A listed device without a bundle.
    net.device_lists[(NS_A, ALICE)][4243] = None
    with pytest.raises(SenderNotFound, match="4243"):
        await bob.manager.decrypt(message._replace(device_id=4243))
    # Distrusted sender.
    await bob.manager.set_trust(ALICE, alice.identity_key, "DISTRUSTED")
    with pytest.raises(SenderDistrusted, match=ALICE):
        await bob.manager.decrypt(message)
    await bob.manager.set_trust(ALICE, alice.identity_key, "UNDECIDED")
    # Nothing was stored by the failures; the message still decrypts.
    plaintext, _, _ = await bob.manager.decrypt(message)
    assert plaintext == b"x"


async def test_sender_not_found_when_device_list_download_fails() -> None:
    alice, bob = await pair()
    (message,) = await send(alice, {BOB})
    bob.network.fail("download_device_list", bare_jid=ALICE)
    with pytest.raises(SenderNotFound):
        await bob.manager.decrypt(message._replace(device_id=999))


async def test_no_session_without_key_exchange() -> None:
    alice, bob = await pair()
    (message,) = await send(alice, {BOB})
    stripped = message._replace(keys=frozenset((e, None) for e, _ in message.keys))
    with pytest.raises(NoSession, match=str(alice.device_id)):
        await bob.manager.decrypt(stripped)


async def test_key_exchange_with_foreign_identity_key() -> None:
    alice, bob = await pair()
    (message,) = await send(alice, {BOB})
    ((_, kex),) = message.keys
    assert kex is not None
    kex._identity_key = bytes(32)  # type: ignore[attr-defined]
    with pytest.raises(PublicDataInconsistency):
        await bob.manager.decrypt(message)


async def test_decryption_is_transactional() -> None:
    alice, bob = await pair()
    (message,) = await send(alice, {BOB}, b"secret")
    ((ekm, _),) = message.keys
    assert isinstance(ekm, FakeEncryptedKeyMaterial)
    good_mac = ekm.mac
    ekm.mac = bytes(8)
    pre_keys_before = await bob.backends[NS_A].visible_pre_key_ids()
    with pytest.raises(DecryptionFailed, match=rf"device {alice.device_id} of {ALICE} \({NS_A}\)"):
        await bob.manager.decrypt(message)
    assert await bob.backends[NS_A].load_session(ALICE, alice.device_id) is None
    assert await bob.backends[NS_A].visible_pre_key_ids() == pre_keys_before
    # A payload that fails to decrypt stores nothing either.
    ekm.mac = good_mac
    content = message.content
    good_ct = content.ciphertext  # type: ignore[attr-defined]
    content.ciphertext = good_ct + b"!"  # type: ignore[attr-defined]
    with pytest.raises(DecryptionFailed):
        await bob.manager.decrypt(message)
    assert await bob.backends[NS_A].load_session(ALICE, alice.device_id) is None
    content.ciphertext = good_ct  # type: ignore[attr-defined]
    plaintext, _, _ = await bob.manager.decrypt(message)
    assert plaintext == b"secret"
    # A replay is refused and does not change the stored session.
    stored = await bob.backends[NS_A].load_session(ALICE, alice.device_id)
    assert isinstance(stored, FakeSession)
    with pytest.raises(DecryptionFailed):
        await bob.manager.decrypt(message)
    again = await bob.backends[NS_A].load_session(ALICE, alice.device_id)
    assert isinstance(again, FakeSession) and again.to_json() == stored.to_json()


async def test_too_many_skipped_keys_is_forwarded() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE)
    bob = await make_account(net, BOB)
    bob.backends[NS_A]._Backend__max_num_per_message_skipped_keys = 3  # type: ignore[attr-defined]
    await send(alice, {BOB})
    await bob.receive_all()
    await alice.receive_all()
    for _ in range(5):
        messages, _ = await alice.manager.encrypt(frozenset({BOB}), {NS_A: b"lost"})
    (message,) = messages
    with pytest.raises(TooManySkippedMessageKeys):
        await bob.manager.decrypt(message)


async def test_staleness_prevention_sends_empty_messages() -> None:
    alice, bob = await pair()
    await send(alice, {BOB})
    await bob.receive_all()
    await alice.receive_all()
    empties = 0
    for index in range(60):
        await send(alice, {BOB}, b"%d" % index)
        await bob.receive_all()
        inbox = alice.network.take(ALICE, alice.device_id)
        empties += len(inbox)
        for message in inbox:
            assert message.content.empty
            await alice.manager.decrypt(message)
    # Bob's receiving chain exceeded 53 once; the empty message made Alice ratchet, which reset it.
    assert empties == 1
    session = await bob.backends[NS_A].load_session(ALICE, alice.device_id)
    assert session is not None and (session.receiving_chain_length or 0) <= 53


async def test_staleness_prevention_under_load_sends_one_empty_message_per_magic_number() -> None:
    # Alice's messages keep coming while Bob's empty message is still on its way (many in flight): Bob
    # owes one at the 54th message and, the peer's new chain not having arrived, one more at the 107th,
    # not one per message (python-omemo's rule).
    alice, bob = await pair()
    await send(alice, {BOB})
    await bob.receive_all()
    await alice.receive_all()
    for index in range(110):
        await send(alice, {BOB}, b"%d" % index)
        await bob.receive_all()
    inbox = alice.network.take(ALICE, alice.device_id)
    assert len(inbox) == 2 and all(message.content.empty for message in inbox)


async def test_history_sync_hides_pre_keys_and_queues_empty_messages() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE)
    carol = await make_account(net, CAROL)
    bob = await make_account(net, BOB, history_sync=True)
    await send(alice, {BOB}, b"from alice")
    await send(carol, {BOB}, b"from carol")
    results = await bob.receive_all()
    assert sorted(r[0] or b"" for r in results) == [b"from alice", b"from carol"]
    backend = bob.backends[NS_A]
    assert len(await backend.hidden_pre_key_ids()) == 2
    assert len(await backend.visible_pre_key_ids()) == 100
    assert net.inbox(ALICE, alice.device_id) == [] and net.inbox(CAROL, carol.device_id) == []
    queued = bob.storage.snapshot()  # type: ignore[attr-defined]
    assert set(queued[f"/queue/{NS_A}"]) == {ALICE, CAROL}
    assert queued[f"/queue/{NS_A}/{ALICE}"] == [alice.device_id]
    await bob.manager.after_history_sync()
    assert await backend.hidden_pre_key_ids() == []
    assert len(net.inbox(ALICE, alice.device_id)) == 1 and len(net.inbox(CAROL, carol.device_id)) == 1
    assert bob.storage.snapshot()[f"/queue/{NS_A}"] == []  # type: ignore[attr-defined]
    assert (await alice.receive_all())[0][0] is None


@pytest.mark.parametrize("history_sync", [True, False])
async def test_pre_key_picked_by_two_initiators(monkeypatch: pytest.MonkeyPatch, history_sync: bool) -> None:
    """During history sync a used pre key stays usable (hidden); afterwards it is gone (deleted)."""
    monkeypatch.setattr(FakeBackend, "choose_pre_key", staticmethod(lambda items: items[0]))
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE)
    carol = await make_account(net, CAROL)
    bob = await make_account(net, BOB, history_sync=history_sync)
    await send(alice, {BOB}, b"from alice")
    await send(carol, {BOB}, b"from carol")
    # Both picked Bob's pre key 1 from the same (stale) bundle view.
    first, second = net.take(BOB, bob.device_id)
    assert (await bob.manager.decrypt(first))[0] == b"from alice"
    if history_sync:
        assert (await bob.manager.decrypt(second))[0] == b"from carol"
        assert await bob.backends[NS_A].hidden_pre_key_ids() == [1]
        await bob.manager.after_history_sync()
        assert await bob.backends[NS_A].hidden_pre_key_ids() == []
    else:
        with pytest.raises(KeyExchangeFailed):
            await bob.manager.decrypt(second)


async def test_after_history_sync_reports_send_failures_and_keeps_them_queued() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE)
    bob = await make_account(net, BOB, history_sync=True)
    await send(alice, {BOB})
    await bob.receive_all()
    net.fail("send_message", bare_jid=ALICE)
    with pytest.raises(MessageSendingFailed, match=ALICE):
        await bob.manager.after_history_sync()
    assert bob.storage.snapshot()[f"/queue/{NS_A}/{ALICE}"] == [alice.device_id]  # type: ignore[attr-defined]
    await bob.manager.after_history_sync()
    assert len(net.inbox(ALICE, alice.device_id)) == 1


async def test_failed_automatic_empty_message_is_queued_not_raised() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE)
    bob = await make_account(net, BOB)
    await send(alice, {BOB}, b"kept")
    net.fail("send_message")
    [(plaintext, _, _)] = await bob.receive_all()
    assert plaintext == b"kept"
    assert bob.storage.snapshot()[f"/queue/{NS_A}/{ALICE}"] == [alice.device_id]  # type: ignore[attr-defined]


async def test_failed_bundle_upload_after_pre_key_use_is_retried() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE)
    bob = await make_account(net, BOB)
    await send(alice, {BOB})
    net.fail("upload_bundle", bare_jid=BOB)
    [(plaintext, _, _)] = await bob.receive_all()
    assert plaintext == b"hi"
    assert bob.manager._omemo_core.dirty_bundles == {NS_A}
    published = net.bundles[(NS_A, BOB, bob.device_id)]
    await bob.manager.encrypt(frozenset({ALICE}), {NS_A: b"x"})
    assert bob.manager._omemo_core.dirty_bundles == set()
    assert net.bundles[(NS_A, BOB, bob.device_id)] != published


async def test_replace_sessions() -> None:
    alice, bob = await pair()
    await send(alice, {BOB})
    await bob.receive_all()
    await alice.receive_all()
    (device,) = await alice.manager.get_device_information(BOB)
    old = await alice.backends[NS_A].load_session(BOB, bob.device_id)
    assert isinstance(old, FakeSession)
    assert await alice.manager.replace_sessions(device) == {}
    new = await alice.backends[NS_A].load_session(BOB, bob.device_id)
    assert isinstance(new, FakeSession) and new.secret != old.secret
    [(plaintext, _, _)] = await bob.receive_all()
    assert plaintext is None
    await alice.receive_all()
    await send(alice, {BOB}, b"after replacement")
    assert (await bob.receive_all())[0][0] == b"after replacement"
    # Failures are reported per namespace and leave the session alone.
    alice.network.fail("download_bundle")
    failures = await alice.manager.replace_sessions(device)
    assert set(failures) == {NS_A}
    still = await alice.backends[NS_A].load_session(BOB, bob.device_id)
    assert isinstance(still, FakeSession) and still.secret == new.secret


async def test_get_sending_chain_length() -> None:
    alice, _ = await pair((NS_A, NS_B), (NS_A,))
    await alice.manager.refresh_device_lists(BOB)
    (device,) = await alice.manager.get_device_information(BOB)
    assert await alice.manager.get_sending_chain_length(device) == {NS_A: None}
    await send(alice, {BOB})
    await send(alice, {BOB})
    assert await alice.manager.get_sending_chain_length(device) == {NS_A: 2}
    await alice.manager.purge_backend(NS_A)
    assert await alice.manager.get_sending_chain_length(device) == {NS_A: None}
