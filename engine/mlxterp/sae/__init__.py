"""Sparse autoencoders: train on streamed activations, save, and read their features.

``train_sae(model, texts, "layers.8")`` → :class:`SAE`; ``stats`` / ``evaluate`` measure
it; ``sae.save`` / ``SAE.load`` store it; ``top_features_for_text``,
``top_texts_for_feature`` and ``feature_logit_effects`` read its features;
``feature_dashboard`` / ``feature_on_prompt`` / ``prompt_features`` give a feature
browser its data; ``feature_edit`` / ``run_feature_edit`` ablate, scale, clamp or steer
one in a forward pass; ``save_saelens`` / ``load_saelens`` exchange it with SAELens.
See docs/sae.md.
"""

from .analysis import (
    feature_logit_effects,
    top_features_for_text,
    top_texts_for_feature,
)
from .config import KINDS, SAEConfig
from .dashboard import (
    Context,
    FeatureDashboard,
    Histogram,
    PromptActivation,
    PromptFeatures,
    feature_dashboard,
    feature_on_prompt,
    prompt_features,
)
from .edits import MODES, FeatureEditResult, feature_edit, feature_intervention, run_feature_edit
from .io import check_against, load_sae, save_sae
from .measure import evaluate, stats
from .model import SAE
from .saelens import load_saelens, save_saelens
from .train import (
    ProgressListener,
    TrainingProgress,
    resolve_component,
    stream_activations,
    train_sae,
    train_sae_on_activations,
)

__all__ = [
    "KINDS",
    "MODES",
    "SAE",
    "Context",
    "FeatureDashboard",
    "FeatureEditResult",
    "Histogram",
    "ProgressListener",
    "PromptActivation",
    "PromptFeatures",
    "SAEConfig",
    "TrainingProgress",
    "check_against",
    "evaluate",
    "feature_dashboard",
    "feature_edit",
    "feature_intervention",
    "feature_logit_effects",
    "feature_on_prompt",
    "load_sae",
    "load_saelens",
    "prompt_features",
    "resolve_component",
    "run_feature_edit",
    "save_sae",
    "save_saelens",
    "stats",
    "stream_activations",
    "top_features_for_text",
    "top_texts_for_feature",
    "train_sae",
    "train_sae_on_activations",
]
