"""A persistent :class:`~omemo.storage.Storage` in one SQLite file (stdlib :mod:`sqlite3`).

Theory of operation. One table ``kv(key TEXT PRIMARY KEY, value TEXT)`` holds every value as JSON
text; the journal is WAL. With ``synchronous=FULL`` (the default) a committed write is on stable
storage, so neither a crash of the process nor a power loss loses a write that was reported done.

Writes leave the event loop. Under asyncio, ``_store``/``_delete`` hand their statement to a writer
thread (a pool shared by every ``SQLiteStorage`` of the process) and return once it is committed: the
fsync never stalls the event loop, and the files of many accounts are synced in parallel. Group commit:
the writes of one file that queue up while its previous commit is running are committed together, in one
transaction (one fsync); if that batch fails, its writes are committed one by one so that only the
failing one reports the error. Reads stay on the event loop thread, on a second connection (WAL readers
never wait for the writer): a primary-key lookup in a local file costs less than a thread hop.
Without a running asyncio loop (e.g. under Twisted) writes run synchronously, as before.

A transaction (``async with storage.transaction():``) collects its writes in memory (reads of any task
see them meanwhile) and hands them to the writer as one unit when the block ends: they commit together
or not at all, also if the process dies in the middle. Writes of other tasks wait until it ended.

The file's format version is kept in ``PRAGMA user_version`` (currently 1); opening a file written by
a newer format raises :class:`~omemo.storage.StorageException` instead of guessing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, Dict, List, Literal, Optional, Tuple, Type, TypeVar, Union

from ..storage import Just, Maybe, Nothing, Storage, StorageException
from ..types import JSONType
from ._transaction import _OWNER

__all__ = ["SQLiteStorage"]

#: The storage format version this module reads and writes.
FORMAT_VERSION = 1

#: Writer threads shared by all SQLite storages of the process (fsyncs of different files overlap).
WRITER_THREADS = 8

_SelfT = TypeVar("_SelfT", bound="SQLiteStorage")

_SCHEMA = "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID"
_UPSERT = "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)"
_DELETE = "DELETE FROM kv WHERE key = ?"

#: One write: (what, key, value as JSON text, or None to delete).
_Op = Tuple[str, str, Optional[str]]
#: A unit the writer commits atomically, and the future of its waiter.
_Unit = Tuple[List[_Op], "asyncio.Future[None]"]

_executor_lock = threading.Lock()
_executor: Dict[str, ThreadPoolExecutor] = {}  # created on first use


def _writers() -> ThreadPoolExecutor:
    with _executor_lock:
        executor = _executor.get("writers")
        if executor is None:
            executor = ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="omemo-sqlite-writer")
            _executor["writers"] = executor
        return executor


def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class SQLiteStorage(Storage):
    """A storage in one SQLite database file.

    Usable directly (call :meth:`close` when done) or as ``async with SQLiteStorage(path) as storage:``.
    Also offers :meth:`transaction` to make a group of writes atomic (see :mod:`omemo.storages`) and
    :meth:`snapshot`.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike[str]],
        *,
        disable_cache: bool = False,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        timeout: float = 5.0,
    ) -> None:
        """Open (creating if needed) the database file.

        Args:
            path: the database file. ``":memory:"`` gives a private in-memory database.
            disable_cache: disable the :class:`~omemo.storage.Storage` cache (on by default; it saves
                the JSON decoding on repeated loads).
            synchronous: ``"FULL"`` (default) makes every write durable against power loss before it
                returns; ``"NORMAL"`` only against process crashes, but writes are faster.
            timeout: seconds to wait for a lock held by another connection to the same file.

        Raises:
            ValueError: ``synchronous`` is not one of the two values.
            StorageException: the file cannot be opened or was written by a newer format version.
        """
        super().__init__(disable_cache=disable_cache)
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        self.__path = os.fspath(path)
        self.__lock = threading.RLock()  # the write connection (the writer thread, close)
        self.__read_lock = threading.Lock()  # the read connection
        conn = self.__connect(timeout)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > FORMAT_VERSION:
                raise StorageException(
                    f"the SQLite storage {self.__path!r} has format version {version}; this version of"
                    f" omemo reads up to {FORMAT_VERSION}"
                )
            conn.execute(_SCHEMA)
            if version < FORMAT_VERSION:
                conn.execute(f"PRAGMA user_version={FORMAT_VERSION}")
            # A private in-memory database has one connection only: reads share it.
            reader = conn if self.__path == ":memory:" else self.__connect(timeout)
        except sqlite3.Error as e:
            conn.close()
            raise StorageException(f"cannot initialise the SQLite storage {self.__path!r}: {e}") from e
        except BaseException:
            conn.close()
            raise
        self.__conn: Optional[sqlite3.Connection] = conn
        self.__reader: Optional[sqlite3.Connection] = reader
        # Group commit: units waiting for the writer, and whether a commit of this file is running.
        self.__pending: List[_Unit] = []
        self.__committing = False
        # The open transaction: its owner's token, its writes (in order) and their latest values.
        self.__txn_token: Optional[object] = None
        self.__txn_lock: Optional[asyncio.Lock] = None
        self.__txn_ops: List[_Op] = []
        self.__txn_overlay: Dict[str, Optional[str]] = {}

    def __connect(self, timeout: float) -> sqlite3.Connection:
        try:
            return sqlite3.connect(
                self.__path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise StorageException(f"cannot open the SQLite storage {self.__path!r}: {e}") from e

    @property
    def path(self) -> str:
        """The database file path as given."""
        return self.__path

    def __connection(self) -> sqlite3.Connection:
        conn = self.__conn
        if conn is None:
            raise StorageException(f"the SQLite storage {self.__path!r} is closed")
        return conn

    # -- Storage ------------------------------------------------------------------------------------

    async def _load(self, key: str) -> Maybe[JSONType]:
        overlay = self.__txn_overlay
        if key in overlay:  # written by the open transaction
            text = overlay[key]
        else:
            with self.__read_lock:
                reader = self.__reader
                if reader is None:
                    raise StorageException(f"the SQLite storage {self.__path!r} is closed")
                try:
                    row = reader.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
                except sqlite3.Error as e:
                    raise StorageException(
                        f"SQLite storage {self.__path!r}: load of {key!r} failed: {e}"
                    ) from e
            text = None if row is None else row[0]
        if text is None:
            return Nothing()
        try:
            value = json.loads(text)
        except ValueError as e:
            raise StorageException(
                f"SQLite storage {self.__path!r}: the value of {key!r} is not valid JSON"
            ) from e
        # Freshly decoded, so owned by nobody else; Just clones on the way out.
        return Just._wrap(value)

    async def _store(self, key: str, value: JSONType) -> None:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        await self.__write(("store", key, text))

    async def _delete(self, key: str) -> None:
        await self.__write(("delete", key, None))

    # -- writing ------------------------------------------------------------------------------------

    def __in_own_transaction(self) -> bool:
        token = self.__txn_token
        return token is not None and _OWNER.get() is token

    async def __write(self, op: _Op) -> None:
        self.__connection()  # closed: fail now
        if self.__in_own_transaction():
            self.__txn_ops.append(op)
            self.__txn_overlay[op[1]] = op[2]
            return
        if self.__txn_token is not None:  # a foreign write waits for the transaction to end
            async with self.__get_txn_lock():
                await self.__commit([op])
            return
        await self.__commit([op])

    async def __commit(self, ops: List[_Op]) -> None:
        """Commit ``ops`` atomically; return once they are (durable with ``synchronous=FULL``)."""
        loop = _running_loop()
        if loop is None:  # no asyncio: synchronously, on this thread
            error = self._apply([ops])[0]
            if error is not None:
                raise error
            return
        future: asyncio.Future[None] = loop.create_future()
        self.__pending.append((ops, future))
        if not self.__committing:
            self.__start_commit(loop)
        await future

    def __start_commit(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self.__pending = self.__pending, []
        self.__committing = True
        done = _writers().submit(self._apply, [ops for ops, _ in batch])

        def finished(done: Future[List[Optional[StorageException]]]) -> None:
            try:
                loop.call_soon_threadsafe(self.__committed, loop, batch, done)
            except RuntimeError:  # the loop is closed: nobody waits any more; let another loop go on
                self.__committing = False

        done.add_done_callback(finished)

    def __committed(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: List[_Unit],
        done: Future[List[Optional[StorageException]]],
    ) -> None:
        try:
            errors: List[Optional[BaseException]] = list(done.result())
        except BaseException as e:  # handed to every waiter
            errors = [e] * len(batch)
        for (_, future), error in zip(batch, errors, strict=True):
            if future.done():  # the waiter was cancelled; the write happened (or failed) anyway
                continue
            with contextlib.suppress(RuntimeError):  # a future of a loop that is closed by now
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)
        self.__committing = False
        if self.__pending:
            self.__start_commit(loop)

    def _apply(self, units: List[List[_Op]]) -> List[Optional[StorageException]]:
        """Commit ``units`` (on a writer thread): together in one transaction, else one by one.

        Returns:
            Per unit, ``None`` (committed) or the error that prevented it.
        """
        with self.__lock:
            conn = self.__conn
            if conn is None:
                closed = StorageException(f"the SQLite storage {self.__path!r} is closed")
                return [closed] * len(units)
            if len(units) > 1 and self.__apply_one(conn, [op for ops in units for op in ops]) is None:
                return [None] * len(units)
            return [self.__apply_one(conn, ops) for ops in units]

    def __apply_one(self, conn: sqlite3.Connection, ops: List[_Op]) -> Optional[StorageException]:
        op: _Op = ("commit", "", None)
        try:
            if len(ops) == 1:  # autocommit: one statement is its own transaction
                op = ops[0]
                self.__execute(conn, op)
                return None
            conn.execute("BEGIN IMMEDIATE")
            try:
                for op in ops:
                    self.__execute(conn, op)
                op = ("commit", "", None)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            what = "committing a transaction" if op[0] == "commit" else f"{op[0]} of {op[1]!r}"
            return StorageException(f"SQLite storage {self.__path!r}: {what} failed: {e}")
        return None

    @staticmethod
    def __execute(conn: sqlite3.Connection, op: _Op) -> None:
        _, key, text = op
        if text is None:
            conn.execute(_DELETE, (key,))
        else:
            conn.execute(_UPSERT, (key, text))

    # -- transactions -------------------------------------------------------------------------------

    def __get_txn_lock(self) -> asyncio.Lock:
        if self.__txn_lock is None:
            self.__txn_lock = asyncio.Lock()
        return self.__txn_lock

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """Group writes into one atomic unit: all of them are kept, or none.

        Use as ``async with storage.transaction(): ...``. Writes made inside the block by the current
        task (and tasks it starts) are committed together when the block ends normally, and dropped if
        it raises; reads see them meanwhile. Writes by other tasks wait until the block has ended.
        Nested blocks join the outermost one.

        Note that this deliberately relaxes the "writes are persisted before returning" rule of
        :class:`~omemo.storage.Storage` for the writes inside the block: they become durable when the
        block is left.

        Yields:
            Nothing.

        Raises:
            StorageException: committing the transaction failed (none of its writes is kept).
        """
        if self.__in_own_transaction():
            yield
            return
        self.__connection()
        async with self.__get_txn_lock():
            token = object()
            self.__txn_token, self.__txn_ops, self.__txn_overlay = token, [], {}
            reset = _OWNER.set(token)
            try:
                yield
            except BaseException:
                self.__end_transaction(reset, committed=False)
                raise
            ops = self.__txn_ops
            try:
                if ops:
                    await self.__commit(ops)
            except BaseException:
                self.__end_transaction(reset, committed=False)
                raise
            self.__end_transaction(reset, committed=True)

    def __end_transaction(self, reset: Any, committed: bool) -> None:
        touched = set(self.__txn_overlay)
        self.__txn_token, self.__txn_ops, self.__txn_overlay = None, [], {}
        with contextlib.suppress(ValueError):  # left in another context than entered: nothing to undo
            _OWNER.reset(reset)
        if not committed:
            self._invalidate_cache(touched)

    # -- lifecycle and extras -----------------------------------------------------------------------

    def close(self) -> None:
        """Close the database. Further operations raise :class:`~omemo.storage.StorageException`.

        A commit running on the writer thread is finished first; writes still waiting for it fail.
        Closing twice is harmless.
        """
        with self.__lock, self.__read_lock:
            conn, self.__conn = self.__conn, None
            reader, self.__reader = self.__reader, None
            if reader is not None and reader is not conn:
                reader.close()
            if conn is not None:
                conn.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self.__conn is None

    async def __aenter__(self: _SelfT) -> _SelfT:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def snapshot(self) -> Dict[str, JSONType]:
        """Read the whole committed content, e.g. to compare it with an expected storage dump.

        Returns:
            A fresh dict mapping every key to its value.

        Raises:
            StorageException: reading failed.
        """
        with self.__read_lock:
            reader = self.__reader
            if reader is None:
                raise StorageException(f"the SQLite storage {self.__path!r} is closed")
            try:
                rows = reader.execute("SELECT key, value FROM kv ORDER BY key").fetchall()
            except sqlite3.Error as e:
                raise StorageException(f"SQLite storage {self.__path!r}: snapshot failed: {e}") from e
        return {key: json.loads(text) for key, text in rows}

    def __repr__(self) -> str:
        return f"SQLiteStorage({self.__path!r}{', closed' if self.__conn is None else ''})"
