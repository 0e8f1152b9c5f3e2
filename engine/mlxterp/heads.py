"""Per-head outputs: what each attention head writes into the residual stream.

An attention module ends with an output projection (``o_proj``, ``out_proj``, ``dense``,
``c_proj`` ...) applied to the concatenated per-head outputs.  Head ``h``'s contribution is
its slice of the projection's input times the matching columns of the projection's weight
(dequantized for quantized projections), so the attention output is exactly the sum over
heads plus the projection's bias.

Each attention module with such a layout gets virtual names (see ``mlxterp.names``):
``<attn>.heads`` for all heads at once, an array ``(batch, seq, n_heads, hidden)``, and
``<attn>.heads.<h>`` for one head, ``(batch, seq, hidden)``; e.g. ``layers.5.attn.heads.2``.
They work in ``capture=`` (they are captured only when named: ``capture=None`` keeps every
real module, not the per-head views) and in ``interventions=``: an intervention changes
that head's share only, and the attention output moves by exactly the difference.  The
per-head values are computed in float32 from a hook on the output projection's input.

A model sharded for tensor parallelism (mlx-lm's ``model.shard(group)``) holds a slice of
the heads on each rank (rank ``r`` the ``r``-th contiguous slice) and an output projection
that sums over ranks.  Its per-head values are gathered from every rank, so head names,
captures and interventions mean what they mean unsharded: every rank sees every head, and
an intervention moves the (summed) attention output by the same amount on every rank.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import mlx.nn as nn
from mlx.nn.layers.distributed import QuantizedShardedToAllLinear, ShardedToAllLinear

from .errors import InterventionError
from .hooks import InputSite, Site, primary_array

if TYPE_CHECKING:
    from .activations import Layers
    from .model import InterpretableModel
    from .names import ModuleIndex

PROJECTION_NAMES = ("o_proj", "out_proj", "dense", "c_proj", "wo", "out")
HEAD_COUNT_ATTRS = ("n_heads", "num_heads", "num_attention_heads", "n_head")
HEADS = "heads"
QUANTIZED = (nn.QuantizedLinear, QuantizedShardedToAllLinear)
PROJECTIONS = (nn.Linear, ShardedToAllLinear, *QUANTIZED)
SHARDED = (ShardedToAllLinear, QuantizedShardedToAllLinear)  # input split over ranks

Visit = Callable[[str, mx.array], mx.array]
"""Called with a head name and its value; returns what the model should see instead."""


@dataclass(frozen=True)
class HeadLayout:
    """How one attention module's output projection splits into heads."""

    attn: str  # canonical name of the attention module
    proj: str  # canonical name of its output projection
    n_heads: int  # all heads (on every rank together, when sharded)
    head_dim: int
    shards: int = 1  # ranks the heads are split over (tensor parallelism)

    @property
    def name(self) -> str:
        """The name of all heads at once: ``<attn>.heads``."""
        return f"{self.attn}.{HEADS}"

    def head_name(self, head: int) -> str:
        """The name of head ``head``: ``<attn>.heads.<head>``."""
        return f"{self.attn}.{HEADS}.{head}"

    @property
    def names(self) -> list[str]:
        """The all-heads name, then each head's."""
        return [self.name, *(self.head_name(h) for h in range(self.n_heads))]


def projection_in_dims(proj: nn.Module) -> int:
    """Input size of a (possibly quantized) linear layer."""
    weight: mx.array = proj["weight"]
    if isinstance(proj, QUANTIZED):
        return int(weight.shape[1]) * 32 // int(proj.bits)
    return int(weight.shape[1])


def projection_weight(proj: nn.Module) -> mx.array:
    """The weight ``(out, in)`` of a (possibly quantized) linear layer, as float32 (a
    sharded one's slice)."""
    if isinstance(proj, QUANTIZED):
        weight = mx.dequantize(
            proj["weight"],
            proj["scales"],
            proj.get("biases"),
            group_size=proj.group_size,
            bits=proj.bits,
            mode=proj.mode,
        )
    else:
        weight = proj["weight"]
    return weight.astype(mx.float32)


def projection_bias(proj: nn.Module) -> mx.array | None:
    """The output bias of a linear layer, float32 (None when it has none)."""
    return proj["bias"].astype(mx.float32) if "bias" in proj else None


def find_layouts(attention: Mapping[str, nn.Module]) -> dict[str, HeadLayout]:
    """Head layouts of the attention modules (canonical name -> module) that have one: a
    direct (possibly quantized, possibly sharded) linear child under a usual
    output-projection name, and a head count attribute dividing its input size.  The
    others are left out."""
    layouts: dict[str, HeadLayout] = {}
    for name, module in attention.items():
        proj_name = next(
            (p for p in PROJECTION_NAMES if isinstance(module.get(p), PROJECTIONS)), None
        )
        counts = [getattr(module, a, None) for a in HEAD_COUNT_ATTRS]
        count = next((c for c in counts if isinstance(c, int) and not isinstance(c, bool)), 0)
        if proj_name is None or count < 1:
            continue
        proj = module[proj_name]
        in_dims = projection_in_dims(proj)  # a sharded projection's: this rank's heads
        if in_dims % count:
            continue
        shards = proj.group.size() if isinstance(proj, SHARDED) else 1
        layouts[name] = HeadLayout(
            name, f"{name}.{proj_name}", count * shards, in_dims // count, shards
        )
    return layouts


def split_heads(layout: HeadLayout, proj: nn.Module, x: mx.array) -> mx.array:
    """Each head's share of ``proj(x)`` without the bias: ``(..., n_heads, out)`` float32,
    from the projection's input ``x`` of shape ``(..., heads here * head_dim)`` (a sharded
    projection's heads gathered from every rank, in head order)."""
    here = layout.n_heads // layout.shards
    weight = projection_weight(proj)
    weight = weight.reshape(weight.shape[0], here, layout.head_dim)
    per_head = x.astype(mx.float32).reshape(*x.shape[:-1], here, layout.head_dim)
    heads = mx.einsum("...hd,ohd->...ho", per_head, weight)
    if layout.shards == 1:
        return heads
    gathered = mx.distributed.all_gather(heads[None], group=proj.group)  # (ranks, ..., here, o)
    return mx.concatenate([gathered[r] for r in range(layout.shards)], axis=-2)


def head_site(
    layout: HeadLayout,
    proj: nn.Module,
    wanted: Collection[str],
    visit: Visit,
    then: Site | None = None,
    *,
    all_first: bool = False,
) -> InputSite:
    """The site for ``layout.proj``: per-head outputs computed from its input, each name of
    ``wanted`` handed to ``visit``, and the projection's output moved by whatever ``visit``
    changed; ``then`` (the projection's own capture or intervention) sees the result.

    Single heads are visited before all heads at once (so a capture of all heads sees an
    intervention on one), or after with ``all_first`` (an intervention on all heads).
    """
    singles = [h for h in range(layout.n_heads) if layout.head_name(h) in wanted]
    whole = layout.name in wanted

    def visit_singles(heads: mx.array) -> mx.array:
        parts = [heads[..., h, :] for h in range(layout.n_heads)]
        changed = False
        for h in singles:
            new = visit(layout.head_name(h), parts[h])
            changed = changed or new is not parts[h]
            parts[h] = new
        return mx.stack(parts, axis=-2) if changed else heads

    def on_call(out: Any, args: tuple[Any, ...]) -> Any:
        found = primary_array(out)
        if found is not None and args and isinstance(args[0], mx.array):
            array, rebuild = found
            before = split_heads(layout, proj, args[0])
            after = before
            if whole and all_first:
                after = visit(layout.name, after)
            if singles:
                after = visit_singles(after)
            if whole and not all_first:
                after = visit(layout.name, after)
            if after is not before:
                array = array + (after - before).sum(axis=-2).astype(array.dtype)
                out = rebuild(array)
        return out if then is None else then(out)

    return InputSite(on_call)


def with_head_sites(
    index: ModuleIndex,
    sites: Mapping[str, Site],
    captured: Collection[str],
    intervened: Collection[str],
    visit: Visit,
) -> list[tuple[str, Site]]:
    """``(module name, site)`` pairs for hooking: the modules' own ``sites`` and, for the
    head names ``captured`` or ``intervened``, a :func:`head_site` on each output
    projection concerned (wrapping that projection's own site when it has one).

    Interventions on all heads of a module and on single heads of it at once are refused
    (one intervention on ``<attn>.heads`` can do both).
    """
    out = dict(sites)
    for layout in index.heads.values():
        wanted = [n for n in layout.names if n in captured or n in intervened]
        if not wanted:
            continue
        singles = [n for n in layout.names[1:] if n in intervened]
        if layout.name in intervened and singles:
            raise InterventionError(
                f"interventions on {layout.name!r} and on {singles[0]!r} at once: intervene "
                f"on {layout.name!r} alone (its value holds every head)"
            )
        proj = index.modules[layout.proj]
        out[layout.proj] = head_site(
            layout, proj, wanted, visit, out.get(layout.proj), all_first=layout.name in intervened
        )
    return list(out.items())


def head_outputs(
    model: InterpretableModel, inputs: Any, layers: Layers = None
) -> dict[int, mx.array]:
    """Per-head outputs by layer: ``{layer: (batch, seq, n_heads, hidden)}`` float32.

    Summed over heads plus the output projection's bias they give the layer's attention
    output.  ``layers`` picks layers (default all); layers whose attention has no per-head
    layout raise ``ModuleNameError``.
    """
    from .activations import layer_indices

    wanted = layer_indices(model, layers)
    names = {i: model.resolve(f"{model.layer_name(i, 'attn')}.{HEADS}") for i in wanted}
    trace = model.run(inputs, capture=list(names.values()))
    return {i: trace.activations[name] for i, name in names.items()}
