"""Wire codecs of the Double Ratchet messages and key exchanges, for both namespaces.

``urn:xmpp:omemo:2`` (XEP-0384 0.8+, section "Message structure")::

    OMEMOMessage              { required uint32 n = 1; required uint32 pn = 2;
                                required bytes dh_pub = 3; optional bytes ciphertext = 4; }
    OMEMOAuthenticatedMessage { required bytes mac = 1; required bytes message = 2; }
    OMEMOKeyExchange          { required uint32 pk_id = 1; required uint32 spk_id = 2;
                                required bytes ik = 3; required bytes ek = 4;
                                required OMEMOAuthenticatedMessage message = 5; }

The MAC is ``HMAC-SHA-256(auth_key, AD || OMEMOMessage bytes)`` truncated to 16 bytes.

``eu.siacs.conversations.axolotl`` (libsignal's WhisperTextProtocol, version 3)::

    SignalMessage       = 0x33 || proto{ ratchetKey = 1; counter = 2; previousCounter = 3;
                                         ciphertext = 4 } || mac[0:8]
    PreKeySignalMessage = 0x33 || proto{ preKeyId = 1; baseKey = 2; identityKey = 3;
                                         message = 4; registrationId = 5; signedPreKeyId = 6 }

Public keys on the legacy wire carry the type byte 0x05. The version byte's high nibble is the
message version (3); its low nibble is the sender's newest supported version, which current
libsignal sets to 4 (``0x34``). We send ``0x33`` and accept any byte whose high nibble is 3; the byte
is covered by the MAC as received.

Every decoder raises :class:`~omemo_engine.errors.MalformedMessage` for bytes it cannot use, never a
protobuf ``DecodeError``.

Design: a hand-written codec in front of a protobuf oracle
------------------------------------------------------------

The message classes of the ``protobuf`` package (built at run time, see :mod:`._protobuf`) define
what is correct, but constructing them costs microseconds per message. :class:`OMEMO2Wire` and
:class:`LegacyWire` therefore encode and decode by hand (bytes, ints and slicing), and keep the
protobuf-based codecs, :class:`_PBOMEMO2Wire` and :class:`_PBLegacyWire` (the previous
implementation, unchanged), as their fallback and as the oracle of their tests
(``tests/engine/test_wire_codec.py``):

- The encoders write proto2 exactly as protobuf does (fields in field-number order, every set field
  written, zeros included) for arguments of the expected types (``bytes``, ``int`` in the uint32
  range). Anything else (a ``bytearray``, a ``bool``, a number out of range) goes to protobuf, which
  accepts or refuses it as before.
- The decoders have three tiers. Tier 1 (``_*_canonical``) is straight-line code for the exact layout
  protobuf writes, which is what arrives in practice: every field once, in field-number order, with
  the expected key and MAC lengths. Tier 2 (``_*_scanned``, on :func:`_scan`) reads any order and
  repetition of the known fields with their declared wire types (the last value wins; repeated
  embedded messages are merged, as protobuf does) and varints of at most 5 bytes whose value fits in
  32 bits. On anything else (an unknown field, a group, a wrong wire type, a long or oversized varint,
  a truncation...) tier 2 gives up and the whole input goes to the protobuf codec (tier 3), so the
  verdict on unusual input is protobuf's own by construction. The checks after parsing (key lengths
  and encodings, required fields, MAC length, version byte) are the same in all tiers, with the same
  error messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Protocol, TypeVar

from google.protobuf.message import DecodeError, EncodeError

from ._primitives import canonical_ed25519_public, canonical_x25519_public, hmac_sha256
from ._protobuf import PBMessage, build_messages, typed_class
from .errors import MalformedMessage

__all__ = [
    "LEGACY_WIRE",
    "OMEMO2_WIRE",
    "Header",
    "KeyExchangeFields",
    "LegacyWire",
    "OMEMO2Wire",
    "OpenedMessage",
    "WireFormat",
]

_KEY = 32
_LEGACY_KEY_TYPE = b"\x05"
_LEGACY_VERSION = 0x33


class Header(NamedTuple):
    """A Double Ratchet message header: the sender's ratchet key, the message number ``n`` in the
    current sending chain, and ``pn``, the length of the sender's previous sending chain."""

    dh_pub: bytes
    n: int
    pn: int


class OpenedMessage(NamedTuple):
    """A parsed ratchet message. ``mac_input`` is the exact received byte string the MAC covers
    (after the associated data); ``mac`` is the received MAC."""

    header: Header
    ciphertext: bytes
    mac_input: bytes
    mac: bytes


@dataclass(frozen=True, slots=True)
class KeyExchangeFields:
    """The X3DH data of a key-exchange message. ``identity_key`` is in the namespace's wire form:
    Ed25519 for OMEMO 2, Curve25519 (type byte stripped) for the legacy namespace. ``ephemeral_key``
    is the raw 32-byte X25519 public key."""

    pre_key_id: int
    signed_pre_key_id: int
    identity_key: bytes
    ephemeral_key: bytes


class WireFormat(Protocol):
    """What the ratchet and the backends need from a namespace's wire codec."""

    mac_length: int

    def seal(self, header: Header, ciphertext: bytes, auth_key: bytes, ad: bytes) -> bytes:
        """Serialise a ratchet message and append/wrap its MAC over ``ad || message``."""
        ...

    def open(self, data: bytes) -> OpenedMessage:
        """Parse a ratchet message (without checking its MAC)."""
        ...

    def build_key_exchange(self, fields: KeyExchangeFields, message: bytes) -> bytes:
        """Wrap a sealed ratchet message into a key-exchange message.

        Raises:
            MalformedMessage: ``message`` cannot be embedded (OMEMO 2: not an OMEMOAuthenticatedMessage).
        """
        ...

    def parse_key_exchange(self, data: bytes) -> tuple[KeyExchangeFields, bytes]:
        """Split a key-exchange message into its X3DH data and the sealed ratchet message."""
        ...


# --- Checks after parsing, shared by the hand-written codec and the protobuf one -----------------


def _x25519_key(field: str, value: bytes) -> bytes:
    """A 32-byte X25519 key from the wire, in its canonical encoding (see canonical_x25519_public)."""
    if len(value) != _KEY:
        raise MalformedMessage(f"field {field} must be {_KEY} bytes, got {len(value)}")
    return canonical_x25519_public(value)


def _ed25519_key(field: str, value: bytes) -> bytes:
    """A 32-byte Ed25519 key from the wire, refused unless its encoding is canonical."""
    if len(value) != _KEY:
        raise MalformedMessage(f"field {field} must be {_KEY} bytes, got {len(value)}")
    if not canonical_ed25519_public(value):
        raise MalformedMessage(f"field {field} is not a canonical Ed25519 key (y >= p)")
    return value


def _legacy_key(field: str, value: bytes) -> bytes:
    """The canonical X25519 key of a legacy ``0x05 || u`` field."""
    if len(value) != _KEY + 1 or value[:1] != _LEGACY_KEY_TYPE:
        raise MalformedMessage(f"field {field} must be 0x05 followed by 32 bytes (got {len(value)} bytes)")
    return canonical_x25519_public(value[1:])


def _check_mac_length(mac: bytes, length: int) -> None:
    if len(mac) != length:
        raise MalformedMessage(f"OMEMOAuthenticatedMessage.mac must be {length} bytes, got {len(mac)}")


def _missing(what: str, field: str) -> MalformedMessage:
    return MalformedMessage(f"{what} has no {field}")


_NO_PRE_KEY = "PreKeySignalMessage has no preKeyId: key exchanges without a one-time pre key are refused"


def _check_version(data: bytes, what: str) -> None:
    if not data:
        raise MalformedMessage(f"{what} is empty")
    if data[0] >> 4 != 3:
        raise MalformedMessage(f"{what} has version byte 0x{data[0]:02x}; only version 3 is supported")


# --- The hand-written protobuf primitives --------------------------------------------------------

_U32_MAX = 0xFFFFFFFF
_VARINT, _LEN = 0, 2  # the two wire types the messages use

#: The one-byte varints, by value.
_SMALL_VARINTS = tuple(bytes((value,)) for value in range(0x80))


def _varint(value: int) -> bytes:
    """The shortest protobuf varint of ``0 <= value < 2**64`` (what protobuf writes)."""
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _auth_message(mac: bytes | None, message: bytes | None) -> bytes:
    """An ``OMEMOAuthenticatedMessage`` with the fields that are not None, as protobuf serialises it."""
    if mac is not None and message is not None:
        return b"".join((b"\x0a", _varint(len(mac)), mac, b"\x12", _varint(len(message)), message))
    parts: list[bytes] = []
    if mac is not None:
        parts += (b"\x0a", _varint(len(mac)), mac)
    if message is not None:
        parts += (b"\x12", _varint(len(message)), message)
    return b"".join(parts)


def _counters(n: int, pn: int) -> bytes:
    """The ``counter`` and ``previousCounter`` fields of a ``SignalMessage``."""
    return b"".join((b"\x10", _varint(n), b"\x18", _varint(pn)))


#: Tag table entries: a tag :func:`_scan` leaves to protobuf, and a repeated (merged) embedded message.
_UNHANDLED, _EMBEDDED = -1, -2


def _tag_table(*fields: tuple[int, int, int]) -> tuple[int, ...]:
    """The table of :func:`_scan`: for each first byte of a tag, the slot of its value (an index into
    ``ints`` for varint fields, into ``blobs`` for bytes fields, or ``_EMBEDDED``); ``_UNHANDLED``
    for every other byte. ``fields`` are ``(field number, wire type, slot)``."""
    table = [_UNHANDLED] * 256
    for number, wire_type, slot in fields:
        assert 1 <= number <= 15 and wire_type in (_VARINT, _LEN)  # one-byte tags
        table[number << 3 | wire_type] = slot
    return tuple(table)


def _long_varint(data: bytes, pos: int, first: int) -> tuple[int, int]:
    """Finish reading a varint whose first byte ``first`` (>= 0x80) was just before ``pos``.

    Returns ``(value, position after it)``, or ``(-1, some position)`` if the varint is longer than 5
    bytes or its value does not fit in 32 bits (both left to protobuf). Raises IndexError at the end of
    ``data``.
    """
    value = first & 0x7F
    for shift in (7, 14, 21, 28):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (value, pos) if value <= _U32_MAX else (-1, pos)
    return -1, pos


def _scan(
    data: bytes,
    pos: int,
    table: tuple[int, ...],
    ints: list[int],
    blobs: list[bytes] | list[bytes | None],
    embedded: list[bytes],
) -> bool:
    """Read the fields of a protobuf message ``data[pos:]`` into ``ints`` and ``blobs``.

    Each field's tag must be one byte, found in ``table`` (see :func:`_tag_table`); a varint is stored
    into ``ints[slot]``, a length-delimited value into ``blobs[slot]`` (a repeated field: the last one
    wins, as in protobuf), and the contents of an ``_EMBEDDED`` field are appended to ``embedded`` (to
    be merged by the caller). Slots of absent fields keep the caller's default.

    Returns:
        False if the message has anything else, or is cut short: the caller then hands the whole input
        to the protobuf codec, which decides. True if every byte was read.
    """
    end = len(data)
    try:
        while pos < end:
            tag = data[pos]
            slot = table[tag]
            if slot == _UNHANDLED:
                return False
            value = data[pos + 1]
            pos += 2
            if value >= 0x80:
                value, pos = _long_varint(data, pos, value)
                if value < 0:
                    return False
            if tag & 7 == _VARINT:
                ints[slot] = value
            else:
                stop = pos + value
                if stop > end:
                    return False
                if slot == _EMBEDDED:
                    embedded.append(data[pos:stop])
                else:
                    blobs[slot] = data[pos:stop]
                pos = stop
    except IndexError:  # a tag or varint cut short
        return False
    return True


#: Shared empty outputs of :func:`_scan` for messages without varints / embedded messages (never written).
_NO_INTS: list[int] = []
_NO_EMBEDDED: list[bytes] = []

# Slots: OMEMOAuthenticatedMessage blobs [mac, message]; OMEMOMessage ints [n, pn], blobs [dh_pub,
# ciphertext]; OMEMOKeyExchange ints [pk_id, spk_id], blobs [ik, ek], message embedded.
_O2_AUTH_TAGS = _tag_table((1, _LEN, 0), (2, _LEN, 1))
_O2_MESSAGE_TAGS = _tag_table((1, _VARINT, 0), (2, _VARINT, 1), (3, _LEN, 0), (4, _LEN, 1))
_O2_KEX_TAGS = _tag_table((1, _VARINT, 0), (2, _VARINT, 1), (3, _LEN, 0), (4, _LEN, 1), (5, _LEN, _EMBEDDED))
# SignalMessage ints [counter, previous_counter], blobs [ratchet_key, ciphertext];
# PreKeySignalMessage ints [pre_key_id, registration_id, signed_pre_key_id], blobs [base_key,
# identity_key, message].
_L_MESSAGE_TAGS = _tag_table((1, _LEN, 0), (2, _VARINT, 0), (3, _VARINT, 1), (4, _LEN, 1))
_L_KEX_TAGS = _tag_table(
    (1, _VARINT, 0), (2, _LEN, 0), (3, _LEN, 1), (4, _LEN, 2), (5, _VARINT, 1), (6, _VARINT, 2)
)


# --- The protobuf-based codecs: fallback of the hand-written one, and the oracle of its tests ----

_M = TypeVar("_M", bound=PBMessage)


def _parse(cls: Callable[[], _M], data: bytes, what: str) -> _M:
    message = cls()
    try:
        message.ParseFromString(data)
    except (DecodeError, ValueError, TypeError) as exc:
        raise MalformedMessage(f"{what} is not valid protobuf ({exc.__class__.__name__})") from None
    return message


_O2 = build_messages(
    "omemo_stack.omemo2",
    {
        "OMEMOMessage": [
            ("n", 1, "required", "uint32", None),
            ("pn", 2, "required", "uint32", None),
            ("dh_pub", 3, "required", "bytes", None),
            ("ciphertext", 4, "optional", "bytes", None),
        ],
        "OMEMOAuthenticatedMessage": [
            ("mac", 1, "required", "bytes", None),
            ("message", 2, "required", "bytes", None),
        ],
        "OMEMOKeyExchange": [
            ("pk_id", 1, "required", "uint32", None),
            ("spk_id", 2, "required", "uint32", None),
            ("ik", 3, "required", "bytes", None),
            ("ek", 4, "required", "bytes", None),
            ("message", 5, "required", "message", "OMEMOAuthenticatedMessage"),
        ],
    },
)


# The static types of the message classes (checked against the descriptors by typed_class).
class _O2Message(PBMessage, Protocol):
    n: int
    pn: int
    dh_pub: bytes
    ciphertext: bytes


class _O2MessageClass(Protocol):
    def __call__(
        self, *, n: int = ..., pn: int = ..., dh_pub: bytes = ..., ciphertext: bytes = ...
    ) -> _O2Message: ...


class _O2Auth(PBMessage, Protocol):
    mac: bytes
    message: bytes


class _O2AuthClass(Protocol):
    def __call__(self, *, mac: bytes = ..., message: bytes = ...) -> _O2Auth: ...


class _O2Kex(PBMessage, Protocol):
    pk_id: int
    spk_id: int
    ik: bytes
    ek: bytes
    message: _O2Auth


class _O2KexClass(Protocol):
    def __call__(
        self, *, pk_id: int = ..., spk_id: int = ..., ik: bytes = ..., ek: bytes = ..., message: _O2Auth = ...
    ) -> _O2Kex: ...


_O2_MESSAGE: _O2MessageClass = typed_class(_O2["OMEMOMessage"], _O2MessageClass)
_O2_AUTH: _O2AuthClass = typed_class(_O2["OMEMOAuthenticatedMessage"], _O2AuthClass)
_O2_KEX: _O2KexClass = typed_class(_O2["OMEMOKeyExchange"], _O2KexClass)


class _PBOMEMO2Wire:
    """The ``urn:xmpp:omemo:2`` codec on protobuf message objects (the reference behaviour)."""

    mac_length = 16

    def seal(self, header: Header, ciphertext: bytes, auth_key: bytes, ad: bytes) -> bytes:
        body = _O2_MESSAGE(
            n=header.n, pn=header.pn, dh_pub=header.dh_pub, ciphertext=ciphertext
        ).SerializeToString()
        mac = hmac_sha256(auth_key, ad + body)[: self.mac_length]
        return bytes(_O2_AUTH(mac=mac, message=body).SerializeToString())

    def open(self, data: bytes) -> OpenedMessage:
        auth = _parse(_O2_AUTH, data, "OMEMOAuthenticatedMessage")
        _check_mac_length(auth.mac, self.mac_length)
        body = bytes(auth.message)
        message = _parse(_O2_MESSAGE, body, "OMEMOMessage")
        if not message.HasField("ciphertext"):
            raise MalformedMessage("OMEMOMessage has no ciphertext")
        header = Header(dh_pub=_x25519_key("OMEMOMessage.dh_pub", message.dh_pub), n=message.n, pn=message.pn)
        return OpenedMessage(header, bytes(message.ciphertext), body, bytes(auth.mac))

    def build_key_exchange(self, fields: KeyExchangeFields, message: bytes) -> bytes:
        kex = _O2_KEX(
            pk_id=fields.pre_key_id,
            spk_id=fields.signed_pre_key_id,
            ik=fields.identity_key,
            ek=fields.ephemeral_key,
        )
        try:
            kex.message.MergeFromString(message)
            return bytes(kex.SerializeToString())
        except (DecodeError, EncodeError):
            raise MalformedMessage("the message to wrap is not an OMEMOAuthenticatedMessage") from None

    def parse_key_exchange(self, data: bytes) -> tuple[KeyExchangeFields, bytes]:
        kex = _parse(_O2_KEX, data, "OMEMOKeyExchange")
        fields = KeyExchangeFields(
            pre_key_id=kex.pk_id,
            signed_pre_key_id=kex.spk_id,
            identity_key=_ed25519_key("OMEMOKeyExchange.ik", kex.ik),
            ephemeral_key=_x25519_key("OMEMOKeyExchange.ek", kex.ek),
        )
        # The protobuf runtime does not enforce "required" on parsing. An absent message is refused
        # here; an incomplete one is serialised partially and refused by open().
        if not kex.HasField("message"):
            raise MalformedMessage("OMEMOKeyExchange has no message")
        return fields, bytes(kex.message.SerializePartialToString())


_LEGACY = build_messages(
    "omemo_stack.legacy",
    {
        "SignalMessage": [
            ("ratchet_key", 1, "optional", "bytes", None),
            ("counter", 2, "optional", "uint32", None),
            ("previous_counter", 3, "optional", "uint32", None),
            ("ciphertext", 4, "optional", "bytes", None),
        ],
        "PreKeySignalMessage": [
            ("pre_key_id", 1, "optional", "uint32", None),
            ("base_key", 2, "optional", "bytes", None),
            ("identity_key", 3, "optional", "bytes", None),
            ("message", 4, "optional", "bytes", None),
            ("registration_id", 5, "optional", "uint32", None),
            ("signed_pre_key_id", 6, "optional", "uint32", None),
        ],
    },
)


class _LMessage(PBMessage, Protocol):
    ratchet_key: bytes
    counter: int
    previous_counter: int
    ciphertext: bytes


class _LMessageClass(Protocol):
    def __call__(
        self,
        *,
        ratchet_key: bytes = ...,
        counter: int = ...,
        previous_counter: int = ...,
        ciphertext: bytes = ...,
    ) -> _LMessage: ...


class _LKex(PBMessage, Protocol):
    pre_key_id: int
    base_key: bytes
    identity_key: bytes
    message: bytes
    registration_id: int
    signed_pre_key_id: int


class _LKexClass(Protocol):
    def __call__(
        self,
        *,
        pre_key_id: int = ...,
        base_key: bytes = ...,
        identity_key: bytes = ...,
        message: bytes = ...,
        registration_id: int = ...,
        signed_pre_key_id: int = ...,
    ) -> _LKex: ...


_L_MESSAGE: _LMessageClass = typed_class(_LEGACY["SignalMessage"], _LMessageClass)
_L_KEX: _LKexClass = typed_class(_LEGACY["PreKeySignalMessage"], _LKexClass)


def _require(message: PBMessage, what: str, *fields: str) -> None:
    for field in fields:
        if not message.HasField(field):
            raise _missing(what, field)


class _PBLegacyWire:
    """The ``eu.siacs.conversations.axolotl`` codec on protobuf message objects (the reference behaviour)."""

    mac_length = 8

    def seal(self, header: Header, ciphertext: bytes, auth_key: bytes, ad: bytes) -> bytes:
        body = (
            bytes((_LEGACY_VERSION,))
            + _L_MESSAGE(
                ratchet_key=_LEGACY_KEY_TYPE + header.dh_pub,
                counter=header.n,
                previous_counter=header.pn,
                ciphertext=ciphertext,
            ).SerializeToString()
        )
        return body + hmac_sha256(auth_key, ad + body)[: self.mac_length]

    def open(self, data: bytes) -> OpenedMessage:
        _check_version(data, "SignalMessage")
        if len(data) <= 1 + self.mac_length:
            raise MalformedMessage(f"SignalMessage of {len(data)} bytes is too short")
        body, mac = data[: -self.mac_length], data[-self.mac_length :]
        message = _parse(_L_MESSAGE, body[1:], "SignalMessage")
        _require(message, "SignalMessage", "ratchet_key", "counter", "ciphertext")
        header = Header(
            dh_pub=_legacy_key("SignalMessage.ratchetKey", message.ratchet_key),
            n=message.counter,
            pn=message.previous_counter,
        )
        return OpenedMessage(header, bytes(message.ciphertext), body, mac)

    def build_key_exchange(self, fields: KeyExchangeFields, message: bytes) -> bytes:
        return (
            bytes((_LEGACY_VERSION,))
            + _L_KEX(
                pre_key_id=fields.pre_key_id,
                base_key=_LEGACY_KEY_TYPE + fields.ephemeral_key,
                identity_key=_LEGACY_KEY_TYPE + fields.identity_key,
                message=message,
                signed_pre_key_id=fields.signed_pre_key_id,
            ).SerializeToString()
        )

    def parse_key_exchange(self, data: bytes) -> tuple[KeyExchangeFields, bytes]:
        _check_version(data, "PreKeySignalMessage")
        kex = _parse(_L_KEX, data[1:], "PreKeySignalMessage")
        _require(kex, "PreKeySignalMessage", "base_key", "identity_key", "message", "signed_pre_key_id")
        if not kex.HasField("pre_key_id"):
            raise MalformedMessage(_NO_PRE_KEY)
        fields = KeyExchangeFields(
            pre_key_id=kex.pre_key_id,
            signed_pre_key_id=kex.signed_pre_key_id,
            identity_key=_legacy_key("PreKeySignalMessage.identityKey", kex.identity_key),
            ephemeral_key=_legacy_key("PreKeySignalMessage.baseKey", kex.base_key),
        )
        return fields, bytes(kex.message)


_PB_OMEMO2_WIRE = _PBOMEMO2Wire()
_PB_LEGACY_WIRE = _PBLegacyWire()


# --- The hand-written decoders --------------------------------------------------------------------
#
# Each decoder has two hand-written tiers in front of the protobuf codec:
#
# 1. ``_*_canonical``: the exact layout protobuf writes, which is what arrives in practice: every field
#    once, in field-number order, one-byte tags, the declared lengths of keys and MACs. Straight-line
#    code at fixed or running offsets; ``None`` for anything else (including a wrong key or MAC length,
#    whose error message is left to tier 2).
# 2. ``_*_scanned``: any order and repetition of the known fields (see :func:`_scan`), with every check
#    of the protobuf codec; anything :func:`_scan` gives up on goes to the protobuf codec (tier 3).
#
# An input accepted by tier 1 has the same fields for tiers 2 and 3, so all three agree on it.

#: ``tuple.__new__``: builds a NamedTuple from its items without the Python-level ``__new__`` (the same
#: result, a third of the time).
_new_tuple = tuple.__new__


def _o2_open_canonical(data: bytes) -> OpenedMessage | None:
    """Tier 1 of :meth:`OMEMO2Wire.open`: ``0a 10 mac 12 len {08 n 10 pn 1a 20 dh_pub 22 len ct}``."""
    try:
        if data[0] != 0x0A or data[1] != 16 or data[18] != 0x12:
            return None
        size = data[19]
        pos = 20
        if size >= 0x80:
            size, pos = _long_varint(data, pos, size)
        if size < 0 or pos + size != len(data):
            return None
        body = data[pos:]
        if body[0] != 0x08:
            return None
        n = body[1]
        pos = 2
        if n >= 0x80:
            n, pos = _long_varint(body, pos, n)
            if n < 0:
                return None
        if body[pos] != 0x10:
            return None
        pn = body[pos + 1]
        pos += 2
        if pn >= 0x80:
            pn, pos = _long_varint(body, pos, pn)
            if pn < 0:
                return None
        if body[pos] != 0x1A or body[pos + 1] != _KEY or body[pos + 34] != 0x22:
            return None
        dh_pub = body[pos + 2 : pos + 34]
        size = body[pos + 35]
        pos += 36
        if size >= 0x80:
            size, pos = _long_varint(body, pos, size)
        if size < 0 or pos + size != len(body):
            return None
    except IndexError:
        return None
    header = _new_tuple(Header, (canonical_x25519_public(dh_pub), n, pn))
    return _new_tuple(OpenedMessage, (header, body[pos:], body, data[2:18]))


def _o2_open_scanned(data: bytes) -> OpenedMessage:
    """Tiers 2 and 3 of :meth:`OMEMO2Wire.open`."""
    auth = [b"", b""]
    if _scan(data, 0, _O2_AUTH_TAGS, _NO_INTS, auth, _NO_EMBEDDED):
        mac, body = auth
        _check_mac_length(mac, OMEMO2Wire.mac_length)
        ints = [0, 0]
        blobs: list[bytes | None] = [b"", None]
        if _scan(body, 0, _O2_MESSAGE_TAGS, ints, blobs, _NO_EMBEDDED):
            dh_pub, ciphertext = blobs
            if ciphertext is None:
                raise MalformedMessage("OMEMOMessage has no ciphertext")
            assert dh_pub is not None  # its default is b""
            header = Header(_x25519_key("OMEMOMessage.dh_pub", dh_pub), ints[0], ints[1])
            return OpenedMessage(header, ciphertext, body, mac)
    return _PB_OMEMO2_WIRE.open(data)


def _auth_is_canonical(data: bytes) -> bool:
    """Whether ``data`` is ``0a len mac 12 len message`` with one-byte lengths: an
    ``OMEMOAuthenticatedMessage`` that protobuf would serialise to the same bytes."""
    try:
        mac_size = data[1]
        at = 2 + mac_size  # the tag of the second field
        size = data[at + 1]
        return (
            data[0] == 0x0A
            and mac_size < 0x80
            and data[at] == 0x12
            and size < 0x80
            and at + 2 + size == len(data)
        )
    except IndexError:
        return False


def _auth_rewritten(data: bytes) -> bytes | None:
    """``data`` parsed as an ``OMEMOAuthenticatedMessage`` with both fields and serialised again; None
    if it does not have both fields, or has a shape :func:`_scan` leaves to protobuf."""
    auth: list[bytes | None] = [None, None]
    if _scan(data, 0, _O2_AUTH_TAGS, _NO_INTS, auth, _NO_EMBEDDED):
        mac, message = auth
        if mac is not None and message is not None:
            return _auth_message(mac, message)
    return None


def _o2_kex_canonical(data: bytes) -> tuple[KeyExchangeFields, bytes] | None:
    """Tier 1 of :meth:`OMEMO2Wire.parse_key_exchange`:
    ``08 pk_id 10 spk_id 1a 20 ik 22 20 ek 2a len {0a len mac 12 len message}``, the two lengths in
    the embedded message one byte each, so that it is returned as it is (protobuf's re-serialisation
    of it gives the same bytes)."""
    try:
        if data[0] != 0x08:
            return None
        pk_id = data[1]
        pos = 2
        if pk_id >= 0x80:
            pk_id, pos = _long_varint(data, pos, pk_id)
            if pk_id < 0:
                return None
        if data[pos] != 0x10:
            return None
        spk_id = data[pos + 1]
        pos += 2
        if spk_id >= 0x80:
            spk_id, pos = _long_varint(data, pos, spk_id)
            if spk_id < 0:
                return None
        if (
            data[pos] != 0x1A
            or data[pos + 1] != _KEY
            or data[pos + 34] != 0x22
            or data[pos + 35] != _KEY
            or data[pos + 68] != 0x2A
        ):
            return None
        ik = data[pos + 2 : pos + 34]
        ek = data[pos + 36 : pos + 68]
        size = data[pos + 69]
        pos += 70
        if size >= 0x80:
            size, pos = _long_varint(data, pos, size)
        if size < 0 or pos + size != len(data):
            return None
        mac_size = data[pos + 1]
        at = pos + 2 + mac_size  # the tag of the embedded message's second field
        if data[pos] != 0x0A or mac_size >= 0x80 or data[at] != 0x12:
            return None
        size = data[at + 1]
        if size >= 0x80 or at + 2 + size != len(data):
            return None
    except IndexError:
        return None
    fields = KeyExchangeFields(
        pk_id, spk_id, _ed25519_key("OMEMOKeyExchange.ik", ik), canonical_x25519_public(ek)
    )
    return fields, data[pos:]


def _o2_kex_scanned(data: bytes) -> tuple[KeyExchangeFields, bytes]:
    """Tiers 2 and 3 of :meth:`OMEMO2Wire.parse_key_exchange`."""
    ints = [0, 0]
    blobs = [b"", b""]
    embedded: list[bytes] = []
    if _scan(data, 0, _O2_KEX_TAGS, ints, blobs, embedded):
        # Repeated embedded messages are merged: the fields of the later ones win.
        auth: list[bytes | None] = [None, None]
        if all(_scan(part, 0, _O2_AUTH_TAGS, _NO_INTS, auth, _NO_EMBEDDED) for part in embedded):
            ik, ek = blobs
            fields = KeyExchangeFields(
                ints[0],
                ints[1],
                _ed25519_key("OMEMOKeyExchange.ik", ik),
                _x25519_key("OMEMOKeyExchange.ek", ek),
            )
            if not embedded:
                raise MalformedMessage("OMEMOKeyExchange has no message")
            return fields, _auth_message(*auth)
    return _PB_OMEMO2_WIRE.parse_key_exchange(data)


def _legacy_open_canonical(data: bytes) -> OpenedMessage | None:
    """Tier 1 of :meth:`LegacyWire.open` (the version byte and length checked already):
    ``version 0a 21 05 ratchet_key 10 counter 18 previous_counter 22 len ciphertext mac``."""
    end = len(data) - 8  # the MAC; every byte read below is before ``pos`` at the final check
    try:
        if data[1] != 0x0A or data[2] != _KEY + 1 or data[3] != 0x05 or data[36] != 0x10:
            return None
        n = data[37]
        pos = 38
        if n >= 0x80:
            n, pos = _long_varint(data, pos, n)
            if n < 0:
                return None
        if data[pos] != 0x18:
            return None
        pn = data[pos + 1]
        pos += 2
        if pn >= 0x80:
            pn, pos = _long_varint(data, pos, pn)
            if pn < 0:
                return None
        if data[pos] != 0x22:
            return None
        size = data[pos + 1]
        pos += 2
        if size >= 0x80:
            size, pos = _long_varint(data, pos, size)
        if size < 0 or pos + size != end:
            return None
    except IndexError:
        return None
    header = _new_tuple(Header, (canonical_x25519_public(data[4:36]), n, pn))
    return _new_tuple(OpenedMessage, (header, data[pos:end], data[:end], data[end:]))


def _legacy_open_scanned(data: bytes) -> OpenedMessage:
    """Tiers 2 and 3 of :meth:`LegacyWire.open` (the version byte and length checked already)."""
    body = data[:-8]
    ints = [-1, 0]
    blobs: list[bytes | None] = [None, None]
    if _scan(body, 1, _L_MESSAGE_TAGS, ints, blobs, _NO_EMBEDDED):
        ratchet_key, ciphertext = blobs
        if ratchet_key is None:
            raise _missing("SignalMessage", "ratchet_key")
        if ints[0] < 0:
            raise _missing("SignalMessage", "counter")
        if ciphertext is None:
            raise _missing("SignalMessage", "ciphertext")
        header = Header(_legacy_key("SignalMessage.ratchetKey", ratchet_key), ints[0], ints[1])
        return OpenedMessage(header, ciphertext, body, data[-8:])
    return _PB_LEGACY_WIRE.open(data)


def _legacy_kex_canonical(data: bytes) -> tuple[KeyExchangeFields, bytes] | None:
    """Tier 1 of :meth:`LegacyWire.parse_key_exchange` (the version byte checked already):
    ``version 08 pre_key_id 12 21 05 base_key 1a 21 05 identity_key 22 len message
    [28 registration_id] 30 signed_pre_key_id``."""
    try:
        if data[1] != 0x08:
            return None
        pk_id = data[2]
        pos = 3
        if pk_id >= 0x80:
            pk_id, pos = _long_varint(data, pos, pk_id)
            if pk_id < 0:
                return None
        if (
            data[pos] != 0x12
            or data[pos + 1] != _KEY + 1
            or data[pos + 2] != 0x05
            or data[pos + 35] != 0x1A
            or data[pos + 36] != _KEY + 1
            or data[pos + 37] != 0x05
            or data[pos + 70] != 0x22
        ):
            return None
        base_key = data[pos + 3 : pos + 35]
        identity_key = data[pos + 38 : pos + 70]
        size = data[pos + 71]
        pos += 72
        if size >= 0x80:
            size, pos = _long_varint(data, pos, size)
            if size < 0:
                return None
        message = data[pos : pos + size]
        pos += size
        if data[pos] == 0x28:  # registrationId, not used
            registration_id = data[pos + 1]
            pos += 2
            if registration_id >= 0x80:
                registration_id, pos = _long_varint(data, pos, registration_id)
                if registration_id < 0:
                    return None
        if data[pos] != 0x30:
            return None
        spk_id = data[pos + 1]
        pos += 2
        if spk_id >= 0x80:
            spk_id, pos = _long_varint(data, pos, spk_id)
        if spk_id < 0 or pos != len(data):
            return None
    except IndexError:
        return None
    fields = KeyExchangeFields(
        pk_id, spk_id, canonical_x25519_public(identity_key), canonical_x25519_public(base_key)
    )
    return fields, message


def _legacy_kex_scanned(data: bytes) -> tuple[KeyExchangeFields, bytes]:
    """Tiers 2 and 3 of :meth:`LegacyWire.parse_key_exchange` (the version byte checked already)."""
    ints = [-1, -1, -1]
    blobs: list[bytes | None] = [None, None, None]
    if _scan(data, 1, _L_KEX_TAGS, ints, blobs, _NO_EMBEDDED):
        base_key, identity_key, message = blobs
        if base_key is None:
            raise _missing("PreKeySignalMessage", "base_key")
        if identity_key is None:
            raise _missing("PreKeySignalMessage", "identity_key")
        if message is None:
            raise _missing("PreKeySignalMessage", "message")
        pre_key_id, _registration_id, signed_pre_key_id = ints
        if signed_pre_key_id < 0:
            raise _missing("PreKeySignalMessage", "signed_pre_key_id")
        if pre_key_id < 0:
            raise MalformedMessage(_NO_PRE_KEY)
        fields = KeyExchangeFields(
            pre_key_id,
            signed_pre_key_id,
            _legacy_key("PreKeySignalMessage.identityKey", identity_key),
            _legacy_key("PreKeySignalMessage.baseKey", base_key),
        )
        return fields, message
    return _PB_LEGACY_WIRE.parse_key_exchange(data)


# --- The codecs -----------------------------------------------------------------------------------


class OMEMO2Wire:
    """Codec of ``urn:xmpp:omemo:2`` (16-byte MAC, raw 32-byte keys).

    Hand-written; arguments of unexpected types and unusual encodings are handled by the protobuf
    codec :class:`_PBOMEMO2Wire` (see the module documentation).
    """

    mac_length = 16

    def seal(self, header: Header, ciphertext: bytes, auth_key: bytes, ad: bytes) -> bytes:
        """Serialise ``OMEMOMessage`` and wrap it with its MAC into an ``OMEMOAuthenticatedMessage``."""
        dh_pub, n, pn = header.dh_pub, header.n, header.pn
        if not (
            type(n) is int
            and type(pn) is int
            and 0 <= n <= _U32_MAX
            and 0 <= pn <= _U32_MAX
            and type(dh_pub) is bytes
            and type(ciphertext) is bytes
        ):
            return _PB_OMEMO2_WIRE.seal(header, ciphertext, auth_key, ad)
        if n < 0x80 and pn < 0x80:
            head = bytes((0x08, n, 0x10, pn, 0x1A))
        else:
            head = b"".join((b"\x08", _varint(n), b"\x10", _varint(pn), b"\x1a"))
        body = b"".join((head, _varint(len(dh_pub)), dh_pub, b"\x22", _varint(len(ciphertext)), ciphertext))
        mac = hmac_sha256(auth_key, ad + body)[:16]
        return b"".join((b"\x0a\x10", mac, b"\x12", _varint(len(body)), body))

    def open(self, data: bytes) -> OpenedMessage:
        """Parse an ``OMEMOAuthenticatedMessage`` and its ``OMEMOMessage`` (without checking the MAC).

        Raises:
            MalformedMessage: not protobuf, a MAC that is not 16 bytes, no ciphertext, or a ratchet key
                that is not 32 bytes.
        """
        if type(data) is not bytes:
            return _PB_OMEMO2_WIRE.open(data)
        return _o2_open_canonical(data) or _o2_open_scanned(data)

    def build_key_exchange(self, fields: KeyExchangeFields, message: bytes) -> bytes:
        """Wrap the ``OMEMOAuthenticatedMessage`` ``message`` into an ``OMEMOKeyExchange``.

        Raises:
            MalformedMessage: ``message`` is not an ``OMEMOAuthenticatedMessage`` with both fields.
        """
        pk_id, spk_id, ik, ek = (
            fields.pre_key_id,
            fields.signed_pre_key_id,
            fields.identity_key,
            fields.ephemeral_key,
        )
        if (
            type(pk_id) is int
            and type(spk_id) is int
            and 0 <= pk_id <= _U32_MAX
            and 0 <= spk_id <= _U32_MAX
            and type(ik) is bytes
            and type(ek) is bytes
            and type(message) is bytes
        ):
            embedded = message if _auth_is_canonical(message) else _auth_rewritten(message)
            if embedded is not None:
                return b"".join(
                    (
                        b"\x08",
                        _varint(pk_id),
                        b"\x10",
                        _varint(spk_id),
                        b"\x1a",
                        _varint(len(ik)),
                        ik,
                        b"\x22",
                        _varint(len(ek)),
                        ek,
                        b"\x2a",
                        _varint(len(embedded)),
                        embedded,
                    )
                )
        return _PB_OMEMO2_WIRE.build_key_exchange(fields, message)

    def parse_key_exchange(self, data: bytes) -> tuple[KeyExchangeFields, bytes]:
        """Split an ``OMEMOKeyExchange`` into its X3DH data and its ``OMEMOAuthenticatedMessage``,
        re-serialised as protobuf does (an incomplete one is returned as it is and refused by
        :meth:`open`).

        Raises:
            MalformedMessage: not protobuf, a key of the wrong length or encoding, or no message.
        """
        if type(data) is not bytes:
            return _PB_OMEMO2_WIRE.parse_key_exchange(data)
        return _o2_kex_canonical(data) or _o2_kex_scanned(data)


class LegacyWire:
    """Codec of ``eu.siacs.conversations.axolotl`` (libsignal v3 messages, 8-byte MAC).

    Hand-written; arguments of unexpected types and unusual encodings are handled by the protobuf
    codec :class:`_PBLegacyWire` (see the module documentation).
    """

    mac_length = 8

    def seal(self, header: Header, ciphertext: bytes, auth_key: bytes, ad: bytes) -> bytes:
        """Serialise ``version || SignalMessage`` and append its 8-byte MAC."""
        dh_pub, n, pn = header.dh_pub, header.n, header.pn
        if not (
            type(n) is int
            and type(pn) is int
            and 0 <= n <= _U32_MAX
            and 0 <= pn <= _U32_MAX
            and type(dh_pub) is bytes
            and type(ciphertext) is bytes
        ):
            return _PB_LEGACY_WIRE.seal(header, ciphertext, auth_key, ad)
        body = b"".join(
            (
                bytes((_LEGACY_VERSION, 0x0A)),
                _varint(len(dh_pub) + 1),
                _LEGACY_KEY_TYPE,
                dh_pub,
                bytes((0x10, n, 0x18, pn)) if n < 0x80 and pn < 0x80 else _counters(n, pn),
                b"\x22",
                _varint(len(ciphertext)),
                ciphertext,
            )
        )
        return body + hmac_sha256(auth_key, ad + body)[:8]

    def open(self, data: bytes) -> OpenedMessage:
        """Parse ``version || SignalMessage || mac`` (without checking the MAC).

        Raises:
            MalformedMessage: a version other than 3, too short, not protobuf, a required field
                missing, or a ratchet key that is not 0x05 and 32 bytes.
        """
        if type(data) is not bytes:
            return _PB_LEGACY_WIRE.open(data)
        _check_version(data, "SignalMessage")
        if len(data) <= 1 + self.mac_length:
            raise MalformedMessage(f"SignalMessage of {len(data)} bytes is too short")
        return _legacy_open_canonical(data) or _legacy_open_scanned(data)

    def build_key_exchange(self, fields: KeyExchangeFields, message: bytes) -> bytes:
        """Wrap the sealed ``SignalMessage`` ``message`` into ``version || PreKeySignalMessage``."""
        pk_id, spk_id, ik, ek = (
            fields.pre_key_id,
            fields.signed_pre_key_id,
            fields.identity_key,
            fields.ephemeral_key,
        )
        if not (
            type(pk_id) is int
            and type(spk_id) is int
            and 0 <= pk_id <= _U32_MAX
            and 0 <= spk_id <= _U32_MAX
            and type(ik) is bytes
            and type(ek) is bytes
            and type(message) is bytes
        ):
            return _PB_LEGACY_WIRE.build_key_exchange(fields, message)
        return b"".join(
            (
                bytes((_LEGACY_VERSION, 0x08)),
                _varint(pk_id),
                b"\x12",
                _varint(len(ek) + 1),
                _LEGACY_KEY_TYPE,
                ek,
                b"\x1a",
                _varint(len(ik) + 1),
                _LEGACY_KEY_TYPE,
                ik,
                b"\x22",
                _varint(len(message)),
                message,
                b"\x30",
                _varint(spk_id),
            )
        )

    def parse_key_exchange(self, data: bytes) -> tuple[KeyExchangeFields, bytes]:
        """Split ``version || PreKeySignalMessage`` into its X3DH data and the sealed ``SignalMessage``.

        Raises:
            MalformedMessage: a version other than 3, not protobuf, a required field missing (the
                one-time pre key id included), or a key that is not 0x05 and 32 bytes.
        """
        if type(data) is not bytes:
            return _PB_LEGACY_WIRE.parse_key_exchange(data)
        _check_version(data, "PreKeySignalMessage")
        return _legacy_kex_canonical(data) or _legacy_kex_scanned(data)


#: Shared codec instances (stateless).
OMEMO2_WIRE = OMEMO2Wire()
LEGACY_WIRE = LegacyWire()
