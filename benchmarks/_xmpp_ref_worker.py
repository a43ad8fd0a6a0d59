"""The reference side of ``benchmarks/xmpp_bench.py``: slixmpp-omemo 2.2.0, run in ITS venv.

    REFERENCE_PYTHON -E -s benchmarks/_xmpp_ref_worker.py < request.json

The request (one JSON object on stdin): ``scenario`` (a name of ``_xmpp_loop.SCENARIOS``), ``host``,
``port``, ``cafile``, ``accounts`` (``[{"jid", "password"}, ...]``, registered by the driver), and the
scenario's parameters (``messages``, ``window``, ``warmup``, ``timeout``, ``server_pid``). Every account
logs in here (``_xmpp_loop.connect``, as the driver's clients do) with slixmpp-omemo's plugin on an
in-memory storage and blind trust; then the scenario of
``_xmpp_loop`` (the same code that measures our plugin) runs, and ONE JSON line goes to stdout:
``{"ok": true, "result": {...}, "versions": {...}}`` or ``{"ok": false, "error": "..."}``.

slixmpp-omemo is AGPL: it is used here as a black box, through its public API only (subclass the
plugin with a storage and the trust hooks, ``encrypt_message``, ``decrypt_message``, ``is_encrypted``,
the ``omemo_initialized`` event); nothing of it is copied. slixmpp-omemo always sends legacy OMEMO
(``eu.siacs.conversations.axolotl``), see docs/xmpp.md.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import platform
import sys
import traceback
from typing import Any, Dict, FrozenSet, List, Optional

from slixmpp.plugins import register_plugin
from slixmpp_omemo import XEP_0384  # type: ignore[import-not-found]

from _xmpp_loop import ACCOUNTS, SCENARIOS, Hooks, connect
from omemo.storage import Just, Maybe, Nothing, Storage
from omemo.types import DeviceInformation, JSONType

#: Distributions whose versions the worker reports.
DISTRIBUTIONS = ("slixmpp-omemo", "slixmpp", "omemo", "twomemo", "oldmemo", "cryptography", "protobuf")


class DictStorage(Storage):
    """The reference's ``Storage`` on a dict: nothing leaves the process (the base class's cache as
    python-omemo sets it by default)."""

    def __init__(self) -> None:
        super().__init__()
        self._data: Dict[str, JSONType] = {}

    async def _load(self, key: str) -> Maybe[JSONType]:
        return Just(self._data[key]) if key in self._data else Nothing()

    async def _store(self, key: str, value: JSONType) -> None:
        self._data[key] = value

    async def _delete(self, key: str) -> None:
        self._data.pop(key, None)


class Plugin(XEP_0384):  # type: ignore[misc]
    """slixmpp-omemo's plugin with an in-memory storage per account and blind trust."""

    def plugin_init(self) -> None:
        self._storage = DictStorage()
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


async def run(request: Dict[str, Any]) -> Dict[str, Any]:
    """Connects the accounts, runs the scenario, disconnects. Returns: the scenario's result."""
    scenario = request["scenario"]
    accounts: List[Dict[str, str]] = request["accounts"]
    needed = ACCOUNTS[scenario]
    if scenario == "room":
        needed = int(request.get("room_members", needed))
    if len(accounts) != needed:
        raise ValueError(f"{scenario} needs {needed} accounts, got {len(accounts)}")
    host, port, cafile = request["host"], int(request["port"]), request["cafile"]
    here = sys.modules[__name__]
    # slixmpp-omemo 2.2.0 does not decrypt empty OMEMO messages by itself: the application does.
    sides = [await connect(a["jid"], a["password"], host, port, cafile, here, {}, False) for a in accounts]
    try:
        return await SCENARIOS[scenario](sides, request, Hooks())
    finally:
        for side in sides:
            await side.client.disconnect()


def versions() -> Dict[str, str]:
    """Returns: the Python and package versions of this venv."""
    found = {"python": platform.python_version()}
    for name in DISTRIBUTIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def main() -> int:
    logging.basicConfig(level=logging.ERROR)
    try:
        request = json.loads(sys.stdin.read())
        result = asyncio.run(run(request))
    except Exception as exc:
        print(json.dumps({"ok": False, "error": f"{exc!r}\n{traceback.format_exc()}"}), flush=True)
        return 1
    print(json.dumps({"ok": True, "result": result, "versions": versions()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
