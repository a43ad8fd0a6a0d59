"""The encryption flow of :meth:`omemo.session_manager.SessionManager.encrypt` (PROTOCOL.md 5.4/5.5).

Steps:

1. Resolve the backend priority order (``UnknownNamespace`` for namespaces that are not loaded) and
   add the own JID to the recipients. Accounts nothing is known about get their device lists
   downloaded once (an addition to python-omemo, which leaves that to the application).
2. Collect the device information of every recipient, drop the sending device, and give every other
   device exactly one namespace: the first of the priority order in which it is active.
3. Trust: evaluate every candidate; ask ``_make_trust_decision`` ONCE about all undecided devices, then
   re-read and re-evaluate them (``StillUndecided`` if any remains undecided). Only TRUSTED devices get
   key material.
4. Under the session locks of every target device (one sorted sweep): per backend, encrypt the payload
   once, then load each session or build one actively from the bundle. A non-critical error, like
   ``BundleNotFound``, ``BundleRejected`` or ``KeyExchangeFailed``, is reported as ``EncryptionError``
   and the device moves on to the next namespace of the order in which it is active and for which a
   plaintext was given (an addition to python-omemo, where one unusable bundle dropped the device);
   without one, the device is dropped.
5. If a recipient other than ourselves is left without any device: ``NoEligibleDevices``, and nothing
   is stored. Otherwise every touched session is stored, then the messages are returned.
"""

from __future__ import annotations

import logging
from typing import Dict, FrozenSet, List, Optional, Set, Tuple

from ..backend import Backend, KeyExchangeFailed, SessionDamaged
from ..bundle import Bundle
from ..hygiene import StaleDevice
from ..message import Content, EncryptedKeyMaterial, KeyExchange, Message, PlainKeyMaterial
from ..session import Initiation, Session
from ..types import DeviceInformation, TrustLevel
from .errors import (
    DeviceListDownloadFailed,
    DeviceListUploadFailed,
    EncryptionError,
    NoEligibleDevices,
    StillUndecided,
    UnknownNamespace,
)
from .hygiene import hook_overridden, is_stale
from .state import BUNDLE_ERRORS, Core, describe

__all__ = ["encrypt"]

_log = logging.getLogger("omemo.core")

_Target = Tuple[DeviceInformation, str]  # (device, chosen namespace)
_KeyTuple = Tuple[EncryptedKeyMaterial, Optional[KeyExchange]]


def _priority_order(core: Core, backend_priority_order: Optional[List[str]]) -> List[str]:
    if backend_priority_order is None:
        return core.namespaces()
    for namespace in backend_priority_order:
        core.backend(namespace)  # raises UnknownNamespace
    return list(dict.fromkeys(backend_priority_order))


def _candidate_namespaces(device: DeviceInformation, order: List[str]) -> List[str]:
    """The namespaces of ``order`` in which ``device`` is active, best first."""
    return [ns for ns in order if (ns, True) in device.active and ns in device.namespaces]


async def _decide_trust(core: Core, targets: List[_Target], identifier: Optional[str]) -> List[_Target]:
    """Returns: the targets whose trust evaluates to TRUSTED, after at most one trust decision."""
    levels = [await core.evaluate(device) for device, _ in targets]
    if TrustLevel.UNDECIDED not in levels:  # the common case
        return [target for target, level in zip(targets, levels, strict=True) if level is TrustLevel.TRUSTED]
    undecided = [
        device for (device, _), level in zip(targets, levels, strict=True) if level is TrustLevel.UNDECIDED
    ]
    if undecided:
        await core.manager._make_trust_decision(frozenset(undecided), identifier)
        still: List[_Target] = []
        for index, ((device, namespace), level) in enumerate(zip(targets, levels, strict=True)):
            if level is not TrustLevel.UNDECIDED:
                continue
            name = await core.devices.trust(device.bare_jid, device.identity_key, core.undecided)
            device = device._replace(trust_level_name=name)  # noqa: PLW2901 - the refreshed information
            targets[index] = (device, namespace)
            levels[index] = await core.evaluate(device)
            if levels[index] is TrustLevel.UNDECIDED:
                still.append((device, namespace))
        if still:
            names = ", ".join(
                describe(ns, d.bare_jid, d.device_id)
                for d, ns in sorted(still, key=lambda t: _sort_key(t[0]))
            )
            raise StillUndecided(f"trust is still undecided after the trust decision for: {names}")
    return [target for target, level in zip(targets, levels, strict=True) if level is TrustLevel.TRUSTED]


def _explain(unreachable: FrozenSet[str], errors: List[EncryptionError]) -> str:
    """The message of ``NoEligibleDevices``: per account, why its devices were skipped."""
    parts = []
    for jid in sorted(unreachable):
        reasons = [
            f"{describe(e.namespace, e.bare_jid, e.device_id)}: {type(e.exception).__name__}"
            for e in errors
            if e.bare_jid == jid
        ]
        detail = "; ".join(reasons) if reasons else "no trusted device active in the usable namespaces"
        parts.append(f"{jid} ({detail})")
    return "no device eligible for encryption for: " + ", ".join(parts)


def _sort_key(device: DeviceInformation) -> Tuple[str, int]:
    return device.bare_jid, device.device_id


async def _fetch_bundles(
    core: Core, needed: List[_Target], cached: Dict[Tuple[str, str, int], Bundle]
) -> Dict[Tuple[str, str, int], object]:
    """Download the bundles of devices without a session, concurrently (errors become values)."""

    async def fetch(device: DeviceInformation, namespace: str) -> object:
        key = (namespace, device.bare_jid, device.device_id)
        bundle = cached.get(key)
        try:
            if bundle is None:
                bundle = await core.download_bundle(namespace, device.bare_jid, device.device_id)
            await core.check_identity_key(bundle, device)
        except BUNDLE_ERRORS as exc:
            return exc
        return bundle

    results = await core.runtime.gather([fetch(device, namespace) for device, namespace in needed])
    return {(ns, d.bare_jid, d.device_id): result for (d, ns), result in zip(needed, results, strict=True)}


class _Batch:
    """What one backend produced so far: the payload, encrypted once, and every device's key."""

    def __init__(self) -> None:
        self.content: Optional[Content] = None
        self.plain_key_material: Optional[PlainKeyMaterial] = None
        self.keys: Set[_KeyTuple] = set()
        self.touched: List[Session] = []


async def _encrypt_for_backend(
    core: Core,
    backend: Backend,
    batch: _Batch,
    plaintext: bytes,
    targets: List[_Target],
    cached: Dict[Tuple[str, str, int], Bundle],
    errors: List[EncryptionError],
) -> List[DeviceInformation]:
    """Encrypt for the devices of one backend (session locks held) into ``batch``. Nothing is stored.

    Devices with a session are encrypted for in one pass (the common case: no list is built for them);
    the bundles of the others are then downloaded concurrently and their sessions built.

    Returns:
        The devices that failed with a non-critical error (recorded in ``errors``), so that another
        namespace can be tried for them.
    """
    namespace = backend.namespace
    if batch.content is None:
        batch.content, batch.plain_key_material = await backend.encrypt_plaintext(plaintext)
    plain_key_material = batch.plain_key_material
    assert plain_key_material is not None
    failed: List[DeviceInformation] = []
    needed: List[_Target] = []
    magic = core.manager.STALENESS_MAGIC_NUMBER
    overridden = hook_overridden(core)
    for target in targets:
        device = target[0]
        jid, device_id = device.bare_jid, device.device_id
        try:
            session = await backend.load_session(jid, device_id)
        except SessionDamaged as exc:  # this device only; another namespace may have a usable session
            _log.warning("skipping %s: %s", describe(namespace, jid, device_id), exc)
            errors.append(EncryptionError(namespace, jid, device_id, exc))
            failed.append(device)
            continue
        if session is None:
            needed.append(target)
            continue
        # The staleness rule costs nothing for a device that answered recently (a short sending chain).
        if (overridden or session.sending_chain_length > magic) and await is_stale(
            core, jid, device_id, namespace, session
        ):
            # Not tried in another namespace: the device stopped answering, whichever it uses.
            who = describe(namespace, jid, device_id)
            _log.debug("not encrypting for stale %s", who)
            reason = StaleDevice(
                f"{who} was sent {session.sending_chain_length} messages without answering; it is"
                " encrypted for again once one of its messages arrives"
            )
            errors.append(EncryptionError(namespace, jid, device_id, reason))
            continue
        try:
            encrypted = await backend.encrypt_key_material(session, plain_key_material)
        except (*BUNDLE_ERRORS, KeyExchangeFailed) as exc:
            _cannot_encrypt(namespace, device, exc, errors, failed)
            continue
        _add_key(batch, session, encrypted)
    if not needed:
        return failed
    bundles = await _fetch_bundles(core, needed, cached)
    for device, _ in needed:
        jid, device_id = device.bare_jid, device.device_id
        try:
            bundle = bundles[(namespace, jid, device_id)]
            if isinstance(bundle, Exception):
                raise bundle
            assert isinstance(bundle, Bundle)
            session, encrypted = await backend.build_session_active(
                jid, device_id, bundle, plain_key_material
            )
        except (*BUNDLE_ERRORS, KeyExchangeFailed) as exc:
            _cannot_encrypt(namespace, device, exc, errors, failed)
            continue
        _add_key(batch, session, encrypted)
    return failed


def _cannot_encrypt(
    namespace: str,
    device: DeviceInformation,
    exc: Exception,
    errors: List[EncryptionError],
    failed: List[DeviceInformation],
) -> None:
    """Record a non-critical failure of ``device`` in ``namespace`` (another namespace may be tried)."""
    _log.info("cannot encrypt for %s: %s", describe(namespace, device.bare_jid, device.device_id), exc)
    errors.append(EncryptionError(namespace, device.bare_jid, device.device_id, exc))
    failed.append(device)


def _add_key(batch: _Batch, session: Session, encrypted: EncryptedKeyMaterial) -> None:
    """Add a device's key (with the key exchange while the session is not confirmed) to ``batch``."""
    key_exchange = (
        session.key_exchange if session.initiation is Initiation.ACTIVE and not session.confirmed else None
    )
    batch.keys.add((encrypted, key_exchange))
    batch.touched.append(session)


async def _discover(core: Core, bare_jid: str) -> None:
    """Download the device lists of an account nothing is known about yet (best effort).

    python-omemo leaves this to the application; doing it here makes a first message to a new contact
    work even before any PEP notification arrived. Failures just leave the account without devices.
    """
    if await core.devices.device_ids(bare_jid):
        return
    for namespace in core.namespaces():
        try:
            await core.refresh_device_list(namespace, bare_jid)
        except (DeviceListDownloadFailed, DeviceListUploadFailed, UnknownNamespace) as exc:
            _log.debug("could not discover the %s devices of %s: %s", namespace, bare_jid, exc)


async def encrypt(
    core: Core,
    bare_jids: FrozenSet[str],
    plaintext: Dict[str, bytes],
    backend_priority_order: Optional[List[str]],
    identifier: Optional[str],
    skip_unreachable: bool = False,
    answer_in_last_namespace: bool = False,
) -> Tuple[Dict[Message, PlainKeyMaterial], FrozenSet[EncryptionError]]:
    """See :meth:`omemo.session_manager.SessionManager.encrypt`.

    With ``skip_unreachable`` (group chats: one member without usable keys must not block the room), an
    account none of whose devices can be reached does not raise ``NoEligibleDevices``: it is reported
    as one more error, ``EncryptionError("", bare_jid, 0, NoEligibleDevices(...))`` (namespace "" and
    device id 0: the account as a whole), and the others are encrypted for.

    With ``answer_in_last_namespace`` (integrations: answer a device in the namespace it writes in), a
    device goes first to the namespace of the last message with content decrypted from it, when that
    namespace is in the order and has a plaintext. python-omemo has no such rule, so the public
    ``SessionManager.encrypt`` leaves it off.
    """
    order = _priority_order(core, backend_priority_order)
    recipients = sorted(set(bare_jids) | {core.own_bare_jid})
    if core.dirty_bundles:
        await core.flush_dirty_bundles()

    # Only accounts that need the network run concurrently: tasks cost event-loop rounds.
    unknown = [
        jid
        for jid in recipients
        if not core.devices.has_cached_devices(jid) and not await core.devices.device_ids(jid)
    ]
    if unknown:
        await core.runtime.gather([_discover(core, jid) for jid in unknown])
    infos: Dict[str, Tuple[FrozenSet[DeviceInformation], Dict[Tuple[str, int], Bundle]]] = {}
    incomplete: List[str] = []
    for jid in recipients:
        known = await core.known_device_information(jid)
        if known is None:
            incomplete.append(jid)
        else:
            infos[jid] = (known, {})
    if incomplete:
        fetched = await core.runtime.gather([core.device_information(jid) for jid in incomplete])
        infos.update(zip(incomplete, fetched, strict=True))
    cached: Dict[Tuple[str, str, int], Bundle] = {}
    targets: List[_Target] = []
    # The namespaces each device can be encrypted for, best first: the first is tried, the others are
    # the fallbacks (a device whose session cannot be built in its first namespace, because its bundle
    # there is missing or unusable, falls back to the next namespace of the order in which it is active
    # and for which a plaintext was given: one bad bundle must not hide a device another one reaches).
    fallbacks: Dict[Tuple[str, int], List[str]] = {}
    own_jid, own_id = core.own_bare_jid, core.own_device_id
    for jid in recipients:
        devices, bundles = infos[jid]
        for (bundle_namespace, device_id), bundle in bundles.items():
            cached[(bundle_namespace, jid, device_id)] = bundle
        for device in sorted(devices, key=_sort_key) if len(devices) > 1 else devices:
            if device.device_id == own_id and jid == own_jid:
                continue
            active = _candidate_namespaces(device, order)
            candidates = [ns for ns in active if ns in plaintext]
            if not candidates:
                if active:  # reported as missing plaintext below
                    targets.append((device, active[0]))
                continue
            if answer_in_last_namespace and len(candidates) > 1:
                # A device is answered in the namespace it last wrote in, if that is one of the order.
                last = (await core.devices.load(jid, device.device_id)).last_namespace
                if last in candidates[1:]:
                    candidates.remove(last)
                    candidates.insert(0, last)
            targets.append((device, candidates[0]))
            fallbacks[(jid, device.device_id)] = candidates[1:]

    targets = await _decide_trust(core, targets, identifier)

    missing = [ns for ns in core.namespaces() if ns not in plaintext and any(t[1] == ns for t in targets)]
    if missing:
        raise ValueError(
            f"no plaintext given for the namespace(s) {', '.join(missing)} needed by the recipients"
        )

    errors: List[EncryptionError] = []
    batches: Dict[str, _Batch] = {}
    lock_keys = [
        (ns, device.bare_jid, device.device_id)
        for device, first in targets
        for ns in (first, *fallbacks[(device.bare_jid, device.device_id)])
    ]
    async with core.session_locks.hold(*lock_keys):
        pending = targets
        while pending:
            retry: List[_Target] = []
            for namespace in core.namespaces():
                mine = [target for target in pending if target[1] == namespace]
                if not mine:
                    continue
                batch = batches.setdefault(namespace, _Batch())
                failed = await _encrypt_for_backend(
                    core, core.backend(namespace), batch, plaintext[namespace], mine, cached, errors
                )
                for device in failed:
                    remaining = fallbacks[(device.bare_jid, device.device_id)]
                    if remaining:
                        retry.append((device, remaining.pop(0)))
            pending = retry

        reached = {session.bare_jid for batch in batches.values() for session in batch.touched}
        unreachable = frozenset(jid for jid in recipients if jid != core.own_bare_jid and jid not in reached)
        if unreachable and not skip_unreachable:
            raise NoEligibleDevices(unreachable, _explain(unreachable, errors))
        for jid in sorted(unreachable):
            exception = NoEligibleDevices(frozenset({jid}), _explain(frozenset({jid}), errors))
            errors.append(EncryptionError("", jid, 0, exception))
        messages: Dict[Message, PlainKeyMaterial] = {}
        for namespace, batch in batches.items():
            await core.store_sessions(core.backend(namespace), batch.touched)
            if batch.keys:
                assert batch.content is not None and batch.plain_key_material is not None
                message = Message(
                    namespace, core.own_bare_jid, core.own_device_id, batch.content, frozenset(batch.keys)
                )
                messages[message] = batch.plain_key_material
    return messages, frozenset(errors)
