"""``omemo-chat`` end to end: the installed console script, run as a subprocess against the real Prosody."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, List, Optional, cast

import pytest
from slixmpp.jid import JID

from omemo_slixmpp._pep import publish

from .clients import connect_plain
from .server import Prosody

NS2, NSL = "urn:xmpp:omemo:2", "eu.siacs.conversations.axolotl"
SCRIPT = Path(sys.executable).parent / "omemo-chat"
_names = itertools.count()


class Cli:
    """Runs ``omemo-chat`` for accounts of one test server, each with its own data directory."""

    def __init__(self, server: Prosody, directory: Path) -> None:
        self.server, self.directory = server, directory

    def account(self, name: str, password: str = "secret") -> str:
        return self.server.register(f"{name}{next(_names)}", password)

    def command(
        self, jid: str, *arguments: str, data: Optional[str] = None, cafile: bool = True
    ) -> List[str]:
        base = [str(SCRIPT), "--jid", jid, "--server", self.server.host, "--port", str(self.server.port)]
        if cafile:
            base += ["--cafile", str(self.server.cafile)]
        base += ["--data", str(self.directory / (data or JID(jid).user))]
        return base + list(arguments)

    def run(
        self,
        jid: str,
        *arguments: str,
        password: str = "secret",
        data: Optional[str] = None,
        cafile: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, OMEMO_CHAT_PASSWORD=password)
        command = self.command(jid, *arguments, data=data, cafile=cafile)
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=90, check=False)

    def start(self, jid: str, *arguments: str, data: Optional[str] = None) -> subprocess.Popen[str]:
        env = dict(os.environ, OMEMO_CHAT_PASSWORD="secret")
        command = self.command(jid, *arguments, data=data)
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def json(self, jid: str, *arguments: str, data: Optional[str] = None) -> Any:
        result = self.run(jid, *arguments, "--json", data=data)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


@pytest.fixture
def cli(server: Prosody, tmp_path: Path) -> Cli:
    if not SCRIPT.exists():
        pytest.fail(f"the console script is not installed: {SCRIPT} (run scripts/bootstrap.sh dev)")
    return Cli(server, tmp_path)


@pytest.mark.parametrize("namespace", ["omemo2", "legacy"])
def test_send_and_listen(cli: Cli, namespace: str) -> None:
    alice, bob = cli.account("alice"), cli.account("bob")
    assert cli.run(bob, "--namespace", namespace, "fingerprint").returncode == 0  # Bob's device is published
    listener = cli.start(bob, "--namespace", namespace, "listen", "--count", "1", "--timeout", "60", "--json")
    try:
        sent = cli.json(alice, "send", bob, "hello from the terminal")
        ((device,),) = [[d for d in sent["devices"] if d["jid"] == bob]]
        assert device["result"] == f"sent ({namespace})"
        out, err = listener.communicate(timeout=90)
    finally:
        if listener.poll() is None:
            listener.kill()
    assert listener.returncode == 0, err
    (line,) = out.strip().splitlines()
    message = json.loads(line)
    assert message["from"] == alice and message["namespace"] == namespace
    assert message["body"] == "hello from the terminal" and {"device", "trust"} <= set(message)


def test_text_from_standard_input_and_a_recipient_without_omemo(cli: Cli) -> None:
    alice, bob, plain = cli.account("alice"), cli.account("bob"), cli.account("plain")
    assert cli.run(bob, "fingerprint").returncode == 0
    env = dict(os.environ, OMEMO_CHAT_PASSWORD="secret")
    piped = subprocess.run(
        cli.command(alice, "send", bob),
        input="from stdin\n",
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert piped.returncode == 0 and "sent (omemo2)" in piped.stdout, piped.stderr
    nobody = cli.run(alice, "send", plain, "anyone there?")
    assert nobody.returncode == 5 and "cannot be reached with OMEMO" in nobody.stderr


def test_devices_fingerprint_and_trust(cli: Cli) -> None:
    alice, bob = cli.account("alice"), cli.account("bob")
    own = cli.json(bob, "fingerprint")
    assert own["trust_uri"].startswith(f"xmpp:{bob}?trust-message;encryption={NS2};trust=")
    (bob_device,) = own["devices"]
    qr = cli.run(bob, "fingerprint", "--qr")
    assert qr.returncode == 0 and "trust-message" in qr.stdout and "█" in qr.stdout
    listed = cli.json(alice, "devices", bob)
    (device,) = listed["devices"]
    assert device["device"] == bob_device["device"] and device["fingerprint"] == bob_device["fingerprint"]
    assert (
        len(device["fingerprint"].split()) == 8
        and device["active"]
        and device["namespaces"] == ["legacy", "omemo2"]
    )
    changed = cli.json(alice, "trust", bob, device["fingerprint"], "--level", "trusted")
    assert changed["trust"] == "TRUSTED"
    assert cli.json(alice, "devices", bob)["devices"][0]["trust"] == "TRUSTED"
    cli.json(alice, "trust", bob, str(device["device"]), "--level", "distrusted")
    assert cli.json(alice, "devices", bob)["devices"][0]["trust"] == "DISTRUSTED"
    undeliverable = cli.run(alice, "send", bob, "nobody may read this")  # Bob's only device is distrusted
    assert undeliverable.returncode == 6, undeliverable.stderr
    table = cli.run(alice, "devices", bob)
    assert table.returncode == 0 and device["fingerprint"] in table.stdout and "DISTRUSTED" in table.stdout
    assert cli.run(alice, "trust", bob, "12345", "--level", "trusted").returncode == 2


def test_cleanup_dry_run_and_for_real(cli: Cli) -> None:
    alice = cli.account("alice")
    assert cli.run(alice, "fingerprint", data="old-phone").returncode == 0  # a second device, then silent
    current = cli.json(alice, "devices")
    old = next(d["device"] for d in current["devices"] if d["session"] != "this device")
    dry = cli.json(alice, "cleanup", "--dry-run", "--days", "0")
    assert dry["dry_run"] and [row["device"] for row in dry["remove"]] == [old]
    assert {d["device"] for d in cli.json(alice, "devices")["devices"] if d["active"]} >= {old}
    done = cli.json(alice, "cleanup", "--days", "0")
    assert [row["device"] for row in done["remove"]] == [old]
    after = cli.json(alice, "devices")
    assert [d["device"] for d in after["devices"] if d["active"]] != [] and old not in [
        d["device"] for d in after["devices"] if d["active"]
    ]
    assert cli.json(alice, "cleanup", "--days", "0")["remove"] == []  # the current device is never proposed


async def _close_bundle_nodes(server: Prosody, jid: str, device_id: int) -> None:
    """The account's bundle nodes become readable by presence subscribers only (as some clients make them)."""
    client = await connect_plain(server, jid)
    try:
        pubsub = cast(Any, client.plugin)["xep_0060"]
        for node in (f"{NS2}:bundles", f"{NSL}.bundles:{device_id}"):
            form = cast(Any, client.plugin)["xep_0004"].make_form("submit")
            form.add_field(
                var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#node_config"
            )
            form.add_field(var="pubsub#access_model", value="presence")
            await pubsub.set_node_config(JID(jid), node, form)
    finally:
        await client.disconnect()


async def _devices_without_bundles(server: Prosody, jid: str) -> None:
    """Device lists that name a device which never published a bundle."""
    client = await connect_plain(server, jid)
    try:
        options = {"access_model": "open"}
        await publish(
            client,
            f"{NS2}:devices",
            "current",
            ET.fromstring(f"<devices xmlns='{NS2}'><device id='4242'/></devices>"),
            options,
        )
        await publish(
            client,
            f"{NSL}.devicelist",
            "current",
            ET.fromstring(f"<list xmlns='{NSL}'><device id='4242'/></list>"),
            options,
        )
    finally:
        await client.disconnect()


def test_diagnose_a_healthy_and_two_broken_contacts(cli: Cli, server: Prosody) -> None:
    alice, bob, carol, dave = (cli.account(n) for n in ("alice", "bob", "carol", "dave"))
    assert cli.run(bob, "fingerprint").returncode == 0
    healthy = cli.run(alice, "diagnose", bob)
    assert healthy.returncode == 0, healthy.stderr
    assert "OK logged in" in healthy.stdout and "bundle urn:xmpp:omemo:2: usable" in healthy.stdout
    carol_device = cli.json(carol, "fingerprint")["devices"][0]["device"]
    asyncio.run(_close_bundle_nodes(server, carol, carol_device))
    closed = cli.json(alice, "diagnose", carol)
    (device,) = closed["devices"]
    assert (
        set(device["bundles"].values()) <= {"bundle-not-found", "bundle-download-failed"}
        and device["bundles"]
    )
    asyncio.run(_devices_without_bundles(server, dave))
    missing = cli.run(alice, "diagnose", dave)
    # Prosody answers "forbidden" for a node that does not exist: no bundle reads as not readable.
    assert missing.returncode == 0 and "device 4242" in missing.stdout and "usable" not in missing.stdout
    assert "bundle-not-found" in missing.stdout or "bundle-download-failed" in missing.stdout


def test_login_and_tls_failures(cli: Cli) -> None:
    alice = cli.account("alice")
    wrong = cli.run(alice, "fingerprint", password="not the password")
    assert wrong.returncode == 3 and "login failed" in wrong.stderr
    untrusted = cli.run(alice, "fingerprint", cafile=False)  # the test server's CA is not in the system's
    assert untrusted.returncode == 4 and "TLS failed" in untrusted.stderr
    insecure = cli.run(alice, "--insecure-tls", "fingerprint", cafile=False)
    assert insecure.returncode == 0 and "NOT verified" in insecure.stdout + insecure.stderr


def test_no_password_without_a_terminal_and_python_m(cli: Cli) -> None:
    alice = cli.account("alice")
    env = {k: v for k, v in os.environ.items() if k != "OMEMO_CHAT_PASSWORD"}
    result = subprocess.run(
        cli.command(alice, "fingerprint"),
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "OMEMO_CHAT_PASSWORD" in result.stderr
    module = subprocess.run(
        [sys.executable, "-m", "omemo_slixmpp", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert module.returncode == 0 and "diagnose" in module.stdout


def test_listen_catches_up_what_arrived_while_offline(cli: Cli) -> None:
    alice, bob = cli.account("alice"), cli.account("bob")
    assert cli.run(bob, "fingerprint").returncode == 0  # Bob's device exists, then goes offline
    for text in ("first while away", "second while away"):
        assert cli.run(alice, "send", bob, text).returncode == 0
    caught = cli.run(bob, "listen", "--count", "2", "--timeout", "60", "--json")
    assert caught.returncode == 0, caught.stderr
    bodies = [json.loads(line)["body"] for line in caught.stdout.strip().splitlines()]
    assert bodies == ["first while away", "second while away"]


async def _make_room(server: Prosody, owner: str, member: str) -> str:
    """A members-only, non-anonymous room owned by ``owner`` with ``member`` as member."""
    assert server.muc_domain is not None
    room = f"cliroom{next(_names)}@{server.muc_domain}"
    client = await connect_plain(server, owner)
    try:
        client.register_plugin("xep_0045")
        muc = cast(Any, client.plugin)["xep_0045"]
        await muc.join_muc_wait(JID(room), "owner", timeout=20)
        await muc.set_affiliation(JID(room), "member", jid=JID(member))
    finally:
        await client.disconnect()
    return room


def test_send_to_a_group_chat(cli: Cli, server: Prosody) -> None:
    alice, bob = cli.account("alice"), cli.account("bob")
    bob_device = cli.json(bob, "fingerprint")["devices"][0]["device"]
    room = asyncio.run(_make_room(server, alice, bob))
    sent = cli.json(alice, "send", "--muc", room, "hello room")
    assert any(
        d["jid"] == bob and d["device"] == bob_device and d["result"].startswith("sent")
        for d in sent["devices"]
    )


def test_listen_reads_the_archive_first_and_shows_each_message_once(cli: Cli) -> None:
    alice, bob = cli.account("alice"), cli.account("bob")
    assert cli.run(bob, "fingerprint").returncode == 0
    for text in ("archived one", "archived two"):
        assert cli.run(alice, "send", bob, text).returncode == 0
    # Both are in the archive and in the offline store: read from the archive, shown once each.
    caught = cli.run(bob, "listen", "--history", "10", "--timeout", "5", "--json")
    assert caught.returncode == 0, caught.stderr
    bodies = [json.loads(line)["body"] for line in caught.stdout.strip().splitlines()]
    assert bodies == ["archived one", "archived two"]
