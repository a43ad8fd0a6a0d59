"""The measuring loop of ``benchmarks/xmpp_bench.py``, shared by both stacks (standard library + slixmpp).

``xmpp_bench.py`` imports it to drive our plugin in its own process, and ``_xmpp_ref_worker.py``
imports it to drive slixmpp-omemo 2.2.0 in that package's venv, so the same code times both plugins
through the API they have in common (slixmpp-omemo 2.2's ``XEP_0384``): ``encrypt_message(stanza,
recipients)`` returning ``(stanza or None, errors)``, ``decrypt_message(stanza)`` returning ``(stanza,
device)``. Nothing here imports either OMEMO stack.

A scenario is a coroutine ``(sides, parameters, hooks) -> result`` in :data:`SCENARIOS`;
:data:`ACCOUNTS` says how many connected accounts (:class:`Side`) it gets, in order. Another scenario
(e.g. a group chat) is one more entry in both, and a ``Case`` of ``xmpp_bench.py`` naming it; both
stacks' drivers pick it up by name. Today there is ``one_to_one``:

- **Warm-up (not timed).** ``warmup`` exchanges each way (sender -> receiver, then receiver -> sender),
  each waited for and decrypted, so both sessions are established and confirmed (no key exchange, no
  pre-key message) and the device lists are known; then whatever arrives in the next 0.2 s (automatic
  empty messages) is decrypted too.
- **Timed.** ``messages`` chat messages from the sender to the receiver, bodies ``"<seq> <text>"``. One
  task encrypts and sends them in order; one task on the receiver takes stanzas from its inbox in order
  and decrypts each (sequentially, as a client processing its stream does). At most ``window`` messages
  are in flight (encryption started, decryption not finished): the sender waits for a slot before
  encrypting, the receiver frees one after each decryption. So the pipeline through the server stays
  full (the throughput is not the round trip time of one message), while a message's latency includes
  at most ``window - 1`` messages queued ahead of it, not the whole run. Anything else arriving (the
  receiver's automatic empty messages, e.g. after many messages without a reply) is decrypted on the
  sender inside the timed section, as a real client would: by its plugin (ours) or by a drain task of
  the benchmark (slixmpp-omemo leaves that to the application), see :func:`attach_inbox`.
- **Measured.** Latency per message: from just before ``encrypt_message`` on the sender to just after
  ``decrypt_message`` on the receiver (``time.perf_counter``, one process). Throughput: ``messages`` /
  (first encrypt start -> last decrypt end). Also the CPU time of this process (both clients) and of the
  server process (``/proc/PID/stat``) during the timed section.
"""

from __future__ import annotations

import asyncio
import math
import os
import ssl
import time
from dataclasses import dataclass
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    FrozenSet,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    cast,
)

from slixmpp import ClientXMPP
from slixmpp.jid import JID
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

__all__ = [
    "ACCOUNTS",
    "SCENARIOS",
    "BenchmarkFailure",
    "Hooks",
    "Inbox",
    "PassThrough",
    "Side",
    "attach_inbox",
    "connect",
    "percentile",
    "run_one_to_one",
]

#: The text after the sequence number in every timed body (a typical chat line, 64 characters).
FILLER = "The quick brown fox jumps over the lazy dog, then orders a pizza."[:64]
#: How long to wait for automatic messages after the warm-up.
SETTLE_SECONDS = 0.2
PUBSUB_EVENT = "{http://jabber.org/protocol/pubsub#event}event"
CLIENT = "jabber:client"
OMEMO_NAMESPACES = ("urn:xmpp:omemo:2", "eu.siacs.conversations.axolotl")
#: The slixmpp plugins every client loads besides ``xep_0384`` (those slixmpp-omemo's docs name).
PLUGINS = ("xep_0030", "xep_0045", "xep_0060", "xep_0163", "xep_0280", "xep_0334", "xep_0380")


class BenchmarkFailure(RuntimeError):
    """The scenario could not run as intended (nothing encrypted, a decryption failed, a timeout)."""


@dataclass
class Side:
    """One connected account: its slixmpp client, its ``xep_0384`` plugin, and its inbox (the chat
    messages it receives, in order, see :func:`attach_inbox`)."""

    client: Any
    omemo: Any
    inbox: Inbox

    @property
    def bare(self) -> str:
        bare: str = self.client.boundjid.bare
        return bare


class PassThrough:
    """Stands in for an OMEMO plugin to measure the floor: the XMPP layer alone. "Encrypting" returns
    the stanza itself (sent in plain text), "decrypting" returns what arrived."""

    async def encrypt_message(self, stanza: Any, _recipients: Any) -> Tuple[Any, FrozenSet[Any]]:
        return stanza, frozenset()

    async def decrypt_message(self, stanza: Any) -> Tuple[Any, None]:
        return stanza, None

    def is_encrypted(self, _stanza: Any) -> Set[str]:
        return set()


@dataclass
class Hooks:
    """Called right before the timed section starts and right after it ends (e.g. a profiler)."""

    on_start: Callable[[], None] = lambda: None
    on_stop: Callable[[], None] = lambda: None


class Inbox(asyncio.Queue[Any]):
    """The message stanzas an account receives, in order; counts the empty OMEMO messages seen."""

    def __init__(self) -> None:
        super().__init__()
        #: Empty OMEMO messages (no ``<payload>``: key-exchange completion, heartbeats) that arrived.
        self.empty_messages = 0


def _is_empty_omemo(stanza: Any) -> bool:
    """Whether ``stanza`` is an empty OMEMO message: ``<encrypted>`` elements, none with a ``<payload>``."""
    found = False
    for ns in OMEMO_NAMESPACES:
        for element in stanza.xml.iter(f"{{{ns}}}encrypted"):
            if element.find(f"{{{ns}}}payload") is not None:
                return False
            found = True
    return found


def attach_inbox(client: Any, queue_empty: bool) -> Inbox:
    """Returns: the inbox of ``client``: every chat/normal message stanza (PEP events left out), with or
    without a ``<body>``; empty OMEMO messages only if ``queue_empty``.

    slixmpp fires its ``message`` event only for messages with a ``<body>`` (its ``IM`` handler matches
    ``message/body``). The automatic empty messages that the session managers send (key-exchange
    completion, and the "heartbeat" after ``STALENESS_MAGIC_NUMBER`` = 53 messages received without a
    reply) have none. Somebody has to decrypt them, or the sender's ratchet never steps and the
    receiver, whose receiving chain then never restarts, sends a heartbeat after EVERY further
    message. slixmpp-omemo 2.2.0 leaves that to the application (``queue_empty``: the benchmark's
    inbox gets them, so it does); omemo_slixmpp decrypts them itself (since commit 8808086), and the
    inbox only counts them. So this registers a handler for every message stanza, as slixmpp-omemo's
    example does, instead of listening to ``message``.
    """
    inbox = Inbox()

    def received(stanza: Any) -> None:
        if stanza["type"] not in ("chat", "normal", "groupchat") or stanza.xml.find(PUBSUB_EVENT) is not None:
            return
        if _is_empty_omemo(stanza):
            inbox.empty_messages += 1
            if not queue_empty:
                return
        inbox.put_nowait(stanza)

    client.register_handler(Callback("benchmark inbox", MatchXPath(f"{{{CLIENT}}}message"), received))
    return inbox


async def connect(
    jid: str,
    password: str,
    host: str,
    port: int,
    cafile: str,
    plugin_module: Any,
    config: Mapping[str, Any],
    plugin_decrypts_empty: bool,
) -> Side:
    """Logs ``jid`` in with the ``xep_0384`` plugin registered in this process (``plugin_module``
    holds it, ``config`` is its plugin config), STARTTLS verified against ``cafile``. Both stacks'
    clients are made here, so they load the same slixmpp plugins and handlers.
    ``plugin_decrypts_empty``: whether the plugin decrypts empty OMEMO messages itself (else the
    benchmark does, see :func:`attach_inbox`).

    Returns:
        The account, once its OMEMO data is published (``omemo_initialized``).
    """
    client = ClientXMPP(jid, password)
    client.enable_direct_tls = False
    client.ssl_context = ssl.create_default_context(cafile=cafile)
    for plugin in PLUGINS:
        client.register_plugin(plugin)
    client.register_plugin("xep_0384", dict(config), module=plugin_module)
    ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def initialized(_event: Any) -> None:
        if not ready.done():
            ready.set_result(True)

    inbox = attach_inbox(client, queue_empty=not plugin_decrypts_empty)
    client.add_event_handler("omemo_initialized", initialized)
    client.add_event_handler("session_start", lambda _event: client.send_presence())
    client.connect(host, port)
    await asyncio.wait_for(ready, 30)
    return Side(client, cast(Any, client.plugin)["xep_0384"], inbox)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Returns: the nearest-rank percentile (``fraction`` in (0, 1]) of ``values`` (not empty)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _server_cpu_seconds(pid: Optional[int]) -> Optional[float]:
    """Returns: user + system CPU time of process ``pid`` so far (``/proc/PID/stat``), or ``None``."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the ")" of the command: field 3 (state) is fields[0], so utime (14) and stime (15) are 11, 12.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _encrypt_and_send(sender: Side, to: str, body: str) -> Any:
    stanza = sender.client.make_message(mto=JID(to), mtype="chat")
    stanza["body"] = body
    encrypted, _errors = await sender.omemo.encrypt_message(stanza, {JID(to)})
    if encrypted is None:
        raise BenchmarkFailure(f"{sender.bare} could not encrypt for {to}: {_errors}")
    encrypted.send()
    return encrypted


async def _receive_body(side: Side, body: str, timeout: float) -> None:
    """Decrypts what arrives at ``side`` until the message with ``body``."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchmarkFailure(f"{side.bare} did not receive {body!r} within {timeout} s")
        try:
            stanza = await asyncio.wait_for(side.inbox.get(), remaining)
        except asyncio.TimeoutError:
            continue
        message, _device = await side.omemo.decrypt_message(stanza)
        if message["body"] == body:
            return


async def _drain(side: Side, seconds: float) -> None:
    """Decrypts whatever arrives at ``side`` within ``seconds``."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            stanza = await asyncio.wait_for(side.inbox.get(), remaining)
        except asyncio.TimeoutError:
            return
        await side.omemo.decrypt_message(stanza)


async def warm_up(a: Side, b: Side, exchanges: int, timeout: float) -> None:
    """``exchanges`` messages a -> b and b -> a, alternating, each received and decrypted; then the
    automatic messages that follow (see the module docstring)."""
    for index in range(exchanges):
        for sender, receiver in ((a, b), (b, a)):
            body = f"warm-up {index} from {sender.bare}"
            await _encrypt_and_send(sender, receiver.bare, body)
            await _receive_body(receiver, body, timeout)
    await asyncio.gather(_drain(a, SETTLE_SECONDS), _drain(b, SETTLE_SECONDS))


def _sequence(body: Any) -> Optional[int]:
    head = str(body or "").split(" ", 1)[0]
    return int(head) if head.isdigit() else None


async def measure_one_way(
    sender: Side,
    receiver: Side,
    messages: int,
    window: int,
    timeout: float,
    server_pid: Optional[int],
    hooks: Hooks,
) -> Dict[str, Any]:
    """The timed section of ``one_to_one`` (see the module docstring).

    Returns:
        ``messages``, ``window``, ``seconds``, ``messages_per_second``, ``latencies_ms`` (per message, in
        sequence order), ``cpu_seconds`` (this process), ``server_cpu_seconds`` (or ``None``),
        ``wire_namespaces`` (of the first timed stanza), ``automatic_messages`` (empty OMEMO messages
        that arrived at the sender: the receiver's heartbeats).

    Raises:
        BenchmarkFailure: a message could not be encrypted or decrypted, or the run timed out.
    """
    started = [0.0] * messages
    finished: List[Optional[float]] = [None] * messages
    slots = asyncio.Semaphore(window)
    wire: List[str] = []

    async def send() -> None:
        to = JID(receiver.bare)
        for seq in range(messages):
            await slots.acquire()
            stanza = sender.client.make_message(mto=to, mtype="chat")
            stanza["body"] = f"{seq} {FILLER}"
            started[seq] = time.perf_counter()
            encrypted, errors = await sender.omemo.encrypt_message(stanza, {to})
            if encrypted is None:
                raise BenchmarkFailure(f"message {seq} could not be encrypted: {errors}")
            encrypted.send()
            if seq == 0:
                wire.extend(sorted(sender.omemo.is_encrypted(encrypted)))

    async def receive() -> None:
        pending = messages
        while pending:
            stanza = await receiver.inbox.get()
            message, _device = await receiver.omemo.decrypt_message(stanza)
            now = time.perf_counter()
            seq = _sequence(message["body"])
            if seq is None or seq >= messages or finished[seq] is not None:
                continue
            finished[seq] = now
            pending -= 1
            slots.release()

    async def drain() -> None:
        while True:
            stanza = await sender.inbox.get()
            await sender.omemo.decrypt_message(stanza)

    drainer = asyncio.ensure_future(drain())
    hooks.on_start()
    cpu_before, server_before = time.process_time(), _server_cpu_seconds(server_pid)
    empty_before = sender.inbox.empty_messages
    try:
        await asyncio.wait_for(asyncio.gather(send(), receive()), timeout)
    except asyncio.TimeoutError:
        done = sum(1 for value in finished if value is not None)
        raise BenchmarkFailure(f"timed out after {timeout} s with {done} of {messages} decrypted") from None
    finally:
        cpu_after, server_after = time.process_time(), _server_cpu_seconds(server_pid)
        hooks.on_stop()
        drainer.cancel()
    if drainer.done() and not drainer.cancelled() and drainer.exception() is not None:
        raise BenchmarkFailure(f"the sender could not decrypt a message: {drainer.exception()!r}")
    ends = [value for value in finished if value is not None]
    if len(ends) != messages:  # pragma: no cover - gather returned, so every message was decrypted
        raise BenchmarkFailure(f"only {len(ends)} of {messages} messages were decrypted")
    seconds = max(ends) - started[0]
    return {
        "messages": messages,
        "window": window,
        "seconds": seconds,
        "messages_per_second": messages / seconds,
        "latencies_ms": [(end - start) * 1000.0 for start, end in zip(started, ends, strict=True)],
        "cpu_seconds": cpu_after - cpu_before,
        "server_cpu_seconds": (
            None if server_before is None or server_after is None else server_after - server_before
        ),
        "wire_namespaces": wire,
        "automatic_messages": sender.inbox.empty_messages - empty_before,
    }


async def run_one_to_one(
    sides: Sequence[Side], parameters: Mapping[str, Any], hooks: Hooks
) -> Dict[str, Any]:
    """The ``one_to_one`` scenario: warm-up, then ``parameters["messages"]`` timed messages from
    ``sides[0]`` to ``sides[1]`` (parameters: ``messages``, ``window``, ``warmup``, ``timeout``,
    ``server_pid``)."""
    sender, receiver = sides
    timeout = float(parameters["timeout"])
    await warm_up(sender, receiver, int(parameters["warmup"]), timeout)
    return await measure_one_way(
        sender,
        receiver,
        int(parameters["messages"]),
        int(parameters["window"]),
        timeout,
        parameters.get("server_pid"),
        hooks,
    )


#: Members of the room of the ``room`` scenario, the sender included (by default).
ROOM_MEMBERS = 20


async def _set_up_room(owner: Side, members: Sequence[Side], room: str, timeout: float) -> None:
    """``owner`` creates ``room`` (members-only and non-anonymous: the test server's defaults), makes
    every other account a member, and everyone joins."""
    muc = owner.client.plugin["xep_0045"]
    await muc.join_muc_wait(JID(room), "owner", timeout=timeout)
    for member in members:
        await muc.set_affiliation(JID(room), "member", jid=JID(member.bare))
    await asyncio.gather(
        *(
            member.client.plugin["xep_0045"].join_muc_wait(JID(room), f"member{index}", timeout=timeout)
            for index, member in enumerate(members)
        )
    )


def _room_recipients(side: Side, everyone: Sequence[Side], room: str, address: str) -> Set[JID]:
    """Who ``side`` encrypts a room message for: the room itself (``address == "room"``: the plugin
    reads its member list, our plugin's way) or the other members' real JIDs (slixmpp-omemo's way)."""
    if address == "room":
        return {JID(room)}
    return {JID(other.bare) for other in everyone if other is not side}


async def _send_to_room(side: Side, room: str, recipients: Set[JID], body: str) -> Any:
    stanza = side.client.make_message(mto=JID(room), mtype="groupchat")
    stanza["body"] = body
    encrypted, errors = await side.omemo.encrypt_message(stanza, recipients)
    if encrypted is None or errors:
        raise BenchmarkFailure(f"{side.bare} could not encrypt for the room: {errors}")
    encrypted.send()
    return encrypted


class _Reader:
    """Decrypts every room message one member gets (its own reflections too), and tells when a body
    was read."""

    def __init__(self, side: Side) -> None:
        self.side = side
        self.seen: Dict[str, float] = {}
        self._waiting: Dict[str, asyncio.Future[None]] = {}
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            stanza = await self.side.inbox.get()
            if not self.side.omemo.is_encrypted(stanza):  # the room's subject, status messages
                continue
            message, _device = await self.side.omemo.decrypt_message(stanza)
            body = str(message["body"] or "")
            if body and body not in self.seen:
                self.seen[body] = time.perf_counter()
                waiter = self._waiting.pop(body, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

    async def read(self, body: str, timeout: float) -> float:
        """Returns: when ``body`` was read (waits for it at most ``timeout`` seconds)."""
        if body not in self.seen:
            waiter = self._waiting.setdefault(body, asyncio.get_running_loop().create_future())
            try:
                await asyncio.wait_for(asyncio.shield(waiter), timeout)
            except asyncio.TimeoutError:
                failed = self.task.exception() if self.task.done() else None
                raise BenchmarkFailure(f"{self.side.bare} did not read {body!r}: {failed!r}") from None
        return self.seen[body]


async def run_room(sides: Sequence[Side], parameters: Mapping[str, Any], hooks: Hooks) -> Dict[str, Any]:
    """The ``room`` scenario: ``sides[0]`` owns a room of :data:`ROOM_MEMBERS` members (parameters:
    ``room``, ``room_address``, and those of ``one_to_one``). Warm-up: every member writes one message
    that everyone reads, so that every session is established and confirmed. Timed: ``messages`` room
    messages from ``sides[0]``, window ``window``; a message is done when the LAST of the other members
    has decrypted it (latency: encrypt start -> that moment; throughput: messages / first encrypt ->
    last message done). Every member also decrypts what else arrives (reflections, empty messages)."""
    sender, members = sides[0], list(sides[1:])
    room, address = str(parameters["room"]), str(parameters["room_address"])
    messages, window = int(parameters["messages"]), int(parameters["window"])
    timeout = float(parameters["timeout"])
    await _set_up_room(sender, members, room, timeout)
    readers = [_Reader(side) for side in sides]
    try:
        for index, side in enumerate(sides):  # warm-up: every member speaks once, everyone reads it
            body = f"warm-up from member {index}"
            await _send_to_room(side, room, _room_recipients(side, sides, room, address), body)
            for reader in readers:
                if reader.side is not side:
                    await reader.read(body, timeout)
        await asyncio.sleep(SETTLE_SECONDS)
        recipients = _room_recipients(sender, sides, room, address)
        started = [0.0] * messages
        done: List[float] = []
        slots = asyncio.Semaphore(window)

        wire: List[str] = []

        async def send() -> None:
            for seq in range(messages):
                await slots.acquire()
                started[seq] = time.perf_counter()
                encrypted = await _send_to_room(sender, room, recipients, f"{seq} {FILLER}")
                if seq == 0:
                    wire.extend(sorted(sender.omemo.is_encrypted(encrypted)))

        async def complete() -> None:
            for seq in range(messages):
                body = f"{seq} {FILLER}"
                done.append(max([await reader.read(body, timeout) for reader in readers[1:]]))
                slots.release()

        hooks.on_start()
        cpu_before, server_before = time.process_time(), _server_cpu_seconds(parameters.get("server_pid"))
        empty_before = sender.inbox.empty_messages
        try:
            await asyncio.wait_for(asyncio.gather(send(), complete()), timeout)
        finally:
            cpu_after, server_after = time.process_time(), _server_cpu_seconds(parameters.get("server_pid"))
            hooks.on_stop()
    finally:
        for reader in readers:
            reader.task.cancel()
    seconds = max(done) - started[0]
    return {
        "messages": messages,
        "window": window,
        "seconds": seconds,
        "messages_per_second": messages / seconds,
        "latencies_ms": [(end - start) * 1000.0 for start, end in zip(started, done, strict=True)],
        "cpu_seconds": cpu_after - cpu_before,
        "server_cpu_seconds": (
            None if server_before is None or server_after is None else server_after - server_before
        ),
        "wire_namespaces": wire,
        "automatic_messages": sender.inbox.empty_messages - empty_before,
        "decryptions": messages * len(members),
    }


Scenario = Callable[[Sequence[Side], Mapping[str, Any], Hooks], Awaitable[Dict[str, Any]]]
#: The scenarios by name, and how many connected accounts each needs (in the order it takes them).
SCENARIOS: Dict[str, Scenario] = {"one_to_one": run_one_to_one, "room": run_room}
#: (The room's size is a parameter, ``room_members``; this is its default.)
ACCOUNTS: Dict[str, int] = {"one_to_one": 2, "room": ROOM_MEMBERS}
