"""Fixtures shared by the core tests."""

from __future__ import annotations

from typing import Any, Iterator

import pytest


@pytest.fixture(scope="module")
def postgres() -> Iterator[Any]:
    """A throw-away PostgreSQL on loopback for the tests of one module (a failure under CI if missing)."""
    from postgres.server import start_postgres_or_skip

    server = start_postgres_or_skip()
    try:
        yield server
    finally:
        server.close()
