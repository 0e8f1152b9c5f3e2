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
import re
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import tomli_w

from ..errors import SessionError

FORMAT = 1

_UMASK = os.umask(0)  # read once, at import (setting it is process-wide)
os.umask(_UMASK)


def encode_arrays(value: Any, prefix: str, arrays: dict[str, mx.array]) -> Any:
    """``value`` with every ``mx.array`` replaced by ``{"array": key}`` (collected in
    ``arrays``) and every ``None`` left out (TOML has no null)."""
    if isinstance(value, mx.array):
        arrays[prefix] = value
        return {"array": prefix}
    if isinstance(value, dict):
        return {
            k: encode_arrays(v, f"{prefix}.{k}", arrays) for k, v in value.items() if v is not None
        }
    if isinstance(value, (list, tuple)):
        return [encode_arrays(v, f"{prefix}.{i}", arrays) for i, v in enumerate(value)]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def _is_array_ref(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"array"}


def decode_arrays(value: Any, arrays: dict[str, mx.array]) -> Any:
    """Inverse of :func:`encode_arrays`; a missing tensor is a ``SessionError``."""
    if _is_array_ref(value):
        key = value["array"]
        if not isinstance(key, str):
            raise SessionError(f"an array reference must name a tensor, got {key!r}")
        if key not in arrays:
            raise SessionError(f"the array {key!r} is missing from the sidecar file")
        return arrays[key]
    if isinstance(value, dict):
        return {k: decode_arrays(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_arrays(v, arrays) for v in value]
    return value


def _has_array_refs(value: Any) -> bool:
    if isinstance(value, dict):
        return _is_array_ref(value) or any(_has_array_refs(v) for v in value.values())
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
        os.chmod(tmp_path, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_UMASK)
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def sidecar_name(path: Path, arrays: dict[str, mx.array]) -> str:
    """``<stem>.<12 hex digits of the content's sha256>.safetensors``."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(f"{arrays[key].dtype}{tuple(arrays[key].shape)}".encode())
        digest.update(np.asarray(mx.view(arrays[key], mx.uint8)).tobytes())  # exact bytes
    return f"{path.stem}.{digest.hexdigest()[:12]}.safetensors"


def _own_sidecars(path: Path) -> list[Path]:
    """The sidecars a save of ``path`` may have written (and may now remove)."""
    pattern = re.compile(re.escape(path.stem) + r"\.[0-9a-f]{12}\.safetensors")
    return [p for p in path.parent.iterdir() if pattern.fullmatch(p.name)]


def write(path: Path, document: dict[str, Any], arrays: dict[str, mx.array]) -> None:
    """Save ``document`` (TOML-ready) and its ``arrays`` atomically at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = dict(document)
    name = sidecar_name(path, arrays) if arrays else None
    if name is not None:
        document["sidecar"] = name
    text = tomli_w.dumps(document)  # before any file is touched: a bad value stops here
    if name is not None and not (path.parent / name).exists():
        _atomic_write(path.parent / name, lambda tmp: mx.save_safetensors(str(tmp), arrays))
    _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    for old in _own_sidecars(path):
        if old.name != name:
            old.unlink(missing_ok=True)


def _check_types(where: str, table: dict, types: dict[str, tuple[type, str]]) -> None:
    """Each present key of ``table`` must have its type (bool is not an int here)."""
    for key, (kind, expects) in types.items():
        value = table.get(key)
        if value is not None and (
            not isinstance(value, kind) or (kind is int and isinstance(value, bool))
        ):
            raise SessionError(f"{where}: {key} must be {expects}, got {value!r}")


def _check_document(name: str, document: dict[str, Any]) -> None:
    version = document.get("format")
    if not isinstance(version, int) or isinstance(version, bool) or version != FORMAT:
        raise SessionError(
            f"{name} has session format {version!r}; this mlxterp reads format {FORMAT}"
        )
    model = document.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("ref"), str):
        raise SessionError(f'{name} names no model: a [model] table with ref = "..." is needed')
    _check_types(
        f"{name} [model]",
        model,
        {"fingerprint": (str, "a string"), "parameters": (int, "an integer")},
    )
    meta = document.get("meta", {})
    if not isinstance(meta, dict):
        raise SessionError(f"{name}: 'meta' must be a table ([meta])")
    _check_types(
        f"{name} [meta]", meta, {k: (str, "a string") for k in ("created", "updated", "mlxterp")}
    )
    steps = document.get("steps", [])
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise SessionError(f"{name}: 'steps' must be an array of tables ([[steps]])")
    for i, step in enumerate(steps):
        where = f"{name}, step {i}"
        if not isinstance(step.get("kind"), str):
            raise SessionError(f'{where}: the step has no kind (kind = "trace", ...)')
        _check_types(
            where,
            step,
            {
                "created": (str, "a string"),
                "params": (dict, "a table"),
                "summary": (dict, "a table"),
            },
        )


def _load_sidecar(path: Path, sidecar: Any) -> dict[str, mx.array]:
    if not isinstance(sidecar, str) or "/" in sidecar or "\\" in sidecar or sidecar.startswith("."):
        raise SessionError(
            f"{path.name}: the sidecar must be a file name beside it, got {sidecar!r}"
        )
    side = path.parent / sidecar
    if not side.is_file():
        raise SessionError(f"{path.name} refers to the sidecar {sidecar!r}, which is missing")
    try:
        loaded = mx.load(str(side), format="safetensors")
    except Exception as err:  # whatever MLX says about a bad file
        raise SessionError(f"the sidecar {sidecar!r} is not a safetensors file: {err}") from None
    if not isinstance(loaded, dict):
        raise SessionError(f"the sidecar {sidecar!r} holds no named tensors")
    return loaded


def read(path: Path) -> tuple[dict[str, Any], dict[str, mx.array]]:
    """The validated document and its arrays; ``SessionError`` for anything amiss."""
    path = Path(path)
    if not path.is_file():
        raise SessionError(f"no session file at {str(path)!r}")
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SessionError(f"{path.name} is not a text file, so not a session") from None
    except OSError as err:
        raise SessionError(f"{path.name} cannot be read: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise SessionError(f"{path.name} is not valid TOML: {err}") from None
    _check_document(path.name, document)
    if "sidecar" in document:
        return document, _load_sidecar(path, document["sidecar"])
    if _has_array_refs(document.get("steps", [])):
        raise SessionError(f"{path.name} refers to arrays but names no sidecar file")
    return document, {}
