#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the project into it.
# Usage: scripts/bootstrap.sh [extra]   (extra: "dev" installs the test/lint tools too)
# Works on a fresh Debian 12 with only python3: installs python3-venv through apt when needed.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "error: $python is missing or older than 3.10" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    if ! "$python" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
            echo "bootstrap: installing python3-venv with apt-get" >&2
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            "$python" -m venv .venv
        else
            echo "error: '$python -m venv' failed; install python3-venv (Debian: apt-get install python3-venv)" >&2
            exit 1
        fi
    fi
fi
stamp=".venv/.installed-${extra:-base}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -U pip >/dev/null
    if [ -n "$extra" ]; then
        .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extra]"
    else
        .venv/bin/python -m pip install -q --disable-pip-version-check -e .
    fi
    touch "$stamp"
fi
