"""Head-level patching: which attention heads carry the clean behaviour into the corrupted run.

:func:`head_patching` runs the real patches: for every layer x head (x position with
``by_position``) the head's share of the attention output (``<attn>.heads``, see
``mlxterp.heads``) is taken from the clean run and put into the corrupted one, and the
final-position logits are scored with the metrics of layer patching (``mlxterp.metrics``).
Every patched run of the grid goes through the batched forwards of the layer sweep
(``mlxterp.patching.run_patched_rows``): one row per (layer, head[, position]), each row
its own patch (a row x position x head mask), rows ordered by layer and a batch whose first
patched layer is ``a`` starting from the corrupted run's stored output of layer ``a - 1``.
A cell equals ``activation_patching(component="attn.heads.H")`` for that layer and head,
and patching every head of a layer equals patching its attention output.

:func:`head_attribution` is the gradient estimate of the same grid from one corrupted
forward and backward pass (as ``mlxterp.attribution`` does for layers): for each head and
position, ``(clean - corrupted) · ∂metric/∂head output`` summed over the hidden axis.

Prompts of different lengths are right-aligned and lists of (clean, corrupted) pairs are
accepted as in ``mlxterp.patching``; a list of pairs gives a list of results, one per pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast, overload

import mlx.core as mx
import numpy as np

from . import plotting
from .activations import Layers, is_int
from .attribution import attribution_terms
from .errors import InputError
from .heads import HEADS
from .lens import PromptList
from .metrics import recovery
from .patching import (
    Interventions,
    PatchedRows,
    PatchingSetup,
    check_batch_size,
    prepare_patching,
    row_patch,
    run_patched_rows,
)

if TYPE_CHECKING:
    from .model import InterpretableModel
    from .tracing import Trace

HeadRow = tuple[int, int, tuple[int, ...], tuple[int, ...]]
"""One patched run: its pair, the index into its layers, the heads and the positions patched."""


class HeadPatchingSummary(TypedDict):
    """``HeadPatchingResult.to_summary()``."""

    metric: str
    layers: list[int]
    heads: list[int]
    recovery: list[list[float]]  # layers x heads
    baseline: float
    clean_value: float
    corrupted_value: float
    positions: list[int]
    tokens: list[str]
    by_position: NotRequired[list[list[list[float]]]]  # layers x heads x positions
    all_heads: NotRequired[list[float]]  # per layer, every head of ``heads`` at once
    note: NotRequired[str]  # why every recovery is 0, when it is


@dataclass
class HeadPatchingResult:
    """Recovery per layer x head from patching each head's clean output into the corrupted run.

    ``recovery[i][k]`` is the percent of the clean-vs-corrupted gap closed by patching head
    ``heads[k]`` of layer ``layers[i]`` at every patched position (``values`` holds the
    metric of each patched run); ``by_position[i][k][j]`` (with ``by_position=True``) the
    same at position ``positions[j]`` alone; ``all_heads[i]`` (with ``all_heads=True``) the
    recovery of patching every head of ``heads`` in layer ``layers[i]`` at once (with every
    head, the same as patching the layer's attention output).  ``clean_value``,
    ``corrupted_value``,
    ``baseline``, ``positions`` and ``tokens`` are as in ``PatchingResult``.
    """

    recovery: list[list[float]]
    values: list[list[float]]
    layers: list[int]
    heads: list[int]
    positions: list[int]
    tokens: list[str]
    metric: str
    baseline: float
    clean_value: float
    corrupted_value: float
    by_position: list[list[list[float]]] | None = None
    all_heads: list[float] | None = None
    note: str | None = None

    def top(self, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` heads that recover the most: ``(layer, head, recovery %)``, best first."""
        return _top(self.recovery, self.layers, self.heads, k)

    def to_summary(self) -> HeadPatchingSummary:
        """Plain values to store and compare."""
        summary: HeadPatchingSummary = {
            "metric": self.metric,
            "layers": list(self.layers),
            "heads": list(self.heads),
            "recovery": [list(row) for row in self.recovery],
            "baseline": self.baseline,
            "clean_value": self.clean_value,
            "corrupted_value": self.corrupted_value,
            "positions": list(self.positions),
            "tokens": list(self.tokens),
        }
        if self.by_position is not None:
            summary["by_position"] = [[list(cell) for cell in row] for row in self.by_position]
        if self.all_heads is not None:
            summary["all_heads"] = list(self.all_heads)
        if self.note:
            summary["note"] = self.note
        return summary

    def heatmap(self, cmap: str = "RdBu_r", cell_width: int = 7, color: bool = True) -> str:
        """Recovery % as a coloured layers x heads grid (rows: layers, columns: heads)."""
        return _heatmap(
            self.recovery,
            self.layers,
            self.heads,
            [[f"{round(v):d}%" for v in row] for row in self.recovery],
            f"Recovery % patching each head ({self.metric}; rows: layers, columns: heads)",
            cmap,
            cell_width,
            color,
        )


class HeadAttributionSummary(TypedDict):
    """``HeadAttributionResult.to_summary()``."""

    metric: str
    layers: list[int]
    heads: list[int]
    positions: list[int]
    tokens: list[str]
    scores: list[list[list[float]]]  # layers x heads x positions
    clean_value: float
    corrupted_value: float


@dataclass
class HeadAttributionResult:
    """Estimated metric change of patching each head of each layer at each position.

    ``scores[i][k][j]`` is the linear estimate of how much the metric moves when head
    ``heads[k]`` of layer ``layers[i]`` gets its clean output at corrupted position
    ``positions[j]``; :attr:`matrix` sums the positions (the estimate of patching the head
    at all of them, what :class:`HeadPatchingResult` ``.values`` measures minus the
    corrupted value).
    """

    scores: list[list[list[float]]]
    layers: list[int]
    heads: list[int]
    positions: list[int]
    tokens: list[str]
    metric: str
    clean_value: float
    corrupted_value: float

    @property
    def matrix(self) -> list[list[float]]:
        """Layers x heads: each head's score summed over the positions."""
        return [[sum(cell) for cell in row] for row in self.scores]

    @property
    def estimated_recovery(self) -> list[list[float]]:
        """:attr:`matrix` as percent of the clean-vs-corrupted gap (0 where there is none)."""
        gap = self.clean_value - self.corrupted_value
        return [[s / gap * 100.0 if gap else 0.0 for s in row] for row in self.matrix]

    def top(self, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` heads estimated to recover the most: ``(layer, head, estimated
        recovery %)``, best first."""
        return _top(self.estimated_recovery, self.layers, self.heads, k)

    def rank_correlation(self, patched: HeadPatchingResult) -> float:
        """Spearman's rank correlation between this estimate (:attr:`estimated_recovery`)
        and the real recovery of ``patched`` over the same layers x heads (ties get their
        mean rank); how far the estimate can be trusted to order the heads."""
        if (patched.layers, patched.heads) != (self.layers, self.heads):
            raise InputError(
                "rank_correlation needs head patching over the same layers and heads: got "
                f"layers {patched.layers} heads {patched.heads} for layers {self.layers} "
                f"heads {self.heads}"
            )
        a = _ranks(np.asarray(self.estimated_recovery, dtype=np.float64).ravel())
        b = _ranks(np.asarray(patched.recovery, dtype=np.float64).ravel())
        if a.std() == 0 or b.std() == 0:
            return 0.0
        return float(np.corrcoef(a, b)[0, 1])

    def to_summary(self) -> HeadAttributionSummary:
        """Plain values to store and compare."""
        return {
            "metric": self.metric,
            "layers": list(self.layers),
            "heads": list(self.heads),
            "positions": list(self.positions),
            "tokens": list(self.tokens),
            "scores": [[list(cell) for cell in row] for row in self.scores],
            "clean_value": self.clean_value,
            "corrupted_value": self.corrupted_value,
        }

    def heatmap(self, cmap: str = "RdBu_r", cell_width: int = 7, color: bool = True) -> str:
        """Estimated recovery % as a coloured layers x heads grid."""
        grid = self.estimated_recovery
        return _heatmap(
            grid,
            self.layers,
            self.heads,
            [[f"{round(v):d}%" for v in row] for row in grid],
            f"Estimated recovery % per head ({self.metric}, attribution; rows: layers, "
            "columns: heads)",
            cmap,
            cell_width,
            color,
        )


@overload
def head_patching(
    model: InterpretableModel,
    clean_text: PromptList,
    corrupted_text: PromptList,
    layers: Layers = None,
    heads: int | Sequence[int] | None = None,
    metric: str = "l2",
    positions: int | Sequence[int] | None = None,
    by_position: bool = False,
    answer: Sequence[Any] | None = None,
    all_heads: bool = False,
    batch_size: int | None = None,
) -> list[HeadPatchingResult]: ...
@overload
def head_patching(
    model: InterpretableModel,
    clean_text: Any,
    corrupted_text: Any,
    layers: Layers = None,
    heads: int | Sequence[int] | None = None,
    metric: str = "l2",
    positions: int | Sequence[int] | None = None,
    by_position: bool = False,
    answer: Sequence[Any] | None = None,
    all_heads: bool = False,
    batch_size: int | None = None,
) -> HeadPatchingResult: ...
def head_patching(
    model: InterpretableModel,
    clean_text: Any,
    corrupted_text: Any,
    layers: Layers = None,
    heads: int | Sequence[int] | None = None,
    metric: str = "l2",
    positions: int | Sequence[int] | None = None,
    by_position: bool = False,
    answer: Sequence[Any] | None = None,
    all_heads: bool = False,
    batch_size: int | None = None,
) -> HeadPatchingResult | list[HeadPatchingResult]:
    """Recovery percent per layer x head from patching each head's clean output into the
    corrupted run, the whole grid in one batched sweep (see the module docstring).

    ``layers`` and ``heads`` pick the grid (default: every layer and every head);
    ``metric``, ``answer`` and ``positions`` as in ``activation_patching``.  With
    ``by_position=True`` every head is also patched at each position alone
    (:attr:`HeadPatchingResult.by_position`); with ``all_heads=True`` every head of
    ``heads`` is also patched at once, per layer (:attr:`HeadPatchingResult.all_heads`).
    ``batch_size`` bounds the patched runs per forward (default: about 2048 tokens' worth).
    Lists of clean and corrupted prompts give a list of results, one per pair.
    """
    check_batch_size(batch_size)
    setup, wanted = _head_setup(
        model, clean_text, corrupted_text, layers, heads, metric, answer, positions
    )
    n_layers = len(setup.layers)
    rows: list[HeadRow] = [
        (q, j, (h,), tuple(cols))
        for q, cols in enumerate(setup.positions)
        for j in range(n_layers)
        for h in wanted
    ]
    if by_position:
        rows += [
            (q, j, (h,), (p,))
            for q, cols in enumerate(setup.positions)
            for j in range(n_layers)
            for h in wanted
            for p in cols
        ]
    if all_heads:
        rows += [
            (q, j, tuple(wanted), tuple(cols))
            for q, cols in enumerate(setup.positions)
            for j in range(n_layers)
        ]

    def patches(chunk: list[HeadRow], owners: mx.array, corrupted: Trace) -> Interventions:
        return _head_patches(setup, chunk, owners)

    sweep = run_patched_rows(
        model, setup, rows, lambda row: setup.layers[row[1]], patches, batch_size, final_step=True
    )
    results = [
        _pair_result(model, setup, q, wanted, sweep, by_position, all_heads, metric)
        for q in range(len(setup.positions))
    ]
    return results if setup.batched else results[0]


def _pair_result(
    model: InterpretableModel,
    setup: PatchingSetup,
    pair: int,
    heads: list[int],
    sweep: PatchedRows[HeadRow],
    by_position: bool,
    all_heads: bool,
    metric: str,
) -> HeadPatchingResult:
    """Pair ``pair``'s result from the metric value of every patched run of the sweep."""
    cols, layers = setup.positions[pair], range(len(setup.layers))
    clean_value, corrupted_value = sweep.clean[pair], sweep.corrupted[pair]
    references = clean_value, corrupted_value
    values = [[sweep.values[(pair, j, (h,), tuple(cols))] for h in heads] for j in layers]
    recovered = [recovery(row, *references) for row in values]
    grid = None
    if by_position:
        grid = [
            [
                recovery([sweep.values[(pair, j, (h,), (p,))] for p in cols], *references)[0]
                for h in heads
            ]
            for j in layers
        ]
    together = None
    if all_heads:
        joint = [sweep.values[(pair, j, tuple(heads), tuple(cols))] for j in layers]
        together = recovery(joint, *references)[0]
    return HeadPatchingResult(
        recovery=[row for row, _ in recovered],
        values=values,
        layers=setup.layers,
        heads=heads,
        positions=cols,
        tokens=setup.tokens(model, pair),
        metric=metric,
        baseline=clean_value - corrupted_value if metric == "logit_diff" else corrupted_value,
        clean_value=clean_value,
        corrupted_value=corrupted_value,
        by_position=grid,
        all_heads=together,
        note=recovered[0][1],
    )


@overload
def head_attribution(
    model: InterpretableModel,
    clean_text: PromptList,
    corrupted_text: PromptList,
    layers: Layers = None,
    heads: int | Sequence[int] | None = None,
    metric: str = "logit_diff",
    positions: int | Sequence[int] | None = None,
    answer: Sequence[Any] | None = None,
) -> list[HeadAttributionResult]: ...
@overload
def head_attribution(
    model: InterpretableModel,
    clean_text: Any,
    corrupted_text: Any,
    layers: Layers = None,
    heads: int | Sequence[int] | None = None,
    metric: str = "logit_diff",
    positions: int | Sequence[int] | None = None,
    answer: Sequence[Any] | None = None,
) -> HeadAttributionResult: ...
def head_attribution(
    model: InterpretableModel,
    clean_text: Any,
    corrupted_text: Any,
    layers: Layers = None,
    heads: int | Sequence[int] | None = None,
    metric: str = "logit_diff",
    positions: int | Sequence[int] | None = None,
    answer: Sequence[Any] | None = None,
) -> HeadAttributionResult | list[HeadAttributionResult]:
    """Gradient estimate of patching every head of every layer at every position, from one
    corrupted forward and backward pass (see the module docstring).

    Arguments as in :func:`head_patching` (``metric`` defaults to ``logit_diff``, which
    needs ``answer``).  Check the heads that matter with :func:`head_patching`, which runs
    the real patches.  Lists of clean and corrupted prompts give a list of results.
    """
    setup, wanted = _head_setup(
        model, clean_text, corrupted_text, layers, heads, metric, answer, positions
    )
    terms, values = attribution_terms(model, setup)
    cells = mx.stack([t.sum(axis=-1) for t in terms])  # (layers, pairs, seq, heads)
    clean_values = setup.score(setup.score.clean_logits)
    mx.eval(cells, values, clean_values)
    grid = np.asarray(cells, dtype=np.float64)
    results = [
        HeadAttributionResult(
            scores=grid[:, q][:, cols][:, :, wanted].transpose(0, 2, 1).tolist(),
            layers=setup.layers,
            heads=wanted,
            positions=cols,
            tokens=setup.tokens(model, q),
            metric=metric,
            clean_value=cast(float, clean_values[q].item()),  # float32 scalars
            corrupted_value=cast(float, values[q].item()),
        )
        for q, cols in enumerate(setup.positions)
    ]
    return results if setup.batched else results[0]


def _head_setup(
    model: InterpretableModel,
    clean_text: Any,
    corrupted_text: Any,
    layers: Layers,
    heads: int | Sequence[int] | None,
    metric: str,
    answer: Sequence[Any] | None,
    positions: int | Sequence[int] | None,
) -> tuple[PatchingSetup, list[int]]:
    """The patching setup on every chosen layer's ``attn.heads`` and the heads asked for
    (checked against each layer's head count before any forward pass)."""
    setup = prepare_patching(
        model, clean_text, corrupted_text, f"attn.{HEADS}", layers, metric, answer, positions
    )
    index = model.module_index.heads
    count = min(index[site.rsplit(".", 1)[0]].n_heads for site in setup.sites)
    if heads is None:
        return setup, list(range(count))
    wanted = [heads] if is_int(heads) else heads
    if not isinstance(wanted, Sequence) or not wanted or not all(is_int(h) for h in wanted):
        raise InputError(f"heads must be a head index or a list of them; got {heads!r}")
    for h in wanted:
        if not 0 <= h < count:
            raise InputError(
                f"head {h} does not exist: the layers patched have {count} heads (0..{count - 1})"
            )
    return setup, list(dict.fromkeys(int(h) for h in wanted))


def _head_patches(setup: PatchingSetup, chunk: list[HeadRow], owners: mx.array) -> Interventions:
    """The interventions of one batch: each row (its pair's corrupted input) gets its own
    layer's head replaced by the clean one at its positions (a row x position x head mask
    on ``<attn>.heads``)."""
    batch, seq = len(chunk), setup.corrupted.array.shape[1]
    masks: dict[int, np.ndarray] = {}
    for r, (_, j, heads, cols) in enumerate(chunk):
        n_heads = setup.targets[j].shape[2]
        mask = masks.setdefault(j, np.zeros((batch, seq, n_heads), dtype=bool))
        mask[r][np.ix_(cols, heads)] = True
    return {
        setup.sites[j]: row_patch(setup.rows_of(setup.targets[j], owners), mx.array(mask))
        for j, mask in masks.items()
    }


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 0, tied values sharing their mean rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return np.asarray(sums[inverse] / counts[inverse])


def _top(
    grid: list[list[float]], layers: list[int], heads: list[int], k: int
) -> list[tuple[int, int, float]]:
    if not is_int(k) or k < 1:
        raise InputError(f"k must be a positive int; got {k!r}")
    cells = [
        (layer, head, value)
        for layer, row in zip(layers, grid, strict=True)
        for head, value in zip(heads, row, strict=True)
    ]
    return sorted(cells, key=lambda c: -c[2])[:k]


def _heatmap(
    grid: list[list[float]],
    layers: list[int],
    heads: list[int],
    cells: list[list[str]],
    title: str,
    cmap: str,
    cell_width: int,
    color: bool,
) -> str:
    return plotting.heatmap_text(
        grid,
        [f"L{layer}" for layer in layers],
        [f"H{h}" for h in heads],
        cells,
        cmap=cmap,
        cell_width=cell_width,
        centred=True,
        color=color,
        title=title,
    )
