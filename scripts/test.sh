#!/usr/bin/env bash
# The whole test suite: set-up (from the locks), lint, format check, strict typing, and every test
# (including the interop tests against the reference python-omemo stack, whose virtual environment
# the tests build from locks/reference.txt and cache themselves). Extra arguments go to pytest.
# With OMEMO_STACK_NEWEST=1 everything runs on the newest versions instead (scripts/test-newest.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh dev
venv=.venv
[ -n "${OMEMO_STACK_NEWEST:-}" ] && venv=.venv-newest
status=0
echo "== ruff check";         "$venv/bin/ruff" check . || status=1
echo "== ruff format --check"; "$venv/bin/ruff" format --check . || status=1
echo "== mypy --strict";      "$venv/bin/mypy" || status=1
echo "== pytest"
"$venv/bin/python" -m pytest --cov --cov-branch --cov-report=term:skip-covered -p no:cacheprovider "$@" || status=1
exit $status
