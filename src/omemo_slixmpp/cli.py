"""``omemo-chat``: a command-line OMEMO client for real accounts, on the ``omemo_slixmpp`` plugin.

    omemo-chat --jid me@example.org send friend@example.org "hello"
    omemo-chat --jid me@example.org listen --count 1 --json
    omemo-chat --jid me@example.org devices friend@example.org
    omemo-chat --jid me@example.org diagnose friend@example.org

docs/cli.md describes every option. The password comes from ``--password-file``, the environment
variable ``OMEMO_CHAT_PASSWORD`` or a prompt, never from an argument. Exit codes: 0 done, 1 other
error, 2 bad arguments, 3 login failed, 4 TLS failed, 5 the recipient has no OMEMO, 6 nothing could be
delivered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import os
import ssl
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ContextManager, Dict, List, Optional, Sequence, Set, Tuple, cast

from rich.console import Console
from rich.table import Table
from slixmpp import ClientXMPP
from slixmpp.jid import JID
from slixmpp.plugins import register_plugin
from slixmpp.stanza import Message as Stanza
from slixmpp.xmlstream import StanzaBase
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from omemo.diagnostics import explain, explain_encryption_error, format_report
from omemo.session_manager import NoEligibleDevices, SessionManager
from omemo.types import DeviceInformation, OMEMOException

from ._pep import NS2, NSL
from .ready import XEP_0384SQLite

__all__ = ["EXIT", "main"]

#: Exit codes.
EXIT = {
    "ok": 0,
    "error": 1,
    "usage": 2,
    "login": 3,
    "tls": 4,
    "no_omemo": 5,
    "undelivered": 6,
}
NAMESPACES = {"omemo2": (NS2,), "legacy": (NSL,), "both": (NS2, NSL)}
SHORT = {NS2: "omemo2", NSL: "legacy"}
PASSWORD_VARIABLE = "OMEMO_CHAT_PASSWORD"
TRUST_LEVELS = {"trusted": "TRUSTED", "distrusted": "DISTRUSTED", "undecided": "UNDECIDED"}
PLUGINS = ("xep_0030", "xep_0045", "xep_0059", "xep_0060", "xep_0163", "xep_0280", "xep_0313", "xep_0334")
CONNECT_TIMEOUT = 30.0
DAY = 86400.0


class Failure(Exception):
    """A failure that ends the command with an exit code and a message for the user."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- arguments ----------------------------------------------------------------------------------------


def default_data_directory() -> Path:
    """The per-user data directory: ``$XDG_DATA_HOME/omemo-chat`` (``~/.local/share/omemo-chat``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "omemo-chat"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omemo-chat", description="OMEMO (XEP-0384) from the terminal, for real XMPP accounts."
    )
    parser.add_argument("--jid", required=True, help="the account (bare JID, or with a resource)")
    parser.add_argument("--password-file", type=Path, help="read the password from this file (first line)")
    parser.add_argument("--server", help="host to connect to (default: DNS SRV of the JID's domain)")
    parser.add_argument("--port", type=int, help="port (default 5222 with --server)")
    parser.add_argument("--cafile", type=Path, help="trust this CA (PEM) for the server's certificate")
    parser.add_argument(
        "--insecure-tls",
        action="store_true",
        help="do NOT verify the server's certificate (anyone on the path can read the login and metadata)",
    )
    parser.add_argument("--data", type=Path, help=f"state directory (default {default_data_directory()})")
    parser.add_argument(
        "--namespace",
        choices=sorted(NAMESPACES),
        default="both",
        help="OMEMO versions to speak (default both: each device gets the best it supports, OMEMO 2 first)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log XMPP (-vv: debug)")
    # --json and -v also after the subcommand (omemo-chat listen --json).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)

    send = commands.add_parser("send", parents=[common], help="encrypt and send a message")
    send.add_argument("to", help="the recipient's JID (or the room's with --muc)")
    send.add_argument("text", nargs="?", help="the text (default: read standard input)")
    send.add_argument("--muc", action="store_true", help="TO is a group chat (members-only, non-anonymous)")
    send.add_argument("--nick", help="nickname in the room (default: the JID's local part)")

    listen = commands.add_parser("listen", parents=[common], help="print decrypted messages as they arrive")
    listen.add_argument("--count", type=int, help="stop after this many messages")
    listen.add_argument("--timeout", type=float, help="stop after this many seconds")
    listen.add_argument("--history", type=int, default=0, help="also read the last N archived messages first")

    devices = commands.add_parser("devices", parents=[common], help="a table of an account's devices")
    devices.add_argument("who", nargs="?", help="the account (default: your own)")

    fingerprint = commands.add_parser(
        "fingerprint", parents=[common], help="your devices' fingerprints and a trust URI"
    )
    fingerprint.add_argument("--qr", action="store_true", help="also print the URI as a QR code")

    trust = commands.add_parser("trust", parents=[common], help="set the trust in a device")
    trust.add_argument("who", help="the device's account")
    trust.add_argument("device", help="the device id, or its fingerprint (hex, spaces allowed)")
    trust.add_argument("--level", choices=sorted(TRUST_LEVELS), required=True)

    cleanup = commands.add_parser(
        "cleanup", parents=[common], help="remove your long-silent devices from your device lists"
    )
    cleanup.add_argument("--dry-run", action="store_true", help="only show what would be removed")
    cleanup.add_argument(
        "--days", type=float, default=90.0, help="silent for at least this long (default 90)"
    )

    diagnose = commands.add_parser(
        "diagnose", parents=[common], help="check step by step why OMEMO with an account may fail"
    )
    diagnose.add_argument("who", help="the account")
    return parser


def read_password(args: argparse.Namespace, console: Console) -> str:
    if args.password_file is not None:
        try:
            first: str = args.password_file.read_text(encoding="utf-8").splitlines()[0]
            return first
        except (OSError, IndexError) as exc:
            raise Failure("usage", f"cannot read a password from {args.password_file}: {exc}") from None
    from_environment = os.environ.get(PASSWORD_VARIABLE)
    if from_environment:
        return from_environment
    if not sys.stdin.isatty():
        raise Failure(
            "usage", f"no password: use --password-file or {PASSWORD_VARIABLE} (no terminal to ask)"
        )
    return getpass.getpass(f"Password for {args.jid}: ")


# -- the connection -----------------------------------------------------------------------------------


class Connection:
    """A logged-in account with the OMEMO plugin (SQLite state in the data directory)."""

    def __init__(self, args: argparse.Namespace, password: str, console: Console) -> None:
        self.args, self.console = args, console
        data = args.data or default_data_directory()
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        bare = JID(args.jid).bare
        self.client = ClientXMPP(args.jid, password)
        self.client.ssl_context = self._ssl_context()
        for plugin in PLUGINS:
            self.client.register_plugin(plugin)
        config = {"data_path": str(data / f"{bare}.sqlite"), "namespaces": NAMESPACES[args.namespace]}
        register_plugin(XEP_0384SQLite)  # slixmpp's plugin registry is global: right before use
        self.client.register_plugin("xep_0384", config, module=sys.modules[__name__])
        self.inbox: asyncio.Queue[Stanza] = asyncio.Queue()
        self.client.register_handler(
            Callback("omemo-chat", MatchXPath("{jabber:client}message"), self._queue)
        )

    def _ssl_context(self) -> ssl.SSLContext:
        if self.args.insecure_tls:
            self.console.print(
                "[bold red]WARNING: --insecure-tls: the server's certificate is NOT verified. Anyone on the"
                " network path can impersonate the server, read your password and every stanza's"
                " metadata.[/]",
                highlight=False,
            )
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        if self.args.cafile is not None:
            return ssl.create_default_context(cafile=str(self.args.cafile))
        return ssl.create_default_context()

    def _queue(self, stanza: StanzaBase) -> None:
        if isinstance(stanza, Stanza) and stanza["type"] in ("chat", "normal", "groupchat"):
            self.inbox.put_nowait(stanza)

    @property
    def omemo(self) -> XEP_0384SQLite:
        plugin: XEP_0384SQLite = cast(Any, self.client.plugin)["xep_0384"]
        return plugin

    async def manager(self) -> SessionManager:
        return await self.omemo.get_session_manager()

    async def __aenter__(self) -> Connection:
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[None] = loop.create_future()

        def finish(error: Optional[Failure]) -> None:
            if not outcome.done():
                if error is None:
                    outcome.set_result(None)
                else:
                    outcome.set_exception(error)

        self.client.add_event_handler("session_start", lambda _event: self.client.send_presence())
        self.client.add_event_handler("omemo_initialized", lambda _event: finish(None))
        self.client.add_event_handler(
            "failed_all_auth", lambda _event: finish(Failure("login", "login failed: wrong JID or password"))
        )
        self.client.add_event_handler(
            "ssl_invalid_chain",
            lambda error: finish(
                Failure("tls", f"TLS failed: the server's certificate is not trusted ({error}); use --cafile")
            ),
        )
        self.client.add_event_handler(
            "connection_failed", lambda error: finish(Failure("error", f"cannot connect: {error}"))
        )
        if self.args.server:
            self.client.enable_direct_tls = False
            self.client.connect(self.args.server, self.args.port or 5222)
        else:
            self.client.connect()
        try:
            with self.status(f"Connecting as {self.args.jid}..."):
                await asyncio.wait_for(outcome, CONNECT_TIMEOUT)
        except asyncio.TimeoutError:
            await self._close()
            raise Failure("error", f"no connection within {CONNECT_TIMEOUT:.0f} s") from None
        except Failure:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._close()

    async def _close(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError, OSError):
            await asyncio.wait_for(self.client.disconnect(), 5)

    def status(self, text: str) -> ContextManager[Any]:
        """A progress indication while waiting on the network (only on a terminal)."""
        if self.console.is_terminal and not self.args.json:
            return self.console.status(text)
        return nullcontext()


# -- output helpers -------------------------------------------------------------------------------------


def fingerprint(identity_key: bytes) -> str:
    return " ".join(SessionManager.format_identity_key(identity_key))


def emit(console: Console, args: argparse.Namespace, document: Any, table: Optional[Table] = None) -> None:
    if args.json:
        print(json.dumps(document), flush=True)
    elif table is not None:
        console.print(table)


async def _sessions(manager: SessionManager, device: DeviceInformation) -> str:
    lengths = await manager.get_sending_chain_length(device)
    spoken = [SHORT.get(ns, ns) for ns, length in sorted(lengths.items()) if length is not None]
    return ", ".join(spoken) or "none"


# -- commands ---------------------------------------------------------------------------------------------


async def cmd_send(connection: Connection, args: argparse.Namespace) -> int:
    text = args.text if args.text is not None else sys.stdin.read()
    if not text.strip():
        raise Failure("usage", "nothing to send (no TEXT and nothing on standard input)")
    client = connection.client
    to = JID(args.to)
    if args.muc:
        nick = args.nick or JID(args.jid).user
        with connection.status(f"Joining {to.bare}..."):
            await cast(Any, client.plugin)["xep_0045"].join_muc_wait(JID(to.bare), nick, timeout=20)
    stanza = client.make_message(
        mto=JID(to.bare) if args.muc else to, mtype="groupchat" if args.muc else "chat"
    )
    stanza["body"] = text.rstrip("\n")
    try:
        with connection.status("Encrypting..."):
            encrypted, errors = await connection.omemo.encrypt_message(stanza, {JID(to.bare)})
    except NoEligibleDevices as exc:
        manager = await connection.manager()
        known = await manager.get_device_information(to.bare)
        code = "no_omemo" if not known else "undelivered"
        raise Failure(
            code, f"{to.bare} cannot be reached with OMEMO: {explain(exc).advice} ({exc})"
        ) from None
    delivered = _addressed(encrypted, to.bare) if encrypted is not None else []
    if encrypted is not None:
        encrypted.send()
    rows = [{"jid": jid, "device": device, "result": f"sent ({ns})"} for jid, device, ns in sorted(delivered)]
    for error in sorted(errors, key=lambda e: (e.bare_jid, e.device_id)):
        diagnosis = explain_encryption_error(error)
        rows.append(
            {
                "jid": error.bare_jid,
                "device": error.device_id,
                "result": diagnosis.reason.value,
                "advice": diagnosis.advice,
            }
        )
    table = Table("account", "device", "result", title=f"Message to {to.bare}")
    for row in rows:
        table.add_row(str(row["jid"]), str(row["device"] or "-"), str(row["result"]))
    emit(connection.console, args, {"to": to.bare, "devices": rows}, table)
    if encrypted is None:
        raise Failure("undelivered", "nobody could read the message: it was not sent")
    return EXIT["ok"]


def _addressed(encrypted: Stanza, recipient: str) -> List[Tuple[str, int, str]]:
    """Who an encrypted stanza has keys for: (JID, device, namespace). OMEMO 2 names the JIDs; legacy
    keys name devices only (shown under the recipient, or the own JID for own device ids)."""
    found: List[Tuple[str, int, str]] = []
    for keys in encrypted.xml.iter(f"{{{NS2}}}keys"):
        for key in keys.iter(f"{{{NS2}}}key"):
            found.append((keys.get("jid", recipient), int(key.get("rid", "0")), SHORT[NS2]))
    for key in encrypted.xml.iter(f"{{{NSL}}}key"):
        found.append((recipient, int(key.get("rid", "0")), SHORT[NSL]))
    return sorted(found)


async def cmd_listen(connection: Connection, args: argparse.Namespace) -> int:
    omemo = connection.omemo
    manager = await connection.manager()
    seen = 0
    shown: Set[Tuple[str, str]] = set()
    deadline = None if args.timeout is None else time.monotonic() + args.timeout

    async def show(stanza: Stanza) -> bool:
        nonlocal seen
        if not omemo.is_encrypted(stanza) and stanza.xml.find("{urn:xmpp:mam:2}result") is None:
            return False
        try:
            message, device = await omemo.decrypt_message(stanza)
        except (OMEMOException, ValueError) as exc:
            diagnosis = explain(exc)
            connection.console.print(
                f"[yellow]could not decrypt a message: {diagnosis.reason.value}: {diagnosis.advice}[/]"
            )
            return False
        if not message["body"]:
            return False
        # The same message from the archive and live (offline delivery) is shown once.
        identity = (device.bare_jid, str(message["id"] or message["origin_id"] or id(stanza)))
        if identity in shown:
            return False
        shown.add(identity)
        present = {ns for ns in (NS2, NSL) if next(stanza.xml.iter(f"{{{ns}}}encrypted"), None) is not None}
        namespace = next((ns for ns in omemo.config["namespaces"] if ns in present), NSL)
        trust = next(
            (
                d.trust_level_name
                for d in await manager.get_device_information(device.bare_jid)
                if d.device_id == device.device_id
            ),
            device.trust_level_name,
        )
        document = {
            "from": device.bare_jid,
            "device": device.device_id,
            "namespace": SHORT.get(namespace, namespace),
            "trust": trust,
            "body": message["body"],
        }
        if args.json:
            print(json.dumps(document), flush=True)
        else:
            origin = f"({device.device_id}, {document['namespace']}, {trust})"
            connection.console.print(
                f"[bold]{device.bare_jid}[/] {origin}: {message['body']}", highlight=False
            )
        seen += 1
        return True

    if args.history:
        async with omemo.history_sync():
            mam = cast(Any, connection.client.plugin)["xep_0313"]
            results = [result async for result in mam.iterate(reverse=True, total=args.history)]
            for result in reversed(results):
                await show(result)
                if args.count is not None and seen >= args.count:
                    return EXIT["ok"]
    while args.count is None or seen < args.count:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            break
        try:
            stanza = await asyncio.wait_for(connection.inbox.get(), remaining)
        except asyncio.TimeoutError:
            break
        await show(stanza)
    return EXIT["ok"]


async def cmd_devices(connection: Connection, args: argparse.Namespace) -> int:
    manager = await connection.manager()
    who = JID(args.who).bare if args.who else connection.client.boundjid.bare
    with connection.status(f"Reading the device lists of {who}..."):
        await connection.omemo.refresh_device_lists({JID(who)}, force_download=True)
        devices = sorted(await manager.get_device_information(who), key=lambda d: d.device_id)
        own, _ = await manager.get_own_device_information()
        rows: List[Dict[str, Any]] = []
        for device in devices:
            active = sorted(SHORT.get(ns, ns) for ns, flag in device.active if flag)
            rows.append(
                {
                    "device": device.device_id,
                    "label": device.label,
                    "namespaces": active,
                    "fingerprint": fingerprint(device.identity_key),
                    "trust": device.trust_level_name,
                    "active": bool(active),
                    "session": "this device"
                    if device.device_id == own.device_id and who == own.bare_jid
                    else await _sessions(manager, device),
                }
            )
    table = Table(
        "device",
        "label",
        "namespaces",
        "fingerprint",
        "trust",
        "active",
        "session",
        title=f"Devices of {who}",
    )
    for row in rows:
        table.add_row(
            str(row["device"]),
            row["label"] or "",
            ", ".join(row["namespaces"]),
            row["fingerprint"],
            row["trust"],
            "yes" if row["active"] else "no",
            row["session"],
        )
    emit(connection.console, args, {"jid": who, "devices": rows}, table)
    if not rows:
        raise Failure("no_omemo", f"{who} has no OMEMO devices (or its device lists are not readable)")
    return EXIT["ok"]


def trust_uri(jid: str, identity_keys: Sequence[bytes]) -> str:
    """A XEP-0450 trust message URI for ``identity_keys`` (Base16), to scan with another client."""
    trusted = "".join(f";trust={key.hex()}" for key in identity_keys)
    return f"xmpp:{jid}?trust-message;encryption={NS2}{trusted}"


async def cmd_fingerprint(connection: Connection, args: argparse.Namespace) -> int:
    manager = await connection.manager()
    own, others = await manager.get_own_device_information()
    devices = [own, *sorted((d for d in others if d.device_id != own.device_id), key=lambda d: d.device_id)]
    uri = trust_uri(own.bare_jid, [own.identity_key])
    rows: List[Dict[str, Any]] = [
        {
            "device": d.device_id,
            "this": d.device_id == own.device_id,
            "fingerprint": fingerprint(d.identity_key),
            "trust": d.trust_level_name,
        }
        for d in devices
    ]
    table = Table("device", "", "fingerprint", "trust", title=f"Fingerprints of {own.bare_jid}")
    for row in rows:
        table.add_row(
            str(row["device"]), "this device" if row["this"] else "", row["fingerprint"], row["trust"]
        )
    emit(connection.console, args, {"jid": own.bare_jid, "devices": rows, "trust_uri": uri}, table)
    if not args.json:
        connection.console.print(f"Trust URI (XEP-0450): {uri}", highlight=False, soft_wrap=True)
        if args.qr:
            import segno

            segno.make(uri, error="m").terminal(compact=True)
    return EXIT["ok"]


async def cmd_trust(connection: Connection, args: argparse.Namespace) -> int:
    manager = await connection.manager()
    who = JID(args.who).bare
    await connection.omemo.refresh_device_lists({JID(who)}, force_download=True)
    wanted = args.device.replace(" ", "").lower()
    matches = [
        d
        for d in await manager.get_device_information(who)
        if str(d.device_id) == wanted or fingerprint(d.identity_key).replace(" ", "") == wanted
    ]
    if len(matches) != 1:
        raise Failure("usage", f"no single device {args.device!r} of {who} (see: omemo-chat devices {who})")
    (device,) = matches
    await manager.set_trust(who, device.identity_key, TRUST_LEVELS[args.level])
    document = {
        "jid": who,
        "device": device.device_id,
        "fingerprint": fingerprint(device.identity_key),
        "trust": TRUST_LEVELS[args.level],
    }
    if args.json:
        print(json.dumps(document), flush=True)
    else:
        connection.console.print(
            f"device {device.device_id} of {who} ({document['fingerprint']}) is now {document['trust']}",
            highlight=False,
        )
    return EXIT["ok"]


async def cmd_cleanup(connection: Connection, args: argparse.Namespace) -> int:
    manager = await connection.manager()
    with connection.status("Reading your device lists..."):
        await connection.omemo.refresh_device_lists(
            {JID(connection.client.boundjid.bare)}, force_download=True
        )
        proposed = sorted(
            await manager.propose_own_device_cleanup(args.days * DAY), key=lambda a: a.device_id
        )
    now = time.time()
    rows = [
        {
            "device": a.device_id,
            "silent_days": None
            if a.silent_since() is None
            else round((now - (a.silent_since() or now)) / DAY, 1),
        }
        for a in proposed
    ]
    table = Table(
        "device", "silent (days)", title="Devices to remove" + (" (dry run)" if args.dry_run else "")
    )
    for row in rows:
        table.add_row(str(row["device"]), str(row["silent_days"]))
    emit(connection.console, args, {"dry_run": args.dry_run, "remove": rows}, table)
    if not proposed:
        if not args.json:
            connection.console.print(
                f"nothing to remove: no device of yours has been silent for {args.days:g} days"
            )
        return EXIT["ok"]
    if not args.dry_run:
        with connection.status("Publishing your device lists..."):
            await manager.remove_own_devices(frozenset(a.device_id for a in proposed), args.days * DAY)
        if not args.json:
            connection.console.print(f"removed {len(proposed)} device(s) from your device lists")
    return EXIT["ok"]


async def cmd_diagnose(connection: Connection, args: argparse.Namespace) -> int:
    who = JID(args.who).bare
    with connection.status(f"Checking {who}..."):
        report = await connection.omemo.get_health_report(who)
    if args.json:
        print(json.dumps(_report_document(report)), flush=True)
    else:
        verified = "not verified (--insecure-tls)" if connection.args.insecure_tls else "verified"
        connection.console.print(
            f"[green]OK[/] logged in as {connection.client.boundjid} (TLS {verified})", highlight=False
        )
        connection.console.print(format_report(report), highlight=False)
    healthy = any(entry.readable and entry.devices for entry in report.device_lists)
    if not healthy:
        raise Failure("no_omemo", f"{who} has no readable OMEMO device list")
    return EXIT["ok"]


def _report_document(report: Any) -> Dict[str, Any]:
    return {
        "jid": report.bare_jid,
        "device_lists": [
            {
                "namespace": SHORT.get(e.namespace, e.namespace),
                "readable": e.readable,
                "devices": e.devices,
                "problem": None if e.error is None else explain(e.error).reason.value,
            }
            for e in report.device_lists
        ],
        "devices": [
            {
                "device": d.device_id,
                "trust": None if d.information is None else d.information.trust_level_name,
                "stale": d.activity.stale,
                "unanswered": dict(d.activity.unanswered),
                "bundles": {
                    SHORT.get(ns, ns): None if problem is None else explain(problem).reason.value
                    for ns, problem in d.bundles
                },
            }
            for d in report.devices
        ],
    }


COMMANDS = {
    "send": cmd_send,
    "listen": cmd_listen,
    "devices": cmd_devices,
    "fingerprint": cmd_fingerprint,
    "trust": cmd_trust,
    "cleanup": cmd_cleanup,
    "diagnose": cmd_diagnose,
}


async def run(args: argparse.Namespace, password: str, console: Console) -> int:
    async with Connection(args, password, console) as connection:
        return await COMMANDS[args.command](connection, args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # Wide enough for fingerprints when the output is not a terminal (files, pipes, tests).
    console = Console(stderr=args.json, width=None if sys.stdout.isatty() else 160)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(
        level=level if args.verbose else logging.CRITICAL, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        password = read_password(args, console)
        return asyncio.run(run(args, password, console))
    except Failure as failure:
        Console(stderr=True).print(f"[bold red]omemo-chat:[/] {failure}", highlight=False)
        return EXIT[failure.code]
    except KeyboardInterrupt:
        return EXIT["error"]
