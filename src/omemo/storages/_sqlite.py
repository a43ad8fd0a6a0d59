"""A persistent :class:`~omemo.storage.Storage` in one SQLite file (stdlib :mod:`sqlite3`).

Theory of operation. One table ``kv(key TEXT PRIMARY KEY, value TEXT)`` holds every value as JSON
text; the journal is WAL. With ``synchronous=FULL`` (the default) a committed write is on stable
storage, so neither a crash of the process nor a power loss loses a write that was reported done.

Many accounts in one file (for gateways): ``SQLiteStorage(path, account=jid)``. Every storage object of
the process for the same file then shares one ``_File`` (its connections and its commit queue); an
account's keys are stored with the account as a prefix (``account + "\\0" + key``), so the format stays
the same. Group commit then spans the accounts: one fsync for every write of every account that queued
up during the previous commit. An account is open once: a second storage object in the process, or
another process (a POSIX record lock on ``path + "-accounts.lock"``, released when the process dies),
gets :class:`~omemo.storages.AccountInUse`. Without ``account`` a storage has the file to itself.

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
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, Dict, List, Literal, Optional, Set, Tuple, Type, TypeVar, Union

from ..storage import Just, Maybe, Nothing, Storage, StorageException
from ..types import JSONType
from ._errors import AccountInUse
from ._transaction import _OWNER

try:  # POSIX: the cross-process account lock
    import fcntl
except ImportError:  # pragma: no cover - Windows: in-process checks only
    fcntl = None  # type: ignore[assignment]

__all__ = ["SQLiteStorage"]

#: The storage format version this module reads and writes.
FORMAT_VERSION = 1

#: Writer threads shared by all SQLite storages of the process (fsyncs of different files overlap).
WRITER_THREADS = 8

_SelfT = TypeVar("_SelfT", bound="SQLiteStorage")

_SCHEMA = "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID"
_UPSERT = "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)"
#: Between the account and the key in the stored keys of a shared file.
_SEPARATOR = "\0"
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


class _File:
    """One SQLite database file of the process: its connections and its commit queue."""

    def __init__(self, path: str, synchronous: str, timeout: float) -> None:
        self.path = path
        self.synchronous = synchronous
        self.lock = threading.RLock()  # the write connection (the writer thread, close)
        self.read_lock = threading.Lock()  # the read connection
        self.accounts: Set[str] = set()  # open accounts (shared files)
        self.lock_file: Optional[int] = None  # the fd of the account lock file (shared files)
        conn = self.connect(timeout)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > FORMAT_VERSION:
                raise StorageException(
                    f"the SQLite storage {path!r} has format version {version}; this version of"
                    f" omemo reads up to {FORMAT_VERSION}"
                )
            conn.execute(_SCHEMA)
            if version < FORMAT_VERSION:
                conn.execute(f"PRAGMA user_version={FORMAT_VERSION}")
            # A private in-memory database has one connection only: reads share it.
            reader = conn if path == ":memory:" else self.connect(timeout)
        except sqlite3.Error as e:
            conn.close()
            raise StorageException(f"cannot initialise the SQLite storage {path!r}: {e}") from e
        except BaseException:
            conn.close()
            raise
        self.conn: Optional[sqlite3.Connection] = conn
        self.reader: Optional[sqlite3.Connection] = reader
        # Group commit: units waiting for the writer, and whether a commit of this file is running.
        self.pending: List[_Unit] = []
        self.committing = False

    def connect(self, timeout: float) -> sqlite3.Connection:
        try:
            return sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise StorageException(f"cannot open the SQLite storage {self.path!r}: {e}") from e

    @property
    def closed(self) -> bool:
        return self.conn is None

    def closed_error(self) -> StorageException:
        return StorageException(f"the SQLite storage {self.path!r} is closed")

    # -- reading ------------------------------------------------------------------------------------

    def query(self, sql: str, parameters: Tuple[str, ...] = ()) -> List[Any]:
        """The rows of a read on the read connection (``sqlite3.Error`` is the caller's to name)."""
        with self.read_lock:
            reader = self.reader
            if reader is None:
                raise self.closed_error()
            return reader.execute(sql, parameters).fetchall()

    def read(self, key: str) -> Optional[str]:
        try:
            rows = self.query("SELECT value FROM kv WHERE key = ?", (key,))
        except sqlite3.Error as e:
            raise StorageException(f"SQLite storage {self.path!r}: load of {_shown(key)} failed: {e}") from e
        return str(rows[0][0]) if rows else None

    def rows(self, prefix: str) -> List[Tuple[str, str]]:
        try:
            if not prefix:
                return self.query("SELECT key, value FROM kv ORDER BY key")
            # Keys of the account: from prefix (inclusive) to prefix with its last character + 1.
            end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
            sql = "SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key"
            return self.query(sql, (prefix, end))
        except sqlite3.Error as e:
            raise StorageException(f"SQLite storage {self.path!r}: snapshot failed: {e}") from e

    # -- writing ------------------------------------------------------------------------------------

    async def commit(self, ops: List[_Op]) -> None:
        """Commit ``ops`` atomically; return once they are (durable with ``synchronous=FULL``)."""
        loop = _running_loop()
        if loop is None:  # no asyncio: synchronously, on this thread
            error = self.apply([ops])[0]
            if error is not None:
                raise error
            return
        future: asyncio.Future[None] = loop.create_future()
        self.pending.append((ops, future))
        if not self.committing:
            self.start_commit(loop)
        await future

    def start_commit(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self.pending = self.pending, []
        self.committing = True
        done = _writers().submit(self.apply, [ops for ops, _ in batch])

        def finished(done: Future[List[Optional[StorageException]]]) -> None:
            try:
                loop.call_soon_threadsafe(self.committed, loop, batch, done)
            except RuntimeError:  # the loop is closed: nobody waits any more; let another loop go on
                self.committing = False

        done.add_done_callback(finished)

    def committed(
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
        self.committing = False
        if self.pending:
            self.start_commit(loop)

    def apply(self, units: List[List[_Op]]) -> List[Optional[StorageException]]:
        """Commit ``units`` (on a writer thread): together in one transaction, else one by one.

        Returns:
            Per unit, ``None`` (committed) or the error that prevented it.
        """
        with self.lock:
            conn = self.conn
            if conn is None:
                return [self.closed_error()] * len(units)
            if len(units) > 1 and self.apply_one(conn, [op for ops in units for op in ops]) is None:
                return [None] * len(units)
            return [self.apply_one(conn, ops) for ops in units]

    def apply_one(self, conn: sqlite3.Connection, ops: List[_Op]) -> Optional[StorageException]:
        op: _Op = ("commit", "", None)
        try:
            if len(ops) == 1:  # autocommit: one statement is its own transaction
                op = ops[0]
                _execute(conn, op)
                return None
            conn.execute("BEGIN IMMEDIATE")
            try:
                for op in ops:
                    _execute(conn, op)
                op = ("commit", "", None)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            what = "committing a transaction" if op[0] == "commit" else f"{op[0]} of {_shown(op[1])}"
            return StorageException(f"SQLite storage {self.path!r}: {what} failed: {e}")
        return None

    # -- accounts and closing ---------------------------------------------------------------------------

    def claim(self, account: str) -> None:
        """Mark ``account`` open here; AccountInUse if it is, in this process or another one."""
        if account in self.accounts:
            raise _in_use(self.path, account)
        if fcntl is not None and self.path != ":memory:":
            if self.lock_file is None:
                self.lock_file = os.open(self.path + "-accounts.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.lockf(self.lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _lock_offset(account))
            except OSError:
                raise _in_use(self.path, account) from None
        self.accounts.add(account)

    def release(self, account: str) -> None:
        self.accounts.discard(account)
        if self.lock_file is not None and fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.lockf(self.lock_file, fcntl.LOCK_UN, 1, _lock_offset(account))

    def close(self) -> None:
        with self.lock, self.read_lock:
            conn, self.conn = self.conn, None
            reader, self.reader = self.reader, None
            if reader is not None and reader is not conn:
                reader.close()
            if conn is not None:
                conn.close()
            if self.lock_file is not None:
                os.close(self.lock_file)  # drops the account locks of this process on the file
                self.lock_file = None


def _execute(conn: sqlite3.Connection, op: _Op) -> None:
    _, key, text = op
    if text is None:
        conn.execute(_DELETE, (key,))
    else:
        conn.execute(_UPSERT, (key, text))


def _shown(key: str) -> str:
    """A stored key as errors show it: ``'key'``, or ``'key' of account 'jid'`` in a shared file."""
    account, separator, rest = key.partition(_SEPARATOR)
    return f"{rest!r} of account {account!r}" if separator else repr(key)


def _lock_offset(account: str) -> int:
    return int.from_bytes(hashlib.sha256(b"omemo-stack account\0" + account.encode()).digest()[:7], "big")


def _in_use(path: str, account: str) -> AccountInUse:
    return AccountInUse(
        f"the account {account!r} of the SQLite storage {path!r} is open in another process (or storage"
        " object) already: two writers would corrupt its sessions"
    )


#: Shared files (storages with an account), by their real path.
_FILES: Dict[str, Tuple[_File, int]] = {}
_FILES_LOCK = threading.Lock()


class SQLiteStorage(Storage):
    """A storage in one SQLite database file: one account per file, or many (``account=``).

    Usable directly (call :meth:`close` when done) or as ``async with SQLiteStorage(path) as storage:``.
    Also offers :meth:`transaction` to make a group of writes atomic (see :mod:`omemo.storages`) and
    :meth:`snapshot`.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike[str]],
        *,
        account: Optional[str] = None,
        disable_cache: bool = False,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        timeout: float = 5.0,
    ) -> None:
        """Open (creating if needed) the database file.

        Args:
            path: the database file. ``":memory:"`` gives a private in-memory database.
            account: store the values of this account (any string naming it, e.g. its bare JID) in a
                file shared with other accounts: every storage object of the process with the same
                file shares its connections and its group commit (one fsync for the writes of all
                accounts). ``None`` (default): the file belongs to this storage alone. Do not mix both
                kinds on one file.
            disable_cache: disable the :class:`~omemo.storage.Storage` cache (on by default; it saves
                the JSON decoding on repeated loads).
            synchronous: ``"FULL"`` (default) makes every write durable against power loss before it
                returns; ``"NORMAL"`` only against process crashes, but writes are faster.
            timeout: seconds to wait for a lock held by another connection to the same file.

        Raises:
            ValueError: ``synchronous`` is not one of the two values, or ``account`` is empty or
                contains a NUL character.
            AccountInUse: ``account`` is open in this process or another one already.
            StorageException: the file cannot be opened or was written by a newer format version.
        """
        super().__init__(disable_cache=disable_cache)
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        if account is not None and (not account or _SEPARATOR in account):
            raise ValueError("account must be a non-empty string without NUL characters")
        self.__path = os.fspath(path)
        self.__account = account
        self.__prefix = "" if account is None else account + _SEPARATOR
        if account is None or self.__path == ":memory:":
            self.__file = _File(self.__path, synchronous, timeout)
            self.__shared_key: Optional[str] = None
            if account is not None:
                self.__file.claim(account)
        else:
            self.__shared_key = os.path.realpath(self.__path)
            with _FILES_LOCK:
                entry = _FILES.get(self.__shared_key)
                file = entry[0] if entry is not None else _File(self.__path, synchronous, timeout)
                try:
                    file.claim(account)
                except BaseException:
                    if entry is None:
                        file.close()
                    raise
                _FILES[self.__shared_key] = (file, (entry[1] if entry is not None else 0) + 1)
            self.__file = file
        self.__closed = False
        # The open transaction: its owner's token, its writes (in order) and their latest values.
        self.__txn_token: Optional[object] = None
        self.__txn_lock: Optional[asyncio.Lock] = None
        self.__txn_ops: List[_Op] = []
        self.__txn_overlay: Dict[str, Optional[str]] = {}

    @property
    def path(self) -> str:
        """The database file path as given."""
        return self.__path

    @property
    def account(self) -> Optional[str]:
        """The account of a shared file, or ``None``."""
        return self.__account

    def __check_open(self) -> None:
        if self.__closed or self.__file.closed:
            raise self.__file.closed_error()

    # -- Storage ------------------------------------------------------------------------------------

    async def _load(self, key: str) -> Maybe[JSONType]:
        overlay = self.__txn_overlay
        stored = self.__prefix + key
        if stored in overlay:  # written by the open transaction
            text = overlay[stored]
        else:
            self.__check_open()
            text = self.__file.read(stored)
        if text is None:
            return Nothing()
        try:
            value = json.loads(text)
        except ValueError as e:
            raise StorageException(
                f"SQLite storage {self.__path!r}: the value of {_shown(stored)} is not valid JSON"
            ) from e
        # Freshly decoded, so owned by nobody else; Just clones on the way out.
        return Just._wrap(value)

    async def _store(self, key: str, value: JSONType) -> None:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        await self.__write(("store", self.__prefix + key, text))

    async def _delete(self, key: str) -> None:
        await self.__write(("delete", self.__prefix + key, None))

    # -- writing ------------------------------------------------------------------------------------

    def __in_own_transaction(self) -> bool:
        token = self.__txn_token
        return token is not None and _OWNER.get() is token

    async def __write(self, op: _Op) -> None:
        self.__check_open()
        if self.__in_own_transaction():
            self.__txn_ops.append(op)
            self.__txn_overlay[op[1]] = op[2]
            return
        if self.__txn_token is not None:  # a foreign write waits for the transaction to end
            async with self.__get_txn_lock():
                await self.__file.commit([op])
            return
        await self.__file.commit([op])

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
        self.__check_open()
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
                    await self.__file.commit(ops)
            except BaseException:
                self.__end_transaction(reset, committed=False)
                raise
            self.__end_transaction(reset, committed=True)

    def __end_transaction(self, reset: Any, committed: bool) -> None:
        prefix = len(self.__prefix)
        touched = {key[prefix:] for key in self.__txn_overlay}
        self.__txn_token, self.__txn_ops, self.__txn_overlay = None, [], {}
        with contextlib.suppress(ValueError):  # left in another context than entered: nothing to undo
            _OWNER.reset(reset)
        if not committed:
            self._invalidate_cache(touched)

    # -- lifecycle and extras -----------------------------------------------------------------------

    def close(self) -> None:
        """Close the storage. Further operations raise :class:`~omemo.storage.StorageException`.

        A commit running on the writer thread is finished first; writes still waiting for it fail.
        In a shared file the account is released, and the file is closed with its last account.
        Closing twice is harmless.
        """
        if self.__closed:
            return
        self.__closed = True
        file = self.__file
        if self.__account is not None:
            file.release(self.__account)
        if self.__shared_key is None:
            file.close()
            return
        with _FILES_LOCK:
            entry = _FILES.get(self.__shared_key)
            if entry is not None and entry[0] is file:
                if entry[1] <= 1:
                    del _FILES[self.__shared_key]
                    file.close()
                else:
                    _FILES[self.__shared_key] = (file, entry[1] - 1)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self.__closed

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
        """Read the whole committed content (of the account, in a shared file).

        Returns:
            A fresh dict mapping every key to its value.

        Raises:
            StorageException: reading failed.
        """
        self.__check_open()
        prefix = len(self.__prefix)
        return {key[prefix:]: json.loads(text) for key, text in self.__file.rows(self.__prefix)}

    def __repr__(self) -> str:
        account = "" if self.__account is None else f", account={self.__account!r}"
        return f"SQLiteStorage({self.__path!r}{account}{', closed' if self.__closed else ''})"
