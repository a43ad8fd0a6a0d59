"""Concurrency: any mix of concurrent session manager calls keeps session and key state intact.

The storage and the network used here yield to the event loop on every operation (at random), so that
``asyncio.gather`` really interleaves the calls; without the session manager's locks these tests lose
session updates (reused message keys) and pre key changes.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from typing import Any, Dict, List

import pytest

from omemo.message import Message
from omemo.storage import Just, Maybe, Nothing, Storage
from omemo.storages import MemoryStorage
from omemo.testing import InMemoryXMPP
from omemo.types import JSONType

from .fake_backend import NS_A, NS_B, Account, FakeBackend, FakeSession, make_account

ALICE, BOB = "alice@example.org", "bob@example.org"


async def _yield(rng: random.Random) -> None:
    for _ in range(rng.randrange(3)):
        await asyncio.sleep(0)


class YieldingStorage(MemoryStorage):
    """A memory storage that suspends the caller on every access, like a real database would."""

    def __init__(self, seed: int) -> None:
        super().__init__(serialize=True)
        self._rng = random.Random(seed)

    async def _load(self, key: str) -> Maybe[JSONType]:
        await _yield(self._rng)
        return await super()._load(key)

    async def _store(self, key: str, value: JSONType) -> Any:
        await _yield(self._rng)
        return await super()._store(key, value)

    async def _delete(self, key: str) -> Any:
        await _yield(self._rng)
        return await super()._delete(key)


class YieldingPlainStorage(Storage):
    """Like :class:`YieldingStorage`, but without transactions: only the locks keep commits apart."""

    def __init__(self, seed: int) -> None:
        super().__init__(disable_cache=True)
        self._rng = random.Random(seed)
        self._data: Dict[str, str] = {}

    async def _load(self, key: str) -> Maybe[JSONType]:
        await _yield(self._rng)
        return Just(json.loads(self._data[key])) if key in self._data else Nothing()

    async def _store(self, key: str, value: JSONType) -> Any:
        await _yield(self._rng)
        self._data[key] = json.dumps(value)

    async def _delete(self, key: str) -> Any:
        await _yield(self._rng)
        self._data.pop(key, None)


class YieldingXMPP(InMemoryXMPP):
    """The in-memory network with latency (random suspensions)."""

    def __init__(self) -> None:
        super().__init__()
        self._rng = random.Random(7)

    async def download_bundle(self, namespace: str, bare_jid: str, device_id: int) -> Any:
        await _yield(self._rng)
        return await super().download_bundle(namespace, bare_jid, device_id)

    async def download_device_list(self, namespace: str, bare_jid: str) -> Any:
        await _yield(self._rng)
        return await super().download_device_list(namespace, bare_jid)

    async def send_message(self, message: Message, bare_jid: str) -> None:
        await _yield(self._rng)
        await super().send_message(message, bare_jid)


async def _accounts(namespaces: tuple[str, ...] = (NS_A,)) -> tuple[YieldingXMPP, Account, Account]:
    net = YieldingXMPP()
    alice = await make_account(net, ALICE, namespaces, storage=YieldingStorage(1))
    bob = await make_account(net, BOB, namespaces, storage=YieldingStorage(2))
    return net, alice, bob


async def test_concurrent_encrypts_never_reuse_message_keys() -> None:
    net, alice, bob = await _accounts()
    # Establish the session first, so that all concurrent encrypts use the same stored session.
    first, _ = await alice.manager.encrypt(frozenset({BOB}), {NS_A: b"first"})
    for message in first:
        net.send(message)
    await bob.receive_all()
    await alice.receive_all()

    count = 30
    results = await asyncio.gather(
        *(alice.manager.encrypt(frozenset({BOB}), {NS_A: b"m%d" % i}) for i in range(count))
    )
    session = await alice.backends[NS_A].load_session(BOB, bob.device_id)
    assert isinstance(session, FakeSession)
    assert session.sending_chain_length == count  # no lost update
    messages = [message for result, _ in results for message in result]
    positions = {(e.epoch, e.n) for m in messages for e, _ in m.keys}
    assert len(positions) == count  # every message used its own message key
    # Bob decrypts them concurrently, in a shuffled order.
    random.Random(3).shuffle(messages)
    decrypted = await asyncio.gather(*(bob.manager.decrypt(m) for m in messages))
    assert sorted(p for p, _, _ in decrypted) == sorted(b"m%d" % i for i in range(count))
    stored = await bob.backends[NS_A].load_session(ALICE, alice.device_id)
    assert isinstance(stored, FakeSession) and len(stored.seen) == count + 1
    assert (
        len(alice.manager._omemo_core.session_locks) == 0 and len(bob.manager._omemo_core.session_locks) == 0
    )


@pytest.mark.parametrize("storage_cls", [YieldingStorage, YieldingPlainStorage])
async def test_concurrent_key_exchanges_consume_distinct_pre_keys(
    monkeypatch: pytest.MonkeyPatch, storage_cls: Callable[[int], Storage]
) -> None:
    # Eight random picks out of 100 pre keys collide one time in four; a collision is a legitimate
    # KeyExchangeFailed outside history synchronisation, so each sender takes the next unused key.
    picks = iter(range(1000))
    monkeypatch.setattr(
        FakeBackend,
        "choose_pre_key",
        staticmethod(lambda pre_keys: sorted(pre_keys)[next(picks) % len(pre_keys)]),
    )
    net = YieldingXMPP()
    bob = await make_account(net, BOB, storage=storage_cls(2))
    senders = [await make_account(net, f"user{i}@example.org", storage=storage_cls(10 + i)) for i in range(8)]
    for sender in senders:
        messages, _ = await sender.manager.encrypt(frozenset({BOB}), {NS_A: sender.jid.encode()})
        for message in messages:
            net.send(message)
    inbox = net.take(BOB, bob.device_id)
    results = await asyncio.gather(*(bob.manager.decrypt(m) for m in inbox))
    assert sorted(p for p, _, _ in results) == sorted(s.jid.encode() for s in senders)
    backend = bob.backends[NS_A]
    visible = await backend.visible_pre_key_ids()
    assert len(visible) == 100 and await backend.hidden_pre_key_ids() == []
    # Every used pre key is gone and each sender got its completion message.
    used = {m.keys and next(iter(m.keys))[1].pk_id for m in inbox}  # type: ignore[union-attr]
    assert not used & set(visible)
    for sender in senders:
        assert [r[0] for r in await sender.receive_all()] == [None]
    assert net.bundles[(NS_A, BOB, bob.device_id)] == await backend.get_bundle(BOB, bob.device_id)


async def test_mixed_operations_in_parallel() -> None:
    _, alice, bob = await _accounts((NS_A, NS_B))
    manager = alice.manager
    tasks: List[Any] = []
    for i in range(10):
        tasks.append(manager.encrypt(frozenset({BOB}), {NS_A: b"%d" % i, NS_B: b"%d" % i}))
        tasks.append(manager.get_device_information(BOB))
        tasks.append(manager.refresh_device_lists(BOB))
        tasks.append(manager.update_device_list(NS_B, BOB, {bob.device_id: None, 1000 + i: None}))
        tasks.append(manager.set_trust(BOB, bob.identity_key, "BLINDLY_TRUSTED"))
        tasks.append(manager.get_own_device_information())
    results = await asyncio.gather(*tasks)
    messages = [m for r in results[0::6] for m in r[0]]
    random.Random(5).shuffle(messages)
    decrypted = await asyncio.gather(*(bob.manager.decrypt(m) for m in messages))
    assert sorted(p for p, _, _ in decrypted) == sorted(b"%d" % i for i in range(10))
    ids = await manager._omemo_core.devices.device_ids(BOB)
    assert len(ids) == len(set(ids)) == 11  # bob's device + the ten announced ones, each once
    session = await alice.backends[NS_A].load_session(BOB, bob.device_id)
    assert isinstance(session, FakeSession) and session.sending_chain_length == 10


async def test_concurrent_decrypt_and_encrypt_on_one_session() -> None:
    net, alice, bob = await _accounts()
    first, _ = await alice.manager.encrypt(frozenset({BOB}), {NS_A: b"x"})
    for message in first:
        net.send(message)
    await bob.receive_all()
    await alice.receive_all()
    batch: List[Message] = []
    for i in range(10):
        result, _ = await alice.manager.encrypt(frozenset({BOB}), {NS_A: b"a%d" % i})
        batch.extend(result)
    ops = [bob.manager.decrypt(m) for m in batch] + [
        bob.manager.encrypt(frozenset({ALICE}), {NS_A: b"b%d" % i}) for i in range(10)
    ]
    random.Random(9).shuffle(ops)
    results = await asyncio.gather(*ops)
    decrypted = sorted(r[0] for r in results if len(r) == 3)
    assert decrypted == sorted(b"a%d" % i for i in range(10))
    sent = [m for r in results if len(r) == 2 for m in r[0]]
    assert len(sent) == 10 and len({(e.epoch, e.n) for m in sent for e, _ in m.keys}) == 10
    session = await bob.backends[NS_A].load_session(ALICE, alice.device_id)
    assert isinstance(session, FakeSession)
    assert len(session.seen) == 11
    # Everything bob encrypted meanwhile reaches alice.
    for message in sent:
        net.send(message)
    received = [p for p, _, _ in await alice.receive_all() if p is not None]
    assert sorted(received) == sorted(b"b%d" % i for i in range(10))
