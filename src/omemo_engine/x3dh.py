"""X3DH key agreement (Signal's X3DH specification), parameterised by a :class:`~.profile.Profile`.

Theory of operation. The initiator ("active" side, A) downloads the responder's (B's) bundle:
identity key IK_B, signed pre key SPK_B with its signature, and one-time pre keys. It verifies the
signature, picks one one-time pre key OPK_B uniformly at random, draws an ephemeral key EK and
computes::

    DH1 = X25519(IK_A, SPK_B)   DH2 = X25519(EK, IK_B)   DH3 = X25519(EK, SPK_B)   DH4 = X25519(EK, OPK_B)
    SK  = HKDF-SHA-256(0xFF*32 || DH1 || DH2 || DH3 || DH4, salt = 0x00*32, info, 32)
    AD  = Encode(IK_A) || Encode(IK_B)

The responder ("passive" side) mirrors the four DH computations with its private keys.

Deliberate departure from the X3DH spec: a bundle without one-time pre keys is refused, because
XEP-0384 requires key exchanges to use one (and a pre-key-less exchange gives no protection against
replays of the first message).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from . import xeddsa
from ._primitives import KEY_LENGTH, hkdf_sha256, x25519, x25519_public
from .errors import InvalidBundleSignature, InvalidKey, InvalidSignature, KeyExchangeError, NoPreKeys
from .profile import Profile

__all__ = [
    "ActiveResult",
    "PreKeyBundle",
    "active",
    "passive",
    "verify_bundle",
]

_PADDING = b"\xff" * 32
_SALT = bytes(32)
_SHARED_SECRET_LENGTH = 32


@dataclass(frozen=True, slots=True)
class PreKeyBundle:
    """The public X3DH data of a device.

    Attributes:
        identity_key: Ed25519 identity key.
        signed_pre_key_id: id of the signed pre key.
        signed_pre_key: X25519 public signed pre key (32 bytes).
        signed_pre_key_signature: plain Ed25519 signature over the profile's encoding of the signed
            pre key (for legacy bundles: with the sign bit already removed from byte 63).
        pre_keys: one-time pre keys by id (X25519 publics).
        identity_key_curve: optional Curve25519 form of the identity key, if the caller has it
            (saves a conversion).
    """

    identity_key: bytes
    signed_pre_key_id: int
    signed_pre_key: bytes
    signed_pre_key_signature: bytes
    pre_keys: Mapping[int, bytes]
    identity_key_curve: bytes | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class ActiveResult:
    """The outcome of the active side of X3DH. ``shared_secret`` is secret (not shown in repr)."""

    shared_secret: bytes = field(repr=False)
    associated_data: bytes
    pre_key_id: int
    pre_key: bytes
    signed_pre_key_id: int
    signed_pre_key: bytes
    ephemeral_key: bytes


def verify_bundle(profile: Profile, bundle: PreKeyBundle) -> None:
    """Check a bundle's signed-pre-key signature and that it has one-time pre keys.

    Raises:
        KeyExchangeFailed-style :class:`KeyExchangeError` naming what is wrong.
    """
    try:
        xeddsa.verify(
            bundle.identity_key,
            profile.encode_signed_pre_key(bundle.signed_pre_key),
            bundle.signed_pre_key_signature,
        )
    except InvalidSignature:
        raise InvalidBundleSignature(
            f"the signature of signed pre key {bundle.signed_pre_key_id} does not verify "
            "against the bundle's identity key"
        ) from None
    if not bundle.pre_keys:
        raise NoPreKeys("the bundle has no one-time pre keys; a key exchange needs one")


def _uniform_index(size: int, random_bytes: Callable[[int], bytes]) -> int:
    # Rejection sampling on 32-bit values: uniform without modulo bias.
    limit = (1 << 32) - (1 << 32) % size
    while True:
        value = int.from_bytes(random_bytes(4), "big")
        if value < limit:
            return value % size


def _check_own_keys(**keys: bytes | None) -> None:
    # Our own keys come from our storage, not from the network: a wrong length is local misuse
    # (InvalidKey, a ValueError), not a failed key exchange with the peer.
    for name, key in keys.items():
        if key is not None and len(key) != KEY_LENGTH:
            raise InvalidKey(f"{name} must be {KEY_LENGTH} bytes, got {len(key)}")


def _derive(profile: Profile, dh1: bytes, dh2: bytes, dh3: bytes, dh4: bytes) -> bytes:
    return hkdf_sha256(_PADDING + dh1 + dh2 + dh3 + dh4, _SALT, profile.x3dh_info, _SHARED_SECRET_LENGTH)


def active(
    profile: Profile,
    identity_priv: bytes,
    identity_key: bytes,
    bundle: PreKeyBundle,
    *,
    random_bytes: Callable[[int], bytes] = os.urandom,
    identity_key_curve: bytes | None = None,
) -> ActiveResult:
    """Run the initiator's side of X3DH against ``bundle``.

    Args:
        profile: the namespace profile.
        identity_priv: our identity private scalar.
        identity_key: our Ed25519 identity key.
        bundle: the responder's bundle.
        random_bytes: RNG for the ephemeral key and the pre-key choice (drawn in that order; the
            choice draws only when there are several pre keys).
        identity_key_curve: our Curve25519 identity key, if known (saves a scalar multiplication).

    Returns:
        The shared secret, associated data and the ids/keys the responder needs.

    Raises:
        KeyExchangeError: bad signature, no one-time pre keys, or an invalid public key.
        InvalidKey: one of our own keys has the wrong length (local misuse).
    """
    _check_own_keys(
        identity_priv=identity_priv, identity_key=identity_key, identity_key_curve=identity_key_curve
    )
    verify_bundle(profile, bundle)
    ephemeral_priv = random_bytes(32)
    ids = sorted(bundle.pre_keys)
    if len(ids) > 1 and ids[0] == 0:
        # Converse numbers its pre keys from 0 but takes a key exchange naming pre key 0 for one without
        # a pre key and cannot decrypt it (docs/real-clients.md): 0 only when it is the only pre key.
        ids = ids[1:]
    pre_key_id = ids[0] if len(ids) == 1 else ids[_uniform_index(len(ids), random_bytes)]
    pre_key = bundle.pre_keys[pre_key_id]
    try:
        other_curve = bundle.identity_key_curve or xeddsa.ed25519_pub_to_curve25519_pub(bundle.identity_key)
        shared_secret = _derive(
            profile,
            x25519(identity_priv, bundle.signed_pre_key),
            x25519(ephemeral_priv, other_curve),
            x25519(ephemeral_priv, bundle.signed_pre_key),
            x25519(ephemeral_priv, pre_key),
        )
        own_curve = identity_key_curve or x25519_public(identity_priv)
    except InvalidKey as exc:
        raise KeyExchangeError(f"the bundle contains an unusable public key: {exc}") from None
    ad = profile.encode_identity_key(identity_key, own_curve) + profile.encode_identity_key(
        bundle.identity_key, other_curve
    )
    return ActiveResult(
        shared_secret=shared_secret,
        associated_data=ad,
        pre_key_id=pre_key_id,
        pre_key=pre_key,
        signed_pre_key_id=bundle.signed_pre_key_id,
        signed_pre_key=bundle.signed_pre_key,
        ephemeral_key=x25519_public(ephemeral_priv),
    )


def passive(
    profile: Profile,
    *,
    identity_priv: bytes,
    identity_key: bytes,
    signed_pre_key_priv: bytes,
    pre_key_priv: bytes,
    other_identity_key: bytes,
    ephemeral_key: bytes,
    identity_key_curve: bytes | None = None,
    other_identity_key_curve: bytes | None = None,
) -> tuple[bytes, bytes]:
    """Run the responder's side of X3DH.

    Args:
        profile: the namespace profile.
        identity_priv: our identity private scalar.
        identity_key: our Ed25519 identity key.
        signed_pre_key_priv: the private key of the signed pre key the initiator used.
        pre_key_priv: the private key of the one-time pre key the initiator used.
        other_identity_key: the initiator's Ed25519 identity key.
        ephemeral_key: the initiator's ephemeral X25519 public key.
        identity_key_curve: our Curve25519 identity key, if known.
        other_identity_key_curve: the initiator's Curve25519 identity key, if known.

    Returns:
        ``(shared_secret, associated_data)``.

    Raises:
        KeyExchangeError: an invalid public key.
        InvalidKey: one of our own keys has the wrong length (local misuse).
    """
    _check_own_keys(
        identity_priv=identity_priv,
        identity_key=identity_key,
        signed_pre_key_priv=signed_pre_key_priv,
        pre_key_priv=pre_key_priv,
        identity_key_curve=identity_key_curve,
    )
    try:
        other_curve = other_identity_key_curve or xeddsa.ed25519_pub_to_curve25519_pub(other_identity_key)
        shared_secret = _derive(
            profile,
            x25519(signed_pre_key_priv, other_curve),
            x25519(identity_priv, ephemeral_key),
            x25519(signed_pre_key_priv, ephemeral_key),
            x25519(pre_key_priv, ephemeral_key),
        )
        own_curve = identity_key_curve or x25519_public(identity_priv)
    except InvalidKey as exc:
        raise KeyExchangeError(f"the key exchange contains an unusable public key: {exc}") from None
    ad = profile.encode_identity_key(other_identity_key, other_curve) + profile.encode_identity_key(
        identity_key, own_curve
    )
    return shared_secret, ad
