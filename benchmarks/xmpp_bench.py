"""End-to-end XMPP benchmark: OMEMO 1:1 messages through a real Prosody, our plugin against slixmpp-omemo.

Usage (from the repository root)::

    .venv/bin/python benchmarks/xmpp_bench.py                    # 5 rounds of 500 messages per case
    .venv/bin/python benchmarks/xmpp_bench.py --profile --json xmpp-bench.json
    .venv/bin/python benchmarks/xmpp_bench.py --quick            # smoke run: 1 round of 30 messages

The benchmark starts its own private Prosody on loopback (``tests/xmpp/server.py``; installed with
apt-get when missing) and stops it at the end. Cases (scenario ``one_to_one``, see
``benchmarks/_xmpp_loop.py`` for exactly what is timed):

- ``ours_legacy``: our ``omemo_slixmpp`` on both accounts, legacy namespace only;
- ``reference_legacy``: slixmpp-omemo 2.2.0 on the reference stack (omemo/twomemo/oldmemo 2.1.0) on
  both accounts, in its own venv (``tests/interop/refenv.py``, ``~/.cache/omemo-stack/slixmpp-omemo``)
  as a subprocess, ``benchmarks/_xmpp_ref_worker.py``; it always sends legacy OMEMO;
- ``ours_omemo2``: our plugin with its default namespaces, so OMEMO 2 with XEP-0420 envelopes;
- ``floor``: the clients of ``ours_legacy`` sending the same messages in plain text (no encrypt, no
  decrypt): what slixmpp, TLS, the server and the loop cost by themselves, the floor under every case.

Both accounts of a case live in one process and one event loop: ours in this process, the reference
in its worker. Storage is in memory on both stacks (our ``MemoryStorage``; a ``Storage`` subclass on a
dict for the reference). Every round runs every case once on fresh accounts (new devices), in an order
that alternates between rounds so load on this shared machine hits the stacks alike.

The server is the end-to-end tests' Prosody without its message archive and without Nagle's
algorithm on its sockets (``--archive`` and ``--nagle`` keep them; see :func:`make_server`). At most
``--window`` messages (default 20) are in flight, so the pipeline through the server stays full while
a message's latency includes at most 19 queued ahead of it.

Printed: per case the messages per second (median over the rounds), the per-message latency (median
and p99 over all rounds' messages), the CPU time per message of the client process (both accounts) and
of Prosody, the automatic empty messages the receiver sent back (staleness heartbeats, which the
sender decrypts inside the timed section); the ratio ours / reference in messages per second for
legacy against the goal (>= 3x), with the ratio of client CPU per message beside it.
``--profile`` then runs our two cases once more under cProfile (only the timed section) and prints
where the time goes, by bucket (see :data:`BUCKETS`). ``--json FILE`` saves everything.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import fnmatch
import importlib.metadata
import json
import logging
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TESTS = REPO / "tests"
REF_WORKER = HERE / "_xmpp_ref_worker.py"
if str(TESTS) not in sys.path:  # the test helpers: the server and the peer venvs
    sys.path.insert(0, str(TESTS))

from slixmpp.plugins import register_plugin  # noqa: E402

from _xmpp_loop import ACCOUNTS, SCENARIOS, Hooks, PassThrough, Side, connect, percentile  # noqa: E402

# interop and xmpp are tests/ packages. mypy resolves them through the project's config (tests/ is a
# source root there), not when it is given this file alone: hence the ignores (unused in the first case).
from interop.refenv import (  # type: ignore[import-not-found, unused-ignore]  # noqa: E402
    SLIXMPP_OMEMO,
    ReferenceEnvError,
    ensure_peer_env,
)
from omemo.storage import Storage  # noqa: E402
from omemo.storages import MemoryStorage  # noqa: E402
from omemo.types import DeviceInformation  # noqa: E402
from omemo_slixmpp import XEP_0384  # noqa: E402
from xmpp.server import Prosody, ServerUnavailable  # type: ignore[import-not-found, unused-ignore]  # noqa: E402

__all__ = ["BUCKETS", "CASES", "GOAL", "Case", "bucket_of", "main"]

OURS = "ours"
REFERENCE = "reference"
NS2 = "urn:xmpp:omemo:2"
NSL = "eu.siacs.conversations.axolotl"

#: The goal: ours / reference messages per second, legacy, at least this.
GOAL = 3.0
DEFAULT_MESSAGES, QUICK_MESSAGES = 500, 30
DEFAULT_ROOM_MESSAGES, QUICK_ROOM_MESSAGES = 100, 10
DEFAULT_ROUNDS = 5
DEFAULT_WINDOW = 20
DEFAULT_WARMUP = 3
PASSWORD = "bench-secret"
#: Lua for the virtual host of the benchmark's server: no message archive (MAM), see :func:`make_server`.
NO_ARCHIVE = 'modules_disabled = { "s2s", "mam" }'
#: Lua for the global section: TCP_NODELAY on the server's sockets, see :func:`make_server`.
NO_NAGLE = 'Host "*"\nnetwork_settings = { nagle = false }'

#: Whether omemo_slixmpp decrypts empty OMEMO messages (heartbeats...) by itself: yes since commit
#: 8808086 (slixmpp-omemo 2.2.0 does not; see ``_xmpp_loop.attach_inbox``).
OURS_DECRYPTS_EMPTY = True

#: Exit statuses besides 0 (done) and 1 (a case failed).
EXIT_NO_REFERENCE = 2
EXIT_NO_SERVER = 3


@dataclass(frozen=True)
class Case:
    """One measured configuration: which stack runs which scenario with which namespaces."""

    key: str
    label: str
    stack: str
    scenario: str
    #: Our plugin's ``namespaces`` config (the reference has no such option: it speaks legacy).
    namespaces: Tuple[str, ...] = ()
    #: Messages go in plain text (``_xmpp_loop.PassThrough`` instead of the plugin's encrypt and
    #: decrypt): the floor of the XMPP layer, with the same clients, plugins and loop.
    plain: bool = False
    #: How a room message is addressed: ``members`` (the other members' real JIDs, as slixmpp-omemo,
    #: which has no room support, needs: the compared cases do this on both stacks) or ``room`` (the
    #: room itself: our plugin reads the room's member list before every message, its default, which
    #: costs a round trip to the server per message).
    room_address: str = "members"


CASES: Tuple[Case, ...] = (
    Case("ours_legacy", "omemo_slixmpp, legacy only", OURS, "one_to_one", (NSL,)),
    Case("reference_legacy", "slixmpp-omemo 2.2.0 (legacy)", REFERENCE, "one_to_one"),
    Case("ours_omemo2", "omemo_slixmpp, OMEMO 2 (default)", OURS, "one_to_one", (NS2, NSL)),
    Case("floor", "floor: same clients, no encryption", OURS, "one_to_one", (NSL,), plain=True),
    Case("ours_room_legacy", "room: omemo_slixmpp, legacy only", OURS, "room", (NSL,)),
    Case("reference_room_legacy", "room: slixmpp-omemo 2.2.0 (legacy)", REFERENCE, "room"),
    Case("ours_room_omemo2", "room: omemo_slixmpp, OMEMO 2 (default)", OURS, "room", (NS2, NSL)),
    Case(
        "ours_room_tracked",
        "room: omemo_slixmpp, legacy, the room as recipient",
        OURS,
        "room",
        (NSL,),
        room_address="room",
    ),
)
#: (ours, reference) case pairs compared against :data:`GOAL`.
RATIOS: Tuple[Tuple[str, str], ...] = (
    ("ours_legacy", "reference_legacy"),
    ("ours_room_legacy", "reference_room_legacy"),
)

PROFILED: Tuple[str, ...] = ("ours_legacy", "ours_omemo2")

# --------------------------------------------------------------------------------------------------
# Profile buckets

#: Where the profiled time goes. Each function's OWN time (cProfile's tottime) goes to the first
#: bucket with a pattern that matches it (``fnmatch``, case-sensitive): Python functions are matched
#: by their file path, C functions (cProfile's file ``~``) by ``<built-in> `` + their name, e.g.
#: ``<built-in> <method 'poll' of 'select.epoll' objects>``. A C function that matches nothing (the
#: generic ones: ``str.join``, ``dict.get``, ``isinstance``...) is split over the buckets of its callers,
#: by the time it took for each caller (cProfile records that per caller). Nothing matched: ``other``
#: (the standard library's copy, uuid, inspect, datetime, enum, logging..., and this benchmark's loop).
IDLE = "idle (epoll wait)"
OTHER = "other"
BUCKETS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    # Waiting for the network: the event loop blocked in epoll with nothing to do (not CPU work).
    (IDLE, ("<built-in> *select.epoll*",)),
    (
        "crypto",
        (
            "*/cryptography/*",
            "*/nacl/*",
            "*/hmac.py",
            "*/hashlib.py",
            "*/omemo_engine/_primitives.py",
            "*/omemo_engine/payload.py",
            "*/omemo_engine/ratchet.py",
            "*/omemo_engine/x3dh.py",
            "*/omemo_engine/xeddsa.py",
            "<built-in> *_hashlib*",
            "<built-in> *cryptography*",
            "<built-in> *_openssl*",
            "<built-in> *_rust*",
            "<built-in> *_sodium*",
            "<built-in> *nacl*",
            "<built-in> *_cffi_backend*",
            "<built-in> *posix.urandom*",
        ),
    ),
    (
        "protobuf",
        (
            "*/google/protobuf/*",
            "*/omemo_engine/_protobuf.py",
            "*/omemo_engine/wire.py",
            "<built-in> *google.*",
            "<built-in> *upb*",
        ),
    ),
    (
        "XML",
        (
            "*/xml/etree/*",
            "*/xml/sax/*",
            "*/slixmpp/xmlstream/stanzabase.py",
            "*/slixmpp/xmlstream/tostring.py",
            "*/slixmpp/stanza/*",
            "*/slixmpp/plugins/*/stanza*",
            "*/omemo_engine/_xml_common.py",
            "*/omemo_engine/xml_*.py",
            "*/oldmemo/etree.py",
            "*/twomemo/etree.py",
            "*/omemo/sce.py",
            "<built-in> *xml.etree*",
            "<built-in> *_elementtree*",
            "<built-in> *pyexpat*",
            "<built-in> *xmlparser*",
        ),
    ),
    ("storage", ("*/omemo/storage.py", "*/omemo/storages/*")),
    (
        "slixmpp + asyncio + TLS",
        (
            "*/slixmpp/*",
            "*/asyncio/*",
            "*/ssl.py",
            "*/selectors.py",
            "*/socket.py",
            "<built-in> *_ssl*",
            "<built-in> *_socket*",
            "<built-in> *select.*",
            "<built-in> *_asyncio*",
            "<built-in> *_contextvars*",
        ),
    ),
    (
        "omemo core, backends, plugin",
        ("*/omemo/*", "*/oldmemo/*", "*/twomemo/*", "*/omemo_engine/*", "*/omemo_slixmpp/*"),
    ),
)


def bucket_of(filename: str, function: str) -> str:
    """Returns: the bucket of a profiled function (see :data:`BUCKETS`)."""
    key = f"<built-in> {function}" if filename == "~" else filename.replace(os.sep, "/")
    for bucket, patterns in BUCKETS:
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns):
            return bucket
    return OTHER


def profile_summary(profiler: cProfile.Profile, messages: int, top: int = 15) -> Dict[str, Any]:
    """Returns: the profiled own time by bucket (seconds, % of the total, µs per message), the total,
    and the ``top`` functions by own time."""
    raw: Dict[Tuple[str, int, str], Tuple[int, int, float, float, Dict[Any, Any]]]
    raw = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    buckets: Dict[str, float] = {name: 0.0 for name, _ in BUCKETS}
    buckets[OTHER] = 0.0
    functions: List[Tuple[float, int, str, str]] = []
    for (filename, line, name), (_cc, calls, own, _cumulative, callers) in raw.items():
        bucket = bucket_of(filename, name)
        where = name if filename == "~" else f"{_short_path(filename)}:{line} {name}"
        functions.append((own, calls, where, bucket))
        if bucket != OTHER or filename != "~" or not callers:
            buckets[bucket] += own
            continue
        # A generic C function: its time goes where it was called from.
        split = {caller: float(entry[2]) for caller, entry in callers.items()}
        whole = sum(split.values())
        for (caller_file, _line, caller_name), seconds in split.items():
            share = own * (seconds / whole if whole else 1.0 / len(split))
            buckets[bucket_of(caller_file, caller_name)] += share
    total = sum(buckets.values())
    busy = total - buckets[IDLE]
    functions.sort(reverse=True)
    return {
        "total_seconds": total,
        "busy_seconds": busy,
        "messages": messages,
        "buckets": {
            name: {
                "seconds": seconds,
                # Shares of the busy time (everything but the idle wait), which is what the CPU does.
                "percent": None if name == IDLE else (100.0 * seconds / busy if busy else 0.0),
                "us_per_message": seconds / messages * 1e6,
            }
            for name, seconds in buckets.items()
        },
        "top": [  # the bucket of a generic C function here is "other": its time was split by caller
            {"function": where, "calls": calls, "seconds": own, "bucket": bucket}
            for own, calls, where, bucket in functions[:top]
        ],
    }


def _short_path(filename: str) -> str:
    for marker in ("/site-packages/", "/src/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


# --------------------------------------------------------------------------------------------------
# Running the cases


class CaseFailed(RuntimeError):
    """A case could not be run (its worker failed, a message got lost...)."""


@dataclass
class Setup:
    """What every case run needs: the server, the reference interpreter, the scenario parameters."""

    server: Any  # xmpp.server.Prosody
    reference_python: Optional[Path]
    messages: int
    window: int
    warmup: int
    room_messages: int = 100
    room_members: int = ACCOUNTS["room"]
    accounts_made: int = 0

    @property
    def timeout(self) -> float:
        return 60.0 + 0.25 * self.messages + 2.0 * self.room_messages

    def parameters(self, case: Case) -> Dict[str, Any]:
        self.accounts_made += 1
        room = case.scenario == "room"
        return {
            "messages": self.room_messages if room else self.messages,
            "window": self.window,
            "warmup": self.warmup,
            "timeout": self.timeout,
            "server_pid": self.server.pid,
            "room": f"bench{self.accounts_made}@{self.server.muc_domain}",
            "room_address": case.room_address,
            "room_members": self.room_members,
        }

    def new_users(self, case: Case) -> List[str]:
        """Returns: fresh user names for one run of ``case``."""
        self.accounts_made += 1
        return [
            f"{case.key.replace('_', '')}{self.accounts_made}x{i}"
            for i in range(self.room_members if case.scenario == "room" else ACCOUNTS[case.scenario])
        ]


class BenchPlugin(XEP_0384):
    """Our plugin with an in-memory storage per account (``MemoryStorage``) and blind trust, as the
    reference worker has slixmpp-omemo's."""

    def plugin_init(self) -> None:
        self._storage = MemoryStorage()
        super().plugin_init()

    @property
    def storage(self) -> Storage:
        return self._storage

    @property
    def _btbv_enabled(self) -> bool:
        return True

    async def _prompt_manual_trust(
        self, manually_trusted: FrozenSet[DeviceInformation], identifier: Optional[str]
    ) -> None:
        return None


register_plugin(BenchPlugin)


async def _run_ours_async(setup: Setup, case: Case, hooks: Hooks) -> Dict[str, Any]:
    server = setup.server
    here = sys.modules[__name__]
    sides: List[Side] = []
    try:
        for user in setup.new_users(case):
            jid = server.register(user, PASSWORD)
            config = {"namespaces": case.namespaces}
            cafile = str(server.cafile)
            side = await connect(
                jid, PASSWORD, server.host, server.port, cafile, here, config, OURS_DECRYPTS_EMPTY
            )
            sides.append(Side(side.client, PassThrough(), side.inbox) if case.plain else side)
        return await SCENARIOS[case.scenario](sides, setup.parameters(case), hooks)
    finally:
        for side in sides:
            await side.client.disconnect()


def run_ours(setup: Setup, case: Case, hooks: Optional[Hooks] = None) -> Dict[str, Any]:
    """Runs ``case`` with our plugin in this process (a fresh event loop). Returns: its result."""
    try:
        return asyncio.run(_run_ours_async(setup, case, hooks or Hooks()))
    except Exception as exc:
        raise CaseFailed(f"{case.key}: {exc!r}") from exc


def run_reference(setup: Setup, case: Case) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """Runs ``case`` in the reference worker (a subprocess in slixmpp-omemo's venv).

    Returns:
        Its result and the versions it reported.
    """
    assert setup.reference_python is not None
    accounts = [
        {"jid": setup.server.register(user, PASSWORD), "password": PASSWORD} for user in setup.new_users(case)
    ]
    request = {
        "scenario": case.scenario,
        "host": setup.server.host,
        "port": setup.server.port,
        "cafile": str(setup.server.cafile),
        "accounts": accounts,
        **setup.parameters(case),
    }
    # -E -s: no PYTHONPATH and no user site, so only that venv's packages (and benchmarks/, the
    # script's directory, for _xmpp_loop) are importable.
    try:
        completed = subprocess.run(
            [str(setup.reference_python), "-E", "-s", str(REF_WORKER)],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=setup.timeout + 120,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CaseFailed(f"{case.key}: the reference worker timed out") from exc
    lines = completed.stdout.strip().splitlines()
    try:
        answer: Dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        answer = {"ok": False, "error": "no answer"}
    if not answer.get("ok"):
        tail = "\n".join(completed.stderr.strip().splitlines()[-20:])
        raise CaseFailed(f"{case.key}: the reference worker failed: {answer.get('error')}\n{tail}")
    result: Dict[str, Any] = answer["result"]
    found: Dict[str, str] = answer["versions"]
    return result, found


def run_case(setup: Setup, case: Case, reference_versions: Dict[str, str]) -> Dict[str, Any]:
    """Runs one case once. Returns: its result (see ``_xmpp_loop.measure_one_way``)."""
    if case.stack == OURS:
        return run_ours(setup, case)
    result, found = run_reference(setup, case)
    reference_versions.update(found)
    return result


# --------------------------------------------------------------------------------------------------
# Summaries


def summarise(runs: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Returns: the summary of one case's runs: msgs/s (median, min, max over runs), latency median and
    p99 over all messages (ms), CPU µs per message (median over runs) of the client process and the
    server, the namespaces seen on the wire."""
    rates = [run["messages_per_second"] for run in runs]
    latencies = [value for run in runs for value in run["latencies_ms"]]
    client_cpu = [run["cpu_seconds"] / run["messages"] * 1e6 for run in runs]
    server_cpu = [
        run["server_cpu_seconds"] / run["messages"] * 1e6
        for run in runs
        if run["server_cpu_seconds"] is not None
    ]
    return {
        "runs": len(runs),
        "messages_per_second": statistics.median(rates),
        "messages_per_second_min": min(rates),
        "messages_per_second_max": max(rates),
        "latency_median_ms": statistics.median(latencies),
        "latency_p99_ms": percentile(latencies, 0.99),
        "client_cpu_us_per_message": statistics.median(client_cpu),
        "server_cpu_us_per_message": statistics.median(server_cpu) if server_cpu else None,
        "wire_namespaces": sorted({ns for run in runs for ns in run["wire_namespaces"]}),
        "automatic_messages_per_run": statistics.median(run["automatic_messages"] for run in runs),
    }


def _short_ns(namespaces: Sequence[str]) -> str:
    names = {NS2: "omemo:2", NSL: "axolotl"}
    return "+".join(names.get(ns, ns) for ns in namespaces) or "plain"


def _num(value: Optional[float], digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def results_table(summaries: Dict[str, Dict[str, Any]]) -> str:
    """Returns: the results as a markdown table, one row per case."""
    lines = [
        "| case | on the wire | msgs/s | latency median (ms) | latency p99 (ms) "
        "| client CPU (µs/msg) | Prosody CPU (µs/msg) | automatic replies |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case in CASES:
        s = summaries.get(case.key)
        if s is None:
            continue
        rate = _num(s["messages_per_second"])
        if s["runs"] > 1:
            rate += f" ({_num(s['messages_per_second_min'])}-{_num(s['messages_per_second_max'])})"
        lines.append(
            f"| {case.label} | {_short_ns(s['wire_namespaces'])} | {rate} "
            f"| {_num(s['latency_median_ms'], 1)} | {_num(s['latency_p99_ms'], 1)} "
            f"| {_num(s['client_cpu_us_per_message'])} | {_num(s['server_cpu_us_per_message'])} "
            f"| {_num(s['automatic_messages_per_run'])} |"
        )
    return "\n".join(lines)


def ratios(
    summaries: Dict[str, Dict[str, Any]], rounds: Dict[str, List[Dict[str, Any]]]
) -> List[Dict[str, Any]]:
    """Returns: per pair of :data:`RATIOS`: ours / reference msgs/s (of the medians, and per round),
    reference / ours client CPU per message, and whether the goal is met."""
    result = []
    for ours, reference in RATIOS:
        if ours not in summaries or reference not in summaries:
            continue
        value = summaries[ours]["messages_per_second"] / summaries[reference]["messages_per_second"]
        per_round = [
            a["messages_per_second"] / b["messages_per_second"]
            for a, b in zip(rounds[ours], rounds[reference], strict=False)
        ]
        cpu = summaries[reference]["client_cpu_us_per_message"] / summaries[ours]["client_cpu_us_per_message"]
        result.append(
            {
                "ours": ours,
                "reference": reference,
                "messages_per_second_ratio": value,
                "per_round": per_round,
                "client_cpu_ratio": cpu,
                "goal": GOAL,
                "met": value >= GOAL,
            }
        )
    return result


def ratios_text(evaluated: Sequence[Dict[str, Any]]) -> str:
    lines = []
    for entry in evaluated:
        rounds = ", ".join(f"{value:.2f}x" for value in entry["per_round"])
        verdict = "met" if entry["met"] else "NOT MET"
        lines.append(
            f"Ratio {entry['ours']} / {entry['reference']}, messages per second: "
            f"{entry['messages_per_second_ratio']:.2f}x (goal >= {entry['goal']:g}x: {verdict}); "
            f"per round: {rounds}; client CPU per message, reference / ours: {entry['client_cpu_ratio']:.2f}x"
        )
    return "\n".join(lines)


def profile_text(key: str, summary: Dict[str, Any]) -> str:
    lines = [
        f"#### Profile: {key} ({summary['messages']} messages; {summary['total_seconds']:.2f} s profiled, "
        f"{summary['busy_seconds']:.2f} s of it busy)",
        "",
        "| bucket | % of busy | µs/msg (profiled) |",
        "|---|---:|---:|",
    ]
    ordered = sorted(
        summary["buckets"].items(), key=lambda item: (item[0] == IDLE, -float(item[1]["seconds"]))
    )
    for name, entry in ordered:
        percent = "—" if entry["percent"] is None else f"{entry['percent']:.1f}"
        lines.append(f"| {name} | {percent} | {entry['us_per_message']:,.0f} |")
    lines += [
        "",
        "Top functions by own time (generic C functions show `other` here; the table above split their",
        "time over their callers' buckets; calls of a coroutine count its resumptions):",
        "",
        "| function | calls | s | bucket |",
        "|---|---:|---:|---|",
    ]
    for entry in summary["top"]:
        lines.append(
            f"| `{entry['function']}` | {entry['calls']:,} | {entry['seconds']:.3f} | {entry['bucket']} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Machine and versions


def machine() -> Dict[str, Any]:
    """Returns: CPU count and model, OS, Python of this process."""
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


def our_versions() -> Dict[str, str]:
    """Returns: the Python and package versions of this process, and where our packages come from."""
    import omemo_slixmpp

    found = {"python": platform.python_version(), "source": str(Path(omemo_slixmpp.__file__).parent.parent)}
    for name in ("omemo-stack", "slixmpp", "cryptography", "PyNaCl", "protobuf"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def prosody_version() -> str:
    try:
        completed = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "prosody"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return completed.stdout.strip() or "unknown"


def git_commit() -> str:
    """Returns: the short commit of the repository, with a note if src/ differs from it (read only:
    ``--no-optional-locks``, so nothing in .git is written)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(REPO), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{commit} (src/ has uncommitted changes)" if dirty else commit


def make_server(archive: bool, nagle: bool) -> Any:
    """Returns: the benchmark's Prosody (not started): the end-to-end tests' server
    (``tests/xmpp/server.py``), by default with two settings changed so that it measures the clients
    and not the server's own choices (both cost the two stacks alike):

    - no message archive (mod_mam disabled for the virtual host). The tests' server archives every
      chat message for its sender and its recipient (``default_archive_policy = true``, file
      storage): about 1.3 ms of server CPU per message on the 2-core machine of docs/benchmarks.md,
      more than our whole client side, on the same two cores. ``--archive`` keeps it.
    - no Nagle algorithm on the server's sockets (``network_settings = { nagle = false }``, i.e.
      TCP_NODELAY, which asyncio already sets on the clients' side). Prosody leaves Nagle on by
      default: a small stanza then waits for the ACK of the previous one, which the client delays up
      to 40 ms, so the second message of a run takes about 40 ms and a client faster than the server's
      write pattern is held back (ours: about 500 instead of 950 msgs/s). ``--nagle`` keeps it.

    ``Host "*"`` returns to Prosody's global section after the virtual host's options.
    """
    extra = []
    if not archive:
        extra.append(NO_ARCHIVE)
    if not nagle:
        extra.append(NO_NAGLE)
    return Prosody(extra_config="\n".join(extra), muc_archive=archive)


# --------------------------------------------------------------------------------------------------
# Main


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the benchmark. Returns: the exit status (0, 1: a case failed, 2: no reference venv, 3: no
    Prosody)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, help=f"timed messages per run (default {DEFAULT_MESSAGES})")
    parser.add_argument(
        "--room-messages",
        type=int,
        help=f"timed messages per run in the room (default {DEFAULT_ROOM_MESSAGES})",
    )
    parser.add_argument(
        "--room-members",
        type=int,
        default=ACCOUNTS["room"],
        help=f"members of the room, the sender included (default {ACCOUNTS['room']})",
    )
    parser.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        action="append",
        help="run only the cases of this scenario (repeatable; default: all)",
    )
    parser.add_argument("--rounds", type=int, help=f"runs of every case (default {DEFAULT_ROUNDS})")
    parser.add_argument(
        "--window",
        type=int,
        default=DEFAULT_WINDOW,
        help=f"messages in flight at most (default {DEFAULT_WINDOW})",
    )
    parser.add_argument(
        "--warmup", type=int, default=DEFAULT_WARMUP, help="untimed exchanges each way first (default 3)"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: 1 round of {QUICK_MESSAGES} messages, no profile"
    )
    parser.add_argument("--profile", action="store_true", help="then profile our cases (cProfile) by bucket")
    parser.add_argument("--json", type=Path, help="write the results (every latency included) to this file")
    parser.add_argument(
        "--reference-python", type=Path, help="slixmpp-omemo's interpreter (default: the cached peer venv)"
    )
    parser.add_argument("--no-reference", action="store_true", help="measure our stack only")
    parser.add_argument(
        "--archive",
        action="store_true",
        help="keep the server's message archive (MAM, every message stored twice) as the tests have it",
    )
    parser.add_argument(
        "--nagle", action="store_true", help="keep Prosody's default of Nagle's algorithm on its sockets"
    )
    args = parser.parse_args(argv)
    messages = args.messages or (QUICK_MESSAGES if args.quick else DEFAULT_MESSAGES)
    rounds = args.rounds or (1 if args.quick else DEFAULT_ROUNDS)
    if messages < 1 or rounds < 1 or args.window < 1 or args.warmup < 1:
        parser.error("--messages, --rounds, --window and --warmup must be at least 1")
    room_messages = args.room_messages or (QUICK_ROOM_MESSAGES if args.quick else DEFAULT_ROOM_MESSAGES)
    if room_messages < 1 or args.room_members < 2:
        parser.error("--room-messages must be at least 1 and --room-members at least 2")
    window = min(args.window, messages, room_messages)
    logging.basicConfig(level=logging.ERROR)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    reference: Optional[Path] = None
    if args.reference_python is not None:
        reference = args.reference_python
    elif not args.no_reference:
        try:
            reference = Path(ensure_peer_env(SLIXMPP_OMEMO))
        except (ReferenceEnvError, OSError) as exc:
            log(f"error: the slixmpp-omemo venv is not available ({exc}); --no-reference measures ours only")
            return EXIT_NO_REFERENCE
    cases = [
        case
        for case in CASES
        if (case.stack == OURS or reference is not None)
        and (not args.scenario or case.scenario in args.scenario)
    ]

    server = make_server(args.archive, args.nagle)
    try:
        server.start()
    except ServerUnavailable as exc:
        server.close()
        log(f"error: no Prosody XMPP server: {exc}")
        return EXIT_NO_SERVER
    started = time.monotonic()
    setup = Setup(server, reference, messages, window, args.warmup, room_messages, args.room_members)
    runs: Dict[str, List[Dict[str, Any]]] = {case.key: [] for case in cases}
    reference_versions: Dict[str, str] = {}
    profiles: Dict[str, Dict[str, Any]] = {}
    try:
        for round_index in range(rounds):
            order = cases if round_index % 2 == 0 else cases[::-1]
            for case in order:
                result = run_case(setup, case, reference_versions)
                runs[case.key].append(result)
                rate, seconds = result["messages_per_second"], result["seconds"]
                log(f"round {round_index + 1}/{rounds} {case.key}: {rate:,.0f} msgs/s, {seconds:.2f} s")
        if args.profile and not args.quick:
            for key in PROFILED:
                case = next(c for c in cases if c.key == key)
                profiler = cProfile.Profile()
                run_ours(setup, case, Hooks(profiler.enable, profiler.disable))
                profiles[key] = profile_summary(profiler, messages)
                log(f"profiled {key}")
    except CaseFailed as exc:
        log(f"error: {exc}")
        return 1
    finally:
        server.close()
    elapsed = time.monotonic() - started

    summaries = {key: summarise(values) for key, values in runs.items()}
    evaluated = ratios(summaries, runs)
    info = machine()
    ours_versions = our_versions()
    commit = git_commit()
    print(
        f"End to end through Prosody {prosody_version()} on loopback "
        f"(message archive {'on' if args.archive else 'off'}, Nagle {'on' if args.nagle else 'off'}): "
        f"{messages} messages per run, "
        f"{rounds} round(s), window {window}, warm-up {args.warmup} each way; {elapsed:.0f} s in all\n"
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['platform']}\n"
        f"Commit: {commit}\n"
        f"Ours: {', '.join(f'{k} {v}' for k, v in ours_versions.items())}\n"
        + (
            f"Reference: {', '.join(f'{k} {v}' for k, v in reference_versions.items())}\n"
            if reference_versions
            else ""
        )
        + "msgs/s: median over the rounds (min-max); latency: over every message of every round; "
        "automatic replies: empty OMEMO messages per run that reached the sender (median)\n"
    )
    print(results_table(summaries))
    if evaluated:
        print("\n" + ratios_text(evaluated))
    for key, summary in profiles.items():
        print("\n" + profile_text(key, summary))
    if args.json is not None:
        document = {
            "machine": info,
            "commit": commit,
            "prosody": prosody_version(),
            "versions": {OURS: ours_versions, REFERENCE: reference_versions},
            "parameters": {
                "messages": messages,
                "rounds": rounds,
                "window": window,
                "warmup": args.warmup,
                "archive": args.archive,
                "nagle": args.nagle,
            },
            "seconds": elapsed,
            "cases": {
                case.key: {"label": case.label, "stack": case.stack, "scenario": case.scenario}
                for case in cases
            },
            "summaries": summaries,
            "ratios": evaluated,
            "profiles": profiles,
            "runs": runs,
        }
        args.json.write_text(json.dumps(document, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
