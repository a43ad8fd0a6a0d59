"""The omemo-stack demo on a real XMPP server: a throw-away Prosody on loopback, three devices, both
OMEMO namespaces, and the ``omemo-chat`` command line client.

The server is the one the test suite uses (``tests/xmpp/server.py``): installed with apt if missing,
started on a free port of 127.0.0.1 in a temporary directory, stopped by PID at the end. alice has two
devices: her phone speaks OMEMO 2 and legacy OMEMO, her old laptop legacy OMEMO only; bob has one. The
demo prints the fingerprints, one message from bob that reaches alice's two devices in ONE stanza (OMEMO 2
for the phone, legacy for the laptop), alice's answer with its copy for her laptop (carbons), what
``omemo-chat devices`` and ``omemo-chat diagnose`` say, and the stanza on the wire.

    python examples/xmpp_demo.py

Used by ``examples/demo.py`` (the README's first command); without a Prosody that one falls back to the
in-memory demo.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, cast

from rich.console import Console
from rich.table import Table
from slixmpp import ClientXMPP
from slixmpp.jid import JID
from slixmpp.plugins import register_plugin
from slixmpp.stanza import Message
from slixmpp.xmlstream import StanzaBase
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

import omemo_slixmpp
from omemo.session_manager import SessionManager

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from xmpp.server import Prosody, ServerUnavailable  # type: ignore[import-not-found, unused-ignore]  # noqa: E402

__all__ = ["ServerUnavailable", "run"]

NS2, NSL = "urn:xmpp:omemo:2", "eu.siacs.conversations.axolotl"
NAMES = {NS2: "OMEMO 2", NSL: "legacy OMEMO"}
PASSWORD = "demo-password"
PLUGINS = ("xep_0030", "xep_0045", "xep_0060", "xep_0163", "xep_0280", "xep_0334", "xep_0380")


class Device:
    """One logged-in device with the OMEMO plugin (SQLite state) and an inbox of every message."""

    def __init__(self, name: str, jid: str, namespaces: Tuple[str, ...], data: Path) -> None:
        self.name, self.namespaces = name, namespaces
        self.client = ClientXMPP(jid, PASSWORD)
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        for plugin in PLUGINS:
            self.client.register_plugin(plugin)
        config = {"data_path": str(data / f"{name.replace('/', '-')}.sqlite"), "namespaces": namespaces}
        register_plugin(omemo_slixmpp.XEP_0384SQLite)  # slixmpp's registry is global: right before use
        self.client.register_plugin("xep_0384", config, module=omemo_slixmpp)
        self.client.register_handler(
            Callback(f"demo {name}", MatchXPath("{jabber:client}message"), self._queue)
        )

    def _queue(self, stanza: StanzaBase) -> None:
        """Queues messages with encrypted content, own sent copies (carbons) included; empty OMEMO
        messages (key exchange completion) are the plugin's business."""
        if not isinstance(stanza, Message):
            return
        carbon = stanza.xml.find(
            "{urn:xmpp:carbons:2}sent/{urn:xmpp:forward:0}forwarded/{jabber:client}message"
        )
        message = carbon if carbon is not None else stanza.xml
        if any(True for ns in (NS2, NSL) for _ in message.iter(f"{{{ns}}}payload")):
            self.inbox.put_nowait(stanza)

    @property
    def omemo(self) -> Any:
        return cast(Any, self.client.plugin)["xep_0384"]

    async def start(self, server: Prosody) -> None:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.client.enable_direct_tls = False
        self.client.ssl_context = ssl.create_default_context(cafile=str(server.cafile))
        self.client.add_event_handler("session_start", lambda _e: self.client.send_presence())

        def initialized(_event: Any) -> None:
            if not ready.done():
                ready.set_result(None)

        self.client.add_event_handler("omemo_initialized", initialized)
        self.client.connect(server.host, server.port)
        await asyncio.wait_for(ready, 30)
        await cast(Any, self.client.plugin)["xep_0280"].enable()

    async def fingerprint(self) -> Tuple[int, str]:
        manager: SessionManager = await self.omemo.get_session_manager()
        own, _ = await manager.get_own_device_information()
        return own.device_id, " ".join(SessionManager.format_identity_key(own.identity_key))

    async def read(self) -> Tuple[str, str, str]:
        """Decrypts the next message: (text, sender, the namespace this device read it in)."""
        stanza = await asyncio.wait_for(self.inbox.get(), 20)
        message, device = await self.omemo.decrypt_message(stanza)
        present = {ns for ns in (NS2, NSL) for _ in stanza.xml.iter(f"{{{ns}}}encrypted")}
        namespace = next(ns for ns in self.namespaces if ns in present)
        return str(message["body"]), f"{device.bare_jid} ({device.device_id})", NAMES[namespace]


def shorten(xml: str, width: int = 24) -> str:
    """The stanza with long base64 texts cut, for printing."""
    return re.sub(rf">([A-Za-z0-9+/=]{{{width + 4},}})<", lambda m: f">{m.group(1)[:width]}…<", xml)


def cli(server: Prosody, jid: str, data: Path, *arguments: str) -> str:
    """Runs ``omemo-chat`` (the installed console script) against the demo server; returns its output."""
    script = Path(sys.executable).parent / "omemo-chat"
    command = [str(script), "--jid", jid, "--server", server.host, "--port", str(server.port)]
    command += ["--cafile", str(server.cafile), "--data", str(data), *arguments]
    env = dict(os.environ, OMEMO_CHAT_PASSWORD=PASSWORD, COLUMNS="150")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    return result.stdout + result.stderr


async def conversation(server: Prosody, data: Path, console: Console) -> Dict[str, float]:
    timings: Dict[str, float] = {}
    alice, bob = server.register("alice", PASSWORD), server.register("bob", PASSWORD)
    phone = Device("alice/phone", f"{alice}/phone", (NS2, NSL), data)
    laptop = Device("alice/laptop", f"{alice}/laptop", (NSL,), data)
    bob_device = Device("bob", f"{bob}/desk", (NS2, NSL), data)
    started = time.perf_counter()
    for device in (phone, laptop, bob_device):
        await device.start(server)
    timings["three devices logged in and published"] = time.perf_counter() - started

    table = Table("device", "speaks", "device id", "fingerprint", title="The devices")
    for device in (phone, laptop, bob_device):
        device_id, fingerprint = await device.fingerprint()
        table.add_row(
            device.name, " + ".join(NAMES[ns] for ns in device.namespaces), str(device_id), fingerprint
        )
    console.print(table)

    # bob writes to alice: ONE stanza, OMEMO 2 for her phone, legacy for her laptop.
    console.rule("bob -> alice: one stanza for both of her devices")
    stanza = bob_device.client.make_message(mto=JID(alice), mtype="chat")
    stanza["body"] = "Hi alice! Lunch at noon?"
    started = time.perf_counter()
    await bob_device.omemo.refresh_device_lists({JID(alice)}, force_download=True)
    encrypted, errors = await bob_device.omemo.encrypt_message(stanza, {JID(alice)})
    timings["first message (two key exchanges)"] = time.perf_counter() - started
    assert encrypted is not None and not errors, errors
    encrypted.send()
    wire = shorten(ET.tostring(encrypted.xml, encoding="unicode"))
    for device in (phone, laptop):
        text, sender, namespace = await device.read()
        console.print(
            f"  {device.name} decrypted from {sender} over [bold]{namespace}[/]: {text!r}", highlight=False
        )

    # alice answers from her phone: bob gets it, and her laptop reads the copy (carbons).
    console.rule("alice (phone) -> bob, and the copy for her laptop")
    await phone.omemo.refresh_device_lists({JID(alice)}, force_download=True)  # knows the laptop
    answer = phone.client.make_message(mto=JID(bob), mtype="chat")
    answer["body"] = "Sure, see you there."
    started = time.perf_counter()
    encrypted, errors = await phone.omemo.encrypt_message(answer, {JID(bob)})
    assert encrypted is not None and not errors, errors
    encrypted.send()
    text, sender, namespace = await bob_device.read()
    timings["an answer, encrypted, sent and decrypted"] = time.perf_counter() - started
    console.print(f"  bob decrypted from {sender} over [bold]{namespace}[/]: {text!r}", highlight=False)
    text, sender, namespace = await laptop.read()
    console.print(
        f"  alice/laptop read her own sent copy from {sender} over [bold]{namespace}[/]: {text!r}",
        highlight=False,
    )

    console.rule("On the wire (bob's first stanza, base64 cut)")
    console.print(wire, highlight=False, soft_wrap=True)

    for device in (phone, laptop, bob_device):
        await device.client.disconnect()

    console.rule("omemo-chat --jid bob@localhost devices alice@localhost")
    started = time.perf_counter()
    print(cli(server, bob, data / "cli-bob", "devices", alice), end="", flush=True)
    console.rule("omemo-chat --jid bob@localhost diagnose alice@localhost")
    print(cli(server, bob, data / "cli-bob", "diagnose", alice), end="", flush=True)
    timings["two omemo-chat runs"] = time.perf_counter() - started
    return timings


def run(console: Optional[Console] = None) -> int:
    """Runs the demo. Returns: 0.

    Raises:
        ServerUnavailable: Prosody cannot be installed or started here.
    """
    console = console or Console(width=None if sys.stdout.isatty() else 150)
    console.print("[bold]omemo-stack demo on a real XMPP server[/] (a private Prosody on loopback)")
    started = time.perf_counter()
    with Prosody() as server, tempfile.TemporaryDirectory(prefix="omemo-demo-") as scratch:
        console.print(
            f"Prosody running on {server.host}:{server.port} (pid {server.pid}), "
            f"started in {time.perf_counter() - started:.1f} s"
        )
        timings = asyncio.run(conversation(server, Path(scratch), console))
    console.rule("Timings on this machine")
    for what, seconds in timings.items():
        console.print(f"  {what}: {seconds * 1000:.0f} ms")
    console.print("The server was stopped and its data removed. On your own account:")
    console.print(
        "  omemo-chat --jid you@example.org devices friend@example.org   (docs/cli.md)", highlight=False
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
