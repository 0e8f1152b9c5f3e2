"""OpenBLAS for MLX on Linux whatever the import order: the startup hook, the warning, the
``mlxterp blas`` command (see mlxterp.blas)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlxterp import blas

ROOT = Path(__file__).resolve().parent.parent
MLXTERP = Path(sys.executable).with_name("mlxterp")

needs_openblas = pytest.mark.skipif(
    not sys.platform.startswith("linux") or blas.library() is None,
    reason="OpenBLAS is only loaded on Linux with libopenblas0-pthread installed",
)
MLX_FIRST = (
    "import warnings; warnings.simplefilter('always');"
    "import mlx.core; import mlxterp; print(mlxterp.blas.loaded_path)"
)


def _python(code: str, *flags: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLXTERP_")}
    return subprocess.run(
        [sys.executable, *flags, "-c", code],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )


@needs_openblas
def test_importing_mlx_first_warns_once_with_the_fix():
    """Regression: with mlx imported first, every forward ran ~20x slower with no word."""
    out = _python(MLX_FIRST, MLXTERP_OPENBLAS_AT_STARTUP="0")
    assert out.stdout.strip() == "None"
    assert out.stderr.count("SlowBLASWarning") == 1
    assert "import mlxterp before mlx" in out.stderr
    assert "mlxterp blas --install" in out.stderr


@needs_openblas
def test_mlx_imported_first_still_gets_openblas_in_the_project_environment():
    """The bootstrap installs the startup hook into .venv, so the order does not matter."""
    assert blas.status().hook is not None, "scripts/bootstrap.sh installs the startup hook"
    out = _python(MLX_FIRST)
    assert out.stdout.strip() in blas.CANDIDATES
    assert "SlowBLASWarning" not in out.stderr


@needs_openblas
def test_the_hook_line_loads_openblas_on_its_own_and_obeys_the_switches(tmp_path):
    hook = blas.install_hook(tmp_path)
    assert hook == tmp_path / blas.HOOK_NAME
    line = hook.read_text()
    assert line.startswith("import ") and line.count("\n") == 1  # what site runs from a .pth
    maps = "open('/proc/self/maps').read()"
    probe = f"exec(open({str(hook)!r}).read()); print('libopenblas' in {maps})"
    # -S: no site-packages, so nothing else (the environment's own hook) loads it
    assert _python(probe, "-S").stdout.strip() == "True"
    assert _python(probe, "-S", MLXTERP_NO_OPENBLAS="1").stdout.strip() == "False"
    assert _python(probe, "-S", MLXTERP_OPENBLAS_AT_STARTUP="0").stdout.strip() == "False"
    assert blas.remove_hook(tmp_path) and not hook.exists()
    assert not blas.remove_hook(tmp_path)


def test_switching_openblas_off_gives_no_warning():
    out = _python(MLX_FIRST, MLXTERP_NO_OPENBLAS="1")
    assert out.stdout.strip() == "None"
    assert "SlowBLASWarning" not in out.stderr


@needs_openblas
def test_mlxterp_blas_reports_the_state():
    out = subprocess.run([str(MLXTERP), "blas"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("OpenBLAS: active (")
    assert "startup hook:" in out.stdout


def test_the_status_says_what_to_do_when_openblas_is_missing_or_inactive():
    missing = blas.BlasStatus(applies=True, library=None, active=None, hook=None)
    assert "apt-get install libopenblas0-pthread" in missing.describe()
    inactive = blas.BlasStatus(applies=True, library="/x/libopenblas.so.0", active=None, hook=None)
    assert blas.FIX in inactive.describe()
