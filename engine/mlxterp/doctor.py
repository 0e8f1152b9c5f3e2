"""``mlxterp doctor MODEL``: what a model name loads, from where, and built how.

``diagnose(name)`` loads the model as ``InterpretableModel(name)`` would and returns a
``DoctorReport``: the source and path, the architecture and its key config values (read
from the built model's arguments, so they are the values in use), what
``mlxterp.model_config`` changed in the config and which numerics-changing keys the
architecture ignores, the parameters' dtypes, the quantization, the parameter count and,
when ``transformers`` and ``torch`` are installed, how far the final logits on a short
prompt are from transformers' own on the same folder.  ``report.format_text()`` renders it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from . import loading
from .errors import ConfigWarning, MlxterpError

PARITY_PROMPT = "The capital of France is"

# Report label -> the config keys that hold it, first present wins (architectures differ).
CONFIG_VALUES: dict[str, tuple[str, ...]] = {
    "layers": loading.LAYER_KEYS,
    "hidden size": loading.HIDDEN_KEYS,
    "attention heads": ("num_attention_heads", "n_head"),
    "key/value heads": ("num_key_value_heads",),
    "head dim": ("head_dim",),
    "vocabulary": ("vocab_size",),
    "rope theta": ("rope_theta", "rotary_emb_base"),
    "rope scaling": ("rope_scaling",),
    "norm eps": (
        "rms_norm_eps",
        "layer_norm_eps",
        "layer_norm_epsilon",
        "norm_eps",
        "norm_epsilon",
    ),
}


@dataclass(frozen=True)
class Quantized:
    """The modules quantized one way: ``kinds`` counts them by their last name part."""

    bits: int
    group_size: int
    mode: str
    kinds: dict[str, int]

    def __str__(self) -> str:
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(self.kinds.items()))
        count = sum(self.kinds.values())
        modules = f"{count} module" + ("" if count == 1 else "s")
        return f"{self.bits}-bit {self.mode}, group size {self.group_size}: {modules} ({kinds})"


@dataclass(frozen=True)
class Parity:
    """The final logits against transformers: ``status`` is ``"compared"``, ``"skipped"``
    or ``"failed"``, ``detail`` the reason or the prompt."""

    status: str
    detail: str
    max_abs_diff: float | None = None
    top1_agreement: float | None = None  # share of positions whose argmax agrees

    def __str__(self) -> str:
        if self.status != "compared":
            return f"{self.status}: {self.detail}"
        return (
            f"max |mlx - transformers| = {self.max_abs_diff:.3g}, top-1 agrees at "
            f"{self.top1_agreement:.0%} of positions ({self.detail})"
        )


@dataclass(frozen=True)
class DoctorReport:
    """Everything ``mlxterp doctor`` says about one model (see the module docstring)."""

    name: str
    source: str
    path: str
    file_format: str  # "GGUF file" or "safetensors folder"
    model_type: str | None
    values: dict[str, Any]  # CONFIG_VALUES label -> value in use
    rope_bases: tuple[float, ...]  # the base of each distinct nn.RoPE built (empty: none)
    tied_embeddings: bool
    changes: tuple[str, ...]
    ignored: tuple[str, ...]
    dtypes: dict[str, int]  # floating dtype -> number of values
    quantized: tuple[Quantized, ...]
    parameters: int
    parity: Parity = field(default_factory=lambda: Parity("skipped", "not asked for"))

    def format_text(self) -> str:
        """The report as plain text lines."""
        lines = [
            f"model:        {self.name}",
            f"source:       {self.source} ({self.file_format})",
            f"path:         {self.path}",
            f"architecture: {self.model_type or 'unknown'} (mlx_lm.models)",
        ]
        lines += [f"  {label + ':':17}{value!r}" for label, value in self.values.items()]
        bases = ", ".join(f"{b:g}" for b in self.rope_bases) or "none (precomputed frequencies)"
        lines.append(f"  {'built RoPE base:':17}{bases}")
        lines.append(f"  {'tied embeddings:':17}{'yes' if self.tied_embeddings else 'no'}")
        lines.append("config normalized:" + ("" if self.changes else " nothing to change"))
        lines += [f"  {c}" for c in self.changes]
        lines.append("ignored keys:" + ("" if self.ignored else " none"))
        lines += [f"  {k}" for k in self.ignored]
        dtypes = ", ".join(f"{d} ({n:,} values)" for d, n in self.dtypes.items()) or "none"
        lines.append(f"dtype:        {dtypes}")
        lines.append("quantized:" + ("" if self.quantized else "    no"))
        lines += [f"  {q}" for q in self.quantized]
        lines.append(f"parameters:   {self.parameters:,}")
        lines.append(f"parity:       {self.parity}")
        return "\n".join(lines)


def diagnose(name: str, *, parity: bool = True, prompt: str = PARITY_PROMPT) -> DoctorReport:
    """Load ``name`` and describe it; ``ModelLoadError`` when it does not load.

    ``parity=False`` skips the comparison with transformers.  The ``ConfigWarning`` the
    load would print is reported in ``ignored`` instead.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        loaded = loading.load_model(name)
    module, norm = loaded.module, loaded.normalization
    quantized = _quantized(module)
    return DoctorReport(
        name=name,
        source=loaded.source,
        path=str(loaded.path.resolve()),
        file_format="GGUF file" if loaded.is_gguf else "safetensors folder",
        model_type=norm.model_type,
        values=_values(module, norm.config),
        rope_bases=_rope_bases(module),
        tied_embeddings=not any(n.endswith("lm_head") for n, _ in module.named_modules()),
        changes=norm.changes,
        ignored=tuple(str(k) for k in norm.ignored),
        dtypes=_dtypes(module),
        quantized=quantized,
        parameters=_parameters(module),
        parity=_parity(loaded, prompt, bool(quantized))
        if parity
        else Parity("skipped", "--no-parity"),
    )


def _text_args(module: Any, config: dict[str, Any]) -> dict[str, Any]:
    """The text model's arguments as built (a wrapper's inner model), else the config."""
    for candidate in (getattr(module, "language_model", None), module):
        args = getattr(candidate, "args", None)
        if args is not None and hasattr(args, "__dict__") and not hasattr(args, "text_config"):
            return dict(vars(args))
    text = config.get("text_config")
    return {**config, **text} if isinstance(text, dict) else config


def _values(module: Any, config: dict[str, Any]) -> dict[str, Any]:
    args = _text_args(module, config)
    values = {
        label: next((args[k] for k in keys if args.get(k) is not None), None)
        for label, keys in CONFIG_VALUES.items()
    }
    if values["head dim"] is None:  # architectures that derive it keep it on the attention
        values["head dim"] = next(
            (
                m.head_dim
                for _, m in module.named_modules()
                if isinstance(getattr(m, "head_dim", None), int)
            ),
            None,
        )
    return values


def _rope_bases(module: Any) -> tuple[float, ...]:
    import mlx.nn as nn

    bases = {float(m.base) for _, m in module.named_modules() if isinstance(m, nn.RoPE)}
    return tuple(sorted(bases))


def _dtypes(module: Any) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for value in dict(tree_flatten(module.parameters())).values():
        if isinstance(value, mx.array) and mx.issubdtype(value.dtype, mx.floating):
            counts[str(value.dtype).removeprefix("mlx.core.")] += value.size
    return dict(counts.most_common())


def _quantized(module: Any) -> tuple[Quantized, ...]:
    groups: dict[tuple[int, int, str], Counter[str]] = {}
    for name, m in module.named_modules():
        bits, size = getattr(m, "bits", None), getattr(m, "group_size", None)
        if isinstance(bits, int) and isinstance(size, int):
            key = (bits, size, str(getattr(m, "mode", "affine")))
            groups.setdefault(key, Counter())[name.rsplit(".", 1)[-1]] += 1
    return tuple(Quantized(b, g, mode, dict(k)) for (b, g, mode), k in sorted(groups.items()))


def _parameters(module: Any) -> int:
    from mlx_lm.utils import get_total_parameters

    return int(get_total_parameters(module))  # type: ignore[no-untyped-call]


def _parity(loaded: loading.LoadedModel, prompt: str, quantized: bool) -> Parity:
    """Final logits on ``prompt`` against transformers on the same folder."""
    if loaded.is_gguf:
        return Parity("skipped", "a GGUF file: compare through the model's safetensors folder")
    if quantized:
        return Parity("skipped", "weights quantized by mlx-lm, which transformers cannot read")
    try:
        torch = importlib.import_module("torch")
        from transformers import AutoModelForCausalLM
    except ImportError as err:
        missing = err.name or "transformers"
        return Parity("skipped", f"{missing} is not installed (pip install transformers torch)")
    ids = list(loaded.tokenizer.encode(prompt))
    ours = np.asarray(loaded.module(mx.array([ids])).astype(mx.float32))
    try:
        hf = AutoModelForCausalLM.from_pretrained(
            str(loaded.path), trust_remote_code=False, local_files_only=True, dtype=torch.float32
        )
        hf.eval()
        with torch.no_grad():
            theirs = hf(torch.tensor([ids])).logits.float().numpy()
    except Exception as err:  # transformers raises many kinds; report it, do not stop
        return Parity("failed", f"transformers could not run the folder: {_first_line(err)}")
    if theirs.shape != ours.shape:
        return Parity(
            "failed", f"logit shapes differ: mlx {ours.shape}, transformers {theirs.shape}"
        )
    agree = float(np.mean(ours.argmax(-1) == theirs.argmax(-1)))
    diff = float(np.max(np.abs(ours - theirs)))
    return Parity("compared", f"{len(ids)} tokens of {prompt!r}", diff, agree)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def main(argv: list[str]) -> int:
    """``mlxterp doctor MODEL [--no-parity]``: 0 when it loads, 2 (one line) when it does not."""
    parser = argparse.ArgumentParser(
        prog="mlxterp doctor",
        description="Load a model and say what was loaded, from where, with which config "
        "values, dtype and quantization, and how its logits compare with transformers'.",
    )
    parser.add_argument("model", help='model name, folder, GGUF file or "demo"')
    parser.add_argument(
        "--no-parity", action="store_true", help="skip the logit comparison with transformers"
    )
    parser.add_argument("--prompt", default=PARITY_PROMPT, help="prompt of the logit comparison")
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error (2); argparse printed why
        return int(stop.code or 0)
    try:
        report = diagnose(args.model, parity=not args.no_parity, prompt=args.prompt)
    except MlxterpError as err:
        return _fail(_first_line(err))
    except Exception as err:  # a doctor never answers with a traceback
        return _fail(f"could not load {args.model!r}: {type(err).__name__}: {_first_line(err)}")
    print(report.format_text(), flush=True)
    return 0


def _fail(message: str) -> int:
    print(f"mlxterp doctor: error: {message}", file=sys.stderr)
    return 2
