"""Ready trust policies: subclass one of them together with your XMPP hooks.

Each policy is an abstract :class:`~omemo.session_manager.SessionManager` subclass that implements the
two trust hooks, ``_evaluate_custom_trust_level`` and ``_make_trust_decision``, with documented custom
trust level names. Combine it with your XMPP hooks by inheritance (``class MyManager(BTBVTrust): ...``,
or ``class MyManager(MyXMPPHooks, TOFUTrust)``) and pass the policy's :attr:`~TrustPolicy.UNDECIDED`
as ``undecided_trust_level_name`` to ``create``.

Trust belongs to identity keys of an account, not to device ids, and is shared by all backends.

The policies:

- :class:`BTBVTrust`, "blind trust before verification" (as in Conversations): new identity keys of an
  account are trusted blindly (``BLINDLY_TRUSTED``) as long as none of the account's keys has been
  verified; once one has (:meth:`TrustPolicy.verify`), new keys of that account need a decision.
- :class:`TOFUTrust`, "trust on first use": the keys seen when an account is first encrypted to are
  trusted (``TRUSTED``); keys showing up after that need a decision.
- :class:`ManualTrust`: every new key needs a decision.

"Needs a decision" means :meth:`TrustPolicy._decide_undecided` is called with those devices (at most
once per ``encrypt``). By default it decides nothing, so ``encrypt`` fails with ``StillUndecided``
naming them; override it to ask the user, and record answers with :meth:`TrustPolicy.verify`,
:meth:`TrustPolicy.distrust` or ``set_trust``. Decryption never asks: only distrusted senders are
rejected.
"""

from __future__ import annotations

from abc import ABC
from typing import ClassVar, Dict, FrozenSet, List, Mapping, Optional

from .session_manager import SessionManager, UnknownTrustLevel
from .types import DeviceInformation, TrustLevel

__all__ = ["BTBVTrust", "ManualTrust", "TOFUTrust", "TrustPolicy"]


class TrustPolicy(SessionManager, ABC):
    """Shared machinery of the ready trust policies (abstract: the XMPP hooks are still missing)."""

    #: Custom trust level of keys nobody decided about yet; pass it to ``create``.
    UNDECIDED: ClassVar[str] = "UNDECIDED"
    #: Custom trust level of keys the user has verified (e.g. compared fingerprints).
    VERIFIED: ClassVar[str] = "VERIFIED"
    #: Custom trust level of keys the user has refused.
    DISTRUSTED: ClassVar[str] = "DISTRUSTED"
    #: The custom trust levels of the policy and what they mean to the library.
    TRUST_LEVELS: ClassVar[Mapping[str, TrustLevel]] = {
        "UNDECIDED": TrustLevel.UNDECIDED,
        "VERIFIED": TrustLevel.TRUSTED,
        "DISTRUSTED": TrustLevel.DISTRUSTED,
    }

    async def _evaluate_custom_trust_level(self, device: DeviceInformation) -> TrustLevel:
        """Map the policy's custom trust levels to core trust levels (see :attr:`TRUST_LEVELS`).

        Args:
            device: the device, with its custom trust level name.

        Returns:
            The core trust level.

        Raises:
            UnknownTrustLevel: the name is not one of the policy's.
        """
        level = self.TRUST_LEVELS.get(device.trust_level_name)
        if level is None:
            raise UnknownTrustLevel(
                f"unknown trust level {device.trust_level_name!r} for device {device.device_id} of"
                f" {device.bare_jid} (namespaces: {', '.join(sorted(device.namespaces))}); "
                f"{type(self).__name__} knows {', '.join(sorted(self.TRUST_LEVELS))}"
            )
        return level

    async def verify(self, bare_jid: str, identity_key: bytes) -> None:
        """Record that the user verified an identity key of an account.

        Args:
            bare_jid: the account.
            identity_key: the verified identity key.
        """
        await self.set_trust(bare_jid, identity_key, self.VERIFIED)

    async def distrust(self, bare_jid: str, identity_key: bytes) -> None:
        """Record that the user refuses an identity key of an account.

        Args:
            bare_jid: the account.
            identity_key: the refused identity key.
        """
        await self.set_trust(bare_jid, identity_key, self.DISTRUSTED)

    async def _decide_undecided(
        self, undecided: FrozenSet[DeviceInformation], identifier: Optional[str]
    ) -> None:
        """Ask for decisions the policy does not make by itself. Default: decide nothing.

        Override it to ask the user (``identifier`` is what the application passed to ``encrypt``) and
        store the answers with :meth:`verify`, :meth:`distrust` or ``set_trust``. Devices left undecided
        make ``encrypt`` fail with ``StillUndecided``.

        Args:
            undecided: the devices that need a decision.
            identifier: passed through from ``encrypt``.

        Raises:
            TrustDecisionFailed: the decision could not be made.
        """

    async def _make_trust_decision(
        self, undecided: FrozenSet[DeviceInformation], identifier: Optional[str]
    ) -> None:
        """Decide what the policy decides by itself, and ask :meth:`_decide_undecided` for the rest.

        Args:
            undecided: the devices that need a decision.
            identifier: passed through from ``encrypt``.

        Raises:
            TrustDecisionFailed: forwarded from :meth:`_decide_undecided`.
        """
        by_jid: Dict[str, List[DeviceInformation]] = {}
        for device in undecided:
            by_jid.setdefault(device.bare_jid, []).append(device)
        remaining: List[DeviceInformation] = []
        for bare_jid in sorted(by_jid):
            devices = by_jid[bare_jid]
            level = await self._automatic_level(bare_jid, frozenset(devices))
            if level is None:
                remaining.extend(devices)
                continue
            for device in devices:
                await self.set_trust(bare_jid, device.identity_key, level)
        if remaining:
            await self._decide_undecided(frozenset(remaining), identifier)

    async def _automatic_level(self, bare_jid: str, undecided: FrozenSet[DeviceInformation]) -> Optional[str]:
        """Returns: the custom level the policy gives these new keys of one account, or ``None`` to ask."""
        return None

    async def _other_devices(self, bare_jid: str) -> FrozenSet[DeviceInformation]:
        """Returns: the known devices of an account, without this device."""
        own, others = await self.get_own_device_information()
        if bare_jid == own.bare_jid:
            return others
        return await self.get_device_information(bare_jid)


class BTBVTrust(TrustPolicy):
    """Blind trust before verification.

    Levels: ``UNDECIDED`` (new key), ``BLINDLY_TRUSTED`` (trusted automatically, unverified),
    ``VERIFIED`` (trusted, verified by the user), ``DISTRUSTED``.

    New keys of an account are blindly trusted while the account has no verified key. After the first
    verification, new keys of that account go to :meth:`_decide_undecided`; keys that were blindly
    trusted before stay trusted (call ``set_trust`` or :meth:`distrust` to change that).
    """

    #: Custom trust level of keys trusted without verification.
    BLINDLY_TRUSTED: ClassVar[str] = "BLINDLY_TRUSTED"
    TRUST_LEVELS: ClassVar[Mapping[str, TrustLevel]] = {
        **TrustPolicy.TRUST_LEVELS,
        "BLINDLY_TRUSTED": TrustLevel.TRUSTED,
    }

    async def _automatic_level(self, bare_jid: str, undecided: FrozenSet[DeviceInformation]) -> Optional[str]:
        devices = await self._other_devices(bare_jid)
        if any(device.trust_level_name == self.VERIFIED for device in devices):
            return None
        return self.BLINDLY_TRUSTED


class TOFUTrust(TrustPolicy):
    """Trust on first use.

    Levels: ``UNDECIDED`` (new key), ``TRUSTED`` (trusted on first use), ``VERIFIED``, ``DISTRUSTED``.

    When an account's keys are all undecided (it is encrypted to for the first time), they are all
    trusted. Once any key of the account has a decision, new keys go to :meth:`_decide_undecided`.
    """

    #: Custom trust level of keys trusted because they were there at first use.
    TRUSTED: ClassVar[str] = "TRUSTED"
    TRUST_LEVELS: ClassVar[Mapping[str, TrustLevel]] = {
        **TrustPolicy.TRUST_LEVELS,
        "TRUSTED": TrustLevel.TRUSTED,
    }

    async def _automatic_level(self, bare_jid: str, undecided: FrozenSet[DeviceInformation]) -> Optional[str]:
        devices = await self._other_devices(bare_jid)
        if any(device.trust_level_name != self.UNDECIDED for device in devices):
            return None
        return self.TRUSTED


class ManualTrust(TrustPolicy):
    """Manual trust: every new key needs a decision by :meth:`_decide_undecided`.

    Levels: ``UNDECIDED``, ``TRUSTED``, ``VERIFIED``, ``DISTRUSTED`` (``TRUSTED`` and ``VERIFIED`` both
    allow encryption; use whichever matches how the user decided).
    """

    #: Custom trust level of keys the user accepted without verifying them.
    TRUSTED: ClassVar[str] = "TRUSTED"
    TRUST_LEVELS: ClassVar[Mapping[str, TrustLevel]] = {
        **TrustPolicy.TRUST_LEVELS,
        "TRUSTED": TrustLevel.TRUSTED,
    }

    async def trust(self, bare_jid: str, identity_key: bytes) -> None:
        """Record that the user accepted an identity key (without verification).

        Args:
            bare_jid: the account.
            identity_key: the accepted identity key.
        """
        await self.set_trust(bare_jid, identity_key, self.TRUSTED)
