"""Device activity and staleness (see :mod:`omemo.hygiene`): computed from the sessions' sending chains
and the device records' times; the application's ``_is_stale`` hook has the last word."""

from __future__ import annotations

import logging
from typing import FrozenSet, List, Optional, Sequence, Tuple

from ..backend import Backend, KeyExchangeFailed, SessionDamaged
from ..hygiene import DeviceActivity, DeviceHealth, HealthReport, NamespaceHealth
from ..session import Session
from .devices import DeviceRecord, normalize_device_list
from .errors import DeviceListDownloadFailed
from .state import BUNDLE_ERRORS, Core

__all__ = [
    "DEFAULT_HOOK_MARK",
    "HEARD_PRECISION",
    "activity",
    "default_stale",
    "device_activity",
    "forget_device",
    "health_report",
    "hook_overridden",
    "is_stale",
    "note_heard",
    "propose_own_cleanup",
    "remove_own_devices",
]

_log = logging.getLogger("omemo.core")

#: Seconds between two writes of a device's ``last_heard``: its time is known to the hour, and a busy
#: conversation does not cost a storage write per message.
HEARD_PRECISION = 3600.0


def default_stale(core: Core, unanswered: int, silent_since: Optional[float]) -> bool:
    """The default rule (module docstring of :mod:`omemo.hygiene`) for one session's count."""
    manager = core.manager
    if unanswered >= manager.STALE_DEVICE_MESSAGES:
        return True
    if unanswered <= manager.STALENESS_MAGIC_NUMBER or silent_since is None:
        return False
    return core.clock() - silent_since >= manager.STALE_DEVICE_SILENCE


#: The attribute that marks the session manager's own ``_is_stale`` (an application's override lacks it).
DEFAULT_HOOK_MARK = "_omemo_default_hook"


def unanswered(record: DeviceRecord, namespace: str, sending_chain_length: int) -> int:
    """Messages sent to the device in ``namespace`` since it last wrote: the sending chain, less what
    the chain already held when it last wrote without having read it (the chain restarts when it reads)."""
    baseline = (record.answered or {}).get(namespace, 0)
    return sending_chain_length - baseline if sending_chain_length >= baseline else sending_chain_length


def hook_overridden(core: Core) -> bool:
    """Whether the application overrides ``_is_stale`` (else the default rule decides without a call)."""
    return not getattr(type(core.manager)._is_stale, DEFAULT_HOOK_MARK, False)


async def activity(
    core: Core, bare_jid: str, device_id: int, order: Sequence[str], record: Optional[DeviceRecord] = None
) -> DeviceActivity:
    """The activity of one device; ``stale`` by the default rule for the first namespace of ``order``
    in which it is active and has a session (the application's hook not applied)."""
    if record is None:
        record = await core.devices.load(bare_jid, device_id)
    counts: List[Tuple[str, int]] = []
    for backend in core.backends:
        try:
            session = await backend.load_session(bare_jid, device_id)
        except SessionDamaged:
            continue  # unusable: no activity to count in it
        if session is not None:
            count = unanswered(record, backend.namespace, session.sending_chain_length)
            counts.append((backend.namespace, count))
    by_namespace = dict(counts)
    silent_since = record.last_heard if record.last_heard is not None else record.first_seen
    used = next((ns for ns in order if record.active.get(ns, False) and ns in by_namespace), None)
    stale = used is not None and default_stale(core, by_namespace[used], silent_since)
    return DeviceActivity(bare_jid, device_id, frozenset(counts), record.last_heard, record.first_seen, stale)


async def is_stale(core: Core, bare_jid: str, device_id: int, namespace: str, session: Session) -> bool:
    """Whether ``encrypt`` skips the device for ``namespace``, whose session is ``session``.

    The common case costs nothing: a device that answered recently has a short sending chain, and unless
    the application overrides ``_is_stale``, nothing else is looked at.
    """
    overridden = hook_overridden(core)
    if not overridden and session.sending_chain_length <= core.manager.STALENESS_MAGIC_NUMBER:
        return False
    record = await core.devices.load(bare_jid, device_id)
    silent_since = record.last_heard if record.last_heard is not None else record.first_seen
    verdict = default_stale(core, unanswered(record, namespace, session.sending_chain_length), silent_since)
    if not overridden:
        return verdict
    found = await activity(core, bare_jid, device_id, [namespace], record)
    return bool(await core.manager._is_stale(found._replace(stale=verdict)))


async def note_heard(
    core: Core, namespace: str, session: Session, sending: int, record: DeviceRecord
) -> None:
    """Record that the device of ``session`` just wrote: its time (at most one write per
    :data:`HEARD_PRECISION`), and, if its message did not restart our sending chain (it had not read
    what we sent), where the chain stood, ``sending`` (a write only then, or when that returns to 0)."""
    bare_jid, device_id = session.bare_jid, session.device_id
    now = core.clock()
    if record.last_heard is None or now - record.last_heard >= HEARD_PRECISION:
        await core.devices.store_time(bare_jid, device_id, "last_heard", now)
    if (record.answered or {}).get(namespace, 0) != sending:  # rarely: no copy in the common case
        answered = dict(record.answered or {})
        if sending:
            answered[namespace] = sending
        else:
            answered.pop(namespace, None)
        await core.devices.store_answered(bare_jid, device_id, answered)


async def device_activity(core: Core, bare_jid: str) -> FrozenSet[DeviceActivity]:
    """See :meth:`SessionManager.get_device_activity`."""
    order, device_ids = core.namespaces(), await core.devices.device_ids(bare_jid)
    return frozenset([await activity(core, bare_jid, device_id, order) for device_id in device_ids])


async def propose_own_cleanup(core: Core, silence: float) -> FrozenSet[DeviceActivity]:
    """See :meth:`SessionManager.propose_own_device_cleanup`."""
    jid, now, order = core.own_bare_jid, core.clock(), core.namespaces()
    proposed: List[DeviceActivity] = []
    for device_id in await core.devices.device_ids(jid):
        if device_id == core.own_device_id:
            continue
        record = await core.devices.load(jid, device_id)
        if not any(record.active.values()):
            continue  # listed nowhere: nothing to remove
        found = await activity(core, jid, device_id, order, record)
        since = found.silent_since()
        if since is not None and now - since >= silence:
            proposed.append(found)
    return frozenset(proposed)


async def remove_own_devices(core: Core, device_ids: FrozenSet[int], silence: float, force: bool) -> None:
    """See :meth:`SessionManager.remove_own_devices`."""
    jid, now = core.own_bare_jid, core.clock()
    if core.own_device_id in device_ids:
        raise ValueError(f"device {core.own_device_id} is this device: it cannot remove itself")
    if not force:
        recent = []
        for device_id in sorted(device_ids):
            record = await core.devices.load(jid, device_id)
            since = record.last_heard if record.last_heard is not None else record.first_seen
            if since is None or now - since < silence:
                recent.append(device_id)
        if recent:
            raise ValueError(
                f"device(s) {', '.join(map(str, recent))} spoke or appeared within the silence period (or"
                " when is unknown): not removed; pass force=True to remove them anyway"
            )
    for backend in list(core.backends):
        namespace = backend.namespace
        raw = await core.manager._download_device_list(namespace, jid)
        device_list = normalize_device_list(namespace, jid, raw)
        kept = {device_id: label for device_id, label in device_list.items() if device_id not in device_ids}
        if len(kept) != len(device_list):
            _log.info("removing device(s) %s from the own %s device list", sorted(device_ids), namespace)
            await core.manager._upload_device_list(namespace, kept)
        await core.update_device_list(namespace, jid, kept)


async def forget_device(core: Core, bare_jid: str, device_id: int, keep_trust: bool) -> None:
    """See :meth:`SessionManager.forget_device`."""
    if bare_jid == core.own_bare_jid and device_id == core.own_device_id:
        raise ValueError("this device cannot forget itself")
    unable = [b.namespace for b in core.backends if type(b).delete_session is Backend.delete_session]
    if unable:
        raise NotImplementedError(
            f"the backend(s) of {', '.join(unable)} cannot delete a single session: nothing was forgotten"
        )
    for backend in list(core.backends):
        async with core.session_locks.hold((backend.namespace, bare_jid, device_id)):
            await backend.delete_session(bare_jid, device_id)
    async with core.jid_locks.hold(bare_jid):
        record = await core.devices.load(bare_jid, device_id)
        if not keep_trust and record.identity_key is not None:
            await core.devices.delete_trust(bare_jid, record.identity_key)
        await core.devices.delete_device(bare_jid, device_id)
        remaining = [known for known in await core.devices.device_ids(bare_jid) if known != device_id]
        await core.devices.store_device_ids(bare_jid, remaining)


async def _bundle_problem(core: Core, namespace: str, bare_jid: str, device_id: int) -> Optional[Exception]:
    """Why no new session could be built from the device's bundle in ``namespace`` (``None``: it could).
    Builds one in memory as encrypt would, and stores nothing."""
    backend = core.backend(namespace)
    try:
        bundle = await core.download_bundle(namespace, bare_jid, device_id)
        _, plain_key_material = await backend.encrypt_plaintext(b"")
        await backend.build_session_active(bare_jid, device_id, bundle, plain_key_material)
    except (*BUNDLE_ERRORS, KeyExchangeFailed) as exc:
        return exc
    return None


async def health_report(core: Core, bare_jid: str) -> HealthReport:
    """See :meth:`SessionManager.get_health_report`."""
    lists: List[NamespaceHealth] = []
    for namespace in core.namespaces():
        try:
            await core.refresh_device_list(namespace, bare_jid)
        except DeviceListDownloadFailed as exc:
            lists.append(NamespaceHealth(namespace, False, 0, exc))
            continue
        ids = await core.devices.device_ids(bare_jid)
        listed = [d for d in ids if (await core.devices.load(bare_jid, d)).active.get(namespace, False)]
        lists.append(NamespaceHealth(namespace, True, len(listed), None))
    known = {info.device_id: info for info in (await core.device_information(bare_jid))[0]}
    order = core.namespaces()
    devices: List[DeviceHealth] = []
    for device_id in sorted(await core.devices.device_ids(bare_jid)):
        record = await core.devices.load(bare_jid, device_id)
        found = await activity(core, bare_jid, device_id, order, record)
        bundles: List[Tuple[str, Optional[Exception]]] = []
        if not (bare_jid == core.own_bare_jid and device_id == core.own_device_id):
            for namespace in order:
                if record.active.get(namespace, False):
                    bundles.append((namespace, await _bundle_problem(core, namespace, bare_jid, device_id)))
        devices.append(DeviceHealth(device_id, known.get(device_id), found, tuple(bundles)))
    return HealthReport(bare_jid, tuple(lists), tuple(devices))
