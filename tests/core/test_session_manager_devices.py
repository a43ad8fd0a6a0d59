"""Device lists, labels, device information and data management (PROTOCOL.md 5.3, 5.8; 2.x labels).

Also covers a backend written against python-omemo 1.0.2 (no label API) and the 1.0.2 device-list form
(plain ``str`` labels), and the in-memory XMPP of ``omemo.testing`` itself.
"""

from __future__ import annotations

import pytest

from omemo.session_manager import (
    BundleUploadFailed,
    DeviceListUploadFailed,
    UnknownNamespace,
)
from omemo.storages import MemoryStorage
from omemo.testing import InMemoryXMPP
from omemo.types import SignedLabel
from omemo_engine import xeddsa

from .fake_backend import NS_A, NS_B, FakeBackend102, make_account

ALICE, BOB = "alice@example.org", "bob@example.org"


async def test_update_device_list_bookkeeping() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE, (NS_A, NS_B))
    manager = alice.manager
    await manager.update_device_list(NS_A, BOB, {1: None, 2: None})
    await manager.update_device_list(NS_B, BOB, {2: None, 3: None})
    await manager.update_device_list(NS_A, BOB, {1: None})  # 2 left NS_A
    records = {dev: await manager._omemo_core.devices.load(BOB, dev) for dev in (1, 2, 3)}
    assert records[1].namespaces == (NS_A,) and records[1].active == {NS_A: True}
    assert set(records[2].namespaces) == {NS_A, NS_B} and records[2].active == {NS_A: False, NS_B: True}
    assert records[3].namespaces == (NS_B,) and records[3].active == {NS_B: True}
    assert await manager._omemo_core.devices.device_ids(BOB) == [1, 2, 3]
    await manager.update_device_list(NS_A, BOB, {})  # never forgets devices
    assert await manager._omemo_core.devices.device_ids(BOB) == [1, 2, 3]
    with pytest.raises(UnknownNamespace, match="urn:nope"):
        await manager.update_device_list("urn:nope", BOB, {1: None})
    # Ids from the network outside 1..2**31-1 are dropped; a wrong label type is a TypeError.
    await manager.update_device_list(NS_A, BOB, {0: None, 2**31: None, 4: None})
    assert await manager._omemo_core.devices.device_ids(BOB) == [1, 2, 3, 4]
    with pytest.raises(TypeError, match="label of device 5"):
        await manager.update_device_list(NS_A, BOB, {5: 42})
    await manager.shutdown()


async def test_own_device_is_re_added_to_the_own_list() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE, label="phone")
    net.calls.clear()
    await alice.manager.update_device_list(NS_A, ALICE, {77: None})
    published = net.device_lists[(NS_A, ALICE)]
    assert set(published) == {77, alice.device_id}
    entry = published[alice.device_id]
    assert isinstance(entry, SignedLabel) and entry.label == "phone"
    assert [c[0] for c in net.calls] == ["upload_device_list"]
    own, others = await alice.manager.get_own_device_information()
    assert own.active == frozenset({(NS_A, True)})
    assert others == frozenset()  # device 77 has no bundle
    net.fail("upload_device_list")
    with pytest.raises(DeviceListUploadFailed):
        await alice.manager.update_device_list(NS_A, ALICE, {})
    await alice.manager.shutdown()


async def test_signed_labels_are_verified() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE)
    bob = await make_account(net, BOB, label="bob's phone")
    # Bob's identity key is not known yet: the label waits for it.
    await alice.manager.refresh_device_list(NS_A, BOB)
    assert (await alice.manager._omemo_core.devices.load(BOB, bob.device_id)).label is None
    (info,) = await alice.manager.get_device_information(BOB)
    assert info.label == "bob's phone"
    # A bad signature is ignored; the verified label stays.
    forged = SignedLabel("evil", xeddsa.sign(bytes(range(32)), b"evil"))
    await alice.manager.update_device_list(NS_A, BOB, {bob.device_id: forged})
    (info,) = await alice.manager.get_device_information(BOB)
    assert info.label == "bob's phone"
    # A good new signature is taken at once (identity key known).
    await bob.manager.set_own_label("bob's laptop")
    await alice.manager.refresh_device_list(NS_A, BOB)
    (info,) = await alice.manager.get_device_information(BOB)
    assert info.label == "bob's laptop"
    # 1.0.2-form plain labels are unsigned: ignored by a label-signing backend.
    await alice.manager.update_device_list(NS_A, BOB, {bob.device_id: "unsigned"})
    (info,) = await alice.manager.get_device_information(BOB)
    assert info.label == "bob's laptop"


async def test_pending_label_with_bad_signature_is_dropped() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE)
    bob = await make_account(net, BOB)
    forged = SignedLabel("evil", xeddsa.sign(bytes(range(32)), b"evil"))
    await alice.manager.update_device_list(NS_A, BOB, {bob.device_id: forged})
    (info,) = await alice.manager.get_device_information(BOB)
    assert info.label is None
    assert f"/devices/{BOB}/{bob.device_id}/unverified_label" not in alice.storage.snapshot()  # type: ignore[attr-defined]


async def test_backend_without_label_api() -> None:
    """A 1.0.2-era backend: labels are published unsigned and accepted as they come, never signed."""
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE, backend_cls=FakeBackend102, label="old client")
    entry = net.device_lists[(NS_A, ALICE)][alice.device_id]
    assert entry == SignedLabel("old client", b"")
    await alice.manager.set_own_label("renamed")
    assert net.device_lists[(NS_A, ALICE)][alice.device_id] == SignedLabel("renamed", b"")
    bob = await make_account(net, BOB, backend_cls=FakeBackend102)
    await bob.manager.update_device_list(NS_A, ALICE, {alice.device_id: "plain 1.0.2 label"})
    (info,) = await bob.manager.get_device_information(ALICE)
    assert info.label == "plain 1.0.2 label"
    # Messaging works as usual.
    messages, _ = await alice.manager.encrypt(frozenset({BOB}), {NS_A: b"hi"})
    for message in messages:
        net.send(message)
    assert (await bob.receive_all())[0][0] == b"hi"


async def test_set_own_label_and_clear_label() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE, (NS_A, NS_B))
    await alice.manager.set_own_label("desk")
    for ns in (NS_A, NS_B):
        entry = net.device_lists[(ns, ALICE)][alice.device_id]
        assert isinstance(entry, SignedLabel) and entry.label == "desk"
    own, _ = await alice.manager.get_own_device_information()
    assert own.label == "desk"
    await alice.manager.set_own_label(None)
    assert net.device_lists[(NS_A, ALICE)][alice.device_id] is None
    assert (await alice.manager.get_own_device_information())[0].label is None


async def test_clear_device_lists_keeps_only_this_device() -> None:
    net = InMemoryXMPP()
    alice1 = await make_account(net, ALICE, (NS_A, NS_B))
    alice2 = await make_account(net, ALICE, (NS_A, NS_B))
    await alice1.manager.refresh_device_lists(ALICE)
    _, others = await alice1.manager.get_own_device_information()
    assert {o.device_id for o in others} == {alice2.device_id}
    await alice1.manager.clear_device_lists()
    for ns in (NS_A, NS_B):
        assert set(net.device_lists[(ns, ALICE)]) == {alice1.device_id}
    _, others = await alice1.manager.get_own_device_information()
    (other,) = others
    assert other.active == frozenset({(NS_A, False), (NS_B, False)})
    # The other device re-adds itself when it sees the list.
    await alice2.manager.refresh_device_lists(ALICE)
    assert set(net.device_lists[(NS_A, ALICE)]) == {alice1.device_id, alice2.device_id}


async def test_get_device_information_skips_devices_without_bundle() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE)
    bob = await make_account(net, BOB)
    bundle = net.bundles.pop((NS_A, BOB, bob.device_id))
    await alice.manager.refresh_device_list(NS_A, BOB)
    assert await alice.manager.get_device_information(BOB) == frozenset()
    net.bundles[(NS_A, BOB, bob.device_id)] = bundle
    (info,) = await alice.manager.get_device_information(BOB)
    assert info.identity_key == bob.identity_key
    assert info.trust_level_name == "UNDECIDED"
    assert info.namespaces == frozenset({NS_A})


async def test_purge_bare_jid() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE)
    bob = await make_account(net, BOB)
    messages, _ = await alice.manager.encrypt(frozenset({BOB}), {NS_A: b"x"})
    assert await alice.backends[NS_A].load_session(BOB, bob.device_id) is not None
    await alice.manager.purge_bare_jid(BOB)
    snapshot = alice.storage.snapshot()  # type: ignore[attr-defined]
    assert not [key for key in snapshot if BOB in key and "/session" not in key]
    assert await alice.backends[NS_A].load_session(BOB, bob.device_id) is None
    assert await alice.manager.get_device_information(BOB) == frozenset()
    with pytest.raises(ValueError, match="own account"):
        await alice.manager.purge_bare_jid(ALICE)
    del messages


async def test_ensure_data_consistency_repairs_online_data() -> None:
    net = InMemoryXMPP()
    alice = await make_account(net, ALICE, (NS_A, NS_B))
    dev = alice.device_id
    del net.bundles[(NS_A, ALICE, dev)]
    net.device_lists[(NS_B, ALICE)] = {}
    stale_b = net.bundles[(NS_B, ALICE, dev)]
    stale_b.pre_keys = frozenset()  # type: ignore[attr-defined]
    await alice.manager.ensure_data_consistency()
    assert (NS_A, ALICE, dev) in net.bundles
    assert net.bundles[(NS_B, ALICE, dev)] == await alice.backends[NS_B].get_bundle(ALICE, dev)
    assert dev in net.device_lists[(NS_B, ALICE)]
    net.fail("upload_bundle")
    del net.bundles[(NS_A, ALICE, dev)]
    with pytest.raises(BundleUploadFailed):
        await alice.manager.ensure_data_consistency()


async def test_namespaces_without_active_flag_are_repaired() -> None:
    """python-omemo < 1.0.4 could leave a namespace in ``namespaces`` that ``active`` lacks."""
    net = InMemoryXMPP()
    storage = MemoryStorage(serialize=True)
    alice = await make_account(net, ALICE, storage=storage)
    await alice.manager.update_device_list(NS_A, BOB, {5: None})
    await storage.store(f"/devices/{BOB}/5/namespaces", [NS_A, NS_B])
    record = await alice.manager._omemo_core.devices.load(BOB, 5)
    assert record.namespaces == (NS_A,)
    assert storage.snapshot()[f"/devices/{BOB}/5/namespaces"] == [NS_A]


async def test_namespaces_alone_are_read_and_repaired_like_the_record() -> None:
    """``DeviceStore.namespaces`` (all that ``create`` reads of the own device record) repairs like
    ``load`` and answers from a cached record."""
    net = InMemoryXMPP()
    storage = MemoryStorage(serialize=True)
    alice = await make_account(net, ALICE, storage=storage)
    devices = alice.manager._omemo_core.devices
    await alice.manager.update_device_list(NS_A, BOB, {5: None})
    await storage.store(f"/devices/{BOB}/5/namespaces", [NS_A, NS_B])
    devices.clear_cache()
    assert await devices.namespaces(BOB, 5) == (NS_A,)
    assert storage.snapshot()[f"/devices/{BOB}/5/namespaces"] == [NS_A]
    assert await devices.namespaces(BOB, 6) == ()
    record = await devices.load(BOB, 5)
    await storage.store(f"/devices/{BOB}/5/namespaces", [])  # not seen: the cached record answers
    assert await devices.namespaces(BOB, 5) == record.namespaces == (NS_A,)


async def test_in_memory_xmpp_failure_injection_and_notifications() -> None:
    net = InMemoryXMPP(namespaces=[NS_A])
    with pytest.raises(ValueError, match="unknown operation"):
        net.fail("explode")
    alice = await make_account(net, ALICE)
    bob = await make_account(net, BOB)
    net.subscribe(alice.manager)
    rule = net.fail("download_bundle", bare_jid=BOB, times=2)
    await alice.manager.refresh_device_list(NS_A, BOB)
    assert await alice.manager.get_device_information(BOB) == frozenset()
    assert rule.times == 1
    assert await alice.manager.get_device_information(BOB) == frozenset()
    assert rule.times == 0
    assert len(await alice.manager.get_device_information(BOB)) == 1
    with pytest.raises(UnknownNamespace):
        await net.download_device_list(NS_B, BOB)
    custom = RuntimeError("boom")
    net.fail("download_device_list", times=None, exception=custom)
    with pytest.raises(RuntimeError, match="boom"):
        await net.download_device_list(NS_A, BOB)
    net.clear_failures()
    # A new Bob device is announced by PEP notification.
    bob2 = await make_account(net, BOB)
    await net.flush_notifications()
    assert {d.device_id for d in await alice.manager.get_device_information(BOB)} == {
        bob.device_id,
        bob2.device_id,
    }
    with pytest.raises(BundleUploadFailed, match="may not publish"):
        await net.upload_bundle(ALICE, net.bundles[(NS_A, BOB, bob.device_id)])
