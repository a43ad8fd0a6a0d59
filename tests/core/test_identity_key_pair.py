"""IdentityKeyPair: generation, storage layout (PROTOCOL.md 2.1), derivations, repr hygiene.

Known-answer provenance: the seed/public-key pair is RFC 8032 section 7.1, TEST 1 (an Ed25519 seed is
exactly our identity seed). The private scalar is ``clamp(SHA-512(seed)[:32])`` computed here with
hashlib, independently of the engine.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Dict

import pytest

from omemo.identity_key_pair import IdentityKeyPair, IdentityKeyPairPriv, IdentityKeyPairSeed
from omemo.storage import Maybe
from omemo.storages import MemoryStorage
from omemo.types import JSONType
from omemo_engine import xeddsa

RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUB = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")


def _clamp(h: bytes) -> bytes:
    b = bytearray(h[:32])
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return bytes(b)


def test_seed_pair_known_answer() -> None:
    ikp = IdentityKeyPairSeed(RFC8032_SEED)
    assert ikp.is_seed and not ikp.is_priv
    assert ikp.seed == RFC8032_SEED
    assert ikp.identity_key == RFC8032_PUB
    priv = ikp.as_priv()
    assert isinstance(priv, IdentityKeyPairPriv)
    assert priv.priv == _clamp(hashlib.sha512(RFC8032_SEED).digest())
    assert priv.identity_key == RFC8032_PUB  # same public key either way
    assert ikp.as_priv() is priv  # memoised


def test_priv_pair() -> None:
    priv = _clamp(hashlib.sha512(RFC8032_SEED).digest())
    ikp = IdentityKeyPairPriv(priv)
    assert ikp.is_priv and not ikp.is_seed
    assert ikp.as_priv() is ikp
    assert ikp.priv == priv
    assert ikp.identity_key == RFC8032_PUB
    # The identity key verifies signatures made with the private scalar.
    sig = xeddsa.sign(priv, b"msg", nonce=bytes(64))
    xeddsa.verify(ikp.identity_key, b"msg", sig)


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, b"\x00" * 33])
def test_wrong_lengths(bad: bytes) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        IdentityKeyPairSeed(bad)
    with pytest.raises(ValueError, match="32 bytes"):
        IdentityKeyPairPriv(bad)


def test_wrong_types() -> None:
    with pytest.raises(TypeError):
        IdentityKeyPairSeed("a" * 32)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        IdentityKeyPairPriv(bytearray(32))  # type: ignore[arg-type]


def test_repr_shows_no_secret() -> None:
    for ikp in (IdentityKeyPairSeed(RFC8032_SEED), IdentityKeyPairSeed(RFC8032_SEED).as_priv()):
        text = repr(ikp) + str(ikp)
        secret = ikp.seed if isinstance(ikp, IdentityKeyPairSeed) else ikp.priv
        assert secret.hex() not in text
        assert base64.urlsafe_b64encode(secret).decode() not in text
        assert RFC8032_PUB.hex() in text


def test_abstract_base() -> None:
    with pytest.raises(TypeError):
        IdentityKeyPair()  # type: ignore[abstract]
    assert IdentityKeyPair.LOG_TAG == "omemo.core.identity_key_pair"


async def test_get_generates_and_persists_a_seed() -> None:
    storage = MemoryStorage(serialize=True)
    ikp = await IdentityKeyPair.get(storage)
    assert isinstance(ikp, IdentityKeyPairSeed)
    snap = storage.snapshot()
    assert snap["/ikp/is_seed"] is True
    assert snap["/ikp/key"] == base64.urlsafe_b64encode(ikp.seed).decode("ascii")
    again = await IdentityKeyPair.get(storage)
    assert isinstance(again, IdentityKeyPairSeed) and again.seed == ikp.seed
    # Another storage gets another identity.
    other = await IdentityKeyPair.get(MemoryStorage())
    assert other.identity_key != ikp.identity_key


async def test_get_loads_existing_seed_and_priv() -> None:
    seed_storage = MemoryStorage(
        {"/ikp/is_seed": True, "/ikp/key": base64.urlsafe_b64encode(RFC8032_SEED).decode()}
    )
    ikp = await IdentityKeyPair.get(seed_storage)
    assert ikp.is_seed and ikp.identity_key == RFC8032_PUB

    priv = _clamp(hashlib.sha512(RFC8032_SEED).digest())
    priv_storage = MemoryStorage({"/ikp/is_seed": False, "/ikp/key": base64.urlsafe_b64encode(priv).decode()})
    ikp2 = await IdentityKeyPair.get(priv_storage)
    assert isinstance(ikp2, IdentityKeyPairPriv)
    assert ikp2.priv == priv and ikp2.identity_key == RFC8032_PUB


@pytest.mark.parametrize("missing", ["/ikp/is_seed", "/ikp/key"])
async def test_get_regenerates_when_either_key_is_missing(missing: str) -> None:
    data: Dict[str, JSONType] = {
        "/ikp/is_seed": True,
        "/ikp/key": base64.urlsafe_b64encode(RFC8032_SEED).decode(),
    }
    del data[missing]
    storage = MemoryStorage(data)
    ikp = await IdentityKeyPair.get(storage)
    assert ikp.is_seed and ikp.identity_key != RFC8032_PUB
    assert storage.snapshot()["/ikp/is_seed"] is True


async def test_get_sees_changes_made_through_the_storage() -> None:
    storage = MemoryStorage()
    first = await IdentityKeyPair.get(storage)
    assert (await IdentityKeyPair.get(storage)) is first  # memoised while unchanged
    await storage.store_bytes("/ikp/key", RFC8032_SEED)
    changed = await IdentityKeyPair.get(storage)
    assert changed.identity_key == RFC8032_PUB


class _YieldingStorage(MemoryStorage):
    """Pauses in every load, so that concurrent first calls really interleave."""

    async def _load(self, key: str) -> Maybe[JSONType]:
        await asyncio.sleep(0)
        return await super()._load(key)


async def test_concurrent_first_gets_agree() -> None:
    storage = _YieldingStorage()
    results = await asyncio.gather(*(IdentityKeyPair.get(storage) for _ in range(10)))
    assert len({r.identity_key for r in results}) == 1


async def test_get_rejects_a_stored_key_of_the_wrong_length() -> None:
    storage = MemoryStorage({"/ikp/is_seed": True, "/ikp/key": base64.urlsafe_b64encode(b"short").decode()})
    with pytest.raises(TypeError, match="32"):
        await IdentityKeyPair.get(storage)


async def test_get_works_with_an_unhashable_storage() -> None:
    class Unhashable(MemoryStorage):
        def __eq__(self, other: object) -> bool:
            return self is other

        __hash__ = None  # type: ignore[assignment]

    storage = Unhashable()
    first = await IdentityKeyPair.get(storage)
    second = await IdentityKeyPair.get(storage)
    assert first.identity_key == second.identity_key
