"""Identity-key handling: XEdDSA over Curve25519/Ed25519.

Theory of operation. An OMEMO identity is one Curve25519/Ed25519 private scalar ``a``. It is usually
stored as a 32-byte Ed25519 *seed*; the scalar is the clamped first half of ``SHA-512(seed)``
(exactly libsodium's ``crypto_sign_ed25519_sk_to_curve25519``), so the seed is an ordinary Ed25519
private key. The same scalar is used for X25519 and for signing.

Signatures follow the XEdDSA construction (Signal's XEdDSA spec, rev. 1): a 64-byte random nonce
``Z`` is hashed with the domain separator ``hash_1`` = ``0xFE || 0xFF*31``, the private scalar and
the message into ``r``; ``R = rB``; ``h = SHA-512(R || A || M)``; ``s = r + h*a``. Unlike Signal's
``calculate_key_pair`` we do NOT negate ``a`` to force a zero sign bit: the OMEMO backends publish
the Ed25519 key with its natural sign (PROTOCOL.md 2.3), so the output verifies as a plain Ed25519
signature against ``A = aB``.

The legacy namespace transports identity keys in Curve25519 form, which loses the sign bit of the
Edwards point. libsignal stores that bit in the top bit of the last signature byte; see
:func:`embed_sign_bit` / :func:`extract_sign_bit`.

The Ed25519 group operations come from libsodium (PyNaCl); the Montgomery -> Edwards map is the
birational formula ``y = (u - 1) / (u + 1) mod p``, computed with Python integers.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import nacl.bindings as _sodium
import nacl.exceptions

from ._primitives import KEY_LENGTH, sha512, x25519_public
from .errors import InvalidKey, InvalidSignature

__all__ = [
    "NONCE_LENGTH",
    "SIGNATURE_LENGTH",
    "clamp",
    "curve25519_pub_to_ed25519_pub",
    "ed25519_pub_sign_bit",
    "ed25519_pub_to_curve25519_pub",
    "embed_sign_bit",
    "extract_sign_bit",
    "priv_force_sign",
    "priv_to_curve25519_pub",
    "priv_to_ed25519_pub",
    "seed_to_ed25519_pub",
    "seed_to_priv",
    "sign",
    "verify",
]

#: Length of an Ed25519/XEdDSA signature.
SIGNATURE_LENGTH = 64
#: Length of the random nonce ``Z`` of an XEdDSA signature.
NONCE_LENGTH = 64

_P = 2**255 - 19
# XEdDSA hash_1 prefix: the 32-byte little-endian encoding of 2**256 - 1 - 1.
_HASH_1_PREFIX = b"\xfe" + b"\xff" * 31
_ZERO32 = bytes(32)


def _check(name: str, value: bytes, length: int = KEY_LENGTH) -> None:
    if len(value) != length:
        raise InvalidKey(f"{name} must be {length} bytes, got {len(value)}")


def clamp(scalar: bytes) -> bytes:
    """Clamp a 32-byte scalar as X25519 does (clear bits 0-2 and 255, set bit 254)."""
    _check("private key", scalar)
    b = bytearray(scalar)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return bytes(b)


def seed_to_priv(seed: bytes) -> bytes:
    """The private scalar of an Ed25519 seed: ``clamp(SHA-512(seed)[0:32])``."""
    _check("seed", seed)
    return clamp(sha512(seed)[:32])


def seed_to_ed25519_pub(seed: bytes) -> bytes:
    """The RFC 8032 Ed25519 public key of a seed."""
    _check("seed", seed)
    pk, _sk = _sodium.crypto_sign_seed_keypair(seed)
    return bytes(pk)


def priv_to_ed25519_pub(priv: bytes) -> bytes:
    """The Ed25519 public key ``A = clamp(priv)·B`` with its natural sign bit."""
    return bytes(_sodium.crypto_scalarmult_ed25519_base_noclamp(clamp(priv)))


def priv_to_curve25519_pub(priv: bytes) -> bytes:
    """The Curve25519 (X25519) public key of a private scalar (clamped on use)."""
    return x25519_public(priv)


def ed25519_pub_sign_bit(ed25519_pub: bytes) -> bool:
    """The sign bit (parity of x) stored in the top bit of an Ed25519 public key."""
    _check("Ed25519 public key", ed25519_pub)
    return bool(ed25519_pub[31] & 0x80)


def ed25519_pub_to_curve25519_pub(ed25519_pub: bytes) -> bytes:
    """Map an Ed25519 public key to its Curve25519 form, ``u = (1 + y) / (1 - y)``.

    Raises:
        InvalidKey: not a valid point, of small order, or outside the prime-order subgroup (libsodium's
            checks).
    """
    _check("Ed25519 public key", ed25519_pub)
    try:
        return bytes(_sodium.crypto_sign_ed25519_pk_to_curve25519(ed25519_pub))
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError):
        raise InvalidKey("not a valid Ed25519 public key (bad encoding or small-order point)") from None


def curve25519_pub_to_ed25519_pub(curve25519_pub: bytes, sign_bit: bool) -> bytes:
    """Map a Curve25519 public key to Ed25519, ``y = (u - 1) / (u + 1)``, with an explicit sign bit.

    The Curve25519 form does not carry the sign of x, so the caller supplies it.

    Raises:
        InvalidKey: the key has the wrong length or is ``u = -1`` (which has no Edwards image).
    """
    _check("Curve25519 public key", curve25519_pub)
    u = int.from_bytes(curve25519_pub, "little") & ((1 << 255) - 1)
    if (u + 1) % _P == 0:
        raise InvalidKey("Curve25519 public key u = -1 has no Ed25519 equivalent")
    y = (u - 1) * pow(u + 1, -1, _P) % _P
    encoded = bytearray(y.to_bytes(32, "little"))
    if sign_bit:
        encoded[31] |= 0x80
    return bytes(encoded)


def _reduce(scalar: bytes) -> bytes:
    return bytes(_sodium.crypto_core_ed25519_scalar_reduce(scalar + _ZERO32))


def priv_force_sign(priv: bytes, sign_bit: bool) -> bytes:
    """Return a scalar whose Ed25519 public key has the wanted sign bit.

    The private key is clamped; if ``A = a·B`` has the other sign, ``a`` is replaced by ``q - a``
    (so ``A`` becomes ``-A``: the same Curve25519 public key, the other sign). The result is a reduced
    scalar meant for :func:`sign`, not for X25519 (which would clamp it again).
    """
    a = clamp(priv)
    if ed25519_pub_sign_bit(priv_to_ed25519_pub(a)) == sign_bit:
        return a
    return bytes(_sodium.crypto_core_ed25519_scalar_negate(_reduce(a)))


def sign(
    priv: bytes,
    message: bytes,
    nonce: bytes | None = None,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """XEdDSA-style signature with the private scalar as given (not clamped, sign not forced).

    Args:
        priv: the private scalar (for identity keys: :func:`seed_to_priv` of the seed).
        message: the bytes to sign.
        nonce: the 64-byte random ``Z``; drawn from ``random_bytes`` when omitted.
        random_bytes: the RNG used when ``nonce`` is omitted.

    Returns:
        ``R || s`` (64 bytes), a valid Ed25519 signature under ``A = priv·B``.

    Raises:
        InvalidKey: ``priv`` or ``nonce`` has the wrong length.
    """
    _check("private key", priv)
    if nonce is None:
        nonce = random_bytes(NONCE_LENGTH)
    _check("XEdDSA nonce", nonce, NONCE_LENGTH)
    a = _reduce(priv)
    # libsodium's _noclamp only clears bit 255, which a reduced scalar never has.
    ed_pub = bytes(_sodium.crypto_scalarmult_ed25519_base_noclamp(priv))
    r = bytes(_sodium.crypto_core_ed25519_scalar_reduce(sha512(_HASH_1_PREFIX + priv + message + nonce)))
    big_r = bytes(_sodium.crypto_scalarmult_ed25519_base_noclamp(r))
    h = bytes(_sodium.crypto_core_ed25519_scalar_reduce(sha512(big_r + ed_pub + message)))
    s = _sodium.crypto_core_ed25519_scalar_add(r, _sodium.crypto_core_ed25519_scalar_mul(h, a))
    return big_r + bytes(s)


def verify(ed25519_pub: bytes, message: bytes, signature: bytes) -> None:
    """Strictly verify an Ed25519 signature (libsodium: canonical ``s``, no small-order keys).

    Raises:
        InvalidSignature: the signature does not verify, or key/signature lengths are wrong.
    """
    if len(ed25519_pub) != KEY_LENGTH or len(signature) != SIGNATURE_LENGTH:
        raise InvalidSignature(
            f"signature must be {SIGNATURE_LENGTH} bytes and key {KEY_LENGTH} bytes, "
            f"got {len(signature)} and {len(ed25519_pub)}"
        )
    try:
        _sodium.crypto_sign_open(signature + message, ed25519_pub)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.RuntimeError):
        raise InvalidSignature("Ed25519 signature does not verify") from None


def embed_sign_bit(signature: bytes, ed25519_pub: bytes) -> bytes:
    """libsignal convention: store the Ed25519 key's sign bit in the top bit of ``signature[63]``.

    Raises:
        InvalidSignature: the signature is not 64 bytes.
        InvalidKey: the key is not 32 bytes.
    """
    if len(signature) != SIGNATURE_LENGTH:
        raise InvalidSignature(f"signature must be {SIGNATURE_LENGTH} bytes, got {len(signature)}")
    _check("Ed25519 public key", ed25519_pub)
    return signature[:63] + bytes((signature[63] | (ed25519_pub[31] & 0x80),))


def extract_sign_bit(signature: bytes) -> tuple[bytes, bool]:
    """Inverse of :func:`embed_sign_bit`: ``(signature with bit 511 cleared, sign bit)``."""
    if len(signature) != SIGNATURE_LENGTH:
        raise InvalidSignature(f"signature must be {SIGNATURE_LENGTH} bytes, got {len(signature)}")
    return signature[:63] + bytes((signature[63] & 0x7F,)), bool(signature[63] & 0x80)
