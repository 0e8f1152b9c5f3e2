"""Sparse autoencoders: train on streamed activations, save, and read their features.

``train_sae(model, texts, module="layers.8")`` → :class:`SAE`; ``stats`` / ``evaluate``
measure it; ``top_features_for_text``, ``top_texts_for_feature``, ``feature_logit_effects``
and ``feature_intervention`` read and use its features.  See docs/sae.md.
"""

from .analysis import (
    feature_intervention,
    feature_logit_effects,
    top_features_for_text,
    top_texts_for_feature,
)
from .model import SAE, SAEConfig, check_against
from .train import evaluate, stats, stream_activations, train_sae

__all__ = [
    "SAE", "SAEConfig", "check_against", "evaluate", "feature_intervention",
    "feature_logit_effects", "stats", "stream_activations", "top_features_for_text",
    "top_texts_for_feature", "train_sae",
]
