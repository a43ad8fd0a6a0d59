"""Optional write grouping shared by the ready storages: ``async with storage.transaction(): ...``.

Theory of operation. A transaction belongs to the asyncio task (more precisely: the context) that opened
it, recorded in a context variable. While it is open:

- writes from the owning task (and from tasks it spawns, which inherit the context) join it;
- writes from any other task wait until it has ended, so that they are never rolled back with it;
- reads from any task see the values written so far (there is one connection / one dict).

Leaving the block normally commits; leaving it with an exception (including cancellation) rolls every
write of the block back and drops the affected keys from the cache. A nested ``transaction()`` in the
owning task joins the outer one.

Implementations provide ``_txn_begin``, ``_txn_commit`` and ``_txn_rollback``, and call
:meth:`_TransactionSupport._txn_guard` around every write.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar, Token
from typing import Optional, Set, TypeVar

__all__ = ["_TransactionSupport"]

_T = TypeVar("_T")

_OWNER: ContextVar[Optional[object]] = ContextVar("omemo_storages_transaction_owner", default=None)


class _TransactionSupport:
    _txn_token: Optional[object] = None
    _txn_lock: Optional[asyncio.Lock] = None
    _txn_touched: Set[str]

    def _txn_active_here(self) -> bool:
        token = self._txn_token
        return token is not None and _OWNER.get() is token

    def _txn_get_lock(self) -> asyncio.Lock:
        if self._txn_lock is None:
            self._txn_lock = asyncio.Lock()
        return self._txn_lock

    async def _txn_guard(self, key: str, write: Callable[[], _T]) -> _T:
        """Run a (synchronous) write: inside the own transaction, or after any foreign one ended."""
        if self._txn_token is None:
            return write()
        if _OWNER.get() is self._txn_token:
            self._txn_touched.add(key)
            return write()
        async with self._txn_get_lock():
            return write()

    @abstractmethod
    def _txn_begin(self) -> None: ...

    @abstractmethod
    def _txn_commit(self) -> None: ...

    @abstractmethod
    def _txn_rollback(self, touched: Set[str]) -> None: ...

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """Group writes into one atomic unit: all of them are kept, or none.

        Use as ``async with storage.transaction(): ...``. Writes made inside the block by the current
        task are committed together when the block ends normally and rolled back if it raises. Writes
        by other tasks wait until the block has ended. Nested blocks join the outermost one.

        Note that this deliberately relaxes the "writes are persisted before returning" rule of
        :class:`~omemo.storage.Storage` for the writes inside the block: they become durable when the
        block is left.

        Yields:
            Nothing.

        Raises:
            StorageException: beginning or committing the transaction failed (the writes are rolled
                back).
        """
        if self._txn_active_here():
            yield
            return
        async with self._txn_get_lock():
            token = object()
            self._txn_begin()
            self._txn_touched = set()
            self._txn_token = token
            reset = _OWNER.set(token)
            try:
                yield
            except BaseException:
                self._txn_end(reset)
                self._txn_rollback(self._txn_touched)
                raise
            self._txn_end(reset)
            try:
                self._txn_commit()
            except BaseException:
                self._txn_rollback(self._txn_touched)
                raise

    def _txn_end(self, reset: Token[Optional[object]]) -> None:
        self._txn_token = None
        with contextlib.suppress(ValueError):  # left in another context than entered: nothing to undo
            _OWNER.reset(reset)
