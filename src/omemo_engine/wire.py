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
- The decoders read the exact layout protobuf writes, which is what arrives in practice (every field
  once, in field-number order, one-byte tags, the declared key and MAC lengths), with straight-line
  code (``_*_canonical``). Anything else (another order, a repeated or unknown field, a group, a wrong
  wire type or length, a long varint, a truncation...) goes whole to the protobuf codec, so the verdict
  on unusual input is protobuf's own by construction. The checks after parsing (key encodings,
  required fields, version byte) are the same in both, with the same error messages.
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


def _counters(n: int, pn: int) -> bytes:
    """The ``counter`` and ``previousCounter`` fields of a ``SignalMessage``."""
    return b"".join((b"\x10", _varint(n), b"\x18", _varint(pn)))


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
        if len(auth.mac) != self.mac_length:
            raise MalformedMessage(f"OMEMOAuthenticatedMessage.mac must be 16 bytes, got {len(auth.mac)}")
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
# Each decoder reads the exact layout protobuf writes (``_*_canonical``): straight-line code at fixed
# or running offsets, returning ``None`` for anything else (including a wrong key or MAC length, whose
# error message is the protobuf codec's), which then goes to the protobuf codec. An input accepted here
# has the same fields for the protobuf codec, so both agree on it.

#: ``tuple.__new__``: builds a NamedTuple from its items without the Python-level ``__new__`` (the same
#: result, a third of the time).
_new_tuple = tuple.__new__


def _o2_open_canonical(data: bytes) -> OpenedMessage | None:
    """The layout of :meth:`OMEMO2Wire.open`: ``0a 10 mac 12 len {08 n 10 pn 1a 20 dh_pub 22 len ct}``."""
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


def _minimal_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``data[pos]`` if it is written as protobuf writes it (the shortest form, at most 5
    bytes, a uint32): ``(value, position after it)``; ``(-1, pos)`` otherwise. IndexError at the end."""
    first = data[pos]
    if first < 0x80:
        return first, pos + 1
    value, end = _long_varint(data, pos + 1, first)
    return (value, end) if value >= 0 and end - pos == len(_varint(value)) else (-1, pos)


def _auth_is_canonical(data: bytes) -> bool:
    """Whether ``data`` is ``0a len mac 12 len message`` exactly as protobuf serialises an
    ``OMEMOAuthenticatedMessage`` with both fields (so re-serialising it would give the same bytes)."""
    try:
        if data[0] != 0x0A:
            return False
        mac_size, pos = _minimal_varint(data, 1)
        at = pos + mac_size  # the tag of the second field
        if mac_size < 0 or data[at] != 0x12:
            return False
        size, pos = _minimal_varint(data, at + 1)
        return size >= 0 and pos + size == len(data)
    except IndexError:
        return False


def _o2_kex_canonical(data: bytes) -> tuple[KeyExchangeFields, bytes] | None:
    """The layout of :meth:`OMEMO2Wire.parse_key_exchange`:
    ``08 pk_id 10 spk_id 1a 20 ik 22 20 ek 2a len {0a len mac 12 len message}``, the embedded message
    as protobuf writes it, so that it is returned as it is (protobuf's re-serialisation of it gives the
    same bytes)."""
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
        if size < 0 or pos + size != len(data) or not _auth_is_canonical(data[pos:]):
            return None
    except IndexError:
        return None
    fields = KeyExchangeFields(
        pk_id, spk_id, _ed25519_key("OMEMOKeyExchange.ik", ik), canonical_x25519_public(ek)
    )
    return fields, data[pos:]


def _legacy_open_canonical(data: bytes) -> OpenedMessage | None:
    """The layout of :meth:`LegacyWire.open` (the version byte and length checked already):
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


def _legacy_kex_canonical(data: bytes) -> tuple[KeyExchangeFields, bytes] | None:
    """The layout of :meth:`LegacyWire.parse_key_exchange` (the version byte checked already):
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
        return _o2_open_canonical(data) or _PB_OMEMO2_WIRE.open(data)

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
            and _auth_is_canonical(message)  # else protobuf re-serialises it (or refuses it)
        ):
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
                    _varint(len(message)),
                    message,
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
        return _o2_kex_canonical(data) or _PB_OMEMO2_WIRE.parse_key_exchange(data)


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
        return _legacy_open_canonical(data) or _PB_LEGACY_WIRE.open(data)

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
        return _legacy_kex_canonical(data) or _PB_LEGACY_WIRE.parse_key_exchange(data)


#: Shared codec instances (stateless).
OMEMO2_WIRE = OMEMO2Wire()
LEGACY_WIRE = LegacyWire()
