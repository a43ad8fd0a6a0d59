"""The pieces an OMEMO message is made of: content, key material, key exchanges and the message itself.

Backends subclass the abstract classes with their concrete wire data; the core only moves them around.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import FrozenSet, NamedTuple, Optional, Tuple

__all__ = [
    "Content",
    "EncryptedKeyMaterial",
    "KeyExchange",
    "Message",
    "PlainKeyMaterial",
]


class Content(ABC):
    """The symmetrically encrypted payload of a message, shared by all recipients.

    Besides the ciphertext it may hold other backend-specific data common to all recipients.
    """

    @property
    @abstractmethod
    def empty(self) -> bool:
        """Whether this is the content of an empty message (sent only to keep sessions healthy)."""


class EncryptedKeyMaterial(ABC):
    """Key material encrypted for one recipient device; decrypted, it unlocks the :class:`Content`."""

    @property
    @abstractmethod
    def bare_jid(self) -> str:
        """The bare JID of the recipient device's account."""

    @property
    @abstractmethod
    def device_id(self) -> int:
        """The id of the recipient device."""


class KeyExchange(ABC):
    """Session-initiation data created by the active side and consumed by the passive side."""

    @property
    @abstractmethod
    def identity_key(self) -> bytes:
        """The identity key (Ed25519 public key) of the initiating device."""

    @abstractmethod
    def builds_same_session(self, other: KeyExchange) -> bool:
        """Tell whether two key exchanges would build the same session.

        Args:
            other: the key exchange to compare with.

        Returns:
            Whether ``other`` and this instance build the same session.
        """


class Message(NamedTuple):
    """An OMEMO-encrypted message.

    Attributes:
        namespace: the namespace of the backend that produced the message.
        bare_jid: the bare JID of the sender.
        device_id: the id of the sending device.
        content: the encrypted payload, shared by all recipients.
        keys: per recipient device, the encrypted key material and, if the message also initiates a
            session with that device, the key exchange.
    """

    namespace: str
    bare_jid: str
    device_id: int
    content: Content
    keys: FrozenSet[Tuple[EncryptedKeyMaterial, Optional[KeyExchange]]]


class PlainKeyMaterial(ABC):  # noqa: B024 - an abstract marker type with no members, per the contract
    """Decrypted key material, used to decrypt a :class:`Content`. Details are backend-specific."""
