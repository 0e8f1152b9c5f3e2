"""The real `mlxterp` command in tmux, driven by scripts/tmux_smoke.sh (needs tmux)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_tmux_smoke_script_passes():
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "tmux_smoke.sh")],
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
    assert result.returncode == 0, result.stdout + result.stderr
