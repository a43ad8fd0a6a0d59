"""The backends' decoded-session cache: bounded, and never different from what the storage holds."""

from __future__ import annotations

import pytest

import omemo._engine.backend as engine_backend
from omemo._engine.backend import EngineSession

from .conftest import Device, establish, exchange


async def test_cached_and_stored_sessions_agree(alice: Device, bob: Device) -> None:
    await establish(alice, bob)
    for i in range(5):
        await exchange(alice, bob, b"m%d" % i)
    backend = alice.backend
    cached = await backend.load_session(bob.bare_jid, bob.device_id)
    fresh = await alice.restart().load_session(bob.bare_jid, bob.device_id)  # a new, empty cache
    assert isinstance(cached, EngineSession) and isinstance(fresh, EngineSession)
    assert cached.state.to_bytes() == fresh.state.to_bytes()
    assert (cached.confirmed, cached.initiation) == (fresh.confirmed, fresh.initiation)
    # Each load returns its own object: advancing one in memory changes neither the cache nor storage.
    other = await backend.load_session(bob.bare_jid, bob.device_id)
    assert isinstance(other, EngineSession) and other is not cached
    _, key_material = await backend.encrypt_plaintext(b"not stored")
    await backend.encrypt_key_material(cached, key_material)
    assert cached.state.to_bytes() != other.state.to_bytes() == fresh.state.to_bytes()
    again = await backend.load_session(bob.bare_jid, bob.device_id)
    assert isinstance(again, EngineSession) and again.state.to_bytes() == fresh.state.to_bytes()


async def test_evicted_sessions_are_reloaded_from_storage(
    alice: Device, bob: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_backend, "SESSION_CACHE_SIZE", 2)
    await establish(alice, bob)
    # Fill the cache with other (stored) sessions until Bob's is evicted.
    session = await alice.backend.load_session(bob.bare_jid, bob.device_id)
    assert isinstance(session, EngineSession)
    for device_id in (101, 102, 103):
        clone = type(session)(
            "carol@example.org", device_id, session.initiation, session.key_exchange, session.state, True
        )
        await alice.backend.store_session(clone)
    assert len(alice.backend._sessions) == 2
    assert (bob.bare_jid, bob.device_id) not in alice.backend._sessions
    # Still there, and the conversation goes on.
    await exchange(alice, bob, b"after eviction")
    await exchange(bob, alice, b"and back")
