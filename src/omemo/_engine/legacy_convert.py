"""Pure conversions of legacy (pre-1.0) python-omemo data, for :mod:`oldmemo.migrations` and the
reference-format import (:mod:`omemo._engine.reference_import`, pre-stable records).

Theory of operation. The legacy stack (python-omemo < 1.0 with omemo-backend-signal, python-x3dh 0.5
and python-doubleratchet 0.7) serialised its state as JSON objects whose keys are raw 32-byte
X25519 scalars / Curve25519 public keys in standard base64 (LEGACY-MIGRATION.md 2.1). This module
turns those objects into our backend's values, validating everything on the way, so that
:func:`oldmemo.migrations.migrate` can refuse a broken legacy state before it writes anything and can
leave out single broken sessions (reference defect D7) instead of storing records that fail later:

- :func:`key_state` / :func:`x3dh_key_state` : the legacy X3DH state (identity key, signed pre key,
  one-time pre keys visible and hidden, id bookkeeping) -> identity scalar +
  :class:`~omemo._engine.backend.KeyState`;
- :func:`ratchet_state` : a legacy ``DoubleRatchet`` object -> :class:`~omemo_engine.ratchet.RatchetState`;
- :func:`device_id` / :func:`bound_pre_keys` : device ids as ints, tolerating the decimal strings that
  JSON-backed legacy storages return (reference defect D5).

No I/O and no logging here; every problem raises :class:`~omemo_engine.errors.InvalidState` (a
``ValueError``) naming the offending field, never a secret.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from omemo_engine import xeddsa
from omemo_engine.errors import InvalidKey, InvalidSignature, InvalidState
from omemo_engine.profile import LEGACY
from omemo_engine.ratchet import RatchetState

from .records import MAX_ID, MAX_KEY_ID, KeyState, SignedPreKey

__all__ = [
    "AD_HALF_PREFIX",
    "KEY_LENGTH",
    "LegacyKeys",
    "b64_key",
    "bound_pre_keys",
    "device_id",
    "int_in_range",
    "json_field",
    "key_state",
    "ratchet_state",
    "x3dh_key_state",
]

#: Length of every legacy key (X25519 scalar, Curve25519 public key, chain key, message key).
KEY_LENGTH = 32
#: Length of a legacy XEdDSA signature.
SIGNATURE_LENGTH = 64
#: The type byte legacy puts in front of Curve25519 keys in the associated data.
AD_HALF_PREFIX = b"\x05"
#: Largest value the ratchet record can hold for a chain length or message number (``>I``).
_MAX_COUNTER = 2**32 - 1


def json_field(obj: Any, name: str, where: str) -> Any:
    """``obj[name]``, where ``obj`` must be a JSON object that has it (else InvalidState naming ``where``)."""
    if not isinstance(obj, Mapping):
        raise InvalidState(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if name not in obj:
        raise InvalidState(f"{where}: the field {name!r} is missing")
    return obj[name]


def b64_key(value: Any, where: str, length: int = KEY_LENGTH) -> bytes:
    """Decode standard base64 (whitespace ignored) of exactly ``length`` bytes.

    Raises:
        InvalidState: not a string, not base64, or the wrong length.
    """
    if not isinstance(value, str):
        raise InvalidState(f"{where}: expected a base64 string, got {type(value).__name__}")
    try:
        raw = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidState(f"{where}: not valid base64") from None
    if len(raw) != length:
        raise InvalidState(f"{where}: expected {length} bytes, got {len(raw)}")
    return raw


def int_in_range(value: Any, where: str, low: int, high: int) -> int:
    """``value`` if it is an int (not a bool) in ``low..high``, else :class:`InvalidState`."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidState(f"{where}: expected an integer in {low}..{high}, got {value!r}")
    return value


def device_id(value: Any, where: str) -> int:
    """A device id as an int; decimal strings are accepted (JSON-backed legacy storages).

    Raises:
        InvalidState: neither an int nor a decimal string.
    """
    if isinstance(value, str) and value.strip().isdecimal():
        return int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidState(f"{where}: expected an integer device id, got {value!r}")
    return value


def _private_key(pair: Any, where: str) -> bytes:
    return b64_key(json_field(pair, "priv", where), f"{where}.priv")


def bound_pre_keys(bound_otpks: Any) -> dict[tuple[str, int], tuple[int, bytes]]:
    """The legacy ``bound_otpks`` as ``(bare JID, device id) -> (pre key id, pre key public)``.

    Device-id keys may be ints or decimal strings (reference defect D5: a JSON round trip turned them
    into strings, and the reference then silently migrated passive sessions as active).

    Raises:
        InvalidState: the structure or a value is malformed.
    """
    result: dict[tuple[str, int], tuple[int, bytes]] = {}
    if bound_otpks is None:
        return result
    if not isinstance(bound_otpks, Mapping):
        raise InvalidState("state.bound_otpks: expected a JSON object")
    for bare_jid, devices in bound_otpks.items():
        if not isinstance(devices, Mapping):
            raise InvalidState(f"state.bound_otpks[{bare_jid!r}]: expected a JSON object")
        for raw_id, bound in devices.items():
            where = f"state.bound_otpks[{bare_jid!r}][{raw_id!r}]"
            # Another device's pre key id: 0 .. 2^32 - 1 (Converse numbers from 0).
            pre_key_id = int_in_range(json_field(bound, "id", where), f"{where}.id", 0, MAX_KEY_ID)
            pre_key = b64_key(json_field(bound, "otpk", where), f"{where}.otpk")
            result[(bare_jid, device_id(raw_id, where))] = (pre_key_id, pre_key)
    return result


@dataclass(frozen=True, slots=True)
class LegacyKeys:
    """The converted own key state.

    Attributes:
        identity_priv: the legacy identity private scalar (stored as ``/ikp/key``, not a seed).
        identity_key: its Ed25519 public key with the natural sign bit (what we publish).
        identity_curve: its Curve25519 public key (the legacy ``ik.pub``).
        keys: the backend key state (signed pre key, visible and hidden pre keys, next id).
        resigned: whether the signed pre key had to be signed again (reference defect D6).
        dropped_pre_keys: how many legacy pre keys had no id and were left out.
    """

    identity_priv: bytes = field(repr=False)
    identity_key: bytes
    identity_curve: bytes
    keys: KeyState
    resigned: bool
    dropped_pre_keys: int


def key_state(state: Any, random_bytes: Callable[[int], bytes] = os.urandom) -> LegacyKeys:
    """Convert the legacy ``State`` (``loadState()``) into our own key state.

    See :func:`x3dh_key_state`; this only picks its arguments out of the legacy state.

    Args:
        state: the object ``LegacyStorage.loadState()`` returned.
        random_bytes: RNG for the XEdDSA nonce of a new signature.

    Returns:
        The converted keys.

    Raises:
        InvalidState: the legacy state is malformed (names the field).
    """
    state_super = json_field(state, "super", "state")
    return x3dh_key_state(
        json_field(state_super, "super", "state.super"),
        json_field(state_super, "spk_id", "state.super"),
        json_field(state_super, "otpk_ids", "state.super"),
        json_field(state_super, "otpk_id_counter", "state.super"),
        random_bytes,
    )


def x3dh_key_state(
    x3dh: Any,
    spk_id: Any,
    otpk_ids: Any,
    otpk_id_counter: Any,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> LegacyKeys:
    """Convert a pre-stable python-x3dh 0.5 ``State`` object and its id bookkeeping.

    The same inputs exist in storage migrated by the reference Oldmemo (``/{NS}/x3dh`` without a
    ``version`` key, ``signed_pre_key_ids``, ``pre_key_ids``, ``pre_key_id_counter``), so a loader of
    that layout can use this function too.

    Pre keys keep their legacy ids (looked up by public key in ``otpk_ids``; the public halves are
    recomputed from the private ones, not read). Hidden pre keys stay hidden: our backend keeps them
    until history synchronisation ends, so a peer that repeats a legacy-era key exchange can still
    be answered. The signed pre key keeps its id, private key and timestamp; legacy signed it for the
    sign-0 form of the identity key (Signal XEdDSA), which we do not publish when the natural sign is
    1, so in that case it is signed again for the natural form (reference defect D6).

    Args:
        x3dh: the pre-stable X3DH object (``ik``, ``spk``, ``otpks``, ``hidden_otpks``).
        spk_id: the id of its signed pre key.
        otpk_ids: standard base64 of each pre key's public key -> its id.
        otpk_id_counter: the highest pre key id ever assigned.
        random_bytes: RNG for the XEdDSA nonce of a new signature.

    Returns:
        The converted keys.

    Raises:
        InvalidState: an input is malformed (names the field).
    """
    where = "x3dh"
    identity_priv = _private_key(json_field(x3dh, "ik", where), f"{where}.ik")
    try:
        identity_key = xeddsa.priv_to_ed25519_pub(identity_priv)
        identity_curve = xeddsa.priv_to_curve25519_pub(identity_priv)
    except InvalidKey as exc:
        raise InvalidState(f"{where}.ik.priv: {exc}") from None

    ids: dict[bytes, int] = {}
    if not isinstance(otpk_ids, Mapping):
        raise InvalidState("otpk_ids: expected a JSON object")
    for pub_b64, key_id in otpk_ids.items():
        ids[b64_key(pub_b64, "otpk_ids key")] = int_in_range(key_id, "otpk_ids value", 1, MAX_ID)
    counter = int_in_range(otpk_id_counter, "otpk_id_counter", 0, MAX_ID)

    dropped = 0

    def pre_keys(name: str) -> dict[int, tuple[bytes, bytes]]:
        nonlocal dropped
        pairs = x3dh.get(name) or []
        if not isinstance(pairs, list):
            raise InvalidState(f"{where}.{name}: expected a list")
        result: dict[int, tuple[bytes, bytes]] = {}
        for index, pair in enumerate(pairs):
            priv = _private_key(pair, f"{where}.{name}[{index}]")
            pub = xeddsa.priv_to_curve25519_pub(priv)
            key_id = ids.get(pub)
            if key_id is None:
                dropped += 1  # never published with an id: no peer can refer to it
            else:
                result[key_id] = (priv, pub)
        return result

    visible = pre_keys("otpks")
    hidden = {k: v for k, v in pre_keys("hidden_otpks").items() if k not in visible}
    next_id = max(counter, *visible, *hidden, 0) + 1

    spk, resigned = _signed_pre_key(x3dh, spk_id, identity_priv, identity_key, random_bytes)
    keys = KeyState(spk, None, visible, hidden, next_id)
    return LegacyKeys(identity_priv, identity_key, identity_curve, keys, resigned, dropped)


def _signed_pre_key(
    x3dh: Any,
    spk_id: Any,
    identity_priv: bytes,
    identity_key: bytes,
    random_bytes: Callable[[int], bytes],
) -> tuple[SignedPreKey, bool]:
    where = "x3dh.spk"
    spk = json_field(x3dh, "spk", "x3dh")
    priv = _private_key(json_field(spk, "key", where), f"{where}.key")
    pub = xeddsa.priv_to_curve25519_pub(priv)
    signature = b64_key(json_field(spk, "signature", where), f"{where}.signature", SIGNATURE_LENGTH)
    timestamp = json_field(spk, "timestamp", where)
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)) or timestamp < 0:
        raise InvalidState(f"{where}.timestamp: expected a non-negative number, got {timestamp!r}")
    key_id = int_in_range(spk_id, "spk_id", 1, MAX_ID)
    message = LEGACY.encode_signed_pre_key(pub)
    resigned = False
    try:
        xeddsa.verify(identity_key, message, signature)
    except InvalidSignature:
        # Legacy XEdDSA forced the sign bit to 0; we publish the natural sign (PROTOCOL.md 2.3), so a
        # signature that only verifies for the sign-0 key would make the migrated bundle invalid until
        # the next rotation. Sign the same key again; id and age stay, so rotation is unaffected.
        signature = xeddsa.sign(xeddsa.clamp(identity_priv), message, random_bytes=random_bytes)
        resigned = True
    return SignedPreKey(key_id, priv, pub, signature, int(timestamp)), resigned


def _chain(value: Any, where: str) -> tuple[Optional[bytes], int]:
    if value is None:
        return None, 0
    length = int_in_range(json_field(value, "length", where), f"{where}.length", 0, _MAX_COUNTER)
    return b64_key(json_field(value, "key", where), f"{where}.key"), length


def ratchet_state(double_ratchet: Any, initiator: bool, associated_data: bytes) -> Optional[RatchetState]:
    """Convert a legacy python-doubleratchet 0.7 ``DoubleRatchet`` object (``Session["super"]``).

    The legacy ``ad`` field is ignored (it always lists the own key first, LEGACY-MIGRATION.md 2.2);
    the caller supplies the associated data in our order (initiator first). Skipped message keys keep
    their order; chain lengths become the next message numbers.

    Args:
        double_ratchet: the legacy object.
        initiator: whether we initiated the session (ACTIVE).
        associated_data: ``0x05 || IK_initiator || 0x05 || IK_responder`` (Curve25519 forms).

    Returns:
        The ratchet state, or None for a session that was stored before it was initialised (no own
        ratchet private key or no peer ratchet key); the legacy stack treated those as absent too.

    Raises:
        InvalidState: the object is malformed (names the field).
    """
    where = "session.super"
    dh = json_field(double_ratchet, "super", where)
    own_pair = json_field(dh, "own_key", f"{where}.super")
    other_pair = json_field(dh, "other_pub", f"{where}.super")
    if own_pair is None or other_pair is None:
        return None
    own_priv_b64 = json_field(own_pair, "priv", f"{where}.super.own_key")
    other_pub_b64 = json_field(other_pair, "pub", f"{where}.super.other_pub")
    if own_priv_b64 is None or other_pub_b64 is None:
        return None
    own_priv = b64_key(own_priv_b64, f"{where}.super.own_key.priv")
    other_pub = b64_key(other_pub_b64, f"{where}.super.other_pub.pub")
    root_key, _ = _chain(json_field(dh, "root_chain", f"{where}.super"), f"{where}.super.root_chain")
    if root_key is None:
        raise InvalidState(f"{where}.super.root_chain: missing")
    skr = json_field(double_ratchet, "skr", where)
    sending_key, sending_n = _chain(json_field(skr, "schain", f"{where}.skr"), f"{where}.skr.schain")
    receiving_key, receiving_n = _chain(json_field(skr, "rchain", f"{where}.skr"), f"{where}.skr.rchain")
    pn = skr.get("prev_schain_length")
    previous_sending_n = (
        0 if pn is None else int_in_range(pn, f"{where}.skr.prev_schain_length", 0, _MAX_COUNTER)
    )

    skipped: dict[tuple[bytes, int], bytes] = {}
    smks = double_ratchet.get("smks") or {}
    if not isinstance(smks, Mapping):
        raise InvalidState(f"{where}.smks: expected a JSON object")
    for raw_key, message_key in smks.items():
        # The keys are JSON documents ({"pub": ..., "index": n}) written by json.dumps: parse them.
        try:
            parsed = json.loads(raw_key)
        except (TypeError, ValueError):
            raise InvalidState(f"{where}.smks: a key is not a JSON document") from None
        ratchet_pub = b64_key(json_field(parsed, "pub", f"{where}.smks key"), f"{where}.smks key.pub")
        index = int_in_range(
            json_field(parsed, "index", f"{where}.smks key"), f"{where}.smks key.index", 0, _MAX_COUNTER
        )
        skipped[(ratchet_pub, index)] = b64_key(message_key, f"{where}.smks value")

    if len(associated_data) != 2 * (1 + KEY_LENGTH):
        raise InvalidState(f"associated data must be {2 * (1 + KEY_LENGTH)} bytes")
    try:
        own_pub = xeddsa.priv_to_curve25519_pub(own_priv)
    except InvalidKey as exc:
        raise InvalidState(f"{where}.super.own_key.priv: {exc}") from None
    return RatchetState(
        initiator=initiator,
        associated_data=associated_data,
        root_key=root_key,
        own_ratchet_priv=own_priv,
        own_ratchet_pub=own_pub,
        other_ratchet_pub=other_pub,
        sending_chain_key=sending_key,
        sending_n=sending_n,
        receiving_chain_key=receiving_key,
        receiving_n=receiving_n,
        previous_sending_n=previous_sending_n,
        skipped=skipped,
    )
