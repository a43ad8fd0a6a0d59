"""Fixtures of the interop tests: the two interpreters and a network of peers.

- ``reference_python``: the reference stack's interpreter, from a venv built once and cached (see
  ``refenv.py``; ``OMEMO_REFENV`` moves it). If it cannot be built the tests are skipped, or fail
  when ``CI`` is ``"true"``.
- ``our_python``: the interpreter running the tests (our packages). ``OMEMO_INTEROP_OURS_PYTHON``
  overrides it, e.g. with the reference interpreter to check the scenarios reference-vs-reference.
- ``network``: a :class:`~.harness.Network` whose peers are stopped after the test.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

from .harness import OURS_OVERRIDE_VARIABLE, Network
from .refenv import on_ci, reference_python_or_skip


@pytest.fixture(scope="session")
def reference_python() -> Path:
    """Returns: the interpreter of the cached reference venv (built on first use)."""
    python = reference_python_or_skip()
    assert python is not None
    return python


@pytest.fixture(scope="session")
def our_python() -> Path:
    """Returns: the interpreter for "our" peers (``sys.executable`` unless overridden)."""
    override = os.environ.get(OURS_OVERRIDE_VARIABLE)
    if override and on_ci():
        pytest.fail(f"{OURS_OVERRIDE_VARIABLE} is set under CI: the interop tests would not test our stack")
    return Path(override or sys.executable)


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    """Yields: a fresh network in ``tmp_path``; all its peers are stopped afterwards."""
    net = Network(tmp_path)
    try:
        yield net
    finally:
        net.close()
