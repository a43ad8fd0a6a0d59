"""Property: after session set-up, any interleaving of sending and (reordered) delivery decrypts.

Hypothesis draws a schedule of operations between two accounts (Alice with two devices, Bob with one):
sends in both directions, delivery of any pending message to its device in any order, history-sync
mode switches. Every application message must decrypt to its plaintext exactly once, every automatic
empty message must decrypt to ``None``, and no exception may escape. (Simultaneous session initiation
is excluded by setting sessions up first: OMEMO itself cannot heal it without ``replace_sessions``.)
"""

from __future__ import annotations

import asyncio
from typing import Dict, List, Tuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omemo.message import Message
from omemo.testing import InMemoryXMPP

from .fake_backend import NS_A, Account, make_account

ALICE, BOB = "alice@example.org", "bob@example.org"

_operations = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 2)),
        st.tuples(st.just("deliver"), st.integers(0, 10_000)),
        st.tuples(st.just("sync"), st.integers(0, 2)),
    ),
    max_size=40,
)


async def _scenario(schedule: List[Tuple[str, int]]) -> None:
    net = InMemoryXMPP()
    alice1 = await make_account(net, ALICE)
    alice2 = await make_account(net, ALICE)
    bob = await make_account(net, BOB)
    devices = [alice1, alice2, bob]
    for account in devices:
        await account.manager.refresh_device_lists(ALICE)
        await account.manager.refresh_device_lists(BOB)

    pending: List[Tuple[Account, Message]] = []
    expected: Dict[int, bytes] = {}
    counter = 0

    def route(sender: Account) -> None:
        for (jid, device_id), inbox in list(net.inboxes.items()):
            for message in inbox:
                target = next(a for a in devices if (a.jid, a.device_id) == (jid, device_id))
                pending.append((target, message))
            inbox.clear()
        del sender

    async def send(sender: Account) -> None:
        nonlocal counter
        counter += 1
        text = b"message %d" % counter
        recipient = BOB if sender.jid == ALICE else ALICE
        messages, errors = await sender.manager.encrypt(frozenset({recipient}), {NS_A: text})
        assert not errors
        for message in messages:
            expected[id(message)] = text
            net.send(message)
        route(sender)

    async def deliver(index: int) -> None:
        target, message = pending.pop(index % len(pending))
        plaintext, sender, _ = await target.manager.decrypt(message)
        if message.content.empty:
            assert plaintext is None
        else:
            assert plaintext == expected[id(message)]
        assert (sender.bare_jid, sender.device_id) == (message.bare_jid, message.device_id)
        route(target)

    # Session set-up without simultaneous initiation: each device initiates in turn, fully delivered.
    for account in devices:
        await send(account)
        while pending:
            await deliver(0)

    for operation, value in schedule:
        if operation == "send":
            await send(devices[value])
        elif operation == "deliver" and pending:
            await deliver(value)
        elif operation == "sync":
            manager = devices[value].manager
            if manager._omemo_core.history_sync:
                await manager.after_history_sync()
                route(devices[value])
            else:
                manager.before_history_sync()
    while pending:
        await deliver(0)
    for account in devices:
        await account.manager.after_history_sync()
        route(account)
    while pending:
        await deliver(0)
    for account in devices:
        await account.manager.shutdown()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_operations)
def test_any_interleaving_decrypts(schedule: List[Tuple[str, int]]) -> None:
    asyncio.run(_scenario(schedule))
