"""The per-device session abstraction.

A :class:`Session` is deliberately a thin data holder: all operations on sessions go through the
:class:`~omemo.backend.Backend`, which also decides when a session is persisted
(:meth:`~omemo.backend.Backend.store_session`).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from typing import Optional

from .message import KeyExchange

__all__ = ["Initiation", "Session"]


@enum.unique
class Initiation(enum.Enum):
    """How a session came to be: built by us (active) or by the other device (passive)."""

    ACTIVE = "ACTIVE"
    PASSIVE = "PASSIVE"


class Session(ABC):
    """A session with one other device, used to encrypt and decrypt key material.

    Changes to a session are persisted only by :meth:`~omemo.backend.Backend.store_session`. Several
    sessions for the same device may exist in memory; storage holds at most one per device.
    """

    @property
    @abstractmethod
    def namespace(self) -> str:
        """The namespace of the backend this session belongs to."""

    @property
    @abstractmethod
    def bare_jid(self) -> str:
        """The bare JID of the other device's account."""

    @property
    @abstractmethod
    def device_id(self) -> int:
        """The id of the other device."""

    @property
    @abstractmethod
    def initiation(self) -> Initiation:
        """Whether this session was built actively or passively."""

    @property
    @abstractmethod
    def confirmed(self) -> bool:
        """For an actively built session: whether a message has been received and decrypted with it."""

    @property
    @abstractmethod
    def key_exchange(self) -> KeyExchange:
        """The key exchange that built this session (created when active, received when passive).

        It is kept so that the other side can still build the session if messages are lost or
        reordered.
        """

    @property
    @abstractmethod
    def receiving_chain_length(self) -> Optional[int]:
        """The length of the receiving chain, if there is one (used for own staleness detection)."""

    @property
    @abstractmethod
    def sending_chain_length(self) -> int:
        """The length of the sending chain (used for staleness detection of the other device)."""
