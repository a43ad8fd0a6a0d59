"""A persistent :class:`~omemo.storage.Storage` in one SQLite file (stdlib :mod:`sqlite3`).

Theory of operation. One table ``kv(key TEXT PRIMARY KEY, value TEXT)`` holds every value as JSON
text. The connection runs in autocommit mode, so each ``_store``/``_delete`` is a single statement that
SQLite commits atomically before the coroutine returns; with ``synchronous=FULL`` (the default) it is
also on stable storage by then, so neither a crash of the process nor a power loss loses a write that
was reported done. The journal is WAL: readers never block the writer, and commits are cheap.

The SQL calls are synchronous. They are short (a primary-key lookup or upsert on a local file), so
they run on the event loop thread rather than paying for a thread hop per call; a lock makes the
connection safe to share with other threads, too.

The file's format version is kept in ``PRAGMA user_version`` (currently 1); opening a file written by
a newer format raises :class:`~omemo.storage.StorageException` instead of guessing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from types import TracebackType
from typing import Any, Dict, Literal, Optional, Set, Type, TypeVar, Union

from ..storage import Just, Maybe, Nothing, Storage, StorageException
from ..types import JSONType
from ._transaction import _TransactionSupport

__all__ = ["SQLiteStorage"]

#: The storage format version this module reads and writes.
FORMAT_VERSION = 1

_SelfT = TypeVar("_SelfT", bound="SQLiteStorage")

_SCHEMA = "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID"


class SQLiteStorage(_TransactionSupport, Storage):
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
        self.__lock = threading.RLock()
        try:
            conn = sqlite3.connect(
                self.__path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise StorageException(f"cannot open the SQLite storage {self.__path!r}: {e}") from e
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
        except sqlite3.Error as e:
            conn.close()
            raise StorageException(f"cannot initialise the SQLite storage {self.__path!r}: {e}") from e
        except BaseException:
            conn.close()
            raise
        self.__conn: Optional[sqlite3.Connection] = conn

    @property
    def path(self) -> str:
        """The database file path as given."""
        return self.__path

    def __connection(self) -> sqlite3.Connection:
        conn = self.__conn
        if conn is None:
            raise StorageException(f"the SQLite storage {self.__path!r} is closed")
        return conn

    def __execute(self, operation: str, key: str, sql: str, params: tuple[Any, ...]) -> Any:
        with self.__lock:
            conn = self.__connection()
            try:
                return conn.execute(sql, params).fetchone()
            except sqlite3.Error as e:
                raise StorageException(
                    f"SQLite storage {self.__path!r}: {operation} of {key!r} failed: {e}"
                ) from e

    # -- Storage ------------------------------------------------------------------------------------

    async def _load(self, key: str) -> Maybe[JSONType]:
        row = self.__execute("load", key, "SELECT value FROM kv WHERE key = ?", (key,))
        if row is None:
            return Nothing()
        try:
            value = json.loads(row[0])
        except ValueError as e:
            raise StorageException(
                f"SQLite storage {self.__path!r}: the value of {key!r} is not valid JSON"
            ) from e
        # Freshly decoded, so owned by nobody else; Just clones on the way out.
        return Just._wrap(value)

    async def _store(self, key: str, value: JSONType) -> None:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        await self._txn_guard(
            key,
            lambda: self.__execute(
                "store", key, "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, text)
            ),
        )

    async def _delete(self, key: str) -> None:
        await self._txn_guard(
            key, lambda: self.__execute("delete", key, "DELETE FROM kv WHERE key = ?", (key,))
        )

    # -- transactions -------------------------------------------------------------------------------

    def __run(self, what: str, sql: str) -> None:
        with self.__lock:
            conn = self.__connection()
            try:
                conn.execute(sql)
            except sqlite3.Error as e:
                raise StorageException(f"SQLite storage {self.__path!r}: {what} failed: {e}") from e

    def _txn_begin(self) -> None:
        # IMMEDIATE takes the write lock now, so a conflicting writer in another process is detected
        # at the start of the block rather than at commit time.
        self.__run("beginning a transaction", "BEGIN IMMEDIATE")

    def _txn_commit(self) -> None:
        self.__run("committing a transaction", "COMMIT")

    def _txn_rollback(self, touched: Set[str]) -> None:
        try:
            with self.__lock:
                conn = self.__conn
                if conn is not None and conn.in_transaction:
                    conn.execute("ROLLBACK")
        finally:
            self._invalidate_cache(touched)

    # -- lifecycle and extras -----------------------------------------------------------------------

    def close(self) -> None:
        """Close the database. Further operations raise :class:`~omemo.storage.StorageException`.

        Closing twice is harmless.
        """
        with self.__lock:
            conn, self.__conn = self.__conn, None
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
        """Read the whole content, e.g. to compare it with an expected storage dump.

        Returns:
            A fresh dict mapping every key to its value.

        Raises:
            StorageException: reading failed.
        """
        with self.__lock:
            conn = self.__connection()
            try:
                rows = conn.execute("SELECT key, value FROM kv ORDER BY key").fetchall()
            except sqlite3.Error as e:
                raise StorageException(f"SQLite storage {self.__path!r}: snapshot failed: {e}") from e
        return {key: json.loads(text) for key, text in rows}

    def __repr__(self) -> str:
        return f"SQLiteStorage({self.__path!r}{', closed' if self.__conn is None else ''})"
