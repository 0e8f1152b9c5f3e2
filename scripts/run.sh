#!/usr/bin/env bash
# Install (first time) and open the workbench; arguments go to `mlxterp` (e.g. --model PATH).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/bootstrap.sh"
exec "$ROOT/.venv/bin/mlxterp" "$@"
