"""XEP-0420 SCE envelopes (``omemo.sce``): round trips, rpad sizing, affix rules, hostile XML, end to end.

Provenance of the literal envelopes: the two ``XEP_*`` samples are the examples of XEP-0384 0.9.1
§SCE Profile and XEP-0420 0.5.0 §Use in <iq/> stanzas (xsf/xeps), retyped; every other sample is
written by hand for the rule it tests.
"""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, Optional
from xml.etree.ElementTree import Element, SubElement

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import twomemo
from omemo import sce
from omemo.sce import (
    AffixMismatch,
    Envelope,
    MalformedEnvelope,
    MissingAffix,
    OptOut,
    SCEError,
    TimestampOutOfRange,
    body_envelope,
    build_envelope,
    envelope_body,
    envelope_opt_out,
    parse_envelope,
)
from omemo.storages import MemoryStorage
from omemo.testing import InMemoryXMPP
from omemo.trust import BTBVTrust
from omemo.types import OMEMOException

UTC = timezone.utc
T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
ALICE, BOB, ROOM = "alice@example.org", "bob@example.org", "room@muc.example.org"
NS = "{urn:xmpp:sce:1}"

XEP_0384_SAMPLE = b"""<envelope xmlns='urn:xmpp:sce:1'>
  <content>
    <body xmlns='jabber:client'>
     Hello World!
    </body>
  </content>
  <rpad>...</rpad>
  <from jid='romeo@montague.lit'/>
</envelope>"""

XEP_0420_IQ_SAMPLE = b"""<envelope xmlns='urn:xmpp:sce:1'>
  <content>
    <data xmlns='urn:xmpp:bob'
        cid='sha1+8f35fef110ffc5df08d579a50083ff9308fb6242@bob.xmpp.org'/>
  </content>
  <from jid='doctor@shakespeare.lit/pda'/>
  <to jid='ladymacbeth@shakespear.lit/castle'/>
</envelope>"""


def rng(seed: int = 1) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def parse(data: bytes, **kwargs: Any) -> Envelope:
    options: dict[str, Any] = {"expected_from": ALICE, "expected_to": BOB, "now": T0}
    options.update(kwargs)
    return parse_envelope(data, **options)


def envelope(inner: str, affixes: str = "") -> bytes:
    """A hand-written envelope around ``inner`` content."""
    return f"<envelope xmlns='urn:xmpp:sce:1'><content>{inner}</content>{affixes}</envelope>".encode()


def shape(element: Element) -> Any:
    """Everything XML says about an element (tails included), for comparisons."""
    children = [shape(child) for child in element]
    return (element.tag, sorted(element.attrib.items()), element.text or "", element.tail or "", children)


def body(text: str, **attrib: str) -> Element:
    element = Element(sce.BODY_TAG, attrib)
    element.text = text
    return element


# --------------------------------------------------------------------------------------- round trips


def test_body_round_trip() -> None:
    data = body_envelope("Hi Bob!", to=BOB, from_=ALICE, timestamp=T0, random_bytes=rng())
    assert data.startswith(b"<envelope xmlns='urn:xmpp:sce:1'><content><body xmlns='jabber:client'>Hi Bob!")
    result = parse(data)
    assert envelope_body(result) == "Hi Bob!"
    assert (result.to, result.from_, result.timestamp, result.discarded) == (BOB, ALICE, T0, ())
    assert result.rpad_length is not None and result.rpad_length > 0


def test_rich_content_round_trip_keeps_everything_xml_says() -> None:
    oob = Element("{jabber:x:oob}x")
    url = SubElement(oob, "{jabber:x:oob}url")
    url.text = "https://example.org/a?b=1&c=<2>"
    url.tail = "\n  "
    desc = SubElement(
        oob, "desc", {"{http://www.w3.org/XML/1998/namespace}lang": "de", "kind": "a'b\"c\n\td"}
    )
    desc.text = "Grüße \U0001f600 ]]> \r\n"
    SubElement(
        oob, "{urn:example:other}empty", {"{urn:example:attr}flag": "1", "{urn:example:attr}b": "2", "c": "3"}
    )
    reply = Element("{urn:xmpp:reply:0}reply", {"id": "msg-1", "to": "bob@example.org/x"})
    content = [body("text with 'quotes' & <tags>"), oob, reply]
    data = build_envelope(content, to=BOB, from_=ALICE, timestamp=T0, random_bytes=rng())
    result = parse(data)
    oob.tail = None
    assert [shape(e) for e in result.content] == [shape(e) for e in content]
    # The serialisation is plain XML any parser reads the same way (stdlib ElementTree here).
    stdlib = ET.fromstring(data)
    assert [shape(e) for e in stdlib.find(f"{NS}content") or []] == [shape(e) for e in content]


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.text(st.characters(codec="utf-8", exclude_characters="\x00\ufffe\uffff")),
    seconds=st.integers(0, 10**9),
    micro=st.integers(0, 999_999),
)
def test_round_trip_property(text: str, seconds: int, micro: int) -> None:
    text = "".join(c for c in text if c in "\t\n\r" or ord(c) >= 0x20)
    stamp = datetime(2000, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds, microseconds=micro)
    result = parse(body_envelope(text, to=BOB, from_=ALICE, timestamp=stamp), now=stamp)
    assert envelope_body(result) == text and result.timestamp == stamp


def test_reference_samples_parse() -> None:
    result = parse(XEP_0384_SAMPLE, expected_from="romeo@montague.lit/orchard", expected_to=None)
    assert (envelope_body(result) or "").strip() == "Hello World!"
    assert (result.rpad_length, result.to, result.timestamp) == (3, None, None)
    iq = parse(
        XEP_0420_IQ_SAMPLE, expected_from="doctor@shakespeare.lit", expected_to="ladymacbeth@shakespear.lit"
    )
    # Full JIDs in affixes are tolerated and cut to their bare part.
    assert (iq.from_, iq.to) == ("doctor@shakespeare.lit", "ladymacbeth@shakespear.lit")
    assert [e.tag for e in iq.content] == ["{urn:xmpp:bob}data"]


def test_full_jids_are_sent_as_bare() -> None:
    result = parse(build_envelope([], to=BOB + "/laptop", from_=ALICE + "/phone/x", timestamp=T0))
    assert (result.to, result.from_, result.content) == (BOB, ALICE, ())


def test_repr_shows_no_plaintext() -> None:
    result = parse(body_envelope("secret words", to=BOB, from_=ALICE, timestamp=T0))
    assert "secret" not in repr(result) and "{jabber:client}body" in repr(result)


def test_timestamp_is_written_in_utc_and_defaults_to_now() -> None:
    plus_two = T0.astimezone(timezone(timedelta(hours=2)))
    assert b"<time stamp='2026-06-01T12:00:00Z'/>" in build_envelope(
        [], to=None, from_=None, timestamp=plus_two
    )
    before = datetime.now(UTC)
    result = parse_envelope(build_envelope([], to=None, from_=None), expected_from=None, expected_to=None)
    assert result.timestamp is not None and before <= result.timestamp <= datetime.now(UTC)


# ------------------------------------------------------------------------------------------------ rpad


@pytest.mark.parametrize("length", [0, 1, 50, 100, 150, 200, 400, 1000])
def test_rpad_pads_to_the_minimum_then_adds_up_to_200(length: int) -> None:
    unpadded_no_rpad = len(
        build_envelope([body("x" * length)], to=BOB, from_=ALICE, timestamp=T0, rpad=False)
    )
    floor = max(sce.RPAD_MIN_SIZE, unpadded_no_rpad + len(b"<rpad></rpad>"))
    sizes = set()
    for seed in range(60):
        data = body_envelope("x" * length, to=BOB, from_=ALICE, timestamp=T0, random_bytes=rng(seed))
        assert floor <= len(data) <= floor + sce.RPAD_MAX_RANDOM
        result = parse(data)
        assert result.rpad_length == len(data) - unpadded_no_rpad - len(b"<rpad></rpad>")
        sizes.add(len(data))
    assert len(sizes) > 20  # the random part really varies


def test_rpad_content_and_length_are_random() -> None:
    pads = {build_envelope([body("same")], to=BOB, from_=ALICE, timestamp=T0) for _ in range(50)}
    assert len(pads) == 50
    lengths = [parse(p).rpad_length or 0 for p in pads]
    assert max(lengths) - min(lengths) > 50


def test_rpad_random_part_has_no_modulo_bias() -> None:
    # Bytes >= 201 are rejected (not reduced mod 201), then padding characters are drawn.
    draws = iter([bytes([250]), bytes([201]), bytes([7])])

    def fake(n: int) -> bytes:
        return next(draws) if n == 1 else b"\x00" * n

    data = build_envelope([], to=None, from_=None, timestamp=T0, random_bytes=fake, rpad_min_size=0)
    assert b"<rpad>AAAAAAA</rpad>" in data


def test_rpad_refuses_a_broken_random_source() -> None:
    with pytest.raises(ValueError, match="not random"):
        build_envelope([], to=None, from_=None, random_bytes=lambda n: b"\xff" * n)


def test_rpad_optional_and_min_size_configurable() -> None:
    data = build_envelope([body("hi")], to=BOB, from_=ALICE, timestamp=T0, rpad=False)
    assert b"rpad" not in data and parse(data).rpad_length is None
    big = build_envelope([body("hi")], to=BOB, from_=ALICE, timestamp=T0, rpad_min_size=4096)
    assert 4096 <= len(big) <= 4096 + 200


def test_long_padding_is_accepted() -> None:
    # XEP-0420 0.5.0: "longer paddings than expected MUST NOT be rejected".
    result = parse(envelope("", f"<rpad>{'p' * 100_000}</rpad>"))
    assert result.rpad_length == 100_000


# ----------------------------------------------------------------------------------------- affix rules


def test_from_mismatch() -> None:
    data = body_envelope("hi", to=BOB, from_="mallory@evil.example", timestamp=T0)
    with pytest.raises(AffixMismatch) as info:
        parse(data, expected_from=ALICE + "/phone")
    error = info.value
    assert (error.affix, error.expected, error.actual) == ("from", ALICE + "/phone", "mallory@evil.example")
    assert "mallory@evil.example" in str(error) and ALICE in str(error) and "<from>" in str(error)


def test_to_mismatch_catches_redirect_and_muc_to_private_conversion() -> None:
    # A group message (<to> = room) delivered as a one-to-one message to Bob.
    data = body_envelope("hi", to=ROOM, from_=ALICE, timestamp=T0)
    with pytest.raises(AffixMismatch) as info:
        parse(data, expected_to=BOB + "/laptop")
    assert (info.value.affix, info.value.actual) == ("to", ROOM)


def test_private_to_muc_conversion_needs_the_to_affix() -> None:
    # A one-to-one message without <to> replayed into a group chat.
    data = body_envelope("hi", to=None, from_=ALICE, timestamp=T0)
    with pytest.raises(MissingAffix) as info:
        parse(data, expected_to=ROOM, groupchat=True)
    assert info.value.affix == "to"
    assert (
        parse(body_envelope("hi", to=ROOM, from_=ALICE, timestamp=T0), expected_to=ROOM, groupchat=True).to
        == ROOM
    )
    with pytest.raises(AffixMismatch):
        other_room = body_envelope("hi", to="other@muc.example.org", from_=ALICE, timestamp=T0)
        parse(other_room, expected_to=ROOM, groupchat=True)
    with pytest.raises(ValueError, match="expected_to") as misuse:
        parse(data, expected_to=None, groupchat=True)
    assert not isinstance(misuse.value, SCEError)


@pytest.mark.parametrize(
    ("affix", "expected"),
    [
        ("alice@example.org", "alice@example.org"),
        ("alice@example.org", "alice@example.org/phone"),
        ("alice@example.org", "Alice@EXAMPLE.org/Phone"),
        ("alice@example.org", "alice@example.org./x"),
        ("ALICE@example.ORG", "alice@example.org"),
        ("caf\u00e9@example.org", "cafe\u0301@example.org"),  # NFC
        ("example.org", "example.org/resource@with/slash"),
    ],
)
def test_jids_compare_as_normalised_bare_jids(affix: str, expected: str) -> None:
    data = envelope("", f"<from jid='{affix}'/><to jid='{affix}'/>")
    result = parse(data, expected_from=expected, expected_to=expected)
    assert result.from_ == affix and result.to == affix


@pytest.mark.parametrize(
    ("affix", "expected"),
    [
        ("alice@example.org", "alice@example.com"),
        ("alice@example.org", "example.org"),
        ("alice@example.org", "malice@example.org"),
        ("a@b", "b@a"),
    ],
)
def test_different_bare_jids_mismatch(affix: str, expected: str) -> None:
    with pytest.raises(AffixMismatch):
        parse(envelope("", f"<from jid='{affix}'/>"), expected_from=expected)


def test_absent_affixes_and_unchecked_expectations_are_accepted() -> None:
    result = parse(envelope("<body xmlns='jabber:client'>x</body>"))
    assert (result.to, result.from_, result.timestamp, result.rpad_length) == (None, None, None, None)
    data = body_envelope("hi", to="x@y", from_="z@w", timestamp=T0)
    assert parse(data, expected_from=None, expected_to=None).from_ == "z@w"


@pytest.mark.parametrize("offset", [timedelta(0), timedelta(minutes=14), -timedelta(minutes=14)])
def test_time_within_skew(offset: timedelta) -> None:
    data = body_envelope("hi", to=BOB, from_=ALICE, timestamp=T0 + offset)
    assert parse(data).timestamp == T0 + offset


@pytest.mark.parametrize("offset", [timedelta(minutes=16), -timedelta(minutes=16), timedelta(days=-30)])
def test_time_out_of_range(offset: timedelta) -> None:
    data = body_envelope("hi", to=BOB, from_=ALICE, timestamp=T0 + offset)
    with pytest.raises(TimestampOutOfRange) as info:
        parse(data)
    error = info.value
    assert (error.timestamp, error.reference, error.max_skew) == (T0 + offset, T0, sce.DEFAULT_MAX_SKEW)
    assert "replay" in str(info.value)
    assert parse(data, max_skew=None).timestamp == T0 + offset
    assert parse(data, max_skew=abs(offset)).timestamp == T0 + offset
    assert parse(data, now=T0 + offset).timestamp == T0 + offset  # e.g. a XEP-0203 delay stamp


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2026-06-01T12:00:00Z", T0),
        ("2026-06-01T14:00:00+02:00", T0),
        ("2026-06-01T06:30:00-05:30", T0),
        ("2026-06-01T12:00:00.5Z", T0 + timedelta(milliseconds=500)),
        ("2026-06-01T12:00:00.123456789Z", T0 + timedelta(microseconds=123456)),
        ("2026-06-01T11:59:60Z", T0 - timedelta(seconds=1)),  # leap second read as :59
    ],
)
def test_xep_0082_datetimes(stamp: str, expected: datetime) -> None:
    assert parse(envelope("", f"<time stamp='{stamp}'/>")).timestamp == expected


def test_naive_datetimes_are_local_misuse() -> None:
    naive = datetime(2026, 1, 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        build_envelope([], to=None, from_=None, timestamp=naive)
    with pytest.raises(ValueError, match="timezone-aware") as info:
        parse(envelope(""), now=naive)
    assert not isinstance(info.value, SCEError)
    with pytest.raises(TypeError):
        parse("<envelope/>")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ server-processed content

SERVER_PROCESSED = [
    "{urn:xmpp:hints}store",
    "{urn:xmpp:hints}no-store",
    "{urn:xmpp:hints}no-copy",
    "{urn:xmpp:hints}no-permanent-store",
    "{urn:xmpp:sid:0}stanza-id",
    "{http://jabber.org/protocol/address}addresses",
    "{urn:xmpp:eme:0}encryption",
]


@pytest.mark.parametrize("tag", SERVER_PROCESSED)
def test_server_processed_elements_are_refused_on_build(tag: str) -> None:
    assert sce.is_server_processed(tag)
    with pytest.raises(ValueError, match="must not go inside an SCE envelope") as info:
        build_envelope([body("hi"), Element(tag)], to=BOB, from_=ALICE)
    assert tag in str(info.value) and "XEP-0" in str(info.value)


@pytest.mark.parametrize("tag", SERVER_PROCESSED)
def test_server_processed_elements_are_discarded_on_parse(tag: str) -> None:
    namespace, name = tag[1:].split("}")
    result = parse(envelope(f"<body xmlns='jabber:client'>hi</body><{name} xmlns='{namespace}'/>"))
    assert [e.tag for e in result.content] == [sce.BODY_TAG] and result.discarded == (tag,)


def test_allowed_neighbours_of_server_processed_elements() -> None:
    for tag in ("{urn:xmpp:sid:0}origin-id", "{urn:xmpp:chat-markers:0}markable", "{jabber:client}subject"):
        assert not sce.is_server_processed(tag)
        assert parse(build_envelope([Element(tag)], to=BOB, from_=ALICE, timestamp=T0)).content[0].tag == tag


def test_stanza_hints_are_the_outside_elements() -> None:
    store, encryption = sce.stanza_hints()
    assert store.tag == "{urn:xmpp:hints}store" and sce.is_server_processed(store.tag)
    assert encryption.attrib == {"namespace": twomemo.twomemo.NAMESPACE, "name": "OMEMO"}


# ---------------------------------------------------------------------------------------- build misuse


def _comment_inside() -> list[Element]:
    outer = Element("{urn:a}outer")
    outer.append(ET.Comment("no"))
    return [outer]


def _too_deep() -> list[Element]:
    root = element = Element("{urn:a}deep")
    for _ in range(sce.MAX_DEPTH):
        element = SubElement(element, "{urn:a}deep")
    return [root]


def _illegal_text() -> list[Element]:
    return [body("bell \x07")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (["text"], "not an Element"),
        ([body("a"), b"<body/>"], "not an Element"),
        (body("single"), "sequence of elements"),
        ("<body/>", "sequence of elements"),
        ([Element("body")], "needs a namespace"),
        ([Element("{}body")], "needs a namespace"),
        ([ET.Comment("c")], "needs a namespace"),
        (_comment_inside(), "comments"),
        (_too_deep(), "MAX_DEPTH"),
        (_illegal_text(), "XML can carry"),
        ([Element("{urn:a}x", {"a": "\x00"})], "XML can carry"),
        ([Element("{urn:a}x", {"1a": "v"})], "not a valid XML name"),
        ([Element("{urn:a}x", {"xmlns": "urn:b"})], "put the namespace into the tag"),
        ([Element("{urn:a}x y")], "not a valid XML name"),
        ([Element("{urn:a")], "not a valid XML name"),
    ],
)
def test_build_refuses_what_cannot_be_sce_content(content: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_envelope(content, to=BOB, from_=ALICE)


def test_the_deepest_allowed_content_round_trips() -> None:
    root = element = Element("{urn:a}deep")
    for _ in range(sce.MAX_DEPTH - 3):
        element = SubElement(element, "{urn:a}deep")
    assert parse(build_envelope([root], to=BOB, from_=ALICE, timestamp=T0)).content


@pytest.mark.parametrize("jid", ["", "/resource", "a@b\x00"])
def test_build_refuses_bad_jids(jid: str) -> None:
    with pytest.raises(ValueError, match="JID"):
        build_envelope([], to=jid, from_=ALICE)


# ------------------------------------------------------------------------------------ malformed input

MALFORMED: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("not xml", b"hello"),
    ("plain body", b"<body xmlns='jabber:client'>hi</body>"),
    ("no namespace", b"<envelope><content/></envelope>"),
    ("wrong namespace", b"<envelope xmlns='urn:xmpp:sce:0'><content/></envelope>"),
    ("old sce name", b"<content xmlns='urn:xmpp:sce:0'><payload/></content>"),
    ("truncated", envelope("<body xmlns='jabber:client'>hi</body>")[:-5]),
    ("junk after root", envelope("") + b"<x/>"),
    ("two roots", envelope("") + envelope("")),
    ("no content", b"<envelope xmlns='urn:xmpp:sce:1'><rpad/></envelope>"),
    ("content in other ns", b"<envelope xmlns='urn:xmpp:sce:1'><content xmlns='urn:x'/></envelope>"),
    ("two contents", envelope("", "<content/>")),
    ("two from", envelope("", "<from jid='a@b'/><from jid='a@b'/>")),
    ("two to", envelope("", "<to jid='a@b'/><to jid='c@d'/>")),
    ("two time", envelope("", "<time stamp='2026-06-01T12:00:00Z'/><time stamp='2026-06-01T12:00:00Z'/>")),
    ("two rpad", envelope("", "<rpad/><rpad/>")),
    ("from without jid", envelope("", "<from/>")),
    ("to with empty jid", envelope("", "<to jid=''/>")),
    ("to with resource only", envelope("", "<to jid='/res'/>")),
    ("time without stamp", envelope("", "<time/>")),
    ("time without zone", envelope("", "<time stamp='2026-06-01T12:00:00'/>")),
    ("date only", envelope("", "<time stamp='2026-06-01'/>")),
    ("month 13", envelope("", "<time stamp='2026-13-01T12:00:00Z'/>")),
    ("hour 25", envelope("", "<time stamp='2026-06-01T25:00:00Z'/>")),
    ("zone 24h", envelope("", "<time stamp='2026-06-01T12:00:00+24:00'/>")),
    ("zone minute 60", envelope("", "<time stamp='2026-06-01T12:00:00+01:60'/>")),
    ("year overflow", envelope("", "<time stamp='9999-12-31T23:59:59-23:59'/>")),
    ("year underflow", envelope("", "<time stamp='0001-01-01T00:00:00+01:00'/>")),
    ("unix time", envelope("", "<time stamp='1780315200'/>")),
    ("arabic digits", envelope("", "<time stamp='\u0662026-06-01T12:00:00Z'/>")),
    ("latin-1", "<envelope xmlns='urn:xmpp:sce:1'><content>é</content></envelope>".encode("latin-1")),
    ("utf-16", "<envelope xmlns='urn:xmpp:sce:1'><content/></envelope>".encode("utf-16")),
    (
        "declared latin-1",
        b"<?xml version='1.0' encoding='latin-1'?>" + envelope("")[:-21] + b"\xe9</content></envelope>",
    ),
    ("doctype", b"<!DOCTYPE envelope><envelope xmlns='urn:xmpp:sce:1'><content/></envelope>"),
    (
        "billion laughs",
        b"<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol0 'lol'>"
        + b"".join(b"<!ENTITY lol%d '%s'>" % (i, b"&lol%d;" % (i - 1) * 10) for i in range(1, 10))
        + b"]><envelope xmlns='urn:xmpp:sce:1'><content><b xmlns='urn:a'>&lol9;</b></content></envelope>",
    ),
    (
        "external entity",
        b"<!DOCTYPE e [<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]>"
        b"<envelope xmlns='urn:xmpp:sce:1'><content><b xmlns='urn:a'>&xxe;</b></content></envelope>",
    ),
    (
        "parameter entity",
        b"<!DOCTYPE e [<!ENTITY % p SYSTEM 'http://example.org/x.dtd'> %p;]><envelope/>",
    ),
    ("undefined entity", envelope("<b xmlns='urn:a'>&nbsp;</b>")),
    ("invalid char ref", envelope("<b xmlns='urn:a'>&#0;</b>")),
    ("control char", envelope("<b xmlns='urn:a'>\x01</b>")),
    ("processing instruction", envelope("<?php echo 1; ?>")),
    ("unbound prefix", envelope("<x:body/>")),
    ("brace in namespace", envelope("<b xmlns='urn:a}b'/>")),
    ("too deep", envelope("<a xmlns='urn:a'>" * 80 + "</a>" * 80)),
    ("too large", envelope("", f"<rpad>{'p' * sce.MAX_ENVELOPE_SIZE}</rpad>")),
]


@pytest.mark.parametrize(("name", "data"), MALFORMED, ids=[name for name, _ in MALFORMED])
def test_malformed_input_is_refused(name: str, data: bytes) -> None:
    with pytest.raises(MalformedEnvelope) as info:
        parse(data, expected_from=None, expected_to=None, max_skew=None)
    assert str(info.value).startswith("malformed SCE envelope: ") and info.value.reason


def test_tolerated_forms() -> None:
    data = (
        b"\xef\xbb\xbf<?xml version='1.0' encoding='UTF-8'?>\n<!-- hi -->"
        b"<s:envelope xmlns:s='urn:xmpp:sce:1' extra='1'> text <s:content> more "
        b"<body xmlns='jabber:client' xml:lang='en'>hi</body> tail </s:content>"
        b"<unknown-affix/><s:from jid='alice@example.org' other='x'/><x:y xmlns:x='urn:x'/></s:envelope>\n"
    )
    result = parse(data)
    assert envelope_body(result) == "hi" and result.from_ == ALICE
    assert result.content[0].tail is None


def test_errors_are_omemo_exceptions_and_value_errors() -> None:
    for error in (MalformedEnvelope, MissingAffix, AffixMismatch, TimestampOutOfRange):
        assert issubclass(error, SCEError)
    assert issubclass(SCEError, OMEMOException) and issubclass(SCEError, ValueError)


SNIPPETS = [b"<", b">", b"&", b"'", b"/", b"&amp;", b"&#1;", b"\xff", b"\x00", b"\xc3", b"<?pi?>"]
SNIPPETS += [b"<!DOCTYPE x>", b"<content>", b"</content>", b"<to jid='x'/>", b" xmlns='urn:y'"]
VALID = body_envelope("Hi there", to=BOB, from_=ALICE, timestamp=T0, random_bytes=rng())


def _parse_or_refuse(data: bytes) -> Optional[Envelope]:
    try:
        return parse_envelope(data, expected_from=ALICE, expected_to=BOB, now=T0)
    except SCEError:
        return None


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes_parse_or_raise_sce_errors(data: bytes) -> None:
    _parse_or_refuse(data)
    _parse_or_refuse(b"<envelope xmlns='urn:xmpp:sce:1'>" + data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_envelopes_parse_or_raise_sce_errors(data: st.DataObject) -> None:
    mutated = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(0, len(mutated)))
        action = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        snippet = data.draw(st.sampled_from(SNIPPETS))
        if action == "flip" and position < len(mutated):
            mutated[position] ^= data.draw(st.integers(1, 255))
        elif action == "insert":
            mutated[position:position] = snippet
        else:
            del mutated[position : position + data.draw(st.integers(1, 20))]
    _parse_or_refuse(bytes(mutated))


def test_every_truncation_is_refused() -> None:
    for end in range(len(VALID)):
        assert _parse_or_refuse(VALID[:end]) is None
    assert _parse_or_refuse(VALID) is not None


# ------------------------------------------------------------------------------------ body and opt-out


def test_envelope_body_helpers() -> None:
    assert envelope_body(parse(envelope("<x xmlns='urn:a'/>"))) is None
    assert envelope_body(parse(envelope("<body xmlns='jabber:client'/>"))) == ""
    assert envelope_body(parse(envelope("<body>not jabber:client</body>"))) is None
    localized = (
        "<body xmlns='jabber:client' xml:lang='de'>Hallo</body><body xmlns='jabber:client'>Hello</body>"
    )
    assert envelope_body(parse(envelope(localized))) == "Hello"


@pytest.mark.parametrize("reason", [None, "compliance: I need a server-side record", ""])
def test_opt_out_round_trip(reason: Optional[str]) -> None:
    data = build_envelope([sce.opt_out_element(reason)], to=BOB, from_=ALICE, timestamp=T0)
    assert b"<opt-out xmlns='urn:xmpp:omemo:2'>" in data
    assert envelope_opt_out(parse(data)) == OptOut(reason)


def test_opt_out_from_the_xep_example_and_absent() -> None:
    xep = envelope(
        "<opt-out xmlns='urn:xmpp:omemo:2'><reason>\n  Sorry, for compliance reasons\n  </reason></opt-out>"
    )
    assert envelope_opt_out(parse(xep)) == OptOut("Sorry, for compliance reasons")
    assert envelope_opt_out(parse(body_envelope("hi", to=BOB, from_=ALICE, timestamp=T0))) is None


# ------------------------------------------------------------------------------------------ end to end


async def test_end_to_end_over_omemo_2() -> None:
    network = InMemoryXMPP()
    managers = {}
    for jid in (ALICE, BOB):
        storage = MemoryStorage()
        manager_class = network.session_manager_class(jid, BTBVTrust)
        managers[jid] = await manager_class.create(
            [twomemo.Twomemo(storage)], storage, jid, None, BTBVTrust.UNDECIDED
        )
        await managers[jid].after_history_sync()
    alice, bob = managers[ALICE], managers[BOB]
    namespace = twomemo.twomemo.NAMESPACE
    reply = Element("{urn:xmpp:reply:0}reply", {"id": "m1"})
    data = build_envelope([body("Hi Bob, this is SCE"), reply], to=BOB, from_=ALICE + "/phone", timestamp=T0)
    messages, errors = await alice.encrypt(frozenset({BOB}), {namespace: data})
    assert not errors and [m.namespace for m in messages] == [namespace]
    for outgoing in messages:
        network.send(outgoing)
    bob_device, _ = await bob.get_own_device_information()
    [message] = network.take(BOB, bob_device.device_id)
    plaintext, sender, _ = await bob.decrypt(message)
    assert plaintext is not None and sender.bare_jid == ALICE
    # The stanza was <message from='alice@example.org/phone' to='bob@example.org/laptop'>.
    stanza_from, stanza_to = message.bare_jid + "/phone", BOB + "/laptop"
    now = T0 + timedelta(seconds=3)
    result = parse_envelope(plaintext, expected_from=stanza_from, expected_to=stanza_to, now=now)
    assert envelope_body(result) == "Hi Bob, this is SCE"
    assert [e.tag for e in result.content] == [sce.BODY_TAG, "{urn:xmpp:reply:0}reply"]
    assert (result.from_, result.to, result.timestamp) == (ALICE, BOB, T0)
    # The same plaintext in a stanza a server redirected to someone else, or replayed a day later.
    with pytest.raises(AffixMismatch):
        parse_envelope(plaintext, expected_from=ALICE, expected_to="carol@example.org", now=T0)
    with pytest.raises(TimestampOutOfRange):
        parse_envelope(plaintext, expected_from=ALICE, expected_to=BOB, now=T0 + timedelta(days=1))
    await alice.shutdown()
    await bob.shutdown()
