"""Self-check of the interop harness: reference against reference, in both namespaces.

Needs only the reference venv (not our packages), so it shows the harness itself works: first
contact with the automatic reply, a conversation, and a restart from storage mid-conversation.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import Network, conversation, exchange, first_contact

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("backend", ["twomemo", "oldmemo"])
def test_reference_against_reference(network: Network, reference_python: Path, backend: str) -> None:
    alice = network.add(reference_python, "alice", "alice@example.org", [backend])
    bob = network.add(reference_python, "bob", "bob@example.org", [backend])
    assert alice.hello["omemo"]["version"] == "2.1.0"
    assert (
        bob.device(alice.jid, alice.device_id)["identity_key"]
        == alice.call("get_own_device_information")["own"]["identity_key"]
    )

    first_contact(network, alice, bob)
    conversation(network, alice, bob, 20)

    # A message in flight while bob restarts (killed: nothing but his storage file survives).
    in_flight = network.send(alice, [bob.jid], b"sent while bob was down")
    network.restart(bob, kill=True)
    assert network.deliver(in_flight, bob).plaintext == b"sent while bob was down"
    network.flush_automatic()
    conversation(network, alice, bob, 6, tag="after bob's restart")

    network.restart(alice)
    conversation(network, bob, alice, 6, tag="after alice's restart")
    exchange(network, alice, bob, b"done")
    assert not alice.warnings and not bob.warnings
