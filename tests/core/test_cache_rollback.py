"""In-memory caches never get ahead of the storage when a storage transaction rolls back.

With the real backends: a decryption whose commit fails part-way (the pre-key deletion fails after
the session was written inside the transaction) must leave nothing behind, in the storage or in the
caches, so the same message decrypts when it is delivered again.
"""

from __future__ import annotations

from typing import Any, List, Tuple

import pytest

import oldmemo
import twomemo
from omemo.session_manager import SessionManager
from omemo.storages import MemoryStorage
from omemo.testing import InMemoryXMPP
from omemo.trust import BTBVTrust
from omemo.types import JSONType


class FlakyStorage(MemoryStorage):
    """Fails the next write whose key ends with ``fail_suffix`` (once)."""

    def __init__(self) -> None:
        super().__init__(serialize=True)
        self.fail_suffix: str | None = None

    async def _store(self, key: str, value: JSONType) -> Any:
        if self.fail_suffix is not None and key.endswith(self.fail_suffix):
            self.fail_suffix = None
            raise OSError("injected storage failure")
        return await super()._store(key, value)


async def account(network: InMemoryXMPP, jid: str, backend_cls: Any) -> Tuple[SessionManager, FlakyStorage]:
    storage = FlakyStorage()
    manager_class = network.session_manager_class(jid, BTBVTrust)
    manager = await manager_class.create([backend_cls(storage)], storage, jid, None, BTBVTrust.UNDECIDED)
    await manager.after_history_sync()
    return manager, storage


@pytest.mark.parametrize("backend_cls", [twomemo.Twomemo, oldmemo.Oldmemo])
async def test_failed_commit_rolls_back_storage_and_caches(backend_cls: Any) -> None:
    network = InMemoryXMPP()
    alice, _ = await account(network, "alice@example.org", backend_cls)
    bob, bob_storage = await account(network, "bob@example.org", backend_cls)
    for manager in (alice, bob):
        for jid in ("alice@example.org", "bob@example.org"):
            await manager.refresh_device_lists(jid)
    bob_id = (await bob.get_own_device_information())[0].device_id
    alice_id = (await alice.get_own_device_information())[0].device_id
    namespace = backend_cls.PROFILE.name

    messages, _ = await alice.encrypt(frozenset({"bob@example.org"}), {namespace: b"first"})
    for message in messages:
        network.send(message)
    [first] = network.take("bob@example.org", bob_id)

    # The commit writes the session, then deletes the used pre key (one write of the key state):
    # make that second write fail, inside the transaction.
    bob_storage.fail_suffix = "/keys"
    with pytest.raises(Exception, match="injected storage failure"):
        await bob.decrypt(first)
    # The session written inside the transaction was rolled back with it.
    assert (await bob_storage.load(f"/{namespace}/session/alice@example.org/{alice_id}")).is_nothing

    # Nothing of the failed attempt survived: delivered again, the message decrypts.
    plaintext, _, _ = await bob.decrypt(first)
    assert plaintext == b"first"

    # And the conversation goes on in both directions.
    for text in (b"second", b"third"):
        messages, _ = await alice.encrypt(frozenset({"bob@example.org"}), {namespace: text})
        for message in messages:
            network.send(message)
        received: List[Any] = network.take("bob@example.org", bob_id)
        assert [(await bob.decrypt(m))[0] for m in received] == [text]
    for message in network.take("alice@example.org", alice_id):
        await alice.decrypt(message)  # the automatic reply to the key exchange
    messages, _ = await bob.encrypt(frozenset({"alice@example.org"}), {namespace: b"reply"})
    for message in messages:
        network.send(message)
    assert [(await alice.decrypt(m))[0] for m in network.take("alice@example.org", alice_id)] == [b"reply"]
