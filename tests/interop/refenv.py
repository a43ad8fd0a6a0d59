"""Build (once) and cache the virtualenvs of the black-box peers, from the lock files in ``locks/``.

A peer is a stack we test against in its own interpreter: today the reference python-omemo stack
(:data:`REFERENCE`, ``locks/reference.txt``). Its venv lives in ``~/.cache/omemo-stack/<name>``
(``$OMEMO_REFENV`` moves the reference's) and is made with ``python3 -m venv`` and ``uv pip sync
--require-hashes`` of the peer's lock, so every run installs exactly the same files. The venv
records the SHA-256 of the lock it was built from; when the lock changes, the venv is rebuilt.

With ``OMEMO_STACK_NEWEST=1`` (``scripts/test-newest.sh``) the venv is ``<name>-newest``, built from
the unpinned ``locks/<name>.in`` with the newest versions it allows.

A marker file is written only after the install and an import check succeeded, so a half-built venv
(interrupted run, failed download) is removed and rebuilt next time. An exclusive file lock next to
the venv keeps parallel test runs from building it twice. A directory at that location that this
module did not build (no "building" marker, e.g. a venv made by hand) is never deleted: it is used if
it passes the import and version check.

Run ``python tests/interop/refenv.py`` to build the reference venv ahead of the tests; it prints the
interpreter.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

__all__ = [
    "REFERENCE",
    "SLIXMPP_OMEMO",
    "PeerEnv",
    "ReferenceEnvError",
    "ensure_peer_env",
    "ensure_reference_env",
    "newest_mode",
    "on_ci",
    "peer_env_dir",
    "reference_env_dir",
    "reference_python_or_skip",
]

LOCKS = Path(__file__).resolve().parent.parent.parent / "locks"
COMPLETE_MARKER = ".omemo-stack-refenv-complete"
BUILDING_MARKER = ".omemo-stack-refenv-building"


@dataclass(frozen=True)
class PeerEnv:
    """A peer's venv: built from ``locks/<name>.txt``; ``check_script`` prints a JSON object of
    distribution name -> installed version, which must equal ``versions``."""

    name: str
    check_script: str
    versions: Dict[str, str]
    #: The environment variable that moves this venv, if any.
    location_variable: Optional[str] = None


REFERENCE_VERSION = "2.1.0"
REFERENCE = PeerEnv(
    name="reference",
    # Imports the xml extras too and prints the installed versions of the three distributions.
    check_script=(
        "import json, importlib.metadata as md\n"
        "import omemo, twomemo, twomemo.etree, oldmemo, oldmemo.etree\n"
        'print(json.dumps({n: md.version(n) for n in ("omemo", "twomemo", "oldmemo")}))\n'
    ),
    versions={name: REFERENCE_VERSION for name in ("omemo", "twomemo", "oldmemo")},
    location_variable="OMEMO_REFENV",
)


SLIXMPP_OMEMO = PeerEnv(
    name="slixmpp-omemo",
    check_script=(
        "import json, importlib.metadata as md\n"
        "import slixmpp_omemo, slixmpp, omemo, twomemo.etree, oldmemo.etree\n"
        'print(json.dumps({n: md.version(n) for n in ("slixmpp-omemo", "slixmpp", "omemo")}))\n'
    ),
    versions={"slixmpp-omemo": "2.2.0", "slixmpp": "1.17.0", "omemo": REFERENCE_VERSION},
)


class ReferenceEnvError(RuntimeError):
    """A peer's virtualenv could not be built or does not hold the expected packages."""


def newest_mode() -> bool:
    """Whether peers are built from their unpinned ``.in`` files (``OMEMO_STACK_NEWEST``)."""
    return os.environ.get("OMEMO_STACK_NEWEST", "").strip().lower() not in ("", "0", "false", "no")


def peer_env_dir(peer: PeerEnv) -> Path:
    """Returns: where ``peer``'s venv lives."""
    configured = os.environ.get(peer.location_variable) if peer.location_variable else None
    if configured:
        return Path(configured).expanduser()
    suffix = "-newest" if newest_mode() else ""
    return Path.home() / ".cache" / "omemo-stack" / f"{peer.name}{suffix}"


def reference_env_dir() -> Path:
    """Returns: where the reference venv lives (``$OMEMO_REFENV`` or the default cache path)."""
    return peer_env_dir(REFERENCE)


def _python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def _source(peer: PeerEnv) -> Path:
    """Returns: the lock (or, in newest mode, the unpinned input) the venv is built from."""
    return LOCKS / (f"{peer.name}.in" if newest_mode() else f"{peer.name}.txt")


def _source_digest(peer: PeerEnv) -> str:
    source = _source(peer)
    return f"{source.name}:{hashlib.sha256(source.read_bytes()).hexdigest()}"


def _uv() -> Path:
    """Returns: the uv of the running venv (the dev lock installs it), else the one on PATH."""
    beside = Path(sys.executable).parent / "uv"
    found = beside if beside.exists() else shutil.which("uv")
    if not found:
        raise ReferenceEnvError("uv is not installed: set up with 'bash scripts/bootstrap.sh dev'")
    return Path(found)


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


def _check(peer: PeerEnv, venv: Path) -> Optional[str]:
    """Returns: ``None`` if the venv imports the peer's stack at the right versions, else why not."""
    python = _python_of(venv)
    if not python.exists():
        return f"{python} does not exist"
    try:
        output = _run([str(python), "-I", "-c", peer.check_script], "the import check", timeout=120)
        versions = json.loads(output.strip().splitlines()[-1])
    except (ReferenceEnvError, ValueError, IndexError) as e:
        return str(e)
    if versions != peer.versions:
        return f"wrong versions installed: {versions}, expected {peer.versions}"
    return None


def _build(peer: PeerEnv, venv: Path, timeout: float) -> None:
    if venv.exists():
        shutil.rmtree(venv)
    venv.mkdir(parents=True)
    (venv / BUILDING_MARKER).write_text("building\n")
    base_python = shutil.which("python3") or sys.executable
    _run([base_python, "-m", "venv", "--without-pip", str(venv)], "python3 -m venv", timeout=300)
    source = _source(peer)
    if newest_mode():
        install = [str(_uv()), "pip", "install", "--upgrade", "-r", str(source)]
    else:
        install = [str(_uv()), "pip", "sync", "--require-hashes", str(source)]
    install += ["--quiet", "--python", str(_python_of(venv))]
    _run(install, f"installing {source.name} with uv", timeout=timeout)
    problem = _check(peer, venv)
    if problem is not None:
        raise ReferenceEnvError(f"the freshly built {peer.name} venv at {venv} is unusable: {problem}")
    (venv / COMPLETE_MARKER).write_text(json.dumps({"source": _source_digest(peer)}) + "\n")
    (venv / BUILDING_MARKER).unlink()


def ensure_peer_env(peer: PeerEnv, timeout: float = 1800.0) -> Path:
    """Make sure ``peer``'s venv exists and matches its lock, building it if needed (under a file lock).

    Args:
        peer: which peer.
        timeout: seconds allowed for the install.

    Returns:
        The path of the venv's python interpreter.

    Raises:
        ReferenceEnvError: the venv could not be built, or a foreign directory at its location
            does not hold the peer's stack.
    """
    venv = peer_env_dir(peer)
    venv.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv.parent / f"{venv.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = venv / COMPLETE_MARKER
        if marker.exists():
            try:
                recorded = json.loads(marker.read_text()).get("source")
            except ValueError:
                recorded = None
            if recorded == _source_digest(peer) and _python_of(venv).exists():
                return _python_of(venv)
        elif venv.exists() and any(venv.iterdir()) and not (venv / BUILDING_MARKER).exists():
            problem = _check(peer, venv)
            if problem is None:
                return _python_of(venv)
            elsewhere = f" or point {peer.location_variable} elsewhere" if peer.location_variable else ""
            raise ReferenceEnvError(
                f"{venv} exists but was not built by the test suite and is unusable ({problem}); "
                f"remove it{elsewhere}"
            )
        _build(peer, venv, timeout)
        return _python_of(venv)


def ensure_reference_env(timeout: float = 1800.0) -> Path:
    """Returns: the reference venv's interpreter (see :func:`ensure_peer_env`)."""
    return ensure_peer_env(REFERENCE, timeout)


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
