"""Reading SAE features: which fire on a text, which texts fire a feature, what a feature
writes, and an intervention that changes one feature inside a trace."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import mlx.core as mx

from ..errors import InputError
from .model import SAE
from .train import stream_activations

if TYPE_CHECKING:
    from ..model import InterpretableModel


def _module(sae: SAE, model: "InterpretableModel") -> str:
    module = sae.site.get("module")
    if not module:
        raise InputError("this SAE does not record the module it was trained on")
    return model.resolve(module)


def _check_feature(sae: SAE, feature: int) -> int:
    if not isinstance(feature, int) or not 0 <= feature < sae.d_sae:
        raise InputError(f"feature must be an int in 0..{sae.d_sae - 1}; got {feature!r}")
    return feature


def top_features_for_text(sae: SAE, model: "InterpretableModel", text: str, k: int = 10) -> dict:
    """``{"tokens": [...], "per_position": [[(feature, act), ...] per token], "pooled":
    [(feature, max act over tokens), ...]}`` — the ``k`` strongest, strongest first."""
    module = _module(sae, model)
    with model.trace(text, capture=[module]) as trace:
        pass
    acts = trace.activations[module][0, : trace.lengths[0]]  # (seq, d_model): batch removed
    feats = sae.encode(acts.astype(mx.float32))  # (seq, d_sae)
    k = min(k, sae.d_sae)
    order = mx.argsort(-feats, axis=-1)[:, :k]
    values = mx.take_along_axis(feats, order, axis=-1)
    pooled = mx.max(feats, axis=0)
    pooled_order = mx.argsort(-pooled)[:k]
    per_position = [
        [(int(f), float(v)) for f, v in zip(fs, vs) if v > 0]
        for fs, vs in zip(order.tolist(), values.tolist())
    ]
    return {
        "tokens": [model.token_to_str(t) for t in trace.inputs[0]],
        "per_position": per_position,
        "pooled": [(int(f), float(pooled[f].item())) for f in pooled_order.tolist()
                   if pooled[f].item() > 0],
    }


def top_texts_for_feature(sae: SAE, model: "InterpretableModel", texts: list[str], feature: int,
                          k: int = 10, batch_size: int = 8) -> list[tuple[str, int, str, float]]:
    """The ``k`` strongest ``(text, position, token, activation)`` of ``feature`` over
    ``texts`` (any number, streamed in batches; each text counted at its best token)."""
    feature = _check_feature(sae, feature)
    module = _module(sae, model)
    best: list[tuple[str, int, str, float]] = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        with model.trace(chunk, capture=[module]) as trace:
            pass
        feats = sae.encode(trace.activations[module].astype(mx.float32))[..., feature]  # (batch, seq)
        for row, (text, length) in enumerate(zip(chunk, trace.lengths)):
            values = feats[row, :length]
            pos = int(mx.argmax(values).item())
            value = float(values[pos].item())
            if value > 0:
                best.append((text, pos, model.token_to_str(trace.inputs[row][pos]), value))
    return sorted(best, key=lambda item: -item[3])[:k]


def feature_logit_effects(sae: SAE, model: "InterpretableModel", feature: int, k: int = 10) -> dict:
    """Tokens the feature's decoder direction promotes and suppresses, through the model's
    unembedding (without the final norm, which would rescale a lone direction)."""
    feature = _check_feature(sae, feature)
    logits = model.unembedder.project(sae.W_dec[feature])
    order = mx.argsort(-logits)
    top, bottom = order[:k].tolist(), order[-k:][::-1].tolist()
    return {"promoted": [(model.token_to_str(t), float(logits[t].item())) for t in top],
            "suppressed": [(model.token_to_str(t), float(logits[t].item())) for t in bottom]}


def feature_intervention(sae: SAE, feature: int, scale: float = 0.0) -> Callable[[mx.array], mx.array]:
    """An intervention for ``sae.site["module"]`` that multiplies one feature by ``scale``
    (0 ablates, >1 amplifies), keeping the SAE's reconstruction error, so ``scale=1``
    leaves the activation unchanged."""
    feature = _check_feature(sae, feature)
    mask = mx.zeros((sae.d_sae,)).at[feature].add(1.0)

    def intervene(x: mx.array) -> mx.array:
        feats = sae.encode(x.astype(mx.float32))
        changed = feats + feats * mask * (scale - 1.0)
        delta = sae.decode(changed) - sae.decode(feats)
        return (x.astype(mx.float32) + delta).astype(x.dtype)

    return intervene


__all__ = ["feature_intervention", "feature_logit_effects", "stream_activations",
           "top_features_for_text", "top_texts_for_feature"]
