"""The sparse autoencoder itself: configuration, encoder/decoder, save and load."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import mlx.core as mx
import mlx.nn as nn

from ..errors import InputError

if TYPE_CHECKING:
    from ..model import InterpretableModel

KINDS = ("relu", "topk", "batchtopk")


@dataclass
class SAEConfig:
    """How to build and train an SAE (the defaults are documented in docs/sae.md)."""

    expansion_factor: int = 8  # features = expansion_factor x d_model
    kind: str = "topk"  # "relu" (L1 penalty), "topk" or "batchtopk"
    k: int = 16  # active features per token (topk, batchtopk)
    l1_coefficient: float = 1e-3  # sparsity penalty (relu)
    learning_rate: float = 1e-3
    batch_size: int = 512  # activation vectors per optimizer step
    epochs: int = 1  # passes over the texts
    text_batch_size: int = 16  # prompts per forward while streaming
    buffer_size: int = 8192  # activations shuffled together before training on them
    normalize_activations: bool = True  # scale inputs to mean norm sqrt(d_model)
    dead_feature_window: int = 4096  # tokens without firing after which a feature is dead
    aux_k: int = 32  # dead features used by the auxiliary loss (topk kinds)
    aux_coefficient: float = 1 / 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"SAE kind must be one of {KINDS}; got {self.kind!r}")
        for name in ("expansion_factor", "k", "batch_size", "epochs", "text_batch_size",
                     "buffer_size", "dead_feature_window", "aux_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"SAEConfig.{name} must be a positive int; got {value!r}")
        if self.learning_rate <= 0 or self.l1_coefficient < 0:
            raise InputError("SAEConfig: learning_rate must be > 0 and l1_coefficient >= 0")


class SAE(nn.Module):
    """Encoder ``f = act(W_enc (x * scale - b_dec) + b_enc)``, decoder ``x̂ = (W_dec f + b_dec) / scale``.

    Works on arrays of any leading shape ``(..., d_model)``.  ``site`` records the model
    reference, canonical module name and layer it was trained on.
    """

    def __init__(self, d_model: int, config: SAEConfig = SAEConfig(), site: Optional[dict] = None):
        super().__init__()
        self.config = config
        self.d_model = d_model
        self.d_sae = d_model * config.expansion_factor
        object.__setattr__(self, "site", dict(site or {}))  # metadata, not a parameter tree
        key_enc, _ = mx.random.split(mx.random.key(config.seed))
        w_dec = mx.random.normal((self.d_sae, d_model), key=key_enc)
        w_dec = w_dec / mx.linalg.norm(w_dec, axis=-1, keepdims=True)
        self.W_dec = w_dec
        self.W_enc = w_dec.T
        self.b_enc = mx.zeros((self.d_sae,))
        self.b_dec = mx.zeros((d_model,))
        self.scale = mx.array(1.0)
        self.freeze(keys=["scale"])

    # ------------------------------------------------------------------ forward
    def pre_activations(self, x: mx.array) -> mx.array:
        return (x * self.scale - self.b_dec) @ self.W_enc + self.b_enc

    def activate(self, pre: mx.array, batch_topk: bool = False) -> mx.array:
        """The sparse code from pre-activations (``batch_topk`` only while training)."""
        acts = nn.relu(pre)
        if self.config.kind == "relu":
            return acts
        k = min(self.config.k, self.d_sae)
        if batch_topk and self.config.kind == "batchtopk":
            flat = acts.reshape(-1)
            keep = k * (flat.shape[0] // self.d_sae)
            threshold = mx.sort(flat)[flat.shape[0] - keep]
            return mx.where(acts >= threshold, acts, 0.0)
        kth = mx.sort(acts, axis=-1)[..., self.d_sae - k: self.d_sae - k + 1]
        return mx.where(acts >= kth, acts, 0.0)

    def encode(self, x: mx.array) -> mx.array:
        """Feature activations ``(..., d_sae)``."""
        self._check(x)
        return self.activate(self.pre_activations(x))

    def decode(self, features: mx.array) -> mx.array:
        """Reconstruction ``(..., d_model)`` in the model's own scale."""
        return (features @ self.W_dec + self.b_dec) / self.scale

    def __call__(self, x: mx.array) -> mx.array:
        return self.decode(self.encode(x))

    def _check(self, x: mx.array) -> None:
        if x.shape[-1] != self.d_model:
            raise InputError(
                f"this SAE reads {self.d_model}-dimensional activations; got shape {tuple(x.shape)}"
            )

    def normalize_decoder(self) -> None:
        self.W_dec = self.W_dec / mx.maximum(mx.linalg.norm(self.W_dec, axis=-1, keepdims=True), 1e-8)

    # ------------------------------------------------------------------ files
    def save(self, folder: Union[str, Path]) -> Path:
        """``sae.safetensors`` + ``sae.json`` (config, dimensions, site) in ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = {"W_enc": self.W_enc, "W_dec": self.W_dec, "b_enc": self.b_enc,
                   "b_dec": self.b_dec, "scale": self.scale}
        mx.save_safetensors(str(folder / "sae.safetensors"), weights)
        meta = {"d_model": self.d_model, "d_sae": self.d_sae, "config": asdict(self.config),
                "site": self.site}
        (folder / "sae.json").write_text(json.dumps(meta, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: Union[str, Path], model: Optional["InterpretableModel"] = None) -> "SAE":
        """Read a saved SAE; with ``model``, check its module exists and its width matches."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / "sae.json").read_text())
            weights = mx.load(str(folder / "sae.safetensors"))
        except (OSError, ValueError, RuntimeError) as err:
            raise InputError(f"{str(folder)!r} holds no readable SAE: {err}") from None
        sae = cls(int(meta["d_model"]), SAEConfig(**meta["config"]), meta.get("site"))
        sae.update({k: weights[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")})
        sae.scale = weights["scale"]
        if model is not None:
            check_against(sae, model)
        return sae

    def __repr__(self) -> str:
        where = self.site.get("module", "?")
        return f"SAE({self.config.kind}, {self.d_model}->{self.d_sae}, {where})"


def site_width(model: "InterpretableModel", module: str) -> int:
    """Width of ``module``'s output, read from one tiny forward."""
    token = [model.tokenizer.bos_token_id or 0] if model.tokenizer is not None else [0]
    with model.trace([token], capture=[module]) as trace:
        pass
    return int(trace.activations[module].shape[-1])


def check_against(sae: SAE, model: "InterpretableModel") -> None:
    """Refuse an SAE whose module is missing from ``model`` or of another width."""
    module = sae.site.get("module")
    if not module:
        raise InputError("this SAE does not record the module it was trained on")
    canonical = model.resolve(module)  # KeyError with suggestions if the model lacks it
    width = site_width(model, canonical)
    if width != sae.d_model:
        raise InputError(
            f"this SAE reads {sae.d_model}-dimensional activations but {canonical!r} of this "
            f"model produces {width}: it was trained on another model"
        )
