"""API-level benchmarks of our OMEMO stack against the reference stack (python-omemo 2.1.0).

Usage (from the repository root)::

    .venv/bin/python benchmarks/api_bench.py --rounds 5 --json bench.json --plot docs/benchmarks.png
    .venv/bin/python benchmarks/api_bench.py --quick            # a smoke run for CI (< 60 s)

The driver starts one worker (``_api_worker.py``) under our interpreter and one under the reference
stack's interpreter (the cached venv of the interop tests, built by ``tests/interop/refenv.py`` if
needed; ``OMEMO_REFENV`` moves it, ``--reference-python`` overrides it). Both workers run the same
public-API scenarios in-process; the driver asks them for one scenario group at a time, ALTERNATING
between the two stacks (and which one goes first), so that load on the machine affects both alike.
The raw primitive floor of a steady-state message (the HMAC / HKDF / AES calls it needs, straight
from ``cryptography``) is measured in this process between the groups.

Printed: one table per namespace with the median of each stack (µs, or storage writes / bytes),
the ratio reference / ours (higher is better for us), and the goals of the benchmark issue with
met / not met. ``--json`` saves every sample, ``--plot`` draws the ratios (matplotlib if it is
importable, else a built-in PNG writer).
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
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["GOALS", "GROUPS", "ROWS", "Goal", "Row", "main"]

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
    """One row of the table: a worker result key (or a floor key), its label and unit."""

    key: str
    label: str
    unit: str = "µs"


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
    Row("floor_encrypt", "primitive floor: steady encrypt"),
    Row("floor_decrypt", "primitive floor: steady decrypt"),
    Row("floor_ratchet_decrypt", "primitive floor: decrypt + DH step"),
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
}
FLOOR_SAMPLES = (100, 5)


@dataclass(frozen=True)
class Goal:
    """A goal of the benchmark issue: ratio ``>= at_least``, or our median ``<= at_most``."""

    text: str
    rows: Tuple[str, ...]
    at_least: Optional[float] = None
    at_most: Optional[float] = None


GOALS: Tuple[Goal, ...] = (
    Goal("steady state one direction, encrypt+decrypt >= 10x", ("one_way_total",), at_least=10),
    Goal("steady state alternating, encrypt+decrypt >= 4x", ("alternating_total",), at_least=4),
    Goal("fan-out to 100, existing sessions >= 8x", ("fan_out_100_existing",), at_least=8),
    Goal("fan-out to 100, new sessions >= 8x", ("fan_out_100_new",), at_least=8),
    Goal("create() with one backend >= 3x", ("create_one",), at_least=3),
    Goal("decrypt after 500 skipped >= 5x", ("skip_500_decrypt",), at_least=5),
    Goal("parse a bundle >= 10x", ("xml_bundle_parse",), at_least=10),
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
    turn = 0
    for round_index in range(rounds):
        for namespace in namespaces:
            for group, counts in GROUPS.items():
                order = list(workers) if turn % 2 == 0 else list(reversed(workers))
                turn += 1
                spent = []
                for worker in order:
                    start = time.monotonic()
                    answer = worker.request(
                        {
                            "group": group,
                            "namespace": namespace,
                            "samples": counts[1 if quick else 0],
                            "clock": clock,
                        }
                    )
                    spent.append(f"{worker.name} {time.monotonic() - start:.1f} s")
                    for key, values in answer["rows"].items():
                        samples[namespace][key].setdefault(worker.name, []).extend(values)
                log(f"round {round_index + 1}/{rounds} {SHORT[namespace]} {group}: {', '.join(spent)}")
            floor = measure_floor(namespace, FLOOR_SAMPLES[1 if quick else 0], CLOCKS[clock])
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
    if floor and floor_decrypt and encrypt and decrypt:
        lines += [
            "",
            f"Our steady one-way encrypt is {encrypt / floor:.1f}x its primitive floor, "
            f"decrypt {decrypt / floor_decrypt:.1f}x.",
        ]
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
    goal_of = {key: goal.at_least for goal in GOALS for key in goal.rows if goal.at_least is not None}
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
    parser.add_argument("--plot", type=Path, help="write a PNG of the ratios to this file")
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
    if reference is not None:
        print("### Goals\n\n" + goals_text(evaluated))
    if args.plot is not None:
        renderer = plot(samples, args.namespaces, args.plot)
        log(f"plot written to {args.plot} ({renderer})")
    if args.json is not None:
        document = {
            "machine": machine(),
            "workers": hello,
            "rounds": rounds,
            "clock": args.clock,
            "quick": args.quick,
            "seconds": elapsed,
            "rows": {row.key: {"label": row.label, "unit": row.unit} for row in ALL_ROWS},
            "medians": {
                namespace: {
                    row.key: {
                        stack: median(samples, namespace, row.key, stack) for stack in (REFERENCE, OURS)
                    }
                    for row in ALL_ROWS
                }
                for namespace in args.namespaces
            },
            "goals": evaluated,
            "samples": samples,
        }
        args.json.write_text(json.dumps(document, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
