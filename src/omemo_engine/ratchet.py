"""The Double Ratchet (Signal's Double Ratchet specification, rev. 1), shared by both namespaces.

Theory of operation. A :class:`RatchetState` is an immutable value; :func:`encrypt` and
:func:`decrypt` return a NEW state and never modify the one they were given. This is what makes
decryption transactional: the caller keeps the old state until the MAC verified and every check
passed, and simply drops the candidate state when anything fails.

KDFs (PROTOCOL.md 3.2 and 4.3)::

    root step:    (root', ck) = HKDF-SHA-256(ikm = DH output, salt = root, info = root_info, 64)
    chain step:   mk = HMAC-SHA-256(ck, 0x01);  ck' = HMAC-SHA-256(ck, 0x02)
    message keys: (aes_key 32, mac_key 32, iv 16) = HKDF-SHA-256(mk, salt = 0*32, info, 80)

Messages are AES-256-CBC with PKCS#7 under ``aes_key``; the profile's wire codec serialises the
header and ciphertext and appends a truncated HMAC over ``associated data || message``.

Skipped message keys are kept in an insertion-ordered mapping keyed by ``(ratchet key, n)``,
bounded per session (the oldest are evicted first) and per message (a message that would skip more
keys than allowed is refused with :class:`TooManySkippedKeys`). When a new ratchet key arrives, the
keys left in the old receiving chain (up to the header's ``pn``) are skipped too; if that gap alone
exceeds the per-message limit those keys are not derived (the old chain's missing messages are
given up) rather than refusing the new message, which is what the reference implementations do.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Mapping
from typing import NamedTuple

from ._primitives import (
    aes_cbc_decrypt,
    aes_cbc_encrypt,
    chain_step,
    chain_steps,
    constant_time_equal,
    hkdf_sha256,
    hmac_sha256,
    x25519,
    x25519_public,
)
from .errors import (
    AuthenticationFailed,
    DuplicateMessage,
    EngineError,
    InvalidKey,
    InvalidState,
    TooManySkippedKeys,
)
from .profile import Profile
from .wire import Header, OpenedMessage

__all__ = [
    "RatchetState",
    "decode_skipped",
    "decrypt",
    "encode_skipped",
    "encrypt",
    "initialize_active",
    "initialize_passive",
]

_SALT = bytes(32)
_STATE_VERSION = 1
_COUNTERS = struct.Struct(">III")
_U32 = struct.Struct(">I")
_SKIPPED_ENTRY = struct.Struct(">32sI32s")
# Flag bits of the record: initiator, has other ratchet key, has sending chain, has receiving chain.
_KNOWN_FLAGS = 0x0F
_KEY = 32
_MAX_AD = 255  # the record stores the associated data's length in one byte (it is 64 or 66)

SkippedKeys = Mapping[tuple[bytes, int], bytes]
# The record of a state with every key and no skipped key, by associated-data length (see to_bytes).
_FULL_LAYOUTS: dict[int, struct.Struct] = {}


class RatchetState(NamedTuple):
    """An immutable Double Ratchet session state.

    A ``NamedTuple`` rather than a frozen dataclass: a new state is built for every message, and a
    frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field) costs four times as much.

    Attributes:
        initiator: whether we are the X3DH initiator (decides the MAC's associated-data order in
            the legacy namespace).
        associated_data: the X3DH associated data, initiator's identity first.
        root_key: the current root key (secret).
        own_ratchet_priv: our current ratchet private key (secret).
        own_ratchet_pub: its public key.
        other_ratchet_pub: the peer's current ratchet key (for the initiator, initially the peer's
            signed pre key), or None before anything was received by the responder.
        sending_chain_key: the sending chain key, None until the responder received a message.
        sending_n: number of message keys taken from the sending chain.
        receiving_chain_key: the receiving chain key, None until a message was received.
        receiving_n: number of message keys taken from the receiving chain.
        previous_sending_n: length of our previous sending chain (the ``pn`` we send).
        skipped: skipped message keys, oldest first (secret values). Never mutated.
    """

    initiator: bool
    associated_data: bytes
    root_key: bytes
    own_ratchet_priv: bytes
    own_ratchet_pub: bytes
    other_ratchet_pub: bytes | None
    sending_chain_key: bytes | None
    sending_n: int
    receiving_chain_key: bytes | None
    receiving_n: int
    previous_sending_n: int
    skipped: SkippedKeys

    def __repr__(self) -> str:
        return (
            f"RatchetState(initiator={self.initiator}, sending_n={self.sending_n}, "
            f"receiving_n={self.receiving_n if self.receiving_chain_key is not None else None}, "
            f"previous_sending_n={self.previous_sending_n}, skipped={len(self.skipped)})"
        )

    @property
    def sending_chain_length(self) -> int | None:
        """Messages sent in the current sending chain, or None if there is no sending chain."""
        return self.sending_n if self.sending_chain_key is not None else None

    @property
    def receiving_chain_length(self) -> int | None:
        """Messages received in the current receiving chain, or None if there is none yet."""
        return self.receiving_n if self.receiving_chain_key is not None else None

    def to_bytes(self, with_skipped: bool = True) -> bytes:
        """Serialise to a compact, versioned binary record (contains secrets).

        Args:
            with_skipped: whether the skipped message keys are part of the record. Without them the
                record is of constant size (about 300 bytes) however many keys the session holds; the
                caller then keeps them apart (:func:`encode_skipped`) and puts them back on load.
        """
        other, send, recv = self.other_ratchet_pub, self.sending_chain_key, self.receiving_chain_key
        full = other is not None and send is not None and recv is not None
        if full and not (with_skipped and self.skipped):
            # The steady state (every key present, no skipped key in the record): one pack.
            ad = self.associated_data
            layout = _FULL_LAYOUTS.get(len(ad))
            if layout is None:
                layout = _FULL_LAYOUTS[len(ad)] = struct.Struct(f">3B{len(ad)}s" + "32s" * 6 + "4I")
            return layout.pack(
                _STATE_VERSION,
                self.initiator | 0x0E,
                len(ad),
                ad,
                self.root_key,
                self.own_ratchet_priv,
                self.own_ratchet_pub,
                other,
                send,
                recv,
                self.sending_n,
                self.receiving_n,
                self.previous_sending_n,
                0,
            )
        flags = self.initiator | (other is not None) << 1 | (send is not None) << 2 | (recv is not None) << 3
        parts = [
            bytes((_STATE_VERSION, flags, len(self.associated_data))),
            self.associated_data,
            self.root_key,
            self.own_ratchet_priv,
            self.own_ratchet_pub,
            self.other_ratchet_pub or b"",
            self.sending_chain_key or b"",
            self.receiving_chain_key or b"",
            _COUNTERS.pack(self.sending_n, self.receiving_n, self.previous_sending_n),
            _U32.pack(len(self.skipped) if with_skipped else 0),
        ]
        if with_skipped:
            parts.extend(_SKIPPED_ENTRY.pack(pub, n, mk) for (pub, n), mk in self.skipped.items())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> RatchetState:
        """Load a record written by :meth:`to_bytes`.

        Raises:
            InvalidState: the record is truncated, corrupt or of an unknown version.
        """
        try:
            version, flags, ad_len = data[0], data[1], data[2]
            if version != _STATE_VERSION:
                raise InvalidState(f"unknown ratchet state version {version}")
            pos = 3
            ad = data[pos : pos + ad_len]
            pos += ad_len

            def take() -> bytes:
                nonlocal pos
                value = data[pos : pos + 32]
                if len(value) != 32:
                    raise InvalidState("ratchet state record is truncated")
                pos += 32
                return value

            root, own_priv, own_pub = take(), take(), take()
            other = take() if flags & 2 else None
            send = take() if flags & 4 else None
            recv = take() if flags & 8 else None
            sending_n, receiving_n, pn = _COUNTERS.unpack_from(data, pos)
            (count,) = _U32.unpack_from(data, pos + _COUNTERS.size)
            pos += _COUNTERS.size + _U32.size
            if len(data) != pos + count * _SKIPPED_ENTRY.size:
                raise InvalidState("ratchet state record has a wrong length")
            skipped = {(pub, n): mk for pub, n, mk in _SKIPPED_ENTRY.iter_unpack(data[pos:])}
        except (IndexError, struct.error):
            raise InvalidState("ratchet state record is truncated") from None
        if flags & ~_KNOWN_FLAGS:
            raise InvalidState(f"ratchet state record has unknown flags 0x{flags:02x}")
        if len(skipped) != count:
            raise InvalidState("ratchet state record lists a skipped message key twice")
        counters = (sending_n, recv, receiving_n, pn)
        return cls(bool(flags & 1), ad, root, own_priv, own_pub, other, send, *counters, skipped)


_SKIPPED_VERSION = 1


def encode_skipped(skipped: SkippedKeys) -> bytes:
    """Serialise skipped message keys kept apart from the state record (see ``to_bytes``): a version
    byte, then ``ratchet key (32) || n (uint32) || message key (32)`` per key, oldest first (secrets)."""
    return bytes((_SKIPPED_VERSION,)) + b"".join(
        [_SKIPPED_ENTRY.pack(pub, n, mk) for (pub, n), mk in skipped.items()]
    )


def decode_skipped(data: bytes) -> dict[tuple[bytes, int], bytes]:
    """Inverse of :func:`encode_skipped`.

    Raises:
        InvalidState: unknown version, a wrong length, or a key listed twice.
    """
    if not data or data[0] != _SKIPPED_VERSION:
        raise InvalidState(f"unknown skipped-keys record version {data[0] if data else None}")
    if (len(data) - 1) % _SKIPPED_ENTRY.size:
        raise InvalidState("skipped-keys record has a wrong length")
    skipped = {(pub, n): mk for pub, n, mk in _SKIPPED_ENTRY.iter_unpack(data[1:])}
    if len(skipped) != (len(data) - 1) // _SKIPPED_ENTRY.size:
        raise InvalidState("skipped-keys record lists a skipped message key twice")
    return skipped


def _root_step(profile: Profile, root_key: bytes, dh_output: bytes) -> tuple[bytes, bytes]:
    out = hkdf_sha256(dh_output, root_key, profile.root_info, 64)
    return out[:32], out[32:]


def _message_keys(profile: Profile, message_key: bytes) -> tuple[bytes, bytes, bytes]:
    out = hkdf_sha256(message_key, _SALT, profile.message_key_info, 80)
    return out[:32], out[32:64], out[64:]


def _check_session_inputs(shared_secret: bytes, associated_data: bytes, *keys: bytes) -> None:
    for key in (shared_secret, *keys):
        if len(key) != _KEY:
            raise InvalidKey(f"ratchet keys and the shared secret must be {_KEY} bytes, got {len(key)}")
    if len(associated_data) > _MAX_AD:
        raise InvalidKey(f"associated data must be at most {_MAX_AD} bytes, got {len(associated_data)}")


def initialize_active(
    profile: Profile,
    shared_secret: bytes,
    associated_data: bytes,
    other_signed_pre_key: bytes,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> RatchetState:
    """The initiator's state after X3DH: a fresh ratchet key and a sending chain.

    The peer's signed pre key serves as its first ratchet key (Signal's ``RatchetInitAlice``).

    Raises:
        InvalidKey: a key (or the RNG's output) has the wrong length, the associated data is longer
            than 255 bytes, or the signed pre key is of small order.
    """
    _check_session_inputs(shared_secret, associated_data)
    priv = random_bytes(32)
    root, chain = _root_step(profile, shared_secret, x25519(priv, other_signed_pre_key))
    return RatchetState(
        True, associated_data, root, priv, x25519_public(priv), other_signed_pre_key, chain, 0, None, 0, 0, {}
    )


def initialize_passive(
    profile: Profile,
    shared_secret: bytes,
    associated_data: bytes,
    signed_pre_key_priv: bytes,
    signed_pre_key_pub: bytes,
) -> RatchetState:
    """The responder's state after X3DH: its signed pre key is its first ratchet key, no chains yet
    (Signal's ``RatchetInitBob``); the first received message performs the first DH step.

    Raises:
        InvalidKey: a key has the wrong length or the associated data is longer than 255 bytes.
    """
    del profile  # same for both namespaces; kept for symmetry with initialize_active
    _check_session_inputs(shared_secret, associated_data, signed_pre_key_priv, signed_pre_key_pub)
    return RatchetState(
        False,
        associated_data,
        shared_secret,
        signed_pre_key_priv,
        signed_pre_key_pub,
        None,
        None,
        0,
        None,
        0,
        0,
        {},
    )


def encrypt(profile: Profile, state: RatchetState, plaintext: bytes) -> tuple[RatchetState, bytes]:
    """Encrypt ``plaintext`` with the next key of the sending chain.

    Returns:
        ``(new_state, wire_bytes)``; the caller must keep ``new_state`` (message keys are one-shot).

    Raises:
        EngineError: the state has no sending chain (a responder that has not received yet).
    """
    chain = state.sending_chain_key
    if chain is None:
        raise EngineError("this session has no sending chain yet: the responder must receive first")
    message_key, next_chain = chain_step(chain)
    aes_key, mac_key, iv = _message_keys(profile, message_key)
    header = Header(state.own_ratchet_pub, state.sending_n, state.previous_sending_n)
    data = profile.wire.seal(
        header,
        aes_cbc_encrypt(aes_key, iv, plaintext),
        mac_key,
        profile.mac_associated_data(state.associated_data, sender_is_initiator=state.initiator),
    )
    new_state = RatchetState(
        state.initiator,
        state.associated_data,
        state.root_key,
        state.own_ratchet_priv,
        state.own_ratchet_pub,
        state.other_ratchet_pub,
        next_chain,
        state.sending_n + 1,
        state.receiving_chain_key,
        state.receiving_n,
        state.previous_sending_n,
        state.skipped,
    )
    return new_state, data


def _open(profile: Profile, message_key: bytes, mac_ad: bytes, opened: OpenedMessage) -> bytes:
    aes_key, mac_key, iv = _message_keys(profile, message_key)
    expected = hmac_sha256(mac_key, mac_ad + opened.mac_input)[: profile.wire.mac_length]
    if not constant_time_equal(expected, opened.mac):
        raise AuthenticationFailed("message authentication failed (bad MAC)")
    return aes_cbc_decrypt(aes_key, iv, opened.ciphertext)


def _skip(
    skipped: dict[tuple[bytes, int], bytes], chain: bytes, ratchet_pub: bytes, start: int, stop: int
) -> bytes:
    message_keys, chain = chain_steps(chain, stop - start)
    skipped.update(zip([(ratchet_pub, n) for n in range(start, stop)], message_keys, strict=True))
    return chain


def decrypt(
    profile: Profile,
    state: RatchetState,
    data: bytes,
    *,
    max_skipped_per_message: int,
    max_skipped_per_session: int,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> tuple[RatchetState, bytes]:
    """Decrypt a ratchet message. Transactional: ``state`` is never modified.

    Args:
        profile: the namespace profile.
        state: the current session state.
        data: the sealed ratchet message as received.
        max_skipped_per_message: how many message keys one message may skip.
        max_skipped_per_session: how many skipped message keys the session keeps (oldest evicted).
        random_bytes: RNG for the new ratchet key of a DH step.

    Returns:
        ``(new_state, plaintext)``. Persist ``new_state`` only after every other check of the
        caller (e.g. trust) passed.

    Raises:
        MalformedMessage: the bytes do not parse.
        AuthenticationFailed: the MAC, the padding or the peer's ratchet key is bad.
        DuplicateMessage: the message's key was already used (a replay or duplicate).
        TooManySkippedKeys: the message skips more keys than ``max_skipped_per_message``.
    """
    opened = profile.wire.open(data)
    header = opened.header
    mac_ad = profile.mac_associated_data(state.associated_data, sender_is_initiator=not state.initiator)
    key = (header.dh_pub, header.n)
    if key in state.skipped:
        plaintext = _open(profile, state.skipped[key], mac_ad, opened)
        remaining = dict(state.skipped)
        del remaining[key]
        return state._replace(skipped=remaining), plaintext

    root = state.root_key
    own_priv, own_pub = state.own_ratchet_priv, state.own_ratchet_pub
    sending_chain, sending_n, pn = state.sending_chain_key, state.sending_n, state.previous_sending_n
    new_skipped: dict[tuple[bytes, int], bytes] | None = None
    if state.receiving_chain_key is not None and header.dh_pub == state.other_ratchet_pub:
        chain, receiving_n = state.receiving_chain_key, state.receiving_n
        if header.n < receiving_n:
            raise DuplicateMessage(
                f"message {header.n} of the current receiving chain was already received "
                f"(or its key was evicted); the chain is at {receiving_n}"
            )
    else:
        receiving_n = 0
        if header.n > max_skipped_per_message:  # refuse before the costly DH step
            raise TooManySkippedKeys(
                f"message {header.n} of a new chain would skip {header.n} message keys; "
                f"at most {max_skipped_per_message} are allowed per message"
            )
        if state.receiving_chain_key is not None and state.other_ratchet_pub is not None:
            gap = header.pn - state.receiving_n
            if 0 < gap <= max_skipped_per_message:
                new_skipped = dict(state.skipped)
                old_chain, old_pub = state.receiving_chain_key, state.other_ratchet_pub
                _skip(new_skipped, old_chain, old_pub, state.receiving_n, header.pn)
        try:
            root, chain = _root_step(profile, root, x25519(own_priv, header.dh_pub))
            own_priv = random_bytes(32)
            own_pub = x25519_public(own_priv)
            root, sending_chain = _root_step(profile, root, x25519(own_priv, header.dh_pub))
        except InvalidKey:
            raise AuthenticationFailed("the message carries an invalid ratchet key") from None
        pn = sending_n if state.sending_chain_key is not None else 0
        sending_n = 0
    if header.n - receiving_n > max_skipped_per_message:
        raise TooManySkippedKeys(
            f"message {header.n} would skip {header.n - receiving_n} message keys; "
            f"at most {max_skipped_per_message} are allowed per message"
        )
    if header.n > receiving_n:
        if new_skipped is None:
            new_skipped = dict(state.skipped)
        chain = _skip(new_skipped, chain, header.dh_pub, receiving_n, header.n)
    message_key, next_chain = chain_step(chain)
    plaintext = _open(profile, message_key, mac_ad, opened)
    skipped: SkippedKeys = state.skipped
    if new_skipped is not None:
        while len(new_skipped) > max_skipped_per_session:
            del new_skipped[next(iter(new_skipped))]
        skipped = new_skipped
    new_state = RatchetState(
        state.initiator,
        state.associated_data,
        root,
        own_priv,
        own_pub,
        header.dh_pub,
        sending_chain,
        sending_n,
        next_chain,
        header.n + 1,
        pn,
        skipped,
    )
    return new_state, plaintext
