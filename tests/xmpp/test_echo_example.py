"""slixmpp-omemo's own example echo client runs on our plugin with only its import line changed.

The example is downloaded from PyPI at test time (AGPL: not stored here) and put on slixmpp-omemo 2.2's
API (``published_example`` says why and how). It runs on slixmpp-omemo 2.2.0 itself, which proves the
edited example right for 2.2, and on ``omemo_slixmpp``; our test clients write to it through the real
Prosody and read its encrypted echo.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Set, Tuple

import pytest
from slixmpp.jid import JID

from interop.refenv import on_ci

from .clients import Client, connect, disconnect, recipients
from .published_example import for_2_2, published_example, with_import
from .server import Prosody

NS2, NSL = "urn:xmpp:omemo:2", "eu.siacs.conversations.axolotl"
RUNNER = Path(__file__).resolve().parent / "run_example.py"
_names = itertools.count()


@pytest.fixture(scope="module")
def example_2_2() -> str:
    try:
        return for_2_2(published_example())
    except OSError as exc:
        message = f"slixmpp-omemo's published example could not be had: {exc}"
        if on_ci():
            pytest.fail(message)
        pytest.skip(message)


@asynccontextmanager
async def _running(python: Path, text: str, server: Prosody, directory: Path) -> AsyncIterator[str]:
    """The example ``text`` run by ``python`` against ``server``; yields its account's JID."""
    script = directory / "echo_client.py"
    script.write_text(text)
    jid = server.register(f"echo{next(_names)}", "echopass")
    process = await asyncio.create_subprocess_exec(
        str(python),
        str(RUNNER),
        server.host,
        str(server.port),
        str(server.cafile),
        str(script),
        *("-u", jid, "-p", "echopass", "-d", str(directory / "echo.json")),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    failed = True
    try:
        yield jid
        failed = False
    finally:
        if process.returncode is None:
            process.terminate()
        output = (await asyncio.wait_for(process.communicate(), 15))[0].decode(errors="replace")
        if failed:
            print(f"the example's output:\n{output}")
    assert "Traceback" not in output and "Error" not in output, output


async def _until_published(client: Client, jid: str) -> None:
    manager = await client.omemo.get_session_manager()
    for _ in range(80):  # the example publishes its OMEMO data once it is connected
        await client.omemo.refresh_device_lists(recipients(jid), force_download=True)
        if await manager.get_device_information(jid):
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"{jid} never published a device")


async def _echo(client: Client, jid: str, body: str) -> Tuple[str, Set[str]]:
    """Sends ``body`` encrypted to ``jid``; returns the decrypted echo and the namespaces it came in."""
    await _until_published(client, jid)
    stanza = client.make_message(mto=jid, mtype="chat")
    stanza["body"] = body
    encrypted, errors = await client.omemo.encrypt_message(stanza, recipients(jid))
    assert encrypted is not None and not errors, errors
    encrypted.send()
    reply = await client.next_message(timeout=20)
    namespaces = client.omemo.is_encrypted(reply)
    assert namespaces, f"the echo is not encrypted: {reply}"
    decrypted, device = await client.omemo.decrypt_message(reply)
    assert device.bare_jid == jid
    return decrypted["body"], namespaces


async def test_the_edited_example_runs_on_slixmpp_omemo_2_2(
    server: Prosody, slixmpp_omemo_python: Path, example_2_2: str, tmp_path: Path
) -> None:
    # The control: slixmpp-omemo 2.2.0 runs the example as edited (it answers in legacy OMEMO only).
    async with _running(slixmpp_omemo_python, example_2_2, server, tmp_path) as jid:
        client = await connect(server, f"legacyuser{next(_names)}", namespaces=(NSL,))
        try:
            assert await _echo(client, jid, "hello slixmpp-omemo") == ("hello slixmpp-omemo", {NSL})
        finally:
            await disconnect(client)


async def test_the_example_runs_on_ours_with_only_its_import_changed(
    server: Prosody, example_2_2: str, tmp_path: Path
) -> None:
    ours = with_import(example_2_2, "omemo_slixmpp")
    lines = list(zip(example_2_2.splitlines(), ours.splitlines(), strict=True))
    assert [(a, b) for a, b in lines if a != b] == [
        ("from slixmpp_omemo import TrustLevel, XEP_0384", "from omemo_slixmpp import TrustLevel, XEP_0384")
    ]
    async with _running(Path(sys.executable), ours, server, tmp_path) as jid:
        n = next(_names)
        both = await connect(server, f"user{n}")
        legacy = await connect(server, f"legacyuser{n}", namespaces=(NSL,))
        try:
            # OMEMO 2 to a client that speaks it, legacy to one that does not; an unencrypted message is
            # answered in plain text, as the example does.
            assert await _echo(both, jid, "hello ours") == ("hello ours", {NS2})
            assert await _echo(legacy, jid, "hello in legacy") == ("hello in legacy", {NSL})
            both.send_message(mto=JID(jid), mbody="not encrypted", mtype="chat")
            plain = await both.next_message(timeout=20)
            assert not both.omemo.is_encrypted(plain)
            assert plain["body"] == "Unencrypted message or unsupported message encryption: not encrypted"
        finally:
            await disconnect(both, legacy)
