"""A throw-away PostgreSQL on loopback for the tests (run as root; see ../shared/notes/POSTGRES.md).

    with PostgreSQL() as server:     # installs postgresql with apt if missing, initdb, starts it
        server.dsn                   # postgresql://postgres@127.0.0.1:PORT/postgres
        server.kill()                # SIGKILL (a crash), then server.start() recovers

The cluster lives in a temporary directory owned by the ``postgres`` OS user, on a free port of 127.0.0.1
with its socket in that directory (nothing uses port 5432 or /var/run/postgresql); this process is the
postmaster's parent and stops it by PID. ``durable=False`` (the default) turns fsync off for speed;
crash tests use ``durable=True``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Optional

__all__ = ["PostgreSQL", "PostgreSQLUnavailable", "start_postgres_or_skip"]

BIN = Path("/usr/lib/postgresql/15/bin")


class PostgreSQLUnavailable(RuntimeError):
    """PostgreSQL cannot be installed or started here."""


def _binaries() -> Optional[Path]:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    return candidates[0].parent if candidates else None


def ensure_installed(timeout: float = 900.0) -> Path:
    """Returns: the directory of initdb/postgres, installing Debian's postgresql if missing."""
    found = _binaries()
    if found is not None:
        return found
    if os.geteuid() != 0:
        raise PostgreSQLUnavailable("PostgreSQL is not installed, and installing it needs root")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
    ):
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise PostgreSQLUnavailable(f"{' '.join(command)} failed: {result.stderr[-500:]}")
    found = _binaries()
    if found is None:
        raise PostgreSQLUnavailable("postgresql was installed but initdb is not there")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PostgreSQL:
    """A private PostgreSQL cluster (see the module docstring)."""

    def __init__(self, durable: bool = False) -> None:
        self.durable = durable
        self.directory = Path(tempfile.mkdtemp(prefix="omemo-stack-pg-"))
        self.port = 0
        self.process: Optional[subprocess.Popen[bytes]] = None
        self._bin: Optional[Path] = None
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            account = None
        self._uid = account.pw_uid if account else None
        self._gid = account.pw_gid if account else None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process is not None and self.process.poll() is None else None

    def _as_postgres(self) -> dict[str, object]:
        if self._uid is None or os.geteuid() != 0:
            return {}
        return {"user": self._uid, "group": self._gid, "extra_groups": []}

    def start(self, timeout: float = 30.0) -> None:
        """Creates the cluster (first start) and starts the server; returns when it accepts connections."""
        if self.pid is not None:
            return
        if self._bin is None:
            self._bin = ensure_installed()
            if self._uid is None:
                raise PostgreSQLUnavailable("there is no 'postgres' OS user to run the server as")
            os.chown(self.directory, self._uid, self._gid or 0)
            initdb = [
                str(self._bin / "initdb"),
                "-D",
                str(self.directory / "data"),
                "-U",
                "postgres",
                "-A",
                "trust",
            ]
            initdb += ["-E", "UTF8", "--locale=C.UTF-8", "-N"]
            result = subprocess.run(
                initdb,
                cwd=self.directory,
                capture_output=True,
                timeout=120,
                check=False,
                **self._as_postgres(),
            )  # type: ignore[call-overload]
            if result.returncode != 0:
                raise PostgreSQLUnavailable(f"initdb failed: {result.stderr.decode(errors='replace')[-500:]}")
        self.port = self.port or _free_port()
        options: List[str] = ["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"]
        if not self.durable:
            options += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        command = [str(self._bin / "postgres"), "-D", str(self.directory / "data"), "-p", str(self.port)]
        command += ["-k", str(self.directory), *options]
        log = open(self.directory / "server.log", "ab")  # noqa: SIM115 - the server's output, kept open
        self.process = subprocess.Popen(  # type: ignore[call-overload]
            command,
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            **self._as_postgres(),
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PostgreSQLUnavailable(f"postgres exited: {self.log()[-800:]}")
            ready = subprocess.run(
                [
                    str(self._bin / "pg_isready"),
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                ],
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.05)
        self.stop()
        raise PostgreSQLUnavailable(f"postgres did not accept connections within {timeout} s")

    def log(self) -> str:
        path = self.directory / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT), then SIGKILL if it does not end."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL the postmaster (a crash); :meth:`start` then recovers from the WAL."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        time.sleep(0.1)  # the backends notice their postmaster is gone

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PostgreSQL:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def start_postgres_or_skip(durable: bool = False) -> PostgreSQL:
    """For a test fixture: a started server; without PostgreSQL, fail under CI, else skip."""
    import pytest

    from interop.refenv import on_ci

    server = PostgreSQL(durable=durable)
    try:
        server.start()
    except PostgreSQLUnavailable as exc:
        server.close()
        message = f"no PostgreSQL for the tests: {exc}"
        if on_ci():
            pytest.fail(message)
        pytest.skip(message)
    return server
