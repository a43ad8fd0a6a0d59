"""Persistent bookkeeping of devices, labels, trust and the history-sync queue (storage only, no XMPP).

Storage layout (PROTOCOL.md 5.1, identical to python-omemo so that its data opens here):

- ``/devices/{bare_jid}/list``: every device id ever seen for the JID (only purging shrinks it);
- ``/devices/{bare_jid}/{device_id}/namespaces`` (list of str), ``.../active`` (namespace -> bool),
  ``.../label`` (optional str, only verified or label-less-backend labels), ``.../identity_key``
  (Ed25519, filled lazily from the first downloadable bundle);
- ``/trust/{bare_jid}/{urlsafe_b64(identity_key)}``: the custom trust level name;
- ``/queue/{namespace}`` (list of bare JIDs) and ``/queue/{namespace}/{bare_jid}`` (list of device ids):
  the empty messages owed once history synchronisation ends.

One addition of ours: ``/devices/{bare_jid}/{device_id}/unverified_label`` holds a signed label received
before the device's identity key was known (``{"namespace", "label", "signature"}``); it is verified and
promoted to ``label`` as soon as the identity key arrives. And ``.../last_namespace`` (str): the
namespace of the last message with content decrypted from the device, which integrations prefer for it
(a device that announces a namespace but writes in another, e.g. slixmpp-omemo 2.2, is answered in the
one it writes). ``.../last_heard`` and ``.../first_seen`` (float, Unix time): when the device last sent
a message we decrypted (written at most once an hour per device) and when it first appeared in a device
list; ``.../answered`` (namespace -> int, usually absent): the sending chain length at its last message
when that message did not restart the chain; with the sessions' sending chains they tell stale devices
(:mod:`omemo.hygiene`).
python-omemo ignores these keys.

Writers follow python-omemo 1.0.4's order: ``active`` before ``namespaces``, so that a crash in between
never leaves a namespace in ``namespaces`` that ``active`` lacks; :meth:`DeviceStore.load` repairs such
records written by older versions.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Mapping
from typing import Any, Dict, List, NamedTuple, Optional, Set, Tuple

from ..storage import Storage
from ..types import DeviceList, SignedLabel

__all__ = [
    "DEVICE_LIST_LIMIT",
    "DeviceRecord",
    "DeviceStore",
    "HistorySyncQueue",
    "PendingLabel",
    "normalize_device_list",
]

_log = logging.getLogger("omemo.core")

DEVICE_ID_MIN = 1
DEVICE_ID_MAX = 2**31 - 1
#: The most devices taken from another account's device list (in list order). Real lists hold a few
#: to a few dozen; a list of thousands is broken or hostile, and every device in it would cost a
#: stored record and, on the next message, a bundle download. The own list is never cut.
DEVICE_LIST_LIMIT = 1000
#: The records of one device, under ``/devices/{bare_jid}/{device_id}/``.
_DEVICE_KEYS = (
    "namespaces",
    "active",
    "label",
    "identity_key",
    "unverified_label",
    "last_namespace",
    "last_heard",
    "first_seen",
    "answered",
)


class DeviceRecord(NamedTuple):
    """What the storage knows about one device."""

    namespaces: Tuple[str, ...]
    active: Dict[str, bool]
    label: Optional[str]
    identity_key: Optional[bytes]
    #: The namespace of the last message with content decrypted from the device, if any.
    last_namespace: Optional[str] = None
    #: When the device last sent a message we decrypted (Unix time), if ever.
    last_heard: Optional[float] = None
    #: When the device first appeared in a device list (Unix time), if recorded.
    first_seen: Optional[float] = None
    #: Per namespace, the length of our sending chain when the device last wrote without having read it
    #: (a message with its old ratchet key): those messages do not count as unanswered. Usually empty.
    answered: Optional[Dict[str, int]] = None


class PendingLabel(NamedTuple):
    """A signed label waiting for the device's identity key to be verified."""

    namespace: str
    label: SignedLabel


def normalize_device_list(namespace: str, bare_jid: str, raw: Mapping[int, object]) -> DeviceList:
    """Bring a device list from an XMPP hook or a PEP update into the 2.x form.

    Accepts the 2.x form (``SignedLabel`` or ``None`` per device) and the 1.0.2 form (plain ``str`` or
    ``None``); a plain label becomes ``SignedLabel(label, b"")``, i.e. an unsigned label. Device ids that
    are not integers in ``1 .. 2**31 - 1`` come from the network and are dropped (logged at debug level).

    Args:
        namespace: the namespace of the list (for messages).
        bare_jid: the owner of the list (for messages).
        raw: the device list.

    Returns:
        The device list with every label as ``SignedLabel`` or ``None``.

    Raises:
        TypeError: a label is neither ``None``, ``str`` nor a ``(str, bytes)`` pair.
    """
    result: DeviceList = {}
    for device_id, label in raw.items():
        if isinstance(device_id, bool) or not isinstance(device_id, int):
            _log.debug("ignoring non-integer device id in a %s device list", namespace)
            continue
        if not DEVICE_ID_MIN <= device_id <= DEVICE_ID_MAX:
            _log.debug("ignoring out-of-range device id %d in a %s device list", device_id, namespace)
            continue
        if label is None:
            result[device_id] = None
        elif isinstance(label, SignedLabel):
            result[device_id] = label
        elif isinstance(label, str):
            result[device_id] = SignedLabel(label, b"")
        elif (
            isinstance(label, tuple)
            and len(label) == 2
            and isinstance(label[0], str)
            and isinstance(label[1], bytes)
        ):
            result[device_id] = SignedLabel(label[0], label[1])
        else:
            raise TypeError(
                f"device list of {bare_jid} in {namespace}: the label of device {device_id} must be None,"
                f" str or SignedLabel, got {type(label).__name__}"
            )
    return result


def _b64(value: bytes) -> str:
    return base64.urlsafe_b64encode(value).decode("ascii")


class DeviceStore:
    """Typed access to the device, label and trust records of the storage, with a read cache.

    The session manager is the only writer of these records, so device id lists, device records and
    trust levels are cached after the first load: steady-state ``encrypt``/``decrypt`` read none of
    them from the storage. Every write goes to the storage first and then drops the cached entry; a
    load that overlapped any write does not fill the cache (``_writes`` tells). :meth:`clear_cache`
    drops everything, e.g. after a storage transaction was rolled back.
    """

    def __init__(self, storage: Storage) -> None:
        """Args:
        storage: the storage of the session manager.
        """
        self._storage = storage
        self._writes = 0
        self._ids: Dict[str, List[int]] = {}
        self._records: Dict[Tuple[str, int], DeviceRecord] = {}
        self._trust: Dict[Tuple[str, bytes], Optional[str]] = {}
        #: The bare JIDs whose records were used since the last :meth:`forget_idle` (idle.py).
        self.used: Set[str] = set()

    @property
    def writes(self) -> int:
        """A counter that changes with every write (and cache clear): a cheap validity stamp."""
        return self._writes

    def clear_cache(self) -> None:
        """Forget every cached record (the storage is read again on the next access)."""
        self._writes += 1
        self._ids.clear()
        self._records.clear()
        self._trust.clear()

    def forget_idle(self, keep: Set[str]) -> Tuple[Set[str], Set[str]]:
        """Drop the cached records of every bare JID neither used since the last call nor in ``keep``.

        Not a write: the storage holds the same, and loads in flight may fill the cache again.

        Returns:
            The bare JIDs kept (``keep`` and the used ones) and those whose records were dropped.
        """
        keep = keep | self.used
        self.used = set()
        cached = {*self._ids, *(key[0] for key in self._records), *(key[0] for key in self._trust)}
        self._ids = {jid: ids for jid, ids in self._ids.items() if jid in keep}
        self._records = {key: record for key, record in self._records.items() if key[0] in keep}
        self._trust = {key: name for key, name in self._trust.items() if key[0] in keep}
        return keep, cached - keep

    async def _store_field(self, bare_jid: str, device_id: int, name: str, value: Any, **fields: Any) -> None:
        """Store one field of a device record (``name`` under the device's prefix) and update the cached
        record with ``fields`` (dropped instead if the write failed): no reload of the whole record."""
        try:
            await self._storage.store(f"{self._prefix(bare_jid, device_id)}/{name}", value)
        except BaseException:
            self._written(bare_jid, device_id)
            raise
        self._writes += 1
        cached = self._records.get((bare_jid, device_id))
        if cached is not None:
            self._records[(bare_jid, device_id)] = cached._replace(**fields)

    def _written(self, bare_jid: str, device_id: Optional[int] = None) -> None:
        self._writes += 1
        if device_id is None:
            self._ids.pop(bare_jid, None)
        else:
            self._records.pop((bare_jid, device_id), None)

    @staticmethod
    def _prefix(bare_jid: str, device_id: int) -> str:
        return f"/devices/{bare_jid}/{device_id}"

    def has_cached_devices(self, bare_jid: str) -> bool:
        """Whether device ids of ``bare_jid`` are known from the cache (no storage access)."""
        return bool(self._ids.get(bare_jid))

    async def device_ids(self, bare_jid: str) -> List[int]:
        """Returns: every device id ever stored for ``bare_jid``, in order of discovery."""
        self.used.add(bare_jid)
        cached = self._ids.get(bare_jid)
        if cached is not None:
            return list(cached)
        writes = self._writes
        ids = (await self._storage.load_list(f"/devices/{bare_jid}/list", int)).maybe([])
        if writes == self._writes:
            self._ids[bare_jid] = list(ids)
        return ids

    async def store_device_ids(self, bare_jid: str, device_ids: List[int]) -> None:
        """Replace the device id list of ``bare_jid``."""
        try:
            await self._storage.store(f"/devices/{bare_jid}/list", list(device_ids))
        finally:
            self._written(bare_jid)

    async def load(self, bare_jid: str, device_id: int) -> DeviceRecord:
        """Load a device record, repairing a ``namespaces`` entry that ``active`` lacks.

        Args:
            bare_jid: the device's account.
            device_id: the device id.

        Returns:
            The record (empty namespaces for an unknown device).
        """
        self.used.add(bare_jid)
        cached = self._records.get((bare_jid, device_id))
        if cached is not None:
            return cached
        writes = self._writes
        prefix = self._prefix(bare_jid, device_id)
        repaired, active = await self._load_namespaces(prefix)
        label = (await self._storage.load_optional(f"{prefix}/label", str)).maybe(None)
        identity_key = (await self._storage.load_bytes(f"{prefix}/identity_key")).maybe(None)
        last = (await self._storage.load_optional(f"{prefix}/last_namespace", str)).maybe(None)
        heard, seen = await self._time(f"{prefix}/last_heard"), await self._time(f"{prefix}/first_seen")
        try:
            answered = (await self._storage.load_dict(f"{prefix}/answered", int)).maybe(None)
        except TypeError:
            answered = None
        record = DeviceRecord(tuple(repaired), active, label, identity_key, last, heard, seen, answered)
        if writes == self._writes:
            self._records[(bare_jid, device_id)] = record
        return record

    async def namespaces(self, bare_jid: str, device_id: int) -> Tuple[str, ...]:
        """The namespaces of a device: :meth:`load`'s ``namespaces`` (repaired the same way), without
        loading the rest of the record when it is not cached (``SessionManager.create`` needs only
        this of the own device; the record is loaded on its first use).

        Args:
            bare_jid: the device's account.
            device_id: the device id.

        Returns:
            The namespaces (empty for an unknown device).
        """
        self.used.add(bare_jid)
        cached = self._records.get((bare_jid, device_id))
        if cached is not None:
            return cached.namespaces
        return tuple((await self._load_namespaces(self._prefix(bare_jid, device_id)))[0])

    async def _load_namespaces(self, prefix: str) -> Tuple[List[str], Dict[str, bool]]:
        """Load ``namespaces`` and ``active`` of the device under ``prefix``; a namespace lacking its
        ``active`` flag (a crash between the two writes of an older version) is dropped and the
        repaired list stored.

        Returns:
            The repaired namespaces and the active flags.
        """
        namespaces = (await self._storage.load_list(f"{prefix}/namespaces", str)).maybe([])
        active = (await self._storage.load_dict(f"{prefix}/active", bool)).maybe({})
        repaired = [ns for ns in namespaces if ns in active]
        if repaired != namespaces:
            _log.warning("repairing the namespaces of a device that lacked active flags")
            await self._storage.store(f"{prefix}/namespaces", list(repaired))
        return repaired, active

    async def store_namespaces(self, bare_jid: str, device_id: int, active: Dict[str, bool]) -> None:
        """Store the namespaces of a device, given as its ``active`` mapping (written first)."""
        prefix = self._prefix(bare_jid, device_id)
        try:
            await self._storage.store(f"{prefix}/active", dict(active))
            await self._storage.store(f"{prefix}/namespaces", list(active))
        finally:
            self._written(bare_jid, device_id)

    async def store_label(self, bare_jid: str, device_id: int, label: Optional[str]) -> None:
        """Store the (verified or unsigned-by-design) label of a device."""
        await self._store_field(bare_jid, device_id, "label", label, label=label)

    async def store_identity_key(self, bare_jid: str, device_id: int, identity_key: bytes) -> None:
        """Store the identity key of a device."""
        try:
            await self._storage.store_bytes(f"{self._prefix(bare_jid, device_id)}/identity_key", identity_key)
        finally:
            self._written(bare_jid, device_id)

    async def store_last_namespace(self, bare_jid: str, device_id: int, namespace: str) -> None:
        """Store the namespace of the last message with content decrypted from a device."""
        await self._store_field(bare_jid, device_id, "last_namespace", namespace, last_namespace=namespace)

    async def store_answered(self, bare_jid: str, device_id: int, answered: Dict[str, int]) -> None:
        """Store the ``answered`` baselines of a device (see :class:`DeviceRecord`)."""
        await self._store_field(bare_jid, device_id, "answered", dict(answered), answered=dict(answered))

    async def _time(self, key: str) -> Optional[float]:
        """A stored device time; one of another type (not written by us) counts as unknown."""
        try:
            return (await self._storage.load_optional(key, float)).maybe(None)
        except TypeError:
            _log.warning("ignoring a malformed device time record")
            return None

    async def store_time(self, bare_jid: str, device_id: int, which: str, when: float) -> None:
        """Store ``last_heard`` or ``first_seen`` of a device (Unix time)."""
        if which not in ("last_heard", "first_seen"):
            raise ValueError(f"not a device time: {which!r}")
        await self._store_field(bare_jid, device_id, which, float(when), **{which: float(when)})

    async def pending_label(self, bare_jid: str, device_id: int) -> Optional[PendingLabel]:
        """Returns: the signed label awaiting verification, if any (malformed records are ignored)."""
        raw = (await self._storage.load(f"{self._prefix(bare_jid, device_id)}/unverified_label")).maybe(None)
        if not isinstance(raw, Mapping):
            return None
        namespace, label, signature = raw.get("namespace"), raw.get("label"), raw.get("signature")
        if not (isinstance(namespace, str) and isinstance(label, str) and isinstance(signature, str)):
            return None
        try:
            signature_bytes = base64.urlsafe_b64decode(signature.encode("ascii"))
        except (binascii.Error, ValueError):
            return None
        return PendingLabel(namespace, SignedLabel(label, signature_bytes))

    async def store_pending_label(
        self, bare_jid: str, device_id: int, pending: Optional[PendingLabel]
    ) -> None:
        """Store (or, with ``None``, delete) the signed label awaiting verification."""
        key = f"{self._prefix(bare_jid, device_id)}/unverified_label"
        if pending is None:
            await self._storage.delete(key)
        else:
            await self._storage.store(
                key,
                {
                    "namespace": pending.namespace,
                    "label": pending.label.label,
                    "signature": _b64(pending.label.signature),
                },
            )

    async def delete_device(self, bare_jid: str, device_id: int) -> None:
        """Delete every record of a device (not the id list)."""
        prefix = self._prefix(bare_jid, device_id)
        try:
            for suffix in _DEVICE_KEYS:
                await self._storage.delete(f"{prefix}/{suffix}")
        finally:
            self._written(bare_jid, device_id)

    async def delete_device_ids(self, bare_jid: str) -> None:
        """Delete the device id list of ``bare_jid``."""
        try:
            await self._storage.delete(f"/devices/{bare_jid}/list")
        finally:
            self._written(bare_jid)

    async def trust(self, bare_jid: str, identity_key: bytes, default: str) -> str:
        """Returns: the custom trust level name of an identity key, ``default`` when none is stored."""
        self.used.add(bare_jid)
        key = (bare_jid, identity_key)
        if key in self._trust:
            cached = self._trust[key]
            return default if cached is None else cached
        writes = self._writes
        name = (await self._storage.load_primitive(f"/trust/{bare_jid}/{_b64(identity_key)}", str)).maybe(
            None
        )
        if writes == self._writes:
            self._trust[key] = name
        return default if name is None else name

    async def store_trust(self, bare_jid: str, identity_key: bytes, trust_level_name: str) -> None:
        """Store the custom trust level name of an identity key."""
        try:
            await self._storage.store(f"/trust/{bare_jid}/{_b64(identity_key)}", trust_level_name)
        finally:
            self._writes += 1
            self._trust.pop((bare_jid, identity_key), None)

    async def delete_trust(self, bare_jid: str, identity_key: bytes) -> None:
        """Delete the trust record of an identity key."""
        try:
            await self._storage.delete(f"/trust/{bare_jid}/{_b64(identity_key)}")
        finally:
            self._writes += 1
            self._trust.pop((bare_jid, identity_key), None)


class HistorySyncQueue:
    """The persistent set of sessions owed an empty message once history synchronisation ends."""

    def __init__(self, storage: Storage) -> None:
        """Args:
        storage: the storage of the session manager.
        """
        self._storage = storage

    async def bare_jids(self, namespace: str) -> List[str]:
        """Returns: the bare JIDs with queued devices in ``namespace``."""
        return (await self._storage.load_list(f"/queue/{namespace}", str)).maybe([])

    async def device_ids(self, namespace: str, bare_jid: str) -> List[int]:
        """Returns: the queued device ids of ``bare_jid`` in ``namespace``."""
        return (await self._storage.load_list(f"/queue/{namespace}/{bare_jid}", int)).maybe([])

    async def entries(self, namespace: str) -> List[Tuple[str, int]]:
        """Returns: every queued ``(bare_jid, device_id)`` of ``namespace``."""
        return [
            (jid, dev)
            for jid in await self.bare_jids(namespace)
            for dev in await self.device_ids(namespace, jid)
        ]

    async def add(self, namespace: str, bare_jid: str, device_id: int) -> None:
        """Queue a device (no duplicates). The device list is written before the JID list."""
        devices = await self.device_ids(namespace, bare_jid)
        if device_id not in devices:
            await self._storage.store(f"/queue/{namespace}/{bare_jid}", [*devices, device_id])
        jids = await self.bare_jids(namespace)
        if bare_jid not in jids:
            await self._storage.store(f"/queue/{namespace}", [*jids, bare_jid])

    async def remove(self, namespace: str, bare_jid: str, device_id: int) -> None:
        """Unqueue a device; a JID without queued devices is dropped from the JID list."""
        devices = [dev for dev in await self.device_ids(namespace, bare_jid) if dev != device_id]
        if devices:
            await self._storage.store(f"/queue/{namespace}/{bare_jid}", devices)
            return
        await self.remove_bare_jid(namespace, bare_jid)

    async def remove_bare_jid(self, namespace: str, bare_jid: str) -> None:
        """Unqueue every device of a JID."""
        jids = await self.bare_jids(namespace)
        if bare_jid in jids:
            await self._storage.store(f"/queue/{namespace}", [jid for jid in jids if jid != bare_jid])
        await self._storage.delete(f"/queue/{namespace}/{bare_jid}")
