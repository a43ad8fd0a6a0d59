"""Group chats (XEP-0045) for the OMEMO plugin: who the members of a room are, who sent a room message.

OMEMO in a room encrypts for the real JIDs of its owners, admins and members, online or not, so it
needs a room that shows real JIDs (non-anonymous) and has a fixed member list (members-only). A room
that is not both is refused with :class:`RoomNotSuitable` rather than encrypted for nobody.

The member list is read from the room's affiliation lists. Rooms tell occupants about changes of
occupants' affiliations (presence), but not about changes of accounts that are not in the room, so the
lists are read again before a message unless the last read is younger than ``max_age`` seconds
(default 0: every message; a removed member must not get the keys of the next one).
"""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from typing import Any, Dict, FrozenSet, Optional, Set, Tuple

from slixmpp.jid import JID

from omemo.types import OMEMOException

__all__ = ["MUC_USER", "RoomNotSuitable", "Rooms", "UnknownOccupant"]

MUC_USER = "http://jabber.org/protocol/muc#user"
#: Affiliations whose holders get the keys of room messages.
MEMBER_AFFILIATIONS = ("owner", "admin", "member")
#: Status codes of a room message that announce a configuration change (XEP-0045 §10.2.1): what made a
#: room suitable may have changed.
_CONFIGURATION_CHANGED = {"104", "170", "171", "172", "173", "174"}


class RoomNotSuitable(OMEMOException, ValueError):
    """A room cannot carry OMEMO messages: it is not members-only, or it does not show real JIDs
    (semi-anonymous), or its member list cannot be read. The message says which, and what to change."""


class UnknownOccupant(OMEMOException, ValueError):
    """The real JID of the sender of a room message is not known (the occupant left before its message
    was handled, or the room does not show real JIDs), so the message cannot be decrypted."""


class Rooms:
    """The rooms this account writes to: suitability, member lists (cached), occupants' real JIDs."""

    def __init__(self, xmpp: Any, max_age: float = 0.0) -> None:
        self._xmpp = xmpp
        self.max_age = max_age
        #: room -> (when read, affiliation by real bare JID)
        self._members: Dict[str, Tuple[float, Dict[str, str]]] = {}
        self._suitable: Set[str] = set()

    async def members(self, room: str) -> FrozenSet[str]:
        """The real bare JIDs of the room's owners, admins and members (this account included).

        Raises:
            RoomNotSuitable: the room is not members-only and non-anonymous, or its lists cannot be read.
        """
        await self._check(room)
        cached = self._members.get(room)
        if cached is None or time.monotonic() - cached[0] > self.max_age:
            cached = await self._read(room)
        return frozenset(jid for jid, affiliation in cached[1].items() if affiliation in MEMBER_AFFILIATIONS)

    async def _check(self, room: str) -> None:
        if room in self._suitable:
            return
        try:
            info = await self._xmpp.plugin["xep_0030"].get_info(JID(room))
        except Exception as exc:  # an IQ error or a timeout: the room cannot be used
            raise RoomNotSuitable(f"the features of room {room} cannot be read: {exc!r}") from exc
        features = set(info["disco_info"]["features"])
        problems = []
        if "muc_nonanonymous" not in features:
            problems.append("it does not show real JIDs to members (make it non-anonymous: whois=anyone)")
        if "muc_membersonly" not in features:
            problems.append("anyone can join it (make it members-only)")
        if problems:
            raise RoomNotSuitable(f"room {room} cannot carry OMEMO messages: {'; '.join(problems)}")
        self._suitable.add(room)

    async def _read(self, room: str) -> Tuple[float, Dict[str, str]]:
        muc = self._xmpp.plugin["xep_0045"]
        try:
            lists = await asyncio.gather(
                *(muc.get_affiliation_list(JID(room), affiliation) for affiliation in MEMBER_AFFILIATIONS)
            )
        except Exception as exc:  # an IQ error (forbidden) or a timeout
            raise RoomNotSuitable(f"the member list of room {room} cannot be read: {exc!r}") from exc
        affiliations = {
            JID(jid).bare: affiliation
            for affiliation, jids in zip(MEMBER_AFFILIATIONS, lists, strict=True)
            for jid in jids
        }
        entry = (time.monotonic(), affiliations)
        self._members[room] = entry
        return entry

    def observe(self, stanza: Any) -> None:
        """Learn from a presence or message of a room: an occupant's affiliation (joins, leaves and
        changes) and configuration changes. Stanzas from elsewhere are ignored."""
        room = JID(stanza["from"]).bare
        x = stanza.xml.find(f"{{{MUC_USER}}}x")
        if x is None:
            return
        codes = {status.get("code", "") for status in x.findall(f"{{{MUC_USER}}}status")}
        if codes & _CONFIGURATION_CHANGED:
            self._suitable.discard(room)
        cached = self._members.get(room)
        if cached is None:
            return
        for item in x.findall(f"{{{MUC_USER}}}item"):
            jid, affiliation = item.get("jid"), item.get("affiliation")
            if jid and affiliation:
                cached[1][JID(jid).bare] = affiliation

    def sender(self, message: Any, archived_by_room: bool) -> str:
        """The real bare JID of the sender of a room message.

        For a message from the room's archive (``archived_by_room``: a MAM result the room itself sent),
        the ``<x><item jid>`` the room added; for a live message, the occupant's presence.

        Raises:
            UnknownOccupant: neither is known.
        """
        room, nick = JID(message["from"]).bare, JID(message["from"]).resource
        if archived_by_room:
            item: Optional[ET.Element] = message.xml.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}item")
            if item is not None and item.get("jid"):
                return JID(item.get("jid")).bare
        real: Optional[str] = self._xmpp.plugin["xep_0045"].get_jid_property(JID(room), nick, "jid")
        if not real:
            raise UnknownOccupant(
                f"the real JID of {nick!r} in room {room} is not known (the occupant left, or the room does"
                " not show real JIDs): the message cannot be decrypted"
            )
        return JID(real).bare
