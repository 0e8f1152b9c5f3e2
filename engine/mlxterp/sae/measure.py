"""How well an SAE reconstructs and how sparse it is, on given or held-out activations.

Keys (documented in docs/sae.md): ``l0`` (mean active features per token),
``l1_magnitude`` (mean summed feature activation per token), ``mse`` (mean squared error
per element), ``explained_variance`` (1 - residual variance / variance) and
``dead_fraction`` (features that never fired on these activations).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import mlx.core as mx

from ..errors import InputError
from .model import SAE
from .train import stream_activations

if TYPE_CHECKING:
    from ..model import InterpretableModel


class _Totals:
    """Running sums over batches of activations; variances are merged batch by batch
    (Chan et al.), so streamed and all-at-once measurements agree."""

    def __init__(self, sae: SAE):
        self.sae = sae
        self.n = 0
        self.l0 = self.l1 = self.squared_error = 0.0
        zeros = mx.zeros((sae.d_model,))
        self.moments = {"x": (zeros, zeros), "residual": (zeros, zeros)}  # (mean, sum of squares)
        self.fired = mx.zeros((sae.d_sae,), dtype=mx.bool_)

    def add(self, acts: mx.array) -> None:
        x = acts.reshape(-1, acts.shape[-1]).astype(mx.float32)
        feats = self.sae.encode(x)
        residual = x - self.sae.decode(feats)
        active = feats > 0
        self.l0 += _total(active)
        self.l1 += _total(mx.abs(feats))
        self.squared_error += _total(residual**2)
        self.fired = self.fired | mx.any(active, axis=0)
        for key, batch in (("x", x), ("residual", residual)):
            self.moments[key] = self._merge(*self.moments[key], batch)
        mx.eval(self.fired, self.moments)
        self.n += x.shape[0]

    def _merge(self, mean: mx.array, m2: mx.array, batch: mx.array) -> tuple[mx.array, mx.array]:
        nb, total = batch.shape[0], self.n + batch.shape[0]
        batch_mean = mx.mean(batch, axis=0)
        delta = batch_mean - mean
        return (
            mean + delta * (nb / total),
            m2 + mx.sum((batch - batch_mean) ** 2, axis=0) + delta**2 * (self.n * nb / total),
        )

    def result(self) -> dict[str, float]:
        if self.n == 0:
            raise InputError("no activations to measure the SAE on")
        variance = _total(self.moments["x"][1])
        residual_variance = _total(self.moments["residual"][1])
        return {
            "l0": self.l0 / self.n,
            "l1_magnitude": self.l1 / self.n,
            "mse": self.squared_error / (self.n * self.sae.d_model),
            "explained_variance": 1.0 - residual_variance / max(variance, 1e-12),
            "dead_fraction": 1.0 - cast(float, mx.mean(self.fired).item()),
        }


def _total(values: mx.array) -> float:
    """The sum of every element, as a Python number."""
    return cast(float, mx.sum(values).item())


def stats(sae: SAE, acts: mx.array) -> dict[str, float]:
    """The documented measures on activations ``(..., d_model)``."""
    totals = _Totals(sae)
    totals.add(acts)
    return totals.result()


def evaluate(
    sae: SAE, model: InterpretableModel, texts: Sequence[Any], progress: bool = False
) -> dict[str, float]:
    """:func:`stats` over ``texts`` (e.g. held out), streamed: memory does not grow with them
    (the first ``sae.config.skip_tokens`` tokens of each left out, as in training)."""
    if not sae.component:
        raise InputError("this SAE does not record the component it was trained on")
    totals = _Totals(sae)
    config = sae.config
    for acts in stream_activations(
        model, texts, sae.component, config.text_batch_size, progress, config.skip_tokens
    ):
        totals.add(acts)
    return totals.result()
