"""Migration of pre-1.0 python-omemo data (with python-omemo-backend-signal) into this stack.

Usage (call it on every start, before :meth:`omemo.SessionManager.create` on the same storage)::

    import oldmemo.migrations

    await oldmemo.migrations.migrate(
        MyLegacyStorage(...), storage, "TRUSTED", "UNDECIDED", "DISTRUSTED", download_bundle
    )

What is carried over: the device id and the identity key (``/ikp/key`` holds the legacy private
scalar, ``/ikp/is_seed`` is false), the signed pre key and the one-time pre keys with their ids, every
device in the legacy device lists whose current bundle confirms its identity key (device record,
trust level, device list), and the sessions with those devices, including their skipped message keys.
Core data is written in python-omemo's storage layout (``/own_device_id``, ``/devices/...``,
``/trust/...``), the backend's state in ours (``/eu.siacs.conversations.axolotl/keys`` and
``.../session/{bare_jid}/{device_id}``), converted and validated during the migration.

What is not: devices whose bundle cannot be downloaded or whose identity key changed (dropped with
their legacy session and trust), pending pre-key messages (``pk_messages``), and anything of devices
that are in neither legacy device list. Legacy trust was binary, so it maps to the three trust-level
names given; the legacy own bare JID is not compared with the account later used.

Behaviour that differs from the reference implementation (its defects, LEGACY-MIGRATION.md 3):

- D1/D2: the own device record, its entry in the own device list and its trust entry are always
  written, whether or not the legacy device lists (or ``listJIDs()``) mention the own device;
- D3: a legacy storage with own data but no state is left alone (a warning is logged): nothing
  can be carried over without keys, and the next ``SessionManager.create`` sets up a new device;
- D4/D8: device lists are merged with what is stored already, never overwritten, and a session or
  key state that an earlier (failed) run stored is not replaced by the legacy one again, so a run
  that fails anywhere can simply be repeated;
- D5: device ids may be ints or decimal strings (``bound_otpks``, device lists);
- D6: a legacy signed pre key signed for the sign-0 form of the identity key is signed again for
  the form we publish, so the migrated bundle is valid at once;
- D7: sessions are converted during the migration; one that cannot be converted is left out (and
  logged) instead of failing later when it is loaded;
- ``omemo.BundleNotFound`` from ``download_bundle`` counts as "unavailable" like
  ``omemo.BundleDownloadFailed`` (the two are siblings in python-omemo's exception tree).

Writing a :class:`LegacyStorage` adapter: ``listJIDs`` must return real bare JIDs (the legacy
``JSONFileStorage`` listed hashed directory names); ``loadActiveDevices`` may return any iterable of
device ids; return device ids as ints where possible (strings of digits are tolerated); every deleter
must succeed when there is nothing to delete, and ``listJIDs`` must return None after
``deleteJIDList``.
"""

from __future__ import annotations

import base64
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, TypedDict

from omemo._engine import legacy_convert as convert
from omemo._engine.records import UNKNOWN_SPK_ID
from omemo.backend import SessionDamaged
from omemo.session import Initiation
from omemo.session_manager import BundleDownloadFailed, BundleNotFound
from omemo.storage import Storage
from omemo.types import JSONType
from omemo_engine import xeddsa
from omemo_engine.errors import InvalidKey, InvalidState

from .oldmemo import NAMESPACE, BundleImpl, KeyExchangeImpl, Oldmemo, SessionImpl

# The order of the reference module (LEGACY-MIGRATION.md 1.1).
__all__ = [  # noqa: RUF022
    "OwnData",
    "Trust",
    "Session",
    "BoundOTPK",
    "StateSuper",
    "State",
    "LegacyStorage",
    "migrate",
]

_log = logging.getLogger("oldmemo.migrations")

#: A JSON object, as the legacy python-x3dh / python-doubleratchet serialisations are.
JSONObject = Mapping[str, JSONType]

#: Placeholder for the unknown public keys of a migrated key exchange.
_UNKNOWN_KEY = bytes(convert.KEY_LENGTH)
#: Pre key id stored for migrated ACTIVE sessions. The reference stores -1; our session record holds
#: an unsigned id, so 0 stands for "unknown" (like -1 it is outside the valid range 1 .. 2^31 - 1, and
#: the key exchange of an ACTIVE session is never compared with an incoming one).
_UNKNOWN_PRE_KEY_ID = 0


# -- the legacy data (typed as the legacy python-omemo Storage returned it) ----------------------------


class OwnData(TypedDict):
    """The legacy own data: the account and the device id (it becomes ``/own_device_id``)."""

    own_bare_jid: str
    own_device_id: int


class Trust(TypedDict):
    """A legacy trust entry.

    ``key`` is the standard base64 of the device's Curve25519 identity key (no 0x05 prefix);
    ``trusted`` true means trusted, false distrusted (no entry: undecided).
    """

    key: str
    trusted: bool


class Session(TypedDict):
    """A legacy session: the python-doubleratchet 0.7 ``DoubleRatchet`` serialisation and the peer's
    Curve25519 identity key (standard base64)."""

    super: JSONObject
    other_ik: str


class BoundOTPK(TypedDict):
    """The pre key (standard base64 of its Curve25519 public key, and its id) a passive session used."""

    otpk: str
    id: int


class StateSuper(TypedDict):
    """The python-x3dh 0.5 ``State`` serialisation and the id bookkeeping of omemo-backend-signal.

    ``spk_pub`` is None if the legacy client never built a bundle; ``otpk_ids`` maps the standard
    base64 of each pre key's public key to its id.
    """

    super: JSONObject
    spk_id: int
    spk_pub: Optional[str]
    otpk_id_counter: int
    otpk_ids: Dict[str, int]


class State(TypedDict):
    """The legacy state: keys and the pre keys bound to passive sessions (bare JID -> device id ->)."""

    super: StateSuper
    bound_otpks: Dict[str, Dict[int, BoundOTPK]]


class LegacyStorage(ABC):
    """The part of the legacy python-omemo ``Storage`` interface that :func:`migrate` needs, plus
    deleters. Implement it on top of the legacy data; every deleter must succeed silently when there is
    nothing to delete."""

    @abstractmethod
    async def loadOwnData(self) -> Optional[OwnData]:  # noqa: N802
        """Returns:
        The own data, or None if there is none (never stored, or already migrated).
        """

    @abstractmethod
    async def deleteOwnData(self) -> None:  # noqa: N802
        """Delete the own data."""

    @abstractmethod
    async def loadState(self) -> Optional[State]:  # noqa: N802
        """Returns:
        The legacy X3DH and pre-key bookkeeping state, or None if there is none.
        """

    @abstractmethod
    async def deleteState(self) -> None:  # noqa: N802
        """Delete the state."""

    @abstractmethod
    async def loadSession(self, bare_jid: str, device_id: int) -> Optional[Session]:  # noqa: N802
        """Args:
            bare_jid: the bare JID.
            device_id: the device id.

        Returns:
            The session with that device, or None if there is none.
        """

    @abstractmethod
    async def deleteSession(self, bare_jid: str, device_id: int) -> None:  # noqa: N802
        """Delete the session with that device, if any."""

    @abstractmethod
    async def loadActiveDevices(self, bare_jid: str) -> Optional[List[int]]:  # noqa: N802
        """Returns:
        The ids of the devices in the JID's device list (None and an empty list mean the same).
        """

    @abstractmethod
    async def loadInactiveDevices(self, bare_jid: str) -> Optional[Dict[int, int]]:  # noqa: N802
        """Returns:
        Device id -> time it left the JID's device list (only the ids are used; None means empty).
        """

    @abstractmethod
    async def deleteActiveDevices(self, bare_jid: str) -> None:  # noqa: N802
        """Delete the list of active devices of that JID."""

    @abstractmethod
    async def deleteInactiveDevices(self, bare_jid: str) -> None:  # noqa: N802
        """Delete the inactive devices of that JID."""

    @abstractmethod
    async def loadTrust(self, bare_jid: str, device_id: int) -> Optional[Trust]:  # noqa: N802
        """Returns:
        The trust entry of that device, or None if there is none (undecided).
        """

    @abstractmethod
    async def deleteTrust(self, bare_jid: str, device_id: int) -> None:  # noqa: N802
        """Delete the trust entry of that device, if any."""

    @abstractmethod
    async def listJIDs(self) -> Optional[List[str]]:  # noqa: N802
        """Returns:
        Every bare JID with stored device lists, or None once :meth:`deleteJIDList` ran.
        """

    @abstractmethod
    async def deleteJIDList(self) -> None:  # noqa: N802
        """Forget the JID list (:meth:`listJIDs` returns None afterwards)."""


# -- the migration -----------------------------------------------------------------------------------


async def migrate(
    legacy_storage: LegacyStorage,
    storage: Storage,
    trusted_trust_level_name: str,
    undecided_trust_level_name: str,
    untrusted_trust_level_name: str,
    download_bundle: Callable[[str, int], Awaitable[BundleImpl]],
) -> None:
    """Migrate legacy python-omemo data into ``storage``; a no-op when there is nothing to migrate.

    Idempotent and restartable: the legacy own data is the marker (read first, deleted last), legacy
    data is deleted only after what it became was written, and a run that failed at any point can be
    repeated (it completes the migration without undoing what the first run stored).

    Args:
        legacy_storage: the legacy data (python-omemo < 1.0 with python-omemo-backend-signal).
        storage: the storage of the new stack; must not be in use by a session manager yet.
        trusted_trust_level_name: the trust-level name stored for legacy "trusted" devices.
        undecided_trust_level_name: ... for devices without a legacy trust entry.
        untrusted_trust_level_name: ... for legacy "untrusted" devices.
        download_bundle: returns the current legacy bundle of a device (``bare_jid, device_id``);
            only its identity key is used, to confirm the stored one and recover its Ed25519 form.
            Raise :class:`omemo.BundleDownloadFailed` or :class:`omemo.BundleNotFound` when it is not
            available: that device is then left out.

    Raises:
        omemo_engine.errors.InvalidState: (a ``ValueError``) the legacy state (keys) is malformed:
            nothing was written; or ``legacy_storage`` returned a device id that is neither an int
            nor a decimal string: the JIDs before it are migrated, a later call resumes.
        Exception: anything ``legacy_storage``, ``storage`` or ``download_bundle`` raises (other than
            the two exceptions named above) is propagated; calling :func:`migrate` again resumes.
    """
    own_data = await legacy_storage.loadOwnData()
    if own_data is None:
        return
    own_bare_jid = own_data["own_bare_jid"]
    own_device_id = convert.device_id(own_data["own_device_id"], "own_data.own_device_id")
    state = await legacy_storage.loadState()
    if state is None:
        migrated = (await storage.load_primitive("/own_device_id", int)).maybe(None)
        if migrated == own_device_id:
            # An earlier run migrated everything and deleted the state, then failed before deleting
            # the own data: finish that run.
            await legacy_storage.deleteOwnData()
            return
        _log.warning(
            "legacy OMEMO data has no key state: nothing can be migrated; the legacy data is left alone "
            "and a new device will be set up"
        )
        return
    keys = convert.key_state(state)
    bound = convert.bound_pre_keys(state.get("bound_otpks"))
    if keys.resigned:
        _log.info("the legacy signed pre key was signed again for the published form of the identity key")
    if keys.dropped_pre_keys:
        _log.info("left out %d legacy pre keys without an id", keys.dropped_pre_keys)

    run = _Migration(
        legacy_storage,
        storage,
        _TrustNames(trusted_trust_level_name, undecided_trust_level_name, untrusted_trust_level_name),
        download_bundle,
        own_bare_jid,
        own_device_id,
        keys,
        bound,
    )
    await run.own_device()
    bare_jids = await legacy_storage.listJIDs()
    for bare_jid in bare_jids or ():
        await run.bare_jid(bare_jid)
    if bare_jids is not None:
        await legacy_storage.deleteJIDList()
    await legacy_storage.deleteState()
    await legacy_storage.deleteOwnData()
    _log.info(
        "legacy OMEMO data migrated: %d devices, %d sessions, %d devices left out, %d sessions left out",
        run.devices,
        run.sessions,
        run.dropped_devices,
        run.dropped_sessions,
    )


@dataclass(frozen=True, slots=True)
class _TrustNames:
    trusted: str
    undecided: str
    untrusted: str


def _urlsafe(identity_key: bytes) -> str:
    return base64.urlsafe_b64encode(identity_key).decode("ascii")


class _Migration:
    """One run of :func:`migrate` after the legacy state was converted (holds the counters)."""

    def __init__(
        self,
        legacy: LegacyStorage,
        storage: Storage,
        names: _TrustNames,
        download_bundle: Callable[[str, int], Awaitable[BundleImpl]],
        own_bare_jid: str,
        own_device_id: int,
        keys: convert.LegacyKeys,
        bound: Mapping[tuple[str, int], tuple[int, bytes]],
    ) -> None:
        self.legacy = legacy
        self.storage = storage
        self.names = names
        self.download_bundle = download_bundle
        self.own_bare_jid = own_bare_jid
        self.own_device_id = own_device_id
        self.keys = keys
        self.bound = bound
        self.backend = Oldmemo(storage)
        self.devices = self.sessions = self.dropped_devices = self.dropped_sessions = 0

    # -- own identity and device ------------------------------------------------------------------

    async def own_device(self) -> None:
        """Identity key, key state, own device record/list/trust, then ``/own_device_id``.

        From ``/own_device_id`` on, the storage is complete enough for ``SessionManager.create`` (D1).
        """
        storage, keys = self.storage, self.keys
        stored_key = (await storage.load_bytes("/ikp/key")).maybe(None)
        stored_is_seed = (await storage.load_primitive("/ikp/is_seed", bool)).maybe(None)
        same_identity = stored_key == keys.identity_priv and stored_is_seed is False
        if stored_key is not None and stored_key != keys.identity_priv:
            _log.warning("the new storage already holds another identity key; the legacy one replaces it")
        if not same_identity:
            await storage.store_bytes("/ikp/key", keys.identity_priv)
            await storage.store("/ikp/is_seed", False)
        # An earlier, interrupted run may have stored the key state already, and the backend may have
        # changed it since (rotation, new pre keys): keep it then.
        if not (same_identity and (await storage.load(f"/{NAMESPACE}/keys")).is_just):
            await self.backend._store_keys(keys.keys)

        jid, device_id = self.own_bare_jid, self.own_device_id
        # Active whatever the legacy lists say: this is the device being migrated and used.
        await self._store_device(jid, device_id, True, keys.identity_key)
        trust = await self.legacy.loadTrust(jid, device_id)
        if trust is not None and self._trust_key(trust, jid, device_id) != keys.identity_curve:
            trust = None
        await self._store_trust(jid, keys.identity_key, trust)
        await self._merge_list(f"/devices/{jid}/list", [device_id])
        await storage.store("/own_device_id", device_id)
        await self.legacy.deleteTrust(jid, device_id)

    # -- one bare JID -------------------------------------------------------------------------------

    async def bare_jid(self, bare_jid: str) -> None:
        """Devices of one JID (checked against their bundles), then their sessions, then deletions."""
        legacy = self.legacy
        active = {
            convert.device_id(value, f"loadActiveDevices({bare_jid!r})")
            for value in await legacy.loadActiveDevices(bare_jid) or ()
        }
        inactive_data: Iterable[Any] = await legacy.loadInactiveDevices(bare_jid) or {}
        inactive = {convert.device_id(value, f"loadInactiveDevices({bare_jid!r})") for value in inactive_data}

        migrated: dict[int, bytes] = {}
        for device_id in sorted(active | inactive):
            if bare_jid == self.own_bare_jid and device_id == self.own_device_id:
                migrated[device_id] = self.keys.identity_key  # stored by own_device()
                continue
            identity_key = await self._confirmed_identity_key(bare_jid, device_id)
            if identity_key is None:
                await legacy.deleteSession(bare_jid, device_id)
                await legacy.deleteTrust(bare_jid, device_id)
                self.dropped_devices += 1
                continue
            await self._store_device(bare_jid, device_id, device_id in active, identity_key)
            migrated[device_id] = identity_key
            self.devices += 1
        await self._merge_list(f"/devices/{bare_jid}/list", list(migrated))

        for device_id, identity_key in migrated.items():
            await self._migrate_session(bare_jid, device_id, identity_key)

        # Legacy data goes only now that everything it became is stored; the device lists last, so that
        # a run interrupted in between visits these devices again.
        for device_id in migrated:
            await legacy.deleteSession(bare_jid, device_id)
            await legacy.deleteTrust(bare_jid, device_id)
        await legacy.deleteActiveDevices(bare_jid)
        await legacy.deleteInactiveDevices(bare_jid)

    async def _confirmed_identity_key(self, bare_jid: str, device_id: int) -> Optional[bytes]:
        """The device's Ed25519 identity key from its bundle, stored with its trust level; None if the
        bundle is unavailable or contradicts the legacy trust entry."""
        try:
            bundle = await self.download_bundle(bare_jid, device_id)
        except (BundleDownloadFailed, BundleNotFound) as exc:
            _log.info("a device is left out: its bundle is not available")
            _log.debug("device %d of %s left out: bundle unavailable (%s)", device_id, bare_jid, exc)
            return None
        identity_key = bundle.identity_key
        try:
            curve = xeddsa.ed25519_pub_to_curve25519_pub(identity_key)
        except InvalidKey:
            _log.info("a device is left out: its bundle carries an invalid identity key")
            _log.debug("device %d of %s left out: invalid identity key in bundle", device_id, bare_jid)
            return None
        trust = await self.legacy.loadTrust(bare_jid, device_id)
        if trust is not None and self._trust_key(trust, bare_jid, device_id) != curve:
            _log.info("a device is left out: its identity key changed since the legacy trust decision")
            _log.debug("device %d of %s left out: identity key changed", device_id, bare_jid)
            return None
        await self._store_trust(bare_jid, identity_key, trust)
        return identity_key

    @staticmethod
    def _trust_key(trust: Trust, bare_jid: str, device_id: int) -> Optional[bytes]:
        try:
            return convert.b64_key(trust["key"], "trust.key")
        except (InvalidState, KeyError, TypeError):
            _log.debug("legacy trust entry of device %d of %s is malformed", device_id, bare_jid)
            return None

    # -- one session --------------------------------------------------------------------------------

    async def _migrate_session(self, bare_jid: str, device_id: int, identity_key: bytes) -> None:
        legacy_session = await self.legacy.loadSession(bare_jid, device_id)
        if legacy_session is None:
            return
        session = self._convert_session(bare_jid, device_id, identity_key, legacy_session)
        if session is None:
            self.dropped_sessions += 1
            return
        try:
            existing = await self.backend.load_session(bare_jid, device_id)
        except (InvalidState, SessionDamaged):
            existing = None
        # A session stored by an interrupted earlier run (and maybe used since) is kept; storing it
        # again completes the backend's session index in case the run stopped in between.
        await self.backend.store_session(session if existing is None else existing)
        self.sessions += 1

    def _convert_session(
        self, bare_jid: str, device_id: int, identity_key: bytes, legacy_session: Session
    ) -> Optional[SessionImpl]:
        """Our session record for a legacy session, or None (logged) if it cannot be carried over."""
        where = f"session with device {device_id} of {bare_jid}"
        try:
            other_curve = convert.b64_key(legacy_session["other_ik"], "other_ik")
        except (InvalidState, KeyError, TypeError):
            other_curve = None
        if other_curve != xeddsa.ed25519_pub_to_curve25519_pub(identity_key):
            _log.info("a session is left out: it was made with another identity key than the device's")
            _log.debug("%s left out: identity key mismatch", where)
            return None

        # PASSIVE iff a pre key is bound to the session (LEGACY-MIGRATION.md 2.5); the associated data
        # puts the initiator first, and the backend swaps the halves for the MAC as legacy did.
        bound = self.bound.get((bare_jid, device_id))
        own_half = convert.AD_HALF_PREFIX + self.keys.identity_curve
        other_half = convert.AD_HALF_PREFIX + other_curve
        if bound is None:
            initiation = Initiation.ACTIVE
            associated_data = own_half + other_half
            pre_key_id, pre_key = _UNKNOWN_PRE_KEY_ID, _UNKNOWN_KEY
        else:
            initiation = Initiation.PASSIVE
            associated_data = other_half + own_half
            pre_key_id, pre_key = bound
        try:
            state = convert.ratchet_state(
                legacy_session["super"], initiation is Initiation.ACTIVE, associated_data
            )
        except (InvalidState, KeyError, TypeError) as exc:
            _log.warning("a legacy session is left out: it cannot be converted")
            _log.debug("%s left out: %s", where, exc)
            return None
        if state is None:
            _log.info("a legacy session is left out: it was never initialised")
            _log.debug("%s left out: not initialised", where)
            return None
        # The signed pre key id is unknown: UNKNOWN_SPK_ID marks the key exchange as migrated, so a
        # peer repeating its key exchange (same identity key and pre key id) reuses this session.
        key_exchange = KeyExchangeImpl(
            identity_key, _UNKNOWN_KEY, UNKNOWN_SPK_ID, pre_key_id, _UNKNOWN_KEY, pre_key
        )
        # Confirmed: an ACTIVE session never attaches its (unknown) key exchange to outgoing messages.
        return SessionImpl(bare_jid, device_id, initiation, key_exchange, state, confirmed=True)

    # -- core records (python-omemo layout, PROTOCOL.md 5.1) ------------------------------------------

    async def _store_device(self, bare_jid: str, device_id: int, active: bool, identity_key: bytes) -> None:
        storage, prefix = self.storage, f"/devices/{bare_jid}/{device_id}"
        namespaces = (await storage.load_list(f"{prefix}/namespaces", str)).maybe([])
        if NAMESPACE not in namespaces:
            await storage.store(f"{prefix}/namespaces", [*namespaces, NAMESPACE])
        activity = dict((await storage.load_dict(f"{prefix}/active", bool)).maybe({}))
        activity[NAMESPACE] = active
        await storage.store(f"{prefix}/active", activity)
        if (await storage.load(f"{prefix}/label")).is_nothing:
            await storage.store(f"{prefix}/label", None)
        await storage.store_bytes(f"{prefix}/identity_key", identity_key)

    async def _store_trust(self, bare_jid: str, identity_key: bytes, trust: Optional[Trust]) -> None:
        key = f"/trust/{bare_jid}/{_urlsafe(identity_key)}"
        if trust is not None:
            name = self.names.trusted if trust.get("trusted") else self.names.untrusted
        elif (await self.storage.load(key)).is_nothing:
            name = self.names.undecided
        else:
            return  # no legacy decision, but one is stored already (an earlier run): keep it
        await self.storage.store(key, name)

    async def _merge_list(self, key: str, device_ids: Iterable[int]) -> None:
        # A union, never an overwrite (D4): a repeated run has no legacy lists for finished JIDs.
        stored = (await self.storage.load_list(key, int)).maybe([])
        merged = [*stored, *(device_id for device_id in device_ids if device_id not in stored)]
        if merged != stored or not stored:
            await self.storage.store(key, merged)
