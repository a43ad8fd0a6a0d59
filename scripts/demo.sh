#!/usr/bin/env bash
# The main job: set up .venv (first time only) and run the demo. Arguments go to the demo
# (e.g. --data-dir DIR, --fresh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python examples/demo.py "$@"
