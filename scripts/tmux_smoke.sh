#!/usr/bin/env bash
# Smoke test of the real `mlxterp` command in a detached 80x24 tmux session:
# start it, type a prompt, run the lens, open the help screen, check the captured
# screen at each stage, quit (answering the unsaved-work question).  Exit 0 when every
# check passes.
#
#   scripts/tmux_smoke.sh [--run-sh] [--model NAME_OR_PATH]   (default: the demo model)
#
# With --run-sh it starts the app the README's way, `./scripts/run.sh` (which installs
# first if .venv is not current); otherwise from the checkout: PYTHON (default
# .venv/bin/python, else python3) with PYTHONPATH=engine:. so the in-tree packages are used.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
NAME="mlxterp-smoke-$$"
CONFIG="$(mktemp -d)"  # keymap and recovery files: none of the user's
trap 'tmux kill-session -t "$NAME" 2>/dev/null || true; rm -rf "$CONFIG"' EXIT

screen() { tmux capture-pane -p -t "$NAME"; }

wait_for() {  # wait_for TEXT [SECONDS]: poll the screen until TEXT shows up
    local text="$1" limit="${2:-60}" i
    for ((i = 0; i < limit * 4; i++)); do
        if screen | grep -qF -- "$text"; then return 0; fi
        sleep 0.25
    done
    echo "FAIL: '$text' did not appear; screen was:" >&2
    screen >&2
    return 1
}

if [ "${1:-}" = "--run-sh" ]; then
    shift
    CMD="./scripts/run.sh"
elif command -v mlxterp >/dev/null; then  # the installed console script
    CMD="mlxterp"
else  # the same entry point from the tree
    CMD="$PYTHON -m mlxterp_tui.cli"
fi
tmux new-session -d -s "$NAME" -x 80 -y 24 \
    "env MLXTERP_CONFIG_DIR=$CONFIG MLXTERP_STATE_DIR=$CONFIG PYTHONPATH=engine:. $CMD $* ; sleep 30"
wait_for "1 Model" 90
wait_for "steps" 90
echo "ok: app started"

tmux send-keys -t "$NAME" "The capital of France is" Enter
wait_for "positions; Enter on a cell" 90
wait_for "1 steps"
echo "ok: logit lens ran"

tmux send-keys -t "$NAME" F1
wait_for "Esc closes"
echo "ok: help screen"
tmux send-keys -t "$NAME" Escape

tmux send-keys -t "$NAME" C-q  # the lens step is unsaved work: the app asks first
wait_for "unsaved changes"
tmux send-keys -t "$NAME" Right Enter  # "Quit without saving"
for ((i = 0; i < 40; i++)); do
    if ! screen | grep -qF "1 Model"; then echo "ok: quit"; exit 0; fi
    sleep 0.25
done
echo "FAIL: the app did not quit" >&2
exit 1
