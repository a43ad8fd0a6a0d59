"""OMEMO (XEP-0384) for slixmpp on the omemo-stack: a drop-in for slixmpp-omemo's ``XEP_0384`` that also
speaks ``urn:xmpp:omemo:2`` with XEP-0420 envelopes, both namespaces in one stanza.

Install with ``pip install 'omemo-stack[slixmpp]'``; see docs/xmpp.md.
"""

from ._muc import RoomNotSuitable, UnknownOccupant
from .plugin import XEP_0384, MalformedStanza, OwnMessage, TrustLevel
from .ready import XEP_0384SQLite

__all__ = [
    "XEP_0384",
    "MalformedStanza",
    "OwnMessage",
    "RoomNotSuitable",
    "TrustLevel",
    "UnknownOccupant",
    "XEP_0384SQLite",
]
