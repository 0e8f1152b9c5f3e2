"""How an SAE is built and trained: :class:`SAEConfig` (defaults documented in docs/sae.md)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError

KINDS = ("relu", "topk", "batchtopk")

_POSITIVE_INTS = (
    "expansion_factor",
    "k",
    "batch_size",
    "epochs",
    "text_batch_size",
    "buffer_size",
    "dead_feature_window",
    "aux_k",
)


@dataclass
class SAEConfig:
    """SAE shape, sparsity and training settings; bad values raise :class:`InputError`."""

    expansion_factor: int = 8  # features = expansion_factor x d_model
    kind: str = "topk"  # "relu" (L1 penalty), "topk" or "batchtopk"
    k: int = 16  # active features per token (topk, batchtopk)
    l1_coefficient: float = 1e-3  # sparsity penalty (relu)
    learning_rate: float = 1e-3
    batch_size: int = 512  # activation vectors per optimizer step
    epochs: int = 1  # passes over the texts
    text_batch_size: int = 16  # texts per forward while streaming
    buffer_size: int = 8192  # activations shuffled together before training on them
    normalize_activations: bool = True  # scale inputs to mean norm sqrt(d_model)
    dead_feature_window: int = 4096  # tokens without firing after which a feature is dead
    aux_k: int = 32  # dead features used by the auxiliary loss (topk kinds)
    aux_coefficient: float = 1 / 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"SAE kind must be one of {KINDS}; got {self.kind!r}")
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"SAEConfig.{name} must be a positive int; got {value!r}")
        for name in ("learning_rate", "l1_coefficient", "aux_coefficient"):
            value = getattr(self, name)
            if (
                not isinstance(value, (int, float))
                or value < 0
                or (value == 0 and name == "learning_rate")
            ):
                raise InputError(
                    f"SAEConfig.{name} must be a number, >= 0 (learning_rate > 0); got {value!r}"
                )
