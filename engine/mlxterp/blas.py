"""OpenBLAS for MLX's Linux CPU build, whatever the import order.

The Linux CPU wheel of MLX links a slow reference BLAS.  When Debian's
``libopenblas0-pthread`` is loaded globally *before* ``mlx.core`` is first imported, MLX
binds its matrix products to it instead (matmuls ~25x, a small model's forward ~10-40x
faster, measured in ``bench/``).  Once ``mlx.core`` is loaded its BLAS is fixed for the life
of the process, so the load has to come first.  Two ways make sure it does:

* ``import mlxterp`` loads it (``preload``) when mlx is not imported yet; the ``mlxterp``
  commands always import mlxterp first.
* a startup hook (``install_hook``: a one-line ``mlxterp-openblas.pth`` in the environment's
  site-packages, which ``scripts/bootstrap.sh`` installs) loads it when Python starts, so
  every interpreter of that environment (scripts, Jupyter kernels) has it before any import.

When neither happened and mlx came first, ``import mlxterp`` says so once, with the fix
(``SlowBLASWarning``).  Nothing happens on macOS (Accelerate), where the library is absent,
or with ``MLXTERP_NO_OPENBLAS=1``; ``MLXTERP_OPENBLAS_AT_STARTUP=0`` turns the startup hook
off alone.  ``mlxterp blas`` reports the state; ``--install`` / ``--remove`` manage the hook.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import sysconfig
import warnings
from dataclasses import dataclass
from pathlib import Path

CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)
HOOK_NAME = "mlxterp-openblas.pth"
FIX = (
    "import mlxterp before mlx, or run `mlxterp blas --install` once to load "
    "OpenBLAS at every Python start in this environment"
)

loaded_path: str | None = None  # the OpenBLAS MLX uses, once known


class SlowBLASWarning(RuntimeWarning):
    """MLX was imported before OpenBLAS could be loaded: forwards use the slow reference BLAS."""


@dataclass(frozen=True)
class BlasStatus:
    """Which BLAS MLX's CPU build uses in this process, and why."""

    applies: bool  # Linux, not switched off: the question arises at all
    library: str | None  # the OpenBLAS found on this machine
    active: str | None  # the OpenBLAS MLX uses, or None for the reference BLAS
    hook: Path | None  # the startup hook of this environment, when installed

    def describe(self) -> str:
        """A few lines for people: the state, and the fix when there is one."""
        if not self.applies:
            return "OpenBLAS: not used here (macOS uses Accelerate; or MLXTERP_NO_OPENBLAS=1)"
        hook = f"startup hook: {self.hook}" if self.hook else "startup hook: not installed"
        if self.active:
            return f"OpenBLAS: active ({self.active})\n{hook}"
        if self.library is None:
            return (
                "OpenBLAS: not found; MLX uses its slow reference BLAS. Install Debian's "
                f"libopenblas0-pthread (apt-get install libopenblas0-pthread)\n{hook}"
            )
        return f"OpenBLAS: found ({self.library}) but not active: {FIX}\n{hook}"


def _applies() -> bool:
    return sys.platform.startswith("linux") and os.environ.get("MLXTERP_NO_OPENBLAS") != "1"


def library() -> str | None:
    """The first OpenBLAS of ``CANDIDATES`` present on this machine."""
    return next((p for p in CANDIDATES if os.path.exists(p)), None)


def _mapped() -> str | None:
    """An OpenBLAS already loaded into this process (by the hook, or by the user), named as
    in ``CANDIDATES`` when it is one of them."""
    known = {os.path.realpath(p): p for p in CANDIDATES}
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.split(maxsplit=5)[-1].strip()
                if "libopenblas" in os.path.basename(path):
                    return known.get(os.path.realpath(path), path)
    except OSError:
        pass
    return None


def preload() -> str | None:
    """Make MLX use OpenBLAS if this process still can; return its path or None.

    Loads the library globally when ``mlx.core`` is not imported yet.  When it is, an
    OpenBLAS already in the process is taken to have been loaded first (the startup hook
    does that; so does following the docs by hand).
    """
    global loaded_path
    if loaded_path or not _applies():
        return loaded_path
    found = _mapped()
    if found is None and "mlx.core" not in sys.modules:
        for path in CANDIDATES:
            if os.path.exists(path):
                try:
                    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                except OSError:
                    continue
                found = path
                break
    loaded_path = found
    return found


def warn_if_slow() -> None:
    """Warn once (``SlowBLASWarning``) when OpenBLAS exists here but MLX could not get it."""
    if _applies() and loaded_path is None and library() is not None:
        warnings.warn(
            "mlx was imported before mlxterp, so MLX uses its slow reference BLAS (forwards "
            f"about 20x slower on Linux); {FIX}",
            SlowBLASWarning,
            stacklevel=3,
        )


def status() -> BlasStatus:
    """The BLAS state of this process and environment."""
    hook = _hook_path()
    return BlasStatus(_applies(), library(), loaded_path, hook if hook.exists() else None)


def hook_line(path: str) -> str:
    """The startup hook's one line: a ``.pth`` line starting with ``import`` runs at startup."""
    return (
        "import os, ctypes; os.environ.get('MLXTERP_NO_OPENBLAS') == '1' or "
        "os.environ.get('MLXTERP_OPENBLAS_AT_STARTUP') == '0' or "
        f"not os.path.exists({path!r}) or ctypes.CDLL({path!r}, mode=ctypes.RTLD_GLOBAL)\n"
    )


def _hook_path(site_dir: str | Path | None = None) -> Path:
    return Path(site_dir or sysconfig.get_paths()["purelib"]) / HOOK_NAME


def install_hook(site_dir: str | Path | None = None) -> Path | None:
    """Write the startup hook into ``site_dir`` (default: this environment's site-packages);
    returns its path, or None where there is nothing to load (not Linux, no OpenBLAS)."""
    path = library()
    if not sys.platform.startswith("linux") or path is None:
        return None
    hook = _hook_path(site_dir)
    tmp = hook.with_name(hook.name + ".tmp")
    tmp.write_text(hook_line(path), encoding="utf-8")
    os.replace(tmp, hook)
    return hook


def remove_hook(site_dir: str | Path | None = None) -> bool:
    """Delete the startup hook; whether there was one."""
    hook = _hook_path(site_dir)
    if hook.exists():
        hook.unlink()
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    """``mlxterp blas [--install | --remove]``: report, or manage the hook; the exit code."""
    parser = argparse.ArgumentParser(
        prog="mlxterp blas",
        description="Which BLAS MLX uses here; install or remove the OpenBLAS startup hook.",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--install", action="store_true", help="install the startup hook")
    group.add_argument("--remove", action="store_true", help="remove the startup hook")
    args = parser.parse_args(argv)
    if args.install:
        hook = install_hook()
        print(f"installed {hook}" if hook else "nothing to install: no OpenBLAS on this system")
        return 0
    if args.remove:
        print("removed" if remove_hook() else "no startup hook was installed")
        return 0
    print(status().describe())
    return 0
