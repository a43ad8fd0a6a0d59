"""The public part of a device's key material, as published for active session building."""

from __future__ import annotations

from abc import ABC, abstractmethod

__all__ = ["Bundle"]


class Bundle(ABC):
    """A device's bundle: what another device needs to actively build a session with it.

    Backends subclass this with their concrete key material. "Identity key" means the public part of
    the identity key pair in Ed25519 form, everywhere in the public API.
    """

    @property
    @abstractmethod
    def namespace(self) -> str:
        """The namespace of the backend this bundle belongs to."""

    @property
    @abstractmethod
    def bare_jid(self) -> str:
        """The bare JID of the account owning the device."""

    @property
    @abstractmethod
    def device_id(self) -> int:
        """The id of the device."""

    @property
    @abstractmethod
    def identity_key(self) -> bytes:
        """The device's identity key (Ed25519 public key)."""

    @abstractmethod
    def __eq__(self, other: object) -> bool:
        """Compare by content.

        The order in which pre keys were added to either bundle must not matter.

        Args:
            other: the object to compare with.

        Returns:
            Whether ``other`` is a bundle with the same content.
        """

    @abstractmethod
    def __hash__(self) -> int:
        """Hash consistently with :meth:`__eq__`.

        Returns:
            The hash value.
        """
