"""XML codec of the ``urn:xmpp:omemo:2`` namespace (XEP-0384 0.8+): device list, bundle, message.

Theory of operation
-------------------
This module converts between :class:`xml.etree.ElementTree.Element` trees and plain frozen value
objects. It is pure: no I/O, no asyncio, no cryptography. Signatures and labels are carried, never
verified; key material is carried as raw bytes (base64 already decoded), never interpreted. The
``twomemo`` backend wraps these functions into the python-omemo ``twomemo.etree`` API and adds what
the wire does not carry (the bare JID and device id of a bundle, the sender's bare JID of a message).

Each wire structure has a ``parse_x`` / ``build_x`` pair, written next to each other:

- device list ``<devices><device id='N' [label='..' labelsig='b64']/>..</devices>``
  (:func:`parse_device_list` / :func:`build_device_list`, values :class:`DeviceListEntry`);
- bundle ``<bundle><spk id='N'/><spks/><ik/><prekeys><pk id='N'/>..</prekeys></bundle>``
  (:func:`parse_bundle` / :func:`build_bundle`, values :class:`Bundle` and :class:`PreKey`);
- message ``<encrypted><header sid='N'><keys jid='J'><key rid='N' [kex='true']/>..</keys>..</header>
  [<payload/>]</encrypted>`` (:func:`parse_message` / :func:`build_message`, values
  :class:`EncryptedMessage` and :class:`EncryptedKey`).

Parsers are strict about meaning and tolerant about form. Strict: every required element and
attribute must be present exactly once, ids must be decimal integers in 1..2^31-1 (XEP-0384: "a
randomly generated integer between 1 and 2^31 - 1"), base64 must be canonical standard-alphabet
base64 with padding, and fixed-size keys must decode to their exact length; every violation raises
:class:`~omemo_engine.errors.MalformedXML` naming the element, the attribute and the reason, and no
other exception escapes whatever the element contains. Tolerant: whitespace anywhere in base64 text
is ignored (PROTOCOL.md 3.5: "parsers tolerate whitespace"), children may come in any order (the
schema uses ``xs:all``), unknown children and attributes are ignored, and boolean attributes take the
``xs:boolean`` lexical forms ``true``/``1``/``false``/``0``.

Builders write ``{urn:xmpp:omemo:2}``-qualified elements in the canonical child order shown above,
standard base64 with padding, and ``kex='true'`` only when set. They trust the value objects, whose
constructors validate ids and lengths (raising plain :class:`ValueError`: a local misuse).

Speed: tag names are built once at import time, base64 is decoded by :mod:`binascii` in strict mode
(one linear pass, no regular expression on Python >= 3.11), and error messages are formatted only
on the error path.

The parsing helpers (``_parse_id``, ``_b64_text``...) and the loops that both namespaces share (the
scan for single children, the head of ``<encrypted>``, the pre-key list) live in
:mod:`omemo_engine._xml_common`, parameterised by this module's tags; :mod:`omemo_engine.xml_legacy`
uses the same ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from xml.etree.ElementTree import Element, SubElement

from . import _xml_common
from ._primitives import canonical_ed25519_public, canonical_x25519_public
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
from ._xml_common import parse_bool as _parse_bool
from ._xml_common import parse_id as _parse_id
from ._xml_common import parse_pre_keys as _parse_pre_keys
from ._xml_common import required_children as _required_children
from ._xml_common import show as _show
from .errors import MalformedXML

__all__ = [
    "MAX_ID",
    "MAX_KEY_ID",
    "MIN_ID",
    "MIN_KEY_ID",
    "NAMESPACE",
    "PUBLIC_KEY_LENGTH",
    "SIGNATURE_LENGTH",
    "Bundle",
    "DeviceListEntry",
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

#: The XML namespace of OMEMO 2.
NAMESPACE: Final = "urn:xmpp:omemo:2"

# MIN_ID and MAX_ID (device ids are 1..2^31-1, XEP-0384) and MIN_KEY_ID and MAX_KEY_ID (signed pre-key and
# pre-key ids are 0..2^32-1, protobuf uint32) are defined in _xml_common, with the id parser.

#: Length of an Ed25519/XEdDSA signature (signed pre-key signature, label signature).
SIGNATURE_LENGTH: Final = 64

_NS = "{" + NAMESPACE + "}"
_DEVICES = _NS + "devices"
_DEVICE = _NS + "device"
_BUNDLE = _NS + "bundle"
_SPK = _NS + "spk"
_SPKS = _NS + "spks"
_IK = _NS + "ik"
_PREKEYS = _NS + "prekeys"
_PK = _NS + "pk"
_ENCRYPTED = _NS + "encrypted"
_HEADER = _NS + "header"
_KEYS = _NS + "keys"
_KEY = _NS + "key"
_PAYLOAD = _NS + "payload"
_BUNDLE_CHILDREN: Final = (_SPK, _SPKS, _IK, _PREKEYS)


# The base64 decoder (strict and fast on Python >= 3.11) and its portable twin, under the names the
# codec tests compare them by.
_b64decode = _xml_common.b64decode
_b64decode_portable = _xml_common.b64decode_portable


# ---------------------------------------------------------------------------------------------------
# Value objects


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceListEntry:
    """One ``<device>`` of a device list.

    Attributes:
        device_id: The device id, 1..2^31-1.
        label: The ``label`` attribute as sent, or ``None``. Unverified: XEP-0384 0.9 says a label
            without a valid ``labelsig`` MUST be ignored; checking it is the backend's job.
        label_signature: The base64-decoded ``labelsig`` (64 bytes), or ``None`` when it is absent or
            is not base64 of 64 bytes (an unusable signature, so the backend ignores the label).
    """

    device_id: int
    label: str | None = None
    label_signature: bytes | None = None

    def __post_init__(self) -> None:
        _check_id("device_id", self.device_id)
        if self.label_signature is not None:
            _check_length("label_signature", self.label_signature, SIGNATURE_LENGTH)


@dataclass(frozen=True, slots=True, kw_only=True)
class Bundle:
    """The public part of a device's X3DH state, as published in ``<bundle>``.

    Attributes:
        signed_pre_key_id: The ``id`` of ``<spk>``, 0..2^32-1.
        signed_pre_key: The 32-byte X25519 signed pre-key.
        signed_pre_key_signature: The 64-byte signature (``<spks>``) of the identity key over
            ``signed_pre_key``; not verified here.
        identity_key: The 32-byte identity key in Ed25519 form (``<ik>``).
        pre_keys: The one-time pre-keys in document order, ids unique. May be empty: the codec
            parses such a bundle; the backend refuses it for a key exchange.
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
    """One ``<key>`` of a message header: key material encrypted for one recipient device.

    Attributes:
        bare_jid: The ``jid`` of the enclosing ``<keys>`` (the recipient's bare JID), as sent.
        device_id: The recipient device id (``rid``), 1..2^31-1.
        data: The decoded ``<key>`` text: a serialized ``OMEMOKeyExchange`` when ``kex`` is true, else
            a serialized ``OMEMOAuthenticatedMessage``. Never empty.
        kex: Whether the ``kex`` attribute is true.
    """

    bare_jid: str
    device_id: int
    data: bytes
    kex: bool = False

    def __post_init__(self) -> None:
        if not self.bare_jid.strip():
            raise ValueError("bare_jid must not be empty")
        _check_id("device_id", self.device_id)
        if not self.data:
            raise ValueError("data must not be empty")


@dataclass(frozen=True, slots=True, kw_only=True)
class EncryptedMessage:
    """An ``<encrypted>`` element.

    Attributes:
        sender_device_id: The ``sid`` of ``<header>``, 1..2^31-1.
        keys: Every ``<key>`` of every ``<keys>``, in document order (duplicates are kept: choosing
            among them is the backend's job).
        payload: The decoded ``<payload>``, or ``None`` for an empty message (no ``<payload>``).
    """

    sender_device_id: int
    keys: tuple[EncryptedKey, ...]
    payload: bytes | None = None

    def __post_init__(self) -> None:
        _check_id("sender_device_id", self.sender_device_id)


# ---------------------------------------------------------------------------------------------------
# Device list


def parse_device_list(element: Element, problems: list[str] | None = None) -> tuple[DeviceListEntry, ...]:
    """Parse a ``<devices>`` element.

    One bad entry does not hide the owner's other devices (rejecting the whole list would): a
    ``<device>`` with a missing or invalid ``id`` (Converse may draw device id 0) is left out, and
    described in ``problems`` if given. Duplicate device ids are collapsed: the first ``<device>`` with
    a given id wins. An empty ``<devices/>`` is valid (XEP-0384 0.9) and yields ``()``.

    Args:
        element: The ``{urn:xmpp:omemo:2}devices`` element (the PEP item's payload).
        problems: Receives one message per ``<device>`` left out.

    Returns:
        The devices in document order.

    Raises:
        MalformedXML: The element is not ``<devices>`` of this namespace, or a ``<device>`` has a
            ``label`` that is not a string.
    """
    _check_root(element, _DEVICES, "devices")
    entries: list[DeviceListEntry] = []
    seen: set[int] = set()
    for child in element:
        if child.tag != _DEVICE:
            continue
        try:
            device_id = _parse_id(child.get("id"), "<devices><device>", "id")
        except MalformedXML as exc:
            if problems is not None:
                problems.append(f"{exc}: entry left out")
            continue
        if device_id in seen:
            continue
        seen.add(device_id)
        label = child.get("label")
        if label is not None and not isinstance(label, str):
            _fail("<devices><device>", f"attribute 'label' is not a string ({type(label).__name__})")
        entries.append(
            DeviceListEntry(
                device_id=device_id, label=label, label_signature=_lenient_signature(child.get("labelsig"))
            )
        )
    return tuple(entries)


def build_device_list(devices: Iterable[DeviceListEntry]) -> Element:
    """Build a ``<devices>`` element.

    Args:
        devices: The devices, written in this order. ``label`` / ``labelsig`` are written when set.

    Returns:
        The ``{urn:xmpp:omemo:2}devices`` element.

    Raises:
        ValueError: Two entries have the same device id.
    """
    root = Element(_DEVICES)
    seen: set[int] = set()
    for entry in devices:
        if entry.device_id in seen:
            raise ValueError(f"device id {entry.device_id} appears twice in the device list")
        seen.add(entry.device_id)
        attrib = {"id": str(entry.device_id)}
        if entry.label is not None:
            attrib["label"] = entry.label
        if entry.label_signature is not None:
            attrib["labelsig"] = _b64encode(entry.label_signature)
        SubElement(root, _DEVICE, attrib)
    return root


# ---------------------------------------------------------------------------------------------------
# Bundle


def _canonical_x25519(data: bytes, where: str, ident: int | None) -> bytes:
    """A pre key in its canonical encoding (same key, RFC 7748)."""
    return canonical_x25519_public(data)


def _ed25519_key(element: Element, where: str) -> bytes:
    """An Ed25519 identity key; a non-canonical encoding (y >= p) is refused."""
    key = _b64_text(element, where, PUBLIC_KEY_LENGTH)
    if not canonical_ed25519_public(key):
        _fail(where, "text is not a canonical Ed25519 key (y >= p)")
    return key


def parse_bundle(element: Element) -> Bundle:
    """Parse a ``<bundle>`` element.

    Args:
        element: The ``{urn:xmpp:omemo:2}bundle`` element (the PEP item's payload).

    Returns:
        The bundle. The signed pre-key signature is not verified.

    Raises:
        MalformedXML: The element is not ``<bundle>`` of this namespace; ``<spk>``, ``<spks>``,
            ``<ik>`` or ``<prekeys>`` is missing or repeated; an ``id`` is missing or invalid; a text
            is not base64 or decodes to the wrong length; two ``<pk>`` share an id.
    """
    _check_root(element, _BUNDLE, "bundle")
    spk, spks, ik, prekeys = _required_children(element, "<bundle>", _BUNDLE_CHILDREN)
    pre_keys = _parse_pre_keys(prekeys, "<bundle><prekeys>", _PK, "id", PUBLIC_KEY_LENGTH, _canonical_x25519)
    return Bundle(
        signed_pre_key_id=_parse_id(spk.get("id"), "<bundle><spk>", "id", MIN_KEY_ID, MAX_KEY_ID),
        signed_pre_key=canonical_x25519_public(_b64_text(spk, "<bundle><spk>", PUBLIC_KEY_LENGTH)),
        signed_pre_key_signature=_b64_text(spks, "<bundle><spks>", SIGNATURE_LENGTH),
        identity_key=_ed25519_key(ik, "<bundle><ik>"),
        pre_keys=pre_keys,
    )


def build_bundle(bundle: Bundle) -> Element:
    """Build a ``<bundle>`` element.

    Args:
        bundle: The bundle to write.

    Returns:
        The ``{urn:xmpp:omemo:2}bundle`` element, children in the order spk, spks, ik, prekeys.
    """
    root = Element(_BUNDLE)
    SubElement(root, _SPK, {"id": str(bundle.signed_pre_key_id)}).text = _b64encode(bundle.signed_pre_key)
    SubElement(root, _SPKS).text = _b64encode(bundle.signed_pre_key_signature)
    SubElement(root, _IK).text = _b64encode(bundle.identity_key)
    prekeys = SubElement(root, _PREKEYS)
    for pre_key in bundle.pre_keys:
        SubElement(prekeys, _PK, {"id": str(pre_key.pre_key_id)}).text = _b64encode(pre_key.pub)
    return root


# ---------------------------------------------------------------------------------------------------
# Message


def parse_message(element: Element) -> EncryptedMessage:
    """Parse an ``<encrypted>`` element.

    Args:
        element: The ``{urn:xmpp:omemo:2}encrypted`` element (a child of the ``<message>`` stanza).

    Returns:
        The message; its keys in document order. ``payload`` is ``None`` without ``<payload>``.

    Raises:
        MalformedXML: The element is not ``<encrypted>`` of this namespace; ``<header>`` is missing or
            repeated; ``sid`` is missing or invalid (the schema makes it optional, but a message
            without a sender device cannot be decrypted); a ``<keys>`` has no ``jid``; a ``<key>``
            has a missing or invalid ``rid``, a ``kex`` that is not an ``xs:boolean``, or a text that
            is empty or not base64; ``<payload>`` is repeated or not base64.
    """
    header, sender_device_id, payload = _encrypted_parts(element, _ENCRYPTED, _HEADER, _PAYLOAD)

    keys: list[EncryptedKey] = []
    for keys_element in header:
        if keys_element.tag != _KEYS:
            continue
        bare_jid = keys_element.get("jid")
        if bare_jid is None:
            _fail("<header><keys>", "attribute 'jid' is missing")
        if not isinstance(bare_jid, str) or not bare_jid.strip():
            _fail("<header><keys>", f"attribute 'jid' is not a bare JID: {_show(bare_jid)}")
        for key in keys_element:
            if key.tag != _KEY:
                continue
            device_id = _parse_id(key.get("rid"), "<header><keys><key>", "rid")
            keys.append(
                EncryptedKey(
                    bare_jid=bare_jid,
                    device_id=device_id,
                    data=_b64_text(key, "<header><keys><key>", _NON_EMPTY, device_id),
                    kex=_parse_bool(key.get("kex"), "<header><keys><key>", "kex"),
                )
            )

    return EncryptedMessage(
        sender_device_id=sender_device_id,
        keys=tuple(keys),
        payload=None if payload is None else _b64_text(payload, "<encrypted><payload>", _ANY_LENGTH),
    )


def build_message(message: EncryptedMessage) -> Element:
    """Build an ``<encrypted>`` element.

    Keys are grouped into one ``<keys jid='..'>`` per bare JID, the groups in the order in which each
    JID first appears in ``message.keys``, the keys of a group in their order in ``message.keys``.

    Args:
        message: The message to write.

    Returns:
        The ``{urn:xmpp:omemo:2}encrypted`` element; ``<payload>`` only if ``payload`` is not ``None``.
    """
    root = Element(_ENCRYPTED)
    header = SubElement(root, _HEADER, {"sid": str(message.sender_device_id)})
    groups: dict[str, Element] = {}
    for key in message.keys:
        group = groups.get(key.bare_jid)
        if group is None:
            group = groups[key.bare_jid] = SubElement(header, _KEYS, {"jid": key.bare_jid})
        attrib = {"rid": str(key.device_id)}
        if key.kex:
            attrib["kex"] = "true"
        SubElement(group, _KEY, attrib).text = _b64encode(key.data)
    if message.payload is not None:
        SubElement(root, _PAYLOAD).text = _b64encode(message.payload)
    return root


# ---------------------------------------------------------------------------------------------------
# Helpers of this namespace (the shared ones are in _xml_common)


def _lenient_signature(value: object) -> bytes | None:
    """A ``labelsig``: the 64 decoded bytes, or ``None`` when absent or unusable."""
    if not isinstance(value, str):
        return None
    try:
        data = _b64decode(value)
    except ValueError:
        return None
    return data if len(data) == SIGNATURE_LENGTH else None
