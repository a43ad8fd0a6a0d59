"""An OMEMO echo bot in a few lines: answers every encrypted message with its own text, encrypted.

    .venv/bin/python examples/omemo_bot.py JID PASSWORD DATA.sqlite [--legacy-only]
                                           [--host H --port P --cafile CERT]

Speaks OMEMO 2 and legacy OMEMO (omemo_slixmpp.XEP_0384SQLite: SQLite storage, blind trust before
verification); --legacy-only for peers that announce OMEMO 2 but cannot read it (slixmpp-omemo 2.2).
The options after that are for test servers (a self-signed certificate).
"""

import argparse
import asyncio
import ssl
from typing import Any, cast

from slixmpp import ClientXMPP
from slixmpp.plugins import register_plugin
from slixmpp.stanza import Message

import omemo_slixmpp

register_plugin(omemo_slixmpp.XEP_0384SQLite)


class EchoBot(ClientXMPP):
    def __init__(self, jid: str, password: str, data_path: str, legacy_only: bool = False) -> None:
        super().__init__(jid, password)
        for plugin in ("xep_0030", "xep_0060", "xep_0163", "xep_0280", "xep_0334", "xep_0380"):
            self.register_plugin(plugin)
        config: dict[str, object] = {"data_path": data_path}
        if legacy_only:
            config["namespaces"] = ("eu.siacs.conversations.axolotl",)
        self.register_plugin("xep_0384", config, module=omemo_slixmpp)
        self.add_event_handler("session_start", lambda _: self.send_presence())
        self.add_event_handler("message", self.on_message)

    async def on_message(self, stanza: Message) -> None:
        omemo: omemo_slixmpp.XEP_0384 = cast(Any, self.plugin)["xep_0384"]
        if not omemo.is_encrypted(stanza):
            return
        message, _sender = await omemo.decrypt_message(stanza)
        if message["body"]:
            reply = self.make_message(mto=message["from"].bare, mtype="chat", mbody=message["body"])
            encrypted, _errors = await omemo.encrypt_message(reply, message["from"])
            if encrypted is not None:
                encrypted.send()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("jid")
    parser.add_argument("password")
    parser.add_argument("data_path")
    parser.add_argument("--legacy-only", action="store_true")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int, default=5222)
    parser.add_argument("--cafile")
    args = parser.parse_args()

    async def run() -> None:
        bot = EchoBot(args.jid, args.password, args.data_path, args.legacy_only)
        if args.cafile:
            bot.enable_direct_tls = False
            bot.ssl_context = ssl.create_default_context(cafile=args.cafile)
        bot.connect(args.host, args.port) if args.host else bot.connect()
        await bot.disconnected

    asyncio.run(run())


if __name__ == "__main__":
    main()
