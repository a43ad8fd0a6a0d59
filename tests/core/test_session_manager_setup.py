"""SessionManager.create, reloading, backend addition/removal, storage layout, helpers (PROTOCOL.md 5.1/5.2).

Runs against the toy backend of ``fake_backend.py`` on the in-memory XMPP of ``omemo.testing``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from omemo.session_manager import (
    BundleUploadFailed,
    DeviceListDownloadFailed,
    EncryptionError,
    NoEligibleDevices,
    SessionManager,
    SessionManagerException,
    XMPPInteractionFailed,
)
from omemo.storages import MemoryStorage
from omemo.testing import InMemoryXMPP
from omemo.trust import BTBVTrust
from omemo.types import OMEMOException, SignedLabel
from omemo_engine import xeddsa

from .fake_backend import NS_A, NS_B, FakeBackend, make_account

JID = "alice@example.org"


async def test_first_run_sets_everything_up() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, JID, (NS_A, NS_B), history_sync=True)
    dev = alice.device_id
    assert SessionManager.DEVICE_ID_MIN <= dev <= SessionManager.DEVICE_ID_MAX
    for ns in (NS_A, NS_B):
        assert dev in net.device_lists[(ns, JID)]
        assert (ns, JID, dev) in net.bundles
        assert len(await alice.backends[ns].visible_pre_key_ids()) == 100
    assert alice.manager._omemo_core.history_sync is True
    own, others = await alice.manager.get_own_device_information()
    assert own.device_id == dev and others == frozenset()
    assert own.namespaces == frozenset({NS_A, NS_B})
    assert own.active == frozenset({(NS_A, True), (NS_B, True)})
    assert own.identity_key == alice.identity_key
    assert own.trust_level_name == BTBVTrust.UNDECIDED
    await alice.manager.shutdown()


async def test_storage_layout_matches_python_omemo() -> None:
    net = InMemoryXMPP()
    storage = MemoryStorage(serialize=True)
    alice = await make_account(net, JID, (NS_A,), storage=storage, label="phone")
    dev = alice.device_id
    data = storage.snapshot()
    assert data["/own_device_id"] == dev
    assert data["/ikp/is_seed"] is True
    assert data[f"/devices/{JID}/list"] == [dev]
    assert data[f"/devices/{JID}/{dev}/namespaces"] == [NS_A]
    assert data[f"/devices/{JID}/{dev}/active"] == {NS_A: True}
    assert data[f"/devices/{JID}/{dev}/label"] == "phone"
    ik_b64 = base64.urlsafe_b64encode(alice.identity_key).decode()
    assert data[f"/devices/{JID}/{dev}/identity_key"] == ik_b64
    assert data[f"/trust/{JID}/{ik_b64}"] == BTBVTrust.UNDECIDED
    await alice.manager.shutdown()


async def test_reload_keeps_device_and_does_not_republish() -> None:
    net = InMemoryXMPP()
    storage = MemoryStorage(serialize=True)
    first = await make_account(net, JID, (NS_A,), storage=storage)
    await first.manager.shutdown()
    net.calls.clear()
    second = await make_account(net, JID, (NS_A,), storage=storage)
    assert second.device_id == first.device_id
    assert not [call for call in net.calls if call[0] == "upload_bundle"]
    assert not [call for call in net.calls if call[0] == "upload_device_list"]
    await second.manager.shutdown()


async def test_device_id_avoids_ids_taken_in_any_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    net = InMemoryXMPP()
    net.device_lists[(NS_B, JID)] = {5: None}
    draws = iter([4, 6])  # randbelow() + 1 -> 5 (taken), then 7
    monkeypatch.setattr("omemo._core.maintenance.secrets.randbelow", lambda _: next(draws))
    alice = await make_account(net, JID, (NS_A, NS_B))
    assert alice.device_id == 7
    assert set(net.device_lists[(NS_B, JID)]) == {5, 7}
    await alice.manager.shutdown()


@pytest.mark.parametrize("threshold", [24, 100])
async def test_create_rejects_bad_threshold(threshold: int) -> None:
    with pytest.raises(ValueError, match="pre_key_refill_threshold"):
        await make_account(InMemoryXMPP(), JID, pre_key_refill_threshold=threshold)


async def test_create_rejects_duplicate_namespaces() -> None:
    net = InMemoryXMPP()
    storage = MemoryStorage()
    cls = net.session_manager_class(JID, BTBVTrust)
    with pytest.raises(ValueError, match="only once"):
        await cls.create(
            [FakeBackend(storage, NS_A), FakeBackend(storage, NS_A)], storage, JID, None, "UNDECIDED"
        )


async def test_create_forwards_device_list_download_failure() -> None:
    net = InMemoryXMPP()
    net.fail("download_device_list")
    with pytest.raises(DeviceListDownloadFailed):
        await make_account(net, JID)


async def test_interrupted_set_up_resumes() -> None:
    net = InMemoryXMPP()
    storage = MemoryStorage(serialize=True)
    net.fail("upload_bundle", namespace=NS_B)
    with pytest.raises(BundleUploadFailed):
        await make_account(net, JID, (NS_A, NS_B), storage=storage)
    # NS_A is complete; NS_B is not listed yet (device list last).
    dev = storage.snapshot()["/own_device_id"]
    assert dev in net.device_lists[(NS_A, JID)]
    assert (NS_B, JID) not in net.device_lists
    alice = await make_account(net, JID, (NS_A, NS_B), storage=storage)
    assert alice.device_id == dev
    assert dev in net.device_lists[(NS_B, JID)]
    assert (NS_B, JID, dev) in net.bundles
    own, _ = await alice.manager.get_own_device_information()
    assert own.namespaces == frozenset({NS_A, NS_B})
    await alice.manager.shutdown()


async def test_added_backend_is_set_up_on_reload() -> None:
    net = InMemoryXMPP()
    storage = MemoryStorage(serialize=True)
    first = await make_account(net, JID, (NS_A,), storage=storage)
    await first.manager.shutdown()
    second = await make_account(net, JID, (NS_A, NS_B), storage=storage)
    assert second.device_id in net.device_lists[(NS_B, JID)]
    assert (NS_B, JID, second.device_id) in net.bundles
    await second.manager.shutdown()


async def test_removed_backend_is_purged_online_on_reload() -> None:
    net = InMemoryXMPP()
    storage = MemoryStorage(serialize=True)
    first = await make_account(net, JID, (NS_A, NS_B), storage=storage)
    await first.manager.shutdown()
    dev = first.device_id
    second = await make_account(net, JID, (NS_A,), storage=storage)
    assert dev not in net.device_lists[(NS_B, JID)]
    assert (NS_B, JID, dev) not in net.bundles
    own, _ = await second.manager.get_own_device_information()
    assert own.namespaces == frozenset({NS_A})
    # The NS_B backend's offline data is still there (it was not loaded, so it could not be purged).
    assert "/urn:example:fake:b/state" in storage.snapshot()
    await second.manager.shutdown()


async def test_swapped_backends_are_purged_and_set_up_in_one_reload() -> None:
    """``create`` reads the own namespaces once and again after each change (purge, new backend)."""
    net = InMemoryXMPP()
    storage = MemoryStorage(serialize=True)
    first = await make_account(net, JID, (NS_A,), storage=storage)
    await first.manager.shutdown()
    dev = first.device_id
    second = await make_account(net, JID, (NS_B,), storage=storage)
    assert dev not in net.device_lists[(NS_A, JID)] and (NS_A, JID, dev) not in net.bundles
    assert dev in net.device_lists[(NS_B, JID)] and (NS_B, JID, dev) in net.bundles
    own, _ = await second.manager.get_own_device_information()
    assert own.namespaces == frozenset({NS_B})
    await second.manager.shutdown()


async def test_an_own_namespace_without_active_flag_is_repaired_and_set_up_again_on_reload() -> None:
    """python-omemo < 1.0.4 could leave a namespace in ``namespaces`` that ``active`` lacks: ``create``
    (which reads only these two records of the own device) repairs it and sets the backend up anew."""
    net = InMemoryXMPP()
    storage = MemoryStorage(serialize=True)
    first = await make_account(net, JID, (NS_A,), storage=storage)
    await first.manager.shutdown()
    dev = first.device_id
    await storage.store(f"/devices/{JID}/{dev}/namespaces", [NS_A, NS_B])
    second = await make_account(net, JID, (NS_A, NS_B), storage=storage)
    assert dev in net.device_lists[(NS_B, JID)] and (NS_B, JID, dev) in net.bundles
    assert [call[0] for call in net.calls].count("upload_bundle") == 2  # NS_A once at first, NS_B now
    own, _ = await second.manager.get_own_device_information()
    assert own.namespaces == frozenset({NS_A, NS_B})
    await second.manager.shutdown()


async def test_purge_backend_of_loaded_backend() -> None:
    net = InMemoryXMPP()
    storage = MemoryStorage(serialize=True)
    alice = await make_account(net, JID, (NS_A, NS_B), storage=storage)
    dev = alice.device_id
    await alice.manager.purge_backend(NS_B)
    assert dev not in net.device_lists[(NS_B, JID)]
    assert (NS_B, JID, dev) not in net.bundles
    assert "/urn:example:fake:b/state" not in storage.snapshot()
    assert "purge" in alice.backends[NS_B].calls
    assert alice.manager._omemo_core.namespaces() == [NS_A]
    assert [b.namespace for b in alice.manager._SessionManager__backends] == [NS_A]
    await alice.manager.shutdown()


async def test_refill_on_reload_when_pre_keys_ran_low() -> None:
    net = InMemoryXMPP()
    storage = MemoryStorage(serialize=True)
    first = await make_account(net, JID, (NS_A,), storage=storage, pre_key_refill_threshold=50)
    await first.manager.shutdown()
    # Simulate pre keys used up by another process: drop 60 of them.
    state: Any = storage.snapshot()["/urn:example:fake:a/state"]
    for key in list(state["pre_keys"])[:60]:
        del state["pre_keys"][key]
    await storage.store("/urn:example:fake:a/state", state)
    second = await make_account(net, JID, (NS_A,), storage=storage, pre_key_refill_threshold=50)
    assert len(await second.backends[NS_A].visible_pre_key_ids()) == 100
    assert len(net.bundles[(NS_A, JID, second.device_id)].pre_keys) == 100  # type: ignore[attr-defined]
    await second.manager.shutdown()


async def test_initial_label_is_signed_in_the_device_list() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, JID, (NS_A,), label="laptop")
    entry = net.device_lists[(NS_A, JID)][alice.device_id]
    assert isinstance(entry, SignedLabel) and entry.label == "laptop"
    xeddsa.verify(alice.identity_key, b"laptop", entry.signature)
    await alice.manager.shutdown()


def test_format_identity_key() -> None:
    # Known answer: Alice's fingerprint groups of tests/vectors/omemo-kat.json (seed 0x11 * 32).
    kat = json.loads((Path(__file__).parent.parent / "vectors" / "omemo-kat.json").read_text())
    ed = bytes.fromhex(kat["primitives"]["alice_identity_ed25519_pub"])
    assert SessionManager.format_identity_key(ed) == kat["primitives"]["alice_fingerprint_groups"]


async def test_shutdown_is_idempotent_and_stops_rotation() -> None:
    alice = await make_account(InMemoryXMPP(), JID)
    rotation = alice.manager._SessionManager__rotation
    assert rotation is not None
    await alice.manager.shutdown()
    await alice.manager.shutdown()
    assert rotation._task.done()


def test_exception_hierarchy() -> None:
    import omemo.session_manager as sm

    assert issubclass(sm.SessionManagerException, OMEMOException)
    for name in (
        "TrustDecisionFailed",
        "StillUndecided",
        "NoEligibleDevices",
        "MessageNotForUs",
        "SenderNotFound",
        "SenderDistrusted",
        "NoSession",
        "PublicDataInconsistency",
        "UnknownTrustLevel",
        "UnknownNamespace",
        "XMPPInteractionFailed",
    ):
        assert getattr(sm, name).__bases__ == (SessionManagerException,), name
        assert getattr(sm, name).__module__ == "omemo.session_manager"
    for name in (
        "BundleUploadFailed",
        "BundleDownloadFailed",
        "BundleNotFound",
        "BundleDeletionFailed",
        "DeviceListUploadFailed",
        "DeviceListDownloadFailed",
        "MessageSendingFailed",
    ):
        assert getattr(sm, name).__bases__ == (XMPPInteractionFailed,), name
    error = NoEligibleDevices(frozenset({"b@x", "a@x"}))
    assert error.bare_jids == frozenset({"b@x", "a@x"}) and "a@x, b@x" in str(error)
    assert str(NoEligibleDevices(frozenset(), "custom")) == "custom"
    enc = EncryptionError("ns", "a@x", 1, ValueError("x"))
    assert (enc.namespace, enc.bare_jid, enc.device_id) == ("ns", "a@x", 1)
