"""The ``eu.siacs.conversations.axolotl`` backend: the shared engine backend with the legacy profile.

What is specific to legacy OMEMO here: the payload cipher (AES-128-GCM, 12-byte IV, the tag sent
through the ratchet with the key), identity keys carried in Curve25519 form with the sign bit in
the signed pre key's signature (PROTOCOL.md 4.5), and no device labels.
"""

from __future__ import annotations

import os
from typing import Tuple

from omemo._engine.backend import (
    EngineBackend,
    EngineBundle,
    EngineEncryptedKeyMaterial,
    EngineKeyExchange,
    EnginePlainKeyMaterial,
    EngineSession,
)
from omemo.backend import MessageAuthenticationFailed
from omemo.message import Content, PlainKeyMaterial
from omemo_engine import payload, xeddsa
from omemo_engine.errors import AuthenticationFailed, MalformedMessage
from omemo_engine.profile import LEGACY
from omemo_engine.wire import LEGACY_WIRE, KeyExchangeFields

__all__ = [
    "NAMESPACE",
    "BundleImpl",
    "ContentImpl",
    "EncryptedKeyMaterialImpl",
    "KeyExchangeImpl",
    "Oldmemo",
    "PlainKeyMaterialImpl",
    "SessionImpl",
]

#: The namespace of this backend.
NAMESPACE = LEGACY.name


class BundleImpl(EngineBundle):
    """A legacy bundle. :attr:`identity_key` is the Ed25519 form (the XML carries Curve25519)."""

    NAMESPACE = NAMESPACE
    __slots__ = ()


class ContentImpl(Content):
    """The payload of a legacy message: AES-128-GCM ciphertext (without tag) and its IV.

    Empty messages have no ciphertext but still an IV (used by applications for legacy
    "KeyTransportElement"s).
    """

    __slots__ = ("_ciphertext", "_iv")

    def __init__(self, ciphertext: bytes, initialization_vector: bytes) -> None:
        self._ciphertext = ciphertext
        self._iv = initialization_vector

    @property
    def ciphertext(self) -> bytes:
        """The ciphertext (``b""`` for an empty message)."""
        return self._ciphertext

    @property
    def initialization_vector(self) -> bytes:
        """The GCM IV (12 bytes; 16 from some old senders)."""
        return self._iv

    @property
    def empty(self) -> bool:
        return self._ciphertext == b""

    @staticmethod
    def make_empty() -> ContentImpl:
        """The content of an empty message (a fresh random IV)."""
        return ContentImpl(b"", os.urandom(payload.LEGACY_IV_LENGTH))

    def __repr__(self) -> str:
        return f"ContentImpl(ciphertext=<{len(self._ciphertext)} bytes>, iv=<{len(self._iv)} bytes>)"


class PlainKeyMaterialImpl(EnginePlainKeyMaterial):
    """The AES-128-GCM key (16 bytes) and tag (16 bytes) of a legacy payload.

    An empty message's key material is a fresh random key with an empty tag.
    """

    __slots__ = ()

    @staticmethod
    def make_empty() -> PlainKeyMaterialImpl:
        """The key material of an empty message (a fresh random key)."""
        return PlainKeyMaterialImpl(os.urandom(payload.LEGACY_KEY_LENGTH), b"")


class EncryptedKeyMaterialImpl(EngineEncryptedKeyMaterial):
    """Key material encrypted for one device: a ``SignalMessage`` (version byte, protobuf, MAC)."""

    __slots__ = ()

    @staticmethod
    def parse(authenticated_message: bytes, bare_jid: str, device_id: int) -> EncryptedKeyMaterialImpl:
        """Wrap received ``SignalMessage`` bytes (checked when decrypting)."""
        return EncryptedKeyMaterialImpl(bare_jid, device_id, authenticated_message)


class KeyExchangeImpl(EngineKeyExchange):
    """The ``PreKeySignalMessage`` data. :attr:`identity_key` is in Ed25519 form."""

    __slots__ = ()

    def serialize(self, authenticated_message: bytes) -> bytes:
        """Wrap a ``SignalMessage`` into a ``PreKeySignalMessage`` (identity key in Curve25519 form)."""
        fields = KeyExchangeFields(
            self.pre_key_id,
            self.signed_pre_key_id,
            xeddsa.ed25519_pub_to_curve25519_pub(self.identity_key),
            self.ephemeral_key,
        )
        return LEGACY_WIRE.build_key_exchange(fields, authenticated_message)

    @staticmethod
    def parse(key_exchange: bytes, set_sign_bit: bool) -> Tuple[KeyExchangeImpl, bytes]:
        """Split a ``PreKeySignalMessage`` into the key exchange and the ``SignalMessage``.

        Args:
            key_exchange: the bytes.
            set_sign_bit: the sign bit of the sender's Ed25519 identity key (the wire carries the
                Curve25519 form, which lost it; PROTOCOL.md 4.5).

        Raises:
            MalformedMessage: the bytes are not a valid ``PreKeySignalMessage`` (a ``ValueError``).
        """
        fields, message = LEGACY_WIRE.parse_key_exchange(key_exchange)
        try:
            identity_key = xeddsa.curve25519_pub_to_ed25519_pub(fields.identity_key, set_sign_bit)
        except ValueError as exc:
            raise MalformedMessage(f"PreKeySignalMessage.identityKey: {exc}") from None
        kex = KeyExchangeImpl(identity_key, fields.ephemeral_key, fields.signed_pre_key_id, fields.pre_key_id)
        return kex, message


class SessionImpl(EngineSession):
    """A session in the ``eu.siacs.conversations.axolotl`` namespace."""

    NAMESPACE = NAMESPACE
    __slots__ = ()


class Oldmemo(EngineBackend):
    """The ``eu.siacs.conversations.axolotl`` backend.

    Args:
        storage: the storage for all OMEMO data (shared with the core and the other backends).
        max_num_per_session_skipped_keys: skipped message keys kept per session (oldest dropped).
        max_num_per_message_skipped_keys: message keys one message may skip (None: the per-session value).
    """

    PROFILE = LEGACY
    BUNDLE = BundleImpl
    SESSION = SessionImpl
    KEY_EXCHANGE = KeyExchangeImpl
    ENCRYPTED_KEY_MATERIAL = EncryptedKeyMaterialImpl
    PLAIN_KEY_MATERIAL = PlainKeyMaterialImpl
    PAYLOAD_KEY_LENGTH = payload.LEGACY_KEY_LENGTH

    async def encrypt_plaintext(self, plaintext: bytes) -> Tuple[ContentImpl, PlainKeyMaterialImpl]:
        ciphertext, iv, key_material = payload.legacy_encrypt(plaintext, self._random_bytes)
        return ContentImpl(ciphertext, iv), PlainKeyMaterialImpl(
            key_material[: payload.LEGACY_KEY_LENGTH], key_material[payload.LEGACY_KEY_LENGTH :]
        )

    async def encrypt_empty(self) -> Tuple[ContentImpl, PlainKeyMaterialImpl]:
        return (
            ContentImpl(b"", self._random_bytes(payload.LEGACY_IV_LENGTH)),
            PlainKeyMaterialImpl(self._random_bytes(payload.LEGACY_KEY_LENGTH), b""),
        )

    def check_empty_message(self, content: Content, plain_key_material: PlainKeyMaterial) -> None:
        """An empty (key transport) message carries a 16-byte key (most clients), or key and tag of an
        empty plaintext (Converse's heartbeats, which verify): a tag of anything else belongs to a
        payload that was removed on the way.

        Raises:
            MessageAuthenticationFailed: the payload of this message was removed (a DecryptionFailed).
        """
        assert isinstance(content, ContentImpl)
        assert isinstance(plain_key_material, PlainKeyMaterialImpl)
        if not plain_key_material.auth_tag:
            return
        try:
            payload.legacy_decrypt(
                b"", content.initialization_vector, plain_key_material.key + plain_key_material.auth_tag
            )
        except AuthenticationFailed:
            raise MessageAuthenticationFailed(
                "the message has no <payload>, but its key material was made for one: the payload was removed"
            ) from None

    async def decrypt_plaintext(self, content: Content, plain_key_material: PlainKeyMaterial) -> bytes:
        assert isinstance(content, ContentImpl)
        assert isinstance(plain_key_material, PlainKeyMaterialImpl)
        try:
            return payload.legacy_decrypt(
                content.ciphertext,
                content.initialization_vector,
                plain_key_material.key + plain_key_material.auth_tag,
            )
        except AuthenticationFailed as exc:
            raise MessageAuthenticationFailed(f"cannot decrypt the legacy payload: {exc}") from None
