"""Finding a model where users keep it, without the network.

A name that is not a path is looked up, in this order, in the Hugging Face cache
(``$HF_HUB_CACHE``, ``$HF_HOME/hub``, ``~/.cache/huggingface/hub``), LM Studio's models
folders (``~/.lmstudio/models``, ``~/.cache/lm-studio/models``) and Ollama's manifests
(``$OLLAMA_MODELS`` or ``~/.ollama/models``).  What is found is either an mlx-lm folder
(``config.json`` + ``*.safetensors``) or a GGUF file (Ollama's blobs have no suffix).
``list_models`` lists what these places (and a folder of the user's) hold, as names that
``find`` opens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelLoadError

OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
OLLAMA_REGISTRY = "registry.ollama.ai"


def _home() -> Path:
    return Path(os.path.expanduser("~"))


def _is_mlx_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def model_in_folder(folder: Path) -> Path | None:
    """The model a folder holds: itself if an mlx-lm folder, else its single ``*.gguf``.

    Several GGUF files (say one per quantization) raise ``ModelLoadError`` listing them.
    """
    if _is_mlx_folder(folder):
        return folder
    ggufs = sorted(p for p in folder.glob("*.gguf") if p.is_file())
    if len(ggufs) > 1:
        names = ", ".join(p.name for p in ggufs)
        raise ModelLoadError(
            f"{str(folder)!r} holds several GGUF files ({names}): name one of them"
        )
    return ggufs[0] if ggufs else None


def _resolve(path: Path) -> Path | None:
    if path.is_file():
        return path
    if path.is_dir():
        return model_in_folder(path)
    return None


def hf_cache_dirs() -> list[Path]:
    """Where the Hugging Face hub cache may be, most specific first."""
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    dirs.append(_home() / ".cache" / "huggingface" / "hub")
    return dirs


def _hf_snapshots(repo_dir: Path) -> Iterator[Path]:
    """The snapshot ``refs/main`` names first, then the others, newest first."""
    snapshots = repo_dir / "snapshots"
    main = repo_dir / "refs" / "main"
    if main.is_file():
        revision = main.read_text(encoding="utf-8", errors="replace").strip()
        if revision and "/" not in revision and "\\" not in revision and revision != "..":
            yield snapshots / revision
    others = [p for p in snapshots.glob("*") if p.is_dir()]
    yield from sorted(others, key=lambda p: p.stat().st_mtime, reverse=True)


def find_in_hf_cache(name: str) -> Path | None:
    """``org/repo`` (or ``org/repo/file.gguf``) in the Hugging Face cache."""
    parts = name.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        return None
    repo, file = "/".join(parts[:2]), parts[2] if len(parts) == 3 else None
    folder_name = "models--" + repo.replace("/", "--")
    for cache in hf_cache_dirs():
        for snapshot in _hf_snapshots(cache / folder_name):
            found = _resolve(snapshot / file if file else snapshot)
            if found is not None:
                return found
    return None


def lmstudio_dirs() -> list[Path]:
    """LM Studio's models folders (the current one and the older cache location)."""
    return [_home() / ".lmstudio" / "models", _home() / ".cache" / "lm-studio" / "models"]


def find_in_lmstudio(name: str) -> Path | None:
    """``publisher/model`` (or ``publisher/model/file.gguf``) in LM Studio's folders."""
    parts = name.split("/")
    if len(parts) not in (2, 3) or not all(parts) or ".." in parts:
        return None
    for root in lmstudio_dirs():
        found = _resolve(root.joinpath(*parts))
        if found is not None:
            return found
    return None


def ollama_dir() -> Path:
    env = os.environ.get("OLLAMA_MODELS")
    return Path(env) if env else _home() / ".ollama" / "models"


def find_in_ollama(name: str) -> Path | None:
    """``model[:tag]`` or ``namespace/model[:tag]`` via Ollama's manifest to its model blob."""
    base, _, tag = name.partition(":")
    parts = base.split("/")
    if len(parts) == 1:
        parts = ["library", *parts]
    if len(parts) != 2 or not all(parts) or ".." in parts or "/" in tag or tag == "..":
        return None
    root = ollama_dir()
    manifest = root / "manifests" / OLLAMA_REGISTRY / parts[0] / parts[1] / (tag or "latest")
    if not manifest.is_file():
        return None
    try:
        layers = json.loads(manifest.read_text(encoding="utf-8")).get("layers", [])
    except (OSError, ValueError, AttributeError) as err:
        raise ModelLoadError(f"Ollama manifest {str(manifest)!r} is unreadable: {err}") from err
    for layer in layers:
        if isinstance(layer, dict) and layer.get("mediaType") == OLLAMA_MODEL_LAYER:
            digest = str(layer.get("digest", ""))
            blob = root / "blobs" / digest.replace(":", "-")
            if not digest.startswith("sha256:") or not blob.is_file():
                raise ModelLoadError(
                    f"Ollama model {name!r}: its weights blob {digest!r} is missing"
                )
            return blob
    raise ModelLoadError(f"Ollama manifest {str(manifest)!r} names no model layer")


PATH_SOURCE = "local path"
HF_CACHE_SOURCE = "Hugging Face cache"
LMSTUDIO_SOURCE = "LM Studio"
OLLAMA_SOURCE = "Ollama"
_FINDERS = (
    (HF_CACHE_SOURCE, find_in_hf_cache),
    (LMSTUDIO_SOURCE, find_in_lmstudio),
    (OLLAMA_SOURCE, find_in_ollama),
)


def find(name: str) -> tuple[Path, str] | None:
    """``(model, source)`` for ``name``: a path (``PATH_SOURCE``: a GGUF file, a folder) or
    a name found in the Hugging Face cache, LM Studio or Ollama (the ``*_SOURCE`` that
    found it); ``None`` when nothing local matches."""
    path = Path(os.path.expanduser(name))
    if path.exists():
        resolved = _resolve(path)
        return None if resolved is None else (resolved, PATH_SOURCE)
    for source, finder in _FINDERS:
        found = finder(name)
        if found is not None:
            return found, source
    return None


def locate(name: str) -> Path | None:
    """The model ``find`` finds for ``name``, without its source."""
    found = find(name)
    return None if found is None else found[0]


@dataclass(frozen=True)
class FoundModel:
    """A model that can be opened: the name that opens it (``InterpretableModel(ref)``),
    the folder or GGUF file it reads, and the source that holds it (a ``*_SOURCE``)."""

    ref: str
    path: Path
    source: str


def _held(name: str, where: Path, source: str) -> list[FoundModel]:
    """What the folder ``where`` (opened as ``name``) holds: one model, or each of its
    several GGUF files as ``name/file.gguf``."""
    try:
        found = model_in_folder(where)
    except ModelLoadError:  # several GGUF files: each one is a model
        ggufs = sorted(p for p in where.glob("*.gguf") if p.is_file())
        return [FoundModel(f"{name}/{p.name}", p, source) for p in ggufs]
    return [] if found is None else [FoundModel(name, found, source)]


def _folders(root: Path) -> list[Path]:
    try:
        return sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:  # missing or unreadable
        return []


def _files(root: Path) -> list[str]:
    try:
        return sorted(p.name for p in root.iterdir() if p.is_file())
    except OSError:
        return []


def _local_models(folder: Path) -> list[FoundModel]:
    """``folder`` and its sub-folders that are mlx-lm folders, and the GGUF files in them."""
    found = []
    for where in (folder, *_folders(folder)):
        if _is_mlx_folder(where):
            found.append(FoundModel(str(where), where, PATH_SOURCE))
        ggufs = sorted(p for p in where.glob("*.gguf") if p.is_file())
        found += [FoundModel(str(p), p, PATH_SOURCE) for p in ggufs]
    return found


def _hf_cache_models() -> list[FoundModel]:
    found = []
    for cache in hf_cache_dirs():
        for repo_dir in _folders(cache):
            org, sep, repo = repo_dir.name.removeprefix("models--").partition("--")
            if not repo_dir.name.startswith("models--") or not sep:
                continue
            snapshot = next((s for s in _hf_snapshots(repo_dir) if s.is_dir()), None)
            if snapshot is not None:
                found += _held(f"{org}/{repo}", snapshot, HF_CACHE_SOURCE)
    return found


def _lmstudio_models() -> list[FoundModel]:
    return [
        model
        for root in lmstudio_dirs()
        for publisher in _folders(root)
        for folder in _folders(publisher)
        for model in _held(f"{publisher.name}/{folder.name}", folder, LMSTUDIO_SOURCE)
    ]


def _ollama_models() -> list[FoundModel]:
    found = []
    registry = ollama_dir() / "manifests" / OLLAMA_REGISTRY
    for namespace in _folders(registry):
        for model in _folders(namespace):
            for tag in _files(model):
                prefix = "" if namespace.name == "library" else f"{namespace.name}/"
                name = f"{prefix}{model.name}:{tag}"
                try:
                    blob = find_in_ollama(name)
                except ModelLoadError:  # a broken manifest: loading it would say so
                    continue
                if blob is not None:
                    found.append(FoundModel(name, blob, OLLAMA_SOURCE))
    return found


def list_models(folder: Path) -> list[FoundModel]:
    """Every model ``find`` can open without the network: mlx-lm folders and GGUF files in
    ``folder`` and its sub-folders, then those in the Hugging Face cache, LM Studio and
    Ollama.  Each ``ref`` opens its ``path``: a name, or the path itself where the name
    would find another model first (the same name in two sources).  Only the file system's
    listings and Ollama's manifests are read."""
    listed = [
        *_local_models(folder),
        *_hf_cache_models(),
        *_lmstudio_models(),
        *_ollama_models(),
    ]
    seen: set[Path] = set()
    models = []
    for model in listed:
        if model.path in seen:
            continue
        seen.add(model.path)
        try:
            opens = find(model.ref)
        except ModelLoadError:
            opens = None
        if opens is None or opens[0] != model.path:
            model = FoundModel(str(model.path), model.path, model.source)
        models.append(model)
    return models
