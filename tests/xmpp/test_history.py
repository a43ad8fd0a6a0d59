"""omemo_slixmpp with the own other devices (carbons, XEP-0280) and history (offline delivery and MAM,
XEP-0313), through a real Prosody."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any, Dict, List, cast

import pytest
from slixmpp.jid import JID
from slixmpp.stanza import Message

from omemo.storages import SQLiteStorage
from omemo_slixmpp import OwnMessage

from .clients import Client, connect, disconnect, recipients
from .server import Prosody
from .test_groupchat import _join, _room, _room_message, _say

NS2, NSL = "urn:xmpp:omemo:2", "eu.siacs.conversations.axolotl"
NAMESPACES = {"omemo2": (NS2, NSL), "legacy": (NSL,)}
_names = itertools.count()


async def _write(sender: Client, to: str, body: str) -> None:
    stanza = sender.make_message(mto=JID(to), mtype="chat")
    stanza["body"] = body
    encrypted, errors = await sender.omemo.encrypt_message(stanza, recipients(JID(to).bare))
    assert encrypted is not None and not errors, errors
    encrypted.send()


async def _carbon(client: Client, kind: str) -> Message:
    """The next carbon copy of ``kind`` (``received`` or ``sent``) that ``client`` gets."""
    while True:
        stanza = await client.next_message(15)
        if stanza.xml.find(f"{{urn:xmpp:carbons:2}}{kind}") is not None:
            return stanza


@pytest.mark.parametrize("namespaces", list(NAMESPACES))
async def test_the_own_second_device_reads_sent_and_received_copies(server: Prosody, namespaces: str) -> None:
    n = next(_names)
    spoken = NAMESPACES[namespaces]
    phone = await connect(server, f"alice{n}", resource="phone", namespaces=spoken)
    laptop = await connect(server, f"alice{n}", resource="laptop", namespaces=spoken)
    bob = await connect(server, f"bob{n}", namespaces=spoken)
    try:
        for device in (phone, laptop):
            await cast(Any, device.plugin)["xep_0280"].enable()
        for device in (phone, laptop):  # each of Alice's devices knows the other
            await device.omemo.refresh_device_lists(recipients(phone.boundjid.bare), force_download=True)
        # Bob writes to the phone: the laptop gets a received carbon.
        await _write(bob, str(phone.boundjid), "to the phone")
        copy = await _carbon(laptop, "received")
        assert laptop.omemo.is_encrypted(copy) == set()  # the wrapper; the message is inside
        decrypted, sender = await laptop.omemo.decrypt_message(copy)
        assert decrypted["body"] == "to the phone" and sender.bare_jid == bob.boundjid.bare
        # The phone writes to Bob: the laptop gets a sent carbon, encrypted for it too.
        await _write(phone, bob.boundjid.bare, "from the phone")
        copy = await _carbon(laptop, "sent")
        decrypted, sender = await laptop.omemo.decrypt_message(copy)
        assert decrypted["body"] == "from the phone" and sender.bare_jid == phone.boundjid.bare
        assert JID(decrypted["to"]).bare == bob.boundjid.bare
        inner = copy.xml.find(".//{jabber:client}message")
        assert inner is not None
        assert {e.tag.split("}")[0][1:] for e in inner if e.tag.endswith("}encrypted")} == {spoken[0]}
    finally:
        await disconnect(phone, laptop, bob)


async def test_a_carbon_from_someone_else_is_refused(server: Prosody) -> None:
    from omemo_slixmpp import MalformedStanza

    n = next(_names)
    alice, mallory = await connect(server, f"alice{n}"), await connect(server, f"mallory{n}")
    try:
        forged = alice.make_message(mto=alice.boundjid, mfrom=mallory.boundjid.bare)
        received = forged.xml.makeelement("{urn:xmpp:carbons:2}received", {})
        forwarded = received.makeelement("{urn:xmpp:forward:0}forwarded", {})
        forwarded.append(alice.make_message(mto=alice.boundjid, mfrom=JID("bob@localhost")).xml)
        received.append(forwarded)
        forged.xml.append(received)
        with pytest.raises(MalformedStanza, match="carbon"):
            await alice.omemo.decrypt_message(forged)
    finally:
        await disconnect(alice, mallory)


async def _archive(client: Client, archive: str = "", with_jid: str = "") -> List[Message]:
    mam = cast(Any, client.plugin)["xep_0313"]
    results: List[Message] = []
    kwargs: Dict[str, Any] = {"rsm": {"max": 50}}
    if archive:
        kwargs["jid"] = JID(archive)
    if with_jid:
        kwargs["with_jid"] = JID(with_jid)
    async for message in mam.iterate(**kwargs):
        results.append(message)
    return results


async def test_catch_up_after_a_long_absence_twice_with_live_messages(
    server: Prosody, tmp_path: Path
) -> None:
    # Bob's device publishes its keys and goes away; Alice writes 200 messages (all carry the key
    # exchange: Bob never answered). Bob comes back: the offline store delivers them, the archive has
    # them too, he fetches the archive twice, and Alice writes more while he catches up. Every message
    # is decrypted exactly once, and nothing raises.
    n = next(_names)
    async with SQLiteStorage(tmp_path / "bob.sqlite") as storage:
        bob = await connect(server, f"bob{n}", storage=storage)
        await bob.disconnect()
        alice = await connect(server, f"alice{n}")
        bob_jid = f"bob{n}@{server.domain}"
        expected = {f"while you were away {i}" for i in range(200)}
        for body in sorted(expected):
            await _write(alice, bob_jid, body)
        await cast(Any, alice.plugin)["xep_0199"].ping(JID(server.domain))  # all stored by the server
        bob = await connect(server, f"bob{n}", storage=storage)
        decryptions: List[str] = []
        decrypt_one = bob.omemo._decrypt_one

        async def counted(*args: Any) -> Any:
            result = await decrypt_one(*args)
            decryptions.append(result[0]["body"])
            return result

        setattr(bob.omemo, "_decrypt_one", counted)  # noqa: B010 - counts the decryptions
        try:
            read: List[str] = []
            async with bob.omemo.history_sync():
                live = asyncio.ensure_future(_write_many(alice, bob_jid, [f"live {i}" for i in range(5)]))
                for _ in range(2):
                    for result in await _archive(bob, with_jid=alice.boundjid.bare):
                        decrypted, device = await bob.omemo.decrypt_message(result)
                        assert device.bare_jid == alice.boundjid.bare
                        read.append(decrypted["body"])
                    assert expected <= set(read)
                await live
                # The offline copies and the live messages, from the inbox.
                await asyncio.sleep(0.5)
                while not bob.inbox.empty():
                    stanza = bob.inbox.get_nowait()
                    if bob.omemo.is_encrypted(stanza):
                        decrypted, _ = await bob.omemo.decrypt_message(stanza)
                        read.append(decrypted["body"])
            everything = expected | {f"live {i}" for i in range(5)}
            assert set(read) == everything and len(read) > len(everything)  # duplicates were read
            assert sorted(decryptions) == sorted(everything)  # each decrypted once
            # The session goes on: Bob answers, Alice reads.
            await _write(bob, alice.boundjid.bare, "back again")
            while True:
                stanza = await alice.next_message(15)
                if alice.omemo.is_encrypted(stanza):
                    break
            decrypted, _ = await alice.omemo.decrypt_message(stanza)
            assert decrypted["body"] == "back again"
            # Bob's own message, back from his archive: a typed error, this device never had its keys.
            (own,) = [r for r in await _archive(bob, with_jid=alice.boundjid.bare) if _sent_by(r, bob)]
            with pytest.raises(OwnMessage, match="this device sent"):
                await bob.omemo.decrypt_message(own)
        finally:
            await disconnect(alice, bob)


def _sent_by(result: Message, client: Client) -> bool:
    """Whether an archive result is a message with content that ``client``'s account sent."""
    inner = result.xml.find(".//{jabber:client}message")
    if inner is None or inner.find("{jabber:client}body") is None:
        return False
    return JID(inner.get("from", "")).bare == client.boundjid.bare


async def _write_many(sender: Client, to: str, bodies: List[str]) -> None:
    for body in bodies:
        await _write(sender, to, body)
        await asyncio.sleep(0.01)


async def test_an_offline_member_catches_up_from_the_room_archive(server: Prosody) -> None:
    n = next(_names)
    alice = await connect(server, f"alice{n}")
    erin = await connect(server, f"erin{n}")
    try:
        room = await _room(server, alice, erin.boundjid.bare)  # Erin is a member, not in the room
        for i in range(3):
            await _say(alice, room, f"room message {i}")
        for _ in range(3):  # the reflections: the room has handled (and archived) every message
            await _room_message(alice, room)
        async with erin.omemo.history_sync():
            results = await _archive(erin, archive=room)
            bodies = []
            for result in results:
                decrypted, device = await erin.omemo.decrypt_message(result)
                assert device.bare_jid == alice.boundjid.bare
                bodies.append(decrypted["body"])
        assert bodies == [f"room message {i}" for i in range(3)]
        # Once in the room, Erin reads live messages as well.
        await _join(erin, room)
        await _say(alice, room, "welcome")
        while True:
            stanza = await erin.next_message(15)
            if erin.omemo.is_encrypted(stanza):
                break
        decrypted, _ = await erin.omemo.decrypt_message(stanza)
        assert decrypted["body"] == "welcome"
    finally:
        await disconnect(alice, erin)


def test_no_plaintext_in_the_archives_or_the_offline_store(server: Prosody) -> None:
    data = b"".join(path.read_bytes() for path in server.data_files() if path.is_file())
    assert data, "the server stored nothing at all"
    for secret in (b"while you were away", b"room message", b"to the phone", b"from the phone", b"live "):
        assert secret not in data
