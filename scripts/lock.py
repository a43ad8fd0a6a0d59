"""Compile, or check, the lock files in ``locks/``: exact versions with hashes for every environment.

Usage::

    .venv/bin/python scripts/lock.py            # re-resolve every lock (newest allowed versions)
    .venv/bin/python scripts/lock.py --check    # exit 1 if a lock no longer matches its inputs
    .venv/bin/python scripts/lock.py --keep     # keep today's pins, resolve only what is new

``bash scripts/lock.sh`` sets up ``.venv`` and runs the first form. Every lock is compiled by
``uv pip compile --universal --generate-hashes`` (valid on every platform and every Python the
project supports) and starts with a line recording the SHA-256 of its inputs (the requirement
lists it was compiled from, the lock files that constrain it, and the compile options), which
``--check`` and ``tests/test_locks.py`` compare against the inputs of today.

The locks, in compile order (later ones are constrained by earlier ones, so shared packages have the
same version everywhere):

- ``uv.txt``: the installer.
- ``dev.txt``: the project's runtime dependencies, the ``dev`` extra (tests, linters, uv) and the
  build backend: ``scripts/bootstrap.sh dev``, used by ``scripts/test.sh``.
- ``runtime.txt``: runtime dependencies with the ``slixmpp`` extra, build backend and uv:
  ``scripts/bootstrap.sh`` (the demo, which runs ``omemo-chat`` against a throw-away Prosody).
- ``bench.txt``: ``dev`` plus the ``bench`` extra: ``scripts/bootstrap.sh bench``.
- ``reference.txt``: the reference stack's venv of the interop tests (``tests/interop/refenv.py``).
- ``slixmpp-omemo.txt``: slixmpp-omemo on the reference stack, the legacy peer of ``tests/xmpp``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
LOCKS = REPO / "locks"
PYPROJECT = REPO / "pyproject.toml"
#: The oldest Python the project supports; the universal resolution covers it and every newer one.
PYTHON_FLOOR = "3.10"
DIGEST_PREFIX = "# inputs-sha256: "


@dataclass(frozen=True)
class Lock:
    """One lock file: what it is compiled from."""

    name: str
    #: ``.in`` files under locks/.
    inputs: Tuple[str, ...] = ()
    #: Whether pyproject.toml's runtime dependencies are inputs, and which of its extras.
    project: bool = False
    extras: Tuple[str, ...] = ()
    #: Earlier locks whose versions this one must keep.
    constraints: Tuple[str, ...] = ()
    #: The oldest Python the environment runs on (a peer venv may need a newer one than the project).
    python_floor: str = PYTHON_FLOOR

    @property
    def path(self) -> Path:
        return LOCKS / f"{self.name}.txt"


LOCK_FILES = (
    Lock("uv", inputs=("uv.in",)),
    Lock("dev", inputs=("build.in",), project=True, extras=("dev",), constraints=("uv",)),
    Lock("runtime", inputs=("build.in", "uv.in"), project=True, extras=("slixmpp",), constraints=("dev",)),
    Lock("bench", inputs=("build.in",), project=True, extras=("dev", "bench"), constraints=("dev",)),
    Lock("reference", inputs=("reference.in",)),
    Lock("slixmpp-omemo", inputs=("slixmpp-omemo.in",), python_floor="3.11"),
)


def _pyproject_requirements(extras: Tuple[str, ...]) -> Dict[str, object]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    return {
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "extras": {extra: optional[extra] for extra in extras},
    }


def inputs_digest(lock: Lock) -> str:
    """Returns: the SHA-256 (hex) of everything ``lock`` is compiled from."""
    document = {
        "python-floor": lock.python_floor,
        "inputs": {name: (LOCKS / name).read_text() for name in lock.inputs},
        "project": _pyproject_requirements(lock.extras) if lock.project else None,
        "constraints": {name: (LOCKS / f"{name}.txt").read_text() for name in lock.constraints},
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def recorded_digest(lock: Lock) -> str:
    """Returns: the inputs digest written into ``lock``'s file, or "" if it has none (or no file)."""
    if not lock.path.exists():
        return ""
    for line in lock.path.read_text().splitlines():
        if line.startswith(DIGEST_PREFIX):
            return line[len(DIGEST_PREFIX) :].strip()
    return ""


def stale_locks() -> List[str]:
    """Returns: the names of the locks whose recorded inputs differ from today's inputs."""
    return [lock.name for lock in LOCK_FILES if recorded_digest(lock) != inputs_digest(lock)]


def _uv() -> str:
    for candidate in (Path(sys.executable).parent / "uv", shutil.which("uv")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise SystemExit("uv not found: run 'bash scripts/bootstrap.sh dev' first (or use scripts/lock.sh)")


def compile_lock(lock: Lock, uv: str, keep: bool = False) -> None:
    """Re-resolve ``lock`` with uv and write it with its inputs digest (with ``keep``: the versions it
    pins now are kept where the inputs still allow them; only what changed is resolved anew)."""
    command = [uv, "pip", "compile", "--universal", "--generate-hashes"]
    command += ["--python-version", lock.python_floor, "--no-header"]
    if not keep:
        command.append("--upgrade")
    if lock.project:
        command.append("pyproject.toml")
        for extra in lock.extras:
            command += ["--extra", extra]
    command += [f"locks/{name}" for name in lock.inputs]
    for name in lock.constraints:
        command += ["--constraint", f"locks/{name}.txt"]
    with tempfile.TemporaryDirectory() as scratch:
        if keep and lock.path.exists():
            # uv prefers the versions of an existing output file; a copy, so the lock is only replaced
            # (with its header) once the compile succeeded.
            previous = Path(scratch) / "previous.txt"
            shutil.copyfile(lock.path, previous)
            command += ["--output-file", str(previous)]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"compiling locks/{lock.name}.txt failed:\n{result.stderr}")
    header = (
        f"# Lock file of the project: exact versions and hashes. Do not edit: regenerate with\n"
        f"# 'bash scripts/lock.sh' (see scripts/lock.py).\n"
        f"{DIGEST_PREFIX}{inputs_digest(lock)}\n"
    )
    lock.path.write_text(header + result.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only check that every lock matches its inputs")
    parser.add_argument(
        "--keep", action="store_true", help="keep today's pins where the inputs allow (add what is new only)"
    )
    args = parser.parse_args()
    if args.check:
        stale = stale_locks()
        for name in stale:
            print(f"locks/{name}.txt does not match its inputs: run 'bash scripts/lock.sh'", file=sys.stderr)
        return 1 if stale else 0
    uv = _uv()
    for lock in LOCK_FILES:
        compile_lock(lock, uv, keep=args.keep)
        pins = sum(1 for line in lock.path.read_text().splitlines() if "==" in line)
        print(f"locks/{lock.name}.txt: {pins} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
