"""The user's key map: ``keymap.toml`` in the config folder remaps bindings by their id."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

CONFIG_ENV = "MLXTERP_CONFIG_DIR"


class KeymapError(ValueError):
    """A keymap file that cannot be read or has entries of the wrong type."""


def config_dir() -> Path:
    """``$MLXTERP_CONFIG_DIR`` or ``~/.config/mlxterp``."""
    return Path(os.environ.get(CONFIG_ENV) or Path.home() / ".config" / "mlxterp")


def keymap_path() -> Path:
    return config_dir() / "keymap.toml"


def load_keymap(path: Path | None = None) -> dict[str, str]:
    """``{binding_id: "key[,key...]"}`` from the ``[keymap]`` table (empty if no file)."""
    path = path or keymap_path()
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise KeymapError(f"cannot read keymap {path}: {err}") from err
    table = data.get("keymap", {})
    if not isinstance(table, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in table.items()
    ):
        raise KeymapError(
            f'{path}: [keymap] must map binding ids to key strings, e.g. run_lens = "ctrl+r"'
        )
    return dict(table)
