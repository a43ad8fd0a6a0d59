"""omemo_slixmpp in group chats (XEP-0045), through a real Prosody's MUC component.

Rooms are members-only and non-anonymous (the test server's defaults). Members: our plugin with OMEMO 2
(and legacy), our plugin legacy-only, and slixmpp-omemo 2.2.0 on the reference stack (legacy).
"""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Set, Tuple, cast

import pytest
from slixmpp.jid import JID
from slixmpp.stanza import Message

from omemo import sce
from omemo.session_manager import NoEligibleDevices
from omemo_slixmpp import OwnMessage, RoomNotSuitable

from .clients import Client, connect, disconnect
from .server import Prosody
from .test_plugin import _expect, _start_peer, _stop_peer

NS2, NSL = "urn:xmpp:omemo:2", "eu.siacs.conversations.axolotl"
_names = itertools.count()


def _muc(client: Client) -> Any:
    return cast(Any, client.plugin)["xep_0045"]


async def _room(server: Prosody, owner: Client, *members: str) -> str:
    """A new room owned by ``owner`` (who joins it), with ``members`` as members (not joined)."""
    assert server.muc_domain is not None
    room = f"room{next(_names)}@{server.muc_domain}"
    await _muc(owner).join_muc_wait(JID(room), owner.boundjid.user, timeout=20)
    for jid in members:
        await _muc(owner).set_affiliation(JID(room), "member", jid=JID(jid))
    return room


async def _join(client: Client, room: str) -> None:
    await _muc(client).join_muc_wait(JID(room), client.boundjid.user, timeout=20)


async def _say(client: Client, room: str, body: str = "", **children: ET.Element) -> Message:
    """Encrypts ``body`` for the room's members and sends it; returns the sent stanza."""
    stanza = client.make_message(mto=JID(room), mtype="groupchat")
    if body:
        stanza["body"] = body
    for child in children.values():
        stanza.xml.append(child)
    encrypted, errors = await client.omemo.encrypt_message(stanza, {JID(room)})
    assert encrypted is not None, errors
    encrypted.send()
    return encrypted


async def _room_message(client: Client, room: str, timeout: float = 15) -> Message:
    """The next encrypted message from ``room`` (skipping unencrypted ones such as subjects)."""
    while True:
        stanza = await client.next_message(timeout)
        if JID(stanza["from"]).bare == room and client.omemo.is_encrypted(stanza):
            return stanza


async def _read(client: Client, room: str) -> Tuple[str, str]:
    """Decrypts the next message from ``room``: (its body, the sender's real JID)."""
    decrypted, device = await client.omemo.decrypt_message(await _room_message(client, room))
    return decrypted["body"], device.bare_jid


def _key_jids(stanza: Message) -> Set[str]:
    """The JIDs that an OMEMO 2 element of ``stanza`` holds keys for."""
    element = stanza.xml.find(f"{{{NS2}}}encrypted")
    if element is None:
        return set()
    return {keys.get("jid", "") for keys in element.iter(f"{{{NS2}}}keys")}


async def test_members_of_mixed_namespaces_read_every_message(
    server: Prosody, slixmpp_omemo_python: Path, tmp_path: Path
) -> None:
    n = next(_names)
    alice = await connect(server, f"alice{n}")
    bob = await connect(server, f"bob{n}", namespaces=(NSL,))
    carol = await _start_peer(slixmpp_omemo_python, server, f"carol{n}", tmp_path / "carol.json")
    carol_jid = f"carol{n}@{server.domain}"
    assert carol.stdin is not None
    try:
        room = await _room(server, alice, bob.boundjid.bare, carol_jid)
        await _join(bob, room)
        carol.stdin.write(f"JOIN {room} carol\n".encode())
        await _expect(carol, "JOINED")
        # Carol (slixmpp-omemo) writes first: she writes legacy, and is answered in legacy from then on
        # (slixmpp-omemo 2.2 announces OMEMO 2 but cannot read it).
        members = f"{alice.boundjid.bare},{bob.boundjid.bare}"
        carol.stdin.write(f"ROOM {room} {members} hello from carol\n".encode())
        await _expect(carol, "SENT 0")
        assert "hello from carol" in await _expect(carol, "RECEIVED")  # her reflection
        for member in (alice, bob):
            assert await _read(member, room) == ("hello from carol", carol_jid)
        sent = await _say(alice, room, "hello from alice")
        assert alice.omemo.is_encrypted(sent) == {NSL}
        assert await _read(bob, room) == ("hello from alice", alice.boundjid.bare)
        assert "hello from alice" in await _expect(carol, "RECEIVED")
        # Alice's own reflection decrypts to what she sent, once, without touching a session.
        assert await _read(alice, room) == ("hello from alice", alice.boundjid.bare)
        await _say(bob, room, "hello from bob")
        assert await _read(alice, room) == ("hello from bob", bob.boundjid.bare)
        assert "hello from bob" in await _expect(carol, "RECEIVED")
        assert await _read(bob, room) == ("hello from bob", bob.boundjid.bare)
    finally:
        await _stop_peer(carol)
        await disconnect(alice, bob)


async def test_omemo2_in_a_room_with_a_legacy_member_and_the_room_as_to(server: Prosody) -> None:
    n = next(_names)
    alice, dave = await connect(server, f"alice{n}"), await connect(server, f"dave{n}")
    bob = await connect(server, f"bob{n}", namespaces=(NSL,))
    try:
        room = await _room(server, alice, bob.boundjid.bare, dave.boundjid.bare)
        await _join(bob, room)
        await _join(dave, room)
        # One stanza: OMEMO 2 for Dave, legacy for Bob.
        sent = await _say(alice, room, "to everyone")
        assert alice.omemo.is_encrypted(sent) == {NS2, NSL}
        assert _key_jids(sent) == {dave.boundjid.bare}
        assert await _read(dave, room) == ("to everyone", alice.boundjid.bare)
        assert await _read(bob, room) == ("to everyone", alice.boundjid.bare)
        # A stanza without body (a chat state) reaches the OMEMO 2 member only.
        state = ET.Element("{http://jabber.org/protocol/chatstates}composing")
        sent = await _say(alice, room, composing=state)
        assert alice.omemo.is_encrypted(sent) == {NS2}
        decrypted, _ = await dave.omemo.decrypt_message(await _room_message(dave, room))
        assert decrypted.xml.find("{http://jabber.org/protocol/chatstates}composing") is not None
        # The envelope names the room: a message made for this room and replayed in another is refused.
        other = await _room(server, alice, dave.boundjid.bare)
        await _join(dave, other)
        stanza = alice.make_message(mto=JID(room), mtype="groupchat")
        stanza["body"] = "for the first room only"
        encrypted, _ = await alice.omemo.encrypt_message(stanza, {JID(room)})
        assert encrypted is not None
        encrypted["to"] = JID(other)
        encrypted.send()
        with pytest.raises(sce.AffixMismatch, match="to"):
            await dave.omemo.decrypt_message(await _room_message(dave, other))
        # Nothing was stored: Dave reads the next message.
        await _say(alice, room, "still fine")
        assert await _read(dave, room) == ("still fine", alice.boundjid.bare)
    finally:
        await disconnect(alice, bob, dave)


async def test_affiliation_changes_and_members_without_keys(server: Prosody) -> None:
    n = next(_names)
    alice, bob = await connect(server, f"alice{n}"), await connect(server, f"bob{n}")
    dave, erin = await connect(server, f"dave{n}"), await connect(server, f"erin{n}")
    frank = server.register(f"frank{n}", "secret")  # never ran OMEMO: no devices
    try:
        room = await _room(server, alice, bob.boundjid.bare, dave.boundjid.bare, frank)
        await _join(bob, room)
        await erin.disconnect()  # Erin published her keys and went offline; she is no member yet
        # Frank cannot be encrypted for: reported, and the room still gets the message.
        stanza = bob.make_message(mto=JID(room), mtype="groupchat")
        stanza["body"] = "first"
        encrypted, errors = await bob.omemo.encrypt_message(stanza, {JID(room)})
        assert encrypted is not None and _key_jids(encrypted) == {alice.boundjid.bare, dave.boundjid.bare}
        reported = [(e.bare_jid, e.device_id, type(e.exception)) for e in errors]
        assert reported == [(frank, 0, NoEligibleDevices)]
        # Alice (the owner) removes Dave, who is offline to the room, and adds Erin: Bob's next message
        # follows, although the room told him nothing about either change.
        await _muc(alice).set_affiliation(JID(room), "none", jid=JID(dave.boundjid.bare))
        await _muc(alice).set_affiliation(JID(room), "member", jid=JID(f"erin{n}@{server.domain}"))
        stanza = bob.make_message(mto=JID(room), mtype="groupchat")
        stanza["body"] = "second"
        encrypted, _ = await bob.omemo.encrypt_message(stanza, {JID(room)})
        assert encrypted is not None
        assert _key_jids(encrypted) == {alice.boundjid.bare, f"erin{n}@{server.domain}"}
    finally:
        await disconnect(alice, bob, dave)


async def test_rooms_that_cannot_carry_omemo_are_refused(server: Prosody) -> None:
    n = next(_names)
    alice, bob = await connect(server, f"alice{n}"), await connect(server, f"bob{n}")
    try:
        for field, value, problem in (
            ("muc#roomconfig_whois", "moderators", "real JIDs"),
            ("muc#roomconfig_membersonly", "0", "members-only"),
        ):
            room = await _room(server, alice, bob.boundjid.bare)
            form = await _muc(alice).get_room_config(JID(room))
            form.set_values({field: value})
            await _muc(alice).set_room_config(JID(room), form)
            stanza = alice.make_message(mto=JID(room), mtype="groupchat")
            stanza["body"] = "secret"
            with pytest.raises(RoomNotSuitable, match=problem):
                await alice.omemo.encrypt_message(stanza, {JID(room)})
    finally:
        await disconnect(alice, bob)


async def test_an_own_room_message_not_remembered_is_a_typed_error(server: Prosody) -> None:
    n = next(_names)
    alice, bob = await connect(server, f"alice{n}"), await connect(server, f"bob{n}")
    try:
        room = await _room(server, alice, bob.boundjid.bare)
        await _say(alice, room, "forgotten")
        reflection = await _room_message(alice, room)
        alice.omemo._reflections.clear()  # as after a restart
        with pytest.raises(OwnMessage):
            await alice.omemo.decrypt_message(reflection)
    finally:
        await disconnect(alice, bob)
