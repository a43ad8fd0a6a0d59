"""The shared implementation of the ``twomemo`` and ``oldmemo`` backends on top of ``omemo_engine``.

Theory of operation. Both namespaces use the same X3DH and Double Ratchet engine with a different
:class:`~omemo_engine.profile.Profile`, so one backend class does the work and the two packages
only add what really differs: the payload cipher, how a bundle carries its identity key and
signature, and the concrete value classes (``BundleImpl``, ``SessionImpl``...) that the python-omemo
API exposes per package.

Stored state (all keys below ``/{namespace}/``), two kinds of versioned records:

- ``keys``: the device's own key state (signed pre keys, one-time pre keys visible and hidden, the
  pre-key id counter, rotation timestamps), one JSON record. Written only when the keys change.
- ``session/{bare_jid}/{device_id}``: one compact binary record per session (bytes through
  :meth:`~omemo.storage.Storage.store_bytes`): key exchange and ratchet state together, so a
  steady-state encrypt or decrypt writes exactly one record.
- ``session-jids`` and ``session-devices/{bare_jid}``: the index of stored sessions (for
  :meth:`purge` / :meth:`purge_bare_jid`), written only when a session with a new device is stored.

Hidden pre keys are persisted like visible ones (unlike the reference, PROTOCOL.md 6.2), so key
exchanges that reuse a pre key during history synchronisation keep working until
:meth:`delete_hidden_pre_keys`.

The identity key pair is not copied into the backend's records: it is read through
:meth:`omemo.identity_key_pair.IdentityKeyPair.get` and cached.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import ClassVar, Optional, Tuple

from omemo_engine import ratchet, x3dh, xeddsa
from omemo_engine.errors import (
    AuthenticationFailed,
    EngineError,
    InvalidBundleSignature,
    InvalidState,
    KeyExchangeError,
    MalformedMessage,
    NoPreKeys,
    TooManySkippedKeys,
)
from omemo_engine.errors import DuplicateMessage as EngineDuplicateMessage
from omemo_engine.profile import Profile
from omemo_engine.ratchet import RatchetState, decode_skipped, encode_skipped

from .._runtime import Lock, lock_for_running_framework
from ..backend import (
    Backend,
    BundleSignatureInvalid,
    BundleWithoutPreKeys,
    DecryptionFailed,
    DuplicateMessage,
    KeyExchangeFailed,
    MessageAuthenticationFailed,
    SessionDamaged,
    TooManySkippedMessageKeys,
    UnknownPreKey,
)
from ..bundle import Bundle
from ..identity_key_pair import IdentityKeyPair
from ..message import Content, EncryptedKeyMaterial, KeyExchange, PlainKeyMaterial
from ..session import Initiation, Session
from ..storage import Storage
from .records import MAX_ID, UNKNOWN_SPK_ID, KeyState, SignedPreKey
from .reference_import import (
    MARKER,
    delete_reference_data,
    delete_reference_sessions,
    load_reference_keys,
    load_reference_sessions,
    marker_record,
)

__all__ = [
    "EngineBackend",
    "EngineBundle",
    "EngineEncryptedKeyMaterial",
    "EngineKeyExchange",
    "EnginePlainKeyMaterial",
    "EngineSession",
]

_log = logging.getLogger(__name__)

#: How many sessions a backend keeps decoded in memory (least recently used dropped first).
SESSION_CACHE_SIZE = 4096

_TAG_LENGTH = 16
#: Session records: version 1 stored the key exchange's pre key and signed pre key ids as signed
#: 32-bit integers (-1: signed pre key id unknown); version 2 stores them unsigned, so that any
#: uint32 id of another device fits, with the flag :data:`_SPK_ID_UNKNOWN`. Both are read.
#: Version 3 is version 2 whose ratchet state leaves its skipped message keys out (flag
#: :data:`_SKIPPED_APART`): they are kept under a key of their own (``session-skipped/JID/ID``), written
#: only when they change, so that a session holding many of them costs the same per message as one
#: holding none. A session without skipped keys is written as version 2, exactly as before.
_SESSION_VERSION = 2
_SESSION_VERSION_APART = 3
_SESSION_HEADER = struct.Struct(">BBBII32s32sB")
_SESSION_HEADER_V1 = struct.Struct(">BBBii32s32sB")
_HAS_SPK, _HAS_PK, _SPK_ID_UNKNOWN, _SKIPPED_APART = 1, 2, 4, 8
#: The fields of a RatchetState before its last one, ``skipped``.
_STATE_FIELDS_BUT_SKIPPED = len(RatchetState._fields) - 1
assert RatchetState._fields[-1] == "skipped"


# -- value classes exposed through the python-omemo API -------------------------------------------


class EngineBundle(Bundle):
    """A device's bundle: identity key (Ed25519), signed pre key with id and signature, pre keys.

    ``signed_pre_key_signature`` is the plain Ed25519 signature; the legacy namespace's sign-bit
    convention is applied only when (de)serialising XML.
    """

    NAMESPACE: ClassVar[str]

    __slots__ = ("_bare_jid", "_device_id", "_engine")

    def __init__(
        self,
        bare_jid: str,
        device_id: int,
        identity_key: bytes,
        signed_pre_key_id: int,
        signed_pre_key: bytes,
        signed_pre_key_signature: bytes,
        pre_keys: Mapping[int, bytes],
        identity_key_curve: Optional[bytes] = None,
    ) -> None:
        self._bare_jid = bare_jid
        self._device_id = device_id
        self._engine = x3dh.PreKeyBundle(
            identity_key=identity_key,
            signed_pre_key_id=signed_pre_key_id,
            signed_pre_key=signed_pre_key,
            signed_pre_key_signature=signed_pre_key_signature,
            pre_keys=dict(pre_keys),
            identity_key_curve=identity_key_curve,
        )

    @property
    def namespace(self) -> str:
        return self.NAMESPACE

    @property
    def bare_jid(self) -> str:
        return self._bare_jid

    @property
    def device_id(self) -> int:
        return self._device_id

    @property
    def identity_key(self) -> bytes:
        return self._engine.identity_key

    @property
    def signed_pre_key_id(self) -> int:
        """The id of the signed pre key."""
        return self._engine.signed_pre_key_id

    @property
    def signed_pre_key(self) -> bytes:
        """The signed pre key (X25519 public key)."""
        return self._engine.signed_pre_key

    @property
    def signed_pre_key_signature(self) -> bytes:
        """The Ed25519 signature of the signed pre key by the identity key."""
        return self._engine.signed_pre_key_signature

    @property
    def pre_keys(self) -> Mapping[int, bytes]:
        """The one-time pre keys (X25519 public keys) by id."""
        return self._engine.pre_keys

    @property
    def engine_bundle(self) -> x3dh.PreKeyBundle:
        """The bundle as the X3DH engine takes it."""
        return self._engine

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, EngineBundle)
            and other.NAMESPACE == self.NAMESPACE
            and other._bare_jid == self._bare_jid
            and other._device_id == self._device_id
            and other._engine == self._engine
        )

    def __hash__(self) -> int:
        e = self._engine
        return hash(
            (self.NAMESPACE, self._bare_jid, self._device_id, e.identity_key, e.signed_pre_key_id,
             e.signed_pre_key, e.signed_pre_key_signature, frozenset(e.pre_keys.items()))
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(bare_jid={self._bare_jid!r}, device_id={self._device_id}, "
            f"signed_pre_key_id={self.signed_pre_key_id}, pre_keys={len(self.pre_keys)})"
        )


class EngineKeyExchange(KeyExchange):
    """The X3DH data the initiator sends until the session is confirmed.

    A parsed ("network") instance carries only ids and the initiator's keys; a stored instance also
    the public signed pre key and pre key that were used.
    """

    __slots__ = ("_ik", "ephemeral_key", "pre_key", "pre_key_id", "signed_pre_key", "signed_pre_key_id")

    def __init__(
        self,
        identity_key: bytes,
        ephemeral_key: bytes,
        signed_pre_key_id: int,
        pre_key_id: int,
        signed_pre_key: Optional[bytes] = None,
        pre_key: Optional[bytes] = None,
    ) -> None:
        self._ik = identity_key
        self.ephemeral_key = ephemeral_key
        self.signed_pre_key_id = signed_pre_key_id
        self.pre_key_id = pre_key_id
        self.signed_pre_key = signed_pre_key
        self.pre_key = pre_key

    @property
    def identity_key(self) -> bytes:
        return self._ik

    def is_network_instance(self) -> bool:
        """Whether this instance was parsed from the wire (ids only, no public pre keys)."""
        return self.signed_pre_key is None

    def is_migrated_instance(self) -> bool:
        """Whether this key exchange comes from migrated pre-1.0 data (signed pre key id unknown)."""
        return self.signed_pre_key_id == UNKNOWN_SPK_ID

    def builds_same_session(self, other: KeyExchange) -> bool:
        if not isinstance(other, EngineKeyExchange) or type(other).__module__ != type(self).__module__:
            return False
        if self.is_migrated_instance() or other.is_migrated_instance():
            return self._ik == other._ik and self.pre_key_id == other.pre_key_id
        return (
            self._ik == other._ik
            and self.ephemeral_key == other.ephemeral_key
            and self.signed_pre_key_id == other.signed_pre_key_id
            and self.pre_key_id == other.pre_key_id
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EngineKeyExchange) and self.builds_same_session(other)

    def __hash__(self) -> int:
        return hash((self._ik, self.pre_key_id))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(identity_key={self._ik.hex()}, "
            f"signed_pre_key_id={self.signed_pre_key_id}, pre_key_id={self.pre_key_id})"
        )


class EnginePlainKeyMaterial(PlainKeyMaterial):
    """The key of a payload and its authentication tag (empty for empty messages)."""

    __slots__ = ("_auth_tag", "_key")

    def __init__(self, key: bytes, auth_tag: bytes) -> None:
        self._key = key
        self._auth_tag = auth_tag

    @property
    def key(self) -> bytes:
        """The payload key."""
        return self._key

    @property
    def auth_tag(self) -> bytes:
        """The payload's authentication tag (empty for empty messages)."""
        return self._auth_tag

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<secret>)"


class EngineEncryptedKeyMaterial(EncryptedKeyMaterial):
    """Key material encrypted for one device: the sealed ratchet message as on the wire."""

    __slots__ = ("_bare_jid", "_device_id", "encrypted_message")

    def __init__(self, bare_jid: str, device_id: int, encrypted_message: bytes) -> None:
        self._bare_jid = bare_jid
        self._device_id = device_id
        self.encrypted_message = encrypted_message

    @property
    def bare_jid(self) -> str:
        return self._bare_jid

    @property
    def device_id(self) -> int:
        return self._device_id

    def serialize(self) -> bytes:
        """The wire bytes (OMEMOAuthenticatedMessage / SignalMessage)."""
        return self.encrypted_message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bare_jid={self._bare_jid!r}, device_id={self._device_id})"


class EngineSession(Session):
    """A session with one device. Its ratchet state is an immutable engine value that is replaced
    (in memory) by every encryption and successful decryption; only
    :meth:`EngineBackend.store_session` persists it."""

    NAMESPACE: ClassVar[str]

    __slots__ = ("_bare_jid", "_confirmed", "_device_id", "_initiation", "_key_exchange", "state")

    def __init__(
        self,
        bare_jid: str,
        device_id: int,
        initiation: Initiation,
        key_exchange: EngineKeyExchange,
        state: RatchetState,
        confirmed: bool = False,
    ) -> None:
        self._bare_jid = bare_jid
        self._device_id = device_id
        self._initiation = initiation
        self._key_exchange = key_exchange
        self._confirmed = confirmed
        self.state = state

    @property
    def namespace(self) -> str:
        return self.NAMESPACE

    @property
    def bare_jid(self) -> str:
        return self._bare_jid

    @property
    def device_id(self) -> int:
        return self._device_id

    @property
    def initiation(self) -> Initiation:
        return self._initiation

    @property
    def confirmed(self) -> bool:
        return self._confirmed

    @property
    def key_exchange(self) -> EngineKeyExchange:
        return self._key_exchange

    @property
    def associated_data(self) -> bytes:
        """The X3DH associated data of this session."""
        return self.state.associated_data

    @property
    def receiving_chain_length(self) -> Optional[int]:
        return self.state.receiving_chain_length

    @property
    def sending_chain_length(self) -> int:
        return self.state.sending_n

    def confirm(self) -> None:
        """Mark the session as confirmed (a message from the other device was decrypted)."""
        self._confirmed = True

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(bare_jid={self._bare_jid!r}, device_id={self._device_id}, "
            f"initiation={self._initiation.name}, confirmed={self._confirmed}, state={self.state!r})"
        )


# -- session records ----------------------------------------------------------------------------------


def _encode_session(session: EngineSession) -> bytes:
    """The session record; with skipped message keys, version 3 without them (stored apart)."""
    kex = session.key_exchange
    spk_id = kex.signed_pre_key_id
    apart = bool(session.state.skipped)
    flags = (
        (kex.signed_pre_key is not None) * _HAS_SPK
        | (kex.pre_key is not None) * _HAS_PK
        | (spk_id == UNKNOWN_SPK_ID) * _SPK_ID_UNKNOWN
        | apart * _SKIPPED_APART
    )
    head = _SESSION_HEADER.pack(
        _SESSION_VERSION_APART if apart else _SESSION_VERSION,
        session.initiation is Initiation.PASSIVE,
        session.confirmed,
        kex.pre_key_id,
        0 if spk_id == UNKNOWN_SPK_ID else spk_id,
        kex.identity_key,
        kex.ephemeral_key,
        flags,
    )
    state = session.state.to_bytes(with_skipped=not apart)
    return b"".join((head, kex.signed_pre_key or b"", kex.pre_key or b"", state))


# -- the backend ------------------------------------------------------------------------------------


class EngineBackend(Backend):
    """A :class:`~omemo.backend.Backend` on the shared engine; subclassed once per namespace.

    Subclasses set the class attributes below and implement the payload cipher
    (:meth:`encrypt_plaintext`, :meth:`encrypt_empty`, :meth:`decrypt_plaintext`).
    """

    PROFILE: ClassVar[Profile]
    BUNDLE: ClassVar[type[EngineBundle]]
    SESSION: ClassVar[type[EngineSession]]
    KEY_EXCHANGE: ClassVar[type[EngineKeyExchange]]
    ENCRYPTED_KEY_MATERIAL: ClassVar[type[EngineEncryptedKeyMaterial]]
    PLAIN_KEY_MATERIAL: ClassVar[type[EnginePlainKeyMaterial]]
    #: Length of the payload key; the key material is the key plus a 16-byte tag (or no tag).
    PAYLOAD_KEY_LENGTH: ClassVar[int]

    def __init__(
        self,
        storage: Storage,
        max_num_per_session_skipped_keys: int = 1000,
        max_num_per_message_skipped_keys: Optional[int] = None,
    ) -> None:
        super().__init__(max_num_per_session_skipped_keys, max_num_per_message_skipped_keys)
        self._storage = storage
        self._prefix = f"/{self.PROFILE.name}/"
        self._identity: Optional[IdentityKeyPair] = None
        self._identity_priv = b""
        self._identity_curve = b""
        self._keys: Optional[KeyState] = None
        #: The stored key state record as loaded but not decoded yet (see get_num_visible_pre_keys).
        self._stored_keys: Optional[object] = None
        self._index: Optional[dict[str, list[int]]] = None
        #: Decoded sessions by (JID, device): initiation, confirmed, key exchange, state, and whether the
        #: stored record is an older one holding its skipped keys inline (a version 1 or 2 record written
        #: before they were kept apart: its next write is a full one).
        self._sessions: OrderedDict[
            tuple[str, int], tuple[Initiation, bool, EngineKeyExchange, RatchetState, bool]
        ] = OrderedDict()
        #: Whether the reference backend's data was imported or found absent (see reference_import).
        self._reference_checked = False
        #: Serialises concurrent adoptions of the reference data (made on first use).
        self._adoption_lock: Optional[Lock] = None
        #: Injectable for tests: the RNG and the clock used by this backend.
        self._random_bytes: Callable[[int], bytes] = os.urandom
        self._clock: Callable[[], float] = time.time

    @property
    def namespace(self) -> str:
        return self.PROFILE.name

    # -- identity and key state -------------------------------------------------------------------

    async def _identity_key_pair(self) -> tuple[bytes, bytes]:
        """Our identity (private scalar, Ed25519 public key); also caches the Curve25519 public key."""
        if self._identity is None:
            identity = await IdentityKeyPair.get(self._storage)
            # Clamped, as the public key is derived from the clamped scalar: migrated legacy data may
            # hold an unclamped private key, and XEdDSA signs with the scalar as given.
            self._identity_priv = xeddsa.clamp(identity.as_priv().priv)
            self._identity_curve = xeddsa.priv_to_curve25519_pub(self._identity_priv)
            self._identity = identity
        return self._identity_priv, self._identity.identity_key

    def _new_signed_pre_key(self, key_id: int, identity_priv: bytes) -> SignedPreKey:
        priv = self._random_bytes(32)
        pub = xeddsa.priv_to_curve25519_pub(priv)
        signature = xeddsa.sign(
            identity_priv, self.PROFILE.encode_signed_pre_key(pub), random_bytes=self._random_bytes
        )
        return SignedPreKey(key_id, priv, pub, signature, int(self._clock()))

    async def _key_state(self) -> KeyState:
        """The decoded key state: loaded (or, first, imported or generated) on the first call.

        Raises:
            InvalidState: the stored record is corrupt (on every call until it is repaired).
        """
        if self._keys is None:
            # A record already loaded by get_num_visible_pre_keys is decoded now; it is taken first, so
            # that a corrupt record is read from the storage again by the next call, as before.
            stored, self._stored_keys = self._stored_keys, None
            if stored is None:
                stored = (await self._storage.load(self._prefix + "keys")).maybe(None)
                if self._keys is not None:  # loaded or changed by a concurrent call meanwhile: newer
                    return self._keys
            if stored is not None:
                self._keys = KeyState.from_json(stored)
            else:
                await self._adopt_reference_data()  # may store imported keys (sets self._keys)
                if self._keys is None:
                    identity_priv, _ = await self._identity_key_pair()
                    self._keys = KeyState(self._new_signed_pre_key(1, identity_priv), None, {}, {}, 1)
                    await self._store_keys(self._keys)
        return self._keys

    async def _adopt_reference_data(self) -> None:
        """Import the reference backend's data into our records, once per storage
        (:mod:`.reference_import` has the theory).

        Does nothing (and writes nothing) if the marker exists, if the backend has a key state of its
        own already, or if there is no reference ``x3dh`` record, so a call costs at most three loads.
        After an import the marker records what was imported and which sessions were left out.
        Concurrent calls are serialised by a lock per instance (e.g. the signed pre key rotation task
        and a decryption at start-up: importing twice could overwrite a session used in between);
        once one has finished, later calls return at once.

        Raises:
            InvalidState: the reference key records are corrupt (nothing was written; the message names
                the storage key). Corrupt sessions do not raise: they are logged and left out.
            StorageException: forwarded from the storage.
        """
        if self._reference_checked:
            return
        if self._adoption_lock is None:
            self._adoption_lock = lock_for_running_framework()
        await self._adoption_lock.acquire()
        try:
            if not self._reference_checked:
                await self._import_reference_data()
                self._reference_checked = True
        finally:
            self._adoption_lock.release()

    async def _import_reference_data(self) -> None:
        """The work of :meth:`_adopt_reference_data`, under its lock."""
        storage = self._storage
        prefix = self._prefix
        if (await storage.load(prefix + MARKER)).is_just or (await storage.load(prefix + "keys")).is_just:
            return  # imported before, or the backend has keys of its own: never mix the two
        identity_priv, identity_key = await self._identity_key_pair()
        converted = await load_reference_keys(
            storage, self.PROFILE, identity_priv, identity_key, self._random_bytes
        )
        if converted is None:
            return  # no reference data (a fresh account): our keys are made as usual
        sessions, skipped = await load_reference_sessions(storage, self.namespace)
        for ref in sessions:
            if (await storage.load_bytes(self._session_key(ref.bare_jid, ref.device_id))).is_just:
                continue  # written by an earlier, interrupted import
            kex = self.KEY_EXCHANGE(
                ref.identity_key,
                ref.ephemeral_key,
                ref.signed_pre_key_id,
                ref.pre_key_id,
                ref.signed_pre_key,
                ref.pre_key,
            )
            await self.store_session(
                self.SESSION(ref.bare_jid, ref.device_id, ref.initiation, kex, ref.state, ref.confirmed)
            )
        await self._store_keys(converted.keys)
        await storage.store(prefix + MARKER, marker_record(converted, len(sessions), skipped))
        _log.info(
            "imported the reference %s data: signed pre key %d, %d pre keys, %d session(s)%s",
            self.namespace,
            converted.keys.signed_pre_key.key_id,
            len(converted.keys.pre_keys),
            len(sessions),
            f", {len(skipped)} left out" if skipped else "",
        )

    async def _store_keys(self, keys: KeyState) -> None:
        await self._storage.store(self._prefix + "keys", keys.to_json())
        self._keys = keys
        self._stored_keys = None

    # -- sessions ---------------------------------------------------------------------------------

    def _session_key(self, bare_jid: str, device_id: int) -> str:
        return f"{self._prefix}session/{bare_jid}/{device_id}"

    def _skipped_key(self, bare_jid: str, device_id: int) -> str:
        return f"{self._prefix}session-skipped/{bare_jid}/{device_id}"

    def _decode_session(
        self, bare_jid: str, device_id: int, data: bytes, skipped: Optional[bytes] = None
    ) -> EngineSession:
        """Decode a session record; ``skipped`` is the record of its skipped keys if it has them apart
        (see :meth:`_skipped_apart`)."""
        try:
            version, passive, confirmed, pk_id, spk_id, ik, ek, flags = _SESSION_HEADER.unpack_from(data)
            if version == 1:
                _, _, _, pk_id, spk_id, _, _, _ = _SESSION_HEADER_V1.unpack_from(data)
            elif version not in (_SESSION_VERSION, _SESSION_VERSION_APART):
                raise InvalidState(f"unknown session record version {version}")
            if version != 1 and flags & _SPK_ID_UNKNOWN:
                spk_id = UNKNOWN_SPK_ID
            if bool(flags & _SKIPPED_APART) != (version == _SESSION_VERSION_APART):
                raise InvalidState(f"session record of version {version} with flags 0x{flags:02x}")
            pos = _SESSION_HEADER.size
            spk = pk = None
            if flags & _HAS_SPK:
                spk, pos = data[pos : pos + 32], pos + 32
            if flags & _HAS_PK:
                pk, pos = data[pos : pos + 32], pos + 32
            state = RatchetState.from_bytes(data[pos:])
            if flags & _SKIPPED_APART:
                if skipped is None:
                    raise InvalidState("the record of its skipped message keys is missing")
                state = state._replace(skipped=decode_skipped(skipped))
        except struct.error:
            raise InvalidState("session record is truncated") from None
        kex = self.KEY_EXCHANGE(ik, ek, spk_id, pk_id, spk, pk)
        initiation = Initiation.PASSIVE if passive else Initiation.ACTIVE
        return self.SESSION(bare_jid, device_id, initiation, kex, state, bool(confirmed))

    async def load_session(self, bare_jid: str, device_id: int) -> Optional[EngineSession]:
        cached = self._sessions.get((bare_jid, device_id))
        if cached is not None:
            self._sessions.move_to_end((bare_jid, device_id))
            initiation, confirmed, kex, state, _ = cached
            return self.SESSION(bare_jid, device_id, initiation, kex, state, confirmed)
        data = await self._load_session_record(bare_jid, device_id)
        if data is None:
            if self._reference_checked:
                return None
            await self._adopt_reference_data()
            data = await self._load_session_record(bare_jid, device_id)
            if data is None:
                return None
        try:
            skipped = None
            if self._skipped_apart(data):
                key = self._skipped_key(bare_jid, device_id)
                try:
                    skipped = (await self._storage.load_bytes(key)).maybe(None)
                except TypeError as exc:  # not a base64 string: changed outside this library
                    raise InvalidState(f"the record of its skipped message keys is damaged ({exc})") from None
            session = self._decode_session(bare_jid, device_id, data, skipped)
        except InvalidState as exc:
            raise self._damaged(bare_jid, device_id, exc) from None
        self._remember(session, inline=skipped is None and bool(session.state.skipped))
        return session

    @staticmethod
    def _skipped_apart(data: bytes) -> bool:
        """Whether a session record keeps its skipped message keys under a key of their own."""
        return len(data) >= _SESSION_HEADER.size and data[0] == _SESSION_VERSION_APART

    async def _load_session_record(self, bare_jid: str, device_id: int) -> Optional[bytes]:
        try:
            return (await self._storage.load_bytes(self._session_key(bare_jid, device_id))).maybe(None)
        except TypeError as exc:  # not a base64 string: changed outside this library
            raise self._damaged(bare_jid, device_id, exc) from None

    def _damaged(self, bare_jid: str, device_id: int, exc: Exception) -> SessionDamaged:
        return SessionDamaged(
            f"the stored session with device {device_id} of {bare_jid} ({self.namespace}) under the key"
            f" {self._session_key(bare_jid, device_id)!r} is damaged ({exc}); only this session is"
            " affected, replace_sessions replaces it"
        )

    def _remember(self, session: EngineSession, inline: bool = False) -> None:
        """Cache the (immutable) parts of a stored session, and whether its record holds its skipped keys
        inline; the least recently used are dropped."""
        key = (session.bare_jid, session.device_id)
        self._sessions[key] = (
            session.initiation,
            session.confirmed,
            session.key_exchange,
            session.state,
            inline,
        )
        self._sessions.move_to_end(key)
        if len(self._sessions) > SESSION_CACHE_SIZE:
            self._sessions.popitem(last=False)

    def forget_idle(self, keep: Callable[[str], bool]) -> None:
        """Drop the cached sessions of the bare JIDs for which ``keep`` is false (the session manager
        calls this for its idle contacts; the storage holds the same)."""
        for key in [key for key in self._sessions if not keep(key[0])]:
            del self._sessions[key]

    def invalidate_caches(self) -> None:
        """Forget every in-memory copy of stored state (sessions, key state, session index).

        The session manager calls this when a storage transaction was rolled back, so that nothing
        cached can be ahead of the storage.
        """
        self._sessions.clear()
        self._keys = None
        self._stored_keys = None
        self._index = None

    async def _session_index(self) -> dict[str, list[int]]:
        if self._index is None:
            jids = (await self._storage.load_list(self._prefix + "session-jids", str)).maybe([])
            self._index = {}
            for jid in jids:
                devices = await self._storage.load_list(f"{self._prefix}session-devices/{jid}", int)
                self._index[jid] = devices.maybe([])
        return self._index

    async def store_session(self, session: Session) -> None:
        """Persist a session: its record, and its skipped message keys apart if it has any.

        The skipped keys are written only when they changed since the session was loaded or stored
        (one write per message in the steady state however many the session holds). Written without a
        storage transaction, the two writes are ordered so that a crash between them leaves a usable
        session: new skipped keys are written BEFORE the record that refers to them (a crash in between
        leaves the old state plus keys that the old state derives again in the same way), and the keys
        record is deleted only AFTER a record that no longer refers to it.
        """
        assert isinstance(session, self.SESSION)
        key = (session.bare_jid, session.device_id)
        state = session.state
        skipped = state.skipped
        cached = self._sessions.get(key)
        known = cached[3].skipped if cached is not None else None
        storage = self._storage
        inline = cached is not None and cached[4]  # the stored record is an older one, keys inline
        try:
            if (
                known  # so the stored record keeps the skipped keys apart (unless inline)
                and not inline
                and cached is not None
                and cached[2] is session.key_exchange
                and cached[1] == session.confirmed
                and cached[0] is session.initiation
                and cached[3][:_STATE_FIELDS_BUT_SKIPPED] == state[:_STATE_FIELDS_BUT_SKIPPED]
            ):
                # Only skipped keys changed (one was used): the record stays as it is.
                if skipped is not known:
                    await storage.store_bytes(self._skipped_key(*key), encode_skipped(skipped))
            else:
                if skipped and (skipped is not known or inline):
                    await storage.store_bytes(self._skipped_key(*key), encode_skipped(skipped))
                await storage.store_bytes(self._session_key(*key), _encode_session(session))
                if not skipped and (known is None or known):  # there were skipped keys, or maybe
                    await storage.delete(self._skipped_key(*key))
        except BaseException:
            self._sessions.pop(key, None)
            raise
        self._remember(session)
        index = self._index if self._index is not None else await self._session_index()
        devices = index.get(session.bare_jid)
        if devices is None or session.device_id not in devices:
            if devices is None:
                await self._storage.store(self._prefix + "session-jids", [*index, session.bare_jid])
                devices = index[session.bare_jid] = []
            await self._storage.store(
                f"{self._prefix}session-devices/{session.bare_jid}", [*devices, session.device_id]
            )
            devices.append(session.device_id)

    # -- session building -------------------------------------------------------------------------

    def _key_material_bytes(self, plain_key_material: PlainKeyMaterial) -> bytes:
        """The bytes that travel through the ratchet for this key material: key || tag."""
        assert isinstance(plain_key_material, self.PLAIN_KEY_MATERIAL)
        return plain_key_material.key + plain_key_material.auth_tag

    def _make_key_material(self, data: bytes) -> EnginePlainKeyMaterial:
        """Inverse of :meth:`_key_material_bytes`.

        Raises:
            MalformedMessage: the decrypted bytes are not key material of this namespace.
        """
        length = self.PAYLOAD_KEY_LENGTH
        if len(data) not in (length, length + _TAG_LENGTH):
            raise MalformedMessage(
                f"decrypted key material has {len(data)} bytes, expected {length} or {length + _TAG_LENGTH}"
            )
        return self.PLAIN_KEY_MATERIAL(data[:length], data[length:])

    async def build_session_active(
        self, bare_jid: str, device_id: int, bundle: Bundle, plain_key_material: PlainKeyMaterial
    ) -> Tuple[EngineSession, EngineEncryptedKeyMaterial]:
        assert isinstance(bundle, self.BUNDLE)
        identity_priv, identity_key = await self._identity_key_pair()
        try:
            result = x3dh.active(
                self.PROFILE,
                identity_priv,
                identity_key,
                bundle.engine_bundle,
                random_bytes=self._random_bytes,
                identity_key_curve=self._identity_curve,
            )
            state = ratchet.initialize_active(
                self.PROFILE,
                result.shared_secret,
                result.associated_data,
                result.signed_pre_key,
                self._random_bytes,
            )
        except KeyExchangeError as exc:
            kind = (
                BundleSignatureInvalid
                if isinstance(exc, InvalidBundleSignature)
                else BundleWithoutPreKeys
                if isinstance(exc, NoPreKeys)
                else KeyExchangeFailed
            )
            raise kind(
                f"key exchange with device {device_id} of {bare_jid} ({self.namespace}) failed: {exc}"
            ) from None
        kex = self.KEY_EXCHANGE(
            identity_key,
            result.ephemeral_key,
            result.signed_pre_key_id,
            result.pre_key_id,
            result.signed_pre_key,
            result.pre_key,
        )
        session = self.SESSION(bare_jid, device_id, Initiation.ACTIVE, kex, state)
        return session, await self.encrypt_key_material(session, plain_key_material)

    async def build_session_passive(
        self,
        bare_jid: str,
        device_id: int,
        key_exchange: KeyExchange,
        encrypted_key_material: EncryptedKeyMaterial,
    ) -> Tuple[EngineSession, PlainKeyMaterial]:
        assert isinstance(key_exchange, self.KEY_EXCHANGE)
        assert isinstance(encrypted_key_material, self.ENCRYPTED_KEY_MATERIAL)
        where = f"device {device_id} of {bare_jid} ({self.namespace})"
        keys = await self._key_state()
        spk = next(
            (
                k
                for k in (keys.signed_pre_key, keys.old_signed_pre_key)
                if k is not None and k.key_id == key_exchange.signed_pre_key_id
            ),
            None,
        )
        if spk is None:
            raise UnknownPreKey(
                f"key exchange from {where} uses signed pre key {key_exchange.signed_pre_key_id}, "
                "which is not known (it may have been rotated out)"
            )
        pre_key = keys.pre_keys.get(key_exchange.pre_key_id) or keys.hidden_pre_keys.get(
            key_exchange.pre_key_id
        )
        if pre_key is None:
            raise UnknownPreKey(
                f"key exchange from {where} uses pre key {key_exchange.pre_key_id}, which is not known "
                "(already used and deleted, or never ours)"
            )
        identity_priv, identity_key = await self._identity_key_pair()
        try:
            shared_secret, ad = x3dh.passive(
                self.PROFILE,
                identity_priv=identity_priv,
                identity_key=identity_key,
                signed_pre_key_priv=spk.priv,
                pre_key_priv=pre_key[0],
                other_identity_key=key_exchange.identity_key,
                ephemeral_key=key_exchange.ephemeral_key,
                identity_key_curve=self._identity_curve,
            )
        except KeyExchangeError as exc:
            raise KeyExchangeFailed(f"key exchange from {where} failed: {exc}") from None
        state = ratchet.initialize_passive(self.PROFILE, shared_secret, ad, spk.priv, spk.pub)
        kex = self.KEY_EXCHANGE(
            key_exchange.identity_key,
            key_exchange.ephemeral_key,
            spk.key_id,
            key_exchange.pre_key_id,
            spk.pub,
            pre_key[1],
        )
        session = self.SESSION(bare_jid, device_id, Initiation.PASSIVE, kex, state)
        return session, await self.decrypt_key_material(session, encrypted_key_material)

    # -- key material -------------------------------------------------------------------------------

    async def encrypt_key_material(
        self, session: Session, plain_key_material: PlainKeyMaterial
    ) -> EngineEncryptedKeyMaterial:
        assert isinstance(session, self.SESSION)
        session.state, data = ratchet.encrypt(
            self.PROFILE, session.state, self._key_material_bytes(plain_key_material)
        )
        return self.ENCRYPTED_KEY_MATERIAL(session.bare_jid, session.device_id, data)

    async def decrypt_key_material(
        self, session: Session, encrypted_key_material: EncryptedKeyMaterial
    ) -> PlainKeyMaterial:
        assert isinstance(session, self.SESSION)
        assert isinstance(encrypted_key_material, self.ENCRYPTED_KEY_MATERIAL)
        try:
            state, data = ratchet.decrypt(
                self.PROFILE,
                session.state,
                encrypted_key_material.encrypted_message,
                max_skipped_per_message=self.max_num_per_message_skipped_keys,
                max_skipped_per_session=self.max_num_per_session_skipped_keys,
                random_bytes=self._random_bytes,
            )
            plain = self._make_key_material(data)
        except TooManySkippedKeys as exc:
            raise TooManySkippedMessageKeys(
                f"message from device {session.device_id} of {session.bare_jid} ({self.namespace}): {exc}"
            ) from None
        except EngineError as exc:
            kind = (
                DuplicateMessage
                if isinstance(exc, EngineDuplicateMessage)
                else MessageAuthenticationFailed
                if isinstance(exc, AuthenticationFailed)
                else DecryptionFailed
            )
            raise kind(
                f"cannot decrypt the key material from device {session.device_id} of {session.bare_jid} "
                f"({self.namespace}): {exc}"
            ) from None
        session.state = state
        session.confirm()
        return plain

    # -- payload (per namespace) ---------------------------------------------------------------------

    @abstractmethod
    async def encrypt_plaintext(self, plaintext: bytes) -> Tuple[Content, PlainKeyMaterial]: ...

    @abstractmethod
    async def encrypt_empty(self) -> Tuple[Content, PlainKeyMaterial]: ...

    @abstractmethod
    async def decrypt_plaintext(self, content: Content, plain_key_material: PlainKeyMaterial) -> bytes: ...

    # -- signed pre key and pre keys ------------------------------------------------------------------

    async def signed_pre_key_age(self) -> int:
        keys = await self._key_state()
        return max(0, int(self._clock()) - keys.signed_pre_key.timestamp)

    async def rotate_signed_pre_key(self) -> None:
        keys = await self._key_state()
        identity_priv, _ = await self._identity_key_pair()
        new_id = keys.signed_pre_key.key_id % MAX_ID + 1
        await self._store_keys(
            replace(
                keys,
                signed_pre_key=self._new_signed_pre_key(new_id, identity_priv),
                old_signed_pre_key=keys.signed_pre_key,
            )
        )

    def _session_pre_key_id(self, session: Session) -> Optional[int]:
        assert isinstance(session, self.SESSION)
        if session.initiation is not Initiation.PASSIVE:
            return None
        return session.key_exchange.pre_key_id

    async def hide_pre_key(self, session: Session) -> bool:
        pre_key_id = self._session_pre_key_id(session)
        keys = await self._key_state()
        if pre_key_id is None or pre_key_id not in keys.pre_keys:
            return False
        visible = dict(keys.pre_keys)
        hidden = {**keys.hidden_pre_keys, pre_key_id: visible.pop(pre_key_id)}
        await self._store_keys(replace(keys, pre_keys=visible, hidden_pre_keys=hidden))
        return True

    async def delete_pre_key(self, session: Session) -> bool:
        pre_key_id = self._session_pre_key_id(session)
        keys = await self._key_state()
        if pre_key_id is None or (pre_key_id not in keys.pre_keys and pre_key_id not in keys.hidden_pre_keys):
            return False
        visible = {k: v for k, v in keys.pre_keys.items() if k != pre_key_id}
        hidden = {k: v for k, v in keys.hidden_pre_keys.items() if k != pre_key_id}
        await self._store_keys(replace(keys, pre_keys=visible, hidden_pre_keys=hidden))
        return True

    async def delete_hidden_pre_keys(self) -> None:
        keys = await self._key_state()
        if keys.hidden_pre_keys:
            await self._store_keys(replace(keys, hidden_pre_keys={}))

    async def get_num_visible_pre_keys(self) -> int:
        """The number of visible pre keys.

        Before the key state is needed otherwise (e.g. when ``SessionManager.create`` checks whether to
        refill), the count is read off the stored record without decoding it (see
        :meth:`KeyState.count_visible_pre_keys`); the record is kept and decoded on first use, where
        damage that the count does not see raises ``InvalidState``.

        Raises:
            InvalidState: the stored key state is corrupt.
        """
        if self._keys is None:
            stored = self._stored_keys
            if stored is None:
                stored = (await self._storage.load(self._prefix + "keys")).maybe(None)
                if self._keys is None:  # not decoded or changed by a concurrent call meanwhile
                    self._stored_keys = stored
            if stored is not None and self._keys is None:
                try:
                    count = KeyState.count_visible_pre_keys(stored)
                except InvalidState:
                    self._stored_keys = None  # read again next time, like a record that fails to decode
                    raise
                if count is not None:
                    return count
        return len((await self._key_state()).pre_keys)

    async def generate_pre_keys(self, num_pre_keys: int) -> None:
        if num_pre_keys < 0:
            raise ValueError(f"num_pre_keys must not be negative, got {num_pre_keys}")
        keys = await self._key_state()
        if keys.next_pre_key_id + num_pre_keys - 1 > MAX_ID:
            raise ValueError("pre key ids are exhausted (ids are never reused)")
        visible = dict(keys.pre_keys)
        for key_id in range(keys.next_pre_key_id, keys.next_pre_key_id + num_pre_keys):
            priv = self._random_bytes(32)
            visible[key_id] = (priv, xeddsa.priv_to_curve25519_pub(priv))
        await self._store_keys(
            replace(keys, pre_keys=visible, next_pre_key_id=keys.next_pre_key_id + num_pre_keys)
        )

    async def get_bundle(self, bare_jid: str, device_id: int) -> EngineBundle:
        keys = await self._key_state()
        _, identity_key = await self._identity_key_pair()
        spk = keys.signed_pre_key
        return self.BUNDLE(
            bare_jid,
            device_id,
            identity_key,
            spk.key_id,
            spk.pub,
            spk.signature,
            {key_id: pub for key_id, (_, pub) in keys.pre_keys.items()},
        )

    # -- data management --------------------------------------------------------------------------------

    async def purge(self) -> None:
        await delete_reference_data(self._storage, self.namespace)
        index = await self._session_index()
        for bare_jid in list(index):
            await self._purge_sessions(index, bare_jid)
        await self._storage.delete(self._prefix + "session-jids")
        await self._storage.delete(self._prefix + "keys")
        await self._storage.delete(self._prefix + MARKER)
        self.invalidate_caches()

    async def purge_bare_jid(self, bare_jid: str) -> None:
        await self._adopt_reference_data()  # so that imported sessions are purged, not imported later
        await delete_reference_sessions(self._storage, self.namespace, bare_jid)
        index = await self._session_index()
        if bare_jid in index:
            await self._purge_sessions(index, bare_jid)
            await self._storage.store(self._prefix + "session-jids", list(index))

    async def delete_session(self, bare_jid: str, device_id: int) -> bool:
        await self._adopt_reference_data()  # an imported session must not come back later
        index = await self._session_index()
        devices = index.get(bare_jid, [])
        try:
            existed = device_id in devices or (await self.load_session(bare_jid, device_id)) is not None
        except SessionDamaged:
            existed = True  # deleted all the same
        self._sessions.pop((bare_jid, device_id), None)
        await self._storage.delete(self._session_key(bare_jid, device_id))
        await self._storage.delete(self._skipped_key(bare_jid, device_id))
        if device_id in devices:
            devices.remove(device_id)
            await self._storage.store(f"{self._prefix}session-devices/{bare_jid}", list(devices))
        return existed

    async def _purge_sessions(self, index: dict[str, list[int]], bare_jid: str) -> None:
        for device_id in index.pop(bare_jid):
            self._sessions.pop((bare_jid, device_id), None)
            await self._storage.delete(self._session_key(bare_jid, device_id))
            await self._storage.delete(self._skipped_key(bare_jid, device_id))
        await self._storage.delete(f"{self._prefix}session-devices/{bare_jid}")
