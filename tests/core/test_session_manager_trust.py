"""Trust handling of the session manager and the ready policies of ``omemo.trust`` (PROTOCOL.md 5.4)."""

from __future__ import annotations

from typing import FrozenSet, List, Optional

import pytest

from omemo.session_manager import NoEligibleDevices, StillUndecided, TrustDecisionFailed, UnknownTrustLevel
from omemo.testing import InMemoryXMPP
from omemo.trust import BTBVTrust, ManualTrust, TOFUTrust
from omemo.types import DeviceInformation, TrustLevel

from .fake_backend import NS_A, make_account

ALICE, BOB, CAROL = "alice@example.org", "bob@example.org", "carol@example.org"


class CountingBTBV(BTBVTrust):
    decisions: List[FrozenSet[DeviceInformation]]
    asked: List[FrozenSet[DeviceInformation]]

    async def _make_trust_decision(
        self, undecided: FrozenSet[DeviceInformation], identifier: Optional[str]
    ) -> None:
        self.decisions.append(undecided)
        await super()._make_trust_decision(undecided, identifier)

    async def _decide_undecided(
        self, undecided: FrozenSet[DeviceInformation], identifier: Optional[str]
    ) -> None:
        self.asked.append(undecided)


class AskingManual(ManualTrust):
    answer: str = "TRUSTED"
    identifiers: List[Optional[str]]

    async def _decide_undecided(
        self, undecided: FrozenSet[DeviceInformation], identifier: Optional[str]
    ) -> None:
        self.identifiers.append(identifier)
        if self.answer == "fail":
            raise TrustDecisionFailed("the user closed the dialog")
        for device in undecided:
            await self.set_trust(device.bare_jid, device.identity_key, self.answer)


async def test_btbv_blind_trust_then_verification() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE, policy=CountingBTBV)
    manager = alice.manager
    assert isinstance(manager, CountingBTBV)
    manager.decisions, manager.asked = [], []
    bob1 = await make_account(net, BOB)
    bob2 = await make_account(net, BOB)
    await manager.encrypt(frozenset({BOB}), {NS_A: b"x"})
    assert len(manager.decisions) == 1 and len(manager.decisions[0]) == 2  # one call for both devices
    infos = {d.device_id: d for d in await manager.get_device_information(BOB)}
    assert {d.trust_level_name for d in infos.values()} == {"BLINDLY_TRUSTED"}
    # No decision needed any more.
    await manager.encrypt(frozenset({BOB}), {NS_A: b"x"})
    assert len(manager.decisions) == 1
    # After verifying one key, a new device of Bob is not trusted blindly.
    await manager.verify(BOB, bob1.identity_key)
    bob3 = await make_account(net, BOB)
    await manager.refresh_device_list(NS_A, BOB)
    with pytest.raises(StillUndecided, match=str(bob3.device_id)):
        await manager.encrypt(frozenset({BOB}), {NS_A: b"x"})
    assert [{d.device_id for d in asked} for asked in manager.asked] == [{bob3.device_id}]
    # Distrusting it makes it ineligible but the others still get the message.
    await manager.distrust(BOB, bob3.identity_key)
    messages, _ = await manager.encrypt(frozenset({BOB}), {NS_A: b"x"})
    ((message, _),) = messages.items()
    assert {e.device_id for e, _ in message.keys} == {bob1.device_id, bob2.device_id}


async def test_tofu_trusts_first_seen_keys_only() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE, policy=TOFUTrust)
    bob1 = await make_account(net, BOB)
    await alice.manager.encrypt(frozenset({BOB}), {NS_A: b"x"})
    (info,) = await alice.manager.get_device_information(BOB)
    assert info.trust_level_name == "TRUSTED"
    bob2 = await make_account(net, BOB)
    await alice.manager.refresh_device_list(NS_A, BOB)
    with pytest.raises(StillUndecided, match=str(bob2.device_id)):
        await alice.manager.encrypt(frozenset({BOB}), {NS_A: b"x"})
    del bob1


async def test_manual_trust_asks_with_identifier() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE, policy=AskingManual)
    manager = alice.manager
    assert isinstance(manager, AskingManual)
    manager.identifiers = []
    await make_account(net, BOB)
    await manager.encrypt(frozenset({BOB}), {NS_A: b"x"}, identifier="chat-tab-7")
    assert manager.identifiers == ["chat-tab-7"]
    manager.answer = "fail"
    await make_account(net, BOB)
    await manager.refresh_device_list(NS_A, BOB)
    with pytest.raises(TrustDecisionFailed):
        await manager.encrypt(frozenset({BOB}), {NS_A: b"x"})


async def test_undecided_sender_is_decrypted_and_distrusted_recipient_is_not_eligible() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE, policy=ManualTrust)
    bob = await make_account(net, BOB, policy=ManualTrust)
    await alice.manager.refresh_device_list(NS_A, BOB)
    await alice.manager.set_trust(BOB, bob.identity_key, "TRUSTED")
    messages, _ = await alice.manager.encrypt(frozenset({BOB}), {NS_A: b"x"})
    for message in messages:
        net.send(message)
    # Bob has not decided about Alice: decryption is allowed.
    [(plaintext, sender, _)] = await bob.receive_all()
    assert plaintext == b"x" and sender.trust_level_name == "UNDECIDED"
    # Once Alice distrusts Bob's key, Bob has no eligible device left.
    await alice.manager.set_trust(BOB, bob.identity_key, "DISTRUSTED")
    with pytest.raises(NoEligibleDevices):
        await alice.manager.encrypt(frozenset({BOB}), {NS_A: b"y"})


async def test_unknown_trust_level_names_the_device() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE)
    bob = await make_account(net, BOB)
    await alice.manager.refresh_device_list(NS_A, BOB)
    await alice.manager.set_trust(BOB, bob.identity_key, "SORT_OF")
    with pytest.raises(UnknownTrustLevel, match=rf"'SORT_OF'.*{bob.device_id}.*{BOB}"):
        await alice.manager.encrypt(frozenset({BOB}), {NS_A: b"x"})
    # Decryption evaluates the sender's trust too.
    messages, _ = await bob.manager.encrypt(frozenset({ALICE}), {NS_A: b"y"})
    for message in messages:
        net.send(message)
    with pytest.raises(UnknownTrustLevel):
        await alice.receive_all()


async def test_trust_hook_returning_garbage_is_reported() -> None:
    class Broken(BTBVTrust):
        async def _evaluate_custom_trust_level(self, device: DeviceInformation) -> TrustLevel:
            return "TRUSTED"  # type: ignore[return-value]

    net = InMemoryXMPP()
    alice = await make_account(net, ALICE, policy=Broken)
    await make_account(net, BOB)
    with pytest.raises(UnknownTrustLevel, match="instead of a TrustLevel"):
        await alice.manager.encrypt(frozenset({BOB}), {NS_A: b"x"})


async def test_trust_is_per_identity_key_and_shared_by_devices_with_that_key() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE, policy=ManualTrust)
    bob = await make_account(net, BOB)
    await alice.manager.refresh_device_list(NS_A, BOB)
    await alice.manager.set_trust(BOB, bob.identity_key, "DISTRUSTED")
    (info,) = await alice.manager.get_device_information(BOB)
    assert info.trust_level_name == "DISTRUSTED"
    # The same key under another JID is a different trust entry.
    assert await alice.manager._omemo_core.devices.trust(CAROL, bob.identity_key, "UNDECIDED") == "UNDECIDED"
