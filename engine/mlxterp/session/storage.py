"""Session files: TOML for the history, a safetensors sidecar for arrays; safe saves.

A session file is data only: it is read with ``tomllib`` and ``mx.load`` of safetensors,
nothing in it is evaluated, imported or unpickled.  Arrays appear in the TOML as inline
tables ``{ array = "steps.3.vector" }`` naming a tensor of the sidecar, a file beside it
named ``<stem>.<12 hex digits of a hash of the content>.safetensors``.

A save (see docs/sessions.md for the promises) holds the folder's lock file, writes the
sidecar under its content name (unless an intact one is there), swaps the TOML in with one
``os.replace``, and then removes the sidecar the file named before only when no other file
in the folder names it.  Every temporary file is ``.mlxterp-tmp-*`` in the same folder;
one left by a killed save is removed by the next save there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import struct
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import tomli_w

from ..errors import SessionError
from ..files import TEMP_PREFIX, UMASK, atomic_write
from .locking import on_mlx_thread

FORMAT = 1
MAX_FILE_BYTES = 64 * 2**20  # a larger file is refused, so it cannot name a sidecar either
MAX_STRING = 1_000_000  # characters in one string of a session file
MAX_DEPTH = 32  # tables and arrays inside each other
LOCK_NAME = ".mlxterp.lock"
LOCK_TIMEOUT = 30.0  # seconds a save waits for another save in the same folder


def encode_arrays(
    value: Any,
    prefix: str,
    arrays: dict[str, mx.array],
    by_content: dict[tuple[str, tuple[int, ...], bytes], str] | None = None,
) -> Any:
    """``value`` with every ``mx.array`` replaced by ``{"array": key}`` (collected in
    ``arrays``) and every ``None`` left out (TOML has no null).  With ``by_content`` (kept
    across calls), an array equal to one already collected names that one's key instead:
    an SAE that several steps of a session use is stored once."""
    if isinstance(value, mx.array):
        content = _content(value) if by_content is not None else None
        if content is not None and by_content is not None:
            if content in by_content:
                return {"array": by_content[content]}
            by_content[content] = prefix
        arrays[prefix] = value
        return {"array": prefix}
    if isinstance(value, dict):
        return {
            k: encode_arrays(v, f"{prefix}.{k}", arrays, by_content)
            for k, v in value.items()
            if v is not None
        }
    if isinstance(value, (list, tuple)):
        return [encode_arrays(v, f"{prefix}.{i}", arrays, by_content) for i, v in enumerate(value)]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def _content(array: mx.array) -> tuple[str, tuple[int, ...], bytes] | None:
    """An evaluated array's dtype, shape and bytes (None for a dtype a sidecar refuses)."""
    if array.dtype not in _DTYPES:
        return None
    # mx.array supports the buffer protocol; its stubs do not declare __buffer__
    return _DTYPES[array.dtype], tuple(array.shape), memoryview(array).tobytes()  # type: ignore[arg-type]


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


def check_name(name: str, what: str = "a session file") -> None:
    """Refuse a file name the loader would refuse: empty, hidden (leading dot), with a
    path separator or backslash, not UTF-8, longer than the file system allows."""
    if not name or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise SessionError(
            f"{name!r} cannot be {what}: the name must not start with a dot or hold "
            "a slash, a backslash or a NUL"
        )
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise SessionError(f"{name!r} cannot be {what}: the name is not valid UTF-8") from None
    if size > _NAME_MAX:
        raise SessionError(
            f"{name[:40]!r}... cannot be {what}: the name is {size} bytes; "
            f"file names go up to {_NAME_MAX}"
        )
    if what == "a session file" and name.endswith(".safetensors"):
        raise SessionError(f"{name!r} cannot be a session file: .safetensors names sidecars")


_NAME_MAX = 255  # bytes in one file name on the file systems mlxterp runs on


def _real(path: Path) -> Path:
    """The file a path names, through symbolic links (its sidecar lies beside it)."""
    return Path(os.path.realpath(path))


_DTYPES = {
    mx.bool_: "BOOL",
    mx.uint8: "U8",
    mx.uint16: "U16",
    mx.uint32: "U32",
    mx.uint64: "U64",
    mx.int8: "I8",
    mx.int16: "I16",
    mx.int32: "I32",
    mx.int64: "I64",
    mx.float16: "F16",
    mx.bfloat16: "BF16",
    mx.float32: "F32",
}

Tensor = tuple[str, str, list[int], bytes]  # name, safetensors dtype, shape, bytes (C order)


def _tensors(arrays: dict[str, mx.array]) -> list[Tensor]:
    """The arrays as safetensors entries, by name.  Reading an evaluated array's buffer
    is no MLX work (see :mod:`.locking`)."""
    out = []
    for key in sorted(arrays):
        content = _content(arrays[key])
        if content is None:
            raise SessionError(
                f"the array {key!r} has dtype {arrays[key].dtype}, which a sidecar cannot hold"
            )
        dtype, shape, data = content
        out.append((key, dtype, list(shape), data))
    return out


def _digest(tensors: list[Tensor]) -> str:
    """12 hex digits of the sha256 of every tensor's name, dtype, shape and exact bytes."""
    digest = hashlib.sha256()
    for key, dtype, shape, data in tensors:
        digest.update(f"{key}\0{dtype}{shape}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:12]


def content_hash(arrays: dict[str, mx.array]) -> str:
    """The hash a sidecar of ``arrays`` is named by."""
    return _digest(_tensors(arrays))


def _safetensors(tensors: list[Tensor]) -> bytes:
    """The safetensors file of ``tensors``: an 8-byte header length, a JSON header
    (padded to 8 bytes), then the data."""
    header: dict[str, Any] = {}
    offset = 0
    for key, dtype, shape, data in tensors:
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(t[3] for t in tensors)


def _file_digest(side: Path) -> str | None:
    """The content hash of a sidecar file, read without MLX (None: not one we can read)."""
    try:
        raw = side.read_bytes()
        size = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8 : 8 + size])
        data = raw[8 + size :]
        tensors = []
        for key in sorted(k for k in header if k != "__metadata__"):
            entry = header[key]
            begin, end = entry["data_offsets"]
            if not 0 <= begin <= end <= len(data):
                return None
            tensors.append((key, entry["dtype"], list(entry["shape"]), data[begin:end]))
        return _digest(tensors)
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


def sidecar_name(path: Path, arrays: dict[str, mx.array]) -> str:
    """``<stem>.<content hash>.safetensors``, the stem cut (at a character boundary) so
    that the name fits the file-system limit."""
    return _sidecar_name(path, content_hash(arrays))


def _sidecar_name(path: Path, digest: str) -> str:
    tail = f".{digest}.safetensors"
    stem = path.stem.encode("utf-8")[: _NAME_MAX - len(tail)].decode("utf-8", "ignore")
    return stem + tail


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Hold the folder's lock file (``flock``): saves in one folder run one at a time,
    across threads and processes.  ``SessionError`` after ``LOCK_TIMEOUT`` seconds."""
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666 & ~UMASK)
    except OSError as err:
        raise SessionError(f"cannot save in {str(folder)!r}: {err.strerror or err}") from None
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise SessionError(f"cannot lock {LOCK_NAME!r}: {err}") from None
                if time.monotonic() > deadline:
                    raise SessionError(
                        f"another save in {str(folder)!r} has held {LOCK_NAME!r} for "
                        f"{LOCK_TIMEOUT:g} s; nothing was written"
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _named_sidecar(path: Path) -> str | None:
    """The sidecar ``path`` names now: None for no file, no sidecar, a file that cannot
    be read, or a name the loader would refuse (``../x`` is never removed)."""
    try:
        sidecar = _parse(path).get("sidecar")
        if not isinstance(sidecar, str) or not sidecar.endswith(".safetensors"):
            return None
        check_name(sidecar, "a sidecar")
    except SessionError:
        return None
    return sidecar


def _named_elsewhere(folder: Path, sidecar: str, besides: str) -> bool:
    """Whether any file of ``folder`` but ``besides`` may name ``sidecar`` (True when a
    file cannot be read: a sidecar is removed only when it is proven unused)."""
    needle = sidecar.encode("utf-8")
    for entry in folder.iterdir():
        name = entry.name
        if name in (besides, LOCK_NAME) or name.endswith(".safetensors"):
            continue
        if name.startswith(TEMP_PREFIX):
            continue
        try:
            if not entry.is_file() or entry.stat().st_size > MAX_FILE_BYTES:
                continue  # folders, and files too large to load as sessions
            if needle in entry.read_bytes():
                return True
        except OSError:
            return True
    return False


def _remove_if_unused(folder: Path, sidecar: str, besides: str) -> None:
    """Remove ``sidecar`` when it is one mlxterp wrote (its content hashes to the digits in
    its name: never a model's weights a hostile file names) and no other file names it."""
    digits = sidecar.removesuffix(".safetensors").rpartition(".")[2]
    if _file_digest(folder / sidecar) == digits and not _named_elsewhere(folder, sidecar, besides):
        (folder / sidecar).unlink(missing_ok=True)


def _remove_temporaries(folder: Path) -> None:
    """Remove what killed saves left (under the lock, no save is running here)."""
    for entry in folder.glob(f"{TEMP_PREFIX}*"):
        with contextlib.suppress(OSError):
            entry.unlink()


def write(path: Path, document: dict[str, Any], arrays: dict[str, mx.array]) -> None:
    """Save ``document`` (TOML-ready) and its ``arrays`` at ``path`` (through a symbolic
    link, to its target); ``SessionError`` before anything is written when the folder is
    missing or the name is one :func:`read` would refuse."""
    path = Path(path)
    check_name(path.name)
    target = _real(path)
    check_name(target.name)
    folder = target.parent
    if not folder.is_dir():
        raise SessionError(f"cannot save {path.name!r}: the folder {str(folder)!r} does not exist")
    document = dict(document)
    tensors = _tensors(arrays)
    digest = _digest(tensors)
    name = _sidecar_name(target, digest) if arrays else None
    if name is not None:
        document["sidecar"] = name
    text = tomli_w.dumps(document)  # before any file is touched: a bad value stops here
    try:
        with _folder_lock(folder):
            _remove_temporaries(folder)
            previous = _named_sidecar(target)
            if name is not None and _file_digest(folder / name) != digest:
                atomic_write(folder / name, lambda tmp: tmp.write_bytes(_safetensors(tensors)))
            atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
            if previous not in (None, name):
                _remove_if_unused(folder, previous, target.name)
            _sync_folder(folder)
    except OSError as err:
        raise SessionError(f"cannot save {path.name!r}: {err.strerror or err}") from None


def remove(path: Path) -> None:
    """Delete the session file at ``path`` (through a link, its target and the link) and
    the sidecar it names, unless another file in its folder names that sidecar too."""
    path = Path(path)
    target = _real(path)
    folder = target.parent
    try:
        with _folder_lock(folder):
            sidecar = _named_sidecar(target)
            target.unlink(missing_ok=True)
            if path != target and path.is_symlink():
                path.unlink()
            if sidecar is not None:
                _remove_if_unused(folder, sidecar, target.name)
    except OSError as err:
        raise SessionError(f"cannot remove {path.name!r}: {err.strerror or err}") from None


def _has_array_refs(value: Any) -> bool:
    if isinstance(value, dict):
        return _is_array_ref(value) or any(_has_array_refs(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_array_refs(v) for v in value)
    return False


def _check_size(name: str, document: dict[str, Any]) -> None:
    """Nesting no deeper than ``MAX_DEPTH``, no string over ``MAX_STRING`` characters."""
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise SessionError(
                f"{name} holds a string of {len(value):,} characters; a session file's "
                f"strings go up to {MAX_STRING:,}"
            )
        children = value.values() if isinstance(value, dict) else value
        if isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                raise SessionError(f"{name} nests tables or arrays deeper than {MAX_DEPTH}")
            stack.extend((child, depth + 1) for child in children)
            if isinstance(value, dict):
                stack.extend((key, depth) for key in value)


def _check_types(where: str, table: dict[str, Any], types: dict[str, tuple[type, str]]) -> None:
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


def _load_evaluated(side: Path) -> Any:
    loaded = mx.load(str(side), format="safetensors")
    if isinstance(loaded, dict):
        mx.eval(list(loaded.values()))
    return loaded


def _load_sidecar(path: Path, sidecar: Any) -> dict[str, mx.array]:
    if not isinstance(sidecar, str):
        raise SessionError(f"{path.name}: the sidecar must be a file name, got {sidecar!r}")
    check_name(sidecar, "a sidecar")
    side = _real(path).parent / sidecar
    if not side.is_file():
        raise SessionError(f"{path.name} refers to the sidecar {sidecar!r}, which is missing")
    try:
        loaded = on_mlx_thread(lambda: _load_evaluated(side))
    except Exception as err:  # whatever MLX says about a bad file
        raise SessionError(f"the sidecar {sidecar!r} is not a safetensors file: {err}") from None
    if not isinstance(loaded, dict):
        raise SessionError(f"the sidecar {sidecar!r} holds no named tensors")
    return loaded


def _parse(path: Path) -> dict[str, Any]:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SessionError(
                f"{path.name} is {size:,} bytes; a session file is at most {MAX_FILE_BYTES:,}"
            )
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SessionError(f"{path.name} is not a text file, so not a session") from None
    except OSError as err:
        raise SessionError(f"{path.name} cannot be read: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise SessionError(f"{path.name} is not valid TOML: {err}") from None
    except RecursionError:
        raise SessionError(f"{path.name} nests tables or arrays too deeply") from None


def read(path: Path) -> tuple[dict[str, Any], dict[str, mx.array]]:
    """The validated document and its arrays; ``SessionError`` for anything amiss."""
    path = Path(path)
    if not path.is_file():
        raise SessionError(f"no session file at {str(path)!r}")
    check_name(path.name)
    for attempt in range(5):
        document = _parse(path)
        _check_size(path.name, document)
        _check_document(path.name, document)
        if "sidecar" not in document:
            break
        try:
            return document, _load_sidecar(path, document["sidecar"])
        except SessionError:
            if attempt == 4 or _named_sidecar(path) == document["sidecar"]:
                raise  # not a save that replaced the file while it was read
    if _has_array_refs(document.get("steps", [])):
        raise SessionError(f"{path.name} refers to arrays but names no sidecar file")
    return document, {}
