"""What the backends write to the storage, and when (issue "Backends" §2: storage writes).

Every write is counted by :class:`~tests.backends.conftest.CountingStorage` (one entry per
``_store``/``_delete`` that reaches the storage, with the length of the stored JSON). The contract:

- a steady-state encrypt (``encrypt_key_material`` + ``store_session``) and a steady-state decrypt
  (``decrypt_key_material`` + ``store_session``) write at most one record each;
- building sessions, encrypting, decrypting, loading and reading the bundle write nothing (only
  ``store_session`` persists a session, and key-state methods persist only when they change keys);
- the backend writes only below ``/{namespace}/`` (and the shared ``/ikp/`` on first use).

The measured numbers are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import statistics
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from omemo._engine.backend import (
    _SESSION_HEADER,
    _SKIPPED_APART,
    EngineBackend,
    EngineSession,
    _encode_session,
)
from omemo.message import Content, EncryptedKeyMaterial, Message
from omemo.storages import SQLiteStorage

from .conftest import (
    CountingStorage,
    Device,
    Write,
    establish,
    exchange,
    key_for,
    make_device,
    send,
    transmit,
)

# -- helpers ------------------------------------------------------------------------------------------


async def load(device: Device, peer: Device) -> EngineSession:
    session = await device.backend.load_session(peer.bare_jid, peer.device_id)
    assert isinstance(session, EngineSession)
    return session


async def receive(device: Device, peer: Device, sent: tuple[Message, EncryptedKeyMaterial, object]) -> bytes:
    """Decrypt a message ``send`` returned, from the stored session, and store the session."""
    message, enc, _ = sent
    session = await load(device, peer)
    plain = await device.backend.decrypt_key_material(session, enc)
    await device.backend.store_session(session)
    return await device.backend.decrypt_plaintext(message.content, plain)


def summary(writes: list[Write]) -> tuple[int, int]:
    """(number of writes, bytes written)."""
    return len(writes), sum(w.size for w in writes)


async def steady_state_round(
    sender: Device, recipient: Device, plaintext: bytes
) -> tuple[list[Write], list[Write]]:
    """One message in steady state; returns the writes of the sender's encrypt and the recipient's
    decrypt (each: load, key material, store_session)."""
    sender.storage.reset()
    recipient.storage.reset()
    s_session = await load(sender, recipient)
    content, key_material = await sender.backend.encrypt_plaintext(plaintext)
    encrypted = await sender.backend.encrypt_key_material(s_session, key_material)
    await sender.backend.store_session(s_session)
    encrypt_writes = list(sender.storage.writes)

    message, _ = await _transmit(sender, recipient, content, encrypted)
    enc, kex = key_for(message, recipient)
    assert kex is None
    r_session = await load(recipient, sender)
    plain = await recipient.backend.decrypt_key_material(r_session, enc)
    await recipient.backend.store_session(r_session)
    decrypt_writes = list(recipient.storage.writes)
    assert await recipient.backend.decrypt_plaintext(message.content, plain) == plaintext
    return encrypt_writes, decrypt_writes


async def _transmit(
    sender: Device, recipient: Device, content: Content, encrypted: EncryptedKeyMaterial
) -> tuple[Message, ET.Element]:
    return await transmit(sender, recipient, content, [(encrypted, None)])


# -- steady state ---------------------------------------------------------------------------------------


async def test_steady_state_writes_per_encrypt_and_decrypt(alice: Device, bob: Device) -> None:
    await establish(alice, bob)
    await exchange(alice, bob, b"warm up")
    await exchange(bob, alice, b"warm up")

    results: dict[str, list[tuple[int, int]]] = {"encrypt": [], "decrypt": []}
    # Same direction (symmetric ratchet only) and alternating (a DH ratchet step every message).
    pattern = [(alice, bob)] * 5 + [(bob, alice), (alice, bob)] * 5
    for i, (sender, recipient) in enumerate(pattern):
        encrypt_writes, decrypt_writes = await steady_state_round(sender, recipient, b"message %d" % i)
        for kind, writes in (("encrypt", encrypt_writes), ("decrypt", decrypt_writes)):
            assert len(writes) <= 1, (kind, writes)
            assert all(w.op == "store" and "/session/" in w.key for w in writes), writes
            results[kind].append(summary(writes))

    name = alice.backend.namespace
    for kind, values in results.items():
        counts = [c for c, _ in values]
        sizes = [b for _, b in values]
        print(
            f"\n[{name}] steady-state {kind}: writes per message max={max(counts)}, "
            f"bytes per message min={min(sizes)} median={statistics.median(sizes)} max={max(sizes)}"
        )
        assert max(counts) == 1  # the session record itself


async def test_skipped_keys_are_kept_apart(alice: Device, bob: Device) -> None:
    """Skipped message keys live in a record of their own, written only when they change: a message
    that skips keys writes both records, a skipped one decrypted later writes only the keys record."""
    await establish(alice, bob)
    a_session = await load(alice, bob)
    sent = [await send(alice, bob, a_session, b"m%d" % i) for i in range(6)]
    await alice.backend.store_session(a_session)
    ns = bob.backend.namespace
    record, keys = (
        f"/{ns}/session/{alice.bare_jid}/{alice.device_id}",
        f"/{ns}/session-skipped/{alice.bare_jid}/{alice.device_id}",
    )
    written = []
    for i in (5, 0, 3, 1, 2, 4):  # out of order: skipped keys stored, then consumed
        bob.storage.reset()
        assert await receive(bob, alice, sent[i]) == b"m%d" % i
        written.append([(w.key, w.size) for w in bob.storage.writes])
    print(f"\n[{ns}] out-of-order decrypts (5 skipped keys, then consumed): writes {written}")
    assert [key for key, _ in written[0]] == [keys, record]  # the keys first: see store_session
    assert all([key for key, _ in w] == [keys] for w in written[1:])
    sizes = [w[0][1] for w in written]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < 10  # consumed keys leave the record
    bob.restart()  # read back from storage: no skipped key left, every message decrypted once
    session = await load(bob, alice)
    assert session.state.skipped == {}


async def test_steady_state_cost_does_not_grow_with_skipped_keys(alice: Device, bob: Device) -> None:
    """A session holding many skipped keys writes one record of the same size per message as one
    holding none."""
    await establish(alice, bob)
    a_session = await load(alice, bob)
    for _ in range(200):  # lost messages: bob keeps 200 skipped keys
        await send(alice, bob, a_session, b"lost")
    await alice.backend.store_session(a_session)
    await steady_state_round(alice, bob, b"after the gap")
    sizes = []
    for i in range(5):
        encrypt_writes, decrypt_writes = await steady_state_round(alice, bob, b"steady %d" % i)
        assert len(encrypt_writes) == 1 and len(decrypt_writes) == 1, decrypt_writes
        sizes.append(decrypt_writes[0].size)
    session = await load(bob, alice)
    assert len(session.state.skipped) == 200
    assert max(sizes) < 1000, sizes  # the record alone, not 200 keys (about 18 KB)
    bob.restart()
    assert len((await load(bob, alice)).state.skipped) == 200


async def test_building_encrypting_decrypting_write_nothing(alice: Device, bob: Device) -> None:
    bundle = await bob.backend.get_bundle(bob.bare_jid, bob.device_id)
    alice.storage.reset()
    bob.storage.reset()
    content, key_material = await alice.backend.encrypt_plaintext(b"x")
    a_session, encrypted = await alice.backend.build_session_active(
        bob.bare_jid, bob.device_id, bundle, key_material
    )
    assert isinstance(a_session, EngineSession)
    message, _ = await _transmit(alice, bob, content, encrypted)
    enc, _ = key_for(message, bob)
    kex = a_session.key_exchange
    b_session, _ = await bob.backend.build_session_passive(alice.bare_jid, alice.device_id, kex, enc)
    empty, empty_key = await bob.backend.encrypt_empty()
    reply = await bob.backend.encrypt_key_material(b_session, empty_key)
    reply_message, _ = await _transmit(bob, alice, empty, reply)
    await alice.backend.decrypt_key_material(a_session, key_for(reply_message, alice)[0])
    await alice.backend.load_session(bob.bare_jid, bob.device_id)
    for device in (alice, bob):
        await device.backend.get_bundle(device.bare_jid, device.device_id)
        await device.backend.get_num_visible_pre_keys()
        await device.backend.signed_pre_key_age()
    assert alice.storage.writes == []
    assert bob.storage.writes == []


async def test_first_store_session_writes_the_index_once(backend_cls: type[EngineBackend]) -> None:
    alice = await make_device(backend_cls, "alice@example.org", 1)
    bob2 = await make_device(backend_cls, "bob@example.org", 2, pre_keys=2)
    bob3 = await make_device(backend_cls, "bob@example.org", 3, pre_keys=2)
    ns = alice.backend.namespace

    a_session, _ = await establish(alice, bob2, reply=False)
    # establish stored the session once: the record, the list of JIDs and the JID's device list.
    # A session stored without having been loaded first (a new one) also deletes the skipped keys a
    # replaced session may have left.
    skipped2 = ("delete", f"/{ns}/session-skipped/bob@example.org/2")
    assert sorted((w.op, w.key) for w in alice.storage.writes) == sorted(
        [
            ("store", f"/{ns}/session/bob@example.org/2"),
            ("store", f"/{ns}/session-jids"),
            ("store", f"/{ns}/session-devices/bob@example.org"),
            skipped2,
        ]
    )
    alice.storage.reset()
    await establish(alice, bob3, reply=False)  # a new device of a known JID
    assert sorted((w.op, w.key) for w in alice.storage.writes) == sorted(
        [
            ("store", f"/{ns}/session/bob@example.org/3"),
            ("store", f"/{ns}/session-devices/bob@example.org"),
            ("delete", f"/{ns}/session-skipped/bob@example.org/3"),
        ]
    )
    alice.storage.reset()
    await alice.backend.store_session(a_session)  # replacing a stored session: the record only
    assert [w.key for w in alice.storage.writes] == [f"/{ns}/session/bob@example.org/2"]
    alice.restart()  # the index is read from storage
    alice.storage.reset()
    await alice.backend.store_session(a_session)  # not loaded since the restart: the keys record too
    assert [(w.op, w.key) for w in alice.storage.writes] == [
        ("store", f"/{ns}/session/bob@example.org/2"),
        skipped2,
    ]


async def test_key_state_writes(alice: Device, bob: Device) -> None:
    storage = bob.storage
    backend = bob.backend

    async def writes_of(coro: object) -> int:
        storage.reset()
        await coro  # type: ignore[misc]
        return len(storage.writes)

    assert await writes_of(backend.generate_pre_keys(100)) == 1
    assert await writes_of(backend.rotate_signed_pre_key()) == 1
    _, b1 = await establish(alice, bob, reply=False)
    assert await writes_of(backend.hide_pre_key(b1)) == 1
    assert await writes_of(backend.hide_pre_key(b1)) == 0  # returned False: nothing changed
    assert await writes_of(backend.delete_hidden_pre_keys()) == 1
    assert await writes_of(backend.delete_hidden_pre_keys()) == 0
    assert await writes_of(backend.delete_pre_key(b1)) == 0
    alice2 = await make_device(type(backend), "alice@example.org", 5, pre_keys=0)
    _, b2 = await establish(alice2, bob, reply=False)
    assert await writes_of(backend.delete_pre_key(b2)) == 1
    visible = await backend.get_num_visible_pre_keys()
    print(f"\n[{backend.namespace}] key state record with {visible} pre keys: {storage.writes[0].size} bytes")


async def test_backend_writes_only_its_own_keys(alice: Device, bob: Device) -> None:
    await establish(alice, bob)
    await exchange(alice, bob, b"x")
    await bob.backend.rotate_signed_pre_key()
    ns = alice.backend.namespace
    for device in (alice, bob):
        assert all(k.startswith((f"/{ns}/", "/ikp/")) for k in device.storage.stored_keys()), (
            device.storage.stored_keys()
        )
    # The session records contain no JSON-visible key material other than base64 bytes.
    sessions = [v for k, v in alice.storage.snapshot().items() if "/session/" in k]
    assert sessions and all(isinstance(v, str) for v in sessions)


async def test_purge_only_deletes(alice: Device, bob: Device) -> None:
    await establish(alice, bob)
    alice.storage.reset()
    await alice.backend.purge_bare_jid("nobody@example.org")
    assert alice.storage.writes == []
    await alice.backend.purge()
    assert {w.op for w in alice.storage.writes} == {"delete"}
    assert not [k for k in alice.storage.stored_keys() if k.startswith(f"/{alice.backend.namespace}/")]


@pytest.mark.parametrize("restart_after", [1, 2, 5])
async def test_restart_on_sqlite(
    backend_cls: type[EngineBackend], tmp_path: Path, restart_after: int
) -> None:
    """Sessions and keys survive closing and reopening a real database file mid-conversation."""
    paths = {"alice": tmp_path / "alice.db", "bob": tmp_path / "bob.db"}
    stores = {name: SQLiteStorage(path) for name, path in paths.items()}
    alice = await make_device(backend_cls, "alice@example.org", 1, storage=CountingStorage(stores["alice"]))
    bob = await make_device(backend_cls, "bob@example.org", 2, storage=CountingStorage(stores["bob"]))
    await establish(alice, bob)
    try:
        for i in range(6):
            if i % restart_after == 0:
                for name, device in (("alice", alice), ("bob", bob)):
                    stores[name].close()
                    stores[name] = SQLiteStorage(paths[name])
                    device.storage = CountingStorage(stores[name])
                    device.restart()
            await exchange(alice, bob, b"a%d" % i)
            await exchange(bob, alice, b"b%d" % i)
        assert await bob.backend.get_num_visible_pre_keys() == 100
    finally:
        for store in stores.values():
            store.close()


class _Crash(Exception):
    """The process 'dies' at a chosen write."""


async def _decrypt_crashing_at_record(device: Device, peer: Device, enc: EncryptedKeyMaterial) -> None:
    """Decrypt and store, with the storage 'dying' when the session record itself is written."""
    session = await load(device, peer)
    await device.backend.decrypt_key_material(session, enc)
    inner_store = device.storage._store

    async def store(key: str, value: object) -> None:
        if "/session/" in key:
            raise _Crash(key)
        await inner_store(key, value)  # type: ignore[arg-type]

    device.storage._store = store  # type: ignore[method-assign]
    try:
        with pytest.raises(_Crash):
            await device.backend.store_session(session)
    finally:
        del device.storage._store


async def test_crash_between_the_keys_record_and_the_session_record(alice: Device, bob: Device) -> None:
    """Written without a transaction, the new skipped keys go first: a crash before the session record
    leaves the old session with keys it derives again the same way, and nothing is lost."""
    await establish(alice, bob)
    a_session = await load(alice, bob)
    sent = [await send(alice, bob, a_session, b"m%d" % i) for i in range(4)]
    await alice.backend.store_session(a_session)
    await _decrypt_crashing_at_record(bob, alice, sent[3][1])  # skips 0..2: keys record written, then dies
    assert any("/session-skipped/" in w.key for w in bob.storage.writes)
    bob.restart()
    for i in (3, 1, 0, 2):  # the message again, then the skipped ones
        assert await receive(bob, alice, sent[i]) == b"m%d" % i
    bob.restart()
    assert (await load(bob, alice)).state.skipped == {}


@pytest.mark.parametrize("damage", ["missing", "not base64", "cut"])
async def test_damaged_keys_record(alice: Device, bob: Device, damage: str) -> None:
    """A session whose skipped-keys record is gone or damaged is SessionDamaged, naming its key."""
    from omemo.backend import SessionDamaged

    await establish(alice, bob)
    a_session = await load(alice, bob)
    sent = [await send(alice, bob, a_session, b"m%d" % i) for i in range(3)]
    b_session = await load(bob, alice)
    await bob.backend.decrypt_key_material(b_session, sent[2][1])
    await bob.backend.store_session(b_session)
    key = f"/{bob.backend.namespace}/session-skipped/{alice.bare_jid}/{alice.device_id}"
    inner = bob.storage.inner
    if damage == "missing":
        await inner.delete(key)
    elif damage == "not base64":
        await inner.store(key, "not base64 !")
    else:
        value = (await inner.load(key)).from_just()
        assert isinstance(value, str)
        await inner.store(key, value[:-8])
    bob.restart()
    with pytest.raises(SessionDamaged, match="session/"):
        await load(bob, alice)


async def _store_as_older_record(device: Device, peer: Device) -> None:
    """Rewrite the device's session with ``peer`` as the record version 2 wrote: skipped keys inline."""
    session = await load(device, peer)
    assert session.state.skipped
    current = _encode_session(session)
    apart_state = session.state.to_bytes(with_skipped=False)
    head = bytearray(current[: len(current) - len(apart_state)])
    head[0], head[_SESSION_HEADER.size - 1] = 2, head[_SESSION_HEADER.size - 1] & ~_SKIPPED_APART
    key = f"/{device.backend.namespace}/session/{peer.bare_jid}/{peer.device_id}"
    await device.storage.inner.store_bytes(key, bytes(head) + session.state.to_bytes(with_skipped=True))
    await device.storage.inner.delete(
        f"/{device.backend.namespace}/session-skipped/{peer.bare_jid}/{peer.device_id}"
    )
    device.restart()


@pytest.mark.parametrize("first", ["encrypt", "decrypt a skipped one"])
async def test_older_record_with_inline_skipped_keys(alice: Device, bob: Device, first: str) -> None:
    """A session stored before skipped keys were kept apart (version 2, keys inline) moves to the new
    layout on its next write, whatever that write is, and loses or revives no key."""
    await establish(alice, bob)
    a_session = await load(alice, bob)
    sent = [await send(alice, bob, a_session, b"m%d" % i) for i in range(4)]
    await alice.backend.store_session(a_session)
    b_session = await load(bob, alice)
    await bob.backend.decrypt_key_material(b_session, sent[3][1])  # keys 0..2 skipped
    await bob.backend.store_session(b_session)
    await _store_as_older_record(bob, alice)
    assert len((await load(bob, alice)).state.skipped) == 3

    if first == "encrypt":  # the record changes, the keys do not
        session = await load(bob, alice)
        _, key_material = await bob.backend.encrypt_plaintext(b"reply")
        await bob.backend.encrypt_key_material(session, key_material)
        await bob.backend.store_session(session)
        left = {0, 1, 2}
    else:  # only the keys change
        assert await receive(bob, alice, sent[1]) == b"m1"
        left = {0, 2}
    bob.restart()
    session = await load(bob, alice)
    assert sorted(n for _, n in session.state.skipped) == sorted(left)
    for i in sorted(left):  # every key left decrypts its message, once
        assert await receive(bob, alice, sent[i]) == b"m%d" % i
    bob.restart()
    assert (await load(bob, alice)).state.skipped == {}
