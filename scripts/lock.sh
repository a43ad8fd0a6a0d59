#!/usr/bin/env bash
# Refresh every lock file in locks/ (newest versions that pyproject.toml and locks/*.in allow),
# then run 'bash scripts/test.sh' before committing them. See scripts/lock.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh dev
exec .venv/bin/python scripts/lock.py "$@"
