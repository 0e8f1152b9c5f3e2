"""How an SAE is built and trained: :class:`SAEConfig` (defaults documented in docs/sae.md)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError

KINDS = ("relu", "topk", "batchtopk")
B_DEC_INITS = ("geometric_median", "zeros")
RESAMPLINGS = 4  # how many times resample_every resamples (early in training)
MAX_SEED = 2**63 - 2  # training seeds MLX with seed + 1, and a TOML integer is signed 64-bit

_POSITIVE_INTS = (
    "expansion_factor",
    "k",
    "batch_size",
    "epochs",
    "text_batch_size",
    "buffer_size",
    "dead_feature_window",
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
    aux_k: int = 0  # dead features in the auxiliary loss (topk kinds); 0: d_model / 2
    aux_coefficient: float = 1 / 32  # weight of the auxiliary loss (0: none)
    aux_signed: bool = False  # AuxK also reaches dead latents below zero (their encoders)
    resample_every: int = 0  # relu: resample dead features every this many steps, 4 times
    b_dec_init: str = "geometric_median"  # or "zeros"
    skip_tokens: int = 0  # leading tokens of each text left out (1: a BOS / attention sink)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"SAE kind must be one of {KINDS}; got {self.kind!r}")
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"SAEConfig.{name} must be a positive int; got {value!r}")
        for name in ("aux_k", "resample_every", "skip_tokens", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"SAEConfig.{name} must be an int >= 0; got {value!r}")
        if self.seed > MAX_SEED:
            raise InputError(f"SAEConfig.seed must be at most {MAX_SEED}; got {self.seed}")
        if not isinstance(self.aux_signed, bool):
            raise InputError("SAEConfig.aux_signed must be True or False")
        if self.b_dec_init not in B_DEC_INITS:
            raise InputError(f"SAEConfig.b_dec_init must be one of {B_DEC_INITS}")
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
