"""Reading SAE features: which fire on a text, which texts fire a feature, what a feature
writes (editing one inside a trace: :mod:`.edits`)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypedDict, cast

import mlx.core as mx

from ..errors import InputError
from .model import SAE

if TYPE_CHECKING:
    from ..model import InterpretableModel


class TextFeatures(TypedDict):
    """:func:`top_features_for_text`'s result."""

    tokens: list[str]  # the prompt's tokens, as text
    per_position: list[list[tuple[int, float]]]  # (feature, activation) per token
    pooled: list[tuple[int, float]]  # (feature, max activation over the tokens)


class LogitEffects(TypedDict):
    """:func:`feature_logit_effects`'s result: ``(token text, logit)`` pairs."""

    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]


def sae_component(sae: SAE, model: InterpretableModel) -> str:
    """The canonical name, in ``model``, of the component ``sae`` reads."""
    if not sae.component:
        raise InputError("this SAE does not record the component it was trained on")
    return model.resolve(sae.component)


def check_feature(sae: SAE, feature: int) -> int:
    """``feature`` if it is one of ``sae``'s, else an ``InputError``."""
    if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < sae.d_sae:
        raise InputError(f"feature must be an int in 0..{sae.d_sae - 1}; got {feature!r}")
    return feature


def check_k(k: int) -> int:
    """``k`` if it is a positive int, else an ``InputError``."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive int; got {k!r}")
    return k


def top_features_for_text(
    sae: SAE, model: InterpretableModel, text: Any, k: int = 10
) -> TextFeatures:
    """The ``k`` strongest features of one prompt, strongest first: ``{"tokens": [...],
    "per_position": [[(feature, activation), ...] per token], "pooled": [(feature, max
    activation over the tokens), ...]}`` (only features that fire)."""
    k = min(check_k(k), sae.d_sae)
    component = sae_component(sae, model)
    trace = model.run(text, capture=[component])
    acts = trace.activations[component]  # (batch, seq, d_model)
    if acts.ndim != 3 or acts.shape[0] != 1:
        raise InputError(
            f"top_features_for_text reads one prompt; got activations shaped "
            f"{tuple(acts.shape)} (top_texts_for_feature reads many)"
        )
    length = trace.lengths[0] if trace.lengths else acts.shape[1]
    feats = sae.encode(acts[0, :length])  # (seq, d_sae)
    order = mx.argsort(-feats, axis=-1)[:, :k]
    values = mx.take_along_axis(feats, order, axis=-1)
    pooled = mx.max(feats, axis=0)
    pooled_order = mx.argsort(-pooled)[:k]
    token_text = functools.cache(model.token_text)  # each id decoded once
    order_rows = cast(list[list[int]], order.tolist())  # (seq, k)
    value_rows = cast(list[list[float]], values.tolist())
    pooled_ids = cast(list[int], pooled_order.tolist())  # (k,)
    pooled_values = cast(list[float], pooled[pooled_order].tolist())
    return {
        "tokens": [token_text(t) for t in (trace.inputs[0] if trace.inputs else [])],
        "per_position": [
            [(f, v) for f, v in zip(fs, vs, strict=True) if v > 0]
            for fs, vs in zip(order_rows, value_rows, strict=True)
        ],
        "pooled": [(f, v) for f, v in zip(pooled_ids, pooled_values, strict=True) if v > 0],
    }


def top_texts_for_feature(
    sae: SAE,
    model: InterpretableModel,
    texts: Sequence[Any],
    feature: int,
    k: int = 10,
    batch_size: int = 8,
) -> list[tuple[Any, int, str, float]]:
    """The ``k`` texts where ``feature`` fires most, as ``(text, position, token,
    activation)`` at each text's strongest token, strongest first; ``texts`` (strings or
    token-id lists) run ``batch_size`` at a time."""
    feature, k = check_feature(sae, feature), check_k(k)
    component = sae_component(sae, model)
    token_text = functools.cache(model.token_text)  # each id decoded once
    best: list[tuple[Any, int, str, float]] = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        trace = model.run(chunk, capture=[component])
        acts = trace.activations[component]  # (batch, seq, d_model)
        lengths = trace.lengths or [acts.shape[1]] * acts.shape[0]
        values = sae.encode(acts)[..., feature]  # (batch, seq)
        real = mx.arange(values.shape[1])[None, :] < mx.array(lengths)[:, None]
        values = mx.where(real, values, -mx.inf)  # padding never wins
        where = cast(list[int], mx.argmax(values, axis=1).tolist())  # (batch,)
        peak = cast(list[float], mx.max(values, axis=1).tolist())
        tokens = cast(list[list[int]], trace.inputs)  # prompts and id lists have token ids
        for row, (pos, value) in enumerate(zip(where, peak, strict=True)):
            if value > 0:
                best.append((chunk[row], pos, token_text(tokens[row][pos]), value))
    return sorted(best, key=lambda item: -item[3])[:k]


def feature_logit_effects(
    sae: SAE, model: InterpretableModel, feature: int, k: int = 10
) -> LogitEffects:
    """Tokens one unit of the feature promotes and suppresses: its decoder direction (in
    the model's scale) through the unembedding, without the final norm, which would
    rescale a lone direction.  ``{"promoted": [(token, logit), ...], "suppressed": [...]}``."""
    feature, k = check_feature(sae, feature), check_k(k)
    logits = model.unembedder.project(sae.W_dec[feature] / sae.scale)
    order = mx.argsort(-logits)

    def pairs(ids: mx.array) -> list[tuple[str, float]]:
        texts = [model.token_text(t) for t in cast(list[int], ids.tolist())]  # (k,)
        return list(zip(texts, cast(list[float], logits[ids].tolist()), strict=True))

    return {"promoted": pairs(order[:k]), "suppressed": pairs(order[::-1][:k])}
