"""SAELens interchange: an SAE folder as SAELens writes it, ``cfg.json`` +
``sae_weights.safetensors``.

The weights are SAELens's: ``W_enc`` ``(d_in, d_sae)``, ``b_enc`` ``(d_sae,)``, ``W_dec``
``(d_sae, d_in)``, ``b_dec`` ``(d_in,)``.  The config is written in SAELens 6's shape (``d_in``,
``d_sae``, ``dtype``, ``device``, ``apply_b_dec_to_input``, ``normalize_activations``,
``reshape_activations``, ``architecture``, ``k`` for top-k, and a ``metadata`` table with
``model_name``, ``hook_name``, ``context_size``, ``prepend_bos`` ...), with the pre-6 keys
beside it (``hook_name``, ``hook_layer``, ``activation_fn_str``, ``activation_fn_kwargs``
...), which SAELens 6 drops and older readers use.

Writing folds mlxterp's input scale into the weights, as SAELens does when training ends
(its ``fold_activation_norm_scaling_factor``), so the file says
``normalize_activations = "none"`` and SAELens reads the same features.  Reading accepts
SAELens 6 and pre-6 configs of the ``standard`` (ReLU) and ``topk`` architectures, and
``jumprelu`` with one threshold for every feature (what a BatchTopK SAE is at inference,
and how one is written), ``apply_b_dec_to_input`` either way and
``rescale_acts_by_decoder_norm`` (both folded into the encoder), in any float dtype; what
mlxterp cannot compute the same way (per-feature JumpReLU thresholds, gated, per-token
normalisation, ``hook_z`` reshaping, a fine-tuning scaling factor) is refused with the
reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import mlx.core as mx

from ..errors import InputError
from ..files import atomic_write
from .config import SAEConfig
from .io import check_against
from .model import SAE

if TYPE_CHECKING:
    from ..model import InterpretableModel

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SAELENS_VERSION = "6.0.0"  # the config layout written (what SAELens 6 reads as its own)
# TransformerLens hook of a layer's part -> the mlxterp component it reads, and back
_HOOKS = {"hook_resid_post": "", "hook_mlp_out": ".mlp", "hook_attn_out": ".attn"}
_LAYER_PART = re.compile(r"^(?:model\.)?layers\.(\d+)(\.mlp|\.self_attn|\.attn)?$")
_HOOK = re.compile(r"^blocks\.(\d+)\.(hook_resid_post|hook_resid_pre|hook_mlp_out|hook_attn_out)$")


def hook_name(component: str | None) -> str:
    """The TransformerLens hook name SAELens records for an mlxterp component (a layer's
    output, its MLP or attention); any other component keeps its own name."""
    match = _LAYER_PART.match(component or "")
    if not match:
        return component or ""
    part = {None: "hook_resid_post", ".mlp": "hook_mlp_out"}.get(match[2], "hook_attn_out")
    return f"blocks.{match[1]}.{part}"


def component_of_hook(name: str) -> str:
    """The mlxterp component a SAELens hook name reads (``blocks.8.hook_resid_post`` is
    ``layers.8``; ``blocks.8.hook_resid_pre`` the output of layer 7); other names as given."""
    match = _HOOK.match(name)
    if not match:
        return name
    layer, hook = int(match[1]), match[2]
    if hook == "hook_resid_pre":
        if layer == 0:
            return "model.embed_tokens"
        return f"layers.{layer - 1}"
    return f"layers.{layer}{_HOOKS[hook]}"


def save_saelens(sae: SAE, folder: str | Path, context_size: int = 128) -> Path:
    """Write ``sae`` into ``folder`` (created if needed) as SAELens writes an SAE:
    ``sae_weights.safetensors`` (float32, the input scale folded in) and ``cfg.json``.
    A ``batchtopk`` SAE is written as SAELens writes one, ``jumprelu`` with its inference
    threshold for every feature (``topk`` if it has none).
    ``context_size`` records the prompt length it is meant for.  mlxterp's own settings
    ride along in ``metadata.mlxterp``, so :func:`load_saelens` gives them back."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    s = sae.scale
    weights = {
        "W_enc": sae.W_enc * s,
        "b_enc": sae.b_enc,
        "W_dec": sae.W_dec / s,
        "b_dec": sae.b_dec / s,
    }
    topk = sae.config.kind != "relu"
    jump = sae.config.kind == "batchtopk" and sae.threshold > 0  # written as JumpReLU
    hook = hook_name(sae.component)
    layer = sae.layer if sae.layer is not None else -1
    activation = {"k": sae.config.k} if topk else {}
    metadata = {
        "model_name": sae.model_ref,
        "hook_name": hook,
        "hook_head_index": None,
        "prepend_bos": True,
        "context_size": context_size,
        "sae_lens_version": SAELENS_VERSION,
        "sae_lens_training_version": SAELENS_VERSION,
        "mlxterp": {
            "component": sae.component,
            "layer": sae.layer,
            "scale": s,
            "config": asdict(sae.config),
            "training_stats": sae.training_stats,
        },
    }
    cfg: dict[str, Any] = {
        "architecture": "jumprelu" if jump else "topk" if topk else "standard",
        "d_in": sae.d_model,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **({"k": sae.config.k, "rescale_acts_by_decoder_norm": False} if topk and not jump else {}),
        "metadata": metadata,
        # pre-6 keys (SAELens 6 ignores them)
        "model_name": sae.model_ref,
        "hook_name": hook,
        "hook_layer": layer,
        "hook_head_index": None,
        "activation_fn_str": "topk" if topk and not jump else "relu",
        "activation_fn_kwargs": {} if jump else activation,
        "finetuning_scaling_factor": False,
        "context_size": context_size,
        "prepend_bos": True,
        "dataset_path": "",
        "dataset_trust_remote_code": False,
        "sae_lens_training_version": SAELENS_VERSION,
        "model_from_pretrained_kwargs": {},
        "seqpos_slice": [None],
        "neuronpedia_id": None,
    }
    if jump:
        weights["threshold"] = mx.full((sae.d_sae,), sae.threshold)
    mx.eval(weights)
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: mx.save_safetensors(str(tmp), weights))
    text = json.dumps(cfg, indent=2) + "\n"
    atomic_write(folder / CONFIG_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return folder


def is_saelens_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a SAELens ``cfg.json`` and ``sae_weights.safetensors``."""
    folder = Path(folder)
    return (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def _read(folder: Path) -> tuple[dict[str, Any], dict[str, mx.array]]:
    try:
        cfg = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        # a safetensors file loads as {name: array}
        weights = cast(dict[str, mx.array], mx.load(str(folder / WEIGHTS_FILE)))
    except (OSError, ValueError, RuntimeError) as err:
        raise InputError(f"{str(folder)!r} holds no readable SAELens SAE: {err!r}") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{str(folder)!r}: {CONFIG_FILE} is not a JSON object")
    return cfg, weights


def _settings(cfg: dict[str, Any], where: str) -> tuple[str, int | None, bool, bool]:
    """``(kind, k, apply_b_dec_to_input, rescale_acts_by_decoder_norm)`` of a SAELens 6 or
    pre-6 config, or the reason mlxterp cannot compute it."""
    arch = cfg.get("architecture", "standard")
    fn = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    kwargs = cfg.get("activation_fn_kwargs") or {}
    k = cfg.get("k", kwargs.get("k") if isinstance(kwargs, dict) else None)
    if arch == "standard" and fn == "topk" and k is not None:  # pre-6 top-k
        arch = "topk"
    if arch not in ("standard", "topk", "jumprelu") or (
        arch == "standard" and fn not in ("relu", None)
    ):
        raise InputError(
            f"{where}: SAELens architecture {arch!r} (activation {fn!r}) is not one mlxterp "
            "computes; it reads 'standard' (ReLU), 'topk' and 'jumprelu' with one threshold"
        )
    norm = cfg.get("normalize_activations", "none")
    if norm in (None, False, True):  # pre-6 flag: True meant the scale folded in at the end
        norm = "none" if not norm else "expected_average_only_in"
    if norm not in ("none", "expected_average_only_in"):
        raise InputError(
            f"{where}: normalize_activations={norm!r} rescales each token; mlxterp's SAEs "
            "use one constant input scale ('none' or 'expected_average_only_in')"
        )
    if cfg.get("reshape_activations", "none") != "none":
        raise InputError(
            f"{where}: reshape_activations={cfg['reshape_activations']!r} is unsupported"
        )
    if arch == "topk" and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise InputError(f"{where}: a topk SAE needs a positive integer k; got {k!r}")
    return (
        {"topk": "topk", "jumprelu": "batchtopk"}.get(arch, "relu"),
        k if arch == "topk" else None,
        bool(cfg.get("apply_b_dec_to_input", True)),
        bool(cfg.get("rescale_acts_by_decoder_norm", False)) and arch == "topk",
    )


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def load_saelens(
    folder: str | Path, model: InterpretableModel | None = None, component: str | None = None
) -> SAE:
    """Read an SAE folder SAELens wrote (or :func:`save_saelens`).  Its component is
    ``component`` when given, else the one mlxterp recorded, else the one its ``hook_name``
    names (``blocks.L.hook_resid_post`` is ``layers.L``, ``hook_mlp_out`` the MLP,
    ``hook_attn_out`` attention, ``hook_resid_pre`` the previous layer's output; another
    name is kept as it is); with ``model``, :func:`~mlxterp.sae.check_against` it (the
    component exists and has the SAE's width)."""
    folder = Path(folder)
    where = repr(str(folder))
    cfg, weights = _read(folder)
    meta: dict[str, Any] = cfg["metadata"] if isinstance(cfg.get("metadata"), dict) else {}
    ours: dict[str, Any] = meta["mlxterp"] if isinstance(meta.get("mlxterp"), dict) else {}
    kind, k, b_dec_in, rescale = _settings(cfg, where)
    try:
        d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{where}: {CONFIG_FILE} lacks integer d_in and d_sae") from None
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    for weight, shape in shapes.items():
        if weight not in weights or tuple(weights[weight].shape) != shape:
            got = tuple(weights[weight].shape) if weight in weights else "missing"
            raise InputError(f"{where}: weight {weight} should be shaped {shape}; it is {got}")
    scaling = weights.get("scaling_factor")
    if scaling is not None and not mx.allclose(scaling, mx.ones_like(scaling)).item():
        raise InputError(f"{where}: a fine-tuning scaling_factor is not supported")
    threshold = 0.0
    if kind == "batchtopk":  # jumprelu: one threshold for every feature
        found = weights.get("threshold")
        if found is None or tuple(found.shape) != (d_sae,):
            raise InputError(f"{where}: a jumprelu SAE needs a threshold weight of ({d_sae},)")
        threshold = cast(float, found[0].item())
        if not mx.all(found == found[0]).item():
            raise InputError(
                f"{where}: its JumpReLU thresholds differ from feature to feature; mlxterp "
                "computes one threshold for all (what a BatchTopK SAE writes)"
            )
    w_enc, b_enc, w_dec, b_dec = (weights[n].astype(mx.float32) for n in shapes)
    if rescale:  # hidden_pre * |W_dec| before top-k, acts / |W_dec| before decoding
        norms = mx.linalg.norm(w_dec, axis=-1)
        w_enc, b_enc, w_dec = w_enc * norms, b_enc * norms, w_dec / norms[:, None]
    if not b_dec_in:  # the encoder does not subtract b_dec: fold that into b_enc
        b_enc = b_enc + b_dec @ w_enc
    known = {f.name for f in fields(SAEConfig)}
    base = {key: v for key, v in (ours.get("config") or {}).items() if key in known}
    settings = {**base, "expansion_factor": max(d_sae // d_in, 1)}  # d_sae is given below
    if not (kind == "topk" and base.get("kind") == "batchtopk"):  # batchtopk without threshold
        settings["kind"] = kind
    if k is not None:
        settings["k"] = k
    try:
        config = SAEConfig(**settings)
    except TypeError as err:
        raise InputError(f"{where}: {err}") from None
    hook = str(meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point") or "")
    name: str | None = component or ours.get("component") or component_of_hook(hook) or None
    part = _LAYER_PART.match(name or "")
    layer = int(part[1]) if part else ours.get("layer", cfg.get("hook_layer"))
    model_ref = str(meta.get("model_name") or cfg.get("model_name") or "custom")
    sae = SAE(d_in, config, name, layer if _is_index(layer) else None, model_ref, d_sae)
    scale = ours.get("scale", 1.0)
    if isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0:
        sae.scale = float(scale)  # unfold what save_saelens folded in
        w_enc, w_dec, b_dec = w_enc / sae.scale, w_dec * sae.scale, b_dec * sae.scale
    sae.update({"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec})
    sae.threshold = threshold
    sae.set_training_stats(ours.get("training_stats") or {})
    if model is not None:
        check_against(sae, model)
    return sae
