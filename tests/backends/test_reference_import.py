"""Our backends adopt the data the reference backends (PyPI twomemo / oldmemo 2.1.0) stored.

Provenance of the data: generated at test time. The reference stack runs in its own venv (built
and cached by ``tests/interop/refenv.py``; the tests are skipped without it, or fail when ``CI`` is
``"true"``) behind the interop harness (``tests/interop/peer.py``, public API only): Alice and Bob,
both with Twomemo and Oldmemo, make first contact and exchange a few messages in each namespace;
then Bob sends three more messages per namespace of which Alice receives only the second (so she
holds a skipped message key for the first and has not seen the third), and Carol (reference too)
sends Alice a first message (a key exchange on one of Alice's reference pre keys) per namespace that
is not delivered either. Alice's storage file is the reference data under test.

Checked: the identity key and device id stay; the bundle we publish is the reference's (signed pre
key with id and signature, pre keys with ids); the held messages decrypt (skipped key, next chain
key, key exchange on a reference pre key); the conversations go on both ways with Bob and Carol still
on the reference; the reference records are kept and the import happens once; the id rules; corrupt
data; purge; the steady-state cost; pre-stable (reference-migrated legacy) records.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import os
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, FrozenSet, List, Optional

import pytest

import oldmemo
import oldmemo.etree
import twomemo
import twomemo.etree
from interop.harness import NS_OLDMEMO, NS_TWOMEMO, Network, Peer, Stanza, exchange
from interop.refenv import reference_python_or_skip
from omemo import Backend, DeviceInformation, Maybe, SessionManager, TrustLevel
from omemo._engine.backend import EngineBackend
from omemo._engine.records import KeyState
from omemo._engine.reference_import import MARKER, convert_keys
from omemo.message import Message
from omemo.session import Initiation
from omemo.storages import MemoryStorage
from omemo.testing import InMemoryXMPP
from omemo.types import JSONType
from omemo_engine import xeddsa
from omemo_engine.errors import InvalidState
from omemo_engine.profile import LEGACY, OMEMO2

from .test_migrations import NS as LEGACY_NS
from .test_migrations import check_key_state, check_sessions, generated

ALICE = "alice@example.org"
BOB = "bob@example.org"
CAROL = "carol@example.org"
NAMESPACES = (NS_TWOMEMO, NS_OLDMEMO)
BACKENDS: Dict[str, type[EngineBackend]] = {NS_TWOMEMO: twomemo.Twomemo, NS_OLDMEMO: oldmemo.Oldmemo}
#: The names of our own records below /{namespace}/ (everything else there is the reference's).
OUR_RECORDS = ("keys", "session/", "session-skipped/", "session-jids", "session-devices/", MARKER)


# -- the reference data ----------------------------------------------------------------------------


@dataclass
class Scenario:
    """Alice's reference data and what is still in flight."""

    net: Network
    alice: Peer
    bob: Peer
    carol: Peer
    dump: Dict[str, Any]  # Alice's storage after her reference client exited
    identity_key: bytes  # Alice's identity key as the reference reported it
    bundles: Dict[str, str]  # Alice's last published bundle per namespace (reference XML)
    skipped: Dict[str, Stanza]  # per namespace: Bob's message Alice skipped
    undelivered: Dict[str, Stanza]  # per namespace: Bob's message after the one she received
    first: Dict[str, Stanza]  # per namespace: Carol's first message (key exchange), not delivered


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    reference = reference_python_or_skip()
    assert reference is not None
    net = Network(tmp_path_factory.mktemp("reference-import"))
    try:
        alice = net.add(reference, "alice", ALICE, ["twomemo", "oldmemo"])
        bob = net.add(reference, "bob", BOB, ["twomemo", "oldmemo"])
        for ns in NAMESPACES:
            exchange(net, alice, bob, f"first contact ({ns})".encode(), priority=[ns])
            for i in range(3):
                exchange(net, bob, alice, f"bob {i} ({ns})".encode(), priority=[ns])
                exchange(net, alice, bob, f"alice {i} ({ns})".encode(), priority=[ns])
        skipped, undelivered = {}, {}
        for ns in NAMESPACES:
            skipped[ns] = net.send(bob, [ALICE], f"skipped ({ns})".encode(), priority=[ns])
            received = net.send(bob, [ALICE], f"received ({ns})".encode(), priority=[ns])
            assert net.deliver(received, alice).plaintext == f"received ({ns})".encode()
            undelivered[ns] = net.send(bob, [ALICE], f"undelivered ({ns})".encode(), priority=[ns])
        net.flush_automatic()
        carol = net.add(reference, "carol", CAROL, ["twomemo", "oldmemo"])
        first = {
            ns: net.send(carol, [ALICE], f"carol first ({ns})".encode(), priority=[ns]) for ns in NAMESPACES
        }
        assert all(first[ns].has_key_exchange(ALICE, alice.device_id) for ns in NAMESPACES)
        own = alice.call("get_own_device_information")["own"]
        bundles = {ns: net.bundles[(ns, ALICE, alice.device_id)] for ns in NAMESPACES}
        alice.stop()
        dump = json.loads(alice.storage_path.read_text())
        yield Scenario(
            net,
            alice,
            bob,
            carol,
            dump,
            base64.b64decode(own["identity_key"]),
            bundles,
            skipped,
            undelivered,
            first,
        )
    finally:
        net.close()


class Manager(SessionManager):
    """Blind trust with the harness's trust level names."""

    LEVELS: ClassVar[Dict[str, TrustLevel]] = {
        "trusted": TrustLevel.TRUSTED,
        "distrusted": TrustLevel.DISTRUSTED,
        "undecided": TrustLevel.UNDECIDED,
    }

    async def _evaluate_custom_trust_level(self, device: DeviceInformation) -> TrustLevel:
        return self.LEVELS[device.trust_level_name]

    async def _make_trust_decision(
        self, undecided: FrozenSet[DeviceInformation], identifier: Optional[str]
    ) -> None:
        for device in undecided:
            await self.set_trust(device.bare_jid, device.identity_key, "trusted")


async def start_ours(storage: MemoryStorage, network: InMemoryXMPP) -> SessionManager:
    cls = network.session_manager_class(ALICE, Manager)
    backends: List[Backend] = [BACKENDS[ns](storage) for ns in NAMESPACES]
    return await cls.create(backends, storage, ALICE, None, "undecided")


async def parse(sm: SessionManager, stanza: Stanza) -> Message:
    element = ET.fromstring(stanza.xml)
    if stanza.namespace == NS_TWOMEMO:
        return twomemo.etree.parse_message(element, stanza.sender_jid)
    return await oldmemo.etree.parse_message(element, stanza.sender_jid, ALICE, sm)


def reference_records(data: Dict[str, Any]) -> Dict[str, Any]:
    return {
        key: value
        for key, value in data.items()
        for ns in NAMESPACES
        if key.startswith(f"/{ns}/") and not key[len(ns) + 2 :].startswith(OUR_RECORDS)
    }


# -- with the reference ------------------------------------------------------------------------------


async def test_adopted_in_process(scenario: Scenario) -> None:
    storage = MemoryStorage(scenario.dump, serialize=True)
    network = InMemoryXMPP()
    sm = await start_ours(storage, network)
    own, _ = await sm.get_own_device_information()
    assert own.device_id == scenario.alice.device_id
    assert own.identity_key == scenario.identity_key

    # The bundle we publish is the reference's, signature included.
    await sm.ensure_data_consistency()  # nothing on this network yet: uploads our bundles
    for ns in NAMESPACES:
        etree: Any = twomemo.etree if ns == NS_TWOMEMO else oldmemo.etree
        theirs = etree.parse_bundle(ET.fromstring(scenario.bundles[ns]), ALICE, own.device_id)
        ours = network.bundles[(ns, ALICE, own.device_id)]
        assert ours == theirs
        assert len(theirs.pre_keys) == 100

    # Bob's held messages decrypt: the next chain key, and a skipped key.
    for ns in NAMESPACES:
        for stanza, text in ((scenario.undelivered[ns], "undelivered"), (scenario.skipped[ns], "skipped")):
            plaintext, sender, _ = await sm.decrypt(await parse(sm, stanza))
            assert plaintext == f"{text} ({ns})".encode()
            assert (sender.bare_jid, sender.device_id) == (BOB, scenario.bob.device_id)

    # Our records are written, the reference's are untouched, and the import is recorded.
    data: Dict[str, Any] = dict(storage.snapshot())
    assert reference_records(data) == reference_records(scenario.dump)
    for ns in NAMESPACES:
        marker = data[f"/{ns}/{MARKER}"]
        assert marker["sessions"] == 1 and marker["skipped"] == [] and marker["pre_keys"] == 100
        assert f"/{ns}/keys" in data and f"/{ns}/session/{BOB}/{scenario.bob.device_id}" in data
    await sm.shutdown()


def test_conversation_goes_on_with_reference_peers(scenario: Scenario) -> None:
    net, alice, bob, carol = scenario.net, scenario.alice, scenario.bob, scenario.carol
    alice.python = sys.executable  # the same storage file, now with our stack
    net.restart(alice)
    assert alice.hello["omemo"]["file"].startswith(str(Path(__file__).resolve().parents[2] / "src"))
    for ns in NAMESPACES:
        assert net.deliver(scenario.undelivered[ns], alice).plaintext == f"undelivered ({ns})".encode()
        assert net.deliver(scenario.skipped[ns], alice).plaintext == f"skipped ({ns})".encode()
        # Carol's key exchange used one of the reference pre keys and the reference signed pre key.
        assert net.deliver(scenario.first[ns], alice).plaintext == f"carol first ({ns})".encode()
        net.flush_automatic()
        for i in range(3):
            exchange(net, alice, bob, f"ours {i} ({ns})".encode(), priority=[ns])
            exchange(net, bob, alice, f"reference {i} ({ns})".encode(), priority=[ns])
            exchange(net, alice, carol, f"ours to carol {i} ({ns})".encode(), priority=[ns])
            exchange(net, carol, alice, f"carol {i} ({ns})".encode(), priority=[ns])
    # A restart of ours keeps everything (our records now; no second import).
    net.restart(alice)
    for ns in NAMESPACES:
        exchange(net, bob, alice, f"after restart ({ns})".encode(), priority=[ns])
        exchange(net, alice, carol, f"after restart ({ns})".encode(), priority=[ns])


class RecordingStorage(MemoryStorage):
    """Records the key of every load."""

    def __init__(self, data: Dict[str, Any]) -> None:
        super().__init__(data, serialize=True)
        self.loads: List[str] = []

    async def _load(self, key: str) -> Maybe[JSONType]:
        self.loads.append(key)
        return await super()._load(key)


@pytest.mark.parametrize("ns", NAMESPACES)
async def test_import_happens_once_and_misses_stay_cheap(scenario: Scenario, ns: str) -> None:
    storage = RecordingStorage(scenario.dump)
    backend = BACKENDS[ns](storage)
    assert await backend.load_session(BOB, scenario.bob.device_id) is not None  # imports
    assert any(key.endswith("/x3dh") for key in storage.loads)
    imported = dict(storage.snapshot())

    # Later processes: one load of the marker at the first miss, nothing extra afterwards.
    backend = BACKENDS[ns](storage)
    storage.loads.clear()
    assert await backend.load_session(CAROL, 1) is None
    assert storage.loads == [f"/{ns}/session/{CAROL}/1", f"/{ns}/{MARKER}", f"/{ns}/session/{CAROL}/1"]
    storage.loads.clear()
    assert await backend.load_session(CAROL, 2) is None
    assert storage.loads == [f"/{ns}/session/{CAROL}/2"]
    await backend.get_bundle(ALICE, scenario.alice.device_id)
    assert dict(storage.snapshot()) == imported  # nothing imported or generated again


@pytest.mark.parametrize("ns", NAMESPACES)
async def test_keys_converted_with_ids(scenario: Scenario, ns: str) -> None:
    storage = MemoryStorage(scenario.dump, serialize=True)
    backend = BACKENDS[ns](storage)
    bundle = await backend.get_bundle(ALICE, scenario.alice.device_id)
    x3dh = scenario.dump[f"/{ns}/x3dh"]
    spk_priv = x3dh["signed_pre_key"]["priv"].encode("latin-1")
    assert bundle.signed_pre_key == xeddsa.priv_to_curve25519_pub(spk_priv)
    ids = scenario.dump[f"/{ns}/pre_key_ids"]
    expected = {
        ids[base64.b64encode(pub).decode()]: pub
        for pub in (xeddsa.priv_to_curve25519_pub(priv.encode("latin-1")) for priv in x3dh["pre_keys"])
    }
    assert dict(bundle.pre_keys) == expected
    keys = KeyState.from_json(dict(storage.snapshot())[f"/{ns}/keys"])
    assert keys.next_pre_key_id == scenario.dump[f"/{ns}/pre_key_id_counter"] + 1
    assert keys.signed_pre_key.timestamp == x3dh["signed_pre_key"]["timestamp"]
    # New pre keys get new ids; rotation continues the signed pre key ids.
    await backend.generate_pre_keys(1)
    bundle = await backend.get_bundle(ALICE, scenario.alice.device_id)
    assert max(bundle.pre_keys) == keys.next_pre_key_id
    await backend.rotate_signed_pre_key()
    bundle = await backend.get_bundle(ALICE, scenario.alice.device_id)
    assert bundle.signed_pre_key_id == keys.signed_pre_key.key_id + 1


@pytest.mark.parametrize("ns", NAMESPACES)
async def test_corrupt_keys_raise_naming_the_record(scenario: Scenario, ns: str) -> None:
    dump = copy.deepcopy(scenario.dump)
    del dump[f"/{ns}/x3dh"]["signed_pre_key"]["sig"]
    storage = MemoryStorage(dump, serialize=True)
    backend = BACKENDS[ns](storage)
    with pytest.raises(InvalidState, match=rf"/{ns}/.*x3dh\.signed_pre_key.*'sig'"):
        await backend.get_bundle(ALICE, 1)
    with pytest.raises(InvalidState):  # not silently replaced by fresh keys on a second try
        await backend.load_session(BOB, scenario.bob.device_id)
    assert dict(storage.snapshot()) == dump  # nothing written

    dump = copy.deepcopy(scenario.dump)
    dump[f"/{ns}/pre_key_ids"] = {"not base64!": 3}
    with pytest.raises(InvalidState, match=r"pre_key_ids"):
        await BACKENDS[ns](MemoryStorage(dump, serialize=True)).get_bundle(ALICE, 1)


@pytest.mark.parametrize("ns", NAMESPACES)
async def test_corrupt_session_is_left_out_and_logged(
    scenario: Scenario, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    dump = copy.deepcopy(scenario.dump)
    dump[f"/{ns}/{BOB}/{scenario.bob.device_id}/double_ratchet"]["diffie_hellman_ratchet"]["root_chain"] = 5
    storage = MemoryStorage(dump, serialize=True)
    backend = BACKENDS[ns](storage)
    with caplog.at_level(logging.WARNING):
        assert await backend.load_session(BOB, scenario.bob.device_id) is None
    assert "could not be imported" in caplog.text
    data: Dict[str, Any] = dict(storage.snapshot())
    marker = data[f"/{ns}/{MARKER}"]
    assert len(marker["skipped"]) == 1 and "root_chain" in marker["skipped"][0]
    assert f"/{ns}/keys" in data  # the keys are imported all the same
    assert reference_records(data) == reference_records(dump)


@pytest.mark.parametrize("ns", NAMESPACES)
async def test_purge_removes_reference_data(scenario: Scenario, ns: str) -> None:
    storage = MemoryStorage(scenario.dump, serialize=True)
    backend = BACKENDS[ns](storage)
    await backend.purge_bare_jid(BOB)
    data = dict(storage.snapshot())
    assert not [key for key in data if key.startswith(f"/{ns}/{BOB}/")]
    assert f"/{ns}/keys" in data  # imported before the JID was purged
    assert await BACKENDS[ns](storage).load_session(BOB, scenario.bob.device_id) is None
    await backend.purge()
    assert not [key for key in storage.snapshot() if key.startswith(f"/{ns}/")]
    # A fresh start makes new keys.
    bundle = await BACKENDS[ns](storage).get_bundle(ALICE, 1)
    assert bundle.signed_pre_key_id == 1 and not bundle.pre_keys


async def test_our_keys_are_never_mixed_with_reference_sessions(scenario: Scenario) -> None:
    storage = MemoryStorage({k: v for k, v in scenario.dump.items() if k.startswith("/ikp/")}, serialize=True)
    await twomemo.Twomemo(storage).get_bundle(ALICE, 1)  # our own keys first
    for key, value in scenario.dump.items():
        if key.startswith(f"/{NS_TWOMEMO}/"):
            await storage.store(key, value)
    before = dict(storage.snapshot())
    assert await twomemo.Twomemo(storage).load_session(BOB, scenario.bob.device_id) is None
    assert dict(storage.snapshot()) == before


# -- without the reference -----------------------------------------------------------------------------


def latin1(data: bytes) -> str:
    return data.decode("latin-1")


def b64pub(priv: bytes) -> str:
    return base64.b64encode(xeddsa.priv_to_curve25519_pub(priv)).decode()


def synthetic_x3dh(identity_priv: bytes, *, sign_with: Optional[bytes] = None) -> Dict[str, Any]:
    signer = sign_with or identity_priv

    def spk(seed: int, timestamp: int) -> Dict[str, Any]:
        priv = bytes([seed]) * 32
        sig = xeddsa.sign(signer, xeddsa.priv_to_curve25519_pub(priv), nonce=bytes(64))
        return {"version": "1.0.0", "priv": latin1(priv), "sig": latin1(sig), "timestamp": timestamp}

    return {
        "version": "1.0.0",
        "identity_key": {"version": "1.0.0", "secret": latin1(bytes(32)), "secret_type": "SEED"},
        "signed_pre_key": spk(2, 2000),
        "old_signed_pre_key": spk(1, 1000),
        "pre_keys": [latin1(bytes([10 + i]) * 32) for i in range(3)],
    }


def test_id_rules() -> None:
    identity_priv = xeddsa.clamp(bytes(range(32)))
    identity_key = xeddsa.priv_to_ed25519_pub(identity_priv)
    x3dh = synthetic_x3dh(identity_priv)
    spk_ids = {b64pub(bytes([1]) * 32): 4, b64pub(bytes([2]) * 32): 5}
    # Key 12 never got an id; id 150 names a used key; the counter is ahead of every id.
    pk_ids = {b64pub(bytes([10]) * 32): 7, b64pub(bytes([11]) * 32): 99, b64pub(bytes([99]) * 32): 150}
    converted = convert_keys(
        x3dh, spk_ids, pk_ids, 120, profile=OMEMO2, identity_priv=identity_priv,
        identity_key=identity_key, random_bytes=os.urandom,
    )  # fmt: skip
    keys = converted.keys
    assert (keys.signed_pre_key.key_id, keys.signed_pre_key.timestamp) == (5, 2000)
    assert keys.old_signed_pre_key is not None and keys.old_signed_pre_key.key_id == 4
    assert sorted(keys.pre_keys) == [7, 99, 151]
    assert keys.next_pre_key_id == 152
    assert converted.renumbered_pre_keys == 1 and converted.resigned == ()
    # Counter ahead of every id: the next id follows the counter.
    converted = convert_keys(
        x3dh, spk_ids, {b64pub(bytes([i]) * 32): i for i in (10, 11, 12)}, 200, profile=OMEMO2,
        identity_priv=identity_priv, identity_key=identity_key, random_bytes=os.urandom,
    )  # fmt: skip
    assert converted.keys.next_pre_key_id == 201
    # A signed pre key without an id gets max + 1; an old one without an id is left out.
    converted = convert_keys(
        x3dh, {}, {}, None, profile=OMEMO2, identity_priv=identity_priv,
        identity_key=identity_key, random_bytes=os.urandom,
    )  # fmt: skip
    assert converted.keys.signed_pre_key.key_id == 1 and converted.keys.old_signed_pre_key is None
    assert sorted(converted.keys.pre_keys) == [1, 2, 3]


@pytest.mark.parametrize("profile", [OMEMO2, LEGACY], ids=["twomemo", "oldmemo"])
def test_signature_for_another_key_is_made_again(profile: Any) -> None:
    identity_priv = xeddsa.clamp(bytes(range(32)))
    identity_key = xeddsa.priv_to_ed25519_pub(identity_priv)
    x3dh = synthetic_x3dh(identity_priv, sign_with=xeddsa.clamp(bytes(range(1, 33))))
    converted = convert_keys(
        x3dh, {}, {}, 0, profile=profile, identity_priv=identity_priv, identity_key=identity_key,
        random_bytes=os.urandom,
    )  # fmt: skip
    spk = converted.keys.signed_pre_key
    xeddsa.verify(identity_key, profile.encode_signed_pre_key(spk.pub), spk.signature)
    assert converted.resigned == (1,)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda x: x.pop("pre_keys"), r"'pre_keys' is missing"),
        (lambda x: x["pre_keys"].append("\u0100" * 32), r"pre_keys\[3\]: not a byte string"),
        (lambda x: x["signed_pre_key"].update(priv="short"), r"signed_pre_key\.priv: expected 32 bytes"),
        (lambda x: x["signed_pre_key"].update(timestamp="x"), r"timestamp: expected a non-negative"),
    ],
)
def test_corrupt_x3dh_names_the_field(mutate: Any, match: str) -> None:
    identity_priv = xeddsa.clamp(bytes(range(32)))
    x3dh = synthetic_x3dh(identity_priv)
    mutate(x3dh)
    with pytest.raises(InvalidState, match=match):
        convert_keys(
            x3dh, {}, {}, 0, profile=OMEMO2, identity_priv=identity_priv,
            identity_key=xeddsa.priv_to_ed25519_pub(identity_priv), random_bytes=os.urandom,
        )  # fmt: skip


async def test_fresh_account_generates_keys_and_writes_no_marker() -> None:
    storage = MemoryStorage(serialize=True)
    backend = twomemo.Twomemo(storage)
    await backend.generate_pre_keys(3)
    assert await backend.load_session(BOB, 1) is None
    keys = sorted(key for key in storage.snapshot() if key.startswith(f"/{NS_TWOMEMO}/"))
    assert keys == [f"/{NS_TWOMEMO}/keys"]


async def test_pre_stable_records_of_the_reference_migration() -> None:
    """Storage the reference ``oldmemo.migrations`` wrote (legacy X3DH and ratchet objects)."""
    vector = generated()
    storage = MemoryStorage(vector.expected, serialize=True)
    backend = oldmemo.Oldmemo(storage)
    assert vector.expected_sessions()
    for jid, device_id in vector.expected_sessions():
        session = await backend.load_session(jid, device_id)
        assert session is not None
        assert session.confirmed
        expected = vector.expected[f"/{LEGACY_NS}/{jid}/{device_id}/initiation"]
        assert session.initiation is Initiation(expected)
    check_key_state(vector, dict(storage.snapshot()))
    await check_sessions(vector, storage)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
    elif isinstance(value, list) and value:
        yield from _paths(value[0], (*path, 0))


@pytest.mark.parametrize("ns", NAMESPACES)
async def test_any_malformed_record_gives_invalid_state_or_is_left_out(scenario: Scenario, ns: str) -> None:
    """Every field of every reference record replaced by junk (or removed): InvalidState or skip."""
    junk_values: List[Any] = [None, -1, True, "x", "\u0100", [], {}, 2.5, "A" * 32]
    for key in [key for key in scenario.dump if key.startswith(f"/{ns}/")]:
        for path in _paths(scenario.dump[key]):
            for junk in [*junk_values, "<removed>"]:
                dump = copy.deepcopy(scenario.dump)
                if not path:
                    dump[key] = junk
                    if junk == "<removed>":
                        del dump[key]
                else:
                    parent = dump[key]
                    for step in path[:-1]:
                        parent = parent[step]
                    if junk == "<removed>":
                        parent.pop(path[-1])
                    else:
                        parent[path[-1]] = junk
                backend = BACKENDS[ns](MemoryStorage(dump, serialize=True))
                try:
                    await backend.load_session(BOB, scenario.bob.device_id)
                    await backend.get_bundle(ALICE, 1)
                except InvalidState:
                    pass


class YieldingStorage(MemoryStorage):
    """Yields to the event loop in every operation (so concurrent callers interleave) and counts stores."""

    def __init__(self, data: Dict[str, Any]) -> None:
        super().__init__(data, serialize=True)
        self.stores: Dict[str, int] = {}

    async def _load(self, key: str) -> Maybe[JSONType]:
        await asyncio.sleep(0)
        return await super()._load(key)

    async def _store(self, key: str, value: JSONType) -> None:
        await asyncio.sleep(0)
        self.stores[key] = self.stores.get(key, 0) + 1
        await super()._store(key, value)


@pytest.mark.parametrize("ns", NAMESPACES)
async def test_concurrent_first_uses_import_once(scenario: Scenario, ns: str) -> None:
    storage = YieldingStorage(scenario.dump)
    backend = BACKENDS[ns](storage)
    session, bundle, _, missing = await asyncio.gather(
        backend.load_session(BOB, scenario.bob.device_id),
        backend.get_bundle(ALICE, scenario.alice.device_id),
        backend.signed_pre_key_age(),
        backend.load_session(CAROL, 1),
    )
    assert session is not None and missing is None and len(bundle.pre_keys) == 100
    assert storage.stores[f"/{ns}/session/{BOB}/{scenario.bob.device_id}"] == 1
    assert storage.stores[f"/{ns}/keys"] == 1
    assert storage.stores[f"/{ns}/{MARKER}"] == 1


def test_import_under_twisted(scenario: Scenario) -> None:
    """Outside asyncio the import is serialised with a Twisted lock (coroutines driven by Deferreds)."""
    from twisted.internet.defer import Deferred

    backend = twomemo.Twomemo(MemoryStorage(scenario.dump, serialize=True))
    results: List[Any] = []
    Deferred.fromCoroutine(backend.load_session(BOB, scenario.bob.device_id)).addBoth(results.append)
    assert len(results) == 1 and results[0] is not None and results[0].bare_jid == BOB
