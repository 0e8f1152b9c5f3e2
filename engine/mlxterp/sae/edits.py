"""Editing one SAE feature inside a forward pass: ablate, scale, clamp or steer.

:func:`feature_edit` is the intervention (for ``sae.component``); :func:`run_feature_edit`
runs a prompt with and without it and reports what changed — the feature's activation per
token, the next-token distribution, a greedy continuation — as a
:class:`FeatureEditResult` whose ``to_summary()`` a session step keeps.

Every mode changes the activation along the feature's decoder direction ``d`` (in the
model's units) only, and keeps the SAE's reconstruction error, so the rest of the
activation is untouched: with ``a`` the feature's activation,

* ``ablate``: ``x - a·d`` (the feature removed; ``value`` unused),
* ``scale``: ``x + (value - 1)·a·d`` (0 ablates, 1 changes nothing, 2 doubles),
* ``clamp``: ``x + (value - a)·d`` (the feature held at ``value`` on every token),
* ``steer``: ``x + value·d`` (``value`` units of the direction added, whatever fires).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import mlx.core as mx

from .. import interventions as iv
from ..errors import InputError
from ..inputs import finite_number, is_int
from ..lens import top_entries
from ..metrics import kl_divergence
from .analysis import check_feature, check_k, sae_component
from .model import SAE

if TYPE_CHECKING:
    from ..model import InterpretableModel

MODES = ("ablate", "scale", "clamp", "steer")


def feature_edit(
    sae: SAE,
    feature: int,
    mode: str = "ablate",
    value: float = 0.0,
    positions: int | Sequence[int] | None = None,
) -> Callable[[mx.array], mx.array]:
    """An intervention for ``sae.component`` that edits ``feature`` by ``mode`` (see the
    module doc), on every token or only at ``positions`` (negative from each row's end).
    ``model.trace(text, interventions={sae.component: feature_edit(sae, f, "clamp", 8)})``."""
    feature = check_feature(sae, feature)
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}; got {mode!r}")
    value = finite_number("value", value)
    direction = sae.W_dec[feature] / sae.scale  # the decoder is linear in each feature

    def edit(x: mx.array) -> mx.array:
        xf = x.astype(mx.float32)
        if mode == "steer":
            change = mx.full((*xf.shape[:-1], 1), value)
        else:
            active = sae.encode(xf)[..., feature : feature + 1]  # (..., 1)
            if mode == "ablate":
                change = -active
            elif mode == "scale":
                change = active * (value - 1.0)
            else:
                change = value - active
        return (xf + change * direction).astype(x.dtype)

    return edit if positions is None else iv.at_positions(edit, positions)


def feature_intervention(
    sae: SAE, feature: int, scale: float = 0.0
) -> Callable[[mx.array], mx.array]:
    """:func:`feature_edit` in ``scale`` mode: the feature multiplied by ``scale`` (0
    ablates, >1 amplifies; ``scale=1`` changes nothing)."""
    return feature_edit(sae, feature, "scale", scale)


@dataclass
class FeatureEditResult:
    """What editing a feature changed on one prompt.  Token texts are raw (show them with
    ``mlxterp.token_display.display_token``)."""

    component: str
    feature: int
    mode: str
    value: float
    positions: list[int] | None  # the edited prompt positions (None: every token)
    tokens: list[str]  # the prompt's tokens
    activation: list[float]  # the feature per prompt token, unedited
    edited_activation: list[float]  # the SAE's reading of the edited activations
    baseline_top: list[tuple[str, float]]  # next token: (text, probability), unedited
    edited_top: list[tuple[str, float]]  # the same under the edit
    kl: float  # KL(unedited || edited) of the next-token distributions
    baseline_ids: list[int]  # greedy continuation, unedited
    edited_ids: list[int]  # greedy continuation under the edit
    baseline_text: str
    edited_text: str

    def to_summary(self) -> dict[str, Any]:
        """Plain values (what a session step keeps)."""
        return {
            "component": self.component,
            "feature": self.feature,
            "activation": self.activation,
            "edited_activation": self.edited_activation,
            "baseline_tokens": [t for t, _ in self.baseline_top],
            "baseline_probs": [p for _, p in self.baseline_top],
            "edited_tokens": [t for t, _ in self.edited_top],
            "edited_probs": [p for _, p in self.edited_top],
            "kl": self.kl,
            "baseline_ids": self.baseline_ids,
            "edited_ids": self.edited_ids,
            "baseline_text": self.baseline_text,
            "edited_text": self.edited_text,
        }


def _floats(values: mx.array) -> list[float]:
    return cast(list[float], values.astype(mx.float32).tolist())


def run_feature_edit(
    model: InterpretableModel,
    text: Any,
    sae: SAE,
    feature: int,
    mode: str = "ablate",
    value: float = 0.0,
    positions: int | Sequence[int] | None = None,
    top_k: int = 5,
    max_tokens: int = 10,
) -> FeatureEditResult:
    """One prompt (text or token ids) run without and with :func:`feature_edit` at
    ``sae.component``: the feature's activation per token both ways, the ``top_k`` next
    tokens both ways and their KL divergence, and ``max_tokens`` greedy tokens both ways.
    ``positions`` are prompt positions; the continuation is generated by full forwards so
    that an edit at prompt positions stays on those tokens (and an edit of every token
    reaches the generated ones too)."""
    top_k = check_k(top_k)
    if not is_int(max_tokens) or max_tokens < 1:
        raise InputError(f"max_tokens must be a positive int; got {max_tokens!r}")
    component = sae_component(sae, model)
    base = model.run(text, capture=[component])
    acts = base.activations[component]
    if acts.ndim != 3 or acts.shape[0] != 1 or not base.inputs:
        raise InputError(f"run_feature_edit reads one prompt; got activations {acts.shape}")
    ids = [int(t) for t in base.inputs[0]]
    where = None if positions is None else _absolute(positions, len(ids))
    edit = {component: feature_edit(sae, feature, mode, value, where)}
    edited = model.run(ids, interventions=edit, capture=[component])

    def reading(trace: Any) -> list[float]:
        return _floats(sae.encode(trace.activations[component][0])[:, feature])

    def top(logits: mx.array) -> list[tuple[str, float]]:
        order, probs = top_entries(mx.softmax(logits), top_k)
        pairs = zip(cast(list[int], order.tolist()), _floats(probs), strict=True)
        return [(model.token_text(i), p) for i, p in pairs]

    def greedy(first: mx.array, interventions: dict[str, Any] | None) -> list[int]:
        sequence, new, logits = list(ids), [], first
        for step in range(max_tokens):
            token = int(cast(int, mx.argmax(logits).item()))
            new.append(token)
            sequence.append(token)
            if step + 1 < max_tokens:
                logits = model.run(sequence, interventions=interventions).output[0, -1]
        return new

    first = base.output[0, -1].astype(mx.float32), edited.output[0, -1].astype(mx.float32)
    base_ids, edit_ids = greedy(first[0], None), greedy(first[1], edit)
    return FeatureEditResult(
        component=component,
        feature=feature,
        mode=mode,
        value=float(value),
        positions=where,
        tokens=[model.token_text(t) for t in ids],
        activation=reading(base),
        edited_activation=reading(edited),
        baseline_top=top(first[0]),
        edited_top=top(first[1]),
        kl=float(cast(float, kl_divergence(first[1], first[0]).item())),
        baseline_ids=base_ids,
        edited_ids=edit_ids,
        baseline_text=_decode(model, base_ids),
        edited_text=_decode(model, edit_ids),
    )


def _absolute(positions: int | Sequence[int], n: int) -> list[int]:
    """Prompt positions counted from the start (negative ones from the end)."""
    listed = [positions] if is_int(positions) else list(cast(Sequence[int], positions))
    out = []
    for p in listed:
        if not is_int(p) or not -n <= p < n:
            raise InputError(f"position {p!r} is outside the prompt's {n} tokens")
        out.append(int(p) + n if p < 0 else int(p))
    if not out:
        raise InputError("positions must name at least one position (None: every token)")
    return out


def _decode(model: InterpretableModel, ids: list[int]) -> str:
    """The text of generated ids (the ids themselves, for a model without a tokenizer)."""
    if model.tokenizer is None:
        return " ".join(map(str, ids))
    return str(model.tokenizer.decode(ids))
