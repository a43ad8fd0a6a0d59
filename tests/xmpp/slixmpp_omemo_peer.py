"""A slixmpp-omemo 2.2.0 echo peer, run by the end-to-end tests in that package's own venv.

    PYTHON slixmpp_omemo_peer.py JID PASSWORD HOST PORT CAFILE STATE.json

Answers every 1:1 OMEMO message with "echo: " and its body (unless the body starts with "echo"),
encrypted with slixmpp-omemo (which sends legacy OMEMO only); reports group-chat messages without
answering. Reads commands on stdin: "SEND JID TEXT", "JOIN ROOM NICK" (prints "JOINED ROOM"), "ROOM ROOM
JID,JID,... TEXT" (encrypted for those real JIDs). Prints "READY" when its OMEMO data is published, then
one line per event. Uses slixmpp-omemo's public API only
(black box; written here, nothing of it copied).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from pathlib import Path
from typing import Any, Dict, FrozenSet, Optional, cast

from slixmpp import JID, ClientXMPP
from slixmpp.plugins import register_plugin
from slixmpp.stanza import Message
from slixmpp_omemo import XEP_0384  # type: ignore[import-not-found]

from omemo.storage import Just, Maybe, Nothing, Storage
from omemo.types import DeviceInformation, JSONType

STATE: Dict[str, Path] = {}


class JSONStorage(Storage):
    """All data in one JSON file, written on every change."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = path
        self._data: Dict[str, JSONType] = json.loads(path.read_text()) if path.exists() else {}

    async def _load(self, key: str) -> Maybe[JSONType]:
        return Just(self._data[key]) if key in self._data else Nothing()

    async def _store(self, key: str, value: JSONType) -> None:
        self._data[key] = value
        self._path.write_text(json.dumps(self._data))

    async def _delete(self, key: str) -> None:
        self._data.pop(key, None)
        self._path.write_text(json.dumps(self._data))


class Plugin(XEP_0384):  # type: ignore[misc]
    """slixmpp-omemo's plugin with a JSON file and blind trust."""

    def plugin_init(self) -> None:
        self._storage = JSONStorage(STATE["path"])
        super().plugin_init()

    @property
    def storage(self) -> Storage:
        return self._storage

    @property
    def _btbv_enabled(self) -> bool:
        return True

    async def _devices_blindly_trusted(
        self, devices: FrozenSet[DeviceInformation], _id: Optional[str]
    ) -> None:
        return None

    async def _prompt_manual_trust(self, devices: FrozenSet[DeviceInformation], _id: Optional[str]) -> None:
        return None


register_plugin(Plugin)


def say(line: str) -> None:
    print(line, flush=True)


async def main(jid: str, password: str, host: str, port: int, cafile: str) -> None:
    client = ClientXMPP(jid, password)
    client.enable_direct_tls = False
    client.ssl_context = ssl.create_default_context(cafile=cafile)
    for plugin in ("xep_0030", "xep_0045", "xep_0060", "xep_0163", "xep_0280", "xep_0334", "xep_0380"):
        client.register_plugin(plugin)
    client.register_plugin("xep_0384", module=sys.modules[__name__])
    omemo: Any = cast(Any, client.plugin)["xep_0384"]

    async def send(to: str, text: str) -> None:
        message = client.make_message(mto=to, mtype="chat")
        message["body"] = text
        encrypted, errors = await omemo.encrypt_message(message, {message["to"]})
        if encrypted is not None:
            encrypted.send()
        say(f"SENT {len(errors)} errors")

    async def send_room(room: str, members: str, text: str) -> None:
        message = client.make_message(mto=room, mtype="groupchat")
        message["body"] = text
        encrypted, errors = await omemo.encrypt_message(message, {JID(jid) for jid in members.split(",")})
        if encrypted is not None:
            encrypted.send()
        say(f"SENT {len(errors)} errors")

    async def join(room: str, nick: str) -> None:
        await client.plugin["xep_0045"].join_muc_wait(JID(room), nick, timeout=20)
        say(f"JOINED {room}")

    async def on_message(stanza: Message) -> None:
        if stanza["type"] not in ("chat", "normal", "groupchat") or not omemo.is_encrypted(stanza):
            return
        try:
            message, device = await omemo.decrypt_message(stanza)
            say(f"RECEIVED {device.bare_jid} {message['body']!r}")
            if stanza["type"] == "groupchat":
                return
            if message["body"] and not message["body"].startswith("echo"):
                await send(stanza["from"].bare, f"echo: {message['body']}")
        except Exception as exc:  # report, keep running
            say(f"ERROR {type(exc).__name__}: {exc}")

    async def commands() -> None:
        reader = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
        )
        while line := (await reader.readline()).decode().strip():
            verb, rest = line.split(" ", 1)
            try:
                if verb == "SEND":
                    await send(*rest.split(" ", 1))
                elif verb == "JOIN":
                    await join(*rest.split(" ", 1))
                elif verb == "ROOM":
                    await send_room(*rest.split(" ", 2))
            except Exception as exc:  # report, keep running
                say(f"ERROR {type(exc).__name__}: {exc}")

    client.add_event_handler("message", on_message)
    client.add_event_handler("session_start", lambda _event: client.send_presence())
    client.add_event_handler("omemo_initialized", lambda _event: say("READY"))
    client.connect(host, port)
    task = asyncio.create_task(commands())
    await client.disconnected
    task.cancel()


if __name__ == "__main__":
    jid, password, host, port, cafile, state = sys.argv[1:7]
    STATE["path"] = Path(state)
    asyncio.run(main(jid, password, host, int(port), cafile))
