"""Adopt the stored state of the reference backends (PyPI ``twomemo`` / ``oldmemo`` 1.x and 2.x).

Theory of operation. A user who switches from the reference stack keeps the core's records (same
layout), but the reference backends keep their own state under ``/{namespace}/`` in a layout of
their own (PROTOCOL.md 5.1): the X3DH state as pydantic JSON (bytes as strings with one code point
per byte), the id maps ``signed_pre_key_ids`` / ``pre_key_ids`` (standard base64 of the public key
-> id), ``pre_key_id_counter``, the session index ``bare_jids`` / ``{bare_jid}/device_ids`` and
per session ``{bare_jid}/{device_id}/...`` (initiation, key exchange, associated data, ratchet JSON,
confirmed). Our :class:`~omemo._engine.backend.EngineBackend` keeps its state in ``keys`` and
``session/...`` instead, so without this module it would silently start over: new signed pre key,
new pre keys, every session lost.

When. The backend's adoption (``EngineBackend._adopt_reference_data``, which uses this module's loaders
and converters) runs at most once per backend instance (an in-memory flag in
the backend): when the backend first needs its key state and finds no ``keys`` record, when
:meth:`~omemo._engine.backend.EngineBackend.load_session` first misses a session record, and before
``purge_bare_jid``. It imports only into a backend that has no key state of its own yet, so the
import happens at most once per storage, and a storage where our backend already made keys is never
mixed with reference sessions (their pre key ids would name our unrelated pre keys). Everything is
imported in one go: all sessions first (each only if we have no record for that device), then the
key state, then the marker ``/{namespace}/imported-reference`` (what was imported and what was left
out), so an interrupted import is simply repeated on the next start. Steady state: a session that
exists costs nothing extra; the first miss per backend instance costs two or three more loads
(marker, ``keys`` unless the marker exists, the session record again); later misses cost one
attribute check.

What is kept. The reference records are left untouched, so a user can go back to the reference
stack. Going back is only a rollback: the reference state is the one of the moment of the switch,
so sessions that ratcheted since then and pre keys used since then are stale there. The price of
keeping them is forward secrecy for that window: the old chain keys and the one-time pre keys stay
in storage until :func:`delete_reference_data` removes them (``purge`` calls it, ``purge_bare_jid``
removes the sessions of that JID; an application that does not want to go back can call it after
the first successful start).

Conversion. Signed pre key and previous signed pre key keep their ids (from ``signed_pre_key_ids``)
and timestamps; a signature that does not verify with our identity key (legacy data signed for the
sign-0 key, LEGACY-MIGRATION.md 2.9) is made again for the same key. Pre keys keep their ids (from
``pre_key_ids``); the reference counts ids with a persisted counter that only grows (PROTOCOL.md 5.8)
and may be ahead of every id in use, so our next id is ``max(counter, every known id) + 1``; a pre
key without an id (never published) gets a fresh one. The identity key is not read from the X3DH
record: it is shared through ``/ikp``. Sessions keep initiation, key exchange (ids and public keys),
associated data, ratchet state including skipped message keys, and ``confirmed``. Pre-stable records
(no ``version`` key: storage the reference Oldmemo migrated from python-omemo < 1.0 and never wrote
again) are converted with :mod:`omemo._engine.legacy_convert`.

Corrupt data. Account-level records (``x3dh``, the id maps, the counter) that cannot be converted
raise :class:`~omemo_engine.errors.InvalidState` naming the storage key: nothing is written, and the
backend refuses to start over with fresh keys rather than lose them silently. A session that cannot
be converted (or an unreadable session index) is left out with a warning and listed in the marker;
its reference records stay, and the other device's next key exchange builds a new session.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Optional

from omemo_engine import xeddsa
from omemo_engine.errors import InvalidKey, InvalidSignature, InvalidState
from omemo_engine.profile import Profile
from omemo_engine.ratchet import RatchetState

from ..session import Initiation
from ..storage import Storage
from . import legacy_convert as legacy
from .legacy_convert import int_in_range, json_field
from .records import MAX_ID, MAX_KEY_ID, KeyState, SignedPreKey

__all__ = [
    "MARKER",
    "ConvertedKeys",
    "ReferenceSession",
    "convert_keys",
    "convert_ratchet",
    "delete_reference_data",
    "delete_reference_sessions",
    "load_reference_keys",
    "load_reference_sessions",
    "marker_record",
]

_log = logging.getLogger(__name__)

#: The stored marker (below ``/{namespace}/``) saying that the import was done or not needed.
MARKER = "imported-reference"
_MARKER_VERSION = 1
#: Length of every key in the reference records (X25519 scalars and publics, chain/message keys).
KEY_LENGTH = 32
#: Length of an XEdDSA / Ed25519 signature.
SIGNATURE_LENGTH = 64
#: Largest chain length or message number our ratchet record holds (``>I``).
_MAX_COUNTER = 2**32 - 1
#: Per-session record names of the reference backends, below ``{bare_jid}/{device_id}/``.
_SESSION_RECORDS = (
    "initiation",
    "key_exchange/identity_key",
    "key_exchange/ephemeral_key",
    "key_exchange/signed_pre_key",
    "key_exchange/signed_pre_key_id",
    "key_exchange/pre_key",
    "key_exchange/pre_key_id",
    "associated_data",
    "double_ratchet",
    "confirmed",
)


# -- small validating readers (every problem is an InvalidState naming where) ----------------------


def _latin1(value: Any, where: str, length: int = KEY_LENGTH) -> bytes:
    """Bytes in the pydantic form of the reference: a str with one code point (< 256) per byte."""
    if not isinstance(value, str):
        raise InvalidState(f"{where}: expected a byte string, got {type(value).__name__}")
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        raise InvalidState(f"{where}: not a byte string (a code point above 255)") from None
    if len(raw) != length:
        raise InvalidState(f"{where}: expected {length} bytes, got {len(raw)}")
    return raw


def _id_map(value: Any, where: str) -> dict[bytes, int]:
    """``signed_pre_key_ids`` / ``pre_key_ids``: standard base64 of a public key -> id."""
    if not isinstance(value, Mapping):
        raise InvalidState(f"{where}: expected a JSON object, got {type(value).__name__}")
    result: dict[bytes, int] = {}
    for pub_b64, key_id in value.items():
        try:
            pub = base64.b64decode(pub_b64, validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise InvalidState(f"{where}: the key {pub_b64!r} is not standard base64") from None
        if len(pub) != KEY_LENGTH:
            raise InvalidState(f"{where}: the key {pub_b64!r} is not a {KEY_LENGTH}-byte public key")
        result[pub] = int_in_range(key_id, f"{where}[{pub_b64!r}]", 1, MAX_ID)
    return result


def _curve_pub(priv: bytes, where: str) -> bytes:
    try:
        return xeddsa.priv_to_curve25519_pub(priv)
    except InvalidKey as exc:
        raise InvalidState(f"{where}: {exc}") from None


# -- key state ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConvertedKeys:
    """The reference key state in our form.

    Attributes:
        keys: the key state to store.
        resigned: ids of signed pre keys whose signature was made again for our identity key.
        renumbered_pre_keys: pre keys that had no id in ``pre_key_ids`` and got a fresh one.
    """

    keys: KeyState
    resigned: tuple[int, ...] = ()
    renumbered_pre_keys: int = 0


def _signed_pre_key(
    profile: Profile,
    key_id: int,
    priv: bytes,
    signature: bytes,
    timestamp: int,
    identity_priv: bytes,
    identity_key: bytes,
    random_bytes: Callable[[int], bytes],
) -> tuple[SignedPreKey, bool]:
    pub = xeddsa.priv_to_curve25519_pub(priv)
    message = profile.encode_signed_pre_key(pub)
    try:
        xeddsa.verify(identity_key, message, signature)
        resigned = False
    except InvalidSignature:
        # Signed for another form of our identity key (legacy: sign bit 0): a published bundle would
        # not verify. Same key, id and age, so rotation is unaffected.
        signature = xeddsa.sign(identity_priv, message, random_bytes=random_bytes)
        resigned = True
    return SignedPreKey(key_id, priv, pub, signature, timestamp), resigned


def _timestamp(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 2**63:
        raise InvalidState(f"{where}: expected a non-negative number, got {value!r}")
    return int(value)


def convert_keys(
    x3dh: Any,
    signed_pre_key_ids: Any,
    pre_key_ids: Any,
    pre_key_id_counter: Any,
    *,
    profile: Profile,
    identity_priv: bytes,
    identity_key: bytes,
    random_bytes: Callable[[int], bytes],
) -> ConvertedKeys:
    """Convert the reference key records of one namespace (no I/O).

    Args:
        x3dh: the ``x3dh`` record (current pydantic shape, or pre-stable without ``version``).
        signed_pre_key_ids: the ``signed_pre_key_ids`` record.
        pre_key_ids: the ``pre_key_ids`` record.
        pre_key_id_counter: the ``pre_key_id_counter`` record (None if absent).
        profile: the namespace profile (how signed pre keys are encoded for signing).
        identity_priv: our (clamped) identity scalar, to sign a signed pre key again if needed.
        identity_key: our Ed25519 identity key, to verify the signatures.
        random_bytes: RNG for new signatures.

    Returns:
        The converted key state.

    Raises:
        InvalidState: a record is malformed; the message names the record and the field.
    """
    spk_ids = _id_map(signed_pre_key_ids, "signed_pre_key_ids")
    pk_ids = _id_map(pre_key_ids, "pre_key_ids")
    counter = (
        0 if pre_key_id_counter is None else int_in_range(pre_key_id_counter, "pre_key_id_counter", 0, MAX_ID)
    )
    if isinstance(x3dh, Mapping) and "version" not in x3dh:
        return _convert_pre_stable_keys(
            x3dh, spk_ids, pk_ids, counter, profile, identity_priv, identity_key, random_bytes
        )

    def spk(value: Any, where: str) -> tuple[bytes, bytes, int]:
        priv = _latin1(json_field(value, "priv", where), f"{where}.priv")
        sig = _latin1(json_field(value, "sig", where), f"{where}.sig", SIGNATURE_LENGTH)
        return priv, sig, _timestamp(json_field(value, "timestamp", where), f"{where}.timestamp")

    current_priv, current_sig, current_time = spk(
        json_field(x3dh, "signed_pre_key", "x3dh"), "x3dh.signed_pre_key"
    )
    old_record = x3dh.get("old_signed_pre_key")
    old = None if old_record is None else spk(old_record, "x3dh.old_signed_pre_key")

    # SPK ids: the reference gives a new SPK max(id) + 1 when it first publishes it; one that never
    # got an id was never published, so any unused id is fine for it.
    current_id = spk_ids.get(_curve_pub(current_priv, "x3dh.signed_pre_key.priv"))
    old_id = None if old is None else spk_ids.get(_curve_pub(old[0], "x3dh.old_signed_pre_key.priv"))
    if current_id is None:
        current_id = max(spk_ids.values(), default=0) % MAX_ID + 1
    resigned: list[int] = []
    current, again = _signed_pre_key(
        profile,
        current_id,
        current_priv,
        current_sig,
        current_time,
        identity_priv,
        identity_key,
        random_bytes,
    )
    if again:
        resigned.append(current_id)
    previous = None
    if old is not None and old_id is not None and old_id != current_id:
        # An old SPK without an id cannot be named by any key exchange: it is left out.
        previous, again = _signed_pre_key(
            profile, old_id, old[0], old[1], old[2], identity_priv, identity_key, random_bytes
        )
        if again:
            resigned.append(old_id)

    raw_pre_keys = json_field(x3dh, "pre_keys", "x3dh")
    if not isinstance(raw_pre_keys, list):
        raise InvalidState(f"x3dh.pre_keys: expected a list, got {type(raw_pre_keys).__name__}")
    pre_keys: dict[int, tuple[bytes, bytes]] = {}
    unnamed: list[tuple[bytes, bytes]] = []
    for index, value in enumerate(raw_pre_keys):
        priv = _latin1(value, f"x3dh.pre_keys[{index}]")
        pub = _curve_pub(priv, f"x3dh.pre_keys[{index}]")
        key_id = pk_ids.get(pub)
        if key_id is None:
            unnamed.append((priv, pub))
        else:
            pre_keys[key_id] = (priv, pub)
    # The counter only grows and may be ahead of every id (PROTOCOL.md 5.8); stale entries of the id
    # map may name used keys: no id of either kind is ever given out again.
    next_id = max(counter, *pk_ids.values(), *pre_keys, 0) + 1
    if next_id + len(unnamed) - 1 > MAX_ID:
        raise InvalidState("pre_key_id_counter: pre key ids are exhausted")
    for priv, pub in unnamed:
        pre_keys[next_id] = (priv, pub)
        next_id += 1
    keys = KeyState(current, previous, pre_keys, {}, next_id)
    return ConvertedKeys(keys, tuple(resigned), len(unnamed))


def _convert_pre_stable_keys(
    x3dh: Mapping[str, Any],
    spk_ids: dict[bytes, int],
    pk_ids: dict[bytes, int],
    counter: int,
    profile: Profile,
    identity_priv: bytes,
    identity_key: bytes,
    random_bytes: Callable[[int], bytes],
) -> ConvertedKeys:
    # Only the reference Oldmemo writes this shape (it migrated python-omemo < 1.0 data verbatim).
    # Imported here, not at module level: oldmemo depends on omemo, not the other way round.

    spk_priv = legacy.b64_key(
        json_field(json_field(json_field(x3dh, "spk", "x3dh"), "key", "x3dh.spk"), "priv", "x3dh.spk.key"),
        "x3dh.spk.key.priv",
    )
    spk_id = spk_ids.get(
        _curve_pub(spk_priv, "x3dh.spk.key.priv"), max(spk_ids.values(), default=0) % MAX_ID + 1
    )
    otpk_ids = {base64.b64encode(pub).decode("ascii"): key_id for pub, key_id in pk_ids.items()}
    converted = legacy.x3dh_key_state(x3dh, spk_id, otpk_ids, counter, random_bytes)
    spk = converted.keys.signed_pre_key
    # The legacy identity inside the record should be ours (/ikp holds the same scalar); check the
    # signature against the key we publish all the same.
    current, again = _signed_pre_key(
        profile, spk.key_id, spk.priv, spk.signature, spk.timestamp, identity_priv, identity_key, random_bytes
    )
    keys = KeyState(
        current,
        None,
        converted.keys.pre_keys,
        converted.keys.hidden_pre_keys,
        converted.keys.next_pre_key_id,
    )
    resigned = (spk.key_id,) if again or converted.resigned else ()
    return ConvertedKeys(keys, resigned, 0)


async def load_reference_keys(
    storage: Storage,
    profile: Profile,
    identity_priv: bytes,
    identity_key: bytes,
    random_bytes: Callable[[int], bytes],
) -> Optional[ConvertedKeys]:
    """Read and convert the reference key records of ``profile``'s namespace.

    Args:
        storage: the storage.
        profile: the namespace profile.
        identity_priv: our (clamped) identity scalar.
        identity_key: our Ed25519 identity key.
        random_bytes: RNG for new signatures.

    Returns:
        The converted keys, or None if there is no reference ``x3dh`` record.

    Raises:
        InvalidState: a record is malformed (the message names the storage key).
        StorageException: forwarded from the storage.
    """
    prefix = f"/{profile.name}/"
    x3dh = (await storage.load(prefix + "x3dh")).maybe(None)
    if x3dh is None:
        return None
    signed_pre_key_ids = (await storage.load(prefix + "signed_pre_key_ids")).maybe({})
    pre_key_ids = (await storage.load(prefix + "pre_key_ids")).maybe({})
    counter = (await storage.load(prefix + "pre_key_id_counter")).maybe(None)
    try:
        return convert_keys(
            x3dh,
            signed_pre_key_ids,
            pre_key_ids,
            counter,
            profile=profile,
            identity_priv=identity_priv,
            identity_key=identity_key,
            random_bytes=random_bytes,
        )
    except InvalidState as exc:
        raise InvalidState(
            f"the reference backend's key records below {prefix!r} cannot be imported ({exc}); "
            "repair them, or delete the x3dh record to start with new keys"
        ) from None


# -- sessions -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReferenceSession:
    """One reference session in our terms (public values only in ``repr``)."""

    bare_jid: str
    device_id: int
    initiation: Initiation
    identity_key: bytes
    ephemeral_key: bytes
    signed_pre_key_id: int
    pre_key_id: int
    signed_pre_key: bytes
    pre_key: bytes
    state: RatchetState
    confirmed: bool


def _chain(value: Any, where: str) -> tuple[Optional[bytes], int]:
    if value is None:
        return None, 0
    length = int_in_range(json_field(value, "length", where), f"{where}.length", 0, _MAX_COUNTER)
    return _latin1(json_field(value, "key", where), f"{where}.key"), length


def convert_ratchet(double_ratchet: Any, initiator: bool, associated_data: bytes) -> Optional[RatchetState]:
    """Convert a reference ``double_ratchet`` record (no I/O).

    Args:
        double_ratchet: the record (current pydantic shape, or pre-stable without ``version``).
        initiator: whether we initiated the session (ACTIVE).
        associated_data: the session's ``associated_data`` record (initiator's identity first).

    Returns:
        The ratchet state, or None for a pre-stable session stored before it was initialised (the
        reference treats those as absent too).

    Raises:
        InvalidState: the record is malformed (names the field).
    """
    if not 0 < len(associated_data) < 256:
        raise InvalidState(f"associated_data: unexpected length {len(associated_data)}")
    if isinstance(double_ratchet, Mapping) and "version" not in double_ratchet:
        return legacy.ratchet_state(double_ratchet, initiator, associated_data)
    where = "double_ratchet"
    dh = json_field(double_ratchet, "diffie_hellman_ratchet", where)
    own_priv = _latin1(json_field(dh, "own_ratchet_priv", f"{where}.dh"), f"{where}.dh.own_ratchet_priv")
    other = json_field(dh, "other_ratchet_pub", f"{where}.dh")
    other_pub = None if other is None else _latin1(other, f"{where}.dh.other_ratchet_pub")
    root_key, _ = _chain(json_field(dh, "root_chain", f"{where}.dh"), f"{where}.dh.root_chain")
    if root_key is None:
        raise InvalidState(f"{where}.dh.root_chain: missing")
    skr = json_field(dh, "symmetric_key_ratchet", f"{where}.dh")
    sending_key, sending_n = _chain(
        json_field(skr, "sending_chain", f"{where}.skr"), f"{where}.skr.sending_chain"
    )
    receiving_key, receiving_n = _chain(
        json_field(skr, "receiving_chain", f"{where}.skr"), f"{where}.skr.receiving_chain"
    )
    pn = skr.get("previous_sending_chain_length")
    previous_n = (
        0 if pn is None else int_in_range(pn, f"{where}.skr.previous_sending_chain_length", 0, _MAX_COUNTER)
    )
    entries = double_ratchet.get("skipped_message_keys") or []
    if not isinstance(entries, list):
        raise InvalidState(f"{where}.skipped_message_keys: expected a list")
    skipped: dict[tuple[bytes, int], bytes] = {}
    for index, entry in enumerate(entries):
        at = f"{where}.skipped_message_keys[{index}]"
        pub = _latin1(json_field(entry, "ratchet_pub", at), f"{at}.ratchet_pub")
        n = int_in_range(json_field(entry, "index", at), f"{at}.index", 0, _MAX_COUNTER)
        skipped[(pub, n)] = _latin1(json_field(entry, "message_key", at), f"{at}.message_key")
    return RatchetState(
        initiator=initiator,
        associated_data=associated_data,
        root_key=root_key,
        own_ratchet_priv=own_priv,
        own_ratchet_pub=_curve_pub(own_priv, f"{where}.dh.own_ratchet_priv"),
        other_ratchet_pub=other_pub,
        sending_chain_key=sending_key,
        sending_n=sending_n,
        receiving_chain_key=receiving_key,
        receiving_n=receiving_n,
        previous_sending_n=previous_n,
        skipped=skipped,
    )


async def _load_session(
    storage: Storage, prefix: str, bare_jid: str, device_id: int
) -> Optional[ReferenceSession]:
    base = f"{prefix}{bare_jid}/{device_id}/"
    values: dict[str, Any] = {}
    for name in _SESSION_RECORDS:
        try:
            if name.endswith(("_key", "associated_data")):
                value: Any = (await storage.load_bytes(base + name)).maybe(None)
            else:
                value = (await storage.load(base + name)).maybe(None)
        except TypeError as exc:  # load_bytes: not URL-safe base64
            raise InvalidState(f"{name}: {exc}") from None
        if value is None:
            if name == "initiation":
                return None  # no session (an index entry without records)
            raise InvalidState(f"{name}: missing")
        values[name] = value
    initiation = values["initiation"]
    if initiation not in ("ACTIVE", "PASSIVE"):
        raise InvalidState(f"initiation: expected 'ACTIVE' or 'PASSIVE', got {initiation!r}")
    for name in ("identity_key", "ephemeral_key", "signed_pre_key", "pre_key"):
        if len(values[f"key_exchange/{name}"]) != KEY_LENGTH:
            raise InvalidState(f"key_exchange/{name}: expected {KEY_LENGTH} bytes")
    # The ids are another device's (0 .. 2^32 - 1) in active sessions, ours in passive ones. -1 marks
    # ids that are unknown in sessions migrated from python-omemo < 1.0. The signed pre key id keeps
    # it (our "migrated" marker); a missing pre key id becomes 0, as oldmemo.migrations writes it (no
    # id we generate is 0, so a passive session's marker cannot match a received key exchange).
    spk_id = int_in_range(
        values["key_exchange/signed_pre_key_id"], "key_exchange/signed_pre_key_id", -1, MAX_KEY_ID
    )
    pk_id = max(int_in_range(values["key_exchange/pre_key_id"], "key_exchange/pre_key_id", -1, MAX_KEY_ID), 0)
    confirmed = values["confirmed"]
    if not isinstance(confirmed, bool):
        raise InvalidState(f"confirmed: expected a boolean, got {confirmed!r}")
    state = convert_ratchet(values["double_ratchet"], initiation == "ACTIVE", values["associated_data"])
    if state is None:
        return None
    return ReferenceSession(
        bare_jid=bare_jid,
        device_id=device_id,
        initiation=Initiation(initiation),
        identity_key=values["key_exchange/identity_key"],
        ephemeral_key=values["key_exchange/ephemeral_key"],
        signed_pre_key_id=spk_id,
        pre_key_id=pk_id,
        signed_pre_key=values["key_exchange/signed_pre_key"],
        pre_key=values["key_exchange/pre_key"],
        state=state,
        confirmed=confirmed,
    )


def _device_ids(value: Any) -> list[int]:
    if not isinstance(value, list):
        raise InvalidState("expected a list of device ids")
    result = []
    for item in value:
        number = int(item) if isinstance(item, str) and item.strip().isdecimal() else item
        result.append(int_in_range(number, "device id", 1, MAX_ID))
    return result


async def load_reference_sessions(
    storage: Storage, namespace: str
) -> tuple[list[ReferenceSession], list[str]]:
    """Read and convert every reference session of a namespace.

    Sessions (or a JID's device index) that cannot be read are left out: each is logged at debug
    level with the reason and reported in the second list; one warning summarises them.

    Args:
        storage: the storage.
        namespace: the namespace.

    Returns:
        The converted sessions, and ``"{bare_jid}/{device_id}: reason"`` for every one left out.

    Raises:
        StorageException: forwarded from the storage.
    """
    prefix = f"/{namespace}/"
    sessions: list[ReferenceSession] = []
    skipped: list[str] = []
    raw_jids = (await storage.load(prefix + "bare_jids")).maybe([])
    if not isinstance(raw_jids, list) or not all(isinstance(jid, str) for jid in raw_jids):
        skipped.append(f"{prefix}bare_jids: not a list of JIDs")
        raw_jids = []
    for bare_jid in dict.fromkeys(raw_jids):
        try:
            device_ids = _device_ids((await storage.load(f"{prefix}{bare_jid}/device_ids")).maybe([]))
        except InvalidState as exc:
            skipped.append(f"{bare_jid}/device_ids: {exc}")
            continue
        for device_id in dict.fromkeys(device_ids):
            try:
                session = await _load_session(storage, prefix, bare_jid, device_id)
            except InvalidState as exc:
                skipped.append(f"{bare_jid}/{device_id}: {exc}")
                continue
            if session is not None:
                sessions.append(session)
    for entry in skipped:
        _log.debug("reference session data left out (%s): %s", namespace, entry)
    if skipped:
        _log.warning(
            "%d reference session(s) or index record(s) of %s could not be imported and were left "
            "out (the reference records are kept; see the debug log or %s%s)",
            len(skipped),
            namespace,
            prefix,
            MARKER,
        )
    return sessions, skipped


def marker_record(converted: ConvertedKeys, sessions: int, skipped: list[str]) -> dict[str, Any]:
    """The marker stored after an import: what was imported and what was left out."""
    return {
        "version": _MARKER_VERSION,
        "sessions": sessions,
        "skipped": skipped,
        "signed_pre_key_id": converted.keys.signed_pre_key.key_id,
        "pre_keys": len(converted.keys.pre_keys),
        "resigned": list(converted.resigned),
        "renumbered_pre_keys": converted.renumbered_pre_keys,
    }


async def delete_reference_sessions(storage: Storage, namespace: str, bare_jid: str) -> None:
    """Delete the reference records of every session with ``bare_jid`` and its index entries.

    Args:
        storage: the storage.
        namespace: the namespace.
        bare_jid: the JID.

    Raises:
        StorageException: forwarded from the storage.
    """
    prefix = f"/{namespace}/"
    raw_jids = (await storage.load(prefix + "bare_jids")).maybe([])
    if isinstance(raw_jids, list) and bare_jid in raw_jids:
        await storage.store(prefix + "bare_jids", [jid for jid in raw_jids if jid != bare_jid])
    raw_ids = (await storage.load(f"{prefix}{bare_jid}/device_ids")).maybe(None)
    if raw_ids is None:
        return
    try:
        device_ids = _device_ids(raw_ids)
    except InvalidState:
        device_ids = []
    for device_id in device_ids:
        for name in _SESSION_RECORDS:
            await storage.delete(f"{prefix}{bare_jid}/{device_id}/{name}")
    await storage.delete(f"{prefix}{bare_jid}/device_ids")


async def delete_reference_data(storage: Storage, namespace: str) -> None:
    """Delete every record the reference backend keeps for a namespace.

    The ``x3dh`` record goes first: without it nothing is imported, so an interrupted deletion
    never leads to a partial import.

    Args:
        storage: the storage.
        namespace: the namespace.

    Raises:
        StorageException: forwarded from the storage.
    """
    prefix = f"/{namespace}/"
    for name in ("x3dh", "signed_pre_key_ids", "pre_key_ids", "pre_key_id_counter"):
        if (await storage.load(prefix + name)).is_just:
            await storage.delete(prefix + name)
    raw_jids = (await storage.load(prefix + "bare_jids")).maybe(None)
    if raw_jids is None:
        return
    for bare_jid in raw_jids if isinstance(raw_jids, list) else []:
        if isinstance(bare_jid, str):
            await delete_reference_sessions(storage, namespace, bare_jid)
    await storage.delete(prefix + "bare_jids")
