"""A model sharded over 2 processes (mlx-lm's tensor parallelism, ring backend on
loopback) gives the unsharded model's numbers; what cannot be sharded says why."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from launch_helpers import launch

from mlxterp.checkpoints import build_checkpoint
from mlxterp.errors import ModelLoadError
from mlxterp.sharding import load_sharded

CHECK = Path(__file__).resolve().parent / "sharded_check.py"


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_a_sharded_model_traces_as_the_whole_one(tmp_path, arch):
    path = build_checkpoint(arch, tmp_path / arch)
    done = launch(2, [sys.executable, str(CHECK), str(path)], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(done.stdout.split("\n"))[-2:] == ["rank 0 ok", "rank 1 ok"]


def test_an_architecture_mlx_lm_cannot_shard_is_refused(tmp_path):
    path = build_checkpoint("gemma2", tmp_path / "gemma2")
    with pytest.raises(ModelLoadError, match="cannot shard"):
        load_sharded(str(path))
