"""The lock files in ``locks/`` agree with ``pyproject.toml`` and ``locks/*.in``, and the venv running
the tests is the locked one.

A failure here means a requirement changed without ``bash scripts/lock.sh`` (see scripts/lock.py).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Dict, List

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from interop.refenv import newest_mode

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
LOCKS = REPO / "locks"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def _load_lock_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_omemo_stack_lock", REPO / "scripts" / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


LOCK = _load_lock_module()


def _pins(name: str) -> Dict[str, str]:
    """Returns: package -> pinned version of ``locks/<name>.txt``, for this interpreter's markers."""
    pins: Dict[str, str] = {}
    text = (LOCKS / f"{name}.txt").read_text()
    for line in text.splitlines():
        match = _PIN.match(line)
        if match is None:
            continue
        package, version, marker = match.groups()
        condition = Requirement(f"{package}=={version}; {marker}").marker if marker else None
        if condition is None or condition.evaluate():
            assert canonicalize_name(package) not in pins, f"{package} pinned twice in {name}.txt"
            pins[canonicalize_name(package)] = version
    return pins


def _hashless_pins(name: str) -> List[str]:
    lines = (LOCKS / f"{name}.txt").read_text().splitlines()
    missing = []
    for i, line in enumerate(lines):
        if _PIN.match(line) and not (i + 1 < len(lines) and "--hash=sha256:" in lines[i + 1]):
            missing.append(line)
    return missing


def _check_satisfied(requirements: List[str], lock: str) -> None:
    pins = _pins(lock)
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in locks/{lock}.txt: run 'bash scripts/lock.sh'"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"locks/{lock}.txt pins {name}=={pins[name]}, outside {requirement}: run 'bash scripts/lock.sh'"
        )


def _in_file(name: str) -> List[str]:
    lines = (LOCKS / name).read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


@pytest.mark.parametrize("lock", [lock.name for lock in LOCK.LOCK_FILES])
def test_every_lock_was_compiled_from_todays_inputs(lock: str) -> None:
    (spec,) = [candidate for candidate in LOCK.LOCK_FILES if candidate.name == lock]
    assert LOCK.recorded_digest(spec) == LOCK.inputs_digest(spec), (
        f"locks/{lock}.txt does not match pyproject.toml / locks/*.in: run 'bash scripts/lock.sh'"
    )


@pytest.mark.parametrize("lock", [lock.name for lock in LOCK.LOCK_FILES])
def test_every_pin_is_exact_and_hashed(lock: str) -> None:
    assert _pins(lock), f"locks/{lock}.txt pins nothing"
    assert _hashless_pins(lock) == []


def test_the_locks_satisfy_their_requirements() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = list(project["dependencies"])
    extras = project["optional-dependencies"]
    build = _in_file("build.in")
    _check_satisfied(runtime + build + _in_file("uv.in"), "runtime")
    _check_satisfied(runtime + build + extras["dev"], "dev")
    _check_satisfied(runtime + build + extras["dev"] + extras["bench"], "bench")
    _check_satisfied(_in_file("reference.in"), "reference")
    _check_satisfied(_in_file("uv.in"), "uv")


def test_shared_packages_have_one_version_in_every_project_lock() -> None:
    locks = {name: _pins(name) for name in ("uv", "dev", "runtime", "bench")}
    for package in set().union(*locks.values()):
        versions = {name: pins[package] for name, pins in locks.items() if package in pins}
        assert len(set(versions.values())) == 1, f"{package}: {versions}"


@pytest.mark.skipif(newest_mode(), reason="scripts/test-newest.sh runs on unlocked versions on purpose")
def test_the_running_venv_is_the_locked_one() -> None:
    for package, version in _pins("dev").items():
        assert importlib.metadata.version(package) == version, (
            f"{package}: run 'bash scripts/bootstrap.sh dev'"
        )


def test_a_changed_input_is_noticed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The digest really covers the inputs: a copy of the locks with one requirement added to an
    # input file no longer matches.
    copy = tmp_path / "locks"
    copy.mkdir()
    for path in LOCKS.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    monkeypatch.setattr(LOCK, "LOCKS", copy)
    (reference,) = [lock for lock in LOCK.LOCK_FILES if lock.name == "reference"]
    assert LOCK.stale_locks() == []
    with (copy / "reference.in").open("a") as f:
        f.write("slixmpp\n")
    assert LOCK.stale_locks() == ["reference"]
    assert LOCK.recorded_digest(reference) != LOCK.inputs_digest(reference)
