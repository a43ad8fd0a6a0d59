"""Structure-aware fuzzing of everything the network hands the stack, through the public API.

Inputs are fresh, valid artifacts of both namespaces, made by real session managers on an in-memory
XMPP that carries bundles as XML: device lists, bundles, key exchanges, normal messages, replies and
empty messages. Each is serialised to XML, mutated (XML structure, attributes, base64 texts, the bytes
under them, the keys inside protobuf fields, replays, documents of the other namespace), parsed by the
backends' ``etree`` modules and fed to ``SessionManager.decrypt`` / ``encrypt`` / ``update_device_list``.

The oracle: an input must end in one of

- a *defined error*: an :class:`omemo.types.OMEMOException` or :class:`omemo_engine.errors.EngineError`;
- *accepted with its original meaning*: the same plaintext from the same sender; a bundle with the same
  identity key, signed pre key and signature, whose session the owner can use;

or, for data without integrity protection (device lists, a bundle's unsigned fields), accepted with
another meaning. Anything else is a failure:

- ``undefined exception``: any other exception escaped;
- ``hang``: the input took more than :data:`HANG_SECONDS` of CPU time;
- ``altered meaning``: a message decrypted to something else, or a bundle whose signed part changed was
  used to build a session;
- ``damage``: after a rejected input, the genuine input no longer works;
- ``unusable``: an accepted bundle gave a session its owner cannot decrypt, or an accepted key exchange
  left a session that does not decrypt the sender's next genuine message.

:func:`run` drives a deterministic number of inputs from a seed and returns a :class:`Report`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import json
import random
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import oldmemo
import oldmemo.etree
import twomemo
import twomemo.etree
from omemo.message import Message
from omemo.storages import MemoryStorage
from omemo.testing import InMemoryXMPP
from omemo.trust import BTBVTrust
from omemo.types import OMEMOException
from omemo_engine.errors import EngineError

__all__ = ["KINDS", "Failure", "Report", "apply_edit", "dump", "mutate", "random_edit", "replay", "run"]

NS2, NSL = twomemo.twomemo.NAMESPACE, oldmemo.oldmemo.NAMESPACE
NAMESPACES = (NS2, NSL)
ETREE: Dict[str, Any] = {NS2: twomemo.etree, NSL: oldmemo.etree}
OTHER = {NS2: NSL, NSL: NS2}
DEFINED = (OMEMOException, EngineError)
HANG_SECONDS = 2.0
ALICE, BOB = "alice@fuzz.example", "bob@fuzz.example"

#: Input kinds and their weights in a run.
KINDS: Dict[str, int] = {
    "devicelist": 3,
    "bundle-parse": 3,
    "bundle": 1,
    "kex": 1,
    "empty": 1,
    "normal": 4,
    "reply": 2,
}

_HOSTILE_VALUES = [
    "",
    " ",
    "0",
    "1",
    "-1",
    "007",
    " 5 ",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "99999999999999999999",
    "true",
    "false",
    "True",
    "yes",
    "1e3",
    "0x10",
    "\u0663",
    "a@b",
    "x" * 300,
]


@dataclass
class Failure:
    """One input the oracle refused."""

    kind: str
    namespace: str
    category: str
    detail: str
    #: The mutated document (XML text) and the edits applied (replayable, see :func:`apply_edit`).
    document: str
    edits: List[Dict[str, Any]]


@dataclass
class Report:
    """Counts per outcome, and the failures."""

    inputs: int = 0
    outcomes: Dict[str, int] = field(default_factory=dict)
    failures: List[Failure] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


@dataclass
class _Input:
    """One input being made: its kind, namespace, random source, and the edits (preset to replay)."""

    kind: str
    namespace: str
    rng: random.Random
    preset: Optional[List[Dict[str, Any]]] = None
    edits: List[Dict[str, Any]] = field(default_factory=list)
    document: str = ""

    def mutate(self, element: ET.Element) -> None:
        self.edits = mutate(element, self.rng, self.rng.choice((1, 1, 1, 2, 3)), self.preset)
        self.document = ET.tostring(element, encoding="unicode")


class _Refused(Exception):
    """Raised inside a check to record a failure."""

    def __init__(self, category: str, detail: str) -> None:
        super().__init__(detail)
        self.category = category
        self.detail = detail


# -- mutations ----------------------------------------------------------------------------------------


def _b64_nodes(root: ET.Element) -> List[int]:
    """Indexes (in ``root.iter()`` order) of the elements whose text is base64."""
    found = []
    for index, node in enumerate(root.iter()):
        text = (node.text or "").strip()
        if len(text) >= 4 and len(text) % 4 == 0:
            try:
                base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                continue
            found.append(index)
    return found


def _varint(data: bytes, pos: int, end: int) -> Optional[Tuple[int, int]]:
    value = shift = 0
    while pos < end and shift < 64:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    return None


def _protobuf_keys(data: bytes, pos: int, end: int, depth: int) -> Optional[List[int]]:
    """Offsets of the 32-byte keys in the protobuf message ``data[pos:end]`` (fields of 32 bytes, or of
    33 starting with 0x05), nested messages included; None if it is not protobuf."""
    spots: List[int] = []
    while pos < end:
        tag = _varint(data, pos, end)
        if tag is None or tag[0] >> 3 == 0:
            return None
        pos = tag[1]
        if tag[0] & 7 == 0:
            skipped = _varint(data, pos, end)
            if skipped is None:
                return None
            pos = skipped[1]
        elif tag[0] & 7 == 2:
            length = _varint(data, pos, end)
            if length is None or length[1] + length[0] > end:
                return None
            pos, size = length[1], length[0]
            if size == 32:
                spots.append(pos)
            elif size == 33 and data[pos] == 0x05:
                spots.append(pos + 1)
            elif depth < 3:
                inner = _protobuf_keys(data, pos, pos + size, depth + 1)
                if inner is None and data[pos : pos + 1] == b"\x33":  # a legacy SignalMessage: version, MAC
                    inner = _protobuf_keys(data, pos + 1, pos + size - 8, depth + 1)
                spots += inner or []
            pos += size
        else:
            return None
    return spots


def _key_spots(data: bytes) -> List[int]:
    """Offsets of the 32-byte keys inside ``data``, in order: the whole text when it is a key (bundles),
    else the key fields of the protobuf message (legacy: after the version byte, before the MAC)."""
    if len(data) == 32:
        return [0]
    if len(data) == 33 and data[0] == 0x05:
        return [1]
    for start, end in ((0, len(data)), (1, len(data)), (1, len(data) - 8)):
        if start < end:
            spots = _protobuf_keys(data, start, end, 0)
            if spots:
                return spots
    return []


def _random_bytes_edit(data: bytes, rng: random.Random) -> Dict[str, Any]:
    choice = rng.randrange(7)
    if choice == 0 and data:
        return {"how": "flip", "pos": rng.randrange(len(data)), "bit": 1 << rng.randrange(8)}
    if choice == 1 and data:
        return {"how": "truncate", "pos": rng.randrange(len(data))}
    if choice == 2:
        return {"how": "append", "hex": rng.randbytes(rng.choice((1, 8, 16, 33))).hex()}
    if choice == 3 and data:
        return {"how": "set", "pos": rng.randrange(len(data)), "value": rng.randrange(256)}
    if choice == 4 and len(data) > 2:
        start, end = sorted(rng.sample(range(len(data)), 2))
        return {"how": "duplicate", "start": start, "end": end}
    if choice == 5 and _key_spots(data):
        return {"how": "bit 255", "key": rng.randrange(len(_key_spots(data)))}
    return {"how": "empty"}


def _apply_bytes_edit(data: bytes, edit: Dict[str, Any]) -> bytes:
    how = edit["how"]
    if how == "flip":
        pos = edit["pos"] % max(len(data), 1)
        return data[:pos] + bytes((data[pos] ^ edit["bit"],)) + data[pos + 1 :] if data else data
    if how == "truncate":
        return data[: edit["pos"]]
    if how == "append":
        return data + bytes.fromhex(edit["hex"])
    if how == "set":
        pos = edit["pos"] % max(len(data), 1)
        return data[:pos] + bytes((edit["value"],)) + data[pos + 1 :] if data else data
    if how == "duplicate":
        return data[: edit["end"]] + data[edit["start"] : edit["end"]] + data[edit["end"] :]
    if how == "bit 255":  # of the n-th key inside the data
        spots = _key_spots(data)
        if not spots:
            return data
        end = spots[edit["key"] % len(spots)] + 31
        return data[:end] + bytes((data[end] ^ 0x80,)) + data[end + 1 :]
    return b""


def random_edit(root: ET.Element, rng: random.Random) -> Optional[Dict[str, Any]]:
    """One random edit of ``root``, as a replayable dict (see :func:`apply_edit`), or None."""
    nodes = list(root.iter())
    index = rng.randrange(len(nodes))
    node = nodes[index]
    operation = rng.randrange(12)
    if operation == 0 and node.attrib:
        return {"op": "delete attribute", "node": index, "attr": rng.choice(sorted(node.attrib))}
    if operation == 1:
        names = sorted(node.attrib) or ["id", "sid", "rid", "jid", "kex", "prekey", "label"]
        return {
            "op": "set attribute",
            "node": index,
            "attr": rng.choice(names),
            "value": rng.choice(_HOSTILE_VALUES),
        }
    if operation == 2 and len(node):
        return {"op": "duplicate child", "node": index, "child": rng.randrange(len(node))}
    if operation == 3 and len(node):
        return {"op": "delete child", "node": index, "child": rng.randrange(len(node))}
    if operation == 4 and len(node) > 1:
        return {"op": "reverse children", "node": index}
    if operation == 5:
        namespace = node.tag[1 : node.tag.index("}")] if node.tag.startswith("{") else ""
        return {"op": "namespace", "node": index, "ns": rng.choice([OTHER.get(namespace, NS2), "urn:x", ""])}
    if operation == 6:
        return {"op": "append text", "node": index, "text": rng.choice([" ", "\n", "\t", "\u00a0", "=", "A"])}
    if operation == 7:
        return {"op": "add child", "node": index, "tag": rng.choice(["same", "unknown", "{urn:x}x"])}
    candidates = _b64_nodes(root)
    if not candidates:
        return None
    target = rng.choice(candidates)
    text = (nodes[target].text or "").strip()
    if operation in (8, 9, 10):
        edit = _random_bytes_edit(base64.b64decode(text), rng)
        return {"op": "bytes", "node": target, **edit}
    return {
        "op": "base64 text",
        "node": target,
        "how": rng.choice(["char", "strip padding", "inner space", "drop"]),
        "pos": rng.randrange(len(text)),
        "char": rng.choice("A/+=!é "),
    }


def apply_edit(root: ET.Element, edit: Dict[str, Any]) -> None:
    """Apply one edit made by :func:`random_edit` (or read from the corpus) to ``root``, in place."""
    nodes = list(root.iter())
    node = nodes[edit["node"] % len(nodes)]
    name = node.tag.split("}")[-1]
    op = edit["op"]
    if op == "delete attribute":
        node.attrib.pop(edit["attr"], None)
    elif op == "set attribute":
        node.set(edit["attr"], edit["value"])
    elif op == "duplicate child" and len(node):
        node.append(copy.deepcopy(node[edit["child"] % len(node)]))
    elif op == "delete child" and len(node):
        del node[edit["child"] % len(node)]
    elif op == "reverse children":
        node[:] = list(reversed(node))
    elif op == "namespace":
        node.tag = f"{{{edit['ns']}}}{name}" if edit["ns"] else name
    elif op == "append text":
        node.text = (node.text or "") + edit["text"]
    elif op == "add child":
        tag = node.tag if edit["tag"] == "same" else edit["tag"]
        ET.SubElement(node, tag).text = "AAAA"
    elif op == "bytes":
        data = _apply_bytes_edit(base64.b64decode((node.text or "").strip()), edit)
        node.text = base64.b64encode(data).decode()
    elif op == "base64 text":
        text = (node.text or "").strip()
        pos = edit["pos"] % max(len(text), 1)
        how = edit["how"]
        if how == "char":
            text = text[:pos] + edit["char"] + text[pos + 1 :]
        elif how == "strip padding":
            text = text.rstrip("=")
        elif how == "inner space":
            text = text[:pos] + "\n " + text[pos:]
        else:
            text = text[:pos] + text[pos + 1 :]
        node.text = text


def mutate(
    root: ET.Element, rng: random.Random, count: int, preset: Optional[List[Dict[str, Any]]] = None
) -> List[Dict[str, Any]]:
    """Apply ``preset`` edits, or ``count`` random ones, to ``root`` in place; returns them."""
    if preset is not None:
        for given in preset:
            apply_edit(root, given)
        return list(preset)
    done: List[Dict[str, Any]] = []
    for _ in range(count):
        edit = random_edit(root, rng)
        if edit is not None:
            apply_edit(root, edit)
            done.append(edit)
    return done


# -- the world ------------------------------------------------------------------------------------------


class World:
    """Alice and Bob (both namespaces) with confirmed sessions, plus fresh senders on demand."""

    def __init__(self) -> None:
        self.net = InMemoryXMPP(bundle_codecs={NS2: twomemo.etree, NSL: oldmemo.etree})
        self.managers: Dict[str, Any] = {}
        self.device_ids: Dict[str, int] = {}
        self._fresh = 0
        self._transient: List[str] = []

    async def create(self, jid: str) -> Any:
        storage = MemoryStorage()
        cls = self.net.session_manager_class(jid, BTBVTrust)
        manager = await cls.create(
            [twomemo.Twomemo(storage), oldmemo.Oldmemo(storage)], storage, jid, None, BTBVTrust.UNDECIDED
        )
        await manager.after_history_sync()
        own, _ = await manager.get_own_device_information()
        self.managers[jid] = manager
        self.device_ids[jid] = own.device_id
        return manager

    async def setup(self) -> None:
        await self.create(ALICE)
        await self.create(BOB)
        for namespace in NAMESPACES:  # one confirmed session per namespace, both ways
            await self.exchange(ALICE, BOB, namespace, b"hello")
            await self.exchange(BOB, ALICE, namespace, b"hello")

    async def fresh_sender(self) -> str:
        self._fresh += 1
        jid = f"sender{self._fresh}@fuzz.example"
        await self.create(jid)
        self._transient.append(jid)
        return jid

    async def retire(self) -> None:
        """Shut the fresh senders of the last input down and forget them (their rotation tasks and
        state would otherwise pile up over a long run)."""
        for jid in self._transient:
            await self.managers.pop(jid).shutdown()
            self.device_ids.pop(jid, None)
        self._transient.clear()

    async def close(self) -> None:
        """Shut every session manager down."""
        await self.retire()
        for manager in self.managers.values():
            await manager.shutdown()
        self.managers.clear()

    async def encrypt(self, sender: str, recipient: str, namespace: str, plaintext: bytes) -> Message:
        messages, _ = await self.managers[sender].encrypt(
            frozenset({recipient}), {namespace: plaintext}, backend_priority_order=[namespace]
        )
        (message,) = [m for m in messages if m.namespace == namespace]
        self.net.take(sender, self.device_ids[sender])  # own-device copies: none, one device each
        found: Message = message
        return found

    async def deliver_pending(self, jid: str) -> None:
        """Decrypt whatever waits for ``jid`` (automatic empty messages)."""
        for message in self.net.take(jid, self.device_ids[jid]):
            await self.managers[jid].decrypt(message)

    async def exchange(self, sender: str, recipient: str, namespace: str, plaintext: bytes) -> None:
        message = await self.encrypt(sender, recipient, namespace, plaintext)
        result = await self.managers[recipient].decrypt(
            await self.parse(self.xml(message), namespace, recipient)
        )
        assert result[0] == plaintext
        await self.deliver_pending(sender)
        await self.deliver_pending(recipient)

    def xml(self, message: Message) -> ET.Element:
        return ET.fromstring(ET.tostring(ETREE[message.namespace].serialize_message(message)))

    async def parse(self, element: ET.Element, namespace: str, recipient: str, sender: str = "") -> Message:
        sender = sender or (ALICE if recipient == BOB else BOB)
        if namespace == NS2:
            message: Message = twomemo.etree.parse_message(element, sender)
            return message
        parsed: Message = await oldmemo.etree.parse_message(
            element, sender, recipient, self.managers[recipient]
        )
        return parsed


# -- one input --------------------------------------------------------------------------------------


async def _decrypt(world: World, element: ET.Element, namespace: str, recipient: str, sender: str) -> Any:
    message = await world.parse(element, namespace, recipient, sender)
    return await world.managers[recipient].decrypt(message)


async def _genuine_message(
    world: World, kind: str, namespace: str, rng: random.Random
) -> Tuple[str, str, Optional[bytes], Message]:
    """(sender, recipient, plaintext or None for an empty message, the message) of a fresh input."""
    if kind == "empty":
        # The automatic empty message a recipient sends after a key exchange, fuzzed at its sender.
        first = await world.fresh_sender()
        kex = await world.encrypt(first, BOB, namespace, b"start")
        await world.managers[BOB].decrypt(await world.parse(world.xml(kex), namespace, BOB, first))
        (empty,) = [m for m in world.net.take(first, world.device_ids[first]) if m.namespace == namespace]
        return BOB, first, None, empty
    if kind == "kex":
        sender, recipient = await world.fresh_sender(), BOB
    elif kind == "reply":
        sender, recipient = BOB, ALICE
    else:
        sender, recipient = ALICE, BOB
    plaintext = rng.randbytes(rng.randrange(1, 64))
    return sender, recipient, plaintext, await world.encrypt(sender, recipient, namespace, plaintext)


async def _message_case(world: World, case: _Input) -> str:
    kind, namespace = case.kind, case.namespace
    sender, recipient, expected, genuine = await _genuine_message(world, kind, namespace, case.rng)
    original = world.xml(genuine)

    async def deliver(element: ET.Element) -> Any:
        return await _decrypt(world, copy.deepcopy(element), namespace, recipient, sender)

    if case.preset is None and case.rng.randrange(10) == 0:
        case.edits = [{"op": "the genuine message twice"}]
        case.document = ET.tostring(original, encoding="unicode")
        if (await deliver(original))[0] != expected:
            raise _Refused("altered meaning", "the genuine message decrypted to something else")
        try:
            await deliver(original)
        except DEFINED:
            await _after(world, kind, namespace, sender, recipient)
            return "rejected (replay)"
        raise _Refused("altered meaning", "a replayed message was accepted")

    element = copy.deepcopy(original)
    case.mutate(element)
    try:
        result = await deliver(element)
    except DEFINED:
        # The state must be unchanged: the genuine message still decrypts.
        try:
            result = await deliver(original)
        except Exception as exc:
            raise _Refused("damage", f"the genuine message fails after a rejected one: {exc!r}") from exc
        if result[0] != expected:
            raise _Refused(
                "damage", "the genuine message decrypts to something else after a rejected one"
            ) from None
        await _after(world, kind, namespace, sender, recipient)
        return "rejected"
    if result[0] != expected or result[1].bare_jid != sender:
        raise _Refused("altered meaning", f"decrypted to {result[0]!r} from {result[1].bare_jid}")
    await _after(world, kind, namespace, sender, recipient)
    return "accepted, same meaning"


async def _after(world: World, kind: str, namespace: str, sender: str, recipient: str) -> None:
    """After a message was taken: an accepted key exchange must leave a usable session.

    For a key exchange, the sender's next message (sent before any answer arrived, so it repeats the
    key exchange) must be taken as a repeat of the same session and decrypt; for an empty message
    (which confirms its recipient's session), the recipient's next message must decrypt.
    """
    if kind in ("kex", "empty"):
        source, target = (sender, recipient) if kind == "kex" else (recipient, sender)
        follow = await world.encrypt(source, target, namespace, b"next")
        try:
            result = await _decrypt(world, world.xml(follow), namespace, target, source)
        except Exception as exc:
            raise _Refused(
                "unusable", f"the session does not decrypt the next genuine message: {exc!r}"
            ) from exc
        if result[0] != b"next":
            raise _Refused("unusable", "the next genuine message decrypts to something else")
    await world.deliver_pending(sender)
    await world.deliver_pending(recipient)


async def _devicelist_case(world: World, case: _Input) -> str:
    namespace = case.namespace
    etree = ETREE[namespace]
    genuine = world.net.device_lists[(namespace, ALICE)]
    element = ET.fromstring(ET.tostring(etree.serialize_device_list(genuine)))
    case.mutate(element)
    bob = world.managers[BOB]
    try:
        parsed = etree.parse_device_list(element)
    except DEFINED:
        return "rejected"
    # Device lists carry no signature: any meaning may be accepted. It must not break anything.
    with contextlib.suppress(*DEFINED):
        await bob.update_device_list(namespace, ALICE, parsed)
    await bob.update_device_list(namespace, ALICE, genuine)
    await world.exchange(ALICE, BOB, namespace, b"after a device list")
    return "accepted" if parsed == genuine else "accepted, other meaning (unsigned)"


async def _bundle_case(world: World, case: _Input) -> str:
    namespace, use = case.namespace, case.kind == "bundle"
    etree = ETREE[namespace]
    bob_id = world.device_ids[BOB]
    key = (namespace, BOB, bob_id)
    genuine_xml = world.net.bundle_xml[key]
    element = ET.fromstring(genuine_xml)
    case.mutate(element)
    genuine = etree.parse_bundle(ET.fromstring(genuine_xml), BOB, bob_id)
    try:
        parsed = etree.parse_bundle(element, BOB, bob_id)
    except DEFINED:
        return "rejected"
    signed_same = (parsed.identity_key, parsed.signed_pre_key, parsed.signed_pre_key_signature) == (
        genuine.identity_key,
        genuine.signed_pre_key,
        genuine.signed_pre_key_signature,
    )
    pre_keys_genuine = all(genuine.pre_keys.get(i) == pub for i, pub in parsed.pre_keys.items())
    if not use:
        return "accepted" if signed_same else "accepted, other meaning"
    # Use it: a fresh sender builds a session from it; Bob must decrypt what it sends.
    sender = await world.fresh_sender()
    world.net.bundle_xml[key] = ET.tostring(element)
    try:
        messages, _errors = await world.managers[sender].encrypt(
            frozenset({BOB}), {namespace: b"from a fuzzed bundle"}, backend_priority_order=[namespace]
        )
    except DEFINED:
        messages, _errors = {}, frozenset()
    finally:
        world.net.bundle_xml[key] = genuine_xml
    built = any(m.namespace == namespace for m in messages)
    if not built:
        return "accepted, then refused when used"
    if not signed_same:
        raise _Refused("altered meaning", "a session was built from a bundle whose signed part changed")
    (message,) = [m for m in messages if m.namespace == namespace]
    try:
        result = await _decrypt(world, world.xml(message), namespace, BOB, sender)
    except Exception as exc:
        if pre_keys_genuine and parsed.signed_pre_key_id == genuine.signed_pre_key_id:
            raise _Refused(
                "unusable", f"Bob cannot decrypt from a session on his accepted bundle: {exc!r}"
            ) from exc
        return "accepted, unsigned part changed: unusable by the protocol"
    if result[0] != b"from a fuzzed bundle":
        raise _Refused("altered meaning", "decrypted to something else")
    await world.deliver_pending(sender)
    await world.deliver_pending(BOB)
    return "accepted, same meaning, usable"


async def _one(world: World, case: _Input, report: Report) -> None:
    # CPU time of this process: a hang is work that does not end, not a wait for a busy machine.
    start = time.process_time()
    try:
        if case.kind == "devicelist":
            outcome = await _devicelist_case(world, case)
        elif case.kind in ("bundle", "bundle-parse"):
            outcome = await _bundle_case(world, case)
        else:
            outcome = await _message_case(world, case)
    except _Refused as refused:
        report.failures.append(
            Failure(case.kind, case.namespace, refused.category, refused.detail, case.document, case.edits)
        )
        outcome = "FAILED: " + refused.category
    except Exception as exc:  # the oracle's own category: anything undefined that escaped
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        report.failures.append(
            Failure(case.kind, case.namespace, "undefined exception", detail, case.document, case.edits)
        )
        outcome = "FAILED: undefined exception"
    elapsed = time.process_time() - start
    await world.retire()
    if elapsed > HANG_SECONDS:
        report.failures.append(
            Failure(case.kind, case.namespace, "hang", f"{elapsed:.1f} s", case.document, case.edits)
        )
    report.inputs += 1
    report.count(f"{case.kind} {outcome}")


async def run_async(seed: int, inputs: int, kinds: Optional[Dict[str, int]] = None) -> Report:
    """Fuzz ``inputs`` inputs from ``seed`` (deterministic for a seed, apart from key material)."""
    rng = random.Random(seed)
    weights = kinds or KINDS
    names = list(weights)
    report = Report()
    start = time.perf_counter()
    world = World()
    await world.setup()
    for index in range(inputs):
        if index and index % 500 == 0:  # keep the world small: sessions and skipped keys pile up
            await world.close()
            world = World()
            await world.setup()
        kind = rng.choices(names, [weights[n] for n in names])[0]
        await _one(world, _Input(kind, rng.choice(NAMESPACES), rng), report)
    await world.close()
    report.seconds = time.perf_counter() - start
    return report


def run(seed: int, inputs: int, kinds: Optional[Dict[str, int]] = None) -> Report:
    return asyncio.run(run_async(seed, inputs, kinds))


async def replay_async(entries: List[Dict[str, Any]]) -> Report:
    """Replay corpus entries (``kind``, ``namespace``, ``edits``) on fresh genuine inputs of a fresh
    world, under the same oracle."""
    report = Report()
    world = World()
    await world.setup()
    for entry in entries:
        case = _Input(entry["kind"], entry["namespace"], random.Random(0), preset=entry["edits"])
        await _one(world, case, report)
    await world.close()
    return report


def replay(entries: List[Dict[str, Any]]) -> Report:
    return asyncio.run(replay_async(entries))


def dump(failures: List[Failure]) -> str:
    return json.dumps([f.__dict__ for f in failures], indent=1)
