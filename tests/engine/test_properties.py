"""Hypothesis properties of the engine: delivery in any order, tamper rejection, codec and key
conversion round trips.

Example counts are moderate and deadlines off, so that the file runs in a few seconds on a small
machine; the fuzz harness (test_fuzz.py) covers random bytes at the decoders.
"""

from __future__ import annotations

import struct

import nacl.bindings as sodium
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omemo_engine import ratchet, xeddsa
from omemo_engine._primitives import (
    canonical_ed25519_public,
    canonical_x25519_public,
    hmac_sha256,
    x25519_public,
)
from omemo_engine.errors import EngineError, MalformedMessage
from omemo_engine.profile import LEGACY, OMEMO2, Profile
from omemo_engine.ratchet import RatchetState
from omemo_engine.wire import Header, KeyExchangeFields

from .helpers import PROFILES, DeviceKeys, open_session, receive_key_exchange, seeded_rng, send_key_exchange

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

profiles = st.sampled_from(list(PROFILES.values()))
keys32 = st.binary(min_size=32, max_size=32)
uint32 = st.integers(min_value=0, max_value=2**32 - 1)


# --- delivery in any order -------------------------------------------------------------------------


@SETTINGS
@given(profile=profiles, data=st.data())
def test_any_delivery_order_within_the_limits_decrypts(profile: Profile, data: st.DataObject) -> None:
    # A random interleaving of sends and deliveries, then the rest delivered in a random order.
    # Up to 30 messages stay far below the skipped-key limits, so every message must decrypt once.
    pair = open_session(profile, data.draw(st.integers(0, 2**16), label="seed"))
    in_flight: dict[str, list[tuple[bytes, bytes]]] = {"alice": [], "bob": []}  # by receiver
    for step in range(data.draw(st.integers(1, 30), label="steps")):
        receiver = data.draw(st.sampled_from(["alice", "bob"]), label="party")
        sender = "bob" if receiver == "alice" else "alice"
        # The responder (Bob) has a sending chain from the start: open_session delivered the kex.
        if not in_flight[receiver] or data.draw(st.booleans(), label="send?"):
            plaintext = b"%s %d" % (sender.encode(), step)
            in_flight[receiver].append((plaintext, pair.send(sender, plaintext)))
        else:
            index = data.draw(st.integers(0, len(in_flight[receiver]) - 1), label="deliver")
            plaintext, message = in_flight[receiver].pop(index)
            assert pair.receive(receiver, message) == plaintext
    rest = [(receiver, item) for receiver, items in in_flight.items() for item in items]
    for receiver, (plaintext, message) in data.draw(st.permutations(rest), label="rest"):
        assert pair.receive(receiver, message) == plaintext
    assert not pair.alice.skipped
    assert not pair.bob.skipped


@SETTINGS
@given(profile=profiles, order=st.permutations(range(12)))
def test_any_permutation_of_a_batch_decrypts(profile: Profile, order: list[int]) -> None:
    pair = open_session(profile, "batch")
    pair.exchange("bob", b"so that Alice's batch starts a new chain")
    batch = [pair.send("alice", b"%d" % i) for i in range(12)]
    assert [pair.receive("bob", batch[i]) for i in order] == [b"%d" % i for i in order]


# --- single-byte mutations -------------------------------------------------------------------------


def mutate(data: bytes, position: int, delta: int) -> bytes:
    """``data`` with the byte at ``position`` changed (``delta`` in 1..255, so it always changes)."""
    position %= len(data)
    return data[:position] + bytes(((data[position] + delta) % 256,)) + data[position + 1 :]


MUTATION = {"position": st.integers(0, 10_000), "delta": st.integers(1, 255)}


@SETTINGS
@given(profile=profiles, direction=st.sampled_from(["same-chain", "ratchet-step"]), **MUTATION)
def test_mutated_ratchet_message_is_rejected(
    profile: Profile, direction: str, position: int, delta: int
) -> None:
    pair = open_session(profile, "mutation")
    sender, receiver = ("alice", "bob") if direction == "same-chain" else ("bob", "alice")
    message = pair.send(sender, b"k" * 48)
    before = pair.states[receiver].to_bytes()
    # Refused with an engine error; any other exception propagates and fails the test.
    with pytest.raises(EngineError):
        pair.receive(receiver, mutate(message, position, delta))
    assert pair.states[receiver].to_bytes() == before
    assert pair.receive(receiver, message) == b"k" * 48


@SETTINGS
@given(profile=profiles, **MUTATION)
def test_mutated_key_exchange_is_rejected(profile: Profile, position: int, delta: int) -> None:
    rng = seeded_rng("kex-mutation")
    alice, bob = DeviceKeys.generate(rng), DeviceKeys.generate(rng)
    _state, kex = send_key_exchange(profile, alice, bob, b"first", rng)
    mutated = mutate(kex, position, delta)
    if profile is LEGACY and mutated[0] >> 4 == 3 and mutated[1:] == kex[1:]:
        # The low nibble of the legacy version byte is the sender's newest supported version; the
        # key exchange's version byte is not MAC-covered and is accepted by design (PROTOCOL.md 4.3).
        assert receive_key_exchange(profile, bob, alice.identity_key, mutated, rng)[1] == b"first"
        return
    try:
        receive_key_exchange(profile, bob, alice.identity_key, mutated, rng)
    except EngineError:
        return
    # Accepted: then the flip must be one that changes no key. X25519 ignores bit 255 of a public key
    # (RFC 7748 section 5), and so does the Curve25519 -> Ed25519 map of the legacy identity key.
    fields, _ = profile.wire.parse_key_exchange(kex)
    ignored = {kex.find(fields.ephemeral_key) + 31}
    if profile is LEGACY:
        ignored.add(kex.find(fields.identity_key) + 31)
    assert delta == 0x80 and position % len(kex) in ignored, (position, delta)


# --- codec round trips -----------------------------------------------------------------------------


@SETTINGS
@given(
    profile=profiles,
    dh_pub=keys32,
    n=uint32,
    pn=uint32,
    ciphertext=st.binary(max_size=200),
    auth_key=keys32,
    ad=st.binary(max_size=66),
)
def test_wire_seal_open_round_trip(
    profile: Profile, dh_pub: bytes, n: int, pn: int, ciphertext: bytes, auth_key: bytes, ad: bytes
) -> None:
    header = Header(dh_pub, n, pn)
    opened = profile.wire.open(profile.wire.seal(header, ciphertext, auth_key, ad))
    # The key comes back in its canonical encoding (the same X25519 key, RFC 7748).
    assert (opened.header, opened.ciphertext) == (
        header._replace(dh_pub=canonical_x25519_public(dh_pub)),
        ciphertext,
    )
    assert opened.mac == hmac_sha256(auth_key, ad + opened.mac_input)[: profile.wire.mac_length]


@SETTINGS
@given(
    profile=profiles,
    pre_key_id=uint32,
    signed_pre_key_id=uint32,
    identity_key=keys32,
    ephemeral_key=keys32,
    header=st.builds(Header, keys32, uint32, uint32),
    ciphertext=st.binary(max_size=100),
)
def test_key_exchange_build_parse_round_trip(
    profile: Profile,
    pre_key_id: int,
    signed_pre_key_id: int,
    identity_key: bytes,
    ephemeral_key: bytes,
    header: Header,
    ciphertext: bytes,
) -> None:
    fields = KeyExchangeFields(pre_key_id, signed_pre_key_id, identity_key, ephemeral_key)
    message = profile.wire.seal(header, ciphertext, bytes(32), b"")
    data = profile.wire.build_key_exchange(fields, message)
    if profile is OMEMO2 and not canonical_ed25519_public(identity_key):
        with pytest.raises(MalformedMessage, match="canonical"):
            profile.wire.parse_key_exchange(data)
        return
    parsed, inner = profile.wire.parse_key_exchange(data)
    # X25519 keys come back canonical (the same keys, RFC 7748); so does the legacy identity key.
    expected = KeyExchangeFields(
        pre_key_id,
        signed_pre_key_id,
        identity_key if profile is OMEMO2 else canonical_x25519_public(identity_key),
        canonical_x25519_public(ephemeral_key),
    )
    assert (parsed, inner) == (expected, message)


optional_key = st.one_of(st.none(), keys32)
skipped = st.dictionaries(st.tuples(keys32, uint32), keys32, max_size=8)


@SETTINGS
@given(
    st.builds(
        RatchetState,
        initiator=st.booleans(),
        associated_data=st.binary(max_size=255),
        root_key=keys32,
        own_ratchet_priv=keys32,
        own_ratchet_pub=keys32,
        other_ratchet_pub=optional_key,
        sending_chain_key=optional_key,
        sending_n=uint32,
        receiving_chain_key=optional_key,
        receiving_n=uint32,
        previous_sending_n=uint32,
        skipped=skipped,
    )
)
def test_ratchet_state_round_trip(state: RatchetState) -> None:
    record = state.to_bytes()
    restored = RatchetState.from_bytes(record)
    assert restored == state
    assert list(restored.skipped) == list(state.skipped)  # insertion order = eviction order
    assert restored.to_bytes() == record
    # Kept apart: the record without the keys, and the keys on their own, give the same state back.
    apart = RatchetState.from_bytes(state.to_bytes(with_skipped=False))
    assert apart == state._replace(skipped={})
    keys = ratchet.decode_skipped(ratchet.encode_skipped(state.skipped))
    assert list(keys.items()) == list(state.skipped.items())
    # The one-pack layout of the steady state is the general layout.
    general = b"".join(
        [
            bytes(
                (1, state.initiator | (state.other_ratchet_pub is not None) << 1, len(state.associated_data))
            ),
            state.associated_data,
            state.root_key,
            state.own_ratchet_priv,
            state.own_ratchet_pub,
            state.other_ratchet_pub or b"",
            state.sending_chain_key or b"",
            state.receiving_chain_key or b"",
            struct.pack(">IIII", state.sending_n, state.receiving_n, state.previous_sending_n, 0),
        ]
    )
    flags = (state.sending_chain_key is not None) << 2 | (state.receiving_chain_key is not None) << 3
    assert state.to_bytes(with_skipped=False) == general[:1] + bytes((general[1] | flags,)) + general[2:]


@SETTINGS
@given(
    profile=profiles,
    seed=st.integers(0, 2**32),
    steps=st.lists(st.sampled_from(["alice", "bob"]), max_size=12),
)
def test_live_states_round_trip(profile: Profile, seed: int, steps: list[str]) -> None:
    pair = open_session(profile, seed)
    for sender in steps:
        pair.send(sender, b"maybe lost")
        pair.exchange(sender, b"x")
    for state in (pair.alice, pair.bob):
        assert RatchetState.from_bytes(state.to_bytes()) == state


# --- key conversions -------------------------------------------------------------------------------


@SETTINGS
@given(seed=keys32)
def test_curve_ed_conversion_round_trip(seed: bytes) -> None:
    priv = xeddsa.seed_to_priv(seed)
    ed = xeddsa.priv_to_ed25519_pub(priv)
    curve = xeddsa.priv_to_curve25519_pub(priv)
    assert ed == xeddsa.seed_to_ed25519_pub(seed)
    assert xeddsa.ed25519_pub_to_curve25519_pub(ed) == curve
    assert xeddsa.curve25519_pub_to_ed25519_pub(curve, xeddsa.ed25519_pub_sign_bit(ed)) == ed
    # The other sign bit is the negated point: the same Curve25519 key.
    negated = xeddsa.curve25519_pub_to_ed25519_pub(curve, not xeddsa.ed25519_pub_sign_bit(ed))
    assert negated == ed[:31] + bytes((ed[31] ^ 0x80,))
    assert xeddsa.ed25519_pub_to_curve25519_pub(negated) == curve


@SETTINGS
@given(
    priv=keys32,
    sign_bit=st.booleans(),
    message=st.binary(max_size=64),
    nonce=st.binary(min_size=64, max_size=64),
)
def test_priv_force_sign_gives_the_requested_sign_bit(
    priv: bytes, sign_bit: bool, message: bytes, nonce: bytes
) -> None:
    forced = xeddsa.priv_force_sign(priv, sign_bit)
    ed = bytes(sodium.crypto_scalarmult_ed25519_base_noclamp(forced))
    assert xeddsa.ed25519_pub_sign_bit(ed) == sign_bit
    # Same Curve25519 key as the original private key: the legacy wire form does not change.
    assert xeddsa.ed25519_pub_to_curve25519_pub(ed) == x25519_public(priv)
    assert ed == xeddsa.curve25519_pub_to_ed25519_pub(x25519_public(priv), sign_bit)
    # And its signatures verify under the key with that sign bit (libsignal's legacy signatures).
    xeddsa.verify(ed, message, xeddsa.sign(forced, message, nonce=nonce))


@SETTINGS
@given(signature=st.binary(min_size=64, max_size=64), ed=keys32)
def test_sign_bit_embedding_round_trip(signature: bytes, ed: bytes) -> None:
    cleared = signature[:63] + bytes((signature[63] & 0x7F,))
    embedded = xeddsa.embed_sign_bit(cleared, ed)
    assert xeddsa.extract_sign_bit(embedded) == (cleared, xeddsa.ed25519_pub_sign_bit(ed))


@SETTINGS
@given(profile=profiles, seed=st.integers(0, 2**32))
def test_encrypt_never_mutates_its_input(profile: Profile, seed: int) -> None:
    pair = open_session(profile, seed)
    state = pair.alice
    record = state.to_bytes()
    first = ratchet.encrypt(profile, state, b"x")
    assert state.to_bytes() == record
    assert ratchet.encrypt(profile, state, b"x") == first  # deterministic: no randomness in encrypt
