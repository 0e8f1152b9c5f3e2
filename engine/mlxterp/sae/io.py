"""Saving and loading SAEs: ``sae.safetensors`` (weights) + ``sae.json`` (everything else),
or one table of both (:func:`describe_sae`, what a session step keeps).

The JSON records the model reference, canonical component name, layer, widths, input
scale, inference threshold (batch top-k), configuration (kind included) and training
statistics.  Loading against a model
refuses an SAE whose component is missing there or has another width.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import mlx.core as mx

from ..errors import InputError, ModuleNameError
from ..files import atomic_write
from .config import SAEConfig
from .model import SAE

if TYPE_CHECKING:
    from ..model import InterpretableModel

FORMAT = 1
WEIGHTS = ("W_enc", "W_dec", "b_enc", "b_dec")


def _meta(sae: SAE) -> dict[str, Any]:
    """Everything but the weights, as plain values."""
    return {
        "format": FORMAT,
        "model": sae.model_ref,
        "component": sae.component,
        "layer": sae.layer,
        "d_model": sae.d_model,
        "d_sae": sae.d_sae,
        "scale": sae.scale,
        "threshold": sae.threshold,
        "config": asdict(sae.config),
        "training_stats": sae.training_stats,
    }


def _build(meta: dict[str, Any], weights: dict[str, mx.array], where: str) -> SAE:
    """The SAE that ``meta`` and ``weights`` describe; ``InputError`` naming ``where``."""
    try:
        sae = SAE(
            meta["d_model"],
            SAEConfig(**meta["config"]),
            meta.get("component"),
            meta.get("layer"),
            meta["model"],
            meta.get("d_sae"),
        )
        sae.scale = float(meta["scale"])
        sae.threshold = float(meta.get("threshold", 0.0))
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{where} holds no readable SAE: {err!r}") from None
    for name in WEIGHTS:
        expected = getattr(sae, name).shape
        if name not in weights or weights[name].shape != expected:
            raise InputError(f"{where}: weight {name} is missing or not shaped {expected}")
    sae.update({name: weights[name] for name in WEIGHTS})
    sae.set_training_stats(meta.get("training_stats") or {})
    return sae


def save_sae(sae: SAE, folder: str | Path) -> Path:
    """Write ``sae.safetensors`` and ``sae.json`` into ``folder`` (created if needed), each
    through a temporary file and a rename: a save that fails leaves what was there whole."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: getattr(sae, k) for k in WEIGHTS}
    text = json.dumps(_meta(sae), indent=2) + "\n"
    mx.eval(weights)
    atomic_write(folder / "sae.safetensors", lambda tmp: mx.save_safetensors(str(tmp), weights))
    atomic_write(folder / "sae.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return folder


def load_sae(folder: str | Path, model: InterpretableModel | None = None) -> SAE:
    """Read an SAE written by :func:`save_sae`; with ``model``, :func:`check_against` it."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "sae.json").read_text(encoding="utf-8"))
        # a safetensors file loads as {name: array}
        weights = cast(dict[str, mx.array], mx.load(str(folder / "sae.safetensors")))
    except (OSError, ValueError, RuntimeError) as err:
        raise InputError(f"{str(folder)!r} holds no readable SAE: {err!r}") from None
    if not isinstance(meta, dict):
        raise InputError(f"{str(folder)!r} holds no readable SAE: sae.json is no object")
    sae = _build(meta, weights, repr(str(folder)))
    if model is not None:
        check_against(sae, model)
    return sae


def describe_sae(sae: SAE) -> dict[str, Any]:
    """The SAE as one table: what ``sae.json`` holds, and ``weights`` (the four arrays).
    A session step keeps it so (the arrays in its sidecar); :func:`sae_from_description`
    reads it back."""
    meta = {k: v for k, v in _meta(sae).items() if v is not None}  # a file has no null
    return {**meta, "weights": {k: getattr(sae, k) for k in WEIGHTS}}


def sae_from_description(table: dict[str, Any]) -> SAE:
    """The SAE :func:`describe_sae` described (``InputError`` for a table that is not one)."""
    weights = table.get("weights") if isinstance(table, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(w, mx.array) for w in weights.values()):
        raise InputError("an SAE description needs a weights table of arrays")
    return _build(table, weights, "the SAE description")


def component_width(model: InterpretableModel, component: str) -> int:
    """Width of ``component``'s output, read from a one-token forward."""
    bos = getattr(model.tokenizer, "bos_token_id", None)
    trace = model.run([[bos if isinstance(bos, int) else 0]], capture=[component])
    return int(trace.activations[component].shape[-1])


def check_against(sae: SAE, model: InterpretableModel) -> None:
    """Refuse an SAE whose component is missing from ``model`` or has another width."""
    if not sae.component:
        raise InputError("this SAE does not record the component it was trained on")
    try:
        canonical = model.resolve(sae.component)
    except ModuleNameError as err:
        raise ModuleNameError(
            f"this SAE was trained on {sae.component!r} of {sae.model_ref!r}, which this model "
            f"lacks: {err.message}",
            err.candidates,
        ) from None
    width = component_width(model, canonical)
    if width != sae.d_model:
        raise InputError(
            f"this SAE reads {sae.d_model}-dimensional activations but {canonical!r} of this "
            f"model produces {width}: it was trained on another model ({sae.model_ref!r})"
        )
