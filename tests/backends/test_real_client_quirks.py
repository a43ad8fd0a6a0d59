"""What deployed clients do that a strict reading of the XEP would not expect (docs/real-clients.md).

- Empty messages: OMEMO 2 ones carry 32 zero bytes as key material; legacy ones a 16-byte key (most
  clients) or key and tag of an empty plaintext (Converse). Any other key material was made for a
  payload that was removed on the way: refused, not taken for an empty message.
- QXmpp (Kaidan) marks only the first message of a new session with ``kex='true'``; the following ones,
  sent before the session is acknowledged, are still OMEMOKeyExchanges but carry no ``kex``.

(Converse's pre key 0, which we avoid choosing: tests/engine/test_scenarios.py.)
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

import oldmemo
import oldmemo.oldmemo
import twomemo
import twomemo.etree
from omemo._engine.backend import EngineSession
from omemo.backend import DecryptionFailed
from omemo.session import Initiation
from omemo_engine._primitives import aes_gcm_encrypt

from .conftest import CountingStorage, establish, make_device, receive, transmit


async def test_a_key_exchange_without_the_kex_attribute_is_recognised() -> None:
    alice = await make_device(twomemo.Twomemo, "alice@example.org", 1)
    bob = await make_device(twomemo.Twomemo, "bob@example.org", 2)
    a_session, b_session = await establish(alice, bob, b"first", reply=False)
    assert a_session.initiation is Initiation.ACTIVE and not a_session.confirmed

    # Alice's second message, before Bob answered: still a key exchange; sent the QXmpp way.
    content, key_material = await alice.backend.encrypt_plaintext(b"second")
    encrypted = await alice.backend.encrypt_key_material(a_session, key_material)
    _, element = await transmit(alice, bob, content, [(encrypted, a_session.key_exchange)])
    keys = [node for node in element.iter() if node.get("kex") is not None]
    assert len(keys) == 1
    del keys[0].attrib["kex"]
    parsed = twomemo.etree.parse_message(ET.fromstring(ET.tostring(element)), alice.bare_jid)
    ((enc, kex),) = parsed.keys
    assert kex is not None and kex.builds_same_session(b_session.key_exchange)
    assert await receive(bob, b_session, parsed, enc) == b"second"


async def test_a_normal_key_is_not_taken_for_a_key_exchange() -> None:
    alice = await make_device(twomemo.Twomemo, "alice@example.org", 1)
    bob = await make_device(twomemo.Twomemo, "bob@example.org", 2)
    _, b_session = await establish(alice, bob, b"first")
    reloaded = await alice.backend.load_session(bob.bare_jid, bob.device_id)
    assert isinstance(reloaded, EngineSession) and reloaded.confirmed
    content, key_material = await alice.backend.encrypt_plaintext(b"steady")
    encrypted = await alice.backend.encrypt_key_material(reloaded, key_material)
    parsed, _ = await transmit(alice, bob, content, [(encrypted, None)])
    ((enc, kex),) = parsed.keys
    assert kex is None
    assert await receive(bob, b_session, parsed, enc) == b"steady"


# -- empty messages: the key material must be that of an empty message ---------------------------------


async def test_an_omemo2_empty_message_needs_the_empty_key_material() -> None:
    backend = twomemo.Twomemo(CountingStorage())
    content, key_material = await backend.encrypt_empty()
    backend.check_empty_message(content, key_material)
    _, for_a_payload = await backend.encrypt_plaintext(b"text")
    with pytest.raises(DecryptionFailed, match="the payload was removed"):
        backend.check_empty_message(content, for_a_payload)


async def test_legacy_empty_messages_of_deployed_clients_pass_and_a_stripped_one_does_not() -> None:
    backend = oldmemo.Oldmemo(CountingStorage())
    content, key_material = await backend.encrypt_empty()  # 16 bytes: ours, Conversations, Gajim
    backend.check_empty_message(content, key_material)
    # Converse's heartbeat: key and tag of an empty GCM plaintext (32 bytes).
    key = bytes(range(16))
    iv = content.initialization_vector
    _, tag = aes_gcm_encrypt(key, iv, b"")
    heartbeat = oldmemo.oldmemo.PlainKeyMaterialImpl(key, tag)
    backend.check_empty_message(content, heartbeat)
    # The key material of a real payload, whose payload was removed on the way.
    payload_content, for_a_payload = await backend.encrypt_plaintext(b"text")
    stripped = oldmemo.oldmemo.ContentImpl(b"", payload_content.initialization_vector)
    with pytest.raises(DecryptionFailed, match="the payload was removed"):
        backend.check_empty_message(stripped, for_a_payload)
