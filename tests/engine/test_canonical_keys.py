"""One encoding per public key: X25519 keys from the network are canonicalised, Ed25519 keys with a
non-canonical y are refused (docs/ARCHITECTURE.md, "Public keys from the network").

RFC 7748 (5): a receiver masks bit 255 of an X25519 u-coordinate and accepts u >= p, so those encodings
name the same key; left as they are, they reach associated data, comparisons and storage as a different
byte string (the defects of issue "Hardening": a legacy identity key with bit 255 set broke every
message, a key exchange whose ephemeral key had it lost the next message).
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET

import pytest

from omemo_engine import xml_legacy, xml_omemo2
from omemo_engine._primitives import (
    canonical_ed25519_public,
    canonical_x25519_public,
    x25519,
    x25519_public,
)
from omemo_engine.errors import MalformedMessage, MalformedXML
from omemo_engine.profile import LEGACY, OMEMO2, Profile
from omemo_engine.wire import Header, KeyExchangeFields

P = 2**255 - 19


def _le(value: int) -> bytes:
    return value.to_bytes(32, "little")


def _with_bit_255(key: bytes) -> bytes:
    return key[:31] + bytes((key[31] | 0x80,))


PRIVATE = bytes(range(1, 33))
PUBLIC = x25519_public(bytes(range(40, 72)))


@pytest.mark.parametrize(
    ("encoded", "canonical"),
    [
        (PUBLIC, PUBLIC),
        (_with_bit_255(PUBLIC), PUBLIC),
        (_le(P), _le(0)),
        (_le(P + 9), _le(9)),
        (_le(2**255 - 1), _le(18)),
        (_le(2**256 - 1), _le(18)),
        (_le(P - 1), _le(P - 1)),
        (_le(0x7F << 248), _le(0x7F << 248)),
    ],
    ids=["canonical", "bit 255", "p", "p + 9", "2^255 - 1", "all ones", "p - 1", "0x7f top byte"],
)
def test_canonical_x25519_public(encoded: bytes, canonical: bytes) -> None:
    assert canonical_x25519_public(encoded) == canonical
    assert canonical_x25519_public(canonical) == canonical


def test_the_encodings_name_the_same_key() -> None:
    assert x25519(PRIVATE, _with_bit_255(PUBLIC)) == x25519(PRIVATE, PUBLIC)


@pytest.mark.parametrize(
    ("encoded", "canonical"),
    [
        (_le(1), True),
        (_le(P - 1), True),
        (_le(P - 1 + (1 << 255)), True),  # the sign bit is not part of y
        (_le(P), False),
        (_le(P + (1 << 255)), False),
        (_le(2**255 - 1), False),
    ],
    ids=["1", "p - 1", "p - 1 with sign", "p", "p with sign", "2^255 - 1"],
)
def test_canonical_ed25519_public(encoded: bytes, canonical: bool) -> None:
    assert canonical_ed25519_public(encoded) is canonical


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_the_legacy_bundle_parser_canonicalises_every_key() -> None:
    flipped = _b64(b"\x05" + _with_bit_255(PUBLIC))
    element = ET.fromstring(
        f"<bundle xmlns='{xml_legacy.NAMESPACE}'>"
        f"<signedPreKeyPublic signedPreKeyId='1'>{flipped}</signedPreKeyPublic>"
        f"<signedPreKeySignature>{_b64(bytes(64))}</signedPreKeySignature>"
        f"<identityKey>{flipped}</identityKey>"
        f"<prekeys><preKeyPublic preKeyId='1'>{flipped}</preKeyPublic></prekeys></bundle>"
    )
    bundle = xml_legacy.parse_bundle(element)
    assert bundle.identity_key == bundle.signed_pre_key == bundle.pre_keys[0].pub == PUBLIC


def _omemo2_bundle(ik: bytes, key: bytes) -> ET.Element:
    return ET.fromstring(
        f"<bundle xmlns='{xml_omemo2.NAMESPACE}'><spk id='1'>{_b64(key)}</spk><spks>{_b64(bytes(64))}</spks>"
        f"<ik>{_b64(ik)}</ik><prekeys><pk id='1'>{_b64(key)}</pk></prekeys></bundle>"
    )


def test_the_omemo2_bundle_parser_canonicalises_x25519_and_refuses_a_non_canonical_ik() -> None:
    bundle = xml_omemo2.parse_bundle(_omemo2_bundle(_le(5), _with_bit_255(PUBLIC)))
    assert bundle.signed_pre_key == bundle.pre_keys[0].pub == PUBLIC
    with pytest.raises(MalformedXML, match=r"<bundle><ik>: text is not a canonical Ed25519 key"):
        xml_omemo2.parse_bundle(_omemo2_bundle(_le(P + 3), PUBLIC))


@pytest.mark.parametrize("profile", [OMEMO2, LEGACY], ids=["omemo2", "legacy"])
def test_the_wire_codecs_canonicalise_x25519_keys(profile: Profile) -> None:
    codec = profile.wire
    sealed = codec.seal(Header(_with_bit_255(PUBLIC), 0, 0), b"c", bytes(32), b"")
    assert codec.open(sealed).header.dh_pub == PUBLIC
    # OMEMO 2 identity keys are Ed25519 (refused, not canonicalised, below); legacy ones X25519.
    identity = _le(5) if profile is OMEMO2 else _with_bit_255(PUBLIC)
    fields = KeyExchangeFields(1, 1, identity, _with_bit_255(PUBLIC))
    parsed, _ = codec.parse_key_exchange(codec.build_key_exchange(fields, sealed))
    assert parsed.ephemeral_key == PUBLIC
    assert parsed.identity_key == (_le(5) if profile is OMEMO2 else PUBLIC)


def test_the_omemo2_wire_refuses_a_non_canonical_identity_key() -> None:
    sealed = OMEMO2.wire.seal(Header(PUBLIC, 0, 0), b"c", bytes(32), b"")
    data = OMEMO2.wire.build_key_exchange(KeyExchangeFields(1, 1, _le(P), PUBLIC), sealed)
    with pytest.raises(MalformedMessage, match=r"OMEMOKeyExchange\.ik is not a canonical Ed25519 key"):
        OMEMO2.wire.parse_key_exchange(data)
