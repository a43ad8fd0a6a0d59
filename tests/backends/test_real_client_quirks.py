"""What deployed clients do that a strict reading of the XEP would not expect (docs/real-clients.md).

- QXmpp (Kaidan) marks only the first message of a new session with ``kex='true'``; the following ones,
  sent before the session is acknowledged, are still OMEMOKeyExchanges but carry no ``kex``.

(Converse's pre key 0, which we avoid choosing: tests/engine/test_scenarios.py.)
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import twomemo
import twomemo.etree
from omemo._engine.backend import EngineSession
from omemo.session import Initiation

from .conftest import establish, make_device, receive, transmit


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
