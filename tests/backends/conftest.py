"""Shared fixtures and helpers of the backend behaviour tests (both backends, parametrised).

- :class:`CountingStorage`: a :class:`~omemo.storage.Storage` in front of a
  ``MemoryStorage(serialize=True)`` that records every ``_store`` / ``_delete`` (key and JSON size),
  so tests can assert what really reaches the storage and how much of it.
- :class:`Device`: one device (bare JID, device id, storage, backend); :meth:`Device.restart` builds a
  new backend instance on the same storage, as a process restart would.
- :func:`transmit`: carries a message from one device to another the way the network does: through
  ``<backend>.etree.serialize_message`` and ``parse_message`` (so key exchanges arrive as parsed
  "network" instances).
- :func:`establish`: the first exchange (key exchange, reply) between two devices.
- :class:`FakeSessionManager`: just what ``oldmemo.etree.parse_message`` needs.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Optional, Tuple, Union

import pytest

import oldmemo
import oldmemo.etree
import twomemo
import twomemo.etree
from omemo._engine.backend import EngineBackend, EngineSession
from omemo.message import Content, EncryptedKeyMaterial, KeyExchange, Message
from omemo.session import Initiation
from omemo.storage import Maybe, Storage
from omemo.storages import MemoryStorage, SQLiteStorage
from omemo.types import JSONType

__all__ = [
    "BACKENDS",
    "CountingStorage",
    "Device",
    "FakeSessionManager",
    "Write",
    "establish",
    "etree_of",
    "exchange",
    "key_for",
    "make_device",
    "receive",
    "send",
    "transmit",
]

#: The two backends with readable ids for ``pytest.mark.parametrize``.
BACKENDS: dict[str, type[EngineBackend]] = {"twomemo": twomemo.Twomemo, "oldmemo": oldmemo.Oldmemo}


def etree_of(cls: type[EngineBackend]) -> ModuleType:
    """The ``etree`` module of a backend class."""
    return twomemo.etree if cls is twomemo.Twomemo else oldmemo.etree


@dataclass(frozen=True)
class Write:
    """One write that reached the storage: ``op`` is "store" or "delete", ``size`` the JSON length."""

    op: str
    key: str
    size: int


class CountingStorage(Storage):
    """Records every ``_store``/``_delete`` and forwards everything to an inner storage
    (``MemoryStorage(serialize=True)`` unless given).

    The base-class cache is off, so every load reaches the inner storage too (a backend that only
    works thanks to a cache would be caught).
    """

    def __init__(self, inner: Optional[Union[MemoryStorage, SQLiteStorage]] = None) -> None:
        super().__init__(disable_cache=True)
        self.inner = inner if inner is not None else MemoryStorage(serialize=True)
        self.writes: list[Write] = []

    async def _load(self, key: str) -> Maybe[JSONType]:
        return await self.inner.load(key)

    async def _store(self, key: str, value: JSONType) -> None:
        self.writes.append(Write("store", key, len(json.dumps(value, separators=(",", ":")))))
        await self.inner.store(key, value)

    async def _delete(self, key: str) -> None:
        self.writes.append(Write("delete", key, 0))
        await self.inner.delete(key)

    def stored_keys(self) -> set[str]:
        """Every key currently stored."""
        return set(self.inner.snapshot())

    def snapshot(self) -> dict[str, JSONType]:
        """A copy of the whole content."""
        return self.inner.snapshot()

    def reset(self) -> None:
        """Forget the recorded writes."""
        self.writes.clear()


@dataclass
class Device:
    """One device: a bare JID, a device id, its storage and the backend of one namespace."""

    cls: type[EngineBackend]
    bare_jid: str
    device_id: int
    storage: CountingStorage
    limits: Tuple[int, Optional[int]] = (1000, None)
    backend: EngineBackend = field(init=False)

    def __post_init__(self) -> None:
        self.backend = self.cls(self.storage, *self.limits)

    def restart(self) -> EngineBackend:
        """Replace the backend by a new instance on the same storage (nothing kept in memory)."""
        clock: Callable[[], float] = self.backend._clock
        self.backend = self.cls(self.storage, *self.limits)
        self.backend._clock = clock
        return self.backend

    @property
    def etree(self) -> ModuleType:
        return etree_of(self.cls)

    async def identity_key(self) -> bytes:
        return (await self.backend._identity_key_pair())[1]


async def make_device(
    cls: type[EngineBackend],
    bare_jid: str,
    device_id: int,
    *,
    pre_keys: int = 100,
    limits: Tuple[int, Optional[int]] = (1000, None),
    storage: Optional[CountingStorage] = None,
) -> Device:
    """A device with ``pre_keys`` fresh pre keys; the storage's write log starts empty."""
    device = Device(cls, bare_jid, device_id, storage or CountingStorage(), limits)
    if pre_keys:
        await device.backend.generate_pre_keys(pre_keys)
    device.storage.reset()
    return device


class FakeSessionManager:
    """What ``oldmemo.etree.parse_message`` uses of a session manager: device information.

    ``known`` maps bare JID -> {device id: Ed25519 identity key}; ``on_refresh`` may add devices,
    as a device-list download would. ``refreshes`` records every ``refresh_device_list`` call.
    """

    def __init__(self, known: Optional[dict[str, dict[int, bytes]]] = None) -> None:
        self.known: dict[str, dict[int, bytes]] = known or {}
        self.refreshes: list[Tuple[str, str]] = []
        self.on_refresh: Optional[Callable[[str], None]] = None

    async def get_device_information(self, bare_jid: str) -> frozenset[Any]:
        @dataclass(frozen=True)
        class Info:
            device_id: int
            identity_key: bytes

        return frozenset(Info(d, ik) for d, ik in self.known.get(bare_jid, {}).items())

    async def refresh_device_list(self, namespace: str, bare_jid: str) -> None:
        self.refreshes.append((namespace, bare_jid))
        if self.on_refresh is not None:
            self.on_refresh(bare_jid)


KeyTuple = Tuple[EncryptedKeyMaterial, Optional[KeyExchange]]


async def transmit(
    sender: Device, recipient: Device, content: Content, keys: Iterable[KeyTuple]
) -> Tuple[Message, ET.Element]:
    """Send a message over the "network": serialise with the sender's etree, parse at the recipient.

    Returns:
        The parsed message and the serialised element.
    """
    message = Message(sender.backend.namespace, sender.bare_jid, sender.device_id, content, frozenset(keys))
    element = sender.etree.serialize_message(message)
    wire = ET.fromstring(ET.tostring(element))
    if sender.cls is oldmemo.Oldmemo:
        manager = FakeSessionManager({sender.bare_jid: {sender.device_id: await sender.identity_key()}})
        parsed: Message = await oldmemo.etree.parse_message(
            wire,
            sender.bare_jid,
            recipient.bare_jid,
            manager,  # type: ignore[arg-type]
        )
    else:
        parsed = twomemo.etree.parse_message(wire, sender.bare_jid)
    return parsed, element


def key_for(message: Message, recipient: Device) -> KeyTuple:
    """The key tuple of ``message`` addressed to ``recipient``."""
    [found] = [
        k
        for k in message.keys
        if k[0].device_id == recipient.device_id and k[0].bare_jid == recipient.bare_jid
    ]
    return found


async def send(
    sender: Device, recipient: Device, session: EngineSession, plaintext: bytes
) -> Tuple[Message, EncryptedKeyMaterial, Optional[KeyExchange]]:
    """Encrypt ``plaintext`` with ``session`` (the kex is attached while active and unconfirmed),
    transmit it and return the parsed message with the recipient's key tuple."""
    content, key_material = await sender.backend.encrypt_plaintext(plaintext)
    encrypted = await sender.backend.encrypt_key_material(session, key_material)
    kex = session.key_exchange if session.initiation is Initiation.ACTIVE and not session.confirmed else None
    parsed, _ = await transmit(sender, recipient, content, [(encrypted, kex)])
    enc, parsed_kex = key_for(parsed, recipient)
    return parsed, enc, parsed_kex


async def receive(
    recipient: Device, session: EngineSession, message: Message, enc: EncryptedKeyMaterial
) -> bytes:
    """Decrypt a message without key exchange with an existing session."""
    plain = await recipient.backend.decrypt_key_material(session, enc)
    return await recipient.backend.decrypt_plaintext(message.content, plain)


async def establish(
    alice: Device, bob: Device, plaintext: bytes = b"hello", *, reply: bool = True
) -> Tuple[EngineSession, EngineSession]:
    """Alice builds a session from Bob's bundle and sends ``plaintext``; Bob builds his side and
    (if ``reply``) answers with an empty message, which confirms Alice's session. Both sessions
    are stored. Returns ``(alice_session, bob_session)``."""
    bundle = await bob.backend.get_bundle(bob.bare_jid, bob.device_id)
    wire_bundle = bob.etree.parse_bundle(
        ET.fromstring(ET.tostring(bob.etree.serialize_bundle(bundle))), bob.bare_jid, bob.device_id
    )
    content, key_material = await alice.backend.encrypt_plaintext(plaintext)
    a_session, encrypted = await alice.backend.build_session_active(
        bob.bare_jid, bob.device_id, wire_bundle, key_material
    )
    assert isinstance(a_session, EngineSession)
    await alice.backend.store_session(a_session)
    parsed, _ = await transmit(alice, bob, content, [(encrypted, a_session.key_exchange)])
    enc, kex = key_for(parsed, bob)
    assert kex is not None
    b_session, plain = await bob.backend.build_session_passive(alice.bare_jid, alice.device_id, kex, enc)
    assert isinstance(b_session, EngineSession)
    assert await bob.backend.decrypt_plaintext(parsed.content, plain) == plaintext
    await bob.backend.store_session(b_session)
    if reply:
        empty, empty_key = await bob.backend.encrypt_empty()
        reply_enc = await bob.backend.encrypt_key_material(b_session, empty_key)
        await bob.backend.store_session(b_session)
        reply_msg, _ = await transmit(bob, alice, empty, [(reply_enc, None)])
        r_enc, r_kex = key_for(reply_msg, alice)
        assert r_kex is None and reply_msg.content.empty
        await alice.backend.decrypt_key_material(a_session, r_enc)
        assert a_session.confirmed
        await alice.backend.store_session(a_session)
    return a_session, b_session


async def exchange(sender: Device, recipient: Device, plaintext: bytes) -> None:
    """One steady-state message: load, encrypt, store at the sender; load, decrypt, store at the
    recipient."""
    s_session = await sender.backend.load_session(recipient.bare_jid, recipient.device_id)
    r_session = await recipient.backend.load_session(sender.bare_jid, sender.device_id)
    assert isinstance(s_session, EngineSession) and isinstance(r_session, EngineSession)
    message, enc, kex = await send(sender, recipient, s_session, plaintext)
    await sender.backend.store_session(s_session)
    if kex is not None:
        assert kex.builds_same_session(r_session.key_exchange)
    assert await receive(recipient, r_session, message, enc) == plaintext
    await recipient.backend.store_session(r_session)


@pytest.fixture(params=list(BACKENDS.values()), ids=list(BACKENDS))
def backend_cls(request: pytest.FixtureRequest) -> type[EngineBackend]:
    """Each backend class in turn."""
    cls: type[EngineBackend] = request.param
    return cls


@pytest.fixture
async def alice(backend_cls: type[EngineBackend]) -> Device:
    """Alice's device 1 (100 pre keys)."""
    return await make_device(backend_cls, "alice@example.org", 1)


@pytest.fixture
async def bob(backend_cls: type[EngineBackend]) -> Device:
    """Bob's device 2 (100 pre keys)."""
    return await make_device(backend_cls, "bob@example.org", 2)
