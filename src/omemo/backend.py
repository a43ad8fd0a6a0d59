"""The interface every OMEMO version ("backend") implements for the core, and its exceptions.

A backend owns everything version-specific: wire formats, the key agreement, the ratchet and the
payload cipher. The core (:class:`~omemo.session_manager.SessionManager`) drives it through the
coroutines below. Where a signature names one of the abstract types (:class:`Session`,
:class:`Content`, ...), the backend's own subclass is meant; implementations may ``assert
isinstance(...)`` to narrow the type.

Most methods may raise :class:`~omemo.storage.StorageException` besides the exceptions listed. The
identity key pair is available to backends through :meth:`omemo.identity_key_pair.IdentityKeyPair.get`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Optional, Tuple

from .bundle import Bundle
from .message import Content, EncryptedKeyMaterial, KeyExchange, PlainKeyMaterial
from .session import Session
from .types import OMEMOException

__all__ = [
    "Backend",
    "BackendException",
    "BundleSignatureInvalid",
    "BundleWithoutPreKeys",
    "DecryptionFailed",
    "DuplicateMessage",
    "KeyExchangeFailed",
    "MessageAuthenticationFailed",
    "MessageKeyReused",
    "SessionDamaged",
    "SessionOutOfStep",
    "TooManySkippedMessageKeys",
    "UnknownPreKey",
]


class BackendException(OMEMOException):
    """Root of the exceptions raised by :class:`Backend` implementations."""


class DecryptionFailed(BackendException):
    """Decryption failed for a backend-specific reason (bad MAC, malformed data, ...)."""


class MessageAuthenticationFailed(DecryptionFailed):
    """The message's authentication did not verify: it was altered on the way, or our session with the
    sending device is not the one it encrypted with (e.g. one side restored an older backup). Nothing was
    changed; ``SessionManager.replace_sessions`` builds new sessions with the device."""


class DuplicateMessage(DecryptionFailed):
    """The message's key was already used, or is no longer kept: a duplicate delivery (an archive copy of
    a message received live, an archive page fetched twice), a replay, or a message older than the
    skipped keys kept. Nothing was changed; the message cannot be decrypted again."""


class MessageKeyReused(DuplicateMessage):
    """A message from a device uses a message key we already used, but it is not a copy of the message
    we decrypted with it: the device sends with a counter it already used, because its state was
    restored from an older backup (or someone replays with altered content). Raised by the session
    manager, which remembers the messages decrypted while it runs."""


class SessionOutOfStep(MessageAuthenticationFailed):
    """Messages from one device keep failing authentication: our session with it and the device's are
    not the same any more, typically because one side restored an older backup over newer state.
    ``SessionManager.replace_sessions`` builds new sessions."""


class SessionDamaged(DecryptionFailed):
    """The stored session with a device cannot be read: its record was changed or cut outside this
    library (by hand, a disk or copy error). The message names the record's storage key. Only this
    session is affected: ``encrypt`` skips the device (an ``EncryptionError``), ``decrypt`` of its
    messages raises this, and ``SessionManager.replace_sessions`` replaces it with a new session."""


class KeyExchangeFailed(BackendException):
    """Building a session failed during the key exchange.

    Known causes: the bundle has no pre keys or its signed pre key signature does not verify (active
    building), or the key exchange refers to an unknown (signed) pre key (passive building). Backends
    may have further causes.
    """


class UnknownPreKey(KeyExchangeFailed):
    """A key exchange we received names a pre key or signed pre key we do not have (any more): used
    already, rotated out, or never ours. The sender must build a new session from our current bundle."""


class BundleSignatureInvalid(KeyExchangeFailed):
    """The device's bundle has a signed pre key whose signature does not verify: the bundle is broken
    or forged; no session is built from it."""


class BundleWithoutPreKeys(KeyExchangeFailed):
    """The device's bundle has no one-time pre keys left: no session can be built until the device
    publishes new ones."""


class TooManySkippedMessageKeys(BackendException):
    """A message would skip more message keys than :attr:`Backend.max_num_per_message_skipped_keys`."""


def _check_limit(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return value


class Backend(ABC):
    """Base class of all backends, i.e. of the implementations of one OMEMO version each.

    Subclasses must call ``super().__init__(...)`` to configure the skipped-message-key limits, and
    :meth:`decrypt_key_material` must respect them.
    """

    def __init__(
        self,
        max_num_per_session_skipped_keys: int = 1000,
        max_num_per_message_skipped_keys: Optional[int] = None,
    ) -> None:
        """Configure the skipped-message-key limits (a protection against denial of service).

        Args:
            max_num_per_session_skipped_keys: how many skipped message keys to keep per session; when
                exceeded, the oldest are dropped.
            max_num_per_message_skipped_keys: how many message keys a single message may skip.
                ``None`` (the default) means the per-session limit. It may be 0 only if the per-session
                limit is 0; otherwise it must lie between 1 and the per-session limit.

        Raises:
            TypeError: a limit is not an ``int``.
            ValueError: the limits violate the rules above.
        """
        # PROTOCOL.md 6.1: the reference gets this check wrong (operator precedence) and rejects every
        # explicit non-zero per-message limit. This is the documented rule.
        per_session = _check_limit("max_num_per_session_skipped_keys", max_num_per_session_skipped_keys)
        if max_num_per_message_skipped_keys is None:
            per_message = per_session
        else:
            per_message = _check_limit("max_num_per_message_skipped_keys", max_num_per_message_skipped_keys)
            if per_session == 0 and per_message != 0:
                raise ValueError(
                    "max_num_per_message_skipped_keys must be 0 when max_num_per_session_skipped_keys is 0,"
                    f" got {per_message}"
                )
            if per_session > 0 and not 1 <= per_message <= per_session:
                raise ValueError(
                    "max_num_per_message_skipped_keys must be between 1 and max_num_per_session_skipped_keys"
                    f" ({per_session}), got {per_message}"
                )
        self.__max_num_per_session_skipped_keys = per_session
        self.__max_num_per_message_skipped_keys = per_message

    @property
    def max_num_per_session_skipped_keys(self) -> int:
        """The maximum number of skipped message keys kept per session."""
        return self.__max_num_per_session_skipped_keys

    @property
    def max_num_per_message_skipped_keys(self) -> int:
        """The maximum number of message keys a single message may skip."""
        return self.__max_num_per_message_skipped_keys

    @property
    @abstractmethod
    def namespace(self) -> str:
        """The namespace this backend implements."""

    # -- sessions -----------------------------------------------------------------------------------

    @abstractmethod
    async def load_session(self, bare_jid: str, device_id: int) -> Optional[Session]:
        """Load the stored session with a device.

        Args:
            bare_jid: the bare JID of the device's account.
            device_id: the id of the device.

        Returns:
            The stored session, or ``None`` if there is none.
        """

    @abstractmethod
    async def store_session(self, session: Session) -> None:
        """Persist a session, replacing the stored session with the same device, if any.

        Args:
            session: the session to store.
        """

    @abstractmethod
    async def build_session_active(
        self, bare_jid: str, device_id: int, bundle: Bundle, plain_key_material: PlainKeyMaterial
    ) -> Tuple[Session, EncryptedKeyMaterial]:
        """Build a session with a device from its bundle.

        The new session is not stored: a session stored earlier for the device stays loadable until
        :meth:`store_session` is called with the new one.

        Args:
            bare_jid: the bare JID of the device's account.
            device_id: the id of the device.
            bundle: the device's bundle.
            plain_key_material: the key material to encrypt as part of the initial message.

        Returns:
            The new session (its :attr:`~omemo.session.Session.initiation` is ``ACTIVE`` and its
            :attr:`~omemo.session.Session.key_exchange` is what the other device needs to build its
            side) and the encrypted key material.

        Raises:
            KeyExchangeFailed: the key exchange failed.
        """

    @abstractmethod
    async def build_session_passive(
        self,
        bare_jid: str,
        device_id: int,
        key_exchange: KeyExchange,
        encrypted_key_material: EncryptedKeyMaterial,
    ) -> Tuple[Session, PlainKeyMaterial]:
        """Build a session from a key exchange received from a device.

        The new session is not stored (see :meth:`build_session_active`). It must remember the pre key
        it used, so that :meth:`hide_pre_key` and :meth:`delete_pre_key` can find it.

        Args:
            bare_jid: the bare JID of the device's account.
            device_id: the id of the device.
            key_exchange: the received key exchange.
            encrypted_key_material: the key material of the initial message.

        Returns:
            The new session and the decrypted key material.

        Raises:
            KeyExchangeFailed: the key exchange failed.
            DecryptionFailed: the initial message could not be decrypted.
        """

    # -- encryption ---------------------------------------------------------------------------------

    @abstractmethod
    async def encrypt_plaintext(self, plaintext: bytes) -> Tuple[Content, PlainKeyMaterial]:
        """Encrypt a plaintext symmetrically.

        Args:
            plaintext: the plaintext.

        Returns:
            The content and the key material needed to decrypt it.
        """

    @abstractmethod
    async def encrypt_empty(self) -> Tuple[Content, PlainKeyMaterial]:
        """Produce an empty message, used only to transport key material / advance ratchets.

        Returns:
            The (empty) content and the key material.
        """

    @abstractmethod
    async def encrypt_key_material(
        self, session: Session, plain_key_material: PlainKeyMaterial
    ) -> EncryptedKeyMaterial:
        """Encrypt key material for one device with the session.

        Args:
            session: the session with the recipient device.
            plain_key_material: the key material to encrypt.

        Returns:
            The encrypted key material.
        """

    @abstractmethod
    async def decrypt_plaintext(self, content: Content, plain_key_material: PlainKeyMaterial) -> bytes:
        """Decrypt a non-empty content.

        Args:
            content: the content; never empty.
            plain_key_material: the key material to decrypt with.

        Returns:
            The plaintext.

        Raises:
            DecryptionFailed: decryption failed.
        """

    @abstractmethod
    async def decrypt_key_material(
        self, session: Session, encrypted_key_material: EncryptedKeyMaterial
    ) -> PlainKeyMaterial:
        """Decrypt key material with the session, within the skipped-message-key limits.

        When the per-session limit is exceeded, the oldest skipped message keys are dropped.

        Args:
            session: the session with the sending device.
            encrypted_key_material: the encrypted key material.

        Returns:
            The decrypted key material.

        Raises:
            TooManySkippedMessageKeys: the message skips more keys than
                :attr:`max_num_per_message_skipped_keys`.
            DecryptionFailed: decryption failed.
        """

    # -- own key material ---------------------------------------------------------------------------

    @abstractmethod
    async def signed_pre_key_age(self) -> int:
        """The time since the signed pre key was last rotated.

        Returns:
            The age in seconds.
        """

    @abstractmethod
    async def rotate_signed_pre_key(self) -> None:
        """Replace the signed pre key, keeping the previous one until the next rotation."""

    @abstractmethod
    async def hide_pre_key(self, session: Session) -> bool:
        """Remove a pre key from the bundle and the visible count, but keep it usable.

        Args:
            session: a passively built session identifying the pre key.

        Returns:
            Whether the pre key was hidden; ``False`` (no exception) if it does not exist or is hidden
            already.
        """

    @abstractmethod
    async def delete_pre_key(self, session: Session) -> bool:
        """Delete a pre key.

        Args:
            session: a passively built session identifying the pre key.

        Returns:
            Whether the pre key was deleted; ``False`` (no exception) if it does not exist.
        """

    @abstractmethod
    async def delete_hidden_pre_keys(self) -> None:
        """Delete every pre key hidden by :meth:`hide_pre_key`."""

    @abstractmethod
    async def get_num_visible_pre_keys(self) -> int:
        """Count the visible pre keys.

        Returns:
            The number of pre keys that :meth:`get_bundle` includes.
        """

    @abstractmethod
    async def generate_pre_keys(self, num_pre_keys: int) -> None:
        """Generate and store pre keys.

        Args:
            num_pre_keys: how many to generate.
        """

    @abstractmethod
    async def get_bundle(self, bare_jid: str, device_id: int) -> Bundle:
        """Build this device's bundle (without hidden pre keys).

        Args:
            bare_jid: the own bare JID, to put into the bundle.
            device_id: the own device id, to put into the bundle.

        Returns:
            The bundle.
        """

    # -- data management ----------------------------------------------------------------------------

    @abstractmethod
    async def purge(self) -> None:
        """Delete all of this backend's data from the storage."""

    @abstractmethod
    async def purge_bare_jid(self, bare_jid: str) -> None:
        """Delete all data about an account.

        Args:
            bare_jid: the bare JID of the account.
        """

    async def delete_session(self, bare_jid: str, device_id: int) -> bool:
        """Delete the session with one device, if there is one (an addition of this library: not
        abstract, so 1.0.2-era backends still work; those raise ``NotImplementedError``).

        Args:
            bare_jid: the account of the device.
            device_id: the device id.

        Returns:
            Whether there was a session.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot delete a single session")

    # -- 2.x: signed device labels (XEP-0384 0.9). Not abstract, so 1.0.2-era backends still work. ----

    @property
    def supports_labels(self) -> bool:
        """Whether this backend can sign and verify device labels. ``False`` unless overridden."""
        return False

    async def sign_own_label(self, label: str) -> bytes:
        """Sign this device's label with the identity key.

        Args:
            label: the label.

        Returns:
            The signature.

        Raises:
            NotImplementedError: the backend does not support labels (see :attr:`supports_labels`).
        """
        raise NotImplementedError(f"backend {type(self).__name__} does not support signed labels")

    async def verify_label_signature(self, label: str, signature: bytes, identity_key: bytes) -> bool:
        """Verify the signature of a device's label.

        Args:
            label: the label.
            signature: the signature from the device list.
            identity_key: the device's identity key (Ed25519 public key).

        Returns:
            Whether the signature is valid.

        Raises:
            NotImplementedError: the backend does not support labels (see :attr:`supports_labels`).
        """
        raise NotImplementedError(f"backend {type(self).__name__} does not support signed labels")
