"""The session manager: the orchestration core of the library, and its exceptions.

An application subclasses :class:`SessionManager`, fills in the XMPP hooks (``_upload_bundle``,
``_download_bundle``, ``_delete_bundle``, ``_upload_device_list``, ``_download_device_list``,
``_send_message``) and the trust hooks (``_evaluate_custom_trust_level``, ``_make_trust_decision``; ready
policies are in :mod:`omemo.trust`), and obtains an instance with :meth:`SessionManager.create`.

This module is the only layer of the library that awaits storage and XMPP; the protocol itself lives in
the backends. The implementation is the private package ``omemo._core``: ``state`` (state, locking
rules, device lists, device information, pre keys and empty messages), ``encrypt``, ``decrypt``
(transactional decryption), ``maintenance`` (set-up, purging, session replacement, history-sync queue),
``rotation`` (background signed pre key rotation), ``devices`` (storage records) and ``errors``; the
asyncio/Twisted adapter is ``omemo._runtime``.

Differences from python-omemo that callers may notice (all within the 1.0.2 contract):

- concurrent calls are safe (see ``omemo._core.state`` for the locking rules);
- a failure to publish the bundle or to send an automatic empty message after a successful decryption
  does not raise: the plaintext is returned, the bundle upload is retried on the next operation and the
  empty message is queued until :meth:`SessionManager.after_history_sync`;
- backend errors raised by :meth:`SessionManager.decrypt` name the sending device;
  ``NoEligibleDevices`` and ``StillUndecided`` say which devices and why;
- ``encrypt`` downloads the device lists of recipients nothing is known about yet;
- the signed pre key rotation retry delay really doubles (60 s up to 1 h);
- ``sign_own_label`` is only called on backends whose ``supports_labels`` is true; backends without it
  (legacy namespace, 1.0.2-era backends) get and give unsigned labels;
- ``clear_device_lists`` keeps this device in the uploaded lists;
- ``purge_bare_jid`` refuses the own JID and also drops the JID's queued empty messages.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Awaitable, Callable, Dict, FrozenSet, List, Optional, Tuple, Type, TypeVar

from omemo_engine.xeddsa import ed25519_pub_to_curve25519_pub

from . import _runtime
from ._core import hygiene as _hygiene
from ._core import maintenance as _maintenance
from ._core.decrypt import decrypt as _decrypt
from ._core.encrypt import encrypt as _encrypt
from ._core.errors import (
    BundleDeletionFailed,
    BundleDownloadFailed,
    BundleNotFound,
    BundleRejected,
    BundleUploadFailed,
    DeviceListDownloadFailed,
    DeviceListUploadFailed,
    EncryptionError,
    MessageNotForUs,
    MessageSendingFailed,
    NoEligibleDevices,
    NoSession,
    PublicDataInconsistency,
    SenderDistrusted,
    SenderNotFound,
    SessionManagerException,
    StillUndecided,
    TrustDecisionFailed,
    UnknownNamespace,
    UnknownTrustLevel,
    XMPPInteractionFailed,
)
from ._core.idle import forget_idle_loop
from ._core.rotation import rotation_loop
from ._core.state import Core
from .backend import Backend
from .bundle import Bundle
from .hygiene import DeviceActivity, HealthReport
from .identity_key_pair import IdentityKeyPair
from .message import Message, PlainKeyMaterial
from .storage import Storage
from .types import AsyncFramework, DeviceInformation, DeviceList, OMEMOException, TrustLevel

__all__ = [
    "BundleDeletionFailed",
    "BundleDownloadFailed",
    "BundleNotFound",
    "BundleRejected",
    "BundleUploadFailed",
    "DeviceListDownloadFailed",
    "DeviceListUploadFailed",
    "EncryptionError",
    "MessageNotForUs",
    "MessageSendingFailed",
    "NoEligibleDevices",
    "NoSession",
    "PublicDataInconsistency",
    "SenderDistrusted",
    "SenderNotFound",
    "SessionManager",
    "SessionManagerException",
    "StillUndecided",
    "TrustDecisionFailed",
    "UnknownNamespace",
    "UnknownTrustLevel",
    "XMPPInteractionFailed",
]

_log = logging.getLogger("omemo.core")

SessionManagerTypeT = TypeVar("SessionManagerTypeT", bound="SessionManager")

#: Lowest accepted value of ``pre_key_refill_threshold`` (python-omemo's documented bound).
PRE_KEY_REFILL_THRESHOLD_MIN = 25
#: Highest accepted value of ``pre_key_refill_threshold``: refill as soon as one pre key was used.
PRE_KEY_REFILL_THRESHOLD_MAX = 99


class SessionManager(ABC):
    """The core of the library: own key material, bundles, device lists, trust and sessions.

    Subclass it, implement the abstract hooks, and get an instance through :meth:`create` (never by
    calling the class directly). Most methods can also raise
    :class:`~omemo.storage.StorageException`. Parameters are never modified. "Identity key" always
    means the Ed25519 public key of an identity key pair.
    """

    DEVICE_ID_MIN = 1
    DEVICE_ID_MAX = 2**31 - 1
    STALENESS_MAGIC_NUMBER = 53
    LOG_TAG = "omemo.core"
    #: Seconds after which a silent contact's device records and sessions are dropped from memory (an
    #: addition of this library): a background task checks every half of it, and the contact's next
    #: message loads them from the storage again. Memory then follows the contacts in use, not every
    #: contact ever had (gateways with thousands of sessions). 0 or less: keep everything (decided when
    #: :meth:`create` runs; the period is read again every round).
    CACHE_IDLE_SECONDS = 600.0

    # Set by create(). The name-mangled list is read by python-omemo 2.1's debug CLI helper.
    _omemo_core: Core
    __backends: List[Backend]
    __rotation: Optional[_runtime.BackgroundTask]
    __forgetting: Optional[_runtime.BackgroundTask]

    # -- life cycle ---------------------------------------------------------------------------------

    @classmethod
    async def create(
        cls: Type[SessionManagerTypeT],
        backends: List[Backend],
        storage: Storage,
        own_bare_jid: str,
        initial_own_label: Optional[str],
        undecided_trust_level_name: str,
        signed_pre_key_rotation_period: int = 7 * 24 * 60 * 60,
        pre_key_refill_threshold: int = 99,
        async_framework: AsyncFramework = AsyncFramework.ASYNCIO,
    ) -> SessionManagerTypeT:
        """Load (or, on first use, set up) this device and its backends, and return a session manager.

        On first use a device id unused in every loaded backend's own device list is drawn. Every
        backend that was not loaded last time gets pre keys, has its bundle published and is added to
        the own device lists, one backend after the other, the device list always last, and each
        backend's state is persisted before the next starts: a failure leaves consistent data, and
        calling ``create`` again carries on. Backends loaded last time but missing now are purged
        (see :meth:`purge_backend`). Finally the background tasks start: the signed pre key rotation
        and forgetting idle contacts (:attr:`CACHE_IDLE_SECONDS`).

        A restart reads only what this needs: the identity key pair, the own device id and namespaces
        and, per backend, the number of visible pre keys (backends whose pre keys fell to the threshold
        are refilled and republished here, as before) and whether a bundle change is still unpublished.
        The rest is loaded on first use: the decoded key states (the rotation task reads them right
        after the start), the public identity key, the rest of the own device record. Damaged stored
        data raises the same exceptions as before, but possibly only on first use: a damaged key state
        of the ``twomemo``/``oldmemo`` backends raises ``omemo_engine.errors.InvalidState`` here if its
        pre key count cannot be read or a refill is due, otherwise from the first operation that needs
        the keys (e.g. :meth:`ensure_data_consistency`, or :meth:`decrypt` of a key exchange); a
        malformed own label or other field of the own device record raises where that record is first
        read (e.g. :meth:`get_own_device_information`).

        Args:
            backends: the backends to load; their order is the default encryption priority.
            storage: the storage of all OMEMO data of this account.
            own_bare_jid: the bare JID of this account.
            initial_own_label: the label to give this device on first use, if any.
            undecided_trust_level_name: the custom trust level newly seen identity keys get; it must
                evaluate to ``TrustLevel.UNDECIDED``.
            signed_pre_key_rotation_period: how often to rotate the signed pre key, in seconds
                (between one week, the default, and one month is recommended).
            pre_key_refill_threshold: refill the pre keys to 100 when no more than this many are left;
                25 to 99 (the default: replace every used pre key at once).
            async_framework: the framework to run background work and waits with.

        Returns:
            The ready session manager, in history synchronisation mode (call
            :meth:`after_history_sync` once catch-up is done).

        Raises:
            ValueError: duplicate namespaces, a threshold outside 25..99 or a non-positive period.
            BundleUploadFailed: forwarded from ``_upload_bundle``.
            BundleDeletionFailed: forwarded from ``_delete_bundle``.
            DeviceListUploadFailed: forwarded from ``_upload_device_list``.
            DeviceListDownloadFailed: forwarded from ``_download_device_list``.
        """
        namespaces = [backend.namespace for backend in backends]
        if len(set(namespaces)) != len(namespaces):
            raise ValueError(f"each namespace may be loaded only once, got {namespaces}")
        if not PRE_KEY_REFILL_THRESHOLD_MIN <= pre_key_refill_threshold <= PRE_KEY_REFILL_THRESHOLD_MAX:
            raise ValueError(
                f"pre_key_refill_threshold must be between {PRE_KEY_REFILL_THRESHOLD_MIN} and"
                f" {PRE_KEY_REFILL_THRESHOLD_MAX}, got {pre_key_refill_threshold}"
            )
        if signed_pre_key_rotation_period <= 0:
            raise ValueError(
                f"signed_pre_key_rotation_period must be positive, got {signed_pre_key_rotation_period}"
            )

        self = cls()
        identity = await IdentityKeyPair.get(storage)
        self.__backends = list(backends)
        self.__rotation = None
        self.__forgetting = None
        core = self._omemo_core = Core(
            self,
            storage,
            self.__backends,
            own_bare_jid,
            identity,
            undecided_trust_level_name,
            signed_pre_key_rotation_period,
            pre_key_refill_threshold,
            _runtime.make_runtime(async_framework),
        )

        own_device_id = (await storage.load_primitive("/own_device_id", int)).maybe(None)
        if own_device_id is None:
            own_device_id = await _maintenance.first_run(core, initial_own_label)
        core.own_device_id = own_device_id
        await _maintenance.set_up_backends(core)

        self.__rotation = core.runtime.start(rotation_loop(core))
        if self.CACHE_IDLE_SECONDS > 0:
            self.__forgetting = core.runtime.start(forget_idle_loop(core))
        return self

    async def shutdown(self) -> None:
        """Stop the background tasks (signed pre key rotation, forgetting idle contacts) and wait for
        them to end (idempotent).

        Call this before dropping the instance, e.g. when the account goes offline for good.
        """
        rotation, self.__rotation = self.__rotation, None
        if rotation is not None:
            await rotation.stop()
        forgetting, self.__forgetting = self.__forgetting, None
        if forgetting is not None:
            await forgetting.stop()

    # -- data management ----------------------------------------------------------------------------

    async def purge_backend(self, namespace: str) -> None:
        """Remove a backend's online data (own device list entry, bundle) and, if loaded, its offline data.

        The backend is unloaded if it is loaded. Its offline data can only be purged while it is loaded
        (``Backend.purge`` does it at any time); otherwise loading it again later restores it.
        Unsubscribe from device list updates of that namespace before calling this.

        Args:
            namespace: the namespace of the backend to purge.

        Raises:
            BundleDeletionFailed: forwarded from ``_delete_bundle``.
            DeviceListUploadFailed: forwarded from ``_upload_device_list``.
            DeviceListDownloadFailed: forwarded from ``_download_device_list``.
        """
        await _maintenance.purge_backend(self._omemo_core, namespace)

    async def purge_bare_jid(self, bare_jid: str) -> None:
        """Delete everything known about an account: devices, trust, sessions (of all loaded backends).

        Also drops the account's queued empty messages. Backends that are not loaded keep their data;
        their ``purge_bare_jid`` can be called at any time.

        Args:
            bare_jid: the account to forget.

        Raises:
            ValueError: ``bare_jid`` is the own account (purge backends instead).
        """
        await _maintenance.purge_bare_jid(self._omemo_core, bare_jid)

    async def ensure_data_consistency(self) -> None:
        """Make the online data of every loaded backend match the local data.

        Refreshes the own device lists (re-adding this device where it is missing), downloads each own
        bundle and republishes it if it cannot be downloaded or differs from the local one. Not called
        automatically; calling it once after start and now and then is recommended.

        Raises:
            DeviceListDownloadFailed: forwarded from ``_download_device_list``.
            DeviceListUploadFailed: forwarded from ``_upload_device_list``.
            BundleUploadFailed: forwarded from ``_upload_bundle``.
        """
        await _maintenance.ensure_data_consistency(self._omemo_core)

    # -- abstract hooks: XMPP -----------------------------------------------------------------------

    @staticmethod
    @abstractmethod
    async def _upload_bundle(bundle: Bundle) -> None:
        """Publish this device's bundle, replacing the published one.

        May be called by :meth:`create` before it returns. Must handle the namespaces of all loaded
        backends. Must not call back into the session manager.

        Args:
            bundle: the bundle to publish (its namespace, JID and device id are attributes).

        Raises:
            UnknownNamespace: the namespace is unknown.
            BundleUploadFailed: the upload failed (a subclass may be raised instead).
        """

    @staticmethod
    @abstractmethod
    async def _download_bundle(namespace: str, bare_jid: str, device_id: int) -> Bundle:
        """Download the bundle of a device.

        May be called by :meth:`create` before it returns. Must handle the namespaces of all loaded
        backends. Must not call back into the session manager.

        Args:
            namespace: the namespace to download the bundle of.
            bare_jid: the account of the device.
            device_id: the device id.

        Returns:
            The bundle.

        Raises:
            UnknownNamespace: the namespace is unknown.
            BundleNotFound: there is no such bundle.
            BundleDownloadFailed: a technical failure (not for a missing bundle; a subclass may be
                raised instead, e.g. :class:`BundleRejected` for a bundle that does not parse).

        A ``ValueError`` raised here (what the ``etree`` parsers of the backends raise for a malformed
        bundle) is reported as :class:`BundleRejected`, naming the device and the parser's reason.
        """

    @staticmethod
    @abstractmethod
    async def _delete_bundle(namespace: str, device_id: int) -> None:
        """Delete this device's published bundle; a missing bundle is not an error.

        May be called by :meth:`create` before it returns. Must handle the namespaces of all loaded
        backends, and, for :meth:`purge_backend`, the namespace being purged even if not loaded.

        Args:
            namespace: the namespace of the bundle.
            device_id: this device's id.

        Raises:
            UnknownNamespace: the namespace is unknown.
            BundleDeletionFailed: the deletion failed (a subclass may be raised instead).
        """

    @staticmethod
    @abstractmethod
    async def _upload_device_list(namespace: str, device_list: DeviceList) -> None:
        """Publish the device list of the own account.

        May be called by :meth:`create` before it returns. Must handle the namespaces of all loaded
        backends. Must not call back into the session manager.

        Args:
            namespace: the namespace of the device list.
            device_list: device id -> optional label. Labels are :class:`~omemo.types.SignedLabel`
                (2.x); a label of a backend without label support has an empty signature.

        Raises:
            UnknownNamespace: the namespace is unknown.
            DeviceListUploadFailed: the upload failed (a subclass may be raised instead).
        """

    @staticmethod
    @abstractmethod
    async def _download_device_list(namespace: str, bare_jid: str) -> DeviceList:
        """Download the device list of an account.

        May be called by :meth:`create` before it returns. Must handle the namespaces of all loaded
        backends. Must not call back into the session manager. Returning the 1.0.2 form (plain ``str``
        labels) is accepted too.

        Args:
            namespace: the namespace of the device list.
            bare_jid: the account.

        Returns:
            Device id -> optional label; an empty mapping if the list does not exist.

        Raises:
            UnknownNamespace: the namespace is unknown.
            DeviceListDownloadFailed: a technical failure (not for a missing list; a subclass may be
                raised instead).
        """

    @staticmethod
    @abstractmethod
    async def _send_message(message: Message, bare_jid: str) -> None:
        """Send a message that the library generated on its own (it carries no payload).

        Used to complete key exchanges, to keep the other side's sessions from going stale (after
        :attr:`STALENESS_MAGIC_NUMBER` messages without reply), to announce replaced sessions and by
        backend-specific mechanisms. Must not call back into the session manager.

        Args:
            message: the message.
            bare_jid: the recipient account.

        Raises:
            UnknownNamespace: the namespace is unknown.
            MessageSendingFailed: sending failed (a subclass may be raised instead).
        """

    # -- abstract hooks: trust ----------------------------------------------------------------------

    @abstractmethod
    async def _evaluate_custom_trust_level(self, device: DeviceInformation) -> TrustLevel:
        """Map the custom trust level of a device to a core trust level.

        ``TRUSTED`` allows encrypting to and decrypting from the device; ``DISTRUSTED`` forbids both;
        ``UNDECIDED`` means that a decision is pending: decrypting is allowed, encrypting needs a
        decision first (see :meth:`_make_trust_decision`).

        Args:
            device: the device, with the custom trust level name to evaluate.

        Returns:
            The core trust level.

        Raises:
            UnknownTrustLevel: the name is not known (a subclass may be raised instead).
        """

    @abstractmethod
    async def _make_trust_decision(
        self, undecided: FrozenSet[DeviceInformation], identifier: Optional[str]
    ) -> None:
        """Decide about devices whose trust is undecided, persisting the decisions with :meth:`set_trust`.

        Called at most once per :meth:`encrypt`, with all undecided recipient devices. Devices still
        undecided afterwards make the encryption fail with :class:`StillUndecided`.

        Args:
            undecided: the devices that need a decision.
            identifier: the value the application passed to :meth:`encrypt`, unchanged (e.g. to find
                the chat window that triggered it).

        Raises:
            TrustDecisionFailed: the decision could not be made (a subclass may be raised instead).
        """

    # -- device lists and labels --------------------------------------------------------------------

    async def update_device_list(self, namespace: str, bare_jid: str, device_list: DeviceList) -> None:
        """Feed a device list into the library, e.g. from a PEP notification.

        New devices are recorded, listed ones are marked active in ``namespace``, unlisted ones inactive
        (devices are never forgotten automatically). If the list is the own account's and lacks this
        device, this device is added and the list republished. Labels are kept only if their signature
        verifies against the device's identity key (checked once that key is known); backends without
        label support take labels as they come, like python-omemo 1.0.2. The 1.0.2 form (plain ``str``
        labels) is accepted.

        Args:
            namespace: the namespace of the list.
            bare_jid: the account the list belongs to.
            device_list: device id -> optional label.

        Raises:
            UnknownNamespace: the backend of the namespace is not loaded.
            DeviceListUploadFailed: forwarded from ``_upload_device_list``.
        """
        await self._omemo_core.update_device_list(namespace, bare_jid, device_list)

    async def refresh_device_list(self, namespace: str, bare_jid: str) -> None:
        """Download a device list and feed it to :meth:`update_device_list`.

        Args:
            namespace: the namespace of the list.
            bare_jid: the account.

        Raises:
            UnknownNamespace: the backend of the namespace is not loaded.
            DeviceListDownloadFailed: forwarded from ``_download_device_list``.
            DeviceListUploadFailed: forwarded from :meth:`update_device_list`.
        """
        await self._omemo_core.refresh_device_list(namespace, bare_jid)

    async def refresh_device_lists(self, bare_jid: str) -> None:
        """:meth:`refresh_device_list` for every loaded backend.

        Args:
            bare_jid: the account.

        Raises:
            DeviceListDownloadFailed: forwarded from ``_download_device_list``.
            DeviceListUploadFailed: forwarded from :meth:`update_device_list`.
        """
        for namespace in self._omemo_core.namespaces():
            await self._omemo_core.refresh_device_list(namespace, bare_jid)

    async def clear_device_lists(self) -> None:
        """Drop every other device from the own device lists of all loaded backends.

        Other own devices that are still in use add themselves back when they next see the list. This
        device is kept in the uploaded lists (python-omemo uploads empty lists and relies on re-adding
        itself later; keeping it avoids a window in which it is invisible to senders).

        Raises:
            DeviceListUploadFailed: forwarded from ``_upload_device_list``.
        """
        core = self._omemo_core
        own = await core.devices.load(core.own_bare_jid, core.own_device_id)
        for backend in list(self.__backends):
            device_list: DeviceList = {core.own_device_id: await core.own_label_entry(backend, own.label)}
            await self._upload_device_list(backend.namespace, device_list)
            await core.update_device_list(backend.namespace, core.own_bare_jid, device_list)

    async def set_own_label(self, own_label: Optional[str]) -> None:
        """Change the label of this device and republish the own device lists.

        The label is signed for backends that support labels and passed unsigned to the others (whose
        device lists may have no place for it). Keeping it under 53 characters is recommended.

        Args:
            own_label: the new label, or ``None`` for none.

        Raises:
            DeviceListUploadFailed: forwarded from ``_upload_device_list``.
            DeviceListDownloadFailed: forwarded from ``_download_device_list``.
        """
        core = self._omemo_core
        async with core.jid_locks.hold(core.own_bare_jid):
            await core.devices.store_label(core.own_bare_jid, core.own_device_id, own_label)
        for backend in list(self.__backends):
            await core.publish_own_device_list(backend, own_label)

    # -- device information and trust ---------------------------------------------------------------

    async def get_device_information(self, bare_jid: str) -> FrozenSet[DeviceInformation]:
        """Describe the known devices of an account, across all backends.

        Only devices known from device lists are included (keep the lists current with
        :meth:`update_device_list`). The identity key of a device is learnt from its bundle the first
        time; devices whose bundle cannot be downloaded then are left out.

        Args:
            bare_jid: the account.

        Returns:
            One entry per device: id, namespaces and activity, identity key, trust level name, label.
        """
        infos, _ = await self._omemo_core.device_information(bare_jid)
        return infos

    async def get_own_device_information(self) -> Tuple[DeviceInformation, FrozenSet[DeviceInformation]]:
        """Describe this device and the other devices of the own account.

        Returns:
            This device's information and the set of the other own devices' information.
        """
        core = self._omemo_core
        infos, _ = await core.device_information(core.own_bare_jid)
        own = [info for info in infos if info.device_id == core.own_device_id]
        if own:
            this = own[0]
        else:  # not listed in any namespace right now; described from the stored record
            record = await core.devices.load(core.own_bare_jid, core.own_device_id)
            this = await core.make_information(
                core.own_bare_jid, core.own_device_id, record._replace(identity_key=core.identity_key)
            )
        return this, frozenset(info for info in infos if info.device_id != core.own_device_id)

    async def set_trust(self, bare_jid: str, identity_key: bytes, trust_level_name: str) -> None:
        """Assign a custom trust level to an identity key of an account.

        Args:
            bare_jid: the account the identity key belongs to.
            identity_key: the identity key.
            trust_level_name: the custom trust level name.
        """
        await self._omemo_core.devices.store_trust(bare_jid, identity_key, trust_level_name)

    # -- sessions -----------------------------------------------------------------------------------

    async def replace_sessions(self, device: DeviceInformation) -> Dict[str, OMEMOException]:
        """Replace every existing session with a device by a new one, and tell the device.

        Meant for sessions that seem broken, not for healthy ones: if the announcement gets lost, the
        other side keeps using the old session. One empty message with the new key exchange is sent per
        replaced session.

        Args:
            device: the device.

        Returns:
            Namespace -> the exception that made the replacement fail there. A ``StorageException``
            may have left that session inconsistent; any other failure happened before anything
            changed.
        """
        return await _maintenance.replace_sessions(self._omemo_core, device)

    async def get_sending_chain_length(self, device: DeviceInformation) -> Dict[str, Optional[int]]:
        """Report the sending chain length of each session with a device (for staleness detection).

        Args:
            device: the device.

        Returns:
            Namespace (of each of the device's namespaces) -> sending chain length, or ``None`` where
            there is no session (or the backend is not loaded).
        """
        return await _maintenance.get_sending_chain_length(self._omemo_core, device)

    # -- device hygiene (an addition of this library, see omemo.hygiene) -------------------------------

    #: Messages sent to a device without an answer after which it is stale.
    STALE_DEVICE_MESSAGES = 2000
    #: Seconds of silence (with more than ``STALENESS_MAGIC_NUMBER`` messages unanswered) after which a
    #: device is stale; also the default silence before an own device is proposed for removal.
    STALE_DEVICE_SILENCE = 90 * 24 * 3600.0

    async def _is_stale(self, activity: DeviceActivity) -> bool:
        """Decide whether ``encrypt`` skips a device (see :mod:`omemo.hygiene`). Override to change the
        rule; the default returns ``activity.stale``, the verdict of the default rule.

        Args:
            activity: the device's activity; ``unanswered`` holds the namespace being encrypted for.

        Returns:
            Whether the device is stale.
        """
        return activity.stale

    setattr(_is_stale, _hygiene.DEFAULT_HOOK_MARK, True)

    async def get_device_activity(self, bare_jid: str) -> FrozenSet[DeviceActivity]:
        """Report the activity of every known device of an account (the own account too).

        Args:
            bare_jid: the account.

        Returns:
            One :class:`~omemo.hygiene.DeviceActivity` per device ever seen for the account.
        """
        return await _hygiene.device_activity(self._omemo_core, bare_jid)

    async def propose_own_device_cleanup(self, silence: Optional[float] = None) -> FrozenSet[DeviceActivity]:
        """Propose own devices to remove from the own device lists: those still listed that have been
        silent for ``silence`` seconds (never this device, never one whose last message or first
        appearance is more recent, never one of which neither is known).

        Args:
            silence: seconds of silence; default :attr:`STALE_DEVICE_SILENCE`.

        Returns:
            The proposed devices' activity.
        """
        chosen = self.STALE_DEVICE_SILENCE if silence is None else silence
        return await _hygiene.propose_own_cleanup(self._omemo_core, chosen)

    async def remove_own_devices(
        self, device_ids: FrozenSet[int], silence: Optional[float] = None, force: bool = False
    ) -> None:
        """Remove own devices from the own device lists of every loaded namespace.

        Args:
            device_ids: the devices to remove.
            silence: a device that wrote or appeared within this many seconds is refused unless
                ``force``; default :attr:`STALE_DEVICE_SILENCE`.
            force: remove recently active devices too (never this device).

        Raises:
            ValueError: ``device_ids`` holds this device, or (without ``force``) a recently active one;
                nothing was removed.
            DeviceListDownloadFailed, DeviceListUploadFailed: forwarded from the XMPP hooks.
        """
        chosen = self.STALE_DEVICE_SILENCE if silence is None else silence
        await _hygiene.remove_own_devices(self._omemo_core, frozenset(device_ids), chosen, force)

    async def forget_device(self, bare_jid: str, device_id: int, keep_trust: bool = True) -> None:
        """Forget a device locally: its sessions (every namespace) and its record; its trust too unless
        ``keep_trust``. Nothing is published. A device still listed in its account's device list comes
        back, as a new device, with the next update of that list.

        Args:
            bare_jid: the account of the device.
            device_id: the device.
            keep_trust: whether to keep the trust level of its identity key.

        Raises:
            ValueError: it is this device.
            NotImplementedError: a loaded backend cannot delete a single session; nothing was forgotten.
        """
        await _hygiene.forget_device(self._omemo_core, bare_jid, device_id, keep_trust)

    async def get_health_report(self, bare_jid: str) -> HealthReport:
        """Check step by step what stands between this account and another for OMEMO: its device lists
        (downloaded again), and per device what is known (identity, trust), its activity (sessions,
        silence, staleness) and whether a new session could be built from each of its bundles (tried in
        memory; nothing is stored or sent). ``omemo.diagnostics.format_report`` renders it.

        Args:
            bare_jid: the account (the own account too: then this device's own bundles are not checked).

        Returns:
            The report.
        """
        return await _hygiene.health_report(self._omemo_core, bare_jid)

    # -- history synchronisation --------------------------------------------------------------------

    def before_history_sync(self) -> None:
        """Enter history synchronisation mode (no effect if already in it).

        Use it while catching up on what happened offline. In this mode used pre keys are only hidden
        from the bundle, not deleted, since several senders may have picked the same one; and
        automatic empty messages are queued, one per session, until :meth:`after_history_sync`. Live
        messages can be processed meanwhile. :meth:`create` starts in this mode.
        """
        self._omemo_core.history_sync = True

    async def after_history_sync(self) -> None:
        """Leave history synchronisation mode: delete hidden pre keys and send the queued empty messages.

        Messages that cannot be sent stay queued for the next call.

        Raises:
            MessageSendingFailed: some queued empty messages could not be sent (the message names them;
                the first failure is the ``__cause__``).
        """
        await _maintenance.after_history_sync(self._omemo_core)

    # -- encryption ---------------------------------------------------------------------------------

    async def encrypt(
        self,
        bare_jids: FrozenSet[str],
        plaintext: Dict[str, bytes],
        backend_priority_order: Optional[List[str]] = None,
        identifier: Optional[str] = None,
    ) -> Tuple[Dict[Message, PlainKeyMaterial], FrozenSet[EncryptionError]]:
        """Encrypt a plaintext for the devices of some accounts and for the other own devices.

        Each device gets the message of one backend: the first of ``backend_priority_order`` in which it
        is active. Undecided devices are submitted to :meth:`_make_trust_decision` once; only trusted
        devices receive key material. A device that cannot be reached in that namespace (no bundle, a
        rejected bundle, a failed key exchange) is reported and tried in the next namespace of the order
        in which it is active and for which ``plaintext`` has an entry; a device reached by no namespace
        is skipped. Sessions are stored only if the encryption succeeds.

        Args:
            bare_jids: the recipient accounts (the own account is added implicitly).
            plaintext: namespace -> the plaintext for that backend (e.g. a body for the legacy
                namespace, an SCE envelope for ``urn:xmpp:omemo:2``); needed for every backend used.
            backend_priority_order: namespaces from most to least preferred; ``None`` means the order
                of the backends given to :meth:`create`.
            identifier: passed through to :meth:`_make_trust_decision` unchanged.

        Returns:
            One message per backend used, mapped to the plain key material of its content (for e.g.
            legacy key transport), and the non-critical errors met on the way: one per device and
            namespace that failed, including those of devices that another namespace then reached.

        Raises:
            UnknownNamespace: the priority order names a namespace that is not loaded.
            ValueError: ``plaintext`` lacks a namespace that is needed.
            UnknownTrustLevel: forwarded from ``_evaluate_custom_trust_level``.
            TrustDecisionFailed: forwarded from ``_make_trust_decision``.
            StillUndecided: devices are still undecided after the trust decision.
            NoEligibleDevices: some recipient has no device that can be encrypted for.
        """
        return await _encrypt(self._omemo_core, bare_jids, plaintext, backend_priority_order, identifier)

    async def decrypt(self, message: Message) -> Tuple[Optional[bytes], DeviceInformation, PlainKeyMaterial]:
        """Decrypt a message, transactionally.

        Nothing is persisted unless the key material authenticates, the payload decrypts and the sender
        is not distrusted; so after any exception the message can be retried. Undecided senders are
        decrypted. On success, may publish a refilled bundle and send (or, during history
        synchronisation, queue) an empty message that completes the key exchange or prevents
        staleness; failures of those two steps are logged and retried later instead of raised, so the
        plaintext is never lost. Do not build automatic reactions to decryption failures on top; do
        tell the user.

        Args:
            message: the message.

        Returns:
            The plaintext (``None`` for an empty message), the sending device's information and the
            plain key material the message transported.

        Raises:
            UnknownNamespace: the message's backend is not loaded.
            MessageNotForUs: the message has no key for this device.
            SenderNotFound: the sending device or its identity key cannot be found.
            SenderDistrusted: the sending device's identity key is distrusted.
            UnknownTrustLevel: forwarded from ``_evaluate_custom_trust_level``.
            NoSession: there is no session and the message does not build one.
            PublicDataInconsistency: the key exchange's identity key is not the device's.
            KeyExchangeFailed: forwarded from ``Backend.build_session_passive``.
            DecryptionFailed: forwarded from the backend (TooManySkippedMessageKeys too).
        """
        return await _decrypt(self._omemo_core, message)

    async def decrypt_with_handover(
        self,
        message: Message,
        handover: Callable[[Optional[bytes], DeviceInformation], Awaitable[None]],
    ) -> Tuple[Optional[bytes], DeviceInformation, PlainKeyMaterial]:
        """:meth:`decrypt`, with an exactly-once handover (an addition of this library).

        ``handover`` is called with the plaintext and the sender inside the storage transaction that
        commits the decryption. What it writes to the same storage (the plaintext for a gateway, a
        delivery record...) is committed together with the ratchet; if it raises, or the process dies
        before the commit, neither is, and the message decrypts again when it is delivered again. So a
        message is either decrypted and handed over, or neither: never lost, never twice.

        Needs a storage with ``transaction()`` (the ``omemo.storages`` ones); ``handover`` must only
        write to that storage (it runs while the session manager holds its locks: no calls back into it).

        Args:
            message: the message.
            handover: what to do with the plaintext, in the commit.

        Returns:
            As :meth:`decrypt`.

        Raises:
            Everything :meth:`decrypt` raises, and what ``handover`` raises (nothing is committed then).
            TypeError: the storage has no ``transaction()`` (the handover could not be atomic).
        """
        if getattr(self._omemo_core.storage, "transaction", None) is None:
            raise TypeError(
                f"decrypt_with_handover needs a storage with transaction() (the omemo.storages ones);"
                f" {type(self._omemo_core.storage).__name__} has none, so the handover could not be"
                f" committed together with the ratchet"
            )
        return await _decrypt(self._omemo_core, message, within_commit=handover)

    # -- helpers ------------------------------------------------------------------------------------

    @staticmethod
    def format_identity_key(identity_key: bytes) -> List[str]:
        """Format an identity key as a fingerprint: its Curve25519 form as 8 groups of 8 lowercase hex.

        Args:
            identity_key: the identity key (Ed25519).

        Returns:
            The eight groups (consider XEP-0392 consistent colours per group when showing them).

        Raises:
            ValueError: not a valid Ed25519 public key.
        """
        hex_form = ed25519_pub_to_curve25519_pub(identity_key).hex()
        return [hex_form[index : index + 8] for index in range(0, 64, 8)]
