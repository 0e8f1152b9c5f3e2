"""The tuned lens (Belrose et al., "Eliciting Latent Predictions with the Tuned Lens"):
the logit lens with a learned affine *translator* per layer.

Each layer's residual ``h`` is mapped to ``W_l h + b_l`` before the model's own read-out
(final norm + unembedding, :mod:`mlxterp.unembed`).  Translators start as the identity with
zero bias, so an untrained tuned lens *is* the logit lens, and are trained (the model's
weights frozen) to minimise ``KL(final distribution || translated layer's distribution)``
over every token of streamed text.  The last layer keeps the identity: its lens is the
model's prediction.

* :func:`train_tuned_lens` — train one on an iterable of texts or token ids (seeded: the
  same text, settings and seed give the same weights).
* :class:`TunedLens` — the translators; ``save(path)`` / :func:`load_tuned_lens`: a small
  TOML (format, model name and weight fingerprint, layers, hidden size, training settings)
  beside a safetensors sidecar of the weights named by their digest.
* :func:`tuned_lens` — read a prompt through it, as ``mlxterp.lens.lens`` does: a
  ``LensResult`` (``heatmap()``, ``to_summary()``).
* :func:`lens_kl` — per-layer KL to the final distribution of the logit lens and of a tuned
  lens on held-out text (:class:`LensKL`, ``chart()``, ``table()``).
"""

from __future__ import annotations

import hashlib
import math
import random
import sys
import tomllib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast, overload

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import tomli_w
from tqdm import tqdm

from . import plotting
from .activations import Layers, is_int, layer_indices
from .errors import InputError
from .files import atomic_write
from .lens import LensResult, PromptList, Readout, read_lens, residuals

if TYPE_CHECKING:
    from .interventions import InterventionFn
    from .model import InterpretableModel

FORMAT = 1
KIND = "mlxterp tuned lens"
FINGERPRINT_SAMPLES = 4096  # values read from each weight tensor for the fingerprint
OPTIMIZERS = ("adam", "sgd")
SHUFFLE_WINDOWS = 256  # training windows held back to shuffle the stream
LOGITS_PER_GROUP = 2**25  # logits of the layers trained together (memory bound of a step)


def model_fingerprint(model: InterpretableModel) -> str:
    """16 hex digits identifying the model's weights: a sha256 over every parameter's name,
    dtype, shape and an evenly strided sample of its values (cheap on large models, exact
    across devices)."""
    digest = hashlib.sha256()
    for name, value in sorted(model.parameters().items()):
        flat = value.reshape(-1)
        sample = flat[:: max(1, flat.size // FINGERPRINT_SAMPLES)][:FINGERPRINT_SAMPLES]
        if mx.issubdtype(sample.dtype, mx.floating):
            sample = sample.astype(mx.float32)  # bfloat16 has no numpy dtype; exact widening
        digest.update(f"{name}\0{value.dtype}{tuple(value.shape)}\0".encode())
        digest.update(np.asarray(sample).tobytes())
    return digest.hexdigest()[:16]


class TunedLens:
    """Affine translators of layers ``0 .. num_layers - 2``: ``weight (n, hidden, hidden)``
    and ``bias (n, hidden)``, float32 (the last layer reads through the identity).

    ``model_name``/``fingerprint`` say which model it belongs to; ``training`` records how
    it was trained (plain values, saved with it)."""

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        model_name: str = "",
        fingerprint: str = "",
    ):
        if num_layers < 2:
            raise InputError(f"a tuned lens needs a model of 2 layers or more; got {num_layers}")
        n = num_layers - 1
        self.weight = mx.repeat(mx.eye(hidden_size)[None], n, axis=0)
        self.bias = mx.zeros((n, hidden_size))
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.model_name = model_name
        self.fingerprint = fingerprint
        self.training: dict[str, Any] = {}

    @classmethod
    def identity(cls, model: InterpretableModel) -> TunedLens:
        """An untrained lens for ``model``: every translator the identity (= the logit lens)."""
        hidden = model.hidden_size or _hidden_width(model)
        return cls(model.num_layers, hidden, model.name or "", model_fingerprint(model))

    def check(self, model: InterpretableModel) -> None:
        """Refuse a model this lens was not trained on: another layer count, hidden size or
        weight fingerprint."""
        hidden = model.hidden_size or _hidden_width(model)
        shape = (model.num_layers, hidden)
        if shape != (self.num_layers, self.hidden_size):
            raise InputError(
                f"this tuned lens is for a model of {self.num_layers} layers x "
                f"{self.hidden_size} hidden ({self.model_name or 'unnamed'}); this model has "
                f"{shape[0]} x {shape[1]}"
            )
        current = model_fingerprint(model)
        if self.fingerprint and current != self.fingerprint:
            raise InputError(
                f"this tuned lens was trained on another model ({self.model_name or 'unnamed'}, "
                f"weights fingerprint {self.fingerprint}); this model's is {current} "
                f"({model.name or 'unnamed'})"
            )

    def translate(self, layers: list[int], hidden: mx.array) -> mx.array:
        """Residuals of ``layers`` ``(n_layers, cells, hidden)`` through their translators,
        in float32 and back to ``hidden``'s dtype (the identity returns them bit for bit)."""
        last = self.num_layers - 1
        if any(not 0 <= i <= last for i in layers):
            raise InputError(f"layers must be in 0..{last}; got {layers}")
        picks = mx.array(layers)
        weight = mx.concatenate([self.weight, mx.eye(self.hidden_size)[None]])[picks]
        bias = mx.concatenate([self.bias, mx.zeros((1, self.hidden_size))])[picks]
        out = hidden.astype(mx.float32) @ weight.transpose(0, 2, 1) + bias[:, None, :]
        return out.astype(hidden.dtype)

    def readout(self, model: InterpretableModel) -> Readout:
        """The lens's read-out for ``mlxterp.lens.read_lens``: translate, then the model's."""
        unembed = model.unembedder
        return lambda layers, hidden: unembed(self.translate(layers, hidden))

    @property
    def digest(self) -> str:
        """12 hex digits of the sha256 of the weights' exact bytes."""
        digest = hashlib.sha256()
        for name in ("weight", "bias"):
            digest.update(name.encode() + b"\0")
            digest.update(np.asarray(getattr(self, name)).tobytes())
        return digest.hexdigest()[:12]

    def save(self, path: str | Path) -> Path:
        """Write the TOML at ``path`` and the weights beside it as
        ``<stem>.<digest>.safetensors``; see :func:`save_tuned_lens`."""
        return save_tuned_lens(self, path)


def _hidden_width(model: InterpretableModel) -> int:
    """Width of the residual stream, from a one-token forward (models without a config)."""
    bos = getattr(model.tokenizer, "bos_token_id", None)
    res = residuals(model, [[bos if isinstance(bos, int) else 0]], [0])
    return int(res.hidden.shape[-1])


# ---------------------------------------------------------------------- files


def save_tuned_lens(lens: TunedLens, path: str | Path) -> Path:
    """Save ``lens``: the TOML at ``path`` (format, model identity, shape, training
    settings) and its weights as a safetensors sidecar ``<stem>.<digest>.safetensors``
    beside it.  The sidecar is written first under its new name and the TOML replaces the
    old one atomically, so an existing lens file is never left half-written or pointing at
    missing weights; the previous sidecar is removed once nothing names it.  Returns the
    TOML's path."""
    path = Path(path)
    if path.suffix != ".toml":
        raise InputError(f"a tuned lens is saved as a .toml file (weights beside it); got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    old = _sidecar_of(path) if path.exists() else None
    sidecar = path.with_name(f"{path.stem}.{lens.digest}.safetensors")
    arrays = {"weight": lens.weight, "bias": lens.bias}
    atomic_write(sidecar, lambda tmp: mx.save_safetensors(str(tmp), arrays))
    document = {
        "format": FORMAT,
        "kind": KIND,
        "weights": sidecar.name,
        "digest": lens.digest,
        "model": {
            "name": lens.model_name,
            "fingerprint": lens.fingerprint,
            "num_layers": lens.num_layers,
            "hidden_size": lens.hidden_size,
        },
        "training": lens.training,
    }
    try:
        text = tomli_w.dumps(document)
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    except BaseException:
        if old != sidecar.name:  # nothing names the new sidecar: leave the folder as it was
            sidecar.unlink(missing_ok=True)
        raise
    if old is not None and old != sidecar.name:
        (path.parent / old).unlink(missing_ok=True)
    return path


def _sidecar_of(path: Path) -> str | None:
    """The sidecar an existing lens TOML names (None when it names none readable)."""
    try:
        name = tomllib.loads(path.read_text(encoding="utf-8")).get("weights")
    except (OSError, ValueError):
        return None
    return name if isinstance(name, str) and "/" not in name and "\\" not in name else None


def load_tuned_lens(path: str | Path, model: InterpretableModel | None = None) -> TunedLens:
    """Read a lens written by :func:`save_tuned_lens` (``InputError`` for a missing,
    truncated, edited or foreign file); with ``model``, refuse it unless it was trained on
    that model (:meth:`TunedLens.check`)."""
    path = Path(path)

    def bad(why: str) -> InputError:
        return InputError(f"{str(path)!r} is not a readable tuned lens: {why}")

    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise bad(str(err)) from None
    if document.get("kind") != KIND:
        raise bad("it is not a tuned lens file (no kind = 'mlxterp tuned lens')")
    if document.get("format") != FORMAT:
        raise bad(f"format {document.get('format')!r}; this version reads format {FORMAT}")
    meta, name = document.get("model"), _sidecar_of(path)
    if not isinstance(meta, dict) or name is None:
        raise bad("it names no [model] table or no weights file")
    try:
        num_layers, hidden = int(meta["num_layers"]), int(meta["hidden_size"])
        lens = TunedLens(num_layers, hidden, str(meta["name"]), str(meta["fingerprint"]))
        weights = cast(dict[str, mx.array], mx.load(str(path.parent / name)))
    except (KeyError, TypeError, ValueError, OSError, RuntimeError) as err:
        raise bad(f"its model table or weights file cannot be read ({err!r})") from None
    for key in ("weight", "bias"):
        expected = getattr(lens, key).shape
        if key not in weights or weights[key].shape != expected:
            raise bad(f"weight {key!r} is missing or not shaped {tuple(expected)}")
    lens.weight, lens.bias = (weights[k].astype(mx.float32) for k in ("weight", "bias"))
    if lens.digest != document.get("digest"):
        raise bad(f"the weights in {name} do not match the digest the file records")
    lens.training = dict(document.get("training") or {})
    if model is not None:
        lens.check(model)
    return lens


def _lens_of(lens: TunedLens | str | Path, model: InterpretableModel) -> TunedLens:
    if isinstance(lens, TunedLens):
        lens.check(model)
        return lens
    if isinstance(lens, (str, Path)):
        return load_tuned_lens(lens, model)
    raise InputError(f"lens must be a TunedLens or the path of a saved one; got {lens!r}")


# ---------------------------------------------------------------------- reading


@overload
def tuned_lens(
    model: InterpretableModel,
    inputs: PromptList,
    lens: TunedLens | str | Path,
    layers: Layers = None,
    top_k: int = 5,
    target: int | str | None = None,
    interventions: dict[str, InterventionFn] | None = None,
) -> list[LensResult]: ...
@overload
def tuned_lens(
    model: InterpretableModel,
    inputs: Any,
    lens: TunedLens | str | Path,
    layers: Layers = None,
    top_k: int = 5,
    target: int | str | None = None,
    interventions: dict[str, InterventionFn] | None = None,
) -> LensResult: ...
def tuned_lens(
    model: InterpretableModel,
    inputs: Any,
    lens: TunedLens | str | Path,
    layers: Layers = None,
    top_k: int = 5,
    target: int | str | None = None,
    interventions: dict[str, InterventionFn] | None = None,
) -> LensResult | list[LensResult]:
    """The tuned lens of a prompt (or of a list of prompts: one result each), as
    ``mlxterp.lens.lens`` reads the logit lens: per layer and position the top-``k`` tokens
    and probabilities, and ``target``'s probability per layer at the last position.

    ``lens`` is a :class:`TunedLens` or the path of a saved one; either is refused unless
    it was trained on ``model``.  ``interventions`` apply during the forward pass."""
    chosen = _lens_of(lens, model)
    return read_lens(
        model, inputs, chosen.readout(model), layers, top_k, target, interventions, "Tuned lens"
    )


# ---------------------------------------------------------------------- training


def _token_rows(model: InterpretableModel, item: Any) -> list[list[int]]:
    """One item of a training stream as token-id rows: a text (encoded with BOS), a list
    of ids, a list of id lists, or an integer array of one or two dimensions."""
    if isinstance(item, str):
        return [model.encode(item)]
    if isinstance(item, mx.array):
        if not mx.issubdtype(item.dtype, mx.integer) or item.ndim not in (1, 2):
            raise InputError(f"token arrays must be 1-D or 2-D integers; got {item.dtype}")
        rows = item.tolist()
        return cast(list[list[int]], rows if item.ndim == 2 else [rows])
    if isinstance(item, (list, tuple)) and item and all(is_int(t) for t in item):
        return [[int(t) for t in item]]
    if isinstance(item, (list, tuple)) and item and all(isinstance(r, (list, tuple)) for r in item):
        return [row for r in item for row in _token_rows(model, r)]
    raise InputError(
        f"training text must be strings or token ids (lists or integer arrays); got {item!r:.80}"
    )


def _windows(
    model: InterpretableModel, texts: Iterable[Any], length: int, rng: random.Random
) -> Iterator[list[int]]:
    """Windows of ``length`` tokens packed from the stream of ``texts``' tokens (texts
    run on into each other, each starting with its BOS), shuffled by ``rng`` within a
    buffer of ``SHUFFLE_WINDOWS``.  A re-iterable ``texts`` (a list) is read again, pass
    after pass; the stream ends when a pass yields no tokens (a used-up iterator)."""
    buffer: list[list[int]] = []
    pending: list[int] = []
    while True:
        added = 0
        for item in texts:
            for row in _token_rows(model, item):
                pending.extend(row)
                added += len(row)
            while len(pending) >= length:
                buffer.append(pending[:length])
                del pending[:length]
                if len(buffer) >= SHUFFLE_WINDOWS:
                    yield buffer.pop(rng.randrange(len(buffer)))
        if added == 0:
            break
    rng.shuffle(buffer)
    yield from buffer


class _Trainer:
    """One training step: a forward of the frozen model capturing every layer, then the
    loss and gradients of a group of layers at a time (their logits within
    ``LOGITS_PER_GROUP`` numbers), one update."""

    def __init__(self, model: InterpretableModel, lens: TunedLens, optimizer: optim.Optimizer):
        self.model, self.lens, self.optimizer = model, lens, optimizer
        unembed = model.unembedder

        def group_loss(params: dict[str, mx.array], hidden: mx.array, target: mx.array) -> mx.array:
            out = hidden.astype(mx.float32) @ params["weight"].transpose(0, 2, 1)
            out = out + params["bias"][:, None, :]
            logq = nn.log_softmax(unembed(out.astype(hidden.dtype)), axis=-1)
            return _kl(target, logq).mean(axis=-1).sum()

        self.unembed = unembed
        self.grad = mx.value_and_grad(group_loss)

    def step(self, windows: list[list[int]]) -> float:
        """One update on a batch of token windows; returns the loss summed over layers."""
        hidden = residuals(self.model, windows, None).flat()  # (layers, tokens, hidden)
        target = nn.log_softmax(self.unembed(hidden[-1]), axis=-1)
        mx.eval(hidden, target)
        n = self.lens.num_layers - 1
        group = max(1, LOGITS_PER_GROUP // max(1, target.size))
        losses, grads = [], []
        for a in range(0, n, group):
            b = min(n, a + group)
            params = {"weight": self.lens.weight[a:b], "bias": self.lens.bias[a:b]}
            loss, grad = self.grad(params, hidden[a:b], target)
            mx.eval(loss, grad)
            losses.append(loss)
            grads.append(grad)
        stacked = {k: mx.concatenate([g[k] for g in grads]) for k in ("weight", "bias")}
        current = {"weight": self.lens.weight, "bias": self.lens.bias}
        new = self.optimizer.apply_gradients(stacked, current)
        self.lens.weight, self.lens.bias = new["weight"], new["bias"]
        total = mx.stack(losses).sum()
        mx.eval(self.lens.weight, self.lens.bias, self.optimizer.state, total)
        return float(np.asarray(total))


def _kl(logp: mx.array, logq: mx.array) -> mx.array:
    """KL(p || q) per row, from log-probabilities along the last axis."""
    return (mx.exp(logp) * (logp - logq)).sum(axis=-1)


def train_tuned_lens(
    model: InterpretableModel,
    texts: Iterable[Any],
    steps: int = 100,
    batch_size: int = 8,
    max_length: int = 64,
    optimizer: str = "adam",
    learning_rate: float = 2e-3,
    seed: int = 0,
    progress: bool = False,
) -> TunedLens:
    """Train a tuned lens of ``model`` (weights frozen) on ``texts``: an iterable of
    strings or token ids (lists of ints, lists of such lists, 1-D or 2-D integer arrays),
    streamed: tokens are packed into windows of ``max_length`` and ``batch_size`` windows
    make one step's batch, with flat memory however long the stream.

    Every translator starts as the identity (the logit lens) and ``steps`` updates of
    ``optimizer`` (``"adam"``, or ``"sgd"`` with Nesterov momentum 0.9 as in the paper) at
    ``learning_rate`` minimise the sum over layers of the mean KL(final distribution ||
    translated layer's distribution).  A list is read again (reshuffled) when it runs out;
    a one-shot iterator ends training early (``lens.training["steps"]`` says how many
    ran).  ``seed`` drives the shuffling of windows: the same text, settings and seed give
    the same weights.  ``progress`` shows a bar on stderr."""
    for name, value in (("steps", steps), ("batch_size", batch_size), ("max_length", max_length)):
        if not is_int(value) or value < 1:
            raise InputError(f"{name} must be a positive int; got {value!r}")
    if model.max_length is not None and max_length > model.max_length:
        raise InputError(
            f"max_length is {max_length} but the model takes at most {model.max_length} tokens"
        )
    if optimizer not in OPTIMIZERS:
        raise InputError(f"optimizer must be one of {OPTIMIZERS}; got {optimizer!r}")
    if not isinstance(learning_rate, (int, float)) or not 0 < learning_rate < math.inf:
        raise InputError(f"learning_rate must be a positive number; got {learning_rate!r}")
    if not is_int(seed) or seed < 0:
        raise InputError(f"seed must be a non-negative int; got {seed!r}")
    if isinstance(texts, str):
        texts = [texts]
    lens = TunedLens.identity(model)
    schedule = optim.linear_schedule(float(learning_rate), 0.0, steps)  # decays to 0
    opt: optim.Optimizer = (
        optim.Adam(learning_rate=schedule)
        if optimizer == "adam"
        else optim.SGD(learning_rate=schedule, momentum=0.9, nesterov=True)
    )
    trainer = _Trainer(model, lens, opt)
    windows = _windows(model, texts, max_length, random.Random(seed))
    done, loss, tokens = 0, math.nan, 0
    with tqdm(total=steps, disable=not progress, file=sys.stderr, desc="tuned lens") as bar:
        while done < steps:
            batch = [w for _, w in zip(range(batch_size), windows, strict=False)]
            if len(batch) < batch_size:
                break
            loss = trainer.step(batch)
            done, tokens = done + 1, tokens + batch_size * max_length
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
    if done == 0:
        raise InputError(
            f"not enough text for one batch of {batch_size} x {max_length} tokens; give more "
            "text or lower batch_size / max_length"
        )
    lens.training = {
        "steps": done,
        "batch_size": batch_size,
        "max_length": max_length,
        "optimizer": optimizer,
        "learning_rate": float(learning_rate),
        "seed": int(seed),
        "tokens": tokens,
        "final_loss": loss,
    }
    return lens


# ---------------------------------------------------------------------- evaluation


class LensKLSummary(TypedDict, total=False):
    """``LensKL.to_summary()``."""

    layers: list[int]
    tokens: int
    logit_kl: list[float]
    tuned_kl: list[float]


@dataclass
class LensKL:
    """Per layer, the mean KL (nats, over every real token) from the model's final
    distribution to the logit lens's and, when given, the tuned lens's."""

    layers: list[int]
    logit_kl: list[float]
    tuned_kl: list[float] | None = None
    tokens: int = 0

    def to_summary(self) -> LensKLSummary:
        """Plain values: layers, token count and the KL lists."""
        summary: LensKLSummary = {
            "layers": list(self.layers),
            "tokens": self.tokens,
            "logit_kl": list(self.logit_kl),
        }
        if self.tuned_kl is not None:
            summary["tuned_kl"] = list(self.tuned_kl)
        return summary

    def table(self) -> str:
        """One line per layer: the logit lens's KL and the tuned lens's."""
        lines = [f"{'layer':>5}  {'logit lens':>10}  {'tuned lens':>10}"]
        for n, layer in enumerate(self.layers):
            tuned = f"{self.tuned_kl[n]:10.4f}" if self.tuned_kl is not None else f"{'-':>10}"
            lines.append(f"{layer:>5}  {self.logit_kl[n]:10.4f}  {tuned}")
        return "\n".join(lines)

    def chart(self, width: int = 80, height: int = 20, color: bool = True) -> str:
        """The KL per layer of each lens as lines, drawn in the terminal."""
        series: dict[str, Sequence[float]] = {"logit lens": self.logit_kl}
        if self.tuned_kl is not None:
            series["tuned lens"] = self.tuned_kl
        fig = plotting.line_chart(
            series,
            self.layers,
            title=f"KL to the final distribution ({self.tokens} tokens)",
            xlabel="layer",
            ylabel="KL (nats)",
            width=width,
        )
        return plotting.to_text(fig, width, height, color)


def lens_kl(
    model: InterpretableModel,
    texts: Iterable[Any],
    lens: TunedLens | str | Path | None = None,
    layers: Layers = None,
    batch_size: int = 8,
) -> LensKL:
    """Mean KL(final distribution || lens distribution) per layer over every real token of
    ``texts`` (prompts: strings or token-id lists, streamed ``batch_size`` at a time, each
    run as its own sequence), for the logit lens and, with ``lens``, the tuned lens.
    Measure on text the lens was not trained on."""
    if not is_int(batch_size) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int; got {batch_size!r}")
    chosen = None if lens is None else _lens_of(lens, model)
    picked = layer_indices(model, layers)
    unembed = model.unembedder
    final = model.num_layers - 1
    texts = [texts] if isinstance(texts, str) else texts
    sums = {"logit": mx.zeros(len(picked)), "tuned": mx.zeros(len(picked))}
    count, stream = 0, iter(texts)
    while chunk := [t for _, t in zip(range(batch_size), stream, strict=False)]:
        hidden = residuals(model, chunk, None).flat()  # (layers, real tokens, hidden)
        target = nn.log_softmax(unembed(hidden[final]), axis=-1)
        reads = {"logit": hidden[mx.array(picked)]}
        if chosen is not None:
            reads["tuned"] = chosen.translate(picked, reads["logit"])
        for key, read in reads.items():
            kl = [_kl(target, nn.log_softmax(unembed(h), axis=-1)).sum() for h in read]
            sums[key] = sums[key] + mx.stack(kl)  # one layer's logits at a time
        mx.eval(sums)
        count += int(hidden.shape[1])
    if count == 0:
        raise InputError("texts is empty: give at least one held-out text")
    means = {k: [float(v) / count for v in np.asarray(s)] for k, s in sums.items()}
    return LensKL(picked, means["logit"], means["tuned"] if chosen is not None else None, count)
