"""The set-up, maintenance and session-replacement operations of the session manager.

These are the implementations behind :meth:`~omemo.session_manager.SessionManager.create` (first run and
backend set-up), ``purge_backend``, ``purge_bare_jid``, ``ensure_data_consistency``,
``replace_sessions``, ``get_sending_chain_length`` and ``after_history_sync``; the public class
documents them. They follow the locking rules of :mod:`omemo._core.state`.
"""

from __future__ import annotations

import logging
import secrets
from typing import Dict, List, Optional, Tuple

from ..backend import SessionDamaged
from ..bundle import Bundle
from ..message import Message
from ..types import DeviceInformation, OMEMOException
from .errors import (
    BundleDownloadFailed,
    BundleNotFound,
    MessageSendingFailed,
    UnknownNamespace,
)
from .state import Core, describe, dirty_bundle_key

__all__ = [
    "after_history_sync",
    "ensure_data_consistency",
    "first_run",
    "get_sending_chain_length",
    "purge_backend",
    "purge_bare_jid",
    "replace_sessions",
    "set_up_backends",
]

_log = logging.getLogger("omemo.core")


async def first_run(core: Core, initial_own_label: Optional[str]) -> int:
    """Draw a device id free in every loaded namespace and store the own device records.

    ``/own_device_id`` is written last: until then the next ``create`` starts over. The own device gets
    no namespaces here; :func:`set_up_backends` adds each backend once its bundle and device list entry
    are online, so an interrupted set-up resumes where it stopped.

    Returns:
        The new device id.
    """
    manager = core.manager
    taken: set[int] = set()
    for backend in core.backends:
        taken.update((await manager._download_device_list(backend.namespace, core.own_bare_jid)).keys())
    while True:
        device_id = (
            secrets.randbelow(manager.DEVICE_ID_MAX - manager.DEVICE_ID_MIN + 1) + manager.DEVICE_ID_MIN
        )
        if device_id not in taken:
            break
    jid = core.own_bare_jid
    await core.devices.store_namespaces(jid, device_id, {})
    await core.devices.store_label(jid, device_id, initial_own_label)
    await core.devices.store_identity_key(jid, device_id, core.identity_key)
    known = await core.devices.device_ids(jid)
    if device_id not in known:
        await core.devices.store_device_ids(jid, [*known, device_id])
    await core.devices.store_trust(jid, core.identity_key, core.undecided)
    await core.storage.store("/own_device_id", device_id)
    _log.info("new OMEMO device set up")
    return device_id


async def set_up_backends(core: Core) -> None:
    """Purge backends that are gone; give new ones pre keys, a bundle and an own device list entry.

    Backends are handled one after the other and each is complete (device list last) before the next
    starts. Loaded backends whose visible pre keys fell to the threshold are refilled and republished.

    Only what this needs is loaded (the own device's namespaces, each backend's pre key count and
    unpublished-bundle mark): the rest of the own device record, the decoded key states and the
    public identity key are loaded on first use.
    """
    jid, own_id = core.own_bare_jid, core.own_device_id
    loaded = core.namespaces()
    # The own namespaces are read again after every step that changes them (a purge, a new backend's
    # device list), so each backend sees the record as its predecessors left it.
    own_namespaces = await core.devices.namespaces(jid, own_id)
    gone = [ns for ns in own_namespaces if ns not in loaded]
    for namespace in gone:
        _log.info("backend %s is no longer loaded; purging its online data", namespace)
        await purge_backend(core, namespace)
    if gone:
        own_namespaces = await core.devices.namespaces(jid, own_id)
    for backend in list(core.backends):
        new = backend.namespace not in own_namespaces
        async with core.backend_locks.hold(backend.namespace):
            refilled = await core.refill_pre_keys(backend)
        # A bundle change that the last run committed but did not publish (it was killed in between).
        unpublished = (await core.storage.load_primitive(dirty_bundle_key(backend.namespace), bool)).maybe(
            False
        )
        if unpublished:
            core.persisted_dirty.add(backend.namespace)
        if new or refilled or unpublished:
            await core.upload_bundle(backend)
        if new:
            # The device list last: only now is this backend usable by others.
            await core.refresh_device_list(backend.namespace, jid)
            own_namespaces = await core.devices.namespaces(jid, own_id)


async def purge_backend(core: Core, namespace: str) -> None:
    """See :meth:`SessionManager.purge_backend`.

    Online data goes first (device list entry, then bundle), local data last: if a step fails, the
    namespace is still recorded as the own device's, so the next ``create`` without that backend
    retries the purge.
    """
    manager = core.manager
    jid, own_id = core.own_bare_jid, core.own_device_id
    device_list = dict(await manager._download_device_list(namespace, jid))
    if own_id in device_list:
        del device_list[own_id]
        await manager._upload_device_list(namespace, device_list)
    await manager._delete_bundle(namespace, own_id)
    async with core.jid_locks.hold(jid):
        own = await core.devices.load(jid, own_id)
        remaining = {ns: flag for ns, flag in own.active.items() if ns != namespace}
        await core.devices.store_namespaces(jid, own_id, remaining)
    for backend in list(core.backends):
        if backend.namespace == namespace:
            core.backends.remove(backend)
            async with core.backend_locks.hold(namespace):
                await backend.purge()
    core.dirty_bundles.discard(namespace)


async def purge_bare_jid(core: Core, bare_jid: str) -> None:
    """See :meth:`SessionManager.purge_bare_jid`."""
    if bare_jid == core.own_bare_jid:
        raise ValueError("the own account cannot be purged; use purge_backend instead")
    async with core.jid_locks.hold(bare_jid):
        for device_id in await core.devices.device_ids(bare_jid):
            identity_key = (await core.devices.load(bare_jid, device_id)).identity_key
            if identity_key is not None:
                await core.devices.delete_trust(bare_jid, identity_key)
            await core.devices.delete_device(bare_jid, device_id)
        await core.devices.delete_device_ids(bare_jid)
    for backend in list(core.backends):
        async with core.backend_locks.hold(backend.namespace):
            await backend.purge_bare_jid(bare_jid)
        await core.queue_lock.acquire()
        try:
            await core.queue.remove_bare_jid(backend.namespace, bare_jid)
        finally:
            core.queue_lock.release()


async def ensure_data_consistency(core: Core) -> None:
    """See :meth:`SessionManager.ensure_data_consistency`."""
    for backend in list(core.backends):
        namespace = backend.namespace
        await core.refresh_device_list(namespace, core.own_bare_jid)
        local = await backend.get_bundle(core.own_bare_jid, core.own_device_id)
        online: Optional[Bundle]
        try:
            online = await core.manager._download_bundle(namespace, core.own_bare_jid, core.own_device_id)
        except (BundleDownloadFailed, BundleNotFound):
            online = None
        if online is None or online != local:
            _log.info("republishing the %s bundle", namespace)
            await core.upload_bundle(backend)


async def replace_sessions(core: Core, device: DeviceInformation) -> Dict[str, OMEMOException]:
    """See :meth:`SessionManager.replace_sessions`.

    The new session is stored only after the announcement was sent, so a failure before that leaves
    the old session in place.
    """
    failures: Dict[str, OMEMOException] = {}
    jid, device_id = device.bare_jid, device.device_id
    for backend in list(core.backends):
        namespace = backend.namespace
        async with core.session_locks.hold((namespace, jid, device_id)):
            try:
                try:
                    if await backend.load_session(jid, device_id) is None:
                        continue
                except SessionDamaged:
                    pass  # replaced like any other session
                bundle = await core.download_bundle(namespace, jid, device_id)
                await core.check_identity_key(bundle, device)
                content, plain_key_material = await backend.encrypt_empty()
                session, encrypted = await backend.build_session_active(
                    jid, device_id, bundle, plain_key_material
                )
                key = (encrypted, session.key_exchange)
                message = Message(namespace, core.own_bare_jid, core.own_device_id, content, frozenset({key}))
                await core.manager._send_message(message, jid)
                await core.store_session(backend, session)
            except OMEMOException as exc:
                _log.debug(
                    "replacing the session with %s failed: %s", describe(namespace, jid, device_id), exc
                )
                failures[namespace] = exc
    return failures


async def get_sending_chain_length(core: Core, device: DeviceInformation) -> Dict[str, Optional[int]]:
    """See :meth:`SessionManager.get_sending_chain_length`."""
    result: Dict[str, Optional[int]] = {}
    for namespace in sorted(device.namespaces):
        try:
            backend = core.backend(namespace)
        except UnknownNamespace:
            result[namespace] = None
            continue
        session = await backend.load_session(device.bare_jid, device.device_id)
        result[namespace] = None if session is None else session.sending_chain_length
    return result


async def after_history_sync(core: Core) -> None:
    """See :meth:`SessionManager.after_history_sync`."""
    core.history_sync = False
    for backend in list(core.backends):
        async with core.backend_locks.hold(backend.namespace):
            await backend.delete_hidden_pre_keys()
    failures: List[Tuple[str, str, int, Exception]] = []
    for backend in list(core.backends):
        namespace = backend.namespace
        await core.queue_lock.acquire()
        try:
            entries = await core.queue.entries(namespace)
        finally:
            core.queue_lock.release()
        for jid, device_id in entries:
            async with core.session_locks.hold((namespace, jid, device_id)):
                try:
                    session = await backend.load_session(jid, device_id)
                except SessionDamaged as exc:  # no empty message possible: dropped from the queue
                    _log.warning("not answering %s: %s", describe(namespace, jid, device_id), exc)
                    session = None
                try:
                    if session is not None:
                        await core.send_empty_message(backend, session)
                except MessageSendingFailed as exc:
                    failures.append((namespace, jid, device_id, exc))
                    continue
                await core.queue_lock.acquire()
                try:
                    await core.queue.remove(namespace, jid, device_id)
                finally:
                    core.queue_lock.release()
    if failures:
        names = "; ".join(describe(ns, jid, dev) for ns, jid, dev, _ in failures)
        raise MessageSendingFailed(f"queued empty messages could not be sent to: {names}") from failures[0][3]
