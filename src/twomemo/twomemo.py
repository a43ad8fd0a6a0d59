"""The ``urn:xmpp:omemo:2`` backend: the shared engine backend with the OMEMO 2 profile.

What is specific to OMEMO 2 here: the payload cipher (AES-256-CBC + truncated HMAC, keys from
HKDF "OMEMO Payload"), 48-byte key material (32 zero bytes for empty messages), Ed25519 identity
keys on the wire, and signed device labels (XEP-0384 0.9).
"""

from __future__ import annotations

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
from omemo_engine.errors import AuthenticationFailed, EngineError, InvalidSignature
from omemo_engine.profile import OMEMO2
from omemo_engine.wire import OMEMO2_WIRE, KeyExchangeFields

__all__ = [
    "NAMESPACE",
    "BundleImpl",
    "ContentImpl",
    "EncryptedKeyMaterialImpl",
    "KeyExchangeImpl",
    "PlainKeyMaterialImpl",
    "SessionImpl",
    "Twomemo",
]

#: The namespace of this backend.
NAMESPACE = OMEMO2.name


class BundleImpl(EngineBundle):
    """An OMEMO 2 bundle (identity key in Ed25519 form)."""

    NAMESPACE = NAMESPACE
    __slots__ = ()


class ContentImpl(Content):
    """The payload of an OMEMO 2 message: the AES-256-CBC ciphertext (empty for empty messages)."""

    __slots__ = ("_ciphertext",)

    def __init__(self, ciphertext: bytes) -> None:
        self._ciphertext = ciphertext

    @property
    def ciphertext(self) -> bytes:
        """The ciphertext (``b""`` for an empty message)."""
        return self._ciphertext

    @property
    def empty(self) -> bool:
        return self._ciphertext == b""

    @staticmethod
    def make_empty() -> ContentImpl:
        """The content of an empty message."""
        return ContentImpl(b"")

    def __repr__(self) -> str:
        return f"ContentImpl(ciphertext=<{len(self._ciphertext)} bytes>)"


class PlainKeyMaterialImpl(EnginePlainKeyMaterial):
    """The key of an OMEMO 2 payload (32 bytes) and its authentication tag (16 bytes).

    An empty message's key material is 32 zero bytes with an empty tag.
    """

    __slots__ = ()

    @staticmethod
    def make_empty() -> PlainKeyMaterialImpl:
        """The key material of an empty message."""
        return PlainKeyMaterialImpl(payload.OMEMO2_EMPTY_KEY_MATERIAL, b"")


class EncryptedKeyMaterialImpl(EngineEncryptedKeyMaterial):
    """Key material encrypted for one device: a serialised ``OMEMOAuthenticatedMessage``."""

    __slots__ = ()

    @staticmethod
    def parse(authenticated_message: bytes, bare_jid: str, device_id: int) -> EncryptedKeyMaterialImpl:
        """Wrap received ``OMEMOAuthenticatedMessage`` bytes (checked when decrypting)."""
        return EncryptedKeyMaterialImpl(bare_jid, device_id, authenticated_message)


class KeyExchangeImpl(EngineKeyExchange):
    """The ``OMEMOKeyExchange`` data (identity key in Ed25519 form)."""

    __slots__ = ()

    def serialize(self, authenticated_message: bytes) -> bytes:
        """Wrap an ``OMEMOAuthenticatedMessage`` into an ``OMEMOKeyExchange``."""
        fields = KeyExchangeFields(
            self.pre_key_id, self.signed_pre_key_id, self.identity_key, self.ephemeral_key
        )
        return OMEMO2_WIRE.build_key_exchange(fields, authenticated_message)

    @staticmethod
    def parse(key_exchange: bytes) -> Tuple[KeyExchangeImpl, bytes]:
        """Split an ``OMEMOKeyExchange`` into the key exchange and the authenticated message.

        Raises:
            MalformedMessage: the bytes are not a valid ``OMEMOKeyExchange`` (a ``ValueError``).
        """
        fields, message = OMEMO2_WIRE.parse_key_exchange(key_exchange)
        kex = KeyExchangeImpl(
            fields.identity_key, fields.ephemeral_key, fields.signed_pre_key_id, fields.pre_key_id
        )
        return kex, message


class SessionImpl(EngineSession):
    """A session in the ``urn:xmpp:omemo:2`` namespace."""

    NAMESPACE = NAMESPACE
    __slots__ = ()


class Twomemo(EngineBackend):
    """The ``urn:xmpp:omemo:2`` backend.

    Args:
        storage: the storage for all OMEMO data (shared with the core and the other backends).
        max_num_per_session_skipped_keys: skipped message keys kept per session (oldest dropped).
        max_num_per_message_skipped_keys: message keys one message may skip (None: the per-session value).
    """

    PROFILE = OMEMO2
    BUNDLE = BundleImpl
    SESSION = SessionImpl
    KEY_EXCHANGE = KeyExchangeImpl
    ENCRYPTED_KEY_MATERIAL = EncryptedKeyMaterialImpl
    PLAIN_KEY_MATERIAL = PlainKeyMaterialImpl
    PAYLOAD_KEY_LENGTH = payload.OMEMO2_KEY_LENGTH

    async def encrypt_plaintext(self, plaintext: bytes) -> Tuple[ContentImpl, PlainKeyMaterialImpl]:
        ciphertext, key_material = payload.omemo2_encrypt(plaintext, self._random_bytes)
        return ContentImpl(ciphertext), PlainKeyMaterialImpl(
            key_material[: payload.OMEMO2_KEY_LENGTH], key_material[payload.OMEMO2_KEY_LENGTH :]
        )

    async def encrypt_empty(self) -> Tuple[ContentImpl, PlainKeyMaterialImpl]:
        return ContentImpl.make_empty(), PlainKeyMaterialImpl.make_empty()

    def check_empty_message(self, content: Content, plain_key_material: PlainKeyMaterial) -> None:
        """An empty message must carry the empty key material (32 zero bytes, XEP-0384): any other key
        material was made for a payload, which was then removed on the way.

        Raises:
            MessageAuthenticationFailed: the payload of this message was removed (a DecryptionFailed).
        """
        assert isinstance(plain_key_material, PlainKeyMaterialImpl)
        if (plain_key_material.key, plain_key_material.auth_tag) != (payload.OMEMO2_EMPTY_KEY_MATERIAL, b""):
            raise MessageAuthenticationFailed(
                "the message has no <payload>, but its key material was made for one: the payload was removed"
            )

    async def decrypt_plaintext(self, content: Content, plain_key_material: PlainKeyMaterial) -> bytes:
        assert isinstance(content, ContentImpl)
        assert isinstance(plain_key_material, PlainKeyMaterialImpl)
        try:
            return payload.omemo2_decrypt(
                content.ciphertext, plain_key_material.key + plain_key_material.auth_tag
            )
        except AuthenticationFailed as exc:
            raise MessageAuthenticationFailed(f"cannot decrypt the OMEMO 2 payload: {exc}") from None

    @property
    def supports_labels(self) -> bool:
        return True

    async def sign_own_label(self, label: str) -> bytes:
        identity_priv, _ = await self._identity_key_pair()
        return xeddsa.sign(identity_priv, label.encode("utf-8"), random_bytes=self._random_bytes)

    async def verify_label_signature(self, label: str, signature: bytes, identity_key: bytes) -> bool:
        try:
            xeddsa.verify(identity_key, label.encode("utf-8"), signature)
        except (InvalidSignature, EngineError, UnicodeEncodeError):
            # A label that is not UTF-8 encodable (lone surrogates) cannot have been signed.
            return False
        return True
