"""The demo (the README's first command): on a real Prosody, and the in-memory one, whose second run
continues from the stored state."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

DEMO = Path(__file__).parent.parent / "examples" / "demo.py"


def load_demo(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("omemo_demo", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "omemo_demo", module)
    spec.loader.exec_module(module)
    return module


def test_demo_runs_twice_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = load_demo(monkeypatch)
    data = tmp_path / "data"
    assert demo.main(["--in-memory", "--data-dir", str(data)]) == 0
    first = capsys.readouterr().out
    assert "First run" in first
    assert "with a key exchange" in first
    assert first.count("decrypted from") >= 15
    assert "BLINDLY_TRUSTED" in first
    assert 'xmlns="eu.siacs.conversations.axolotl"' in first and 'xmlns="urn:xmpp:omemo:2"' in first
    assert not [line for line in first.splitlines() if line.startswith("  !")]  # no encryption errors

    assert demo.main(["--in-memory", "--data-dir", str(data)]) == 0
    second = capsys.readouterr().out
    assert "Continuing from the stored state" in second
    assert "with a key exchange" not in second
    assert second.count("decrypted from") == first.count("decrypted from")


def test_the_demo_on_a_real_server(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = load_demo(monkeypatch)
    from interop.refenv import on_ci

    assert demo.main([]) == 0
    out = capsys.readouterr().out
    if "running the in-memory demo instead" in out:
        message = "no Prosody for the demo: " + out.splitlines()[0]
        if on_ci():
            pytest.fail(message)
        pytest.skip(message)
    assert "Prosody running on 127.0.0.1" in out
    assert "alice/phone decrypted from bob@localhost" in out and "over OMEMO 2" in out
    assert "alice/laptop decrypted from bob@localhost" in out and "over legacy OMEMO" in out
    assert "alice/laptop read her own sent copy" in out
    assert "Devices of alice@localhost" in out and "OMEMO health of alice@localhost" in out
    assert "Traceback" not in out
