"""Forgetting idle contacts (``SessionManager.CACHE_IDLE_SECONDS``, ``omemo._core.idle``).

The copies of the storage the session manager holds in memory for a contact (device records, trust,
device information, decoded sessions) are dropped once the contact was silent for a while, and
comes back from the storage on its next message: the conversation goes on, a duplicate is still
refused, a contact in use keeps its memory, and the own account is never forgotten.
"""

from __future__ import annotations

import asyncio
from typing import Any, List, Optional, Tuple

import pytest

import oldmemo
import twomemo
from omemo.backend import DuplicateMessage
from omemo.message import Message
from omemo.storage import Storage
from omemo.storages import MemoryStorage
from omemo.testing import InMemoryXMPP
from omemo.trust import BTBVTrust

ALICE, BOB = "alice@example.org", "bob@example.org"
NS2 = twomemo.twomemo.NAMESPACE


async def _create(net: InMemoryXMPP, jid: str, storage: Storage, idle: float) -> Any:
    cls: Any = net.session_manager_class(jid, BTBVTrust)
    cls.CACHE_IDLE_SECONDS = idle
    manager = await cls.create(
        [twomemo.Twomemo(storage), oldmemo.Oldmemo(storage)], storage, jid, None, BTBVTrust.UNDECIDED
    )
    await manager.after_history_sync()
    return manager


async def _send(net: InMemoryXMPP, sender: Any, recipient: str, text: bytes) -> List[Message]:
    messages, errors = await sender.encrypt(frozenset({recipient}), {NS2: text})
    assert not errors
    for message in messages:
        net.send(message)
    return list(messages)


async def _deliver(net: InMemoryXMPP, manager: Any, jid: str) -> List[Tuple[Optional[bytes], Any, Any]]:
    own, _ = await manager.get_own_device_information()
    return [await manager.decrypt(message) for message in net.take(jid, own.device_id)]


def _held(manager: Any, jid: str) -> List[str]:
    """Where the session manager holds something in memory for ``jid``."""
    core = manager._omemo_core
    places = []
    if jid in core.devices._ids or any(key[0] == jid for key in core.devices._records):
        places.append("device records")
    if any(key[0] == jid for key in core.devices._trust):
        places.append("trust")
    if jid in core._known_information:
        places.append("device information")
    if any(key[0] == jid for backend in core.backends for key in backend._sessions):
        places.append("sessions")
    return places


async def _until_forgotten(manager: Any, jid: str, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if not _held(manager, jid):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{jid} still held in memory: {_held(manager, jid)}")


async def test_an_idle_contact_is_forgotten_and_the_conversation_goes_on() -> None:
    net = InMemoryXMPP()
    alice_storage = MemoryStorage(disable_cache=False)  # the storage's read cache forgets too
    alice = await _create(net, ALICE, alice_storage, idle=0.2)
    bob = await _create(net, BOB, MemoryStorage(), idle=0.2)
    await _send(net, alice, BOB, b"hello")
    [(plaintext, _, _)] = await _deliver(net, bob, BOB)
    assert plaintext == b"hello"
    await _deliver(net, alice, ALICE)  # the empty answer completing the key exchange
    await _send(net, bob, ALICE, b"hi")
    [(plaintext, _, _)] = await _deliver(net, alice, ALICE)
    assert plaintext == b"hi"
    assert set(_held(alice, BOB)) >= {"device records", "trust", "sessions"}
    assert set(_held(bob, ALICE)) >= {"device records", "sessions"}

    cached = alice_storage._Storage__cache  # type: ignore[attr-defined]
    assert any(BOB in key.split("/") for key in cached)
    await _until_forgotten(alice, BOB)
    await _until_forgotten(bob, ALICE)
    own = alice._omemo_core
    assert ALICE in own.devices._ids  # the own account is kept
    assert not any(BOB in key.split("/") for key in cached)
    assert "/own_device_id" in cached

    # Loaded from the storage again: the same sessions (no new key exchange), both ways.
    for text in (b"after a pause", b"and another"):
        [last] = [message] = await _send(net, alice, BOB, text)
        assert all(kex is None for _, kex in message.keys)  # no new key exchange
        [(plaintext, sender, _)] = await _deliver(net, bob, BOB)
        assert plaintext == text and sender.bare_jid == ALICE
        await _send(net, bob, ALICE, text.upper())
        [(plaintext, _, _)] = await _deliver(net, alice, ALICE)
        assert plaintext == text.upper()
    assert "sessions" in _held(alice, BOB)

    # A duplicate delivered after a pause is still refused as one (the decryption memory stays).
    await _until_forgotten(bob, ALICE)
    with pytest.raises(DuplicateMessage):
        await bob.decrypt(last)
    await alice.shutdown()
    await bob.shutdown()


async def test_a_contact_in_use_keeps_its_memory() -> None:
    net = InMemoryXMPP()
    alice = await _create(net, ALICE, MemoryStorage(), idle=1.0)
    bob = await _create(net, BOB, MemoryStorage(), idle=1.0)
    await _send(net, alice, BOB, b"hello")
    await _deliver(net, bob, BOB)
    await _deliver(net, alice, ALICE)
    loop = asyncio.get_running_loop()
    end = loop.time() + 1.6  # three rounds of forgetting (every 0.5 s)
    while loop.time() < end:
        await asyncio.sleep(0.05)
        # Used 0.05 s ago: still held, without a load in between.
        assert "sessions" in _held(alice, BOB) and "device records" in _held(alice, BOB)
        await _send(net, alice, BOB, b"still here")
        [(plaintext, _, _)] = await _deliver(net, bob, BOB)
        assert plaintext == b"still here"
    await alice.shutdown()
    await bob.shutdown()


async def test_forgetting_can_be_turned_off_and_stops_with_shutdown() -> None:
    net = InMemoryXMPP()
    keeper = await _create(net, ALICE, MemoryStorage(), idle=0.0)
    assert keeper._SessionManager__forgetting is None
    forgetter = await _create(net, BOB, MemoryStorage(), idle=0.2)
    task = forgetter._SessionManager__forgetting
    assert task is not None and not task._task.done()
    await forgetter.shutdown()
    assert forgetter._SessionManager__forgetting is None and task._task.done()
    await forgetter.shutdown()  # idempotent
    await keeper.shutdown()


async def test_an_old_duplicate_is_a_duplicate_after_a_pause() -> None:
    """A copy of a message from a receiving chain the ratchet has dropped since (an archive page fetched
    again), delivered after the contact was forgotten: DuplicateMessage every time, never an authentication
    failure counting towards SessionOutOfStep; the session goes on."""
    net = InMemoryXMPP()
    alice = await _create(net, ALICE, MemoryStorage(), idle=0.2)
    bob = await _create(net, BOB, MemoryStorage(), idle=0.2)
    [first] = await _send(net, alice, BOB, b"hello")
    await _deliver(net, bob, BOB)
    await _deliver(net, alice, ALICE)
    for text in (b"a", b"b"):  # two round trips: Bob's receiving chain of "hello" is gone
        await _send(net, bob, ALICE, text)
        await _deliver(net, alice, ALICE)
        await _send(net, alice, BOB, text)
        await _deliver(net, bob, BOB)
    await _until_forgotten(bob, ALICE)
    for _ in range(3):
        with pytest.raises(DuplicateMessage, match="sent this message before"):
            await bob.decrypt(first)
    await _send(net, alice, BOB, b"still fine")
    [(plaintext, _, _)] = await _deliver(net, bob, BOB)
    assert plaintext == b"still fine"
    await alice.shutdown()
    await bob.shutdown()
