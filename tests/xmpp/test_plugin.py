"""omemo_slixmpp end to end: two slixmpp clients with our plugin, through a real Prosody on loopback.

Each test uses fresh accounts on one server per module; messages cross the server as stanzas.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator, List, Tuple, cast

import pytest
from slixmpp.stanza import Message

from omemo import sce
from omemo.backend import DuplicateMessage
from omemo.diagnostics import format_report
from omemo.session_manager import NoEligibleDevices
from omemo.storages import SQLiteStorage
from omemo_slixmpp import MalformedStanza
from omemo_slixmpp._pep import DEVICE_LIST_NODES as NODES
from omemo_slixmpp._pep import get_items, publish

from .clients import Client, connect, connect_plain, disconnect, recipients
from .server import Prosody

NS2, NSL = "urn:xmpp:omemo:2", "eu.siacs.conversations.axolotl"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "omemo_bot.py"
PEER = Path(__file__).resolve().parent / "slixmpp_omemo_peer.py"
_names = itertools.count()


@pytest.fixture
async def pair(server: Prosody) -> AsyncIterator[Tuple[Client, Client]]:
    n = next(_names)
    alice, bob = await connect(server, f"alice{n}"), await connect(server, f"bob{n}")
    try:
        yield alice, bob
    finally:
        await disconnect(alice, bob)


def _chat(sender: Client, recipient: Client, body: str = "") -> object:
    stanza = sender.make_message(mto=recipient.boundjid.bare, mtype="chat")
    if body:
        stanza["body"] = body
    return stanza


async def _send(sender: Client, recipient: Client, stanza: object) -> object:
    encrypted, errors = await sender.omemo.encrypt_message(stanza, recipients(recipient.boundjid.bare))  # type: ignore[arg-type]
    assert encrypted is not None and not errors
    encrypted.send()
    return encrypted


async def test_both_ways_over_omemo2_with_both_namespaces_in_one_stanza(pair: Tuple[Client, Client]) -> None:
    alice, bob = pair
    encrypted = await _send(alice, bob, _chat(alice, bob, "hello bob"))
    xml = encrypted.xml  # type: ignore[attr-defined]
    # One stanza: an <encrypted> per namespace the devices need (ours speak OMEMO 2: one), EME, store
    # hint, fallback body; no plaintext.
    assert xml.find(f"{{{NS2}}}encrypted") is not None
    assert xml.find("{urn:xmpp:eme:0}encryption").get("namespace") == NS2
    assert xml.find("{urn:xmpp:hints}store") is not None
    assert "hello bob" not in ET.tostring(xml, encoding="unicode")
    received = await bob.next_message()
    assert bob.omemo.is_encrypted(received) == {NS2}
    decrypted, device = await bob.omemo.decrypt_message(received)
    assert decrypted["body"] == "hello bob"
    assert device.bare_jid == alice.boundjid.bare
    await _send(bob, alice, _chat(bob, alice, "hello alice"))
    decrypted, _ = await alice.omemo.decrypt_message(await alice.next_message())
    assert decrypted["body"] == "hello alice"
    # Nothing in clear on either stream.
    for text in ("hello bob", "hello alice"):
        assert not any(text in data for data in alice.wire + bob.wire)


async def test_a_stanza_without_body_is_encrypted_for_omemo2(pair: Tuple[Client, Client]) -> None:
    alice, bob = pair
    stanza = _chat(alice, bob)
    ET.SubElement(stanza.xml, "{http://jabber.org/protocol/chatstates}composing")  # type: ignore[attr-defined]
    await _send(alice, bob, stanza)
    decrypted, _ = await bob.omemo.decrypt_message(await bob.next_message())
    assert not decrypted["body"]
    assert decrypted.xml.find("{http://jabber.org/protocol/chatstates}composing") is not None


async def test_a_wrong_to_affix_is_refused_and_nothing_is_stored(
    pair: Tuple[Client, Client], server: Prosody
) -> None:
    alice, bob = pair
    carol = await connect(server, f"carol{next(_names)}")
    try:
        # Alice encrypts for Bob an envelope whose <to> names Carol: Bob refuses it.
        stanza = _chat(alice, bob, "for carol")
        stanza["to"] = carol.boundjid.bare  # type: ignore[index]
        encrypted, _ = await alice.omemo.encrypt_message(stanza, recipients(bob.boundjid.bare))  # type: ignore[arg-type]
        assert encrypted is not None
        encrypted["to"] = bob.boundjid.bare
        encrypted.send()
        received = await bob.next_message()
        with pytest.raises(sce.AffixMismatch):
            await bob.omemo.decrypt_message(received)
        # Nothing was stored: a genuine message still decrypts.
        await _send(alice, bob, _chat(alice, bob, "genuine"))
        decrypted, _ = await bob.omemo.decrypt_message(await bob.next_message())
        assert decrypted["body"] == "genuine"
    finally:
        await disconnect(carol)


async def test_an_old_envelope_is_refused(pair: Tuple[Client, Client]) -> None:
    alice, bob = pair
    await _send(alice, bob, _chat(alice, bob, "now"))
    await bob.omemo.decrypt_message(await bob.next_message())
    # The same stanza "sent" two hours later (a <delay> from then): outside the allowed skew.
    await _send(alice, bob, _chat(alice, bob, "replayed later"))
    received = await bob.next_message()
    delay = ET.SubElement(received.xml, "{urn:xmpp:delay}delay")
    delay.set("stamp", (datetime.now(timezone.utc) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    with pytest.raises(sce.TimestampOutOfRange):
        await bob.omemo.decrypt_message(received)


async def test_one_stanza_for_a_legacy_only_and_an_omemo2_only_device(server: Prosody) -> None:
    # Bob has two devices: one speaks only legacy OMEMO, the other only OMEMO 2.
    n = next(_names)
    alice = await connect(server, f"alice{n}")
    old = await connect(server, f"bob{n}", namespaces=(NSL,), resource="old")
    new = await connect(server, f"bob{n}", namespaces=(NS2,), resource="new")
    try:
        encrypted = await _send(alice, old, _chat(alice, old, "to both devices"))
        assert alice.omemo.is_encrypted(encrypted) == {NS2, NSL}  # type: ignore[arg-type]
        for device in (old, new):
            decrypted, _ = await device.omemo.decrypt_message(await device.next_message())
            assert decrypted["body"] == "to both devices"
    finally:
        await disconnect(alice, old, new)


async def test_legacy_both_ways(server: Prosody) -> None:
    n = next(_names)
    alice = await connect(server, f"alice{n}", namespaces=(NSL,))
    bob = await connect(server, f"bob{n}", namespaces=(NSL,))
    try:
        encrypted = await _send(alice, bob, _chat(alice, bob, "legacy hello"))
        assert alice.omemo.is_encrypted(encrypted) == {NSL}  # type: ignore[arg-type]
        decrypted, _ = await bob.omemo.decrypt_message(await bob.next_message())
        assert decrypted["body"] == "legacy hello"
        await _send(bob, alice, _chat(bob, alice, "legacy reply"))
        decrypted, _ = await alice.omemo.decrypt_message(await alice.next_message())
        assert decrypted["body"] == "legacy reply"
    finally:
        await disconnect(alice, bob)


async def test_the_example_bot_echoes(server: Prosody, tmp_path: Path) -> None:
    n = next(_names)
    bot_jid = server.register(f"bot{n}", "botpass")
    command = [
        sys.executable,
        str(EXAMPLE),
        bot_jid,
        "botpass",
        str(tmp_path / "bot.sqlite"),
        "--host",
        server.host,
        "--port",
        str(server.port),
        "--cafile",
        str(server.cafile),
    ]
    bot = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    user = await connect(server, f"user{n}")
    try:
        reply = None
        for _ in range(40):  # until the bot is up (it publishes its device lists at start)
            await asyncio.sleep(0.25)
            manager = await user.omemo.get_session_manager()
            await user.omemo.refresh_device_lists(recipients(bot_jid), force_download=True)
            if await manager.get_device_information(bot_jid):
                break
        stanza = user.make_message(mto=bot_jid, mtype="chat")
        stanza["body"] = "echo this"
        await _send_to(user, bot_jid, stanza)
        reply = await user.next_message(timeout=15)
        decrypted, device = await user.omemo.decrypt_message(reply)
        assert decrypted["body"] == "echo this" and device.bare_jid == bot_jid
    finally:
        bot.terminate()
        output = bot.communicate(timeout=10)[0].decode(errors="replace")
        await disconnect(user)
    assert "Traceback" not in output, output


async def _send_to(sender: Client, jid: str, stanza: object) -> None:
    encrypted, errors = await sender.omemo.encrypt_message(stanza, recipients(jid))  # type: ignore[arg-type]
    assert encrypted is not None and not errors
    encrypted.send()


async def test_offline_delivery_and_a_restart_from_storage_without_new_key_exchanges(
    server: Prosody, tmp_path: Path
) -> None:
    n = next(_names)
    alice = await connect(server, f"alice{n}")
    async with SQLiteStorage(tmp_path / "bob.sqlite") as storage:
        bob = await connect(server, f"bob{n}", storage=storage)
        await _send(alice, bob, _chat(alice, bob, "first"))
        await bob.omemo.decrypt_message(await bob.next_message())
        await _send(bob, alice, _chat(bob, alice, "answer"))
        await alice.omemo.decrypt_message(await alice.next_message())
        await disconnect(bob)
        # Bob is offline: the server keeps the message and delivers it with <delay> at his next login,
        # to the same device restarted from its storage.
        await _send_to(alice, f"bob{n}@{server.domain}", _chat(alice, bob, "while you were away"))
        bob = await connect(server, f"bob{n}", storage=storage)
        received = await bob.next_message()
        assert received.xml.find("{urn:xmpp:delay}delay") is not None
        encrypted = received.xml.find(f"{{{NS2}}}encrypted")
        assert encrypted is not None
        assert all(key.get("kex") in (None, "false") for key in encrypted.iter(f"{{{NS2}}}key"))
        decrypted, _ = await bob.omemo.decrypt_message(received)
        assert decrypted["body"] == "while you were away"
        await disconnect(alice, bob)


async def test_a_burst_of_50_concurrent_messages_is_decrypted_exactly_once(
    pair: Tuple[Client, Client],
) -> None:
    alice, bob = pair
    await _send(alice, bob, _chat(alice, bob, "warm up"))
    await bob.omemo.decrypt_message(await bob.next_message())
    texts = [f"message {i}" for i in range(50)]
    await asyncio.gather(*(_send(alice, bob, _chat(alice, bob, text)) for text in texts))
    received = [await bob.next_message() for _ in texts]
    results = await asyncio.gather(*(bob.omemo.decrypt_message(stanza) for stanza in received))
    assert sorted(decrypted["body"] for decrypted, _ in results) == sorted(texts)
    # Exactly once: a second delivery gets the first result back, without decrypting again; once that
    # is forgotten (a restart), it is a DuplicateMessage.
    again, device = await bob.omemo.decrypt_message(received[0])
    assert again["body"] == results[0][0]["body"] and device == results[0][1]
    bob.omemo._decrypted.clear()
    with pytest.raises(DuplicateMessage):
        await bob.omemo.decrypt_message(received[0])


async def test_concurrent_duplicates_decrypt_once_even_if_the_first_is_cancelled(
    pair: Tuple[Client, Client],
) -> None:
    alice, bob = pair
    for text in ("one", "two"):
        await _send(alice, bob, _chat(alice, bob, text))
    first, second = await bob.next_message(), await bob.next_message()
    calls: List[str] = []
    decrypt_one = bob.omemo._decrypt_one

    async def counted(*args: Any) -> Any:
        calls.append("decrypt")
        await asyncio.sleep(0.05)  # still running when the duplicates arrive
        return await decrypt_one(*args)

    setattr(bob.omemo, "_decrypt_one", counted)  # noqa: B010 - counts the decryptions
    # The same stanza three times at once (archive, live, a second page): one decryption, one result.
    results = await asyncio.gather(*(bob.omemo.decrypt_message(first) for _ in range(3)))
    assert [r[0]["body"] for r in results] == ["one"] * 3 and len(calls) == 1
    # The first caller is cancelled while decrypting: the duplicate waiting for it decrypts it itself.
    task = asyncio.ensure_future(bob.omemo.decrypt_message(second))
    await asyncio.sleep(0.01)
    duplicate = asyncio.ensure_future(bob.omemo.decrypt_message(second))
    await asyncio.sleep(0.01)
    task.cancel()
    decrypted, _ = await duplicate
    assert decrypted["body"] == "two" and task.cancelled()


async def test_a_node_with_the_wrong_access_model_is_repaired(server: Prosody) -> None:
    n = next(_names)
    jid = server.register(f"dave{n}", "secret")
    # Before Dave's OMEMO client ever runs, his legacy device-list node exists with access_model=presence.
    pre = await connect_plain(server, jid)
    form = cast(Any, pre.plugin)["xep_0004"].make_form("submit")
    form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#node_config")
    form.add_field(var="pubsub#access_model", value="presence")
    await cast(Any, pre.plugin["xep_0060"]).create_node(pre.boundjid.bare, NODES[NSL], config=form)
    await pre.disconnect()
    dave = await connect(server, f"dave{n}")
    eve = await connect(server, f"eve{n}")
    try:
        # Eve (no presence subscription) can read his list: the node was reconfigured to open.
        manager = await eve.omemo.get_session_manager()
        await manager.refresh_device_list(NSL, jid)
        (info,) = await manager.get_device_information(jid)
        assert (NSL, True) in info.active
    finally:
        await disconnect(dave, eve)


def test_no_plaintext_in_the_servers_data(server: Prosody) -> None:
    # Every message text the tests above sent (they all start with these words) is nowhere on disk.
    data = b"".join(path.read_bytes() for path in server.data_files() if path.is_file())
    assert data, "the server stored nothing at all"
    for secret in (b"hello bob", b"while you were away", b"to both devices", b"legacy hello", b"echo this"):
        assert secret not in data


async def _start_peer(python: Path, server: Prosody, user: str, state: Path) -> asyncio.subprocess.Process:
    jid = server.register(user, "peerpass")
    peer = await asyncio.create_subprocess_exec(
        str(python),
        str(PEER),
        jid,
        "peerpass",
        server.host,
        str(server.port),
        str(server.cafile),
        str(state),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    await _expect(peer, "READY")
    return peer


async def _expect(peer: asyncio.subprocess.Process, prefix: str, timeout: float = 20) -> str:
    assert peer.stdout is not None
    seen: List[str] = []
    while True:
        line = (await asyncio.wait_for(peer.stdout.readline(), timeout)).decode(errors="replace").strip()
        if not line and peer.returncode is not None:
            raise AssertionError(f"the peer ended: {seen}")
        seen.append(line)
        if line.startswith(prefix):
            return line
        if line.startswith("ERROR") or line.startswith("Traceback"):
            raise AssertionError(f"the peer failed: {seen}")


async def _stop_peer(peer: asyncio.subprocess.Process) -> None:
    if peer.returncode is None:
        peer.terminate()
        try:
            await asyncio.wait_for(peer.wait(), 10)
        except asyncio.TimeoutError:
            peer.kill()
            await peer.wait()


async def test_legacy_with_slixmpp_omemo_both_ways(
    server: Prosody, slixmpp_omemo_python: Path, tmp_path: Path
) -> None:
    # slixmpp-omemo 2.2 announces OMEMO 2 but cannot read it: it is reached in legacy OMEMO only.
    n = next(_names)
    peer = await _start_peer(slixmpp_omemo_python, server, f"peer{n}", tmp_path / "peer.json")
    ours = await connect(server, f"ours{n}", namespaces=(NSL,))
    try:
        peer_jid = f"peer{n}@{server.domain}"
        await ours.omemo.refresh_device_lists(recipients(peer_jid), force_download=True)
        stanza = ours.make_message(mto=peer_jid, mtype="chat")
        stanza["body"] = "hello slixmpp-omemo"
        await _send_to(ours, peer_jid, stanza)
        assert "hello slixmpp-omemo" in await _expect(peer, "RECEIVED")
        await _expect(peer, "SENT 0")
        reply = await ours.next_message(timeout=15)
        assert ours.omemo.is_encrypted(reply) == {NSL}
        decrypted, device = await ours.omemo.decrypt_message(reply)
        assert decrypted["body"] == "echo: hello slixmpp-omemo" and device.bare_jid == peer_jid
    finally:
        await _stop_peer(peer)
        await disconnect(ours)


async def test_the_example_bot_talks_to_slixmpp_omemo(
    server: Prosody, slixmpp_omemo_python: Path, tmp_path: Path
) -> None:
    n = next(_names)
    bot_jid = server.register(f"legacybot{n}", "botpass")
    bot = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        bot_jid,
        "botpass",
        str(tmp_path / "bot.sqlite"),
        "--legacy-only",
        "--host",
        server.host,
        "--port",
        str(server.port),
        "--cafile",
        str(server.cafile),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    peer = await _start_peer(slixmpp_omemo_python, server, f"peer{n}", tmp_path / "peer.json")
    try:
        # The peer (slixmpp-omemo's own encrypt_message) writes to the bot; the bot echoes it (legacy);
        # the peer decrypts the echo.
        assert peer.stdin is not None
        for attempt in range(20):  # until the bot has published its OMEMO data
            peer.stdin.write(f"SEND {bot_jid} ping {attempt}\n".encode())
            await peer.stdin.drain()
            line = await _expect(peer, "SENT", timeout=15) if attempt < 19 else ""
            if line.startswith("SENT 0"):
                break
            await asyncio.sleep(0.5)
        received = await _expect(peer, "RECEIVED")
        assert bot_jid in received and "ping" in received
    finally:
        await _stop_peer(peer)
        bot.terminate()
        await bot.wait()


async def test_a_new_device_of_the_peer_appears(server: Prosody) -> None:
    n = next(_names)
    alice = await connect(server, f"alice{n}")
    bob = await connect(server, f"bob{n}", resource="phone")
    second = None
    try:
        await _send(alice, bob, _chat(alice, bob, "to the phone"))
        await bob.omemo.decrypt_message(await bob.next_message())
        # Bob starts a second device; Alice is subscribed to his device lists (she wrote to him), so the
        # server tells her, and her next message reaches both devices.
        second = await connect(server, f"bob{n}", resource="laptop")
        manager = await alice.omemo.get_session_manager()
        for _ in range(40):
            if len(await manager.get_device_information(bob.boundjid.bare)) == 2:
                break
            await asyncio.sleep(0.1)
        assert len(await manager.get_device_information(bob.boundjid.bare)) == 2
        await _send(alice, bob, _chat(alice, bob, "to both"))
        for device in (bob, second):
            decrypted, _ = await device.omemo.decrypt_message(await device.next_message())
            assert decrypted["body"] == "to both"
    finally:
        await disconnect(alice, bob, *([second] if second else []))


async def test_the_own_device_is_re_added_when_another_client_drops_it(server: Prosody) -> None:
    n = next(_names)
    alice = await connect(server, f"alice{n}", resource="phone")
    own = str((await (await alice.omemo.get_session_manager()).get_own_device_information())[0].device_id)
    other = await connect_plain(server, alice.boundjid.bare)
    try:
        # Another client of Alice's overwrites both device lists with lists that lack her device.
        for namespace, root in ((NS2, "devices"), (NSL, "list")):
            foreign = f"<{root} xmlns='{namespace}'><device id='42'/></{root}>"
            await _publish_raw(other, NODES[namespace], "current", foreign)
        for namespace in (NS2, NSL):
            for _ in range(40):  # the notification reaches Alice's client, which republishes
                (payload,) = await get_items(other, alice.boundjid.bare, NODES[namespace])
                ids = {element.get("id") for element in payload.iter(f"{{{namespace}}}device")}
                if own in ids:
                    break
                await asyncio.sleep(0.1)
            assert ids == {own, "42"}, (namespace, ids)
    finally:
        await other.disconnect()
        await disconnect(alice)


async def test_bad_input_from_the_network(
    pair: Tuple[Client, Client], caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = pair
    encrypted = await _send(alice, bob, _chat(alice, bob, "genuine"))
    received = await bob.next_message()
    # Two <encrypted> elements of one namespace: a defined error, nothing decrypted or stored.
    doubled = bob.make_message(mto=bob.boundjid.bare, mfrom=alice.boundjid, mtype="chat")
    element = received.xml.find(f"{{{NS2}}}encrypted")
    assert element is not None
    doubled.xml.extend([ET.fromstring(ET.tostring(element)), ET.fromstring(ET.tostring(element))])
    with pytest.raises(MalformedStanza, match="more than one"):
        await bob.omemo.decrypt_message(doubled)
    # No OMEMO element at all (an unknown namespace only).
    other = bob.make_message(mto=bob.boundjid.bare, mfrom=alice.boundjid, mtype="chat")
    ET.SubElement(other.xml, "{urn:xmpp:omemo:1}encrypted")
    assert bob.omemo.is_encrypted(other) == set()
    with pytest.raises(MalformedStanza):
        await bob.omemo.decrypt_message(other)
    # A malformed device-list notification is logged and skipped, not raised in the event handler.
    bad = cast(Any, Message)(
        bob,
        ET.fromstring(
            f"<message xmlns='jabber:client' from='{alice.boundjid.bare}' to='{bob.boundjid.bare}'>"
            "<event xmlns='http://jabber.org/protocol/pubsub#event'>"
            f"<items node='{NODES[NS2]}'><item id='current'><bundle xmlns='{NS2}'/></item></items>"
            "</event></message>"
        ),
    )
    with caplog.at_level("WARNING", logger="omemo_slixmpp"):
        await bob.omemo._on_pubsub_publish(bob.make_message(mto=bob.boundjid.bare))  # no node: ignored
        bob.event("pubsub_publish", bad)
        await asyncio.sleep(0.2)
    assert any("ignoring the urn:xmpp:omemo:2 device list" in r.getMessage() for r in caplog.records)
    # An error stanza is a bounce of a message sent earlier: refused with a defined error, not decrypted.
    bounce = cast(Any, Message)(bob, ET.fromstring(ET.tostring(received.xml)))
    bounce["type"] = "error"
    with pytest.raises(MalformedStanza, match="error"):
        await bob.omemo.decrypt_message(bounce)
    # The genuine message still decrypts after all of that.
    decrypted, _ = await bob.omemo.decrypt_message(received)
    assert decrypted["body"] == "genuine"
    assert encrypted is not None


async def _publish_raw(client: Any, node: str, item_id: str, payload: str) -> None:
    """Publishes ``payload`` (XML) as item ``item_id`` of the own ``node``, readable by anyone."""
    await publish(client, node, item_id, ET.fromstring(payload), {"access_model": "open", "max_items": "max"})


async def test_hostile_pep_items_give_defined_errors_and_leave_the_account_usable(
    server: Prosody, caplog: pytest.LogCaptureFixture
) -> None:
    n = next(_names)
    # Mallory's PEP, written by hand: a huge OMEMO 2 device list with an unusable entry, a legacy bundle
    # in the OMEMO 2 bundles node, a legacy device list with a negative id and a device without a bundle,
    # a legacy bundle that is not base64.
    mallory = server.register(f"mallory{n}", "secret")
    raw = await connect_plain(server, mallory)
    ids = "".join(f"<device id='{i}'/>" for i in range(1, 1501))
    await _publish_raw(raw, NODES[NS2], "current", f"<devices xmlns='{NS2}'>{ids}<device id='x'/></devices>")
    await _publish_raw(raw, f"{NS2}:bundles", "1", f"<bundle xmlns='{NSL}'><signedPreKeyPublic/></bundle>")
    legacy_ids = "<device id='7'/><device id='-1'/><device id='8'/>"
    await _publish_raw(raw, NODES[NSL], "current", f"<list xmlns='{NSL}'>{legacy_ids}</list>")
    not_base64 = f"<bundle xmlns='{NSL}'><identityKey>*</identityKey></bundle>"
    await _publish_raw(raw, f"{NSL}.bundles:7", "current", not_base64)
    await raw.disconnect()
    alice = await connect(server, f"alice{n}")
    bob = await connect(server, f"bob{n}")
    try:
        with caplog.at_level("INFO"):
            await alice.omemo.refresh_device_lists(recipients(mallory), force_download=True)
            stanza = alice.make_message(mto=mallory, mtype="chat")
            stanza["body"] = "to mallory"
            # No device of Mallory is usable: the defined exception of encrypt (python-omemo's), which
            # names the account.
            with pytest.raises(NoEligibleDevices) as raised:
                await alice.omemo.encrypt_message(stanza, recipients(mallory, bob.boundjid.bare))
            assert raised.value.bare_jids == frozenset({mallory})
        assert "names 1500 devices; using the first 1000" in caplog.text
        # The account still works, for Bob and for Mallory's next genuine device.
        await _send(alice, bob, _chat(alice, bob, "still fine"))
        decrypted, _ = await bob.omemo.decrypt_message(await bob.next_message())
        assert decrypted["body"] == "still fine"
    finally:
        await disconnect(alice, bob)


async def test_a_health_report_through_the_server(pair: Tuple[Client, Client]) -> None:
    alice, bob = pair
    await _send(alice, bob, _chat(alice, bob, "hello"))
    await bob.omemo.decrypt_message(await bob.next_message())
    report = await alice.omemo.get_health_report(bob.boundjid.bare)
    lists = [(e.namespace, e.readable, e.devices) for e in report.device_lists]
    assert lists == [(NS2, True, 1), (NSL, True, 1)]
    (device,) = report.devices
    assert dict(device.bundles) == {NS2: None, NSL: None} and not device.activity.stale
    text = format_report(report)
    assert f"OMEMO health of {bob.boundjid.bare}" in text and "bundle urn:xmpp:omemo:2: usable" in text
