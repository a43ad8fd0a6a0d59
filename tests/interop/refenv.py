"""Build (once) and cache a virtualenv with the reference OMEMO stack for the interop tests.

Location: ``$OMEMO_REFENV``, default ``~/.cache/omemo-stack/refenv-2.1.0``. The venv is made with
``python3 -m venv`` and ``pip install`` of :data:`REQUIREMENTS`. A marker file is written only after
the install and an import check succeeded, so a half-built venv (interrupted run, failed download)
is removed and rebuilt next time. An exclusive file lock next to the venv keeps parallel test runs
from building it twice.

A directory at that location that this module did not build (no "building" marker, e.g. a venv
made by hand) is never deleted: it is used if it passes the import and version check.

Run ``python tests/interop/refenv.py`` to build it ahead of the tests; it prints the interpreter.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

__all__ = ["REQUIREMENTS", "ReferenceEnvError", "ensure_reference_env", "reference_env_dir"]

REFERENCE_VERSION = "2.1.0"
REQUIREMENTS = (
    f"omemo=={REFERENCE_VERSION}",
    f"twomemo[xml]=={REFERENCE_VERSION}",
    f"oldmemo[xml]=={REFERENCE_VERSION}",
)
COMPLETE_MARKER = ".omemo-stack-refenv-complete"
BUILDING_MARKER = ".omemo-stack-refenv-building"

# Imports the xml extras too and prints the installed versions of the three distributions.
_CHECK_SCRIPT = """
import json, importlib.metadata as md
import omemo, twomemo, twomemo.etree, oldmemo, oldmemo.etree
print(json.dumps({name: md.version(name) for name in ("omemo", "twomemo", "oldmemo")}))
"""


class ReferenceEnvError(RuntimeError):
    """The reference virtualenv could not be built or does not hold the expected packages."""


def reference_env_dir() -> Path:
    """Returns: where the reference venv lives (``$OMEMO_REFENV`` or the default cache path)."""
    configured = os.environ.get("OMEMO_REFENV")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "omemo-stack" / f"refenv-{REFERENCE_VERSION}"


def _python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def _run(command: List[str], what: str, timeout: float) -> str:
    try:
        completed = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ReferenceEnvError(f"{what} failed: {e}") from e
    if completed.returncode != 0:
        output = (completed.stdout + completed.stderr).strip().splitlines()[-30:]
        raise ReferenceEnvError(f"{what} failed with status {completed.returncode}:\n" + "\n".join(output))
    return completed.stdout


def _check(venv: Path) -> Optional[str]:
    """Returns: ``None`` if the venv imports the reference stack at the right versions, else why not."""
    python = _python_of(venv)
    if not python.exists():
        return f"{python} does not exist"
    try:
        output = _run([str(python), "-I", "-c", _CHECK_SCRIPT], "the import check", timeout=120)
        versions = json.loads(output.strip().splitlines()[-1])
    except (ReferenceEnvError, ValueError, IndexError) as e:
        return str(e)
    if set(versions.values()) != {REFERENCE_VERSION}:
        return f"wrong versions installed: {versions}"
    return None


def _build(venv: Path, timeout: float) -> None:
    if venv.exists():
        shutil.rmtree(venv)
    venv.mkdir(parents=True)
    (venv / BUILDING_MARKER).write_text("building\n")
    base_python = shutil.which("python3") or sys.executable
    _run([base_python, "-m", "venv", str(venv)], "python3 -m venv", timeout=300)
    _run(
        [str(_python_of(venv)), "-m", "pip", "install", "--disable-pip-version-check", "-q", *REQUIREMENTS],
        "pip install " + " ".join(REQUIREMENTS),
        timeout=timeout,
    )
    problem = _check(venv)
    if problem is not None:
        raise ReferenceEnvError(f"the freshly built reference venv at {venv} is unusable: {problem}")
    (venv / COMPLETE_MARKER).write_text(json.dumps({"requirements": list(REQUIREMENTS)}) + "\n")
    (venv / BUILDING_MARKER).unlink()


def ensure_reference_env(timeout: float = 1800.0) -> Path:
    """Make sure the reference venv exists, building it if needed (under a file lock).

    Args:
        timeout: seconds allowed for ``pip install``.

    Returns:
        The path of the venv's python interpreter.

    Raises:
        ReferenceEnvError: the venv could not be built, or a foreign directory at its location
            does not hold the reference stack.
    """
    venv = reference_env_dir()
    venv.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv.parent / f"{venv.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = venv / COMPLETE_MARKER
        if marker.exists():
            try:
                recorded = json.loads(marker.read_text()).get("requirements")
            except ValueError:
                recorded = None
            if recorded == list(REQUIREMENTS) and _python_of(venv).exists():
                return _python_of(venv)
        elif venv.exists() and any(venv.iterdir()) and not (venv / BUILDING_MARKER).exists():
            problem = _check(venv)
            if problem is None:
                return _python_of(venv)
            raise ReferenceEnvError(
                f"{venv} exists but was not built by the test suite and is unusable ({problem}); "
                "remove it or point OMEMO_REFENV elsewhere"
            )
        _build(venv, timeout)
        return _python_of(venv)


if __name__ == "__main__":
    print(ensure_reference_env())


def on_ci() -> bool:
    """Whether this run is CI's (``CI`` set to true/1/yes), where missing peers are failures."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def reference_python_or_skip(*, optional: bool = False) -> Optional[Path]:
    """The reference venv's interpreter, for a test. When it cannot be had: fail under CI; else skip
    the test, or return None if ``optional`` (the caller then runs without the reference)."""
    import pytest

    try:
        return ensure_reference_env()
    except (ReferenceEnvError, OSError) as e:
        message = f"the reference OMEMO venv is not available: {e}"
        if on_ci():
            pytest.fail(message)
        if optional:
            return None
        pytest.skip(message)
