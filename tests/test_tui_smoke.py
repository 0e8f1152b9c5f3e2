"""The real `mlxterp` command in tmux, driven by scripts/tmux_smoke.sh (needs tmux)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def smoke(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "tmux_smoke.sh"), *args],
        env={
            "PYTHON": sys.executable,
            "PATH": "/usr/bin:/bin:/usr/local/bin",
            "HOME": str(Path.home()),
            "TERM": "xterm-256color",
        },
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )


def test_tmux_smoke_from_the_tree():
    result = smoke()
    assert result.returncode == 0, result.stdout + result.stderr


def test_tmux_smoke_through_run_sh():
    """The README's command; .venv is current (test.sh just bootstrapped), so no pip runs."""
    check = subprocess.run([str(ROOT / "scripts" / "bootstrap.sh"), "--check"], cwd=ROOT)
    if check.returncode != 0:
        pytest.skip(".venv's install stamp is not current: run.sh would install (test.sh does)")
    stamp = ROOT / ".venv" / ".mlxterp-installed"
    before = stamp.stat().st_mtime_ns
    result = smoke("--run-sh")
    assert result.returncode == 0, result.stdout + result.stderr
    assert stamp.stat().st_mtime_ns == before  # started without reinstalling
