"""The known-answer vectors reproduced through the backend API and the etree functions.

Provenance: tests/vectors/omemo-kat.json (see tests/vectors/README.md). Bob's bundle, Alice's
message 1 and Bob's empty reply are rebuilt with Twomemo/Oldmemo objects whose RNG and identity
seed are fixed to the vectors' inputs, serialised with <backend>.etree and compared with the
vectors' XML by parsed structure (attribute and text of every element).
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import oldmemo
import oldmemo.etree
import oldmemo.oldmemo
import twomemo
import twomemo.etree
import twomemo.twomemo
from omemo._engine.backend import EngineBackend
from omemo._engine.records import KeyState, SignedPreKey
from omemo.message import Message
from omemo.session import Initiation
from omemo.storages import MemoryStorage
from omemo_engine import xeddsa

KAT: dict[str, Any] = json.loads((Path(__file__).parent.parent / "vectors" / "omemo-kat.json").read_text())


def rep(byte: int, n: int) -> bytes:
    return bytes((byte,)) * n


def rng(*chunks: bytes) -> Callable[[int], bytes]:
    stream: Iterator[bytes] = iter(chunks)

    def random_bytes(n: int) -> bytes:
        chunk = next(stream)
        assert len(chunk) == n
        return chunk

    return random_bytes


def shape(element: ET.Element) -> Any:
    """A comparable structure: tag, attributes, decoded text, children sorted."""
    text = (element.text or "").strip()
    return (
        element.tag,
        tuple(sorted(element.attrib.items())),
        text,
        tuple(sorted((shape(child) for child in element), key=repr)),
    )


async def make_backend(cls: type[EngineBackend], seed: bytes) -> EngineBackend:
    storage = MemoryStorage(serialize=True)
    await storage.store_bytes("/ikp/key", seed)
    await storage.store("/ikp/is_seed", True)
    return cls(storage)


async def give_bob_fixed_keys(backend: EngineBackend) -> None:
    identity_priv, _ = await backend._identity_key_pair()
    spk_pub = xeddsa.priv_to_curve25519_pub(rep(0x33, 32))
    signature = xeddsa.sign(identity_priv, backend.PROFILE.encode_signed_pre_key(spk_pub), rep(0xAA, 64))
    pk_pub = xeddsa.priv_to_curve25519_pub(rep(0x44, 32))
    await backend._store_keys(
        KeyState(
            SignedPreKey(1, rep(0x33, 32), spk_pub, signature, 0), None, {1: (rep(0x44, 32), pk_pub)}, {}, 2
        )
    )


CASES = [
    ("twomemo", twomemo.Twomemo, twomemo.etree),
    ("oldmemo", oldmemo.Oldmemo, oldmemo.etree),
]


class FakeSessionManager:
    """Just what oldmemo.etree.parse_message needs: Alice's identity key."""

    def __init__(self, identity_key: bytes) -> None:
        self.identity_key = identity_key

    async def get_device_information(self, bare_jid: str) -> Any:
        class Info:
            device_id = 1
            identity_key = self.identity_key

        return frozenset([Info()])

    async def refresh_device_list(self, namespace: str, bare_jid: str) -> None:
        raise AssertionError("not expected")


async def parse(etree: Any, xml: str, sender: str, own: str, alice_ik: bytes) -> Message:
    element = ET.fromstring(xml)
    if etree is oldmemo.etree:
        return await oldmemo.etree.parse_message(element, sender, own, FakeSessionManager(alice_ik))  # type: ignore[arg-type]
    message: Message = etree.parse_message(element, sender)
    return message


@pytest.mark.parametrize(("name", "cls", "etree"), CASES, ids=[c[0] for c in CASES])
async def test_kat_through_backend(name: str, cls: type[EngineBackend], etree: Any) -> None:
    vectors = KAT[name]
    alice = await make_backend(cls, rep(0x11, 32))
    bob = await make_backend(cls, rep(0x22, 32))
    await give_bob_fixed_keys(bob)

    # Bob's bundle, serialised, equals the vector; the vector parses back into an equal bundle.
    bundle = await bob.get_bundle("bob@example.org", 2)
    assert shape(etree.serialize_bundle(bundle)) == shape(ET.fromstring(vectors["bundle_xml"]))
    parsed_bundle = etree.parse_bundle(ET.fromstring(vectors["bundle_xml"]), "bob@example.org", 2)
    assert parsed_bundle == bundle
    assert hash(parsed_bundle) == hash(bundle)

    # Alice: payload, then the session with the key exchange.
    if name == "twomemo":
        alice._random_bytes = rng(rep(0x88, 32), rep(0x55, 32), rep(0x66, 32))
    else:
        alice._random_bytes = rng(rep(0x88, 16), rep(0x99, 12), rep(0x55, 32), rep(0x66, 32))
    content, key_material = await alice.encrypt_plaintext(b"Hello, Bob!")
    session, encrypted = await alice.build_session_active("bob@example.org", 2, parsed_bundle, key_material)
    assert session.initiation is Initiation.ACTIVE and not session.confirmed
    message = Message(
        alice.namespace, "alice@example.org", 1, content, frozenset([(encrypted, session.key_exchange)])
    )
    assert shape(etree.serialize_message(message)) == shape(ET.fromstring(vectors["message1_xml"]))
    await alice.store_session(session)

    # Bob parses and decrypts message 1 passively.
    alice_ik = xeddsa.seed_to_ed25519_pub(rep(0x11, 32))
    received = await parse(etree, vectors["message1_xml"], "alice@example.org", "bob@example.org", alice_ik)
    [(bob_encrypted, kex)] = list(received.keys)
    assert kex is not None and kex.identity_key == alice_ik
    assert kex.builds_same_session(session.key_exchange)
    bob._random_bytes = rng(rep(0x77, 32))
    bob_session, plain = await bob.build_session_passive("alice@example.org", 1, kex, bob_encrypted)
    assert await bob.decrypt_plaintext(received.content, plain) == b"Hello, Bob!"
    assert await bob.hide_pre_key(bob_session) is True
    assert await bob.get_num_visible_pre_keys() == 0

    # Bob's empty reply.
    if name == "twomemo":
        empty_content, empty_key = await bob.encrypt_empty()
    else:
        bob._random_bytes = rng(rep(0xBB, 12), rep(0xCC, 16))
        empty_content, empty_key = await bob.encrypt_empty()
    assert empty_content.empty
    reply = await bob.encrypt_key_material(bob_session, empty_key)
    reply_message = Message(bob.namespace, "bob@example.org", 2, empty_content, frozenset([(reply, None)]))
    # The legacy serialiser has no JID per key; OMEMO 2 groups keys under <keys jid=...>.
    assert shape(etree.serialize_message(reply_message)) == shape(
        ET.fromstring(vectors["message2_empty_reply_xml"])
    )

    # Alice decrypts the reply and her session is confirmed.
    reply_parsed = await parse(
        etree, vectors["message2_empty_reply_xml"], "bob@example.org", "alice@example.org", alice_ik
    )
    [(alice_encrypted, no_kex)] = list(reply_parsed.keys)
    assert no_kex is None
    loaded = await alice.load_session("bob@example.org", 2)
    assert loaded is not None and not loaded.confirmed
    alice._random_bytes = os.urandom  # the DH ratchet step draws Alice's next ratchet key
    plain_reply = await alice.decrypt_key_material(loaded, alice_encrypted)
    assert plain_reply.key + plain_reply.auth_tag == bytes.fromhex(vectors["message2_plain_key_material"])  # type: ignore[attr-defined]
    assert loaded.confirmed is vectors["alice_session_confirmed_after_message2"]
    assert reply_parsed.content.empty
