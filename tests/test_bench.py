"""The benchmark script: it must measure the engine as users run it (OpenBLAS loaded)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlxterp import blas

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not any(map(os.path.exists, blas.CANDIDATES)),
    reason="the OpenBLAS preload only exists on Linux with the library installed",
)
def test_bench_imports_mlxterp_before_mlx_so_openblas_is_loaded():
    """Regression: sorting imports once put `import mlx.core` above `import mlxterp` in
    bench/run.py, so the preload silently did nothing and every figure used MLX's slow
    reference BLAS."""
    code = (
        "import runpy; ns = runpy.run_path('bench/run.py', run_name='bench'); "
        "print(ns['blas'].loaded_path)"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLXTERP_NO_OPENBLAS"}
    env["MLXTERP_OPENBLAS_AT_STARTUP"] = "0"  # the import order alone, without the hook
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] in blas.CANDIDATES


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not any(map(os.path.exists, blas.CANDIDATES)),
    reason="the OpenBLAS preload only exists on Linux with the library installed",
)
def test_the_suite_itself_runs_with_openblas():
    """Regression: the same sort put `import mlx.core` above `import mlxterp` in
    tests/conftest.py, so the whole suite ran on MLX's reference BLAS (and numbers users see
    went untested)."""
    assert blas.loaded_path in blas.CANDIDATES


def test_workbench_startup_is_measured_once_the_model_is_loaded():
    """The benchmark's startup figure waits for the model itself: the load starts after the
    first refresh, so waiting only for the workers already running could find none and
    fail on a busy machine (it did once, in a full benchmark run)."""
    from mlxterp_tui import startup_seconds

    assert 0 < startup_seconds() < 120
