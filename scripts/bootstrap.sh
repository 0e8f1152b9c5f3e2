#!/usr/bin/env bash
# Create .venv (if missing) and install mlxterp into it with its test extras.
# Sourced by run.sh and test.sh; safe to run again (pip skips what is installed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Linux only, best effort: Debian's OpenBLAS makes MLX's CPU build ~10x faster, and tmux
# drives the smoke test. Skipped silently without root/apt; the project works without them.
if [ "$(uname -s)" = "Linux" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    need=""
    ls /usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0 >/dev/null 2>&1 || need="$need libopenblas0-pthread"
    command -v tmux >/dev/null 2>&1 || need="$need tmux"
    if [ -n "$need" ]; then
        (apt-get install -y -q $need >/dev/null 2>&1 \
          || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $need >/dev/null 2>&1; }) \
          || echo "note: could not install$need (optional)" >&2
    fi
fi

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
