"""Training one SAE on several ranks at once (data parallelism): every optimizer step's
batch is split over the ranks, each computes the gradient of its share of the whole
batch's loss, the gradients are summed over the ranks, and every rank takes the same
step, so the weights stay identical everywhere.

The loss is :mod:`.train`'s: what it divides by over the batch (its rows, the inputs'
energy, batch top-k's threshold, AuxK's residual spread) is computed over every rank's
rows first (:func:`whole_batch`), so the ranks' losses add up to the one-process loss of
the same batch.  Dead features, the input scale and the decoder bias's geometric median
are found over every rank's rows too.  The exchanges go through ``reducer``, which the
caller supplies (``mlxterp.jobs`` bounds each in time); alone, :class:`Alone`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, cast

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from ..errors import InputError
from .model import SAE
from .revive import project_decoder_grad
from .train import BatchNorms, _loss

WEISZFELD_STEPS = 100  # as train.geometric_median
WEISZFELD_TOLERANCE = 1e-6


class Reducer(Protocol):
    """Sums, maxima and concatenations over the ranks (the identity for one)."""

    def all_sum(self, values: mx.array, what: str) -> mx.array: ...
    def all_max(self, values: mx.array, what: str) -> mx.array: ...
    def all_gather(self, values: mx.array, what: str) -> mx.array: ...


class Alone:
    """The reducer of a single process."""

    def all_sum(self, values: mx.array, what: str) -> mx.array:
        return values

    def all_max(self, values: mx.array, what: str) -> mx.array:
        return values

    def all_gather(self, values: mx.array, what: str) -> mx.array:
        return values


def check_config(sae: SAE) -> None:
    """Refuse what data-parallel training does not do: resampling (it reads one buffer)."""
    if sae.config.resample_every:
        raise InputError("resample_every: resampling is not done in data-parallel training")


def _total(reducer: Reducer, value: mx.array, what: str) -> float:
    return cast(float, reducer.all_sum(value.astype(mx.float32), what).item())


def start(sae: SAE, x: mx.array, reducer: Reducer) -> None:
    """Before the first step, from its batch (every rank's share): the input scale and the
    decoder bias's geometric median, as one-process training sets them."""
    rows = _total(reducer, mx.array(x.shape[0]), "counting rows")
    if sae.config.normalize_activations:
        norms = _total(reducer, mx.sum(mx.linalg.norm(x, axis=-1)), "the input scale")
        sae.scale = sae.d_model**0.5 / max(norms / max(rows, 1.0), 1e-12)
    if sae.config.b_dec_init == "geometric_median":
        sae.b_dec = _geometric_median(x * sae.scale, rows, reducer)


def _geometric_median(points: mx.array, rows: float, reducer: Reducer) -> mx.array:
    """Weiszfeld's iterations over every rank's points (``train.geometric_median``'s)."""
    median = reducer.all_sum(mx.sum(points, axis=0), "the median") / max(rows, 1.0)
    for _ in range(WEISZFELD_STEPS):
        weights = 1.0 / mx.maximum(mx.linalg.norm(points - median, axis=-1), 1e-8)
        summed = reducer.all_sum(
            mx.concatenate([weights @ points, mx.sum(weights)[None]]), "the median"
        )
        moved = summed[:-1] / summed[-1]
        step = cast(float, mx.linalg.norm(moved - median).item())
        median = moved
        if step <= WEISZFELD_TOLERANCE * max(cast(float, mx.linalg.norm(median).item()), 1.0):
            break
    return median


def whole_batch(sae: SAE, x: mx.array, dead: mx.array, reducer: Reducer) -> BatchNorms:
    """What the loss divides by over the whole batch, of which ``x`` is this rank's share."""
    cfg = sae.config
    target = x * sae.scale
    rows = _total(reducer, mx.array(x.shape[0]), "counting rows")
    energy = _total(reducer, mx.sum(target**2), "the batch's energy")
    pre = sae.pre_activations(x)
    threshold = None
    if cfg.kind == "batchtopk":
        keep = min(cfg.k, sae.d_sae) * int(rows)
        flat = mx.sort(nn.relu(pre).reshape(-1))[::-1][:keep]
        padded = mx.concatenate([flat, mx.full((keep - flat.shape[0],), -1.0)])
        everyone = mx.sort(reducer.all_gather(padded, "batch top-k's threshold"))[::-1]
        threshold = cast(float, everyone[keep - 1].item())
    spread = None
    needs_aux = cfg.kind != "relu" and cfg.aux_coefficient > 0 and bool(mx.any(dead).item())
    if needs_aux:
        feats = sae.activate(pre, True, threshold)
        residual = target - (feats @ sae.W_dec + sae.b_dec)
        summed = reducer.all_sum(
            mx.concatenate([mx.sum(residual, axis=0), mx.sum(residual**2)[None]]),
            "the residual's spread",
        )
        spread = cast(float, (summed[-1] - mx.sum(summed[:-1] ** 2) / max(rows, 1.0)).item())
    return BatchNorms(rows, energy, threshold, spread)


class ParallelTrainer:
    """Optimizer steps on this rank's share of each batch (see the module doc)."""

    def __init__(self, sae: SAE, reducer: Reducer) -> None:
        check_config(sae)
        self.sae, self.reducer = sae, reducer
        self.optimizer = optim.Adam(learning_rate=sae.config.learning_rate)
        self.optimizer.init(sae.trainable_parameters())  # type: ignore[no-untyped-call]
        self.since_fired = mx.zeros((sae.d_sae,))
        self.steps = 0
        self.tokens = 0
        self.loss = float("nan")
        self.thresholds: list[float] = []  # batch top-k's, per step
        self._grad: Callable[..., Any] = nn.value_and_grad(sae, _loss)

    def step(self, x: mx.array) -> None:
        """One optimizer step on the batch of which ``x`` ``(rows, d_model)`` is this
        rank's share (possibly no rows)."""
        sae, cfg = self.sae, self.sae.config
        if self.steps == 0:
            start(sae, x, self.reducer)
        dead = self.since_fired > cfg.dead_feature_window
        norms = whole_batch(sae, x, dead, self.reducer)
        (loss, feats), grads = self._grad(sae, x, dead, norms)
        flat = cast(list[tuple[str, mx.array]], tree_flatten(grads))
        summed = self.reducer.all_sum(
            mx.concatenate([g.reshape(-1) for _, g in flat] + [loss[None]]), "the gradients"
        )
        rebuilt, at = [], 0
        for name, g in flat:
            rebuilt.append((name, summed[at : at + g.size].reshape(g.shape)))
            at += g.size
        self.optimizer.update(sae, project_decoder_grad(sae, tree_unflatten(rebuilt)))
        sae.normalize_decoder()
        fired = self.reducer.all_max(
            mx.any(feats > 0, axis=0).astype(mx.float32), "the features that fired"
        )
        self.since_fired = mx.where(fired > 0, 0.0, self.since_fired + norms.rows)
        mx.eval(sae.parameters(), self.optimizer.state, self.since_fired)  # type: ignore[no-untyped-call]
        self.steps += 1
        self.tokens += int(norms.rows)
        self.loss = cast(float, summed[-1].item())
        if norms.threshold is not None:
            self.thresholds.append(norms.threshold)

    def finish(self, last: int = 16) -> SAE:
        """The SAE, its training stats set (batch top-k's inference threshold: the mean of
        the last ``last`` steps' batch thresholds)."""
        sae, cfg = self.sae, self.sae.config
        if cfg.kind == "batchtopk" and self.thresholds:
            kept = self.thresholds[-last:]
            sae.threshold = sum(kept) / len(kept)
        sae.set_training_stats(
            {
                "tokens": self.tokens,
                "steps": self.steps,
                "final_loss": self.loss,
                "dead_fraction": cast(
                    float, mx.mean(self.since_fired > cfg.dead_feature_window).item()
                ),
            }
        )
        return sae

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> tuple[dict[str, mx.array], dict[str, Any]]:
        """Everything a later run needs to go on from here: named arrays, and plain values
        (exact: the input scale is a Python float)."""
        params = cast(list[tuple[str, mx.array]], tree_flatten(self.sae.parameters()))  # type: ignore[no-untyped-call]
        state = cast(list[tuple[str, Any]], tree_flatten(self.optimizer.state))
        arrays = {f"sae.{k}": v for k, v in params}
        arrays |= {f"optimizer.{k}": mx.array(v) for k, v in state}
        arrays["since_fired"] = self.since_fired
        values = {"steps": self.steps, "tokens": self.tokens, "scale": self.sae.scale}
        return arrays, {**values, "loss": self.loss, "thresholds": self.thresholds}

    def restore(self, arrays: dict[str, mx.array], values: dict[str, Any]) -> None:
        """Go on from what :meth:`state` gave."""
        params = [(k.removeprefix("sae."), v) for k, v in arrays.items() if k.startswith("sae.")]
        self.sae.update(tree_unflatten(params))
        self.optimizer.state = tree_unflatten(
            [
                (k.removeprefix("optimizer."), v)
                for k, v in arrays.items()
                if k.startswith("optimizer.")
            ]
        )
        self.since_fired = arrays["since_fired"]
        self.thresholds = list(values["thresholds"])
        self.steps, self.tokens, self.loss = values["steps"], values["tokens"], values["loss"]
        self.sae.scale = values["scale"]
        mx.eval(self.sae.parameters(), self.optimizer.state)  # type: ignore[no-untyped-call]
