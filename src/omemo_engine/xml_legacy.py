"""XML codec of the legacy ``eu.siacs.conversations.axolotl`` namespace (XEP-0384 0.3).

Theory of operation
-------------------
The twin of :mod:`omemo_engine.xml_omemo2` for legacy OMEMO, with the same contract: pure
conversions between :class:`xml.etree.ElementTree.Element` trees and frozen value objects, strict
about meaning (every violation raises :class:`~omemo_engine.errors.MalformedXML` naming the element,
attribute and reason; nothing else escapes) and tolerant about form (whitespace inside base64 as the
pretty-printed stanzas of real clients have it, any child order, unknown children and attributes
ignored, ``prekey`` as ``true``/``1``/``false``/``0``). The ``oldmemo`` backend wraps these functions
into the python-omemo ``oldmemo.etree`` API. The parsing helpers and loops the two codecs share
(ids, booleans, base64, single children, the head of ``<encrypted>``, the pre-key list) are in
:mod:`omemo_engine._xml_common`.

Pairs (``parse_x`` next to ``build_x``):

- device list ``<list><device id='N'/>..</list>`` (:func:`parse_device_list` /
  :func:`build_device_list`; plain device ids, legacy lists have no labels);
- bundle ``<bundle><signedPreKeyPublic signedPreKeyId='N'/><signedPreKeySignature/><identityKey/>
  <prekeys><preKeyPublic preKeyId='N'/>..</prekeys></bundle>`` (:func:`parse_bundle` /
  :func:`build_bundle`, values :class:`Bundle` and :class:`~omemo_engine.xml_omemo2.PreKey`);
- message ``<encrypted><header sid='N'><key rid='N' [prekey='true']/>..<iv/></header>[<payload/>]
  </encrypted>`` (:func:`parse_message` / :func:`build_message`, values :class:`EncryptedMessage`
  and :class:`EncryptedKey`).

Key encoding (PROTOCOL.md 4.1): every public key in a legacy bundle is libsignal's serialized form,
the type byte ``0x05`` (Curve25519) followed by the 32-byte Montgomery u-coordinate. The codec checks
and strips that byte when parsing and adds it when building, so the value objects hold plain 32-byte
keys. The identity key is therefore in Curve25519 form here, unlike OMEMO 2's Ed25519 ``<ik>``.

Sign bit (PROTOCOL.md 4.5): the Curve25519 form loses the sign of the Ed25519 identity key, and
libsignal carries it in the top bit of the last byte of ``signedPreKeySignature``. The codec stays
about structure: :attr:`Bundle.signed_pre_key_signature` is the 64 bytes exactly as sent (bit 511
included) and :func:`build_bundle` writes them unchanged. The backend recovers / embeds the bit with
:func:`omemo_engine.xeddsa.extract_sign_bit` / :func:`omemo_engine.xeddsa.embed_sign_bit`.

Messages: keys are not grouped by JID (legacy headers match keys by device id only). The ``<iv>``
(12 bytes in practice; 16 from old senders) sits in the header and is always written; XEP-0384 0.3
"KeyTransportElement"s and python-oldmemo's empty messages have an ``<iv>`` but no ``<payload>``. A
message whose ``<payload>`` or ``<iv>`` is missing has empty content (:attr:`EncryptedMessage.is_empty`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from xml.etree.ElementTree import Element, SubElement

from ._primitives import canonical_x25519_public
from ._xml_common import ANY_LENGTH as _ANY_LENGTH
from ._xml_common import MAX_ID, MAX_KEY_ID, MIN_ID, MIN_KEY_ID, PUBLIC_KEY_LENGTH, PreKey
from ._xml_common import NON_EMPTY as _NON_EMPTY
from ._xml_common import b64_text as _b64_text
from ._xml_common import b64encode as _b64encode
from ._xml_common import check_id as _check_id
from ._xml_common import check_length as _check_length
from ._xml_common import check_root as _check_root
from ._xml_common import check_unique_pre_key_ids as _check_unique_pre_key_ids
from ._xml_common import encrypted_parts as _encrypted_parts
from ._xml_common import fail as _fail
from ._xml_common import missing as _missing
from ._xml_common import once as _once
from ._xml_common import parse_bool as _parse_bool
from ._xml_common import parse_id as _parse_id
from ._xml_common import parse_pre_keys as _parse_pre_keys
from ._xml_common import required_children as _required_children
from ._xml_common import where_id as _where_id
from .errors import MalformedXML
from .xml_omemo2 import SIGNATURE_LENGTH

__all__ = [
    "IV_LENGTHS",
    "KEY_TYPE_CURVE25519",
    "MAX_ID",
    "MAX_KEY_ID",
    "MIN_ID",
    "MIN_KEY_ID",
    "NAMESPACE",
    "PUBLIC_KEY_LENGTH",
    "SERIALIZED_PUBLIC_KEY_LENGTH",
    "SIGNATURE_LENGTH",
    "Bundle",
    "EncryptedKey",
    "EncryptedMessage",
    "PreKey",
    "build_bundle",
    "build_device_list",
    "build_message",
    "parse_bundle",
    "parse_device_list",
    "parse_message",
]

#: The XML namespace of legacy OMEMO (XEP-0384 0.3, "siacs OMEMO").
NAMESPACE: Final = "eu.siacs.conversations.axolotl"

#: libsignal's key-type byte for Curve25519 (``DJB_TYPE``), prefixed to every serialized public key.
KEY_TYPE_CURVE25519: Final = 0x05
#: Length of a serialized public key on the legacy wire: type byte + 32-byte u-coordinate.
SERIALIZED_PUBLIC_KEY_LENGTH: Final = 1 + PUBLIC_KEY_LENGTH
#: Accepted ``<iv>`` lengths: 12 (AES-GCM's natural nonce; python-omemo >= 0.12, Conversations'
#: ``TWELVE_BYTE_IV``) and 16 (older senders).
IV_LENGTHS: Final = (12, 16)

_NS = "{" + NAMESPACE + "}"
_LIST = _NS + "list"
_DEVICE = _NS + "device"
_BUNDLE = _NS + "bundle"
_SPK = _NS + "signedPreKeyPublic"
_SPKS = _NS + "signedPreKeySignature"
_IK = _NS + "identityKey"
_PREKEYS = _NS + "prekeys"
_PK = _NS + "preKeyPublic"
_ENCRYPTED = _NS + "encrypted"
_HEADER = _NS + "header"
_KEY = _NS + "key"
_IV = _NS + "iv"
_PAYLOAD = _NS + "payload"
_TYPE_BYTE = bytes((KEY_TYPE_CURVE25519,))
_BUNDLE_CHILDREN: Final = (_SPK, _SPKS, _IK, _PREKEYS)


# ---------------------------------------------------------------------------------------------------
# Value objects (PreKey is shared with xml_omemo2: a pre-key is an id and a 32-byte X25519 key in
# both namespaces)


@dataclass(frozen=True, slots=True, kw_only=True)
class Bundle:
    """The public part of a legacy device's X3DH state, as published in ``<bundle>``.

    Attributes:
        signed_pre_key_id: The ``signedPreKeyId``, 0..2^32-1 (Converse numbers from 0).
        signed_pre_key: The 32-byte X25519 signed pre-key (type byte stripped).
        signed_pre_key_signature: The 64 bytes of ``<signedPreKeySignature>`` as sent: the
            signature over ``0x05 || signed_pre_key``, with the identity key's Ed25519 sign bit in the
            top bit of the last byte (libsignal convention, PROTOCOL.md 4.5). Not verified here.
        identity_key: The 32-byte identity key in Curve25519 form (type byte stripped).
        pre_keys: The one-time pre-keys in document order, ids unique. May be empty.
    """

    signed_pre_key_id: int
    signed_pre_key: bytes
    signed_pre_key_signature: bytes
    identity_key: bytes
    pre_keys: tuple[PreKey, ...]

    def __post_init__(self) -> None:
        _check_id("signed_pre_key_id", self.signed_pre_key_id, MIN_KEY_ID, MAX_KEY_ID)
        _check_length("signed_pre_key", self.signed_pre_key, PUBLIC_KEY_LENGTH)
        _check_length("signed_pre_key_signature", self.signed_pre_key_signature, SIGNATURE_LENGTH)
        _check_length("identity_key", self.identity_key, PUBLIC_KEY_LENGTH)
        _check_unique_pre_key_ids(self.pre_keys)


@dataclass(frozen=True, slots=True, kw_only=True)
class EncryptedKey:
    """One ``<key>`` of a legacy message header.

    Attributes:
        device_id: The recipient device id (``rid``), 1..2^31-1.
        data: The decoded ``<key>`` text: a serialized PreKeySignalMessage when ``kex`` is true, else a
            serialized SignalMessage (both start with the version byte). Never empty.
        kex: Whether the ``prekey`` attribute is true (the key carries a key exchange). Named as in
            :class:`omemo_engine.xml_omemo2.EncryptedKey` so that backends can share code.
    """

    device_id: int
    data: bytes
    kex: bool = False

    def __post_init__(self) -> None:
        _check_id("device_id", self.device_id)
        if not self.data:
            raise ValueError("data must not be empty")


@dataclass(frozen=True, slots=True, kw_only=True)
class EncryptedMessage:
    """A legacy ``<encrypted>`` element.

    Attributes:
        sender_device_id: The ``sid`` of ``<header>``, 1..2^31-1.
        keys: Every ``<key>`` in document order (duplicates kept: choosing is the backend's job).
        iv: The decoded ``<iv>`` (12 or 16 bytes), or ``None`` when the header has none. Required by
            :func:`build_message`, which always writes it.
        payload: The decoded ``<payload>`` (the AES-GCM ciphertext without its tag), or ``None``.
    """

    sender_device_id: int
    keys: tuple[EncryptedKey, ...]
    iv: bytes | None
    payload: bytes | None = None

    def __post_init__(self) -> None:
        _check_id("sender_device_id", self.sender_device_id)
        if self.iv is not None and len(self.iv) not in IV_LENGTHS:
            raise ValueError(f"iv must be 12 or 16 bytes, got {len(self.iv)}")

    @property
    def is_empty(self) -> bool:
        """Whether the message has no content: ``<payload>`` or ``<iv>`` is missing (PROTOCOL.md 4.7)."""
        return self.payload is None or self.iv is None


# ---------------------------------------------------------------------------------------------------
# Device list


def parse_device_list(element: Element, problems: list[str] | None = None) -> tuple[int, ...]:
    """Parse a ``<list>`` element.

    One bad entry does not hide the owner's other devices: a ``<device>`` with a missing or invalid
    ``id`` (Converse may draw device id 0) is left out, and described in ``problems`` if given.
    Duplicate device ids are collapsed (the first occurrence keeps its place); an empty ``<list/>``
    yields ``()``. Attributes other than ``id`` (e.g. a ``label`` some client adds) are ignored.

    Args:
        element: The ``{eu.siacs.conversations.axolotl}list`` element (the PEP item's payload).
        problems: Receives one message per ``<device>`` left out.

    Returns:
        The device ids in document order.

    Raises:
        MalformedXML: The element is not ``<list>`` of this namespace.
    """
    _check_root(element, _LIST, "list")
    # A dict keeps the first occurrence's position and drops repeats in one pass.
    device_ids: dict[int, None] = {}
    for child in element:
        if child.tag == _DEVICE:
            try:
                device_ids[_parse_id(child.get("id"), "<list><device>", "id")] = None
            except MalformedXML as exc:
                if problems is not None:
                    problems.append(f"{exc}: entry left out")
    return tuple(device_ids)


def build_device_list(device_ids: Iterable[int]) -> Element:
    """Build a ``<list>`` element.

    Args:
        device_ids: The device ids, written in this order.

    Returns:
        The ``{eu.siacs.conversations.axolotl}list`` element.

    Raises:
        ValueError: An id is outside 1..2^31-1 or appears twice.
    """
    root = Element(_LIST)
    seen: set[int] = set()
    for device_id in device_ids:
        _check_id("device id", device_id)
        if device_id in seen:
            raise ValueError(f"device id {device_id} appears twice in the device list")
        seen.add(device_id)
        SubElement(root, _DEVICE, {"id": str(device_id)})
    return root


# ---------------------------------------------------------------------------------------------------
# Bundle


def parse_bundle(element: Element) -> Bundle:
    """Parse a legacy ``<bundle>`` element.

    Args:
        element: The ``{eu.siacs.conversations.axolotl}bundle`` element (the PEP item's payload).

    Returns:
        The bundle, keys without their type byte, the signature exactly as sent (sign bit included).

    Raises:
        MalformedXML: The element is not ``<bundle>`` of this namespace; ``<signedPreKeyPublic>``,
            ``<signedPreKeySignature>``, ``<identityKey>`` or ``<prekeys>`` is missing or repeated;
            ``signedPreKeyId`` (optional in the schema, but a key exchange must name it) or a
            ``preKeyId`` is missing or invalid; a text is not base64 or decodes to the wrong length; a
            key's type byte is not 0x05; two ``<preKeyPublic>`` share an id.
    """
    _check_root(element, _BUNDLE, "bundle")
    spk, spks, ik, prekeys = _required_children(element, "<bundle>", _BUNDLE_CHILDREN)
    pre_keys = _parse_pre_keys(
        prekeys, "<bundle><prekeys>", _PK, "preKeyId", SERIALIZED_PUBLIC_KEY_LENGTH, _strip_type_byte
    )
    return Bundle(
        signed_pre_key_id=_parse_id(
            spk.get("signedPreKeyId"),
            "<bundle><signedPreKeyPublic>",
            "signedPreKeyId",
            MIN_KEY_ID,
            MAX_KEY_ID,
        ),
        signed_pre_key=_curve_key(spk, "<bundle><signedPreKeyPublic>"),
        signed_pre_key_signature=_b64_text(spks, "<bundle><signedPreKeySignature>", SIGNATURE_LENGTH),
        identity_key=_curve_key(ik, "<bundle><identityKey>"),
        pre_keys=pre_keys,
    )


def build_bundle(bundle: Bundle) -> Element:
    """Build a legacy ``<bundle>`` element.

    Args:
        bundle: The bundle to write; the backend has already embedded the identity key's sign bit in
            ``signed_pre_key_signature`` (:func:`omemo_engine.xeddsa.embed_sign_bit`).

    Returns:
        The ``{eu.siacs.conversations.axolotl}bundle`` element, children in the order
        signedPreKeyPublic, signedPreKeySignature, identityKey, prekeys; every key 0x05-prefixed.
    """
    root = Element(_BUNDLE)
    SubElement(root, _SPK, {"signedPreKeyId": str(bundle.signed_pre_key_id)}).text = _b64encode(
        _TYPE_BYTE + bundle.signed_pre_key
    )
    SubElement(root, _SPKS).text = _b64encode(bundle.signed_pre_key_signature)
    SubElement(root, _IK).text = _b64encode(_TYPE_BYTE + bundle.identity_key)
    prekeys = SubElement(root, _PREKEYS)
    for pre_key in bundle.pre_keys:
        SubElement(prekeys, _PK, {"preKeyId": str(pre_key.pre_key_id)}).text = _b64encode(
            _TYPE_BYTE + pre_key.pub
        )
    return root


def _curve_key(element: Element, where: str) -> bytes:
    """Decode a serialized libsignal public key ``0x05 || u`` and return ``u`` (PROTOCOL.md 4.1)."""
    return _strip_type_byte(_b64_text(element, where, SERIALIZED_PUBLIC_KEY_LENGTH), where, None)


def _strip_type_byte(data: bytes, where: str, ident: int | None) -> bytes:
    """``u`` of a decoded serialized public key ``0x05 || u``, in its canonical encoding (bit 255 clear,
    ``u < p``: the same key, as RFC 7748 reads it); ``ident``: the id of its element."""
    if data[0] != KEY_TYPE_CURVE25519:
        _fail(
            _where_id(where, ident),
            f"key type byte must be 0x{KEY_TYPE_CURVE25519:02x} (Curve25519), got 0x{data[0]:02x}",
        )
    return canonical_x25519_public(data[1:])


# ---------------------------------------------------------------------------------------------------
# Message


def parse_message(element: Element) -> EncryptedMessage:
    """Parse a legacy ``<encrypted>`` element.

    Args:
        element: The ``{eu.siacs.conversations.axolotl}encrypted`` element.

    Returns:
        The message; ``iv`` / ``payload`` are ``None`` when their element is absent (then
        :attr:`EncryptedMessage.is_empty` is true).

    Raises:
        MalformedXML: The element is not ``<encrypted>`` of this namespace; ``<header>`` is missing or
            repeated; ``sid`` is missing or invalid (optional in the schema, but needed to find the
            session); a ``<key>`` has a missing or invalid ``rid``, a ``prekey`` that is not an
            ``xs:boolean``, or a text that is empty or not base64; ``<iv>`` is repeated, not base64 or
            not 12 or 16 bytes; ``<payload>`` is repeated or not base64.
    """
    header, sender_device_id, payload = _encrypted_parts(element, _ENCRYPTED, _HEADER, _PAYLOAD)

    keys: list[EncryptedKey] = []
    iv_element = None
    for child in header:
        tag = child.tag
        if tag == _KEY:
            device_id = _parse_id(child.get("rid"), "<header><key>", "rid")
            keys.append(
                EncryptedKey(
                    device_id=device_id,
                    data=_b64_text(child, "<header><key>", _NON_EMPTY, device_id),
                    kex=_parse_bool(child.get("prekey"), "<header><key>", "prekey"),
                )
            )
        elif tag == _IV:
            iv_element = _once(iv_element, child, "<header>", "iv")

    iv = None
    if iv_element is not None:
        iv = _b64_text(iv_element, "<header><iv>", _ANY_LENGTH)
        if len(iv) not in IV_LENGTHS:
            _fail("<header><iv>", f"text must be base64 of 12 or 16 bytes, got {len(iv)} bytes")
    elif payload is not None:
        # Without its IV the payload cannot be decrypted; ignoring it would turn the message into an
        # empty one and lose its content silently.
        _missing("<header>", "iv")

    return EncryptedMessage(
        sender_device_id=sender_device_id,
        keys=tuple(keys),
        iv=iv,
        payload=None if payload is None else _b64_text(payload, "<encrypted><payload>", _ANY_LENGTH),
    )


def build_message(message: EncryptedMessage) -> Element:
    """Build a legacy ``<encrypted>`` element.

    Args:
        message: The message to write. Its ``iv`` must be set, also for an empty message (the backend
            supplies a fresh random one, as python-oldmemo does).

    Returns:
        The ``{eu.siacs.conversations.axolotl}encrypted`` element: ``<header>`` with the keys in order
        and then ``<iv>``; ``<payload>`` only if ``payload`` is not ``None``.

    Raises:
        ValueError: ``message.iv`` is ``None``.
    """
    if message.iv is None:
        raise ValueError("a legacy message must carry an iv (also when it has no payload)")
    root = Element(_ENCRYPTED)
    header = SubElement(root, _HEADER, {"sid": str(message.sender_device_id)})
    for key in message.keys:
        attrib = {"rid": str(key.device_id)}
        if key.kex:
            attrib["prekey"] = "true"
        SubElement(header, _KEY, attrib).text = _b64encode(key.data)
    SubElement(header, _IV).text = _b64encode(message.iv)
    if message.payload is not None:
        SubElement(root, _PAYLOAD).text = _b64encode(message.payload)
    return root
