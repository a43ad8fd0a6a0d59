"""XEP-0420 Stanza Content Encryption (SCE) envelopes with the OMEMO 2 profile (XEP-0384 §SCE Profile).

Theory of operation: OMEMO 2 encrypts the UTF-8 serialisation of an SCE envelope, not a bare body::

    <envelope xmlns='urn:xmpp:sce:1'><content>...protected extension elements...</content>
      <rpad>random</rpad><time stamp='XEP-0082 DateTime'/><to jid='bare'/><from jid='bare'/></envelope>

:func:`build_envelope` makes those bytes (for ``SessionManager.encrypt`` under
``twomemo.twomemo.NAMESPACE``); :func:`parse_envelope` turns decrypted bytes into an :class:`Envelope`
after verifying the affixes. Both are pure; the clock and the randomness are parameters.

Hostile input: the bytes must be UTF-8, at most :data:`MAX_ENVELOPE_SIZE` long, at most
:data:`MAX_DEPTH` deep; expat refuses any DOCTYPE (so no entity can be declared: no "billion laughs",
no external entities) and processing instructions (RFC 6120 §11.1). Every refusal is an
:class:`SCEError`, and nothing else escapes. Strict about meaning, tolerant about form: one
``<content>`` and at most one of each affix; stray text, comments, unknown affixes and attributes are
ignored; a full JID in ``<to>``/``<from>`` is cut to its bare part (XEP-0420's IQ examples use full
JIDs). JIDs compare as bare JIDs with the RFC 7622 normalisations that need no PRECIS/IDNA code:
Unicode NFC, lower case, no trailing dot in the domain.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Final, Optional
from xml.etree.ElementTree import Element
from xml.parsers import expat

from .types import OMEMOException

__all__ = [
    "BODY_TAG",
    "DEFAULT_MAX_SKEW",
    "MAX_DEPTH",
    "MAX_ENVELOPE_SIZE",
    "NAMESPACE",
    "OPT_OUT_TAG",
    "RPAD_MAX_RANDOM",
    "RPAD_MIN_SIZE",
    "AffixMismatch",
    "Envelope",
    "MalformedEnvelope",
    "MissingAffix",
    "OptOut",
    "SCEError",
    "TimestampOutOfRange",
    "body_envelope",
    "build_envelope",
    "envelope_body",
    "envelope_opt_out",
    "is_server_processed",
    "opt_out_element",
    "parse_envelope",
    "stanza_hints",
]

NAMESPACE: Final = "urn:xmpp:sce:1"
#: XEP-0420 §Business Rules: "the <body/> element MUST contain a valid namespace (i.e. jabber:client)".
BODY_TAG: Final = "{jabber:client}body"
#: XEP-0384 §Opt-out: "an <opt-out/> element qualified by the urn:xmpp:omemo:2 namespace".
OPT_OUT_TAG: Final = "{urn:xmpp:omemo:2}opt-out"
_OMEMO2: Final = "urn:xmpp:omemo:2"
_XML_NS: Final = "http://www.w3.org/XML/1998/namespace"

#: XEP-0420 0.5.0: "first, the stanza is padded to a fixed minimum size. Afterwards, between 0 and 200
#: characters are added on top." The XEP names no size. 256 bytes hide the length of short replies (up
#: to about 50 body characters with all affixes) and cost at most 456 bytes of plaintext per message.
RPAD_MIN_SIZE: Final = 256
RPAD_MAX_RANDOM: Final = 200
#: XEP-0420: <time> must be within "a reasonable margin" of the stanza's sending time. 15 minutes absorb
#: unsynchronised phone clocks and delivery delays and still refuse stanzas replayed hours later.
DEFAULT_MAX_SKEW: Final = timedelta(minutes=15)
#: No genuine envelope is larger: servers cap stanzas at 256 KiB (Prosody, ejabberd defaults) and the
#: payload travels base64-encoded inside one.
MAX_ENVELOPE_SIZE: Final = 256 * 1024
#: Element nesting (the envelope is level 1): real content is a few levels deep; the bound keeps
#: recursive consumers (``ElementTree.tostring``) far from Python's recursion limit.
MAX_DEPTH: Final = 64

# XEP-0420 §Server-processed Elements: these "MUST NOT be included in <content> elements [...].
# Receiving clients MUST discard elements in that list if found inside of a <content> element."
# (XEP-0359 origin-id is allowed since XEP-0420 0.3.0; the registrar's list does not exist yet.)
_SERVER_PROCESSED: Final = {  # whole namespaces, and single elements
    "urn:xmpp:hints": "XEP-0334 message processing hints are addressed to the server",
    "http://jabber.org/protocol/address": "XEP-0033 addresses are needed by the server for routing",
    "{urn:xmpp:sid:0}stanza-id": "XEP-0359 stanza-ids are set and filtered by the server",
    "{urn:xmpp:eme:0}encryption": "XEP-0380 EME tells other clients how the envelope is encrypted",
}

# The characters XML 1.0 §2.2 does not allow (surrogates cannot be encoded to UTF-8 either).
_ILLEGAL_CHARS: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# An approximation of NCName (XML Namespaces §3), enough to refuse names that would not serialise.
_NCNAME: Final = re.compile(r"[^\W\d][\w.\-\u00b7\u0300-\u036f\u203f\u2040]*")
# XEP-0082 DateTime: CCYY-MM-DDThh:mm:ss[.sss]TZD with TZD = Z | (+|-)hh:mm.
_DATETIME: Final = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:(Z)|([+-])(\d\d):(\d\d))", re.ASCII
)
# 64 characters, so that ``byte & 63`` picks each with the same probability.
_RPAD_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class SCEError(OMEMOException, ValueError):
    """A received envelope was refused: tell the user it could not be verified, and drop the stanza."""


class MalformedEnvelope(SCEError):
    """The bytes are not a well-formed SCE envelope; :attr:`reason` says what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"malformed SCE envelope: {reason}")
        self.reason = reason


class MissingAffix(SCEError):
    """A required affix is absent: ``<to>`` in a group chat (XEP-0384 §SCE Profile)."""

    def __init__(self, affix: str) -> None:
        super().__init__(f"the SCE envelope has no <{affix}> affix, which group chat messages must have")
        self.affix = affix


class AffixMismatch(SCEError):
    """A ``<to>``/``<from>`` affix names another JID than the enclosing stanza: redirected or spoofed."""

    def __init__(self, affix: str, expected: str, actual: str) -> None:
        super().__init__(
            f"the <{affix}> affix says {actual!r} but the stanza's {affix} is {expected!r} (compared as "
            "bare JIDs): the stanza was redirected, spoofed or moved between group chat and one-to-one"
        )
        self.affix, self.expected, self.actual = affix, expected, actual


class TimestampOutOfRange(SCEError):
    """The ``<time>`` affix is further than ``max_skew`` from the stanza's sending time."""

    def __init__(self, timestamp: datetime, reference: datetime, max_skew: timedelta) -> None:
        super().__init__(
            f"the <time> affix {timestamp.isoformat()} is {abs(timestamp - reference)} from the stanza's "
            f"sending time {reference.isoformat()} (allowed: {max_skew}): a replay or a wrong clock"
        )
        self.timestamp, self.reference, self.max_skew = timestamp, reference, max_skew


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """A verified SCE envelope.

    Attributes:
        content: the protected extension elements (server-processed ones already discarded).
        timestamp: the ``<time>`` affix (timezone-aware), or ``None`` if absent.
        to: the ``<to>`` affix's bare JID as sent, or ``None`` if absent.
        from_: the ``<from>`` affix's bare JID as sent, or ``None`` if absent.
        rpad_length: the number of padding characters, or ``None`` if there was no ``<rpad>``.
        discarded: Clark-notation tags of the server-processed elements found inside and dropped.
    """

    content: tuple[Element, ...]
    timestamp: Optional[datetime]
    to: Optional[str]
    from_: Optional[str]
    rpad_length: Optional[int]
    discarded: tuple[str, ...] = ()

    def __repr__(self) -> str:  # the content is plaintext: show its tags only
        tags = ", ".join(str(element.tag) for element in self.content)
        return (
            f"Envelope(content=[{tags}], timestamp={self.timestamp!r}, to={self.to!r}, "
            f"from_={self.from_!r}, rpad_length={self.rpad_length!r}, discarded={self.discarded!r})"
        )


@dataclass(frozen=True, slots=True)
class OptOut:
    """A XEP-0384 opt-out request (the peer asks for plaintext) with its ``<reason>`` text, if any."""

    reason: Optional[str]


def is_server_processed(tag: str) -> bool:
    """Whether the element ``tag`` (``{ns}name``) must stay outside SCE envelopes (XEP-0420 §6).

    Returns:
        True for XEP-0334 hints, XEP-0359 stanza-id, XEP-0033 addresses and XEP-0380 EME.
    """
    return _server_processed_reason(tag) is not None


def _server_processed_reason(tag: str) -> Optional[str]:
    namespace = tag[1:].partition("}")[0] if tag.startswith("{") else ""
    return _SERVER_PROCESSED.get(tag) or _SERVER_PROCESSED.get(namespace)


# ------------------------------------------------------------------------------------------ building


def build_envelope(
    content: Sequence[Element],
    *,
    to: Optional[str],
    from_: Optional[str],
    timestamp: Optional[datetime] = None,
    rpad: bool = True,
    random_bytes: Callable[[int], bytes] = os.urandom,
    rpad_min_size: int = RPAD_MIN_SIZE,
) -> bytes:
    """Serialise an SCE envelope for OMEMO 2: ``SessionManager.encrypt(..., {NAMESPACE: result})``.

    OMEMO profile (XEP-0384 §SCE Profile): ``<rpad>`` MUST, ``<time>`` MAY (always written), ``<from>``
    SHOULD, ``<to>`` MUST in group chats. Elements get default namespace declarations
    (``<body xmlns='jabber:client'>``); tails of the top-level content elements are not written.

    Args:
        content: the extension elements to protect, each namespace-qualified (``{ns}name``).
        to: the recipient's JID (the room's in a group chat), or ``None`` to leave ``<to>`` out.
        from_: the sender's JID, or ``None`` to leave ``<from>`` out. Full JIDs are cut to bare.
        timestamp: the ``<time>`` affix, timezone-aware; default: now (UTC).
        rpad: write ``<rpad>``: pad to ``rpad_min_size`` bytes, then add 0-200 random characters.
        random_bytes: the entropy source for the padding.
        rpad_min_size: the envelope size in bytes that the padding fills up to.

    Returns:
        The envelope as UTF-8 bytes.

    Raises:
        ValueError: a content item is not an element, has no namespace, is server-processed (put
            those on the stanza itself), holds a comment, a name or text XML cannot carry, or nests
            deeper than :data:`MAX_DEPTH`; a JID is empty; ``timestamp`` is naive.
    """
    if isinstance(content, (Element, str, bytes)):
        raise ValueError("content must be a sequence of elements, e.g. [body], not a single element")
    parts = [f"<envelope xmlns='{NAMESPACE}'><content>"]
    for index, element in enumerate(content):
        if not isinstance(element, Element):
            raise ValueError(
                f"content item {index} is a {type(element).__name__}, not an Element: SCE content is "
                "extension elements only (put text into e.g. <body xmlns='jabber:client'>)"
            )
        tag = element.tag
        if not isinstance(tag, str) or not tag.startswith("{") or tag.startswith("{}"):
            raise ValueError(f"content item {index} <{tag}> needs a namespace, e.g. '{{jabber:client}}body'")
        reason = _server_processed_reason(tag)
        if reason is not None:
            raise ValueError(
                f"{tag} must not go inside an SCE envelope (XEP-0420 §Server-processed Elements: "
                f"{reason}); put it on the stanza itself, next to <encrypted>"
            )
        _serialize(element, NAMESPACE, parts, depth=3)
    parts.append("</content>")
    stamp = _format_stamp(datetime.now(timezone.utc) if timestamp is None else timestamp)
    affixes = [f"<time stamp='{stamp}'/>"]
    for name, jid in (("to", to), ("from", from_)):
        if jid is not None:
            bare = jid.partition("/")[0]
            if not bare or _ILLEGAL_CHARS.search(bare):
                raise ValueError(f"the <{name}> JID {jid!r} is empty or holds characters XML cannot carry")
            affixes.append(f"<{name} jid='{_escape(bare, attribute=True)}'/>")
    head, tail = "".join(parts).encode(), "".join(affixes).encode() + b"</envelope>"
    if not rpad:
        return head + tail
    # XEP-0420 0.5.0: pad to the minimum size, then add 0..200 random characters on top.
    fill = max(0, rpad_min_size - (len(head) + len(tail) + len(b"<rpad></rpad>")))
    length = fill + _uniform(random_bytes, RPAD_MAX_RANDOM + 1)
    padding = "".join(_RPAD_ALPHABET[b & 63] for b in random_bytes(length)) if length else ""
    return head + f"<rpad>{padding}</rpad>".encode() + tail


def body_envelope(
    text: str,
    *,
    to: Optional[str],
    from_: Optional[str],
    timestamp: Optional[datetime] = None,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """:func:`build_envelope` of ``<body xmlns='jabber:client'>text</body>`` (same ValueErrors)."""
    body = Element(BODY_TAG)
    body.text = text
    return build_envelope([body], to=to, from_=from_, timestamp=timestamp, random_bytes=random_bytes)


def opt_out_element(reason: Optional[str] = None) -> Element:
    """The XEP-0384 ``<opt-out/>`` content element ("write to me in plaintext"), with its ``<reason>``."""
    element = Element(OPT_OUT_TAG)
    if reason is not None:
        reason_element = Element(f"{{{_OMEMO2}}}reason")
        reason_element.text = reason
        element.append(reason_element)
    return element


def stanza_hints() -> tuple[Element, Element]:
    """XEP-0420 §Sending: the plaintext ``<store/>`` hint (for MAM) and XEP-0380 ``<encryption/>``."""
    encryption = Element("{urn:xmpp:eme:0}encryption", {"namespace": _OMEMO2, "name": "OMEMO"})
    return Element("{urn:xmpp:hints}store"), encryption


def _uniform(random_bytes: Callable[[int], bytes], bound: int) -> int:
    """A uniform integer in ``[0, bound)``, ``bound <= 256``, by rejection sampling (no modulo bias)."""
    limit = 256 - 256 % bound
    for _ in range(128):
        value = random_bytes(1)[0]
        if value < limit:
            return value % bound
    raise ValueError("random_bytes returned 128 out-of-range bytes in a row: it is not random")


def _format_stamp(timestamp: datetime) -> str:
    if timestamp.tzinfo is None or timestamp.utcoffset() is None:
        raise ValueError("timestamp must be timezone-aware, e.g. datetime.now(timezone.utc)")
    return timestamp.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _escape(text: str, *, attribute: bool = False) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")
    if attribute:  # quotes, and whitespace that attribute-value normalisation would turn into spaces
        text = text.replace("'", "&apos;").replace('"', "&quot;").replace("\n", "&#10;").replace("\t", "&#9;")
    return text


def _xml_chars(text: Optional[str], where: str) -> str:
    if text is not None and (not isinstance(text, str) or _ILLEGAL_CHARS.search(text)):
        raise ValueError(f"the text of {where} is not a str of characters that XML can carry")
    return text or ""


def _split_name(name: object, what: str) -> tuple[str, str]:
    namespace, local = "", name
    if isinstance(name, str) and name.startswith("{"):
        namespace, _, local = name[1:].partition("}")
    if not isinstance(local, str) or not _NCNAME.fullmatch(local) or _ILLEGAL_CHARS.search(namespace):
        raise ValueError(f"{what} {name!r} is not a valid XML name")
    return namespace, local


def _serialize(element: Element, parent_namespace: str, out: list[str], depth: int) -> None:
    if not isinstance(element.tag, str):
        raise ValueError("comments and processing instructions cannot go into an SCE envelope")
    if depth > MAX_DEPTH:
        raise ValueError(f"the content nests deeper than {MAX_DEPTH} levels (MAX_DEPTH)")
    namespace, local = _split_name(element.tag, "element name")
    attributes = {} if namespace == parent_namespace else {"xmlns": namespace}
    for name, value in element.attrib.items():
        attribute_namespace, qualified = _split_name(name, f"attribute name of <{element.tag}>")
        if qualified == "xmlns" and not attribute_namespace:
            raise ValueError(f"<{element.tag}> has an 'xmlns' attribute: put the namespace into the tag")
        if attribute_namespace == _XML_NS:
            qualified = f"xml:{qualified}"
        elif attribute_namespace:  # one fresh prefix per qualified attribute
            attributes[f"xmlns:ns{len(attributes)}"] = attribute_namespace
            qualified = f"ns{len(attributes) - 1}:{qualified}"
        attributes[qualified] = _xml_chars(value, f"attribute {name!r}")
    out.append(f"<{local}" + "".join(f" {k}='{_escape(v, attribute=True)}'" for k, v in attributes.items()))
    out.append(">" + _escape(_xml_chars(element.text, f"<{element.tag}>")))
    for child in element:
        _serialize(child, namespace, out, depth + 1)
        out.append(_escape(_xml_chars(child.tail, f"the tail of <{child.tag}>")))
    out.append(f"</{local}>")


# ------------------------------------------------------------------------------------------- parsing


def parse_envelope(
    data: bytes,
    *,
    expected_from: Optional[str],
    expected_to: Optional[str],
    now: Optional[datetime] = None,
    max_skew: Optional[timedelta] = DEFAULT_MAX_SKEW,
    groupchat: bool = False,
) -> Envelope:
    """Parse decrypted OMEMO 2 plaintext as an SCE envelope and verify its affixes.

    Rules (XEP-0420 §Affix Elements, XEP-0384 §SCE Profile): ``<to>``/``<from>`` must match
    ``expected_to``/``expected_from`` as bare JIDs (``None`` skips the check); group chats need
    ``<to>`` (so servers cannot turn group messages into private ones and back); ``<time>`` must be
    within ``max_skew`` of ``now``. Absent ``<rpad>``/``<from>`` and any padding length are accepted.
    Server-processed elements inside ``<content>`` are discarded (see :attr:`Envelope.discarded`).

    Args:
        data: the plaintext that ``SessionManager.decrypt`` returned.
        expected_from: the stanza's ``from`` (full or bare; for carbons and MAM results the forwarded
            stanza's); in a group chat the sender's real JID (the room is non-anonymous).
        expected_to: your own JID in one-to-one chats (the stanza's ``to``), the room's in group chats.
        now: the stanza's sending time: its XEP-0203 ``<delay stamp>`` for offline or archived
            stanzas, else the time of receipt; timezone-aware; default: now (UTC).
        max_skew: the allowed distance of ``<time>`` from ``now``; ``None`` skips the check.
        groupchat: the stanza is a group chat message (``type='groupchat'``).

    Returns:
        The envelope.

    Raises:
        MalformedEnvelope: not UTF-8, too large or deep, not well-formed XML, a DOCTYPE, no
            ``{urn:xmpp:sce:1}envelope`` with one ``<content>``, a repeated or incomplete affix.
        MissingAffix: ``groupchat`` and no ``<to>``.
        AffixMismatch: ``<to>``/``<from>`` names another JID than expected.
        TimestampOutOfRange: ``<time>`` is further than ``max_skew`` from ``now``.
        TypeError, ValueError: local misuse (not an :class:`SCEError`): ``data`` is not bytes, ``now``
            is naive, or ``groupchat`` without ``expected_to``.
    """
    if not isinstance(data, bytes):
        raise TypeError(f"data must be bytes (the decrypted plaintext), not {type(data).__name__}")
    if now is None:
        now = datetime.now(timezone.utc)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware, e.g. datetime.now(timezone.utc)")
    if groupchat and expected_to is None:
        raise ValueError("groupchat=True needs expected_to: the room's bare JID")
    root = _parse_xml(data)
    if root.tag != f"{{{NAMESPACE}}}envelope":
        raise MalformedEnvelope(f"the root element is {root.tag!r}, not {{{NAMESPACE}}}envelope")
    children: dict[str, list[Element]] = {}
    for child in root:
        children.setdefault(child.tag, []).append(child)
    for name in ("content", "rpad", "time", "to", "from"):
        if len(children.get(f"{{{NAMESPACE}}}{name}", ())) > 1:
            raise MalformedEnvelope(f"<{name}> occurs more than once")
    content, rpad = _single(children, "content"), _single(children, "rpad")
    if content is None:
        raise MalformedEnvelope("the envelope has no <content> element")
    to, from_, timestamp = _affix_jid(children, "to"), _affix_jid(children, "from"), _affix_time(children)
    if to is None and groupchat:
        raise MissingAffix("to")
    for affix, actual, expected in (("to", to, expected_to), ("from", from_, expected_from)):
        if actual is not None and expected is not None and _bare_key(actual) != _bare_key(expected):
            raise AffixMismatch(affix, expected, actual)
    if timestamp is not None and max_skew is not None and abs(timestamp - now) > max_skew:
        raise TimestampOutOfRange(timestamp, now, max_skew)
    for element in content:
        element.tail = None  # whitespace between the content elements
    return Envelope(
        content=tuple(element for element in content if not is_server_processed(element.tag)),
        timestamp=timestamp,
        to=to,
        from_=from_,
        rpad_length=None if rpad is None else len(rpad.text or ""),
        discarded=tuple(element.tag for element in content if is_server_processed(element.tag)),
    )


def envelope_body(envelope: Envelope) -> Optional[str]:
    """The text of ``<body xmlns='jabber:client'>`` (one without ``xml:lang`` first), else ``None``."""
    bodies = [element for element in envelope.content if element.tag == BODY_TAG]
    bodies.sort(key=lambda element: f"{{{_XML_NS}}}lang" in element.attrib)
    return (bodies[0].text or "") if bodies else None


def envelope_opt_out(envelope: Envelope) -> Optional[OptOut]:
    """The XEP-0384 opt-out request in the envelope, if any, with its stripped ``<reason>`` text.

    The XEP: show that the peer wants plaintext, block all outgoing messages to them until the user
    confirms the switch, keep the sessions.
    """
    for element in envelope.content:
        if element.tag == OPT_OUT_TAG:
            reason = element.find(f"{{{_OMEMO2}}}reason")
            return OptOut(None if reason is None else (reason.text or "").strip())
    return None


class _Refused(Exception):
    """Raised inside expat handlers; becomes a MalformedEnvelope."""


def _refuse(what: str) -> Callable[..., None]:
    def handler(*_args: object) -> None:
        raise _Refused(f"it contains {what}, which XMPP does not allow (RFC 6120 §11.1)")

    return handler


def _parse_xml(data: bytes) -> Element:
    if len(data) > MAX_ENVELOPE_SIZE:
        raise MalformedEnvelope(f"{len(data)} bytes, more than MAX_ENVELOPE_SIZE ({MAX_ENVELOPE_SIZE})")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise MalformedEnvelope(f"not UTF-8 ({error.reason} at byte {error.start})") from None
    stack: list[Element] = []
    roots: list[Element] = []

    def start(name: str, attributes: dict[str, str]) -> None:
        if len(stack) >= MAX_DEPTH:
            raise _Refused(f"elements nest deeper than {MAX_DEPTH} levels (MAX_DEPTH)")
        element = Element(_clark(name), {_clark(k): v for k, v in attributes.items()})
        (stack[-1] if stack else roots).append(element)
        stack.append(element)

    def text(chunk: str) -> None:
        if stack and len(stack[-1]):
            stack[-1][-1].tail = (stack[-1][-1].tail or "") + chunk
        elif stack:
            stack[-1].text = (stack[-1].text or "") + chunk

    parser = expat.ParserCreate("UTF-8", " ")  # "UTF-8" overrides any encoding the document declares
    parser.buffer_text = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = start
    parser.EndElementHandler = lambda _name: stack.pop()
    parser.CharacterDataHandler = text
    parser.StartDoctypeDeclHandler = _refuse("a DOCTYPE")
    parser.EntityDeclHandler = _refuse("an entity declaration")
    parser.ProcessingInstructionHandler = _refuse("a processing instruction")
    try:
        parser.Parse(data, True)
    except expat.ExpatError as error:
        raise MalformedEnvelope(f"not well-formed XML ({error})") from None
    except _Refused as error:
        raise MalformedEnvelope(str(error)) from None
    return roots[0]  # a complete well-formed document has exactly one root element


def _clark(name: str) -> str:
    # expat reports "namespace-uri local-name"; local names cannot contain a space.
    namespace, space, local = name.rpartition(" ")
    if space and "}" in namespace:
        raise _Refused(f"the namespace name {namespace!r} contains '}}'")
    return f"{{{namespace}}}{local}" if space else local


def _single(children: dict[str, list[Element]], name: str) -> Optional[Element]:
    elements = children.get(f"{{{NAMESPACE}}}{name}")
    return elements[0] if elements else None


def _affix_jid(children: dict[str, list[Element]], name: str) -> Optional[str]:
    element = _single(children, name)
    if element is None:
        return None
    jid = element.get("jid", "").partition("/")[0]
    if not jid.strip():
        raise MalformedEnvelope(f"the <{name}> affix has no (or an empty) 'jid' attribute")
    return jid


def _affix_time(children: dict[str, list[Element]]) -> Optional[datetime]:
    element = _single(children, "time")
    if element is None:
        return None
    stamp = element.get("stamp")
    match = _DATETIME.fullmatch(stamp or "")
    if stamp is None or match is None:
        raise MalformedEnvelope(f"the <time> affix's 'stamp' {stamp!r} is not a XEP-0082 DateTime")
    year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
    microsecond = int((match[7] or "0")[:6].ljust(6, "0"))
    hours, minutes = (0, 0) if match[8] else (int(match[10]), int(match[11]))
    try:  # a leap second (:60) is read as :59; timezone() refuses offsets of 24 hours or more
        if minutes > 59:
            raise ValueError(minutes)
        zone = timezone(timedelta(hours=hours, minutes=minutes) * (-1 if match[9] == "-" else 1))
        local_time = datetime(year, month, day, hour, minute, min(second, 59), microsecond, zone)
        return local_time.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        raise MalformedEnvelope(f"the <time> affix's 'stamp' {stamp!r} is not a valid date") from None


def _bare_key(jid: str) -> str:
    """A bare JID in a comparable form (RFC 7622 without PRECIS/IDNA: NFC, lower case, no final dot)."""
    local, at, domain = jid.partition("/")[0].rpartition("@")
    domain = domain[:-1] if domain.endswith(".") else domain
    return unicodedata.normalize("NFC", f"{local}{at}{domain}").lower()
