"""The shared state and the building blocks of the session manager's operations.

Theory of operation. :class:`Core` holds everything a :class:`~omemo.session_manager.SessionManager`
instance knows (storage, loaded backends, own identity, locks, history-sync mode) and implements the
steps that several public operations share: device-list bookkeeping, device information, bundle
publication, pre key consumption and empty ("heartbeat"/"completion") messages. The public class stays a
thin layer of documented methods over it; the encryption and decryption flows live in their own
modules.

Concurrency rules. Four kinds of locks, always taken in this order (never the reverse), make any mix of
concurrent calls safe:

1. session locks, one per ``(namespace, bare_jid, device_id)``, held from loading a session until the
   updated session is stored (several are taken in one sorted sweep by ``encrypt``);
2. JID locks, one per bare JID, around read-modify-write cycles of device records and device lists;
3. backend locks, one per namespace, around calls that change a backend's own key material or its
   session index (``store_session``, pre keys, signed pre key, bundle publication);
4. the queue lock, around the history-sync queue.

No lock is held while waiting for a user hook that may call back into the session manager, except
that the network hooks (``_upload_*``, ``_download_*``, ``_send_message``) may run under locks of the
levels above: they must not call the session manager themselves.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from contextlib import AbstractAsyncContextManager
from typing import (
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    FrozenSet,
    List,
    Optional,
    Protocol,
    Set,
    Tuple,
    cast,
)

from .._runtime import AsyncioRuntime, KeyedLocks, Lock, Runtime
from ..backend import Backend
from ..bundle import Bundle
from ..hygiene import DeviceActivity
from ..identity_key_pair import IdentityKeyPair
from ..message import Message
from ..session import Initiation, Session
from ..storage import Storage
from ..types import DeviceInformation, DeviceList, SignedLabel, TrustLevel
from .devices import (
    DEVICE_LIST_LIMIT,
    DeviceRecord,
    DeviceStore,
    HistorySyncQueue,
    PendingLabel,
    normalize_device_list,
)
from .errors import (
    BundleDownloadFailed,
    BundleNotFound,
    BundleRejected,
    BundleUploadFailed,
    MessageSendingFailed,
    PublicDataInconsistency,
    UnknownNamespace,
    UnknownTrustLevel,
    XMPPInteractionFailed,
)

__all__ = ["BUNDLE_ERRORS", "PRE_KEY_TARGET", "Core", "Hooks", "describe", "supports_labels"]

_log = logging.getLogger("omemo.core")

#: Pre keys are refilled to this many (XEP-0384: a bundle SHOULD contain about 100 pre keys).
PRE_KEY_TARGET = 100


def describe(namespace: str, bare_jid: str, device_id: int) -> str:
    """Returns: the standard way exception messages name a device."""
    return f"device {device_id} of {bare_jid} ({namespace})"


def supports_labels(backend: Backend) -> bool:
    """Whether a backend signs labels (2.x); ``False`` for 1.0.2-era backends without the property."""
    return bool(getattr(backend, "supports_labels", False))


def dirty_bundle_key(namespace: str) -> str:
    """The storage key marking that a namespace's bundle changed and is not published yet (an addition
    of ours to the reference's layout): set with the change, in its transaction; removed after the
    upload; a start finding it republishes."""
    return f"/omemo-stack/bundle-dirty/{namespace}"


class Hooks(Protocol):
    """What the core uses of :class:`omemo.session_manager.SessionManager`: the application's XMPP,
    trust and staleness hooks and some class constants. The session manager passes itself; typing it by this
    Protocol keeps the import arrow pointing from the public facade down to the core."""

    STALENESS_MAGIC_NUMBER: int
    STALE_DEVICE_MESSAGES: int
    STALE_DEVICE_SILENCE: float
    CACHE_IDLE_SECONDS: float
    DEVICE_ID_MIN: int
    DEVICE_ID_MAX: int

    async def _is_stale(self, activity: DeviceActivity) -> bool: ...

    async def _upload_bundle(self, bundle: Bundle) -> None: ...
    async def _download_bundle(self, namespace: str, bare_jid: str, device_id: int) -> Bundle: ...
    async def _delete_bundle(self, namespace: str, device_id: int) -> None: ...
    async def _upload_device_list(self, namespace: str, device_list: DeviceList) -> None: ...
    async def _download_device_list(self, namespace: str, bare_jid: str) -> DeviceList: ...
    async def _send_message(self, message: Message, bare_jid: str) -> None: ...
    async def _evaluate_custom_trust_level(self, device: DeviceInformation) -> TrustLevel: ...
    async def _make_trust_decision(
        self, undecided: FrozenSet[DeviceInformation], identifier: Optional[str]
    ) -> None: ...


class Core:
    """The state and the shared steps of one session manager instance."""

    def __init__(
        self,
        manager: Hooks,
        storage: Storage,
        backends: List[Backend],
        own_bare_jid: str,
        identity: IdentityKeyPair,
        undecided_trust_level_name: str,
        signed_pre_key_rotation_period: int,
        pre_key_refill_threshold: int,
        runtime: Runtime,
    ) -> None:
        """Args: the values of :meth:`SessionManager.create`; ``backends`` is shared, not copied;
        ``identity`` is the loaded identity key pair (its public key is derived on first use)."""
        self.manager = manager
        self.storage = storage
        self.backends = backends
        self._known_information: Dict[str, Tuple[int, FrozenSet[DeviceInformation]]] = {}
        self.own_bare_jid = own_bare_jid
        self.own_device_id = 0  # set by create() once known
        self._identity = identity
        self.undecided = undecided_trust_level_name
        self.rotation_period = signed_pre_key_rotation_period
        self.refill_threshold = pre_key_refill_threshold
        self.runtime = runtime
        #: The time (Unix seconds) for device activity; tests replace it.
        self.clock: Callable[[], float] = time.time
        #: To tell a restored backup from a duplicate or a single altered message (decrypt.py): the
        #: fingerprints of the messages decrypted while running -> their device; per device the length
        #: of its receiving chain at its last message, and whether that whole chain was seen while
        #: running; consecutive authentication failures per device.
        self.decrypted_messages: OrderedDict[bytes, Tuple[str, str, int]] = OrderedDict()
        self.chain_lengths: Dict[Tuple[str, str, int], int] = {}
        self.whole_chains: Set[Tuple[str, str, int]] = set()
        self.auth_failures: Dict[Tuple[str, str, int], int] = {}
        self.devices = DeviceStore(storage)
        self.queue = HistorySyncQueue(storage)
        self.session_locks: KeyedLocks[Tuple[str, str, int]] = KeyedLocks(runtime)
        self.jid_locks: KeyedLocks[str] = KeyedLocks(runtime)
        self.backend_locks: KeyedLocks[str] = KeyedLocks(runtime)
        self.queue_lock: Lock = runtime.new_lock()
        self.history_sync = True
        self.dirty_bundles: set[str] = set()
        #: Namespaces whose bundle is marked dirty in the storage too (dirty_bundle_key).
        self.persisted_dirty: set[str] = set()
        #: (namespace, bare JID) whose device list decrypt fetched because a known device wrote in a
        #: namespace it was not known to use: once per instance, not once per message.
        self.namespace_lookups: set[Tuple[str, str]] = set()

    @property
    def identity_key(self) -> bytes:
        """The own identity key (Ed25519 public key).

        Derived from the identity key pair on first use, not when :meth:`SessionManager.create` loads
        it: a start of an existing account does not need it (deriving costs a scalar multiplication).
        The pair memoises it, so every later read is an attribute lookup.
        """
        return self._identity.identity_key

    # -- backends -----------------------------------------------------------------------------------

    def backend(self, namespace: str) -> Backend:
        """Returns: the loaded backend of ``namespace``.

        Raises:
            UnknownNamespace: no backend of that namespace is loaded.
        """
        for backend in self.backends:
            if backend.namespace == namespace:
                return backend
        raise UnknownNamespace(f"no backend for namespace {namespace!r} is loaded")

    def namespaces(self) -> List[str]:
        """Returns: the namespaces of the loaded backends, in load (= default priority) order."""
        return [backend.namespace for backend in self.backends]

    # -- own bundle ---------------------------------------------------------------------------------

    async def upload_bundle(self, backend: Backend) -> None:
        """Publish the current bundle of a backend (serialised with every other change to it).

        Raises:
            BundleUploadFailed: forwarded from ``_upload_bundle``; the bundle stays marked dirty.
        """
        namespace = backend.namespace
        async with self.backend_locks.hold(namespace):
            bundle = await backend.get_bundle(self.own_bare_jid, self.own_device_id)
            self.dirty_bundles.add(namespace)
            await self.manager._upload_bundle(bundle)
            self.dirty_bundles.discard(namespace)
            if namespace in self.persisted_dirty:
                await self.storage.delete(dirty_bundle_key(namespace))
                self.persisted_dirty.discard(namespace)

    async def refill_pre_keys(self, backend: Backend) -> bool:
        """Refill the pre keys to 100 if no more than the threshold are visible (backend lock held).

        Returns:
            Whether pre keys were generated.
        """
        visible = await backend.get_num_visible_pre_keys()
        if visible > self.refill_threshold:
            return False
        await backend.generate_pre_keys(PRE_KEY_TARGET - visible)
        return True

    async def flush_dirty_bundles(self) -> None:
        """Retry publishing bundles whose last upload failed (best effort; failures are logged)."""
        for namespace in sorted(self.dirty_bundles):
            try:
                await self.upload_bundle(self.backend(namespace))
            except (BundleUploadFailed, UnknownNamespace) as exc:
                _log.warning("bundle upload for %s still failing: %s", namespace, type(exc).__name__)

    def transaction(self) -> AbstractAsyncContextManager[object]:
        """An atomic write group of the storage, if it offers one (``omemo.storages`` do), under asyncio.

        The caller must already hold every lock it needs inside: other tasks' writes wait for the
        transaction, so waiting for a lock inside it could deadlock.
        """
        transaction = getattr(self.storage, "transaction", None)
        if transaction is None or not isinstance(self.runtime, AsyncioRuntime):
            return contextlib.nullcontext()
        return self._transaction(cast(AbstractAsyncContextManager[object], transaction()))

    @contextlib.asynccontextmanager
    async def _transaction(self, transaction: AbstractAsyncContextManager[object]) -> AsyncIterator[object]:
        """Run ``transaction``; if it rolls back, drop the in-memory caches that may be ahead of it."""
        try:
            async with transaction as handle:
                yield handle
        except BaseException:
            self.invalidate_caches()
            raise

    def forget_idle(self) -> None:
        """Drop what is held in memory for the contacts not used since the previous call (idle.py).

        Only copies of the storage are dropped: device records, trust levels, device information,
        decoded sessions, and the storage's own read cache of their keys. The decryption memory
        (``decrypted_messages`` and the chain lengths, bounded by ``REMEMBERED_MESSAGES``) stays, so
        that a duplicate delivered after a pause (a MAM catch-up) is still told from an out-of-step
        session. The own account is kept.
        """
        keep, idle = self.devices.forget_idle({self.own_bare_jid})
        self._known_information = {j: m for j, m in self._known_information.items() if j in keep}
        for backend in self.backends:
            forget = getattr(backend, "forget_idle", None)
            if forget is not None:
                forget(keep.__contains__)
        if idle:  # the storage's read cache: the keys with an idle contact's JID as a path segment
            self.storage._forget_cached(lambda key: not idle.isdisjoint(key.split("/")))

    def invalidate_caches(self) -> None:
        """Drop the device-record cache and the backends' caches (their ``invalidate_caches``, if any)."""
        self.devices.clear_cache()
        for backend in self.backends:
            invalidate = getattr(backend, "invalidate_caches", None)
            if invalidate is not None:
                invalidate()

    async def commit_decryption(
        self,
        backend: Backend,
        session: Session,
        used_pre_key: bool,
        within: Optional[Callable[[], Awaitable[None]]] = None,
    ) -> None:
        """Persist a successfully decrypted session and consume the pre key it was built with.

        The session and the pre key change are written in one storage transaction where available. The
        used pre key is hidden during history synchronisation and deleted otherwise; if the bundle
        changed, pre keys are refilled and the bundle is republished. A failed upload is logged and
        retried on the next operation (the message has been decrypted already). ``within`` (the
        application's handover) runs inside that transaction, before the session is written: what it
        writes is committed with the session, or nothing is.
        """
        namespace = backend.namespace
        changed = False
        async with self.backend_locks.hold(namespace):
            if not used_pre_key and within is None:  # a single record write is atomic on its own
                await backend.store_session(session)
                return
            async with self.transaction():
                if within is not None:
                    await within()
                await backend.store_session(session)
                if not used_pre_key:
                    return
                if self.history_sync:
                    changed = await backend.hide_pre_key(session)
                else:
                    changed = await backend.delete_pre_key(session)
                if changed:
                    await self.refill_pre_keys(backend)
                    # In the same transaction: if the process dies before the upload below, the next
                    # start republishes, so the used pre key does not stay published (handed out twice).
                    await self.storage.store(dirty_bundle_key(namespace), True)
                    self.persisted_dirty.add(namespace)
            if changed:
                self.dirty_bundles.add(namespace)
        if changed:
            try:
                await self.upload_bundle(backend)
            except BundleUploadFailed:
                _log.warning(
                    "could not publish the %s bundle after a pre key was used; will retry", namespace
                )

    # -- labels -------------------------------------------------------------------------------------

    async def own_label_entry(self, backend: Backend, label: Optional[str]) -> Optional[SignedLabel]:
        """The own device-list entry for a backend: signed where the backend supports labels.

        Backends without label support (legacy namespace, 1.0.2-era backends) get the label unsigned
        (``SignedLabel(label, b"")``); their serialisers either drop it or publish it as 1.0.2 did. The
        reference calls ``sign_own_label`` unconditionally (PROTOCOL.md 6.3); we do not.
        """
        if label is None:
            return None
        if supports_labels(backend):
            return SignedLabel(label, await backend.sign_own_label(label))
        return SignedLabel(label, b"")

    async def _check_label(
        self, backend: Backend, bare_jid: str, device_id: int, signed: SignedLabel, identity_key: bytes
    ) -> Optional[str]:
        """Returns: the label if its signature verifies (XEP-0384 0.9: else it MUST be ignored)."""
        if not signed.signature:
            return None
        valid = await backend.verify_label_signature(signed.label, signed.signature, identity_key)
        if not valid:
            _log.debug(
                "ignoring an invalid label signature of %s", describe(backend.namespace, bare_jid, device_id)
            )
            return None
        return signed.label

    async def _promote_pending_label(self, bare_jid: str, device_id: int, identity_key: bytes) -> None:
        """Verify a label that arrived before the identity key was known (JID lock held)."""
        pending = await self.devices.pending_label(bare_jid, device_id)
        if pending is None:
            return
        await self.devices.store_pending_label(bare_jid, device_id, None)
        try:
            backend = self.backend(pending.namespace)
        except UnknownNamespace:
            return
        label = await self._check_label(backend, bare_jid, device_id, pending.label, identity_key)
        if label is not None:
            await self.devices.store_label(bare_jid, device_id, label)

    # -- device lists -------------------------------------------------------------------------------

    async def update_device_list(self, namespace: str, bare_jid: str, raw: DeviceList) -> None:
        """See :meth:`SessionManager.update_device_list` (this is its implementation)."""
        backend = self.backend(namespace)
        device_list = normalize_device_list(namespace, bare_jid, raw)
        if bare_jid != self.own_bare_jid and len(device_list) > DEVICE_LIST_LIMIT:
            _log.warning(
                "the %s device list of %s names %d devices; using the first %d",
                namespace,
                bare_jid,
                len(device_list),
                DEVICE_LIST_LIMIT,
            )
            device_list = dict(list(device_list.items())[:DEVICE_LIST_LIMIT])
        async with self.jid_locks.hold(bare_jid):
            own_jid = bare_jid == self.own_bare_jid
            if own_jid and self.own_device_id not in device_list:
                own = await self.devices.load(bare_jid, self.own_device_id)
                device_list[self.own_device_id] = await self.own_label_entry(backend, own.label)
                _log.info("own device missing from the %s device list; republishing it", namespace)
                await self.manager._upload_device_list(namespace, dict(device_list))
            known = await self.devices.device_ids(bare_jid)
            known_set = set(known)
            new_ids = [dev for dev in device_list if dev not in known_set]
            for device_id in known:
                record = await self.devices.load(bare_jid, device_id)
                if device_id in device_list:
                    if namespace not in record.namespaces or not record.active.get(namespace, False):
                        await self.devices.store_namespaces(
                            bare_jid, device_id, {**record.active, namespace: True}
                        )
                    if not (own_jid and device_id == self.own_device_id):
                        await self._apply_label(backend, bare_jid, device_id, device_list[device_id], record)
                elif record.active.get(namespace, False):
                    await self.devices.store_namespaces(
                        bare_jid, device_id, {**record.active, namespace: False}
                    )
            for device_id in new_ids:
                await self.devices.store_time(bare_jid, device_id, "first_seen", self.clock())
                await self.devices.store_namespaces(bare_jid, device_id, {namespace: True})
                empty = DeviceRecord((namespace,), {namespace: True}, None, None)
                await self._apply_label(backend, bare_jid, device_id, device_list[device_id], empty)
            if new_ids:
                await self.devices.store_device_ids(bare_jid, known + new_ids)

    async def _apply_label(
        self,
        backend: Backend,
        bare_jid: str,
        device_id: int,
        signed: Optional[SignedLabel],
        record: DeviceRecord,
    ) -> None:
        """Store a label from a device list if it is acceptable (JID lock held).

        ``None`` leaves the stored label alone (1.0.2: "no label information"). Backends without label
        support accept the label unverified, as python-omemo 1.0.2 did; otherwise the signature must
        verify against the device's identity key, and a label arriving before that key is known waits
        in ``unverified_label``.
        """
        if signed is None or signed.label == record.label:
            return
        if not supports_labels(backend):
            await self.devices.store_label(bare_jid, device_id, signed.label)
            return
        if record.identity_key is None:
            if signed.signature:
                pending = PendingLabel(backend.namespace, signed)
                await self.devices.store_pending_label(bare_jid, device_id, pending)
            return
        label = await self._check_label(backend, bare_jid, device_id, signed, record.identity_key)
        if label is not None:
            await self.devices.store_label(bare_jid, device_id, label)

    async def refresh_device_list(self, namespace: str, bare_jid: str) -> None:
        """Download a device list and feed it to :meth:`update_device_list`."""
        self.backend(namespace)
        device_list = await self.manager._download_device_list(namespace, bare_jid)
        await self.update_device_list(namespace, bare_jid, device_list)

    async def publish_own_device_list(self, backend: Backend, label: Optional[str]) -> None:
        """Download the own device list, set the own entry (with ``label``) and upload it."""
        namespace = backend.namespace
        raw = await self.manager._download_device_list(namespace, self.own_bare_jid)
        device_list = normalize_device_list(namespace, self.own_bare_jid, raw)
        device_list[self.own_device_id] = await self.own_label_entry(backend, label)
        await self.manager._upload_device_list(namespace, device_list)
        await self.update_device_list(namespace, self.own_bare_jid, device_list)

    # -- device information -------------------------------------------------------------------------

    async def download_bundle(self, namespace: str, bare_jid: str, device_id: int) -> Bundle:
        """Download a bundle and check that it belongs to the device it was asked for.

        Raises:
            BundleDownloadFailed, BundleNotFound: forwarded from ``_download_bundle``.
            BundleRejected: ``_download_bundle`` raised a ``ValueError`` (the etree parsers' error for
                a malformed bundle); the message names the device and the parser's reason.
            PublicDataInconsistency: the bundle names another namespace/JID/device or its identity key
                is not 32 bytes.
        """
        try:
            bundle = await self.manager._download_bundle(namespace, bare_jid, device_id)
        except ValueError as exc:
            raise BundleRejected(
                f"the bundle of {describe(namespace, bare_jid, device_id)} was rejected: {exc}"
            ) from exc
        if (bundle.namespace, bundle.bare_jid, bundle.device_id) != (namespace, bare_jid, device_id) or len(
            bundle.identity_key
        ) != 32:
            raise PublicDataInconsistency(
                f"the bundle downloaded for {describe(namespace, bare_jid, device_id)} is not that device's"
                " bundle or carries a malformed identity key"
            )
        return bundle

    async def fetch_identity_key(
        self,
        bare_jid: str,
        device_id: int,
        namespaces: Tuple[str, ...],
        prefer: Optional[str] = None,
        failures: Optional[List[str]] = None,
    ) -> Optional[Tuple[bytes, Bundle]]:
        """Learn a device's identity key from the first of its bundles that can be downloaded and used.

        A bundle that cannot be had or used in one namespace does not hide the device: the next
        namespace is tried. Each failure is logged and, if ``failures`` is given, appended to it as
        ``"<namespace>: <exception class>: <message>"``.

        Returns:
            The stored identity key and the bundle, or ``None`` if no bundle could be used.
        """
        ordered = [ns for ns in self.namespaces() if ns in namespaces]
        if prefer in ordered:
            ordered.remove(prefer)
            ordered.insert(0, prefer)
        for namespace in ordered:
            try:
                bundle = await self.download_bundle(namespace, bare_jid, device_id)
            except (XMPPInteractionFailed, UnknownNamespace, PublicDataInconsistency) as exc:
                _log.info("no usable bundle for %s: %s", describe(namespace, bare_jid, device_id), exc)
                if failures is not None:
                    failures.append(f"{namespace}: {type(exc).__name__}: {exc}")
                continue
            async with self.jid_locks.hold(bare_jid):
                stored = (await self.devices.load(bare_jid, device_id)).identity_key
                if stored is None:
                    await self.devices.store_identity_key(bare_jid, device_id, bundle.identity_key)
                    await self._promote_pending_label(bare_jid, device_id, bundle.identity_key)
                    stored = bundle.identity_key
            return stored, bundle
        return None

    async def make_information(
        self, bare_jid: str, device_id: int, record: DeviceRecord
    ) -> DeviceInformation:
        """Assemble the public device information of a device whose identity key is known."""
        assert record.identity_key is not None
        trust = await self.devices.trust(bare_jid, record.identity_key, self.undecided)
        return DeviceInformation(
            namespaces=frozenset(record.namespaces),
            active=frozenset((ns, record.active.get(ns, False)) for ns in record.namespaces),
            bare_jid=bare_jid,
            device_id=device_id,
            identity_key=record.identity_key,
            trust_level_name=trust,
            label=record.label,
        )

    async def known_device(self, bare_jid: str, device_id: int) -> Optional[DeviceInformation]:
        """The device information of one device if it and its identity key are known (no network;
        answered from the memo of :meth:`known_device_information` in the steady state), else None."""
        infos = await self.known_device_information(bare_jid)
        if infos is not None:
            for info in infos:
                if info.device_id == device_id:
                    return info
        return None

    async def known_device_information(self, bare_jid: str) -> Optional[FrozenSet[DeviceInformation]]:
        """The device information of ``bare_jid`` if every identity key is known already, else None.

        Touches no network, so callers can use it sequentially and keep concurrency (and the event
        loop's scheduling cost) for the accounts whose bundles still have to be downloaded.
        """
        writes = self.devices.writes
        memo = self._known_information.get(bare_jid)
        if memo is not None and memo[0] == writes:
            self.devices.used.add(bare_jid)
            return memo[1]
        async with self.jid_locks.hold(bare_jid):
            ids = await self.devices.device_ids(bare_jid)
            records = [(dev, await self.devices.load(bare_jid, dev)) for dev in ids]
        if any(record.identity_key is None for _, record in records):
            return None
        infos = frozenset([await self.make_information(bare_jid, dev, record) for dev, record in records])
        if writes == self.devices.writes:
            # Valid until the next write of any device or trust record (DeviceStore counts them).
            self._known_information[bare_jid] = (writes, infos)
        return infos

    async def device_information(
        self, bare_jid: str
    ) -> Tuple[FrozenSet[DeviceInformation], Dict[Tuple[str, int], Bundle]]:
        """See :meth:`SessionManager.get_device_information`.

        Returns:
            The device information, and the bundles downloaded on the way (keyed by namespace and
            device id) so that ``encrypt`` does not download them twice.
        """
        known = await self.known_device_information(bare_jid)
        if known is not None:
            return known, {}
        async with self.jid_locks.hold(bare_jid):
            ids = await self.devices.device_ids(bare_jid)
            records = {dev: await self.devices.load(bare_jid, dev) for dev in ids}
        missing = [dev for dev, record in records.items() if record.identity_key is None]
        bundles: Dict[Tuple[str, int], Bundle] = {}
        if missing:
            fetched = await self.runtime.gather(
                [self.fetch_identity_key(bare_jid, dev, records[dev].namespaces) for dev in missing]
            )
            async with self.jid_locks.hold(bare_jid):
                for dev, result in zip(missing, fetched, strict=True):
                    if result is not None:
                        bundles[(result[1].namespace, dev)] = result[1]
                        records[dev] = await self.devices.load(bare_jid, dev)
        infos = [
            await self.make_information(bare_jid, dev, record)
            for dev, record in records.items()
            if record.identity_key is not None
        ]
        return frozenset(infos), bundles

    async def evaluate(self, device: DeviceInformation) -> TrustLevel:
        """Evaluate the custom trust level of a device through ``_evaluate_custom_trust_level``.

        Raises:
            UnknownTrustLevel: forwarded; also raised if the hook returns something else than a
                ``TrustLevel``.
        """
        level = await self.manager._evaluate_custom_trust_level(device)
        if not isinstance(level, TrustLevel):
            raise UnknownTrustLevel(
                f"_evaluate_custom_trust_level returned {type(level).__name__} instead of a TrustLevel for"
                f" trust level {device.trust_level_name!r} of device {device.device_id} of {device.bare_jid}"
            )
        return level

    # -- sessions -----------------------------------------------------------------------------------

    async def store_session(self, backend: Backend, session: Session) -> None:
        """Persist a session (session lock held by the caller)."""
        async with self.backend_locks.hold(backend.namespace):
            await backend.store_session(session)

    async def store_sessions(self, backend: Backend, sessions: List[Session]) -> None:
        """Persist several sessions of one backend in one storage transaction where available.

        One transaction instead of one commit per session matters for large group chats on SQLite.
        The session locks are held by the caller.
        """
        if not sessions:
            return
        async with self.backend_locks.hold(backend.namespace):
            if len(sessions) == 1:  # a single record write is atomic on its own
                await backend.store_session(sessions[0])
                return
            async with self.transaction():
                for session in sessions:
                    await backend.store_session(session)

    async def prepare_empty_message(self, backend: Backend, session: Session) -> Message:
        """Encrypt an empty message over a session, in memory only (its session lock held).

        The caller stores the session (which advanced its sending chain) before sending the message.
        """
        content, plain_key_material = await backend.encrypt_empty()
        encrypted = await backend.encrypt_key_material(session, plain_key_material)
        key_exchange = (
            session.key_exchange
            if session.initiation is Initiation.ACTIVE and not session.confirmed
            else None
        )
        return Message(
            backend.namespace,
            self.own_bare_jid,
            self.own_device_id,
            content,
            frozenset({(encrypted, key_exchange)}),
        )

    async def send_prepared_message(self, backend: Backend, session: Session, message: Message) -> None:
        """Send a message made by :meth:`prepare_empty_message` (after the session was stored).

        Raises:
            MessageSendingFailed: forwarded from ``_send_message`` (``UnknownNamespace`` is wrapped).
        """
        try:
            await self.manager._send_message(message, session.bare_jid)
        except UnknownNamespace as exc:
            who = describe(backend.namespace, session.bare_jid, session.device_id)
            raise MessageSendingFailed(f"could not send an empty message to {who}: {exc}") from exc

    async def send_empty_message(self, backend: Backend, session: Session) -> None:
        """Encrypt, store and send an empty message over a session (its session lock held).

        The session is stored before sending: if sending fails, the peer just sees a skipped message
        key, whereas the reverse order could make us reuse a message key.

        Raises:
            MessageSendingFailed: forwarded from ``_send_message`` (``UnknownNamespace`` is wrapped).
        """
        message = await self.prepare_empty_message(backend, session)
        await self.store_session(backend, session)
        await self.send_prepared_message(backend, session, message)

    async def owe_empty_message(
        self, backend: Backend, session: Session, prepared: Optional[Message] = None
    ) -> None:
        """Send an empty message now, or queue it while history synchronisation is on.

        A failed send is queued as well (and logged), so the message is not lost: it goes out with the
        queue at the next :meth:`SessionManager.after_history_sync`.

        Args:
            backend: the session's backend.
            session: the session (its lock held).
            prepared: an empty message already made with :meth:`prepare_empty_message` and stored with
                the session (decryption does this to store the session once instead of twice).
        """
        namespace = backend.namespace
        if not self.history_sync:
            try:
                if prepared is None:
                    await self.send_empty_message(backend, session)
                else:
                    await self.send_prepared_message(backend, session, prepared)
                return
            except MessageSendingFailed as exc:
                _log.warning("automatic empty message could not be sent (%s); queued", type(exc).__name__)
        await self.queue_lock.acquire()
        try:
            await self.queue.add(namespace, session.bare_jid, session.device_id)
        finally:
            self.queue_lock.release()

    async def check_identity_key(self, bundle: Bundle, device: DeviceInformation) -> None:
        """Raises: PublicDataInconsistency if a bundle's identity key differs from the known one."""
        if bundle.identity_key != device.identity_key:
            who = describe(bundle.namespace, device.bare_jid, device.device_id)
            raise PublicDataInconsistency(
                f"the bundle of {who} carries another identity key than the one known (and trusted or"
                " distrusted) for that device"
            )


# Re-exported for the flows, so that they need not import the download errors separately.
BUNDLE_ERRORS = (BundleDownloadFailed, BundleNotFound, PublicDataInconsistency)
