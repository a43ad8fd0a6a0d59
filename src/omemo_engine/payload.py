"""Payload ("content") ciphers of both namespaces.

OMEMO 2 (XEP-0384 0.8+, PROTOCOL.md 3.4)::

    key = 32 random bytes
    (aes_key 32, mac_key 32, iv 16) = HKDF-SHA-256(key, salt = 0*32, info = "OMEMO Payload", 80)
    ciphertext = AES-256-CBC-PKCS7(aes_key, iv, plaintext)
    tag = HMAC-SHA-256(mac_key, ciphertext)[0:16]
    key material sent through the ratchet = key || tag (48 bytes)

An empty OMEMO 2 message has no payload and the key material is 32 zero bytes.

Legacy (PROTOCOL.md 4.6): AES-128-GCM with a 16-byte key and a 12-byte IV; the ciphertext travels
without its tag and the key material is ``key || tag`` (32 bytes). For decryption we also accept the
variants still seen in the field: a 16-byte IV, and the old form where the 16-byte tag is appended to
the payload and only the 16-byte key travels through the ratchet.

Every decryption failure raises :class:`AuthenticationFailed` with no further distinction.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ._primitives import (
    aes_cbc_decrypt,
    aes_cbc_encrypt,
    aes_gcm_decrypt,
    aes_gcm_encrypt,
    constant_time_equal,
    hkdf_sha256,
    hmac_sha256,
)
from .errors import AuthenticationFailed

__all__ = [
    "LEGACY_IV_LENGTH",
    "LEGACY_KEY_LENGTH",
    "OMEMO2_EMPTY_KEY_MATERIAL",
    "OMEMO2_KEY_LENGTH",
    "OMEMO2_TAG_LENGTH",
    "legacy_decrypt",
    "legacy_encrypt",
    "omemo2_decrypt",
    "omemo2_encrypt",
]

OMEMO2_KEY_LENGTH = 32
OMEMO2_TAG_LENGTH = 16
#: The ratchet plaintext of an empty OMEMO 2 message.
OMEMO2_EMPTY_KEY_MATERIAL = bytes(32)
LEGACY_KEY_LENGTH = 16
LEGACY_IV_LENGTH = 12
_GCM_TAG_LENGTH = 16
_PAYLOAD_INFO = b"OMEMO Payload"
_SALT = bytes(32)


def omemo2_encrypt(
    plaintext: bytes, random_bytes: Callable[[int], bytes] = os.urandom
) -> tuple[bytes, bytes]:
    """Encrypt an OMEMO 2 payload.

    Returns:
        ``(ciphertext, key_material)`` where the 48-byte key material goes through the ratchet.
    """
    key = random_bytes(OMEMO2_KEY_LENGTH)
    out = hkdf_sha256(key, _SALT, _PAYLOAD_INFO, 80)
    ciphertext = aes_cbc_encrypt(out[:32], out[64:], plaintext)
    return ciphertext, key + hmac_sha256(out[32:64], ciphertext)[:OMEMO2_TAG_LENGTH]


def omemo2_decrypt(ciphertext: bytes, key_material: bytes) -> bytes:
    """Decrypt an OMEMO 2 payload after verifying its tag.

    Raises:
        AuthenticationFailed: wrong key-material length, bad tag, or bad padding.
    """
    if len(key_material) != OMEMO2_KEY_LENGTH + OMEMO2_TAG_LENGTH:
        raise AuthenticationFailed(
            f"OMEMO 2 key material must be {OMEMO2_KEY_LENGTH + OMEMO2_TAG_LENGTH} bytes, "
            f"got {len(key_material)}"
        )
    out = hkdf_sha256(key_material[:OMEMO2_KEY_LENGTH], _SALT, _PAYLOAD_INFO, 80)
    tag = hmac_sha256(out[32:64], ciphertext)[:OMEMO2_TAG_LENGTH]
    if not constant_time_equal(tag, key_material[OMEMO2_KEY_LENGTH:]):
        raise AuthenticationFailed("payload authentication failed (bad tag)")
    return aes_cbc_decrypt(out[:32], out[64:], ciphertext)


def legacy_encrypt(
    plaintext: bytes, random_bytes: Callable[[int], bytes] = os.urandom
) -> tuple[bytes, bytes, bytes]:
    """Encrypt a legacy payload with AES-128-GCM.

    Returns:
        ``(ciphertext without tag, iv (12 bytes), key_material = key || tag (32 bytes))``.
    """
    key = random_bytes(LEGACY_KEY_LENGTH)
    iv = random_bytes(LEGACY_IV_LENGTH)
    ciphertext, tag = aes_gcm_encrypt(key, iv, plaintext)
    return ciphertext, iv, key + tag


def legacy_decrypt(ciphertext: bytes, iv: bytes, key_material: bytes) -> bytes:
    """Decrypt a legacy payload.

    Accepts key material of 32 bytes (key || tag) with the tag-less ciphertext, or of 16 bytes (the
    key alone) with the tag appended to the ciphertext; IVs of 12 or 16 bytes.

    Raises:
        AuthenticationFailed: any failure (lengths, tag).
    """
    if len(iv) not in (12, 16):
        raise AuthenticationFailed(f"legacy payload IV must be 12 or 16 bytes, got {len(iv)}")
    if len(key_material) == LEGACY_KEY_LENGTH + _GCM_TAG_LENGTH:
        key, tag = key_material[:LEGACY_KEY_LENGTH], key_material[LEGACY_KEY_LENGTH:]
    elif len(key_material) == LEGACY_KEY_LENGTH and len(ciphertext) >= _GCM_TAG_LENGTH:
        key, tag = key_material, ciphertext[-_GCM_TAG_LENGTH:]
        ciphertext = ciphertext[:-_GCM_TAG_LENGTH]
    else:
        raise AuthenticationFailed(
            "legacy key material must be 32 bytes (or 16 with the tag in the payload), "
            f"got {len(key_material)}"
        )
    return aes_gcm_decrypt(key, iv, ciphertext, tag)
