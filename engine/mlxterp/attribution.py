"""Attribution patching: a gradient estimate of every layer x position patch at once.

Patching the clean activation ``c`` into the corrupted run (activation ``r``) changes the
metric by about ``(c - r) · ∂metric/∂act``, the gradient taken on the corrupted run.  One
clean pass, and one corrupted pass with its backward pass, give that estimate for every
layer and position: the corrupted forward runs with a zero ``delta`` added at each layer's
component, and ``mx.value_and_grad`` differentiates the metric with respect to the deltas.
It is a fast first look; check the cells that matter with ``activation_patching``, which
runs the real patches.  Prompts of different lengths are right-aligned as in
``mlxterp.patching``; only the positions they share get a score.  Lists of (clean,
corrupted) pairs run as one padded batch: one forward and one backward pass for them all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict, cast, overload

import mlx.core as mx

from .activations import Layers, is_int
from .errors import InputError
from .lens import PromptList
from .patching import PatchingSetup, prepare_patching

if TYPE_CHECKING:
    from .model import InterpretableModel


class AttributionSummary(TypedDict):
    """``AttributionResult.to_summary()``."""

    metric: str
    component: str
    layers: list[int]
    positions: list[int]
    tokens: list[str]
    scores: list[list[float]]  # layers x positions
    clean_value: float
    corrupted_value: float


@dataclass
class AttributionResult:
    """Estimated metric change of patching each layer (rows) at each position (columns).

    ``scores[i][j]`` is the linear estimate of how much the metric moves when the clean
    ``component`` output of layer ``layers[i]`` at corrupted position ``positions[j]`` is
    patched in; ``clean_value`` / ``corrupted_value`` are the metric of the two runs, so
    ``estimated_recovery`` puts the scores in the percent units of activation patching.
    """

    scores: list[list[float]]
    layers: list[int]
    positions: list[int]
    tokens: list[str]
    metric: str
    component: str
    clean_value: float
    corrupted_value: float

    @property
    def per_layer(self) -> dict[int, float]:
        """Score of each layer summed over positions (the estimate of patching them all)."""
        return {layer: sum(row) for layer, row in zip(self.layers, self.scores, strict=True)}

    @property
    def estimated_recovery(self) -> list[list[float]]:
        """The scores as percent of the clean-vs-corrupted gap (0 where there is no gap)."""
        gap = self.clean_value - self.corrupted_value
        return [[s / gap * 100.0 if gap else 0.0 for s in row] for row in self.scores]

    def top(self, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` cells that move the metric furthest towards the clean run:
        ``(layer, position, score)``, best first."""
        if not is_int(k) or k < 1:
            raise InputError(f"k must be a positive int; got {k!r}")
        gap = self.clean_value - self.corrupted_value
        toward = 1.0 if gap > 0 else -1.0 if gap < 0 else 0.0
        cells = [
            (layer, pos, score)
            for layer, row in zip(self.layers, self.scores, strict=True)
            for pos, score in zip(self.positions, row, strict=True)
        ]
        cells.sort(key=lambda c: -(toward * c[2]) if toward else -abs(c[2]))
        return cells[:k]

    def to_summary(self) -> AttributionSummary:
        """Plain values to store and compare."""
        return {
            "metric": self.metric,
            "component": self.component,
            "layers": list(self.layers),
            "positions": list(self.positions),
            "tokens": list(self.tokens),
            "scores": [list(row) for row in self.scores],
            "clean_value": self.clean_value,
            "corrupted_value": self.corrupted_value,
        }


@overload
def attribution_patching(
    model: InterpretableModel,
    clean_text: PromptList,
    corrupted_text: PromptList,
    component: str | None = "output",
    metric: str = "logit_diff",
    answer: Sequence[Any] | None = None,
    layers: Layers = None,
) -> list[AttributionResult]: ...
@overload
def attribution_patching(
    model: InterpretableModel,
    clean_text: Any,
    corrupted_text: Any,
    component: str | None = "output",
    metric: str = "logit_diff",
    answer: Sequence[Any] | None = None,
    layers: Layers = None,
) -> AttributionResult: ...
def attribution_patching(
    model: InterpretableModel,
    clean_text: Any,
    corrupted_text: Any,
    component: str | None = "output",
    metric: str = "logit_diff",
    answer: Sequence[Any] | None = None,
    layers: Layers = None,
) -> AttributionResult | list[AttributionResult]:
    """Gradient estimate of patching ``component`` of every layer at every position.

    ``metric`` and ``answer`` as in ``activation_patching`` (``logit_diff`` needs
    ``answer=(clean_answer, corrupted_answer)``); ``component="output"`` is the whole layer's
    output (the residual stream).  Equal-length lists of clean and corrupted prompts give a
    list of results, one per pair, from one forward and backward pass over the padded batch
    (``answer`` one pair for all or a list of one per pair).
    """
    setup = prepare_patching(model, clean_text, corrupted_text, component, layers, metric, answer)
    terms, values = attribution_terms(model, setup)
    # (layers, pairs, seq): summed over every axis after the sequence axis
    cells = mx.stack([t.reshape(t.shape[0], t.shape[1], -1).sum(axis=-1) for t in terms])
    clean_values = setup.score(setup.score.clean_logits)
    mx.eval(cells, values, clean_values)
    grid = cast(list[list[list[float]]], cells.tolist())
    results = [
        AttributionResult(
            scores=[[row[q][p] for p in cols] for row in grid],  # layers x positions
            layers=setup.layers,
            positions=cols,
            tokens=setup.tokens(model, q),
            metric=metric,
            component=setup.component,
            clean_value=cast(float, clean_values[q].item()),  # float32 scalars
            corrupted_value=cast(float, values[q].item()),
        )
        for q, cols in enumerate(setup.positions)
    ]
    return results if setup.batched else results[0]


def attribution_terms(
    model: InterpretableModel, setup: PatchingSetup
) -> tuple[list[mx.array], mx.array]:
    """``(clean - corrupted) * ∂metric/∂activation`` at each site of ``setup``, float32 and
    shaped like the site's activation ``(pairs, seq, ...)``, from one corrupted forward and
    backward pass; and the corrupted run's metric, one value per pair.  Summing a term over
    some axes gives the estimate of patching those entries at once."""
    sites, score, every = setup.sites, setup.score, mx.arange(len(setup.lengths))

    def corrupted_metric(deltas: list[mx.array]) -> tuple[mx.array, list[mx.array]]:
        shifts = {site: _shift(delta) for site, delta in zip(sites, deltas, strict=True)}
        run = model.run(setup.corrupted.array, interventions=shifts, capture=sites)
        values = score(setup.final(run.output, every))
        # rows are independent, so the gradient of their sum is each row's own gradient
        return values.sum(), [values, *(run.activations[s] for s in sites)]

    deltas = [mx.zeros_like(t) for t in setup.targets]
    (_, (values, *acts)), grads = mx.value_and_grad(corrupted_metric)(deltas)
    terms = [
        (target - act).astype(mx.float32) * grad.astype(mx.float32)
        for target, act, grad in zip(setup.targets, acts, grads, strict=True)
    ]
    return terms, values


def _shift(delta: mx.array) -> Callable[[mx.array], mx.array]:
    return lambda x: x + delta.astype(x.dtype)
