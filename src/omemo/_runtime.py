"""The asynchronous-framework adapter of the session manager: locks, sleeping, background tasks.

Theory of operation. The session manager is written as plain coroutines. Under asyncio they run on the
asyncio event loop; under Twisted they are driven by ``Deferred.fromCoroutine``/``ensureDeferred``, where
only Deferreds may be awaited. Everything that has to suspend on something other than a user hook
(waiting for a lock, sleeping, running the background signed pre key rotation) therefore goes through a
:class:`Runtime`, chosen once from :class:`~omemo.types.AsyncFramework`. Twisted is imported lazily, so it
stays an optional dependency.

:class:`KeyedLocks` hands out one lock per key (e.g. per ``(namespace, bare_jid, device_id)``) and
forgets locks nobody holds or waits for, so the table does not grow with every device ever seen.
Several keys are always acquired in sorted order, which rules out lock-order deadlocks between
callers that need overlapping sets of keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Hashable, Sequence
from typing import Any, Generic, List, Protocol, TypeVar

from .types import AsyncFramework

__all__ = [
    "BackgroundTask",
    "KeyedLocks",
    "Lock",
    "Runtime",
    "lock_for_running_framework",
    "make_runtime",
    "twisted_reactor",
]

_log = logging.getLogger("omemo.core")


class _LockKey(Hashable, Protocol):
    """A key of a :class:`KeyedLocks` table: hashable, and ordered with the other keys of its table."""

    def __lt__(self, other: Any, /) -> bool: ...


KeyT = TypeVar("KeyT", bound=_LockKey)
T = TypeVar("T")


class Lock(Protocol):
    """The minimal lock interface used by the session manager (not reentrant)."""

    async def acquire(self) -> object:
        """Wait for and take the lock (the result, if any, is ignored)."""

    def release(self) -> None:
        """Give the lock back."""


class BackgroundTask(ABC):
    """A handle on a running background coroutine."""

    @abstractmethod
    async def stop(self) -> None:
        """Cancel the coroutine and wait until it has finished (idempotent)."""


class Runtime(ABC):
    """Framework-specific primitives needed by the session manager."""

    @abstractmethod
    def new_lock(self) -> Lock:
        """Returns: a fresh, unlocked lock usable from coroutines of this framework."""

    @abstractmethod
    async def sleep(self, seconds: float) -> None:
        """Suspend the calling coroutine for ``seconds`` seconds."""

    @abstractmethod
    def start(self, factory: Callable[[], Coroutine[Any, Any, None]]) -> BackgroundTask:
        """Run ``factory()`` in the background.

        Returns:
            A handle whose :meth:`BackgroundTask.stop` cancels it.
        """

    @abstractmethod
    def is_cancellation(self, exc: BaseException) -> bool:
        """Returns: whether ``exc`` signals the cancellation of the running coroutine."""

    @abstractmethod
    async def gather(self, coroutines: Sequence[Coroutine[Any, Any, T]]) -> List[T]:
        """Run coroutines concurrently.

        Args:
            coroutines: the coroutines; they should handle their own expected errors.

        Returns:
            Their results, in order. The first exception (if any) is re-raised.
        """


class _AsyncioTask(BackgroundTask):
    def __init__(self, task: asyncio.Task[None]) -> None:
        self._task = task

    async def stop(self) -> None:
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class AsyncioRuntime(Runtime):
    """The :class:`Runtime` for :attr:`AsyncFramework.ASYNCIO`."""

    def new_lock(self) -> Lock:
        # asyncio.Lock itself: acquiring an uncontended lock then costs one coroutine, not two.
        return asyncio.Lock()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def start(self, factory: Callable[[], Coroutine[Any, Any, None]]) -> BackgroundTask:
        return _AsyncioTask(asyncio.get_running_loop().create_task(factory()))

    def is_cancellation(self, exc: BaseException) -> bool:
        return isinstance(exc, asyncio.CancelledError)

    async def gather(self, coroutines: Sequence[Coroutine[Any, Any, T]]) -> List[T]:
        if len(coroutines) == 1:
            return [await coroutines[0]]
        return list(await asyncio.gather(*coroutines))


def twisted_reactor() -> Any:
    """Returns: the Twisted reactor used for sleeping (tests replace this function with a clock)."""
    from twisted.internet import reactor

    return reactor


class _TwistedLock:
    def __init__(self) -> None:
        from twisted.internet.defer import DeferredLock

        self._lock = DeferredLock()

    async def acquire(self) -> None:
        await self._lock.acquire()

    def release(self) -> None:
        self._lock.release()


class _TwistedTask(BackgroundTask):
    def __init__(self, deferred: Any) -> None:
        self._deferred = deferred

    async def stop(self) -> None:
        self._deferred.cancel()
        await self._deferred


class TwistedRuntime(Runtime):
    """The :class:`Runtime` for :attr:`AsyncFramework.TWISTED` (imports Twisted lazily)."""

    def __init__(self) -> None:
        """Import Twisted now, so that a missing installation fails early and clearly.

        Raises:
            ImportError: Twisted is not installed (install the ``twisted`` extra).
        """
        try:
            from twisted.internet import defer
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "AsyncFramework.TWISTED needs Twisted; install omemo-stack with the 'twisted' extra"
            ) from exc
        self._defer = defer

    def new_lock(self) -> Lock:
        return _TwistedLock()

    async def sleep(self, seconds: float) -> None:
        from twisted.internet import task

        await task.deferLater(twisted_reactor(), seconds, lambda: None)

    def start(self, factory: Callable[[], Coroutine[Any, Any, None]]) -> BackgroundTask:
        deferred = self._defer.ensureDeferred(factory())

        def _swallow_cancel(failure: Any) -> None:
            failure.trap(self._defer.CancelledError)

        deferred.addErrback(_swallow_cancel)
        return _TwistedTask(deferred)

    def is_cancellation(self, exc: BaseException) -> bool:
        return isinstance(exc, self._defer.CancelledError)

    async def gather(self, coroutines: Sequence[Coroutine[Any, Any, T]]) -> List[T]:
        defer = self._defer
        deferreds = [defer.ensureDeferred(coroutine) for coroutine in coroutines]
        try:
            results = await defer.gatherResults(deferreds, consumeErrors=True)
        except defer.FirstError as exc:
            exc.subFailure.raiseException()
        return list(results)


def make_runtime(framework: AsyncFramework) -> Runtime:
    """Build the runtime for a framework.

    Args:
        framework: the framework the application runs the session manager under.

    Returns:
        The matching runtime.

    Raises:
        ValueError: unknown framework.
    """
    if framework is AsyncFramework.ASYNCIO:
        return AsyncioRuntime()
    if framework is AsyncFramework.TWISTED:
        return TwistedRuntime()
    raise ValueError(f"unsupported async framework: {framework!r}")


class _NoLock:
    async def acquire(self) -> None:
        pass

    def release(self) -> None:
        pass


def lock_for_running_framework() -> Lock:
    """A lock for whatever drives the calling coroutine: asyncio inside an asyncio task, else Twisted
    if it is installed (for code that does not know the session manager's framework)."""
    try:
        in_asyncio_task = asyncio.current_task() is not None
    except RuntimeError:  # no running event loop
        in_asyncio_task = False
    if in_asyncio_task:
        return AsyncioRuntime().new_lock()
    try:
        return TwistedRuntime().new_lock()
    except ImportError:  # pragma: no cover - neither asyncio nor Twisted drives this coroutine
        return _NoLock()


class _Entry:
    """A key's holders and waiters. ``lock`` is made only when a second user comes: an uncontended key
    (nearly always) is held without any lock object, so taking and giving it back costs no coroutine."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock: Lock | None = None
        self.users = 1


class KeyedLocks(Generic[KeyT]):
    """A table of locks indexed by key, acquired in sorted key order."""

    def __init__(self, runtime: Runtime) -> None:
        """Args:
        runtime: the runtime whose locks to use.
        """
        self._runtime = runtime
        self._entries: dict[KeyT, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def _acquire(self, key: KeyT) -> _Entry:
        """Take the key's lock, waiting for its holder if there is one."""
        entry = self._entries.get(key)
        if entry is None:  # nobody holds or waits for it: held at once, without a lock object
            entry = self._entries[key] = _Entry()
            return entry
        entry.users += 1
        try:
            lock = entry.lock
            if lock is None:
                # The holder took the key without a lock object: make one, taken on the holder's behalf
                # (a fresh lock is taken without suspending), which the holder gives back on release.
                lock = entry.lock = self._runtime.new_lock()
                await lock.acquire()
            await lock.acquire()
        except BaseException:
            self._leave(key, entry)
            raise
        return entry

    def _leave(self, key: KeyT, entry: _Entry) -> None:
        entry.users -= 1
        if entry.users == 0:
            del self._entries[key]

    def _release(self, key: KeyT, entry: _Entry) -> None:
        if entry.lock is not None:
            entry.lock.release()
        self._leave(key, entry)

    def hold(self, *keys: KeyT) -> _Held[KeyT]:
        """Hold the locks of all ``keys`` (duplicates ignored) for the body of an ``async with``.

        The keys are acquired in their natural order (any fixed total order prevents lock-order deadlocks;
        the keys of one table are of one type: JIDs, or (namespace, JID, device) tuples), and released in
        reverse order, also when the body raises or is cancelled.

        Args:
            *keys: the keys to lock.

        Returns:
            The async context manager (a plain object, not a generator: this runs on every operation).
        """
        return _Held(self, keys)


class _Held(Generic[KeyT]):
    __slots__ = ("_held", "_keys", "_table")

    def __init__(self, table: KeyedLocks[KeyT], keys: tuple[KeyT, ...]) -> None:
        self._table = table
        self._keys = keys
        self._held: list[tuple[KeyT, _Entry]] = []

    async def __aenter__(self) -> None:
        keys = self._keys
        table = self._table
        if len(keys) == 1:
            self._held.append((keys[0], await table._acquire(keys[0])))
            return
        try:
            for key in sorted(dict.fromkeys(keys)):
                self._held.append((key, await table._acquire(key)))
        except BaseException:
            self._release()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._release()

    def _release(self) -> None:
        held, self._held = self._held, []
        for key, entry in reversed(held):
            self._table._release(key, entry)
