"""A toy :class:`omemo.backend.Backend` for testing the session manager. NOT SECURE.

It implements the whole backend contract with honest bookkeeping but trivial, reversible "crypto":

- keys are random bytes; a "public key" is ``SHA-256("pub" || private)``; the shared secret of a session
  is a hash of the public values of the key exchange (anyone can compute it);
- the "ratchet" numbers sending chains by epoch: the initiator sends in odd epochs, the responder in
  even ones, and a side starts a new sending epoch after it received a newer epoch from the other side
  (which resets the other side's receiving chain, as a Double Ratchet step does); message keys are
  ``SHA-256(secret || epoch || n)``, ciphertexts are XOR with a hash stream, MACs are truncated hashes;
- duplicates, forged MACs, unknown (signed) pre keys and too many skipped keys are detected and raise
  the documented backend exceptions.

Only the signatures are real: signed pre keys and labels are signed with the identity key (XEdDSA via
``omemo_engine.xeddsa``), so label verification and SPK checks behave like the real backends.

State lives in the given :class:`~omemo.storage.Storage` under ``/{namespace}/...``, and sessions are
loaded fresh on every ``load_session``, so uncommitted in-memory changes never leak into storage.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import time
from collections.abc import Callable
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

from omemo.backend import Backend, DecryptionFailed, KeyExchangeFailed, TooManySkippedMessageKeys
from omemo.bundle import Bundle
from omemo.identity_key_pair import IdentityKeyPair
from omemo.message import Content, EncryptedKeyMaterial, KeyExchange, PlainKeyMaterial
from omemo.session import Initiation, Session
from omemo.storage import Storage
from omemo_engine import xeddsa
from omemo_engine.errors import EngineError

__all__ = [
    "FakeBackend",
    "FakeBackend102",
    "FakeBundle",
    "FakeClock",
    "FakeContent",
    "FakeEncryptedKeyMaterial",
    "FakeKeyExchange",
    "FakePlainKeyMaterial",
    "FakeSession",
]

NS_A = "urn:example:fake:a"
NS_B = "urn:example:fake:b"


def _h(*parts: bytes) -> bytes:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    return digest.digest()


def _pub(priv: bytes) -> bytes:
    return _h(b"pub", priv)


def _stream(key: bytes, length: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < length:
        out += _h(b"stream", key, counter.to_bytes(4, "big"))
        counter += 1
    return out[:length]


def _xor(data: bytes, key: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, _stream(key, len(data)), strict=True))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(data: Any) -> bytes:
    assert isinstance(data, str)
    return base64.b64decode(data)


class FakeClock:
    """A settable clock for signed pre key ages."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeBundle(Bundle):
    def __init__(
        self,
        namespace: str,
        bare_jid: str,
        device_id: int,
        identity_key: bytes,
        spk_id: int,
        spk_pub: bytes,
        spk_sig: bytes,
        pre_keys: FrozenSet[Tuple[int, bytes]],
    ) -> None:
        self._namespace = namespace
        self._bare_jid = bare_jid
        self._device_id = device_id
        self._identity_key = identity_key
        self.spk_id = spk_id
        self.spk_pub = spk_pub
        self.spk_sig = spk_sig
        self.pre_keys = pre_keys

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def bare_jid(self) -> str:
        return self._bare_jid

    @property
    def device_id(self) -> int:
        return self._device_id

    @property
    def identity_key(self) -> bytes:
        return self._identity_key

    def _key(self) -> Tuple[Any, ...]:
        return (
            self._namespace,
            self._bare_jid,
            self._device_id,
            self._identity_key,
            self.spk_id,
            self.spk_pub,
            self.spk_sig,
            self.pre_keys,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FakeBundle) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"FakeBundle({self._namespace}, {self._device_id}, spk={self.spk_id}, {len(self.pre_keys)} pks)"
        )


class FakeContent(Content):
    def __init__(self, ciphertext: bytes, mac: bytes) -> None:
        self.ciphertext = ciphertext
        self.mac = mac

    @property
    def empty(self) -> bool:
        return self.ciphertext == b""


class FakePlainKeyMaterial(PlainKeyMaterial):
    def __init__(self, key: bytes, mac: bytes) -> None:
        self.key = key
        self.mac = mac

    def to_bytes(self) -> bytes:
        return self.key + self.mac


class FakeEncryptedKeyMaterial(EncryptedKeyMaterial):
    def __init__(
        self, bare_jid: str, device_id: int, epoch: int, n: int, ciphertext: bytes, mac: bytes
    ) -> None:
        self._bare_jid = bare_jid
        self._device_id = device_id
        self.epoch = epoch
        self.n = n
        self.ciphertext = ciphertext
        self.mac = mac

    @property
    def bare_jid(self) -> str:
        return self._bare_jid

    @property
    def device_id(self) -> int:
        return self._device_id


class FakeKeyExchange(KeyExchange):
    def __init__(self, identity_key: bytes, ephemeral_key: bytes, spk_id: int, pk_id: int) -> None:
        self._identity_key = identity_key
        self.ephemeral_key = ephemeral_key
        self.spk_id = spk_id
        self.pk_id = pk_id

    @property
    def identity_key(self) -> bytes:
        return self._identity_key

    def builds_same_session(self, other: KeyExchange) -> bool:
        return (
            isinstance(other, FakeKeyExchange)
            and other.identity_key == self.identity_key
            and other.ephemeral_key == self.ephemeral_key
            and other.spk_id == self.spk_id
            and other.pk_id == self.pk_id
        )

    def to_json(self) -> Dict[str, Any]:
        return {
            "ik": _b64(self._identity_key),
            "ek": _b64(self.ephemeral_key),
            "spk_id": self.spk_id,
            "pk_id": self.pk_id,
        }

    @staticmethod
    def from_json(data: Dict[str, Any]) -> FakeKeyExchange:
        return FakeKeyExchange(_unb64(data["ik"]), _unb64(data["ek"]), data["spk_id"], data["pk_id"])


class FakeSession(Session):
    """Mutable session state (like the reference backends' sessions)."""

    def __init__(
        self,
        namespace: str,
        bare_jid: str,
        device_id: int,
        initiation: Initiation,
        key_exchange: FakeKeyExchange,
        secret: bytes,
    ) -> None:
        self._namespace = namespace
        self._bare_jid = bare_jid
        self._device_id = device_id
        self._initiation = initiation
        self._key_exchange = key_exchange
        self.secret = secret
        self._confirmed = False
        self.send_epoch = 1 if initiation is Initiation.ACTIVE else 0
        self.send_n = 0
        self.recv_epoch = 0
        self.recv_n = 0
        self.needs_ratchet = False
        self.seen: List[Tuple[int, int]] = []

    @property
    def namespace(self) -> str:
        return self._namespace

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
    def key_exchange(self) -> FakeKeyExchange:
        return self._key_exchange

    @property
    def receiving_chain_length(self) -> Optional[int]:
        return self.recv_n if self.recv_epoch > 0 else None

    @property
    def sending_chain_length(self) -> int:
        # A newer epoch from the other side started a new (still empty) sending chain, as a Double
        # Ratchet step does, even though this toy only switches epochs at the next send.
        return 0 if self.needs_ratchet else self.send_n

    def to_json(self) -> Dict[str, Any]:
        return {
            "initiation": self._initiation.value,
            "kex": self._key_exchange.to_json(),
            "secret": _b64(self.secret),
            "confirmed": self._confirmed,
            "send": [self.send_epoch, self.send_n],
            "recv": [self.recv_epoch, self.recv_n],
            "needs_ratchet": self.needs_ratchet,
            "seen": [list(item) for item in self.seen],
        }

    @staticmethod
    def from_json(namespace: str, bare_jid: str, device_id: int, data: Dict[str, Any]) -> FakeSession:
        session = FakeSession(
            namespace,
            bare_jid,
            device_id,
            Initiation(data["initiation"]),
            FakeKeyExchange.from_json(data["kex"]),
            _unb64(data["secret"]),
        )
        session._confirmed = data["confirmed"]
        session.send_epoch, session.send_n = data["send"]
        session.recv_epoch, session.recv_n = data["recv"]
        session.needs_ratchet = data["needs_ratchet"]
        session.seen = [(item[0], item[1]) for item in data["seen"]]
        return session

    def message_key(self, epoch: int, n: int) -> bytes:
        return _h(b"mk", self.secret, epoch.to_bytes(4, "big"), n.to_bytes(4, "big"))


class FakeBackend(Backend):
    """The toy backend (2.x style: supports signed labels)."""

    @staticmethod
    def choose_pre_key(pre_keys: List[Tuple[int, bytes]]) -> Tuple[int, bytes]:
        """Pick the pre key of an active key exchange (tests may replace this)."""
        return secrets.choice(pre_keys)

    def __init__(
        self,
        storage: Storage,
        namespace: str = NS_A,
        clock: Optional[Callable[[], float]] = None,
        max_num_per_session_skipped_keys: int = 1000,
        max_num_per_message_skipped_keys: Optional[int] = None,
    ) -> None:
        super().__init__(max_num_per_session_skipped_keys, max_num_per_message_skipped_keys)
        self._storage = storage
        self._namespace = namespace
        self._clock = clock or time.time
        #: Every public method call, in order (for assertions on the orchestration).
        self.calls: List[str] = []

    # -- helpers ------------------------------------------------------------------------------------

    @property
    def namespace(self) -> str:
        return self._namespace

    async def _identity(self) -> Tuple[bytes, bytes]:
        pair = await IdentityKeyPair.get(self._storage)
        return pair.identity_key, pair.as_priv().priv

    async def _state(self) -> Dict[str, Any]:
        raw = (await self._storage.load(f"/{self._namespace}/state")).maybe(None)
        if raw is None:
            _, priv = await self._identity()
            spk_priv = os.urandom(32)
            state: Dict[str, Any] = {
                "spk": {
                    "id": 1,
                    "priv": _b64(spk_priv),
                    "sig": _b64(xeddsa.sign(priv, _pub(spk_priv))),
                    "timestamp": self._clock(),
                },
                "old_spk": None,
                "pre_keys": {},
                "pre_key_counter": 0,
            }
            await self._save(state)
            return state
        assert isinstance(raw, dict)
        return dict(raw)

    async def _save(self, state: Dict[str, Any]) -> None:
        await self._storage.store(f"/{self._namespace}/state", state)

    async def _index(self) -> Dict[str, List[int]]:
        raw = (await self._storage.load(f"/{self._namespace}/sessions")).maybe({})
        assert isinstance(raw, dict)
        return {jid: list(devs) for jid, devs in raw.items()}

    def _session_key(self, bare_jid: str, device_id: int) -> str:
        return f"/{self._namespace}/session/{bare_jid}/{device_id}"

    # -- introspection for tests --------------------------------------------------------------------

    async def visible_pre_key_ids(self) -> List[int]:
        state = await self._state()
        return sorted(int(k) for k, v in state["pre_keys"].items() if not v["hidden"])

    async def hidden_pre_key_ids(self) -> List[int]:
        state = await self._state()
        return sorted(int(k) for k, v in state["pre_keys"].items() if v["hidden"])

    async def signed_pre_key_id(self) -> int:
        return int((await self._state())["spk"]["id"])

    # -- sessions -----------------------------------------------------------------------------------

    async def load_session(self, bare_jid: str, device_id: int) -> Optional[Session]:
        self.calls.append("load_session")
        raw = (await self._storage.load(self._session_key(bare_jid, device_id))).maybe(None)
        if raw is None:
            return None
        assert isinstance(raw, dict)
        return FakeSession.from_json(self._namespace, bare_jid, device_id, dict(raw))

    async def store_session(self, session: Session) -> None:
        self.calls.append("store_session")
        assert isinstance(session, FakeSession)
        index = await self._index()
        devices = index.setdefault(session.bare_jid, [])
        if session.device_id not in devices:
            devices.append(session.device_id)
            await self._storage.store(f"/{self._namespace}/sessions", {k: list(v) for k, v in index.items()})
        await self._storage.store(self._session_key(session.bare_jid, session.device_id), session.to_json())

    async def build_session_active(
        self, bare_jid: str, device_id: int, bundle: Bundle, plain_key_material: PlainKeyMaterial
    ) -> Tuple[Session, EncryptedKeyMaterial]:
        self.calls.append("build_session_active")
        assert isinstance(bundle, FakeBundle)
        try:
            xeddsa.verify(bundle.identity_key, bundle.spk_pub, bundle.spk_sig)
        except EngineError as exc:
            raise KeyExchangeFailed(
                f"bad signed pre key signature in the bundle of device {device_id}"
            ) from exc
        if not bundle.pre_keys:
            raise KeyExchangeFailed(f"the bundle of device {device_id} has no pre keys")
        pk_id, pk_pub = self.choose_pre_key(sorted(bundle.pre_keys))
        own_ik, _ = await self._identity()
        ephemeral = os.urandom(32)
        secret = _h(b"x3dh", own_ik, bundle.identity_key, ephemeral, bundle.spk_pub, pk_pub)
        kex = FakeKeyExchange(own_ik, ephemeral, bundle.spk_id, pk_id)
        session = FakeSession(self._namespace, bare_jid, device_id, Initiation.ACTIVE, kex, secret)
        return session, await self.encrypt_key_material(session, plain_key_material)

    async def build_session_passive(
        self,
        bare_jid: str,
        device_id: int,
        key_exchange: KeyExchange,
        encrypted_key_material: EncryptedKeyMaterial,
    ) -> Tuple[Session, PlainKeyMaterial]:
        self.calls.append("build_session_passive")
        assert isinstance(key_exchange, FakeKeyExchange)
        state = await self._state()
        spk = None
        for candidate in (state["spk"], state["old_spk"]):
            if candidate is not None and candidate["id"] == key_exchange.spk_id:
                spk = candidate
        if spk is None:
            raise KeyExchangeFailed(f"no signed pre key with id {key_exchange.spk_id} known")
        pre_key = state["pre_keys"].get(str(key_exchange.pk_id))
        if pre_key is None:
            raise KeyExchangeFailed(f"no pre key with id {key_exchange.pk_id} known")
        own_ik, _ = await self._identity()
        secret = _h(
            b"x3dh",
            key_exchange.identity_key,
            own_ik,
            key_exchange.ephemeral_key,
            _pub(_unb64(spk["priv"])),
            _pub(_unb64(pre_key["priv"])),
        )
        session = FakeSession(self._namespace, bare_jid, device_id, Initiation.PASSIVE, key_exchange, secret)
        plain = await self.decrypt_key_material(session, encrypted_key_material)
        return session, plain

    # -- encryption ---------------------------------------------------------------------------------

    async def encrypt_plaintext(self, plaintext: bytes) -> Tuple[Content, PlainKeyMaterial]:
        self.calls.append("encrypt_plaintext")
        key = os.urandom(16)
        # A marker byte keeps the content of an empty plaintext distinct from an empty message.
        ciphertext = b"\x01" + _xor(plaintext, key)
        mac = _h(b"payload", key, ciphertext)[:8]
        return FakeContent(ciphertext, mac), FakePlainKeyMaterial(key, mac)

    async def encrypt_empty(self) -> Tuple[Content, PlainKeyMaterial]:
        self.calls.append("encrypt_empty")
        return FakeContent(b"", b""), FakePlainKeyMaterial(bytes(16), b"")

    async def encrypt_key_material(
        self, session: Session, plain_key_material: PlainKeyMaterial
    ) -> EncryptedKeyMaterial:
        self.calls.append("encrypt_key_material")
        assert isinstance(session, FakeSession)
        assert isinstance(plain_key_material, FakePlainKeyMaterial)
        if session.needs_ratchet:
            session.send_epoch = session.recv_epoch + 1
            session.send_n = 0
            session.needs_ratchet = False
        assert session.send_epoch > 0, "a passive session cannot send before it received"
        epoch, n = session.send_epoch, session.send_n
        session.send_n += 1
        data = plain_key_material.to_bytes()
        mk = session.message_key(epoch, n)
        ciphertext = _xor(data, mk)
        mac = _h(b"mac", mk, ciphertext)[:8]
        return FakeEncryptedKeyMaterial(session.bare_jid, session.device_id, epoch, n, ciphertext, mac)

    async def decrypt_plaintext(self, content: Content, plain_key_material: PlainKeyMaterial) -> bytes:
        self.calls.append("decrypt_plaintext")
        assert isinstance(content, FakeContent)
        assert isinstance(plain_key_material, FakePlainKeyMaterial)
        if _h(b"payload", plain_key_material.key, content.ciphertext)[:8] != content.mac or (
            plain_key_material.mac != content.mac
        ):
            raise DecryptionFailed("payload MAC mismatch")
        return _xor(content.ciphertext[1:], plain_key_material.key)

    async def decrypt_key_material(
        self, session: Session, encrypted_key_material: EncryptedKeyMaterial
    ) -> PlainKeyMaterial:
        self.calls.append("decrypt_key_material")
        assert isinstance(session, FakeSession)
        assert isinstance(encrypted_key_material, FakeEncryptedKeyMaterial)
        ekm = encrypted_key_material
        own_parity = 1 if session.initiation is Initiation.ACTIVE else 0
        if ekm.epoch % 2 == own_parity or ekm.epoch <= 0:
            raise DecryptionFailed("message from the wrong side of the session")
        mk = session.message_key(ekm.epoch, ekm.n)
        if _h(b"mac", mk, ekm.ciphertext)[:8] != ekm.mac:
            raise DecryptionFailed("key material MAC mismatch")
        if (ekm.epoch, ekm.n) in session.seen:
            raise DecryptionFailed("duplicate message")
        if ekm.epoch > session.recv_epoch:
            skipped = ekm.n
        elif ekm.epoch == session.recv_epoch:
            skipped = max(0, ekm.n - session.recv_n)
        else:
            skipped = 0
        if skipped > self.max_num_per_message_skipped_keys:
            raise TooManySkippedMessageKeys(f"message skips {skipped} keys")
        if ekm.epoch > session.recv_epoch:
            session.recv_epoch = ekm.epoch
            session.recv_n = ekm.n + 1
            session.needs_ratchet = True
        elif ekm.epoch == session.recv_epoch:
            session.recv_n = max(session.recv_n, ekm.n + 1)
        session.seen.append((ekm.epoch, ekm.n))
        del session.seen[: -self.max_num_per_session_skipped_keys - 100]
        session._confirmed = True
        data = _xor(ekm.ciphertext, mk)
        return FakePlainKeyMaterial(data[:16], data[16:])

    # -- own key material ---------------------------------------------------------------------------

    async def signed_pre_key_age(self) -> int:
        self.calls.append("signed_pre_key_age")
        state = await self._state()
        return int(self._clock() - state["spk"]["timestamp"])

    async def rotate_signed_pre_key(self) -> None:
        self.calls.append("rotate_signed_pre_key")
        state = await self._state()
        _, priv = await self._identity()
        spk_priv = os.urandom(32)
        state["old_spk"] = state["spk"]
        state["spk"] = {
            "id": state["spk"]["id"] + 1,
            "priv": _b64(spk_priv),
            "sig": _b64(xeddsa.sign(priv, _pub(spk_priv))),
            "timestamp": self._clock(),
        }
        await self._save(state)

    async def hide_pre_key(self, session: Session) -> bool:
        self.calls.append("hide_pre_key")
        assert isinstance(session, FakeSession)
        state = await self._state()
        entry = state["pre_keys"].get(str(session.key_exchange.pk_id))
        if entry is None or entry["hidden"]:
            return False
        entry["hidden"] = True
        await self._save(state)
        return True

    async def delete_pre_key(self, session: Session) -> bool:
        self.calls.append("delete_pre_key")
        assert isinstance(session, FakeSession)
        state = await self._state()
        if state["pre_keys"].pop(str(session.key_exchange.pk_id), None) is None:
            return False
        await self._save(state)
        return True

    async def delete_hidden_pre_keys(self) -> None:
        self.calls.append("delete_hidden_pre_keys")
        state = await self._state()
        state["pre_keys"] = {k: v for k, v in state["pre_keys"].items() if not v["hidden"]}
        await self._save(state)

    async def get_num_visible_pre_keys(self) -> int:
        self.calls.append("get_num_visible_pre_keys")
        return len(await self.visible_pre_key_ids())

    async def generate_pre_keys(self, num_pre_keys: int) -> None:
        self.calls.append(f"generate_pre_keys({num_pre_keys})")
        state = await self._state()
        for _ in range(num_pre_keys):
            state["pre_key_counter"] += 1
            state["pre_keys"][str(state["pre_key_counter"])] = {"priv": _b64(os.urandom(32)), "hidden": False}
        await self._save(state)

    async def get_bundle(self, bare_jid: str, device_id: int) -> Bundle:
        self.calls.append("get_bundle")
        state = await self._state()
        own_ik, _ = await self._identity()
        spk = state["spk"]
        pre_keys = frozenset(
            (int(k), _pub(_unb64(v["priv"]))) for k, v in state["pre_keys"].items() if not v["hidden"]
        )
        return FakeBundle(
            self._namespace,
            bare_jid,
            device_id,
            own_ik,
            spk["id"],
            _pub(_unb64(spk["priv"])),
            _unb64(spk["sig"]),
            pre_keys,
        )

    # -- data management ----------------------------------------------------------------------------

    async def purge(self) -> None:
        self.calls.append("purge")
        for bare_jid in list((await self._index()).keys()):
            await self.purge_bare_jid(bare_jid)
        await self._storage.delete(f"/{self._namespace}/sessions")
        await self._storage.delete(f"/{self._namespace}/state")

    async def delete_session(self, bare_jid: str, device_id: int) -> bool:
        self.calls.append("delete_session")
        index = await self._index()
        devices = index.get(bare_jid, [])
        existed = (await self._storage.load(self._session_key(bare_jid, device_id))).is_just
        await self._storage.delete(self._session_key(bare_jid, device_id))
        if device_id in devices:
            devices.remove(device_id)
            await self._storage.store(f"/{self._namespace}/sessions", {k: list(v) for k, v in index.items()})
        return existed

    async def purge_bare_jid(self, bare_jid: str) -> None:
        self.calls.append("purge_bare_jid")
        index = await self._index()
        for device_id in index.pop(bare_jid, []):
            await self._storage.delete(self._session_key(bare_jid, device_id))
        await self._storage.store(f"/{self._namespace}/sessions", {k: list(v) for k, v in index.items()})

    # -- labels (2.x) -------------------------------------------------------------------------------

    @property
    def supports_labels(self) -> bool:
        return True

    async def sign_own_label(self, label: str) -> bytes:
        self.calls.append("sign_own_label")
        _, priv = await self._identity()
        return xeddsa.sign(priv, label.encode("utf-8"))

    async def verify_label_signature(self, label: str, signature: bytes, identity_key: bytes) -> bool:
        self.calls.append("verify_label_signature")
        try:
            xeddsa.verify(identity_key, label.encode("utf-8"), signature)
        except EngineError:
            return False
        return True


class FakeBackend102(FakeBackend):
    """The toy backend as a 1.0.2-era backend would look: no label API at all.

    ``supports_labels`` raises ``AttributeError`` (as if the attribute did not exist), and the label
    methods fail the test if called.
    """

    @property
    def supports_labels(self) -> bool:
        raise AttributeError("supports_labels")

    async def sign_own_label(self, label: str) -> bytes:
        raise AssertionError("a 1.0.2-style backend has no sign_own_label")

    async def verify_label_signature(self, label: str, signature: bytes, identity_key: bytes) -> bool:
        raise AssertionError("a 1.0.2-style backend has no verify_label_signature")


# -- session manager test support ---------------------------------------------------------------------


class Account:
    """One device of one account in a test: its manager, backends, storage and network."""

    def __init__(
        self,
        network: Any,
        jid: str,
        manager: Any,
        backends: Dict[str, FakeBackend],
        storage: Storage,
    ) -> None:
        self.network = network
        self.jid = jid
        self.manager = manager
        self.backends = backends
        self.storage = storage

    @property
    def device_id(self) -> int:
        return int(self.manager._omemo_core.own_device_id)

    @property
    def identity_key(self) -> bytes:
        return bytes(self.manager._omemo_core.identity_key)

    async def receive_all(self) -> List[Tuple[Optional[bytes], Any, Any]]:
        """Decrypt everything in this device's inbox, in order."""
        results = []
        for message in self.network.take(self.jid, self.device_id):
            results.append(await self.manager.decrypt(message))
        return results


async def make_account(
    network: Any,
    jid: str,
    namespaces: Tuple[str, ...] = (NS_A,),
    *,
    policy: Any = None,
    storage: Optional[Storage] = None,
    clock: Optional[Callable[[], float]] = None,
    label: Optional[str] = None,
    backend_cls: type = FakeBackend,
    history_sync: bool = False,
    **create_kwargs: Any,
) -> Account:
    """Create (or reload, with the same ``storage``) a device on the in-memory network."""
    from omemo.storages import MemoryStorage
    from omemo.trust import BTBVTrust

    policy = BTBVTrust if policy is None else policy
    storage = MemoryStorage(serialize=True) if storage is None else storage
    backends = {ns: backend_cls(storage, ns, clock) for ns in namespaces}
    manager_cls = network.session_manager_class(jid, policy)
    manager = await manager_cls.create(
        list(backends.values()), storage, jid, label, policy.UNDECIDED, **create_kwargs
    )
    if not history_sync:
        await manager.after_history_sync()
    return Account(network, jid, manager, backends, storage)
