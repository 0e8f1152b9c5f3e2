"""A model sharded over 2 processes (mlx-lm's tensor parallelism, ring backend on
loopback) gives the unsharded model's numbers; what cannot be sharded says why."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mlxterp.checkpoints import build_checkpoint
from mlxterp.errors import ModelLoadError
from mlxterp.sharding import load_sharded

BIN = Path(sys.executable).parent
CHECK = Path(__file__).resolve().parent / "sharded_check.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_a_sharded_model_traces_as_the_whole_one(tmp_path, arch):
    path = build_checkpoint(arch, tmp_path / arch)
    command = [
        str(BIN / "mlx.launch"), "-n", "2", "--backend", "ring",
        "--starting-port", str(free_port()), "--",
        sys.executable, str(CHECK), str(path),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(done.stdout.split("\n"))[-2:] == ["rank 0 ok", "rank 1 ok"]


def test_an_architecture_mlx_lm_cannot_shard_is_refused(tmp_path):
    path = build_checkpoint("gemma2", tmp_path / "gemma2")
    with pytest.raises(ModelLoadError, match="cannot shard"):
        load_sharded(str(path))
