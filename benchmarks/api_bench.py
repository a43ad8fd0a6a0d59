"""API-level benchmarks of our OMEMO stack against the reference stack (python-omemo 2.1.0).

Usage (from the repository root)::

    .venv/bin/python benchmarks/api_bench.py --rounds 5 --json bench.json --plot docs/benchmarks.png
    .venv/bin/python benchmarks/api_bench.py --quick            # a smoke run for CI (< 60 s)

The driver starts one worker (``_api_worker.py``) under our interpreter and one under the reference
stack's interpreter (the cached venv of the interop tests, built by ``tests/interop/refenv.py`` if
needed; ``OMEMO_REFENV`` moves it, ``--reference-python`` overrides it). Both workers run the same
public-API scenarios in-process; the driver asks them for one scenario group at a time, ALTERNATING
between the two stacks (and which one goes first), so that load on the machine affects both alike.
Two floors of a steady-state message are measured in this process between the groups: the
"primitive floor" (the HMAC / HKDF / AES calls it needs, through ``cryptography``'s object API, one
object per operation) and the "true floor" (the same work with the fewest, cheapest calls that
exist: one-shot HMAC, the cheaper HKDF, AES-CBC with the fewest object constructions and PKCS#7
done on bytes, see :func:`_true_floor_functions`).

The ``scale`` group (:data:`OURS_ONLY_GROUPS`) is asked of our worker only, the reference would take
too long: fan-out to 1,000 devices, a decrypt after 1,000 skipped messages, and steady one-way
messages after 0 / 1,000 / 10,000 messages and with 0 / 100 / 1,000 stored skipped keys, to show
whether the cost per message (µs and bytes written) stays flat (``--quick`` runs it tiny).

Printed: one table per namespace with the median of each stack (µs, or storage writes / bytes),
the ratio reference / ours (higher is better for us), the scale table with flat: yes / no per series,
and the goals of the benchmark issue with met / not met. ``--json`` saves every sample, ``--plot
PATH`` draws the ratios to PATH and the scale series to ``<stem>-scale.png`` next to it (matplotlib
if it is importable, else a built-in PNG writer).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["GOALS", "GROUPS", "ROWS", "Goal", "Row", "ScaleSeries", "main"]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKER = HERE / "_api_worker.py"
REFENV_MODULE = REPO / "tests" / "interop" / "refenv.py"

TWOMEMO_NS = "urn:xmpp:omemo:2"
OLDMEMO_NS = "eu.siacs.conversations.axolotl"
NAMESPACES = (TWOMEMO_NS, OLDMEMO_NS)
SHORT = {TWOMEMO_NS: "omemo:2", OLDMEMO_NS: "axolotl"}

OURS = "ours"
REFERENCE = "reference"


@dataclass(frozen=True)
class Row:
    """One row of the table: a worker result key (or a floor key), its label and unit.

    ``ours_only``: measured for our stack only (the floors, the scale group): no reference column.
    """

    key: str
    label: str
    unit: str = "µs"
    ours_only: bool = False


ROWS: Tuple[Row, ...] = (
    Row("create_one", "create(): one backend"),
    Row("create_both", "create(): both backends"),
    Row("create_reload", "create(): reload existing account"),
    Row("first_encrypt", "first message: encrypt, new session"),
    Row("first_decrypt", "first message: passive decrypt"),
    Row("first_reply", "first message: sender processes reply"),
    Row("one_way_encrypt", "steady one-way: encrypt"),
    Row("one_way_decrypt", "steady one-way: decrypt"),
    Row("one_way_total", "steady one-way: encrypt+decrypt"),
    Row("one_way_encrypt_writes", "steady one-way: writes/encrypt", "writes"),
    Row("one_way_decrypt_writes", "steady one-way: writes/decrypt", "writes"),
    Row("one_way_encrypt_bytes", "steady one-way: bytes/encrypt", "bytes"),
    Row("one_way_decrypt_bytes", "steady one-way: bytes/decrypt", "bytes"),
    Row("alternating_encrypt", "steady alternating: encrypt"),
    Row("alternating_decrypt", "steady alternating: decrypt"),
    Row("alternating_total", "steady alternating: encrypt+decrypt"),
    Row("alternating_encrypt_writes", "steady alternating: writes/encrypt", "writes"),
    Row("alternating_decrypt_writes", "steady alternating: writes/decrypt", "writes"),
    Row("alternating_encrypt_bytes", "steady alternating: bytes/encrypt", "bytes"),
    Row("alternating_decrypt_bytes", "steady alternating: bytes/decrypt", "bytes"),
    Row("fan_out_10_new", "fan-out 10 devices: new sessions"),
    Row("fan_out_100_new", "fan-out 100 devices: new sessions"),
    Row("fan_out_10_existing", "fan-out 10 devices: existing sessions"),
    Row("fan_out_100_existing", "fan-out 100 devices: existing sessions"),
    Row("skip_500_decrypt", "out of order: decrypt after 500 skipped"),
    Row("skipped_one_decrypt", "out of order: decrypt a skipped one"),
    Row("xml_message_serialize", "XML: serialise message"),
    Row("xml_message_parse", "XML: parse message"),
    Row("xml_bundle_serialize", "XML: serialise bundle"),
    Row("xml_bundle_parse", "XML: parse bundle"),
)
# Measured in this process only (our interpreter, ``cryptography``): no reference column.
FLOOR_ROWS: Tuple[Row, ...] = (
    Row("floor_encrypt", "primitive floor: steady encrypt", ours_only=True),
    Row("floor_decrypt", "primitive floor: steady decrypt", ours_only=True),
    Row("floor_ratchet_decrypt", "primitive floor: decrypt + DH step", ours_only=True),
    Row("true_floor_encrypt", "true floor: steady encrypt", ours_only=True),
    Row("true_floor_decrypt", "true floor: steady decrypt", ours_only=True),
    Row("true_floor_total", "true floor: steady encrypt+decrypt", ours_only=True),
)
ALL_ROWS = ROWS + FLOOR_ROWS

# Scenario groups of the worker and the samples per group per round: (full run, --quick).
GROUPS: Dict[str, Tuple[int, int]] = {
    "create": (4, 1),
    "first": (4, 1),
    "one_way": (60, 2),
    "alternating": (60, 2),
    "fan_out": (3, 1),
    "skipped": (4, 1),
    "xml": (40, 2),
    "scale": (4, 1),  # x 10 steady-state messages per point (the worker's SCALE_MESSAGES_PER_SAMPLE)
}
# Groups asked of our worker only (the reference would take too long); their rows have no reference.
OURS_ONLY_GROUPS = ("scale",)
FLOOR_SAMPLES = (100, 5)

# Sizes of the scale group (full run, --quick), sent to the worker with each request; see the worker's
# ``group_scale``. The rows of the group are named after them (:func:`scale_rows`).
SCALE_SIZES: Tuple[Dict[str, Any], Dict[str, Any]] = (
    {"fan_out": [10, 100, 1000], "skip_gap": 1000, "exchanged": [0, 1000, 10000], "skipped": [0, 100, 1000]},
    {"fan_out": [2, 5, 10], "skip_gap": 20, "exchanged": [0, 10, 50], "skipped": [0, 5, 20]},
)
# A scale series is flat when its largest point is within this factor of its smallest.
FLAT_WITHIN = 1.3


def scale_point_name(exchanged: int, skipped: int) -> str:
    """Returns: the row prefix of a steady-state point of the scale group (the worker's rule)."""
    return f"scale_after_{exchanged}" if skipped == 0 else f"scale_skipped_{skipped}"


def _steady_points(sizes: Dict[str, Any]) -> List[Tuple[int, int, str]]:
    """Returns: (messages exchanged, stored skipped keys, description) of each steady-state point."""
    points = [(int(e), 0, f"after {int(e):,} messages") for e in sorted(sizes["exchanged"])]
    points += [(0, int(k), f"{int(k):,} stored skipped keys per side") for k in sorted(sizes["skipped"]) if k]
    return points


def scale_rows(sizes: Dict[str, Any]) -> Tuple[Row, ...]:
    """Returns: the rows of the scale group for ``sizes`` (ours only), in table order."""
    fan_out = sorted(int(size) for size in sizes["fan_out"])
    gap = int(sizes["skip_gap"])
    rows = [
        Row(f"scale_fan_out_{fan_out[-1]}_encrypt", f"fan-out to {fan_out[-1]:,} devices, existing sessions")
    ]
    for size in fan_out:
        rows.append(Row(f"scale_fan_out_{size}_per_device", f"fan-out to {size:,} devices: per device"))
        rows.append(
            Row(
                f"scale_fan_out_{size}_bytes_per_device",
                f"fan-out to {size:,} devices: bytes/device",
                "bytes",
            )
        )
    rows.append(Row(f"scale_skip_{gap}_decrypt", f"out of order: decrypt after {gap:,} skipped"))
    for exchanged, skipped, description in _steady_points(sizes):
        name = scale_point_name(exchanged, skipped)
        label = f"steady one-way, {description}"
        rows += [
            Row(f"{name}_encrypt", f"{label}: encrypt"),
            Row(f"{name}_decrypt", f"{label}: decrypt"),
            Row(f"{name}_total", f"{label}: encrypt+decrypt"),
            Row(f"{name}_encrypt_bytes", f"{label}: bytes/encrypt", "bytes"),
            Row(f"{name}_decrypt_bytes", f"{label}: bytes/decrypt", "bytes"),
            Row(f"{name}_bytes", f"{label}: bytes/(encrypt+decrypt)", "bytes"),
        ]
    return tuple(Row(row.key, row.label, row.unit, ours_only=True) for row in rows)


@dataclass(frozen=True)
class ScaleSeries:
    """A series of the scale group: the cost per message (or per device) at growing sizes."""

    name: str
    title: str
    x_label: str
    per: str
    points: Tuple[Tuple[int, str, str], ...]  # (x, row of µs, row of bytes written)


def scale_series(sizes: Dict[str, Any]) -> Tuple[ScaleSeries, ...]:
    """Returns: the three series of the scale group for ``sizes``."""
    exchanged = tuple(
        (int(e), f"{scale_point_name(int(e), 0)}_total", f"{scale_point_name(int(e), 0)}_bytes")
        for e in sorted(sizes["exchanged"])
    )
    skipped = tuple(
        (int(k), f"{scale_point_name(0, int(k))}_total", f"{scale_point_name(0, int(k))}_bytes")
        for k in sorted(sizes["skipped"])
    )
    fan_out = tuple(
        (int(n), f"scale_fan_out_{n}_per_device", f"scale_fan_out_{n}_bytes_per_device")
        for n in sorted(sizes["fan_out"])
    )
    return (
        ScaleSeries(
            "exchanged",
            "steady one-way encrypt+decrypt vs messages exchanged",
            "messages exchanged",
            "message",
            exchanged,
        ),
        ScaleSeries(
            "skipped",
            "steady one-way encrypt+decrypt vs stored skipped keys",
            "stored skipped keys",
            "message",
            skipped,
        ),
        ScaleSeries("fan_out", "fan-out encrypt per device vs devices", "devices", "device", fan_out),
    )


@dataclass(frozen=True)
class Goal:
    """A goal of the benchmark issue: ratio reference / ours ``>= at_least``, or our median ``<= at_most``.

    With ``over`` (a row of ours), an ``at_most`` goal compares our median of ``rows`` divided by our
    median of ``over`` (e.g. our time as a multiple of the true floor).
    """

    text: str
    rows: Tuple[str, ...]
    at_least: Optional[float] = None
    at_most: Optional[float] = None
    over: Optional[str] = None


GOALS: Tuple[Goal, ...] = (
    Goal("steady one-way, encrypt+decrypt >= 12x", ("one_way_total",), at_least=12),
    Goal("steady alternating, encrypt+decrypt >= 6x", ("alternating_total",), at_least=6),
    Goal("fan-out to 100 devices, existing sessions >= 20x", ("fan_out_100_existing",), at_least=20),
    Goal("decrypt after 500 skipped >= 8x", ("skip_500_decrypt",), at_least=8),
    Goal("create(): reload of an existing account >= 1.0x", ("create_reload",), at_least=1.0),
    Goal(
        "our steady one-way encrypt+decrypt <= 1.5x the true floor",
        ("one_way_total",),
        at_most=1.5,
        over="true_floor_total",
    ),
    Goal(
        "storage writes per steady-state encrypt or decrypt <= 2",
        (
            "one_way_encrypt_writes",
            "one_way_decrypt_writes",
            "alternating_encrypt_writes",
            "alternating_decrypt_writes",
        ),
        at_most=2,
    ),
)

# samples[namespace][row key][stack] -> list of samples
Samples = Dict[str, Dict[str, Dict[str, List[float]]]]


# --------------------------------------------------------------------------------------------------
# Workers


class WorkerError(RuntimeError):
    """A worker died or reported an error."""


class Worker:
    """A worker process serving scenario groups over a line-based JSON protocol."""

    def __init__(self, name: str, python: Path) -> None:
        """Start the worker.

        Args:
            name: ``ours`` or ``reference``.
            python: the interpreter to run it with.
        """
        self.name = name
        self.python = python
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        # -I: no PYTHONPATH, no user site, no script directory: only the venv's own packages.
        self._process = subprocess.Popen(
            [str(python), "-I", str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            encoding="utf-8",
        )

    def request(self, request: Dict[str, Any]) -> Dict[str, Any]:
        """Send one request and wait for its answer.

        Args:
            request: the request object (see the worker's docstring).

        Returns:
            The answer object (``ok`` is true).

        Raises:
            WorkerError: the worker died or reported an error.
        """
        assert self._process.stdin is not None and self._process.stdout is not None
        try:
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
            line = self._process.stdout.readline()
        except OSError as e:
            raise WorkerError(f"{self.name} worker: {e}\n{self.stderr_tail()}") from e
        if not line:
            raise WorkerError(f"{self.name} worker ({self.python}) died:\n{self.stderr_tail()}")
        answer: Dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise WorkerError(f"{self.name} worker failed on {request}:\n{answer.get('error')}")
        return answer

    def stderr_tail(self, lines: int = 30) -> str:
        """Returns: the last lines the worker wrote to stderr."""
        self._stderr.seek(0)
        return "\n".join(self._stderr.read().decode("utf-8", "replace").splitlines()[-lines:])

    def close(self) -> None:
        """Ask the worker to exit, and make sure it does."""
        try:
            if self._process.poll() is None and self._process.stdin is not None:
                self._process.stdin.write(json.dumps({"group": "exit"}) + "\n")
                self._process.stdin.close()
            self._process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self._process.kill()
            self._process.wait()
        self._stderr.close()


def reference_python() -> Path:
    """Find or build the reference venv exactly as the interop tests do (``tests/interop/refenv.py``).

    Returns:
        The reference interpreter.

    Raises:
        RuntimeError: the venv could not be built or is unusable (``ReferenceEnvError``).
    """
    spec = importlib.util.spec_from_file_location("_omemo_stack_refenv", REFENV_MODULE)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {REFENV_MODULE}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return Path(module.ensure_reference_env())


# --------------------------------------------------------------------------------------------------
# The primitive floor (in this process, with ``cryptography``)


def _floor_functions(namespace: str) -> Dict[str, Callable[[], None]]:
    """The raw primitive calls of one steady-state message to one device, without any framing.

    OMEMO 2: payload = HKDF + AES-256-CBC + HMAC; per device one chain step (2 HMACs), HKDF of the
    message key, AES-256-CBC of the 48-byte key material and its HMAC. Legacy: payload AES-128-GCM,
    then the same ratchet work (32-byte key material). The decrypt side does the same calls, plus
    the MAC comparisons. The "DH step" variant adds what a receiver does on a new ratchet key: two
    X25519 agreements, one key generation and two root-chain HKDFs.
    """
    from cryptography.hazmat.primitives import hashes, hmac, padding
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.constant_time import bytes_eq
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    plaintext = b"x" * 88
    zero_salt = b"\x00" * 32
    chain_key = os.urandom(32)
    header = os.urandom(40)
    legacy = namespace == OLDMEMO_NS

    def mac(key: bytes, data: bytes) -> bytes:
        h = hmac.HMAC(key, hashes.SHA256())
        h.update(data)
        return h.finalize()

    def hkdf(key: bytes, info: bytes, length: int = 80) -> bytes:
        return HKDF(hashes.SHA256(), length, zero_salt, info).derive(key)

    def cbc(key: bytes, iv: bytes, data: bytes, encrypt: bool) -> bytes:
        cipher = Cipher(algorithms.AES(key), modes.CBC(iv))
        if encrypt:
            padder = padding.PKCS7(128).padder()
            padded = padder.update(data) + padder.finalize()
            context = cipher.encryptor()
            return context.update(padded) + context.finalize()
        context = cipher.decryptor()
        padded = context.update(data) + context.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        return unpadder.update(padded) + unpadder.finalize()

    def payload_encrypt() -> Tuple[bytes, bytes]:
        if legacy:
            key, iv = os.urandom(16), os.urandom(12)
            sealed = AESGCM(key).encrypt(iv, plaintext, None)
            return sealed[:-16], key + sealed[-16:]
        key = os.urandom(32)
        okm = hkdf(key, b"OMEMO Payload")
        ciphertext = cbc(okm[:32], okm[64:], plaintext, True)
        return ciphertext, key + mac(okm[32:64], ciphertext)[:16]

    def payload_decrypt(ciphertext: bytes, material: bytes) -> bytes:
        if legacy:
            return AESGCM(material[:16]).decrypt(b"\x00" * 12, ciphertext + material[16:], None)
        okm = hkdf(material[:32], b"OMEMO Payload")
        if not bytes_eq(mac(okm[32:64], ciphertext)[:16], material[32:]):
            raise ValueError("bad payload MAC")
        return cbc(okm[:32], okm[64:], ciphertext, False)

    info = b"WhisperMessageKeys" if legacy else b"OMEMO Message Key Material"
    truncate = 8 if legacy else 16

    def ratchet_encrypt(material: bytes) -> Tuple[bytes, bytes]:
        message_key = mac(chain_key, b"\x01")
        mac(chain_key, b"\x02")
        okm = hkdf(message_key, info)
        ciphertext = cbc(okm[:32], okm[64:], material, True)
        return ciphertext, mac(okm[32:64], header + ciphertext)[:truncate]

    def ratchet_decrypt(ciphertext: bytes, tag: bytes) -> bytes:
        message_key = mac(chain_key, b"\x01")
        mac(chain_key, b"\x02")
        okm = hkdf(message_key, info)
        if not bytes_eq(mac(okm[32:64], header + ciphertext)[:truncate], tag):
            raise ValueError("bad message MAC")
        return cbc(okm[:32], okm[64:], ciphertext, False)

    payload, material = payload_encrypt()
    sealed_material, tag = ratchet_encrypt(material)
    if legacy:  # a fixed IV, so that the decrypt side can run repeatedly on one message
        key = os.urandom(16)
        sealed = AESGCM(key).encrypt(b"\x00" * 12, plaintext, None)
        payload, material = sealed[:-16], key + sealed[-16:]
        sealed_material, tag = ratchet_encrypt(material)
    own_ratchet = X25519PrivateKey.generate()
    their_ratchet: X25519PublicKey = X25519PrivateKey.generate().public_key()
    root_info = b"WhisperRatchet" if legacy else b"OMEMO Root Chain"

    def encrypt() -> None:
        ratchet_encrypt(payload_encrypt()[1])

    def decrypt() -> None:
        payload_decrypt(payload, ratchet_decrypt(sealed_material, tag))

    def ratchet_step_decrypt() -> None:
        hkdf(own_ratchet.exchange(their_ratchet), root_info, 64)
        new_ratchet = X25519PrivateKey.generate()
        new_ratchet.public_key()
        hkdf(new_ratchet.exchange(their_ratchet), root_info, 64)
        decrypt()

    return {"floor_encrypt": encrypt, "floor_decrypt": decrypt, "floor_ratchet_decrypt": ratchet_step_decrypt}


@dataclass
class TrueFloorPrimitives:
    """The cheapest HMAC and HKDF of this process, chosen by :func:`choose_true_floor_primitives`.

    ``digest(key, data, "sha256")`` is a one-shot HMAC (``_hashlib.hmac_digest`` or ``hmac.digest``);
    ``hkdf(key, info)`` is HKDF-SHA-256 with 32 zero bytes of salt and 80 bytes of output.
    ``costs``: µs per call of every candidate; ``hmac`` / ``hkdf_name``: the names of the chosen ones.
    """

    digest: Callable[[bytes, bytes, str], bytes]
    hkdf: Callable[[bytes, bytes], bytes]
    hmac: str
    hkdf_name: str
    costs: Dict[str, float] = field(default_factory=dict)


_TRUE_FLOOR: List[TrueFloorPrimitives] = []  # chosen once per run, then reused by every measurement

# Library calls of one steady-state message per side (one device), as timed by the true floor.
TRUE_FLOOR_CALLS: Dict[str, Dict[str, str]] = {
    TWOMEMO_NS: {
        "encrypt": "1 os.urandom(32), 2 HKDF, 4 HMAC, 2 AES-256-CBC",
        "decrypt": "4 HMAC, 2 compare_digest, 2 HKDF, 2 AES-256-CBC",
    },
    OLDMEMO_NS: {
        "encrypt": "1 os.urandom(28), 1 AES-128-GCM (AESGCM + encrypt), 3 HMAC, 1 HKDF, 1 AES-256-CBC",
        "decrypt": "3 HMAC, 1 compare_digest, 1 HKDF, 1 AES-256-CBC, 1 AES-128-GCM (AESGCM + decrypt)",
    },
}


def _best_of(
    function: Callable[[], object], clock: Callable[[], int], calls: int = 200, batches: int = 7
) -> float:
    """Returns: the µs per call of ``function``, the best of ``batches`` batches of ``calls`` calls."""
    function()
    best = math.inf
    for _ in range(batches):
        start = clock()
        for _ in range(calls):
            function()
        best = min(best, (clock() - start) / calls / 1000.0)
    return best


def choose_true_floor_primitives(clock: Callable[[], int]) -> TrueFloorPrimitives:
    """Measure the candidates for the true floor's HMAC and HKDF in this process and keep the cheaper.

    HMAC-SHA-256: ``_hashlib.hmac_digest`` (the C function) or ``hmac.digest`` (its Python wrapper),
    both one-shot, no object. HKDF-SHA-256 (80 bytes): ``cryptography``'s ``HKDF(...).derive`` (one
    object per call, the hash algorithm object made once; about 2.9 µs on the development machine) or
    RFC 5869 written out over the one-shot HMAC (extract + 3 expand blocks: 4 HMACs, about 5.3 µs
    there). On that machine ``cryptography``'s HKDF is the cheaper one, which is what the true floor
    uses there; another machine may choose otherwise: the output says which was chosen. Chosen once
    per run (the first call), then reused.
    """
    if _TRUE_FLOOR:
        return _TRUE_FLOOR[0]
    import _hashlib
    import hmac

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key, data, info = os.urandom(32), os.urandom(100), b"OMEMO Payload"
    salt = b"\x00" * 32
    digests: Dict[str, Callable[[bytes, bytes, str], bytes]] = {
        "_hashlib.hmac_digest": _hashlib.hmac_digest,
        "hmac.digest": hmac.digest,
    }
    costs = {
        name: _best_of(lambda digest=digest: digest(key, data, "sha256"), clock)  # type: ignore[misc]
        for name, digest in digests.items()
    }
    hmac_name = min(digests, key=costs.__getitem__)
    digest = digests[hmac_name]
    sha256 = hashes.SHA256()

    def hkdf_cryptography(key: bytes, info: bytes) -> bytes:
        return HKDF(sha256, 80, salt, info).derive(key)

    def hkdf_hmac(key: bytes, info: bytes) -> bytes:
        prk = digest(salt, key, "sha256")
        t1 = digest(prk, info + b"\x01", "sha256")
        t2 = digest(prk, t1 + info + b"\x02", "sha256")
        return t1 + t2 + digest(prk, t2 + info + b"\x03", "sha256")[:16]

    if hkdf_hmac(key, info) != hkdf_cryptography(key, info):
        raise AssertionError("the two HKDFs of the true floor disagree")
    hkdfs = {"cryptography HKDF(...).derive": hkdf_cryptography, f"HKDF over {hmac_name}": hkdf_hmac}
    for name, hkdf in hkdfs.items():
        costs[name] = _best_of(lambda hkdf=hkdf: hkdf(key, info), clock)  # type: ignore[misc]
    hkdf_name = min(hkdfs, key=costs.__getitem__)
    _TRUE_FLOOR.append(TrueFloorPrimitives(digest, hkdfs[hkdf_name], hmac_name, hkdf_name, costs))
    return _TRUE_FLOOR[0]


def _true_floor_functions(namespace: str, primitives: TrueFloorPrimitives) -> Dict[str, Callable[[], object]]:
    """The true floor of one steady-state message to one device: the fewest, cheapest library calls.

    The same cryptographic work as :func:`_floor_functions`, each step done the cheapest way the
    libraries allow (counts per side in :data:`TRUE_FLOOR_CALLS`):

    - HMAC-SHA-256: one-shot (``_hashlib.hmac_digest`` or ``hmac.digest``, whichever is faster here);
    - HKDF-SHA-256: ``cryptography``'s ``HKDF(...).derive`` or RFC 5869 over the one-shot HMAC,
      whichever is cheaper here (see :func:`choose_true_floor_primitives`);
    - AES-256-CBC: ``Cipher(AES(key), CBC(iv)).encryptor().update(data)`` (four objects, the fewest
      the public ``cryptography`` API allows; no ``finalize()``: without padding in the cipher,
      ``update`` of whole blocks returns them all), PKCS#7 added and checked with bytes operations;
    - AES-128-GCM (legacy payload): ``AESGCM(key).encrypt`` / ``decrypt``;
    - keys (and the legacy payload's IV) from one ``os.urandom`` call; MACs compared with
      ``hmac.compare_digest``.

    OMEMO 2 encrypt: payload key, HKDF, AES-CBC of the payload, its HMAC (16 bytes of it go into the
    key material); per device the chain step (2 HMACs), HKDF of the message key, AES-CBC of the 48
    bytes of key material, the message HMAC. Legacy: an AES-128-GCM payload (key material = key + tag,
    32 bytes), then the same ratchet work (an 8-byte MAC). The decrypt side does the same calls, the
    MAC comparisons and padding checks included. No protobuf, XML or storage: the framing is not in
    any floor. The functions call ``hkdf`` through a Python function (a frame, ~0.05 µs).
    """
    from hmac import compare_digest

    from cryptography.hazmat.primitives.ciphers import Cipher
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.ciphers.algorithms import AES
    from cryptography.hazmat.primitives.ciphers.modes import CBC

    digest, hkdf, urandom = primitives.digest, primitives.hkdf, os.urandom
    pads = [b""] + [bytes((n,)) * n for n in range(1, 17)]
    plaintext = b"x" * 88
    chain_key = urandom(32)
    legacy = namespace == OLDMEMO_NS
    # Associated data (both identity keys) + serialised header, as the message MAC covers them.
    ad_header = urandom(67 if legacy else 64) + urandom(40)
    info = b"WhisperMessageKeys" if legacy else b"OMEMO Message Key Material"
    truncate = 8 if legacy else 16
    payload_info = b"OMEMO Payload"

    def encrypt_omemo2() -> Tuple[bytes, bytes, bytes, bytes]:
        key = urandom(32)
        okm = hkdf(key, payload_info)
        padded = plaintext + pads[16 - len(plaintext) % 16]
        payload = Cipher(AES(okm[:32]), CBC(okm[64:])).encryptor().update(padded)
        material = key + digest(okm[32:64], payload, "sha256")[:16]
        message_key = digest(chain_key, b"\x01", "sha256")
        digest(chain_key, b"\x02", "sha256")  # the next chain key
        okm = hkdf(message_key, info)
        padded = material + pads[16 - len(material) % 16]
        sealed = Cipher(AES(okm[:32]), CBC(okm[64:])).encryptor().update(padded)
        return payload, sealed, digest(okm[32:64], ad_header + sealed, "sha256")[:16], b""

    def encrypt_legacy() -> Tuple[bytes, bytes, bytes, bytes]:
        random = urandom(28)
        key, iv = random[:16], random[16:]
        ciphertext = AESGCM(key).encrypt(iv, plaintext, None)
        payload, material = ciphertext[:-16], key + ciphertext[-16:]
        message_key = digest(chain_key, b"\x01", "sha256")
        digest(chain_key, b"\x02", "sha256")  # the next chain key
        okm = hkdf(message_key, info)
        padded = material + pads[16 - len(material) % 16]
        sealed = Cipher(AES(okm[:32]), CBC(okm[64:])).encryptor().update(padded)
        return payload, sealed, digest(okm[32:64], ad_header + sealed, "sha256")[:8], iv

    def decrypt_message(payload: bytes, sealed: bytes, tag: bytes, iv: bytes) -> bytes:
        message_key = digest(chain_key, b"\x01", "sha256")
        digest(chain_key, b"\x02", "sha256")  # the next chain key
        okm = hkdf(message_key, info)
        if not compare_digest(digest(okm[32:64], ad_header + sealed, "sha256")[:truncate], tag):
            raise ValueError("bad message MAC")
        padded = Cipher(AES(okm[:32]), CBC(okm[64:])).decryptor().update(sealed)
        pad = padded[-1]
        if not 0 < pad <= 16 or padded[-pad:] != pads[pad]:
            raise ValueError("bad padding of the key material")
        material = padded[:-pad]
        if legacy:
            return AESGCM(material[:16]).decrypt(iv, payload + material[16:], None)
        okm = hkdf(material[:32], payload_info)
        if not compare_digest(digest(okm[32:64], payload, "sha256")[:16], material[32:]):
            raise ValueError("bad payload MAC")
        padded = Cipher(AES(okm[:32]), CBC(okm[64:])).decryptor().update(payload)
        pad = padded[-1]
        if not 0 < pad <= 16 or padded[-pad:] != pads[pad]:
            raise ValueError("bad padding of the payload")
        return padded[:-pad]

    encrypt = encrypt_legacy if legacy else encrypt_omemo2
    message = encrypt()
    if decrypt_message(*message) != plaintext:
        raise AssertionError("the true floor does not round-trip")
    payload, sealed, tag, iv = message

    def decrypt() -> bytes:
        return decrypt_message(payload, sealed, tag, iv)

    return {"true_floor_encrypt": encrypt, "true_floor_decrypt": decrypt}


CLOCKS: Dict[str, Callable[[], int]] = {"cpu": time.process_time_ns, "wall": time.perf_counter_ns}
FLOOR_REPEAT = 20  # calls per sample (one sample = the mean), as the worker does for µs-sized work


def measure_floor(namespace: str, samples: int, clock: Callable[[], int]) -> Dict[str, List[float]]:
    """Returns: ``samples`` timings (µs) of each floor function of ``namespace``."""
    functions = _floor_functions(namespace)
    result: Dict[str, List[float]] = {}
    for name, function in functions.items():
        function()  # warm up
        values = []
        for _ in range(samples):
            start = clock()
            for _ in range(FLOOR_REPEAT):
                function()
            values.append((clock() - start) / FLOOR_REPEAT / 1000.0)
        result[name] = values
    return result


def measure_true_floor(namespace: str, samples: int, clock: Callable[[], int]) -> Dict[str, List[float]]:
    """Returns: ``samples`` timings (µs) of the true floor's encrypt and decrypt, and their sums."""
    functions = _true_floor_functions(namespace, choose_true_floor_primitives(clock))
    result: Dict[str, List[float]] = {name: [] for name in (*functions, "true_floor_total")}
    for function in functions.values():
        function()  # warm up
    for _ in range(samples):
        for name, function in functions.items():
            start = clock()
            for _ in range(FLOOR_REPEAT):
                function()
            result[name].append((clock() - start) / FLOOR_REPEAT / 1000.0)
        result["true_floor_total"].append(result["true_floor_encrypt"][-1] + result["true_floor_decrypt"][-1])
    return result


# --------------------------------------------------------------------------------------------------
# Running


def run(
    workers: Sequence[Worker],
    namespaces: Sequence[str],
    rounds: int,
    quick: bool,
    clock: str,
    log: Callable[[str], None],
) -> Samples:
    """Run the rounds, alternating between the workers group by group.

    Args:
        workers: the workers (ours first; the reference may be missing).
        namespaces: the namespaces to measure.
        rounds: how many rounds.
        quick: use the tiny sample counts.
        clock: ``cpu`` (CPU time of the measuring process) or ``wall``.
        log: progress output.

    Returns:
        The samples by namespace, row and stack.
    """
    samples: Samples = {ns: {row.key: {} for row in ALL_ROWS} for ns in namespaces}
    sizes = SCALE_SIZES[1 if quick else 0]
    turn = 0
    for round_index in range(rounds):
        for namespace in namespaces:
            for group, counts in GROUPS.items():
                order = list(workers) if turn % 2 == 0 else list(reversed(workers))
                if group in OURS_ONLY_GROUPS:
                    order = [worker for worker in workers if worker.name == OURS]
                else:
                    turn += 1
                spent = []
                for worker in order:
                    start = time.monotonic()
                    request: Dict[str, Any] = {
                        "group": group,
                        "namespace": namespace,
                        "samples": counts[1 if quick else 0],
                        "clock": clock,
                    }
                    if group == "scale":
                        request["sizes"] = sizes
                    answer = worker.request(request)
                    spent.append(f"{worker.name} {time.monotonic() - start:.1f} s")
                    for key, values in answer["rows"].items():
                        samples[namespace].setdefault(key, {}).setdefault(worker.name, []).extend(values)
                log(f"round {round_index + 1}/{rounds} {SHORT[namespace]} {group}: {', '.join(spent)}")
            floor_samples = FLOOR_SAMPLES[1 if quick else 0]
            floor = measure_floor(namespace, floor_samples, CLOCKS[clock])
            floor.update(measure_true_floor(namespace, floor_samples, CLOCKS[clock]))
            for key, values in floor.items():
                samples[namespace][key].setdefault(OURS, []).extend(values)
    return samples


def median(samples: Samples, namespace: str, key: str, stack: str) -> Optional[float]:
    """Returns: the median of a row for one stack, or ``None`` without samples."""
    values = samples.get(namespace, {}).get(key, {}).get(stack)
    return statistics.median(values) if values else None


def ratio(samples: Samples, namespace: str, key: str) -> Optional[float]:
    """Returns: reference median / our median (``inf`` if ours is 0), or ``None``."""
    reference = median(samples, namespace, key, REFERENCE)
    ours = median(samples, namespace, key, OURS)
    if reference is None or ours is None:
        return None
    if ours == 0:
        return math.inf if reference > 0 else 1.0
    return reference / ours


def _number(value: Optional[float]) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def _ratio_text(value: Optional[float]) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "inf"
    return f"{value:.2f}x" if value < 10 else f"{value:.1f}x"


def table(samples: Samples, namespace: str) -> str:
    """Returns: the table of one namespace (markdown-compatible)."""
    lines = [
        f"### {namespace}",
        "",
        "| scenario | unit | reference | ours | ratio (ref/ours) |",
        "|---|---|---:|---:|---:|",
    ]
    for row in ALL_ROWS:
        reference = median(samples, namespace, row.key, REFERENCE)
        ours = median(samples, namespace, row.key, OURS)
        if reference is None and ours is None:
            continue
        lines.append(
            f"| {row.label} | {row.unit} | {_number(reference)} | {_number(ours)} | "
            f"{_ratio_text(ratio(samples, namespace, row.key))} |"
        )
    floor = median(samples, namespace, "floor_encrypt", OURS)
    floor_decrypt = median(samples, namespace, "floor_decrypt", OURS)
    encrypt = median(samples, namespace, "one_way_encrypt", OURS)
    decrypt = median(samples, namespace, "one_way_decrypt", OURS)
    total = median(samples, namespace, "one_way_total", OURS)
    if floor and floor_decrypt and encrypt and decrypt:
        lines += [
            "",
            f"Our steady one-way encrypt is {encrypt / floor:.1f}x its primitive floor, "
            f"decrypt {decrypt / floor_decrypt:.1f}x.",
        ]
    true_encrypt = median(samples, namespace, "true_floor_encrypt", OURS)
    true_decrypt = median(samples, namespace, "true_floor_decrypt", OURS)
    true_total = median(samples, namespace, "true_floor_total", OURS)
    if true_encrypt and true_decrypt and true_total and encrypt and decrypt and total:
        lines += [
            "",
            f"Our steady one-way encrypt+decrypt is {total / true_total:.1f}x the true floor "
            f"(encrypt {encrypt / true_encrypt:.1f}x, decrypt {decrypt / true_decrypt:.1f}x).",
        ]
        if _TRUE_FLOOR:
            chosen = _TRUE_FLOOR[0]
            costs = ", ".join(f"{name} {cost:.2f}" for name, cost in chosen.costs.items())
            calls = TRUE_FLOOR_CALLS[namespace]
            lines += [
                f"True floor calls per side: encrypt {calls['encrypt']}; decrypt {calls['decrypt']}. "
                f"HMAC by {chosen.hmac}, HKDF by {chosen.hkdf_name} (µs per call: {costs}).",
            ]
    return "\n".join(lines)


def flatness(samples: Samples, namespace: str, series: ScaleSeries) -> Dict[str, Any]:
    """Is a scale series flat: is its largest point (medians, ours) within :data:`FLAT_WITHIN` of its
    smallest? For the time and for the bytes written, each.

    Returns:
        ``x``, then per ``time`` and ``bytes``: ``values`` (``None`` for a missing point), ``spread``
        (largest / smallest, ``None`` if incomplete), ``flat`` (``None`` if incomplete) and ``trend``
        (``"grows"`` if the last point is above the first, else ``"falls"``). Per-device series also
        have ``marginal``: the µs per device added between consecutive sizes (from the medians).
    """
    xs = [x for x, _, _ in series.points]
    result: Dict[str, Any] = {"x": xs}
    for kind, index in (("time", 1), ("bytes", 2)):
        values = [median(samples, namespace, str(point[index]), OURS) for point in series.points]
        present = [value for value in values if value is not None]
        spread: Optional[float] = None
        trend: Optional[str] = None
        if len(present) == len(values) and present:
            spread = (
                max(present) / min(present) if min(present) > 0 else (1.0 if max(present) == 0 else math.inf)
            )
            trend = "grows" if present[-1] > present[0] else "falls"
        result[kind] = {
            "values": values,
            "spread": spread,
            "flat": None if spread is None else spread <= FLAT_WITHIN,
            "trend": trend,
        }
    if series.per == "device" and None not in result["time"]["values"]:
        totals = [x * value for x, value in zip(xs, result["time"]["values"], strict=True)]
        marginal = [
            (totals[i] - totals[i - 1]) / (xs[i] - xs[i - 1]) for i in range(1, len(xs)) if xs[i] > xs[i - 1]
        ]
        result["marginal"] = marginal
        if marginal and min(marginal) > 0:
            # The average per device falls with the size (one encrypt's fixed cost spreads over more
            # devices); what must stay flat is the cost of each device added.
            spread = max(marginal) / min(marginal)
            result["time"].update(
                spread=spread,
                flat=spread <= FLAT_WITHIN,
                trend="grows" if marginal[-1] > marginal[0] else "falls",
            )
            result["time"]["basis"] = "µs per added device"
    return result


def scale_table(samples: Samples, namespace: str, sizes: Dict[str, Any]) -> str:
    """Returns: the scale rows of one namespace (ours only) and the flatness of each series (markdown)."""
    lines = [
        f"### {namespace}: costs at scale (ours only)",
        "",
        "| scenario | unit | ours |",
        "|---|---|---:|",
    ]
    for row in scale_rows(sizes):
        ours = median(samples, namespace, row.key, OURS)
        if ours is not None:
            lines.append(f"| {row.label} | {row.unit} | {_number(ours)} |")
    lines += ["", f"Flat = the largest point within {FLAT_WITHIN}x of the smallest (medians):", ""]
    for series in scale_series(sizes):
        flat = flatness(samples, namespace, series)
        xs = " / ".join(f"{x:,}" for x in flat["x"])
        parts = []
        for kind, unit in (("time", f"µs per {series.per}"), ("bytes", f"bytes written per {series.per}")):
            entry = flat[kind]
            values = " / ".join(_number(value) for value in entry["values"])
            spread = "—" if entry["spread"] is None else f"{entry['spread']:.2f}x"
            if entry.get("basis"):
                spread += f" of the {entry['basis']}"
            verdict = {True: "yes", False: "**no**", None: "n/a"}[entry["flat"]]
            if entry["flat"] is False:
                verdict += f" ({entry['trend']} with the size)"
            parts.append(f"{unit} {values} (largest/smallest {spread}): flat: {verdict}")
        if flat.get("marginal"):
            steps = ", ".join(
                f"{a:,}->{b:,}: {_number(m)}"
                for a, b, m in zip(flat["x"], flat["x"][1:], flat["marginal"], strict=False)
            )
            parts.append(f"µs per added device {steps}")
        lines.append(f"- {series.title} ({xs} {series.x_label}): {'; '.join(parts)}")
    return "\n".join(lines)


def goals(samples: Samples, namespaces: Sequence[str]) -> List[Dict[str, Any]]:
    """Evaluate :data:`GOALS` per namespace.

    Returns:
        One entry per goal and namespace: ``goal``, ``namespace``, ``value`` (worst ratio or our
        worst median), ``met`` (``None`` if it could not be evaluated).
    """
    result: List[Dict[str, Any]] = []
    for goal in GOALS:
        for namespace in namespaces:
            value: Optional[float]
            if goal.at_least is not None:
                ratios = [ratio(samples, namespace, key) for key in goal.rows]
                value = None if any(r is None for r in ratios) else min(r for r in ratios if r is not None)
                met = None if value is None else value >= goal.at_least
            else:
                medians = [median(samples, namespace, key, OURS) for key in goal.rows]
                value = None if any(m is None for m in medians) else max(m for m in medians if m is not None)
                if goal.over is not None and value is not None:
                    base = median(samples, namespace, goal.over, OURS)
                    value = None if not base else value / base
                met = None if value is None or goal.at_most is None else value <= goal.at_most
            result.append({"goal": goal.text, "namespace": namespace, "value": value, "met": met})
    return result


def goals_text(evaluated: List[Dict[str, Any]]) -> str:
    """Returns: the goal list as markdown."""
    lines = ["| goal | namespace | measured | met |", "|---|---|---:|---|"]
    for entry in evaluated:
        value = entry["value"]
        if value is None:
            measured = "—"
        elif "writes" in entry["goal"]:
            measured = f"{value:g} write" + ("" if value == 1 else "s")
        elif "floor" in entry["goal"]:
            measured = f"{value:.2f}x the floor"
        else:
            measured = _ratio_text(value)
        met = {True: "met", False: "**not met**", None: "n/a"}[entry["met"]]
        lines.append(f"| {entry['goal']} | {SHORT[entry['namespace']]} | {measured} | {met} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Plot


def plot(samples: Samples, namespaces: Sequence[str], path: Path) -> str:
    """Draw the ratios (log scale) as horizontal bars, one panel per namespace.

    Returns:
        ``"matplotlib"`` or ``"builtin"``: which renderer was used.
    """
    bars: List[Tuple[str, List[Tuple[str, float, Optional[float]]]]] = []
    goal_of = {
        key: goal.at_least
        for goal in GOALS
        for key in goal.rows
        if goal.at_least is not None and goal.over is None
    }
    for namespace in namespaces:
        entries = []
        for row in ROWS:
            value = ratio(samples, namespace, row.key)
            if value is not None and math.isfinite(value) and value > 0:
                entries.append((row.label, value, goal_of.get(row.key)))
        bars.append((namespace, entries))
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        _builtin_plot(bars, path)
        return "builtin"
    figure, axes = plt.subplots(1, len(bars), figsize=(7 * len(bars), 9), squeeze=False)
    for axis, (namespace, entries) in zip(axes[0], bars, strict=True):
        labels = [label for label, _, _ in entries][::-1]
        values = [value for _, value, _ in entries][::-1]
        colours = ["tab:green" if value >= 1 else "tab:red" for value in values]
        axis.barh(labels, values, color=colours)
        axis.set_xscale("log")
        axis.axvline(1, color="black", linewidth=0.8)
        for index, (_, value, goal) in enumerate(entries[::-1]):
            if goal is not None:
                axis.plot([goal, goal], [index - 0.4, index + 0.4], color="black", linewidth=2)
            axis.text(value, index, f" {_ratio_text(value)}", va="center", fontsize=7)
        axis.set_title(namespace, fontsize=10)
        axis.tick_params(axis="y", labelsize=7)
    figure.suptitle("Reference / ours (log scale, higher is better; black ticks: goals)", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return "matplotlib"


# A 5x7 bitmap font: five column bytes per glyph, least significant bit at the top.
_FONT = {
    " ": "0000000000",
    "!": "00005F0000",
    "%": "2313086462",
    "(": "001C224100",
    ")": "0041221C00",
    "+": "08083E0808",
    ",": "0050300000",
    "-": "0808080808",
    ".": "0060600000",
    "/": "2010080402",
    ":": "0036360000",
    ";": "0056360000",
    "<": "0008142241",
    "=": "1414141414",
    ">": "4122140800",
    "_": "4040404040",
    "0": "3E5149453E",
    "1": "00427F4000",
    "2": "4261514946",
    "3": "2141454B31",
    "4": "1814127F10",
    "5": "2745454539",
    "6": "3C4A494930",
    "7": "0171090503",
    "8": "3649494936",
    "9": "064949291E",
    "A": "7E1111117E",
    "B": "7F49494936",
    "C": "3E41414122",
    "D": "7F4141221C",
    "E": "7F49494941",
    "F": "7F09090101",
    "G": "3E41415132",
    "H": "7F0808087F",
    "I": "00417F4100",
    "J": "2040413F01",
    "K": "7F08142241",
    "L": "7F40404040",
    "M": "7F0204027F",
    "N": "7F0408107F",
    "O": "3E4141413E",
    "P": "7F09090906",
    "Q": "3E4151215E",
    "R": "7F09192946",
    "S": "4649494931",
    "T": "01017F0101",
    "U": "3F4040403F",
    "V": "1F2040201F",
    "W": "7F2018207F",
    "X": "6314081463",
    "Y": "0304780403",
    "Z": "6151494543",
    "a": "2054545478",
    "b": "7F48444438",
    "c": "3844444420",
    "d": "384444487F",
    "e": "3854545418",
    "f": "087E090102",
    "g": "081454543C",
    "h": "7F08040478",
    "i": "00447D4000",
    "j": "2040443D00",
    "k": "007F102844",
    "l": "00417F4000",
    "m": "7C04180478",
    "n": "7C08040478",
    "o": "3844444438",
    "p": "7C14141408",
    "q": "081414187C",
    "r": "7C08040408",
    "s": "4854545420",
    "t": "043F444020",
    "u": "3C4040207C",
    "v": "1C2040201C",
    "w": "3C4030403C",
    "x": "4428102844",
    "y": "0C5050503C",
    "z": "4464544C44",
}


class _Canvas:
    """An RGB image with rectangles and 5x7 text, written as PNG with zlib + struct."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(b"\xff" * (width * height * 3))

    def rect(self, x0: int, y0: int, x1: int, y1: int, colour: Tuple[int, int, int]) -> None:
        x0, x1 = max(0, min(x0, x1)), min(self.width, max(x0, x1))
        y0, y1 = max(0, min(y0, y1)), min(self.height, max(y0, y1))
        line = bytes(colour) * (x1 - x0)
        for y in range(y0, y1):
            start = (y * self.width + x0) * 3
            self.pixels[start : start + len(line)] = line

    def text(self, x: int, y: int, text: str, colour: Tuple[int, int, int] = (0, 0, 0)) -> None:
        for char in text:
            glyph = bytes.fromhex(_FONT.get(char, _FONT.get(char.upper(), "7F4141417F")))
            for column, bits in enumerate(glyph):
                for row in range(7):
                    if bits >> row & 1:
                        self.rect(x + column, y + row, x + column + 1, y + row + 1, colour)
            x += 6

    def line(self, x0: int, y0: int, x1: int, y1: int, colour: Tuple[int, int, int], width: int = 2) -> None:
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for step in range(steps + 1):
            x = x0 + round((x1 - x0) * step / steps)
            y = y0 + round((y1 - y0) * step / steps)
            self.rect(x, y, x + width, y + width, colour)

    def png(self) -> bytes:
        raw = b"".join(
            b"\x00" + bytes(self.pixels[y * self.width * 3 : (y + 1) * self.width * 3])
            for y in range(self.height)
        )

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )


def _builtin_plot(bars: List[Tuple[str, List[Tuple[str, float, Optional[float]]]]], path: Path) -> None:
    label_width, bar_width, row_height, margin = 240, 520, 12, 12
    values = [value for _, entries in bars for _, value, _ in entries] or [1.0]
    low = 10 ** math.floor(math.log10(min(*values, 0.5)))
    high = 10 ** math.ceil(math.log10(max(*values, 20.0)))
    span = math.log10(high) - math.log10(low)
    x_origin = margin + label_width

    def x_of(value: float) -> int:
        return x_origin + round((math.log10(value) - math.log10(low)) / span * bar_width)

    rows = sum(len(entries) + 3 for _, entries in bars)
    canvas = _Canvas(x_origin + bar_width + 70, 2 * margin + 20 + rows * row_height)
    canvas.text(margin, margin, "Reference / ours (log scale, higher is better; black ticks: goals)")
    y = margin + 20
    for namespace, entries in bars:
        canvas.text(margin, y + 2, namespace, (0, 0, 120))
        decade = low
        while decade <= high * 1.0001:
            x = x_of(decade)
            canvas.text(x - 6, y + 2, f"{decade:g}x", (90, 90, 90))
            decade *= 10
        y += row_height + 4
        top = y
        for label, value, goal in entries:
            canvas.text(margin, y + 2, label[:39])
            colour = (60, 150, 60) if value >= 1 else (200, 60, 60)
            canvas.rect(x_of(1.0), y + 2, x_of(value), y + row_height - 1, colour)
            if goal is not None:
                canvas.rect(x_of(goal) - 1, y, x_of(goal) + 1, y + row_height + 1, (0, 0, 0))
            canvas.text(max(x_of(value), x_of(1.0)) + 4, y + 2, _ratio_text(value), (0, 0, 160))
            y += row_height
        decade = low
        while decade <= high * 1.0001:
            canvas.rect(x_of(decade), top, x_of(decade) + 1, y, (150, 150, 150))
            decade *= 10
        canvas.rect(x_of(1.0), top, x_of(1.0) + 1, y, (0, 0, 0))
        y += 2 * row_height
    path.write_bytes(canvas.png())


@dataclass(frozen=True)
class _Panel:
    """One panel of the scale figure: a cost vs a size, one line of (x, y) per namespace."""

    title: str
    x_label: str
    y_label: str
    lines: Tuple[Tuple[str, Tuple[Tuple[int, float], ...]], ...]
    verdict: str  # flat: yes / no per namespace


def _scale_panels(samples: Samples, namespaces: Sequence[str], sizes: Dict[str, Any]) -> List[_Panel]:
    """Returns: the panels of the scale figure, row by row: µs (top), then bytes written (bottom)."""
    panels = []
    for kind, index in (("time", 1), ("bytes", 2)):
        for series in scale_series(sizes):
            lines = []
            verdicts = []
            for namespace in namespaces:
                points = []
                for point in series.points:
                    value = median(samples, namespace, str(point[index]), OURS)
                    if value is not None:
                        points.append((point[0], value))
                lines.append((namespace, tuple(points)))
                flat = flatness(samples, namespace, series)[kind]["flat"]
                verdicts.append(f"{SHORT[namespace]} {({True: 'yes', False: 'no', None: 'n/a'})[flat]}")
            unit = "µs" if kind == "time" else "bytes written"
            panels.append(
                _Panel(
                    f"{unit} per {series.per} vs {series.x_label}",
                    f"{series.x_label} (log; 0 drawn at 1)"
                    if series.points[0][0] == 0
                    else f"{series.x_label} (log)",
                    f"{unit} per {series.per}",
                    tuple(lines),
                    "flat: " + ", ".join(verdicts),
                )
            )
    return panels


_LINE_COLOURS = ((31, 119, 180), (255, 127, 14))


def plot_scale(samples: Samples, namespaces: Sequence[str], sizes: Dict[str, Any], path: Path) -> str:
    """Draw the scale series (ours): cost per message vs messages exchanged and vs stored skipped keys,
    fan-out cost per device vs devices; µs on top, bytes written below; log x axis (a point at 0 is
    drawn at 1, labelled 0), linear y axis from 0.

    Returns:
        ``"matplotlib"`` or ``"builtin"``: which renderer was used.
    """
    panels = _scale_panels(samples, namespaces, sizes)
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
        from matplotlib.ticker import NullLocator  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        _builtin_scale_plot(panels, path)
        return "builtin"
    figure, axes = plt.subplots(2, len(panels) // 2, figsize=(5 * len(panels) // 2, 8), squeeze=False)
    for axis, panel in zip(axes.flat, panels, strict=True):
        ticks: Dict[int, str] = {}
        for (namespace, points), colour in zip(panel.lines, _LINE_COLOURS, strict=False):
            xs = [max(x, 1) for x, _ in points]
            ticks.update({max(x, 1): f"{x:,}" for x, _ in points})
            axis.plot(
                xs,
                [y for _, y in points],
                marker="o",
                color=[c / 255 for c in colour],
                label=SHORT[namespace],
            )
        axis.set_xscale("log")
        axis.xaxis.set_minor_locator(NullLocator())
        axis.set_xticks(sorted(ticks))
        axis.set_xticklabels([ticks[x] for x in sorted(ticks)])
        axis.set_ylim(bottom=0)
        axis.set_title(f"{panel.title}\n{panel.verdict}", fontsize=9)
        axis.set_xlabel(panel.x_label, fontsize=8)
        axis.set_ylabel(panel.y_label, fontsize=8)
        axis.tick_params(labelsize=7)
        axis.legend(fontsize=7)
    figure.suptitle(
        f"Ours at scale (medians; flat = largest point within {FLAT_WITHIN}x of the smallest)", fontsize=11
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return "matplotlib"


def _nice_ticks(top: float) -> List[float]:
    """Returns: 0 and round tick values (1, 2 or 5 times a power of ten apart) up to at least ``top``."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / 4
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [step * i for i in range(math.ceil(top / step - 1e-9) + 1)]


def _builtin_scale_plot(panels: List[_Panel], path: Path) -> None:
    columns = len(panels) // 2
    width, height, margin, title_height = 380, 250, 12, 24
    left, right, top, bottom = 58, 14, 34, 34
    canvas = _Canvas(2 * margin + columns * width, 2 * margin + title_height + 2 * height)
    canvas.text(
        margin, margin, f"Ours at scale (medians; flat = largest point within {FLAT_WITHIN}x of the smallest)"
    )
    for number, panel in enumerate(panels):
        x0 = margin + (number % columns) * width + left
        y0 = margin + title_height + (number // columns) * height + top
        x1 = margin + (number % columns + 1) * width - right
        y1 = margin + title_height + (number // columns + 1) * height - bottom
        canvas.text(x0 - left + 6, y0 - top + 2, panel.title.replace("µs", "us"))
        canvas.text(x0 - left + 6, y0 - top + 12, panel.verdict, (90, 90, 90))
        xs = sorted({max(x, 1) for _, points in panel.lines for x, _ in points}) or [1]
        labels = {max(x, 1): f"{x:,}" for _, points in panel.lines for x, _ in points}
        low, high = math.log10(xs[0]), math.log10(xs[-1])
        span = high - low or 1.0
        ticks = _nice_ticks(max((y for _, points in panel.lines for _, y in points), default=1.0) * 1.05)

        def x_of(x: float, x0: int = x0, x1: int = x1, low: float = low, span: float = span) -> int:
            return x0 + 10 + round((math.log10(max(x, 1)) - low) / span * (x1 - x0 - 20))

        def y_of(y: float, y0: int = y0, y1: int = y1, ticks: List[float] = ticks) -> int:
            return y1 - round(y / ticks[-1] * (y1 - y0))

        for tick in ticks:
            y = y_of(tick)
            canvas.rect(x0, y, x1, y + 1, (225, 225, 225))
            text = f"{tick:,.0f}" if ticks[1] >= 1 else f"{tick:g}"
            canvas.text(x0 - 6 * len(text) - 4, y - 3, text, (90, 90, 90))
        for x in xs:
            canvas.rect(x_of(x), y1, x_of(x) + 1, y1 + 4, (0, 0, 0))
            canvas.text(x_of(x) - 3 * len(labels[x]), y1 + 6, labels[x], (90, 90, 90))
        canvas.text(x0 + (x1 - x0) // 2 - 3 * len(panel.x_label), y1 + 18, panel.x_label, (90, 90, 90))
        canvas.rect(x0, y0, x0 + 1, y1 + 1, (0, 0, 0))
        canvas.rect(x0, y1, x1, y1 + 1, (0, 0, 0))
        for index, ((namespace, points), colour) in enumerate(zip(panel.lines, _LINE_COLOURS, strict=False)):
            previous: Optional[Tuple[int, int]] = None
            for point_x, point_y in points:
                here = (x_of(point_x), y_of(point_y))
                canvas.rect(here[0] - 3, here[1] - 3, here[0] + 4, here[1] + 4, colour)
                if previous is not None:
                    canvas.line(*previous, *here, colour)
                previous = here
            legend_y = y0 + 4 + 10 * index
            canvas.rect(x1 - 70, legend_y + 2, x1 - 60, legend_y + 5, colour)
            canvas.text(x1 - 56, legend_y, SHORT[namespace], colour)
    path.write_bytes(canvas.png())


# --------------------------------------------------------------------------------------------------
# Main


def machine() -> Dict[str, Any]:
    """Returns: a description of this machine (CPU count and model, OS, our Python)."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sample counts, one round (CI smoke run)")
    parser.add_argument("--rounds", type=int, help="rounds (default 5, or 1 with --quick)")
    parser.add_argument("--json", type=Path, help="write every sample and the summary to this file")
    parser.add_argument(
        "--plot",
        type=Path,
        help="write a PNG of the ratios to this file, and of the scale series to <stem>-scale.png",
    )
    parser.add_argument(
        "--namespaces",
        nargs="+",
        choices=NAMESPACES,
        default=list(NAMESPACES),
        help="namespaces to measure (default: both)",
    )
    parser.add_argument("--groups", nargs="+", choices=list(GROUPS), help="scenario groups (default: all)")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="cpu",
        help="cpu: CPU time of the measuring process (default; robust on a shared machine); wall: wall time",
    )
    parser.add_argument("--ours-python", type=Path, default=Path(sys.executable))
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--reference-python", type=Path, help="the reference interpreter (default: cached venv)"
    )
    where.add_argument("--no-reference", action="store_true", help="measure our stack only")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 5)
    if args.groups:
        for group in list(GROUPS):
            if group not in args.groups:
                del GROUPS[group]

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.monotonic()
    reference: Optional[Path] = None
    if args.reference_python is not None:
        reference = args.reference_python
    elif not args.no_reference:
        try:
            reference = reference_python()
        except Exception as e:
            log(f"error: the reference venv is not available ({e}); use --no-reference to measure ours only")
            return 2
    workers = [Worker(OURS, args.ours_python)]
    if reference is not None:
        workers.append(Worker(REFERENCE, reference))
    try:
        hello = {worker.name: worker.request({"group": "hello"})["hello"] for worker in workers}
        for name, info in hello.items():
            log(f"{name}: Python {info['python']} {info['executable']}; omemo from {info['omemo']}")
        samples = run(workers, args.namespaces, rounds, args.quick, args.clock, log)
    except WorkerError as e:
        log(f"error: {e}")
        return 1
    finally:
        for worker in workers:
            worker.close()
    elapsed = time.monotonic() - started
    evaluated = goals(samples, args.namespaces)
    print(
        f"{rounds} round(s), {elapsed:.0f} s, {args.clock} clock; medians; "
        "ratio = reference / ours (higher: we are faster)\n"
    )
    for namespace in args.namespaces:
        print(table(samples, namespace) + "\n")
    sizes = SCALE_SIZES[1 if args.quick else 0]
    with_scale = "scale" in GROUPS
    rows = ALL_ROWS + (scale_rows(sizes) if with_scale else ())
    if with_scale:
        for namespace in args.namespaces:
            print(scale_table(samples, namespace, sizes) + "\n")
    if reference is not None:
        print("### Goals\n\n" + goals_text(evaluated))
    if args.plot is not None:
        renderer = plot(samples, args.namespaces, args.plot)
        log(f"plot written to {args.plot} ({renderer})")
        if with_scale:
            scale_path = args.plot.with_name(f"{args.plot.stem}-scale.png")
            renderer = plot_scale(samples, args.namespaces, sizes, scale_path)
            log(f"scale plot written to {scale_path} ({renderer})")
    if args.json is not None:
        chosen = _TRUE_FLOOR[0] if _TRUE_FLOOR else None
        document = {
            "machine": machine(),
            "workers": hello,
            "rounds": rounds,
            "clock": args.clock,
            "quick": args.quick,
            "seconds": elapsed,
            "rows": {
                row.key: {"label": row.label, "unit": row.unit, "ours_only": row.ours_only} for row in rows
            },
            "medians": {
                namespace: {
                    row.key: {
                        stack: median(samples, namespace, row.key, stack) for stack in (REFERENCE, OURS)
                    }
                    for row in rows
                }
                for namespace in args.namespaces
            },
            "true_floor": None
            if chosen is None
            else {
                "hmac": chosen.hmac,
                "hkdf": chosen.hkdf_name,
                "us_per_call": chosen.costs,
                "calls": TRUE_FLOOR_CALLS,
            },
            "scale_sizes": sizes if with_scale else None,
            "flatness": {
                namespace: {
                    series.name: flatness(samples, namespace, series) for series in scale_series(sizes)
                }
                for namespace in args.namespaces
            }
            if with_scale
            else None,
            "goals": evaluated,
            "samples": samples,
        }
        args.json.write_text(json.dumps(document, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
