"""Fuzz harness of the engine's decoders.

Invariant: bytes from the network or from storage fed to any decoder either parse or raise a
subclass of :class:`~omemo_engine.errors.EngineError`, never anything else (no IndexError,
struct.error, protobuf DecodeError, ...). A rejected ratchet message leaves the session state as it
was (checked through ``to_bytes``), and the next genuine message still decrypts.

Decoders: ``wire.open`` and ``parse_key_exchange`` of both namespaces, ``RatchetState.from_bytes``,
and ``ratchet.decrypt`` of both namespaces on a live session. Inputs:

- whole random inputs (uniform bytes; bytes with a plausible first byte; protobuf-looking bytes);
- byte-by-byte mutations of valid inputs: every position set to 0x00 / 0xff / flipped in its low and
  high bit, every truncation, and one inserted and one deleted byte at every position.

Everything is seeded, so a failure reproduces. The default run is bounded to a few seconds; set
``OMEMO_FUZZ_ITERATIONS`` (random inputs per decoder, default 300) for a longer campaign.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator

import pytest

from omemo_engine.errors import EngineError
from omemo_engine.profile import LEGACY, OMEMO2, Profile
from omemo_engine.ratchet import RatchetState

from .helpers import (
    DEFAULT_LIMIT,
    PROFILES,
    DeviceKeys,
    SessionPair,
    open_session,
    receive_key_exchange,
    seeded_rng,
    send_key_exchange,
)

ITERATIONS = int(os.environ.get("OMEMO_FUZZ_ITERATIONS", "300"))

Decoder = Callable[[bytes], object]


def check(decoder: Decoder, data: bytes) -> bool:
    """Run ``decoder``; True if it parsed, False if it raised an engine error. Anything else escapes."""
    try:
        decoder(data)
    except EngineError:
        return False
    return True


def random_inputs(rnd: random.Random, count: int) -> Iterator[bytes]:
    """Random byte strings of several shapes, up to 300 bytes."""
    for i in range(count):
        size = rnd.choice((0, 1, 2, 8, 33, 64, 100, 300)) if i % 2 else rnd.randrange(0, 300)
        data = rnd.randbytes(size)
        if data and i % 3 == 0:
            # A plausible legacy version byte or protobuf tag, so that parsing gets further.
            data = bytes((rnd.choice((0x33, 0x34, 0x0A, 0x08, 0x12)),)) + data[1:]
        yield data


def mutations(data: bytes) -> Iterator[bytes]:
    """Byte-by-byte mutations of ``data`` (never ``data`` itself)."""
    for i in range(len(data)):
        for value in {0x00, 0xFF, data[i] ^ 0x01, data[i] ^ 0x80} - {data[i]}:
            yield data[:i] + bytes((value,)) + data[i + 1 :]
        yield data[:i]
        yield data[:i] + data[i + 1 :]
        yield data[:i] + b"\x00" + data[i:]
    yield data + b"\x00"


def wire_decoders() -> dict[str, Decoder]:
    decoders: dict[str, Decoder] = {"RatchetState.from_bytes": RatchetState.from_bytes}
    for name, profile in PROFILES.items():
        decoders[f"{name} open"] = profile.wire.open
        decoders[f"{name} parse_key_exchange"] = profile.wire.parse_key_exchange
    return decoders


def samples(profile: Profile) -> tuple[SessionPair, list[bytes]]:
    """A live session and valid inputs of every kind for ``profile``."""
    pair = open_session(profile, f"fuzz-{profile.name}")
    same_chain = pair.send("alice", b"k" * 48)
    ratchet_step = pair.send("bob", b"k" * 32)
    rng = seeded_rng("fuzz-kex")
    _state, kex = send_key_exchange(
        profile, DeviceKeys.generate(rng), DeviceKeys.generate(rng), b"k" * 48, rng
    )
    return pair, [same_chain, ratchet_step, kex, pair.alice.to_bytes(), pair.bob.to_bytes()]


@pytest.mark.parametrize("name", list(wire_decoders()))
def test_random_bytes_at_the_codecs(name: str) -> None:
    decoder = wire_decoders()[name]
    rnd = random.Random(f"codec-{name}")
    for data in random_inputs(rnd, ITERATIONS * 4):
        check(decoder, data)


def test_random_records_with_a_valid_version() -> None:
    rnd = random.Random("records")
    for data in random_inputs(rnd, ITERATIONS * 4):
        check(RatchetState.from_bytes, b"\x01" + data)
        check(RatchetState.from_bytes, b"\x01" + bytes((rnd.randrange(16), rnd.choice((64, 66)))) + data)


@pytest.mark.parametrize("profile", PROFILES.values(), ids=PROFILES.keys())
def test_mutated_inputs_at_the_codecs(profile: Profile) -> None:
    _pair, valid = samples(profile)
    decoders = wire_decoders()
    for data in valid:
        assert any(check(decoder, data) for decoder in decoders.values())
        for mutated in mutations(data):
            for decoder in decoders.values():
                check(decoder, mutated)


def decrypt_at(pair: SessionPair, receiver: str) -> Decoder:
    def decode(data: bytes) -> object:
        before = pair.states[receiver].to_bytes()
        try:
            return pair.decrypt(receiver, data)
        finally:
            assert pair.states[receiver].to_bytes() == before

    return decode


@pytest.mark.parametrize("profile", PROFILES.values(), ids=PROFILES.keys())
def test_random_bytes_at_decrypt(profile: Profile) -> None:
    pair, _valid = samples(profile)
    rnd = random.Random(f"decrypt-{profile.name}")
    for receiver in ("alice", "bob"):
        for data in random_inputs(rnd, ITERATIONS):
            assert not check(decrypt_at(pair, receiver), data)


@pytest.mark.parametrize("profile", PROFILES.values(), ids=PROFILES.keys())
def test_mutated_messages_at_decrypt(profile: Profile) -> None:
    pair, [same_chain, ratchet_step, kex, *_records] = samples(profile)
    _fields, sealed_in_kex = profile.wire.parse_key_exchange(kex)
    accepted = []
    for receiver, message in (("bob", same_chain), ("alice", ratchet_step), ("bob", sealed_in_kex)):
        for mutated in mutations(message):
            if check(decrypt_at(pair, receiver), mutated):
                accepted.append(mutated)  # pragma: no cover - reported below
    assert accepted == []
    # The session is undamaged: the genuine messages still decrypt.
    assert pair.receive("bob", same_chain) == b"k" * 48
    assert pair.receive("alice", ratchet_step) == b"k" * 32


@pytest.mark.parametrize("profile", PROFILES.values(), ids=PROFILES.keys())
def test_mutated_key_exchanges_at_the_passive_side(profile: Profile) -> None:
    # The passive X3DH and the first decryption, on every byte-level mutation of a genuine key
    # exchange: an engine error, or (for the few flips that change no key, such as bit 255 of an
    # X25519 key) exactly the genuine plaintext; never a different plaintext, never another error.
    rng = seeded_rng("fuzz-passive")
    alice, bob = DeviceKeys.generate(rng), DeviceKeys.generate(rng)
    _state, kex = send_key_exchange(profile, alice, bob, b"k" * 48, rng)
    assert receive_key_exchange(profile, bob, alice.identity_key, kex, rng)[1] == b"k" * 48
    for mutated in mutations(kex):
        try:
            _state, plaintext = receive_key_exchange(profile, bob, alice.identity_key, mutated, rng)
        except EngineError:
            continue
        assert plaintext == b"k" * 48


def test_decrypt_with_fuzzed_limits() -> None:
    # Extreme but valid limits never turn a rejection into something other than an engine error.
    rnd = random.Random("limits")
    for profile in (OMEMO2, LEGACY):
        pair, [same_chain, ratchet_step, *_rest] = samples(profile)
        for _ in range(50):
            pair.max_skipped_per_session = rnd.choice((0, 1, 5, DEFAULT_LIMIT, 2**31))
            pair.max_skipped_per_message = rnd.randrange(0, pair.max_skipped_per_session + 1)
            for receiver, message in (("bob", same_chain), ("alice", ratchet_step)):
                check(decrypt_at(pair, receiver), rnd.choice([*list(mutations(message))[:40], message]))
