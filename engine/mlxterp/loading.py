"""Finding and loading models: the embedded demo, local folders, the hub (by request only)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import ModelLoadError

DEMO_NAME = "demo"
DEMO_DIR = Path(__file__).resolve().parent / "demo_model"


def resolve_reference(name: str) -> Path | str:
    """A local folder for ``name`` (``"demo"``, a path), or the hub id as given."""
    if name == DEMO_NAME:
        return DEMO_DIR
    path = Path(os.path.expanduser(name))
    if path.exists():
        return path
    return name


def load(name: str) -> tuple[Any, Any]:
    """``(module, tokenizer)`` through ``mlx_lm.load``; ``ModelLoadError`` with the reason."""
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError('a model name or folder is needed ("demo" is the embedded model)')
    import mlx_lm

    ref = resolve_reference(name)
    if isinstance(ref, Path):
        if not ref.is_dir() or not (ref / "config.json").exists():
            raise ModelLoadError(
                f"{str(ref)!r} is not a model folder: it needs a config.json and weights "
                "(*.safetensors), as mlx_lm.convert writes them"
            )
        if not any(ref.glob("*.safetensors")):
            raise ModelLoadError(f"{str(ref)!r} has a config.json but no *.safetensors weights")
    elif "/" not in name or name.count("/") > 1:
        raise ModelLoadError(
            f"model {name!r} not found: it is neither a local folder nor a hub id like "
            "'org/name' (use \"demo\" for the embedded model)"
        )
    try:
        loaded = mlx_lm.load(str(ref))
    except Exception as err:  # mlx_lm raises many kinds; say which model and why
        where = "folder" if isinstance(ref, Path) else "hub model (needs it cached or a network)"
        raise ModelLoadError(f"could not load {where} {name!r}: {err}") from err
    return loaded[0], loaded[1]
