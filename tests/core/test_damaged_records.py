"""A session record damaged in the database by hand (cut short, not base64, not a string), on SQLite and
on PostgreSQL: ``decrypt`` raises ``SessionDamaged`` naming the record's key, the account's other sessions
keep working both ways, ``encrypt`` names the cause for the damaged device, and ``replace_sessions``
replaces the damaged session."""

from __future__ import annotations

import base64
import json
import re
import sqlite3
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

import pytest

import oldmemo
import twomemo
from omemo.backend import SessionDamaged
from omemo.diagnostics import Reason, explain
from omemo.session_manager import NoEligibleDevices
from omemo.storage import Storage
from omemo.storages import MemoryStorage, PostgreSQLStorage, SQLiteStorage
from omemo.testing import InMemoryXMPP
from omemo.trust import BTBVTrust

ALICE, BOB, CAROL = "alice@example.org", "bob@example.org", "carol@example.org"
NS2 = twomemo.twomemo.NAMESPACE
DAMAGES = ["cut short", "cut base64", "not base64", "not a string"]


def _damaged(value: str, damage: str) -> str:
    """A stored session value (JSON text of base64) damaged the way ``damage`` says."""
    data = base64.urlsafe_b64decode(json.loads(value))
    return {
        "cut short": json.dumps(base64.urlsafe_b64encode(data[:60]).decode()),
        "cut base64": value[:41] + '"',
        "not base64": '"%%%"',
        "not a string": "17",
    }[damage]


async def _create(net: InMemoryXMPP, jid: str, storage: Storage) -> Any:
    cls: Any = net.session_manager_class(jid, BTBVTrust)
    manager = await cls.create(
        [twomemo.Twomemo(storage), oldmemo.Oldmemo(storage)], storage, jid, None, BTBVTrust.UNDECIDED
    )
    await manager.after_history_sync()
    return manager


async def _send(net: InMemoryXMPP, sender: Any, recipient: str, text: bytes) -> None:
    messages, errors = await sender.encrypt(frozenset({recipient}), {NS2: text})
    assert not errors
    for message in messages:
        net.send(message)


async def _deliver(net: InMemoryXMPP, manager: Any, jid: str) -> List[Tuple[Optional[bytes], Any, Any]]:
    own, _ = await manager.get_own_device_information()
    return [await manager.decrypt(message) for message in net.take(jid, own.device_id)]


async def _scenario(
    open_storage: Callable[[], Awaitable[Storage]],
    close_storage: Callable[[Storage], Awaitable[None]],
    damage_record: Callable[[str], Awaitable[str]],
) -> None:
    """Alice (on the storage under test) has sessions with Bob and Carol; Bob's is damaged by hand
    (``damage_record`` gets the key pattern, returns the key it damaged) while Alice is offline."""
    net = InMemoryXMPP()
    storage = await open_storage()
    alice = await _create(net, ALICE, storage)
    others: Dict[str, Any] = {jid: await _create(net, jid, MemoryStorage()) for jid in (BOB, CAROL)}
    for jid, manager in others.items():
        await _send(net, manager, ALICE, b"hi")
        await _deliver(net, alice, ALICE)
        await _deliver(net, manager, jid)
    await alice.shutdown()
    await close_storage(storage)

    key = await damage_record(f"/{NS2}/session/{BOB}/%")

    storage = await open_storage()
    alice = await _create(net, ALICE, storage)
    await _send(net, others[BOB], ALICE, b"from bob")
    own, _ = await alice.get_own_device_information()
    [message] = net.take(ALICE, own.device_id)
    with pytest.raises(SessionDamaged, match=re.escape(repr(key))) as raised:
        await alice.decrypt(message)
    assert explain(raised.value).reason is Reason.SESSION_DAMAGED

    # Carol's session is untouched, both ways; Bob's device is skipped with the cause named.
    await _send(net, others[CAROL], ALICE, b"from carol")
    [(plaintext, _, _)] = await _deliver(net, alice, ALICE)
    assert plaintext == b"from carol"
    with pytest.raises(NoEligibleDevices, match="SessionDamaged"):  # Bob has no other device
        await alice.encrypt(frozenset({CAROL, BOB}), {NS2: b"to both"})
    await _send(net, alice, CAROL, b"to carol")
    [(plaintext, _, _)] = await _deliver(net, others[CAROL], CAROL)
    assert plaintext == b"to carol"

    # replace_sessions replaces the damaged session: Bob and Alice talk again.
    [bob_device] = await alice.get_device_information(BOB)
    assert await alice.replace_sessions(bob_device) == {}
    await _deliver(net, others[BOB], BOB)
    await _send(net, others[BOB], ALICE, b"bob again")
    assert [result[0] for result in await _deliver(net, alice, ALICE)][-1] == b"bob again"
    await _send(net, alice, BOB, b"alice again")
    assert [result[0] for result in await _deliver(net, others[BOB], BOB)][-1] == b"alice again"
    for manager in (alice, *others.values()):
        await manager.shutdown()
    await close_storage(storage)


@pytest.mark.parametrize("damage", DAMAGES)
async def test_sqlite_a_damaged_session_record_fails_alone(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "alice.db"

    async def open_storage() -> Storage:
        return SQLiteStorage(path)

    async def close_storage(storage: Storage) -> None:
        assert isinstance(storage, SQLiteStorage)
        storage.close()

    async def damage_record(pattern: str) -> str:
        with sqlite3.connect(path) as db:
            [(key, value)] = db.execute("SELECT key, value FROM kv WHERE key LIKE ?", (pattern,)).fetchall()
            db.execute("UPDATE kv SET value = ? WHERE key = ?", (_damaged(value, damage), key))
        db.close()
        return str(key)

    await _scenario(open_storage, close_storage, damage_record)


@pytest.mark.parametrize("damage", DAMAGES)
async def test_postgres_a_damaged_session_record_fails_alone(postgres: Any, damage: str) -> None:
    import asyncpg

    pool = await asyncpg.create_pool(postgres.dsn, min_size=1, max_size=4)
    account = f"alice-{damage}"

    async def open_storage() -> Storage:
        return await PostgreSQLStorage.open(pool, account)

    async def close_storage(storage: Storage) -> None:
        assert isinstance(storage, PostgreSQLStorage)
        await storage.close()

    async def damage_record(pattern: str) -> str:
        async with pool.acquire() as connection:
            [(key, value)] = await connection.fetch(
                "SELECT key, value FROM omemo_kv WHERE account = $1 AND key LIKE $2", account, pattern
            )
            await connection.execute(
                "UPDATE omemo_kv SET value = $1 WHERE account = $2 AND key = $3",
                _damaged(value, damage),
                account,
                key,
            )
        return str(key)

    try:
        await _scenario(open_storage, close_storage, damage_record)
    finally:
        await pool.close()
