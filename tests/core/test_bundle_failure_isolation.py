"""One unusable bundle must not hide a device, and a rejected bundle is reported as such.

Through the public API, with the real backends, on an in-memory XMPP that carries bundles as XML and
parses them on download (as a real server and XMPP layer would). Bob's bundle in one namespace is made
unusable in one of two ways: it does not parse (a signed pre key id out of range), or it parses but its
signature does not verify. The other namespace's bundle stays good, and the reverse.
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from omemo.session_manager import BundleRejected, NoEligibleDevices, SenderNotFound
from omemo.testing import InMemoryXMPP
from omemo_engine.errors import MalformedXML

from .xml_network import NS2, NSL, create, device_id, network

ALICE, BOB = "alice@example.org", "bob@example.org"
OTHER = {NS2: NSL, NSL: NS2}
PLAINTEXT = {NS2: b"<envelope/>", NSL: b"body"}
#: The element and attribute of the signed pre key, and the element of its signature, per namespace.
SPK = {NS2: ("spk", "id", "spks"), NSL: ("signedPreKeyPublic", "signedPreKeyId", "signedPreKeySignature")}


def _child(root: ET.Element, namespace: str, name: str) -> ET.Element:
    found = root.find(f"{{{namespace}}}{name}")
    assert found is not None
    return found


def _bad_id(root: ET.Element, namespace: str) -> None:
    element, attribute, _ = SPK[namespace]
    _child(root, namespace, element).set(attribute, "-1")


def _bad_signature(root: ET.Element, namespace: str) -> None:
    _, _, signature = SPK[namespace]
    child = _child(root, namespace, signature)
    data = bytearray(base64.b64decode(child.text or ""))
    data[10] ^= 0x01
    child.text = base64.b64encode(bytes(data)).decode()


CORRUPTIONS: Dict[str, Callable[[ET.Element, str], None]] = {
    "unparsable": _bad_id,
    "bad signature": _bad_signature,
}


def _corrupt(net: InMemoryXMPP, namespace: str, jid: str, device_id: int, how: str) -> bytes:
    """Corrupt a published bundle; returns the good XML."""
    key = (namespace, jid, device_id)
    good = net.bundle_xml[key]
    root = ET.fromstring(good)
    CORRUPTIONS[how](root, namespace)
    net.bundle_xml[key] = ET.tostring(root)
    return good


async def _deliver(net: InMemoryXMPP, manager: Any, jid: str) -> List[Tuple[Optional[bytes], Any, Any]]:
    return [await manager.decrypt(message) for message in net.take(jid, await device_id(manager))]


@pytest.mark.parametrize("how", list(CORRUPTIONS))
@pytest.mark.parametrize("bad", [NSL, NS2], ids=["legacy bad", "omemo2 bad"])
async def test_encryption_falls_back_to_the_namespace_whose_bundle_works(bad: str, how: str) -> None:
    net = network()
    alice, bob = await create(net, ALICE), await create(net, BOB)
    bob_id = await device_id(bob)
    _corrupt(net, bad, BOB, bob_id, how)
    good = OTHER[bad]

    # Bob's device is listed, whichever bundle Alice's stack tries first.
    for namespace in (NS2, NSL):
        await alice.refresh_device_list(namespace, BOB)
    (info,) = await alice.get_device_information(BOB)
    assert info.device_id == bob_id
    assert {(bad, True), (good, True)} <= set(info.active)

    messages, errors = await alice.encrypt(frozenset({BOB}), PLAINTEXT, backend_priority_order=[bad, good])
    assert [m.namespace for m in messages] == [good]
    ((message, _),) = messages.items()
    assert {(key.bare_jid, key.device_id) for key, _ in message.keys} == {(BOB, bob_id)}
    (error,) = errors
    assert (error.namespace, error.bare_jid, error.device_id) == (bad, BOB, bob_id)
    if how == "unparsable":
        assert isinstance(error.exception, BundleRejected)
        text = str(error.exception)
        assert bad in text and BOB in text and str(bob_id) in text
        assert SPK[bad][1] in text and "out of range" in text
        assert isinstance(error.exception.__cause__, MalformedXML)
    else:
        assert "signature" in str(error.exception)

    net.send(message)
    [(plaintext, sender, _)] = await _deliver(net, bob, BOB)
    assert plaintext == PLAINTEXT[good] and sender.bare_jid == ALICE
    await alice.shutdown()
    await bob.shutdown()


@pytest.mark.parametrize("bad", [NSL, NS2], ids=["legacy bad", "omemo2 bad"])
async def test_without_a_fallback_the_rejection_is_explained(bad: str) -> None:
    net = network()
    alice, bob = await create(net, ALICE), await create(net, BOB)
    bob_id = await device_id(bob)
    _corrupt(net, bad, BOB, bob_id, "unparsable")
    # Only the bad namespace has a plaintext: nothing to fall back to.
    with pytest.raises(NoEligibleDevices, match="BundleRejected") as info:
        await alice.encrypt(frozenset({BOB}), {bad: PLAINTEXT[bad]}, backend_priority_order=[bad])
    assert info.value.bare_jids == frozenset({BOB})
    await alice.shutdown()
    await bob.shutdown()


@pytest.mark.parametrize("bad", [NSL, NS2], ids=["legacy bad", "omemo2 bad"])
async def test_a_key_exchange_in_the_bad_namespace_decrypts(bad: str) -> None:
    # Alice knows nothing of Bob; Bob starts a session in the namespace whose bundle Alice cannot
    # use. Alice learns his identity key from his other bundle and decrypts.
    net = network()
    alice, bob = await create(net, ALICE), await create(net, BOB)
    _corrupt(net, bad, BOB, await device_id(bob), "unparsable")
    messages, errors = await bob.encrypt(frozenset({ALICE}), PLAINTEXT, backend_priority_order=[bad])
    assert not errors
    for message in messages:
        net.send(message)
    [(plaintext, sender, _)] = await _deliver(net, alice, ALICE)
    assert plaintext == PLAINTEXT[bad] and sender.bare_jid == BOB
    await alice.shutdown()
    await bob.shutdown()


async def test_a_sender_whose_bundles_are_all_rejected_is_reported_as_such() -> None:
    net = network()
    alice, bob = await create(net, ALICE), await create(net, BOB)
    bob_id = await device_id(bob)
    good = {namespace: _corrupt(net, namespace, BOB, bob_id, "unparsable") for namespace in (NS2, NSL)}
    messages, _ = await bob.encrypt(frozenset({ALICE}), PLAINTEXT)
    for message in messages:
        net.send(message)
    [message] = net.take(ALICE, await device_id(alice))
    with pytest.raises(SenderNotFound) as info:
        await alice.decrypt(message)
    text = str(info.value)
    # Not "not in its device list": the device is listed, its bundles were rejected, and why.
    assert "not listed" not in text and "is in its account's device list" in text
    for namespace in (NS2, NSL):
        assert f"{namespace}: BundleRejected" in text
    assert "'signedPreKeyId' is out of range" in text and "'id' is out of range" in text
    # Nothing was stored: once Bob's bundles are fixed, the same message decrypts.
    for namespace, xml in good.items():
        net.bundle_xml[(namespace, BOB, bob_id)] = xml
    plaintext, sender, _ = await alice.decrypt(message)
    assert sender.device_id == bob_id and plaintext is not None
    await alice.shutdown()
    await bob.shutdown()
