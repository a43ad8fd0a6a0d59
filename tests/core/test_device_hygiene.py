"""Device hygiene (omemo.hygiene): stale devices skipped and revived, activity reports, own-device cleanup
and forgetting a device. Real backends on the in-memory XMPP network; time is injected."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple, Type

import pytest

import oldmemo
import twomemo
from omemo.hygiene import DeviceActivity, StaleDevice
from omemo.session_manager import NoEligibleDevices
from omemo.storages import MemoryStorage
from omemo.testing import InMemoryXMPP
from omemo.trust import BTBVTrust

ALICE, BOB = "alice@example.org", "bob@example.org"
NS2, NSL = twomemo.twomemo.NAMESPACE, oldmemo.oldmemo.NAMESPACE
DAY = 24 * 3600.0
BOTH = {NS2: b"<envelope/>", NSL: b"body"}


class Clock:
    """The time every session manager of a test sees (Unix seconds)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def _create(net: InMemoryXMPP, jid: str, clock: Clock, cls: Optional[Type[Any]] = None) -> Any:
    storage = MemoryStorage()
    base = cls or net.session_manager_class(jid, BTBVTrust)
    manager = await base.create(
        [twomemo.Twomemo(storage), oldmemo.Oldmemo(storage)], storage, jid, None, "UNDECIDED"
    )
    manager._omemo_core.clock = clock
    await manager.after_history_sync()
    return manager


async def _id(manager: Any) -> int:
    own, _ = await manager.get_own_device_information()
    device_id: int = own.device_id
    return device_id


#: Makes the session manager class of an account on a network (to change a threshold or a hook).
Factory = Callable[[InMemoryXMPP, str], Any]


async def _pair(clock: Clock, cls: Optional[Factory] = None) -> Tuple[InMemoryXMPP, Any, Any]:
    """Alice and Bob with confirmed sessions (one exchange each way) and each other's device lists."""
    net = InMemoryXMPP()
    alice = await _create(net, ALICE, clock, cls and cls(net, ALICE))
    bob = await _create(net, BOB, clock, cls and cls(net, BOB))
    for namespace in (NS2, NSL):
        await alice.refresh_device_list(namespace, BOB)
        await bob.refresh_device_list(namespace, ALICE)
    await _exchange(net, alice, bob)
    await _exchange(net, bob, alice)
    return net, alice, bob


async def _exchange(net: InMemoryXMPP, sender: Any, receiver: Any) -> None:
    """One message sender -> receiver, delivered; then whatever the receiver owes, delivered back."""
    messages, errors = await sender.encrypt(frozenset({receiver._omemo_core.own_bare_jid}), BOTH)
    assert not errors
    for message in messages:
        net.send(message)
    for message in net.take(receiver._omemo_core.own_bare_jid, await _id(receiver)):
        await receiver.decrypt(message)
    for message in net.take(sender._omemo_core.own_bare_jid, await _id(sender)):
        await sender.decrypt(message)


async def _send_unanswered(alice: Any, count: int) -> None:
    """``count`` messages to Bob that never arrive (his device is gone, or offline)."""
    for _ in range(count):
        await alice.encrypt(frozenset({BOB}), BOTH)


def _limits(messages: int) -> Factory:
    """A session manager class factory with a lower message threshold (the rule is the same)."""

    def make(net: InMemoryXMPP, jid: str) -> Any:
        base = net.session_manager_class(jid, BTBVTrust)
        return type("Limited", (base,), {"STALE_DEVICE_MESSAGES": messages})

    return make


async def test_the_default_thresholds_are_the_fields() -> None:
    net = InMemoryXMPP()
    manager = await _create(net, ALICE, Clock())
    assert manager.STALE_DEVICE_MESSAGES == 2000 and manager.STALE_DEVICE_SILENCE == 90 * DAY


async def test_a_device_that_never_answers_is_skipped_after_2000_messages_and_revived_when_it_writes() -> (
    None
):
    clock = Clock()
    net, alice, bob = await _pair(clock)
    bob_id = await _id(bob)
    await _send_unanswered(alice, 1999)
    messages, errors = await alice.encrypt(frozenset({BOB}), BOTH)  # the 2000th still goes out
    assert messages and not errors
    with pytest.raises(NoEligibleDevices, match="StaleDevice"):
        await alice.encrypt(frozenset({BOB}), BOTH)
    (found,) = await alice.get_device_activity(BOB)
    assert found.stale and (NS2, 2000) in found.unanswered and found.device_id == bob_id
    # Bob's device speaks again: it is encrypted for at once.
    await _exchange(net, bob, alice)
    messages, errors = await alice.encrypt(frozenset({BOB}), BOTH)
    assert messages and not errors
    (found,) = await alice.get_device_activity(BOB)
    assert not found.stale


async def test_a_stale_device_is_reported_and_the_others_still_get_the_message() -> None:
    clock = Clock()
    net, alice, bob = await _pair(clock, _limits(100))
    second = await _create(net, BOB, clock, _limits(100)(net, BOB))  # Bob's second device, alive
    await alice.refresh_device_list(NS2, BOB)
    await alice.refresh_device_list(NSL, BOB)
    await _exchange(net, second, alice)
    await _send_unanswered(alice, 100)  # neither answers, but only the first device is past 100...
    await _exchange(net, second, alice)  # ...since the second one just wrote
    messages, errors = await alice.encrypt(frozenset({BOB}), BOTH)
    ((error,),) = [[e for e in errors if e.device_id == await _id(bob)]]
    assert isinstance(error.exception, StaleDevice) and "without answering" in str(error.exception)
    (message,) = messages
    assert {key[0].device_id for key in message.keys} == {await _id(second)}


async def test_silence_makes_a_device_stale_only_with_messages_unanswered_past_the_magic_number() -> None:
    clock = Clock()
    _, alice, _ = await _pair(clock)
    clock.now += 100 * DAY  # a long pause is not staleness by itself
    await _send_unanswered(alice, 53)
    (found,) = await alice.get_device_activity(BOB)
    assert not found.stale and found.last_heard is not None and clock.now - found.last_heard >= 100 * DAY
    await _send_unanswered(alice, 1)  # 54 unanswered (a live device would have answered by now)
    (found,) = await alice.get_device_activity(BOB)
    assert found.stale
    with pytest.raises(NoEligibleDevices, match="StaleDevice"):
        await alice.encrypt(frozenset({BOB}), BOTH)


async def test_89_days_of_silence_are_not_enough() -> None:
    clock = Clock()
    _, alice, _ = await _pair(clock)
    clock.now += 89 * DAY
    await _send_unanswered(alice, 60)
    messages, errors = await alice.encrypt(frozenset({BOB}), BOTH)
    assert messages and not errors
    clock.now += 1 * DAY
    with pytest.raises(NoEligibleDevices):
        await alice.encrypt(frozenset({BOB}), BOTH)


async def test_own_devices_follow_the_same_rule() -> None:
    clock = Clock()
    net = InMemoryXMPP()
    cls = _limits(100)
    phone = await _create(net, ALICE, clock, cls(net, ALICE))
    laptop = await _create(net, ALICE, clock, cls(net, ALICE))
    bob = await _create(net, BOB, clock, cls(net, BOB))
    for manager in (phone, laptop):
        for namespace in (NS2, NSL):
            await manager.refresh_device_list(namespace, ALICE)
            await manager.refresh_device_list(namespace, BOB)
    for _ in range(100):  # Bob reads and answers (he is encrypted for); the laptop never reads
        await _exchange(net, phone, bob)
    messages, errors = await phone.encrypt(frozenset({BOB}), BOTH)
    (error,) = errors
    assert error.bare_jid == ALICE and error.device_id == await _id(laptop)
    assert isinstance(error.exception, StaleDevice)
    assert {key[0].bare_jid for message in messages for key in message.keys} == {BOB}


async def test_the_application_decides_with_its_hook() -> None:
    clock = Clock()
    seen: List[DeviceActivity] = []

    def never_stale(net: InMemoryXMPP, jid: str) -> Any:
        class NeverStale(net.session_manager_class(jid, BTBVTrust)):  # type: ignore[misc]
            STALE_DEVICE_MESSAGES = 10

            async def _is_stale(self, activity: DeviceActivity) -> bool:
                seen.append(activity)
                return False

        return NeverStale

    _, alice, _ = await _pair(clock, never_stale)
    await _send_unanswered(alice, 20)
    messages, errors = await alice.encrypt(frozenset({BOB}), BOTH)
    assert messages and not errors
    assert seen and seen[-1].stale  # the default rule's verdict was offered, and overruled


async def test_activity_reports_counts_and_times() -> None:
    clock = Clock()
    start = clock.now
    net, alice, bob = await _pair(clock)
    await _send_unanswered(alice, 3)
    (found,) = await alice.get_device_activity(BOB)
    assert found.first_seen == start and found.last_heard == start and found.silent_since() == start
    assert dict(found.unanswered)[NS2] == 3 and not found.stale
    # last_heard is written at most once an hour: 30 minutes later it still says the first time.
    clock.now += 1800
    await _exchange(net, bob, alice)
    (found,) = await alice.get_device_activity(BOB)
    assert found.last_heard == start and dict(found.unanswered).get(NS2, 0) == 0
    clock.now += 3600
    await _exchange(net, bob, alice)
    (found,) = await alice.get_device_activity(BOB)
    assert found.last_heard == start + 5400


async def test_cleanup_proposes_only_long_silent_own_devices_and_removes_them_from_both_lists() -> None:
    clock = Clock()
    net = InMemoryXMPP()
    current = await _create(net, ALICE, clock)
    old = await _create(net, ALICE, clock)
    for namespace in (NS2, NSL):
        await current.refresh_device_list(namespace, ALICE)  # the current device sees the old one
    clock.now += 100 * DAY
    recent = await _create(net, ALICE, clock)
    for namespace in (NS2, NSL):
        await current.refresh_device_list(namespace, ALICE)
    current_id, old_id, recent_id = await _id(current), await _id(old), await _id(recent)
    proposed = await current.propose_own_device_cleanup()
    assert {a.device_id for a in proposed} == {old_id}
    # Never the current device, never a recent one (without force); nothing is removed then.
    with pytest.raises(ValueError, match="this device"):
        await current.remove_own_devices(frozenset({current_id, old_id}))
    with pytest.raises(ValueError, match=str(recent_id)):
        await current.remove_own_devices(frozenset({old_id, recent_id}))
    assert old_id in net.device_lists[(NS2, ALICE)]
    await current.remove_own_devices(frozenset({old_id}))
    for namespace in (NS2, NSL):
        assert set(net.device_lists[(namespace, ALICE)]) == {current_id, recent_id}
    assert not await current.propose_own_device_cleanup()
    await current.remove_own_devices(frozenset({recent_id}), force=True)
    assert set(net.device_lists[(NS2, ALICE)]) == {current_id}


async def test_forgetting_a_device_drops_its_sessions_and_keeps_or_drops_its_trust() -> None:
    clock = Clock()
    _, alice, _ = await _pair(clock)
    (device,) = await alice.get_device_information(BOB)
    await alice.set_trust(BOB, device.identity_key, "TRUSTED")
    await alice.forget_device(BOB, device.device_id)
    assert await alice.get_device_information(BOB) == frozenset()
    assert all(length is None for length in (await alice.get_sending_chain_length(device)).values())
    # Still listed: it comes back as a new device, with the trust that was kept.
    await alice.refresh_device_list(NS2, BOB)
    (again,) = await alice.get_device_information(BOB)
    assert again.trust_level_name == "TRUSTED"
    await alice.forget_device(BOB, device.device_id, keep_trust=False)
    await alice.refresh_device_list(NS2, BOB)
    (again,) = await alice.get_device_information(BOB)
    assert again.trust_level_name == "UNDECIDED"
    with pytest.raises(ValueError):
        await alice.forget_device(ALICE, await _id(alice))
