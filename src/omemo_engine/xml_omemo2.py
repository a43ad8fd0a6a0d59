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

The small parsing helpers at the end of this module (``_parse_id``, ``_b64_text``...) are shared with
:mod:`omemo_engine.xml_legacy`.
"""

from __future__ import annotations

import binascii
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, NoReturn
from xml.etree.ElementTree import Element, SubElement

from .errors import MalformedXML

__all__ = [
    "MAX_ID",
    "MIN_ID",
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

#: Smallest valid device / signed pre-key / pre-key id (XEP-0384: ids are 1..2^31-1).
MIN_ID: Final = 1
#: Largest valid id: 2^31 - 1, so that ids fit a signed 32-bit integer in every client.
MAX_ID: Final = 2**31 - 1
#: Length of an Ed25519 identity key, an X25519 signed pre-key or an X25519 pre-key.
PUBLIC_KEY_LENGTH: Final = 32
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
class PreKey:
    """One public one-time pre-key of a bundle.

    Attributes:
        pre_key_id: The pre-key id, 1..2^31-1.
        pub: The 32-byte X25519 public key (without any type byte).
    """

    pre_key_id: int
    pub: bytes

    def __post_init__(self) -> None:
        # Inlined checks: bundles carry ~100 pre-keys and this runs for each of them.
        if not MIN_ID <= self.pre_key_id <= MAX_ID:
            _check_id("pre_key_id", self.pre_key_id)
        if len(self.pub) != PUBLIC_KEY_LENGTH:
            _check_length("pub", self.pub, PUBLIC_KEY_LENGTH)


@dataclass(frozen=True, slots=True, kw_only=True)
class Bundle:
    """The public part of a device's X3DH state, as published in ``<bundle>``.

    Attributes:
        signed_pre_key_id: The ``id`` of ``<spk>``, 1..2^31-1.
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
        _check_id("signed_pre_key_id", self.signed_pre_key_id)
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


def parse_device_list(element: Element) -> tuple[DeviceListEntry, ...]:
    """Parse a ``<devices>`` element.

    Duplicate device ids are collapsed: the first ``<device>`` with a given id wins (a list that names
    a device twice still names it; rejecting the whole list would hide all of the owner's devices).
    An empty ``<devices/>`` is valid (XEP-0384 0.9) and yields ``()``.

    Args:
        element: The ``{urn:xmpp:omemo:2}devices`` element (the PEP item's payload).

    Returns:
        The devices in document order.

    Raises:
        MalformedXML: The element is not ``<devices>`` of this namespace, or a ``<device>`` has a
            missing or invalid ``id`` or a ``label`` that is not a string.
    """
    _check_root(element, _DEVICES, "devices")
    entries: list[DeviceListEntry] = []
    seen: set[int] = set()
    for child in element:
        if child.tag != _DEVICE:
            continue
        device_id = _parse_id(child.get("id"), "<devices><device>", "id")
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
    spk = spks = ik = prekeys = None
    for child in element:
        tag = child.tag
        if tag == _SPK:
            spk = _once(spk, child, "<bundle>", "spk")
        elif tag == _SPKS:
            spks = _once(spks, child, "<bundle>", "spks")
        elif tag == _IK:
            ik = _once(ik, child, "<bundle>", "ik")
        elif tag == _PREKEYS:
            prekeys = _once(prekeys, child, "<bundle>", "prekeys")
    if spk is None:
        _missing("<bundle>", "spk")
    if spks is None:
        _missing("<bundle>", "spks")
    if ik is None:
        _missing("<bundle>", "ik")
    if prekeys is None:
        _missing("<bundle>", "prekeys")

    pre_keys: list[PreKey] = []
    seen: set[int] = set()
    for child in prekeys:
        if child.tag != _PK:
            continue
        pre_key_id = _parse_id(child.get("id"), "<bundle><prekeys><pk>", "id")
        if pre_key_id in seen:
            _fail("<bundle><prekeys>", f"two <pk> elements have id {pre_key_id}")
        seen.add(pre_key_id)
        pub = _b64_text(child, "<bundle><prekeys><pk>", PUBLIC_KEY_LENGTH, pre_key_id)
        pre_keys.append(PreKey(pre_key_id=pre_key_id, pub=pub))

    return Bundle(
        signed_pre_key_id=_parse_id(spk.get("id"), "<bundle><spk>", "id"),
        signed_pre_key=_b64_text(spk, "<bundle><spk>", PUBLIC_KEY_LENGTH),
        signed_pre_key_signature=_b64_text(spks, "<bundle><spks>", SIGNATURE_LENGTH),
        identity_key=_b64_text(ik, "<bundle><ik>", PUBLIC_KEY_LENGTH),
        pre_keys=tuple(pre_keys),
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
    _check_root(element, _ENCRYPTED, "encrypted")
    header = payload = None
    for child in element:
        tag = child.tag
        if tag == _HEADER:
            header = _once(header, child, "<encrypted>", "header")
        elif tag == _PAYLOAD:
            payload = _once(payload, child, "<encrypted>", "payload")
    if header is None:
        _missing("<encrypted>", "header")
    sender_device_id = _parse_id(header.get("sid"), "<encrypted><header>", "sid")

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
# Helpers shared with xml_legacy. ``where`` is a short path such as "<bundle><spk>"; messages are
# formatted only when something is wrong.


def _fail(where: str, problem: str) -> NoReturn:
    raise MalformedXML(f"{where}: {problem}")


def _show(value: object) -> str:
    """A short, printable rendering of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= 48 else text[:45] + "..."


def _check_root(element: Element, expected: str, local_name: str) -> None:
    if element.tag != expected:
        raise MalformedXML(
            f"expected the element <{local_name}> in namespace {expected[1 : expected.index('}')]!r}, "
            f"got tag {_show(element.tag)}"
        )


def _once(current: Element | None, child: Element, where: str, local_name: str) -> Element:
    if current is not None:
        _fail(where, f"child <{local_name}> appears more than once")
    return child


def _missing(where: str, local_name: str) -> NoReturn:
    _fail(where, f"required child <{local_name}> is missing")


def _parse_id(value: object, where: str, attribute: str) -> int:
    """Parse a device / pre-key id attribute: ASCII decimal digits (surrounding whitespace allowed)."""
    if value is None:
        _fail(where, f"attribute {attribute!r} is missing")
    if not isinstance(value, str):
        _fail(where, f"attribute {attribute!r} is not a string ({type(value).__name__})")
    text = value.strip()
    if text.isdigit() and text.isascii():
        # More than 10 significant digits is out of range; never hand int() a huge string.
        if len(text) <= 10 or len(text.lstrip("0")) <= 10:
            number = int(text)
            if MIN_ID <= number <= MAX_ID:
                return number
        _fail(where, f"attribute {attribute!r} is out of range {MIN_ID}..{MAX_ID}: {_show(value)}")
    if text[:1] == "-" and text[1:].isdigit() and text[1:].isascii():
        _fail(where, f"attribute {attribute!r} is out of range {MIN_ID}..{MAX_ID}: {_show(value)}")
    _fail(where, f"attribute {attribute!r} is not a decimal integer: {_show(value)}")


def _parse_bool(value: object, where: str, attribute: str) -> bool:
    """Parse an optional ``xs:boolean`` attribute (absent = false)."""
    if value is None:
        return False
    if isinstance(value, str):
        text = value.strip()
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
    _fail(where, f"attribute {attribute!r} must be 'true', '1', 'false' or '0', got {_show(value)}")


_B64_PATTERN: Final = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _b64decode_portable(text: str) -> bytes:
    """Decode canonical base64 (whitespace ignored); any other input raises :class:`ValueError`."""
    compact = "".join(text.split())
    if len(compact) % 4 or _B64_PATTERN.fullmatch(compact) is None:
        raise ValueError("not base64")
    return binascii.a2b_base64(compact)


if sys.version_info >= (3, 11):

    def _b64decode_strict(text: str) -> bytes:
        """Same contract as :func:`_b64decode_portable`, about twice as fast (no regex).

        ``strict_mode`` rejects non-alphabet characters, leading, discontinuous and trailing-data
        padding; the two extra checks reject missing padding and more than two ``=`` (which
        ``strict_mode`` accepts).
        """
        if len(text) % 4 == 0 and not text.endswith("==="):
            # Fast path: most clients send base64 without whitespace (strict mode rejects any).
            try:
                return binascii.a2b_base64(text, strict_mode=True)
            except ValueError:  # binascii.Error, or non-ASCII (possibly Unicode whitespace)
                pass
        compact = "".join(text.split())
        if len(compact) % 4 or compact.endswith("==="):
            raise ValueError("not base64")
        return binascii.a2b_base64(compact, strict_mode=True)

    _b64decode = _b64decode_strict
else:  # pragma: no cover - exercised on Python 3.10 only
    _b64decode = _b64decode_portable


#: ``_b64_text`` length for texts that must not be empty (ciphertexts of unspecified length).
_NON_EMPTY: Final = -1
#: ``_b64_text`` length for texts that may be anything, even empty (``<payload>``).
_ANY_LENGTH: Final = -2


def _b64_text(element: Element, where: str, length: int, ident: int | None = None) -> bytes:
    """Decode the base64 text of ``element``.

    ``length``: the exact decoded length required, or :data:`_NON_EMPTY` or :data:`_ANY_LENGTH`.
    ``ident`` (an id already parsed from the element) makes the message precise.
    """
    text = element.text
    if text is None:
        text = ""
    elif not isinstance(text, str):
        _fail(_where_id(where, ident), f"text is not a string ({type(text).__name__})")
    try:
        data = _b64decode(text)
    except ValueError:  # binascii.Error, or non-ASCII characters
        _fail(_where_id(where, ident), f"text is not valid base64: {_show(text.strip())}")
    if length == _NON_EMPTY:
        if not data:
            _fail(_where_id(where, ident), "text is empty")
    elif length != _ANY_LENGTH and len(data) != length:
        _fail(_where_id(where, ident), f"text must be base64 of {length} bytes, got {len(data)} bytes")
    return data


def _where_id(where: str, ident: int | None) -> str:
    return where if ident is None else f"{where} (id {ident})"


def _lenient_signature(value: object) -> bytes | None:
    """A ``labelsig``: the 64 decoded bytes, or ``None`` when absent or unusable."""
    if not isinstance(value, str):
        return None
    try:
        data = _b64decode(value)
    except ValueError:
        return None
    return data if len(data) == SIGNATURE_LENGTH else None


def _b64encode(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _check_id(name: str, value: int) -> None:
    if not MIN_ID <= value <= MAX_ID:
        raise ValueError(f"{name} must be in {MIN_ID}..{MAX_ID}, got {value}")


def _check_length(name: str, value: bytes, length: int) -> None:
    if len(value) != length:
        raise ValueError(f"{name} must be {length} bytes, got {len(value)}")


def _check_unique_pre_key_ids(pre_keys: tuple[PreKey, ...]) -> None:
    if len({pre_key.pre_key_id for pre_key in pre_keys}) != len(pre_keys):
        raise ValueError("pre key ids must be unique within a bundle")
