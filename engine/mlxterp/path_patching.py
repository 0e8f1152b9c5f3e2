"""Path patching: what sender components (heads, MLPs) change in receiver components
(heads' queries, keys and values, MLPs, or the final residual) along the direct paths of
the residual stream, every other component frozen — the algorithm of Wang et al.'s IOI
paper, as TransformerLens practice runs it.

**Direction.**  Path patching here *noises*: the clean run is the base, the senders take
their corrupted values, and the metric measures how far the clean result moves.  (Activation
patching in ``mlxterp.patching`` denoises: clean values go into the corrupted run.)
``effect`` is the percent of the clean-to-corrupted change of the metric that the paths
carry: ``(value - clean_value) / (corrupted_value - clean_value) * 100``.

**The three runs.**

1. The clean and corrupted prompts run once, keeping the senders' values (a head's value
   is its share of the attention output, ``mlxterp.heads``) and, of the clean run, what run
   2 freezes (attention and MLP outputs) and each layer's output: every later run starts
   from the clean residual below its lowest sender (or receiver), since under it nothing
   differs from the clean run.
2. The clean prompt runs with each sender replaced by its corrupted value (at ``positions``,
   default all) and every other component frozen to its clean value: with ``freeze="all"``
   every other head (a whole attention output where the layer holds no sender) and every
   MLP; with ``freeze="heads"`` the heads only, MLPs recomputing (the IOI paper's choice:
   MLPs count as part of the direct path); with ``freeze="none"`` nothing.  What each
   receiver reads is kept.
3. The clean prompt runs once more with only the receivers' inputs replaced by what they
   read in run 2, and nothing frozen; the metric is read from its final-position logits.
   With ``receivers="final"`` there is no third run: run 2's own logits are read (the final
   residual is the receiver).

**Seams.**  A head's query (key, value) input is the residual its ``q`` (``k``, ``v``)
projection reads; replacing that input for one head only is replacing the head's columns of
the projection's output by those the projection gave in run 2, which is exact (the other
heads' columns stay clean).  Separate ``q_proj``/``k_proj``/``v_proj`` projections and the
fused ``qkv_proj`` (phi3), ``c_attn`` (gpt2) and ``query_key_value`` (gpt_neox, per-head
interleaved) are laid out here; a query or key norm over every head's columns at once
(olmo2) is the seam instead, since it mixes heads.  In grouped-query attention a key or value
belongs to a group of query heads: ``heads.5.k`` is the key of head 5's group, which every
query head of the group reads.  An MLP's input gives its output, so an MLP receiver's output
is replaced by the output it computed in run 2 (before freezing).

**Identities** (``tests/test_path_patching.py``): with ``freeze="none"`` a sender to the
final residual *is* activation patching of the sender in the noising direction
(``patching_sweep(model, corrupted, clean, component=...)``, prompts swapped), to 1e-4; a
receiver in a layer before every sender is untouched (effect 0); a path to a receiver
equals a hand-built run that adds the sender's change to the receiver's residual.

Clean and corrupted prompts must have the same number of tokens (positions correspond).
The sweep (:func:`path_patching_sweep`) puts one sender per row of each batched forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from . import plotting
from .activations import Layers, is_int, layer_indices
from .errors import InputError, ModuleNameError, UnsupportedAttentionError
from .heads import HeadLayout
from .inputs import int_list
from .metrics import Metric, answer_pairs, check_metric, recovery

if TYPE_CHECKING:
    from .interventions import InterventionFn
    from .model import InterpretableModel

FINAL = "final"
FREEZE = ("all", "heads", "none")
INPUTS = ("q", "k", "v")
LINEAR = (nn.Linear, nn.QuantizedLinear)
DEFAULT_BATCH_TOKENS = 2048  # rows x tokens per batched forward of a sweep, by default
PREFIX_GROUPS = 4  # a sweep's rows split into at least this many batches (prefix reuse)


@dataclass(frozen=True)
class Sender:
    """A sender: head ``head`` of layer ``layer``'s attention, or its MLP (``head`` None)."""

    layer: int
    head: int | None

    @property
    def label(self) -> str:
        """``L3H2`` or ``L3 mlp``."""
        return f"L{self.layer} mlp" if self.head is None else f"L{self.layer}H{self.head}"


@dataclass(frozen=True)
class Receiver:
    """A receiver's input: the output of module ``site`` (canonical) is replaced, in the
    columns ``columns`` (one head's) or wholly (None: an MLP)."""

    name: str
    layer: int
    site: str
    columns: tuple[int, int] | None


class PathPatchingSummary(TypedDict):
    """``PathPatchingResult.to_summary()``."""

    metric: str
    freeze: str
    senders: list[str]
    receivers: list[str]
    positions: list[int]
    tokens: list[str]
    value: float
    clean_value: float
    corrupted_value: float
    effect: float
    note: NotRequired[str]


@dataclass
class PathPatchingResult:
    """One path patching run (see the module docstring).

    ``senders`` and ``receivers`` are the names patched (``["final"]`` for the final
    residual; a key or value receiver names the query head it was given for); ``value`` is
    the metric of the path-patched run, ``clean_value`` / ``corrupted_value`` those of the
    clean and corrupted runs (0 and the distance to clean for distances), ``effect`` the
    percent of the clean-to-corrupted change the paths carry.  ``positions`` are where the
    senders were patched, ``tokens`` their text.
    """

    senders: list[str]
    receivers: list[str]
    metric: str
    freeze: str
    positions: list[int]
    tokens: list[str]
    value: float
    clean_value: float
    corrupted_value: float
    effect: float
    note: str | None = None

    def to_summary(self) -> PathPatchingSummary:
        """Plain values to store and compare."""
        summary: PathPatchingSummary = {
            "metric": self.metric,
            "freeze": self.freeze,
            "senders": list(self.senders),
            "receivers": list(self.receivers),
            "positions": list(self.positions),
            "tokens": list(self.tokens),
            "value": self.value,
            "clean_value": self.clean_value,
            "corrupted_value": self.corrupted_value,
            "effect": self.effect,
        }
        if self.note:
            summary["note"] = self.note
        return summary

    def table(self) -> str:
        """The senders, receivers and the three metric values as lines of text."""
        lines = [
            f"Path patching ({self.metric}, frozen: {self.freeze})",
            f"  senders:    {', '.join(self.senders)}",
            f"  receivers:  {', '.join(self.receivers)}",
            f"  clean:      {self.clean_value:+.4f}",
            f"  path:       {self.value:+.4f}  ({self.effect:.1f}% of the change)",
            f"  corrupted:  {self.corrupted_value:+.4f}",
        ]
        if self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)

    def chart(self, width: int = 60, height: int = 16, color: bool = True) -> str:
        """The metric of the clean, path-patched and corrupted runs as a terminal bar chart."""
        fig = plotting.bar_chart(
            ["clean", "path", "corrupted"],
            [self.clean_value, self.value, self.corrupted_value],
            title=f"Path patching: {self.effect:.1f}% of the change ({self.metric})",
            ylabel=self.metric,
            width=width,
        )
        return plotting.to_text(fig, width, height, color)


class PathPatchingSweepSummary(TypedDict):
    """``PathPatchingSweep.to_summary()``: effects in ``layers`` order."""

    metric: str
    freeze: str
    receivers: list[str]
    layers: list[int]
    heads: list[list[float]]
    mlp: NotRequired[list[float]]
    clean_value: float
    corrupted_value: float
    positions: list[int]
    tokens: list[str]
    note: NotRequired[str]


@dataclass
class PathPatchingSweep:
    """Path patching from every head (and MLP) of ``layers``, one sender at a time, to a
    fixed set of receivers.

    ``heads[i][h]`` is the effect (percent, as :attr:`PathPatchingResult.effect`) of head
    ``h`` of layer ``layers[i]``; ``mlp[i]`` that of its MLP (None when MLPs were left out);
    ``head_values`` / ``mlp_values`` hold the metric of each path-patched run.
    """

    receivers: list[str]
    metric: str
    freeze: str
    layers: list[int]
    heads: list[list[float]]
    head_values: list[list[float]]
    mlp: list[float] | None
    mlp_values: list[float] | None
    clean_value: float
    corrupted_value: float
    positions: list[int]
    tokens: list[str]
    note: str | None = None

    def to_summary(self) -> PathPatchingSweepSummary:
        """Plain values to store and compare."""
        summary: PathPatchingSweepSummary = {
            "metric": self.metric,
            "freeze": self.freeze,
            "receivers": list(self.receivers),
            "layers": list(self.layers),
            "heads": [list(row) for row in self.heads],
            "clean_value": self.clean_value,
            "corrupted_value": self.corrupted_value,
            "positions": list(self.positions),
            "tokens": list(self.tokens),
        }
        if self.mlp is not None:
            summary["mlp"] = list(self.mlp)
        if self.note:
            summary["note"] = self.note
        return summary

    def heatmap(self, cmap: str = "RdBu_r", cell_width: int = 7, color: bool = True) -> str:
        """The effects as a coloured layers x heads grid (an ``mlp`` column last when MLPs
        were swept), centred on 0."""
        width = max(len(row) for row in self.heads)
        grid = [row + [0.0] * (width - len(row)) for row in self.heads]
        columns = [f"H{h}" for h in range(width)]
        if self.mlp is not None:
            grid = [[*row, m] for row, m in zip(grid, self.mlp, strict=True)]
            columns.append("mlp")
        target = ", ".join(self.receivers)
        return plotting.heatmap_text(
            grid,
            [f"L{layer}" for layer in self.layers],
            columns,
            [[f"{round(v, 1) + 0.0:.1f}%" for v in row] for row in grid],  # no -0.0
            cmap=cmap,
            cell_width=cell_width,
            centred=True,
            color=color,
            title=f"Path patching effect % to {target} ({self.metric}; rows: layers)",
        )


@dataclass
class _Setup:
    """The clean and corrupted runs and what the path-patched runs need of them."""

    ids: mx.array  # the clean prompt, (1, seq)
    positions: list[int]
    tokens: list[str]
    freeze: str
    score: Metric
    clean_value: float
    corrupted_value: float
    attn: dict[int, str]  # layer -> canonical attention module
    mlp: dict[int, str]  # layer -> canonical MLP
    layouts: dict[int, HeadLayout]
    clean: dict[str, mx.array]  # canonical name -> clean value (attention, MLP, heads)
    corrupted: dict[str, mx.array]  # the senders' corrupted values
    residuals: list[str] | None  # each layer's name, whose clean output starts a run above
    # it (None: a layer runs more than once per forward, so every run starts from the input)

    def start_at(self, layer: int) -> dict[str, InterventionFn]:
        """The intervention that starts a run at ``layer``: the clean output of the layer
        below put in place, so MLX computes nothing under it (none at layer 0)."""
        if self.residuals is None or layer <= 0:
            return {}
        below = self.residuals[layer - 1]
        return {below: _constant(self.clean[below])}

    def effects(self, values: list[float]) -> tuple[list[float], str | None]:
        """Percent of the clean-to-corrupted change per value, and a note when there is none."""
        effects, note = recovery(values, self.corrupted_value, self.clean_value)
        if note:
            note = (
                "the clean and corrupted runs give the same metric value, so there is no "
                "change for a path to carry: every effect is reported as 0"
            )
        return effects, note


def path_patching(
    model: InterpretableModel,
    clean_text: Any,
    corrupted_text: Any,
    senders: str | Sequence[str],
    receivers: str | Sequence[str] = FINAL,
    metric: str = "l2",
    answer: Sequence[Any] | None = None,
    positions: int | Sequence[int] | None = None,
    freeze: str = "all",
) -> PathPatchingResult:
    """Path patching from ``senders`` to ``receivers`` (see the module docstring).

    ``senders``: head names (``"layers.3.attn.heads.2"``; ``"layers.3.attn.heads"`` for
    every head of a layer) and MLPs (``"layers.3.mlp"``), globs allowed; all are patched
    together.  ``receivers``: ``"final"`` (the final residual), or inputs of heads
    (``"layers.5.attn.heads.1.q"``, ``.k``, ``.v``; a head name alone means all three) and
    MLPs (``"layers.5.mlp"``), globs allowed.  ``metric`` and ``answer`` as in activation
    patching; ``positions`` (clean-prompt indices, negative from the end) limit where the
    senders take their corrupted values; ``freeze`` is ``"all"``, ``"heads"`` or ``"none"``.
    """
    chosen = _senders(model, senders)
    setup, receiver_list = _prepare(
        model, clean_text, corrupted_text, metric, answer, positions, freeze, receivers, chosen
    )
    (value,) = _path_values(model, setup, [chosen], receiver_list)
    (effect,), note = setup.effects([value])
    return PathPatchingResult(
        senders=[_sender_name(model, s) for s in chosen],
        receivers=[FINAL] if not receiver_list else [r.name for r in receiver_list],
        metric=metric,
        freeze=freeze,
        positions=setup.positions,
        tokens=setup.tokens,
        value=value,
        clean_value=setup.clean_value,
        corrupted_value=setup.corrupted_value,
        effect=effect,
        note=note,
    )


def path_patching_sweep(
    model: InterpretableModel,
    clean_text: Any,
    corrupted_text: Any,
    receivers: str | Sequence[str] = FINAL,
    metric: str = "l2",
    answer: Sequence[Any] | None = None,
    positions: int | Sequence[int] | None = None,
    freeze: str = "all",
    layers: Layers = None,
    include_mlp: bool = True,
    batch_size: int | None = None,
) -> PathPatchingSweep:
    """Path patching from every head of ``layers`` (default all) — and every MLP unless
    ``include_mlp=False`` — one sender at a time, to the fixed ``receivers``: a layers x
    heads grid of effects (the arguments as in :func:`path_patching`).

    The senders run as rows of batched forwards, in layer order, ``batch_size`` rows at a
    time (default: about 2048 tokens' worth, and at least 4 batches); each batch starts from
    the clean residual below its lowest sender, and its third run from the one below the
    lowest receiver.  Each row gives what :func:`path_patching` gives its sender.
    """
    if batch_size is not None and (not is_int(batch_size) or batch_size < 1):
        raise InputError(f"batch_size must be a positive int; got {batch_size!r}")
    if not isinstance(include_mlp, bool):
        raise InputError(f"include_mlp must be True or False; got {include_mlp!r}")
    indices = layer_indices(model, layers)
    heads = model.module_index.heads
    rows: list[Sender] = []
    for layer in indices:
        layout = heads.get(model.layer_name(layer, "attn"))
        if layout is None:
            raise ModuleNameError(
                f"layer {layer}'s attention has no per-head outputs (mlxterp.heads), so its "
                "heads cannot be senders; choose other layers"
            )
        rows += [Sender(layer, h) for h in range(layout.n_heads)]
        if include_mlp:
            model.layer_name(layer, "mlp")  # a layer without an MLP raises here
            rows.append(Sender(layer, None))
    setup, receiver_list = _prepare(
        model, clean_text, corrupted_text, metric, answer, positions, freeze, receivers, rows
    )
    per_forward = batch_size or max(
        1, min(DEFAULT_BATCH_TOKENS // setup.ids.shape[1], -(-len(rows) // PREFIX_GROUPS))
    )
    values: list[float] = []
    for k in range(0, len(rows), per_forward):
        chunk = rows[k : k + per_forward]
        values += _path_values(model, setup, [[s] for s in chunk], receiver_list)
    effects, note = setup.effects(values)
    found = dict(zip(rows, zip(effects, values, strict=True), strict=True))
    grid = [
        [found[s] for s in rows if s.layer == layer and s.head is not None] for layer in indices
    ]
    mlp = [found[Sender(layer, None)] for layer in indices] if include_mlp else None
    return PathPatchingSweep(
        receivers=[FINAL] if not receiver_list else [r.name for r in receiver_list],
        metric=metric,
        freeze=freeze,
        layers=indices,
        heads=[[e for e, _ in row] for row in grid],
        head_values=[[v for _, v in row] for row in grid],
        mlp=None if mlp is None else [e for e, _ in mlp],
        mlp_values=None if mlp is None else [v for _, v in mlp],
        clean_value=setup.clean_value,
        corrupted_value=setup.corrupted_value,
        positions=setup.positions,
        tokens=setup.tokens,
        note=note,
    )


# --------------------------------------------------------------------------- names
def _names(value: Any, what: str) -> list[str]:
    listed = [value] if isinstance(value, str) else value
    if (
        not isinstance(listed, (list, tuple))
        or not listed
        or not all(isinstance(n, str) and n for n in listed)
    ):
        raise InputError(f"{what} takes a name or a non-empty list of names; got {value!r}")
    return list(listed)


def _matches(model: InterpretableModel, name: str) -> list[str]:
    """Canonical names (modules or heads) ``name`` reaches; unknown names raise."""
    found = model.module_index.match(name)
    if not found:
        model.resolve(name)  # raises the helpful error
    return found


def _layers_of(model: InterpretableModel, role: str) -> dict[str, int]:
    """Canonical name of each layer's ``role`` module (``attn``, ``mlp``) -> its layer."""
    found: dict[str, int] = {}
    for i in range(model.num_layers):
        try:
            found[model.layer_name(i, role)] = i
        except ModuleNameError:
            continue
    return found


def _senders(model: InterpretableModel, senders: Any) -> list[Sender]:
    """The senders ``senders`` names: heads (one, or all of a layer) and MLPs."""
    index = model.module_index
    mlps = _layers_of(model, "mlp")
    found: list[Sender] = []
    for name in _names(senders, "senders"):
        for canonical in _matches(model, name):
            if canonical in index.head_sites:
                layout, head = index.head_sites[canonical]
                layer = cast(int, index.layer_index_of(layout.attn))
                heads = range(layout.n_heads) if head is None else [head]
                found += [Sender(layer, h) for h in heads]
            elif canonical in mlps:
                found.append(Sender(mlps[canonical], None))
            else:
                raise InputError(
                    f"sender {name!r} reaches {index.short_name(canonical)}, which is neither "
                    "a head nor an MLP: senders are heads (layers.3.attn.heads.2, or "
                    "layers.3.attn.heads for every head of a layer) and MLPs (layers.3.mlp)"
                )
    return list(dict.fromkeys(found))


def _sender_name(model: InterpretableModel, sender: Sender) -> str:
    index = model.module_index
    if sender.head is None:
        return index.short_name(model.layer_name(sender.layer, "mlp"))
    layout = index.heads[model.layer_name(sender.layer, "attn")]
    return index.short_name(layout.head_name(sender.head))


def _receivers(model: InterpretableModel, receivers: Any) -> list[Receiver]:
    """The receivers' inputs ``receivers`` names; empty for ``"final"``."""
    if receivers == FINAL:
        return []
    index = model.module_index
    mlps = _layers_of(model, "mlp")
    found: list[Receiver] = []
    for name in _names(receivers, "receivers"):
        if name == FINAL:
            raise InputError(
                "'final' is a receiver on its own (receivers='final'): the final residual "
                "holds every other receiver's effect"
            )
        base, _, last = name.rpartition(".")
        inputs = (last,) if base and last in INPUTS else INPUTS
        base = base if base and last in INPUTS else name
        for canonical in _matches(model, base):
            if canonical in index.head_sites:
                layout, head = index.head_sites[canonical]
                heads = range(layout.n_heads) if head is None else [head]
                found += [_head_input(model, layout, h, which) for h in heads for which in inputs]
            elif canonical in mlps and inputs == INPUTS and base == name:
                found.append(
                    Receiver(index.short_name(canonical), mlps[canonical], canonical, None)
                )
            else:
                raise InputError(
                    f"receiver {name!r} reaches {index.short_name(canonical)}: receivers are "
                    "'final', inputs of heads (layers.5.attn.heads.1.q, .k or .v; the head "
                    "name alone for all three) and MLPs (layers.5.mlp)"
                )
    seen: set[tuple[str, tuple[int, int] | None]] = set()
    unique = []  # a key or value shared by a group is one receiver (the first name kept)
    for r in found:
        if (r.site, r.columns) not in seen:
            seen.add((r.site, r.columns))
            unique.append(r)
    return unique


def _head_input(model: InterpretableModel, layout: HeadLayout, head: int, which: str) -> Receiver:
    """Where head ``head``'s ``which`` (q, k or v) input is replaced: the module whose output
    holds that head's columns, and the columns."""
    index = model.module_index
    attn = index.modules[layout.attn]
    d, n_heads = layout.head_dim, layout.n_heads
    layer = cast(int, index.layer_index_of(layout.attn))
    name = f"{index.short_name(layout.head_name(head))}.{which}"

    def group(n_kv: int) -> int:  # the key/value head a query head reads
        return head if which == "q" else head // (n_heads // n_kv)

    if all(isinstance(attn.get(f"{x}_proj"), LINEAR) for x in INPUTS):
        proj = f"{which}_proj"
        width = int(attn[proj]["weight"].shape[0])
        site = f"{layout.attn}.{proj}"
        norm = attn.get(f"{which}_norm")  # olmo2: one norm over every head's columns
        if isinstance(norm, nn.Module) and _width(norm) == width:
            site = f"{layout.attn}.{which}_norm"
        start = group(width // d) * d
    elif isinstance(attn.get("qkv_proj"), LINEAR):  # phi3: [q | k | v]
        n_kv = (int(attn["qkv_proj"]["weight"].shape[0]) // d - n_heads) // 2
        offset = {"q": 0, "k": n_heads * d, "v": (n_heads + n_kv) * d}[which]
        site, start = f"{layout.attn}.qkv_proj", offset + group(n_kv) * d
    elif isinstance(attn.get("c_attn"), LINEAR):  # gpt2: [q | k | v], as many heads each
        site = f"{layout.attn}.c_attn"
        start = INPUTS.index(which) * n_heads * d + head * d
    elif isinstance(attn.get("query_key_value"), LINEAR):  # gpt_neox: [q k v] per head
        site = f"{layout.attn}.query_key_value"
        start = head * 3 * d + INPUTS.index(which) * d
    else:
        raise UnsupportedAttentionError(
            f"{index.short_name(layout.attn)} ({type(attn).__name__}) has no query/key/value "
            "projection laid out as path patching knows them (q_proj/k_proj/v_proj, "
            "qkv_proj, c_attn, query_key_value); use MLPs or 'final' as receivers"
        )
    return Receiver(name, layer, site, (start, start + d))


def _width(norm: nn.Module) -> int | None:
    weight = norm.get("weight")
    return int(weight.shape[0]) if isinstance(weight, mx.array) else None


# --------------------------------------------------------------------------- runs
def _prepare(
    model: InterpretableModel,
    clean_text: Any,
    corrupted_text: Any,
    metric: str,
    answer: Sequence[Any] | None,
    positions: int | Sequence[int] | None,
    freeze: str,
    receivers: Any,
    senders: list[Sender],
) -> tuple[_Setup, list[Receiver]]:
    """Check the arguments, run the clean prompt (keeping what run 2 freezes and the
    senders' values) and the corrupted one (keeping the senders' values), bind the metric."""
    check_metric(metric)
    if freeze not in FREEZE:
        raise InputError(f"freeze must be one of {', '.join(map(repr, FREEZE))}; got {freeze!r}")
    receiver_list = _receivers(model, receivers)
    clean_in, corrupted_in = model.prepare(clean_text), model.prepare(corrupted_text)
    for which, prepared in (("clean_text", clean_in), ("corrupted_text", corrupted_in)):
        if prepared.array.ndim != 2 or prepared.array.shape[0] != 1:
            raise InputError(f"{which} must be one prompt of token ids or text")
    seq = clean_in.array.shape[1]
    if corrupted_in.array.shape[1] != seq:
        raise InputError(
            f"path patching needs clean and corrupted prompts of the same length: the clean "
            f"one has {seq} tokens, the corrupted one {corrupted_in.array.shape[1]}"
        )
    cols = _positions(positions, seq)
    attn, mlp = _layers_of(model, "attn"), _layers_of(model, "mlp")
    layouts = {
        i: model.module_index.heads[n] for n, i in attn.items() if n in model.module_index.heads
    }
    sites = sorted({_site(layouts, mlp, s) for s in senders})
    frozen = list(attn) if freeze != "none" else []
    frozen += list(mlp) if freeze == "all" else []
    frozen += [model.layer_name(i) for i in range(model.num_layers)]  # where runs start
    clean = model.run(clean_in.array, capture=[*frozen, *sites])
    corrupted = model.run(corrupted_in.array, capture=sites)
    if clean.output.ndim != 3:
        raise InputError(
            "path patching compares final-position logits, so the model must output (batch, "
            f"seq, vocab); it gave shape {tuple(clean.output.shape)}"
        )
    residuals = [model.layer_name(i) for i in range(model.num_layers)]
    answers = answer_pairs(model, answer, 1) if metric == "logit_diff" else None
    score = Metric(metric, clean.output[:, -1], answers)
    ids = clean_in.tokens[0] if clean_in.tokens else None
    tokens = [model.token_text(ids[p]) if ids else str(p) for p in cols]
    return (
        _Setup(
            ids=clean_in.array,
            positions=cols,
            tokens=tokens,
            freeze=freeze,
            score=score,
            clean_value=_floats(score(clean.output[:, -1]))[0],
            corrupted_value=_floats(score(corrupted.output[:, -1]))[0],
            attn={i: name for name, i in attn.items()},
            mlp={i: name for name, i in mlp.items()},
            layouts=layouts,
            clean={n: clean.activations[n] for n in [*frozen, *sites]},
            corrupted={n: corrupted.activations[n] for n in sites},
            residuals=residuals if all(clean.call_counts.get(n) == 1 for n in residuals) else None,
        ),
        receiver_list,
    )


def _site(layouts: dict[int, HeadLayout], mlps: dict[str, int], sender: Sender) -> str:
    """The name whose value a sender replaces: its layer's ``<attn>.heads`` or its MLP."""
    if sender.head is None:
        return next(name for name, i in mlps.items() if i == sender.layer)
    return layouts[sender.layer].name


def _positions(positions: int | Sequence[int] | None, seq: int) -> list[int]:
    if positions is None:
        return list(range(seq))
    wanted = int_list(positions)
    if wanted is None:
        raise InputError(f"positions must be an int or a list of ints; got {positions!r}")
    out = []
    for p in wanted:
        q = int(p) + seq if p < 0 else int(p)
        if not 0 <= q < seq:
            raise InputError(f"position {p} is outside the prompt's {seq} tokens")
        out.append(q)
    return sorted(set(out))


def _path_values(
    model: InterpretableModel, setup: _Setup, rows: list[list[Sender]], receivers: list[Receiver]
) -> list[float]:
    """The metric of each row's path-patched run (row ``r`` patches the senders
    ``rows[r]``): run 2 for every row in one batched forward, then run 3 likewise.

    Below the lowest sender (run 2) and the lowest receiver (run 3) every row is the clean
    run, so each starts from the clean residual there."""
    n = len(rows)
    ids = mx.broadcast_to(setup.ids, (n, setup.ids.shape[1]))
    stash: dict[str, mx.array] = {}
    mlp_receivers = {r.site for r in receivers if r.columns is None}
    interventions = {
        **setup.start_at(min(s.layer for senders in rows for s in senders)),
        **_freezing(setup, rows, mlp_receivers, stash),
    }
    captured = sorted({r.site for r in receivers if r.columns is not None})
    second = model.run(ids, interventions=interventions, capture=captured)
    if not receivers:
        return _floats(setup.score(second.output[:, -1]))
    read = {**{site: second.activations[site] for site in captured}, **stash}
    interventions = {
        **setup.start_at(min(r.layer for r in receivers)),
        **_replacing(receivers, read),
    }
    third = model.run(ids, interventions=interventions, capture=[])
    return _floats(setup.score(third.output[:, -1]))


def _freezing(
    setup: _Setup, rows: list[list[Sender]], mlp_receivers: set[str], stash: dict[str, mx.array]
) -> dict[str, InterventionFn]:
    """Run 2's interventions: the senders take their corrupted values in their rows, the
    other components are frozen as ``setup.freeze`` says, MLP receivers' outputs are kept."""
    seq = setup.ids.shape[1]
    masks: dict[str, np.ndarray] = {}  # sender site -> (rows, seq[, heads]) where to patch
    for r, senders in enumerate(rows):
        for s in senders:
            site = setup.layouts[s.layer].name if s.head is not None else setup.mlp[s.layer]
            if s.head is None:
                masks.setdefault(site, np.zeros((len(rows), seq), dtype=bool))
                masks[site][r, setup.positions] = True
            else:
                shape = (len(rows), seq, setup.layouts[s.layer].n_heads)
                masks.setdefault(site, np.zeros(shape, dtype=bool))
                masks[site][r, setup.positions, s.head] = True
    out: dict[str, InterventionFn] = {}
    for layer, attn in setup.attn.items():
        heads = setup.layouts[layer].name if layer in setup.layouts else ""
        if heads in masks:
            base = setup.clean[heads] if setup.freeze != "none" else None
            out[heads] = _patch(masks[heads], setup.corrupted[heads], base)
        elif setup.freeze != "none":
            out[attn] = _constant(setup.clean[attn])
    for mlp in setup.mlp.values():
        frozen = setup.clean[mlp] if setup.freeze == "all" else None
        patch = _patch(masks[mlp], setup.corrupted[mlp], frozen) if mlp in masks else None
        if patch is None and frozen is not None:
            patch = _constant(frozen)
        if mlp in mlp_receivers:
            out[mlp] = _keeping(mlp, stash, patch)
        elif patch is not None:
            out[mlp] = patch
    return out


def _patch(mask: np.ndarray, corrupted: mx.array, base: mx.array | None) -> InterventionFn:
    """``corrupted`` where ``mask`` (rows, seq[, heads]) is set, else ``base`` (None: the
    value the model computed)."""
    where = mx.array(mask)[..., None]

    def patch(x: mx.array) -> mx.array:
        return mx.where(where, corrupted, x if base is None else base)

    return patch


def _constant(value: mx.array) -> InterventionFn:
    return lambda x: value


def _keeping(name: str, stash: dict[str, mx.array], then: InterventionFn | None) -> InterventionFn:
    """Keep what module ``name`` computed in ``stash``, then apply ``then`` (if any)."""

    def keep(x: mx.array) -> mx.array:
        stash[name] = x
        return x if then is None else then(x)

    return keep


def _replacing(receivers: list[Receiver], read: dict[str, mx.array]) -> dict[str, InterventionFn]:
    """Run 3's interventions: each receiver's columns (or whole output) from run 2."""
    out: dict[str, InterventionFn] = {}
    for site in dict.fromkeys(r.site for r in receivers):
        columns = [r.columns for r in receivers if r.site == site]
        value = read[site]
        if None in columns:
            out[site] = _constant(value)
            continue
        mask = np.zeros(value.shape[-1], dtype=bool)
        for start, stop in cast(list[tuple[int, int]], columns):
            mask[start:stop] = True
        out[site] = _columns(mx.array(mask), value)
    return out


def _columns(mask: mx.array, value: mx.array) -> InterventionFn:
    return lambda x: mx.where(mask, value, x)


def _floats(values: mx.array) -> list[float]:
    return cast(list[float], values.tolist())
