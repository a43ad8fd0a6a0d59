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


class OMEMO2Wire:
    """Codec of ``urn:xmpp:omemo:2`` (16-byte MAC, raw 32-byte keys)."""

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


def _legacy_key(field: str, value: bytes) -> bytes:
    """The canonical X25519 key of a legacy ``0x05 || u`` field."""
    if len(value) != _KEY + 1 or value[:1] != _LEGACY_KEY_TYPE:
        raise MalformedMessage(f"field {field} must be 0x05 followed by 32 bytes (got {len(value)} bytes)")
    return canonical_x25519_public(value[1:])


def _require(message: PBMessage, what: str, *fields: str) -> None:
    for field in fields:
        if not message.HasField(field):
            raise MalformedMessage(f"{what} has no {field}")


def _check_version(data: bytes, what: str) -> None:
    if not data:
        raise MalformedMessage(f"{what} is empty")
    if data[0] >> 4 != 3:
        raise MalformedMessage(f"{what} has version byte 0x{data[0]:02x}; only version 3 is supported")


class LegacyWire:
    """Codec of ``eu.siacs.conversations.axolotl`` (libsignal v3 messages, 8-byte MAC)."""

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
            raise MalformedMessage(
                "PreKeySignalMessage has no preKeyId: key exchanges without a one-time pre key are refused"
            )
        fields = KeyExchangeFields(
            pre_key_id=kex.pre_key_id,
            signed_pre_key_id=kex.signed_pre_key_id,
            identity_key=_legacy_key("PreKeySignalMessage.identityKey", kex.identity_key),
            ephemeral_key=_legacy_key("PreKeySignalMessage.baseKey", kex.base_key),
        )
        return fields, bytes(kex.message)


#: Shared codec instances (stateless).
OMEMO2_WIRE = OMEMO2Wire()
LEGACY_WIRE = LegacyWire()
