"""Misuse and API tests of the engine: wrong lengths and types, invalid points, bad bundles, corrupt
records, and secrets kept out of ``repr`` and error messages.

The rule under test (ARCHITECTURE.md, errors.py): bad input raises the engine error the callable
documents (:class:`InvalidKey` for keys, :class:`InvalidSignature` for signatures,
:class:`KeyExchangeError` for X3DH, :class:`InvalidState` for records, :class:`MalformedMessage` for
wire bytes); a value of the wrong *type* is local misuse and may raise a plain :class:`TypeError`.

Small-order point encodings: the Curve25519 list is libsodium's ``blocklist`` of
``crypto_scalarmult_curve25519`` (points of order 1, 2, 4, 8 and their non-canonical encodings);
the Ed25519 list is the eight small-order points of edwards25519 (order 1, 2, 4 and 8).
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from omemo_engine import payload, ratchet, x3dh, xeddsa
from omemo_engine._primitives import (
    aes_cbc_decrypt,
    aes_cbc_encrypt,
    aes_gcm_decrypt,
    aes_gcm_encrypt,
    x25519,
    x25519_public,
)
from omemo_engine.errors import (
    AuthenticationFailed,
    EngineError,
    InvalidKey,
    InvalidSignature,
    InvalidState,
    KeyExchangeError,
    MalformedMessage,
)
from omemo_engine.profile import LEGACY, OMEMO2, Profile
from omemo_engine.ratchet import RatchetState
from omemo_engine.wire import Header, KeyExchangeFields

from .helpers import PROFILES, DeviceKeys, next_message_keys, open_session, seeded_rng, send_key_exchange

BOTH = pytest.mark.parametrize("profile", PROFILES.values(), ids=PROFILES.keys())

_P = 2**255 - 19
K32 = bytes(range(1, 33))
#: Lengths no key, IV or tag argument accepts (AES keys: 16/24/32, legacy IVs 12/16, CBC IVs 16).
WRONG_LENGTHS = [b"", bytes(31), bytes(33), bytes(63), bytes(65)]
#: Values no byte-string argument accepts (None is left out: ``sign(nonce=None)`` means "draw one").
WRONG_TYPES: list[Any] = [0, 1.5, "a" * 32, object()]


def le(value: int) -> bytes:
    return value.to_bytes(32, "little")


#: Curve25519 u-coordinates of small order (libsodium's blocklist), incl. non-canonical encodings.
SMALL_ORDER_U = [
    le(0),
    le(1),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    le(_P - 1),
    le(_P),
    le(_P + 1),
]
#: The eight small-order Ed25519 points (order 1, 2, 4, 4, 8, 8, 8, 8).
SMALL_ORDER_ED25519 = [
    le(1),
    le(_P - 1),
    le(0),
    le(0)[:31] + b"\x80",
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"),
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
]

SEED = bytes(range(32))
PRIV = xeddsa.seed_to_priv(SEED)
ED_PUB = xeddsa.seed_to_ed25519_pub(SEED)
CURVE_PUB = xeddsa.priv_to_curve25519_pub(PRIV)


# --- wrong lengths and types -----------------------------------------------------------------------

# (name, callable taking the bad value, expected error)
KEY_FUNCTIONS: list[tuple[str, Callable[[Any], object], type[Exception]]] = [
    ("clamp", xeddsa.clamp, InvalidKey),
    ("seed_to_priv", xeddsa.seed_to_priv, InvalidKey),
    ("seed_to_ed25519_pub", xeddsa.seed_to_ed25519_pub, InvalidKey),
    ("priv_to_ed25519_pub", xeddsa.priv_to_ed25519_pub, InvalidKey),
    ("priv_to_curve25519_pub", xeddsa.priv_to_curve25519_pub, InvalidKey),
    ("ed25519_pub_sign_bit", xeddsa.ed25519_pub_sign_bit, InvalidKey),
    ("ed25519_pub_to_curve25519_pub", xeddsa.ed25519_pub_to_curve25519_pub, InvalidKey),
    ("curve25519_pub_to_ed25519_pub", lambda v: xeddsa.curve25519_pub_to_ed25519_pub(v, False), InvalidKey),
    ("priv_force_sign", lambda v: xeddsa.priv_force_sign(v, True), InvalidKey),
    ("sign(priv)", lambda v: xeddsa.sign(v, b"m", nonce=bytes(64)), InvalidKey),
    ("sign(nonce)", lambda v: xeddsa.sign(PRIV, b"m", nonce=v), InvalidKey),
    ("sign(random_bytes)", lambda v: xeddsa.sign(PRIV, b"m", random_bytes=lambda n: v), InvalidKey),
    ("verify(key)", lambda v: xeddsa.verify(v, b"m", bytes(64)), InvalidSignature),
    ("verify(signature)", lambda v: xeddsa.verify(ED_PUB, b"m", v), InvalidSignature),
    ("embed_sign_bit(signature)", lambda v: xeddsa.embed_sign_bit(v, ED_PUB), InvalidSignature),
    ("embed_sign_bit(key)", lambda v: xeddsa.embed_sign_bit(bytes(64), v), InvalidKey),
    ("extract_sign_bit", xeddsa.extract_sign_bit, InvalidSignature),
    ("x25519(private)", lambda v: x25519(v, CURVE_PUB), InvalidKey),
    ("x25519(public)", lambda v: x25519(K32, v), InvalidKey),
    ("x25519_public", x25519_public, InvalidKey),
    ("aes_cbc_encrypt(key)", lambda v: aes_cbc_encrypt(v, bytes(16), b"x"), InvalidKey),
    ("aes_cbc_encrypt(iv)", lambda v: aes_cbc_encrypt(K32, v, b"x"), InvalidKey),
    ("aes_cbc_decrypt(key)", lambda v: aes_cbc_decrypt(v, bytes(16), bytes(16)), InvalidKey),
    ("aes_cbc_decrypt(iv)", lambda v: aes_cbc_decrypt(K32, v, bytes(16)), InvalidKey),
    ("aes_gcm_encrypt(key)", lambda v: aes_gcm_encrypt(v, bytes(12), b"x"), InvalidKey),
    ("aes_gcm_decrypt(key)", lambda v: aes_gcm_decrypt(v, bytes(12), b"x", bytes(16)), AuthenticationFailed),
    ("aes_gcm_decrypt(tag)", lambda v: aes_gcm_decrypt(K32, bytes(12), b"x", v), AuthenticationFailed),
    ("legacy_encrypt(random_bytes)", lambda v: payload.legacy_encrypt(b"x", lambda n: v), InvalidKey),
    ("omemo2_decrypt(key material)", lambda v: payload.omemo2_decrypt(bytes(16), v), AuthenticationFailed),
    ("legacy_decrypt(iv)", lambda v: payload.legacy_decrypt(bytes(16), v, bytes(32)), AuthenticationFailed),
    (
        "legacy_decrypt(key material)",
        lambda v: payload.legacy_decrypt(bytes(16), bytes(12), v),
        AuthenticationFailed,
    ),
]


@pytest.mark.parametrize(("name", "call", "error"), KEY_FUNCTIONS, ids=[k[0] for k in KEY_FUNCTIONS])
@pytest.mark.parametrize("value", WRONG_LENGTHS, ids=lambda v: f"len{len(v)}")
def test_wrong_lengths_raise_the_documented_error(
    name: str, call: Callable[[Any], object], error: type[Exception], value: bytes
) -> None:
    del name
    with pytest.raises(error):
        call(value)


@pytest.mark.parametrize(("name", "call", "error"), KEY_FUNCTIONS, ids=[k[0] for k in KEY_FUNCTIONS])
@pytest.mark.parametrize("value", WRONG_TYPES, ids=lambda v: type(v).__name__)
def test_wrong_types_raise_type_error_or_the_documented_error(
    name: str, call: Callable[[Any], object], error: type[Exception], value: object
) -> None:
    del name
    with pytest.raises((TypeError, error)):
        call(value)


def test_x25519_accepts_every_32_byte_private_key() -> None:
    # X25519 clamps on use: every 32-byte string is a usable private key, even all-zero.
    for priv in (bytes(32), b"\xff" * 32):
        assert len(x25519_public(priv)) == 32
        assert x25519(priv, CURVE_PUB) == x25519(xeddsa.clamp(priv), CURVE_PUB)


# --- invalid points --------------------------------------------------------------------------------


@pytest.mark.parametrize("u", SMALL_ORDER_U, ids=lambda u: u.hex()[:8])
@pytest.mark.parametrize("high_bit", [False, True])
def test_x25519_small_order_u_gives_invalid_key(u: bytes, high_bit: bool) -> None:
    # The all-zero output of X25519 with a small-order point is refused (RFC 7748 section 6.1).
    if high_bit:
        u = u[:31] + bytes((u[31] | 0x80,))
    with pytest.raises(InvalidKey, match="all-zero"):
        x25519(K32, u)


@pytest.mark.parametrize("point", SMALL_ORDER_ED25519, ids=lambda p: p.hex()[:8] + p.hex()[-2:])
def test_small_order_ed25519_keys_are_refused(point: bytes) -> None:
    with pytest.raises(InvalidKey):
        xeddsa.ed25519_pub_to_curve25519_pub(point)
    # R = identity, s = 0 is a "valid" signature of every message under the identity point under a
    # lax verifier; the strict verifier refuses small-order keys outright.
    with pytest.raises(InvalidSignature):
        xeddsa.verify(point, b"any message", le(1) + bytes(32))


def test_ed25519_key_off_the_curve_is_refused() -> None:
    # y = 2 is not the y-coordinate of any point of edwards25519.
    with pytest.raises(InvalidKey):
        xeddsa.ed25519_pub_to_curve25519_pub(le(2))


def test_non_canonical_signature_scalar_is_refused() -> None:
    order = 2**252 + 27742317777372353535851937790883648493
    signature = xeddsa.sign(PRIV, b"m", nonce=bytes(64))
    xeddsa.verify(ED_PUB, b"m", signature)
    s = int.from_bytes(signature[32:], "little")
    with pytest.raises(InvalidSignature):
        xeddsa.verify(ED_PUB, b"m", signature[:32] + le(s + order))


@pytest.mark.parametrize("u", [le(_P - 1), le(_P - 1)[:31] + b"\xff"], ids=["canonical", "high-bit"])
def test_curve25519_u_minus_one_has_no_ed25519_form(u: bytes) -> None:
    with pytest.raises(InvalidKey, match="u = -1"):
        xeddsa.curve25519_pub_to_ed25519_pub(u, False)
    with pytest.raises(InvalidKey):
        xeddsa.curve25519_pub_to_ed25519_pub(u, True)


def test_sign_bit_helpers() -> None:
    signature = xeddsa.sign(PRIV, b"m", nonce=bytes(64))
    negative = xeddsa.curve25519_pub_to_ed25519_pub(CURVE_PUB, True)
    embedded = xeddsa.embed_sign_bit(signature, negative)
    assert xeddsa.extract_sign_bit(embedded) == (signature, True)
    assert xeddsa.extract_sign_bit(xeddsa.embed_sign_bit(signature, negative[:31] + b"\x00")) == (
        signature,
        False,
    )


# --- X3DH ------------------------------------------------------------------------------------------


def bob_keys() -> DeviceKeys:
    return DeviceKeys.generate(seeded_rng("misuse-bob"))


@BOTH
def test_bundle_with_bad_signature(profile: Profile) -> None:
    bob = bob_keys()
    bundle = bob.bundle(profile, seeded_rng(1))
    flipped = bytes((bundle.signed_pre_key_signature[0] ^ 1,)) + bundle.signed_pre_key_signature[1:]
    for bad in (
        dataclasses.replace(bundle, signed_pre_key_signature=flipped),
        dataclasses.replace(bundle, signed_pre_key_signature=bytes(64)),
        dataclasses.replace(bundle, signed_pre_key_signature=b""),
        dataclasses.replace(bundle, signed_pre_key=x25519_public(K32)),
        dataclasses.replace(bundle, identity_key=ED_PUB),
        dataclasses.replace(bundle, identity_key=ED_PUB[:31]),
    ):
        with pytest.raises(KeyExchangeError, match="signature"):
            x3dh.verify_bundle(profile, bad)
        with pytest.raises(KeyExchangeError):
            x3dh.active(profile, PRIV, ED_PUB, bad, random_bytes=seeded_rng(2))


def test_bundle_signature_of_the_other_namespace_is_refused() -> None:
    # OMEMO 2 signs the raw key, the legacy namespace 0x05 || key: the signatures are not interchangeable.
    bob = bob_keys()
    omemo2_bundle, legacy_bundle = bob.bundle(OMEMO2, seeded_rng(1)), bob.bundle(LEGACY, seeded_rng(1))
    with pytest.raises(KeyExchangeError):
        x3dh.verify_bundle(LEGACY, omemo2_bundle)
    with pytest.raises(KeyExchangeError):
        x3dh.verify_bundle(OMEMO2, legacy_bundle)


@BOTH
def test_bundle_without_one_time_pre_keys(profile: Profile) -> None:
    bundle = dataclasses.replace(bob_keys().bundle(profile, seeded_rng(1)), pre_keys={})
    with pytest.raises(KeyExchangeError, match="no one-time pre keys"):
        x3dh.verify_bundle(profile, bundle)
    with pytest.raises(KeyExchangeError):
        x3dh.active(profile, PRIV, ED_PUB, bundle, random_bytes=seeded_rng(2))


def signed_bundle(profile: Profile, spk: bytes, pre_key: bytes) -> x3dh.PreKeyBundle:
    """A bundle whose signature is valid for whatever signed pre key it carries."""
    bob = bob_keys()
    signature = xeddsa.sign(bob.priv, profile.encode_signed_pre_key(spk), nonce=bytes(64))
    return x3dh.PreKeyBundle(
        identity_key=bob.identity_key,
        signed_pre_key_id=1,
        signed_pre_key=spk,
        signed_pre_key_signature=signature,
        pre_keys={1: pre_key},
    )


@BOTH
@pytest.mark.parametrize("field", ["signed_pre_key", "pre_key", "identity_key_curve"])
@pytest.mark.parametrize("bad", [SMALL_ORDER_U[2], bytes(31), bytes(33)], ids=["small-order", "31", "33"])
def test_active_with_unusable_public_keys(profile: Profile, field: str, bad: bytes) -> None:
    good = x25519_public(K32)
    if field == "signed_pre_key":
        bundle = signed_bundle(profile, bad, good)
    elif field == "pre_key":
        bundle = signed_bundle(profile, good, bad)
    else:
        bundle = dataclasses.replace(signed_bundle(profile, good, good), identity_key_curve=bad)
    with pytest.raises(KeyExchangeError):
        x3dh.active(profile, PRIV, ED_PUB, bundle, random_bytes=seeded_rng(3))


@BOTH
def test_active_with_a_small_order_identity_key(profile: Profile) -> None:
    bundle = dataclasses.replace(
        signed_bundle(profile, CURVE_PUB, CURVE_PUB), identity_key=SMALL_ORDER_ED25519[0]
    )
    with pytest.raises(KeyExchangeError):
        x3dh.active(profile, PRIV, ED_PUB, bundle, random_bytes=seeded_rng(3))


@BOTH
@pytest.mark.parametrize("bad", [bytes(31), bytes(33)], ids=["31", "33"])
def test_active_with_own_keys_of_wrong_length(profile: Profile, bad: bytes) -> None:
    # Our own keys come from our storage: a wrong length is local misuse (InvalidKey).
    bundle = bob_keys().bundle(profile, seeded_rng(1))
    with pytest.raises(InvalidKey, match="identity_priv"):
        x3dh.active(profile, bad, ED_PUB, bundle, random_bytes=seeded_rng(3))
    with pytest.raises(InvalidKey, match="identity_key"):
        x3dh.active(profile, PRIV, bad, bundle, random_bytes=seeded_rng(3))
    with pytest.raises(InvalidKey, match="identity_key_curve"):
        x3dh.active(profile, PRIV, ED_PUB, bundle, random_bytes=seeded_rng(3), identity_key_curve=bad)
    # A broken RNG gives an unusable ephemeral key: the exchange fails.
    with pytest.raises(KeyExchangeError):
        x3dh.active(profile, PRIV, ED_PUB, bundle, random_bytes=lambda n: bytes(n - 1))


PASSIVE_ARGS = {
    "identity_priv": PRIV,
    "identity_key": ED_PUB,
    "signed_pre_key_priv": K32,
    "pre_key_priv": K32,
    "other_identity_key": ED_PUB,
    "ephemeral_key": x25519_public(K32),
}


@BOTH
@pytest.mark.parametrize(
    "name", [*PASSIVE_ARGS, "identity_key_curve", "other_identity_key_curve"], ids=lambda n: n
)
@pytest.mark.parametrize("bad", [bytes(31), bytes(33), SMALL_ORDER_U[3]], ids=["31", "33", "small-order"])
def test_passive_with_unusable_keys(profile: Profile, name: str, bad: bytes) -> None:
    own = name not in ("other_identity_key", "ephemeral_key", "other_identity_key_curve")
    if bad == SMALL_ORDER_U[3] and own:
        # Every 32-byte string is a valid (clamped) private key, and our own public keys only
        # enter the associated data: a wrong one gives another session, not an error.
        x3dh.passive(profile, **{**PASSIVE_ARGS, name: bad})
        return
    with pytest.raises(InvalidKey if own else KeyExchangeError):
        x3dh.passive(profile, **{**PASSIVE_ARGS, name: bad})


@BOTH
def test_active_result_and_passive_agree(profile: Profile) -> None:
    bob = bob_keys()
    result = x3dh.active(
        profile, PRIV, ED_PUB, bob.bundle(profile, seeded_rng(1)), random_bytes=seeded_rng(4)
    )
    shared, ad = x3dh.passive(
        profile,
        identity_priv=bob.priv,
        identity_key=bob.identity_key,
        signed_pre_key_priv=bob.signed_pre_key_priv,
        pre_key_priv=bob.pre_keys[result.pre_key_id][0],
        other_identity_key=ED_PUB,
        ephemeral_key=result.ephemeral_key,
    )
    assert (shared, ad) == (result.shared_secret, result.associated_data)
    assert result.pre_key == bob.pre_keys[result.pre_key_id][1]


def test_pre_key_choice_is_uniform_over_the_ids() -> None:
    bob = DeviceKeys.generate(seeded_rng("many"), pre_keys=5)
    bundle = bob.bundle(OMEMO2, seeded_rng(1))
    rng = seeded_rng("choice")
    chosen = {x3dh.active(OMEMO2, PRIV, ED_PUB, bundle, random_bytes=rng).pre_key_id for _ in range(60)}
    assert chosen == set(bob.pre_keys)


def test_pre_key_choice_rejects_biased_draws() -> None:
    # With 3 pre keys, 32-bit draws >= 2**32 - 2**32 % 3 are rejected (no modulo bias).
    bundle = DeviceKeys.generate(seeded_rng("three"), pre_keys=3).bundle(OMEMO2, seeded_rng(1))
    draws = iter([K32, b"\xff\xff\xff\xff", (5).to_bytes(4, "big")])
    result = x3dh.active(OMEMO2, PRIV, ED_PUB, bundle, random_bytes=lambda n: next(draws))
    assert result.pre_key_id == sorted(bundle.pre_keys)[5 % 3]


# --- Double Ratchet -------------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize("bad", [bytes(31), bytes(33), SMALL_ORDER_U[0]], ids=["31", "33", "zero"])
def test_initialize_active_with_an_unusable_signed_pre_key(profile: Profile, bad: bytes) -> None:
    with pytest.raises(InvalidKey):
        ratchet.initialize_active(profile, K32, bytes(64), bad, seeded_rng(1))


@BOTH
@pytest.mark.parametrize("argument", ["shared_secret", "priv", "pub", "associated_data"])
def test_initializers_check_lengths(profile: Profile, argument: str) -> None:
    args = {"shared_secret": K32, "priv": K32, "pub": x25519_public(K32), "associated_data": bytes(64)}
    args[argument] = bytes(256) if argument == "associated_data" else bytes(31)
    with pytest.raises(InvalidKey):
        ratchet.initialize_passive(
            profile, args["shared_secret"], args["associated_data"], args["priv"], args["pub"]
        )
    if argument in ("shared_secret", "associated_data"):
        with pytest.raises(InvalidKey):
            ratchet.initialize_active(
                profile, args["shared_secret"], args["associated_data"], args["pub"], seeded_rng(1)
            )
    if argument == "priv":
        with pytest.raises(InvalidKey):
            ratchet.initialize_active(profile, K32, bytes(64), x25519_public(K32), lambda n: bytes(n - 1))


@BOTH
def test_decrypt_of_a_small_order_ratchet_key(profile: Profile) -> None:
    pair = open_session(profile, "small-order-ratchet-key")
    ad = profile.mac_associated_data(pair.alice.associated_data, sender_is_initiator=True)
    for point in SMALL_ORDER_U:
        data = profile.wire.seal(Header(point, 0, 0), bytes(16), K32, ad)
        before = pair.bob.to_bytes()
        with pytest.raises(AuthenticationFailed, match="invalid ratchet key"):
            pair.receive("bob", data)
        assert pair.bob.to_bytes() == before


@BOTH
@pytest.mark.parametrize("value", [None, 42, "text", ["list"]], ids=lambda v: type(v).__name__)
def test_decrypt_of_wrong_types(profile: Profile, value: Any) -> None:
    pair = open_session(profile, "types")
    with pytest.raises((TypeError, MalformedMessage)):
        pair.receive("bob", value)


@BOTH
def test_wire_rejections(profile: Profile) -> None:
    pair = open_session(profile, "wire")
    genuine = pair.send("alice", b"x")
    bad_inputs = [b"", b"\x00", genuine[:-1], genuine[: len(genuine) // 2], b"\xff" * 40]
    for data in bad_inputs:
        with pytest.raises(MalformedMessage):
            profile.wire.open(data)
        with pytest.raises(MalformedMessage):
            profile.wire.parse_key_exchange(data)


def test_omemo2_wire_field_checks() -> None:
    from omemo_engine import wire

    body = wire._O2_MESSAGE(n=0, pn=0, dh_pub=K32, ciphertext=b"c").SerializeToString()
    short_key = wire._O2_MESSAGE(n=0, pn=0, dh_pub=K32[:31], ciphertext=b"c").SerializeToString()
    no_ciphertext = wire._O2_MESSAGE(n=0, pn=0, dh_pub=K32).SerializeToString()
    cases = {
        "mac length": wire._O2_AUTH(mac=bytes(15), message=body),
        "dh_pub length": wire._O2_AUTH(mac=bytes(16), message=short_key),
        "no ciphertext": wire._O2_AUTH(mac=bytes(16), message=no_ciphertext),
        "message not protobuf": wire._O2_AUTH(mac=bytes(16), message=b"\xff\xff"),
    }
    for name, message in cases.items():
        with pytest.raises(MalformedMessage):
            wire.OMEMO2_WIRE.open(message.SerializeToString())
            pytest.fail(f"accepted: {name}")
    good = wire.OMEMO2_WIRE.seal(Header(K32, 0, 0), b"c", K32, b"")
    for ik, ek in ((K32[:31], K32), (K32, K32 + b"\x00")):
        kex = wire.OMEMO2_WIRE.build_key_exchange(KeyExchangeFields(1, 1, ik, ek), good)
        with pytest.raises(MalformedMessage, match="must be 32 bytes"):
            wire.OMEMO2_WIRE.parse_key_exchange(kex)


@pytest.mark.parametrize(
    "message", [b"\xff\xff not protobuf", b"", b"\x0a\x00"], ids=["garbage", "empty", "no-message"]
)
def test_omemo2_build_key_exchange_refuses_a_non_message(message: bytes) -> None:
    with pytest.raises(MalformedMessage):
        OMEMO2.wire.build_key_exchange(KeyExchangeFields(1, 1, K32, K32), message)


@pytest.mark.parametrize(
    "embedded", [None, b"", b"\x0a\x10" + bytes(16)], ids=["absent", "empty", "no-message"]
)
def test_omemo2_key_exchange_with_an_incomplete_message(embedded: bytes | None) -> None:
    # Regression: the nested OMEMOAuthenticatedMessage lacking its required fields made
    # parse_key_exchange leak protobuf's EncodeError. Now the embedded bytes come out as they are
    # and open() rejects them.
    from omemo_engine import wire

    kex = wire._O2_KEX(pk_id=1, spk_id=1, ik=K32, ek=K32).SerializePartialToString()
    if embedded is None:
        with pytest.raises(MalformedMessage, match="no message"):
            OMEMO2.wire.parse_key_exchange(kex)
        return
    kex += b"\x2a" + bytes((len(embedded),)) + embedded
    _fields, message = OMEMO2.wire.parse_key_exchange(kex)
    assert message == embedded
    with pytest.raises(MalformedMessage):
        OMEMO2.wire.open(message)


def test_legacy_wire_field_checks() -> None:
    from omemo_engine import wire

    def message(**fields: Any) -> bytes:
        return b"\x33" + wire._L_MESSAGE(**fields).SerializeToString() + bytes(8)

    key = b"\x05" + K32
    cases = [
        message(counter=0, ciphertext=b"c"),
        message(ratchet_key=key, ciphertext=b"c"),
        message(ratchet_key=key, counter=0),
        message(ratchet_key=K32, counter=0, ciphertext=b"c"),
        message(ratchet_key=b"\x06" + K32, counter=0, ciphertext=b"c"),
        b"\x33" + bytes(8),
        b"\x33\xff\xff" + bytes(8),
    ]
    for data in cases:
        with pytest.raises(MalformedMessage):
            wire.LEGACY_WIRE.open(data)

    def kex(**fields: Any) -> bytes:
        return b"\x33" + wire._L_KEX(**fields).SerializeToString()

    full = {"pre_key_id": 1, "base_key": key, "identity_key": key, "message": b"m", "signed_pre_key_id": 1}
    wire.LEGACY_WIRE.parse_key_exchange(kex(**full))
    for name in full:
        with pytest.raises(MalformedMessage, match="preKeyId" if name == "pre_key_id" else "has no"):
            wire.LEGACY_WIRE.parse_key_exchange(kex(**{k: v for k, v in full.items() if k != name}))
    for name in ("base_key", "identity_key"):
        with pytest.raises(MalformedMessage, match="0x05"):
            wire.LEGACY_WIRE.parse_key_exchange(kex(**{**full, name: K32}))


@BOTH
@pytest.mark.parametrize("value", WRONG_TYPES, ids=lambda v: type(v).__name__)
def test_encrypt_of_wrong_types(profile: Profile, value: Any) -> None:
    pair = open_session(profile, "encrypt-types")
    with pytest.raises(TypeError):
        pair.send("alice", value)


@BOTH
def test_encrypt_without_sending_chain(profile: Profile) -> None:
    state = ratchet.initialize_passive(profile, K32, bytes(64), K32, x25519_public(K32))
    with pytest.raises(EngineError):
        ratchet.encrypt(profile, state, b"x")


# --- serialised states -----------------------------------------------------------------------------


@BOTH
def test_from_bytes_of_every_truncation(profile: Profile) -> None:
    pair = open_session(profile, "truncation")
    pair.send("alice", b"skipped")
    pair.exchange("alice", b"x")
    record = pair.bob.to_bytes()
    assert pair.bob.skipped
    for length in range(len(record)):
        with pytest.raises(InvalidState):
            RatchetState.from_bytes(record[:length])
    with pytest.raises(InvalidState):
        RatchetState.from_bytes(record + b"\x00")


@pytest.mark.parametrize("version", [0, 2, 0x7F, 0xFF])
def test_from_bytes_of_unknown_versions(version: int) -> None:
    record = open_session(OMEMO2, "versions").bob.to_bytes()
    with pytest.raises(InvalidState, match="version"):
        RatchetState.from_bytes(bytes((version,)) + record[1:])


def test_from_bytes_of_corrupt_records() -> None:
    pair = open_session(LEGACY, "corrupt")
    pair.send("bob", b"skipped")
    pair.exchange("bob", b"x")
    record = pair.alice.to_bytes()
    count_at = len(record) - 4 - 68 * len(pair.alice.skipped)
    corrupt = {
        "unknown flag bits": record[:1] + bytes((record[1] | 0x10,)) + record[2:],
        "flags without a chain": record[:1] + bytes((record[1] & ~0x04,)) + record[2:],
        "associated data too long": record[:2] + b"\xff" + record[3:],
        "skipped count too high": record[:count_at] + (2).to_bytes(4, "big") + record[count_at + 4 :],
        "skipped count huge": record[:count_at] + b"\xff\xff\xff\xff" + record[count_at + 4 :],
        "duplicate skipped entry": record[:count_at]
        + (2).to_bytes(4, "big")
        + record[count_at + 4 :]
        + record[count_at + 4 :],
    }
    for name, data in corrupt.items():
        with pytest.raises(InvalidState):
            RatchetState.from_bytes(data)
            pytest.fail(f"accepted: {name}")


@pytest.mark.parametrize("value", [None, 42, "abc"], ids=lambda v: type(v).__name__)
def test_from_bytes_of_wrong_types(value: Any) -> None:
    with pytest.raises((TypeError, InvalidState)):
        RatchetState.from_bytes(value)


# --- secrets stay out of repr and messages ---------------------------------------------------------


def encodings(secret: bytes) -> list[str]:
    return [
        secret.hex(),
        secret.hex().upper(),
        repr(secret)[2:-1],
        base64.b64encode(secret).decode(),
        str(list(secret))[1:-1],
    ]


def assert_hidden(text: str, secrets: list[bytes]) -> None:
    for secret in secrets:
        for encoded in encodings(secret):
            assert encoded not in text


def state_secrets(state: RatchetState) -> list[bytes]:
    values = [state.root_key, state.own_ratchet_priv, *state.skipped.values()]
    values += [k for k in (state.sending_chain_key, state.receiving_chain_key) if k is not None]
    return values


@BOTH
def test_repr_of_states_hides_keys(profile: Profile) -> None:
    pair = open_session(profile, "repr")
    pair.send("alice", b"skipped")
    pair.exchange("alice", b"x")
    pair.exchange("bob", b"y")
    for state in (pair.alice, pair.bob):
        assert state.skipped or state is pair.alice
        text = repr(state) + str(state) + f"{state!r} {state!s}"
        assert text.startswith("RatchetState(")
        public = [state.own_ratchet_pub, state.associated_data]
        public += [state.other_ratchet_pub] if state.other_ratchet_pub else []
        assert_hidden(text, state_secrets(state) + public)


@BOTH
def test_repr_of_results_hides_the_shared_secret(profile: Profile) -> None:
    rng = seeded_rng("repr-x3dh")
    alice, bob = DeviceKeys.generate(rng), DeviceKeys.generate(rng)
    result = x3dh.active(profile, alice.priv, alice.identity_key, bob.bundle(profile, rng), random_bytes=rng)
    assert_hidden(repr(result) + str(result), [result.shared_secret])
    state, _kex = send_key_exchange(profile, alice, bob, b"x", rng)
    assert_hidden(repr(state), state_secrets(state))


@BOTH
def test_error_messages_hide_keys(profile: Profile) -> None:
    pair = open_session(profile, "messages", max_skipped_per_message=2)
    secrets = state_secrets(pair.bob) + state_secrets(pair.alice)
    genuine = pair.send("alice", b"plaintext that must not leak")
    attempts = [genuine[:-1] + bytes((genuine[-1] ^ 1,)), genuine[:5], b""]
    for _ in range(3):
        pair.send("alice", b"skip")
    attempts.append(pair.send("alice", b"too far"))
    messages = []
    for data in attempts:
        with pytest.raises(EngineError) as info:
            pair.receive("bob", data)
        messages.append(str(info.value) + repr(info.value))
    assert_hidden(" ".join(messages), [*secrets, b"plaintext that must not leak"])


@BOTH
@pytest.mark.parametrize(
    "ciphertext", [b"", bytes(15), bytes(17), bytes(16)], ids=["empty", "15", "17", "bad-pad"]
)
def test_authentic_message_with_a_bad_ciphertext(profile: Profile, ciphertext: bytes) -> None:
    # A message with a valid MAC (as only the peer could make) whose AES-CBC ciphertext is not whole
    # blocks or has bad padding: the one answer is AuthenticationFailed, and the state is unchanged.
    pair = open_session(profile, "bad-ciphertext")
    state = pair.alice
    _aes_key, mac_key, _iv = next_message_keys(profile, state)
    ad = profile.mac_associated_data(state.associated_data, sender_is_initiator=True)
    data = profile.wire.seal(Header(state.own_ratchet_pub, state.sending_n, 0), ciphertext, mac_key, ad)
    before = pair.bob.to_bytes()
    with pytest.raises(AuthenticationFailed):
        pair.receive("bob", data)
    assert pair.bob.to_bytes() == before
    with pytest.raises(AuthenticationFailed):
        aes_cbc_decrypt(K32, bytes(16), ciphertext)
