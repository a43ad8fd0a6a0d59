"""slixmpp clients with our OMEMO plugin, for the end-to-end tests against a real Prosody."""

from __future__ import annotations

import asyncio
import ssl
import sys
from typing import Any, ClassVar, Dict, FrozenSet, List, Optional, Set, Tuple, Union, cast

from slixmpp import ClientXMPP
from slixmpp.plugins import register_plugin
from slixmpp.stanza import Message
from slixmpp.xmlstream import StanzaBase
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from omemo.storage import Storage
from omemo.storages import MemoryStorage
from omemo.types import DeviceInformation
from omemo_slixmpp import XEP_0384

from .server import Prosody

OMEMO = ("urn:xmpp:omemo:2", "eu.siacs.conversations.axolotl")
_SKIPPED = ("{http://jabber.org/protocol/pubsub#event}event", "{urn:xmpp:mam:2}result")

__all__ = ["Client", "TestPlugin", "connect", "connect_plain", "disconnect", "recipients"]


class TestPlugin(XEP_0384):
    """BTBV, a storage given in the plugin config (``storage_object``)."""

    default_config: ClassVar[Dict[str, Any]] = {**XEP_0384.default_config, "storage_object": None}

    @property
    def storage(self) -> Storage:
        storage: Storage = self.storage_object
        return storage

    @property
    def _btbv_enabled(self) -> bool:
        return True

    async def _prompt_manual_trust(
        self, manually_trusted: FrozenSet[DeviceInformation], identifier: Optional[str]
    ) -> None:
        return None


register_plugin(TestPlugin)


class Client(ClientXMPP):
    """A client that queues the messages it receives."""

    def __init__(self, jid: str, password: str) -> None:
        super().__init__(jid, password)
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.wire: List[str] = []
        # Every message, as slixmpp-omemo's example does: the "message" event fires only for stanzas
        # with a <body>, which carbons, archive results and empty OMEMO messages lack.
        self.register_handler(Callback("Messages", MatchXPath("{jabber:client}message"), self._received))

    def _received(self, stanza: StanzaBase) -> None:
        if not isinstance(stanza, Message):
            return
        # Not queued: PEP notifications, archive results (collected by the MAM plugin), and empty OMEMO
        # messages (the plugin takes care of them).
        if stanza["type"] not in ("chat", "normal", "groupchat"):
            return
        if any(stanza.xml.find(tag) is not None for tag in _SKIPPED):
            return
        elements = [(ns, e) for ns in OMEMO for e in stanza.xml.findall(f"{{{ns}}}encrypted")]
        payloads = [element.find(f"{{{ns}}}payload") for ns, element in elements]
        if payloads and all(payload is None for payload in payloads):
            return
        self.inbox.put_nowait(stanza)

    def send_raw(self, data: Union[str, bytes]) -> None:
        self.wire.append(data if isinstance(data, str) else data.decode("utf-8", "replace"))
        super().send_raw(data)

    @property
    def omemo(self) -> XEP_0384:
        plugin: XEP_0384 = cast(Any, self.plugin)["xep_0384"]
        return plugin

    async def next_message(self, timeout: float = 10.0) -> Message:
        return await asyncio.wait_for(self.inbox.get(), timeout)


async def connect(
    server: Prosody,
    user: str,
    storage: Optional[Storage] = None,
    password: str = "secret",
    namespaces: Tuple[str, ...] = ("urn:xmpp:omemo:2", "eu.siacs.conversations.axolotl"),
    resource: str = "",
) -> Client:
    """Log ``user`` in (registered first if needed) with our plugin; returns once OMEMO is set up."""
    jid = server.register(user, password)
    client = Client(f"{jid}/{resource}" if resource else jid, password)
    client.enable_direct_tls = False
    client.ssl_context = ssl.create_default_context(cafile=str(server.cafile))
    plugins = ("xep_0030", "xep_0059", "xep_0060", "xep_0163", "xep_0280", "xep_0313", "xep_0334", "xep_0380")
    for plugin in (*plugins, "xep_0199"):
        client.register_plugin(plugin)
    config = {"storage_object": storage or MemoryStorage(), "namespaces": namespaces}
    # slixmpp keeps one global registry per plugin name: whoever registered "xep_0384" last (a demo, the
    # CLI, imported in the same process) would be used. Ours, right before use.
    register_plugin(TestPlugin)
    client.register_plugin("xep_0384", config, module=sys.modules[__name__])
    ready = asyncio.get_running_loop().create_future()

    def initialized(_event: Any) -> None:
        if not ready.done():
            ready.set_result(True)

    client.add_event_handler("omemo_initialized", initialized)
    client.add_event_handler("session_start", lambda _event: client.send_presence())
    client.connect(server.host, server.port)
    await asyncio.wait_for(ready, 20)
    return client


async def disconnect(*clients: Client) -> None:
    for client in clients:
        await client.disconnect()


def recipients(*jids: str) -> Set[Any]:
    from slixmpp.jid import JID

    return {JID(jid) for jid in jids}


async def connect_plain(server: Prosody, jid: str, password: str = "secret") -> ClientXMPP:
    """A client without OMEMO (to prepare an account's PEP nodes by hand)."""
    client = ClientXMPP(jid, password)
    client.enable_direct_tls = False
    client.ssl_context = ssl.create_default_context(cafile=str(server.cafile))
    for plugin in ("xep_0004", "xep_0030", "xep_0060"):
        client.register_plugin(plugin)
    started = asyncio.get_running_loop().create_future()

    def on_start(_event: Any) -> None:
        if not started.done():
            started.set_result(True)

    client.add_event_handler("session_start", on_start)
    client.connect(server.host, server.port)
    await asyncio.wait_for(started, 20)
    return client
