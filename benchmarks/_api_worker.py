"""Benchmark worker: times OMEMO scenarios in-process through the public python-omemo API only.

Runs unchanged under either interpreter: the project's virtualenv (our ``omemo``/``twomemo``/
``oldmemo``) or the reference virtualenv (PyPI omemo/twomemo/oldmemo 2.1.0). It imports nothing but
the standard library and the documented public API (``omemo.SessionManager``, ``omemo.Storage``,
``twomemo.Twomemo``, ``oldmemo.Oldmemo`` and the backends' ``etree`` modules), so it cannot tell
the two stacks apart. :mod:`api_bench` drives one worker per stack and interleaves their rounds.

Modes:

- serve (default): one JSON request per line on stdin, ``{"group": NAME, "namespace": NS,
  "samples": N, "clock": "cpu" | "wall"}``, answered by one line ``{"ok": true, "rows": {ROW:
  [sample, ...]}}`` (times in µs; storage rows in writes or bytes) or ``{"ok": false, "error":
  TRACEBACK}``. ``{"group": "hello"}`` answers with the interpreter and the package locations.
  Anything the libraries print goes to stderr.
  A request may carry ``"sizes"``: the sizes of the ``scale`` group (:data:`SCALE_SIZES` is the
  default, the full run's; ``--quick`` sends tiny ones).
- ``--profile GROUP --namespace NS [--rows ROW ...] [--samples N] [--top K]``: run one group with
  :mod:`cProfile` switched on during the timed sections only (of the given rows, or all), after one
  untimed warm-up sample, and print the statistics (cumulative) to stdout.

The ``scale`` group (costs at scale: fan-out to 1,000 devices, a gap of 1,000 skipped messages, steady
state after 10,000 messages or with 1,000 stored skipped keys) is asked of our stack only; it runs
under either interpreter, but the reference would take too long.

The simulated world: device lists and bundles live in dicts (bundles as the objects the owner
uploaded, i.e. "already downloaded"); messages are handed over as ``omemo.Message`` objects, except
in the XML group, where each stack's own ``etree`` module serialises and parses them. Every device
is trusted (a custom trust level name that evaluates to ``TRUSTED``), and ``after_history_sync()``
follows every ``create()``. The storage keeps JSON text (``json.dumps`` on store, ``json.loads`` on
load, the base-class cache disabled), like a real key/value store, and counts writes and bytes.
Setup work is never timed; automatic messages (``_send_message``) are delivered to their recipient
outside the timed sections, so steady-state sessions keep ratcheting as they would in real use.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import os
import pstats
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, FrozenSet, List, Optional, Tuple, Type, TypeVar
from xml.etree.ElementTree import Element

import oldmemo
import omemo
import twomemo
from oldmemo import etree as oldmemo_etree
from twomemo import etree as twomemo_etree

__all__ = ["GROUPS", "NAMESPACES", "main"]

TWOMEMO_NS = "urn:xmpp:omemo:2"
OLDMEMO_NS = "eu.siacs.conversations.axolotl"
NAMESPACES = (TWOMEMO_NS, OLDMEMO_NS)
TRUSTED = "trusted"
PLAINTEXT = b"Benchmark message with a typical chat length: about a hundred bytes of UTF-8 text......"
FAN_OUT_SIZES = (10, 100)
SKIPPED = 500

# Sizes of the ``scale`` group: fan-out device counts (the largest is also timed as one encrypt), the
# gap before the decrypt after skipped messages, the messages exchanged before a steady-state
# measurement and the skipped keys each side's session holds during one. The driver sends its own.
SCALE_SIZES: Dict[str, Any] = {
    "fan_out": [10, 100, 1000],
    "skip_gap": 1000,
    "exchanged": [0, 1000, 10000],
    "skipped": [0, 100, 1000],
}
SCALE: List[Dict[str, Any]] = [SCALE_SIZES]
# Steady-state messages of the scale group per requested sample, and untimed ones after each restore.
SCALE_MESSAGES_PER_SAMPLE = 10
SCALE_WARM_UP = 3

T = TypeVar("T")
Rows = Dict[str, List[float]]

# The profiler switched on around the timed sections only (``--profile``), if any, and the rows
# whose timed sections it covers (all rows if empty).
PROFILER: List[cProfile.Profile] = []
PROFILED_ROWS: List[str] = []

# The clock of the timed sections: CPU time of this process ("cpu", the default: on a shared machine
# it leaves out the time the worker was not scheduled) or wall time ("wall").
CLOCKS: Dict[str, Callable[[], int]] = {"cpu": time.process_time_ns, "wall": time.perf_counter_ns}
CLOCK: List[Callable[[], int]] = [time.process_time_ns]
# Operations of a few µs are timed in batches of this many calls (one sample = the mean).
XML_REPEAT = 20


class SampleList(List[float]):
    """The samples of one row (a list that knows the row's name, for ``--profile --rows``)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


def _profiler_for(samples: List[float]) -> Optional[cProfile.Profile]:
    if not PROFILER:
        return None
    if PROFILED_ROWS and getattr(samples, "name", None) not in PROFILED_ROWS:
        return None
    return PROFILER[0]


# --------------------------------------------------------------------------------------------------
# Storage and the in-memory XMPP


class JSONTextStorage(omemo.Storage):
    """Key/value storage holding JSON text, with write counters.

    ``json.dumps`` on every store and ``json.loads`` on every load, as a real JSON or SQL store would
    do; the base class's cache is disabled. ``writes`` counts stores and deletes, ``bytes_written``
    the UTF-8 size of the stored JSON text.
    """

    def __init__(self, data: Optional[Dict[str, str]] = None) -> None:
        """Open the storage.

        Args:
            data: JSON texts by key to start from (copied), e.g. a snapshot of another storage.
        """
        super().__init__(disable_cache=True)
        self.data: Dict[str, str] = {} if data is None else dict(data)
        self.writes = 0
        self.bytes_written = 0

    async def _load(self, key: str) -> omemo.Maybe[omemo.JSONType]:
        text = self.data.get(key)
        if text is None:
            return omemo.Nothing()
        return omemo.Just(json.loads(text))

    async def _store(self, key: str, value: omemo.JSONType) -> None:
        text = json.dumps(value)
        self.writes += 1
        self.bytes_written += len(text.encode("utf-8"))
        self.data[key] = text

    async def _delete(self, key: str) -> None:
        self.writes += 1
        self.data.pop(key, None)

    def snapshot(self) -> Dict[str, str]:
        """Returns: a copy of the data (the values are immutable strings)."""
        return dict(self.data)


@dataclass
class Xmpp:
    """The XMPP server and network: PEP data in dicts and an outbox of automatic messages."""

    device_lists: Dict[Tuple[str, str], Dict[int, Any]] = field(default_factory=dict)
    bundles: Dict[Tuple[str, str, int], omemo.Bundle] = field(default_factory=dict)
    outbox: List[Tuple[omemo.Message, str]] = field(default_factory=list)
    accounts: Dict[str, Account] = field(default_factory=dict)

    async def deliver(self) -> None:
        """Deliver the automatic messages (untimed) to the current session manager of each JID."""
        while self.outbox:
            message, bare_jid = self.outbox.pop(0)
            account = self.accounts.get(bare_jid)
            if account is not None:
                await account.sm.decrypt(message)


def manager_class(xmpp: Xmpp, jid: str) -> Type[omemo.SessionManager]:
    """Build a SessionManager subclass whose (static) XMPP hooks act for ``jid`` on ``xmpp``.

    Args:
        xmpp: the simulated server.
        jid: the account the hooks publish for.

    Returns:
        The class; several accounts can live in one process, each with its own class.
    """

    class Manager(omemo.SessionManager):
        @staticmethod
        async def _upload_bundle(bundle: omemo.Bundle) -> None:
            xmpp.bundles[(bundle.namespace, bundle.bare_jid, bundle.device_id)] = bundle

        @staticmethod
        async def _download_bundle(namespace: str, bare_jid: str, device_id: int) -> omemo.Bundle:
            try:
                return xmpp.bundles[(namespace, bare_jid, device_id)]
            except KeyError:
                raise omemo.BundleNotFound(f"no bundle of {bare_jid}/{device_id} in {namespace}") from None

        @staticmethod
        async def _delete_bundle(namespace: str, device_id: int) -> None:
            xmpp.bundles.pop((namespace, jid, device_id), None)

        @staticmethod
        async def _upload_device_list(namespace: str, device_list: Dict[int, Any]) -> None:
            xmpp.device_lists[(namespace, jid)] = dict(device_list)

        @staticmethod
        async def _download_device_list(namespace: str, bare_jid: str) -> Dict[int, Any]:
            return dict(xmpp.device_lists.get((namespace, bare_jid), {}))

        @staticmethod
        async def _send_message(message: omemo.Message, bare_jid: str) -> None:
            xmpp.outbox.append((message, bare_jid))

        async def _evaluate_custom_trust_level(self, device: omemo.DeviceInformation) -> omemo.TrustLevel:
            return omemo.TrustLevel.TRUSTED

        async def _make_trust_decision(
            self, undecided: FrozenSet[omemo.DeviceInformation], identifier: Optional[str]
        ) -> None:
            return None

    return Manager


def make_backend(namespace: str, storage: omemo.Storage, max_skipped: Optional[int] = None) -> omemo.Backend:
    """Returns: the backend of ``namespace`` on ``storage``.

    Args:
        namespace: the backend's namespace.
        storage: its storage.
        max_skipped: ``max_num_per_session_skipped_keys`` and ``max_num_per_message_skipped_keys``
            both, or ``None`` for the defaults (1,000 per session, as many per message).
    """
    limits: Dict[str, int] = {}
    if max_skipped is not None:
        limits = {
            "max_num_per_session_skipped_keys": max_skipped,
            "max_num_per_message_skipped_keys": max_skipped,
        }
    if namespace == TWOMEMO_NS:
        return twomemo.Twomemo(storage, **limits)
    if namespace == OLDMEMO_NS:
        return oldmemo.Oldmemo(storage, **limits)
    raise ValueError(f"unknown namespace {namespace!r}")


@dataclass
class Account:
    """One device: its session manager and storage."""

    jid: str
    storage: JSONTextStorage
    sm: omemo.SessionManager
    device_id: int


async def _create(
    xmpp: Xmpp,
    jid: str,
    namespaces: List[str],
    storage: JSONTextStorage,
    samples: Optional[List[float]],
    max_skipped: Optional[int] = None,
) -> Account:
    backends = [make_backend(namespace, storage, max_skipped) for namespace in namespaces]
    cls = manager_class(xmpp, jid)
    coroutine = cls.create(backends, storage, jid, None, TRUSTED)
    sm = await (coroutine if samples is None else timed(samples, coroutine))
    await sm.after_history_sync()
    own, _ = await sm.get_own_device_information()
    account = Account(jid, storage, sm, own.device_id)
    xmpp.accounts[jid] = account
    return account


async def new_account(
    xmpp: Xmpp,
    jid: str,
    namespaces: List[str],
    data: Optional[Dict[str, str]] = None,
    samples: Optional[List[float]] = None,
    max_skipped: Optional[int] = None,
) -> Account:
    """Create (or reload from ``data``) an account; its ``create()`` is timed into ``samples`` if given.

    Args:
        xmpp: the simulated server.
        jid: the account's bare JID.
        namespaces: the backends to load, by namespace, in priority order.
        data: a storage snapshot to reload, or ``None`` for a new device.
        samples: where to append the time of ``create()`` (µs), or ``None``.
        max_skipped: the backends' skipped-key limits (see :func:`make_backend`), ``None``: defaults.

    Returns:
        The account, after ``after_history_sync()``, registered as the current device of ``jid``.
    """
    return await _create(xmpp, jid, namespaces, JSONTextStorage(data), samples, max_skipped)


async def introduce(account: Account, namespace: str, jids: List[str]) -> None:
    """Make ``account`` know the device lists and identity keys of ``jids`` (as after PEP updates)."""
    for jid in jids:
        await account.sm.refresh_device_list(namespace, jid)
        await account.sm.get_device_information(jid)


async def encrypt(account: Account, jids: List[str], namespace: str) -> omemo.Message:
    """Encrypt :data:`PLAINTEXT` to ``jids``; exactly one message without errors is expected."""
    messages, errors = await account.sm.encrypt(frozenset(jids), {namespace: PLAINTEXT})
    return _single(messages, errors)


def _single(messages: Dict[omemo.Message, Any], errors: FrozenSet[Any]) -> omemo.Message:
    if errors or len(messages) != 1:
        raise RuntimeError(f"encryption produced {len(messages)} message(s) and errors {errors!r}")
    return next(iter(messages))


def _check(result: Tuple[Optional[bytes], Any, Any]) -> None:
    if result[0] != PLAINTEXT:
        raise RuntimeError(f"decryption returned {result[0]!r}")


async def make_pair(
    xmpp: Xmpp, namespace: str, prefix: str, max_skipped: Optional[int] = None
) -> Tuple[Account, Account]:
    """Returns: two accounts with a confirmed session (first message and its automatic reply done)."""
    alice = await new_account(xmpp, f"{prefix}-alice@bench.example", [namespace], max_skipped=max_skipped)
    bob = await new_account(xmpp, f"{prefix}-bob@bench.example", [namespace], max_skipped=max_skipped)
    await introduce(alice, namespace, [bob.jid])
    await introduce(bob, namespace, [alice.jid])
    _check(await bob.sm.decrypt(await encrypt(alice, [bob.jid], namespace)))
    await xmpp.deliver()
    _check(await alice.sm.decrypt(await encrypt(bob, [alice.jid], namespace)))
    await xmpp.deliver()
    return alice, bob


# --------------------------------------------------------------------------------------------------
# Timing


async def timed(samples: List[float], awaitable: Awaitable[T], per: int = 1) -> T:
    """Await ``awaitable`` and append its duration in µs (divided by ``per``) to ``samples``."""
    profiler = _profiler_for(samples)
    if profiler is not None:
        profiler.enable()
    clock = CLOCK[0]
    start = clock()
    result = await awaitable
    elapsed = clock() - start
    if profiler is not None:
        profiler.disable()
    samples.append(elapsed / per / 1000.0)
    return result


def timed_call(samples: List[float], function: Callable[..., T], *args: Any) -> T:
    """Call ``function(*args)`` :data:`XML_REPEAT` times; append the mean duration in µs to ``samples``."""
    profiler = _profiler_for(samples)
    if profiler is not None:
        profiler.enable()
    clock = CLOCK[0]
    start = clock()
    for _ in range(XML_REPEAT - 1):
        function(*args)
    result = function(*args)
    elapsed = (clock() - start) // XML_REPEAT
    if profiler is not None:
        profiler.disable()
    samples.append(elapsed / 1000.0)
    return result


async def counted(
    storage: JSONTextStorage,
    samples: List[float],
    writes: List[float],
    written: List[float],
    aw: Awaitable[T],
) -> T:
    """Time ``aw`` and record the storage writes and bytes written during it."""
    writes_before, bytes_before = storage.writes, storage.bytes_written
    result = await timed(samples, aw)
    writes.append(float(storage.writes - writes_before))
    written.append(float(storage.bytes_written - bytes_before))
    return result


async def timed_message(
    sender: Account,
    recipient: Account,
    namespace: str,
    rows: Rows,
    name: str,
    encrypt_writes: List[float],
    decrypt_writes: List[float],
) -> None:
    """One message from ``sender`` to ``recipient``: encrypt and decrypt timed into the rows
    ``{name}_encrypt`` / ``{name}_decrypt``, their bytes written into ``{name}_*_bytes``, and their
    storage writes into the given lists."""
    message = await counted(
        sender.storage,
        rows[f"{name}_encrypt"],
        encrypt_writes,
        rows[f"{name}_encrypt_bytes"],
        encrypt(sender, [recipient.jid], namespace),
    )
    _check(
        await counted(
            recipient.storage,
            rows[f"{name}_decrypt"],
            decrypt_writes,
            rows[f"{name}_decrypt_bytes"],
            recipient.sm.decrypt(message),
        )
    )


def _rows(*names: str) -> Rows:
    return {name: SampleList(name) for name in names}


# --------------------------------------------------------------------------------------------------
# Scenario groups. Each takes the namespace and a sample count and returns samples per row.
# State that is expensive to build is cached per worker process in _CACHE (reused across rounds).

_CACHE: Dict[Tuple[Any, ...], Any] = {}


async def _shutdown(*accounts: Account) -> None:
    for account in accounts:
        await account.sm.shutdown()


def _other(namespace: str) -> str:
    return OLDMEMO_NS if namespace == TWOMEMO_NS else TWOMEMO_NS


async def group_create(namespace: str, n: int) -> Rows:
    """create(): one backend, both backends (this namespace first), reload of an existing account."""
    rows = _rows("create_one", "create_both", "create_reload")
    xmpp = Xmpp()
    existing = await new_account(xmpp, "existing@bench.example", [namespace])
    await _shutdown(existing)
    snapshot = existing.storage.snapshot()
    for i in range(n):
        one = await new_account(xmpp, f"one{i}@bench.example", [namespace], samples=rows["create_one"])
        both = await new_account(
            xmpp, f"both{i}@bench.example", [namespace, _other(namespace)], samples=rows["create_both"]
        )
        reloaded = await new_account(xmpp, existing.jid, [namespace], snapshot, rows["create_reload"])
        await _shutdown(one, both, reloaded)
    return rows


async def group_first(namespace: str, n: int) -> Rows:
    """First message: encrypt with a new session, the passive decrypt, the sender processing the reply.

    Both devices are restored from storage snapshots taken after they learnt each other's device
    list and identity key, so every sample starts from the same state.
    """
    rows = _rows("first_encrypt", "first_decrypt", "first_reply")
    xmpp = Xmpp()
    alice = await new_account(xmpp, "first-alice@bench.example", [namespace])
    bob = await new_account(xmpp, "first-bob@bench.example", [namespace])
    await introduce(alice, namespace, [bob.jid])
    await introduce(bob, namespace, [alice.jid])
    await _shutdown(alice, bob)
    alice_data, bob_data = alice.storage.snapshot(), bob.storage.snapshot()
    bob_bundle = dict(xmpp.bundles)
    for _ in range(n):
        xmpp.bundles = dict(bob_bundle)
        alice = await new_account(xmpp, alice.jid, [namespace], alice_data)
        bob = await new_account(xmpp, bob.jid, [namespace], bob_data)
        xmpp.outbox.clear()
        gc.collect()
        message = await timed(rows["first_encrypt"], encrypt(alice, [bob.jid], namespace))
        _check(await timed(rows["first_decrypt"], bob.sm.decrypt(message)))
        if len(xmpp.outbox) != 1:
            raise RuntimeError(f"expected one automatic reply, got {len(xmpp.outbox)}")
        reply, _ = xmpp.outbox.pop()
        result = await timed(rows["first_reply"], alice.sm.decrypt(reply))
        if result[0] is not None:
            raise RuntimeError("the automatic reply carried a payload")
        await _shutdown(alice, bob)
    return rows


_STEADY_ROWS = (
    "encrypt",
    "decrypt",
    "total",
    "encrypt_writes",
    "encrypt_bytes",
    "decrypt_writes",
    "decrypt_bytes",
)


async def _steady(namespace: str, n: int, name: str, alternate: bool) -> Rows:
    rows = _rows(*(f"{name}_{row}" for row in _STEADY_ROWS))
    key = (name, namespace)
    if key not in _CACHE:
        xmpp = Xmpp()
        _CACHE[key] = (xmpp, *await make_pair(xmpp, namespace, name))
    xmpp, alice, bob = _CACHE[key]
    gc.collect()
    for i in range(n):
        sender, recipient = (bob, alice) if alternate and i % 2 else (alice, bob)
        await timed_message(
            sender,
            recipient,
            namespace,
            rows,
            name,
            rows[f"{name}_encrypt_writes"],
            rows[f"{name}_decrypt_writes"],
        )
        rows[f"{name}_total"].append(rows[f"{name}_encrypt"][-1] + rows[f"{name}_decrypt"][-1])
        await xmpp.deliver()
    return rows


async def group_one_way(namespace: str, n: int) -> Rows:
    """Steady state 1:1, one direction: encrypt and decrypt timed separately, plus storage writes."""
    return await _steady(namespace, n, "one_way", alternate=False)


async def group_alternating(namespace: str, n: int) -> Rows:
    """Steady state 1:1, alternating direction (a DH ratchet step per message)."""
    return await _steady(namespace, n, "alternating", alternate=True)


async def _fan_out_world(namespace: str) -> Tuple[Xmpp, List[str], Dict[str, str], Account]:
    """The recipients (one device per JID), a sender snapshot knowing them, a sender with sessions."""
    key = ("fan_out", namespace)
    if key not in _CACHE:
        xmpp = Xmpp()
        jids = [f"member{i:03d}@bench.example" for i in range(max(FAN_OUT_SIZES))]
        recipients = [await new_account(xmpp, jid, [namespace]) for jid in jids]
        fresh = await new_account(xmpp, "fresh-sender@bench.example", [namespace])
        await introduce(fresh, namespace, jids)
        await _shutdown(fresh)
        sender = await new_account(xmpp, "sender@bench.example", [namespace])
        await introduce(sender, namespace, jids)
        for recipient in recipients:
            await introduce(recipient, namespace, [sender.jid])
        message = await encrypt(sender, jids, namespace)
        for recipient in recipients:
            _check(await recipient.sm.decrypt(message))
        await xmpp.deliver()
        _CACHE[key] = (xmpp, jids, fresh.storage.snapshot(), sender)
    result: Tuple[Xmpp, List[str], Dict[str, str], Account] = _CACHE[key]
    return result


async def group_fan_out(namespace: str, n: int) -> Rows:
    """One encrypt to 10 and to 100 recipient devices, with new sessions and with existing ones."""
    rows = _rows(*(f"fan_out_{size}_{kind}" for kind in ("new", "existing") for size in FAN_OUT_SIZES))
    xmpp, jids, fresh_data, sender = await _fan_out_world(namespace)
    for _ in range(n):
        for size in FAN_OUT_SIZES:
            fresh = await new_account(xmpp, "fresh-sender@bench.example", [namespace], fresh_data)
            gc.collect()
            await timed(rows[f"fan_out_{size}_new"], encrypt(fresh, jids[:size], namespace))
            await _shutdown(fresh)
            await timed(rows[f"fan_out_{size}_existing"], encrypt(sender, jids[:size], namespace))
    return rows


async def group_skipped(namespace: str, n: int) -> Rows:
    """Out of order: the decrypt after 500 skipped messages, then of one of the skipped ones.

    The recipient is restored from a snapshot before every sample; the 501 messages are made once.
    """
    rows = _rows("skip_500_decrypt", "skipped_one_decrypt")
    key = ("skipped", namespace)
    if key not in _CACHE:
        xmpp = Xmpp()
        alice, bob = await make_pair(xmpp, namespace, "skipped")
        await _shutdown(bob)
        messages = [await encrypt(alice, [bob.jid], namespace) for _ in range(SKIPPED + 1)]
        _CACHE[key] = (xmpp, bob.jid, bob.storage.snapshot(), messages)
    xmpp, bob_jid, bob_data, messages = _CACHE[key]
    for _ in range(n):
        bob = await new_account(xmpp, bob_jid, [namespace], bob_data)
        gc.collect()
        _check(await timed(rows["skip_500_decrypt"], bob.sm.decrypt(messages[-1])))
        _check(await timed(rows["skipped_one_decrypt"], bob.sm.decrypt(messages[SKIPPED // 2])))
        xmpp.outbox.clear()
        await _shutdown(bob)
    return rows


async def group_xml(namespace: str, n: int) -> Rows:
    """Serialise and parse a steady-state message and a bundle with the stack's own ``etree``.

    Only the backend functions are timed (``Element`` in/out), not ``ElementTree.tostring``.
    """
    rows = _rows("xml_message_serialize", "xml_message_parse", "xml_bundle_serialize", "xml_bundle_parse")
    key = ("xml", namespace)
    if key not in _CACHE:
        xmpp = Xmpp()
        alice, bob = await make_pair(xmpp, namespace, "xml")
        message = await encrypt(alice, [bob.jid], namespace)
        bundle = xmpp.bundles[(namespace, bob.jid, bob.device_id)]
        _CACHE[key] = (alice, bob, message, bundle)
    alice, bob, message, bundle = _CACHE[key]
    etree: Any = twomemo_etree if namespace == TWOMEMO_NS else oldmemo_etree
    gc.collect()
    for _ in range(n):
        element: Element = timed_call(rows["xml_message_serialize"], etree.serialize_message, message)
        if namespace == TWOMEMO_NS:
            timed_call(rows["xml_message_parse"], etree.parse_message, element, alice.jid)
        else:
            await timed(rows["xml_message_parse"], _parse_legacy_messages(element, alice, bob), XML_REPEAT)
        element = timed_call(rows["xml_bundle_serialize"], etree.serialize_bundle, bundle)
        timed_call(rows["xml_bundle_parse"], etree.parse_bundle, element, bob.jid, bob.device_id)
    return rows


async def _parse_legacy_messages(element: Element, sender: Account, recipient: Account) -> None:
    for _ in range(XML_REPEAT):
        await oldmemo_etree.parse_message(element, sender.jid, recipient.jid, recipient.sm)


# --------------------------------------------------------------------------------------------------
# Costs at scale (ours only: the driver does not ask the reference, it would take too long)


def scale_limit(sizes: Dict[str, Any]) -> int:
    """Returns: the skipped-key limits of every account of the scale group (per session and per
    message): twice the largest gap or stored count, and never below the default of 1,000."""
    return max(1000, 2 * max(int(sizes["skip_gap"]), *(int(k) for k in sizes["skipped"])))


def scale_point_name(exchanged: int, skipped: int) -> str:
    """Returns: the row prefix of a steady-state point of the scale group (the driver uses the same rule).

    ``scale_after_{exchanged}`` without stored skipped keys, ``scale_skipped_{skipped}`` with them (after
    no messages but the setup's).
    """
    return f"scale_after_{exchanged}" if skipped == 0 else f"scale_skipped_{skipped}"


_SCALE_STEADY_ROWS = ("encrypt", "decrypt", "total", "encrypt_bytes", "decrypt_bytes", "bytes")


async def _one_way(xmpp: Xmpp, sender: Account, recipient: Account, namespace: str) -> None:
    _check(await recipient.sm.decrypt(await encrypt(sender, [recipient.jid], namespace)))
    await xmpp.deliver()


async def _lose_then_deliver(
    xmpp: Xmpp, sender: Account, recipient: Account, namespace: str, lost: int
) -> None:
    for _ in range(lost):
        await encrypt(sender, [recipient.jid], namespace)  # never delivered
    await _one_way(xmpp, sender, recipient, namespace)


async def _scale_states(
    namespace: str, sizes: Dict[str, Any]
) -> Dict[Tuple[int, int], Tuple[Xmpp, str, str, Dict[str, str], Dict[str, str]]]:
    """The steady-state points: storage snapshots of a pair, by (messages exchanged, skipped keys).

    Messages exchanged: one pair sends ``exchanged`` messages from alice to bob (each delivered, the
    automatic messages too), with a snapshot at each point. Skipped keys: a new pair; alice sends
    ``skipped`` messages that are lost and one that bob decrypts, then bob does the same towards
    alice, then alice sends one more: each side's session holds ``skipped`` stored keys.
    Built once per worker and namespace (and sizes).
    """
    limit = scale_limit(sizes)
    key = ("scale_states", namespace, json.dumps(sizes, sort_keys=True))
    if key not in _CACHE:
        states: Dict[Tuple[int, int], Tuple[Xmpp, str, str, Dict[str, str], Dict[str, str]]] = {}
        xmpp = Xmpp()
        alice, bob = await make_pair(xmpp, namespace, "scale-exchanged", limit)
        done = 0
        for exchanged in sorted(int(e) for e in sizes["exchanged"]):
            for _ in range(exchanged - done):
                await _one_way(xmpp, alice, bob, namespace)
            done = exchanged
            states[(exchanged, 0)] = (
                xmpp,
                alice.jid,
                bob.jid,
                alice.storage.snapshot(),
                bob.storage.snapshot(),
            )
        await _shutdown(alice, bob)
        for skipped in sorted(int(k) for k in sizes["skipped"] if int(k) > 0):
            xmpp = Xmpp()
            alice, bob = await make_pair(xmpp, namespace, f"scale-skipped{skipped}", limit)
            await _lose_then_deliver(xmpp, alice, bob, namespace, skipped)
            await _lose_then_deliver(xmpp, bob, alice, namespace, skipped)
            await _one_way(xmpp, alice, bob, namespace)
            await _shutdown(alice, bob)
            states[(0, skipped)] = (
                xmpp,
                alice.jid,
                bob.jid,
                alice.storage.snapshot(),
                bob.storage.snapshot(),
            )
        _CACHE[key] = states
    result: Dict[Tuple[int, int], Tuple[Xmpp, str, str, Dict[str, str], Dict[str, str]]] = _CACHE[key]
    return result


async def _scale_steady(namespace: str, sizes: Dict[str, Any], messages: int, rows: Rows) -> None:
    """Steady one-way messages at every point: the devices of each point restored from its snapshots
    (on a copy of its server), a few untimed messages (they load the sessions), then ``messages`` timed
    ones per point, INTERLEAVED (one message of each point in turn), with the bytes written."""
    limit = scale_limit(sizes)
    pairs: List[Tuple[str, Xmpp, Account, Account]] = []
    for (exchanged, skipped), state in (await _scale_states(namespace, sizes)).items():
        server, alice_jid, bob_jid, alice_data, bob_data = state
        xmpp = Xmpp(device_lists=dict(server.device_lists), bundles=dict(server.bundles))
        alice = await new_account(xmpp, alice_jid, [namespace], alice_data, max_skipped=limit)
        bob = await new_account(xmpp, bob_jid, [namespace], bob_data, max_skipped=limit)
        for _ in range(SCALE_WARM_UP):
            await _one_way(xmpp, alice, bob, namespace)
        pairs.append((scale_point_name(exchanged, skipped), xmpp, alice, bob))
    writes: List[float] = []
    gc.collect()
    for index in range(messages):
        for name, xmpp, alice, bob in pairs[index % len(pairs) :] + pairs[: index % len(pairs)]:
            await timed_message(alice, bob, namespace, rows, name, writes, writes)
            rows[f"{name}_total"].append(rows[f"{name}_encrypt"][-1] + rows[f"{name}_decrypt"][-1])
            rows[f"{name}_bytes"].append(
                rows[f"{name}_encrypt_bytes"][-1] + rows[f"{name}_decrypt_bytes"][-1]
            )
            await xmpp.deliver()
    for _, _, alice, bob in pairs:
        await _shutdown(alice, bob)


async def _scale_fan_out_world(namespace: str, devices: int, limit: int) -> Tuple[Xmpp, List[str], Account]:
    """A sender with confirmed sessions with ``devices`` recipients (one device per JID; the recipients
    decrypted its first message and their automatic replies were delivered, then they were shut down)."""
    key = ("scale_fan_out", namespace, devices)
    if key not in _CACHE:
        xmpp = Xmpp()
        jids = [f"scale-member{i:05d}@bench.example" for i in range(devices)]
        sender = await new_account(xmpp, "scale-sender@bench.example", [namespace], max_skipped=limit)
        recipients = []
        for jid in jids:
            recipient = await new_account(xmpp, jid, [namespace], max_skipped=limit)
            await introduce(recipient, namespace, [sender.jid])
            recipients.append(recipient)
        await introduce(sender, namespace, jids)
        message = await encrypt(sender, jids, namespace)
        for recipient in recipients:
            _check(await recipient.sm.decrypt(message))
        await xmpp.deliver()
        for recipient in recipients:
            await _shutdown(recipient)
            del xmpp.accounts[recipient.jid]
        _CACHE[key] = (xmpp, jids, sender)
    result: Tuple[Xmpp, List[str], Account] = _CACHE[key]
    return result


async def _scale_skip(
    namespace: str, gap: int, limit: int
) -> Tuple[Xmpp, str, Dict[str, str], omemo.Message]:
    """The recipient's snapshot before a gap of ``gap`` lost messages, and the message after the gap."""
    key = ("scale_skip", namespace, gap)
    if key not in _CACHE:
        xmpp = Xmpp()
        alice, bob = await make_pair(xmpp, namespace, "scale-skip", limit)
        await _shutdown(bob)
        for _ in range(gap):
            await encrypt(alice, [bob.jid], namespace)  # lost
        message = await encrypt(alice, [bob.jid], namespace)
        await _shutdown(alice)
        _CACHE[key] = (xmpp, bob.jid, bob.storage.snapshot(), message)
    result: Tuple[Xmpp, str, Dict[str, str], omemo.Message] = _CACHE[key]
    return result


async def group_scale(namespace: str, n: int) -> Rows:
    """Costs at scale (ours only), with the sizes of :data:`SCALE` (the request's or the full run's).

    - fan-out: one encrypt to each size of ``fan_out`` devices with confirmed sessions (the largest
      also as the time of the whole encrypt), per device: µs and bytes written;
    - the decrypt of the message after ``skip_gap`` lost ones (the recipient restored before each);
    - steady one-way encrypt and decrypt (µs, bytes written, and their sums) at each point of
      ``exchanged`` (messages already exchanged in the session) and of ``skipped`` (stored skipped
      keys on each side), :data:`SCALE_MESSAGES_PER_SAMPLE` messages per requested sample.

    Every account of the group allows :func:`scale_limit` skipped keys per session and per message.
    """
    sizes = SCALE[0]
    limit = scale_limit(sizes)
    fan_out = sorted(int(size) for size in sizes["fan_out"])
    gap = int(sizes["skip_gap"])
    names = [f"scale_fan_out_{fan_out[-1]}_encrypt", f"scale_skip_{gap}_decrypt"]
    names += [
        f"scale_fan_out_{size}_{kind}" for size in fan_out for kind in ("per_device", "bytes_per_device")
    ]
    points = {(int(e), 0) for e in sizes["exchanged"]} | {(0, int(k)) for k in sizes["skipped"]}
    names += [f"{scale_point_name(*point)}_{row}" for point in sorted(points) for row in _SCALE_STEADY_ROWS]
    rows = _rows(*names)

    xmpp, jids, sender = await _scale_fan_out_world(namespace, fan_out[-1], limit)
    writes: List[float] = []
    for _ in range(n):
        for size in fan_out:
            gc.collect()
            time_rows: List[float] = []
            byte_rows: List[float] = []
            await counted(
                sender.storage, time_rows, writes, byte_rows, encrypt(sender, jids[:size], namespace)
            )
            rows[f"scale_fan_out_{size}_per_device"].append(time_rows[0] / size)
            rows[f"scale_fan_out_{size}_bytes_per_device"].append(byte_rows[0] / size)
            if size == fan_out[-1]:
                rows[f"scale_fan_out_{size}_encrypt"].append(time_rows[0])
        await xmpp.deliver()

    xmpp, bob_jid, bob_data, message = await _scale_skip(namespace, gap, limit)
    for _ in range(n):
        bob = await new_account(xmpp, bob_jid, [namespace], bob_data, max_skipped=limit)
        gc.collect()
        _check(await timed(rows[f"scale_skip_{gap}_decrypt"], bob.sm.decrypt(message)))
        xmpp.outbox.clear()
        await _shutdown(bob)

    await _scale_steady(namespace, sizes, n * SCALE_MESSAGES_PER_SAMPLE, rows)
    return rows


GROUPS: Dict[str, Callable[[str, int], Awaitable[Rows]]] = {
    "create": group_create,
    "first": group_first,
    "one_way": group_one_way,
    "alternating": group_alternating,
    "fan_out": group_fan_out,
    "skipped": group_skipped,
    "xml": group_xml,
    "scale": group_scale,
}


# --------------------------------------------------------------------------------------------------
# Entry points


def _hello() -> Dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "pid": os.getpid(),
        **{module.__name__: getattr(module, "__file__", None) for module in (omemo, twomemo, oldmemo)},
    }


async def _serve(rpc_in: Any, rpc_out: Any) -> None:
    while True:
        line = rpc_in.readline()
        if not line:
            return
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            group = request["group"]
            if group == "hello":
                response: Dict[str, Any] = {"ok": True, "hello": _hello()}
            elif group == "exit":
                return
            else:
                CLOCK[0] = CLOCKS[request.get("clock", "cpu")]
                SCALE[0] = request.get("sizes") or SCALE_SIZES
                rows = await GROUPS[group](request["namespace"], int(request["samples"]))
                response = {"ok": True, "rows": rows}
        except Exception:
            response = {"ok": False, "error": traceback.format_exc()}
        rpc_out.write(json.dumps(response) + "\n")
        rpc_out.flush()


async def _profile(group: str, namespace: str, samples: int, profiler: cProfile.Profile) -> Rows:
    await GROUPS[group](namespace, 1)  # warm up and build cached state outside the profile
    PROFILER.append(profiler)
    try:
        return await GROUPS[group](namespace, samples)
    finally:
        PROFILER.clear()
        profiler.disable()


def main(argv: Optional[List[str]] = None) -> None:
    """Serve requests on stdin (default) or profile one scenario group (``--profile``).

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--profile", choices=sorted(GROUPS), help="profile one scenario group")
    parser.add_argument("--namespace", choices=NAMESPACES, default=TWOMEMO_NS)
    parser.add_argument("--rows", nargs="+", default=[], help="profile only these rows of the group")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--top", type=int, default=30, help="rows of the profile to print")
    parser.add_argument("--sort", default="cumulative", help="pstats sort key")
    args = parser.parse_args(argv)
    if args.profile:
        profiler = cProfile.Profile()
        PROFILED_ROWS.extend(args.rows)
        rows = asyncio.run(_profile(args.profile, args.namespace, args.samples, profiler))
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.strip_dirs().sort_stats(args.sort).print_stats(args.top)
        for name, values in rows.items():
            print(f"{name}: median {statistics.median(values):.1f} over {len(values)} samples")
        print(out.getvalue())
        return
    # Keep the answer channel clean: whatever the libraries print goes to stderr.
    rpc_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    asyncio.run(_serve(sys.stdin, rpc_out))


if __name__ == "__main__":
    main()
