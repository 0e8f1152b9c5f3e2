"""Training SAEs on activations streamed from texts.

Activations are never all in memory: texts run through the model in small batches, only
real tokens are kept (right-padding dropped), a bounded buffer is shuffled and consumed by
the optimizer, then refilled.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from tqdm import tqdm

from ..errors import InputError
from .config import RESAMPLINGS, SAEConfig
from .io import component_width
from .model import SAE
from .revive import auxk_loss, geometric_median, project_decoder_grad, resample_dead

if TYPE_CHECKING:
    from ..model import InterpretableModel


@dataclass(frozen=True)
class TrainingProgress:
    """Where training is, passed to ``on_progress`` after every optimizer step."""

    epoch: int  # from 0
    epochs: int
    texts_read: int  # of this epoch's texts (read ahead of training by up to one buffer)
    texts: int  # per epoch (0 when training on given activations)
    tokens: int  # activation vectors trained on so far, all epochs
    steps: int
    loss: float
    seconds: float  # since training began

    @property
    def fraction(self) -> float:
        """How much of the whole run is read, 0..1."""
        per_epoch = self.texts_read / self.texts if self.texts else 0.0
        return min(1.0, (self.epoch + per_epoch) / self.epochs)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


ProgressListener = Callable[[TrainingProgress], bool]
"""Hears each :class:`TrainingProgress`; a ``False`` stops training after that step."""


def resolve_component(
    model: InterpretableModel, component: str | None = None, layer: int | None = None
) -> str:
    """Canonical module name: ``component`` is any module name, or with ``layer`` a part of
    that layer (``"mlp"``, ``"attn"``; ``None`` = the layer output)."""
    if layer is not None:
        return model.layer_name(layer, component)
    if component is None:
        raise InputError(
            "name the activations: component='layers.2.mlp', or layer=2 "
            "(with component='mlp' for a part of the layer)"
        )
    return model.resolve(component)


def stream_activations(
    model: InterpretableModel,
    texts: Sequence[Any],
    component: str,
    batch_size: int = 16,
    progress: bool = True,
    skip: int = 0,
) -> Iterator[mx.array]:
    """``(n_tokens, d)`` float32 arrays of ``component``'s output on the real tokens of each
    batch of ``texts`` (strings or token-id lists), one batch at a time, less the first
    ``skip`` tokens of each text."""
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise InputError("texts must be a non-empty list of texts (or of token-id lists)")
    component = model.resolve(component)
    with tqdm(
        total=len(texts),
        disable=not progress,
        file=sys.stderr,
        unit="text",
        desc="sae",
        leave=False,
    ) as bar:
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            trace = model.run(chunk, capture=[component], output=False)
            acts = trace.activations[component]
            if acts.ndim != 3:
                raise InputError(
                    f"{component} outputs shape {tuple(acts.shape)}; an SAE "
                    "needs (batch, seq, hidden) activations"
                )
            lengths = trace.lengths or [acts.shape[1]] * acts.shape[0]
            rows = [acts[b, skip:n] for b, n in enumerate(lengths)]
            out = mx.concatenate(rows).astype(mx.float32)
            mx.eval(out)
            yield out
            bar.update(len(chunk))


@dataclass(frozen=True)
class BatchNorms:
    """What one optimizer step's loss divides by, over its whole batch: set when each
    rank holds a share of the batch (data-parallel training), so that the ranks' losses
    and gradients add up to the whole batch's.  ``threshold`` is batch top-k's (the
    batch's ``k x rows``-th largest activation) and ``spread`` AuxK's (the residual's
    summed squared distance to its mean); None where the kind has none."""

    rows: float
    energy: float  # the scaled inputs' summed squared norms
    threshold: float | None = None
    spread: float | None = None


def _loss(
    sae: SAE, x: mx.array, dead: mx.array, norms: BatchNorms | None = None
) -> tuple[mx.array, mx.array]:
    """Normalised reconstruction error plus the kind's penalty; also the features.  With
    ``norms`` the batch is every rank's rows and ``x`` this rank's share (see
    :class:`BatchNorms`); without, ``x`` is the whole batch."""
    cfg = sae.config
    target = x * sae.scale
    pre = sae.pre_activations(x)
    feats = sae.activate(pre, True, norms.threshold if norms is not None else None)
    recon = feats @ sae.W_dec + sae.b_dec
    errors = mx.sum((recon - target) ** 2, -1)
    if norms is None:
        loss = mx.mean(errors) / mx.mean(mx.sum(target**2, -1))
    else:
        loss = mx.sum(errors) / norms.energy
    if cfg.kind == "relu":
        l1 = mx.sum(feats * mx.linalg.norm(sae.W_dec, axis=-1), -1)
        penalty = mx.mean(l1) if norms is None else mx.sum(l1) / norms.rows
        return loss + cfg.l1_coefficient * penalty, feats
    if cfg.aux_coefficient == 0:
        return loss, feats
    whole = None
    if norms is not None:
        whole = (norms.rows, norms.spread if norms.spread is not None else 0.0)
    aux = auxk_loss(sae, pre, dead, mx.stop_gradient(target - recon), whole)
    return loss + cfg.aux_coefficient * mx.where(mx.any(dead), aux, 0.0), feats


def batch_threshold(sae: SAE, data: mx.array) -> float:
    """BatchTopK's inference threshold (Bussmann et al. 2024): the mean, over ``data``'s
    training batches, of the smallest activation the batch's top ``k x batch`` kept, read
    with the final weights."""
    size = sae.config.batch_size
    lows = []
    for start in range(0, data.shape[0] - size + 1, size) or [0]:
        feats = sae.activate(sae.pre_activations(data[start : start + size]), batch_topk=True)
        lows.append(mx.min(mx.where(feats > 0, feats, mx.inf)))
    found = mx.stack(lows)
    kept = mx.isfinite(found)
    return cast(float, (mx.sum(mx.where(kept, found, 0.0)) / mx.maximum(mx.sum(kept), 1)).item())


def train_sae(
    model: InterpretableModel,
    texts: Sequence[Any],
    component: str | None = None,
    layer: int | None = None,
    config: SAEConfig | None = None,
    progress: bool = True,
    on_progress: ProgressListener | None = None,
) -> SAE:
    """Train an SAE on one component's activations over ``texts`` (streamed, see module doc).

    ``component`` is any module name (``"layers.2"``, ``"model.model.layers.2.attn"``), or
    with ``layer=`` a part of that layer.  The same ``config.seed`` gives the same weights.
    ``on_progress`` hears a :class:`TrainingProgress` after every optimizer step; when it
    returns ``False`` training stops there (the SAE so far comes back, its
    ``training_stats["stopped"]`` set).
    """
    config = config if config is not None else SAEConfig()
    name = resolve_component(model, component, layer)
    sae = SAE(
        component_width(model, name),
        config,
        name,
        model.layer_index_of(name),
        model.name or "custom",
    )
    read = [0]  # texts of this epoch read so far

    def batches() -> Iterator[mx.array]:
        read[0] = 0
        size = config.text_batch_size
        for acts in stream_activations(model, texts, name, size, progress, config.skip_tokens):
            read[0] = min(len(texts), read[0] + size)
            yield acts

    return _fit(sae, batches, on_progress, lambda: (read[0], len(texts)))


def train_sae_on_activations(
    activations: Sequence[mx.array],
    config: SAEConfig | None = None,
    component: str | None = None,
    layer: int | None = None,
    model_ref: str = "custom",
) -> SAE:
    """Train an SAE on activations already computed: a sequence of ``(n, d)`` arrays,
    read in order once per epoch (they stay in memory: the caller's choice, e.g. to train
    several SAEs on one pass of a slow model).  ``component``, ``layer`` and ``model_ref``
    are recorded on the SAE.  Training is :func:`train_sae`'s, batch for batch."""
    if not activations or any(a.ndim != 2 for a in activations):
        raise InputError("activations must be a non-empty sequence of (n, d) arrays")
    config = config if config is not None else SAEConfig()
    sae = SAE(activations[0].shape[-1], config, component, layer, model_ref)
    return _fit(sae, lambda: (a.astype(mx.float32) for a in activations))


class _Stopped(Exception):
    """The progress listener asked training to stop."""


def _fit(
    sae: SAE,
    batches: Callable[[], Iterable[mx.array]],
    on_progress: ProgressListener | None = None,
    texts_read: Callable[[], tuple[int, int]] = lambda: (0, 0),
) -> SAE:
    """Train ``sae`` on ``batches()`` (called once per epoch) as the module doc says,
    telling ``on_progress`` (with ``texts_read()``: this epoch's texts read, of how many)."""
    config = sae.config
    started = time.perf_counter()
    rng = random.Random(config.seed)
    optimizer = optim.Adam(learning_rate=config.learning_rate)
    step = nn.value_and_grad(sae, _loss)
    since_fired = mx.zeros((sae.d_sae,))
    counts = {"tokens": 0, "steps": 0, "resampled": 0}
    loss = mx.array(float("nan"))
    scale_pending = config.normalize_activations
    key = mx.random.key(config.seed + 1)
    resampling = config.kind == "relu" and config.resample_every > 0
    last: list[mx.array] = []  # the last two buffers (batchtopk's threshold reads them)

    def train_on(buffer: list[mx.array], epoch: int) -> None:
        nonlocal since_fired, loss, key
        data = mx.concatenate(buffer)
        if counts["steps"] == 0 and config.b_dec_init == "geometric_median":
            sae.b_dec = geometric_median(data * sae.scale)
        order = list(range(data.shape[0]))
        rng.shuffle(order)
        data = data[mx.array(order)]
        for start in range(0, data.shape[0], config.batch_size):
            x = data[start : start + config.batch_size]
            (loss, feats), grads = step(sae, x, since_fired > config.dead_feature_window)
            optimizer.update(sae, project_decoder_grad(sae, grads))
            sae.normalize_decoder()
            since_fired = mx.where(mx.any(feats > 0, axis=0), 0.0, since_fired + x.shape[0])
            counts["steps"] += 1
            every = config.resample_every
            if (
                resampling
                and counts["steps"] % every == 0
                and counts["steps"] <= RESAMPLINGS * every
            ):
                key, sub = mx.random.split(key)
                dead = since_fired > config.dead_feature_window
                resampled = resample_dead(sae, optimizer.state, data, dead, sub)
                counts["resampled"] += cast(int, mx.sum(resampled).item())
                since_fired = mx.where(resampled, 0.0, since_fired)
            # mlx: Module.parameters is unannotated
            mx.eval(sae.parameters(), optimizer.state, since_fired, loss)  # type: ignore[no-untyped-call]
            counts["tokens"] += x.shape[0]
            if on_progress is not None:
                read, texts = texts_read()
                heard = TrainingProgress(
                    epoch,
                    config.epochs,
                    read,
                    texts,
                    counts["tokens"],
                    counts["steps"],
                    cast(float, loss.item()),
                    time.perf_counter() - started,
                )
                if on_progress(heard) is False:
                    last[:] = [*last[-1:], data]
                    raise _Stopped
        last[:] = [*last[-1:], data]

    stopped = False
    try:
        for epoch in range(config.epochs):
            buffer, held = [], 0
            for acts in batches():
                if scale_pending:  # from the first batch: inputs to mean norm sqrt(d_model)
                    norm = cast(float, mx.mean(mx.linalg.norm(acts, axis=-1)).item())
                    sae.scale = sae.d_model**0.5 / max(norm, 1e-12)
                    scale_pending = False
                buffer.append(acts)
                held += acts.shape[0]
                if held >= config.buffer_size:
                    train_on(buffer, epoch)
                    buffer, held = [], 0
            if buffer:
                train_on(buffer, epoch)
    except _Stopped:
        stopped = True
    if config.kind == "batchtopk" and last:
        sae.threshold = batch_threshold(sae, mx.concatenate(last)[-config.buffer_size :])
    sae.set_training_stats(
        {
            **counts,
            "final_loss": cast(float, loss.item()),
            "dead_fraction": cast(float, mx.mean(since_fired > config.dead_feature_window).item()),
            **({"stopped": True} if stopped else {}),
        }
    )
    return sae
