"""Two-party scenario tests of X3DH + Double Ratchet, for both namespaces.

Every test runs an in-memory Alice/Bob pair (:mod:`.helpers`) through a conversation: first contact,
long runs, reordering, loss, replays, tampering, the skipped-key limits, and serialisation in the
middle of a conversation. The legacy payload variants seen in the field are covered at the end.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from omemo_engine import payload, ratchet, x3dh
from omemo_engine._primitives import hkdf_sha256, hmac_sha256
from omemo_engine.errors import (
    AuthenticationFailed,
    DuplicateMessage,
    EngineError,
    MalformedMessage,
    TooManySkippedKeys,
)
from omemo_engine.profile import LEGACY, Profile
from omemo_engine.ratchet import RatchetState

from .helpers import (
    PROFILES,
    DeviceKeys,
    SessionPair,
    next_message_keys,
    open_session,
    receive_key_exchange,
    seeded_rng,
    send_key_exchange,
)

#: The tests that run for both namespaces.
BOTH = pytest.mark.parametrize("profile", PROFILES.values(), ids=PROFILES.keys())


def other(name: str) -> str:
    return "bob" if name == "alice" else "alice"


def assert_rejected_unchanged(pair: SessionPair, receiver: str, data: bytes) -> EngineError:
    """``data`` is refused at ``receiver`` and the session state is byte-for-byte what it was."""
    before = pair.states[receiver].to_bytes()
    with pytest.raises(EngineError) as info:
        pair.receive(receiver, data)
    assert pair.states[receiver].to_bytes() == before
    return info.value


# --- first contact -------------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize("initiator", ["alice", "bob"])
def test_first_contact_each_way(profile: Profile, initiator: str) -> None:
    rng = seeded_rng(f"first-contact-{initiator}")
    keys = {"alice": DeviceKeys.generate(rng), "bob": DeviceKeys.generate(rng)}
    responder = other(initiator)
    sent, kex = send_key_exchange(profile, keys[initiator], keys[responder], b"hello", rng)
    received, plaintext = receive_key_exchange(
        profile, keys[responder], keys[initiator].identity_key, kex, rng
    )
    assert plaintext == b"hello"
    assert received.associated_data == sent.associated_data
    assert (sent.initiator, received.initiator) == (True, False)
    pair = SessionPair(profile, {initiator: sent, responder: received}, rng)
    pair.exchange(responder, b"reply")
    pair.exchange(initiator, b"and back")
    assert pair.states[initiator].receiving_chain_length == 1
    assert pair.states[responder].receiving_chain_length == 1
    assert pair.states[responder].previous_sending_n == 1


@BOTH
def test_responder_cannot_send_before_receiving(profile: Profile) -> None:
    rng = seeded_rng("responder-first")
    alice, bob = DeviceKeys.generate(rng), DeviceKeys.generate(rng)
    state, _kex = send_key_exchange(profile, alice, bob, b"hi", rng)
    fresh = ratchet.initialize_passive(
        profile, bytes(32), state.associated_data, bob.signed_pre_key_priv, bob.signed_pre_key
    )
    assert fresh.sending_chain_length is None
    assert fresh.receiving_chain_length is None
    with pytest.raises(EngineError, match="no sending chain"):
        ratchet.encrypt(profile, fresh, b"too early")


@BOTH
def test_initiator_keeps_sending_before_any_reply(profile: Profile) -> None:
    # The initiator may send several messages before the responder answers; the responder gets
    # the first one in the key exchange and the rest as ordinary messages of the same chain.
    rng = seeded_rng("several-before-reply")
    alice_keys, bob_keys = DeviceKeys.generate(rng), DeviceKeys.generate(rng)
    alice, kex = send_key_exchange(profile, alice_keys, bob_keys, b"m0", rng)
    pair = SessionPair(profile, {"alice": alice}, rng)
    later = [pair.send("alice", b"m%d" % i) for i in range(1, 4)]
    pair.states["bob"], first = receive_key_exchange(profile, bob_keys, alice_keys.identity_key, kex, rng)
    assert first == b"m0"
    assert [pair.receive("bob", data) for data in later] == [b"m1", b"m2", b"m3"]


# --- long runs -------------------------------------------------------------------------------------


@BOTH
def test_long_alternating_run(profile: Profile) -> None:
    pair = open_session(profile, "alternating")
    for i in range(500):
        sender = "bob" if i % 2 == 0 else "alice"
        pair.exchange(sender, i.to_bytes(2, "big") * 24)
        # Every message is the first of a new chain: one DH ratchet step per message.
        assert pair.states[sender].sending_chain_length == 1
        assert pair.states[other(sender)].receiving_chain_length == 1
    assert not pair.alice.skipped
    assert not pair.bob.skipped


@BOTH
@pytest.mark.parametrize("sender", ["alice", "bob"])
def test_long_one_way_run(profile: Profile, sender: str) -> None:
    pair = open_session(profile, f"one-way-{sender}")
    if sender == "bob":
        pair.exchange("bob", b"")
    start = pair.states[sender].sending_chain_length or 0
    for i in range(500):
        pair.exchange(sender, bytes((i % 256,)) * (i % 50))
    assert pair.states[sender].sending_chain_length == start + 500
    assert pair.states[other(sender)].receiving_chain_length == start + 500


@BOTH
def test_bursts_in_both_directions(profile: Profile) -> None:
    pair = open_session(profile, "bursts")
    rnd = random.Random(7)
    sender = "bob"
    for _ in range(40):
        for _ in range(rnd.randrange(1, 6)):
            pair.exchange(sender, rnd.randbytes(rnd.randrange(0, 80)))
        sender = other(sender)


# --- reordering and loss ---------------------------------------------------------------------------


@BOTH
def test_out_of_order_within_one_chain(profile: Profile) -> None:
    pair = open_session(profile, "ooo")
    messages = [(b"%d" % i, pair.send("alice", b"%d" % i)) for i in range(20)]
    order = list(range(20))
    random.Random(3).shuffle(order)
    for index in order:
        plaintext, data = messages[index]
        assert pair.receive("bob", data) == plaintext
    assert not pair.bob.skipped


@BOTH
def test_out_of_order_across_ratchet_steps(profile: Profile) -> None:
    pair = open_session(profile, "ooo-steps")
    pending: list[tuple[str, bytes, bytes]] = []
    for round_ in range(6):
        for sender in ("bob", "alice"):
            for i in range(3):
                text = f"{sender}-{round_}-{i}".encode()
                pending.append((sender, text, pair.send(sender, text)))
            # Deliver only the last message of each burst now: the receiver must step its ratchet
            # and keep the keys of the two earlier messages.
            last_sender, last_text, last = pending.pop()
            assert pair.receive(other(last_sender), last) == last_text
    random.Random(11).shuffle(pending)
    for sender, text, data in pending:
        assert pair.receive(other(sender), data) == text
    assert not pair.alice.skipped
    assert not pair.bob.skipped


@BOTH
def test_lost_messages(profile: Profile) -> None:
    pair = open_session(profile, "lost")
    lost = [pair.send("alice", b"lost %d" % i) for i in range(3)]
    pair.exchange("alice", b"arrives")
    # The lost messages' keys wait in the skipped store...
    assert len(pair.bob.skipped) == 3
    # ...while the conversation goes on through several ratchet steps, including a chain whose
    # tail is lost (the pn gap of the next chain).
    pair.exchange("bob", b"answer")
    tail = pair.send("alice", b"lost at the end of a chain")
    pair.exchange("bob", b"another answer")
    pair.exchange("alice", b"new chain")
    assert len(pair.bob.skipped) == 4
    # If they turn up after all, they still decrypt, once.
    assert pair.receive("bob", tail) == b"lost at the end of a chain"
    assert pair.receive("bob", lost[1]) == b"lost 1"
    assert len(pair.bob.skipped) == 2


@BOTH
def test_loss_on_both_sides_of_a_ratchet_step(profile: Profile) -> None:
    # One message skips the old chain's tail (pn) and the new chain's head (n) at once.
    pair = open_session(profile, "lost-both-sides")
    old_tail = pair.send("alice", b"old tail")
    pair.exchange("bob", b"step")  # Alice steps her ratchet: a new sending chain
    new_head = pair.send("alice", b"new head")
    pair.exchange("alice", b"skips both")
    old_key, new_key = list(pair.bob.skipped)
    assert old_key[0] != new_key[0]  # one skipped key in each chain
    assert (old_key[1], new_key[1]) == (1, 0)
    assert pair.receive("bob", new_head) == b"new head"
    assert pair.receive("bob", old_tail) == b"old tail"


# --- replays and tampering -------------------------------------------------------------------------


@BOTH
def test_replay_in_current_chain(profile: Profile) -> None:
    pair = open_session(profile, "replay")
    data = pair.send("alice", b"once")
    assert pair.receive("bob", data) == b"once"
    error = assert_rejected_unchanged(pair, "bob", data)
    assert isinstance(error, DuplicateMessage)


@BOTH
def test_replay_of_a_skipped_key_message(profile: Profile) -> None:
    pair = open_session(profile, "replay-skipped")
    early, late = pair.send("alice", b"early"), pair.send("alice", b"late")
    assert pair.receive("bob", late) == b"late"
    assert pair.receive("bob", early) == b"early"
    assert isinstance(assert_rejected_unchanged(pair, "bob", early), DuplicateMessage)


@BOTH
def test_replay_from_an_old_chain(profile: Profile) -> None:
    pair = open_session(profile, "replay-old-chain")
    data = pair.send("alice", b"old chain")
    assert pair.receive("bob", data) == b"old chain"
    pair.exchange("bob", b"step")
    pair.exchange("alice", b"step")
    error = assert_rejected_unchanged(pair, "bob", data)
    assert isinstance(error, (DuplicateMessage, AuthenticationFailed))
    pair.exchange("alice", b"still fine")


@BOTH
def test_replay_of_the_key_exchange(profile: Profile) -> None:
    # The responder's session already consumed the key-exchange message; its ratchet message
    # replayed into the established session is refused.
    rng = seeded_rng("replay-kex")
    alice_keys, bob_keys = DeviceKeys.generate(rng), DeviceKeys.generate(rng)
    alice, kex = send_key_exchange(profile, alice_keys, bob_keys, b"kex", rng)
    bob, _ = receive_key_exchange(profile, bob_keys, alice_keys.identity_key, kex, rng)
    pair = SessionPair(profile, {"alice": alice, "bob": bob}, rng)
    _fields, sealed = profile.wire.parse_key_exchange(kex)
    assert isinstance(assert_rejected_unchanged(pair, "bob", sealed), DuplicateMessage)


@BOTH
@pytest.mark.parametrize("kind", ["same-chain", "ratchet-step"])
def test_every_flipped_bit_is_rejected_without_damage(profile: Profile, kind: str) -> None:
    pair = open_session(profile, f"flip-{kind}")
    sender = "alice" if kind == "same-chain" else "bob"
    data = pair.send(sender, b"k" * 48)
    receiver = other(sender)
    before = pair.states[receiver].to_bytes()
    for bit in range(len(data) * 8):
        tampered = bytearray(data)
        tampered[bit // 8] ^= 1 << (bit % 8)
        # (A legacy version byte changed to 0x3X passes the version check but not the MAC.)
        with pytest.raises(EngineError):
            pair.decrypt(receiver, bytes(tampered))
    assert pair.states[receiver].to_bytes() == before
    assert pair.receive(receiver, data) == b"k" * 48


@BOTH
def test_tampered_message_then_genuine_one(profile: Profile) -> None:
    pair = open_session(profile, "tamper-then-genuine")
    genuine = pair.send("alice", b"genuine")
    forged = bytearray(genuine)
    forged[len(forged) // 2] ^= 0x40
    assert_rejected_unchanged(pair, "bob", bytes(forged))
    assert pair.receive("bob", genuine) == b"genuine"


# --- skipped-key limits ----------------------------------------------------------------------------


@BOTH
def test_per_message_limit_exceeded_in_chain(profile: Profile) -> None:
    pair = open_session(profile, "dos", max_skipped_per_message=5, max_skipped_per_session=10)
    for _ in range(6):
        pair.send("alice", b"dropped")
    data = pair.send("alice", b"skips six")
    error = assert_rejected_unchanged(pair, "bob", data)
    assert isinstance(error, TooManySkippedKeys)
    assert "6" in str(error) and "5" in str(error)


@BOTH
def test_per_message_limit_exceeded_after_ratchet_step(profile: Profile) -> None:
    pair = open_session(profile, "dos-step", max_skipped_per_message=3, max_skipped_per_session=10)
    for _ in range(4):
        pair.send("bob", b"dropped")
    data = pair.send("bob", b"skips four in a new chain")
    assert isinstance(assert_rejected_unchanged(pair, "alice", data), TooManySkippedKeys)


@BOTH
@pytest.mark.parametrize("limit", [0, 1, 2, 7, 100, 999, 1000])
def test_any_per_message_limit_up_to_the_session_limit(profile: Profile, limit: int) -> None:
    # Regression for the reference's Backend.__init__ bug (PROTOCOL.md 6.1), where any explicit
    # non-zero per-message limit raised: every limit between 0 and the per-session limit works,
    # and exactly `limit` skipped keys are allowed, one more is not.
    pair = open_session(
        profile, f"limit-{limit}", max_skipped_per_message=limit, max_skipped_per_session=1000
    )
    for _ in range(limit):
        pair.send("alice", b"skipped")
    pair.exchange("alice", b"skips exactly the limit")
    assert len(pair.bob.skipped) == limit
    for _ in range(limit + 1):
        pair.send("alice", b"skipped")
    data = pair.send("alice", b"one too many")
    assert isinstance(assert_rejected_unchanged(pair, "bob", data), TooManySkippedKeys)


@BOTH
def test_old_chain_gap_over_the_limit_is_given_up(profile: Profile) -> None:
    # A new ratchet key whose pn leaves more than the per-message limit behind in the old chain:
    # the new message is accepted, the old chain's missing keys are not derived (PROTOCOL.md 3.2).
    pair = open_session(profile, "pn-gap", max_skipped_per_message=3, max_skipped_per_session=10)
    lost = [pair.send("alice", b"lost") for _ in range(4)]
    pair.exchange("bob", b"step")
    pair.exchange("alice", b"new chain")
    assert not pair.bob.skipped
    assert isinstance(
        assert_rejected_unchanged(pair, "bob", lost[0]), (AuthenticationFailed, DuplicateMessage)
    )


@BOTH
def test_per_session_fifo_eviction(profile: Profile) -> None:
    pair = open_session(profile, "fifo", max_skipped_per_message=10, max_skipped_per_session=5)
    start = pair.alice.sending_n  # 1: message 0 was the key exchange
    first = [pair.send("alice", b"a%d" % i) for i in range(3)]
    pair.exchange("alice", b"skips three")
    pair.exchange("bob", b"step")
    second = [pair.send("alice", b"b%d" % i) for i in range(4)]
    pair.exchange("alice", b"skips four")
    # 3 + 4 = 7 skipped keys, at most 5 kept: the two oldest (a0, a1) were dropped.
    kept = list(pair.bob.skipped)
    assert len(kept) == 5
    assert [n for _pub, n in kept] == [start + 2, 0, 1, 2, 3]
    assert kept[0][0] != kept[1][0]
    for data in first[:2]:
        assert_rejected_unchanged(pair, "bob", data)
    assert pair.receive("bob", first[2]) == b"a2"
    assert [pair.receive("bob", data) for data in second] == [b"b0", b"b1", b"b2", b"b3"]
    assert not pair.bob.skipped


@BOTH
def test_eviction_keeps_insertion_order_after_use(profile: Profile) -> None:
    pair = open_session(profile, "fifo-order", max_skipped_per_message=10, max_skipped_per_session=3)
    start = pair.alice.sending_n
    messages = [pair.send("alice", b"%d" % i) for i in range(3)]
    pair.exchange("alice", b"skips 0, 1, 2")  # (numbers relative to the chain's start)
    assert pair.receive("bob", messages[1]) == b"1"  # uses the middle key: 0 and 2 remain
    more = [pair.send("alice", b"%d" % i) for i in range(4, 6)]
    pair.exchange("alice", b"skips 4 and 5")  # 0, 2, 4, 5 -> the oldest (0) goes
    assert [n - start for _pub, n in pair.bob.skipped] == [2, 4, 5]
    assert isinstance(assert_rejected_unchanged(pair, "bob", messages[0]), DuplicateMessage)
    assert [pair.receive("bob", data) for data in [messages[2], *more]] == [b"2", b"4", b"5"]


# --- persistence -----------------------------------------------------------------------------------


@BOTH
def test_serialise_and_restore_mid_conversation(profile: Profile) -> None:
    pair = open_session(profile, "persist")
    pair.exchange("bob", b"x")
    late_bob = [pair.send("bob", b"late bob %d" % i) for i in range(2)]
    pair.exchange("bob", b"in time")
    late_alice = [pair.send("alice", b"late alice %d" % i) for i in range(3)]
    pair.exchange("alice", b"in time")
    assert len(pair.alice.skipped) == 2
    assert len(pair.bob.skipped) == 3
    for name in ("alice", "bob"):
        record = pair.states[name].to_bytes()
        restored = RatchetState.from_bytes(record)
        assert restored == pair.states[name]
        assert restored.to_bytes() == record
        assert list(restored.skipped) == list(pair.states[name].skipped)
        pair.states[name] = restored
    assert [pair.receive("alice", data) for data in late_bob] == [b"late bob 0", b"late bob 1"]
    assert pair.receive("bob", late_alice[2]) == b"late alice 2"
    for i in range(10):
        pair.exchange("alice" if i % 3 else "bob", b"after restore")


@BOTH
def test_serialise_fresh_states(profile: Profile) -> None:
    rng = seeded_rng("persist-fresh")
    alice_keys, bob_keys = DeviceKeys.generate(rng), DeviceKeys.generate(rng)
    alice, kex = send_key_exchange(profile, alice_keys, bob_keys, b"kex", rng)
    fresh_bob = ratchet.initialize_passive(
        profile, bytes(32), alice.associated_data, bob_keys.signed_pre_key_priv, bob_keys.signed_pre_key
    )
    for state in (alice, fresh_bob):
        assert RatchetState.from_bytes(state.to_bytes()) == state
    bob, _ = receive_key_exchange(profile, bob_keys, alice_keys.identity_key, kex, rng)
    pair = SessionPair(profile, {"alice": RatchetState.from_bytes(alice.to_bytes()), "bob": bob}, rng)
    pair.exchange("bob", b"reply to a restored initiator")


# --- legacy specifics ------------------------------------------------------------------------------


def _reseal_legacy(state: RatchetState, data: bytes, version: int) -> bytes:
    """``data`` (a message just sealed from ``state``'s sending chain, before it advanced) with
    another version byte and a MAC recomputed over it, as a newer libsignal would send it."""
    _aes_key, mac_key, _iv = next_message_keys(LEGACY, state)
    body = bytes((version,)) + data[1:-8]
    ad = LEGACY.mac_associated_data(state.associated_data, sender_is_initiator=state.initiator)
    return body + hmac_sha256(mac_key, ad + body)[:8]


def test_legacy_version_byte_0x34_accepted() -> None:
    profile = LEGACY
    pair = open_session(profile, "0x34")
    for sender in ("alice", "bob", "bob", "alice"):
        before = pair.states[sender]
        data = pair.send(sender, b"from a newer libsignal")
        assert data[0] == 0x33
        modern = _reseal_legacy(before, data, 0x34)
        assert modern != data
        assert pair.receive(other(sender), modern) == b"from a newer libsignal"


@pytest.mark.parametrize("version", [0x23, 0x43, 0x03, 0xF3])
def test_legacy_other_message_versions_refused(version: int) -> None:
    profile = LEGACY
    pair = open_session(profile, f"version-{version}")
    before = pair.alice
    data = _reseal_legacy(before, pair.send("alice", b"x"), version)
    assert isinstance(assert_rejected_unchanged(pair, "bob", data), MalformedMessage)


def test_legacy_key_exchange_version_0x34_accepted() -> None:
    profile = LEGACY
    rng = seeded_rng("kex-0x34")
    alice, bob = DeviceKeys.generate(rng), DeviceKeys.generate(rng)
    _state, kex = send_key_exchange(profile, alice, bob, b"kex", rng)
    assert kex[0] == 0x33
    _bob, plaintext = receive_key_exchange(profile, bob, alice.identity_key, b"\x34" + kex[1:], rng)
    assert plaintext == b"kex"
    with pytest.raises(MalformedMessage):
        receive_key_exchange(profile, bob, alice.identity_key, b"\x44" + kex[1:], rng)


# --- payload ciphers -------------------------------------------------------------------------------


@BOTH
def test_payload_through_the_session(profile: Profile) -> None:
    pair = open_session(profile, "payload")
    rng = seeded_rng("payload-rng")
    for plaintext in (b"", b"hi", bytes(range(256)) * 3):
        if profile is LEGACY:
            ciphertext, iv, key_material = payload.legacy_encrypt(plaintext, rng)
            assert len(key_material) == 32 and len(iv) == payload.LEGACY_IV_LENGTH
            received = pair.receive("bob", pair.send("alice", key_material))
            assert payload.legacy_decrypt(ciphertext, iv, received) == plaintext
        else:
            ciphertext, key_material = payload.omemo2_encrypt(plaintext, rng)
            assert len(key_material) == 48
            received = pair.receive("bob", pair.send("alice", key_material))
            assert payload.omemo2_decrypt(ciphertext, received) == plaintext
    # An empty OMEMO 2 message carries 32 zero bytes through the ratchet.
    empty = payload.OMEMO2_EMPTY_KEY_MATERIAL
    assert pair.receive("alice", pair.send("bob", empty)) == empty


def _gcm(key: bytes, iv: bytes, plaintext: bytes) -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    sealed = AESGCM(key).encrypt(iv, plaintext, None)
    return sealed[:-16], sealed[-16:]


def test_legacy_payload_variants() -> None:
    key, plaintext = bytes(range(16)), b"legacy payload variants"
    for iv in (bytes(12), bytes(range(16))):
        ciphertext, tag = _gcm(key, iv, plaintext)
        # Current form: key || tag through the ratchet, tag-less payload.
        assert payload.legacy_decrypt(ciphertext, iv, key + tag) == plaintext
        # Old form: the 16-byte key through the ratchet, the tag appended to the payload.
        assert payload.legacy_decrypt(ciphertext + tag, iv, key) == plaintext


def test_legacy_payload_failures_are_all_authentication_failed() -> None:
    key, iv = bytes(range(16)), bytes(12)
    ciphertext, tag = _gcm(key, iv, b"secret")
    flipped_tag = bytes((tag[0] ^ 1,)) + tag[1:]
    flipped_ct = bytes((ciphertext[0] ^ 1,)) + ciphertext[1:]
    cases = [
        (ciphertext, iv, key + flipped_tag),
        (flipped_ct, iv, key + tag),
        (ciphertext, bytes(16), key + tag),  # wrong IV
        (ciphertext, bytes(11), key + tag),  # IV too short
        (ciphertext, bytes(13), key + tag),  # IV of an unsupported length
        (ciphertext, iv, key + tag[:15]),  # key material of 31 bytes
        (ciphertext, iv, key + tag + b"\x00"),  # 33 bytes
        (ciphertext, iv, b""),
        (ciphertext + flipped_tag, iv, key),  # old form, bad tag
        (b"short", iv, key),  # old form, payload shorter than a tag
        (b"", iv, key),
        (ciphertext[:-1], iv, key + tag),  # truncated
        (ciphertext + b"\x00", iv, key + tag),  # extended
        (ciphertext, iv, bytes(16) + tag),  # wrong key
    ]
    for args in cases:
        with pytest.raises(AuthenticationFailed):
            payload.legacy_decrypt(*args)


def test_omemo2_payload_failures_are_all_authentication_failed() -> None:
    ciphertext, key_material = payload.omemo2_encrypt(b"secret", seeded_rng("omemo2-payload"))
    key, tag = key_material[:32], key_material[32:]
    cases = [
        (ciphertext, key + bytes(16)),
        (bytes((ciphertext[0] ^ 1,)) + ciphertext[1:], key_material),
        (ciphertext[:-1], key_material),
        (ciphertext + b"\x00" * 16, key_material),
        (b"", key_material),
        (ciphertext, key_material[:-1]),
        (ciphertext, key_material + b"\x00"),
        (ciphertext, key),
        (ciphertext, bytes(32) + tag),
    ]
    for args in cases:
        with pytest.raises(AuthenticationFailed):
            payload.omemo2_decrypt(*args)
    # A correct tag over a ciphertext whose padding is bad is still one answer: AuthenticationFailed.
    out = hkdf_sha256(key, bytes(32), b"OMEMO Payload", 80)
    bad_block = b"\x00" * 16
    forged_tag = hmac_sha256(out[32:64], bad_block)[:16]
    with pytest.raises(AuthenticationFailed):
        payload.omemo2_decrypt(bad_block, key + forged_tag)


@BOTH
def test_counters_up_to_uint32_survive_serialisation(profile: Profile) -> None:
    # The record stores counters as unsigned 32-bit values, like the wire's uint32 fields.
    pair = open_session(profile, "counters")
    big = pair.alice._replace(sending_n=2**32 - 2, previous_sending_n=2**32 - 1)
    assert RatchetState.from_bytes(big.to_bytes()) == big


@BOTH
def test_pre_key_zero_is_chosen_only_when_it_is_the_only_one(profile: Profile) -> None:
    # Converse numbers its pre keys from 0 and cannot use its own pre key 0 (docs/real-clients.md).
    rng = seeded_rng("pre key 0")
    bob = DeviceKeys.generate(rng, pre_keys=2)
    alice = DeviceKeys.generate(rng)
    both = dataclasses.replace(bob, pre_keys={0: bob.pre_keys[1], 1: bob.pre_keys[2]})
    only_zero = dataclasses.replace(bob, pre_keys={0: bob.pre_keys[1]})

    def chosen(device: DeviceKeys, seed: int) -> int:
        bundle = device.bundle(profile, rng)
        result = x3dh.active(profile, alice.priv, alice.identity_key, bundle, random_bytes=seeded_rng(seed))
        return result.pre_key_id

    assert {chosen(both, seed) for seed in range(32)} == {1}
    assert chosen(only_zero, 0) == 0
