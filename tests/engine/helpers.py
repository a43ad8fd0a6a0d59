"""Two-party helpers for the engine tests: Alice/Bob key sets and an in-memory session pair.

In the spirit of h11's ``ConnectionPair`` (tests/helpers.py): one object holds both ends of a
conversation so that scenario, property and fuzz tests read as a list of sends and deliveries.
Everything is deterministic: every draw of randomness comes from an explicit, seeded RNG.

The helper plays the part of the backend where the engine leaves it to the caller: it resolves the
pre-key ids of a key exchange (an unknown id is a :class:`KeyExchangeError`, as a backend would
report it) and recovers the Ed25519 form of a legacy identity key from the sign bit known from the
initiator's bundle.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from omemo_engine import ratchet, x3dh, xeddsa
from omemo_engine._primitives import hkdf_sha256, hmac_sha256, x25519_public
from omemo_engine.errors import KeyExchangeError
from omemo_engine.profile import LEGACY, OMEMO2, Profile
from omemo_engine.ratchet import RatchetState
from omemo_engine.wire import KeyExchangeFields

__all__ = [
    "DEFAULT_LIMIT",
    "PROFILES",
    "DeviceKeys",
    "SessionPair",
    "next_message_keys",
    "open_session",
    "receive_key_exchange",
    "seeded_rng",
    "send_key_exchange",
]

#: The reference's default for both skipped-key limits (PROTOCOL.md 3.2).
DEFAULT_LIMIT = 1000
#: Both namespaces, with readable ids for ``pytest.mark.parametrize``.
PROFILES = {"omemo2": OMEMO2, "legacy": LEGACY}

RandomBytes = Callable[[int], bytes]


def seeded_rng(seed: int | str) -> RandomBytes:
    """A deterministic ``random_bytes`` callable (NOT cryptographically secure: tests only)."""
    return random.Random(seed).randbytes


@dataclass(frozen=True)
class DeviceKeys:
    """The private and public X3DH keys of one device."""

    priv: bytes
    identity_key: bytes
    identity_key_curve: bytes
    signed_pre_key_id: int
    signed_pre_key_priv: bytes
    signed_pre_key: bytes
    pre_keys: dict[int, tuple[bytes, bytes]] = field(repr=False)

    @classmethod
    def generate(cls, rng: RandomBytes, pre_keys: int = 3) -> DeviceKeys:
        """A device with a random identity, signed pre key 1 and one-time pre keys 1..``pre_keys``."""
        seed = rng(32)
        priv = xeddsa.seed_to_priv(seed)
        spk_priv = rng(32)
        opks: dict[int, tuple[bytes, bytes]] = {}
        for i in range(1, pre_keys + 1):
            opk_priv = rng(32)
            opks[i] = (opk_priv, x25519_public(opk_priv))
        return cls(
            priv=priv,
            identity_key=xeddsa.seed_to_ed25519_pub(seed),
            identity_key_curve=xeddsa.priv_to_curve25519_pub(priv),
            signed_pre_key_id=1,
            signed_pre_key_priv=spk_priv,
            signed_pre_key=x25519_public(spk_priv),
            pre_keys=opks,
        )

    def bundle(self, profile: Profile, rng: RandomBytes) -> x3dh.PreKeyBundle:
        """The device's signed bundle as the profile publishes it (sign bit already removed)."""
        signed = profile.encode_signed_pre_key(self.signed_pre_key)
        signature = xeddsa.sign(self.priv, signed, random_bytes=rng)
        return x3dh.PreKeyBundle(
            identity_key=self.identity_key,
            signed_pre_key_id=self.signed_pre_key_id,
            signed_pre_key=self.signed_pre_key,
            signed_pre_key_signature=signature,
            pre_keys={i: pub for i, (_priv, pub) in self.pre_keys.items()},
        )


def send_key_exchange(
    profile: Profile, sender: DeviceKeys, recipient: DeviceKeys, plaintext: bytes, rng: RandomBytes
) -> tuple[RatchetState, bytes]:
    """Initiator side: X3DH against ``recipient``'s bundle, then the first message in a key exchange."""
    result = x3dh.active(
        profile,
        sender.priv,
        sender.identity_key,
        recipient.bundle(profile, rng),
        random_bytes=rng,
        identity_key_curve=sender.identity_key_curve,
    )
    state = ratchet.initialize_active(
        profile, result.shared_secret, result.associated_data, result.signed_pre_key, rng
    )
    state, sealed = ratchet.encrypt(profile, state, plaintext)
    wire_ik = sender.identity_key if profile is OMEMO2 else sender.identity_key_curve
    fields = KeyExchangeFields(result.pre_key_id, result.signed_pre_key_id, wire_ik, result.ephemeral_key)
    return state, profile.wire.build_key_exchange(fields, sealed)


def receive_key_exchange(
    profile: Profile,
    recipient: DeviceKeys,
    sender_identity_key: bytes,
    data: bytes,
    rng: RandomBytes,
    *,
    max_skipped_per_message: int = DEFAULT_LIMIT,
    max_skipped_per_session: int = DEFAULT_LIMIT,
) -> tuple[RatchetState, bytes]:
    """Responder side: parse a key exchange, run passive X3DH and decrypt the first message.

    ``sender_identity_key`` is the initiator's Ed25519 key as known from its bundle; for the legacy
    namespace only its sign bit is used (the key itself comes from the wire, in Curve25519 form).
    """
    fields, sealed = profile.wire.parse_key_exchange(data)
    if fields.signed_pre_key_id != recipient.signed_pre_key_id:
        raise KeyExchangeError(f"no signed pre key with id {fields.signed_pre_key_id}")
    if fields.pre_key_id not in recipient.pre_keys:
        raise KeyExchangeError(f"no pre key with id {fields.pre_key_id}")
    if profile is OMEMO2:
        other_ik, other_curve = fields.identity_key, None
    else:
        sign_bit = xeddsa.ed25519_pub_sign_bit(sender_identity_key)
        other_ik = xeddsa.curve25519_pub_to_ed25519_pub(fields.identity_key, sign_bit)
        other_curve = fields.identity_key
    shared, ad = x3dh.passive(
        profile,
        identity_priv=recipient.priv,
        identity_key=recipient.identity_key,
        signed_pre_key_priv=recipient.signed_pre_key_priv,
        pre_key_priv=recipient.pre_keys[fields.pre_key_id][0],
        other_identity_key=other_ik,
        ephemeral_key=fields.ephemeral_key,
        identity_key_curve=recipient.identity_key_curve,
        other_identity_key_curve=other_curve,
    )
    state = ratchet.initialize_passive(
        profile, shared, ad, recipient.signed_pre_key_priv, recipient.signed_pre_key
    )
    return ratchet.decrypt(
        profile,
        state,
        sealed,
        max_skipped_per_message=max_skipped_per_message,
        max_skipped_per_session=max_skipped_per_session,
        random_bytes=rng,
    )


def next_message_keys(profile: Profile, state: RatchetState) -> tuple[bytes, bytes, bytes]:
    """``(AES key, MAC key, IV)`` of the next message ``state`` will send, derived with the spec's
    KDFs (PROTOCOL.md 3.2), so that tests can forge messages a peer could have sent."""
    assert state.sending_chain_key is not None
    message_key = hmac_sha256(state.sending_chain_key, b"\x01")
    out = hkdf_sha256(message_key, bytes(32), profile.message_key_info, 80)
    return out[:32], out[32:64], out[64:]


@dataclass
class SessionPair:
    """Both ends of one established session, kept in memory.

    ``states`` maps ``"alice"``/``"bob"`` to the current :class:`RatchetState`. :meth:`send` and
    :meth:`receive` commit the new state only when the engine call succeeds, like a backend
    would (the engine never modifies the state it was given).
    """

    profile: Profile
    states: dict[str, RatchetState]
    rng: RandomBytes
    max_skipped_per_message: int = DEFAULT_LIMIT
    max_skipped_per_session: int = DEFAULT_LIMIT

    @property
    def alice(self) -> RatchetState:
        return self.states["alice"]

    @property
    def bob(self) -> RatchetState:
        return self.states["bob"]

    def send(self, sender: str, plaintext: bytes) -> bytes:
        """Encrypt ``plaintext`` from ``sender`` and commit the sender's new state."""
        self.states[sender], data = ratchet.encrypt(self.profile, self.states[sender], plaintext)
        return data

    def decrypt(self, receiver: str, data: bytes) -> tuple[RatchetState, bytes]:
        """Decrypt at ``receiver`` WITHOUT committing: returns the candidate state and the plaintext."""
        return ratchet.decrypt(
            self.profile,
            self.states[receiver],
            data,
            max_skipped_per_message=self.max_skipped_per_message,
            max_skipped_per_session=self.max_skipped_per_session,
            random_bytes=self.rng,
        )

    def receive(self, receiver: str, data: bytes) -> bytes:
        """Decrypt at ``receiver`` and commit the new state on success."""
        state, plaintext = self.decrypt(receiver, data)
        self.states[receiver] = state
        return plaintext

    def exchange(self, sender: str, plaintext: bytes) -> None:
        """Send one message and deliver it at once; assert it arrives intact."""
        receiver = "bob" if sender == "alice" else "alice"
        assert self.receive(receiver, self.send(sender, plaintext)) == plaintext


def open_session(
    profile: Profile,
    seed: int | str = 0,
    *,
    max_skipped_per_message: int = DEFAULT_LIMIT,
    max_skipped_per_session: int = DEFAULT_LIMIT,
) -> SessionPair:
    """A fresh session: Alice initiated it with a key exchange that Bob has received.

    Bob has no sending chain until he received; after this call both sides can send.
    """
    rng = seeded_rng(seed)
    alice_keys, bob_keys = DeviceKeys.generate(rng), DeviceKeys.generate(rng)
    alice, kex = send_key_exchange(profile, alice_keys, bob_keys, b"first contact", rng)
    bob, plaintext = receive_key_exchange(
        profile,
        bob_keys,
        alice_keys.identity_key,
        kex,
        rng,
        max_skipped_per_message=max_skipped_per_message,
        max_skipped_per_session=max_skipped_per_session,
    )
    assert plaintext == b"first contact"
    return SessionPair(
        profile,
        {"alice": alice, "bob": bob},
        rng,
        max_skipped_per_message=max_skipped_per_message,
        max_skipped_per_session=max_skipped_per_session,
    )
