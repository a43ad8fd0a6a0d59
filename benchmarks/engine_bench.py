"""Engine benchmark: each protocol operation against the "floor" of the primitive calls it is made of.

Run: ``.venv/bin/python benchmarks/engine_bench.py [--quick] [--profile]``.

For both namespaces it times, in one run:

- **one-way message**: ``ratchet.encrypt`` + ``ratchet.decrypt`` of one message in the same chain.
  Floor: 2 chain steps (HMAC 0x01 and 0x02 each) + 2 message-key HKDFs (80 bytes) + AES-CBC
  encryption and decryption + 2 MAC HMACs.
- **DH-step message**: the same with the direction alternating, so every decryption performs a DH
  ratchet step. Floor: the one-way floor + 2 root HKDFs (64 bytes) + 2 X25519 exchanges + 1 X25519
  key generation (32 random bytes and the public key).
- **X3DH active+passive**: ``x3dh.active`` (as the backends call it: curve forms not supplied)
  + ``x3dh.passive``. Floor: 1 Ed25519 verification + 8 X25519 exchanges + 1 X25519 key generation
  + 2 HKDFs (32 bytes).

The floors call the same glue (:mod:`omemo_engine._primitives`, :func:`xeddsa.verify`) the engine
uses, so the ratio is the engine's own overhead: protobuf, the immutable state objects, header and
AD handling. Protobuf is deliberately not part of any floor. Each figure is the median over repeated
batches of ``time.perf_counter_ns`` timings; engine and floor batches are interleaved and the ratio
is the median of the per-pair ratios (robust to load changes on a shared machine). Goals (issue
"Foundation" section 4): one-way within 2x of its floor, DH-step within 1.5x. ``--profile`` adds a
cProfile of each engine operation.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from omemo_engine import ratchet, x3dh, xeddsa
from omemo_engine._primitives import (
    aes_cbc_decrypt,
    aes_cbc_encrypt,
    hkdf_sha256,
    hmac_sha256,
    x25519,
    x25519_public,
)
from omemo_engine.profile import LEGACY, OMEMO2, Profile
from omemo_engine.ratchet import RatchetState

__all__ = ["Row", "main", "measure"]

LIMIT = 1000
PLAINTEXT = bytes(48)  # an OMEMO 2 key material: 32-byte key || 16-byte tag
GOALS = {"one-way message": 2.0, "DH-step message": 1.5}


@dataclass(frozen=True)
class Row:
    """One line of the result table (times in microseconds)."""

    profile: str
    operation: str
    median_us: float
    floor_us: float
    ratio: float


def batch_us(step: Callable[[], object], per_batch: int) -> float:
    """Mean time of one call of ``step`` over a batch of ``per_batch`` calls, in microseconds."""
    start = time.perf_counter_ns()
    for _ in range(per_batch):
        step()
    return (time.perf_counter_ns() - start) / per_batch / 1000


def paired_medians(
    engine: Callable[[], object], floor: Callable[[], object], *, batches: int, per_batch: int
) -> tuple[float, float, float]:
    """Medians of interleaved engine and floor batches, and the median of their per-batch ratios.

    Engine and floor batches alternate, so that a load change on a shared machine hits both alike;
    the ratio is taken per pair before the median for the same reason.
    """
    engine(), floor()  # warm-up (imports, caches)
    pairs = [(batch_us(engine, per_batch), batch_us(floor, per_batch)) for _ in range(batches)]
    return (
        statistics.median(e for e, _ in pairs),
        statistics.median(f for _, f in pairs),
        statistics.median(e / f for e, f in pairs),
    )


# --- engine operations -----------------------------------------------------------------------------


@dataclass
class Conversation:
    """Two live ratchet states; the steps advance them like a real conversation."""

    profile: Profile
    alice: RatchetState
    bob: RatchetState
    turn: bool = False

    def one_way(self) -> None:
        self.alice, data = ratchet.encrypt(self.profile, self.alice, PLAINTEXT)
        self.bob, _ = ratchet.decrypt(
            self.profile, self.bob, data, max_skipped_per_message=LIMIT, max_skipped_per_session=LIMIT
        )

    def dh_step(self) -> None:
        # Alternate directions: each decryption sees a new ratchet key.
        self.turn = not self.turn
        if self.turn:
            self.bob, data = ratchet.encrypt(self.profile, self.bob, PLAINTEXT)
            self.alice, _ = ratchet.decrypt(
                self.profile, self.alice, data, max_skipped_per_message=LIMIT, max_skipped_per_session=LIMIT
            )
        else:
            self.alice, data = ratchet.encrypt(self.profile, self.alice, PLAINTEXT)
            self.bob, _ = ratchet.decrypt(
                self.profile, self.bob, data, max_skipped_per_message=LIMIT, max_skipped_per_session=LIMIT
            )


@dataclass(frozen=True)
class Identities:
    alice_priv: bytes
    alice_ik: bytes
    bob_priv: bytes
    bob_ik: bytes
    spk_priv: bytes
    opk_priv: bytes

    @classmethod
    def generate(cls) -> Identities:
        alice_seed, bob_seed = os.urandom(32), os.urandom(32)
        return cls(
            alice_priv=xeddsa.seed_to_priv(alice_seed),
            alice_ik=xeddsa.seed_to_ed25519_pub(alice_seed),
            bob_priv=xeddsa.seed_to_priv(bob_seed),
            bob_ik=xeddsa.seed_to_ed25519_pub(bob_seed),
            spk_priv=os.urandom(32),
            opk_priv=os.urandom(32),
        )

    def bundle(self, profile: Profile) -> x3dh.PreKeyBundle:
        spk = x25519_public(self.spk_priv)
        return x3dh.PreKeyBundle(
            identity_key=self.bob_ik,
            signed_pre_key_id=1,
            signed_pre_key=spk,
            signed_pre_key_signature=xeddsa.sign(self.bob_priv, profile.encode_signed_pre_key(spk)),
            pre_keys={1: x25519_public(self.opk_priv)},
        )

    def x3dh_pair(self, profile: Profile, bundle: x3dh.PreKeyBundle) -> x3dh.ActiveResult:
        result = x3dh.active(profile, self.alice_priv, self.alice_ik, bundle)
        x3dh.passive(
            profile,
            identity_priv=self.bob_priv,
            identity_key=self.bob_ik,
            signed_pre_key_priv=self.spk_priv,
            pre_key_priv=self.opk_priv,
            other_identity_key=self.alice_ik,
            ephemeral_key=result.ephemeral_key,
        )
        return result


def conversation(profile: Profile) -> Conversation:
    ids = Identities.generate()
    result = ids.x3dh_pair(profile, ids.bundle(profile))
    alice = ratchet.initialize_active(
        profile, result.shared_secret, result.associated_data, result.signed_pre_key
    )
    bob = ratchet.initialize_passive(
        profile, result.shared_secret, result.associated_data, ids.spk_priv, x25519_public(ids.spk_priv)
    )
    pair = Conversation(profile, alice, bob)
    pair.one_way()  # Bob receives once: both sides have sending chains
    return pair


# --- floors ----------------------------------------------------------------------------------------


def floor_steps(profile: Profile) -> dict[str, Callable[[], object]]:
    """The primitive calls of each operation, with realistic input sizes."""
    ck, mk_salt, ad = os.urandom(32), bytes(32), os.urandom(64)
    peer_priv = os.urandom(32)
    peer_pub = x25519_public(peer_priv)
    mac_input = ad + os.urandom(110)  # AD || serialised header and 64-byte ciphertext
    info = profile.message_key_info

    def one_way() -> None:
        # Sender: chain step, message keys, encrypt, MAC. Receiver: the same, then decrypt.
        for _side in range(2):
            mk = hmac_sha256(ck, b"\x01")
            hmac_sha256(ck, b"\x02")
            keys = hkdf_sha256(mk, mk_salt, info, 80)
            hmac_sha256(keys[32:64], mac_input)
        aes_cbc_decrypt(keys[:32], keys[64:], aes_cbc_encrypt(keys[:32], keys[64:], PLAINTEXT))

    def dh_step() -> None:
        one_way()
        own_priv = os.urandom(32)
        x25519_public(own_priv)
        hkdf_sha256(x25519(peer_priv, peer_pub), ck, profile.root_info, 64)
        hkdf_sha256(x25519(own_priv, peer_pub), ck, profile.root_info, 64)

    ids = Identities.generate()
    bundle = ids.bundle(profile)
    signed = profile.encode_signed_pre_key(bundle.signed_pre_key)
    opk = bundle.pre_keys[1]

    def x3dh_floor() -> None:
        xeddsa.verify(bundle.identity_key, signed, bundle.signed_pre_key_signature)
        ek = os.urandom(32)
        x25519_public(ek)
        for _side in range(2):
            dh = x25519(ids.alice_priv, bundle.signed_pre_key)
            dh += x25519(ek, peer_pub) + x25519(ek, bundle.signed_pre_key) + x25519(ek, opk)
            hkdf_sha256(b"\xff" * 32 + dh, bytes(32), profile.x3dh_info, 32)

    return {"one-way message": one_way, "DH-step message": dh_step, "X3DH active+passive": x3dh_floor}


# --- measurement -----------------------------------------------------------------------------------


def engine_steps(profile: Profile) -> dict[str, Callable[[], object]]:
    one_way, alternating = conversation(profile), conversation(profile)
    ids = Identities.generate()
    bundle = ids.bundle(profile)
    return {
        "one-way message": one_way.one_way,
        "DH-step message": alternating.dh_step,
        "X3DH active+passive": lambda: ids.x3dh_pair(profile, bundle),
    }


def measure(profile: Profile, *, batches: int, per_batch: int) -> list[Row]:
    """Time every operation of ``profile`` and its floor."""
    floors = floor_steps(profile)
    rows = []
    for operation, step in engine_steps(profile).items():
        n = max(1, per_batch // 10) if operation.startswith("X3DH") else per_batch
        rows.append(
            Row(
                profile.name,
                operation,
                *paired_medians(step, floors[operation], batches=batches, per_batch=n),
            )
        )
    return rows


def profile_operations(profile: Profile, calls: int) -> None:
    """Print where the time of each engine operation goes (cProfile, by own time)."""
    for operation, step in engine_steps(profile).items():
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(calls):
            step()
        profiler.disable()
        print(f"\n--- cProfile: {profile.name}, {operation}, {calls} calls (by own time) ---")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


def format_table(rows: Sequence[Row]) -> str:
    lines = [f"{'profile':32} {'operation':22} {'median µs':>10} {'floor µs':>10} {'ratio':>6}  goal"]
    for row in rows:
        goal = GOALS.get(row.operation)
        verdict = "" if goal is None else f"<= {goal}x {'met' if row.ratio <= goal else 'MISSED'}"
        lines.append(
            f"{row.profile:32} {row.operation:22} {row.median_us:10.1f} {row.floor_us:10.1f} "
            f"{row.ratio:6.2f}  {verdict}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table. Returns the process exit code (always 0)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run with tiny counts (< 5 s)")
    parser.add_argument("--batches", type=int, default=21, help="timed batches per figure (median)")
    parser.add_argument("--per-batch", type=int, default=200, help="messages per batch")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of each operation")
    args = parser.parse_args(argv)
    batches, per_batch = (3, 10) if args.quick else (args.batches, args.per_batch)
    rows = [
        row for profile in (OMEMO2, LEGACY) for row in measure(profile, batches=batches, per_batch=per_batch)
    ]
    print(format_table(rows))
    if args.profile:
        for profile in (OMEMO2, LEGACY):
            profile_operations(profile, 50 if args.quick else 2000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
