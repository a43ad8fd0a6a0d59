"""Test side of the interop harness: peer subprocesses and a minimal model of the XMPP server.

A :class:`Peer` is one OMEMO device running ``peer.py`` under a chosen interpreter (our virtualenv
or the reference one). A :class:`Network` plays the XMPP server: it keeps the published PEP data
(device lists and bundles per namespace, as XML text), forwards every publication to the other
peers (device lists as PEP notifications), and delivers messages (explicitly, or the automatic
ones each library sends through ``_send_message``). Only XML text travels between peers.

Typical use::

    net = Network(tmp_path)
    alice = net.add(python, "alice", "alice@example.org", ["twomemo"])
    bob = net.add(other_python, "bob", "bob@example.org", ["twomemo"])
    first_contact(net, alice, bob)
    conversation(net, alice, bob, 20)
    net.close()
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import select
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = [
    "BACKEND_NAMESPACES",
    "NS_OLDMEMO",
    "NS_TWOMEMO",
    "OURS_OVERRIDE_VARIABLE",
    "PEER_SCRIPT",
    "Decrypted",
    "Network",
    "Peer",
    "PeerCommandError",
    "PeerProcessError",
    "Stanza",
    "burst",
    "conversation",
    "exchange",
    "first_contact",
    "tamper",
]

NS_TWOMEMO = "urn:xmpp:omemo:2"
NS_OLDMEMO = "eu.siacs.conversations.axolotl"
BACKEND_NAMESPACES = {"twomemo": NS_TWOMEMO, "oldmemo": NS_OLDMEMO}
PEER_SCRIPT = Path(__file__).with_name("peer.py")
# Names an interpreter to use instead of the test runner's for "our" peers (see conftest.py).
OURS_OVERRIDE_VARIABLE = "OMEMO_INTEROP_OURS_PYTHON"

# Environment variables that could make a peer import something other than its own venv's stack.
_SCRUBBED_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH")


# --------------------------------------------------------------------------------------------------
# Messages


@dataclass(frozen=True)
class Stanza:
    """An encrypted OMEMO message as it crosses the wire (XML text) plus routing data.

    Attributes:
        namespace: the OMEMO namespace of the ``<encrypted>`` element.
        sender_jid: bare JID of the sending account.
        sender_device: device id of the sending device.
        xml: the ``<encrypted>`` element as serialised by the sender's backend.
        to: recipient bare JID for automatic messages (``None`` for messages from ``encrypt``).
    """

    namespace: str
    sender_jid: str
    sender_device: int
    xml: str
    to: Optional[str] = None

    @classmethod
    def from_wire(cls, entry: Mapping[str, Any]) -> Stanza:
        """Build a stanza from a peer's ``encrypt`` result entry or outbox entry."""
        return cls(
            entry["namespace"], entry["from"], int(entry["from_device"]), entry["xml"], entry.get("to")
        )

    def _keys(self) -> List[Tuple[Optional[str], ET.Element]]:
        root = ET.fromstring(self.xml)
        ns = f"{{{self.namespace}}}"
        header = root.find(f"{ns}header")
        if header is None:
            raise ValueError("no <header> in the message")
        if self.namespace == NS_TWOMEMO:
            return [
                (keys.get("jid"), key)
                for keys in header.findall(f"{ns}keys")
                for key in keys.findall(f"{ns}key")
            ]
        # Legacy OMEMO has no per-JID grouping: keys are matched by device id only.
        return [(None, key) for key in header.findall(f"{ns}key")]

    def _key(self, jid: str, device_id: int) -> Optional[ET.Element]:
        for key_jid, key in self._keys():
            if key.get("rid") == str(device_id) and key_jid in (None, jid):
                return key
        return None

    def is_addressed_to(self, jid: str, device_id: int) -> bool:
        """Returns: whether the message carries a key for that device."""
        return self._key(jid, device_id) is not None

    def has_key_exchange(self, jid: str, device_id: int) -> bool:
        """Returns: whether the key for that device is flagged as a key exchange."""
        key = self._key(jid, device_id)
        if key is None:
            raise ValueError(f"the message has no key for {jid}/{device_id}")
        flag = key.get("kex" if self.namespace == NS_TWOMEMO else "prekey", "false")
        return flag in ("true", "1")

    @property
    def has_payload(self) -> bool:
        """Whether the message has a ``<payload>`` (an empty OMEMO message has none)."""
        return ET.fromstring(self.xml).find(f"{{{self.namespace}}}payload") is not None


@dataclass(frozen=True)
class Decrypted:
    """What a peer's ``decrypt`` returned: the plaintext (``None`` for an empty message) and sender."""

    plaintext: Optional[bytes]
    sender_jid: str
    sender_device: int


def tamper(
    stanza: Stanza, where: str, *, jid: str = "", device_id: int = 0, byte: int = -1, bit: int = 0
) -> Stanza:
    """Flip one bit in the base64 content of a key or of the payload.

    Args:
        stanza: the message to alter (left unchanged; a new stanza is returned).
        where: ``"key"`` (the key element for ``jid``/``device_id``) or ``"payload"``.
        jid: for ``where="key"``: the recipient JID (ignored for legacy OMEMO).
        device_id: for ``where="key"``: the recipient device id.
        byte: index of the byte to alter in the decoded content (negative counts from the end).
        bit: index of the bit to flip in that byte.

    Returns:
        The altered stanza; the rest of the XML text is kept byte for byte.
    """
    if where == "key":
        element = stanza._key(jid, device_id)
    elif where == "payload":
        element = ET.fromstring(stanza.xml).find(f"{{{stanza.namespace}}}payload")
    else:
        raise ValueError(f"where must be 'key' or 'payload', not {where!r}")
    if element is None or not element.text:
        raise ValueError(f"nothing to tamper with at {where!r}")
    old_text = element.text.strip()
    data = bytearray(base64.b64decode(old_text))
    data[byte] ^= 1 << bit
    new_text = base64.b64encode(bytes(data)).decode("ascii")
    if stanza.xml.count(old_text) != 1:
        raise ValueError("the base64 text to tamper with is not unique in the message")
    return dataclasses.replace(stanza, xml=stanza.xml.replace(old_text, new_text))


# --------------------------------------------------------------------------------------------------
# Peers


class PeerProcessError(RuntimeError):
    """The peer process died, timed out or broke the RPC protocol (the message has its stderr tail)."""


class PeerCommandError(Exception):
    """A command failed inside the peer; carries the remote exception's description.

    Attributes:
        peer: name of the peer.
        command: the command that failed.
        type: class name of the remote exception.
        mro: class names of the remote exception's MRO (to test for exception families).
        remote_message: ``str()`` of the remote exception.
        remote_traceback: formatted remote traceback.
    """

    def __init__(self, peer: str, command: str, error: Mapping[str, Any]) -> None:
        self.peer = peer
        self.command = command
        self.type: str = error["type"]
        self.mro: List[str] = list(error["mro"])
        self.remote_message: str = error["message"]
        self.remote_cause: Optional[str] = error.get("cause")
        self.remote_traceback: str = error.get("traceback", "")
        cause = f" (caused by {self.remote_cause})" if self.remote_cause else ""
        super().__init__(f"{peer}: {command} failed: {self.type}: {self.remote_message}{cause}")

    def is_a(self, class_name: str) -> bool:
        """Returns: whether the remote exception is an instance of a class of that name."""
        return class_name in self.mro


class Peer:
    """One OMEMO device in its own subprocess (``peer.py`` under ``python``).

    Side effects reported by the peer with each response accumulate here until the network takes
    them: :attr:`publications` (PEP items) and :attr:`outbox` (automatic messages).
    """

    def __init__(
        self,
        python: Union[str, os.PathLike[str]],
        name: str,
        workdir: Union[str, os.PathLike[str]],
        *,
        timeout: float = 120.0,
        env: Optional[Mapping[str, str]] = None,
    ) -> None:
        """Start the peer process.

        Args:
            python: the interpreter to run ``peer.py`` with (it selects the OMEMO implementation).
            name: a name for logs and error messages (unique within the workdir).
            workdir: directory for the storage file and the stderr logs.
            timeout: seconds to wait for any one response.
            env: extra environment variables for the process.
        """
        self.python = str(python)
        self.name = name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self.storage_path = self.workdir / f"{name}.storage.json"
        self.publications: List[Dict[str, Any]] = []
        self.outbox: List[Stanza] = []
        self.warnings: List[str] = []
        self.jid = ""
        self.device_id = 0
        self.backends: List[str] = []
        self.namespaces: List[str] = []
        self.hello: Dict[str, Any] = {}
        self.last_elapsed = 0.0  # seconds spent inside the last successful command, in the peer
        self._create_args: Dict[str, Any] = {}
        self._env = dict(env or {})
        self._generation = 0
        self._next_id = 0
        self._buffer = b""
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self.stderr_path = self.workdir / f"{name}.stderr.log"
        self.start()

    def __repr__(self) -> str:
        return f"<Peer {self.name} {self.jid}/{self.device_id} {'alive' if self.alive else 'stopped'}>"

    # ---------------------------------------------------------------------------------------------
    # Process handling

    @property
    def alive(self) -> bool:
        """Whether the process is running."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Spawn the process (again, after :meth:`stop`) and fetch its ``hello`` information."""
        if self.alive:
            raise RuntimeError(f"{self.name} is running already")
        self._generation += 1
        self.stderr_path = self.workdir / f"{self.name}.{self._generation}.stderr.log"
        env = {key: value for key, value in os.environ.items() if key not in _SCRUBBED_ENV}
        env.update(self._env)
        with open(self.stderr_path, "wb") as stderr:
            self._proc = subprocess.Popen(
                [self.python, str(PEER_SCRIPT)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
                cwd=self.workdir,
                bufsize=0,
            )
        self._buffer = b""
        try:
            self.hello = self.call("hello")
        except BaseException:
            self.stop(kill=True)
            raise

    def stop(self, *, kill: bool = False) -> None:
        """End the process: politely with ``exit``, or with SIGKILL (a crash; storage survives).

        Args:
            kill: kill instead of asking the peer to exit.
        """
        proc = self._proc
        if proc is None:
            return
        try:
            if not kill and proc.poll() is None:
                with contextlib.suppress(PeerProcessError, PeerCommandError, OSError):
                    self.call("exit", timeout=20)
            if proc.poll() is None:
                if not kill:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=5)
                if proc.poll() is None:
                    proc.kill()
            proc.wait(timeout=10)
        finally:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
            self._proc = None

    close = stop

    def stderr_tail(self, lines: int = 40) -> str:
        """Returns: the last lines the current process wrote to stderr."""
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _fail(self, what: str) -> PeerProcessError:
        return PeerProcessError(
            f"{self.name} ({self.python}): {what}\n--- stderr tail ---\n{self.stderr_tail()}"
        )

    def _read_line(self, deadline: float) -> bytes:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._fail("timed out waiting for a response")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    self._proc.wait(timeout=5)
                    raise self._fail(f"exited with status {self._proc.returncode}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    # ---------------------------------------------------------------------------------------------
    # RPC

    def call(self, cmd: str, timeout: Optional[float] = None, **args: Any) -> Any:
        """Run a command in the peer.

        Args:
            cmd: the command name (see ``peer.py``).
            timeout: seconds to wait for the response (default: the peer's timeout).
            **args: the command's arguments (JSON values).

        Returns:
            The command's result.

        Raises:
            PeerCommandError: the command failed inside the peer.
            PeerProcessError: the process died, timed out or answered garbage.
        """
        if self._proc is None or self._proc.stdin is None:
            raise self._fail(f"not running (command {cmd!r})")
        self._next_id += 1
        request_id = self._next_id
        try:
            self._proc.stdin.write(json.dumps({"id": request_id, "cmd": cmd, "args": args}).encode() + b"\n")
        except BrokenPipeError:
            raise self._fail(f"stdin closed (command {cmd!r})") from None
        line = self._read_line(time.monotonic() + (self.timeout if timeout is None else timeout))
        try:
            response = json.loads(line)
        except ValueError:
            raise self._fail(f"answered a non-JSON line: {line[:200]!r}") from None
        if response.get("id") != request_id:
            raise self._fail(f"answered id {response.get('id')!r} to request {request_id}")
        self.last_elapsed = float(response.get("elapsed", 0.0))
        events = response.get("events", {})
        self.publications.extend(events.get("publications", ()))
        self.outbox.extend(Stanza.from_wire(entry) for entry in events.get("outbox", ()))
        self.warnings.extend(events.get("warnings", ()))
        if not response["ok"]:
            raise PeerCommandError(self.name, cmd, response["error"])
        return response.get("result")

    def create(self, jid: str, backends: Sequence[str], **options: Any) -> Dict[str, Any]:
        """Create the session manager (reloading the peer's storage file if it exists).

        Args:
            jid: the account's bare JID.
            backends: backend names in priority order (``"twomemo"``, ``"oldmemo"``).
            **options: further ``create`` options of ``peer.py``.

        Returns:
            The own device information.
        """
        args = {"jid": jid, "backends": list(backends), "storage": str(self.storage_path), **options}
        own: Dict[str, Any] = self.call("create", **args)
        self._create_args = args
        self.jid = jid
        self.device_id = int(own["device_id"])
        self.backends = list(backends)
        self.namespaces = [BACKEND_NAMESPACES[name] for name in backends]
        return own

    def recreate(self) -> Dict[str, Any]:
        """Create the session manager again with the arguments of the last :meth:`create`."""
        own: Dict[str, Any] = self.call("create", **self._create_args)
        if int(own["device_id"]) != self.device_id:
            raise AssertionError(
                f"{self.name}: device id changed from {self.device_id} to {own['device_id']}"
            )
        return own

    def take_publications(self) -> List[Dict[str, Any]]:
        """Returns: (and forgets) the PEP items published since the last call."""
        items, self.publications = self.publications, []
        return items

    def take_outbox(self) -> List[Stanza]:
        """Returns: (and forgets) the automatic messages sent since the last call."""
        items, self.outbox = self.outbox, []
        return items

    def device(self, jid: str, device_id: int) -> Dict[str, Any]:
        """Returns: this peer's ``get_device_information`` entry for one device."""
        for entry in self.call("get_device_information", jid=jid):
            if entry["device_id"] == device_id:
                return dict(entry)
        raise KeyError(f"{self.name} does not know {jid}/{device_id}")


# --------------------------------------------------------------------------------------------------
# The server


class Network:
    """The XMPP server: PEP storage, PEP notifications and message delivery between peers."""

    def __init__(self, workdir: Union[str, os.PathLike[str]]) -> None:
        """Create an empty server.

        Args:
            workdir: directory for the peers' storage files and stderr logs.
        """
        self.workdir = Path(workdir)
        self.peers: List[Peer] = []
        self._spawned: List[Peer] = []
        self.device_lists: Dict[Tuple[str, str], str] = {}
        self.bundles: Dict[Tuple[str, str, int], str] = {}

    def spawn(self, python: Union[str, os.PathLike[str]], name: str, **options: Any) -> Peer:
        """Start a peer process in the network's workdir (stopped again by :meth:`close`).

        Args:
            python: the interpreter (selects the implementation).
            name: unique peer name.
            **options: further :class:`Peer` options.

        Returns:
            The started peer; :meth:`join` makes it a device.
        """
        peer = Peer(python, name, self.workdir, **options)
        self._spawned.append(peer)
        return peer

    def add(
        self,
        python: Union[str, os.PathLike[str]],
        name: str,
        jid: str,
        backends: Sequence[str],
        **options: Any,
    ) -> Peer:
        """:meth:`spawn` and :meth:`join` in one step (``options`` go to ``create``)."""
        return self.join(self.spawn(python, name), jid, backends, **options)

    def pep_items(self) -> List[Dict[str, Any]]:
        """Returns: every published item, in the peers' publication format."""
        items: List[Dict[str, Any]] = [
            {"kind": "device_list", "namespace": ns, "jid": jid, "xml": xml}
            for (ns, jid), xml in self.device_lists.items()
        ]
        items.extend(
            {"kind": "bundle", "namespace": ns, "jid": jid, "device_id": device_id, "xml": xml}
            for (ns, jid, device_id), xml in self.bundles.items()
        )
        return items

    def _apply(self, items: Iterable[Mapping[str, Any]]) -> None:
        for item in items:
            if item["kind"] == "device_list":
                self.device_lists[(item["namespace"], item["jid"])] = item["xml"]
            elif item["kind"] == "bundle":
                self.bundles[(item["namespace"], item["jid"], int(item["device_id"]))] = item["xml"]
            elif item["kind"] == "bundle_deleted":
                self.bundles.pop((item["namespace"], item["jid"], int(item["device_id"])), None)

    def join(self, peer: Peer, jid: str, backends: Sequence[str], **options: Any) -> Peer:
        """Give a fresh peer the current PEP data, create its device and publish its data.

        Like a client logging in: the PEP data is there for downloads during ``create``, and the
        device lists arrive as notifications once the session manager exists.

        Args:
            peer: the (started, not yet created) peer.
            jid: its account.
            backends: its backends in priority order.
            **options: further ``create`` options.

        Returns:
            The peer.
        """
        self._log_in(peer, lambda: peer.create(jid, backends, **options))
        self.peers.append(peer)
        self.sync()
        return peer

    def _log_in(self, peer: Peer, create: Callable[[], object]) -> None:
        peer.call("import", items=self.pep_items(), notify=False)
        create()
        # What subscribing with +notify does at login: the current item of every device list.
        items = [item for item in self.pep_items() if item["kind"] == "device_list"]
        peer.call("import", items=items, notify=True)

    def restart(self, peer: Peer, *, kill: bool = False) -> None:
        """Restart a peer from its storage file (after a polite exit, or a SIGKILL "crash").

        A peer started with the environment variable ``OMEMO_PEER_JOURNAL`` (a file) writes every
        publication there before its hook returns; what a killed peer published is taken from it.

        Args:
            peer: the peer to restart.
            kill: kill it instead of asking it to exit.
        """
        peer.stop(kill=kill)
        journal = peer._env.get("OMEMO_PEER_JOURNAL")
        if journal and os.path.exists(journal):
            with open(journal, encoding="utf-8") as f:
                peer.publications.extend(json.loads(line) for line in f if line.strip())
            os.remove(journal)
        peer.start()
        self._log_in(peer, peer.recreate)
        self.sync()

    def sync(self) -> None:
        """Store the peers' new publications and forward them to every other running peer."""
        for _ in range(50):
            moved = False
            for peer in self.peers:
                items = peer.take_publications()
                if not items:
                    continue
                moved = True
                self._apply(items)
                for other in self.peers:
                    if other is not peer and other.alive:
                        other.call("import", items=items)
            if not moved:
                return
        raise RuntimeError("publications keep coming: the device lists do not settle")

    def encrypt(
        self,
        sender: Peer,
        recipients: Iterable[str],
        plaintext: bytes,
        *,
        priority: Optional[Sequence[str]] = None,
    ) -> Tuple[List[Stanza], List[Dict[str, Any]]]:
        """Encrypt with a peer.

        Returns:
            The messages (one per namespace used) and the non-critical encryption errors.
        """
        result = sender.call(
            "encrypt",
            recipients=sorted(set(recipients)),
            plaintext=base64.b64encode(plaintext).decode("ascii"),
            priority=None if priority is None else list(priority),
        )
        self.sync()
        return [Stanza.from_wire(entry) for entry in result["messages"]], list(result["errors"])

    def send(
        self,
        sender: Peer,
        recipients: Iterable[str],
        plaintext: bytes,
        *,
        priority: Optional[Sequence[str]] = None,
    ) -> Stanza:
        """Encrypt a message that must come out as exactly one message and without errors."""
        stanzas, errors = self.encrypt(sender, recipients, plaintext, priority=priority)
        if errors or len(stanzas) != 1:
            raise AssertionError(
                f"{sender.name}: expected one message and no errors, got {stanzas} / {errors}"
            )
        return stanzas[0]

    def deliver(self, stanza: Stanza, peer: Peer) -> Decrypted:
        """Hand a message to one peer.

        Raises:
            PeerCommandError: the peer failed to decrypt it.
        """
        try:
            result = peer.call(
                "decrypt", namespace=stanza.namespace, xml=stanza.xml, sender=stanza.sender_jid
            )
        finally:
            self.sync()
        plaintext = result["plaintext"]
        return Decrypted(
            None if plaintext is None else base64.b64decode(plaintext),
            result["sender"]["jid"],
            int(result["sender"]["device_id"]),
        )

    def recipients(self, stanza: Stanza) -> List[Peer]:
        """Returns: the running peers (other than the sender) for which the message has a key."""
        return [
            peer
            for peer in self.peers
            if peer.alive
            and (peer.jid, peer.device_id) != (stanza.sender_jid, stanza.sender_device)
            and stanza.namespace in peer.namespaces
            and (stanza.to is None or peer.jid == stanza.to)
            and stanza.is_addressed_to(peer.jid, peer.device_id)
        ]

    def broadcast(self, stanza: Stanza) -> Dict[str, Decrypted]:
        """Deliver a message to every peer it has a key for (recipients and the sender's other devices).

        Returns:
            The decryption result per peer name.
        """
        return {peer.name: self.deliver(stanza, peer) for peer in self.recipients(stanza)}

    def flush_automatic(self, max_rounds: int = 10) -> List[Tuple[Stanza, str, Decrypted]]:
        """Deliver the automatic messages the peers sent, until no peer sends more.

        Returns:
            (message, receiving peer name, result) for every delivery, in order.
        """
        delivered: List[Tuple[Stanza, str, Decrypted]] = []
        for _ in range(max_rounds):
            pending = [stanza for peer in self.peers for stanza in peer.take_outbox()]
            if not pending:
                return delivered
            for stanza in pending:
                delivered.extend((stanza, name, result) for name, result in self.broadcast(stanza).items())
        raise RuntimeError(f"automatic messages still flowing after {max_rounds} rounds")

    def close(self) -> None:
        """Stop every peer started by :meth:`spawn` or joined."""
        for peer in {id(peer): peer for peer in [*self._spawned, *self.peers]}.values():
            peer.stop()


# --------------------------------------------------------------------------------------------------
# Flows


def exchange(
    net: Network,
    sender: Peer,
    receiver: Peer,
    plaintext: bytes,
    *,
    flush: bool = True,
    priority: Optional[Sequence[str]] = None,
) -> Stanza:
    """Send one message from ``sender`` to ``receiver``'s account and check every addressed device reads it.

    Args:
        net: the network.
        sender: sending device.
        receiver: a device of the recipient account; it must be among the addressed devices.
        plaintext: the message.
        flush: deliver the automatic messages afterwards.
        priority: the backend priority order for ``encrypt``.

    Returns:
        The message as sent.
    """
    stanza = net.send(sender, [receiver.jid], plaintext, priority=priority)
    results = net.broadcast(stanza)
    if receiver.name not in results:
        raise AssertionError(f"the message from {sender.name} has no key for {receiver.name}")
    for name, result in results.items():
        if result.plaintext != plaintext or (result.sender_jid, result.sender_device) != (
            sender.jid,
            sender.device_id,
        ):
            raise AssertionError(f"{name} decrypted {result} instead of {plaintext!r} from {sender.name}")
    if flush:
        net.flush_automatic()
    return stanza


def first_contact(
    net: Network, initiator: Peer, responder: Peer, plaintext: bytes = b"first contact"
) -> Stanza:
    """The initiator's first message (a key exchange) and the responder's automatic reply.

    Checks that the first message carries a key exchange, that the responder answers it with an
    automatic empty message that the initiator decrypts, and that the initiator's next message
    carries no key exchange any more (the session is confirmed).

    Returns:
        The first message.
    """
    stanza = net.send(initiator, [responder.jid], plaintext)
    if not stanza.has_key_exchange(responder.jid, responder.device_id):
        raise AssertionError(f"the first message of {initiator.name} to {responder.name} has no key exchange")
    result = net.deliver(stanza, responder)
    if result.plaintext != plaintext:
        raise AssertionError(f"{responder.name} decrypted {result.plaintext!r} instead of {plaintext!r}")
    replies = [
        s
        for s in responder.outbox
        if s.to == initiator.jid and s.is_addressed_to(initiator.jid, initiator.device_id)
    ]
    if not replies:
        raise AssertionError(f"{responder.name} sent no automatic reply to the key exchange")
    if any(reply.has_payload for reply in replies):
        raise AssertionError(f"the automatic reply of {responder.name} has a payload")
    delivered = net.flush_automatic()
    if not any(name == initiator.name and result.plaintext is None for _, name, result in delivered):
        raise AssertionError(f"the automatic reply did not reach {initiator.name}: {delivered}")
    follow_up = exchange(net, initiator, responder, plaintext + b" (follow-up)")
    if follow_up.has_key_exchange(responder.jid, responder.device_id):
        raise AssertionError(f"{initiator.name} still sends a key exchange after the automatic reply")
    return stanza


def conversation(net: Network, a: Peer, b: Peer, count: int, *, tag: str = "msg") -> None:
    """``count`` messages alternating a -> b, b -> a, ..., each read by every addressed device."""
    for i in range(count):
        sender, receiver = (a, b) if i % 2 == 0 else (b, a)
        exchange(net, sender, receiver, f"{tag} {i} from {sender.name}".encode())


def burst(net: Network, sender: Peer, receiver: Peer, count: int, *, tag: str = "burst") -> List[int]:
    """``count`` messages one way, holding back automatic messages until the end.

    Returns:
        The 0-based indices of the messages after which the receiver sent automatic messages to
        the sender's account (e.g. staleness prevention); all held messages are delivered at the end.
    """
    triggered: List[int] = []
    held: List[Stanza] = []
    for i in range(count):
        exchange(net, sender, receiver, f"{tag} {i} from {sender.name}".encode(), flush=False)
        sent = receiver.take_outbox()
        if any(stanza.to == sender.jid for stanza in sent):
            triggered.append(i)
        held.extend(sent)
    receiver.outbox[:0] = held
    net.flush_automatic()
    return triggered
