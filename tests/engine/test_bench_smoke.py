"""Smoke test of benchmarks/engine_bench.py: its main runs with --quick (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "engine_bench.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("engine_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_quick_run_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert load_bench().main(["--quick"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "median µs" in lines[0] and "floor µs" in lines[0] and "ratio" in lines[0]
    rows = lines[1:]
    for operation in ("one-way message", "DH-step message", "X3DH active+passive"):
        assert sum(operation in row for row in rows) == 2  # one row per namespace


def test_quick_profile_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert load_bench().main(["--quick", "--profile"]) == 0
    assert "cProfile" in capsys.readouterr().out
