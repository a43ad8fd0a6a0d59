"""The documented behaviour of every Backend method, for both backends (issue "Backends" §1-2).

Contract: /work/shared/spec/omemo-api-1.0.2.txt (Backend section) and PROTOCOL.md 3-6. Two devices
talk through the backend API only (no SessionManager); messages travel through
``<backend>.etree`` so that key exchanges arrive as parsed "network" instances. Regression tests
for the reference bugs we must not reproduce name the PROTOCOL.md 6.x item.
"""

from __future__ import annotations

import base64
import os
import xml.etree.ElementTree as ET
from typing import Any, Optional

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import oldmemo
import oldmemo.oldmemo
import omemo_engine.wire
import twomemo
import twomemo.twomemo
from omemo._engine.backend import (
    EngineBackend,
    EngineBundle,
    EngineEncryptedKeyMaterial,
    EngineKeyExchange,
    EngineSession,
)
from omemo.backend import (
    BackendException,
    DecryptionFailed,
    KeyExchangeFailed,
    TooManySkippedMessageKeys,
)
from omemo.session import Initiation
from omemo_engine import xeddsa
from omemo_engine._primitives import hkdf_sha256, hmac_sha256
from omemo_engine.errors import MalformedXML

from .conftest import (
    CountingStorage,
    Device,
    establish,
    exchange,
    key_for,
    make_device,
    receive,
    send,
    transmit,
)

# -- helpers ------------------------------------------------------------------------------------------


async def load(device: Device, peer: Device) -> EngineSession:
    session = await device.backend.load_session(peer.bare_jid, peer.device_id)
    assert isinstance(session, EngineSession)
    return session


def only_pre_key(bundle: EngineBundle, pre_key_id: int) -> EngineBundle:
    """The same bundle offering just one pre key, so that the initiator must pick it."""
    return type(bundle)(
        bundle.bare_jid,
        bundle.device_id,
        bundle.identity_key,
        bundle.signed_pre_key_id,
        bundle.signed_pre_key,
        bundle.signed_pre_key_signature,
        {pre_key_id: bundle.pre_keys[pre_key_id]},
    )


def with_changes(bundle: EngineBundle, **changes: Any) -> EngineBundle:
    fields: dict[str, Any] = {
        "bare_jid": bundle.bare_jid,
        "device_id": bundle.device_id,
        "identity_key": bundle.identity_key,
        "signed_pre_key_id": bundle.signed_pre_key_id,
        "signed_pre_key": bundle.signed_pre_key,
        "signed_pre_key_signature": bundle.signed_pre_key_signature,
        "pre_keys": bundle.pre_keys,
    }
    fields.update(changes)
    return type(bundle)(**fields)


def tampered(enc: Any, index: int = -1) -> EngineEncryptedKeyMaterial:
    assert isinstance(enc, EngineEncryptedKeyMaterial)
    data = bytearray(enc.encrypted_message)
    data[index] ^= 0x01
    return type(enc)(enc.bare_jid, enc.device_id, bytes(data))


def replaced(enc: Any, data: bytes) -> EngineEncryptedKeyMaterial:
    assert isinstance(enc, EngineEncryptedKeyMaterial)
    return type(enc)(enc.bare_jid, enc.device_id, data)


async def initiate(
    alice: Device, bob: Device, bundle: Optional[EngineBundle] = None, plaintext: bytes = b"hi"
) -> tuple[EngineSession, EngineSession]:
    """Alice builds a session (not stored) from ``bundle`` (default: Bob's current one); Bob builds
    his side passively (not stored) from the transmitted key exchange."""
    if bundle is None:
        bundle = await bob.backend.get_bundle(bob.bare_jid, bob.device_id)
    content, key_material = await alice.backend.encrypt_plaintext(plaintext)
    a_session, encrypted = await alice.backend.build_session_active(
        bob.bare_jid, bob.device_id, bundle, key_material
    )
    assert isinstance(a_session, EngineSession)
    message, _ = await transmit(alice, bob, content, [(encrypted, a_session.key_exchange)])
    enc, kex = key_for(message, bob)
    assert kex is not None
    b_session, plain = await bob.backend.build_session_passive(alice.bare_jid, alice.device_id, kex, enc)
    assert isinstance(b_session, EngineSession)
    assert await bob.backend.decrypt_plaintext(message.content, plain) == plaintext
    return a_session, b_session


async def network_kex(alice: Device, bob: Device, session: EngineSession) -> EngineKeyExchange:
    """The key exchange of ``session`` as Bob parses it from the wire."""
    content, key_material = await alice.backend.encrypt_plaintext(b"x")
    encrypted = await alice.backend.encrypt_key_material(session, key_material)
    message, _ = await transmit(alice, bob, content, [(encrypted, session.key_exchange)])
    _, kex = key_for(message, bob)
    assert isinstance(kex, EngineKeyExchange)
    return kex


# -- sessions -------------------------------------------------------------------------------------------


async def test_load_session_of_unknown_device_is_none(alice: Device, bob: Device) -> None:
    assert await alice.backend.load_session("nobody@example.org", 1) is None
    await establish(alice, bob)
    assert await alice.backend.load_session(bob.bare_jid, 3) is None
    assert await alice.backend.load_session("bob@example.net", bob.device_id) is None


async def test_session_properties(alice: Device, bob: Device) -> None:
    a_session, b_session = await initiate(alice, bob)
    assert a_session.namespace == b_session.namespace == alice.backend.namespace
    assert (a_session.bare_jid, a_session.device_id) == (bob.bare_jid, bob.device_id)
    assert (b_session.bare_jid, b_session.device_id) == (alice.bare_jid, alice.device_id)
    assert a_session.initiation is Initiation.ACTIVE
    assert b_session.initiation is Initiation.PASSIVE
    assert a_session.key_exchange.identity_key == await alice.identity_key()
    assert b_session.key_exchange.identity_key == await alice.identity_key()
    assert a_session.sending_chain_length == 1
    assert a_session.receiving_chain_length is None
    assert b_session.receiving_chain_length == 1


async def test_build_does_not_persist_only_store_session_does(alice: Device, bob: Device) -> None:
    a_session, b_session = await initiate(alice, bob)
    # Building (and encrypting/decrypting with) the sessions wrote nothing at all.
    assert alice.storage.writes == []
    assert [w for w in bob.storage.writes if "session" in w.key] == []
    assert await alice.backend.load_session(bob.bare_jid, bob.device_id) is None
    assert await bob.backend.load_session(alice.bare_jid, alice.device_id) is None
    await alice.backend.store_session(a_session)
    await bob.backend.store_session(b_session)
    assert (await load(alice, bob)).key_exchange == a_session.key_exchange
    assert (await load(bob, alice)).key_exchange == b_session.key_exchange


async def test_new_session_while_one_is_stored(alice: Device, bob: Device) -> None:
    old_a, old_b = await establish(alice, bob)
    await exchange(alice, bob, b"on the old session")

    new_a, new_b = await initiate(alice, bob)
    assert not new_a.key_exchange.builds_same_session(old_a.key_exchange)
    # Until store_session, the old sessions are what load_session returns, on both sides.
    for device, peer, old in ((alice, bob, old_a), (bob, alice, old_b)):
        loaded = await load(device, peer)
        assert loaded.key_exchange.ephemeral_key == old.key_exchange.ephemeral_key
        device.restart()
        loaded = await load(device, peer)
        assert loaded.key_exchange.ephemeral_key == old.key_exchange.ephemeral_key
    await exchange(alice, bob, b"still the old session")
    await exchange(bob, alice, b"still the old session, the other way")

    await alice.backend.store_session(new_a)
    await bob.backend.store_session(new_b)
    assert (await load(alice, bob)).key_exchange.ephemeral_key == new_a.key_exchange.ephemeral_key
    assert (await load(bob, alice)).key_exchange.ephemeral_key == new_b.key_exchange.ephemeral_key
    await exchange(alice, bob, b"the new session")
    await exchange(bob, alice, b"the new session, the other way")


async def test_several_sessions_with_one_device_in_memory(alice: Device, bob: Device) -> None:
    bundle = await bob.backend.get_bundle(bob.bare_jid, bob.device_id)
    a1, b1 = await initiate(alice, bob, only_pre_key(bundle, 1), b"one")
    a2, b2 = await initiate(alice, bob, only_pre_key(bundle, 2), b"two")
    # All four sessions work independently in memory.
    for a_session, b_session in ((a1, b1), (a2, b2), (a1, b1)):
        message, enc, _ = await send(alice, bob, a_session, b"again")
        assert await receive(bob, b_session, message, enc) == b"again"
        message, enc, _ = await send(bob, alice, b_session, b"back")
        assert await receive(alice, a_session, message, enc) == b"back"
    # Only one per device in storage: the last one stored.
    await alice.backend.store_session(a2)
    await alice.backend.store_session(a1)
    assert (await load(alice, bob)).key_exchange.pre_key_id == 1
    await alice.backend.store_session(a2)
    assert (await load(alice, bob)).key_exchange.pre_key_id == 2


async def test_sessions_with_several_devices_and_jids(backend_cls: type[EngineBackend]) -> None:
    alice = await make_device(backend_cls, "alice@example.org", 1)
    peers = [
        await make_device(backend_cls, jid, device_id, pre_keys=3)
        for jid, device_id in (("bob@example.org", 2), ("bob@example.org", 3), ("carol@example.org", 2))
    ]
    for peer in peers:
        await establish(alice, peer, peer.bare_jid.encode())
    alice.restart()
    for peer in peers:
        await exchange(alice, peer, b"to " + peer.bare_jid.encode())
        await exchange(peer, alice, b"from " + peer.bare_jid.encode())


async def test_sessions_survive_a_restart_mid_conversation(alice: Device, bob: Device) -> None:
    a_session, b_session = await establish(alice, bob)
    for i in range(3):
        await exchange(alice, bob, b"a%d" % i)
        await exchange(bob, alice, b"b%d" % i)
    # Two messages in flight: Bob receives the second, restarts, then gets the first (the skipped
    # message key must have been persisted).
    a_session = await load(alice, bob)
    m1, e1, _ = await send(alice, bob, a_session, b"first")
    m2, e2, _ = await send(alice, bob, a_session, b"second")
    await alice.backend.store_session(a_session)
    b_session = await load(bob, alice)
    assert await receive(bob, b_session, m2, e2) == b"second"
    await bob.backend.store_session(b_session)
    alice.restart()
    bob.restart()
    assert await receive(bob, await load(bob, alice), m1, e1) == b"first"
    b_session = await load(bob, alice)
    assert await receive(bob, b_session, m1, e1) == b"first"
    await bob.backend.store_session(b_session)
    for i in range(3):
        await exchange(bob, alice, b"after restart %d" % i)
        await exchange(alice, bob, b"after restart, reply %d" % i)
    # A replay of a message consumed before the restart is still rejected.
    with pytest.raises(DecryptionFailed):
        await receive(bob, await load(bob, alice), m1, e1)


# -- key exchange bookkeeping ---------------------------------------------------------------------------


async def test_builds_same_session(alice: Device, bob: Device) -> None:
    a_session, b_session = await initiate(alice, bob)
    stored_kex = a_session.key_exchange
    assert not stored_kex.is_network_instance()
    parsed = await network_kex(alice, bob, a_session)
    assert parsed.is_network_instance()
    for one, other in (
        (parsed, stored_kex),
        (parsed, b_session.key_exchange),
        (stored_kex, b_session.key_exchange),
    ):
        assert one.builds_same_session(other) and other.builds_same_session(one)
        assert one == other and hash(one) == hash(other)
    await alice.backend.store_session(a_session)
    await bob.backend.store_session(b_session)
    alice.restart()
    bob.restart()
    assert (await load(alice, bob)).key_exchange.builds_same_session(parsed)
    assert parsed.builds_same_session((await load(bob, alice)).key_exchange)

    # Any difference in IK, EK, SPK id or PK id makes another session.
    cls = type(parsed)
    ik, ek, spk_id, pk_id = (
        parsed.identity_key,
        parsed.ephemeral_key,
        parsed.signed_pre_key_id,
        parsed.pre_key_id,
    )
    other_key = await bob.identity_key()
    for changed in (
        cls(other_key, ek, spk_id, pk_id),
        cls(ik, bytes(32), spk_id, pk_id),
        cls(ik, ek, spk_id + 1, pk_id),
        cls(ik, ek, spk_id, pk_id + 1),
    ):
        assert not changed.builds_same_session(parsed)
        assert not parsed.builds_same_session(changed)
        assert not changed.builds_same_session(stored_kex)
        assert changed != parsed
    # A new session with the same device is another session.
    a_new, _ = await initiate(alice, bob)
    assert not a_new.key_exchange.builds_same_session(stored_kex)
    # Key exchanges of the other namespace never build the same session.
    other_cls = (
        oldmemo.oldmemo.KeyExchangeImpl
        if cls is twomemo.twomemo.KeyExchangeImpl
        else twomemo.twomemo.KeyExchangeImpl
    )
    assert not parsed.builds_same_session(other_cls(ik, ek, spk_id, pk_id))
    assert not other_cls(ik, ek, spk_id, pk_id).builds_same_session(parsed)


async def test_builds_same_session_migrated_oldmemo_rule() -> None:
    """PROTOCOL.md 4.7: sessions migrated from pre-1.0 data have signed pre key id -1; then only the
    identity key and the pre key id are compared."""
    kex = oldmemo.oldmemo.KeyExchangeImpl
    ik, ik2 = b"\x01" * 32, b"\x02" * 32
    migrated = kex(ik, b"\x03" * 32, -1, 7, b"\x04" * 32, b"\x05" * 32)
    network = kex(ik, b"\x06" * 32, 12, 7)
    assert migrated.builds_same_session(network)
    assert network.builds_same_session(migrated)
    assert not migrated.builds_same_session(kex(ik, b"\x06" * 32, 12, 8))
    assert not migrated.builds_same_session(kex(ik2, b"\x06" * 32, 12, 7))
    # Without a migrated side, the ephemeral key counts.
    assert not kex(ik, b"\x03" * 32, 12, 7).builds_same_session(network)


async def test_kex_repeated_until_confirmed(alice: Device, bob: Device) -> None:
    bundle = await bob.backend.get_bundle(bob.bare_jid, bob.device_id)
    content, key_material = await alice.backend.encrypt_plaintext(b"m1")
    a_session, e1 = await alice.backend.build_session_active(
        bob.bare_jid, bob.device_id, bundle, key_material
    )
    assert isinstance(a_session, EngineSession)
    assert not a_session.confirmed
    first_kex = a_session.key_exchange
    m1, _ = await transmit(alice, bob, content, [(e1, a_session.key_exchange)])
    await alice.backend.store_session(a_session)

    # Alice keeps sending (also after a restart): the same key exchange every time.
    m2, _e2, k2 = await send(alice, bob, a_session, b"m2")
    await alice.backend.store_session(a_session)
    alice.restart()
    a_session = await load(alice, bob)
    assert not a_session.confirmed
    assert a_session.key_exchange.builds_same_session(first_kex)
    m3, _e3, k3 = await send(alice, bob, a_session, b"m3")
    await alice.backend.store_session(a_session)
    assert k2 is not None and k3 is not None
    assert k2.builds_same_session(first_kex) and k3.builds_same_session(first_kex)

    # Bob builds from m3 (messages overtook each other); m1 and m2 carry the same kex, so he reuses
    # the stored session.
    b_enc, b_kex = key_for(m3, bob)
    assert b_kex is not None
    b_session, plain = await bob.backend.build_session_passive(alice.bare_jid, alice.device_id, b_kex, b_enc)
    assert isinstance(b_session, EngineSession)
    assert await bob.backend.decrypt_plaintext(m3.content, plain) == b"m3"
    await bob.backend.store_session(b_session)
    for message, plaintext in ((m1, b"m1"), (m2, b"m2")):
        enc, kex = key_for(message, bob)
        stored = await load(bob, alice)
        assert kex is not None and stored.initiation is Initiation.PASSIVE
        assert kex.builds_same_session(stored.key_exchange)
        assert await receive(bob, stored, message, enc) == plaintext
        await bob.backend.store_session(stored)

    # Bob answers; decrypting it confirms Alice's session, which then stops sending the kex.
    reply, r_enc, r_kex = await send(bob, alice, await load(bob, alice), b"reply")
    assert r_kex is None
    a_session = await load(alice, bob)
    assert not a_session.confirmed
    assert await receive(alice, a_session, reply, r_enc) == b"reply"
    assert a_session.confirmed
    await alice.backend.store_session(a_session)
    alice.restart()
    a_session = await load(alice, bob)
    assert a_session.confirmed
    _, _, k4 = await send(alice, bob, a_session, b"m4")
    assert k4 is None


async def test_failed_decryption_does_not_confirm(alice: Device, bob: Device) -> None:
    a_session, b_session = await initiate(alice, bob)
    reply, enc, _ = await send(bob, alice, b_session, b"reply")
    with pytest.raises(DecryptionFailed):
        await alice.backend.decrypt_key_material(a_session, tampered(enc))
    assert not a_session.confirmed
    assert await receive(alice, a_session, reply, enc) == b"reply"
    assert a_session.confirmed


# -- pre keys -------------------------------------------------------------------------------------------


async def test_generate_pre_keys_ids(backend_cls: type[EngineBackend]) -> None:
    bob = await make_device(backend_cls, "bob@example.org", 2, pre_keys=0)
    assert await bob.backend.get_num_visible_pre_keys() == 0
    assert (await bob.backend.get_bundle(bob.bare_jid, bob.device_id)).pre_keys == {}
    await bob.backend.generate_pre_keys(100)
    bundle = await bob.backend.get_bundle(bob.bare_jid, bob.device_id)
    assert sorted(bundle.pre_keys) == list(range(1, 101))
    assert len(set(bundle.pre_keys.values())) == 100
    assert await bob.backend.get_num_visible_pre_keys() == 100
    await bob.backend.generate_pre_keys(0)
    assert await bob.backend.get_num_visible_pre_keys() == 100
    with pytest.raises(ValueError, match="negative"):
        await bob.backend.generate_pre_keys(-1)
    bob.restart()
    assert await bob.backend.get_bundle(bob.bare_jid, bob.device_id) == bundle


async def test_pre_key_ids_are_never_reused(alice: Device, bob: Device) -> None:
    seen = set((await bob.backend.get_bundle(bob.bare_jid, bob.device_id)).pre_keys)
    _, b1 = await initiate(alice, bob)
    assert await bob.backend.delete_pre_key(b1) is True
    _, b2 = await initiate(alice, bob)
    assert await bob.backend.hide_pre_key(b2) is True
    await bob.backend.delete_hidden_pre_keys()
    assert await bob.backend.get_num_visible_pre_keys() == 98
    for refill in (1, 2):
        await bob.backend.generate_pre_keys(refill)
        bundle = await bob.backend.get_bundle(bob.bare_jid, bob.device_id)
        new = set(bundle.pre_keys) - seen
        assert len(new) == refill and min(new) > max(seen)
        seen |= new
        bob.restart()  # the id counter is persisted
    assert sorted(seen)[-3:] == [101, 102, 103]
    # Deleting the newest key does not free its id either.
    _, b3 = await initiate(alice, bob, only_pre_key(await bob.backend.get_bundle(bob.bare_jid, 2), 103))
    assert await bob.backend.delete_pre_key(b3) is True
    bob.restart()
    await bob.backend.generate_pre_keys(1)
    assert max((await bob.backend.get_bundle(bob.bare_jid, bob.device_id)).pre_keys) == 104


async def test_hide_and_delete_pre_key_return_values(alice: Device, bob: Device) -> None:
    bundle = await bob.backend.get_bundle(bob.bare_jid, bob.device_id)
    a1, b1 = await initiate(alice, bob, only_pre_key(bundle, 10))
    _, b2 = await initiate(alice, bob, only_pre_key(bundle, 20))

    # Active sessions identify no pre key of ours.
    assert await alice.backend.hide_pre_key(a1) is False
    assert await alice.backend.delete_pre_key(a1) is False

    assert await bob.backend.hide_pre_key(b1) is True
    assert await bob.backend.get_num_visible_pre_keys() == 99
    assert await bob.backend.hide_pre_key(b1) is False  # hidden already
    assert await bob.backend.delete_pre_key(b1) is True  # a hidden key can be deleted
    assert await bob.backend.delete_pre_key(b1) is False  # gone
    assert await bob.backend.hide_pre_key(b1) is False

    assert await bob.backend.delete_pre_key(b2) is True  # a visible key
    assert await bob.backend.get_num_visible_pre_keys() == 98
    assert await bob.backend.delete_pre_key(b2) is False
    assert await bob.backend.hide_pre_key(b2) is False

    bob.restart()
    visible = (await bob.backend.get_bundle(bob.bare_jid, bob.device_id)).pre_keys
    assert 10 not in visible and 20 not in visible and len(visible) == 98
    assert await bob.backend.get_num_visible_pre_keys() == 98
    assert await bob.backend.delete_pre_key(b1) is False
    assert await bob.backend.delete_pre_key(b2) is False


async def test_hidden_pre_key_survives_restart(backend_cls: type[EngineBackend]) -> None:
    """PROTOCOL.md 6.2 (regression): the reference does not persist hidden pre keys, so a second key
    exchange with the same pre key during history synchronisation fails after a restart."""
    bob = await make_device(backend_cls, "bob@example.org", 2)
    alice = await make_device(backend_cls, "alice@example.org", 1, pre_keys=0)
    alice2 = await make_device(backend_cls, "alice@example.org", 3, pre_keys=0)
    carol = await make_device(backend_cls, "carol@example.org", 4, pre_keys=0)
    old_bundle = only_pre_key(await bob.backend.get_bundle(bob.bare_jid, bob.device_id), 42)

    _, b1 = await initiate(alice, bob, old_bundle)
    await bob.backend.store_session(b1)
    assert await bob.backend.hide_pre_key(b1) is True
    # Hidden: not in the bundle, not counted...
    assert 42 not in (await bob.backend.get_bundle(bob.bare_jid, bob.device_id)).pre_keys
    assert await bob.backend.get_num_visible_pre_keys() == 99

    # ... but still usable, also by a new backend instance on the same storage.
    bob.restart()
    assert 42 not in (await bob.backend.get_bundle(bob.bare_jid, bob.device_id)).pre_keys
    assert await bob.backend.get_num_visible_pre_keys() == 99
    _, b2 = await initiate(alice2, bob, old_bundle, b"second kex with pre key 42")
    assert b2.key_exchange.pre_key_id == 42
    assert await bob.backend.hide_pre_key(b2) is False  # hidden already

    await bob.backend.delete_hidden_pre_keys()
    await bob.backend.delete_hidden_pre_keys()  # nothing left to delete: no error
    bob.restart()
    assert await bob.backend.get_num_visible_pre_keys() == 99
    with pytest.raises(KeyExchangeFailed, match=r"pre key 42\b"):
        await initiate(carol, bob, old_bundle)


async def test_get_bundle(alice: Device, bob: Device) -> None:
    bundle = await bob.backend.get_bundle(bob.bare_jid, bob.device_id)
    assert isinstance(bundle, EngineBundle)
    assert bundle.namespace == bob.backend.namespace
    assert (bundle.bare_jid, bundle.device_id) == (bob.bare_jid, bob.device_id)
    assert bundle.identity_key == await bob.identity_key()
    assert bundle.signed_pre_key_id == 1
    assert len(bundle.signed_pre_key) == 32 and len(bundle.signed_pre_key_signature) == 64
    assert await bob.backend.get_bundle(bob.bare_jid, bob.device_id) == bundle
    other = await bob.backend.get_bundle("other@example.org", 9)
    assert (other.bare_jid, other.device_id) == ("other@example.org", 9)
    assert other != bundle
    # Round trip through XML.
    parsed = bob.etree.parse_bundle(
        ET.fromstring(ET.tostring(bob.etree.serialize_bundle(bundle))), bob.bare_jid, bob.device_id
    )
    assert parsed == bundle and hash(parsed) == hash(bundle)
    # Getting a bundle writes nothing once the keys exist.
    bob.storage.reset()
    await bob.backend.get_bundle(bob.bare_jid, bob.device_id)
    assert bob.storage.writes == []


# -- signed pre key ---------------------------------------------------------------------------------------


async def test_signed_pre_key_age_with_injected_clock(backend_cls: type[EngineBackend]) -> None:
    bob = await make_device(backend_cls, "bob@example.org", 2, pre_keys=0)
    now = [1_700_000_000.0]
    bob.backend._clock = lambda: now[0]
    assert await bob.backend.signed_pre_key_age() == 0  # the first signed pre key is made now
    now[0] += 3600.7
    assert await bob.backend.signed_pre_key_age() == 3600
    bob.restart()
    assert await bob.backend.signed_pre_key_age() == 3600
    await bob.backend.rotate_signed_pre_key()
    assert await bob.backend.signed_pre_key_age() == 0
    now[0] += 86400
    bob.restart()
    assert await bob.backend.signed_pre_key_age() == 86400
    now[0] -= 10 * 86400  # the clock jumped back: never a negative age
    assert await bob.backend.signed_pre_key_age() == 0


async def test_rotate_signed_pre_key(alice: Device, bob: Device) -> None:
    bundle1 = await bob.backend.get_bundle(bob.bare_jid, bob.device_id)
    assert bundle1.signed_pre_key_id == 1
    await bob.backend.rotate_signed_pre_key()
    bob.restart()
    bundle2 = await bob.backend.get_bundle(bob.bare_jid, bob.device_id)
    assert bundle2.signed_pre_key_id == 2
    assert bundle2.signed_pre_key != bundle1.signed_pre_key
    assert bundle2.pre_keys == bundle1.pre_keys  # pre keys are untouched
    # Both the current and the previous signed pre key work.
    _, b_old = await initiate(alice, bob, bundle1)
    assert b_old.key_exchange.signed_pre_key_id == 1
    _, b_new = await initiate(alice, bob, bundle2)
    assert b_new.key_exchange.signed_pre_key_id == 2

    await bob.backend.rotate_signed_pre_key()
    bob.restart()
    assert (await bob.backend.get_bundle(bob.bare_jid, bob.device_id)).signed_pre_key_id == 3
    with pytest.raises(KeyExchangeFailed, match=r"signed pre key 1\b"):
        await initiate(alice, bob, bundle1)
    _, b_prev = await initiate(alice, bob, bundle2)
    assert b_prev.key_exchange.signed_pre_key_id == 2
    # Rotation does not disturb existing sessions.
    _a_session, _b_session = await establish(alice, bob)
    await bob.backend.rotate_signed_pre_key()
    await bob.backend.rotate_signed_pre_key()
    await exchange(alice, bob, b"after two rotations")
    await exchange(bob, alice, b"after two rotations, reply")
    assert (await bob.backend.get_bundle(bob.bare_jid, bob.device_id)).signed_pre_key_id == 5


# -- bundles ------------------------------------------------------------------------------------------------


async def test_active_build_with_bad_bundles(alice: Device, bob: Device) -> None:
    bundle = await bob.backend.get_bundle(bob.bare_jid, bob.device_id)
    _, key_material = await alice.backend.encrypt_plaintext(b"x")
    signature = bytearray(bundle.signed_pre_key_signature)
    signature[5] ^= 0x40
    other_spk = (await alice.backend.get_bundle(alice.bare_jid, alice.device_id)).signed_pre_key
    bad = {
        "no pre keys": with_changes(bundle, pre_keys={}),
        "bad signature": with_changes(bundle, signed_pre_key_signature=bytes(signature)),
        "zero signature": with_changes(bundle, signed_pre_key_signature=bytes(64)),
        "signature of another key": with_changes(bundle, signed_pre_key=other_spk),
        "another identity": with_changes(bundle, identity_key=await alice.identity_key()),
    }
    for reason, bad_bundle in bad.items():
        with pytest.raises(KeyExchangeFailed) as info:
            await alice.backend.build_session_active(bob.bare_jid, bob.device_id, bad_bundle, key_material)
        assert bob.bare_jid in str(info.value), reason
    assert await alice.backend.load_session(bob.bare_jid, bob.device_id) is None


async def test_passive_build_with_unknown_ids(alice: Device, bob: Device) -> None:
    a_session, _ = await initiate(alice, bob)
    content, key_material = await alice.backend.encrypt_plaintext(b"x")
    encrypted = await alice.backend.encrypt_key_material(a_session, key_material)
    message, _ = await transmit(alice, bob, content, [(encrypted, a_session.key_exchange)])
    enc, kex = key_for(message, bob)
    assert isinstance(kex, EngineKeyExchange)
    cls = type(kex)
    unknown_spk = cls(kex.identity_key, kex.ephemeral_key, 777, kex.pre_key_id)
    with pytest.raises(KeyExchangeFailed, match=r"signed pre key 777\b"):
        await bob.backend.build_session_passive(alice.bare_jid, alice.device_id, unknown_spk, enc)
    unknown_pk = cls(kex.identity_key, kex.ephemeral_key, kex.signed_pre_key_id, 4242)
    with pytest.raises(KeyExchangeFailed, match=r"pre key 4242\b"):
        await bob.backend.build_session_passive(alice.bare_jid, alice.device_id, unknown_pk, enc)
    # A kex with wrong keys: the key agreement or the first message fails, a backend exception.
    wrong_ik = cls(await bob.identity_key(), kex.ephemeral_key, kex.signed_pre_key_id, kex.pre_key_id)
    with pytest.raises(BackendException):
        await bob.backend.build_session_passive(alice.bare_jid, alice.device_id, wrong_ik, enc)
    wrong_ek = cls(kex.identity_key, bytes(32), kex.signed_pre_key_id, kex.pre_key_id)
    with pytest.raises(BackendException):
        await bob.backend.build_session_passive(alice.bare_jid, alice.device_id, wrong_ek, enc)
    # Tampered initial message: DecryptionFailed; nothing was consumed, the genuine one still works.
    with pytest.raises(DecryptionFailed):
        await bob.backend.build_session_passive(alice.bare_jid, alice.device_id, kex, tampered(enc))
    _session, plain = await bob.backend.build_session_passive(alice.bare_jid, alice.device_id, kex, enc)
    assert await bob.backend.decrypt_plaintext(message.content, plain) == b"x"
    assert await bob.backend.get_num_visible_pre_keys() == 100


# -- decrypt_key_material ---------------------------------------------------------------------------------


async def test_tampering_leaves_the_session_usable(alice: Device, bob: Device) -> None:
    await establish(alice, bob)
    a_session = await load(alice, bob)
    message, enc, _ = await send(alice, bob, a_session, b"genuine")
    b_session = await load(bob, alice)
    before = b_session.state
    assert isinstance(enc, EngineEncryptedKeyMaterial)
    data = enc.encrypted_message
    broken = [tampered(enc, i) for i in (0, 1, len(data) // 2, -1)]
    broken += [
        replaced(enc, b""),
        replaced(enc, data[:-1]),
        replaced(enc, data[:10]),
        replaced(enc, os.urandom(80)),
    ]
    broken += [replaced(enc, data + b"\x00")]
    for bad in broken:
        with pytest.raises(DecryptionFailed):
            await bob.backend.decrypt_key_material(b_session, bad)
        assert b_session.state is before
    assert await receive(bob, b_session, message, enc) == b"genuine"
    # A replay is rejected as well, without damage.
    after = b_session.state
    with pytest.raises(DecryptionFailed):
        await bob.backend.decrypt_key_material(b_session, enc)
    assert b_session.state is after
    await bob.backend.store_session(b_session)
    await exchange(bob, alice, b"still fine")
    await exchange(alice, bob, b"still fine, reply")


async def test_key_material_of_the_other_session_fails(backend_cls: type[EngineBackend]) -> None:
    alice = await make_device(backend_cls, "alice@example.org", 1)
    bob = await make_device(backend_cls, "bob@example.org", 2)
    carol = await make_device(backend_cls, "carol@example.org", 3)
    await establish(alice, bob)
    await establish(carol, bob)
    _message, enc, _ = await send(alice, bob, await load(alice, bob), b"for bob from alice")
    with pytest.raises(DecryptionFailed):
        await bob.backend.decrypt_key_material(await load(bob, carol), enc)


async def _alice_sends(alice: Device, bob: Device, n: int) -> list[tuple[Any, Any]]:
    a_session = await load(alice, bob)
    sent = []
    for i in range(n):
        message, enc, _ = await send(alice, bob, a_session, b"m%d" % (i + 1))
        sent.append((message, enc))
    await alice.backend.store_session(a_session)
    return sent


async def test_too_many_skipped_message_keys_per_message(backend_cls: type[EngineBackend]) -> None:
    alice = await make_device(backend_cls, "alice@example.org", 1)
    bob = await make_device(backend_cls, "bob@example.org", 2, limits=(20, 5))
    assert bob.backend.max_num_per_message_skipped_keys == 5
    await establish(alice, bob)
    sent = await _alice_sends(alice, bob, 8)
    b_session = await load(bob, alice)
    before = b_session.state
    # m8 would skip m1..m7 (7 > 5): the documented exception, not wrapped in DecryptionFailed.
    with pytest.raises(TooManySkippedMessageKeys) as info:
        await bob.backend.decrypt_key_material(b_session, sent[7][1])
    assert not isinstance(info.value, DecryptionFailed)
    assert bob.bare_jid not in str(info.value) and alice.bare_jid in str(info.value)
    assert b_session.state is before
    with pytest.raises(TooManySkippedMessageKeys):
        await bob.backend.decrypt_key_material(b_session, sent[6][1])  # skips 6
    # m6 skips exactly 5: allowed; then m8 skips one.
    assert await receive(bob, b_session, *sent[5]) == b"m6"
    assert await receive(bob, b_session, *sent[7]) == b"m8"
    for i in (0, 4, 6, 1):
        assert await receive(bob, b_session, *sent[i]) == b"m%d" % (i + 1)


async def test_per_session_skipped_keys_are_evicted_oldest_first(backend_cls: type[EngineBackend]) -> None:
    alice = await make_device(backend_cls, "alice@example.org", 1)
    bob = await make_device(backend_cls, "bob@example.org", 2, limits=(3, 3))
    await establish(alice, bob)
    sent = await _alice_sends(alice, bob, 8)
    b_session = await load(bob, alice)
    assert await receive(bob, b_session, *sent[3]) == b"m4"  # keeps m1..m3
    await bob.backend.store_session(b_session)
    bob.restart()
    b_session = await load(bob, alice)
    assert await receive(bob, b_session, *sent[7]) == b"m8"  # adds m5..m7, evicts m1..m3
    await bob.backend.store_session(b_session)
    bob.restart()
    b_session = await load(bob, alice)
    for i in (0, 1, 2):
        with pytest.raises(DecryptionFailed):
            await bob.backend.decrypt_key_material(b_session, sent[i][1])
    for i in (6, 4, 5):
        assert await receive(bob, b_session, *sent[i]) == b"m%d" % (i + 1)


@pytest.mark.parametrize(
    ("limits", "expected"),
    [((1000, 500), (1000, 500)), ((1000, 1000), (1000, 1000)), ((1000, None), (1000, 1000)),
     ((0, 0), (0, 0)), ((0, None), (0, 0)), ((7, 1), (7, 1))],
)  # fmt: skip
async def test_skipped_key_limits(
    backend_cls: type[EngineBackend], limits: tuple[int, Optional[int]], expected: tuple[int, int]
) -> None:
    """PROTOCOL.md 6.1 (regression): the reference rejects every explicit non-zero per-message limit."""
    alice = await make_device(backend_cls, "alice@example.org", 1)
    bob = await make_device(backend_cls, "bob@example.org", 2, limits=limits)
    assert (
        bob.backend.max_num_per_session_skipped_keys,
        bob.backend.max_num_per_message_skipped_keys,
    ) == expected
    await establish(alice, bob)
    await exchange(alice, bob, b"works")
    if expected[1] >= 1:
        sent = await _alice_sends(alice, bob, 2)
        assert await receive(bob, await load(bob, alice), *sent[1]) == b"m2"
    else:
        sent = await _alice_sends(alice, bob, 2)
        with pytest.raises(TooManySkippedMessageKeys):
            await bob.backend.decrypt_key_material(await load(bob, alice), sent[1][1])


@pytest.mark.parametrize(
    ("limits", "error"),
    [((10, 11), ValueError), ((0, 1), ValueError), ((10, 0), ValueError), ((-1, None), ValueError),
     ((10, -1), ValueError), ((1.5, None), TypeError), ((10, "5"), TypeError)],
)  # fmt: skip
def test_invalid_skipped_key_limits(
    backend_cls: type[EngineBackend], limits: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        backend_cls(CountingStorage(), *limits)


def test_constructor_defaults(backend_cls: type[EngineBackend]) -> None:
    backend = backend_cls(CountingStorage())
    assert backend.max_num_per_session_skipped_keys == 1000
    assert backend.max_num_per_message_skipped_keys == 1000
    backend = backend_cls(CountingStorage(), max_num_per_session_skipped_keys=10)
    assert backend.max_num_per_message_skipped_keys == 10


# -- purge ------------------------------------------------------------------------------------------------


def _other(cls: type[EngineBackend]) -> type[EngineBackend]:
    return oldmemo.Oldmemo if cls is twomemo.Twomemo else twomemo.Twomemo


async def _two_namespace_setup(
    cls: type[EngineBackend],
) -> tuple[CountingStorage, dict[type[EngineBackend], Device], list[Device]]:
    """Alice with both backends on one storage, sessions with Bob and Carol in both namespaces."""
    storage = CountingStorage()
    mine = {c: await make_device(c, "alice@example.org", 1, storage=storage) for c in (cls, _other(cls))}
    peers = []
    for c in (cls, _other(cls)):
        for jid, device_id in (("bob@example.org", 2), ("bob@example.org", 3), ("carol@example.org", 4)):
            peer = await make_device(c, jid, device_id, pre_keys=2)
            await establish(mine[c], peer)
            peers.append(peer)
    return storage, mine, peers


def _namespace_keys(storage: CountingStorage, cls: type[EngineBackend]) -> dict[str, Any]:
    prefix = f"/{cls.PROFILE.name}/"
    return {k: v for k, v in storage.snapshot().items() if k.startswith(prefix)}


async def test_purge_bare_jid(backend_cls: type[EngineBackend]) -> None:
    storage, mine, peers = await _two_namespace_setup(backend_cls)
    other_before = _namespace_keys(storage, _other(backend_cls))
    core_before = {k: v for k, v in storage.snapshot().items() if k.startswith("/ikp")}
    device = mine[backend_cls]
    await device.backend.purge_bare_jid("bob@example.org")
    await device.backend.purge_bare_jid("nobody@example.org")  # unknown: no error

    remaining = _namespace_keys(storage, backend_cls)
    assert not [k for k in remaining if "bob@example.org" in k]
    assert "bob@example.org" not in repr(remaining)
    assert _namespace_keys(storage, _other(backend_cls)) == other_before
    assert {k: v for k, v in storage.snapshot().items() if k.startswith("/ikp")} == core_before
    for backend in (device.backend, device.restart()):
        assert await backend.load_session("bob@example.org", 2) is None
        assert await backend.load_session("bob@example.org", 3) is None
        assert await backend.load_session("carol@example.org", 4) is not None
    carol = next(p for p in peers if p.cls is backend_cls and p.bare_jid == "carol@example.org")
    await exchange(device, carol, b"carol is still there")
    # The other namespace still has its sessions with Bob.
    other = mine[_other(backend_cls)]
    assert await other.restart().load_session("bob@example.org", 2) is not None
    # New sessions with Bob can be built and stored again afterwards.
    bob = next(p for p in peers if p.cls is backend_cls and p.device_id == 2)
    await establish(device, bob)
    await exchange(device, bob, b"hello again")
    device.restart()
    assert await device.backend.load_session("bob@example.org", 2) is not None


async def test_purge(backend_cls: type[EngineBackend]) -> None:
    storage, mine, _ = await _two_namespace_setup(backend_cls)
    other_before = _namespace_keys(storage, _other(backend_cls))
    core_before = {k: v for k, v in storage.snapshot().items() if not k.startswith("/")}
    core_before.update({k: v for k, v in storage.snapshot().items() if k.startswith("/ikp")})
    device = mine[backend_cls]
    old_bundle = await device.backend.get_bundle(device.bare_jid, device.device_id)
    await device.backend.purge()

    assert _namespace_keys(storage, backend_cls) == {}
    assert _namespace_keys(storage, _other(backend_cls)) == other_before
    assert {k: v for k, v in storage.snapshot().items() if k.startswith("/ikp")} == {
        k: v for k, v in core_before.items() if k.startswith("/ikp")
    }
    for backend in (device.backend, device.restart()):
        assert await backend.load_session("bob@example.org", 2) is None
        assert await backend.load_session("carol@example.org", 4) is None
        assert await backend.get_num_visible_pre_keys() == 0
    # The backend starts over with fresh keys (same identity).
    bundle = await device.backend.get_bundle(device.bare_jid, device.device_id)
    assert bundle.identity_key == old_bundle.identity_key
    assert bundle.signed_pre_key != old_bundle.signed_pre_key and bundle.pre_keys == {}
    await device.backend.purge()
    assert _namespace_keys(storage, backend_cls) == {}


# -- labels ------------------------------------------------------------------------------------------------


async def test_labels_twomemo() -> None:
    alice = await make_device(twomemo.Twomemo, "alice@example.org", 1, pre_keys=0)
    bob = await make_device(twomemo.Twomemo, "bob@example.org", 2, pre_keys=0)
    backend = alice.backend
    assert backend.supports_labels is True
    ik = await alice.identity_key()
    for label in ("Phone", "", "Gajim on my 💻 laptop"):
        signature = await backend.sign_own_label(label)
        assert isinstance(signature, bytes) and len(signature) == 64
        assert await backend.verify_label_signature(label, signature, ik) is True
        assert await bob.backend.verify_label_signature(label, signature, ik) is True
        assert await backend.verify_label_signature(label + "x", signature, ik) is False
        assert await backend.verify_label_signature(label, signature, await bob.identity_key()) is False
    signature = await backend.sign_own_label("Phone")
    flipped = bytearray(signature)
    flipped[10] ^= 1
    garbage_signatures = [
        b"",
        b"\x00",
        bytes(64),
        bytes(flipped),
        signature[:63],
        signature + b"\x00",
        os.urandom(64),
    ]
    for garbage in garbage_signatures:
        assert await backend.verify_label_signature("Phone", garbage, ik) is False
    # A label that cannot be UTF-8 encoded (a lone surrogate) was never signed: False, no exception.
    assert await backend.verify_label_signature("Phone\ud800", signature, ik) is False
    for garbage_key in (b"", bytes(31), bytes(32), b"\xff" * 32, ik + b"\x00", os.urandom(32)):
        if garbage_key != ik:
            assert await backend.verify_label_signature("Phone", signature, garbage_key) is False


async def test_labels_oldmemo() -> None:
    alice = await make_device(oldmemo.Oldmemo, "alice@example.org", 1, pre_keys=0)
    assert alice.backend.supports_labels is False
    with pytest.raises(NotImplementedError):
        await alice.backend.sign_own_label("Phone")
    with pytest.raises(NotImplementedError):
        await alice.backend.verify_label_signature("Phone", bytes(64), await alice.identity_key())


# -- payload ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 15, 16, 17, 1000, 100_000])
async def test_payload_round_trip(backend_cls: type[EngineBackend], size: int) -> None:
    backend = backend_cls(CountingStorage())
    plaintext = os.urandom(size)
    content, key_material = await backend.encrypt_plaintext(plaintext)
    assert not content.empty
    assert await backend.decrypt_plaintext(content, key_material) == plaintext
    again, other_key = await backend.encrypt_plaintext(plaintext)
    # A fresh key each time. (Legacy ciphertexts of one byte are equal once in 256 runs: no check there.)
    assert other_key.key != key_material.key  # type: ignore[attr-defined]
    if size >= 16:
        assert again.ciphertext != content.ciphertext  # type: ignore[attr-defined]
    with pytest.raises(DecryptionFailed):
        await backend.decrypt_plaintext(content, other_key)


async def test_encrypt_empty(backend_cls: type[EngineBackend]) -> None:
    backend = backend_cls(CountingStorage())
    content, key_material = await backend.encrypt_empty()
    assert content.empty
    assert key_material.auth_tag == b""  # type: ignore[attr-defined]
    if backend_cls is twomemo.Twomemo:
        assert key_material.key == bytes(32)  # type: ignore[attr-defined]
    else:
        assert isinstance(content, oldmemo.oldmemo.ContentImpl)
        assert len(content.initialization_vector) == 12
        assert len(key_material.key) == 16  # type: ignore[attr-defined]
        other, _ = await backend.encrypt_empty()
        assert isinstance(other, oldmemo.oldmemo.ContentImpl)
        assert other.initialization_vector != content.initialization_vector


async def test_payload_tampering_twomemo() -> None:
    backend = twomemo.Twomemo(CountingStorage())
    impl = twomemo.twomemo
    content, key_material = await backend.encrypt_plaintext(b"attack at dawn, " * 4)
    assert isinstance(content, impl.ContentImpl) and isinstance(key_material, impl.PlainKeyMaterialImpl)
    ct, key, tag = content.ciphertext, key_material.key, key_material.auth_tag

    def flip(data: bytes, i: int) -> bytes:
        out = bytearray(data)
        out[i] ^= 0x80
        return bytes(out)

    bad = [
        (impl.ContentImpl(flip(ct, 0)), key_material),
        (impl.ContentImpl(flip(ct, -1)), key_material),
        (impl.ContentImpl(ct[:-16]), key_material),
        (impl.ContentImpl(ct + bytes(16)), key_material),
        (impl.ContentImpl(ct[:-1]), key_material),
        (content, impl.PlainKeyMaterialImpl(flip(key, 3), tag)),
        (content, impl.PlainKeyMaterialImpl(key, flip(tag, 3))),
        (content, impl.PlainKeyMaterialImpl(key, tag[:-1])),
        (content, impl.PlainKeyMaterialImpl(key, b"")),
        (content, impl.PlainKeyMaterialImpl(key[:16], tag)),
        (content, impl.PlainKeyMaterialImpl.make_empty()),
        (content, impl.PlainKeyMaterialImpl(b"", b"")),
    ]
    # Valid tag over a ciphertext whose padding is bad, or that is not whole blocks.
    out = hkdf_sha256(key, bytes(32), b"OMEMO Payload", 80)
    encryptor = Cipher(algorithms.AES(out[:32]), modes.CBC(out[64:])).encryptor()
    bad_padding = encryptor.update(b"\x00" * 31 + b"\x11") + encryptor.finalize()
    for raw in (bad_padding, bad_padding[:20], b""):
        bad.append((impl.ContentImpl(raw), impl.PlainKeyMaterialImpl(key, hmac_sha256(out[32:64], raw)[:16])))
    for bad_content, bad_key in bad:
        with pytest.raises(DecryptionFailed):
            await backend.decrypt_plaintext(bad_content, bad_key)


async def test_payload_variants_and_tampering_oldmemo() -> None:
    backend = oldmemo.Oldmemo(CountingStorage())
    impl = oldmemo.oldmemo
    key = os.urandom(16)
    plaintext = b"legacy variants"
    for iv in (os.urandom(12), os.urandom(16)):
        sealed = AESGCM(key).encrypt(iv, plaintext, None)
        ct, tag = sealed[:-16], sealed[-16:]
        # Current form: tag in the key material.
        assert await backend.decrypt_plaintext(
            impl.ContentImpl(ct, iv), impl.PlainKeyMaterialImpl(key, tag)
        ) == (plaintext)
        # Old form: tag appended to the payload, 16-byte key material.
        assert await backend.decrypt_plaintext(
            impl.ContentImpl(sealed, iv), impl.PlainKeyMaterialImpl(key, b"")
        ) == (plaintext)
        bad = [
            (impl.ContentImpl(ct[:-1] + bytes([ct[-1] ^ 1]), iv), impl.PlainKeyMaterialImpl(key, tag)),
            (impl.ContentImpl(ct, iv), impl.PlainKeyMaterialImpl(key, tag[:-1] + bytes([tag[-1] ^ 1]))),
            (impl.ContentImpl(ct, iv), impl.PlainKeyMaterialImpl(os.urandom(16), tag)),
            (impl.ContentImpl(ct, iv), impl.PlainKeyMaterialImpl(key, tag[:8])),
            (impl.ContentImpl(ct, iv), impl.PlainKeyMaterialImpl(key[:8], tag)),
            (impl.ContentImpl(ct, iv), impl.PlainKeyMaterialImpl(b"", b"")),
            (impl.ContentImpl(ct, iv[:8]), impl.PlainKeyMaterialImpl(key, tag)),
            (impl.ContentImpl(ct, b""), impl.PlainKeyMaterialImpl(key, tag)),
            (impl.ContentImpl(ct, iv + b"\x00"), impl.PlainKeyMaterialImpl(key, tag)),
            (impl.ContentImpl(ct, os.urandom(len(iv))), impl.PlainKeyMaterialImpl(key, tag)),
            (impl.ContentImpl(ct, iv), impl.PlainKeyMaterialImpl(key, b"")),  # old form without tag
            (impl.ContentImpl(sealed[:15], iv), impl.PlainKeyMaterialImpl(key, b"")),
            (impl.ContentImpl(sealed[:-1], iv), impl.PlainKeyMaterialImpl(key, b"")),
        ]
        for bad_content, bad_key in bad:
            with pytest.raises(DecryptionFailed):
                await backend.decrypt_plaintext(bad_content, bad_key)


async def test_oldmemo_old_variant_end_to_end() -> None:
    """A message of old legacy clients, built by hand: GCM tag appended to the payload and only the
    16-byte key sent through the ratchet (PROTOCOL.md 4.6 / 6.7: the reference fails with ValueError)."""
    alice = await make_device(oldmemo.Oldmemo, "alice@example.org", 1)
    bob = await make_device(oldmemo.Oldmemo, "bob@example.org", 2)
    await establish(alice, bob)
    impl = oldmemo.oldmemo
    for iv_length in (12, 16):
        key, iv = os.urandom(16), os.urandom(iv_length)
        sealed = AESGCM(key).encrypt(iv, b"from an old client", None)
        a_session = await load(alice, bob)
        encrypted = await alice.backend.encrypt_key_material(a_session, impl.PlainKeyMaterialImpl(key, b""))
        await alice.backend.store_session(a_session)
        message, element = await transmit(alice, bob, impl.ContentImpl(sealed, iv), [(encrypted, None)])
        iv_element = next(e for e in element.iter() if e.tag.endswith("}iv"))
        assert base64.b64decode(iv_element.text or "") == iv  # the IV of this length travels as is
        enc, _ = key_for(message, bob)
        b_session = await load(bob, alice)
        plain = await bob.backend.decrypt_key_material(b_session, enc)
        assert isinstance(plain, impl.PlainKeyMaterialImpl)
        assert (plain.key, plain.auth_tag) == (key, b"")
        assert await bob.backend.decrypt_plaintext(message.content, plain) == b"from an old client"
        await bob.backend.store_session(b_session)


@pytest.mark.parametrize(("version", "accepted"), [(0x34, True), (0x3F, True), (0x24, False), (0x43, False)])
async def test_oldmemo_version_byte_high_nibble(
    monkeypatch: pytest.MonkeyPatch, version: int, accepted: bool
) -> None:
    """PROTOCOL.md 4.3 / 6.11 (regression): libsignal >= 0.24 sends 0x34; any version byte whose high
    nibble is 3 must be accepted (the reference insists on exactly 0x33), others rejected."""
    alice = await make_device(oldmemo.Oldmemo, "alice@example.org", 1)
    bob = await make_device(oldmemo.Oldmemo, "bob@example.org", 2)
    monkeypatch.setattr(omemo_engine.wire, "_LEGACY_VERSION", version)
    if not accepted:
        with pytest.raises(MalformedXML):  # the PreKeySignalMessage is parsed with the XML
            await initiate(alice, bob)
        monkeypatch.setattr(omemo_engine.wire, "_LEGACY_VERSION", 0x33)
        await establish(alice, bob)
        monkeypatch.setattr(omemo_engine.wire, "_LEGACY_VERSION", version)
        message, enc, _ = await send(alice, bob, await load(alice, bob), b"x")
        assert isinstance(enc, EngineEncryptedKeyMaterial) and enc.encrypted_message[0] == version
        with pytest.raises(DecryptionFailed):
            await receive(bob, await load(bob, alice), message, enc)
        return
    await establish(alice, bob)  # key exchange and reply, all with the patched version byte
    message, enc, _ = await send(alice, bob, await load(alice, bob), b"from libsignal 0.24+")
    assert isinstance(enc, EngineEncryptedKeyMaterial) and enc.encrypted_message[0] == version
    assert await receive(bob, await load(bob, alice), message, enc) == b"from libsignal 0.24+"


async def test_too_many_skipped_keys_in_the_first_message(backend_cls: type[EngineBackend]) -> None:
    """build_session_passive enforces the per-message limit too; the pre key stays usable."""
    alice = await make_device(backend_cls, "alice@example.org", 1)
    bob = await make_device(backend_cls, "bob@example.org", 2, limits=(20, 5))
    bundle = await bob.backend.get_bundle(bob.bare_jid, bob.device_id)
    _, key_material = await alice.backend.encrypt_plaintext(b"m1")
    a_session, _ = await alice.backend.build_session_active(bob.bare_jid, bob.device_id, bundle, key_material)
    assert isinstance(a_session, EngineSession)
    sent = [await send(alice, bob, a_session, b"m%d" % i) for i in range(2, 9)]  # n = 1..7
    _, enc, kex = sent[-1]  # n = 7 skips 7 keys
    assert kex is not None
    with pytest.raises(TooManySkippedMessageKeys):
        await bob.backend.build_session_passive(alice.bare_jid, alice.device_id, kex, enc)
    message, enc, kex = sent[4]  # n = 5 skips 5 keys: allowed
    assert kex is not None
    b_session, plain = await bob.backend.build_session_passive(alice.bare_jid, alice.device_id, kex, enc)
    assert await bob.backend.decrypt_plaintext(message.content, plain) == b"m6"
    assert isinstance(b_session, EngineSession)
    assert await receive(bob, b_session, *sent[6][:2]) == b"m8"


@pytest.mark.parametrize(("old_chain_gap", "old_messages_kept"), [(5, True), (8, False)])
async def test_skipped_keys_across_a_dh_ratchet_step(
    backend_cls: type[EngineBackend], old_chain_gap: int, old_messages_kept: bool
) -> None:
    """Messages of the previous receiving chain that were skipped on a DH ratchet step stay
    decryptable while the gap is within the per-message limit. A larger gap does not fail the new
    message (PROTOCOL.md 3.2, as the reference): those old keys are just not derived."""
    alice = await make_device(backend_cls, "alice@example.org", 1)
    bob = await make_device(backend_cls, "bob@example.org", 2, limits=(20, 5))
    await establish(alice, bob)
    await exchange(alice, bob, b"Alice's current chain reaches Bob")
    old = await _alice_sends(alice, bob, old_chain_gap)  # Bob receives none of them
    await exchange(bob, alice, b"bob speaks")  # new ratchet key: Alice's next message starts a new chain
    new = await _alice_sends(alice, bob, 1)
    b_session = await load(bob, alice)
    assert await receive(bob, b_session, *new[0]) == b"m1"
    for i, (message, enc) in enumerate(old):
        if old_messages_kept:
            assert await receive(bob, b_session, message, enc) == b"m%d" % (i + 1)
        else:
            # Seen as a step to an unknown ratchet key: fails (MAC or skip limit), harmlessly.
            before = b_session.state
            with pytest.raises((DecryptionFailed, TooManySkippedMessageKeys)):
                await bob.backend.decrypt_key_material(b_session, enc)
            assert b_session.state is before
    await bob.backend.store_session(b_session)
    await exchange(alice, bob, b"the conversation goes on")
    await exchange(bob, alice, b"the conversation goes on, reply")


async def test_mutated_key_exchanges_and_messages_fail_with_backend_exceptions(
    backend_cls: type[EngineBackend],
) -> None:
    """Every single-bit mutation of a key exchange or ratchet message either does not parse
    (MalformedMessage, a ValueError, raised by the etree layer) or fails in the backend with a
    BackendException; nothing else escapes.

    The only mutations that may build a session are those that do not change the key agreement:
    bit 255 of an X25519 public key (ignored by X25519, RFC 7748 section 5: the ephemeral key, and
    legacy's Curve25519 identity key) and the low nibble of legacy's version byte (PROTOCOL.md 4.3;
    a PreKeySignalMessage has no MAC of its own and the inner SignalMessage is unchanged).
    """
    alice = await make_device(backend_cls, "alice@example.org", 1)
    bob = await make_device(backend_cls, "bob@example.org", 2)
    bundle = await bob.backend.get_bundle(bob.bare_jid, bob.device_id)
    _, key_material = await alice.backend.encrypt_plaintext(b"x")
    a_session, encrypted = await alice.backend.build_session_active(
        bob.bare_jid, bob.device_id, bundle, key_material
    )
    assert isinstance(a_session, EngineSession) and isinstance(encrypted, EngineEncryptedKeyMaterial)
    kex = a_session.key_exchange
    wire = kex.serialize(encrypted.encrypted_message)  # type: ignore[attr-defined]
    sign_bit = xeddsa.ed25519_pub_sign_bit(kex.identity_key)
    harmless = {(wire.index(kex.ephemeral_key) + 31, 0x80)}
    if backend_cls is oldmemo.Oldmemo:
        harmless |= {(0, 0x01), (0, 0x02), (0, 0x04), (0, 0x08)}
        harmless.add((wire.index(xeddsa.ed25519_pub_to_curve25519_pub(kex.identity_key)) + 31, 0x80))

    def parse_kex(data: bytes) -> tuple[Any, bytes]:
        if backend_cls is twomemo.Twomemo:
            return twomemo.twomemo.KeyExchangeImpl.parse(data)
        return oldmemo.oldmemo.KeyExchangeImpl.parse(data, sign_bit)

    outcomes = {"unparsable": 0, "rejected": 0, "harmless": 0}
    for i in range(len(wire)):
        for bit in (0x01, 0x02, 0x04, 0x08, 0x80):
            mutated = bytearray(wire)
            mutated[i] ^= bit
            try:
                parsed, message = parse_kex(bytes(mutated))
            except ValueError:
                outcomes["unparsable"] += 1
                continue
            try:
                await bob.backend.build_session_passive(
                    alice.bare_jid, alice.device_id, parsed, replaced(encrypted, message)
                )
            except BackendException:
                outcomes["rejected"] += 1
            else:
                assert (i, bit) in harmless, (i, bit)
                outcomes["harmless"] += 1
    assert outcomes["rejected"] > 0 and outcomes["harmless"] == len(harmless)
    assert await bob.backend.get_num_visible_pre_keys() == 100

    a_session, b_session = await establish(alice, bob)
    _, enc, _ = await send(alice, bob, a_session, b"y")
    assert isinstance(enc, EngineEncryptedKeyMaterial)
    before = b_session.state
    for i in range(len(enc.encrypted_message)):
        for bit in (0x01, 0x80):
            with pytest.raises(BackendException):
                await bob.backend.decrypt_key_material(b_session, tampered_bit(enc, i, bit))
    assert b_session.state is before


def tampered_bit(enc: EngineEncryptedKeyMaterial, index: int, bit: int) -> EngineEncryptedKeyMaterial:
    data = bytearray(enc.encrypted_message)
    data[index] ^= bit
    return type(enc)(enc.bare_jid, enc.device_id, bytes(data))
