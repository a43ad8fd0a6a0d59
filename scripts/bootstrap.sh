#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install the project into it, from the
# lock files in locks/ (exact versions, every file hash-checked).
#
# Usage: scripts/bootstrap.sh [runtime|dev|bench]   (default runtime: what the demo needs;
#        dev: the test and lint tools too; bench: dev plus matplotlib for the benchmark plot)
#
# The venv is .venv. With OMEMO_STACK_NEWEST=1 it is .venv-newest instead, and the newest versions
# that pyproject.toml allows are installed, without the locks (scripts/test-newest.sh).
#
# Works on a fresh Debian 12 with only python3: installs python3-venv through apt when needed.
# pip installs only uv (pinned and hash-checked, locks/uv.txt, once per machine); uv installs the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:-runtime}"
python="${PYTHON:-python3}"
case "$kind" in
    runtime) extras="" ;;
    dev) extras="[dev]" ;;
    bench) extras="[dev,bench]" ;;
    *) echo "usage: $0 [runtime|dev|bench]" >&2; exit 2 ;;
esac
lock="locks/$kind.txt"
venv=.venv
newest="${OMEMO_STACK_NEWEST:-}"
[ -n "$newest" ] && venv=.venv-newest

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "error: $python is missing or older than 3.10" >&2
    exit 1
fi
# python3 -m venv, installing Debian's python3-venv once if this python lacks it.
make_venv() {
    if ! "$python" -m venv "$@" 2>/dev/null; then
        rm -rf "${@: -1}"
        if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
            echo "bootstrap: installing python3-venv with apt-get" >&2
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            "$python" -m venv "$@"
        else
            echo "error: '$python -m venv' failed; install python3-venv (Debian: apt-get install python3-venv)" >&2
            exit 1
        fi
    fi
}

# The installer: the uv of locks/uv.txt, installed once per machine by pip --require-hashes into its
# own venv in the user's cache (the locks put the same uv into .venv too, for the tests).
uv_version=$(sed -n 's/^uv==\([^ ;]*\).*/\1/p' locks/uv.txt)
tool="${XDG_CACHE_HOME:-$HOME/.cache}/omemo-stack/uv-$uv_version"
uv="$tool/bin/uv"
installed=$("$uv" --version 2>/dev/null | cut -d' ' -f1-2) || installed=""
if [ "$installed" != "uv $uv_version" ]; then
    rm -rf "$tool"
    make_venv "$tool"
    log=$(mktemp)
    if ! "$tool/bin/python" -m pip install -q --disable-pip-version-check --require-hashes --no-deps \
            -r locks/uv.txt >"$log" 2>&1; then
        cat "$log" >&2; rm -rf "$log" "$tool"
        echo "error: could not install uv $uv_version" >&2
        exit 1
    fi
    rm -f "$log"
fi

# The venv itself has no seed packages; pip comes from the lock like everything else.
[ -x "$venv/bin/python" ] || make_venv --without-pip "$venv"

if [ -n "$newest" ]; then
    # Every time: re-resolve to the newest versions (uv's cache makes a repeat quick).
    "$uv" pip install --quiet --python "$venv/bin/python" --upgrade -e ".$extras" -r locks/build.in -r locks/uv.in
    exit 0
fi

# Locked: sync the venv to the lock (removes what the lock does not list), then the project itself,
# editable and without build isolation (its build backend is in the lock). Skipped when the venv is
# up to date with this lock, or with a larger one (bench includes dev, dev includes runtime).
stamp="$venv/.installed"
digest() { cat "locks/$1.txt" pyproject.toml | sha256sum | cut -c1-64; }
level() { case "$1" in runtime) echo 1 ;; dev) echo 2 ;; bench) echo 3 ;; *) echo 0 ;; esac; }
read -r have_kind have_digest 2>/dev/null <"$stamp" || have_kind=""
if [ -n "$have_kind" ] && [ "$(level "$have_kind")" -ge "$(level "$kind")" ] \
        && [ "$have_digest" = "$(digest "$have_kind")" ]; then
    exit 0
fi
"$uv" pip sync --quiet --python "$venv/bin/python" --require-hashes "$lock"
"$uv" pip install --quiet --python "$venv/bin/python" --no-deps --no-build-isolation -e .
echo "$kind $(digest "$kind")" >"$stamp"
