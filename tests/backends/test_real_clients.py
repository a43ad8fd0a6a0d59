"""The real-clients corpus: what deployed OMEMO implementations publish and send, parsed by our stack.

Two sources, one directory per implementation:

- ``../shared/vectors/real-clients/`` (read from there, like the upstream migration vectors): captures
  of clients that cannot run here, today Converse.js 14 in a browser (pre key and signed pre key ids
  from 0, an SCE envelope without ``<time>`` and ``<to>``). Under CI its absence is a failure.
- ``tests/vectors/real-clients/``: artifacts we produced ourselves with implementations installable
  here (omemo-dr with python-nbxmpp, Gajim's stack; Debian's libomemo-c, Dino's library), each with an
  ``artifacts.json`` of what the files must contain and a README of how they were made.

Every XML file holds at least one element we know (a bundle, a device list, an ``<encrypted>``, an SCE
envelope), and each of them must be usable:

- a bundle parses, a session built from it (signature verified) yields a key exchange that survives
  our serialisation and parsing, naming the bundle's signed pre key and one of its pre keys;
- a device list parses;
- a message parses, and every key in it parses as the key exchange or ratchet message it claims to be;
- an SCE envelope parses and passes the affix checks.

Where ``artifacts.json`` states ids, the parsed values must equal them.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

import oldmemo
import oldmemo.etree
import twomemo
import twomemo.etree
from interop.refenv import on_ci
from omemo.message import Message
from omemo.sce import parse_envelope
from omemo_engine import xml_legacy, xml_omemo2
from omemo_engine.profile import LEGACY, OMEMO2

from .conftest import FakeSessionManager, make_device

SHARED = Path(os.environ.get("OMEMO_STACK_SHARED", Path(__file__).resolve().parents[3] / "shared"))
SHARED_CORPUS = SHARED / "vectors" / "real-clients"
OWN_CORPUS = Path(__file__).resolve().parents[1] / "vectors" / "real-clients"
NS2, NSL = twomemo.twomemo.NAMESPACE, oldmemo.oldmemo.NAMESPACE
SCE = "urn:xmpp:sce:1"
#: A device id for bundles whose own id the corpus does not state (it is not in the bundle itself).
SOME_DEVICE_ID = 4242


def _corpus_files() -> List[Path]:
    files: List[Path] = []
    for root in (SHARED_CORPUS, OWN_CORPUS):
        if root.is_dir():
            files += sorted(p for p in root.glob("*/*.xml"))
    return files


FILES = _corpus_files()


def test_both_corpora_are_there() -> None:
    implementations = {path.parent.name for path in FILES}
    assert {"omemo-dr-1.2.0", "libomemo-c-0.5.0"} <= implementations
    if not SHARED_CORPUS.is_dir():
        message = f"the shared real-clients corpus is missing: {SHARED_CORPUS}"
        if on_ci():
            pytest.fail(message)
        pytest.skip(message)
    assert "converse-14" in implementations


def _expected(path: Path) -> Dict[str, Any]:
    manifest = path.parent / "artifacts.json"
    if not manifest.exists():
        return {}
    artifacts: Dict[str, Dict[str, Any]] = json.loads(manifest.read_text())["artifacts"]
    return artifacts.get(path.name, {})


async def _check_bundle(element: ET.Element, namespace: str, expected: Dict[str, Any]) -> None:
    etree: Any = twomemo.etree if namespace == NS2 else oldmemo.etree
    cls: Any = twomemo.Twomemo if namespace == NS2 else oldmemo.Oldmemo
    device_id = expected.get("device_id", SOME_DEVICE_ID)
    bundle = etree.parse_bundle(element, "them@example.org", device_id)
    if "signed_pre_key_id" in expected:
        assert bundle.signed_pre_key_id == expected["signed_pre_key_id"]
        assert sorted(bundle.pre_keys) == sorted(expected["pre_key_ids"])
    assert bundle.pre_keys, "a bundle without pre keys"

    # A session built from it: the signature verifies, and the key exchange survives the wire.
    us = await make_device(cls, "us@example.org", 77, pre_keys=1)
    content, key_material = await us.backend.encrypt_plaintext(b"hello")
    session, encrypted = await us.backend.build_session_active(
        "them@example.org", device_id, bundle, key_material
    )
    message = Message(
        namespace, "us@example.org", 77, content, frozenset({(encrypted, session.key_exchange)})
    )
    wire = ET.fromstring(ET.tostring(etree.serialize_message(message)))
    if namespace == NS2:
        parsed = etree.parse_message(wire, "us@example.org")
    else:
        manager = FakeSessionManager({"us@example.org": {77: await us.identity_key()}})
        parsed = await etree.parse_message(wire, "us@example.org", "them@example.org", manager)
    ((_, kex),) = parsed.keys
    assert kex is not None and kex.builds_same_session(session.key_exchange)
    sent = session.key_exchange
    assert sent.signed_pre_key_id == bundle.signed_pre_key_id
    assert sent.pre_key_id in bundle.pre_keys


def _check_device_list(element: ET.Element, namespace: str, expected: Dict[str, Any]) -> None:
    etree: Any = twomemo.etree if namespace == NS2 else oldmemo.etree
    devices = etree.parse_device_list(element)
    assert devices
    if "device_ids" in expected:
        assert sorted(devices) == sorted(expected["device_ids"])


def _check_message(element: ET.Element, namespace: str, expected: Dict[str, Any]) -> None:
    codec: Any = xml_omemo2 if namespace == NS2 else xml_legacy
    profile = OMEMO2 if namespace == NS2 else LEGACY
    message = codec.parse_message(element)
    if "sender_device_id" in expected:
        assert message.sender_device_id == expected["sender_device_id"]
        assert sorted({key.device_id for key in message.keys}) == sorted(expected["recipient_device_ids"])
        assert (message.payload is not None) == expected["has_payload"]
    described = {info["rid"]: info for info in expected.get("keys", [])}
    assert message.keys
    for key in message.keys:
        info: Optional[Dict[str, Any]] = described.get(key.device_id)
        if key.kex:
            fields, inner = profile.wire.parse_key_exchange(key.data)
            profile.wire.open(inner)
            if info is not None:
                assert info["prekey"] is True
                assert (fields.pre_key_id, fields.signed_pre_key_id) == (
                    info["pre_key_id"],
                    info["signed_pre_key_id"],
                )
        else:
            opened = profile.wire.open(key.data)
            if info is not None:
                assert info["prekey"] is False
                assert (opened.header.n, opened.header.pn) == (
                    info.get("n", info.get("counter")),
                    info.get("pn", info.get("previous_counter")),
                )


def _check_envelope(element: ET.Element, expected: Dict[str, Any]) -> None:
    envelope = parse_envelope(ET.tostring(element), expected_from=None, expected_to=None)
    assert envelope.content


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.name}" for p in FILES])
async def test_every_artifact_is_usable(path: Path) -> None:
    expected = _expected(path)
    root = ET.fromstring(path.read_bytes())
    checked = 0
    for element in root.iter():
        tag = element.tag
        if tag in (f"{{{NS2}}}bundle", f"{{{NSL}}}bundle"):
            await _check_bundle(element, tag[1 : tag.index("}")], expected)
        elif tag in (f"{{{NS2}}}devices", f"{{{NSL}}}list"):
            _check_device_list(element, tag[1 : tag.index("}")], expected)
        elif tag in (f"{{{NS2}}}encrypted", f"{{{NSL}}}encrypted"):
            _check_message(element, tag[1 : tag.index("}")], expected)
        elif tag == f"{{{SCE}}}envelope":
            _check_envelope(element, expected)
        else:
            continue
        checked += 1
    assert checked, f"{path.name} holds no OMEMO element"


def test_converse_numbers_its_keys_from_zero() -> None:
    # The point of the Converse captures: ids 0 in both namespaces (the bundles above are usable).
    if not SHARED_CORPUS.is_dir():
        pytest.skip("the shared corpus is missing (test_both_corpora_are_there fails under CI)")
    converse = SHARED_CORPUS / "converse-14"
    legacy = xml_legacy.parse_bundle(ET.fromstring((converse / "bundle-legacy.xml").read_bytes()))
    omemo2 = xml_omemo2.parse_bundle(ET.fromstring((converse / "bundle-omemo2.xml").read_bytes()))
    for bundle in (legacy, omemo2):
        assert bundle.signed_pre_key_id == 0
        assert min(pk.pre_key_id for pk in bundle.pre_keys) == 0
    # Its legacy key exchange (to a device of the reference stack, which numbers from 1) parses.
    root = ET.fromstring((converse / "message-legacy-keyexchange.xml").read_bytes())
    encrypted = root.find(f"{{{NSL}}}encrypted")
    assert encrypted is not None
    (key,) = xml_legacy.parse_message(encrypted).keys
    assert key.kex
    fields, inner = LEGACY.wire.parse_key_exchange(key.data)
    assert (fields.pre_key_id, fields.signed_pre_key_id) == (98, 1)
    assert LEGACY.wire.open(inner).header.n == 0
