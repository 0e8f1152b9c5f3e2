#!/usr/bin/env bash
# Install with the test extras (only when something changed), run the quality gates, then the
# whole test suite; arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/bootstrap.sh" --test
"$ROOT/scripts/check.sh"
cd "$ROOT"
exec .venv/bin/python -m pytest "$@"
