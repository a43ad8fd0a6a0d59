"""Interop of our OMEMO stack with the reference python-omemo stack (2.1.0), over XML only.

Every scenario runs in both namespaces (``urn:xmpp:omemo:2`` via twomemo, and
``eu.siacs.conversations.axolotl`` via oldmemo) and with each implementation as the initiator:
``alice`` always starts, and is ours in ``ours-first`` and the reference in ``reference-first``.

Our side runs under ``our_python`` (the interpreter running pytest). To check the scenarios
themselves reference-against-reference, point ``OMEMO_INTEROP_OURS_PYTHON`` at the reference
interpreter (``python tests/interop/refenv.py`` prints it), e.g.::

    OMEMO_INTEROP_OURS_PYTHON=~/.cache/omemo-stack/reference/bin/python \\
        .venv/bin/python -m pytest tests/interop -m interop
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pytest

from .harness import (
    NS_OLDMEMO,
    NS_TWOMEMO,
    OURS_OVERRIDE_VARIABLE,
    Network,
    Peer,
    PeerCommandError,
    Stanza,
    burst,
    conversation,
    exchange,
    first_contact,
    tamper,
)

pytestmark = pytest.mark.interop

ALICE = "alice@example.org"
BOB = "bob@example.org"

# A receiving chain longer than this makes the receiver send an empty message (staleness
# prevention, python-omemo's STALENESS_MAGIC_NUMBER).
STALENESS_LIMIT = 53


@dataclass(frozen=True)
class Pair:
    """Two devices on two accounts; ``alice`` initiates."""

    network: Network
    alice: Peer
    bob: Peer


def _check_implementations(ours: Peer, reference: Peer) -> None:
    assert reference.hello["omemo"]["version"] == "2.1.0", reference.hello
    if not os.environ.get(OURS_OVERRIDE_VARIABLE):
        # Guard against silently testing the reference against itself.
        assert ours.hello["omemo"]["file"] != reference.hello["omemo"]["file"], (ours.hello, reference.hello)


@pytest.fixture(params=["twomemo", "oldmemo"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


SIDES = ["ours-first", "reference-first"]


def _make_pair(
    network: Network,
    our_python: Path,
    reference_python: Path,
    backends: Sequence[str],
    side: str,
    **options: Any,
) -> Pair:
    """alice (the initiator) is ours for ``ours-first``; ``options`` go to bob's ``create``."""
    if side == "ours-first":
        alice = network.add(our_python, "alice-ours", ALICE, backends)
        bob = network.add(reference_python, "bob-reference", BOB, backends, **options)
        _check_implementations(alice, bob)
    else:
        alice = network.add(reference_python, "alice-reference", ALICE, backends)
        bob = network.add(our_python, "bob-ours", BOB, backends, **options)
        _check_implementations(bob, alice)
    return Pair(network, alice, bob)


@pytest.fixture(params=SIDES)
def pair(
    network: Network, our_python: Path, reference_python: Path, backend: str, request: pytest.FixtureRequest
) -> Pair:
    return _make_pair(network, our_python, reference_python, [backend], request.param)


def _rejected(
    net: Network, stanza: Stanza, peer: Peer, expected: str = "DecryptionFailed"
) -> PeerCommandError:
    """Deliver a message that must be rejected with the backend error ``expected``."""
    with pytest.raises(PeerCommandError) as info:
        net.deliver(stanza, peer)
    error = info.value
    assert error.command == "decrypt"
    assert error.is_a(expected), f"{error} is not {expected}:\n{error.remote_traceback}"
    return error


def test_first_contact(pair: Pair) -> None:
    net, alice, bob = pair.network, pair.alice, pair.bob
    first_contact(net, alice, bob)
    reply = exchange(net, bob, alice, b"bob's first message")
    assert not reply.has_key_exchange(alice.jid, alice.device_id)
    assert reply.has_payload
    # Each side sees the other's identity key (and fingerprint) exactly as the owner reports it.
    for viewer, owner in [(alice, bob), (bob, alice)]:
        seen = viewer.device(owner.jid, owner.device_id)
        own = owner.call("get_own_device_information")["own"]
        assert (seen["identity_key"], seen["fingerprint"]) == (own["identity_key"], own["fingerprint"])
        assert seen["trust_level_name"] == "trusted"


def test_long_conversation_and_staleness(pair: Pair) -> None:
    net, alice, bob = pair.network, pair.alice, pair.bob
    first_contact(net, alice, bob)
    conversation(net, alice, bob, 200)

    # bob spoke last, so alice's burst starts a new chain: message i leaves bob with a receiving
    # chain of length i + 1, and the first one past the limit makes bob send an empty message.
    triggered = burst(net, alice, bob, 60)
    assert triggered, "no staleness-prevention message during a one-way burst of 60"
    assert triggered[0] == STALENESS_LIMIT, triggered

    exchange(net, alice, bob, b"alice again")
    triggered = burst(net, bob, alice, 60)
    assert triggered and triggered[0] == STALENESS_LIMIT, triggered

    conversation(net, alice, bob, 10, tag="after the bursts")


def test_out_of_order_and_lost_messages(pair: Pair) -> None:
    net, alice, bob = pair.network, pair.alice, pair.bob
    first_contact(net, alice, bob)

    messages = [net.send(alice, [bob.jid], f"ooo {i}".encode()) for i in range(12)]
    # messages 2 and 7 are lost (never delivered);
    late = {4, 10}  # delivered after the conversation has moved on
    for i in [11, 3, 0, 5, 1, 9, 8, 6]:
        assert net.deliver(messages[i], bob).plaintext == f"ooo {i}".encode()
    net.flush_automatic()
    exchange(net, bob, alice, b"bob answers")

    # Messages from two different sending chains of alice, interleaved.
    chain_1 = [net.send(alice, [bob.jid], f"chain 1 #{i}".encode()) for i in range(3)]
    exchange(net, bob, alice, b"bob again, before reading chain 1")
    chain_2 = [net.send(alice, [bob.jid], f"chain 2 #{i}".encode()) for i in range(3)]
    for stanza, text in [
        (chain_2[2], b"chain 2 #2"),
        (chain_1[1], b"chain 1 #1"),
        (chain_2[0], b"chain 2 #0"),
        (chain_1[2], b"chain 1 #2"),
        (chain_1[0], b"chain 1 #0"),
        (chain_2[1], b"chain 2 #1"),
    ]:
        assert net.deliver(stanza, bob).plaintext == text
    net.flush_automatic()

    for i in sorted(late):
        assert net.deliver(messages[i], bob).plaintext == f"ooo {i}".encode()
    conversation(net, bob, alice, 6, tag="after the reordering")


def test_replay_and_tampering_are_rejected(pair: Pair) -> None:
    net, alice, bob = pair.network, pair.alice, pair.bob
    first = net.send(alice, [bob.jid], b"first")
    assert net.deliver(first, bob).plaintext == b"first"
    net.flush_automatic()
    _rejected(net, first, bob)  # replay of the key exchange message

    conversation(net, alice, bob, 4)
    for sender, receiver in [(alice, bob), (bob, alice)]:
        stanza = net.send(sender, [receiver.jid], b"genuine")
        # Bit flips that keep the structure parseable: the last byte (in the MAC for both
        # namespaces) and byte 10 (in the MAC for omemo:2, in the ratchet key for legacy OMEMO).
        for byte in (-1, 10):
            key_tampered = tamper(stanza, "key", jid=receiver.jid, device_id=receiver.device_id, byte=byte)
            _rejected(net, key_tampered, receiver)
        _rejected(net, tamper(stanza, "payload"), receiver)
        _rejected(net, tamper(stanza, "payload", byte=0, bit=7), receiver)
        # The failed attempts left the session untouched: the genuine message still decrypts ...
        assert net.deliver(stanza, receiver).plaintext == b"genuine"
        # ... but only once.
        _rejected(net, stanza, receiver)
        net.flush_automatic()
        conversation(net, receiver, sender, 4, tag=f"after tampering with {sender.name}'s message")


def test_restart_from_storage_mid_conversation(pair: Pair) -> None:
    net, alice, bob = pair.network, pair.alice, pair.bob

    # bob dies right after answering the key exchange, his automatic reply still undelivered.
    first = net.send(alice, [bob.jid], b"first")
    assert net.deliver(first, bob).plaintext == b"first"
    assert bob.outbox
    net.restart(bob, kill=True)
    net.flush_automatic()
    conversation(net, alice, bob, 10)

    # Messages in flight both ways while each side restarts (one killed, one stopped politely).
    to_bob = [net.send(alice, [bob.jid], f"to bob {i}".encode()) for i in range(3)]
    to_alice = [net.send(bob, [alice.jid], f"to alice {i}".encode()) for i in range(3)]
    net.restart(alice, kill=True)
    net.restart(bob)
    for i in (2, 0, 1):
        assert net.deliver(to_bob[i], bob).plaintext == f"to bob {i}".encode()
        assert net.deliver(to_alice[i], alice).plaintext == f"to alice {i}".encode()
    net.flush_automatic()
    conversation(net, bob, alice, 10, tag="after the restarts")

    net.restart(alice)
    net.restart(bob, kill=True)
    burst(net, alice, bob, 5)
    conversation(net, alice, bob, 4, tag="after the second restarts")


def test_repeated_key_exchanges(pair: Pair) -> None:
    net, alice, bob = pair.network, pair.alice, pair.bob
    first_contact(net, alice, bob)
    conversation(net, alice, bob, 6)
    for round_ in range(4):
        replacer, other = (alice, bob) if round_ % 2 == 0 else (bob, alice)
        assert replacer.call("replace_sessions", jid=other.jid, device_id=other.device_id) == {}
        notices = [s for s in replacer.outbox if s.to == other.jid]
        assert len(notices) == 1, replacer.outbox
        assert notices[0].has_key_exchange(other.jid, other.device_id)
        assert not notices[0].has_payload
        delivered = net.flush_automatic()
        # The notice reaches the other side and its automatic answer comes back.
        assert any(name == other.name and result.plaintext is None for _, name, result in delivered), (
            delivered
        )
        assert any(name == replacer.name and result.plaintext is None for _, name, result in delivered), (
            delivered
        )
        stanza = exchange(net, replacer, other, f"round {round_} from the replacer".encode())
        assert not stanza.has_key_exchange(other.jid, other.device_id)
        conversation(net, other, replacer, 4, tag=f"round {round_}")


@pytest.mark.parametrize("bob_side", ["bob-ours", "bob-reference"])
def test_multi_device_account(
    network: Network, our_python: Path, reference_python: Path, backend: str, bob_side: str
) -> None:
    net = network
    alice_ref = net.add(reference_python, "alice-reference", ALICE, [backend])
    alice_ours = net.add(our_python, "alice-ours", ALICE, [backend])
    bob_python = our_python if bob_side == "bob-ours" else reference_python
    bob = net.add(bob_python, bob_side, BOB, [backend])
    _check_implementations(alice_ours, alice_ref)

    # Both alice devices know each other (own device list merged on the server).
    assert {d["device_id"] for d in alice_ours.call("get_own_device_information")["others"]} == {
        alice_ref.device_id
    }
    assert {d["device_id"] for d in alice_ref.call("get_own_device_information")["others"]} == {
        alice_ours.device_id
    }
    assert {d["device_id"] for d in bob.call("get_device_information", jid=ALICE)} == {
        alice_ref.device_id,
        alice_ours.device_id,
    }

    for round_ in range(3):
        # bob -> alice: one message with a key for each alice device; both must read it.
        stanza = net.send(bob, [ALICE], f"to both alices {round_}".encode())
        results = net.broadcast(stanza)
        assert set(results) == {alice_ref.name, alice_ours.name}, results
        assert {r.plaintext for r in results.values()} == {f"to both alices {round_}".encode()}
        net.flush_automatic()

        # Each alice device -> bob; the other alice device gets its copy (carbon) as well.
        for sender, sibling in [(alice_ours, alice_ref), (alice_ref, alice_ours)]:
            text = f"from {sender.name} {round_}".encode()
            stanza = net.send(sender, [BOB], text)
            results = net.broadcast(stanza)
            assert set(results) == {bob.name, sibling.name}, results
            assert all(r.plaintext == text for r in results.values())
            assert all((r.sender_jid, r.sender_device) == (ALICE, sender.device_id) for r in results.values())
            net.flush_automatic()

    for peer in (alice_ref, alice_ours, bob):
        assert not peer.warnings, (peer.name, peer.warnings)


@pytest.mark.parametrize("side", SIDES)
def test_skipped_message_key_limits(
    network: Network, our_python: Path, reference_python: Path, backend: str, side: str
) -> None:
    # bob (the receiver) keeps at most 10 skipped message keys per session (and per message).
    pair = _make_pair(network, our_python, reference_python, [backend], side, max_skipped_per_session=10)
    net, alice, bob = pair.network, pair.alice, pair.bob
    first_contact(net, alice, bob)
    # bob has read one message of alice's current chain, so messages[i] would skip i keys.
    messages = [net.send(alice, [bob.jid], f"m{i}".encode()) for i in range(14)]

    def read(i: int) -> None:
        assert net.deliver(messages[i], bob).plaintext == f"m{i}".encode()

    # The documented TooManySkippedMessageKeys from ours; the reference wraps it (PROTOCOL.md 6.9).
    too_many = "TooManySkippedMessageKeys" if bob.name.endswith("-ours") else "DecryptionFailed"
    _rejected(net, messages[11], bob, too_many)  # 11 keys to skip > 10
    read(10)  # exactly 10: allowed; bob now stores the keys of messages 0..9
    read(13)  # skips 11 and 12: 12 stored keys > 10, the two oldest (0 and 1) are dropped
    _rejected(net, messages[0], bob)
    _rejected(net, messages[1], bob)
    for i in (12, 2, 9, 11, 3, 4, 5, 6, 7, 8):
        read(i)
    net.flush_automatic()
    conversation(net, bob, alice, 4, tag="after the skipped keys")


@pytest.mark.parametrize("side", SIDES)
def test_both_backends_loaded(network: Network, our_python: Path, reference_python: Path, side: str) -> None:
    pair = _make_pair(network, our_python, reference_python, ["twomemo", "oldmemo"], side)
    net, alice, bob = pair.network, pair.alice, pair.bob
    for viewer, owner in [(alice, bob), (bob, alice)]:
        seen = viewer.device(owner.jid, owner.device_id)
        assert seen["namespaces"] == sorted([NS_TWOMEMO, NS_OLDMEMO])
        assert seen["active"] == {NS_TWOMEMO: True, NS_OLDMEMO: True}

    # Without a priority order the first loaded backend wins; with one, its first namespace.
    assert exchange(net, alice, bob, b"default order").namespace == NS_TWOMEMO
    legacy_first = [NS_OLDMEMO, NS_TWOMEMO]
    assert exchange(net, alice, bob, b"legacy first", priority=legacy_first).namespace == NS_OLDMEMO
    for i in range(3):
        for sender, receiver in [(bob, alice), (alice, bob)]:
            assert exchange(net, sender, receiver, f"omemo:2 #{i}".encode()).namespace == NS_TWOMEMO
            text = f"legacy #{i}".encode()
            assert exchange(net, sender, receiver, text, priority=legacy_first).namespace == NS_OLDMEMO
    for peer in (alice, bob):
        other = bob if peer is alice else alice
        lengths = peer.call("get_sending_chain_length", jid=other.jid, device_id=other.device_id)
        # A session in each namespace (None would mean none).
        assert set(lengths) == {NS_TWOMEMO, NS_OLDMEMO}, lengths
        assert all(isinstance(length, int) for length in lengths.values()), lengths


@pytest.mark.parametrize("side", SIDES)
def test_history_sync_defers_the_automatic_reply(
    network: Network, our_python: Path, reference_python: Path, backend: str, side: str
) -> None:
    pair = _make_pair(network, our_python, reference_python, [backend], side, stay_in_history_sync=True)
    net, alice, bob = pair.network, pair.alice, pair.bob
    catch_up = [net.send(alice, [bob.jid], f"while bob was offline {i}".encode()) for i in range(3)]
    assert all(stanza.has_key_exchange(bob.jid, bob.device_id) for stanza in catch_up)
    for i, stanza in enumerate(catch_up):
        assert net.deliver(stanza, bob).plaintext == f"while bob was offline {i}".encode()
    assert not bob.outbox, "automatic replies must wait for the end of the history synchronisation"

    bob.call("after_history_sync")
    notices = bob.take_outbox()
    assert len(notices) == 1 and notices[0].to == alice.jid and not notices[0].has_payload, notices
    assert net.deliver(notices[0], alice).plaintext is None
    stanza = exchange(net, alice, bob, b"live again")
    assert not stanza.has_key_exchange(bob.jid, bob.device_id)
    conversation(net, bob, alice, 4, tag="after the history sync")


def test_a_reference_device_that_stops_answering_goes_stale_here_and_comes_back(
    network: Network, our_python: Path, reference_python: Path, backend: str
) -> None:
    # Ours (with a threshold of 100 instead of 2,000) writes to the reference's device, which reads
    # nothing: after 100 unanswered messages it is not encrypted for any more. It writes again (without
    # having read them) and is encrypted for at once, and reads the next message.
    alice = network.add(our_python, "alice-ours", ALICE, [backend], stale_device_messages=100)
    bob = network.add(reference_python, "bob-reference", BOB, [backend])
    first_contact(network, alice, bob)
    exchange(network, bob, alice, b"bob answers")
    for i in range(100):
        alice.call("encrypt", recipients=[BOB], plaintext=base64.b64encode(b"%d" % i).decode())
    with pytest.raises(PeerCommandError) as info:
        alice.call("encrypt", recipients=[BOB], plaintext=base64.b64encode(b"stale").decode())
    assert info.value.is_a("NoEligibleDevices") and "StaleDevice" in str(info.value)
    exchange(network, bob, alice, b"bob is back")
    exchange(network, alice, bob, b"welcome back")  # checks that Bob's device reads it
