"""Background signed pre key rotation, its retry policy, shutdown, and the Twisted framework variant.

PROTOCOL.md 5.2 step 5 and 6.4: the retry delay after a failed bundle upload must really double (60 s
up to one hour); the reference resets it every iteration. Time is simulated: the toy backend's clock
gives the signed pre key age, and the runtime's ``sleep`` is replaced by a controller that records the
requested delays and lets the test decide when the sleep ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, List, Optional, TypeVar

import pytest

from omemo import _runtime as runtime
from omemo.session_manager import SessionManager
from omemo.testing import InMemoryXMPP
from omemo.types import AsyncFramework

from .fake_backend import NS_A, NS_B, Account, FakeBackend, FakeClock, make_account

ALICE, BOB = "alice@example.org", "bob@example.org"
PERIOD = 1000
T = TypeVar("T")


class SleepController:
    """Replaces ``AsyncioRuntime.sleep``: records each delay, ends a sleep only when told to."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.requests: List[float] = []
        self._waiter: Optional[asyncio.Future[None]] = None

    async def sleep(self, seconds: float) -> None:
        self.requests.append(seconds)
        self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter

    async def wait_for(self, count: int) -> None:
        for _ in range(1000):
            if len(self.requests) >= count:
                return
            await asyncio.sleep(0)
        raise AssertionError(f"the rotation loop did not sleep {count} times: {self.requests}")

    async def wake(self) -> None:
        """Let the pending sleep end after the requested time passed."""
        assert self._waiter is not None and not self._waiter.done()
        self.clock.advance(self.requests[-1])
        self._waiter.set_result(None)
        await asyncio.sleep(0)


@pytest.fixture
def controller(monkeypatch: pytest.MonkeyPatch) -> SleepController:
    ctl = SleepController(FakeClock())

    async def fake_sleep(self: runtime.AsyncioRuntime, seconds: float) -> None:
        await ctl.sleep(seconds)

    monkeypatch.setattr(runtime.AsyncioRuntime, "sleep", fake_sleep)
    # Only the rotation loop sleeps here (the task forgetting idle contacts is tested in test_idle.py).
    monkeypatch.setattr(SessionManager, "CACHE_IDLE_SECONDS", 0.0)
    return ctl


async def _alice(net: InMemoryXMPP, controller: SleepController, **kwargs: Any) -> Account:
    return await make_account(
        net, ALICE, clock=controller.clock, signed_pre_key_rotation_period=PERIOD, **kwargs
    )


def _published_spk(net: InMemoryXMPP, account: Account, namespace: str = NS_A) -> int:
    return int(net.bundles[(namespace, ALICE, account.device_id)].spk_id)  # type: ignore[attr-defined]


async def test_rotation_happens_when_due(controller: SleepController) -> None:
    net = InMemoryXMPP()
    alice = await _alice(net, controller)
    await controller.wait_for(1)
    assert controller.requests == [PERIOD + 60]
    assert _published_spk(net, alice) == 1
    await controller.wake()
    await controller.wait_for(2)
    assert "rotate_signed_pre_key" in alice.backends[NS_A].calls
    assert _published_spk(net, alice) == 2
    assert controller.requests[1] == PERIOD + 60
    await alice.manager.shutdown()


async def test_sleep_targets_the_soonest_rotation(controller: SleepController) -> None:
    net = InMemoryXMPP()
    alice = await _alice(net, controller, namespaces=(NS_A, NS_B))
    await controller.wait_for(1)
    # NS_B's signed pre key is 500 s younger (as if it had been rotated later).
    storage = alice.storage
    state: Any = (await storage.load(f"/{NS_B}/state")).from_just()
    state["spk"]["timestamp"] += 500
    await storage.store(f"/{NS_B}/state", state)
    await controller.wake()  # +1060: NS_A is due, NS_B is due in 440 s
    await controller.wait_for(2)
    assert _published_spk(net, alice, NS_A) == 2 and _published_spk(net, alice, NS_B) == 1
    assert controller.requests[1] == 440 + 60
    await controller.wake()
    await controller.wait_for(3)
    assert _published_spk(net, alice, NS_B) == 2
    await alice.manager.shutdown()


async def test_upload_retry_delay_doubles_up_to_one_hour(controller: SleepController) -> None:
    net = InMemoryXMPP()
    alice = await _alice(net, controller)
    await controller.wait_for(1)
    rule = net.fail("upload_bundle", times=None)
    await controller.wake()
    expected = [PERIOD + 60, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    for count in range(2, len(expected) + 1):
        await controller.wait_for(count)
        if count < len(expected):
            await controller.wake()
    assert controller.requests == expected
    assert alice.backends[NS_A].calls.count("rotate_signed_pre_key") == 1  # retries only re-upload
    rule.times = 0
    await controller.wake()
    await controller.wait_for(len(expected) + 1)
    assert _published_spk(net, alice) == 2
    assert controller.requests[-1] == PERIOD + 60
    await alice.manager.shutdown()


async def test_other_errors_do_not_kill_the_loop(
    controller: SleepController, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = InMemoryXMPP()
    alice = await _alice(net, controller)
    await controller.wait_for(1)
    original = FakeBackend.rotate_signed_pre_key
    failures = [RuntimeError("disk full")]

    async def flaky(self: FakeBackend) -> None:
        if failures:
            raise failures.pop()
        await original(self)

    monkeypatch.setattr(FakeBackend, "rotate_signed_pre_key", flaky)
    await controller.wake()
    await controller.wait_for(2)
    assert controller.requests[1] == 60  # looked at again soon
    await controller.wake()
    await controller.wait_for(3)
    assert _published_spk(net, alice) == 2
    await alice.manager.shutdown()


async def test_shutdown_during_retry(controller: SleepController) -> None:
    net = InMemoryXMPP()
    alice = await _alice(net, controller)
    await controller.wait_for(1)
    net.fail("upload_bundle", times=None)
    await controller.wake()
    await controller.wait_for(2)
    rotation = alice.manager._SessionManager__rotation
    await alice.manager.shutdown()
    assert rotation._task.done() and rotation._task.cancelled()


# -- Twisted ----------------------------------------------------------------------------------------


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Drive a coroutine under Twisted; everything here completes without a running reactor."""
    from twisted.internet import defer
    from twisted.python.failure import Failure

    results: List[Any] = []
    defer.ensureDeferred(coroutine).addBoth(results.append)
    assert results, "the coroutine did not complete"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]  # type: ignore[no-any-return]


def test_twisted_framework(monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.internet import task

    reactor = task.Clock()
    monkeypatch.setattr(runtime, "twisted_reactor", lambda: reactor)
    monkeypatch.setattr(SessionManager, "CACHE_IDLE_SECONDS", 0.0)
    clock = FakeClock()
    net = InMemoryXMPP()
    kwargs: Any = {
        "clock": clock,
        "signed_pre_key_rotation_period": PERIOD,
        "async_framework": AsyncFramework.TWISTED,
    }
    alice = _run(make_account(net, ALICE, **kwargs))
    bob = _run(make_account(net, BOB, **kwargs))
    assert isinstance(alice.manager._omemo_core.runtime, runtime.TwistedRuntime)

    messages, errors = _run(alice.manager.encrypt(frozenset({BOB}), {NS_A: b"over twisted"}))
    assert not errors
    for message in messages:
        net.send(message)
    [(plaintext, _, _)] = _run(bob.receive_all())
    assert plaintext == b"over twisted"

    # The rotation loop sleeps on the reactor.
    assert [call.time for call in reactor.getDelayedCalls()] == [PERIOD + 60, PERIOD + 60]
    clock.advance(PERIOD + 60)
    reactor.advance(PERIOD + 60)
    assert _published_spk(net, alice) == 2

    _run(alice.manager.shutdown())
    _run(bob.manager.shutdown())
    _run(alice.manager.shutdown())
    assert reactor.getDelayedCalls() == []


def test_twisted_locks_serialise() -> None:
    from twisted.internet import defer

    rt = runtime.TwistedRuntime()
    locks: runtime.KeyedLocks[str] = runtime.KeyedLocks(rt)
    order: List[str] = []
    gate: defer.Deferred[None] = defer.Deferred()

    async def first() -> None:
        async with locks.hold("k"):
            order.append("first in")
            await gate
            order.append("first out")

    async def second() -> None:
        async with locks.hold("k"):
            order.append("second in")

    d1 = defer.ensureDeferred(first())
    d2 = defer.ensureDeferred(second())
    assert order == ["first in"]
    gate.callback(None)
    assert order == ["first in", "first out", "second in"]
    assert d1.called and d2.called and len(locks) == 0
    assert _run(rt.gather([_value(1), _value(2)])) == [1, 2]


async def _value(value: int) -> int:
    return value


async def test_asyncio_gather_and_lock_cleanup_on_cancel() -> None:
    rt = runtime.AsyncioRuntime()
    locks: runtime.KeyedLocks[str] = runtime.KeyedLocks(rt)
    assert await rt.gather([_value(3)]) == [3]
    assert await rt.gather([_value(1), _value(2)]) == [1, 2]
    started = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with locks.hold("a", "b"):
            started.set()
            await release.wait()

    async def waiter() -> None:
        async with locks.hold("b", "a"):
            pass

    first = asyncio.ensure_future(holder())
    await started.wait()
    second = asyncio.ensure_future(waiter())
    await asyncio.sleep(0)
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    release.set()
    await first
    assert len(locks) == 0
    with pytest.raises(ValueError, match="unsupported"):
        runtime.make_runtime("GEVENT")  # type: ignore[arg-type]
