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
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast, overload

import mlx.core as mx

from . import plotting
from .activations import Layers, is_int, layer_indices
from .errors import InputError
from .inputs import Chat
from .inputs import prompt_list as prompt_list  # one rule for prompts; patching reads it here

if TYPE_CHECKING:
    from .interventions import InterventionFn
    from .model import InterpretableModel
    from .tracing import Trace

PromptList = list[str] | tuple[str, ...] | list[list[int]] | list[Chat]
"""A list of prompts (see ``prompt_list``): the analyses give one result per prompt."""

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
    title: str = "Logit lens"  # which lens read the layers (the heatmap's title)

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
            title=f"{self.title}: top token per layer (rows) and input position (columns); "
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


@dataclass
class _Residuals:
    """The layer outputs of one traced forward over one prompt or a padded list of them."""

    layers: list[int]
    hidden: mx.array  # (n_layers, batch, seq, hidden)
    trace: Trace
    lengths: list[int]  # real tokens per row
    batched: bool  # the input was a list of prompts

    def flat(self, cells: list[tuple[int, int]] | None = None) -> mx.array:
        """``(n_layers, cells, hidden)``: the residual at each ``(row, position)``, or at
        every real token, row after row, when ``cells`` is None."""
        n, batch, seq = self.hidden.shape[:3]
        rows = self.hidden.reshape(n, batch * seq, -1)
        if cells is None:
            if all(length == seq for length in self.lengths):
                return rows
            cells = [(b, t) for b, length in enumerate(self.lengths) for t in range(length)]
        return mx.take(rows, mx.array([b * seq + t for b, t in cells]), axis=1)

    def row_tokens(self, model: InterpretableModel) -> list[list[str]]:
        """The text of each row's real tokens (empty lists for non-token inputs)."""
        text = functools.cache(model.token_text)
        ids = self.trace.inputs or [[] for _ in self.lengths]
        return [[text(t) for t in row] for row in ids]


def residuals(
    model: InterpretableModel,
    inputs: Any,
    layers: Layers,
    interventions: dict[str, InterventionFn] | None = None,
) -> _Residuals:
    """One traced forward capturing only the layer outputs, of one prompt or a list;
    ``.flat()`` gives them ``(n_layers, real tokens, hidden)``, row after row."""
    indices = layer_indices(model, layers)
    names = [model.layer_name(i) for i in indices]
    batched = prompt_list(inputs) is not None
    trace = model.run(inputs, interventions=interventions, capture=names)
    hidden = mx.stack([trace.activations[n] for n in names])
    batch, seq = hidden.shape[1], hidden.shape[2]
    if not batched and batch != 1:
        raise InputError(
            f"the logit lens reads one prompt at a time, or a list of prompts; got a batch of "
            f"{batch}: pass the prompts as a list"
        )
    lengths = trace.lengths or [seq] * batch
    return _Residuals(indices, hidden, trace, lengths, batched)


def _check_positive(name: str, value: Any) -> None:
    if not is_int(value) or value < 1:
        raise InputError(f"{name} must be a positive int; got {value!r}")


def _split(values: list[Any], lengths: list[int]) -> list[list[Any]]:
    """A list of cells (row after row) cut into one list per row of ``lengths`` cells."""
    ends = list(itertools.accumulate(lengths))
    return [values[end - n : end] for end, n in zip(ends, lengths, strict=True)]


def _results(
    model: InterpretableModel,
    res: _Residuals,
    logits: mx.array,
    k: int,
    target: int | None = None,
    title: str = "Logit lens",
) -> list[LensResult]:
    """One ``LensResult`` per row from float32 logits ``(n_layers, real tokens, vocab)`` of
    every row's real tokens, row after row."""
    if target is not None and target >= logits.shape[-1]:
        raise InputError(f"token id {target} is outside the vocabulary ({logits.shape[-1]} tokens)")
    probs = mx.softmax(logits, axis=-1)
    ids, top_p = top_entries(probs, k)
    last = mx.array(list(itertools.accumulate(res.lengths))) - 1  # each row's last real token
    target_p = probs[:, last, target] if target is not None else None  # (layers, rows)
    mx.eval(ids, top_p, *([target_p] if target_p is not None else []))
    text = functools.cache(model.token_text)  # each id decoded once
    ids_list = cast(list[list[list[int]]], ids.tolist())  # (layers, cells, k)
    probs_list = cast(list[list[list[float]]], top_p.tolist())
    strs = [[[text(i) for i in cell] for cell in row] for row in ids_list]
    per_row = [
        [_split(layer_cells, res.lengths) for layer_cells in by_layer]
        for by_layer in (ids_list, probs_list, strs)
    ]  # [ids|probs|strs][layer][row][position]
    target_rows = cast(list[list[float]], target_p.T.tolist()) if target_p is not None else None
    return [
        LensResult(
            layers=res.layers,
            tokens=tokens,
            top_ids=[layer[b] for layer in per_row[0]],
            top_probs=[layer[b] for layer in per_row[1]],
            top_strs=[layer[b] for layer in per_row[2]],
            target=target,
            target_probs=target_rows[b] if target_rows is not None else None,
            title=title,
        )
        for b, tokens in enumerate(res.row_tokens(model))
    ]


@overload
def lens(
    model: InterpretableModel,
    inputs: PromptList,
    layers: Layers = None,
    top_k: int = 5,
    target: int | str | None = None,
    interventions: dict[str, InterventionFn] | None = None,
) -> list[LensResult]: ...
@overload
def lens(
    model: InterpretableModel,
    inputs: Any,
    layers: Layers = None,
    top_k: int = 5,
    target: int | str | None = None,
    interventions: dict[str, InterventionFn] | None = None,
) -> LensResult: ...
def lens(
    model: InterpretableModel,
    inputs: Any,
    layers: Layers = None,
    top_k: int = 5,
    target: int | str | None = None,
    interventions: dict[str, InterventionFn] | None = None,
) -> LensResult | list[LensResult]:
    """Logit lens of one prompt with probabilities (softmax in float32); of a list of prompts
    (see :func:`prompt_list`), a list of results, one per prompt and cut to its own tokens.

    ``target`` (a token id or a one-token string) adds its probability at the last position
    (each prompt's last real token) for every layer; ``interventions`` are applied during the
    forward pass.  A list runs as one right-padded forward and one projection of every
    prompt's real tokens.
    """
    unembed = model.unembedder
    return read_lens(
        model, inputs, lambda _, hidden: unembed(hidden), layers, top_k, target, interventions
    )


Readout = Callable[[list[int], mx.array], mx.array]
"""A lens's read-out: the layer indices and their residuals ``(n_layers, cells, hidden)``
to float32 logits ``(n_layers, cells, vocab)``."""


def read_lens(
    model: InterpretableModel,
    inputs: Any,
    readout: Readout,
    layers: Layers = None,
    top_k: int = 5,
    target: int | str | None = None,
    interventions: dict[str, InterventionFn] | None = None,
    title: str = "Logit lens",
) -> LensResult | list[LensResult]:
    """:func:`lens` read through ``readout`` instead of the model's own read-out (the tuned
    lens translates each layer first); ``title`` names the lens in the results."""
    _check_positive("top_k", top_k)
    target_id = None if target is None else model.token_id(target)
    res = residuals(model, inputs, layers, interventions)
    logits = readout(res.layers, res.flat())
    results = _results(model, res, logits, top_k, target_id, title)
    return results if res.batched else results[0]


def _positions(position: Any, lengths: list[int]) -> list[int]:
    """``position`` (negative from the end) as an index into each row's real tokens."""
    out = []
    for b, length in enumerate(lengths):
        if not is_int(position) or not -length <= position < length:
            which = f"prompt {b} has" if len(lengths) > 1 else "a prompt of"
            raise InputError(f"position {position!r} is out of range: {which} {length} tokens")
        out.append(int(position) % length)
    return out


@overload
def logit_lens(
    model: InterpretableModel,
    text: PromptList,
    top_k: int = 1,
    layers: Layers = None,
    position: int | None = None,
    plot: bool = False,
    max_display_tokens: int = 15,
    figsize: tuple[float, float] = (16, 10),
    cmap: str = "viridis",
) -> list[LogitLens]: ...
@overload
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
) -> LogitLens: ...
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
) -> LogitLens | list[LogitLens]:
    """What each layer predicts at each position: ``{layer: [[(id, logit, text), ...] per
    position]}`` with the ``top_k`` best tokens, best first.  A list of prompts (see
    :func:`prompt_list`) gives a list of such dicts, one per prompt, each over its own
    tokens only, from one forward over the padded batch and one projection.

    ``position=p`` (negative counts from the end of each prompt: ``-1`` is its last token)
    gives ``{layer: [(id, logit, text), ...]}`` for that position only.  ``layers`` picks
    layers (default all; keys are non-negative indices).  ``plot=True`` prints a layers x
    positions grid of top tokens coloured by probability (colour map ``cmap``) for the last
    ``max_display_tokens`` positions, one grid per prompt; ``figsize[0]`` sets its width at
    about 10 terminal columns per unit.
    """
    _check_positive("top_k", top_k)
    if plot:  # bad plot settings fail before the model runs
        _check_positive("max_display_tokens", max_display_tokens)
        plotting.color_at(cmap, 0.0)
    unembed = model.unembedder
    res = residuals(model, text, layers)
    picks = None if position is None else _positions(position, res.lengths)
    logits = None
    if picks is None or plot:  # the plot shows every position
        logits = unembed(res.flat())
    if picks is None:
        picked, counts = cast(mx.array, logits), res.lengths
    elif logits is None:
        picked, counts = unembed(res.flat(list(enumerate(picks)))), [1] * len(picks)
    else:
        starts = itertools.accumulate(res.lengths, initial=0)
        picked = logits[:, mx.array([s + p for s, p in zip(starts, picks, strict=False)])]
        counts = [1] * len(picks)
    ids, scores = top_entries(picked, top_k)
    text_of = functools.cache(model.token_text)  # each id decoded once
    cells = [
        [
            [(i, s, text_of(i)) for i, s in zip(cell_ids, cell_scores, strict=True)]
            for cell_ids, cell_scores in zip(row_ids, row_scores, strict=True)
        ]
        for row_ids, row_scores in zip(
            cast(list[list[list[int]]], ids.tolist()),  # (layers, cells, k)
            cast(list[list[list[float]]], scores.tolist()),
            strict=True,
        )
    ]
    per_layer = [_split(layer_cells, counts) for layer_cells in cells]  # [layer][row][position]
    if plot:
        for length, result in zip(
            res.lengths, _results(model, res, cast(mx.array, logits), 1), strict=True
        ):
            cols = max(1, min(length, max_display_tokens))
            width = max(4, min(12, (int(figsize[0] * 10) - 6) // cols))
            print(result.heatmap(max_display_tokens, cmap, width))
    out: list[LogitLens] = [
        {layer: rows[b][0] for layer, rows in zip(res.layers, per_layer, strict=True)}
        if picks is not None
        else {layer: rows[b] for layer, rows in zip(res.layers, per_layer, strict=True)}
        for b in range(len(res.lengths))
    ]
    return out if res.batched else out[0]
