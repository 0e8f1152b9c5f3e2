"""Finding and loading models: the embedded demo, local folders, the hub (by request only).

A model folder is data, and is read as data: nothing in it runs.  Before ``mlx_lm`` or
``transformers`` see a folder it is checked, and refused with a ``ModelLoadError`` that
says why, when

* a configuration names code to import (``auto_map`` in any of the JSON files transformers
  reads, or mlx-lm's ``model_file``): loading it would run Python from the folder;
* ``config.json`` claims sizes the weight files cannot hold (``num_hidden_layers=10**9``
  next to a few megabytes of weights): building such a model would allocate without
  bound before any weight was compared.  Only the safetensors headers are read for this.

Loading itself passes ``trust_remote_code=False`` to mlx-lm and to the tokenizer, so no
prompt ever waits on stdin either.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.nn as nn

from . import gguf, model_config, model_sources
from .errors import ModelLoadError

DEMO_NAME = "demo"
DEMO_DIR = Path(__file__).resolve().parent / "demo_model"
HUB_SOURCE = "Hugging Face hub"  # a hub id, from the cache or downloaded without code

# The JSON files transformers and mlx-lm read while loading a model and its tokenizer.
CONFIG_FILES = (
    "config.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "processor_config.json",
    "preprocessor_config.json",
    "chat_template.json",
)
# What a hub download fetches: mlx-lm's own list without its "*.py", which nothing runs.
HUB_FILES = [
    "*.json",
    "model*.safetensors",
    "tokenizer.model",
    "*.tiktoken",
    "tiktoken.model",
    "*.txt",
    "*.jsonl",
    "*.jinja",
]
WEIGHTS_GLOB = "model*.safetensors"  # the weight files mlx_lm.load reads
MAX_CONFIG_BYTES = 16 * 2**20
MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit on its JSON header

LAYER_KEYS = (
    "num_hidden_layers",
    "n_layer",
    "num_layers",
    "n_layers",
)  # config keys naming the depth
HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model", "dim")  # config keys naming the model width
_INTERMEDIATE_KEYS = ("intermediate_size", "n_inner", "ffn_dim")
_LAYER_NAME = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a folder rather than a hub id ``org/name``.

    Absolute, ``./``, ``../`` and ``~`` names are paths, and so is anything a hub id cannot
    be (more than one ``/``, a backslash) or whose first folder exists here.
    """
    if name.startswith(("/", "~", ".")) or os.path.isabs(name):
        return True
    parts = name.replace("\\", "/").split("/")
    return (not _HUB_ID.fullmatch(name) and len(parts) > 1) or Path(parts[0]).is_dir()


def resolve_reference(name: str) -> Path | str:
    """A local folder for ``name`` (``"demo"``, a path), or the hub id as given."""
    if name == DEMO_NAME:
        return DEMO_DIR
    path = Path(os.path.expanduser(name))
    if path.exists() or looks_like_path(name):
        return path
    return name


def locate_model(name: str) -> tuple[Path | str, str]:
    """``(where, source)``: what ``load_model`` reads for ``name`` before any download —
    the demo folder, a path, or a GGUF file or folder found where users keep models
    (``mlxterp.model_sources``); else ``name`` as given (a hub id), or its path if it looks
    like one.  Nothing is read but the file system's listings."""
    ref = resolve_reference(name)
    if ref == DEMO_DIR:
        return ref, DEMO_NAME
    found = model_sources.find(name)  # a GGUF file, or a model where users keep them
    return found if found is not None else (ref, model_sources.PATH_SOURCE)


def model_choices(folder: Path) -> list[model_sources.FoundModel]:
    """The models that open without the network: the embedded demo first, then what
    ``model_sources.list_models`` finds in ``folder`` and its sub-folders, the Hugging Face
    cache, LM Studio and Ollama.  Each ``ref`` is a name ``locate_model`` reads as its
    ``path``."""
    found = [m for m in model_sources.list_models(folder) if m.path != DEMO_DIR]
    return [model_sources.FoundModel(DEMO_NAME, DEMO_DIR, DEMO_NAME), *found]


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model, where it was found and the config it was built from."""

    module: Any  # the mlx.nn.Module
    tokenizer: Any
    source: str  # "demo", a model_sources.SOURCES value, or HUB_SOURCE
    path: Path  # the folder or GGUF file read
    normalization: model_config.Normalization  # the config used and what was changed in it

    @property
    def is_gguf(self) -> bool:
        """Whether the weights came from a GGUF file (else an mlx-lm/transformers folder)."""
        return self.path.is_file()


def load(name: str) -> tuple[Any, Any]:
    """``(module, tokenizer)`` for ``name``; see ``load_model``."""
    loaded = load_model(name)
    return loaded.module, loaded.tokenizer


def load_model(name: str, lazy: bool = False) -> LoadedModel:
    """Load ``name`` through ``mlx_lm.load`` (GGUF files through ``mlxterp.gguf``), its config
    normalized by ``mlxterp.model_config`` (a ``ConfigWarning`` names any numerics-changing
    key the architecture ignores); ``ModelLoadError`` with the reason.  ``lazy``: a
    folder's weights are read only when first evaluated (so sharding reads a slice)."""
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError('a model name or folder is needed ("demo" is the embedded model)')
    ref, source = locate_model(name)
    if isinstance(ref, Path) and gguf.is_gguf(ref):
        module, tokenizer, normalization = gguf.load(ref)
        return LoadedModel(module, tokenizer, source, ref, normalization)
    if isinstance(ref, Path):
        folder = ref
        _check_folder_exists(name, folder)
    elif _HUB_ID.fullmatch(name):
        folder, source = _hub_folder(name), HUB_SOURCE
    else:
        raise ModelLoadError(
            f"model {name!r} not found: it is neither a local folder nor a hub id like "
            "'org/name' (use \"demo\" for the embedded model)"
        )
    check_folder(folder)
    normalization = model_config.normalize(_read_json(folder / "config.json"), weight_names(folder))
    model_config.warn_ignored(normalization, str(folder / "config.json"))
    import mlx_lm

    try:
        loaded = mlx_lm.load(
            str(folder),
            tokenizer_config={"trust_remote_code": False},
            model_config=normalization.overrides,  # the files on disk stay as they are
            lazy=lazy,
            trust_remote_code=False,
        )
    except Exception as err:  # mlx_lm raises many kinds; say which model and why
        raise ModelLoadError(
            f"could not load the model {name!r} from {str(folder)!r}: {_first_line(err)}"
        ) from err
    return LoadedModel(loaded[0], loaded[1], source, folder, normalization)


def dequantize(module: nn.Module) -> int:
    """Replace every quantized layer and embedding of ``module`` (in place) by a plain one
    holding its dequantized weights; the number replaced.  Quantized kernels trade speed
    for memory on some backends (on a 2-core Linux CPU a 4-bit 135M-parameter model runs
    about 12x slower than dequantized, see ``bench/``)."""
    from mlx_lm.utils import dequantize_model

    before = quantized_count(module)
    if before:
        dequantize_model(module)
    return before - quantized_count(module)


def quantized_count(module: nn.Module) -> int:
    """How many of ``module``'s layers and embeddings are quantized (hold ``scales``)."""
    return sum(1 for _, m in module.named_modules() if "scales" in m)


def weight_names(folder: Path) -> list[str]:
    """The tensor names in a folder's weight files (from their headers; no tensor is read)."""
    return [
        name
        for path in sorted(folder.glob(WEIGHTS_GLOB))
        for name in read_safetensors_header(path)
        if name != "__metadata__"
    ]


def check_folder(folder: Path) -> None:
    """Refuse a folder that would run code or whose config disagrees with its weights."""
    configs = {f: _read_json(folder / f) for f in CONFIG_FILES if (folder / f).is_file()}
    config = configs.get("config.json")
    code = [(f, "auto_map") for f, data in configs.items() if _has_key(data, "auto_map")]
    if isinstance(config, dict) and "model_file" in config:  # mlx-lm's custom architecture
        code.append(("config.json", "model_file"))
    if code:
        file, key = code[0]
        raise ModelLoadError(
            f"{str(folder)!r} is refused: its {file} sets {key!r}, which asks to run "
            "Python code shipped in the folder; mlxterp never runs code from a model "
            f"folder. Remove {key!r} (and the .py files it names) if the architecture "
            "is one mlx-lm supports"
        )
    if not isinstance(config, dict):
        raise ModelLoadError(f"{str(folder / 'config.json')!r} is not a JSON object")
    weights = sorted(folder.glob(WEIGHTS_GLOB))
    if not weights:
        raise ModelLoadError(
            f"{str(folder)!r} has a config.json but no {WEIGHTS_GLOB} weights (as "
            "mlx_lm.convert writes them)"
        )
    check_sizes(config, {w.name: read_safetensors_header(w) for w in weights})


def check_sizes(config: dict[str, Any], headers: dict[str, dict[str, Any]]) -> None:
    """Refuse a config whose layer count or sizes the weight files cannot hold.

    ``headers`` maps each weight file to its safetensors header.  Two checks, both before
    anything is built: the layers the config names must exist among the weight names
    (``...layers.N...``), and the parameters its sizes imply at the least
    (``vocab x hidden + layers x hidden x (hidden + intermediate)``) must fit in the
    weights' bytes at one bit per parameter.
    """
    sizes = _sizes(config)
    names = [n for header in headers.values() for n in header if n != "__metadata__"]
    indices = {int(m.group(1)) for n in names for m in [_LAYER_NAME.search(n)] if m}
    layer_key = next((k for k in LAYER_KEYS if k in sizes), None)
    if layer_key is not None and indices and sizes[layer_key] > max(indices) + 1:
        raise ModelLoadError(
            f"config.json says {layer_key}={sizes[layer_key]}, but the weight files hold "
            f"layers 0..{max(indices)} only ({max(indices) + 1} layers); the config does not "
            "describe these weights"
        )
    stored = sum(_tensor_bytes(entry) for header in headers.values() for entry in header.values())
    hidden = next((sizes[k] for k in HIDDEN_KEYS if k in sizes), 0)
    inner = next((sizes[k] for k in _INTERMEDIATE_KEYS if k in sizes), 0)
    layers = sizes[layer_key] if layer_key is not None else 0
    implied = sizes.get("vocab_size", 0) * hidden + layers * hidden * (hidden + inner)
    if implied > 8 * stored:
        named = ", ".join(f"{k}={v}" for k, v in sizes.items())
        raise ModelLoadError(
            f"config.json's sizes ({named}) imply at least {implied:.3g} parameters, but the "
            f"weight files hold {stored} bytes (at most {8 * stored:.3g} parameters even at "
            "one bit each); the config does not describe these weights"
        )


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (the 8-byte length, then JSON); no tensor is read."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError("the file is shorter than its 8-byte header length")
            (length,) = struct.unpack("<Q", head)
            if length > min(MAX_HEADER_BYTES, path.stat().st_size - 8):
                raise ValueError(f"it claims a {length}-byte header")
            header = json.loads(f.read(length))
    except (OSError, ValueError, RecursionError) as err:
        raise ModelLoadError(f"{str(path)!r} is not a readable safetensors file: {err}") from None
    if not isinstance(header, dict) or not all(
        isinstance(v, dict) for k, v in header.items() if k != "__metadata__"
    ):
        raise ModelLoadError(f"{str(path)!r} is not a safetensors file: its header is not a table")
    return header


def _tensor_bytes(entry: Any) -> int:
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets):
        return max(0, int(offsets[1]) - int(offsets[0]))
    return 0


def _sizes(config: dict[str, Any]) -> dict[str, int]:
    """The size keys of the (text) config that are plain positive integers."""
    text = config.get("text_config")
    source = text if isinstance(text, dict) and any(k in text for k in LAYER_KEYS) else config
    keys = (*LAYER_KEYS, *HIDDEN_KEYS, *_INTERMEDIATE_KEYS, "vocab_size")
    return {k: source[k] for k in keys if type(source.get(k)) is int and source[k] > 0}


def _read_json(path: Path) -> Any:
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"it is larger than {MAX_CONFIG_BYTES // 2**20} MiB")
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise ModelLoadError(f"{str(path)!r} is not readable JSON: {err}") from None


def _has_key(data: Any, key: str) -> bool:
    """Whether ``key`` is a key of any table in ``data`` (walked without recursion)."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if key in item:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _check_folder_exists(name: str, folder: Path) -> None:
    where = "" if str(folder) == name else f" ({folder.resolve()!s})"
    if not folder.exists():
        raise ModelLoadError(f"model folder {name!r} does not exist{where}")
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"{name!r}{where} is not a model folder: it needs a config.json and weights "
            f"({WEIGHTS_GLOB}), as mlx_lm.convert writes them"
        )


def _hub_folder(repo: str) -> Path:
    """The local snapshot of hub model ``repo`` (from the cache, or downloaded without code)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, allow_patterns=HUB_FILES))
    except Exception as err:  # hub errors come in many kinds (offline, not found, auth)
        raise ModelLoadError(
            f"could not get the hub model {repo!r} (it needs to be cached or a network): "
            f"{_first_line(err)}"
        ) from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
