#!/usr/bin/env bash
# The quality gates, in the order a reviewer would read them: lint, format, types, layering.
# test.sh runs this before the tests, so CI and a newcomer run exactly the same checks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=.venv/bin
echo "gates: ruff check" && "$BIN/ruff" check --quiet .
echo "gates: ruff format --check" && "$BIN/ruff" format --check --quiet .
echo "gates: mypy (strict on engine/mlxterp)" && "$BIN/mypy"
echo "gates: import-linter contracts" && "$BIN/lint-imports" --no-cache
