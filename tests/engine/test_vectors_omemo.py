"""Known-answer tests: every value of tests/vectors/omemo-kat.json reproduced byte for byte.

Provenance: tests/vectors/omemo-kat.json (see tests/vectors/README.md): generated with the
python-omemo 2.1.0 reference stack with all randomness fixed, and re-derived independently.
The XML in the vectors is parsed with the standard library only, to extract the base64 key
material; the XML codecs have their own tests.
"""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from omemo_engine import payload, ratchet, x3dh, xeddsa
from omemo_engine._primitives import hkdf_sha256, hmac_sha256, x25519, x25519_public
from omemo_engine.profile import LEGACY, OMEMO2, Profile
from omemo_engine.wire import KeyExchangeFields

KAT: dict[str, Any] = json.loads((Path(__file__).parent.parent / "vectors" / "omemo-kat.json").read_text())
PRIM = KAT["primitives"]
INPUTS = KAT["inputs"]


def h(value: str) -> bytes:
    return bytes.fromhex(value)


def rep(byte: int, n: int) -> bytes:
    return bytes((byte,)) * n


def fixed_rng(*chunks: bytes) -> Callable[[int], bytes]:
    stream: Iterator[bytes] = iter(chunks)

    def random_bytes(n: int) -> bytes:
        chunk = next(stream)
        assert len(chunk) == n, f"the test expected a draw of {len(chunk)} bytes, got a request for {n}"
        return chunk

    return random_bytes


ALICE_SEED, BOB_SEED = rep(0x11, 32), rep(0x22, 32)
ALICE_PRIV, BOB_PRIV = xeddsa.seed_to_priv(ALICE_SEED), xeddsa.seed_to_priv(BOB_SEED)
ALICE_IK, BOB_IK = xeddsa.seed_to_ed25519_pub(ALICE_SEED), xeddsa.seed_to_ed25519_pub(BOB_SEED)
SPK_PRIV, PK_PRIV = rep(0x33, 32), rep(0x44, 32)
SPK_PUB, PK_PUB = x25519_public(SPK_PRIV), x25519_public(PK_PRIV)


def keys_in(xml: str) -> list[tuple[dict[str, str], bytes]]:
    root = ET.fromstring(xml)
    return [(dict(e.attrib), base64.b64decode(e.text or "")) for e in root.iter() if e.tag.endswith("}key")]


def payload_of(xml: str) -> bytes | None:
    for e in ET.fromstring(xml).iter():
        if e.tag.endswith("}payload"):
            return base64.b64decode(e.text or "")
    return None


# --- primitives -------------------------------------------------------------------------------


def test_identity_keys() -> None:
    assert ALICE_PRIV.hex() == PRIM["alice_identity_private_scalar"]
    assert ALICE_IK.hex() == PRIM["alice_identity_ed25519_pub"]
    assert xeddsa.priv_to_ed25519_pub(ALICE_PRIV) == ALICE_IK
    assert xeddsa.priv_to_curve25519_pub(ALICE_PRIV).hex() == PRIM["alice_identity_curve25519_pub"]
    assert xeddsa.ed25519_pub_to_curve25519_pub(ALICE_IK).hex() == PRIM["alice_identity_curve25519_pub"]
    assert BOB_IK.hex() == PRIM["bob_identity_ed25519_pub"]
    assert xeddsa.ed25519_pub_sign_bit(BOB_IK) == bool(PRIM["bob_identity_ed25519_sign_bit"])
    bob_curve = h(PRIM["bob_identity_curve25519_pub"])
    assert xeddsa.ed25519_pub_to_curve25519_pub(BOB_IK) == bob_curve
    assert xeddsa.curve25519_pub_to_ed25519_pub(bob_curve, True) == BOB_IK


def test_fingerprint_groups() -> None:
    hexed = xeddsa.ed25519_pub_to_curve25519_pub(ALICE_IK).hex()
    assert [hexed[i : i + 8] for i in range(0, 64, 8)] == PRIM["alice_fingerprint_groups"]


def test_public_keys() -> None:
    assert SPK_PUB.hex() == PRIM["bob_signed_pre_key_pub"]
    assert PK_PUB.hex() == PRIM["bob_pre_key_pub"]
    assert x25519_public(rep(0x55, 32)).hex() == PRIM["alice_ephemeral_pub"]
    assert x25519_public(rep(0x66, 32)).hex() == PRIM["alice_first_ratchet_pub"]
    assert x25519_public(rep(0x77, 32)).hex() == PRIM["bob_ratchet_pub_after_receiving"]


def test_xeddsa_signature() -> None:
    vector = PRIM["xeddsa_sign"]
    signature = xeddsa.sign(BOB_PRIV, vector["message_utf8"].encode(), nonce=rep(0xAA, 64))
    assert signature.hex() == vector["signature"]
    xeddsa.verify(BOB_IK, b"test", signature)


def test_label_signature() -> None:
    vector = PRIM["twomemo_label_signature"]
    signature = xeddsa.sign(ALICE_PRIV, vector["label_utf8"].encode(), nonce=rep(0x01, 64))
    assert signature.hex() == vector["signature"]
    xeddsa.verify(ALICE_IK, b"Gajim", signature)


# --- bundles --------------------------------------------------------------------------------------


def test_omemo2_bundle_signature() -> None:
    root = ET.fromstring(KAT["twomemo"]["bundle_xml"])
    spks = base64.b64decode(next(e.text for e in root.iter() if e.tag.endswith("}spks")) or "")
    assert xeddsa.sign(BOB_PRIV, SPK_PUB, nonce=rep(0xAA, 64)) == spks


def test_legacy_bundle_signature_carries_sign_bit() -> None:
    root = ET.fromstring(KAT["oldmemo"]["bundle_xml"])
    text = next(e.text for e in root.iter() if e.tag.endswith("}signedPreKeySignature"))
    published = base64.b64decode(text or "")
    signature = xeddsa.sign(BOB_PRIV, b"\x05" + SPK_PUB, nonce=rep(0xAA, 64))
    assert xeddsa.embed_sign_bit(signature, BOB_IK) == published
    cleared, sign_bit = xeddsa.extract_sign_bit(published)
    assert sign_bit is True
    assert cleared == signature
    xeddsa.verify(BOB_IK, b"\x05" + SPK_PUB, cleared)


# --- message 1 and the empty reply -----------------------------------------------------------------


def bob_bundle(profile: Profile) -> x3dh.PreKeyBundle:
    signature = xeddsa.sign(BOB_PRIV, profile.encode_signed_pre_key(SPK_PUB), nonce=rep(0xAA, 64))
    return x3dh.PreKeyBundle(
        identity_key=BOB_IK,
        signed_pre_key_id=1,
        signed_pre_key=SPK_PUB,
        signed_pre_key_signature=signature,
        pre_keys={1: PK_PUB},
    )


def test_omemo2_x3dh_intermediates() -> None:
    mid = KAT["twomemo"]["message1_intermediates"]
    ek = rep(0x55, 32)
    assert x25519(ALICE_PRIV, SPK_PUB).hex() == mid["DH1"]
    assert x25519(ek, xeddsa.ed25519_pub_to_curve25519_pub(BOB_IK)).hex() == mid["DH2"]
    assert x25519(ek, SPK_PUB).hex() == mid["DH3"]
    assert x25519(ek, PK_PUB).hex() == mid["DH4"]
    result = x3dh.active(OMEMO2, ALICE_PRIV, ALICE_IK, bob_bundle(OMEMO2), random_bytes=fixed_rng(ek))
    assert result.shared_secret.hex() == mid["shared_secret"]
    assert result.associated_data.hex() == mid["associated_data"]
    shared, ad = x3dh.passive(
        OMEMO2,
        identity_priv=BOB_PRIV,
        identity_key=BOB_IK,
        signed_pre_key_priv=SPK_PRIV,
        pre_key_priv=PK_PRIV,
        other_identity_key=ALICE_IK,
        ephemeral_key=result.ephemeral_key,
    )
    assert (shared, ad) == (result.shared_secret, result.associated_data)


def test_omemo2_ratchet_intermediates() -> None:
    mid = KAT["twomemo"]["message1_intermediates"]
    out = hkdf_sha256(x25519(rep(0x66, 32), SPK_PUB), h(mid["shared_secret"]), b"OMEMO Root Chain", 64)
    assert out[:32].hex() == mid["root_key_1"]
    assert out[32:].hex() == mid["sending_chain_key_alice"]
    mk = hmac_sha256(out[32:], b"\x01")
    assert mk.hex() == mid["message_key_0"]
    assert hmac_sha256(out[32:], b"\x02").hex() == mid["next_chain_key"]
    km = hkdf_sha256(mk, bytes(32), b"OMEMO Message Key Material", 80)
    assert (km[:32].hex(), km[32:64].hex(), km[64:].hex()) == (
        mid["message_enc_key"],
        mid["message_auth_key"],
        mid["message_iv"],
    )
    pk = hkdf_sha256(rep(0x88, 32), bytes(32), b"OMEMO Payload", 80)
    assert (pk[:32].hex(), pk[32:64].hex(), pk[64:].hex()) == (
        mid["payload_enc_key"],
        mid["payload_auth_key"],
        mid["payload_iv"],
    )


def test_legacy_intermediates() -> None:
    mid = KAT["oldmemo"]["message1_intermediates"]
    result = x3dh.active(
        LEGACY, ALICE_PRIV, ALICE_IK, bob_bundle(LEGACY), random_bytes=fixed_rng(rep(0x55, 32))
    )
    assert result.shared_secret.hex() == mid["shared_secret"]
    assert result.associated_data.hex() == mid["associated_data_stored"]
    out = hkdf_sha256(x25519(rep(0x66, 32), SPK_PUB), result.shared_secret, b"WhisperRatchet", 64)
    assert out[:32].hex() == mid["root_key_1"]
    assert out[32:].hex() == mid["sending_chain_key_alice"]
    mk = hmac_sha256(out[32:], b"\x01")
    assert mk.hex() == mid["message_key_0"]
    km = hkdf_sha256(mk, bytes(32), b"WhisperMessageKeys", 80)
    assert (km[:32].hex(), km[32:64].hex(), km[64:].hex()) == (
        mid["message_enc_key"],
        mid["message_auth_key"],
        mid["message_iv"],
    )


def first_message(profile: Profile, payload_key_material: bytes) -> tuple[ratchet.RatchetState, bytes]:
    result = x3dh.active(
        profile, ALICE_PRIV, ALICE_IK, bob_bundle(profile), random_bytes=fixed_rng(rep(0x55, 32))
    )
    state = ratchet.initialize_active(
        profile, result.shared_secret, result.associated_data, result.signed_pre_key, fixed_rng(rep(0x66, 32))
    )
    state, sealed = ratchet.encrypt(profile, state, payload_key_material)
    own_ik = ALICE_IK if profile is OMEMO2 else xeddsa.ed25519_pub_to_curve25519_pub(ALICE_IK)
    fields = KeyExchangeFields(result.pre_key_id, result.signed_pre_key_id, own_ik, result.ephemeral_key)
    return state, profile.wire.build_key_exchange(fields, sealed)


@pytest.mark.parametrize("namespace", ["twomemo", "oldmemo"])
def test_message1_and_empty_reply(namespace: str) -> None:
    vectors = KAT[namespace]
    profile = OMEMO2 if namespace == "twomemo" else LEGACY
    plaintext = INPUTS["plaintext_utf8"].encode()

    # Alice -> Bob: the payload, then the key exchange around the first ratchet message.
    if profile is OMEMO2:
        ciphertext, key_material = payload.omemo2_encrypt(plaintext, fixed_rng(rep(0x88, 32)))
    else:
        ciphertext, iv, key_material = payload.legacy_encrypt(
            plaintext, fixed_rng(rep(0x88, 16), rep(0x99, 12))
        )
        assert iv == rep(0x99, 12)
    assert ciphertext == payload_of(vectors["message1_xml"])
    alice, kex_bytes = first_message(profile, key_material)
    [(attrs, wire_kex)] = keys_in(vectors["message1_xml"])
    assert attrs.get("kex", attrs.get("prekey")) == "true"
    assert kex_bytes == wire_kex

    # Bob: passive X3DH and the first decryption.
    fields, sealed = profile.wire.parse_key_exchange(wire_kex)
    assert (fields.pre_key_id, fields.signed_pre_key_id) == (1, 1)
    other_ik = (
        fields.identity_key
        if profile is OMEMO2
        else xeddsa.curve25519_pub_to_ed25519_pub(fields.identity_key, xeddsa.ed25519_pub_sign_bit(ALICE_IK))
    )
    assert other_ik == ALICE_IK
    shared, ad = x3dh.passive(
        profile,
        identity_priv=BOB_PRIV,
        identity_key=BOB_IK,
        signed_pre_key_priv=SPK_PRIV,
        pre_key_priv=PK_PRIV,
        other_identity_key=other_ik,
        ephemeral_key=fields.ephemeral_key,
    )
    bob = ratchet.initialize_passive(profile, shared, ad, SPK_PRIV, SPK_PUB)
    bob, received = ratchet.decrypt(
        profile,
        bob,
        sealed,
        max_skipped_per_message=1000,
        max_skipped_per_session=1000,
        random_bytes=fixed_rng(rep(0x77, 32)),
    )
    assert received == key_material
    if profile is OMEMO2:
        assert payload.omemo2_decrypt(ciphertext, received) == plaintext
    else:
        assert payload.legacy_decrypt(ciphertext, rep(0x99, 12), received) == plaintext

    # Bob -> Alice: the empty reply.
    reply_material = h(vectors["message2_plain_key_material"])
    bob, reply = ratchet.encrypt(profile, bob, reply_material)
    [(attrs, wire_reply)] = keys_in(vectors["message2_empty_reply_xml"])
    assert "kex" not in attrs and "prekey" not in attrs
    assert reply == wire_reply
    assert payload_of(vectors["message2_empty_reply_xml"]) is None
    alice, got = ratchet.decrypt(
        profile, alice, reply, max_skipped_per_message=1000, max_skipped_per_session=1000
    )
    assert got == reply_material
    assert alice.receiving_chain_length == 1


def test_legacy_mac_vector() -> None:
    mid = KAT["oldmemo"]["message1_intermediates"]
    [(_, wire_kex)] = keys_in(KAT["oldmemo"]["message1_xml"])
    _, sealed = LEGACY.wire.parse_key_exchange(wire_kex)
    assert sealed[-8:].hex() == mid["message_mac_8"]
    mac = hmac_sha256(h(mid["message_auth_key"]), h(mid["associated_data_stored"]) + sealed[:-8])[:8]
    assert mac.hex() == mid["message_mac_8"]


def test_omemo2_mac_vector() -> None:
    mid = KAT["twomemo"]["message1_intermediates"]
    [(_, wire_kex)] = keys_in(KAT["twomemo"]["message1_xml"])
    _, sealed = OMEMO2.wire.parse_key_exchange(wire_kex)
    opened = OMEMO2.wire.open(sealed)
    assert opened.mac.hex() == mid["message_mac_16"]
    # The MAC recomputed from the vector's auth key over AD || the serialised OMEMOMessage.
    mac = hmac_sha256(h(mid["message_auth_key"]), h(mid["associated_data"]) + opened.mac_input)[:16]
    assert mac.hex() == mid["message_mac_16"]
