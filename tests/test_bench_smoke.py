"""Smoke tests of the benchmarks: ``benchmarks/api_bench.py --quick`` runs and fills every row;
``benchmarks/xmpp_bench.py --quick`` with a few messages runs every case through a real Prosody.

With the reference venv (built and cached by ``tests/interop/refenv.py``, as for the interop tests)
both stacks are measured; without it only ours is, unless ``CI`` is ``"true"``, where a missing
reference venv is a failure (the interop conftest's rule). The same holds for the slixmpp-omemo venv
of the XMPP benchmark, and for Prosody (as ``start_prosody_or_skip`` does). No timing is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from interop.refenv import (
    SLIXMPP_OMEMO,
    ReferenceEnvError,
    ensure_peer_env,
    on_ci,
    reference_python_or_skip,
)

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "api_bench.py"
XMPP_BENCH = BENCH.parent / "xmpp_bench.py"
XMPP_BENCH_NO_SERVER = 3  # xmpp_bench.py's exit status when Prosody cannot be had
NAMESPACES = ("urn:xmpp:omemo:2", "eu.siacs.conversations.axolotl")


def test_quick_run_fills_every_row(tmp_path: Path) -> None:
    reference = reference_python_or_skip(optional=True)
    out = tmp_path / "bench.json"
    command: List[str] = [sys.executable, str(BENCH), "--quick", "--json", str(out)]
    command += ["--no-reference"] if reference is None else ["--reference-python", str(reference)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr

    document: Dict[str, Any] = json.loads(out.read_text())
    rows: Dict[str, Any] = document["rows"]
    assert rows, "the benchmark produced no rows"
    for namespace in NAMESPACES:
        assert namespace in completed.stdout
        for key, row in rows.items():
            samples = document["samples"][namespace][key]
            assert samples.get("ours"), f"no samples of ours for {key} in {namespace}"
            if row.get("ours_only"):  # the floors and the costs at scale: never asked of the reference
                assert not samples.get("reference"), f"reference samples for the ours-only {key}"
            elif reference is not None:
                assert samples.get("reference"), f"no reference samples for {key} in {namespace}"
            assert row["label"] in completed.stdout
    assert any(key.startswith("scale_") for key in rows), "no rows of the (tiny) scale group"
    assert "flat: yes" in completed.stdout or "flat: **no**" in completed.stdout
    if reference is not None:
        assert "### Goals" in completed.stdout
        assert document["goals"] and all(isinstance(entry["met"], bool) for entry in document["goals"])


def _slixmpp_omemo_python_or_none() -> Optional[Path]:
    try:
        return ensure_peer_env(SLIXMPP_OMEMO)
    except (ReferenceEnvError, OSError) as exc:
        if on_ci():
            pytest.fail(f"the slixmpp-omemo peer venv is not available: {exc}")
        return None


def test_xmpp_quick_run_measures_every_case(tmp_path: Path) -> None:
    reference = _slixmpp_omemo_python_or_none()
    out = tmp_path / "xmpp-bench.json"
    command: List[str] = [sys.executable, str(XMPP_BENCH), "--quick", "--messages", "8", "--json", str(out)]
    command += ["--room-messages", "3", "--room-members", "3"]
    command += ["--no-reference"] if reference is None else ["--reference-python", str(reference)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if completed.returncode == XMPP_BENCH_NO_SERVER:
        message = f"no Prosody XMPP server for the benchmark: {completed.stderr.strip()}"
        if on_ci():
            pytest.fail(message)
        pytest.skip(message)
    assert completed.returncode == 0, completed.stdout + completed.stderr

    document: Dict[str, Any] = json.loads(out.read_text())
    legacy, omemo2 = ["eu.siacs.conversations.axolotl"], ["urn:xmpp:omemo:2"]
    expected = {
        "ours_legacy": legacy,
        "ours_omemo2": omemo2,
        "floor": [],  # the same clients in plain text
        "ours_room_legacy": legacy,
        "ours_room_omemo2": omemo2,
        "ours_room_tracked": legacy,
    }
    if reference is not None:
        expected["reference_legacy"] = legacy
        expected["reference_room_legacy"] = legacy
    assert set(document["summaries"]) == set(expected)
    for key, wire in expected.items():
        summary = document["summaries"][key]
        assert summary["wire_namespaces"] == wire, key
        assert summary["messages_per_second"] > 0 and summary["latency_p99_ms"] > 0
        (run,) = document["runs"][key]
        assert len(run["latencies_ms"]) == (3 if "room" in key else 8)
        assert document["cases"][key]["label"] in completed.stdout
    if reference is not None:
        assert len(document["ratios"]) == 2 and all(isinstance(r["met"], bool) for r in document["ratios"])
        for pair in ("ours_legacy / reference_legacy", "ours_room_legacy / reference_room_legacy"):
            assert f"Ratio {pair}" in completed.stdout


SCALE_BENCH = BENCH.parent / "scale_bench.py"


def test_scale_bench_quick_run_fills_every_row(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    command = [sys.executable, str(SCALE_BENCH), "--quick", "--json", str(out), "--dir", str(tmp_path / "db")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]
    assert [row["storage"] for row in rows] == ["memory", "sqlite", "sqlite-shared", "postgres"]
    for row in rows:
        assert row["sessions"] == 120 and row["messages"] == 200
        for key in ("messages_per_s", "latency_ms_p99", "stall_ms_max", "ram_bytes_per_session"):
            assert row[key] > 0, (row["storage"], key)
        assert row["session_record_bytes"] > 100
    assert all(row["restart_create_s_per_account"] > 0 for row in rows[1:])
