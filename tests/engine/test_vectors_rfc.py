"""Known-answer tests of the primitives against the published RFC test vectors.

Provenance (values copied by hand from the RFC texts, byte for byte):

- RFC 7748, "Elliptic Curves for Security", https://www.rfc-editor.org/rfc/rfc7748
  - section 5.2 ("Test Vectors"): the two X25519 input/output pairs, and the iterated X25519 with
    k = u = 9 after 1 and 1,000 iterations (the 1,000,000-iteration value is not run: too slow);
  - section 6.1 ("Curve25519"): Alice's and Bob's key pairs and their shared secret.
- RFC 8032, "Edwards-Curve Digital Signature Algorithm (EdDSA)", https://www.rfc-editor.org/rfc/rfc8032
  section 7.1 ("Test Vectors for Ed25519"): TEST 1, TEST 2 and TEST 3 (secret key = our seed, public
  key, message, signature). XEdDSA signatures are randomised, so for ``sign`` we check that signatures
  made with several explicit nonces verify under the RFC public key, and that ``verify`` accepts the
  RFC's own (deterministic) signatures.
- RFC 5869, "HMAC-based Extract-and-Expand Key Derivation Function (HKDF)",
  https://www.rfc-editor.org/rfc/rfc5869 Appendix A, test cases 1, 2 and 3 (SHA-256); the PRK is
  checked through HMAC-SHA-256 (HKDF-Extract is ``HMAC(salt, IKM)``).
"""

from __future__ import annotations

import pytest

from omemo_engine import xeddsa
from omemo_engine._primitives import chain_step, chain_steps, hkdf_sha256, hmac_sha256, x25519, x25519_public
from omemo_engine.errors import InvalidSignature


def h(value: str) -> bytes:
    return bytes.fromhex(value.replace(" ", ""))


# --- RFC 7748 -----------------------------------------------------------------------------------

# Section 5.2: (scalar, u-coordinate, output). The second u has bit 255 set, which X25519 must mask.
RFC7748_X25519 = [
    (
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
]


@pytest.mark.parametrize(("scalar", "u", "expected"), RFC7748_X25519)
def test_rfc7748_x25519(scalar: str, u: str, expected: str) -> None:
    assert x25519(h(scalar), h(u)) == h(expected)


def test_rfc7748_x25519_iterated() -> None:
    # Section 5.2: k = u = 9; each round computes k' = X25519(k, u) and sets u = k.
    k = u = bytes((9,)) + bytes(31)
    results = {}
    for i in range(1, 1001):
        k, u = x25519(k, u), k
        if i in (1, 1000):
            results[i] = k
    assert results[1] == h("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
    assert results[1000] == h("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")


def test_rfc7748_diffie_hellman() -> None:
    # Section 6.1.
    alice_priv = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    alice_pub = h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    bob_priv = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    bob_pub = h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert x25519_public(alice_priv) == alice_pub
    assert x25519_public(bob_priv) == bob_pub
    assert xeddsa.priv_to_curve25519_pub(alice_priv) == alice_pub
    assert x25519(alice_priv, bob_pub) == shared
    assert x25519(bob_priv, alice_pub) == shared


# --- RFC 8032 -----------------------------------------------------------------------------------

# Section 7.1: (secret key, public key, message, signature).
RFC8032_ED25519 = {
    "TEST 1": (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b"
        "d25bf5f0595bbe24655141438e7a100b",
    ),
    "TEST 2": (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c"
        "387b2eaeb4302aeeb00d291612bb0c00",
    ),
    "TEST 3": (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc659"
        "4a7c15e9716ed28dc027beceea1ec40a",
    ),
}
ED25519_CASES = pytest.mark.parametrize(
    ("secret", "public", "message", "signature"), RFC8032_ED25519.values(), ids=RFC8032_ED25519.keys()
)


@ED25519_CASES
def test_rfc8032_public_key(secret: str, public: str, message: str, signature: str) -> None:
    del message, signature
    seed = h(secret)
    assert xeddsa.seed_to_ed25519_pub(seed) == h(public)
    # The identity scalar derived from the seed has the same public key, with its natural sign.
    assert xeddsa.priv_to_ed25519_pub(xeddsa.seed_to_priv(seed)) == h(public)
    assert xeddsa.ed25519_pub_sign_bit(h(public)) == bool(h(public)[31] & 0x80)


@ED25519_CASES
def test_rfc8032_verify(secret: str, public: str, message: str, signature: str) -> None:
    del secret
    xeddsa.verify(h(public), h(message), h(signature))
    # Any change to the message, the signature or the key makes the signature fail.
    with pytest.raises(InvalidSignature):
        xeddsa.verify(h(public), h(message) + b"\x00", h(signature))
    flipped = bytearray(h(signature))
    flipped[0] ^= 0x01
    with pytest.raises(InvalidSignature):
        xeddsa.verify(h(public), h(message), bytes(flipped))
    other_public = next(v[1] for v in RFC8032_ED25519.values() if v[1] != public)
    with pytest.raises(InvalidSignature):
        xeddsa.verify(h(other_public), h(message), h(signature))


@ED25519_CASES
@pytest.mark.parametrize("nonce_byte", [0x00, 0x5A, 0xFF])
def test_rfc8032_sign_with_given_nonce_verifies(
    secret: str, public: str, message: str, signature: str, nonce_byte: int
) -> None:
    del signature
    priv = xeddsa.seed_to_priv(h(secret))
    nonce = bytes((nonce_byte,)) * xeddsa.NONCE_LENGTH
    ours = xeddsa.sign(priv, h(message), nonce=nonce)
    assert len(ours) == xeddsa.SIGNATURE_LENGTH
    xeddsa.verify(h(public), h(message), ours)
    # The nonce alone decides R: the same nonce gives the same signature, another nonce another one.
    assert xeddsa.sign(priv, h(message), nonce=nonce) == ours
    assert xeddsa.sign(priv, h(message), nonce=bytes((nonce_byte ^ 1,)) * 64)[:32] != ours[:32]


# --- RFC 5869 -----------------------------------------------------------------------------------

# Appendix A: (IKM, salt, info, L, PRK, OKM).
RFC5869_SHA256 = {
    "A.1": (
        "0b" * 22,
        "000102030405060708090a0b0c",
        "f0f1f2f3f4f5f6f7f8f9",
        42,
        "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    ),
    "A.2": (
        bytes(range(0x00, 0x50)).hex(),
        bytes(range(0x60, 0xB0)).hex(),
        bytes(range(0xB0, 0x100)).hex(),
        82,
        "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09"
        "da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87",
    ),
    "A.3": (
        "0b" * 22,
        "",
        "",
        42,
        "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
    ),
}


@pytest.mark.parametrize(
    ("ikm", "salt", "info", "length", "prk", "okm"), RFC5869_SHA256.values(), ids=RFC5869_SHA256.keys()
)
def test_rfc5869_hkdf_sha256(ikm: str, salt: str, info: str, length: int, prk: str, okm: str) -> None:
    # HKDF-Extract: PRK = HMAC-Hash(salt, IKM); an empty salt means HashLen zero bytes.
    assert hmac_sha256(h(salt) or bytes(32), h(ikm)) == h(prk)
    assert hkdf_sha256(h(ikm), h(salt), h(info), length) == h(okm)


# RFC 4231 test case 2 (HMAC-SHA-256 with key "Jefe"), and the chain step's two HMACs with one key.
def test_rfc4231_hmac_sha256() -> None:
    expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert hmac_sha256(b"Jefe", b"what do ya want for nothing?") == h(expected)


@pytest.mark.parametrize("seed", range(8))
def test_chain_step_is_two_hmacs(seed: int) -> None:
    chain_key = bytes((seed * 37 + i) % 256 for i in range(32))
    assert chain_step(chain_key) == (hmac_sha256(chain_key, b"\x01"), hmac_sha256(chain_key, b"\x02"))


@pytest.mark.parametrize("count", [0, 1, 2, 7])
def test_chain_steps_are_chain_steps(count: int) -> None:
    chain_key, expected = bytes(range(32)), []
    start = chain_key
    for _ in range(count):
        message_key, chain_key = chain_step(chain_key)
        expected.append(message_key)
    assert chain_steps(start, count) == (expected, chain_key)
