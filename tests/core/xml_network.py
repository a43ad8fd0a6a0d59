"""Session managers with both real backends on an in-memory XMPP that carries bundles as XML (parsed
again on every download, as over a real server), for the tests that feed the stack hostile or unusual
network data through the public API."""

from __future__ import annotations

from typing import Any

import oldmemo
import oldmemo.etree
import twomemo
import twomemo.etree
from omemo.storages import MemoryStorage
from omemo.testing import InMemoryXMPP
from omemo.trust import BTBVTrust

__all__ = ["NS2", "NSL", "create", "device_id", "network"]

NS2, NSL = twomemo.twomemo.NAMESPACE, oldmemo.oldmemo.NAMESPACE


def network() -> InMemoryXMPP:
    """An in-memory XMPP whose bundles are XML."""
    return InMemoryXMPP(bundle_codecs={NS2: twomemo.etree, NSL: oldmemo.etree})


async def create(net: InMemoryXMPP, jid: str) -> Any:
    """A session manager (both namespaces, BTBV, in memory) for ``jid``, out of history sync."""
    storage = MemoryStorage()
    cls = net.session_manager_class(jid, BTBVTrust)
    manager = await cls.create(
        [twomemo.Twomemo(storage), oldmemo.Oldmemo(storage)], storage, jid, None, BTBVTrust.UNDECIDED
    )
    await manager.after_history_sync()
    return manager


async def device_id(manager: Any) -> int:
    """The own device id of ``manager``."""
    own, _ = await manager.get_own_device_information()
    found: int = own.device_id
    return found
