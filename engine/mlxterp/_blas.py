"""Load a system OpenBLAS before MLX on Linux.

The Linux CPU wheel of MLX ships a slow reference BLAS.  Loading Debian's
``libopenblas0-pthread`` globally before ``mlx.core`` is first imported lets MLX bind to it
(matmuls ~25x, a small model's forward ~10x faster, measured in ``bench/``).  Silently does
nothing where the library is absent, when MLX is already imported, on macOS, or when
``MLXTERP_NO_OPENBLAS=1`` is set.
"""

from __future__ import annotations

import ctypes
import os
import sys

CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)

loaded_path: str | None = None


def preload() -> str | None:
    """Load OpenBLAS globally if possible; return its path or None."""
    global loaded_path
    if loaded_path or not sys.platform.startswith("linux"):
        return loaded_path
    if os.environ.get("MLXTERP_NO_OPENBLAS") == "1" or "mlx.core" in sys.modules:
        return None
    for path in CANDIDATES:
        if os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            loaded_path = path
            return path
    return None
