"""Session files: TOML for the history, a safetensors sidecar for arrays; atomic writes.

A session file is data only: it is read with ``tomllib`` and ``mx.load`` of safetensors,
nothing in it is evaluated, imported or unpickled.  Arrays appear in the TOML as inline
tables ``{ array = "steps.3.vector" }`` naming a tensor of the sidecar.  The sidecar's file
name carries a hash of its content, so a save writes a new sidecar beside the old one,
then swaps the TOML in with one ``os.replace``: a save that fails at any point leaves the
previous TOML and the sidecar it names untouched.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Callable

import mlx.core as mx
import numpy as np
import tomli_w

FORMAT = 1


class SessionError(ValueError):
    """A session that cannot be read, saved, run or replayed, with the reason."""


def encode_arrays(value: Any, prefix: str, arrays: dict[str, mx.array]) -> Any:
    """``value`` with every ``mx.array`` replaced by ``{"array": key}`` (collected in
    ``arrays``) and every ``None`` left out (TOML has no null)."""
    if isinstance(value, mx.array):
        arrays[prefix] = value
        return {"array": prefix}
    if isinstance(value, dict):
        return {k: encode_arrays(v, f"{prefix}.{k}", arrays) for k, v in value.items()
                if v is not None}
    if isinstance(value, (list, tuple)):
        return [encode_arrays(v, f"{prefix}.{i}", arrays) for i, v in enumerate(value)]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def decode_arrays(value: Any, arrays: dict[str, mx.array], where: str) -> Any:
    """Inverse of :func:`encode_arrays`; a missing tensor is a ``SessionError``."""
    if isinstance(value, dict):
        if set(value) == {"array"} and isinstance(value["array"], str):
            key = value["array"]
            if key not in arrays:
                raise SessionError(f"{where}: the array {key!r} is missing from the sidecar file")
            return arrays[key]
        return {k: decode_arrays(v, arrays, where) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_arrays(v, arrays, where) for v in value]
    return value


def _has_array_refs(value: Any) -> bool:
    if isinstance(value, dict):
        return (set(value) == {"array"}) or any(_has_array_refs(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_array_refs(v) for v in value)
    return False


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    # the temporary name keeps the real suffix: mx.save_safetensors appends one otherwise
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.tmp-", suffix=path.suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask())
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sidecar_name(path: Path, arrays: dict[str, mx.array]) -> str:
    digest = hashlib.sha256()
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(np.asarray(arrays[key].astype(mx.float32)).tobytes())
    return f"{path.stem}.{digest.hexdigest()[:12]}.safetensors"


def write(path: Path, document: dict[str, Any], arrays: dict[str, mx.array]) -> None:
    """Save ``document`` (TOML-ready) and its ``arrays`` atomically at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = dict(document)
    if arrays:
        name = sidecar_name(path, arrays)
        document["sidecar"] = name
        target = path.parent / name
        if not target.exists():
            _atomic_write(target, lambda tmp: mx.save_safetensors(str(tmp), arrays))
    text = tomli_w.dumps(document)
    _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    keep = document.get("sidecar")
    for old in path.parent.glob(f"{path.stem}.*.safetensors"):
        if old.name != keep and len(old.name) == len(path.stem) + 25:
            old.unlink(missing_ok=True)


def read(path: Path) -> tuple[dict[str, Any], dict[str, mx.array]]:
    """The validated document and its arrays; ``SessionError`` for anything amiss."""
    path = Path(path)
    if not path.is_file():
        raise SessionError(f"no session file at {str(path)!r}")
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SessionError(f"{path.name} is not a text file, so not a session") from None
    except tomllib.TOMLDecodeError as err:
        raise SessionError(f"{path.name} is not valid TOML: {err}") from None
    version = document.get("format")
    if version != FORMAT:
        raise SessionError(
            f"{path.name} has session format {version!r}; this mlxterp reads format {FORMAT}"
        )
    model = document.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("ref"), str):
        raise SessionError(f"{path.name} names no model: a [model] table with ref = \"...\" is needed")
    steps = document.get("steps", [])
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise SessionError(f"{path.name}: 'steps' must be an array of tables ([[steps]])")
    arrays: dict[str, mx.array] = {}
    sidecar = document.get("sidecar")
    if sidecar is not None:
        if not isinstance(sidecar, str) or "/" in sidecar or "\\" in sidecar or sidecar.startswith("."):
            raise SessionError(f"{path.name}: the sidecar must be a file name beside it, got {sidecar!r}")
        side = path.parent / sidecar
        if not side.is_file():
            raise SessionError(f"{path.name} refers to the sidecar {sidecar!r}, which is missing")
        try:
            loaded = mx.load(str(side), format="safetensors")
        except Exception as err:  # whatever MLX says about a bad file
            raise SessionError(f"the sidecar {sidecar!r} is not a safetensors file: {err}") from None
        if not isinstance(loaded, dict):
            raise SessionError(f"the sidecar {sidecar!r} holds no named tensors")
        arrays = loaded
    elif _has_array_refs(steps):
        raise SessionError(f"{path.name} refers to arrays but names no sidecar file")
    return document, arrays
