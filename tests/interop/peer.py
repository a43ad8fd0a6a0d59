"""One OMEMO device behind a line-based JSON RPC, for interop tests and API-level benchmarks.

The same script runs under either interpreter: the project's virtualenv (importing our ``omemo``,
``twomemo`` and ``oldmemo``) or a virtualenv with the reference stack (PyPI omemo/twomemo/oldmemo
2.1.0). It only uses the public API that both provide, so it cannot tell them apart.

Protocol: one JSON object per line.

- request: ``{"id": N, "cmd": "NAME", "args": {...}}`` on stdin;
- response: ``{"id": N, "ok": true, "result": ..., "elapsed": SECONDS, "events": {...}}`` or
  ``{"id": N, "ok": false, "error": {"type", "module", "mro", "message", "cause", "traceback"},
  "events": {...}}`` on the original stdout. Anything a library prints goes to stderr instead.

``elapsed`` is the time spent inside the command (for API-level benchmarks, without the RPC and
the storage file write). ``events`` carries what the device did as a side effect of the command,
drained with every response: ``publications`` (PEP items it published: device lists, bundles,
bundle deletions),
``outbox`` (automatic messages the library sent through ``_send_message``) and ``warnings``
(e.g. PEP data it could not parse). Only XML text produced by the backends' own ``etree``
serialisers leaves the process.

The XMPP hooks of the session manager work against a local *directory* of PEP data that the test
harness pushes in with ``import``; the harness plays the XMPP server. The hooks are static methods
in the python-omemo API, so one process hosts exactly one device (module-level state).

Commands (arguments in brackets are optional):

- ``hello`` -> interpreter and the import locations/versions of omemo, twomemo, oldmemo.
- ``create`` jid, backends (list of "twomemo"/"oldmemo", priority order), [storage] (JSON file
  path; reloaded if it exists, so a killed peer restarts from it), [trust] ("blind" (default),
  "distrust" or "manual"), [max_skipped_per_session], [max_skipped_per_message], [label],
  [stay_in_history_sync], [signed_pre_key_rotation_period], [pre_key_refill_threshold].
- ``import`` items (publications of others), [notify] (default true: feed device lists to
  ``update_device_list`` like a PEP notification, for loaded namespaces only).
- ``publications`` / ``outbox`` -> drain the queues explicitly (normally they arrive as events).
- ``encrypt`` recipients, plaintext (base64, for every loaded namespace) or plaintexts
  ({namespace: base64}), [priority], [identifier] -> {messages: [{namespace, from, from_device,
  xml}], errors: [{namespace, jid, device_id, error}]}.
- ``decrypt`` namespace, xml, sender -> {plaintext: base64 or null, sender: device info}.
- ``get_device_information`` jid; ``get_own_device_information``; ``set_trust`` jid,
  (device_id | identity_key), level; ``replace_sessions`` jid, device_id;
  ``get_sending_chain_length`` jid, device_id; ``refresh_device_list`` namespace, jid;
  ``ensure_data_consistency``; ``before_history_sync``; ``after_history_sync``.
- ``fault`` hooks ({hook name: bool}) -> make XMPP hooks fail with their documented exception.
- ``stats`` -> storage operation counters; ``shutdown``; ``exit`` (shutdown, then end the process).

Trust levels are the names "trusted", "distrusted" and "undecided" (the undecided name).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

import oldmemo
import omemo
import twomemo
from oldmemo import etree as oldmemo_etree
from oldmemo import oldmemo as oldmemo_module
from twomemo import etree as twomemo_etree
from twomemo import twomemo as twomemo_module

__all__ = ["JSONFileStorage", "main"]

log = logging.getLogger("interop.peer")

TRUSTED = "trusted"
DISTRUSTED = "distrusted"
UNDECIDED = "undecided"
TRUST_LEVELS = {
    TRUSTED: omemo.TrustLevel.TRUSTED,
    DISTRUSTED: omemo.TrustLevel.DISTRUSTED,
    UNDECIDED: omemo.TrustLevel.UNDECIDED,
}

HOOK_NAMES = (
    "upload_bundle",
    "download_bundle",
    "delete_bundle",
    "upload_device_list",
    "download_device_list",
    "send_message",
)


# --------------------------------------------------------------------------------------------------
# Storage


class JSONFileStorage(omemo.Storage):
    """In-memory key/value storage holding only JSON values, optionally mirrored to a file.

    Every stored value is round-tripped through ``json`` at once, so a value that a real JSON or
    SQL storage could not hold fails loudly (``StorageException``) instead of silently working in
    memory. The file is rewritten atomically by :meth:`flush`, which the RPC loop calls after each
    command, so a peer killed between commands restarts from exactly the state it acknowledged.
    """

    def __init__(self, path: Optional[str] = None) -> None:
        """Open the storage.

        Args:
            path: JSON file to load from (if it exists) and to flush to; ``None`` for memory only.
        """
        super().__init__(disable_cache=True)
        self._path = path
        self._data: Dict[str, Any] = {}
        self._dirty = False
        self.counters = {"load": 0, "store": 0, "delete": 0, "flush": 0}
        if path is not None and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                loaded = json.load(f)
            if not isinstance(loaded, dict):
                raise ValueError(f"storage file {path} does not hold a JSON object")
            self._data = loaded

    async def _load(self, key: str) -> omemo.Maybe[omemo.JSONType]:
        self.counters["load"] += 1
        if key in self._data:
            return omemo.Just(self._data[key])
        return omemo.Nothing()

    async def _store(self, key: str, value: omemo.JSONType) -> None:
        self.counters["store"] += 1
        try:
            self._data[key] = json.loads(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError) as e:
            raise omemo.StorageException(
                f"value stored under {key!r} is not JSON ({type(e).__name__}: {e})"
            ) from e
        self._dirty = True

    async def _delete(self, key: str) -> None:
        self.counters["delete"] += 1
        self._data.pop(key, None)
        self._dirty = True

    def flush(self) -> None:
        """Write the data to the file (atomically), if there is a file and anything changed."""
        if self._path is None or not self._dirty:
            return
        tmp = f"{self._path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self._data, f, sort_keys=True)
        os.replace(tmp, self._path)
        self._dirty = False
        self.counters["flush"] += 1

    def size(self) -> Tuple[int, int]:
        """Returns: the number of keys and the size of the JSON text in characters."""
        return len(self._data), len(json.dumps(self._data))


# --------------------------------------------------------------------------------------------------
# Backends and the XMPP side


@dataclass(frozen=True)
class _BackendKind:
    name: str
    namespace: str
    factory: Callable[..., omemo.Backend]
    # The backend's ``etree`` module, typed loosely on purpose: its parameter types name
    # implementation classes that are not part of the shared API.
    etree: Any


_KINDS = {
    kind.name: kind
    for kind in (
        _BackendKind("twomemo", twomemo_module.NAMESPACE, twomemo.Twomemo, twomemo_etree),
        _BackendKind("oldmemo", oldmemo_module.NAMESPACE, oldmemo.Oldmemo, oldmemo_etree),
    )
}
_BY_NAMESPACE = {kind.namespace: kind for kind in _KINDS.values()}


def _kind(namespace: str) -> _BackendKind:
    try:
        return _BY_NAMESPACE[namespace]
    except KeyError:
        raise omemo.UnknownNamespace(f"namespace {namespace!r} is not known to the interop peer") from None


def _to_xml(element: ET.Element) -> str:
    return ET.tostring(element, encoding="unicode")


@dataclass
class _World:
    """What the static XMPP hooks see: this device's view of the XMPP server."""

    own_jid: str = ""
    device_id: int = 0
    trust: str = "blind"
    device_lists: Dict[Tuple[str, str], str] = field(default_factory=dict)
    bundles: Dict[Tuple[str, str, int], str] = field(default_factory=dict)
    publications: List[Dict[str, Any]] = field(default_factory=list)
    outbox: List[Dict[str, Any]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    faults: Dict[str, bool] = field(default_factory=dict)

    def publish(self, item: Dict[str, Any]) -> None:
        """Queue a publication; with ``OMEMO_PEER_JOURNAL`` set, also append it to that file (synced)
        before the hook returns, as a server's acknowledgement would: a peer killed before its response
        still leaves what it published (the crash tests read the journal)."""
        self.publications.append(item)
        journal = os.environ.get("OMEMO_PEER_JOURNAL")
        if journal:
            with open(journal, "a", encoding="utf-8") as f:
                f.write(json.dumps(item) + "\n")
                f.flush()
                os.fsync(f.fileno())

    def check_fault(self, hook: str, exception: Callable[[str], Exception]) -> None:
        if self.faults.get(hook):
            raise exception(f"injected fault in _{hook}")

    def drain(self) -> Dict[str, List[Any]]:
        events: Dict[str, List[Any]] = {}
        for name in ("publications", "outbox", "warnings"):
            queue: List[Any] = getattr(self, name)
            if queue:
                events[name] = list(queue)
                queue.clear()
        return events


WORLD = _World()


class PeerSessionManager(omemo.SessionManager):
    """Session manager whose XMPP hooks talk to :data:`WORLD` (the harness-fed PEP directory)."""

    @staticmethod
    async def _upload_bundle(bundle: omemo.Bundle) -> None:
        WORLD.check_fault("upload_bundle", omemo.BundleUploadFailed)
        xml = _to_xml(_kind(bundle.namespace).etree.serialize_bundle(bundle))
        WORLD.bundles[(bundle.namespace, bundle.bare_jid, bundle.device_id)] = xml
        WORLD.publish(
            {
                "kind": "bundle",
                "namespace": bundle.namespace,
                "jid": bundle.bare_jid,
                "device_id": bundle.device_id,
                "xml": xml,
            }
        )

    @staticmethod
    async def _download_bundle(namespace: str, bare_jid: str, device_id: int) -> omemo.Bundle:
        WORLD.check_fault("download_bundle", omemo.BundleDownloadFailed)
        kind = _kind(namespace)
        xml = WORLD.bundles.get((namespace, bare_jid, device_id))
        if xml is None:
            raise omemo.BundleNotFound(f"no {kind.name} bundle published for {bare_jid}/{device_id}")
        try:
            bundle: omemo.Bundle = kind.etree.parse_bundle(ET.fromstring(xml), bare_jid, device_id)
        except Exception as e:
            WORLD.warnings.append(
                f"cannot parse {kind.name} bundle of {bare_jid}/{device_id}: {type(e).__name__}: {e}"
            )
            raise omemo.BundleDownloadFailed(
                f"malformed {kind.name} bundle of {bare_jid}/{device_id}: {type(e).__name__}: {e}"
            ) from e
        return bundle

    @staticmethod
    async def _delete_bundle(namespace: str, device_id: int) -> None:
        WORLD.check_fault("delete_bundle", omemo.BundleDeletionFailed)
        _kind(namespace)
        WORLD.bundles.pop((namespace, WORLD.own_jid, device_id), None)
        WORLD.publish(
            {"kind": "bundle_deleted", "namespace": namespace, "jid": WORLD.own_jid, "device_id": device_id}
        )

    @staticmethod
    async def _upload_device_list(namespace: str, device_list: Dict[int, Any]) -> None:
        WORLD.check_fault("upload_device_list", omemo.DeviceListUploadFailed)
        xml = _to_xml(_kind(namespace).etree.serialize_device_list(device_list))
        WORLD.device_lists[(namespace, WORLD.own_jid)] = xml
        WORLD.publish({"kind": "device_list", "namespace": namespace, "jid": WORLD.own_jid, "xml": xml})

    @staticmethod
    async def _download_device_list(namespace: str, bare_jid: str) -> Dict[int, Any]:
        WORLD.check_fault("download_device_list", omemo.DeviceListDownloadFailed)
        kind = _kind(namespace)
        xml = WORLD.device_lists.get((namespace, bare_jid))
        if xml is None:
            return {}
        return _parse_device_list(kind, bare_jid, xml)

    async def _evaluate_custom_trust_level(self, device: omemo.DeviceInformation) -> omemo.TrustLevel:
        try:
            return TRUST_LEVELS[device.trust_level_name]
        except KeyError:
            raise omemo.UnknownTrustLevel(f"unknown trust level name {device.trust_level_name!r}") from None

    async def _make_trust_decision(
        self, undecided: FrozenSet[omemo.DeviceInformation], identifier: Optional[str]
    ) -> None:
        if WORLD.trust == "manual":
            raise omemo.TrustDecisionFailed(f"manual trust policy: {len(undecided)} device(s) undecided")
        level = DISTRUSTED if WORLD.trust == "distrust" else TRUSTED
        for device in undecided:
            await self.set_trust(device.bare_jid, device.identity_key, level)

    @staticmethod
    async def _send_message(message: omemo.Message, bare_jid: str) -> None:
        WORLD.check_fault("send_message", omemo.MessageSendingFailed)
        WORLD.outbox.append(
            {
                "namespace": message.namespace,
                "from": message.bare_jid,
                "from_device": message.device_id,
                "to": bare_jid,
                "xml": _to_xml(_kind(message.namespace).etree.serialize_message(message)),
            }
        )


def _parse_device_list(kind: _BackendKind, bare_jid: str, xml: str) -> Dict[int, Any]:
    try:
        device_list: Dict[int, Any] = kind.etree.parse_device_list(ET.fromstring(xml))
    except Exception as e:
        WORLD.warnings.append(f"cannot parse {kind.name} device list of {bare_jid}: {type(e).__name__}: {e}")
        raise omemo.DeviceListDownloadFailed(
            f"malformed {kind.name} device list of {bare_jid}: {type(e).__name__}: {e}"
        ) from e
    return device_list


# --------------------------------------------------------------------------------------------------
# RPC


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _error(e: BaseException) -> Dict[str, Any]:
    cause = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return {
        "type": type(e).__name__,
        "module": type(e).__module__,
        "mro": [cls.__name__ for cls in type(e).__mro__],
        "message": str(e),
        "cause": None if cause is None else f"{type(cause).__name__}: {cause}",
        "traceback": "".join(traceback.format_exception(type(e), e, e.__traceback__)),
    }


def _device(info: omemo.DeviceInformation) -> Dict[str, Any]:
    return {
        "jid": info.bare_jid,
        "device_id": info.device_id,
        "namespaces": sorted(info.namespaces),
        "active": dict(sorted(info.active)),
        "identity_key": _b64(info.identity_key),
        "fingerprint": " ".join(omemo.SessionManager.format_identity_key(info.identity_key)),
        "trust_level_name": info.trust_level_name,
        "label": info.label,
    }


def _module_info(module: Any) -> Dict[str, Any]:
    version = getattr(module, "__version__", None)
    return {
        "file": getattr(module, "__file__", None),
        "version": version if isinstance(version, str) else repr(version),
    }


class PeerError(Exception):
    """A command was used wrongly (unknown command, missing argument, no session manager yet)."""


async def _open_storage(spec: Optional[str]) -> Any:
    """The peer's storage: a JSON file path (default), or (our stack only, for the crash tests)
    ``sqlite:PATH`` or ``postgres:DSN#ACCOUNT``, whose writes land while a command runs."""
    if spec is not None and spec.startswith("sqlite:"):
        from omemo.storages import SQLiteStorage

        return SQLiteStorage(spec[len("sqlite:") :])
    if spec is not None and spec.startswith("postgres:"):
        import asyncpg

        from omemo.storages import PostgreSQLStorage

        dsn, account = spec[len("postgres:") :].rsplit("#", 1)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        return await PostgreSQLStorage.open(pool, account)
    return JSONFileStorage(spec)


class Peer:
    """The RPC command handlers of one device."""

    def __init__(self) -> None:
        self.storage: Optional[Any] = None  # JSONFileStorage, or a ready storage of ours (crash tests)
        self.sm: Optional[PeerSessionManager] = None
        self.namespaces: List[str] = []
        self.exiting = False

    def _sm(self) -> PeerSessionManager:
        if self.sm is None:
            raise PeerError("no session manager: call 'create' first")
        return self.sm

    async def handle(self, request: Dict[str, Any]) -> Dict[str, Any]:
        """Run one request and build its response (never raises for errors inside the command).

        Args:
            request: the decoded request object.

        Returns:
            The response object, with the side-effect events drained.
        """
        response: Dict[str, Any] = {"id": request.get("id")}
        try:
            cmd = request.get("cmd")
            handler = getattr(self, f"cmd_{cmd}", None) if isinstance(cmd, str) else None
            if handler is None:
                raise PeerError(f"unknown command {cmd!r}")
            args = request.get("args") or {}
            if not isinstance(args, dict):
                raise PeerError("'args' must be a JSON object")
            started = time.perf_counter()
            response["result"] = await handler(**args)
            response["elapsed"] = time.perf_counter() - started
            response["ok"] = True
        except Exception as e:
            log.debug("command %r failed", request.get("cmd"), exc_info=True)
            response["ok"] = False
            response["error"] = _error(e)
        try:
            if isinstance(self.storage, JSONFileStorage):
                self.storage.flush()
        except Exception as e:
            response["ok"] = False
            response["error"] = _error(e)
        response["events"] = WORLD.drain()
        return response

    async def cmd_hello(self) -> Dict[str, Any]:
        return {
            "pid": os.getpid(),
            "python": sys.version,
            "executable": sys.executable,
            "omemo": _module_info(omemo),
            "twomemo": _module_info(twomemo),
            "oldmemo": _module_info(oldmemo),
        }

    async def cmd_create(
        self,
        *,
        jid: str,
        backends: List[str],
        storage: Optional[str] = None,
        trust: str = "blind",
        max_skipped_per_session: int = 1000,
        max_skipped_per_message: Optional[int] = None,
        label: Optional[str] = None,
        stay_in_history_sync: bool = False,
        signed_pre_key_rotation_period: int = 7 * 24 * 60 * 60,
        pre_key_refill_threshold: int = 99,
        stale_device_messages: Optional[int] = None,
    ) -> Dict[str, Any]:
        if self.sm is not None:
            raise PeerError("a session manager exists already in this peer")
        if trust not in ("blind", "distrust", "manual"):
            raise PeerError(f"unknown trust policy {trust!r}")
        unknown = [name for name in backends if name not in _KINDS]
        if unknown:
            raise PeerError(f"unknown backend(s) {unknown}; known: {sorted(_KINDS)}")
        WORLD.own_jid = jid
        WORLD.trust = trust
        self.storage = await _open_storage(storage)
        backend_objects: List[omemo.Backend] = []
        for name in backends:
            limits: Dict[str, Any] = {"max_num_per_session_skipped_keys": max_skipped_per_session}
            # Passed only when asked for: the reference rejects most explicit values (PROTOCOL.md §6.1).
            if max_skipped_per_message is not None:
                limits["max_num_per_message_skipped_keys"] = max_skipped_per_message
            backend_objects.append(_KINDS[name].factory(self.storage, **limits))
        self.sm = await PeerSessionManager.create(
            backend_objects,
            self.storage,
            jid,
            label,
            UNDECIDED,
            signed_pre_key_rotation_period=signed_pre_key_rotation_period,
            pre_key_refill_threshold=pre_key_refill_threshold,
        )
        if stale_device_messages is not None:
            # Our stack's staleness threshold (omemo.hygiene); the reference has no such rule.
            PeerSessionManager.STALE_DEVICE_MESSAGES = stale_device_messages
        self.namespaces = [_KINDS[name].namespace for name in backends]
        if not stay_in_history_sync:
            await self.sm.after_history_sync()
        own, _ = await self.sm.get_own_device_information()
        WORLD.device_id = own.device_id
        return {**_device(own), "namespaces_loaded": self.namespaces}

    async def cmd_import(self, items: List[Dict[str, Any]], notify: bool = True) -> Dict[str, Any]:
        notified = 0
        for item in items:
            kind, namespace, jid = item["kind"], item["namespace"], item["jid"]
            if kind == "device_list":
                WORLD.device_lists[(namespace, jid)] = item["xml"]
                if notify and self.sm is not None and namespace in self.namespaces:
                    device_list = _parse_device_list(_kind(namespace), jid, item["xml"])
                    await self.sm.update_device_list(namespace, jid, device_list)
                    notified += 1
            elif kind == "bundle":
                WORLD.bundles[(namespace, jid, int(item["device_id"]))] = item["xml"]
            elif kind == "bundle_deleted":
                WORLD.bundles.pop((namespace, jid, int(item["device_id"])), None)
            else:
                raise PeerError(f"unknown publication kind {kind!r}")
        return {"imported": len(items), "notified": notified}

    async def cmd_publications(self) -> List[Dict[str, Any]]:
        drained = list(WORLD.publications)
        WORLD.publications.clear()
        return drained

    async def cmd_outbox(self) -> List[Dict[str, Any]]:
        drained = list(WORLD.outbox)
        WORLD.outbox.clear()
        return drained

    async def cmd_encrypt(
        self,
        recipients: List[str],
        plaintext: Optional[str] = None,
        plaintexts: Optional[Dict[str, str]] = None,
        priority: Optional[List[str]] = None,
        identifier: Optional[str] = None,
    ) -> Dict[str, Any]:
        sm = self._sm()
        if plaintexts is not None:
            by_namespace = {namespace: _unb64(text) for namespace, text in plaintexts.items()}
        elif plaintext is not None:
            by_namespace = dict.fromkeys(self.namespaces, _unb64(plaintext))
        else:
            raise PeerError("encrypt needs 'plaintext' or 'plaintexts'")
        messages, errors = await sm.encrypt(frozenset(recipients), by_namespace, priority, identifier)
        return {
            "messages": [
                {
                    "namespace": message.namespace,
                    "from": message.bare_jid,
                    "from_device": message.device_id,
                    "xml": _to_xml(_kind(message.namespace).etree.serialize_message(message)),
                }
                for message in messages
            ],
            "errors": sorted(
                (
                    {
                        "namespace": error.namespace,
                        "jid": error.bare_jid,
                        "device_id": error.device_id,
                        "error": _error(error.exception),
                    }
                    for error in errors
                ),
                key=lambda entry: (entry["namespace"], entry["jid"], entry["device_id"]),
            ),
        }

    async def cmd_decrypt(
        self, namespace: str, xml: str, sender: str, handover: Optional[str] = None
    ) -> Dict[str, Any]:
        """Decrypt; with ``handover`` (our stack: a storage key), the plaintext is stored under that key in
        the transaction that commits the decryption (``decrypt_with_handover``)."""
        sm = self._sm()
        kind = _kind(namespace)
        element = ET.fromstring(xml)
        message: omemo.Message
        if kind.name == "oldmemo":
            message = await kind.etree.parse_message(element, sender, WORLD.own_jid, sm)
        else:
            message = kind.etree.parse_message(element, sender)
        if handover is None:
            plaintext, device, _ = await sm.decrypt(message)
        else:
            storage = self.storage
            if storage is None:
                raise PeerError("no storage")

            async def store(text: Optional[bytes], _device: Any) -> None:
                await storage.store(handover, None if text is None else _b64(text))

            plaintext, device, _ = await sm.decrypt_with_handover(message, store)  # type: ignore[attr-defined, unused-ignore]
        return {"plaintext": None if plaintext is None else _b64(plaintext), "sender": _device(device)}

    async def cmd_stored(self, key: str) -> Any:
        """The value stored under ``key`` (None if absent): what a handover stored."""
        storage = self.storage
        if storage is None:
            raise PeerError("no storage")
        return (await storage.load(key)).maybe(None)

    async def cmd_get_device_information(self, jid: str) -> List[Dict[str, Any]]:
        devices = await self._sm().get_device_information(jid)
        return sorted((_device(device) for device in devices), key=lambda entry: int(entry["device_id"]))

    async def cmd_get_own_device_information(self) -> Dict[str, Any]:
        own, others = await self._sm().get_own_device_information()
        return {
            "own": _device(own),
            "others": sorted(
                (_device(device) for device in others), key=lambda entry: int(entry["device_id"])
            ),
        }

    async def _find_device(self, jid: str, device_id: int) -> omemo.DeviceInformation:
        for device in await self._sm().get_device_information(jid):
            if device.device_id == device_id:
                return device
        raise PeerError(f"device {jid}/{device_id} is not known (or its bundle cannot be downloaded)")

    async def cmd_set_trust(
        self, jid: str, level: str, device_id: Optional[int] = None, identity_key: Optional[str] = None
    ) -> None:
        if identity_key is not None:
            key = _unb64(identity_key)
        elif device_id is not None:
            key = (await self._find_device(jid, device_id)).identity_key
        else:
            raise PeerError("set_trust needs 'device_id' or 'identity_key'")
        await self._sm().set_trust(jid, key, level)

    async def cmd_replace_sessions(self, jid: str, device_id: int) -> Dict[str, Any]:
        failures = await self._sm().replace_sessions(await self._find_device(jid, device_id))
        return {namespace: _error(error) for namespace, error in failures.items()}

    async def cmd_get_sending_chain_length(self, jid: str, device_id: int) -> Dict[str, Optional[int]]:
        return dict(await self._sm().get_sending_chain_length(await self._find_device(jid, device_id)))

    async def cmd_refresh_device_list(self, namespace: str, jid: str) -> None:
        await self._sm().refresh_device_list(namespace, jid)

    async def cmd_ensure_data_consistency(self) -> None:
        await self._sm().ensure_data_consistency()

    async def cmd_before_history_sync(self) -> None:
        self._sm().before_history_sync()

    async def cmd_after_history_sync(self) -> None:
        await self._sm().after_history_sync()

    async def cmd_fault(self, hooks: Dict[str, bool]) -> Dict[str, bool]:
        unknown = sorted(set(hooks) - set(HOOK_NAMES))
        if unknown:
            raise PeerError(f"unknown hook(s) {unknown}; known: {list(HOOK_NAMES)}")
        WORLD.faults.update(hooks)
        return dict(WORLD.faults)

    async def cmd_stats(self) -> Dict[str, Any]:
        if not isinstance(self.storage, JSONFileStorage):
            return {}
        keys, chars = self.storage.size()
        return {**self.storage.counters, "keys": keys, "chars": chars}

    async def cmd_shutdown(self) -> None:
        if self.sm is not None:
            await self.sm.shutdown()
            self.sm = None

    async def cmd_exit(self) -> None:
        await self.cmd_shutdown()
        self.exiting = True


async def _serve(rpc_in: Any, rpc_out: Any) -> None:
    loop = asyncio.get_running_loop()
    peer = Peer()
    while not peer.exiting:
        line: str = await loop.run_in_executor(None, rpc_in.readline)
        if not line:
            break
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request must be a JSON object")
        except ValueError as e:
            response: Dict[str, Any] = {"id": None, "ok": False, "error": _error(e), "events": {}}
        else:
            response = await peer.handle(request)
        try:
            text = json.dumps(response)
        except (TypeError, ValueError) as e:  # a result that is not JSON: report it, keep serving
            text = json.dumps(
                {"id": response["id"], "ok": False, "error": _error(e), "events": response["events"]}
            )
        rpc_out.write(text + "\n")
        rpc_out.flush()
    await peer.cmd_shutdown()


def main() -> None:
    """Serve the RPC on stdin / the original stdout until EOF or ``exit``."""
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("OMEMO_INTEROP_PEER_LOG", "WARNING").upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    # Keep the RPC channel clean: whatever anything prints goes to stderr from here on.
    rpc_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    asyncio.run(_serve(sys.stdin, rpc_out))


if __name__ == "__main__":
    main()
