"""The logit lens: what each layer's residual stream predicts, read out by the model's head.

One forward pass captures only the layer outputs; they are stacked and sent through the
model's own read-out (final norm, tied/untied/quantized head, soft-capping: see
``mlxterp.unembed``) in a single projection, followed by one top-k.  The last layer's lens
is therefore exactly the model's prediction.

* ``logit_lens`` — the spec's dict ``{layer: [[(token_id, logit, token_str), ...] per
  position]}`` (or one position's list with ``position=``), optionally drawn in the terminal.
* ``lens`` — a ``LensResult`` with probabilities, input tokens and an optional target token's
  probability per layer; ``to_summary()`` gives plain values for sessions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast

import mlx.core as mx

from . import plotting
from .activations import Layers, is_int, layer_indices
from .errors import InputError

if TYPE_CHECKING:
    from .interventions import InterventionFn
    from .model import InterpretableModel
    from .tracing import Trace

LensCell = tuple[int, float, str]
"""One prediction of the logit lens: ``(token_id, logit, token_text)``."""

LogitLens = dict[int, list[list[LensCell]]] | dict[int, list[LensCell]]
"""``logit_lens``'s result: per layer, the top-k cells of every position (or of one)."""


class LensSummary(TypedDict):
    """``LensResult.to_summary()``: per layer (rows) and position, the top-1 cell."""

    layers: list[int]
    tokens: list[str]
    top_ids: list[list[int]]
    top_strs: list[list[str]]
    top_probs: list[list[float]]
    target: NotRequired[int]  # with a target: its probability per layer, last position
    target_probs: NotRequired[list[float]]


@dataclass
class LensResult:
    """Lens of one prompt: per layer, per position, the top-k tokens and probabilities."""

    layers: list[int]
    tokens: list[str]  # the input tokens, as text
    top_ids: list[list[list[int]]]  # [layer][position][k]
    top_probs: list[list[list[float]]]
    top_strs: list[list[list[str]]]
    target: int | None = None
    target_probs: list[float] | None = None  # per layer, at the last position

    def to_summary(self) -> LensSummary:
        """Plain values to store and compare: the top-1 token and probability of every cell,
        and the target's probability per layer."""
        summary: LensSummary = {
            "layers": list(self.layers),
            "tokens": list(self.tokens),
            "top_ids": [[cell[0] for cell in row] for row in self.top_ids],
            "top_strs": [[cell[0] for cell in row] for row in self.top_strs],
            "top_probs": [[cell[0] for cell in row] for row in self.top_probs],
        }
        if self.target is not None:
            summary["target"] = self.target
            summary["target_probs"] = list(self.target_probs or [])
        return summary

    def heatmap(
        self,
        max_display_tokens: int = 15,
        cmap: str = "viridis",
        cell_width: int = 8,
        color: bool = True,
    ) -> str:
        """Layers x the last ``max_display_tokens`` positions: each cell shows the top token,
        coloured by its probability."""
        _check_positive("max_display_tokens", max_display_tokens)
        n_pos = len(self.top_ids[0]) if self.top_ids else 0
        start = max(0, n_pos - max_display_tokens)
        columns = self.tokens[start:] if self.tokens else [str(p) for p in range(start, n_pos)]
        return plotting.heatmap_text(
            [[cell[0] for cell in row[start:]] for row in self.top_probs],
            [f"L{layer}" for layer in self.layers],
            columns,
            [[cell[0] for cell in row[start:]] for row in self.top_strs],
            cmap=cmap,
            cell_width=cell_width,
            vmin=0.0,
            vmax=1.0,
            color=color,
            title="Logit lens: top token per layer (rows) and input position (columns); "
            "colour = probability",
        )


def top_entries(values: mx.array, k: int) -> tuple[mx.array, mx.array]:
    """Indices and values of the ``k`` largest entries along the last axis, largest first."""
    k = min(k, values.shape[-1])
    if k == 1:  # argmax is ~10x cheaper than a partition on the CPU
        idx = mx.argmax(values, axis=-1, keepdims=True)
        return idx, mx.take_along_axis(values, idx, axis=-1)
    idx = mx.argpartition(-values, kth=k - 1, axis=-1)[..., :k]
    vals = mx.take_along_axis(values, idx, axis=-1)
    order = mx.argsort(-vals, axis=-1)
    return mx.take_along_axis(idx, order, axis=-1), mx.take_along_axis(vals, order, axis=-1)


def _residuals(
    model: InterpretableModel,
    inputs: Any,
    layers: Layers,
    interventions: dict[str, InterventionFn] | None = None,
) -> tuple[list[int], mx.array, Trace]:
    """One traced forward capturing only the layer outputs: ``(layers, (n_layers, seq,
    hidden), trace)`` for a single prompt."""
    indices = layer_indices(model, layers)
    names = [model.layer_name(i) for i in indices]
    trace = model.run(inputs, interventions=interventions, capture=names)
    batch = trace.output.shape[0]
    if batch != 1:
        raise InputError(f"the logit lens reads one prompt at a time; got a batch of {batch}")
    return indices, mx.stack([trace.activations[n][0] for n in names]), trace


def _check_positive(name: str, value: Any) -> None:
    if not is_int(value) or value < 1:
        raise InputError(f"{name} must be a positive int; got {value!r}")


def _result(
    model: InterpretableModel,
    layers: list[int],
    logits: mx.array,
    trace: Trace,
    k: int,
    target: int | None = None,
) -> LensResult:
    """A ``LensResult`` from float32 logits ``(n_layers, seq, vocab)``."""
    if target is not None and target >= logits.shape[-1]:
        raise InputError(f"token id {target} is outside the vocabulary ({logits.shape[-1]} tokens)")
    probs = mx.softmax(logits, axis=-1)
    ids, top_p = top_entries(probs, k)
    target_p = probs[:, -1, target] if target is not None else None
    mx.eval(ids, top_p, *([target_p] if target_p is not None else []))
    text = functools.cache(model.token_text)  # each id decoded once
    ids_list = cast(list[list[list[int]]], ids.tolist())  # (layers, seq, k)
    return LensResult(
        layers=layers,
        tokens=[text(t) for t in trace.inputs[0]] if trace.inputs else [],
        top_ids=ids_list,
        top_probs=cast(list[list[list[float]]], top_p.tolist()),
        top_strs=[[[text(i) for i in cell] for cell in row] for row in ids_list],
        target=target,
        target_probs=cast(list[float], target_p.tolist()) if target_p is not None else None,
    )


def lens(
    model: InterpretableModel,
    inputs: Any,
    layers: Layers = None,
    top_k: int = 5,
    target: int | str | None = None,
    interventions: dict[str, InterventionFn] | None = None,
) -> LensResult:
    """Logit lens of one prompt with probabilities (softmax in float32).

    ``target`` (a token id or a one-token string) adds its probability at the last position
    for every layer; ``interventions`` are applied during the forward pass.
    """
    _check_positive("top_k", top_k)
    unembed = model.unembedder
    target_id = None if target is None else model.token_id(target)
    indices, hidden, trace = _residuals(model, inputs, layers, interventions)
    return _result(model, indices, unembed(hidden), trace, top_k, target_id)


def logit_lens(
    model: InterpretableModel,
    text: Any,
    top_k: int = 1,
    layers: Layers = None,
    position: int | None = None,
    plot: bool = False,
    max_display_tokens: int = 15,
    figsize: tuple[float, float] = (16, 10),
    cmap: str = "viridis",
) -> LogitLens:
    """What each layer predicts at each position: ``{layer: [[(id, logit, text), ...] per
    position]}`` with the ``top_k`` best tokens, best first.

    ``position=p`` (negative counts from the end) gives ``{layer: [(id, logit, text), ...]}``
    for that position only.  ``layers`` picks layers (default all; keys are non-negative
    indices).  ``plot=True`` prints a layers x positions grid of top tokens coloured by
    probability (colour map ``cmap``) for the last ``max_display_tokens`` positions;
    ``figsize[0]`` sets its width at about 10 terminal columns per unit.
    """
    _check_positive("top_k", top_k)
    if plot:  # bad plot settings fail before the model runs
        _check_positive("max_display_tokens", max_display_tokens)
        plotting.color_at(cmap, 0.0)
    unembed = model.unembedder
    indices, hidden, trace = _residuals(model, text, layers)
    seq = hidden.shape[1]
    if position is not None:
        if not is_int(position) or not -seq <= position < seq:
            raise InputError(f"position {position!r} is out of range for a prompt of {seq} tokens")
        position = int(position) % seq
    if position is None or plot:  # the plot shows every position
        logits = unembed(hidden)
        picked = logits if position is None else logits[:, position : position + 1]
    else:
        logits = picked = unembed(hidden[:, position : position + 1])
    ids, scores = top_entries(picked, top_k)
    text_of = functools.cache(model.token_text)  # each id decoded once
    rows = [
        [
            [(i, s, text_of(i)) for i, s in zip(cell_ids, cell_scores, strict=True)]
            for cell_ids, cell_scores in zip(row_ids, row_scores, strict=True)
        ]
        for row_ids, row_scores in zip(
            cast(list[list[list[int]]], ids.tolist()),  # (layers, positions, k)
            cast(list[list[list[float]]], scores.tolist()),
            strict=True,
        )
    ]
    if plot:
        width = max(4, min(12, (int(figsize[0] * 10) - 6) // max(1, min(seq, max_display_tokens))))
        print(_result(model, indices, logits, trace, 1).heatmap(max_display_tokens, cmap, width))
    if position is not None:
        return {layer: row[0] for layer, row in zip(indices, rows, strict=True)}
    return dict(zip(indices, rows, strict=True))
