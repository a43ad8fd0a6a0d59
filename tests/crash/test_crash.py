"""Crash safety, proven by killing: OMEMO traffic between two accounts in child processes (the interop
harness's peers, our stack, on SQLiteStorage or PostgreSQLStorage), one of them killed with SIGKILL at a
random moment of a decryption or an encryption, again and again.

After every kill the killed account restarts from its storage, and:

- it loads (same device);
- the message whose decryption was cut decrypts on redelivery to the same text, or, if the decryption
  had committed, is refused as a duplicate: never decrypted into another text;
- a cut encryption leaves a working session: the next message in that direction is read;
- the session goes on in both directions without a new key exchange.

``OMEMO_CRASH_KILLS`` sets the kills per storage (default 30 in the test suite; docs/storage.md has a run
with 200) and ``OMEMO_CRASH_SEED`` the random seed.
"""

from __future__ import annotations

import base64
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from interop.harness import Network, Peer, PeerCommandError, PeerProcessError, exchange, first_contact

ALICE, BOB = "alice@example.org", "bob@example.org"
KILLS = int(os.environ.get("OMEMO_CRASH_KILLS", "30"))
SEED = int(os.environ.get("OMEMO_CRASH_SEED", "20261207"))
#: Figures of the runs, for the summary printed at the end of the module.
FIGURES: Dict[str, Dict[str, int]] = {}


@pytest.fixture(scope="module")
def durable_postgres() -> Iterator[Any]:
    from postgres.server import start_postgres_or_skip

    server = start_postgres_or_skip(durable=True)
    try:
        yield server
    finally:
        server.close()


def _killed_during(peer: Peer, action: Callable[[], Any], delay: float) -> Optional[Any]:
    """Runs ``action`` (a command of ``peer``) and SIGKILLs the peer after ``delay`` seconds.

    Returns:
        The action's result if it finished before the kill, else None.
    """
    outcome: Dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = action()
        except (
            PeerProcessError,
            PeerCommandError,
        ) as exc:  # killed mid-command (or a failure, checked below)
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(delay)
    process = peer._proc  # the harness's process handle: a crash is a SIGKILL of it
    if process is not None and process.poll() is None:
        process.kill()
    worker.join(60)
    error = outcome.get("error")
    if isinstance(error, PeerCommandError):
        raise error  # a real failure inside the command, not the kill
    return outcome.get("result")


def _device(
    network: Network, name: str, jid: str, backends: List[str], storage: Optional[str] = None
) -> Peer:
    """A peer of our stack that journals its publications (what a killed peer published is not lost,
    as with a server that acknowledged it)."""
    journal = str(network.workdir / f"{name}.journal")
    peer = network.spawn(sys.executable, name, env={"OMEMO_PEER_JOURNAL": journal})
    options = {} if storage is None else {"storage": storage}
    return network.join(peer, jid, backends, **options)


def _run(network: Network, storages: Dict[str, str], label: str, kills: int) -> Dict[str, int]:
    alice = _device(network, "alice", ALICE, ["twomemo", "oldmemo"], storages["alice"])
    bob = _device(network, "bob", BOB, ["twomemo", "oldmemo"], storages["bob"])
    first_contact(network, alice, bob)
    exchange(network, bob, alice, b"bob answers")
    rng = random.Random(f"{SEED}-{label}")
    figures = {"kills": 0, "mid_command": 0, "messages": 0, "redelivered_decrypted": 0, "duplicates": 0}
    for round_ in range(kills):
        victim, other = (alice, bob) if rng.random() < 0.5 else (bob, alice)
        text = f"round {round_}: {'x' * rng.randrange(0, 200)}".encode()
        # A command takes a millisecond or two here: most kills land inside it, some just after.
        delay = rng.uniform(0.0, 0.0015) if rng.random() < 0.7 else rng.uniform(0.0015, 0.006)
        if rng.random() < 0.6:
            # Cut a decryption; then the same message again.
            stanza = network.send(other, [victim.jid], text)

            def decrypt(stanza: Any = stanza, peer: Peer = victim) -> Any:
                return network.deliver(stanza, peer)

            result = _killed_during(victim, decrypt, delay)
            figures["mid_command"] += result is None
            network.restart(victim, kill=True)
            try:
                again = network.deliver(stanza, victim)
            except PeerCommandError as exc:
                assert exc.is_a("DuplicateMessage"), f"round {round_}: {exc}"
                figures["duplicates"] += 1
            else:
                assert again.plaintext == text, f"round {round_}: decrypted {again.plaintext!r} instead"
                figures["redelivered_decrypted"] += 1
            network.flush_automatic()
        else:
            # Cut an encryption (its message is lost); the next message that way is read.

            def encrypt(peer: Peer = victim, to: Peer = other, body: bytes = text) -> Any:
                return network.send(peer, [to.jid], body)

            result = _killed_during(victim, encrypt, delay)
            figures["mid_command"] += result is None
            network.restart(victim, kill=True)
        figures["kills"] += 1
        for sender, receiver in ((victim, other), (other, victim)):
            sent = exchange(network, sender, receiver, f"after round {round_}".encode())
            assert not sent.has_key_exchange(receiver.jid, receiver.device_id), (
                f"round {round_}: a new key exchange"
            )
            figures["messages"] += 1
    FIGURES[label] = figures
    return figures


def test_sqlite_survives_kills(tmp_path: Path) -> None:
    network = Network(tmp_path)
    try:
        storages = {name: f"sqlite:{tmp_path / name}.db" for name in ("alice", "bob")}
        figures = _run(network, storages, "SQLiteStorage", KILLS)
    finally:
        network.close()
    assert figures["kills"] == KILLS


def test_postgresql_survives_kills(tmp_path: Path, durable_postgres: Any) -> None:
    network = Network(tmp_path)
    try:
        storages = {name: f"postgres:{durable_postgres.dsn}#{name}@example.org" for name in ("alice", "bob")}
        figures = _run(network, storages, "PostgreSQLStorage", KILLS)
    finally:
        network.close()
    assert figures["kills"] == KILLS


def _pre_key_of(stanza: Any, jid: str, device_id: int) -> int:
    """The pre key id the OMEMO 2 key exchange of ``stanza`` for that device uses."""
    import base64

    from omemo_engine.wire import OMEMO2_WIRE

    key = stanza._key(jid, device_id)
    assert key is not None and key.get("kex") in ("true", "1")
    fields, _ = OMEMO2_WIRE.parse_key_exchange(base64.b64decode(key.text or ""))
    return int(fields.pre_key_id)


def _published_pre_keys(network: Network, peer: Peer) -> List[int]:
    import xml.etree.ElementTree as ET

    root = ET.fromstring(network.bundles[("urn:xmpp:omemo:2", peer.jid, peer.device_id)])
    return [int(pk.get("id", "-1")) for pk in root.iter("{urn:xmpp:omemo:2}pk")]


@pytest.mark.parametrize("storage", ["sqlite", "postgres"])
def test_a_pre_key_is_never_handed_out_twice(
    tmp_path: Path, storage: str, request: pytest.FixtureRequest
) -> None:
    # Bob is killed while he decrypts first contacts (each uses one of his pre keys). Whether the
    # decryption committed or not: a committed pre key is gone from his published bundle, and a pre key
    # still published lets the message decrypt on redelivery.
    network = Network(tmp_path)
    rng = random.Random(f"{SEED}-pre-keys-{storage}")
    try:
        if storage == "postgres":
            dsn = request.getfixturevalue("durable_postgres").dsn
            spec = f"postgres:{dsn}#prekeys-bob@example.org"
        else:
            spec = f"sqlite:{tmp_path / 'bob.db'}"
        bob = _device(network, "bob", BOB, ["twomemo"], spec)
        used: List[int] = []
        for round_ in range(max(3, KILLS // 6)):
            alice = network.add(sys.executable, f"alice{round_}", f"alice{round_}@example.org", ["twomemo"])
            text = f"first contact {round_}".encode()
            stanza = network.send(alice, [bob.jid], text)
            pre_key = _pre_key_of(stanza, bob.jid, bob.device_id)
            assert pre_key not in used, f"round {round_}: pre key {pre_key} handed out again"

            def decrypt(stanza: Any = stanza) -> Any:
                return network.deliver(stanza, bob)

            _killed_during(bob, decrypt, rng.uniform(0.0, 0.004))
            network.restart(bob, kill=True)
            published = _published_pre_keys(network, bob)
            try:
                again = network.deliver(stanza, bob)
            except PeerCommandError as exc:
                assert exc.is_a("DuplicateMessage"), exc
                assert pre_key not in published, f"round {round_}: used pre key {pre_key} still published"
            else:
                assert again.plaintext == text
            network.sync()
            assert pre_key not in _published_pre_keys(network, bob)
            used.append(pre_key)
            network.flush_automatic()
            alice.stop()
    finally:
        network.close()


@pytest.mark.parametrize("storage", ["sqlite", "postgres"])
def test_the_handover_is_exactly_once(tmp_path: Path, storage: str, request: pytest.FixtureRequest) -> None:
    # A gateway hands every decrypted text to its own table, in the decryption's transaction. Killed at
    # random moments: afterwards the text is stored and the message refused as a duplicate, or neither
    # and the message decrypts (and is stored) on redelivery. Never stored without the ratchet moving on,
    # never decrypted twice.
    network = Network(tmp_path)
    rng = random.Random(f"{SEED}-handover-{storage}")
    try:
        if storage == "postgres":
            dsn = request.getfixturevalue("durable_postgres").dsn
            spec = f"postgres:{dsn}#handover-bob@example.org"
        else:
            spec = f"sqlite:{tmp_path / 'bob.db'}"
        alice = _device(network, "alice", ALICE, ["twomemo"])
        bob = _device(network, "bob", BOB, ["twomemo"], spec)
        first_contact(network, alice, bob)
        outcomes = {"both": 0, "neither": 0}
        for round_ in range(max(5, KILLS // 2)):
            text = f"handed over {round_}".encode()
            stanza = network.send(alice, [bob.jid], text)
            key = f"/gateway/inbox/{round_}"

            def decrypt(stanza: Any = stanza, key: str = key) -> Any:
                return bob.call(
                    "decrypt",
                    namespace=stanza.namespace,
                    xml=stanza.xml,
                    sender=stanza.sender_jid,
                    handover=key,
                )

            _killed_during(bob, decrypt, rng.uniform(0.0, 0.003))
            network.restart(bob, kill=True)
            stored = bob.call("stored", key=key)
            if stored is not None:
                assert base64.b64decode(stored) == text
                with pytest.raises(PeerCommandError) as refused:
                    bob.call(
                        "decrypt",
                        namespace=stanza.namespace,
                        xml=stanza.xml,
                        sender=stanza.sender_jid,
                        handover=key,
                    )
                assert refused.value.is_a("DuplicateMessage")
                outcomes["both"] += 1
            else:
                result = bob.call(
                    "decrypt",
                    namespace=stanza.namespace,
                    xml=stanza.xml,
                    sender=stanza.sender_jid,
                    handover=key,
                )
                assert base64.b64decode(result["plaintext"]) == text
                assert base64.b64decode(bob.call("stored", key=key)) == text
                outcomes["neither"] += 1
            network.sync()
            network.flush_automatic()
        FIGURES[f"handover on {storage}"] = outcomes
    finally:
        network.close()


def test_figures(capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        for label, figures in FIGURES.items():
            print(
                f"\ncrash harness, {label}: "
                + ", ".join(f"{k} {v}" for k, v in figures.items())
                + ", failures 0"
            )
