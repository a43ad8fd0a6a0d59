"""End to end with the real backends (``twomemo`` and ``oldmemo``) on the in-memory XMPP.

The toy backend covers the orchestration in detail; this file checks that the session manager drives
the real protocol implementations the same way: both namespaces, priority order, key exchange
completion, history sync with pre key hiding, signed labels (OMEMO 2) next to label-less legacy
OMEMO, session replacement and SQLite persistence across a restart.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

import oldmemo
import twomemo
from omemo._core.encrypt import encrypt as core_encrypt
from omemo._engine.records import KeyState
from omemo.identity_key_pair import IdentityKeyPair
from omemo.storage import Storage
from omemo.storages import MemoryStorage, SQLiteStorage
from omemo.testing import InMemoryXMPP
from omemo.trust import BTBVTrust
from omemo.types import JSONType, SignedLabel
from omemo_engine import xeddsa
from omemo_engine.errors import InvalidState

ALICE, BOB = "alice@example.org", "bob@example.org"
NS2, NSL = twomemo.twomemo.NAMESPACE, oldmemo.oldmemo.NAMESPACE


async def _create(
    net: InMemoryXMPP, jid: str, storage: Storage, label: Optional[str] = None, legacy_first: bool = False
) -> Any:
    backends: List[Any] = [twomemo.Twomemo(storage), oldmemo.Oldmemo(storage)]
    if legacy_first:
        backends.reverse()
    cls = net.session_manager_class(jid, BTBVTrust)
    return await cls.create(backends, storage, jid, label, BTBVTrust.UNDECIDED)


async def _deliver(net: InMemoryXMPP, manager: Any, jid: str) -> List[Tuple[Optional[bytes], Any, Any]]:
    own, _ = await manager.get_own_device_information()
    return [await manager.decrypt(message) for message in net.take(jid, own.device_id)]


async def test_both_namespaces_end_to_end() -> None:
    net = InMemoryXMPP()
    alice = await _create(net, ALICE, MemoryStorage(), label="alice phone")
    bob = await _create(net, BOB, MemoryStorage())
    await alice.after_history_sync()
    await bob.after_history_sync()
    for order in ([NS2, NSL], [NSL, NS2]):
        messages, errors = await alice.encrypt(
            frozenset({BOB}), {NS2: b"<envelope/>", NSL: b"body"}, backend_priority_order=order
        )
        assert not errors and [m.namespace for m in messages] == [order[0]]
        for message in messages:
            net.send(message)
        [(plaintext, sender, _)] = await _deliver(net, bob, BOB)
        assert plaintext == (b"<envelope/>" if order[0] == NS2 else b"body")
        assert sender.label == "alice phone" and sender.trust_level_name == "UNDECIDED"
        # The key exchange is completed automatically.
        [(empty, _, _)] = await _deliver(net, alice, ALICE)
        assert empty is None
    # Signed label in the OMEMO 2 list, label-less (unsigned, dropped on the wire) in the legacy list.
    own, _ = await alice.get_own_device_information()
    entry2 = net.device_lists[(NS2, ALICE)][own.device_id]
    entry_legacy = net.device_lists[(NSL, ALICE)][own.device_id]
    assert isinstance(entry2, SignedLabel) and entry2.signature
    assert entry_legacy == SignedLabel("alice phone", b"")
    # Replacement of broken sessions reaches Bob in both namespaces.
    (bob_device,) = await alice.get_device_information(BOB)
    assert await alice.replace_sessions(bob_device) == {}
    results = await _deliver(net, bob, BOB)
    assert [r[0] for r in results] == [None, None]
    await alice.shutdown()
    await bob.shutdown()


async def test_history_sync_and_restart_with_sqlite(tmp_path: Path) -> None:
    net = InMemoryXMPP()
    async with SQLiteStorage(tmp_path / "alice.db") as alice_storage:
        alice = await _create(net, ALICE, alice_storage)
        await alice.after_history_sync()
        async with SQLiteStorage(tmp_path / "bob.db") as bob_storage:
            bob = await _create(net, BOB, bob_storage)  # stays in history sync mode
            for text in (b"one", b"two"):
                messages, _ = await alice.encrypt(frozenset({BOB}), {NS2: text, NSL: text})
                for message in messages:
                    net.send(message)
            assert [r[0] for r in await _deliver(net, bob, BOB)] == [b"one", b"two"]
            own_alice, _ = await alice.get_own_device_information()
            assert net.inbox(ALICE, own_alice.device_id) == []  # deferred
            await bob.after_history_sync()
            assert len(net.inbox(ALICE, own_alice.device_id)) == 1  # one per session
            await bob.shutdown()
        # Restart Bob from his database: same device, sessions intact.
        async with SQLiteStorage(tmp_path / "bob.db") as bob_storage:
            bob = await _create(net, BOB, bob_storage)
            await bob.after_history_sync()
            await _deliver(net, alice, ALICE)
            messages, _ = await alice.encrypt(frozenset({BOB}), {NS2: b"three", NSL: b"three"})
            for message in messages:
                assert all(kex is None for _, kex in message.keys)  # confirmed session
                net.send(message)
            assert [r[0] for r in await _deliver(net, bob, BOB)] == [b"three"]
            await bob.shutdown()
        await alice.shutdown()


async def test_legacy_first_priority_by_load_order() -> None:
    net = InMemoryXMPP()
    alice = await _create(net, ALICE, MemoryStorage(), legacy_first=True)
    bob = await _create(net, BOB, MemoryStorage())
    messages, _ = await alice.encrypt(frozenset({BOB}), {NS2: b"x", NSL: b"y"})
    assert [m.namespace for m in messages] == [NSL]
    await alice.shutdown()
    await bob.shutdown()


async def _bob_knows_alice_in_omemo2_only() -> Tuple[InMemoryXMPP, Any, Any]:
    """Alice and Bob after one OMEMO 2 exchange (no PEP notifications: Bob never saw her legacy list)."""
    net = InMemoryXMPP()
    alice = await _create(net, ALICE, MemoryStorage())
    bob = await _create(net, BOB, MemoryStorage())
    await alice.after_history_sync()
    await bob.after_history_sync()
    messages, _ = await alice.encrypt(frozenset({BOB}), {NS2: b"<envelope/>"}, backend_priority_order=[NS2])
    for message in messages:
        net.send(message)
    await _deliver(net, bob, BOB)
    await _deliver(net, alice, ALICE)
    return net, alice, bob


async def test_a_reply_in_the_namespace_of_a_message_from_a_device_known_in_another() -> None:
    # Bob knows Alice's device from OMEMO 2 only (her legacy device list never reached him); her
    # first legacy message makes him look at her legacy list, so that he can answer in that namespace.
    net, alice, bob = await _bob_knows_alice_in_omemo2_only()
    (known,) = await bob.get_device_information(ALICE)
    assert (NSL, True) not in known.active
    messages, _ = await alice.encrypt(frozenset({BOB}), {NSL: b"legacy"}, backend_priority_order=[NSL])
    for message in messages:
        net.send(message)
    [(plaintext, _, _)] = await _deliver(net, bob, BOB)
    assert plaintext == b"legacy"
    replies, errors = await bob.encrypt(frozenset({ALICE}), {NSL: b"reply"}, backend_priority_order=[NSL])
    assert not errors and [m.namespace for m in replies] == [NSL]
    await alice.shutdown()
    await bob.shutdown()


async def test_the_namespace_lookup_happens_once_per_account() -> None:
    # Alice writes in legacy OMEMO, but her legacy device list does not list her device: Bob looks it up
    # once, not for every message (a peer must not make each message cost a download).
    net, alice, bob = await _bob_knows_alice_in_omemo2_only()
    net.device_lists[(NSL, ALICE)] = {}
    net.calls.clear()
    for text in (b"one", b"two", b"three"):
        messages, _ = await alice.encrypt(frozenset({BOB}), {NSL: text}, backend_priority_order=[NSL])
        for message in messages:
            net.send(message)
    assert [r[0] for r in await _deliver(net, bob, BOB)] == [b"one", b"two", b"three"]
    lookups = [call for call in net.calls if call[:3] == ("download_device_list", NSL, ALICE)]
    assert len(lookups) == 1
    await alice.shutdown()
    await bob.shutdown()


async def test_a_huge_device_list_of_another_account_is_cut(caplog: pytest.LogCaptureFixture) -> None:
    net = InMemoryXMPP()
    alice = await _create(net, ALICE, MemoryStorage())
    await alice.after_history_sync()
    huge = {device_id: None for device_id in range(1, 5001)}
    with caplog.at_level("WARNING", logger="omemo.core"):
        await alice.update_device_list(NS2, BOB, huge)
    assert "names 5000 devices; using the first 1000" in caplog.text
    manager = alice._omemo_core
    assert await manager.devices.device_ids(BOB) == list(range(1, 1001))
    # The own list is never cut (cutting it would unpublish own devices).
    own, _ = await alice.get_own_device_information()
    own_huge = {**huge, own.device_id: None}
    await alice.update_device_list(NS2, ALICE, own_huge)
    assert len(await manager.devices.device_ids(ALICE)) == 5001
    await alice.shutdown()


async def test_a_device_is_answered_in_the_namespace_it_writes_in() -> None:
    # Bob's device announces both namespaces but writes legacy (as slixmpp-omemo 2.2 does): with the
    # integrations' option, Alice answers it in legacy, unless she has no legacy plaintext (a stanza
    # without body); when it writes OMEMO 2, she goes back to OMEMO 2. Empty messages (key exchange
    # completion) do not count. The public encrypt keeps python-omemo's rule: the order decides.
    net = InMemoryXMPP()
    alice = await _create(net, ALICE, MemoryStorage())
    bob = await _create(net, BOB, MemoryStorage())
    await alice.after_history_sync()
    await bob.after_history_sync()
    for namespace in (NS2, NSL):
        await alice.refresh_device_list(namespace, BOB)
        await bob.refresh_device_list(namespace, ALICE)
    both = {NS2: b"<envelope/>", NSL: b"body"}

    async def alice_writes(plaintext: Dict[str, bytes], public: bool = False) -> List[str]:
        if public:
            messages, errors = await alice.encrypt(frozenset({BOB}), plaintext)
        else:
            messages, errors = await core_encrypt(
                alice._omemo_core, frozenset({BOB}), plaintext, None, None, answer_in_last_namespace=True
            )
        assert not errors
        for message in messages:
            net.send(message)
        await _deliver(net, bob, BOB)
        await _deliver(net, alice, ALICE)  # an empty message completing a key exchange, if any
        return [m.namespace for m in messages]

    async def bob_writes(namespace: str) -> None:
        messages, _ = await bob.encrypt(frozenset({ALICE}), both, backend_priority_order=[namespace])
        for message in messages:
            net.send(message)
        [(plaintext, _, _)] = await _deliver(net, alice, ALICE)
        assert plaintext == both[namespace]
        await _deliver(net, bob, BOB)

    assert await alice_writes(both) == [NS2]  # nothing known yet: her order
    await bob_writes(NSL)
    assert await alice_writes(both) == [NSL]
    assert await alice_writes(both, public=True) == [NS2]
    assert await alice_writes({NS2: b"<envelope/>"}) == [NS2]  # no legacy plaintext: no choice
    assert await alice_writes(both) == [NSL]
    await bob_writes(NS2)
    assert await alice_writes(both) == [NS2]
    await alice.shutdown()
    await bob.shutdown()


async def test_a_used_pre_key_is_republished_away_after_a_crash_before_the_upload(tmp_path: Path) -> None:
    # Bob decrypts a key exchange (its pre key is deleted, committed) and dies before the bundle upload
    # (here: the upload fails and the process "restarts" on the same database). The next start sees the
    # unpublished change and publishes the bundle without that pre key, so nobody gets it again.
    net = InMemoryXMPP()
    alice = await _create(net, ALICE, MemoryStorage())
    await alice.after_history_sync()
    async with SQLiteStorage(tmp_path / "bob.db") as storage:
        bob = await _create(net, BOB, storage)
        await bob.after_history_sync()
        bob_id = (await bob.get_own_device_information())[0].device_id
        messages, _ = await alice.encrypt(
            frozenset({BOB}), {NS2: b"<envelope/>"}, backend_priority_order=[NS2]
        )
        (message,) = messages
        (kex,) = [kex for _, kex in message.keys if kex is not None]
        used = kex.pre_key_id
        assert used in net.bundles[(NS2, BOB, bob_id)].pre_keys  # type: ignore[attr-defined]
        net.fail("upload_bundle", times=None)
        await bob.decrypt(message)
        assert used in net.bundles[(NS2, BOB, bob_id)].pre_keys  # type: ignore[attr-defined]
        net.clear_failures()
    async with SQLiteStorage(tmp_path / "bob.db") as storage:  # the restart
        bob = await _create(net, BOB, storage)
        assert used not in net.bundles[(NS2, BOB, bob_id)].pre_keys  # type: ignore[attr-defined]
        await bob.shutdown()
    await alice.shutdown()


async def test_the_handover_commits_with_the_ratchet_or_not_at_all(tmp_path: Path) -> None:
    net = InMemoryXMPP()
    alice = await _create(net, ALICE, MemoryStorage())
    await alice.after_history_sync()
    async with SQLiteStorage(tmp_path / "gateway.db") as storage:
        bob = await _create(net, BOB, storage)
        await bob.after_history_sync()
        for text in (b"first", b"second"):  # the first carries the key exchange, the second not
            messages, _ = await alice.encrypt(frozenset({BOB}), {NS2: text}, backend_priority_order=[NS2])
            (message,) = messages

            async def failing(plaintext: Optional[bytes], device: Any, text: bytes = text) -> None:
                await storage.store(f"/gateway/{text.decode()}", "half")
                raise RuntimeError("the gateway's own write failed")

            with pytest.raises(RuntimeError):
                await bob.decrypt_with_handover(message, failing)
            assert (await storage.load(f"/gateway/{text.decode()}")).is_nothing  # rolled back with it

            async def handover(plaintext: Optional[bytes], device: Any, text: bytes = text) -> None:
                assert device.bare_jid == ALICE
                await storage.store(f"/gateway/{text.decode()}", (plaintext or b"").decode())

            plaintext, _, _ = await bob.decrypt_with_handover(message, handover)  # the retry works
            assert plaintext == text
            assert (await storage.load(f"/gateway/{text.decode()}")).from_just() == text.decode()
            for owed in net.take(ALICE, (await alice.get_own_device_information())[0].device_id):
                await alice.decrypt(owed)
        await bob.shutdown()
    await alice.shutdown()


async def test_the_handover_is_refused_without_transactions() -> None:
    class PlainStorage(MemoryStorage):
        transaction = None  # type: ignore[assignment]

    net = InMemoryXMPP()
    alice = await _create(net, ALICE, MemoryStorage())
    bob = await _create(net, BOB, PlainStorage())
    messages, _ = await alice.encrypt(frozenset({BOB}), {NS2: b"hi"}, backend_priority_order=[NS2])
    (message,) = messages

    async def handover(plaintext: Optional[bytes], device: Any) -> None:
        raise AssertionError("not called")

    with pytest.raises(TypeError, match="PlainStorage has none"):
        await bob.decrypt_with_handover(message, handover)
    plaintext, _, _ = await bob.decrypt(message)  # nothing consumed
    assert plaintext == b"hi"
    await bob.shutdown()
    await alice.shutdown()


# -- a restart loads lazily -----------------------------------------------------------------------
#
# On a restart, create() reads of each backend's key state only the number of visible pre keys (off
# the stored record, without decoding it), and derives no public identity key: the rest is loaded on
# first use (or by the background rotation task). These tests check that this changes nothing
# visible: refills still happen in create(), and damaged key states still raise InvalidState.


async def _first_run(net: InMemoryXMPP) -> Dict[str, JSONType]:
    """Set Alice up (both backends) and return her storage content."""
    storage = MemoryStorage(serialize=True)
    alice = await _create(net, ALICE, storage)
    await alice.shutdown()
    return storage.snapshot()


async def _restart(net: InMemoryXMPP, data: Dict[str, JSONType], threshold: int = 99) -> Any:
    """Create Alice from ``data`` in a new storage object (nothing memoised from the first run)."""
    storage = MemoryStorage(data, serialize=True)
    cls = net.session_manager_class(ALICE, BTBVTrust)
    return await cls.create(
        [twomemo.Twomemo(storage), oldmemo.Oldmemo(storage)],
        storage,
        ALICE,
        None,
        BTBVTrust.UNDECIDED,
        pre_key_refill_threshold=threshold,
    )


def _uploads(net: InMemoryXMPP, namespace: str) -> int:
    return sum(1 for call in net.calls if call[:2] == ("upload_bundle", namespace))


def _use_pre_keys(data: Dict[str, JSONType], namespace: str, used: int) -> KeyState:
    """Drop the first ``used`` visible pre keys of a stored key state (as if used by key exchanges)."""
    keys = KeyState.from_json(data[f"/{namespace}/keys"])
    visible = dict(list(keys.pre_keys.items())[used:])
    keys = replace(keys, pre_keys=visible)
    data[f"/{namespace}/keys"] = keys.to_json()
    return keys


def _as_version_1(record: Any) -> Dict[str, Any]:
    """A version-2 key state record rewritten in the version-1 layout (two base64 strings per key)."""
    keys = KeyState.from_json(record)

    def b64(value: bytes) -> str:
        return base64.b64encode(value).decode("ascii")

    def pairs(mapping: Any) -> Dict[str, List[str]]:
        return {str(k): [b64(priv), b64(pub)] for k, (priv, pub) in mapping.items()}

    return {**record, "version": 1, "pre_keys": pairs(keys.pre_keys), "hidden": pairs(keys.hidden_pre_keys)}


def _damage_base64(data: Dict[str, JSONType], namespace: str) -> None:
    """Put a character outside the base64 alphabet into the packed pre keys (the length stays right)."""
    record = dict(data[f"/{namespace}/keys"])  # type: ignore[arg-type]
    text = record["pre_keys"]
    assert isinstance(text, str)
    record["pre_keys"] = "!" + text[1:]
    data[f"/{namespace}/keys"] = record


async def test_a_restart_decodes_no_key_state_nor_identity_key(monkeypatch: pytest.MonkeyPatch) -> None:
    net = InMemoryXMPP()
    data = await _first_run(net)
    uploads = _uploads(net, NS2), _uploads(net, NSL)
    decoded: List[Any] = []
    derived: List[bytes] = []
    from_json, seed_to_pub = KeyState.from_json, xeddsa.seed_to_ed25519_pub

    def counted_from_json(cls: type, data: Any) -> KeyState:
        decoded.append(data)
        return from_json(data)

    def counted_seed_to_pub(seed: bytes) -> bytes:
        derived.append(seed)
        return seed_to_pub(seed)

    monkeypatch.setattr(KeyState, "from_json", classmethod(counted_from_json))
    monkeypatch.setattr(xeddsa, "seed_to_ed25519_pub", counted_seed_to_pub)
    alice = await _restart(net, data)
    assert decoded == [] and derived == []  # checked before the background rotation task ran
    assert (_uploads(net, NS2), _uploads(net, NSL)) == uploads  # nothing to refill, nothing republished
    # First use: the key states are decoded, the identity key derived once, and all is as published.
    await alice.ensure_data_consistency()
    assert len(decoded) == 2 and len(derived) == 1
    assert (_uploads(net, NS2), _uploads(net, NSL)) == uploads
    own, _ = await alice.get_own_device_information()
    assert own.identity_key == (await IdentityKeyPair.get(MemoryStorage(data))).identity_key
    await alice.shutdown()


@pytest.mark.parametrize("version", [1, 2])
async def test_a_restart_refills_and_republishes_the_pre_keys_used_meanwhile(version: int) -> None:
    net = InMemoryXMPP()
    data = await _first_run(net)
    keys = _use_pre_keys(data, NS2, 40)
    if version == 1:
        data[f"/{NS2}/keys"] = _as_version_1(data[f"/{NS2}/keys"])
    uploads = _uploads(net, NS2), _uploads(net, NSL)
    alice = await _restart(net, data, threshold=60)
    # Republished by create() itself, the refilled backend only; new ids continue the old ones.
    assert (_uploads(net, NS2), _uploads(net, NSL)) == (uploads[0] + 1, uploads[1])
    device_id = data["/own_device_id"]
    assert isinstance(device_id, int)
    bundle = net.bundles[(NS2, ALICE, device_id)]
    assert len(bundle.pre_keys) == 100  # type: ignore[attr-defined]
    new_ids = set(bundle.pre_keys) - set(keys.pre_keys)  # type: ignore[attr-defined]
    assert new_ids == set(range(keys.next_pre_key_id, keys.next_pre_key_id + 40))
    await alice.shutdown()


async def test_a_restart_above_the_threshold_leaves_the_pre_keys_alone() -> None:
    net = InMemoryXMPP()
    data = await _first_run(net)
    keys = _use_pre_keys(data, NS2, 40)
    uploads = _uploads(net, NS2)
    alice = await _restart(net, data, threshold=50)
    assert _uploads(net, NS2) == uploads
    backend = alice._SessionManager__backends[0]
    assert backend.namespace == NS2 and await backend.get_num_visible_pre_keys() == 60
    own, _ = await alice.get_own_device_information()
    bundle = await backend.get_bundle(ALICE, own.device_id)  # the stored keys, untouched
    assert set(bundle.pre_keys) == set(keys.pre_keys)
    await alice.shutdown()


async def test_a_damaged_key_state_raises_invalid_state_on_first_use() -> None:
    """Damage that the pre key count does not see lets create() pass (no refill due); the key state's
    first real use raises InvalidState, every time, as create() did before."""
    net = InMemoryXMPP()
    data = await _first_run(net)
    _damage_base64(data, NS2)
    alice = await _restart(net, data)
    for _ in range(2):
        with pytest.raises(InvalidState):
            await alice.ensure_data_consistency()
    await alice.shutdown()


async def test_a_damaged_key_state_with_a_refill_due_fails_create() -> None:
    net = InMemoryXMPP()
    data = await _first_run(net)
    _use_pre_keys(data, NS2, 40)
    _damage_base64(data, NS2)
    with pytest.raises(InvalidState):
        await _restart(net, data, threshold=60)


@pytest.mark.parametrize(
    "damage",
    [
        {"version": 99},
        {"pre_keys": base64.b64encode(b"\x00" * 67).decode("ascii")},
        {"pre_keys": "not base64!"},
        {"pre_keys": 5},
    ],
    ids=["unknown-version", "partial-entry", "bad-length", "not-a-string"],
)
async def test_a_key_state_damaged_where_the_count_looks_still_fails_create(damage: Dict[str, Any]) -> None:
    net = InMemoryXMPP()
    data = await _first_run(net)
    data[f"/{NS2}/keys"] = {**data[f"/{NS2}/keys"], **damage}  # type: ignore[dict-item]
    with pytest.raises(InvalidState):
        await _restart(net, data)


@pytest.mark.parametrize("record", ["garbage", ["a", "list"]], ids=["a-string", "a-list"])
async def test_a_key_state_that_is_no_record_fails_create(record: JSONType) -> None:
    net = InMemoryXMPP()
    data = await _first_run(net)
    data[f"/{NS2}/keys"] = record
    with pytest.raises(InvalidState):
        await _restart(net, data)
