"""Regressions of the hardening issue, through the public API and the XML of both namespaces: an input
that is accepted must leave a usable state.

1. A legacy bundle whose identity key has bit 255 set (the same Curve25519 key, encoded differently)
   used to be accepted and put the raw bytes into the associated data: every message sent on that
   session failed at the bundle's owner with a bad MAC.
2. A key exchange whose ephemeral key has bit 255 set used to be accepted and stored as it was; when
   the sender's next message repeated the genuine key exchange, the byte comparison failed, it was
   taken for a new session, the consumed pre key was not found and the message was lost.
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from typing import Any, List

import pytest

import oldmemo
import oldmemo.etree
import twomemo
import twomemo.etree
from omemo.message import Message
from omemo_engine import wire

from .xml_network import NS2, NSL, create, device_id, network

ALICE, BOB = "alice@example.org", "bob@example.org"
PLAINTEXT = {NS2: b"<envelope/>", NSL: b"body"}


def _set_bit_255(key: bytes) -> bytes:
    return key[:-1] + bytes((key[-1] | 0x80,))


async def test_a_legacy_identity_key_with_bit_255_set_gives_a_working_session() -> None:
    net = network()
    alice, bob = await create(net, ALICE), await create(net, BOB)
    bob_id = await device_id(bob)
    key = (NSL, BOB, bob_id)
    root = ET.fromstring(net.bundle_xml[key])
    identity = root.find(f"{{{NSL}}}identityKey")
    assert identity is not None and identity.text is not None
    identity.text = base64.b64encode(_set_bit_255(base64.b64decode(identity.text))).decode()
    net.bundle_xml[key] = ET.tostring(root)

    for text in (b"first", b"second"):
        messages, errors = await alice.encrypt(frozenset({BOB}), {NSL: text}, backend_priority_order=[NSL])
        assert not errors
        for message in messages:
            net.send(message)
        [message] = net.take(BOB, bob_id)
        plaintext, sender, _ = await bob.decrypt(message)
        assert plaintext == text and sender.bare_jid == ALICE
    # Alice knows Bob's identity key under its one encoding: the same fingerprint as Bob's own.
    (info,) = await alice.get_device_information(BOB)
    own, _ = await bob.get_own_device_information()
    assert info.identity_key == own.identity_key
    await alice.shutdown()
    await bob.shutdown()


def _flip_ephemeral_key(element: ET.Element, namespace: str) -> None:
    """Set bit 255 of the ephemeral key of every key exchange in ``element`` (as a network would)."""
    attribute = "kex" if namespace == NS2 else "prekey"
    keys = [node for node in element.iter() if node.get(attribute) in ("true", "1")]
    assert keys
    for node in keys:
        data = base64.b64decode(node.text or "")
        if namespace == NS2:
            o2 = wire._O2_KEX()
            o2.ParseFromString(data)
            o2.ek = _set_bit_255(o2.ek)
            data = o2.SerializeToString()
        else:
            legacy = wire._L_KEX()
            legacy.ParseFromString(data[1:])
            legacy.base_key = _set_bit_255(legacy.base_key)
            data = data[:1] + legacy.SerializeToString()
        node.text = base64.b64encode(data).decode()


async def _over_the_wire(message: Message, recipient: Any, flip: bool) -> Message:
    etree: Any = twomemo.etree if message.namespace == NS2 else oldmemo.etree
    element = ET.fromstring(ET.tostring(etree.serialize_message(message)))
    if flip:
        _flip_ephemeral_key(element, message.namespace)
    if message.namespace == NS2:
        parsed: Message = twomemo.etree.parse_message(element, message.bare_jid)
    else:
        parsed = await oldmemo.etree.parse_message(element, message.bare_jid, BOB, recipient)
    return parsed


@pytest.mark.parametrize("namespace", [NS2, NSL], ids=["omemo2", "legacy"])
async def test_a_repeated_key_exchange_after_one_with_bit_255_set_is_a_repeat(namespace: str) -> None:
    net = network()
    alice, bob = await create(net, ALICE), await create(net, BOB)
    sent: List[Message] = []
    for text in (b"first", b"second"):  # Bob does not answer in between: both carry the key exchange
        messages, _ = await alice.encrypt(
            frozenset({BOB}), {namespace: text}, backend_priority_order=[namespace]
        )
        sent.extend(messages)
    first = await _over_the_wire(sent[0], bob, flip=True)
    second = await _over_the_wire(sent[1], bob, flip=False)
    assert all(kex is not None for _, kex in second.keys)
    assert (await bob.decrypt(first))[0] == b"first"
    # The genuine key exchange again: the same session, not a new one (whose pre key is gone).
    assert (await bob.decrypt(second))[0] == b"second"
    await alice.shutdown()
    await bob.shutdown()
