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

**Speed.**  The clean and corrupted prompts run once each; then every patched run of the
sweep goes through one batched forward (or a few, ``batch_size`` rows at a time): the
corrupted input is tiled, and row ``r`` has only its own layer's component replaced (a
row mask).  Rows are ordered by layer, and a batch whose first patched layer is ``a``
starts from the corrupted run's output of layer ``a - 1``: that layer's output is replaced
by the stored value, so MLX (lazy) never computes the layers below it.  This works on any
architecture whose layers feed each other in order, and is exact everywhere (models that
call a layer more than once per forward run every batch from the start).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast

import mlx.core as mx
import numpy as np

from . import plotting
from .activations import Layers, is_int, layer_indices
from .errors import InputError
from .inputs import PreparedInput, int_list
from .metrics import Metric, answer_ids, check_metric, recovery

if TYPE_CHECKING:
    from .interventions import InterventionFn
    from .model import InterpretableModel
    from .tracing import Trace

PatchRow = tuple[int, tuple[int, ...]]
"""One patched run of a sweep: the index into its layers and the positions patched."""

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
            peak = max((abs(v) for row in self.matrix for v in row), default=0.0) or 1.0
            cell = max(4, min(10, (width - 6) // max(1, len(self.positions))))
            return plotting.heatmap_text(
                self.matrix,
                [f"L{layer}" for layer in self.layers],
                self.tokens,
                [[f"{v:.0f}%" for v in row] for row in self.matrix],
                cmap=cmap,
                cell_width=cell,
                vmin=-peak,
                vmax=peak,
                color=color,
                title=f"Recovery % patching {self.component} (rows: layers, columns: positions)",
            )
        fig = plotting.bar_chart(
            self.layers,
            [self.recovery[layer] for layer in self.layers],
            title=f"Recovery % patching {self.component} ({self.metric})",
            xlabel="layer",
            ylabel="recovery %",
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
    answer: Sequence[int | str] | None = None,
    by_position: bool = False,
    figsize: tuple[float, float] = (12, 8),
    cmap: str = "RdBu_r",
    batch_size: int | None = None,
) -> dict[int, float] | PatchingResult:
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
    """
    result = patching_sweep(
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
        print(result.chart(width=width, height=max(12, int(figsize[1] * 2.5)), cmap=cmap))
    return result if by_position else result.recovery


def patching_sweep(
    model: InterpretableModel,
    clean_text: Any,
    corrupted_text: Any,
    component: str | None = "mlp",
    layers: Layers = None,
    metric: str = "l2",
    positions: int | Sequence[int] | None = None,
    answer: Sequence[int | str] | None = None,
    by_position: bool = False,
    batch_size: int | None = None,
) -> PatchingResult:
    """The sweep behind :func:`activation_patching`, as a :class:`PatchingResult`.

    ``batch_size`` bounds the patched runs per forward (default: about 2048 tokens' worth).
    """
    if batch_size is not None and (not is_int(batch_size) or batch_size < 1):
        raise InputError(f"batch_size must be a positive int; got {batch_size!r}")
    setup = prepare_patching(
        model, clean_text, corrupted_text, component, layers, metric, answer, positions
    )
    indices, sites, cols, score = setup.layers, setup.sites, setup.positions, setup.score
    corrupted_array = setup.corrupted.array
    patches = dict(zip(sites, setup.targets, strict=True))

    rows: list[PatchRow] = [(j, tuple(cols)) for j in range(len(indices))]
    if by_position:
        rows += [(j, (p,)) for j in range(len(indices)) for p in cols]
    rows = sorted(dict.fromkeys(rows), key=lambda row: indices[row[0]])
    per_forward = batch_size or max(
        1, min(DEFAULT_BATCH_TOKENS // corrupted_array.shape[1], -(-len(rows) // PREFIX_GROUPS))
    )
    chunks = [rows[k : k + per_forward] for k in range(0, len(rows), per_forward)]
    starts = sorted({indices[chunk[0][0]] for chunk in chunks} - {0})
    residuals = [model.layer_name(s - 1) for s in starts]

    corrupted = model.run(corrupted_array, capture=residuals)
    clean_value = _float(score(setup.clean.output[:, -1]))
    corrupted_value = _float(score(corrupted.output[:, -1]))

    # a layer called more than once per forward (shared weights) has no single output to
    # start from: run such models from the embedding
    reuse = all(corrupted.call_counts.get(name) == 1 for name in residuals)
    values: dict[PatchRow, float] = {}
    for chunk in chunks:
        start = indices[chunk[0][0]] if reuse else 0
        prefix = (
            {model.layer_name(start - 1): corrupted.activations[model.layer_name(start - 1)]}
            if start > 0
            else {}
        )
        out = _patched_run(model, corrupted_array, chunk, sites, patches, prefix)
        scores = cast(list[float], score(out).tolist())  # one per row of the chunk
        values.update(zip(chunk, scores, strict=True))

    layer_values = {indices[j]: values[(j, tuple(cols))] for j in range(len(indices))}
    recovered, note = recovery(list(layer_values.values()), clean_value, corrupted_value)
    matrix = None
    if by_position:
        matrix = [
            recovery([values[(j, (p,))] for p in cols], clean_value, corrupted_value)[0]
            for j in range(len(indices))
        ]
    return PatchingResult(
        recovery=dict(zip(layer_values, recovered, strict=True)),
        baseline=clean_value - corrupted_value if metric == "logit_diff" else corrupted_value,
        clean_value=clean_value,
        corrupted_value=corrupted_value,
        metric=metric,
        component=component or "output",
        layers=indices,
        positions=cols,
        tokens=setup.tokens(model),
        values=layer_values,
        matrix=matrix,
        note=note,
    )


@dataclass
class PatchingSetup:
    """What activation and attribution patching share: the layers and their component
    sites, the clean trace, the bound metric, the corrupted input, the corrupted positions
    to patch and each site's clean activation right-aligned to the corrupted prompt."""

    layers: list[int]
    sites: list[str]
    clean: Trace
    score: Metric
    corrupted: PreparedInput
    positions: list[int]
    targets: list[mx.array]

    def tokens(self, model: InterpretableModel) -> list[str]:
        """The text of the corrupted tokens at ``positions`` (ids or indices without one)."""
        ids = self.corrupted.tokens[0] if self.corrupted.tokens else None
        if ids is None:
            return [str(p) for p in self.positions]
        return [model.token_text(ids[p]) for p in self.positions]


def prepare_patching(
    model: InterpretableModel,
    clean_text: Any,
    corrupted_text: Any,
    component: str | None,
    layers: Layers,
    metric: str,
    answer: Sequence[int | str] | None,
    positions: int | Sequence[int] | None = None,
) -> PatchingSetup:
    """Check the arguments (before any forward pass), run the clean prompt once capturing the
    component of every layer, and right-align it with the corrupted prompt."""
    if component is not None and not isinstance(component, str):
        raise InputError(f"component must be a module name such as 'mlp'; got {component!r}")
    check_metric(metric)
    indices = layer_indices(model, layers)
    sites = [model.layer_name(i, component) for i in indices]  # unknown names raise here
    answer_pair = answer_ids(model, answer) if metric == "logit_diff" else None
    clean_input, corrupted = model.prepare(clean_text), model.prepare(corrupted_text)
    for which, prepared in (("clean_text", clean_input), ("corrupted_text", corrupted)):
        if prepared.array.shape[0] != 1:
            raise InputError(
                f"{which} must be one prompt, not a batch of {prepared.array.shape[0]}"
            )
    clean_len, corrupted_len = clean_input.array.shape[1], corrupted.array.shape[1]
    cols = _patch_positions(positions, corrupted_len, min(clean_len, corrupted_len))
    clean = model.run(clean_input.array, capture=sites)
    if clean.output.ndim != 3:
        raise InputError(
            "patching compares final-position logits, so the model must output (batch, seq, "
            f"vocab); it gave shape {tuple(clean.output.shape)}"
        )
    targets = [_right_aligned(clean.activations[s], clean_len, corrupted_len, s) for s in sites]
    return PatchingSetup(
        indices,
        sites,
        clean,
        Metric(metric, clean.output[0, -1], answer_pair),
        corrupted,
        cols,
        targets,
    )


def _patched_run(
    model: InterpretableModel,
    corrupted: mx.array,
    chunk: list[PatchRow],
    sites: list[str],
    patches: dict[str, mx.array],
    prefix: dict[str, mx.array],
) -> mx.array:
    """One forward of the corrupted input tiled to one row per patch; final-position logits."""
    batch, seq = len(chunk), corrupted.shape[1]
    masks: dict[str, np.ndarray] = {}
    for r, (j, cols) in enumerate(chunk):
        mask = masks.setdefault(sites[j], np.zeros((batch, seq), dtype=bool))
        mask[r, list(cols)] = True
    interventions: dict[str, InterventionFn] = {
        name: _constant(value) for name, value in prefix.items()
    }
    for site, mask in masks.items():
        interventions[site] = _row_patch(patches[site], mx.array(mask))
    tiled = mx.broadcast_to(corrupted, (batch, *corrupted.shape[1:]))
    return model.run(tiled, interventions=interventions, capture=[]).output[:, -1]


def _row_patch(value: mx.array, mask: mx.array) -> Callable[[mx.array], mx.array]:
    """Replace ``x`` by ``value`` where ``mask`` (batch, seq) is set: each row its own patch."""

    def patch(x: mx.array) -> mx.array:
        where = mask.reshape(mask.shape + (1,) * (x.ndim - 2))
        return mx.where(where, value.astype(x.dtype), x)

    return patch


def _constant(value: mx.array) -> Callable[[mx.array], mx.array]:
    return lambda x: value


def _right_aligned(act: mx.array, clean_len: int, corrupted_len: int, site: str) -> mx.array:
    """The clean activation laid over the corrupted positions, final tokens matched."""
    if act.ndim < 2 or act.shape[0] != 1 or act.shape[1] != clean_len:
        raise InputError(
            f"{site} outputs shape {tuple(act.shape)}; patching needs (1, seq, ...) with the "
            f"prompt's {clean_len} positions on axis 1"
        )
    if clean_len >= corrupted_len:
        return act[:, clean_len - corrupted_len :]
    pad = mx.zeros((1, corrupted_len - clean_len, *act.shape[2:]), dtype=act.dtype)
    return mx.concatenate([pad, act], axis=1)


def _patch_positions(positions: int | Sequence[int] | None, length: int, shared: int) -> list[int]:
    """Corrupted-prompt positions to patch: the shared final ``shared`` ones by default."""
    first = length - shared
    if positions is None:
        return list(range(first, length))
    wanted = int_list(positions)
    if wanted is None:
        raise InputError(f"positions must be an int or a list of ints; got {positions!r}")
    out = []
    for p in wanted:
        q = int(p) + length if p < 0 else int(p)
        if not first <= q < length:
            raise InputError(
                f"position {p} cannot be patched: the corrupted prompt has {length} tokens and "
                f"only its last {shared} line up with the clean prompt (positions {first}.."
                f"{length - 1}, or -{shared}..-1)"
            )
        out.append(q)
    return list(dict.fromkeys(out))


def _float(values: mx.array) -> float:
    return cast(float, values[0].item())  # a float32 metric value
