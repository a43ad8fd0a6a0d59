"""``XEP_0384SQLite``: the plugin ready to use, for bots and simple clients.

Its OMEMO data lives in one SQLite file (``data_path`` in the plugin config). New devices are trusted
blindly until a device of their account was verified (BTBV); after that, devices that need a decision
stay undecided (and get nothing) until the application calls ``set_trust`` on the session manager.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Dict, FrozenSet, Optional

from omemo.storage import Storage
from omemo.storages import SQLiteStorage
from omemo.types import DeviceInformation

from .plugin import XEP_0384

__all__ = ["XEP_0384SQLite"]

_log = logging.getLogger("omemo_slixmpp")


class XEP_0384SQLite(XEP_0384):  # noqa: N801 - slixmpp's plugin naming
    """The OMEMO plugin with SQLite storage and blind trust before verification.

    Plugin config: ``data_path`` (required: the SQLite file, created if missing), ``btbv`` (default
    True), and the options of :class:`~omemo_slixmpp.XEP_0384`.
    """

    default_config: ClassVar[Dict[str, Any]] = {**XEP_0384.default_config, "data_path": None, "btbv": True}

    def plugin_init(self) -> None:
        if not self.data_path:
            raise ValueError("XEP_0384SQLite needs 'data_path' in its plugin config: the SQLite file to use")
        self._storage = SQLiteStorage(Path(self.data_path))
        super().plugin_init()

    @property
    def storage(self) -> Storage:
        return self._storage

    @property
    def _btbv_enabled(self) -> bool:
        return bool(self.btbv)

    async def _devices_blindly_trusted(
        self, blindly_trusted: FrozenSet[DeviceInformation], identifier: Optional[str]
    ) -> None:
        for device in blindly_trusted:
            _log.info("trusting device %d of %s blindly (not verified)", device.device_id, device.bare_jid)

    async def _prompt_manual_trust(
        self, manually_trusted: FrozenSet[DeviceInformation], identifier: Optional[str]
    ) -> None:
        for device in manually_trusted:
            _log.warning(
                "device %d of %s needs a trust decision (its account has a verified device); it gets no"
                " messages until set_trust() decides",
                device.device_id,
                device.bare_jid,
            )
