"""The sparse autoencoder module: encoder, sparse activation, decoder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import mlx.core as mx
import mlx.nn as nn

from ..errors import InputError
from .config import SAEConfig

if TYPE_CHECKING:
    from ..model import InterpretableModel


class SAE(nn.Module):
    """Encoder ``f = act(W_enc (x * scale - b_dec) + b_enc)``, decoder
    ``x̂ = (W_dec f + b_dec) / scale``.

    ``encode`` / ``decode`` / ``__call__`` take arrays of any leading shape ``(..., d)``.
    ``component`` (canonical module name), ``layer`` and ``model_ref`` record where it was
    trained; ``scale`` is the input normalisation; ``training_stats`` what training saw;
    ``threshold`` (``batchtopk`` only, set by training) the pre-activation a feature must
    pass at inference, as Bussmann et al. (2024) encode (0: each token's top ``k``).
    ``d_sae`` (features) is ``d_model x config.expansion_factor`` unless given (an SAE read
    from elsewhere may have any width).
    """

    def __init__(
        self,
        d_model: int,
        config: SAEConfig | None = None,
        component: str | None = None,
        layer: int | None = None,
        model_ref: str = "custom",
        d_sae: int | None = None,
    ):
        super().__init__()  # type: ignore[no-untyped-call]  # mlx: Module.__init__ is unannotated
        self.config = config if config is not None else SAEConfig()
        self.d_model = int(d_model)
        self.d_sae = int(d_sae) if d_sae else self.d_model * self.config.expansion_factor
        self.component = component
        self.layer = layer
        self.model_ref = model_ref
        self.scale = 1.0
        self.threshold = 0.0
        self.set_training_stats({})
        w_dec = mx.random.normal((self.d_sae, self.d_model), key=mx.random.key(self.config.seed))
        self.W_dec = w_dec / mx.linalg.norm(w_dec, axis=-1, keepdims=True)
        self.W_enc = mx.contiguous(self.W_dec.T)  # as a saved one loads: the same sums
        self.b_enc = mx.zeros((self.d_sae,))
        self.b_dec = mx.zeros((self.d_model,))

    def set_training_stats(self, values: dict[str, float]) -> None:
        """Record what training saw (plain metadata, kept out of the parameter tree)."""
        object.__setattr__(self, "training_stats", dict(values))

    def pre_activations(self, x: mx.array) -> mx.array:
        """Encoder pre-activations ``(..., d_sae)`` of model-scale inputs."""
        return (x * self.scale - self.b_dec) @ self.W_enc + self.b_enc

    def activate(
        self, pre: mx.array, batch_topk: bool = False, batch_threshold: float | None = None
    ) -> mx.array:
        """The sparse code from pre-activations (``batch_topk`` only while training; its
        ``batch_threshold``, when given, is the whole batch's: every rank's rows)."""
        acts: mx.array = nn.relu(pre)
        if self.config.kind == "relu":
            return acts
        if self.config.kind == "batchtopk" and not batch_topk and self.threshold > 0:
            return mx.where(pre > self.threshold, acts, 0.0)
        k = min(self.config.k, self.d_sae)
        if batch_topk and self.config.kind == "batchtopk":
            if batch_threshold is not None:
                return mx.where(acts >= batch_threshold, acts, 0.0)
            flat = acts.reshape(-1)
            threshold = mx.sort(flat)[flat.shape[0] - k * (flat.shape[0] // self.d_sae)]
            return mx.where(acts >= threshold, acts, 0.0)
        kth = mx.sort(acts, axis=-1)[..., self.d_sae - k : self.d_sae - k + 1]
        return mx.where(acts >= kth, acts, 0.0)

    def encode(self, x: mx.array) -> mx.array:
        """Feature activations ``(..., d_sae)`` of activations ``(..., d_model)``."""
        if x.ndim == 0 or x.shape[-1] != self.d_model:
            raise InputError(
                f"this SAE reads {self.d_model}-dimensional activations; got shape {tuple(x.shape)}"
            )
        return self.activate(self.pre_activations(x.astype(mx.float32)))

    def decode(self, features: mx.array) -> mx.array:
        """Reconstruction ``(..., d_model)`` in the model's own scale."""
        return (features @ self.W_dec + self.b_dec) / self.scale

    def __call__(self, x: mx.array) -> mx.array:
        return self.decode(self.encode(x))

    def normalize_decoder(self) -> None:
        """Rescale every decoder row (feature direction) to unit norm."""
        self.W_dec = self.W_dec / mx.maximum(
            mx.linalg.norm(self.W_dec, axis=-1, keepdims=True), 1e-8
        )

    def save(self, folder: str | Path) -> Path:
        """Write ``sae.safetensors`` and ``sae.json`` into ``folder`` (see :mod:`.io`)."""
        from .io import save_sae

        return save_sae(self, folder)

    @classmethod
    def load(cls, folder: str | Path, model: InterpretableModel | None = None) -> SAE:
        """Read a saved SAE, mlxterp's (:mod:`.io`) or SAELens's (:mod:`.saelens`); with
        ``model``, refuse it unless its component fits."""
        from .io import load_sae
        from .saelens import is_saelens_folder, load_saelens

        if not (Path(folder) / "sae.json").exists() and is_saelens_folder(folder):
            return load_saelens(folder, model)
        return load_sae(folder, model)

    def __repr__(self) -> str:
        return f"SAE({self.config.kind}, {self.d_model}->{self.d_sae}, {self.component or '?'})"
