#!/usr/bin/env bash
# The whole test suite: set-up, lint, format check, strict typing, and every test (including the
# interop tests against the reference python-omemo stack, whose virtual environment the tests build
# and cache themselves). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh dev
status=0
echo "== ruff check";         .venv/bin/ruff check . || status=1
echo "== ruff format --check"; .venv/bin/ruff format --check . || status=1
echo "== mypy --strict";      .venv/bin/mypy || status=1
echo "== pytest"
.venv/bin/python -m pytest --cov --cov-branch --cov-report=term:skip-covered -p no:cacheprovider "$@" || status=1
exit $status
