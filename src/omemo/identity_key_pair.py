"""The identity key pair of this device, shared by all backends.

Theory of operation (PROTOCOL.md 2.1). The identity is one Curve25519/Ed25519 private scalar, usually
held as a 32-byte Ed25519 *seed* from which the scalar is derived (``clamp(SHA-512(seed)[:32])``). The
same scalar serves X25519 key agreement and XEdDSA/Ed25519 signing, so one key pair works for every
OMEMO version. A pair held directly as a scalar (:class:`IdentityKeyPairPriv`) exists only for data
migrated from legacy python-omemo.

Storage layout: ``/ikp/key`` (bytes, via ``store_bytes``) and ``/ikp/is_seed`` (bool). If either is
missing, :meth:`IdentityKeyPair.get` generates and stores a new seed.

The secret never appears in ``repr``; only the public identity key is shown.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import weakref
from abc import ABC, abstractmethod
from typing import Optional

from omemo_engine import xeddsa

from .storage import Storage

__all__ = ["IdentityKeyPair", "IdentityKeyPairPriv", "IdentityKeyPairSeed"]

#: Length of a seed and of a private scalar.
SECRET_LENGTH = 32

_KEY_KEY = "/ikp/key"
_IS_SEED_KEY = "/ikp/is_seed"

# Per storage: a lock serialising first-time generation (two concurrent first calls must not create two
# different identities), and the last instance handed out (so that the public key is not re-derived on
# every call; instances are immutable, sharing them is safe).
_LOCKS: weakref.WeakKeyDictionary[Storage, asyncio.Lock] = weakref.WeakKeyDictionary()
_INSTANCES: weakref.WeakKeyDictionary[Storage, IdentityKeyPair] = weakref.WeakKeyDictionary()


def _check_secret(name: str, value: bytes) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes, got {type(value).__name__}")
    if len(value) != SECRET_LENGTH:
        raise ValueError(f"{name} must be {SECRET_LENGTH} bytes, got {len(value)}")
    return value


class IdentityKeyPair(ABC):
    """The identity key pair of this device (one per storage, shared by all backends).

    It can produce Ed25519-compatible signatures and X25519 key agreements; the public part is exposed
    in Ed25519 form as :attr:`identity_key`.
    """

    __slots__ = ()

    LOG_TAG = "omemo.core.identity_key_pair"

    @staticmethod
    async def get(storage: Storage) -> IdentityKeyPair:
        """Load the identity key pair, generating and storing a new seed on first use.

        All calls with the same storage refer to the same stored key pair.

        Args:
            storage: the storage for all OMEMO-related data.

        Returns:
            The identity key pair.

        Raises:
            StorageException: a storage operation failed.
            TypeError: the stored data has the wrong type or length.
        """
        try:
            lock = _LOCKS.get(storage)
            if lock is None:
                lock = _LOCKS.setdefault(storage, asyncio.Lock())
        except TypeError:  # an unhashable or non-weak-referenceable storage: no dedup, no memo
            return await IdentityKeyPair.__get_locked(storage, memoise=False)
        async with lock:
            return await IdentityKeyPair.__get_locked(storage, memoise=True)

    @staticmethod
    async def __get_locked(storage: Storage, memoise: bool) -> IdentityKeyPair:
        is_seed = (await storage.load_primitive(_IS_SEED_KEY, bool)).maybe(None)
        key = (await storage.load_bytes(_KEY_KEY)).maybe(None)
        if is_seed is None or key is None:
            key = os.urandom(SECRET_LENGTH)
            is_seed = True
            # The key first, then the flag: on a fresh storage a crash in between leaves no flag, so the
            # next call simply generates another seed (nothing was published with the first one).
            await storage.store_bytes(_KEY_KEY, key)
            await storage.store(_IS_SEED_KEY, True)
        cached = _INSTANCES.get(storage) if memoise else None
        if cached is not None and cached._matches(is_seed, key):
            return cached
        if len(key) != SECRET_LENGTH:
            raise TypeError(f"the stored identity key is {len(key)} bytes, expected {SECRET_LENGTH}")
        instance: IdentityKeyPair = IdentityKeyPairSeed(key) if is_seed else IdentityKeyPairPriv(key)
        if memoise:
            _INSTANCES[storage] = instance
        return instance

    def _matches(self, is_seed: bool, secret: bytes) -> bool:
        # Whether this instance holds exactly this stored secret (used to reuse memoised instances).
        # Not abstract: the contract's abstract members are only the four below.
        return False

    @property
    @abstractmethod
    def is_seed(self) -> bool:
        """Whether this is an :class:`IdentityKeyPairSeed`."""

    @property
    @abstractmethod
    def is_priv(self) -> bool:
        """Whether this is an :class:`IdentityKeyPairPriv`."""

    @abstractmethod
    def as_priv(self) -> IdentityKeyPairPriv:
        """The same key pair represented by its private scalar.

        Returns:
            An :class:`IdentityKeyPairPriv` (``self`` if this already is one).
        """

    @property
    @abstractmethod
    def identity_key(self) -> bytes:
        """The public key, in Ed25519 form (32 bytes)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(identity_key={self.identity_key.hex()})"


class IdentityKeyPairPriv(IdentityKeyPair):
    """An identity key pair held as its Curve25519/Ed25519 private scalar."""

    __slots__ = ("__identity_key", "__priv")

    def __init__(self, priv: bytes) -> None:
        """Wrap a private scalar.

        Args:
            priv: the 32-byte Curve25519/Ed25519 private key.

        Raises:
            TypeError: ``priv`` is not bytes.
            ValueError: ``priv`` is not 32 bytes long.
        """
        self.__priv = _check_secret("priv", priv)
        self.__identity_key: Optional[bytes] = None

    def _matches(self, is_seed: bool, secret: bytes) -> bool:
        return not is_seed and hmac.compare_digest(secret, self.__priv)

    @property
    def is_seed(self) -> bool:
        """Always ``False``."""
        return False

    @property
    def is_priv(self) -> bool:
        """Always ``True``."""
        return True

    def as_priv(self) -> IdentityKeyPairPriv:
        """This instance.

        Returns:
            ``self``.
        """
        return self

    @property
    def identity_key(self) -> bytes:
        """The public key, in Ed25519 form, with its natural sign bit."""
        if self.__identity_key is None:
            self.__identity_key = xeddsa.priv_to_ed25519_pub(self.__priv)
        return self.__identity_key

    @property
    def priv(self) -> bytes:
        """The 32-byte Curve25519/Ed25519 private key."""
        return self.__priv


class IdentityKeyPairSeed(IdentityKeyPair):
    """An identity key pair held as its Ed25519 seed."""

    __slots__ = ("__identity_key", "__priv", "__seed")

    def __init__(self, seed: bytes) -> None:
        """Wrap a seed.

        Args:
            seed: the 32-byte Curve25519/Ed25519 seed.

        Raises:
            TypeError: ``seed`` is not bytes.
            ValueError: ``seed`` is not 32 bytes long.
        """
        self.__seed = _check_secret("seed", seed)
        self.__identity_key: Optional[bytes] = None
        self.__priv: Optional[IdentityKeyPairPriv] = None

    def _matches(self, is_seed: bool, secret: bytes) -> bool:
        return is_seed and hmac.compare_digest(secret, self.__seed)

    @property
    def is_seed(self) -> bool:
        """Always ``True``."""
        return True

    @property
    def is_priv(self) -> bool:
        """Always ``False``."""
        return False

    def as_priv(self) -> IdentityKeyPairPriv:
        """The key pair as its private scalar ``clamp(SHA-512(seed)[:32])``.

        Returns:
            The equivalent :class:`IdentityKeyPairPriv`.
        """
        if self.__priv is None:
            self.__priv = IdentityKeyPairPriv(xeddsa.seed_to_priv(self.__seed))
        return self.__priv

    @property
    def identity_key(self) -> bytes:
        """The RFC 8032 Ed25519 public key of the seed."""
        if self.__identity_key is None:
            self.__identity_key = xeddsa.seed_to_ed25519_pub(self.__seed)
        return self.__identity_key

    @property
    def seed(self) -> bytes:
        """The 32-byte Curve25519/Ed25519 seed."""
        return self.__seed
