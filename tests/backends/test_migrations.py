"""``oldmemo.migrations``: migrating pre-1.0 python-omemo data, and decrypting afterwards.

Provenance of the data:

- ``tests/backends/legacy_data/generated-passive-skipped/``: generated for this project by running
  legacy python-omemo 0.14.0 clients and the reference stack 2.1.0 (see ``legacy_data/PROVENANCE``):
  a passive session with a bound pre key, a session with two skipped message keys, string device ids
  from a JSON round trip, an own identity key with natural Ed25519 sign bit 1.
- ``shared/vectors/legacy-migration/upstream-v1.2.0/`` (read at run time, never copied: AGPL test data
  of python-omemo, tag v1.2.0): the legacy dump, bundles and stanza of the upstream
  ``test_oldmemo_migration``. Tests using it are skipped when that directory is absent; set
  ``OMEMO_STACK_SHARED`` to the ``shared`` directory if it is not beside the clone.

What is checked (LEGACY-MIGRATION.md 4): the core keys equal what the reference ``migrate`` writes
(``expected-storage-after-migrate.json``, lists compared as sets); the backend state (our layout) holds
the same keys, ids, chains and skipped keys as the reference's; a migrated conversation goes on
decrypting, through the backend API and through a full ``SessionManager``; the reference defects
D1-D8 (LEGACY-MIGRATION.md 3) are fixed; and the variants of 4.2.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, FrozenSet, List, Optional, Tuple

import pytest

import oldmemo
import oldmemo.etree
import oldmemo.migrations
import twomemo
from interop.refenv import on_ci
from oldmemo.migrations import LegacyStorage, migrate
from oldmemo.oldmemo import BundleImpl, EncryptedKeyMaterialImpl, KeyExchangeImpl, SessionImpl
from omemo import (
    BundleDownloadFailed,
    BundleNotFound,
    DeviceInformation,
    SessionManager,
    StorageException,
    TrustLevel,
    UnknownTrustLevel,
)
from omemo._engine import legacy_convert as convert
from omemo._engine.records import UNKNOWN_SPK_ID, KeyState
from omemo.bundle import Bundle
from omemo.message import Message
from omemo.session import Initiation
from omemo.storages import MemoryStorage
from omemo.types import DeviceList, JSONType
from omemo_engine import xeddsa
from omemo_engine.errors import InvalidSignature, InvalidState

NS = oldmemo.oldmemo.NAMESPACE
OWN_JID = "alice@example.org"
NAMES = ("TRUSTED", "UNDECIDED", "DISTRUSTED")

SHARED = Path(os.environ.get("OMEMO_STACK_SHARED", Path(__file__).resolve().parents[3] / "shared"))
UPSTREAM_DIR = SHARED / "vectors" / "legacy-migration" / "upstream-v1.2.0"
GENERATED_DIR = Path(__file__).parent / "legacy_data" / "generated-passive-skipped"
# Read from shared/ (AGPL test data, not copied here); CI has it, so there its absence fails.
needs_upstream = pytest.mark.skipif(
    not UPSTREAM_DIR.is_dir() and not on_ci(),
    reason=f"upstream legacy-migration vectors not found at {UPSTREAM_DIR}",
)


def unb64(value: str) -> bytes:
    return base64.b64decode(value)


def unb64url(value: Any) -> bytes:
    assert isinstance(value, str)
    return base64.urlsafe_b64decode(value)


# -- the vectors ------------------------------------------------------------------------------------


@dataclass
class Vector:
    path: Path
    legacy: Dict[str, Any] = field(init=False)
    expected: Dict[str, Any] = field(init=False)
    bundles: Dict[Tuple[str, int], str] = field(init=False)

    def __post_init__(self) -> None:
        self.legacy = json.loads((self.path / "legacy-storage.json").read_text())
        self.expected = json.loads((self.path / "expected-storage-after-migrate.json").read_text())
        self.bundles = {}
        for file in (self.path / "bundles").glob("*.xml"):
            jid, device = file.stem.rsplit("_", 1)
            self.bundles[(jid, int(device))] = file.read_text()

    @property
    def own_device_id(self) -> int:
        value: int = self.legacy["own_data"]["own_device_id"]
        return value

    def xml(self, name: str) -> ET.Element:
        return ET.fromstring((self.path / name).read_text())

    def expected_sessions(self) -> List[Tuple[str, int]]:
        return [
            (jid, int(device))
            for key in self.expected
            if key.endswith("/initiation")
            for jid, device in [key[len(NS) + 2 : -len("/initiation")].rsplit("/", 1)]
        ]


def generated() -> Vector:
    return Vector(GENERATED_DIR)


def upstream() -> Vector:
    return Vector(UPSTREAM_DIR)


GENERATED_EXPECTED: Dict[str, Any] = json.loads((GENERATED_DIR / "expected.json").read_text())


# -- test doubles --------------------------------------------------------------------------------


class DictLegacyStorage(LegacyStorage):
    """A ``LegacyStorage`` over a legacy dump (JSON: device-id keys are strings).

    Device ids come out as ints (as the TypedDicts declare) unless ``string_ids`` is set, which leaves
    the strings of a JSON round trip in ``bound_otpks`` and in the inactive-device dicts (D5).
    ``fail`` is called before every method with its name and arguments (failure injection).
    """

    def __init__(self, dump: Dict[str, Any], *, string_ids: bool = False) -> None:
        self.data = copy.deepcopy(dump)
        self.string_ids = string_ids
        self.calls: List[str] = []
        self.fail: Optional[Callable[[str, Tuple[Any, ...]], None]] = None

    def _enter(self, name: str, *args: Any) -> None:
        self.calls.append(name)
        if self.fail is not None:
            self.fail(name, args)

    def _ids(self, mapping: Dict[str, Any]) -> Dict[Any, Any]:
        return dict(mapping) if self.string_ids else {int(k): v for k, v in mapping.items()}

    async def loadOwnData(self) -> Any:  # noqa: N802
        self._enter("loadOwnData")
        return copy.deepcopy(self.data.get("own_data"))

    async def deleteOwnData(self) -> None:  # noqa: N802
        self._enter("deleteOwnData")
        self.data.pop("own_data", None)

    async def loadState(self) -> Any:  # noqa: N802
        self._enter("loadState")
        state = copy.deepcopy(self.data.get("state"))
        if state is not None:
            state["bound_otpks"] = {jid: self._ids(d) for jid, d in state["bound_otpks"].items()}
        return state

    async def deleteState(self) -> None:  # noqa: N802
        self._enter("deleteState")
        self.data.pop("state", None)

    async def loadSession(self, bare_jid: str, device_id: int) -> Any:  # noqa: N802
        self._enter("loadSession", bare_jid, device_id)
        return copy.deepcopy(self.data["sessions"].get(bare_jid, {}).get(str(device_id)))

    async def deleteSession(self, bare_jid: str, device_id: int) -> None:  # noqa: N802
        self._enter("deleteSession", bare_jid, device_id)
        self.data["sessions"].get(bare_jid, {}).pop(str(device_id), None)

    async def loadActiveDevices(self, bare_jid: str) -> Optional[List[int]]:  # noqa: N802
        self._enter("loadActiveDevices", bare_jid)
        value = self.data["active_devices"].get(bare_jid)
        return None if value is None else list(value)

    async def loadInactiveDevices(self, bare_jid: str) -> Any:  # noqa: N802
        self._enter("loadInactiveDevices", bare_jid)
        value = self.data["inactive_devices"].get(bare_jid)
        return None if value is None else self._ids(value)

    async def deleteActiveDevices(self, bare_jid: str) -> None:  # noqa: N802
        self._enter("deleteActiveDevices", bare_jid)
        self.data["active_devices"].pop(bare_jid, None)

    async def deleteInactiveDevices(self, bare_jid: str) -> None:  # noqa: N802
        self._enter("deleteInactiveDevices", bare_jid)
        self.data["inactive_devices"].pop(bare_jid, None)

    async def loadTrust(self, bare_jid: str, device_id: int) -> Any:  # noqa: N802
        self._enter("loadTrust", bare_jid, device_id)
        return copy.deepcopy(self.data["trust"].get(bare_jid, {}).get(str(device_id)))

    async def deleteTrust(self, bare_jid: str, device_id: int) -> None:  # noqa: N802
        self._enter("deleteTrust", bare_jid, device_id)
        self.data["trust"].get(bare_jid, {}).pop(str(device_id), None)

    async def listJIDs(self) -> Optional[List[str]]:  # noqa: N802
        self._enter("listJIDs")
        value = self.data.get("jid_list")
        return None if value is None else list(value)

    async def deleteJIDList(self) -> None:  # noqa: N802
        self._enter("deleteJIDList")
        self.data["jid_list"] = None


class RecordingStorage(MemoryStorage):
    """A JSON-serialising memory storage that records writes and can fail the n-th one."""

    def __init__(self) -> None:
        super().__init__(serialize=True)
        self.writes: List[str] = []
        self.fail_at: Optional[int] = None

    async def _store(self, key: str, value: JSONType) -> None:
        self._count(key)
        await super()._store(key, value)

    async def _delete(self, key: str) -> None:
        self._count(key)
        await super()._delete(key)

    def _count(self, key: str) -> None:
        if self.fail_at is not None and len(self.writes) == self.fail_at:
            self.fail_at = None
            raise StorageException(f"injected failure writing {key}")
        self.writes.append(key)


Download = Callable[[str, int], Awaitable[BundleImpl]]


def downloader(
    vector: Vector,
    *,
    unavailable: Iterable[Tuple[str, int]] = (),
    not_found: Iterable[Tuple[str, int]] = (),
    replace: Optional[Dict[Tuple[str, int], Tuple[str, int]]] = None,
) -> Download:
    """``download_bundle`` serving the vector's bundles (``replace`` serves another device's)."""
    unavailable, not_found, replace = set(unavailable), set(not_found), replace or {}

    async def download_bundle(bare_jid: str, device_id: int) -> BundleImpl:
        key = (bare_jid, device_id)
        if key in not_found:
            raise BundleNotFound(f"no bundle for {key}")
        xml = vector.bundles.get(replace.get(key, key))
        if xml is None or key in unavailable:
            raise BundleDownloadFailed(f"no bundle for {key}")
        return oldmemo.etree.parse_bundle(ET.fromstring(xml), bare_jid, device_id)

    return download_bundle


async def run_migrate(
    vector: Vector,
    legacy: Optional[DictLegacyStorage] = None,
    storage: Optional[MemoryStorage] = None,
    download: Optional[Download] = None,
) -> Tuple[DictLegacyStorage, MemoryStorage]:
    legacy = legacy or DictLegacyStorage(vector.legacy)
    storage = storage if storage is not None else RecordingStorage()
    await migrate(legacy, storage, *NAMES, download or downloader(vector))
    return legacy, storage


# -- what the storage must hold ----------------------------------------------------------------------

CORE_PREFIXES = ("/own_device_id", "/ikp/", "/devices/", "/trust/")


def snap(storage: MemoryStorage) -> Dict[str, Any]:
    return dict(storage.snapshot())


def normalised(value: Any) -> Any:
    return sorted(value, key=repr) if isinstance(value, list) else value


def core_view(data: Dict[str, Any]) -> Dict[str, Any]:
    return {k: normalised(v) for k, v in data.items() if k.startswith(CORE_PREFIXES)}


def check_key_state(vector: Vector, data: Dict[str, Any]) -> KeyState:
    """Our ``/{NS}/keys`` record carries the reference's X3DH state and id bookkeeping."""
    expected = vector.expected
    x3dh = expected[f"/{NS}/x3dh"]
    keys = KeyState.from_json(data[f"/{NS}/keys"])
    spk = keys.signed_pre_key
    assert spk.priv == unb64(x3dh["spk"]["key"]["priv"])
    assert spk.pub == xeddsa.priv_to_curve25519_pub(spk.priv)
    assert {base64.b64encode(spk.pub).decode(): spk.key_id} == expected[f"/{NS}/signed_pre_key_ids"]
    assert spk.timestamp == int(x3dh["spk"]["timestamp"])
    identity_key = xeddsa.priv_to_ed25519_pub(unb64(x3dh["ik"]["priv"]))
    xeddsa.verify(identity_key, b"\x05" + spk.pub, spk.signature)  # valid for what we publish (D6)
    assert keys.old_signed_pre_key is None
    ids: Dict[str, int] = expected[f"/{NS}/pre_key_ids"]

    def by_id(pairs: List[Dict[str, Any]]) -> Dict[int, Tuple[bytes, bytes]]:
        result = {}
        for pair in pairs:
            priv = unb64(pair["priv"])
            pub = xeddsa.priv_to_curve25519_pub(priv)
            result[ids[base64.b64encode(pub).decode()]] = (priv, pub)
        return result

    assert dict(keys.pre_keys) == by_id(x3dh["otpks"])
    assert dict(keys.hidden_pre_keys) == by_id(x3dh["hidden_otpks"])  # kept hidden, unlike the reference
    assert keys.next_pre_key_id == expected[f"/{NS}/pre_key_id_counter"] + 1
    return keys


def check_ratchet(session: SessionImpl, legacy: Dict[str, Any]) -> None:
    """The session's ratchet state equals the legacy DoubleRatchet object the reference stored."""
    state, dh, skr = session.state, legacy["super"], legacy["skr"]
    assert state.root_key == unb64(dh["root_chain"]["key"])
    assert state.own_ratchet_priv == unb64(dh["own_key"]["priv"])
    assert state.own_ratchet_pub == unb64(dh["own_key"]["pub"])
    assert state.other_ratchet_pub == unb64(dh["other_pub"]["pub"])
    for chain, key, n in (
        (skr["schain"], state.sending_chain_key, state.sending_n),
        (skr["rchain"], state.receiving_chain_key, state.receiving_n),
    ):
        assert (key, n) == ((None, 0) if chain is None else (unb64(chain["key"]), chain["length"]))
    assert state.previous_sending_n == (skr["prev_schain_length"] or 0)
    skipped = {}
    for text, message_key in legacy["smks"].items():
        parsed = json.loads(text)
        skipped[(unb64(parsed["pub"]), parsed["index"])] = unb64(message_key)
    assert list(state.skipped.items()) == list(skipped.items())


async def check_sessions(vector: Vector, storage: MemoryStorage) -> None:
    """Each session the reference migrates is in our layout, with the same values."""
    expected = vector.expected
    backend = oldmemo.Oldmemo(storage)
    assert vector.expected_sessions()
    for jid, device_id in vector.expected_sessions():
        prefix = f"/{NS}/{jid}/{device_id}/"
        session = await backend.load_session(jid, device_id)
        assert isinstance(session, SessionImpl), (jid, device_id)
        assert session.initiation.name == expected[prefix + "initiation"]
        assert session.confirmed is expected[prefix + "confirmed"] is True
        assert session.associated_data == unb64url(expected[prefix + "associated_data"])
        assert session.state.initiator is (session.initiation is Initiation.ACTIVE)
        kex = session.key_exchange
        assert kex.identity_key == unb64url(expected[prefix + "key_exchange/identity_key"])
        assert kex.ephemeral_key == unb64url(expected[prefix + "key_exchange/ephemeral_key"])
        assert kex.signed_pre_key == unb64url(expected[prefix + "key_exchange/signed_pre_key"])
        assert kex.signed_pre_key_id == expected[prefix + "key_exchange/signed_pre_key_id"] == UNKNOWN_SPK_ID
        assert kex.pre_key == unb64url(expected[prefix + "key_exchange/pre_key"])
        # The reference stores -1 for "no pre key"; our record holds unsigned ids and stores 0.
        assert kex.pre_key_id == max(expected[prefix + "key_exchange/pre_key_id"], 0)
        check_ratchet(session, expected[prefix + "double_ratchet"])


async def _with_skipped(storage: MemoryStorage, sessions: list[tuple[str, int]]) -> list[tuple[str, int]]:
    backend = oldmemo.Oldmemo(storage)
    found = []
    for jid, device_id in sessions:
        session = await backend.load_session(jid, device_id)
        assert isinstance(session, SessionImpl)
        if session.state.skipped:
            found.append((jid, device_id))
    return found


async def check_migrated(vector: Vector, legacy: DictLegacyStorage, storage: MemoryStorage) -> None:
    data = snap(storage)
    assert core_view(data) == core_view(vector.expected)
    check_key_state(vector, data)
    await check_sessions(vector, storage)
    sessions = vector.expected_sessions()
    jids = {jid for jid, _ in sessions}
    assert {k for k in data if k.startswith(f"/{NS}/")} == {
        f"/{NS}/keys",
        f"/{NS}/session-jids",
        *(f"/{NS}/session-devices/{jid}" for jid in jids),
        *(f"/{NS}/session/{jid}/{device_id}" for jid, device_id in sessions),
        # Skipped message keys are kept apart from their session's record.
        *(
            f"/{NS}/session-skipped/{jid}/{device_id}"
            for jid, device_id in await _with_skipped(storage, sessions)
        ),
    }
    assert sorted(data[f"/{NS}/session-jids"]) == sorted(jids)
    # Nothing reachable is left in the legacy storage.
    left = legacy.data
    assert left.get("own_data") is None and left.get("state") is None and left.get("jid_list") is None
    for jid in vector.legacy["jid_list"]:
        assert jid not in left["active_devices"] and jid not in left["inactive_devices"]
        listed = {str(d) for d in vector.legacy["active_devices"].get(jid, [])}
        listed |= set(vector.legacy["inactive_devices"].get(jid, {}))
        assert not listed & set(left["sessions"].get(jid, {}))
        assert not listed & set(left["trust"].get(jid, {}))


# -- migration results ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["generated", pytest.param("upstream", marks=needs_upstream)])
async def test_migrate_writes_expected_storage(name: str) -> None:
    vector = generated() if name == "generated" else upstream()
    legacy, storage = await run_migrate(vector)
    await check_migrated(vector, legacy, storage)


@pytest.mark.parametrize("name", ["generated", pytest.param("upstream", marks=needs_upstream)])
async def test_second_migrate_does_nothing(name: str) -> None:
    vector = generated() if name == "generated" else upstream()
    legacy, storage = await run_migrate(vector)
    assert isinstance(storage, RecordingStorage)
    before, writes = snap(storage), len(storage.writes)
    legacy.calls.clear()
    await migrate(legacy, storage, *NAMES, downloader(vector))
    assert legacy.calls == ["loadOwnData"]
    assert len(storage.writes) == writes and snap(storage) == before


async def test_own_identity_key() -> None:
    vector = generated()
    _, storage = await run_migrate(vector)
    data = snap(storage)
    own = GENERATED_EXPECTED["identity_keys"]["alice@example.org/1111111111 (own device)"]
    assert data["/ikp/is_seed"] is False
    priv = unb64url(data["/ikp/key"])
    assert priv == unb64(vector.legacy["state"]["super"]["super"]["ik"]["priv"])
    assert xeddsa.priv_to_ed25519_pub(priv).hex() == own["ed25519_hex"]
    assert data[own["trust_storage_key"]] == "UNDECIDED"


# -- decrypting after the migration: backend level ----------------------------------------------------


@dataclass(frozen=True)
class _Info:
    device_id: int
    identity_key: bytes


class FakeSessionManager:
    """What ``oldmemo.etree.parse_message`` needs for a key exchange: the sender's identity key."""

    def __init__(self, storage: MemoryStorage, bare_jid: str, device_id: int) -> None:
        self.storage, self.bare_jid, self.device_id = storage, bare_jid, device_id

    async def get_device_information(self, bare_jid: str) -> FrozenSet[Any]:
        assert bare_jid == self.bare_jid
        key = f"/devices/{bare_jid}/{self.device_id}/identity_key"
        identity_key = (await self.storage.load_bytes(key)).from_just()
        return frozenset([_Info(self.device_id, identity_key)])

    async def refresh_device_list(self, namespace: str, bare_jid: str) -> None:
        raise AssertionError("the migrated identity key must suffice")


async def parse(vector: Vector, name: str, storage: MemoryStorage, sender: Tuple[str, int]) -> Message:
    manager: Any = FakeSessionManager(storage, *sender)
    return await oldmemo.etree.parse_message(vector.xml(name), sender[0], OWN_JID, manager)


def own_key(
    message: Message, own_device_id: int
) -> Tuple[EncryptedKeyMaterialImpl, Optional[KeyExchangeImpl]]:
    for encrypted, kex in message.keys:
        if encrypted.device_id == own_device_id:
            assert isinstance(encrypted, EncryptedKeyMaterialImpl)
            assert kex is None or isinstance(kex, KeyExchangeImpl)
            return encrypted, kex
    raise AssertionError("no key for the own device")


@needs_upstream
async def test_upstream_stanza_decrypts_through_backend() -> None:
    vector = upstream()
    decryption = json.loads((UPSTREAM_DIR / "expected-decryption.json").read_text())
    steps = decryption["decryption_of_key_for_rid_276148623"]
    after = decryption["session_bob_254614318_after_decrypt"]
    _, storage = await run_migrate(vector)
    backend = oldmemo.Oldmemo(storage)
    message = await parse(vector, "post-migration-message.xml", storage, ("bob@example.org", 254614318))
    encrypted, kex = own_key(message, vector.own_device_id)
    assert kex is None
    session = await backend.load_session("bob@example.org", 254614318)
    assert session is not None and session.initiation is Initiation.ACTIVE
    key_material = await backend.decrypt_key_material(session, encrypted)
    assert isinstance(key_material, oldmemo.oldmemo.PlainKeyMaterialImpl)
    assert (key_material.key + key_material.auth_tag).hex() == steps["key_material_hex"]
    plaintext = await backend.decrypt_plaintext(message.content, key_material)
    assert plaintext.decode() == decryption["expected_plaintext"]

    state = session.state
    assert state.own_ratchet_priv.hex() == after["own_ratchet_priv_hex"]
    assert (
        state.other_ratchet_pub is not None
        and state.other_ratchet_pub.hex() == after["other_ratchet_pub_hex"]
    )
    assert state.root_key.hex() == after["root_chain"]["key_hex"]
    assert state.receiving_chain_key is not None
    assert (state.receiving_n, state.receiving_chain_key.hex()) == (
        after["receiving_chain"]["length"],
        after["receiving_chain"]["key_hex"],
    )
    assert state.sending_chain_key is not None
    assert (state.sending_n, state.sending_chain_key.hex()) == (
        after["sending_chain"]["length"],
        after["sending_chain"]["key_hex"],
    )
    assert state.previous_sending_n == after["previous_sending_chain_length"]
    assert [(pub.hex(), n, mk.hex()) for (pub, n), mk in state.skipped.items()] == [
        (k["ratchet_pub_hex"], k["index"], k["message_key_hex"]) for k in after["skipped_message_keys"]
    ]
    assert session.confirmed


async def test_generated_messages_decrypt_through_backend() -> None:
    vector = generated()
    _, storage = await run_migrate(vector)
    backend = oldmemo.Oldmemo(storage)
    messages = GENERATED_EXPECTED["messages"]
    carol = ("carol@example.org", 333333333)
    for name in ("carol_reply_2.xml", "carol_reply_1.xml"):  # out of order: both from skipped keys
        message = await parse(vector, f"messages/{name}", storage, carol)
        encrypted, kex = own_key(message, vector.own_device_id)
        assert kex is None
        session = await backend.load_session(*carol)
        assert session is not None
        key_material = await backend.decrypt_key_material(session, encrypted)
        assert (await backend.decrypt_plaintext(message.content, key_material)).decode() == messages[name][
            "plaintext"
        ]
        await backend.store_session(session)
    session = await backend.load_session(*carol)
    assert session is not None and not session.state.skipped

    # bob_2 repeats the key exchange that built the migrated PASSIVE session: it reuses that session.
    bob = ("bob@example.org", 2055582871)
    message = await parse(vector, "messages/bob_2.xml", storage, bob)
    encrypted, kex = own_key(message, vector.own_device_id)
    assert kex is not None and kex.pre_key_id == GENERATED_EXPECTED["bound_otpk"]["pre_key_id"]
    session = await backend.load_session(*bob)
    assert session is not None and session.initiation is Initiation.PASSIVE
    assert session.key_exchange.builds_same_session(kex)
    key_material = await backend.decrypt_key_material(session, encrypted)
    assert (await backend.decrypt_plaintext(message.content, key_material)).decode() == messages["bob_2.xml"][
        "plaintext"
    ]
    # The bound pre key stayed hidden (our backend keeps hidden pre keys until history sync ends),
    # so even a fresh passive session could be built from the repeated key exchange.
    _, key_material = await backend.build_session_passive(*bob, kex, encrypted)
    assert (await backend.decrypt_plaintext(message.content, key_material)).decode() == messages["bob_2.xml"][
        "plaintext"
    ]


# -- decrypting after the migration: the full session manager ------------------------------------------

TRUST_LEVELS = {
    "TRUSTED": TrustLevel.TRUSTED,
    "UNDECIDED": TrustLevel.UNDECIDED,
    "DISTRUSTED": TrustLevel.DISTRUSTED,
}


class World:
    """The PEP nodes and the outbox the session manager's hooks use (reset per test)."""

    bundles: ClassVar[Dict[Tuple[str, str, int], Bundle]] = {}
    device_lists: ClassVar[Dict[Tuple[str, str], DeviceList]] = {}
    sent: ClassVar[List[Tuple[str, Message]]] = []

    @classmethod
    def reset(cls) -> None:
        cls.bundles, cls.device_lists, cls.sent = {}, {}, []


class SessionManagerImpl(SessionManager):
    """The upstream test's session manager: PEP in dicts, trust names mapped, undecided -> trusted."""

    @staticmethod
    async def _upload_bundle(bundle: Bundle) -> None:
        World.bundles[(bundle.namespace, bundle.bare_jid, bundle.device_id)] = bundle

    @staticmethod
    async def _download_bundle(namespace: str, bare_jid: str, device_id: int) -> Bundle:
        try:
            return World.bundles[(namespace, bare_jid, device_id)]
        except KeyError:
            raise BundleDownloadFailed(f"no bundle for {bare_jid}/{device_id}") from None

    @staticmethod
    async def _delete_bundle(namespace: str, device_id: int) -> None:
        World.bundles.pop((namespace, OWN_JID, device_id), None)

    @staticmethod
    async def _upload_device_list(namespace: str, device_list: DeviceList) -> None:
        World.device_lists[(namespace, OWN_JID)] = device_list

    @staticmethod
    async def _download_device_list(namespace: str, bare_jid: str) -> DeviceList:
        return World.device_lists.get((namespace, bare_jid), {})

    @staticmethod
    async def _send_message(message: Message, bare_jid: str) -> None:
        World.sent.append((bare_jid, message))

    async def _evaluate_custom_trust_level(self, device: DeviceInformation) -> TrustLevel:
        try:
            return TRUST_LEVELS[device.trust_level_name]
        except KeyError:
            raise UnknownTrustLevel(device.trust_level_name) from None

    async def _make_trust_decision(
        self, undecided: FrozenSet[DeviceInformation], identifier: Optional[str]
    ) -> None:
        for device in undecided:
            await self.set_trust(device.bare_jid, device.identity_key, "TRUSTED")


@pytest.fixture(autouse=True)
def _fresh_world() -> None:
    World.reset()


async def start(storage: MemoryStorage, with_twomemo: bool = False) -> SessionManagerImpl:
    backends: List[Any] = [oldmemo.Oldmemo(storage)]
    if with_twomemo:
        backends.insert(0, twomemo.Twomemo(storage))
    manager = await SessionManagerImpl.create(backends, storage, OWN_JID, None, "UNDECIDED")
    await manager.after_history_sync()
    return manager


async def decrypt(manager: SessionManagerImpl, vector: Vector, name: str, sender: str) -> Optional[bytes]:
    message = await oldmemo.etree.parse_message(vector.xml(name), sender, OWN_JID, manager)
    plaintext, _, _ = await manager.decrypt(message)
    return plaintext


@needs_upstream
@pytest.mark.parametrize("with_twomemo", [False, True], ids=["oldmemo", "twomemo+oldmemo"])
async def test_upstream_migration_test(with_twomemo: bool) -> None:
    """The upstream ``test_oldmemo_migration``, step by step (LEGACY-MIGRATION.md 4.1)."""
    vector = upstream()
    _, storage = await run_migrate(vector)
    manager = await start(storage, with_twomemo)
    try:
        plaintext = await decrypt(manager, vector, "post-migration-message.xml", "bob@example.org")
        assert plaintext == b"This is a test message"
        assert World.sent == []
        own, _ = await manager.get_own_device_information()
        assert own.device_id == vector.own_device_id
        if with_twomemo:  # Twomemo uses the migrated private-scalar identity
            bundle = World.bundles[(twomemo.twomemo.NAMESPACE, OWN_JID, vector.own_device_id)]
            assert bundle.identity_key == own.identity_key
    finally:
        await manager.shutdown()


@pytest.mark.parametrize("string_ids", [False, True], ids=["int-ids", "string-ids"])
async def test_generated_messages_decrypt_through_session_manager(string_ids: bool) -> None:
    """With string device ids in ``bound_otpks`` (D5) the Bob session is still PASSIVE, so the repeated
    key exchange decrypts although the hidden pre key is gone after history sync (the reference fails
    with ``KeyExchangeFailed('No pre key with id 19 known.')``)."""
    vector = generated()
    _, storage = await run_migrate(vector, DictLegacyStorage(vector.legacy, string_ids=string_ids))
    manager = await start(storage)
    try:
        messages = GENERATED_EXPECTED["messages"]
        for name, sender in (
            ("bob_2.xml", "bob@example.org"),
            ("carol_reply_2.xml", "carol@example.org"),
            ("carol_reply_1.xml", "carol@example.org"),
        ):
            plaintext = await decrypt(manager, vector, f"messages/{name}", sender)
            assert plaintext is not None and plaintext.decode() == messages[name]["plaintext"]
        # The key exchange is answered with one empty message (history sync already ended).
        assert [jid for jid, _ in World.sent] == ["bob@example.org"]
    finally:
        await manager.shutdown()


# -- reference defects (LEGACY-MIGRATION.md 3) -------------------------------------------------------------


async def test_d5_string_device_ids_keep_passive_sessions() -> None:
    vector = generated()
    legacy = DictLegacyStorage(vector.legacy, string_ids=True)
    legacy, storage = await run_migrate(vector, legacy)
    await check_migrated(vector, legacy, storage)


async def test_d6_fresh_peer_builds_session_from_migrated_bundle() -> None:
    vector = generated()
    x3dh = vector.legacy["state"]["super"]["super"]
    own = xeddsa.priv_to_ed25519_pub(unb64(x3dh["ik"]["priv"]))
    legacy_signature = unb64(x3dh["spk"]["signature"])
    spk_message = b"\x05" + unb64(x3dh["spk"]["key"]["pub"])
    assert xeddsa.ed25519_pub_sign_bit(own)  # the case the reference gets wrong
    with pytest.raises(InvalidSignature):
        xeddsa.verify(own, spk_message, legacy_signature)
    xeddsa.verify(
        xeddsa.curve25519_pub_to_ed25519_pub(unb64(x3dh["ik"]["pub"]), False), spk_message, legacy_signature
    )

    _, storage = await run_migrate(vector)
    alice = oldmemo.Oldmemo(storage)
    bundle = await alice.get_bundle(OWN_JID, vector.own_device_id)
    assert isinstance(bundle, BundleImpl)
    published = oldmemo.etree.parse_bundle(
        ET.fromstring(ET.tostring(oldmemo.etree.serialize_bundle(bundle))), OWN_JID, vector.own_device_id
    )
    assert published.identity_key == own
    assert published.signed_pre_key_id == vector.legacy["state"]["super"]["spk_id"]

    peer_storage = MemoryStorage(serialize=True)
    peer = oldmemo.Oldmemo(peer_storage)
    content, key_material = await peer.encrypt_plaintext(b"hello migrated Alice")
    session, encrypted = await peer.build_session_active(
        OWN_JID, vector.own_device_id, published, key_material
    )
    peer_key = (await peer._identity_key_pair())[1]
    assert isinstance(session.key_exchange, KeyExchangeImpl)
    kex = KeyExchangeImpl.parse(
        session.key_exchange.serialize(encrypted.serialize()), xeddsa.ed25519_pub_sign_bit(peer_key)
    )[0]
    _, received = await alice.build_session_passive("dave@example.org", 4, kex, encrypted)
    assert await alice.decrypt_plaintext(content, received) == b"hello migrated Alice"


def drop_own_device(dump: Dict[str, Any]) -> Dict[str, Any]:
    dump = copy.deepcopy(dump)
    own_id = dump["own_data"]["own_device_id"]
    dump["active_devices"][OWN_JID] = [d for d in dump["active_devices"][OWN_JID] if d != own_id]
    return dump


@pytest.mark.parametrize("case", ["own-device-unlisted", "own-jid-unlisted", "no-jid-list"])
async def test_d1_d2_own_device_record_always_written(case: str) -> None:
    vector = generated()
    dump = drop_own_device(vector.legacy)
    if case == "own-jid-unlisted":
        dump["jid_list"].remove(OWN_JID)
    elif case == "no-jid-list":
        dump["jid_list"] = None
    legacy, storage = await run_migrate(vector, DictLegacyStorage(dump))
    data = snap(storage)
    own_id = vector.own_device_id
    for suffix in ("namespaces", "active", "label", "identity_key", "list"):
        key = f"/devices/{OWN_JID}/list" if suffix == "list" else f"/devices/{OWN_JID}/{own_id}/{suffix}"
        expected = vector.expected[key]
        assert normalised(data[key]) == normalised(expected)
    own = GENERATED_EXPECTED["identity_keys"]["alice@example.org/1111111111 (own device)"]
    assert data[own["trust_storage_key"]] == "UNDECIDED"
    assert legacy.data.get("own_data") is None
    if case == "no-jid-list":  # D2: nothing else to migrate; core and key state are there
        assert not any(k.startswith("/devices/bob") for k in data)
        check_key_state(vector, data)
    manager = await start(storage)  # the reference crashes here
    try:
        own_info, _ = await manager.get_own_device_information()
        assert own_info.device_id == own_id
    finally:
        await manager.shutdown()


async def test_d3_no_state_writes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    vector = generated()
    dump = copy.deepcopy(vector.legacy)
    dump["state"] = None
    legacy = DictLegacyStorage(dump)
    with caplog.at_level(logging.WARNING, logger="oldmemo.migrations"):
        _, storage = await run_migrate(vector, legacy)
    assert snap(storage) == {}
    assert legacy.data == dump
    assert legacy.calls == ["loadOwnData", "loadState"]
    assert any("no key state" in r.getMessage() for r in caplog.records)
    manager = await start(storage)  # a clean first run
    try:
        assert (await storage.load_primitive("/ikp/is_seed", bool)).from_just() is True  # a new identity
    finally:
        await manager.shutdown()


async def clean_result(vector: Vector) -> Dict[str, Any]:
    _, storage = await run_migrate(vector)
    return snap(storage)


def comparable(data: Dict[str, Any]) -> Dict[str, Any]:
    """The storage without the signed pre key's signature (re-signing draws a fresh nonce)."""
    result = dict(data)
    keys = dict(result[f"/{NS}/keys"])
    keys["spk"] = {k: v for k, v in keys["spk"].items() if k != "sig"}
    result[f"/{NS}/keys"] = keys
    return {k: normalised(v) for k, v in result.items()}


def usable_by_create(data: Dict[str, Any], own_device_id: int) -> None:
    """Once ``/own_device_id`` exists, everything ``SessionManager.create`` needs for it exists too."""
    if "/own_device_id" in data:
        assert data["/ikp/is_seed"] is False and f"/{NS}/keys" in data
        for suffix in ("namespaces", "active", "label", "identity_key"):
            assert f"/devices/{OWN_JID}/{own_device_id}/{suffix}" in data
        assert own_device_id in data[f"/devices/{OWN_JID}/list"]


async def test_d4_d8_new_storage_failure_at_every_write_then_rerun() -> None:
    """A failure at any write of the new storage, then a second run: the same result as one run."""
    vector = generated()
    expected = comparable(await clean_result(vector))
    _, storage = await run_migrate(vector)
    assert isinstance(storage, RecordingStorage)
    total = len(storage.writes)
    for fail_at in range(total):
        legacy = DictLegacyStorage(vector.legacy)
        storage = RecordingStorage()
        storage.fail_at = fail_at
        with pytest.raises(StorageException):
            await migrate(legacy, storage, *NAMES, downloader(vector))
        usable_by_create(snap(storage), vector.own_device_id)
        await migrate(legacy, storage, *NAMES, downloader(vector))
        assert comparable(snap(storage)) == expected, f"failure at write {fail_at}"
        await check_migrated(vector, legacy, storage)


async def test_d4_d8_legacy_failure_at_every_call_then_rerun() -> None:
    """A failure at any call of the legacy storage (e.g. a deleter), then a second run."""
    vector = generated()
    expected = comparable(await clean_result(vector))
    legacy, _ = await run_migrate(vector)
    total = len(legacy.calls)
    for fail_at in range(total):
        legacy = DictLegacyStorage(vector.legacy)
        count = 0

        def fail(name: str, args: Tuple[Any, ...], fail_at: int = fail_at) -> None:
            nonlocal count
            count += 1
            if count == fail_at + 1:
                raise RuntimeError(f"injected failure in {name}")

        legacy.fail = fail
        storage = RecordingStorage()
        with pytest.raises(RuntimeError):
            await migrate(legacy, storage, *NAMES, downloader(vector))
        legacy.fail = None
        await migrate(legacy, storage, *NAMES, downloader(vector))
        assert comparable(snap(storage)) == expected, f"failure at legacy call {fail_at}"
        await check_migrated(vector, legacy, storage)  # the legacy data is gone too


@needs_upstream
async def test_d4_rerun_after_failed_run_keeps_finished_device_lists() -> None:
    """The reference empties Alice's lists (then ``create`` crashes); we merge and decrypt."""
    vector = upstream()

    async def broken(bare_jid: str, device_id: int) -> BundleImpl:
        if bare_jid == "bob@example.org":
            raise RuntimeError("network down")
        return await downloader(vector)(bare_jid, device_id)

    legacy = DictLegacyStorage(vector.legacy)
    storage = RecordingStorage()
    with pytest.raises(RuntimeError):
        await migrate(legacy, storage, *NAMES, broken)
    assert OWN_JID not in legacy.data["active_devices"]  # Alice's JID was finished
    await migrate(legacy, storage, *NAMES, downloader(vector))
    await check_migrated(vector, legacy, storage)
    manager = await start(storage)
    try:
        assert await decrypt(manager, vector, "post-migration-message.xml", "bob@example.org") == (
            b"This is a test message"
        )
    finally:
        await manager.shutdown()


async def test_d7_broken_sessions_are_left_out() -> None:
    vector = generated()
    dump = copy.deepcopy(vector.legacy)
    carol = dump["sessions"]["carol@example.org"]["333333333"]
    del carol["super"]["super"]["root_chain"]
    bob = dump["sessions"]["bob@example.org"]["2055582871"]
    bob["super"]["super"]["own_key"]["priv"] = None  # never initialised
    legacy, storage = await run_migrate(vector, DictLegacyStorage(dump))
    data = snap(storage)
    assert not any(k.startswith(f"/{NS}/session/") for k in data)
    assert core_view(data) == core_view(vector.expected)  # the devices are migrated
    assert legacy.data["sessions"] == {"carol@example.org": {}, "bob@example.org": {}}


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda s: s["super"]["super"]["ik"].update(priv="not base64!"),
        lambda s: s["super"]["super"]["spk"].pop("signature"),
        lambda s: s["super"].update(otpk_ids=[]),
        lambda s: s["bound_otpks"]["bob@example.org"]["2055582871"].update(id="x"),
    ],
    ids=["ik", "spk", "otpk_ids", "bound_otpks"],
)
async def test_d7_malformed_state_raises_before_writing(corrupt: Callable[[Dict[str, Any]], None]) -> None:
    vector = generated()
    dump = copy.deepcopy(vector.legacy)
    corrupt(dump["state"])
    legacy = DictLegacyStorage(dump)
    storage = RecordingStorage()
    with pytest.raises(InvalidState):
        await migrate(legacy, storage, *NAMES, downloader(vector))
    assert storage.writes == [] and legacy.data == dump


# -- variants of the upstream dump (LEGACY-MIGRATION.md 4.2) -----------------------------------------------


def device_absent(data: Dict[str, Any], jid: str, device_id: int) -> None:
    assert device_id not in data[f"/devices/{jid}/list"]
    assert not any(k.startswith(f"/devices/{jid}/{device_id}/") for k in data)
    assert f"/{NS}/session/{jid}/{device_id}" not in data


@pytest.mark.parametrize("how", ["download-failed", "not-found", "identity-changed"])
async def test_unconfirmed_device_is_dropped(how: str) -> None:
    vector = generated()
    carol = ("carol@example.org", 333333333)
    if how == "download-failed":
        download = downloader(vector, unavailable=[carol])
    elif how == "not-found":
        download = downloader(vector, not_found=[carol])
    else:
        download = downloader(vector, replace={carol: ("bob@example.org", 2055582871)})
    legacy, storage = await run_migrate(vector, download=download)
    data = snap(storage)
    device_absent(data, *carol)
    assert not any(k.startswith("/trust/carol@example.org/") for k in data)
    assert "333333333" not in legacy.data["sessions"]["carol@example.org"]
    assert "333333333" not in legacy.data["trust"]["carol@example.org"]
    assert f"/{NS}/session/bob@example.org/2055582871" in data


async def test_session_with_other_identity_is_dropped_device_kept() -> None:
    vector = generated()
    dump = copy.deepcopy(vector.legacy)
    dump["sessions"]["carol@example.org"]["333333333"]["other_ik"] = dump["trust"]["bob@example.org"][
        "2055582871"
    ]["key"]
    legacy, storage = await run_migrate(vector, DictLegacyStorage(dump))
    data = snap(storage)
    assert core_view(data) == core_view(vector.expected)
    assert f"/{NS}/session/carol@example.org/333333333" not in data
    assert legacy.data["sessions"]["carol@example.org"] == {}


async def test_untrusted_and_undecided_names() -> None:
    vector = generated()
    dump = copy.deepcopy(vector.legacy)
    dump["trust"]["carol@example.org"]["333333333"]["trusted"] = False
    del dump["trust"]["bob@example.org"]["2055582871"]
    _, storage = await run_migrate(vector, DictLegacyStorage(dump))
    data = snap(storage)
    keys = GENERATED_EXPECTED["identity_keys"]
    assert data[keys["carol@example.org/333333333"]["trust_storage_key"]] == "DISTRUSTED"
    assert data[keys["bob@example.org/2055582871"]["trust_storage_key"]] == "UNDECIDED"


@needs_upstream
async def test_inactive_device_migrated_inactive_and_decrypts() -> None:
    vector = upstream()
    dump = copy.deepcopy(vector.legacy)
    dump["active_devices"]["bob@example.org"].remove(254614318)
    dump["inactive_devices"]["bob@example.org"]["254614318"] = 1600000000.5
    _, storage = await run_migrate(vector, DictLegacyStorage(dump, string_ids=True))
    data = snap(storage)
    assert data["/devices/bob@example.org/254614318/active"] == {NS: False}
    assert 254614318 in data["/devices/bob@example.org/list"]
    manager = await start(storage)
    try:
        assert await decrypt(manager, vector, "post-migration-message.xml", "bob@example.org") == (
            b"This is a test message"
        )
    finally:
        await manager.shutdown()


async def test_nothing_to_migrate() -> None:
    legacy = DictLegacyStorage({"sessions": {}, "trust": {}, "active_devices": {}, "inactive_devices": {}})
    storage = RecordingStorage()
    await migrate(legacy, storage, *NAMES, downloader(generated()))
    assert legacy.calls == ["loadOwnData"] and storage.writes == []


def test_public_interface() -> None:
    assert oldmemo.migrations.__all__ == [
        "OwnData",
        "Trust",
        "Session",
        "BoundOTPK",
        "StateSuper",
        "State",
        "LegacyStorage",
        "migrate",
    ]
    assert sorted(LegacyStorage.__abstractmethods__) == sorted(
        [
            "loadOwnData", "deleteOwnData", "loadState", "deleteState", "loadSession", "deleteSession",
            "loadActiveDevices", "loadInactiveDevices", "deleteActiveDevices", "deleteInactiveDevices",
            "loadTrust", "deleteTrust", "listJIDs", "deleteJIDList",
        ]
    )  # fmt: skip
    for name in ("OwnData", "Trust", "Session", "BoundOTPK", "StateSuper", "State"):
        assert set(getattr(oldmemo.migrations, name).__required_keys__) == set(
            getattr(oldmemo.migrations, name).__annotations__
        )
    assert "migrations" not in oldmemo.__all__


# -- conversion details ---------------------------------------------------------------------------------


@needs_upstream
async def test_valid_signed_pre_key_signature_is_kept() -> None:
    """The upstream own key has natural sign 0: its legacy signature is kept; the generated one
    (sign 1) was signed again (D6)."""
    for vector, resigned in ((upstream(), False), (generated(), True)):
        _, storage = await run_migrate(vector)
        keys = check_key_state(vector, snap(storage))
        legacy_signature = unb64(vector.legacy["state"]["super"]["super"]["spk"]["signature"])
        assert (keys.signed_pre_key.signature != legacy_signature) is resigned


def test_device_ids_and_base64() -> None:
    assert convert.device_id(5, "x") == 5
    assert convert.device_id("333333333", "x") == 333333333
    for bad in (True, "12a", 1.5, None):
        with pytest.raises(InvalidState):
            convert.device_id(bad, "x")
    key = bytes(range(32))
    wrapped = base64.b64encode(key).decode()
    assert convert.b64_key(f" {wrapped[:10]}\n{wrapped[10:]} ", "x") == key
    for bad_b64 in ("not base64!", base64.b64encode(key[:31]).decode(), 7):
        with pytest.raises(InvalidState):
            convert.b64_key(bad_b64, "x")


async def test_invalid_device_id_in_legacy_list_raises() -> None:
    vector = generated()
    dump = copy.deepcopy(vector.legacy)
    dump["active_devices"]["carol@example.org"] = ["carol's phone"]
    with pytest.raises(InvalidState, match="loadActiveDevices"):
        await run_migrate(vector, DictLegacyStorage(dump))


async def test_pre_key_without_id_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    vector = generated()
    dump = copy.deepcopy(vector.legacy)
    state_super = dump["state"]["super"]
    first = state_super["super"]["otpks"][0]
    first_id = state_super["otpk_ids"].pop(first["pub"])
    with caplog.at_level(logging.INFO, logger="oldmemo.migrations"):
        _, storage = await run_migrate(vector, DictLegacyStorage(dump))
    keys = KeyState.from_json(snap(storage)[f"/{NS}/keys"])
    assert first_id not in keys.pre_keys and len(keys.pre_keys) == len(state_super["super"]["otpks"]) - 1
    assert keys.next_pre_key_id == state_super["otpk_id_counter"] + 1
    assert any("1 legacy pre keys without an id" in r.getMessage() for r in caplog.records)


async def test_other_identity_in_new_storage_is_replaced(caplog: pytest.LogCaptureFixture) -> None:
    vector = generated()
    used = RecordingStorage()
    await used.store_bytes("/ikp/key", bytes(32))
    await used.store("/ikp/is_seed", True)
    with caplog.at_level(logging.WARNING, logger="oldmemo.migrations"):
        legacy, storage = await run_migrate(vector, storage=used)
    await check_migrated(vector, legacy, storage)
    assert any("another identity key" in r.getMessage() for r in caplog.records)


async def test_bundle_with_invalid_identity_key_drops_device() -> None:
    vector = generated()
    carol = ("carol@example.org", 333333333)
    serve = downloader(vector)

    async def download(bare_jid: str, device_id: int) -> BundleImpl:
        bundle = await serve(bare_jid, device_id)
        if (bare_jid, device_id) != carol:
            return bundle
        small_order = bytes([1]) + bytes(31)  # the neutral element
        return BundleImpl(
            bare_jid,
            device_id,
            small_order,
            bundle.signed_pre_key_id,
            bundle.signed_pre_key,
            bundle.signed_pre_key_signature,
            bundle.pre_keys,
        )

    legacy, storage = await run_migrate(vector, download=download)
    device_absent(snap(storage), *carol)
    assert legacy.data["sessions"]["carol@example.org"] == {}


async def test_malformed_legacy_trust_drops_device() -> None:
    vector = generated()
    dump = copy.deepcopy(vector.legacy)
    dump["trust"]["carol@example.org"]["333333333"]["key"] = "garbage"
    _, storage = await run_migrate(vector, DictLegacyStorage(dump))
    device_absent(snap(storage), "carol@example.org", 333333333)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda dr: dr.update(smks={"not json": base64.b64encode(bytes(32)).decode()}),
        lambda dr: dr["skr"].update(rchain={"length": -1, "key": base64.b64encode(bytes(32)).decode()}),
        lambda dr: dr["super"]["other_pub"].update(pub="AAAA"),
        lambda dr: dr.pop("skr"),
    ],
    ids=["smks", "chain-length", "ratchet-key", "skr"],
)
async def test_d7_unconvertible_session_left_out(corrupt: Callable[[Dict[str, Any]], None]) -> None:
    vector = generated()
    dump = copy.deepcopy(vector.legacy)
    corrupt(dump["sessions"]["carol@example.org"]["333333333"]["super"])
    _, storage = await run_migrate(vector, DictLegacyStorage(dump))
    data = snap(storage)
    assert f"/{NS}/session/carol@example.org/333333333" not in data
    assert f"/{NS}/session/bob@example.org/2055582871" in data
    assert core_view(data) == core_view(vector.expected)


@pytest.mark.parametrize("matching", [True, False], ids=["matching-key", "other-key"])
async def test_own_device_legacy_trust(matching: bool) -> None:
    vector = generated()
    dump = copy.deepcopy(vector.legacy)
    own_curve = dump["state"]["super"]["super"]["ik"]["pub"]
    other = dump["trust"]["bob@example.org"]["2055582871"]["key"]
    dump["trust"][OWN_JID] = {
        str(vector.own_device_id): {"key": own_curve if matching else other, "trusted": True}
    }
    legacy, storage = await run_migrate(vector, DictLegacyStorage(dump))
    own = GENERATED_EXPECTED["identity_keys"]["alice@example.org/1111111111 (own device)"]
    assert snap(storage)[own["trust_storage_key"]] == ("TRUSTED" if matching else "UNDECIDED")
    assert legacy.data["trust"][OWN_JID] == {}


async def test_malformed_other_ik_and_corrupt_stored_session() -> None:
    vector = generated()
    dump = copy.deepcopy(vector.legacy)
    dump["sessions"]["bob@example.org"]["2055582871"]["other_ik"] = None
    used = RecordingStorage()
    await used.store_bytes(f"/{NS}/session/carol@example.org/333333333", b"\x63corrupt")
    _, storage = await run_migrate(vector, DictLegacyStorage(dump), used)
    data = snap(storage)
    assert f"/{NS}/session/bob@example.org/2055582871" not in data
    session = await oldmemo.Oldmemo(storage).load_session("carol@example.org", 333333333)
    assert session is not None and len(session.state.skipped) == 2
