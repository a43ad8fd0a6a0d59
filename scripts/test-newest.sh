#!/usr/bin/env bash
# Drift check, not part of CI: the whole suite (scripts/test.sh) on the newest versions of everything
# that pyproject.toml and locks/*.in allow, instead of the locked ones. The project's venv is
# .venv-newest, re-resolved on every run; the peers' venvs (~/.cache/omemo-stack/*-newest) are
# rebuilt on every run from their unpinned locks/*.in. See docs/dependencies.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMEMO_STACK_NEWEST=1
rm -rf "$HOME"/.cache/omemo-stack/*-newest
exec bash scripts/test.sh "$@"
