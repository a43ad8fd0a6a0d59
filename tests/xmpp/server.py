"""A private Prosody XMPP server on loopback, for end-to-end tests (pure standard library).

Each :class:`Prosody` owns a temporary directory holding its config (absolute paths only), a
self-signed EC P-256 certificate for its domain (``certs/DOMAIN.crt|key``, which clients use as
their only CA), its data and its logs. It listens for c2s on ``127.0.0.1`` and a free port only:
s2s is disabled and no HTTP or admin socket is loaded, so several instances can run side by side.
The server runs in the foreground (``prosody -F``) in its own session, with ``run_as_root = true``,
and is stopped by PID.

``ensure_prosody_installed()`` installs Debian's ``prosody`` package when it is missing (as root,
with apt-get) and stops the system-wide instance the package may have started.

Usage::

    with Prosody() as server:          # start(); on exit: stop() and remove the directory
        alice = server.register("alice", "secret")
        ...                            # connect to server.host:server.port, CA file server.cafile

See ``/work/shared/notes/XMPP-SERVER.md`` for the pitfalls this module works around. Run
``python tests/xmpp/server.py`` to start a server by hand; it prints where it listens.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

__all__ = [
    "Prosody",
    "ServerError",
    "ServerUnavailable",
    "ensure_prosody_installed",
    "listening_sockets",
    "process_state",
    "start_prosody_or_skip",
]

#: Where the Debian package's init script keeps the system-wide instance's PID.
SYSTEM_PIDFILE = Path("/run/prosody/prosody.pid")
SYSTEM_INIT_SCRIPT = Path("/etc/init.d/prosody")

#: What Prosody logs when it cannot bind a port (it then keeps running without it).
PORT_TAKEN = "Failed to open server port"

#: Modules loaded on top of Prosody's automatic ones (c2s, presence, message, iq, offline...).
MODULES = ("roster", "saslauth", "tls", "disco", "pep", "carbons", "offline", "mam", "ping")


class ServerError(RuntimeError):
    """A request to the test server (e.g. a registration) failed."""


class ServerUnavailable(ServerError):
    """Prosody cannot be installed or does not start: tests that need it should skip (or fail on CI)."""


def _run(command: Sequence[str], what: str, timeout: float, env: Optional[dict[str, str]] = None) -> str:
    """Runs ``command`` (stdin from /dev/null, output captured) and returns its stdout.

    Raises:
        ServerUnavailable: it could not be run, timed out, or exited with a non-zero status.
    """
    try:
        completed = subprocess.run(
            list(command),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ServerUnavailable(f"{what} failed: {e}") from e
    if completed.returncode != 0:
        output = (completed.stdout + completed.stderr).strip().splitlines()[-30:]
        raise ServerUnavailable(f"{what} failed with status {completed.returncode}:\n" + "\n".join(output))
    return completed.stdout


def process_state(pid: int) -> Optional[str]:
    """Returns: the state letter of process ``pid`` from ``/proc/PID/status`` (``"R"``, ``"S"``,
    ``"Z"`` for a zombie...), or ``None`` if there is no such process. Unlike ``kill -0``, this
    tells a zombie from a live process."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in status.splitlines():
        if line.startswith("State:"):
            fields = line.split()
            return fields[1] if len(fields) > 1 else None
    return None


def _alive(pid: int) -> bool:
    state = process_state(pid)
    return state is not None and state not in ("Z", "X")


def _wait_gone(pid: int, timeout: float) -> bool:
    """Waits until ``pid`` (not necessarily our child) is gone or a zombie. Returns: whether it is."""
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _stop_system_instance() -> None:
    """Stops the system-wide Prosody the package may have started (it listens on 5222 and 5269 on
    all interfaces): through its init script or systemd, then by the PID in its pidfile."""
    if Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
        subprocess.run(
            ["systemctl", "stop", "prosody"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
    if SYSTEM_INIT_SCRIPT.exists():
        subprocess.run(
            [str(SYSTEM_INIT_SCRIPT), "stop"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
    try:
        pid = int(SYSTEM_PIDFILE.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"prosody" not in command:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if _wait_gone(pid, 5.0):
            return


def ensure_prosody_installed(timeout: float = 900.0) -> Path:
    """Makes sure the ``prosody`` and ``prosodyctl`` commands (and ``openssl``) exist.

    If ``prosody`` is not on ``PATH``, installs Debian's package with ``apt-get`` (as root, under a
    file lock so that parallel test runs don't collide), then stops the system-wide instance the
    package may have started. An already installed Prosody (and its system instance) is left alone.

    Args:
        timeout: seconds allowed for each apt-get command.

    Returns:
        The path of the ``prosody`` command.

    Raises:
        ServerUnavailable: it is missing and cannot be installed.
    """

    def found() -> Optional[Path]:
        prosody, prosodyctl, openssl = (shutil.which(c) for c in ("prosody", "prosodyctl", "openssl"))
        return Path(prosody) if prosody and prosodyctl and openssl else None

    existing = found()
    if existing is not None:
        return existing
    if os.geteuid() != 0:
        raise ServerUnavailable("prosody is not installed, and installing it needs root")
    if not shutil.which("apt-get"):
        raise ServerUnavailable("prosody is not installed, and there is no apt-get to install it")
    lock_path = Path(tempfile.gettempdir()) / "omemo-stack-prosody-install.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        existing = found()  # another run may have installed it while we waited
        if existing is not None:
            return existing
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        packages = ["prosody"] if shutil.which("openssl") else ["prosody", "openssl"]
        wait_for_dpkg = ["-o", "DPkg::Lock::Timeout=300"]
        _run(["apt-get", *wait_for_dpkg, "update"], "apt-get update", timeout, env)
        _run(
            ["apt-get", *wait_for_dpkg, "install", "-y", *packages],
            f"apt-get install {' '.join(packages)}",
            timeout,
            env,
        )
        _stop_system_instance()
    installed = found()
    if installed is None:
        raise ServerUnavailable("apt-get ran, but prosody, prosodyctl or openssl is not on PATH")
    return installed


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _lua_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _lua_list(values: Sequence[str]) -> str:
    return "{ " + ", ".join(_lua_string(v) for v in values) + " }"


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    except OSError:
        pass
    return inodes


def _decode_address(hex_address: str) -> Tuple[str, int]:
    """Decodes a ``/proc/net/tcp[6]`` local address (``0100007F:1F90``: words in host byte order)."""
    address, port = hex_address.split(":")
    raw = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw), int(port, 16)


def listening_sockets(pid: int) -> List[Tuple[str, int]]:
    """Returns: the (address, port) of every TCP socket of process ``pid`` in the LISTEN state,
    read from ``/proc`` (e.g. ``[("127.0.0.1", 40123)]``; ``"0.0.0.0"`` or ``"::"`` for all interfaces)."""
    inodes = _socket_inodes(pid)
    result = []
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:
                result.append(_decode_address(fields[1]))
    return sorted(result)


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Stops ``process`` (SIGTERM, then SIGKILL after ``timeout`` seconds) and reaps it."""
    if process.poll() is None:
        try:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()  # reaps it in every case: no zombie is left behind


class Prosody:
    """A private Prosody on loopback, with its own temporary directory (see the module docstring).

    The directory and the port are chosen when the object is made and first started; they stay the
    same across :meth:`stop` / :meth:`start` (and :meth:`restart`), so accounts and stored data
    survive a restart. :meth:`close` (or leaving the ``with`` block) stops the server and removes the
    directory; an instance that is garbage-collected or still running at interpreter exit is
    stopped and removed too.

    Attributes:
        domain: the XMPP domain of the single VirtualHost (e.g. ``"localhost"``).
        host: the address it listens on (``"127.0.0.1"``).
        port: the c2s port (STARTTLS offered, plaintext allowed unless ``require_encryption``);
            0 until the first start.
        directory: the instance's temporary directory.
        config: the absolute path of the generated config file.
        cafile: the self-signed certificate, for clients to use as their only CA.
        data_directory: Prosody's ``data_path``.
        log_file: Prosody's own log (level ``log_level``).
        output_file: what the process wrote to stdout and stderr.
        pid: the server's PID while it runs, else ``None``.
        muc_domain: the group-chat component's domain (``conference.DOMAIN``), or ``None``.
    """

    def __init__(
        self,
        domain: str = "localhost",
        host: str = "127.0.0.1",
        *,
        port: int = 0,
        require_encryption: bool = False,
        extra_names: Sequence[str] = (),
        extra_config: str = "",
        log_level: str = "info",
        install: bool = True,
        muc: bool = True,
        muc_archive: bool = True,
    ) -> None:
        """
        Args:
            domain: the VirtualHost.
            host: the only interface to listen on.
            port: the c2s port; 0 picks a free one at the first start.
            require_encryption: whether c2s requires STARTTLS before authentication.
            extra_names: more DNS names for the certificate (e.g. components such as ``upload.localhost``).
            extra_config: Lua appended after the VirtualHost line: options for that host, or
                ``Component`` sections. Use absolute paths.
            log_level: the lowest level written to :attr:`log_file` (``debug``, ``info``...).
            install: whether :meth:`start` installs Prosody if it is missing
                (:func:`ensure_prosody_installed`).
            muc: whether to add a group-chat component, ``conference.DOMAIN`` (:attr:`muc_domain`),
                whose new rooms are members-only, non-anonymous and persistent and archive their
                messages (MAM), as OMEMO needs.
            muc_archive: whether the group-chat component archives messages (``muc_mam``).
        """
        if not domain or any(c in domain for c in "/\\\"' \n"):
            raise ValueError(f"unusable domain: {domain!r}")
        self.domain = domain
        self.host = host
        self.port = port
        self.require_encryption = require_encryption
        self.extra_names = tuple(extra_names)
        self.extra_config = extra_config
        self.log_level = log_level
        self.install = install
        self.muc_domain = f"conference.{domain}" if muc else None
        self.muc_archive = muc_archive
        self.directory = Path(tempfile.mkdtemp(prefix="omemo-stack-prosody-")).resolve()
        self.config = self.directory / "prosody.cfg.lua"
        self.certificates = self.directory / "certs"
        self.cafile = self.certificates / f"{domain}.crt"
        self.keyfile = self.certificates / f"{domain}.key"
        self.data_directory = self.directory / "data"
        self.log_file = self.directory / "prosody.log"
        self.output_file = self.directory / "output.log"
        self.pid_file = self.directory / "server.pid"
        self.pid: Optional[int] = None
        self._process: Optional[subprocess.Popen[bytes]] = None
        self._stopper: Optional[weakref.finalize[[subprocess.Popen[bytes], float], Prosody]] = None
        self._remover = weakref.finalize(self, shutil.rmtree, str(self.directory), True)

    # -- set-up -----------------------------------------------------------------------------------

    def _make_certificate(self) -> None:
        if self.cafile.exists() and self.keyfile.exists():
            return
        self.certificates.mkdir(parents=True, exist_ok=True)
        names = ",".join(f"DNS:{n}" for n in (self.domain, *self.extra_names))
        # An explicit OpenSSL config, so the result does not depend on the system's openssl.cnf: a
        # self-signed CA certificate that is also the server's (and verifies under X509_STRICT).
        openssl_config = self.certificates / "openssl.cnf"
        openssl_config.write_text(
            "[req]\n"
            "distinguished_name = dn\n"
            "x509_extensions = ext\n"
            "prompt = no\n"
            "[dn]\n"
            f"CN = {self.domain}\n"
            "[ext]\n"
            f"subjectAltName = {names}\n"
            "basicConstraints = critical, CA:TRUE\n"
            "keyUsage = critical, digitalSignature, keyCertSign\n"
            "extendedKeyUsage = serverAuth\n"
            "subjectKeyIdentifier = hash\n"
            "authorityKeyIdentifier = keyid:always\n"
        )
        _run(
            [
                *("openssl", "req", "-x509", "-new", "-config", str(openssl_config), "-nodes"),
                *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-days", "3650"),
                *("-keyout", str(self.keyfile), "-out", str(self.cafile)),
            ],
            "openssl req (the self-signed certificate)",
            timeout=60,
        )

    def _write_config(self) -> None:
        lines = [
            "-- Generated by tests/xmpp/server.py: a private test server on loopback.",
            "run_as_root = true",
            f"data_path = {_lua_string(str(self.data_directory))}",
            f"certificates = {_lua_string(str(self.certificates))}",
            f'log = {{ {{ levels = {{ min = {_lua_string(self.log_level)} }}, to = "file", '
            f"filename = {_lua_string(str(self.log_file))} }} }}",
            f"modules_enabled = {_lua_list(MODULES)}",
            'modules_disabled = { "s2s" }',
            f"interfaces = {_lua_list([self.host])}",
            f"local_interfaces = {_lua_list([self.host])}",
            f"c2s_interfaces = {_lua_list([self.host])}",
            f"c2s_ports = {{ {self.port} }}",
            "c2s_direct_tls_ports = { }",
            f"c2s_require_encryption = {'true' if self.require_encryption else 'false'}",
            "allow_registration = false",
            'authentication = "internal_hashed"',
            'storage = "internal"',
            "pep_max_items = 10000",
            "default_archive_policy = true",
            'archive_expires_after = "never"',
            "",
            f"VirtualHost {_lua_string(self.domain)}",
        ]
        if self.extra_config:
            lines.append(self.extra_config)
        if self.muc_domain:
            lines += [
                f'Component {_lua_string(self.muc_domain)} "muc"',
                f"  modules_enabled = {_lua_list(['muc_mam'] if self.muc_archive else [])}",
                "  restrict_room_creation = false",
                "  muc_room_locking = false",
                "  muc_room_default_public = false",
                "  muc_room_default_persistent = true",
                "  muc_room_default_members_only = true",
                "  muc_room_default_public_jids = true",
                "  muc_room_default_history_length = 0",
                f"  muc_log_by_default = {'true' if self.muc_archive else 'false'}",
                f"  muc_log_all_rooms = {'true' if self.muc_archive else 'false'}",
            ]
        self.config.write_text("\n".join(lines) + "\n")

    # -- life cycle -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the server process exists and is not a zombie."""
        return self.pid is not None and _alive(self.pid)

    def start(self, timeout: float = 10.0) -> None:
        """Starts the server (config and certificate are made on the first start) and waits until
        its port accepts connections.

        Raises:
            ServerUnavailable: Prosody is missing, exited, or did not open its port within
                ``timeout`` seconds (the message holds the end of its logs).
        """
        if self._process is not None:
            return
        if self.install:
            ensure_prosody_installed()
        elif not shutil.which("prosody"):
            raise ServerUnavailable("prosody is not installed")
        self.data_directory.mkdir(parents=True, exist_ok=True)
        self._make_certificate()
        # A port picked here could be taken by someone else before Prosody binds it: try again.
        attempts = 3 if self.port == 0 else 1
        for attempt in range(attempts):
            if attempt > 0 or self.port == 0:
                self.port = _free_port(self.host)
            self._write_config()
            try:
                self._launch(timeout)
                return
            except ServerUnavailable:
                if attempt + 1 == attempts or PORT_TAKEN not in self._log_tails():
                    raise
                self.port = 0

    def _launch(self, timeout: float) -> None:
        with open(self.output_file, "ab") as output:
            try:
                process = subprocess.Popen(
                    ["prosody", "--config", str(self.config), "-F"],
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    cwd=str(self.directory),
                    start_new_session=True,  # setsid(): out of the test runner's process group
                    close_fds=True,
                )
            except OSError as e:
                raise ServerUnavailable(f"cannot run prosody: {e}") from e
        self._process = process
        self.pid = process.pid
        self._stopper = weakref.finalize(self, _terminate, process, 2.0)
        self.pid_file.write_text(f"{process.pid}\n")
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                problem = f"prosody exited with status {process.returncode} at start-up"
                break
            # Prosody keeps running when it cannot bind its port, and then a connection could reach
            # whoever holds the port: wait until this process listens on it, then connect.
            if (self.host, self.port) in listening_sockets(process.pid):
                try:
                    with socket.create_connection((self.host, self.port), timeout=0.5):
                        return
                except OSError:
                    pass
            elif PORT_TAKEN in _tail(self.log_file):
                problem = f"prosody could not listen on {self.host}:{self.port}"
                break
            if time.monotonic() >= deadline:
                problem = f"prosody did not accept connections on {self.host}:{self.port} within {timeout} s"
                break
            time.sleep(0.02)
        self.stop()
        raise ServerUnavailable(f"{problem}; end of its logs:\n{self._log_tails()}")

    def _log_tails(self) -> str:
        return "\n".join(f"--- {p}:\n{_tail(p)}" for p in (self.output_file, self.log_file))

    def stop(self, timeout: float = 5.0) -> None:
        """Stops the server by PID (SIGTERM, then SIGKILL after ``timeout`` seconds) and reaps it.
        The directory, port and data are kept: :meth:`start` starts it again on them."""
        process, self._process = self._process, None
        if self._stopper is not None:
            self._stopper.detach()
            self._stopper = None
        if process is not None:
            _terminate(process, timeout)
        self.pid = None
        self.pid_file.unlink(missing_ok=True)

    def restart(self, timeout: float = 10.0) -> None:
        """Stops and starts the server again, on the same port and data."""
        self.stop()
        self.start(timeout)

    def close(self) -> None:
        """Stops the server and removes its directory (data, logs, certificate)."""
        self.stop()
        self._remover()

    def __enter__(self) -> Prosody:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- accounts, data, logs ---------------------------------------------------------------------

    def register(self, user: str, password: str) -> str:
        """Creates (or overwrites) the account ``user`` with ``password`` by ``prosodyctl``; this
        works whether or not the server runs.

        Returns:
            The account's bare JID, ``user@domain``.

        Raises:
            ServerError: prosodyctl failed.
        """
        if not self.config.exists():
            self.data_directory.mkdir(parents=True, exist_ok=True)
            self._write_config()
        try:
            _run(
                ["prosodyctl", "--config", str(self.config), "register", user, self.domain, password],
                f"prosodyctl register {user} {self.domain}",
                timeout=60,
            )
        except ServerUnavailable as e:
            raise ServerError(str(e)) from e
        return f"{user}@{self.domain}"

    def jid(self, user: str) -> str:
        """Returns: the bare JID of ``user`` on this server."""
        return f"{user}@{self.domain}"

    def data_files(self) -> List[Path]:
        """Returns: every file under the server's data directory (accounts, rosters, PEP nodes,
        offline messages, archives...), sorted."""
        if not self.data_directory.exists():
            return []
        return sorted(p for p in self.data_directory.rglob("*") if p.is_file())

    def log_text(self) -> str:
        """Returns: the server's log and its process output, concatenated."""
        return "".join(p.read_text(errors="replace") for p in (self.log_file, self.output_file) if p.exists())

    def listening(self) -> List[Tuple[str, int]]:
        """Returns: the TCP addresses the running server listens on (see :func:`listening_sockets`)."""
        return listening_sockets(self.pid) if self.pid is not None else []

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<Prosody {self.domain} on {self.host}:{self.port}, {state}, in {self.directory}>"


def start_prosody_or_skip(server: Optional[Prosody] = None) -> Prosody:
    """For a test fixture: starts ``server`` (default: a new ``Prosody()``) and returns it. When it
    cannot be had: fail under CI (``CI`` true/1/yes), else skip the test. The caller closes it."""
    import pytest

    from interop.refenv import on_ci

    if server is None:
        server = Prosody()
    try:
        server.start()
    except ServerUnavailable as e:
        server.close()
        message = f"no Prosody XMPP server for the test: {e}"
        if on_ci():
            pytest.fail(message)
        pytest.skip(message)
    return server


if __name__ == "__main__":
    with Prosody() as server:
        print(f"{server!r}\nconfig: {server.config}\ncafile: {server.cafile}\nCtrl-C stops it.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
