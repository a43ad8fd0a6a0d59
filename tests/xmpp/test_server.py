"""Self-checks of the private Prosody used by the end-to-end tests (``server.py``).

The module-scoped server is skipped when Prosody cannot be installed or started, except under CI
(``CI`` true/1/yes), where that fails. These tests speak raw XML over a socket (no XMPP library).
"""

from __future__ import annotations

import base64
import socket
import ssl
import time
from pathlib import Path
from typing import Iterator

import pytest

from .server import Prosody, ServerUnavailable, listening_sockets, process_state, start_prosody_or_skip

STREAM_HEADER = (
    "<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
)
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"


@pytest.fixture(scope="module")
def server() -> Iterator[Prosody]:
    """Yields: a running Prosody with the accounts alice and bob (passwords ``alice-pw``, ``bob-pw``)."""
    prosody = start_prosody_or_skip()
    try:
        prosody.register("alice", "alice-pw")
        prosody.register("bob", "bob-pw")
        yield prosody
    finally:
        prosody.close()


def _read_until(sock: socket.socket | ssl.SSLSocket, *markers: bytes, timeout: float = 5.0) -> bytes:
    """Returns: what ``sock`` sends until one of ``markers`` occurs (or fails the test after ``timeout``)."""
    received = b""
    deadline = time.monotonic() + timeout
    while not any(m in received for m in markers):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"none of {markers!r} from the server within {timeout} s; got {received!r}")
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            pytest.fail(f"the server closed the connection before {markers!r}; got {received!r}")
        received += chunk
    return received


def _open_stream(sock: socket.socket | ssl.SSLSocket, domain: str) -> bytes:
    """Sends a client stream header. Returns: the server's header and features."""
    sock.sendall(STREAM_HEADER.format(domain=domain).encode())
    return _read_until(sock, b"</stream:features>")


def _tls_stream(server: Prosody) -> ssl.SSLSocket:
    """Returns: a connection upgraded by STARTTLS, its certificate checked against ``server.cafile``
    (hostname checking on), with a fresh stream opened and its features read."""
    raw = socket.create_connection((server.host, server.port), timeout=5)
    try:
        features = _open_stream(raw, server.domain)
        assert f"<starttls xmlns='{NS_TLS}'".encode() in features
        raw.sendall(f"<starttls xmlns='{NS_TLS}'/>".encode())
        assert b"<proceed" in _read_until(raw, b"/>")
        context = ssl.create_default_context(cafile=str(server.cafile))
        tls = context.wrap_socket(raw, server_hostname=server.domain)
    except BaseException:
        raw.close()
        raise
    features = _open_stream(tls, server.domain)
    assert b"<mechanism>PLAIN</mechanism>" in features
    return tls


def _plain_login(server: Prosody, user: str, password: str) -> bytes:
    """Returns: the server's answer (``<success/>`` or ``<failure>``) to a SASL PLAIN login over TLS."""
    with _tls_stream(server) as tls:
        credentials = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        tls.sendall(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{credentials}</auth>".encode())
        answer = _read_until(tls, b"<success", b"</failure>")
        # Close the stream cleanly: a server stopping with open streams waits about 1 s for them.
        tls.sendall(b"</stream:stream>")
        _read_until(tls, b"</stream:stream>")
        return answer


def test_registers_accounts(server: Prosody) -> None:
    assert server.register("carol", "carol-pw") == "carol@localhost"
    names = {p.name for p in server.data_files()}
    assert {"alice.dat", "bob.dat", "carol.dat"} <= names
    # internal_hashed: no password is stored in clear.
    for path in server.data_files():
        content = path.read_bytes()
        assert b"alice-pw" not in content
        assert b"bob-pw" not in content


def test_listens_on_loopback_port_only(server: Prosody) -> None:
    assert server.running
    assert server.listening() == [("127.0.0.1", server.port)]
    assert server.port not in (5222, 5269)


def test_sends_stream_header_and_features(server: Prosody) -> None:
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        received = _open_stream(sock, server.domain).decode()
    assert received.startswith("<?xml version='1.0'?>")
    assert "<stream:stream" in received
    assert f"from='{server.domain}'" in received
    assert "<stream:features" in received
    assert f"<starttls xmlns='{NS_TLS}'" in received  # the certificate was found


def test_tls_certificate_and_login(server: Prosody) -> None:
    assert b"<success" in _plain_login(server, "alice", "alice-pw")
    assert b"<not-authorized" in _plain_login(server, "bob", "alice-pw")


def test_restart_keeps_port_and_data_and_stop_ends_the_process(server: Prosody) -> None:
    del server  # only for its skip (or, under CI, failure) when Prosody is unavailable
    with Prosody() as other:
        directory = other.directory
        other.register("dave", "dave-pw")
        first_pid, port = other.pid, other.port
        assert first_pid is not None and other.running
        assert port != 0

        other.restart()
        assert process_state(first_pid) is None  # reaped: not even a zombie is left
        second_pid = other.pid
        assert second_pid is not None and second_pid != first_pid
        assert other.port == port
        assert other.listening() == [("127.0.0.1", port)]
        assert b"<success" in _plain_login(other, "dave", "dave-pw")

        other.stop()
        assert other.pid is None and not other.running
        assert process_state(second_pid) is None
        assert listening_sockets(second_pid) == []
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
        assert other.data_files()  # stop keeps the data...
    assert not Path(directory).exists()  # ...and leaving the with block removes it


def test_start_failure_is_reported(server: Prosody) -> None:
    del server
    broken = Prosody(extra_config="this is not lua")
    try:
        with pytest.raises(ServerUnavailable, match="prosody exited"):
            broken.start(timeout=5.0)
        assert broken.pid is None
    finally:
        broken.close()
