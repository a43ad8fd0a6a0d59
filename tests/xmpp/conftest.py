"""Fixtures of the end-to-end tests: a real Prosody per test module, the slixmpp-omemo peer venv."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from interop.refenv import SLIXMPP_OMEMO, ReferenceEnvError, ensure_peer_env, on_ci

from .server import Prosody, start_prosody_or_skip


@pytest.fixture(scope="module")
def server() -> Iterator[Prosody]:
    prosody = start_prosody_or_skip()
    try:
        yield prosody
    finally:
        prosody.close()


@pytest.fixture(scope="module")
def slixmpp_omemo_python() -> Path:
    try:
        return ensure_peer_env(SLIXMPP_OMEMO)
    except (ReferenceEnvError, OSError) as exc:
        message = f"the slixmpp-omemo peer venv is not available: {exc}"
        if on_ci():
            pytest.fail(message)
        pytest.skip(message)
