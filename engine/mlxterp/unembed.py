"""The model's own read-out: final norm, unembedding (tied or not, quantized or not), soft-cap.

Found by structure, not per architecture: the final norm sits beside the layer list (or at
the root) under one of the usual names; the head is an ``lm_head``-like module at the root
or beside the layer list (gpt_neox's ``embed_out``) or, for tied weights, the token
embedding used through ``as_linear`` (which dequantizes quantized embeddings).
Gemma-style final-logit soft-capping is read from the model's args.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn

from .errors import UnembedError
from .names import ModuleIndex

NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f", "final_norm")
HEAD_NAMES = ("lm_head", "embed_out", "output", "head", "output_layer")
EMBED_NAMES = ("embed_tokens", "wte", "embed_in", "tok_embeddings", "word_embeddings", "embedding")


def _first(index: ModuleIndex, parents: list[str], names: tuple[str, ...]) -> str | None:
    for parent in parents:
        for name in names:
            path = f"{parent}.{name}" if parent else name
            if path in index.modules:
                return path
    return None


class Unembedder:
    """Maps residual-stream vectors ``(..., hidden)`` to float32 logits ``(..., vocab)``."""

    def __init__(self, root: nn.Module, index: ModuleIndex):
        layer_parent = (
            index.layer_path.rsplit(".", 1)[0]
            if index.layer_path and "." in index.layer_path
            else ""
        )
        parents = list(dict.fromkeys([layer_parent, ""]))
        self.norm_name = _first(index, parents, NORM_NAMES)
        self.head_name = _first(index, ["", layer_parent], HEAD_NAMES)
        self.embed_name = _first(index, parents, EMBED_NAMES)
        self._head: Callable[[mx.array], mx.array]
        if self.head_name is not None:
            self._head_module = index.modules[self.head_name]
            self._head = self._head_module
        elif self.embed_name is not None:
            self._head_module = index.modules[self.embed_name]
            self._head = self._head_module.as_linear
        else:
            raise UnembedError(
                "cannot find this model's unembedding (no lm_head-like module and no token "
                "embedding); token predictions and the logit lens need one"
            )
        self._norm = index.modules[self.norm_name] if self.norm_name else None
        self.softcap = _softcap(root)

    @property
    def tied(self) -> bool:
        return self.head_name is None

    def normalize(self, hidden: mx.array) -> mx.array:
        """The final norm alone."""
        return self._norm(hidden) if self._norm is not None else hidden

    def project(self, normed: mx.array) -> mx.array:
        """Unembedding (and soft-cap) of already-normalized vectors, as float32 logits."""
        logits = self._head(normed).astype(mx.float32)
        if self.softcap:
            logits = mx.tanh(logits / self.softcap) * self.softcap
        return logits

    def __call__(self, hidden: mx.array) -> mx.array:
        return self.project(self.normalize(hidden))

    def rows(self, token_ids: list[int]) -> tuple[mx.array, mx.array | None]:
        """The unembedding directions of ``token_ids`` and their biases, float32:
        ``weights (k, hidden)`` and ``bias (k,)`` (None without one), such that the head
        maps a normalized vector ``x`` to ``x @ weights.T + bias`` at those tokens (before
        soft-capping).  Quantized weights are dequantized."""
        module = self._head_module
        if not isinstance(
            module, (nn.Linear, nn.QuantizedLinear, nn.Embedding, nn.QuantizedEmbedding)
        ):
            raise UnembedError(
                f"cannot read unembedding rows from a {type(module).__name__} head; "
                "a (quantized) Linear or a tied (quantized) Embedding is needed"
            )
        ids = mx.array(token_ids)
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            biases = module.get("biases")
            weights = mx.dequantize(
                module["weight"][ids],
                module["scales"][ids],
                None if biases is None else biases[ids],
                group_size=module.group_size,
                bits=module.bits,
                mode=module.mode,
            )
        else:
            weights = module["weight"][ids]
        bias = module["bias"][ids].astype(mx.float32) if "bias" in module else None
        return weights.astype(mx.float32), bias


def _softcap(root: nn.Module) -> float | None:
    for owner in (root, getattr(root, "args", None)):
        value = getattr(owner, "final_logit_softcapping", None) if owner is not None else None
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return None
