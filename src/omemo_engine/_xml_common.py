"""Parsing and building helpers shared by the two XML codecs, :mod:`.xml_omemo2` and :mod:`.xml_legacy`.

Theory of operation
-------------------
Both namespaces have the same structures under different names (``<spk id>`` / ``<signedPreKeyPublic
signedPreKeyId>``, ``<pk id>`` / ``<preKeyPublic preKeyId>``...) and the same parsing contract:
strict about meaning, tolerant about form (see :mod:`.xml_omemo2`). This module holds that contract
once: the id, boolean and base64 parsers, the error reporting, the scan for single children, the
head of ``<encrypted>`` and the pre-key list loop, each parameterised by the qualified tags and
attribute names of a namespace, plus the checks of the value objects and :class:`PreKey`, the one value
object both namespaces share (re-exported by both codecs). The codecs keep their element
names, value objects and public API; they import these helpers under private names (``_parse_id``...).

Errors: the parsing helpers raise :class:`~omemo_engine.errors.MalformedXML` with a message
``"{where}: {problem}"``, where ``where`` is a short path such as ``"<bundle><spk>"`` and the problem
names the attribute or child and the reason (:func:`check_root` names the expected element and
namespace instead). Local names in messages are taken from the qualified tags (``{ns}spk`` ->
``spk``) and, like every message, formatted only on the error path. The value-object checks raise
plain :class:`ValueError` (a local misuse).

Speed: base64 is decoded by :mod:`binascii` in strict mode (one linear pass, no regular expression on
Python >= 3.11); the pre-key loop, which runs ~100 times per bundle, does no per-key formatting.
"""

from __future__ import annotations

import binascii
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, NoReturn, cast
from xml.etree.ElementTree import Element

from .errors import MalformedXML

__all__ = [
    "ANY_LENGTH",
    "MAX_ID",
    "MAX_KEY_ID",
    "MIN_ID",
    "MIN_KEY_ID",
    "NON_EMPTY",
    "PUBLIC_KEY_LENGTH",
    "KeyConverter",
    "PreKey",
    "b64_text",
    "b64decode",
    "b64decode_portable",
    "b64encode",
    "check_id",
    "check_length",
    "check_root",
    "check_unique_pre_key_ids",
    "encrypted_parts",
    "fail",
    "missing",
    "once",
    "parse_bool",
    "parse_id",
    "parse_pre_keys",
    "required_children",
    "show",
    "single_children",
    "where_id",
]

#: Smallest valid device id (XEP-0384: device ids are 1..2^31-1).
MIN_ID: Final = 1
#: Largest valid device id: 2^31 - 1, so that ids fit a signed 32-bit integer in every client.
MAX_ID: Final = 2**31 - 1
#: Smallest valid signed pre-key / pre-key id. These ids are protobuf ``uint32`` in the key exchange,
#: and deployed clients number from 0 (Converse, libsignal's key helpers): docs/real-clients.md.
MIN_KEY_ID: Final = 0
#: Largest valid signed pre-key / pre-key id: the ``uint32`` range of the key exchange.
MAX_KEY_ID: Final = 2**32 - 1
#: Length of an X25519 key (and of an Ed25519 identity key) without any type byte.
PUBLIC_KEY_LENGTH: Final = 32

#: :func:`b64_text` length for texts that must not be empty (ciphertexts of unspecified length).
NON_EMPTY: Final = -1
#: :func:`b64_text` length for texts that may be anything, even empty (``<payload>``).
ANY_LENGTH: Final = -2

#: Turns the decoded text of a key element into the key: ``(data, where, ident)`` -> the key bytes;
#: raises :class:`~omemo_engine.errors.MalformedXML` (e.g. legacy's check and strip of the type byte).
KeyConverter = Callable[[bytes, str, int | None], bytes]


# ---------------------------------------------------------------------------------------------------
# Errors


def fail(where: str, problem: str) -> NoReturn:
    """Raise :class:`~omemo_engine.errors.MalformedXML` ``"{where}: {problem}"``."""
    raise MalformedXML(f"{where}: {problem}")


def show(value: object) -> str:
    """A short, printable rendering of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= 48 else text[:45] + "..."


def where_id(where: str, ident: int | None) -> str:
    """``where``, with the id of the element when one is known."""
    return where if ident is None else f"{where} (id {ident})"


def _local_name(tag: str) -> str:
    return tag[tag.find("}") + 1 :]


# ---------------------------------------------------------------------------------------------------
# Structure


def check_root(element: Element, expected: str, local_name: str) -> None:
    """Check that ``element`` has the qualified tag ``expected`` (``{ns}local_name``)."""
    if element.tag != expected:
        raise MalformedXML(
            f"expected the element <{local_name}> in namespace {expected[1 : expected.index('}')]!r}, "
            f"got tag {show(element.tag)}"
        )


def once(current: Element | None, child: Element, where: str, local_name: str) -> Element:
    """Return ``child``, the first ``<local_name>`` of its parent; fail if one was already found."""
    if current is not None:
        fail(where, f"child <{local_name}> appears more than once")
    return child


def missing(where: str, local_name: str) -> NoReturn:
    """Fail: the required child ``<local_name>`` of ``where`` is missing."""
    fail(where, f"required child <{local_name}> is missing")


def single_children(element: Element, where: str, tags: tuple[str, ...]) -> list[Element | None]:
    """Find the child of ``element`` with each of the qualified ``tags``.

    Children with other tags are ignored; the order of the children does not matter.

    Args:
        element: The parent.
        where: The parent's path for error messages, e.g. ``"<bundle>"``.
        tags: The qualified tags wanted.

    Returns:
        For each tag, in the order of ``tags``, its child or ``None`` when there is none.

    Raises:
        MalformedXML: A tag of ``tags`` appears more than once (for the first such child in document
            order).
    """
    found: list[Element | None] = [None] * len(tags)
    for child in element:
        tag = child.tag
        if tag in tags:
            index = tags.index(tag)
            if found[index] is not None:
                fail(where, f"child <{_local_name(tags[index])}> appears more than once")
            found[index] = child
    return found


def required_children(element: Element, where: str, tags: tuple[str, ...]) -> list[Element]:
    """:func:`single_children` where every tag is required.

    Raises:
        MalformedXML: A tag of ``tags`` appears more than once, or (checked after that, in the order
            of ``tags``) not at all.
    """
    found = single_children(element, where, tags)
    if None in found:
        missing(where, _local_name(tags[found.index(None)]))
    return cast("list[Element]", found)


def encrypted_parts(
    element: Element, encrypted: str, header: str, payload: str
) -> tuple[Element, int, Element | None]:
    """Check an ``<encrypted>`` element and find its parts (the same in both namespaces).

    Args:
        element: The element to parse.
        encrypted: The qualified tag ``element`` must have.
        header: The qualified tag of ``<header>``.
        payload: The qualified tag of ``<payload>``.

    Returns:
        ``<header>``, its ``sid`` (the sender device id) and ``<payload>`` or ``None``.

    Raises:
        MalformedXML: The element has another tag; ``<header>`` is missing or repeated; ``sid`` is
            missing or invalid; ``<payload>`` is repeated.
    """
    check_root(element, encrypted, "encrypted")
    header_element, payload_element = single_children(element, "<encrypted>", (header, payload))
    if header_element is None:
        missing("<encrypted>", "header")
    sender_device_id = parse_id(header_element.get("sid"), "<encrypted><header>", "sid")
    return header_element, sender_device_id, payload_element


def parse_pre_keys(
    prekeys: Element,
    where: str,
    tag: str,
    attribute: str,
    length: int,
    convert: KeyConverter | None,
) -> tuple[PreKey, ...]:
    """Parse the pre-keys of a bundle's ``<prekeys>``.

    Args:
        prekeys: The ``<prekeys>`` element.
        where: Its path for error messages, ``"<bundle><prekeys>"``.
        tag: The qualified tag of a pre-key child; children with other tags are ignored.
        attribute: The name of the pre-key id attribute of such a child.
        length: The length of a child's base64-decoded text.
        convert: Makes the key of that text (given the text, the child's path and its id), or ``None``
            when the text is the key.

    Returns:
        The pre-keys in document order.

    Raises:
        MalformedXML: An id is missing or invalid, two children share an id, a text is not base64 of
            ``length`` bytes, or ``convert`` fails.
    """
    child_where = f"{where}<{_local_name(tag)}>"
    pre_keys: list[PreKey] = []
    seen: set[int] = set()
    # Bound once: this loop runs for each of the ~100 pre-keys of a bundle.
    append = pre_keys.append
    remember = seen.add
    for child in prekeys:
        if child.tag != tag:
            continue
        pre_key_id = parse_id(child.get(attribute), child_where, attribute, MIN_KEY_ID, MAX_KEY_ID)
        if pre_key_id in seen:
            fail(where, f"two <{_local_name(tag)}> elements have {attribute} {pre_key_id}")
        remember(pre_key_id)
        pub = b64_text(child, child_where, length, pre_key_id)
        if convert is not None:
            pub = convert(pub, child_where, pre_key_id)
        append(PreKey(pre_key_id=pre_key_id, pub=pub))
    return tuple(pre_keys)


# ---------------------------------------------------------------------------------------------------
# Attributes


def parse_id(value: object, where: str, attribute: str, low: int = MIN_ID, high: int = MAX_ID) -> int:
    """Parse an id attribute: ASCII decimal digits (surrounding whitespace allowed) in ``low..high``.

    The default range is that of device ids; signed pre-key and pre-key ids pass
    :data:`MIN_KEY_ID`, :data:`MAX_KEY_ID`.
    """
    if value is None:
        fail(where, f"attribute {attribute!r} is missing")
    if not isinstance(value, str):
        fail(where, f"attribute {attribute!r} is not a string ({type(value).__name__})")
    text = value.strip()
    if text.isdigit() and text.isascii():
        # More than 10 significant digits is out of range; never hand int() a huge string.
        if len(text) <= 10 or len(text.lstrip("0")) <= 10:
            number = int(text)
            if low <= number <= high:
                return number
        fail(where, f"attribute {attribute!r} is out of range {low}..{high}: {show(value)}")
    if text[:1] == "-" and text[1:].isdigit() and text[1:].isascii():
        fail(where, f"attribute {attribute!r} is out of range {low}..{high}: {show(value)}")
    fail(where, f"attribute {attribute!r} is not a decimal integer: {show(value)}")


def parse_bool(value: object, where: str, attribute: str) -> bool:
    """Parse an optional ``xs:boolean`` attribute (absent = false)."""
    if value is None:
        return False
    if isinstance(value, str):
        text = value.strip()
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
    fail(where, f"attribute {attribute!r} must be 'true', '1', 'false' or '0', got {show(value)}")


# ---------------------------------------------------------------------------------------------------
# Base64

_B64_PATTERN: Final = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def b64decode_portable(text: str) -> bytes:
    """Decode canonical base64 (whitespace ignored); any other input raises :class:`ValueError`."""
    compact = "".join(text.split())
    if len(compact) % 4 or _B64_PATTERN.fullmatch(compact) is None:
        raise ValueError("not base64")
    return binascii.a2b_base64(compact)


if sys.version_info >= (3, 11):

    def _b64decode_strict(text: str) -> bytes:
        """Same contract as :func:`b64decode_portable`, about twice as fast (no regex).

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

    b64decode = _b64decode_strict
else:  # pragma: no cover - exercised on Python 3.10 only
    b64decode = b64decode_portable


def b64_text(element: Element, where: str, length: int, ident: int | None = None) -> bytes:
    """Decode the base64 text of ``element``.

    ``length``: the exact decoded length required, or :data:`NON_EMPTY` or :data:`ANY_LENGTH`.
    ``ident`` (an id already parsed from the element) makes the message precise.
    """
    text = element.text
    if text is None:
        text = ""
    elif not isinstance(text, str):
        fail(where_id(where, ident), f"text is not a string ({type(text).__name__})")
    try:
        data = b64decode(text)
    except ValueError:  # binascii.Error, or non-ASCII characters
        fail(where_id(where, ident), f"text is not valid base64: {show(text.strip())}")
    if length == NON_EMPTY:
        if not data:
            fail(where_id(where, ident), "text is empty")
    elif length != ANY_LENGTH and len(data) != length:
        fail(where_id(where, ident), f"text must be base64 of {length} bytes, got {len(data)} bytes")
    return data


def b64encode(data: bytes) -> str:
    """Standard base64 with padding, no newline."""
    return binascii.b2a_base64(data, newline=False).decode("ascii")


# ---------------------------------------------------------------------------------------------------
# The value object both codecs share


@dataclass(frozen=True, slots=True, kw_only=True)
class PreKey:
    """One public one-time pre-key of a bundle.

    Attributes:
        pre_key_id: The pre-key id, 0..2^32-1.
        pub: The 32-byte X25519 public key (without any type byte).
    """

    pre_key_id: int
    pub: bytes

    def __post_init__(self) -> None:
        # Inlined checks: bundles carry ~100 pre-keys and this runs for each of them.
        if not MIN_KEY_ID <= self.pre_key_id <= MAX_KEY_ID:
            check_id("pre_key_id", self.pre_key_id, MIN_KEY_ID, MAX_KEY_ID)
        if len(self.pub) != PUBLIC_KEY_LENGTH:
            check_length("pub", self.pub, PUBLIC_KEY_LENGTH)


# ---------------------------------------------------------------------------------------------------
# Value-object checks (plain ValueError: a value built locally is a local misuse)


def check_id(name: str, value: int, low: int = MIN_ID, high: int = MAX_ID) -> None:
    """Check that the id ``name`` is in ``low..high`` (default: the device id range 1..2^31-1)."""
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}, got {value}")


def check_length(name: str, value: bytes, length: int) -> None:
    """Check that ``value`` is ``length`` bytes long."""
    if len(value) != length:
        raise ValueError(f"{name} must be {length} bytes, got {len(value)}")


def check_unique_pre_key_ids(pre_keys: tuple[PreKey, ...]) -> None:
    """Check that no two pre-keys of a bundle share an id."""
    if len({pre_key.pre_key_id for pre_key in pre_keys}) != len(pre_keys):
        raise ValueError("pre key ids must be unique within a bundle")
