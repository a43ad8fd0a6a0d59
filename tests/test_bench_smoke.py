"""Smoke test of the API benchmark: ``benchmarks/api_bench.py --quick`` runs and fills every row.

With the reference venv (built and cached by ``tests/interop/refenv.py``, as for the interop tests)
both stacks are measured; without it only ours is, unless ``CI`` is ``"true"``, where a missing
reference venv is a failure (the interop conftest's rule). No timing is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from interop.refenv import reference_python_or_skip

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "api_bench.py"
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
            if reference is not None and not key.startswith("floor_"):
                assert samples.get("reference"), f"no reference samples for {key} in {namespace}"
            assert row["label"] in completed.stdout
    if reference is not None:
        assert "### Goals" in completed.stdout
        assert document["goals"] and all(isinstance(entry["met"], bool) for entry in document["goals"])
