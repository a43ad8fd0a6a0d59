"""``twomemo.etree`` and ``oldmemo.etree``: round trips, tolerance of real-world XML, hostile XML.

- Round trips: device lists (labels per namespace), bundles (for oldmemo with both sign bits of the
  identity key), messages (several JIDs and devices, key exchanges, empty messages, no keys).
- Tolerance (what real clients send): whitespace and newlines inside base64, pretty-printing, any
  child order, ``kex``/``prekey`` spelled ``true``/``1``/``false``/``0``, 12- and 16-byte legacy IVs,
  unknown elements and attributes.
- Hostile XML: a table of broken elements and a hypothesis mutation fuzzer. Every rejection is a
  ``MalformedXML``/``MalformedMessage`` (``ValueError`` subclasses) naming the element; nothing else
  (KeyError, IndexError, binascii.Error, TypeError, DecodeError) may escape.
- ``oldmemo.etree.parse_message`` asks the session manager for the sender's identity key only for
  key exchanges, refreshing the device list once and then raising ``SenderNotFound``.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oldmemo
import oldmemo.etree
import oldmemo.oldmemo
import twomemo
import twomemo.etree
import twomemo.twomemo
from omemo._engine.backend import EngineBackend, EngineEncryptedKeyMaterial, EngineKeyExchange
from omemo.message import Message
from omemo.session_manager import SenderNotFound
from omemo.types import SignedLabel
from omemo_engine import xeddsa
from omemo_engine.errors import MalformedMessage, MalformedXML

from .conftest import BACKENDS, FakeSessionManager, establish, make_device

O2 = "urn:xmpp:omemo:2"
LEGACY = "eu.siacs.conversations.axolotl"
SENDER = "alice@example.org"
RECIPIENT = "bob@example.org"
REJECTIONS = (MalformedXML, MalformedMessage)


def q(ns: str, tag: str) -> str:
    return "{" + ns + "}" + tag


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- a world of real, serialised elements (built once per backend) --------------------------------------


@dataclass
class World:
    cls: type[EngineBackend]
    sender_identity_key: bytes
    message: ET.Element
    empty_message: ET.Element
    no_keys_message: ET.Element
    bundle: ET.Element
    bundle_obj: Any
    sent: Message
    sent_empty: Message


_WORLDS: dict[str, World] = {}


async def build_world(cls: type[EngineBackend]) -> World:
    """Alice (device 1) writes to Bob's devices 2 (confirmed session) and 3 (key exchange pending),
    Carol's device 4 (key exchange pending) and her own device 5 (confirmed)."""
    alice = await make_device(cls, SENDER, 1, pre_keys=3)
    sessions = []
    for jid, device_id, confirmed in (
        (RECIPIENT, 2, True),
        (RECIPIENT, 3, False),
        ("carol@example.org", 4, False),
    ):
        peer = await make_device(cls, jid, device_id, pre_keys=3)
        a_session, _ = await establish(alice, peer, reply=confirmed)
        sessions.append(a_session)
    own = await make_device(cls, SENDER, 5, pre_keys=3)
    sessions.append((await establish(alice, own))[0])
    etree = twomemo.etree if cls is twomemo.Twomemo else oldmemo.etree

    async def message_of(empty: bool) -> Message:
        if empty:
            content, key_material = await alice.backend.encrypt_empty()
        else:
            content, key_material = await alice.backend.encrypt_plaintext(b"the payload")
        keys = []
        for session in sessions:
            encrypted = await alice.backend.encrypt_key_material(session, key_material)
            keys.append((encrypted, None if session.confirmed else session.key_exchange))
        return Message(alice.backend.namespace, SENDER, 1, content, frozenset(keys))

    sent = await message_of(False)
    sent_empty = await message_of(True)
    no_keys = Message(alice.backend.namespace, SENDER, 1, sent.content, frozenset())
    bundle_obj = await alice.backend.get_bundle(SENDER, 1)
    return World(
        cls,
        await alice.identity_key(),
        etree.serialize_message(sent),
        etree.serialize_message(sent_empty),
        etree.serialize_message(no_keys),
        etree.serialize_bundle(bundle_obj),
        bundle_obj,
        sent,
        sent_empty,
    )


@pytest.fixture
async def world(backend_cls: type[EngineBackend]) -> World:
    name = "twomemo" if backend_cls is twomemo.Twomemo else "oldmemo"
    if name not in _WORLDS:
        _WORLDS[name] = await build_world(backend_cls)
    return _WORLDS[name]


def fresh(element: ET.Element) -> ET.Element:
    """A deep copy that went through the XML text form, as a received stanza would."""
    return ET.fromstring(ET.tostring(element))


def manager_for(world: World) -> FakeSessionManager:
    return FakeSessionManager({SENDER: {1: world.sender_identity_key}})


async def parse_message(
    world: World, element: ET.Element, manager: Optional[FakeSessionManager] = None
) -> Message:
    if world.cls is oldmemo.Oldmemo:
        message: Message = await oldmemo.etree.parse_message(
            element,
            SENDER,
            RECIPIENT,
            manager or manager_for(world),  # type: ignore[arg-type]
        )
        return message
    return twomemo.etree.parse_message(element, SENDER)


def canon(message: Message, *, legacy_jid: Optional[str] = None) -> Any:
    """A comparable form of a message. ``legacy_jid``: compare every key's JID as this (legacy XML
    has no JIDs per key)."""
    content = message.content
    iv = getattr(content, "initialization_vector", None)
    keys = []
    for encrypted, kex in message.keys:
        assert isinstance(encrypted, EngineEncryptedKeyMaterial)
        kex_part = None
        if kex is not None:
            assert isinstance(kex, EngineKeyExchange)
            kex_part = (kex.identity_key, kex.ephemeral_key, kex.signed_pre_key_id, kex.pre_key_id)
        jid = legacy_jid or encrypted.bare_jid
        keys.append((jid, encrypted.device_id, encrypted.encrypted_message, kex_part))
    return (
        message.namespace,
        message.bare_jid,
        message.device_id,
        content.empty,
        content.ciphertext,  # type: ignore[attr-defined]
        iv,
        sorted(keys, key=repr),
    )


def expected(world: World, message: Message) -> Any:
    return canon(message, legacy_jid=RECIPIENT if world.cls is oldmemo.Oldmemo else None)


# -- round trips ----------------------------------------------------------------------------------------


async def test_message_round_trip(world: World) -> None:
    parsed = await parse_message(world, fresh(world.message))
    assert canon(parsed) == expected(world, world.sent)
    kexes = [kex for _, kex in parsed.keys if kex is not None]
    assert len(kexes) == 2 and len(parsed.keys) == 4
    jids = {encrypted.bare_jid for encrypted, _ in parsed.keys}
    assert jids == ({RECIPIENT} if world.cls is oldmemo.Oldmemo else {RECIPIENT, SENDER, "carol@example.org"})
    assert not parsed.content.empty
    # Serialising the parsed message gives the same element again.
    etree = twomemo.etree if world.cls is twomemo.Twomemo else oldmemo.etree
    again = await parse_message(world, fresh(etree.serialize_message(parsed)))
    assert canon(again) == canon(parsed)


async def test_empty_message_round_trip(world: World) -> None:
    parsed = await parse_message(world, fresh(world.empty_message))
    assert parsed.content.empty
    assert canon(parsed) == expected(world, world.sent_empty)
    payloads = [c for c in world.empty_message if c.tag.endswith("}payload")]
    assert payloads == []
    if world.cls is oldmemo.Oldmemo:
        assert isinstance(parsed.content, oldmemo.oldmemo.ContentImpl)
        assert len(parsed.content.initialization_vector) == 12  # the <iv> is always written


async def test_message_without_keys_round_trip(world: World) -> None:
    parsed = await parse_message(world, fresh(world.no_keys_message))
    assert parsed.keys == frozenset()
    assert canon(parsed) == canon(Message(world.sent.namespace, SENDER, 1, world.sent.content, frozenset()))


async def test_twomemo_message_groups_keys_by_jid() -> None:
    world = _WORLDS.get("twomemo") or await build_world(twomemo.Twomemo)
    header = world.message.find(q(O2, "header"))
    assert header is not None and header.get("sid") == "1"
    groups = {keys.get("jid"): sorted((k.get("rid"), k.get("kex")) for k in keys) for keys in header}
    assert groups == {
        RECIPIENT: [("2", None), ("3", "true")],
        "carol@example.org": [("4", "true")],
        SENDER: [("5", None)],
    }


async def test_bundle_round_trip(world: World) -> None:
    etree = twomemo.etree if world.cls is twomemo.Twomemo else oldmemo.etree
    parsed = etree.parse_bundle(fresh(world.bundle), SENDER, 1)
    assert parsed == world.bundle_obj and hash(parsed) == hash(world.bundle_obj)
    assert (parsed.bare_jid, parsed.device_id) == (SENDER, 1)
    assert etree.parse_bundle(fresh(world.bundle), "x@example.org", 7).device_id == 7


async def test_bundle_round_trip_both_sign_bits(backend_cls: type[EngineBackend]) -> None:
    """Legacy bundles carry the identity key in Curve25519 form; the Ed25519 sign bit travels in the
    signature. Both values of the bit must survive (each device has a 50% chance of either)."""
    etree = twomemo.etree if backend_cls is twomemo.Twomemo else oldmemo.etree
    seen: set[bool] = set()
    for device_id in range(1, 41):
        device = await make_device(backend_cls, SENDER, device_id, pre_keys=0)
        bundle = await device.backend.get_bundle(SENDER, device_id)
        parsed = etree.parse_bundle(fresh(etree.serialize_bundle(bundle)), SENDER, device_id)
        assert parsed == bundle
        assert parsed.identity_key == await device.identity_key()
        seen.add(xeddsa.ed25519_pub_sign_bit(parsed.identity_key))
        if len(seen) == 2 and device_id > 2:
            break
    assert seen == {False, True}


async def test_bundle_without_pre_keys_round_trip(backend_cls: type[EngineBackend]) -> None:
    etree = twomemo.etree if backend_cls is twomemo.Twomemo else oldmemo.etree
    device = await make_device(backend_cls, SENDER, 1, pre_keys=0)
    bundle = await device.backend.get_bundle(SENDER, 1)
    assert etree.parse_bundle(fresh(etree.serialize_bundle(bundle)), SENDER, 1) == bundle


def test_twomemo_device_list_round_trip() -> None:
    signature = bytes(range(64))
    element = twomemo.etree.serialize_device_list(
        {1: SignedLabel("Phone", signature), 2: None, 3: "plain label", 4: SignedLabel("", signature)}
    )
    devices = {d.get("id"): d.attrib for d in fresh(element)}
    assert devices["1"] == {"id": "1", "label": "Phone", "labelsig": b64(signature)}
    assert devices["2"] == {"id": "2"}
    assert devices["3"] == {"id": "3", "label": "plain label"}  # written without labelsig
    assert twomemo.etree.parse_device_list(fresh(element)) == {
        1: SignedLabel("Phone", signature),
        2: None,
        3: None,  # a label without signature is dropped on parse
        4: SignedLabel("", signature),
    }
    assert twomemo.etree.parse_device_list(fresh(twomemo.etree.serialize_device_list({}))) == {}


def test_twomemo_device_list_unusable_signatures_are_dropped() -> None:
    xml = (
        f"<devices xmlns='{O2}'><device id='1' label='a' labelsig='!!!'/>"
        f"<device id='2' label='b' labelsig='{b64(bytes(10))}'/>"
        f"<device id='3' labelsig='{b64(bytes(64))}'/><device id='4' label='d' labelsig=''/></devices>"
    )
    assert twomemo.etree.parse_device_list(ET.fromstring(xml)) == {1: None, 2: None, 3: None, 4: None}


def test_oldmemo_device_list_round_trip_drops_labels() -> None:
    element = oldmemo.etree.serialize_device_list({1: SignedLabel("Phone", bytes(64)), 2: None, 3: "plain"})
    assert [d.attrib for d in fresh(element)] == [{"id": "1"}, {"id": "2"}, {"id": "3"}]
    assert oldmemo.etree.parse_device_list(fresh(element)) == {1: None, 2: None, 3: None}
    assert oldmemo.etree.parse_device_list(fresh(oldmemo.etree.serialize_device_list({}))) == {}
    # Labels some clients add anyway are ignored.
    xml = f"<list xmlns='{LEGACY}'><device id='7' label='x'/></list>"
    assert oldmemo.etree.parse_device_list(ET.fromstring(xml)) == {7: None}


# -- tolerance ------------------------------------------------------------------------------------------


def rewrap_base64(element: ET.Element) -> ET.Element:
    """Break every base64 text into short indented lines, as pretty-printing clients do."""
    out = copy.deepcopy(element)
    for node in out.iter():
        text = node.text
        if text and len(node) == 0 and len(text) > 4 and node.tag.split("}")[1] != "device":
            chunks = [text[i : i + 7] for i in range(0, len(text), 7)]
            node.text = "\n      " + "\n      ".join(chunks) + "\n    "
    return out


def reverse_children(element: ET.Element) -> ET.Element:
    out = copy.deepcopy(element)
    for node in out.iter():
        children = list(node)
        for child in children:
            node.remove(child)
        node.extend(reversed(children))
    return out


def add_unknown(element: ET.Element) -> ET.Element:
    out = copy.deepcopy(element)
    ns = out.tag[1 : out.tag.index("}")]
    for node in list(out.iter()):
        node.set("unknown-attribute", "x")
        node.set(q("urn:example:other", "attr"), "y")
        if len(node) or node is out:
            ET.SubElement(node, q("urn:example:other", "extension")).text = "junk"
            ET.SubElement(node, q(ns, "future-element"), {"id": "not-a-number"}).text = "!!!"
    return out


def pretty(element: ET.Element) -> ET.Element:
    out = copy.deepcopy(element)
    ET.indent(out, space="  ")
    return ET.fromstring(ET.tostring(out))


TRANSFORMS: dict[str, Callable[[ET.Element], ET.Element]] = {
    "base64 with newlines": rewrap_base64,
    "children reversed": reverse_children,
    "unknown elements and attributes": add_unknown,
    "pretty-printed": pretty,
    "all of them": lambda e: pretty(add_unknown(reverse_children(rewrap_base64(e)))),
}


@pytest.mark.parametrize("transform", list(TRANSFORMS), ids=list(TRANSFORMS))
async def test_tolerant_message_parsing(world: World, transform: str) -> None:
    for element, sent in ((world.message, world.sent), (world.empty_message, world.sent_empty)):
        parsed = await parse_message(world, fresh(TRANSFORMS[transform](element)))
        assert canon(parsed) == expected(world, sent)


@pytest.mark.parametrize("transform", list(TRANSFORMS), ids=list(TRANSFORMS))
async def test_tolerant_bundle_parsing(world: World, transform: str) -> None:
    etree = twomemo.etree if world.cls is twomemo.Twomemo else oldmemo.etree
    assert etree.parse_bundle(fresh(TRANSFORMS[transform](world.bundle)), SENDER, 1) == world.bundle_obj


@pytest.mark.parametrize("transform", list(TRANSFORMS), ids=list(TRANSFORMS))
def test_tolerant_device_list_parsing(backend_cls: type[EngineBackend], transform: str) -> None:
    etree = twomemo.etree if backend_cls is twomemo.Twomemo else oldmemo.etree
    signed = {1: SignedLabel("Phone", bytes(64)), 22: None, 333: None}
    element = etree.serialize_device_list(signed)
    result = etree.parse_device_list(fresh(TRANSFORMS[transform](element)))
    assert result == (signed if backend_cls is twomemo.Twomemo else dict.fromkeys(signed))


@pytest.mark.parametrize(
    ("value", "is_kex"), [("true", True), ("1", True), (" true ", True), ("false", False), ("0", False)]
)
async def test_kex_attribute_spellings(world: World, value: str, is_kex: bool) -> None:
    attribute = "kex" if world.cls is twomemo.Twomemo else "prekey"
    element = fresh(world.message)
    marked = [key for key in element.iter() if key.get(attribute) is not None]
    assert len(marked) == 2
    for key in marked:
        key.set(attribute, value)
    parsed = await parse_message(world, element)
    if world.cls is twomemo.Twomemo:
        # The bytes are an OMEMOKeyExchange either way, and decide (QXmpp sends key exchanges
        # without kex='true' after the first message of a session).
        assert sum(kex is not None for _, kex in parsed.keys) == 2
        return
    assert sum(kex is not None for _, kex in parsed.keys) == (2 if is_kex else 0)
    if not is_kex:
        # The key-exchange bytes are then taken for the key material as they are.
        assert len(parsed.keys) == 4


@pytest.mark.parametrize("iv_length", [12, 16])
async def test_legacy_iv_lengths(iv_length: int) -> None:
    world = _WORLDS.get("oldmemo") or await build_world(oldmemo.Oldmemo)
    for source in (world.message, world.empty_message):
        element = fresh(source)
        [iv] = [node for node in element.iter() if node.tag == q(LEGACY, "iv")]
        iv.text = b64(bytes(range(iv_length)))
        parsed = await parse_message(world, element)
        assert isinstance(parsed.content, oldmemo.oldmemo.ContentImpl)
        assert parsed.content.initialization_vector == bytes(range(iv_length))


async def test_legacy_message_without_iv() -> None:
    world = _WORLDS.get("oldmemo") or await build_world(oldmemo.Oldmemo)
    element = fresh(world.message)
    header = element.find(q(LEGACY, "header"))
    assert header is not None
    for iv in header.findall(q(LEGACY, "iv")):
        header.remove(iv)
    # With its payload: refused (taken for an empty message, its content would be lost silently).
    with pytest.raises(MalformedXML, match="required child <iv> is missing"):
        await parse_message(world, element)
    # Without the payload too: an empty message.
    for payload in element.findall(q(LEGACY, "payload")):
        element.remove(payload)
    parsed = await parse_message(world, element)
    assert parsed.content.empty


# -- hostile XML ----------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def pb(*fields: tuple[int, Any]) -> bytes:
    """Hand-encode protobuf fields: ints as varints, bytes length-delimited."""
    out = b""
    for number, value in fields:
        if isinstance(value, int):
            out += _varint(number << 3) + _varint(value)
        else:
            out += _varint(number << 3 | 2) + _varint(len(value)) + value
    return out


#: An X25519 u-coordinate (p - 1) that has no Ed25519 form (u + 1 = 0 has no inverse).
NO_ED25519_FORM = (2**255 - 20).to_bytes(32, "little")

O2_AUTH = pb((1, bytes(16)), (2, pb((1, 0), (2, 0), (3, bytes(32)), (4, b"ct"))))
O2_BAD_KEX = {
    "garbage": b"\xff\xfe\xfd garbage",
    "empty protobuf": pb((1, 1)),
    "short ik": pb((1, 1), (2, 1), (3, bytes(31)), (4, bytes(32)), (5, O2_AUTH)),
    "long ek": pb((1, 1), (2, 1), (3, bytes(32)), (4, bytes(33)), (5, O2_AUTH)),
    "no message": pb((1, 1), (2, 1), (3, bytes(32)), (4, bytes(32))),
    "bad inner message": pb((1, 1), (2, 1), (3, bytes(32)), (4, bytes(32)), (5, b"\xff\xff")),
    "truncated": pb((1, 1), (2, 1), (3, bytes(32)), (4, bytes(32)), (5, O2_AUTH))[:-3],
}
L_MESSAGE = b"\x33" + pb((1, b"\x05" + bytes(32)), (2, 0), (3, 0), (4, b"ct")) + bytes(8)
L_KEX_FIELDS: dict[str, Any] = {
    "pre_key_id": (1, 1),
    "base_key": (2, b"\x05" + bytes(range(32))),
    "identity_key": (3, b"\x05" + bytes(range(1, 33))),
    "message": (4, L_MESSAGE),
    "signed_pre_key_id": (6, 1),
}


def legacy_kex(**changes: Any) -> bytes:
    fields = dict(L_KEX_FIELDS)
    fields.update(changes)
    return b"\x33" + pb(*[v for v in fields.values() if v is not None])


L_BAD_KEX = {
    "garbage": b"\x33\xff\xfe\xfd garbage",
    "empty": b"\x33",
    "version 2": b"\x22" + legacy_kex()[1:],
    "no pre key id": legacy_kex(pre_key_id=None),
    "no signed pre key id": legacy_kex(signed_pre_key_id=None),
    "no base key": legacy_kex(base_key=None),
    "no message": legacy_kex(message=None),
    "identity key without type byte": legacy_kex(identity_key=(3, bytes(range(1, 33)))),
    "identity key 0x06": legacy_kex(identity_key=(3, b"\x06" + bytes(range(1, 33)))),
    "identity key without Ed25519 form": legacy_kex(identity_key=(3, b"\x05" + NO_ED25519_FORM)),
    "short base key": legacy_kex(base_key=(2, b"\x05" + bytes(31))),
}

Mutation = Callable[[ET.Element], None]


def at(path: str, action: Callable[[ET.Element], None]) -> Mutation:
    """Apply ``action`` to the first element at ``path`` (local names separated by '/', '' = root)."""

    def mutate(root: ET.Element) -> None:
        node = root
        for name in filter(None, path.split("/")):
            found = next((child for child in node if child.tag.split("}")[-1] == name), None)
            assert found is not None, (path, name)
            node = found
        action(node)

    return mutate


def set_attr(name: str, value: str) -> Callable[[ET.Element], None]:
    return lambda node: node.set(name, value)


def del_attr(name: str) -> Callable[[ET.Element], None]:
    def action(node: ET.Element) -> None:
        del node.attrib[name]

    return action


def set_text(text: Optional[str]) -> Callable[[ET.Element], None]:
    def action(node: ET.Element) -> None:
        node.text = text

    return action


def rename(tag: str) -> Callable[[ET.Element], None]:
    def action(node: ET.Element) -> None:
        node.tag = tag

    return action


def remove_child(name: str) -> Callable[[ET.Element], None]:
    def action(node: ET.Element) -> None:
        for child in list(node):
            if child.tag.split("}")[-1] == name:
                node.remove(child)

    return action


def duplicate_child(name: str) -> Callable[[ET.Element], None]:
    def action(node: ET.Element) -> None:
        child = next(c for c in node if c.tag.split("}")[-1] == name)
        node.append(copy.deepcopy(child))

    return action


def kex_key(data: bytes, attribute: str) -> Callable[[ET.Element], None]:
    def action(node: ET.Element) -> None:
        node.set(attribute, "true")
        node.text = b64(data)

    return action


BAD_IDS = {
    "non-numeric": "abc",
    "empty": "",
    "zero": "0",
    "negative": "-5",
    "huge": "99999999999",
    "float": "1.5",
}
# Signed pre-key and pre-key ids are 0..2^32-1 (protobuf uint32; Converse numbers from 0).
BAD_KEY_IDS = {
    **{k: v for k, v in BAD_IDS.items() if k != "zero"},
    "above uint32": "4294967296",
}
BAD_B64 = {"not base64": "!!!!", "bad padding": "abc", "non-ascii": "ÿÿÿÿ", "padding inside": "ab=c"}


def _cases() -> list[tuple[str, str, str, Mutation, str]]:
    """(backend, kind, case id, mutation, a word the error must contain)."""
    cases: list[tuple[str, str, str, Mutation, str]] = []

    def add(backend: str, kind: str, case: str, mutation: Mutation, word: str) -> None:
        cases.append((backend, kind, case, mutation, word))

    # urn:xmpp:omemo:2 message
    add("twomemo", "message", "wrong namespace", at("", rename(q("urn:other", "encrypted"))), "encrypted")
    add("twomemo", "message", "legacy namespace", at("", rename(q(LEGACY, "encrypted"))), "encrypted")
    add("twomemo", "message", "wrong root", at("", rename(q(O2, "bundle"))), "encrypted")
    add("twomemo", "message", "no header", at("", remove_child("header")), "header")
    add(
        "twomemo", "message", "header in other namespace", at("header", rename(q(LEGACY, "header"))), "header"
    )
    add("twomemo", "message", "two headers", at("", duplicate_child("header")), "header")
    add("twomemo", "message", "two payloads", at("", duplicate_child("payload")), "payload")
    add("twomemo", "message", "no sid", at("header", del_attr("sid")), "sid")
    for name, value in BAD_IDS.items():
        add("twomemo", "message", f"sid {name}", at("header", set_attr("sid", value)), "sid")
        add("twomemo", "message", f"rid {name}", at("header/keys/key", set_attr("rid", value)), "rid")
    add("twomemo", "message", "no jid", at("header/keys", del_attr("jid")), "jid")
    add("twomemo", "message", "empty jid", at("header/keys", set_attr("jid", " ")), "jid")
    add("twomemo", "message", "no rid", at("header/keys/key", del_attr("rid")), "rid")
    add("twomemo", "message", "kex yes", at("header/keys/key", set_attr("kex", "yes")), "kex")
    add("twomemo", "message", "kex True", at("header/keys/key", set_attr("kex", "True")), "kex")
    add("twomemo", "message", "empty key", at("header/keys/key", set_text(None)), "key")
    for name, text in BAD_B64.items():
        add("twomemo", "message", f"key {name}", at("header/keys/key", set_text(text)), "key")
        add("twomemo", "message", f"payload {name}", at("payload", set_text(text)), "payload")
    for name, data in O2_BAD_KEX.items():
        add("twomemo", "message", f"kex {name}", at("header/keys/key", kex_key(data, "kex")), "key")

    # urn:xmpp:omemo:2 bundle
    for child in ("spk", "spks", "ik", "prekeys"):
        add("twomemo", "bundle", f"no {child}", at("", remove_child(child)), child)
        add("twomemo", "bundle", f"two {child}", at("", duplicate_child(child)), child)
    add("twomemo", "bundle", "wrong namespace", at("", rename(q(LEGACY, "bundle"))), "bundle")
    add("twomemo", "bundle", "spk in other namespace", at("spk", rename(q("urn:other", "spk"))), "spk")
    add("twomemo", "bundle", "no spk id", at("spk", del_attr("id")), "spk")
    add("twomemo", "bundle", "no pk id", at("prekeys/pk", del_attr("id")), "pk")
    add("twomemo", "bundle", "duplicate pk", at("prekeys", duplicate_child("pk")), "pk")
    for name, value in BAD_KEY_IDS.items():
        add("twomemo", "bundle", f"spk id {name}", at("spk", set_attr("id", value)), "spk")
        add("twomemo", "bundle", f"pk id {name}", at("prekeys/pk", set_attr("id", value)), "pk")
    for child, length in (("spk", 31), ("spk", 33), ("spks", 63), ("ik", 33), ("ik", 0), ("prekeys/pk", 31)):
        name = child.split("/")[-1]
        add("twomemo", "bundle", f"{name} of {length} bytes", at(child, set_text(b64(bytes(length)))), name)
    for name, text in BAD_B64.items():
        add("twomemo", "bundle", f"ik {name}", at("ik", set_text(text)), "ik")
        add("twomemo", "bundle", f"pk {name}", at("prekeys/pk", set_text(text)), "pk")

    # urn:xmpp:omemo:2 device list
    add("twomemo", "devices", "wrong namespace", at("", rename(q(LEGACY, "devices"))), "devices")
    add("twomemo", "devices", "wrong root", at("", rename(q(O2, "list"))), "devices")

    # eu.siacs.conversations.axolotl message
    add("oldmemo", "message", "wrong namespace", at("", rename(q(O2, "encrypted"))), "encrypted")
    add("oldmemo", "message", "no header", at("", remove_child("header")), "header")
    add("oldmemo", "message", "two headers", at("", duplicate_child("header")), "header")
    add("oldmemo", "message", "two ivs", at("header", duplicate_child("iv")), "iv")
    add("oldmemo", "message", "two payloads", at("", duplicate_child("payload")), "payload")
    add("oldmemo", "message", "no sid", at("header", del_attr("sid")), "sid")
    add("oldmemo", "message", "no rid", at("header/key", del_attr("rid")), "rid")
    for name, value in BAD_IDS.items():
        add("oldmemo", "message", f"sid {name}", at("header", set_attr("sid", value)), "sid")
        add("oldmemo", "message", f"rid {name}", at("header/key", set_attr("rid", value)), "rid")
    add("oldmemo", "message", "prekey yes", at("header/key", set_attr("prekey", "yes")), "prekey")
    add("oldmemo", "message", "empty key", at("header/key", set_text("")), "key")
    for length in (0, 8, 11, 13, 32):
        add(
            "oldmemo", "message", f"iv of {length} bytes", at("header/iv", set_text(b64(bytes(length)))), "iv"
        )
    for name, text in BAD_B64.items():
        add("oldmemo", "message", f"key {name}", at("header/key", set_text(text)), "key")
        add("oldmemo", "message", f"iv {name}", at("header/iv", set_text(text)), "iv")
        add("oldmemo", "message", f"payload {name}", at("payload", set_text(text)), "payload")
    for name, data in L_BAD_KEX.items():
        add("oldmemo", "message", f"kex {name}", at("header/key", kex_key(data, "prekey")), "key")

    # eu.siacs.conversations.axolotl bundle
    for child in ("signedPreKeyPublic", "signedPreKeySignature", "identityKey", "prekeys"):
        add("oldmemo", "bundle", f"no {child}", at("", remove_child(child)), child)
        add("oldmemo", "bundle", f"two {child}", at("", duplicate_child(child)), child)
    add("oldmemo", "bundle", "wrong namespace", at("", rename(q(O2, "bundle"))), "bundle")
    add(
        "oldmemo",
        "bundle",
        "no spk id",
        at("signedPreKeyPublic", del_attr("signedPreKeyId")),
        "signedPreKeyId",
    )
    add("oldmemo", "bundle", "no pk id", at("prekeys/preKeyPublic", del_attr("preKeyId")), "preKeyId")
    add("oldmemo", "bundle", "duplicate pk", at("prekeys", duplicate_child("preKeyPublic")), "preKeyPublic")
    for name, value in BAD_KEY_IDS.items():
        spk_id = at("signedPreKeyPublic", set_attr("signedPreKeyId", value))
        add("oldmemo", "bundle", f"spk id {name}", spk_id, "signedPreKeyId")
        pk_id = at("prekeys/preKeyPublic", set_attr("preKeyId", value))
        add("oldmemo", "bundle", f"pk id {name}", pk_id, "preKeyId")
    for child, data in (
        ("signedPreKeyPublic", bytes(range(32))),  # no type byte
        ("signedPreKeyPublic", b"\x06" + bytes(range(32))),
        ("identityKey", b"\x05" + bytes(31)),
        ("identityKey", b"\x05" + NO_ED25519_FORM),
        ("signedPreKeySignature", bytes(63)),
        ("prekeys/preKeyPublic", b"\x05" + bytes(33)),
        ("prekeys/preKeyPublic", b""),
    ):
        name = child.split("/")[-1]
        add("oldmemo", "bundle", f"{name} {data[:1].hex()} {len(data)}", at(child, set_text(b64(data))), name)
    for name, text in BAD_B64.items():
        add("oldmemo", "bundle", f"identityKey {name}", at("identityKey", set_text(text)), "identityKey")

    # eu.siacs.conversations.axolotl device list
    add("oldmemo", "devices", "wrong namespace", at("", rename(q(O2, "list"))), "list")
    return cases


CASES = _cases()


def _device_list(backend: str) -> ET.Element:
    if backend == "twomemo":
        return twomemo.etree.serialize_device_list({5: None, 6: None})
    return oldmemo.etree.serialize_device_list({5: None, 6: None})


@pytest.mark.parametrize(
    ("backend", "kind", "mutation", "word"),
    [(b, k, m, w) for b, k, _, m, w in CASES],
    ids=[f"{b}-{k}-{c}" for b, k, c, _, _ in CASES],
)
async def test_hostile_xml_is_rejected_with_malformed_xml(
    backend: str, kind: str, mutation: Mutation, word: str
) -> None:
    cls = BACKENDS[backend]
    if backend not in _WORLDS:
        _WORLDS[backend] = await build_world(cls)
    world = _WORLDS[backend]
    etree = twomemo.etree if backend == "twomemo" else oldmemo.etree
    source = {"message": world.message, "bundle": world.bundle, "devices": _device_list(backend)}[kind]
    element = fresh(source)
    mutation(element)
    with pytest.raises(REJECTIONS) as info:
        if kind == "message":
            await parse_message(world, element)
        elif kind == "bundle":
            etree.parse_bundle(element, SENDER, 1)
        else:
            etree.parse_device_list(element)
    assert isinstance(info.value, ValueError)
    assert word.lower() in str(info.value).lower(), str(info.value)


# -- hypothesis: random mutations are parsed or rejected with MalformedXML, nothing else ----------------


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


texts = st.one_of(
    st.text(max_size=60),
    st.binary(max_size=80).map(b64),
    st.sampled_from(["", " ", "0", "1", "-1", "true", "false", "2147483648", "=", "====", "AAAA\n=", "\x00"]),
)


@st.composite
def mutations(draw: st.DrawFn) -> list[tuple[int, str, Any]]:
    """A few (element index, operation, argument) steps."""
    steps = []
    for _ in range(draw(st.integers(1, 4))):
        op = draw(
            st.sampled_from(["set_attr", "del_attr", "set_text", "remove", "duplicate", "rename", "add"])
        )
        arg = (draw(st.sampled_from(["id", "sid", "rid", "jid", "kex", "prekey", "signedPreKeyId", "preKeyId",
                                     "label", "labelsig"])), draw(texts))  # fmt: skip
        steps.append((draw(st.integers(0, 200)), op, arg))
    return steps


def apply(element: ET.Element, steps: list[tuple[int, str, Any]]) -> None:
    for index, op, (attribute, text) in steps:
        nodes = list(element.iter())
        node = nodes[index % len(nodes)]
        parent = next((p for p in element.iter() if node in list(p)), None)
        if op == "set_attr":
            node.set(attribute, text)
        elif op == "del_attr" and node.attrib:
            node.attrib.pop(sorted(node.attrib)[index % len(node.attrib)])
        elif op == "set_text":
            node.text = text
        elif op == "remove" and parent is not None:
            parent.remove(node)
        elif op == "duplicate" and parent is not None:
            parent.append(copy.deepcopy(node))
        elif op == "rename":
            node.tag = node.tag.split("}")[0] + "}" + (text or "x")
        elif op == "add":
            ET.SubElement(node, node.tag.split("}")[0] + "}" + attribute).text = text


def _check_parse(backend: str, kind: str, steps: list[tuple[int, str, Any]]) -> None:
    world = _WORLDS[backend]
    etree = twomemo.etree if backend == "twomemo" else oldmemo.etree
    source = {"message": world.message, "bundle": world.bundle, "devices": _device_list(backend)}[kind]
    element = fresh(source)
    apply(element, steps)
    try:
        if kind == "message":
            manager = manager_for(world)
            manager.on_refresh = lambda jid: None
            _run(parse_message(world, element, manager))
        elif kind == "bundle":
            etree.parse_bundle(element, SENDER, 1)
        else:
            etree.parse_device_list(element)
    except REJECTIONS:
        pass
    except SenderNotFound:
        assert backend == "oldmemo" and kind == "message"  # a mutated sid names an unknown device


@pytest.fixture
def built_worlds() -> None:
    for name, cls in BACKENDS.items():
        if name not in _WORLDS:
            _WORLDS[name] = _run(build_world(cls))


@pytest.mark.parametrize("kind", ["message", "bundle", "devices"])
@pytest.mark.parametrize("backend", list(BACKENDS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=mutations())
def test_mutated_xml_never_raises_anything_else(
    built_worlds: None, backend: str, kind: str, steps: list[tuple[int, str, Any]]
) -> None:
    _check_parse(backend, kind, steps)


@pytest.mark.parametrize("backend", list(BACKENDS))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200))
def test_random_key_exchange_bytes(built_worlds: None, backend: str, data: bytes) -> None:
    world = _WORLDS[backend]
    element = fresh(world.message)
    attribute = "kex" if backend == "twomemo" else "prekey"
    key = next(node for node in element.iter() if node.tag.endswith("}key"))
    key.set(attribute, "true")
    key.text = b64(data)
    try:
        parsed = _run(parse_message(world, element))
    except REJECTIONS as exc:
        assert "key" in str(exc)
    else:
        assert any(kex is not None for _, kex in parsed.keys)


# -- oldmemo: the sender's identity key for key exchanges -----------------------------------------------


async def test_oldmemo_kex_from_unknown_sender_refreshes_once_then_sender_not_found() -> None:
    world = _WORLDS.get("oldmemo") or await build_world(oldmemo.Oldmemo)
    manager = FakeSessionManager({SENDER: {99: world.sender_identity_key}})
    with pytest.raises(SenderNotFound) as info:
        await parse_message(world, fresh(world.message), manager)
    assert manager.refreshes == [(LEGACY, SENDER)]
    assert SENDER in str(info.value) and "1" in str(info.value)


async def test_oldmemo_kex_from_device_found_by_the_refresh() -> None:
    world = _WORLDS.get("oldmemo") or await build_world(oldmemo.Oldmemo)
    manager = FakeSessionManager()

    def refresh(jid: str) -> None:
        manager.known[jid] = {1: world.sender_identity_key}

    manager.on_refresh = refresh
    parsed = await parse_message(world, fresh(world.message), manager)
    assert manager.refreshes == [(LEGACY, SENDER)]  # once, although there are two key exchanges
    kexes = [kex for _, kex in parsed.keys if kex is not None]
    assert len(kexes) == 2
    assert all(kex.identity_key == world.sender_identity_key for kex in kexes)


async def test_oldmemo_known_sender_and_messages_without_kex_need_no_refresh() -> None:
    world = _WORLDS.get("oldmemo") or await build_world(oldmemo.Oldmemo)
    manager = manager_for(world)
    await parse_message(world, fresh(world.message), manager)
    assert manager.refreshes == []
    # Without key exchanges the sender is never looked up, even if unknown.
    element = fresh(world.message)
    for key in element.iter(q(LEGACY, "key")):
        key.attrib.pop("prekey", None)
    stranger = FakeSessionManager()
    parsed = await parse_message(world, element, stranger)
    assert stranger.refreshes == [] and all(kex is None for _, kex in parsed.keys)


async def test_oldmemo_identity_key_sign_bit_comes_from_the_session_manager() -> None:
    """The wire carries the Curve25519 key only: the parsed kex has the Ed25519 key the session
    manager knows, whichever sign bit it has."""
    world = _WORLDS.get("oldmemo") or await build_world(oldmemo.Oldmemo)
    parsed = await parse_message(world, fresh(world.message))
    kexes = [kex for _, kex in parsed.keys if kex is not None]
    assert kexes and all(kex.identity_key == world.sender_identity_key for kex in kexes)


@pytest.mark.parametrize("backend", ["twomemo", "oldmemo"])
@pytest.mark.parametrize("value", [None, *BAD_IDS.values()], ids=["no id", *BAD_IDS])
def test_a_bad_device_entry_is_left_out_and_logged(
    backend: str, value: Optional[str], caplog: pytest.LogCaptureFixture
) -> None:
    # One bad entry (Converse may draw device id 0) must not hide the owner's other devices.
    etree = twomemo.etree if backend == "twomemo" else oldmemo.etree
    element = fresh(_device_list(backend))
    first = next(iter(element))
    if value is None:
        del first.attrib["id"]
    else:
        first.set("id", value)
    with caplog.at_level("INFO", logger=etree.__name__):
        assert list(etree.parse_device_list(element)) == [6]
    (record,) = caplog.records
    assert "device list" in record.getMessage() and "left out" in record.getMessage()
