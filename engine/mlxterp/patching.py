"""Activation patching: how much of the clean behaviour comes back when one component's clean
output is put into the corrupted run.

For each layer ``i`` the output of ``component`` in layer ``i`` (``"mlp"``, ``"attn"``,
``"mlp.up_proj"``, ``"output"`` for the whole layer, any name ``model.layer_name`` takes) is
taken from the clean run and written into the corrupted run; the final-position logits of
the patched run are compared with the clean and corrupted ones (see ``mlxterp.metrics``).

**Prompts of different lengths** are right-aligned so that their final tokens correspond:
with ``n = min(len(clean), len(corrupted))`` tokens, corrupted position ``len(corrupted) - k``
receives clean position ``len(clean) - k`` for ``k = 1..n``; earlier positions of the longer
prompt are never patched.  Metrics always compare the final-position logits.

**Lists of pairs.**  ``clean_text`` and ``corrupted_text`` may be equal-length lists of
prompts (see ``mlxterp.lens.prompt_list``): pair ``q`` is ``(clean_text[q],
corrupted_text[q])`` and keeps every rule above on its own (alignment, positions counted in
its corrupted prompt, its own final position, its own answer pair when ``answer`` lists one
per pair).  ``patching_sweep`` then returns a :class:`PatchingBatch`: one
:class:`PatchingResult` per pair plus the mean recovery per layer.

**Speed.**  The clean prompts run once (one right-padded batch), the corrupted ones once;
then every patched run of the sweep — every pair x layer — goes through one batched forward
(or a few, ``batch_size`` rows at a time): row ``r`` is its pair's corrupted input with only
its own layer's component replaced (a row mask), and its metric is read at its pair's last
real token (right padding leaves the earlier positions of a causal model untouched).  Rows
are ordered by layer, and a batch whose first patched layer is ``a`` starts from the
corrupted run's output of layer ``a - 1`` (each row its own pair's): that layer's output is
replaced by the stored value, so MLX (lazy) never computes the layers below it.  This works
on any architecture whose layers feed each other in order, and is exact everywhere (models
that call a layer more than once per forward run every batch from the start).

**Final position only.**  When every row of a batch patches only the last position and the
corrupted prompts are equally long (no padding), a patched run differs from the corrupted
run only at that position: every earlier position's keys and values equal the corrupted
run's.  The corrupted prompts minus their last token then run once through the model's KV
cache (mlx-lm's ``make_prompt_cache``; plain and sliding-window caches), and each batch runs
only the final token, on fresh cache objects gathered from that stored prefix, with the
patch at its one position: a fraction of a forward per patched row.  Other models, caches
and batches take the full path above.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, NotRequired, TypedDict, TypeVar, cast, overload

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import (
    ConcatenateKVCache,
    KVCache,
    RotatingKVCache,
    make_prompt_cache,
)

from . import plotting
from .activations import Layers, is_int, layer_indices
from .errors import InputError
from .inputs import PreparedInput, int_list
from .lens import PromptList, prompt_list
from .metrics import Metric, answer_pairs, check_metric, recovery
from .steering import _takes_cache

if TYPE_CHECKING:
    from .interventions import InterventionFn
    from .model import InterpretableModel
    from .tracing import Trace

PatchRow = tuple[int, int, tuple[int, ...]]
"""One patched run of a sweep: its pair, the index into its layers and the positions patched."""

# Without batch_size: at most this many tokens per batched forward, and the rows split into
# at least this many groups of layers, so later groups start from stored residuals.
DEFAULT_BATCH_TOKENS = 2048
PREFIX_GROUPS = 4


class PatchingSummary(TypedDict):
    """``PatchingResult.to_summary()``: recovery listed in ``layers`` order."""

    metric: str
    component: str
    layers: list[int]
    recovery: list[float]
    baseline: float
    clean_value: float
    corrupted_value: float
    positions: list[int]
    tokens: list[str]
    matrix: NotRequired[list[list[float]]]  # by_position sweeps: layers x positions
    note: NotRequired[str]  # why every recovery is 0, when it is


@dataclass
class PatchingResult:
    """A patching sweep: recovery per layer (and per layer x position with ``by_position``).

    ``recovery[layer]`` is the percent of the clean-vs-corrupted gap closed by patching the
    layer's component at every patched position; ``matrix[i][j]`` the same for layer
    ``layers[i]`` patched at position ``positions[j]`` alone.  ``clean_value`` /
    ``corrupted_value`` are the metric of the clean and corrupted runs (0 and the distance to
    clean for distances; the logit difference for ``logit_diff``); ``baseline`` is the gap a
    full recovery closes; ``values[layer]`` the metric of each patched run.  ``positions``
    index the corrupted prompt and ``tokens`` are their text.
    """

    recovery: dict[int, float]
    baseline: float
    clean_value: float
    corrupted_value: float
    metric: str
    component: str
    layers: list[int]
    positions: list[int]
    tokens: list[str]
    values: dict[int, float] = field(default_factory=dict)
    matrix: list[list[float]] | None = None
    note: str | None = None

    def to_summary(self) -> PatchingSummary:
        """Plain values to store and compare (recovery listed in ``layers`` order)."""
        summary: PatchingSummary = {
            "metric": self.metric,
            "component": self.component,
            "layers": list(self.layers),
            "recovery": [self.recovery[layer] for layer in self.layers],
            "baseline": self.baseline,
            "clean_value": self.clean_value,
            "corrupted_value": self.corrupted_value,
            "positions": list(self.positions),
            "tokens": list(self.tokens),
        }
        if self.matrix is not None:
            summary["matrix"] = [list(row) for row in self.matrix]
        if self.note:
            summary["note"] = self.note
        return summary

    def chart(
        self, width: int = 80, height: int = 20, cmap: str = "RdBu_r", color: bool = True
    ) -> str:
        """Recovery per layer as a terminal bar chart, or the layer x position grid when
        the sweep was by position."""
        if self.matrix is not None:
            cell = max(4, min(10, (width - 6) // max(1, len(self.positions))))
            return plotting.heatmap_text(
                self.matrix,
                [f"L{layer}" for layer in self.layers],
                self.tokens,
                [[f"{v:.0f}%" for v in row] for row in self.matrix],
                cmap=cmap,
                cell_width=cell,
                centred=True,
                color=color,
                title=f"Recovery % patching {self.component} (rows: layers, columns: positions)",
            )
        title = f"Recovery % patching {self.component} ({self.metric})"
        return _recovery_chart(self.recovery, title, width, height, color)


class PatchingBatchSummary(TypedDict):
    """``PatchingBatch.to_summary()``: the mean recovery in ``layers`` order, and each pair's
    summary."""

    metric: str
    component: str
    layers: list[int]
    mean_recovery: list[float]
    pairs: list[PatchingSummary]


class PatchingBatch(list[PatchingResult]):
    """A sweep over a list of (clean, corrupted) pairs: a list of each pair's
    :class:`PatchingResult`, in the order of the pairs, with their mean recovery per layer."""

    @property
    def layers(self) -> list[int]:
        return self[0].layers

    @property
    def mean_recovery(self) -> dict[int, float]:
        """Recovery percent per layer, averaged over the pairs with a gap to recover.

        A pair whose clean and corrupted runs give the same metric value (its ``note`` says
        so) has nothing to recover and is left out; every mean is 0 if no pair has a gap.
        """
        counted = [r for r in self if r.note is None]
        return {
            layer: sum(r.recovery[layer] for r in counted) / len(counted) if counted else 0.0
            for layer in self.layers
        }

    def to_summary(self) -> PatchingBatchSummary:
        """Plain values to store and compare."""
        mean = self.mean_recovery
        return {
            "metric": self[0].metric,
            "component": self[0].component,
            "layers": list(self.layers),
            "mean_recovery": [mean[layer] for layer in self.layers],
            "pairs": [r.to_summary() for r in self],
        }

    def chart(self, width: int = 80, height: int = 20, color: bool = True) -> str:
        """The mean recovery per layer as a terminal bar chart."""
        first = self[0]
        title = (
            f"Mean recovery % over {len(self)} pairs patching {first.component} ({first.metric})"
        )
        return _recovery_chart(self.mean_recovery, title, width, height, color)


def _recovery_chart(
    recovery: dict[int, float], title: str, width: int, height: int, color: bool
) -> str:
    fig = plotting.bar_chart(
        list(recovery),
        list(recovery.values()),
        title=title,
        xlabel="layer",
        ylabel="recovery %",
        width=width,
    )
    return plotting.to_text(fig, width, height, color)


def activation_patching(
    model: InterpretableModel,
    clean_text: Any,
    corrupted_text: Any,
    component: str | None = "mlp",
    layers: Layers = None,
    metric: str = "l2",
    plot: bool = False,
    positions: int | Sequence[int] | None = None,
    answer: Sequence[Any] | None = None,
    by_position: bool = False,
    figsize: tuple[float, float] = (12, 8),
    cmap: str = "RdBu_r",
    batch_size: int | None = None,
) -> dict[int, float] | PatchingResult | list[dict[int, float]] | list[PatchingResult]:
    """Recovery percent per layer from patching the clean ``component`` into the corrupted run.

    Returns ``{layer: recovery_percent}``; with ``by_position=True`` the whole
    :class:`PatchingResult` (its ``matrix`` is layers x positions).  ``metric`` is ``"l2"``,
    ``"cosine"``, ``"mse"``, ``"kl"`` or ``"logit_diff"`` (with ``answer=(" Paris",
    " London")``: one-token strings or token ids).  Distances give
    ``(baseline - patched) / baseline * 100``; logit_diff gives ``(LD_patched - LD_corrupt) /
    (LD_clean - LD_corrupt) * 100``.  ``positions`` (corrupted-prompt indices, negative from
    the end) limits where patches go.  Prompts of different lengths are right-aligned (see
    the module docstring).  ``plot=True`` prints a terminal chart (``figsize[0]`` sets its
    width at about 10 columns per unit; ``cmap`` colours the by-position grid).

    Equal-length lists of clean and corrupted prompts patch every pair in the same batched
    forwards and return a list with one result per pair (what one pair returns);
    ``answer`` is then one pair for all or a list of one per pair, and ``plot=True`` prints
    the mean recovery per layer (:attr:`PatchingBatch.mean_recovery`, which
    :func:`patching_sweep` returns with the per-pair results).
    """
    result: PatchingResult | PatchingBatch = patching_sweep(
        model,
        clean_text,
        corrupted_text,
        component=component,
        layers=layers,
        metric=metric,
        positions=positions,
        answer=answer,
        by_position=by_position,
        batch_size=batch_size,
    )
    if plot:
        columns = shutil.get_terminal_size((100, 24)).columns
        width = max(40, min(columns, int(figsize[0] * 10)))
        height = max(12, int(figsize[1] * 2.5))
        if isinstance(result, PatchingBatch):
            print(result.chart(width=width, height=height))
        else:
            print(result.chart(width=width, height=height, cmap=cmap))
    if isinstance(result, PatchingBatch):
        return list(result) if by_position else [r.recovery for r in result]
    return result if by_position else result.recovery


@overload
def patching_sweep(
    model: InterpretableModel,
    clean_text: PromptList,
    corrupted_text: PromptList,
    component: str | None = "mlp",
    layers: Layers = None,
    metric: str = "l2",
    positions: int | Sequence[int] | None = None,
    answer: Sequence[Any] | None = None,
    by_position: bool = False,
    batch_size: int | None = None,
) -> PatchingBatch: ...
@overload
def patching_sweep(
    model: InterpretableModel,
    clean_text: Any,
    corrupted_text: Any,
    component: str | None = "mlp",
    layers: Layers = None,
    metric: str = "l2",
    positions: int | Sequence[int] | None = None,
    answer: Sequence[Any] | None = None,
    by_position: bool = False,
    batch_size: int | None = None,
) -> PatchingResult: ...
def patching_sweep(
    model: InterpretableModel,
    clean_text: Any,
    corrupted_text: Any,
    component: str | None = "mlp",
    layers: Layers = None,
    metric: str = "l2",
    positions: int | Sequence[int] | None = None,
    answer: Sequence[Any] | None = None,
    by_position: bool = False,
    batch_size: int | None = None,
) -> PatchingResult | PatchingBatch:
    """The sweep behind :func:`activation_patching`, as a :class:`PatchingResult`; for lists
    of clean and corrupted prompts, a :class:`PatchingBatch` (one result per pair and the
    mean recovery per layer).

    ``batch_size`` bounds the patched runs per forward (default: about 2048 tokens' worth).
    """
    check_batch_size(batch_size)
    setup = prepare_patching(
        model, clean_text, corrupted_text, component, layers, metric, answer, positions
    )
    indices, pairs = setup.layers, len(setup.lengths)

    rows: list[PatchRow] = [
        (q, j, tuple(cols)) for q, cols in enumerate(setup.positions) for j in range(len(indices))
    ]
    if by_position:
        rows += [
            (q, j, (p,))
            for q, cols in enumerate(setup.positions)
            for j in range(len(indices))
            for p in cols
        ]

    def patches(chunk: list[PatchRow], owners: mx.array, corrupted: Trace) -> Interventions:
        return _layer_patches(setup, chunk, owners)

    sweep = run_patched_rows(
        model, setup, rows, lambda row: indices[row[1]], patches, batch_size, final_step=True
    )
    values, clean_values, corrupted_values = sweep.values, sweep.clean, sweep.corrupted

    results = [
        _pair_result(
            model, setup, q, values, clean_values[q], corrupted_values[q], by_position, metric
        )
        for q in range(pairs)
    ]
    return PatchingBatch(results) if setup.batched else results[0]


def _pair_result(
    model: InterpretableModel,
    setup: PatchingSetup,
    pair: int,
    values: dict[PatchRow, float],
    clean_value: float,
    corrupted_value: float,
    by_position: bool,
    metric: str,
) -> PatchingResult:
    """Pair ``pair``'s result from the metric value of every patched run of the sweep."""
    indices, cols = setup.layers, setup.positions[pair]
    layer_values = {indices[j]: values[(pair, j, tuple(cols))] for j in range(len(indices))}
    recovered, note = recovery(list(layer_values.values()), clean_value, corrupted_value)
    matrix = None
    if by_position:
        matrix = [
            recovery([values[(pair, j, (p,))] for p in cols], clean_value, corrupted_value)[0]
            for j in range(len(indices))
        ]
    return PatchingResult(
        recovery=dict(zip(layer_values, recovered, strict=True)),
        baseline=clean_value - corrupted_value if metric == "logit_diff" else corrupted_value,
        clean_value=clean_value,
        corrupted_value=corrupted_value,
        metric=metric,
        component=setup.component,
        layers=indices,
        positions=cols,
        tokens=setup.tokens(model, pair),
        values=layer_values,
        matrix=matrix,
        note=note,
    )


@dataclass
class PatchingSetup:
    """What activation and attribution patching share, for one pair or a list of pairs.

    The layers and their component sites; the clean trace (one row per pair, right-padded);
    the bound metric (one clean reference and answer pair per pair); the corrupted input
    (one row per pair, right-padded) and its real lengths; each pair's corrupted positions
    to patch; and each site's clean activations right-aligned to the corrupted prompts,
    ``(pairs, corrupted seq, ...)``.
    """

    layers: list[int]
    sites: list[str]
    component: str
    clean: Trace
    score: Metric
    corrupted: PreparedInput
    lengths: list[int]
    positions: list[list[int]]
    targets: list[mx.array]
    batched: bool  # the prompts came as lists (results are lists)

    def rows_of(self, values: mx.array, owners: mx.array) -> mx.array:
        """Per-pair ``values`` (pairs, ...) for rows owned by the pairs ``owners``; one pair's
        values stay one row, which broadcasts over every row."""
        return values if len(self.lengths) == 1 else values[owners]

    def final(self, logits: mx.array, owners: mx.array) -> mx.array:
        """Logits ``(rows, seq, vocab)`` at each row's last real position (its pair's)."""
        last = mx.array(self.lengths)[owners] - 1
        return logits[mx.arange(logits.shape[0]), last]

    def tokens(self, model: InterpretableModel, pair: int) -> list[str]:
        """The text of pair ``pair``'s corrupted tokens at its positions (ids or indices
        without one)."""
        cols = self.positions[pair]
        if not self.corrupted.tokens:
            return [str(p) for p in cols]
        ids = self.corrupted.tokens[pair]
        return [model.token_text(ids[p]) for p in cols]


def prepare_patching(
    model: InterpretableModel,
    clean_text: Any,
    corrupted_text: Any,
    component: str | None,
    layers: Layers,
    metric: str,
    answer: Sequence[Any] | None,
    positions: int | Sequence[int] | None = None,
) -> PatchingSetup:
    """Check the arguments (before any forward pass), run the clean prompts once (one padded
    batch) capturing the component of every layer, and right-align each with its corrupted
    prompt."""
    if component is not None and not isinstance(component, str):
        raise InputError(f"component must be a module name such as 'mlp'; got {component!r}")
    check_metric(metric)
    indices = layer_indices(model, layers)
    sites = [model.layer_name(i, component) for i in indices]  # unknown names raise here
    batched = _pair_count(clean_text, corrupted_text) is not None
    clean_input, corrupted = model.prepare(clean_text), model.prepare(corrupted_text)
    if batched:  # one width for both runs: a pair of identical prompts runs bit for bit alike
        width = max(clean_input.array.shape[1], corrupted.array.shape[1])
        clean_input, corrupted = _widened(clean_input, width), _widened(corrupted, width)
    else:
        for which, prepared in (("clean_text", clean_input), ("corrupted_text", corrupted)):
            if prepared.array.shape[0] != 1:
                raise InputError(
                    f"{which} must be one prompt, not a batch of {prepared.array.shape[0]}; "
                    "to patch several pairs give lists of clean and corrupted prompts"
                )
    pairs = clean_input.array.shape[0]
    answers = answer_pairs(model, answer, pairs) if metric == "logit_diff" else None
    clean_lengths = clean_input.lengths or [clean_input.array.shape[1]]
    corrupted_lengths = corrupted.lengths or [corrupted.array.shape[1]]
    cols = [
        _patch_positions(positions, k, min(c, k), q if batched else None)
        for q, (c, k) in enumerate(zip(clean_lengths, corrupted_lengths, strict=True))
    ]
    clean = model.run(clean_input.array, capture=sites)
    if clean.output.ndim != 3:
        raise InputError(
            "patching compares final-position logits, so the model must output (batch, seq, "
            f"vocab); it gave shape {tuple(clean.output.shape)}"
        )
    clean_final = clean.output[mx.arange(pairs), mx.array(clean_lengths) - 1]
    widths = clean_input.array.shape[1], corrupted.array.shape[1]
    targets = [
        _right_aligned(clean.activations[s], clean_lengths, corrupted_lengths, *widths, s)
        for s in sites
    ]
    return PatchingSetup(
        indices,
        sites,
        component or "output",
        clean,
        Metric(metric, clean_final, answers),
        corrupted,
        corrupted_lengths,
        cols,
        targets,
        batched,
    )


def _widened(prepared: PreparedInput, width: int) -> PreparedInput:
    """Token rows right-padded to ``width`` (what the padding holds never reaches a real
    position of a causal model)."""
    pad = width - prepared.array.shape[1]
    array = mx.pad(prepared.array, [(0, 0), (0, pad)]) if pad else prepared.array
    return PreparedInput(array, tokens=prepared.tokens, texts=prepared.texts)


def _pair_count(clean_text: Any, corrupted_text: Any) -> int | None:
    """How many pairs two lists of prompts make; None for one pair of single prompts."""
    for which, value in (("clean_text", clean_text), ("corrupted_text", corrupted_text)):
        if isinstance(value, (list, tuple)) and not value:
            raise InputError(
                f"{which} is an empty list; give one prompt, or a list of prompts (one per pair)"
            )
    clean, corrupted = prompt_list(clean_text), prompt_list(corrupted_text)
    if clean is None and corrupted is None:
        return None
    if clean is None or corrupted is None:
        listed = "clean_text" if clean is not None else "corrupted_text"
        raise InputError(
            f"{listed} is a list of prompts but the other is one prompt: give both as one "
            "prompt, or both as lists of prompts (one clean and one corrupted per pair)"
        )
    if len(clean) != len(corrupted):
        raise InputError(
            f"clean_text holds {len(clean)} prompts and corrupted_text {len(corrupted)}: the "
            "lists pair up one to one, so they must be equally long"
        )
    return len(clean)


Row = TypeVar("Row", bound=tuple[Any, ...])
Interventions = dict[str, "InterventionFn"]


def check_batch_size(batch_size: int | None) -> None:
    """``InputError`` unless ``batch_size`` is None or a positive int."""
    if batch_size is not None and (not is_int(batch_size) or batch_size < 1):
        raise InputError(f"batch_size must be a positive int; got {batch_size!r}")


@dataclass
class PatchedRows(Generic[Row]):
    """What :func:`run_patched_rows` measured: the metric of each patched row, of each
    pair's clean and corrupted runs, and the corrupted run's trace."""

    values: dict[Row, float]
    clean: list[float]
    corrupted: list[float]
    trace: Trace


def run_patched_rows(
    model: InterpretableModel,
    setup: PatchingSetup,
    rows: Sequence[Row],
    layer_of: Callable[[Row], int],
    patches: Callable[[list[Row], mx.array, Trace], Interventions],
    batch_size: int | None,
    capture: Sequence[str] = (),
    final_step: bool = False,
) -> PatchedRows[Row]:
    """Run every patched row of a sweep in batched forwards with prefix reuse (see the module
    docstring) and score each at its pair's final position.

    A row is a tuple whose first item is its pair; ``layer_of(row)`` is the lowest layer its
    patch touches.  Rows are sorted by that layer and cut into batches of ``batch_size``
    (default: about ``DEFAULT_BATCH_TOKENS`` tokens, at least ``PREFIX_GROUPS`` batches); a
    batch starting at layer ``a`` runs from the corrupted run's output of layer ``a - 1``.
    ``patches(batch, owners, corrupted)`` gives the interventions that patch each row of a
    batch (``owners``: each row's pair; ``corrupted``: the corrupted run, which also captured
    ``capture``).

    ``final_step`` says the rows patch only their pair's ``setup.positions`` and no other
    intervention is installed.  When those are every pair's final position (and the model
    and prompts allow it, see :meth:`PrefixCache.of`), batches of :func:`row_patch` masks run
    only the final token on the corrupted prefix's KV cache, ``DEFAULT_BATCH_TOKENS //
    width`` rows at a time by default (a row costs one token, not ``width``, so no groups of
    layers).
    """
    rows = sorted(dict.fromkeys(rows), key=layer_of)
    width = setup.corrupted.array.shape[1]
    finals = zip(setup.positions, setup.lengths, strict=True)
    prefix = (
        PrefixCache.of(model, setup)
        if final_step and all(cols == [n - 1] for cols, n in finals)
        else None
    )
    groups = 1 if prefix else PREFIX_GROUPS
    per_forward = batch_size or max(1, min(DEFAULT_BATCH_TOKENS // width, -(-len(rows) // groups)))
    chunks = [rows[k : k + per_forward] for k in range(0, len(rows), per_forward)]
    starts = sorted({layer_of(chunk[0]) for chunk in chunks} - {0})
    residuals = [model.layer_name(s - 1) for s in starts]

    score, pairs = setup.score, len(setup.lengths)
    corrupted = model.run(setup.corrupted.array, capture=[*residuals, *capture])
    clean_values = _floats(score(score.clean_logits))
    corrupted_values = _floats(score(setup.final(corrupted.output, mx.arange(pairs))))

    # a layer called more than once per forward (shared weights) has no single output to
    # start from: run such models from the embedding
    reuse = all(corrupted.call_counts.get(name) == 1 for name in residuals)
    values: dict[Row, float] = {}
    for chunk in chunks:
        owners = mx.array([row[0] for row in chunk])
        start = layer_of(chunk[0]) if reuse else 0
        below = model.layer_name(start - 1) if start > 0 else None
        patched = patches(chunk, owners, corrupted)
        final = _final_patches(patched) if prefix is not None else None
        if final is not None and prefix is not None:
            if below:
                stored = setup.rows_of(corrupted.activations[below], owners)[:, -1:]
                final[below] = _constant(stored)
            logits = prefix.final_logits(model, setup.corrupted.array[owners, -1:], owners, final)
        else:
            interventions: Interventions = (
                {below: _constant(setup.rows_of(corrupted.activations[below], owners))}
                if below
                else {}
            )
            interventions.update(patched)
            inputs = setup.corrupted.array[owners]
            out = model.run(inputs, interventions=interventions, capture=[]).output
            logits = setup.final(out, owners)
        values.update(zip(chunk, _floats(score.select(owners)(logits)), strict=True))
    return PatchedRows(values, clean_values, corrupted_values, corrupted)


@dataclass
class PrefixCache:
    """The KV cache of every pair's corrupted prompt minus its final token, run once with no
    intervention: per cache entry (one per layer) the cache class a final step runs on and
    its state, one row per pair.  A plain ``KVCache`` is kept trimmed to its tokens and
    steps as a ``ConcatenateKVCache`` (no 256-slot buffer copied per row); a sliding
    window's ``RotatingKVCache`` steps as itself."""

    entries: list[tuple[type[Any], tuple[Any, ...]]]

    @staticmethod
    def of(model: InterpretableModel, setup: PatchingSetup) -> PrefixCache | None:
        """The prefix cache of ``setup``'s corrupted prompts; None where the final-position
        path does not apply: padded rows (lengths differ), one-token prompts, a model whose
        forward takes no ``cache`` or that makes caches of kinds other than those two."""
        array, module = setup.corrupted.array, model.model
        width = array.shape[1]
        if width < 2 or any(n != width for n in setup.lengths) or not _takes_cache(module):
            return None
        if not hasattr(module, "make_cache") and not hasattr(module, "layers"):
            return None
        cache = make_prompt_cache(module)
        if not all(type(c) in (KVCache, RotatingKVCache) for c in cache):
            return None
        with model.intervened({}):  # holds the model's forward lock
            module(array[:, :-1], cache=cache)
        entries = [_step_entry(c) for c in cache]
        mx.eval([s for _, state in entries for s in state if isinstance(s, mx.array)])
        return PrefixCache(entries)

    def final_logits(
        self,
        model: InterpretableModel,
        tokens: mx.array,
        owners: mx.array,
        interventions: Interventions,
    ) -> mx.array:
        """Logits ``(rows, vocab)`` of the final tokens ``tokens`` (rows, 1) run on fresh
        caches holding each row's pair's prefix (gathered copies: the stored prefix is never
        written), with ``interventions`` installed."""
        cache = [
            kind.from_state(tuple(s[owners] if isinstance(s, mx.array) else s for s in state))
            for kind, state in self.entries
        ]
        with model.intervened(interventions):
            out = model.model(tokens, cache=cache)
        logits = cast(mx.array, out[0] if isinstance(out, tuple) else out)
        return logits[:, -1].astype(mx.float32)


def _step_entry(cache: Any) -> tuple[type[Any], tuple[Any, ...]]:
    """A filled cache's entry in :class:`PrefixCache`: the class a step runs on, its state."""
    if type(cache) is KVCache:
        keys, values, offset = cache.state
        return ConcatenateKVCache, (keys[..., :offset, :], values[..., :offset, :])
    return RotatingKVCache, tuple(cache.state)


def _final_patches(interventions: Interventions) -> Interventions | None:
    """``interventions`` cut to the final position, when all are :class:`RowPatch` masks
    that set nothing before it; None otherwise."""
    final: Interventions = {}
    for name, fn in interventions.items():
        cut = fn.final() if isinstance(fn, RowPatch) else None
        if cut is None:
            return None
        final[name] = cut
    return final


def _layer_patches(setup: PatchingSetup, chunk: list[PatchRow], owners: mx.array) -> Interventions:
    """The interventions of a layer sweep's batch: each row (its pair's corrupted input)
    gets its own layer's component replaced at its positions (a row mask)."""
    batch, seq = len(chunk), setup.corrupted.array.shape[1]
    masks: dict[int, np.ndarray] = {}
    for r, (_, j, cols) in enumerate(chunk):
        mask = masks.setdefault(j, np.zeros((batch, seq), dtype=bool))
        mask[r, list(cols)] = True
    return {
        setup.sites[j]: row_patch(setup.rows_of(setup.targets[j], owners), mx.array(mask))
        for j, mask in masks.items()
    }


@dataclass(frozen=True)
class RowPatch:
    """An intervention that replaces ``x`` by ``value`` where ``mask`` (batch, seq, ...: the
    leading axes of ``x``) is set: each row its own patch."""

    value: mx.array
    mask: mx.array

    def __call__(self, x: mx.array) -> mx.array:
        where = self.mask.reshape(self.mask.shape + (1,) * (x.ndim - self.mask.ndim))
        return mx.where(where, self.value.astype(x.dtype), x)

    def final(self) -> RowPatch | None:
        """The same patch on the final position alone (seq axis of length 1); None when it
        sets an earlier position."""
        if self.mask[:, :-1].any().item():
            return None
        return RowPatch(self.value[:, -1:], self.mask[:, -1:])


def row_patch(value: mx.array, mask: mx.array) -> RowPatch:
    """Replace ``x`` by ``value`` where ``mask`` (batch, seq, ...: the leading axes of ``x``)
    is set: each row its own patch (a :class:`RowPatch`)."""
    return RowPatch(value, mask)


def _constant(value: mx.array) -> Callable[[mx.array], mx.array]:
    return lambda x: value


def _right_aligned(
    act: mx.array,
    clean_lengths: list[int],
    corrupted_lengths: list[int],
    clean_width: int,
    width: int,
    site: str,
) -> mx.array:
    """Each pair's clean activation (``clean_width`` positions per row) laid over its
    corrupted positions, final tokens matched: ``(pairs, width, ...)`` with ``width`` the
    corrupted input's; zero where a corrupted position has no clean one."""
    pairs, clean_seq = len(clean_lengths), clean_width
    if act.ndim < 2 or act.shape[0] != pairs or act.shape[1] != clean_seq:
        raise InputError(
            f"{site} outputs shape {tuple(act.shape)}; patching needs ({pairs}, seq, ...) with "
            f"the clean input's {clean_seq} positions on axis 1"
        )
    clean_len = np.array(clean_lengths)[:, None]
    corrupted_len = np.array(corrupted_lengths)[:, None]
    t = np.arange(width)[None, :]
    source = t - corrupted_len + clean_len  # the clean position each corrupted one receives
    valid = (source >= 0) & (t < corrupted_len)
    flat = np.where(valid, source + np.arange(pairs)[:, None] * clean_seq, 0).reshape(-1)
    rest = act.shape[2:]
    taken = mx.take(act.reshape(pairs * clean_seq, *rest), mx.array(flat), axis=0)
    mask = mx.array(valid).reshape(*valid.shape, *(1,) * len(rest))
    return mx.where(mask, taken.reshape(*valid.shape, *rest), 0)


def _patch_positions(
    positions: int | Sequence[int] | None, length: int, shared: int, pair: int | None = None
) -> list[int]:
    """Corrupted-prompt positions to patch: the shared final ``shared`` ones by default."""
    first = length - shared
    if positions is None:
        return list(range(first, length))
    wanted = int_list(positions)
    if wanted is None:
        raise InputError(f"positions must be an int or a list of ints; got {positions!r}")
    prompt = "the corrupted prompt" if pair is None else f"pair {pair}'s corrupted prompt"
    out = []
    for p in wanted:
        q = int(p) + length if p < 0 else int(p)
        if not first <= q < length:
            raise InputError(
                f"position {p} cannot be patched: {prompt} has {length} tokens and only its "
                f"last {shared} line up with the clean prompt (positions {first}..{length - 1}, "
                f"or -{shared}..-1)"
            )
        out.append(q)
    return list(dict.fromkeys(out))


def _floats(values: mx.array) -> list[float]:
    return cast(list[float], values.tolist())  # float32 metric values, one per row
