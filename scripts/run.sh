#!/usr/bin/env bash
# Open the workbench; arguments go to `mlxterp` (e.g. --model PATH, open FILE, replay FILE).
# The first run installs into .venv (and says so); later runs start at once unless
# pyproject.toml changed (scripts/bootstrap.sh keeps a stamp). No test extras are installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/bootstrap.sh"
exec "$ROOT/.venv/bin/mlxterp" "$@"
