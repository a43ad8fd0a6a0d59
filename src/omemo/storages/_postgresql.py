"""A :class:`~omemo.storage.Storage` in PostgreSQL: many accounts in one database (asyncpg).

Theory of operation. One table ``omemo_kv(account, key, value)`` holds every account's values as JSON
text (exactly as written: no re-encoding). Each account gets its own storage object; all of them share
one asyncpg connection pool. Every ``_store``/``_delete`` is one autocommitted statement, so with the
server's default ``synchronous_commit=on`` it is durable when the coroutine returns. A transaction
(``async with storage.transaction():``) takes one connection from the pool for its duration and maps to
a real database transaction: all of its writes commit together or not at all, even if the process is
killed in the middle.

One process per account: opening an account takes a session-level advisory lock on a connection that
the pool's storages share (many locks on one connection); a second process (or a second storage object)
opening the same account gets :class:`AccountInUse`. The lock goes with the connection, so a process
that dies releases it.

The schema is created by the library and versioned in ``omemo_schema`` (version 1); a database of a newer
version raises :class:`~omemo.storage.StorageException`. A value that is not valid JSON (changed by hand,
truncated) raises a :class:`~omemo.storage.StorageException` naming the account and the key; the other
keys keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any, Dict, List, Optional, Set, Tuple, Type, TypeVar

from ..storage import Just, Maybe, Nothing, Storage, StorageException
from ..types import JSONType
from ._errors import AccountInUse
from ._transaction import _OWNER

__all__ = ["AccountInUse", "PostgreSQLStorage"]

#: The schema version this module reads and writes.
SCHEMA_VERSION = 1

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS omemo_kv ("
    " account TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (account, key))",
    "CREATE TABLE IF NOT EXISTS omemo_schema (version INTEGER NOT NULL)",
)
#: The advisory lock that serialises schema creation between processes.
_SCHEMA_LOCK = 0x6F6D656D6F  # "omemo"

_SelfT = TypeVar("_SelfT", bound="PostgreSQLStorage")


_UPSERT = (
    "INSERT INTO omemo_kv (account, key, value) VALUES ($1, $2, $3)"
    " ON CONFLICT (account, key) DO UPDATE SET value = EXCLUDED.value"
)
_DELETE = "DELETE FROM omemo_kv WHERE account = $1 AND key = $2"
_UPSERT_MANY = (
    "INSERT INTO omemo_kv (account, key, value) SELECT * FROM unnest($1::text[], $2::text[], $3::text[])"
    " ON CONFLICT (account, key) DO UPDATE SET value = EXCLUDED.value"
)
_DELETE_MANY = "DELETE FROM omemo_kv WHERE (account, key) IN (SELECT * FROM unnest($1::text[], $2::text[]))"

#: A queued write: account, key, the value as JSON text (None: delete), and its waiter.
_Write = Tuple[str, str, Optional[str], "asyncio.Future[None]"]


class _GroupCommit:
    """Group commit for the writes of every account of one pool (outside transactions).

    A write is queued and awaited. One flusher at a time takes everything queued and commits it in one
    transaction with one statement per kind (the last value per key wins: they commit together anyway),
    so the writes that queued up during a commit share the next round trip and the next WAL flush. A
    single queued write is one autocommitted statement, as without grouping. If a batch fails, its writes
    are committed one by one, so that only a failing write reports its error.
    """

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.pending: List[_Write] = []
        self.flusher: Optional[asyncio.Future[None]] = None

    async def write(self, account: str, key: str, text: Optional[str]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((account, key, text, future))
        if self.flusher is None:
            self.flusher = asyncio.ensure_future(self.__flush())
        await future

    async def __flush(self) -> None:
        batch: List[_Write] = []
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                errors = await self.__commit(batch)
                for (_, _, _, future), error in zip(batch, errors, strict=True):
                    if not future.done():
                        if error is None:
                            future.set_result(None)
                        else:
                            future.set_exception(error)
        finally:
            self.flusher = None
            for _, _, _, future in batch + self.pending:  # cancelled: the loop is going away
                if not future.done():
                    future.cancel()

    async def __commit(self, batch: List[_Write]) -> List[Optional[BaseException]]:
        if len(batch) == 1:
            account, key, text, _ = batch[0]
            try:
                if text is None:
                    await self.pool.execute(_DELETE, account, key)
                else:
                    await self.pool.execute(_UPSERT, account, key, text)
            except Exception as exc:  # asyncpg and OS errors
                return [exc]
            return [None]
        final: Dict[Tuple[str, str], Optional[str]] = {}
        for account, key, text, _ in batch:
            final.pop((account, key), None)  # keep the order of the last writes
            final[(account, key)] = text
        upserts = [(account, key, text) for (account, key), text in final.items() if text is not None]
        deletes = [(account, key) for (account, key), text in final.items() if text is None]
        try:
            async with self.pool.acquire() as connection, connection.transaction():
                if upserts:
                    await connection.execute(
                        _UPSERT_MANY,
                        [w[0] for w in upserts],
                        [w[1] for w in upserts],
                        [w[2] for w in upserts],
                    )
                if deletes:
                    await connection.execute(_DELETE_MANY, [w[0] for w in deletes], [w[1] for w in deletes])
        except Exception:  # one by one: only the failing write fails
            return [(await self.__commit([write]))[0] for write in batch]
        return [None] * len(batch)


class _PoolState:
    """What the storages of one pool share: the schema check, the connection holding their locks, and
    the group commit of their writes."""

    def __init__(self, pool: Any) -> None:
        self.schema_ready = False
        self.lock = asyncio.Lock()
        self.lock_connection: Any = None
        self.accounts: Set[str] = set()
        self.group_commit = _GroupCommit(pool)


#: id(pool) -> (pool, its state), while an account of the pool is open (asyncpg pools take no weak
#: references; the entry goes with the pool's last account).
_POOLS: Dict[int, Any] = {}


def _lock_key(account: str) -> int:
    """A signed 64-bit advisory lock key for ``account``."""
    return int.from_bytes(
        hashlib.sha256(b"omemo-stack account\0" + account.encode()).digest()[:8], "big", signed=True
    )


class PostgreSQLStorage(Storage):
    """The storage of one account in a PostgreSQL database shared with other accounts.

    Open with ``await PostgreSQLStorage.open(pool, account)`` (an ``asyncpg`` pool), close with
    :meth:`close` (or ``async with``). Offers :meth:`transaction` and :meth:`snapshot` like the other
    ready storages.
    """

    def __init__(self, pool: Any, account: str, state: _PoolState, *, disable_cache: bool = False) -> None:
        """Use :meth:`open`."""
        super().__init__(disable_cache=disable_cache)
        self.__pool = pool
        self.__account = account
        self.__state = state
        self.__closed = False
        self.__txn_connection: Any = None
        self.__txn_token: Optional[object] = None
        self.__txn_lock = asyncio.Lock()
        self.__txn_touched: Set[str] = set()

    @classmethod
    async def open(cls: Type[_SelfT], pool: Any, account: str, *, disable_cache: bool = False) -> _SelfT:
        """Open the storage of ``account`` (any string naming it, e.g. its bare JID).

        Args:
            pool: an ``asyncpg`` pool; every account of the process can share it.
            account: the account.
            disable_cache: disable the :class:`~omemo.storage.Storage` read cache.

        Raises:
            AccountInUse: the account is open elsewhere.
            StorageException: the database cannot be used (unreachable, a newer schema version).
        """
        entry = _POOLS.get(id(pool))
        if entry is None or entry[0] is not pool:
            entry = _POOLS[id(pool)] = (pool, _PoolState(pool))
        state: _PoolState = entry[1]
        async with state.lock:
            try:
                if not state.schema_ready:
                    await _ensure_schema(pool)
                    state.schema_ready = True
                if state.lock_connection is None:
                    state.lock_connection = await pool.acquire()
                got = await state.lock_connection.fetchval(
                    "SELECT pg_try_advisory_lock($1)", _lock_key(account)
                )
            except StorageException:
                raise
            except Exception as exc:  # asyncpg and OS errors
                raise StorageException(f"PostgreSQL storage of {account!r}: cannot open: {exc}") from exc
            if not got or account in state.accounts:
                if got:
                    await state.lock_connection.execute("SELECT pg_advisory_unlock($1)", _lock_key(account))
                raise AccountInUse(
                    f"the PostgreSQL storage of {account!r} is open in another process (or storage object)"
                    " already: two writers would corrupt its sessions"
                )
            state.accounts.add(account)
        return cls(pool, account, state, disable_cache=disable_cache)

    @property
    def account(self) -> str:
        return self.__account

    def __where(self, operation: str, key: str) -> str:
        return f"PostgreSQL storage of {self.__account!r}: {operation} of {key!r}"

    def __check_open(self) -> None:
        if self.__closed:
            raise StorageException(f"the PostgreSQL storage of {self.__account!r} is closed")

    def __in_own_transaction(self) -> bool:
        return self.__txn_token is not None and _OWNER.get() is self.__txn_token

    async def __run(self, operation: str, key: str, sql: str, *args: Any) -> Any:
        self.__check_open()
        try:
            if self.__in_own_transaction():
                return await self.__txn_connection.fetchrow(sql, *args)
            return await self.__pool.fetchrow(sql, *args)
        except Exception as exc:  # asyncpg and OS errors
            raise StorageException(f"{self.__where(operation, key)} failed: {exc}") from exc

    async def __write(self, operation: str, key: str, text: Optional[str]) -> None:
        if self.__in_own_transaction():
            self.__txn_touched.add(key)
            if text is None:
                await self.__run(operation, key, _DELETE, self.__account, key)
            else:
                await self.__run(operation, key, _UPSERT, self.__account, key, text)
            return
        if self.__txn_token is not None:
            async with self.__txn_lock:  # a foreign write waits for the transaction to end
                await self.__grouped(operation, key, text)
            return
        await self.__grouped(operation, key, text)

    async def __grouped(self, operation: str, key: str, text: Optional[str]) -> None:
        self.__check_open()
        try:
            await self.__state.group_commit.write(self.__account, key, text)
        except Exception as exc:  # asyncpg and OS errors
            raise StorageException(f"{self.__where(operation, key)} failed: {exc}") from exc

    # -- Storage ------------------------------------------------------------------------------------

    async def _load(self, key: str) -> Maybe[JSONType]:
        row = await self.__run(
            "load", key, "SELECT value FROM omemo_kv WHERE account = $1 AND key = $2", self.__account, key
        )
        if row is None:
            return Nothing()
        try:
            value = json.loads(row[0])
        except ValueError as exc:
            raise StorageException(f"{self.__where('load', key)}: the value is not valid JSON") from exc
        return Just._wrap(value)

    async def _store(self, key: str, value: JSONType) -> None:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        await self.__write("store", key, text)

    async def _delete(self, key: str) -> None:
        await self.__write("delete", key, None)

    # -- transactions ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """Group writes into one database transaction: all of them are kept, or none (also if the
        process dies in the middle). Writes by other tasks wait until it ended; the owner's reads see
        its own writes. Nested blocks join the outermost one.

        Raises:
            StorageException: beginning or committing failed (nothing of the block is kept).
        """
        if self.__in_own_transaction():
            yield
            return
        self.__check_open()
        async with self.__txn_lock:
            try:
                connection = await self.__pool.acquire()
            except Exception as exc:
                raise StorageException(
                    f"PostgreSQL storage of {self.__account!r}: no connection: {exc}"
                ) from exc
            transaction = connection.transaction()
            token = object()
            try:
                await transaction.start()
                self.__txn_connection, self.__txn_token, self.__txn_touched = connection, token, set()
                reset = _OWNER.set(token)
                try:
                    yield
                except BaseException:
                    self.__end(reset)
                    await self.__rollback(transaction)
                    raise
                self.__end(reset)
                try:
                    await transaction.commit()
                except Exception as exc:
                    self._invalidate_cache(self.__txn_touched)
                    raise StorageException(
                        f"PostgreSQL storage of {self.__account!r}: commit failed: {exc}"
                    ) from exc
            finally:
                self.__txn_connection = None
                await self.__pool.release(connection)

    def __end(self, reset: Any) -> None:
        self.__txn_token = None
        with contextlib.suppress(ValueError):
            _OWNER.reset(reset)

    async def __rollback(self, transaction: Any) -> None:
        try:
            await transaction.rollback()
        finally:
            self._invalidate_cache(self.__txn_touched)

    # -- lifecycle and extras -------------------------------------------------------------------------

    async def close(self) -> None:
        """Release the account (its advisory lock). Further operations raise StorageException."""
        if self.__closed:
            return
        self.__closed = True
        state = self.__state
        async with state.lock:
            state.accounts.discard(self.__account)
            connection = state.lock_connection
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.execute("SELECT pg_advisory_unlock($1)", _lock_key(self.__account))
                if not state.accounts:
                    state.lock_connection = None
                    with contextlib.suppress(Exception):
                        await self.__pool.release(connection)
            if not state.accounts:
                _POOLS.pop(id(self.__pool), None)

    @property
    def closed(self) -> bool:
        return self.__closed

    async def __aenter__(self: _SelfT) -> _SelfT:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def snapshot(self) -> Dict[str, JSONType]:
        """Returns: every key of the account and its value (a fresh dict)."""
        self.__check_open()
        rows = await self.__pool.fetch(
            "SELECT key, value FROM omemo_kv WHERE account = $1 ORDER BY key", self.__account
        )
        return {row[0]: json.loads(row[1]) for row in rows}

    def __repr__(self) -> str:
        return f"PostgreSQLStorage({self.__account!r}{', closed' if self.__closed else ''})"


async def _ensure_schema(pool: Any) -> None:
    """Create the tables (once, whichever process comes first) and check the schema version."""
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
        for statement in _SCHEMA:
            await connection.execute(statement)
        version = await connection.fetchval("SELECT max(version) FROM omemo_schema")
        if version is None:
            await connection.execute("INSERT INTO omemo_schema (version) VALUES ($1)", SCHEMA_VERSION)
        elif version > SCHEMA_VERSION:
            raise StorageException(
                f"the PostgreSQL database has omemo schema version {version}; this version of omemo reads"
                f" up to {SCHEMA_VERSION}"
            )
