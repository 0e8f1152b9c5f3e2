"""Direct logit attribution: the final residual at one position split into the parts that
wrote it, each projected on a logit direction.

One forward pass records, at every layer, the residual entering it and leaving it, each
head's share of the attention output (``mlxterp.heads``), the output projection's bias and
the MLP's output.  The final residual is then the sum of

* ``embed`` — the residual entering the first layer (token and position embeddings, any
  embedding scale);
* per layer: one part per head (``L3H2``), the attention output's bias (``L3 attn bias``,
  when there is one), the MLP (``L3 mlp``) and ``L3 rest``: whatever else the block added
  (0 up to float rounding in every architecture of the test matrix; nothing is hidden);
* ``final rest`` when something between the last layer and the final norm changes the
  residual.

Each part goes through the final norm with its scale frozen from the run (as TransformerLens
does: divide by the run's RMS / LayerNorm scale, centre for a LayerNorm, multiply by the
norm's weight), then onto the unembedding direction of the target token (or the difference
of two tokens' directions); the norm's bias and the head's bias are parts of their own.  The
parts sum to the model's own logit (or logit difference).

**Post-norms** (gemma2/gemma3 ``post_attention_layernorm``, olmo2): a norm applied to the
attention or MLP output before it joins the residual is found by following the arrays (the
norm whose input *is* the module's output) and frozen like the final norm, so each head's
part is its share seen through that norm.  **Final soft-capping** (gemma2) is applied to the
whole logit after the sum, so it cannot be split: the parts add up to the logit *before*
capping (``total``); ``model_value`` is the model's own capped logit (difference) and
``capped_total`` the sum passed through the cap, which equals it.  A norm that is neither an
RMSNorm nor a LayerNorm (as checked against its own output) is refused with
``UnsupportedAttentionError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast

import mlx.core as mx
import mlx.nn as nn

from . import plotting
from .errors import InputError, UnsupportedAttentionError
from .heads import projection_bias, split_heads
from .hooks import InputSite, Site, primary_array

if TYPE_CHECKING:
    from .model import InterpretableModel


class DLASummary(TypedDict):
    """``LogitAttribution.to_summary()``: plain values to store and compare."""

    target: str
    tokens: list[int]
    position: int
    labels: list[str]
    values: list[float]
    total: float
    model_value: float
    softcap: NotRequired[float]


@dataclass
class LogitAttribution:
    """Direct logit attribution at one position (see module docstring).

    ``labels[i]`` / ``values[i]`` are each part and what it adds to the logit (difference);
    ``kinds[i]`` is ``embed``, ``head``, ``attn_bias``, ``attn`` (an attention without a
    per-head layout), ``mlp``, ``rest`` or ``bias``; ``layers[i]`` / ``heads[i]`` locate it
    (None where not applicable).  ``total`` is the sum of the values; ``model_value`` the
    model's own logit (difference) at ``position``; with ``softcap`` they compare through
    ``capped_total``.
    """

    target: str
    tokens: list[int]
    position: int
    labels: list[str]
    values: list[float]
    kinds: list[str]
    layers: list[int | None]
    heads: list[int | None]
    total: float
    model_value: float
    capped_total: float
    softcap: float | None = None

    def head_matrix(self) -> list[list[float]]:
        """Each head's part as a layers x heads grid (0 where a layer has no head parts)."""
        n_layers = 1 + max((layer for layer in self.layers if layer is not None), default=-1)
        n_heads = 1 + max((h for h in self.heads if h is not None), default=-1)
        grid = [[0.0] * n_heads for _ in range(n_layers)]
        for layer, head, value in zip(self.layers, self.heads, self.values, strict=True):
            if layer is not None and head is not None:
                grid[layer][head] = value
        return grid

    def to_summary(self) -> DLASummary:
        """Plain values to store and compare: every part by label, the total, the model's
        own value."""
        summary: DLASummary = {
            "target": self.target,
            "tokens": list(self.tokens),
            "position": self.position,
            "labels": list(self.labels),
            "values": list(self.values),
            "total": self.total,
            "model_value": self.model_value,
        }
        if self.softcap is not None:
            summary["softcap"] = self.softcap
        return summary

    def chart(self, top: int = 12, width: int = 80, height: int = 20, color: bool = True) -> str:
        """The ``top`` largest parts (by size, in model order) as a terminal bar chart."""
        if top < 1:
            raise InputError("top must be at least 1")
        order = sorted(range(len(self.values)), key=lambda i: -abs(self.values[i]))[:top]
        picked = sorted(order)
        fig = plotting.bar_chart(
            [self.labels[i] for i in picked],
            [self.values[i] for i in picked],
            title=f"Direct logit attribution to {self.target} (total {self.total:+.3f})",
            ylabel="logit",
        )
        return plotting.to_text(fig, width=width, height=height, color=color)

    def table(self, top: int = 12) -> str:
        """The ``top`` largest parts (by size, in model order) as a labelled text table with
        a bar per value, then the total and the model's own value."""
        if top < 1:
            raise InputError("top must be at least 1")
        picked = sorted(sorted(range(len(self.values)), key=lambda i: -abs(self.values[i]))[:top])
        peak = max((abs(self.values[i]) for i in picked), default=0.0) or 1.0
        width = max(len(self.labels[i]) for i in picked)
        lines = [f"Direct logit attribution to {self.target} at position {self.position}"]
        for i in picked:
            value = self.values[i]
            bar = ("+" if value >= 0 else "-") * max(1, round(abs(value) / peak * 30))
            lines.append(f"{self.labels[i]:>{width}} {value:+9.4f} {bar}")
        others = len(self.values) - len(picked)
        if others:
            rest = self.total - sum(self.values[i] for i in picked)
            lines.append(f"{'others':>{width}} {rest:+9.4f} ({others} parts)")
        lines.append(f"{'total':>{width}} {self.total:+9.4f}")
        model = f"{'model':>{width}} {self.model_value:+9.4f}"
        if self.softcap is not None:
            model += f" (soft-capped at {self.softcap:g}; the sum capped: {self.capped_total:+.4f})"
        lines.append(model)
        return "\n".join(lines)

    def heatmap(self, cmap: str = "RdBu_r", cell_width: int = 7, color: bool = True) -> str:
        """Each head's part as a coloured layers x heads grid, centred on 0."""
        grid = self.head_matrix()
        return plotting.heatmap_text(
            grid,
            [f"L{layer}" for layer in range(len(grid))],
            [f"H{h}" for h in range(len(grid[0]) if grid else 0)],
            [[f"{v:+.2f}" for v in row] for row in grid],
            cmap=cmap,
            cell_width=cell_width,
            centred=True,
            color=color,
            title=f"Direct logit attribution to {self.target} per head (rows: layers)",
        )


@dataclass
class _FrozenNorm:
    """A norm at one position as the affine map ``x -> centre(x) * gain + bias``, with the
    run's scale folded into ``gain``."""

    gain: mx.array
    bias: mx.array | None
    centered: bool

    def linear(self, parts: mx.array) -> mx.array:
        """The map without its bias, on each row of ``parts`` ``(..., hidden)``."""
        if self.centered:
            parts = parts - parts.mean(axis=-1, keepdims=True)
        return parts * self.gain


def _identity(hidden: int) -> _FrozenNorm:
    return _FrozenNorm(mx.ones((hidden,)), None, False)


def freeze_norm(module: nn.Module, name: str, x: mx.array, y: mx.array) -> _FrozenNorm:
    """The norm ``module`` (called ``name``) frozen at input ``x`` / output ``y`` (one
    position, float32): an RMSNorm or LayerNorm whose weight is used as is or as
    ``1 + weight`` (gemma), recognised by reproducing ``y``; the scale is then fitted to
    ``y`` exactly.  Anything else raises ``UnsupportedAttentionError``."""
    weight = module.get("weight")
    bias = module.get("bias")
    bias = bias.astype(mx.float32) if isinstance(bias, mx.array) else None
    gains: list[mx.array] = [mx.ones(x.shape)]
    if isinstance(weight, mx.array):
        gains = [weight.astype(mx.float32), 1.0 + weight.astype(mx.float32)]
    eps = float(getattr(module, "eps", 1e-5))
    target = y - bias if bias is not None else y
    for centered in (False, True):
        centre = x - x.mean() if centered else x
        scale = mx.rsqrt((centre * centre).mean() + eps)
        for gain in gains:
            guess = centre * scale * gain
            if mx.allclose(guess, target, rtol=1e-3, atol=1e-4).item():
                shape = centre * gain
                # The scale the run really used: least squares of target on shape.
                fitted = (target * shape).sum() / mx.maximum((shape * shape).sum(), 1e-30)
                return _FrozenNorm(gain * fitted, bias, centered)
    raise UnsupportedAttentionError(
        f"direct logit attribution cannot freeze {name} ({type(module).__name__}): its output "
        "is neither an RMSNorm's nor a LayerNorm's of its input"
    )


class _Recorder:
    """What one forward pass leaves for the decomposition (arrays kept by identity)."""

    def __init__(self) -> None:
        self.inputs: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}

    def site(self, name: str, keep_input: bool) -> Site:
        if keep_input:

            def on_call(out: Any, args: tuple[Any, ...]) -> Any:
                self.inputs[name] = args[0] if args else None
                self.outputs[name] = out
                return out

            return InputSite(on_call)

        def on_output(out: Any) -> Any:
            self.outputs[name] = out
            return out

        return on_output

    def array(self, name: str, output: bool = True) -> mx.array:
        found = primary_array((self.outputs if output else self.inputs).get(name))
        if found is None:
            raise UnsupportedAttentionError(
                f"direct logit attribution: {name} returned no array in the forward pass"
            )
        return found[0]


@dataclass
class _LayerSites:
    """The modules of one layer the decomposition reads (canonical names)."""

    layer: str
    attn: str
    mlp: str
    proj: str | None  # the attention's output projection, when it splits into heads
    norms: list[str]  # the layer's other direct children: candidate post-norms

    @classmethod
    def of(cls, model: InterpretableModel, i: int) -> _LayerSites:
        index = model.module_index
        layer, attn, mlp = (
            model.layer_name(i),
            model.layer_name(i, "attn"),
            model.layer_name(i, "mlp"),
        )
        layout = index.heads.get(attn)
        others = [f"{layer}.{k}" for k in index.children(layer)]
        norms = [n for n in others if n in index.modules and n not in (attn, mlp)]
        return cls(layer, attn, mlp, None if layout is None else layout.proj, norms)


def _position(position: int, length: int) -> int:
    if not -length <= position < length:
        raise InputError(f"position {position} is outside the prompt's {length} tokens")
    return position % length


def direct_logit_attribution(
    model: InterpretableModel,
    text: Any,
    target: int | str,
    baseline: int | str | None = None,
    position: int = -1,
) -> LogitAttribution:
    """Split the logit of ``target`` (minus that of ``baseline`` when given) at ``position``
    of one prompt into embedding, heads, attention biases, MLPs and remainders (see module
    docstring).  ``target``/``baseline`` are token ids or one-token strings."""
    index = model.module_index
    tokens = [model.token_id(target)] + ([] if baseline is None else [model.token_id(baseline)])
    prepared = model.prepare(text)
    if prepared.array.shape[0] != 1:
        raise InputError("direct logit attribution takes one prompt, not a batch")
    length = prepared.lengths[0] if prepared.lengths else prepared.array.shape[1]
    pos = _position(position, length)
    if model.num_layers == 0:
        raise InputError("direct logit attribution needs a model with a detected layer list")
    unembed = model.unembedder

    # ---------------------------------------------------------------- the forward pass
    recorder = _Recorder()
    plan = [_LayerSites.of(model, i) for i in range(model.num_layers)]
    sites: list[tuple[str, Site]] = []
    for step in plan:
        sites += [(step.layer, recorder.site(step.layer, True))]
        sites += [(step.attn, recorder.site(step.attn, False))]
        sites += [(step.mlp, recorder.site(step.mlp, False))]
        sites += [(n, recorder.site(n, True)) for n in step.norms]
        if step.proj is not None:
            sites.append((step.proj, recorder.site(step.proj, True)))
    if unembed.norm_name is not None:
        sites.append((unembed.norm_name, recorder.site(unembed.norm_name, True)))
    with model.hooked(sites):
        logits = model.forward(prepared).astype(mx.float32)

    def at(array: mx.array) -> mx.array:
        return array[0, pos].astype(mx.float32)

    def post_norm(output: mx.array, step: _LayerSites) -> _FrozenNorm | None:
        """The norm whose input is exactly ``output`` (a post-norm), frozen; None if none."""
        name = next((n for n in step.norms if recorder.inputs.get(n) is output), None)
        if name is None:
            return None
        x, y = at(recorder.array(name, output=False)), at(recorder.array(name))
        return freeze_norm(index.modules[name], name, x, y)

    # ---------------------------------------------------------------- the parts
    labels: list[str] = ["embed"]
    kinds: list[str] = ["embed"]
    where: list[tuple[int | None, int | None]] = [(None, None)]
    vectors: list[mx.array] = [at(recorder.array(plan[0].layer, output=False))]

    def add(label: str, kind: str, layer: int | None, head: int | None, vec: mx.array) -> None:
        labels.append(label)
        kinds.append(kind)
        where.append((layer, head))
        vectors.append(vec)

    for i, step in enumerate(plan):
        start = len(vectors)
        attn_out = recorder.array(step.attn)
        frozen = post_norm(attn_out, step)
        if step.proj is not None:
            layout = index.heads[step.attn]
            proj = index.modules[step.proj]
            shares = split_heads(layout, proj, at(recorder.array(step.proj, output=False)))
            bias = projection_bias(proj)
            if frozen is not None:
                shares = frozen.linear(shares)
                bias = None if bias is None else frozen.linear(bias)
                if frozen.bias is not None:
                    bias = frozen.bias if bias is None else bias + frozen.bias
            for h in range(layout.n_heads):
                add(f"L{i}H{h}", "head", i, h, shares[h])
            if bias is not None:
                add(f"L{i} attn bias", "attn_bias", i, None, bias)
        else:
            whole = at(attn_out) if frozen is None else frozen.linear(at(attn_out))
            if frozen is not None and frozen.bias is not None:
                whole = whole + frozen.bias
            add(f"L{i} attn", "attn", i, None, whole)
        mlp_out = recorder.array(step.mlp)
        frozen = post_norm(mlp_out, step)
        mlp_part = at(mlp_out) if frozen is None else frozen.linear(at(mlp_out))
        if frozen is not None and frozen.bias is not None:
            mlp_part = mlp_part + frozen.bias
        add(f"L{i} mlp", "mlp", i, None, mlp_part)
        moved = at(recorder.array(step.layer)) - at(recorder.array(step.layer, output=False))
        add(f"L{i} rest", "rest", i, None, moved - mx.stack(vectors[start:]).sum(axis=0))

    last = recorder.array(plan[-1].layer)
    hidden = vectors[0].shape[-1]
    if unembed.norm_name is not None:
        norm_in = recorder.array(unembed.norm_name, output=False)
        if norm_in is not last:
            add("final rest", "rest", None, None, at(norm_in) - at(last))
        final = freeze_norm(
            index.modules[unembed.norm_name],
            unembed.norm_name,
            at(norm_in),
            at(recorder.array(unembed.norm_name)),
        )
    else:
        final = _identity(hidden)

    # ---------------------------------------------------------------- onto the logits
    rows, head_bias = unembed.rows(tokens)  # (k, hidden), (k,)
    per_token = final.linear(mx.stack(vectors)) @ rows.T  # (parts, k)
    extra: list[tuple[str, mx.array]] = []
    if final.bias is not None:
        extra.append(("norm bias", final.bias @ rows.T))
    if head_bias is not None:
        extra.append(("unembed bias", head_bias))
    for label, contribution in extra:
        labels.append(label)
        kinds.append("bias")
        where.append((None, None))
        per_token = mx.concatenate([per_token, contribution[None]], axis=0)
    totals = per_token.sum(axis=0)
    row = logits[0, pos]
    cap = unembed.softcap

    def capped(value: mx.array) -> mx.array:
        return mx.tanh(value / cap) * cap if cap else value

    if baseline is None:
        values, total = per_token[:, 0], totals[0]
        model_value, capped_total = row[tokens[0]], capped(totals[0])
        name = repr(model.token_text(tokens[0]))
    else:
        values, total = per_token[:, 0] - per_token[:, 1], totals[0] - totals[1]
        model_value = row[tokens[0]] - row[tokens[1]]
        capped_total = capped(totals[0]) - capped(totals[1])
        name = f"{model.token_text(tokens[0])!r} - {model.token_text(tokens[1])!r}"
    mx.eval(values, total, model_value, capped_total)
    return LogitAttribution(
        target=name,
        tokens=tokens,
        position=pos,
        labels=labels,
        values=cast(list[float], values.tolist()),
        kinds=kinds,
        layers=[w[0] for w in where],
        heads=[w[1] for w in where],
        total=cast(float, total.item()),
        model_value=cast(float, model_value.item()),
        capped_total=cast(float, capped_total.item()),
        softcap=cap,
    )
