"""Pre key and signed pre key ids of other devices span protobuf's uint32, 0 included.

Converse numbers its keys from 0 (../shared/vectors/real-clients/converse-14/), and the key exchange
carries the ids as uint32. Accepted means usable: a session built from such a bundle is stored, survives
a restart and keeps working. Session records of version 1 (signed ids) still load and keep working.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from omemo._engine.backend import EngineBackend, EngineSession
from omemo.storages import MemoryStorage

from .conftest import BACKENDS, CountingStorage, Device, establish, exchange, make_device

GOLDEN = Path(__file__).resolve().parent / "golden" / "sessions-v1.json"


async def _renumber(device: Device, spk_id: int, pk_id: int) -> None:
    """Give ``device``'s signed pre key and its only pre key the ids another client might use."""
    keys = await device.backend._key_state()
    ((_, pair),) = keys.pre_keys.items()
    await device.backend._store_keys(
        replace(keys, signed_pre_key=replace(keys.signed_pre_key, key_id=spk_id), pre_keys={pk_id: pair})
    )
    device.restart()


@pytest.mark.parametrize(
    ("spk_id", "pk_id"),
    [(0, 0), (0, 5), (7, 0), (2**31, 2**31 - 1), (2**32 - 1, 2**32 - 1)],
    ids=["zeros", "spk zero", "pk zero", "above int32", "uint32 max"],
)
async def test_a_session_with_a_device_whose_key_ids_span_uint32(
    backend_cls: type[EngineBackend], spk_id: int, pk_id: int
) -> None:
    alice = await make_device(backend_cls, "alice@example.org", 1)
    bob = await make_device(backend_cls, "bob@example.org", 2, pre_keys=1)
    await _renumber(bob, spk_id, pk_id)

    a_session, _ = await establish(alice, bob, b"first", reply=False)
    assert (a_session.key_exchange.signed_pre_key_id, a_session.key_exchange.pre_key_id) == (spk_id, pk_id)

    # The active session, ids and all, is stored and comes back after a restart; both sides go on.
    alice.restart()
    loaded = await alice.backend.load_session(bob.bare_jid, bob.device_id)
    assert isinstance(loaded, EngineSession)
    assert (loaded.key_exchange.signed_pre_key_id, loaded.key_exchange.pre_key_id) == (spk_id, pk_id)
    assert loaded.key_exchange == a_session.key_exchange
    bob.restart()
    await exchange(alice, bob, b"second, still with the key exchange")
    await exchange(bob, alice, b"reply")
    await exchange(alice, bob, b"steady state")


async def _restore(snapshot: dict[str, object]) -> CountingStorage:
    inner = MemoryStorage(serialize=True)
    for key, value in snapshot.items():
        await inner.store(key, value)  # type: ignore[arg-type]
    return CountingStorage(inner)


async def test_version_1_session_records_load_and_keep_working(backend_cls: type[EngineBackend]) -> None:
    # Written by the code of version 1 (signed ids): Alice sent Bob a key exchange, Bob has not replied.
    name = next(key for key, cls in BACKENDS.items() if cls is backend_cls)
    golden = json.loads(GOLDEN.read_text())[name]
    alice = Device(backend_cls, "alice@example.org", 11, await _restore(golden["alice"]))
    bob = Device(backend_cls, "bob@example.org", 22, await _restore(golden["bob"]))
    stored = await alice.storage.inner.load_bytes(alice.backend._session_key(bob.bare_jid, bob.device_id))
    assert stored.from_just()[0] == 1  # the sample really is a version-1 record

    session = await alice.backend.load_session(bob.bare_jid, bob.device_id)
    assert isinstance(session, EngineSession) and not session.confirmed
    await exchange(alice, bob, b"after the upgrade")
    await exchange(bob, alice, b"reply")
    # Written back as version 2, and still the same session.
    rewritten = await alice.storage.inner.load_bytes(alice.backend._session_key(bob.bare_jid, bob.device_id))
    assert rewritten.from_just()[0] == 2
    alice.restart()
    await exchange(alice, bob, b"after a restart")
