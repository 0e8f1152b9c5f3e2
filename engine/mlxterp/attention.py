"""Attention patterns: the softmax weights of every head, read during one forward pass.

mlx-lm's attention modules call ``scaled_dot_product_attention`` (imported by name from
``mlx_lm.models.base``) with the fused kernel, which never exposes the weights.  For the
duration of one forward pass that name is replaced, in the namespaces of the model's
attention classes, by an explicit ``softmax(q·kᵀ·scale + mask)·v`` that records the weights
and returns the same output.  Modules that compute their own softmax (gemma2, with its
soft-capped scores) have ``mx.softmax`` observed instead, so the weights are exactly theirs.
Which layer produced the weights is known from a hook on each layer's attention module.
Everything is restored afterwards, whatever happened, and only the calling thread records.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import mlx.nn as nn

from .activations import Layers, layer_indices
from .errors import ModuleNameError, UnsupportedAttentionError
from .hooks import Site

if TYPE_CHECKING:
    from .model import InterpretableModel

SDPA_NAME = "scaled_dot_product_attention"
_PATCH_LOCK = threading.Lock()  # one patched forward at a time, so restores never interleave


def explicit_attention(
    queries: mx.array,
    keys: mx.array,
    values: mx.array,
    scale: float,
    mask: mx.array | str | None = None,
    sinks: mx.array | None = None,
) -> tuple[mx.array, mx.array]:
    """``(output, weights)`` of scaled dot-product attention computed step by step.

    Shapes as mlx-lm passes them: queries ``(B, Hq, L, D)``, keys/values ``(B, Hkv, S, D)``
    (grouped-query heads are repeated); ``mask`` is ``None``, ``"causal"``, a boolean or an
    additive array; ``sinks`` (per head) take part in the softmax and are dropped after.
    The weights are float32 ``(B, Hq, L, S)``.
    """
    repeats = queries.shape[1] // keys.shape[1]
    if repeats > 1:
        keys = mx.repeat(keys, repeats, axis=1)
        values = mx.repeat(values, repeats, axis=1)
    scores = (queries.astype(mx.float32) * scale) @ keys.astype(mx.float32).swapaxes(-1, -2)
    if isinstance(mask, str):
        q_len, k_len = scores.shape[-2:]
        mask = mx.arange(k_len - q_len, k_len)[:, None] >= mx.arange(k_len)[None]
    if mask is not None:
        if mask.dtype == mx.bool_:
            scores = mx.where(mask, scores, mx.finfo(mx.float32).min)
        else:
            scores = scores + mask.astype(mx.float32)
    if sinks is not None:
        sink = mx.broadcast_to(
            sinks.astype(mx.float32)[None, :, None, None], (*scores.shape[:-1], 1)
        )
        weights = mx.softmax(mx.concatenate([sink, scores], axis=-1), axis=-1)[..., 1:]
    else:
        weights = mx.softmax(scores, axis=-1)
    output = (weights @ values.astype(mx.float32)).astype(queries.dtype)
    return output, weights


class _Recorder:
    """Weights seen since the last attention module finished, filed under its layer."""

    def __init__(self, wanted: set[int]):
        self.thread = threading.get_ident()
        self.wanted = wanted
        self.pending: list[mx.array] = []
        self.weights: dict[int, mx.array] = {}

    def active(self) -> bool:
        return threading.get_ident() == self.thread

    def keep(self, weights: mx.array) -> None:
        """Weights shaped ``(B, heads, L, S)`` or grouped ``(B, kv_heads, repeats, L, S)``."""
        self.pending.append(weights.reshape(weights.shape[0], -1, *weights.shape[-2:]))

    def done(self, layer: int) -> Site:
        """Site for layer ``layer``'s attention module: files the pending weights."""

        def site(output: Any) -> Any:
            if self.pending and layer in self.wanted:
                self.weights[layer] = self.pending[-1]
            self.pending.clear()
            return output

        return site

    def sdpa(self, original: Callable[..., mx.array]) -> Callable[..., mx.array]:
        def scaled_dot_product_attention(
            queries: mx.array,
            keys: mx.array,
            values: mx.array,
            cache: Any = None,
            scale: float = 1.0,
            mask: mx.array | str | None = None,
            sinks: mx.array | None = None,
        ) -> mx.array:
            if not self.active():  # another thread: untouched behaviour
                extra = {} if sinks is None else {"sinks": sinks}
                return original(queries, keys, values, cache=cache, scale=scale, mask=mask, **extra)
            output, weights = explicit_attention(queries, keys, values, scale, mask, sinks)
            self.keep(weights)
            return output

        return scaled_dot_product_attention


class _SoftmaxWatch:
    """Stands in for ``mlx.core`` in a model's module: ``softmax`` results are recorded."""

    def __init__(self, recorder: _Recorder):
        self._recorder = recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(mx, name)

    def softmax(self, *args: Any, **kwargs: Any) -> mx.array:
        out = mx.softmax(*args, **kwargs)
        if self._recorder.active() and out.ndim >= 4:
            self._recorder.keep(out)
        return out


Patch = tuple[ModuleType, str, object]
"""A name to replace in a module's namespace, and what replaces it."""


def _patches(attn_modules: list[nn.Module], recorder: _Recorder, arch: str) -> list[Patch]:
    """``(namespace, name, replacement)`` for the modules defining the attention classes."""
    patches: dict[str, Patch] = {}
    for module in attn_modules:
        cls = type(module)
        namespace = sys.modules.get(cls.__module__)
        if namespace is None or namespace.__name__ in patches:
            continue
        patch: Patch
        if callable(getattr(namespace, SDPA_NAME, None)):
            patch = (namespace, SDPA_NAME, recorder.sdpa(getattr(namespace, SDPA_NAME)))
        elif namespace.__dict__.get("mx") is mx:
            patch = (namespace, "mx", _SoftmaxWatch(recorder))
        else:
            raise UnsupportedAttentionError(
                f"attention_patterns cannot read the {arch} attention ({cls.__name__} in "
                f"{cls.__module__}): it neither calls {SDPA_NAME} nor mx.softmax"
            )
        patches[namespace.__name__] = patch
    return list(patches.values())


@contextmanager
def _patched(patches: list[Patch]) -> Iterator[None]:
    saved: list[Patch] = []
    with _PATCH_LOCK:
        try:
            for namespace, name, replacement in patches:
                saved.append((namespace, name, namespace.__dict__[name]))
                setattr(namespace, name, replacement)
            yield
        finally:
            for namespace, name, original in reversed(saved):
                setattr(namespace, name, original)


def attention_patterns(
    model: InterpretableModel, text: Any, layers: Layers = None
) -> dict[int, mx.array]:
    """Attention weights per layer: ``{layer: (batch, heads, q, k)}`` float32.

    Each row is a softmax over the keys (causal: a query attends to itself and earlier
    positions only).  ``layers`` picks layers (default all).  The forward pass computes
    the same logits as the bare model.
    """
    wanted = layer_indices(model, layers)
    arch = model.config.get("model_type") or type(model.model).__name__
    recorder = _Recorder(set(wanted))
    sites: list[tuple[str, Site]] = []
    modules: list[nn.Module] = []
    for i in range(model.num_layers):
        try:
            name = model.layer_name(i, "attn")
        except ModuleNameError:
            raise UnsupportedAttentionError(
                f"attention_patterns: layer {i} of this {arch} model has no attention module "
                "(looked for attn, self_attn, attention ...)"
            ) from None
        sites.append((name, recorder.done(i)))
        modules.append(model.module(name).module)
    with _patched(_patches(modules, recorder, arch)), model.hooked(sites):
        logits = model(text)
    mx.eval(logits, *recorder.weights.values())
    missing = [i for i in wanted if i not in recorder.weights]
    if missing:
        raise UnsupportedAttentionError(
            f"attention_patterns: no attention weights were seen in layer(s) {missing} of this "
            f"{arch} model"
        )
    return {i: recorder.weights[i] for i in wanted}
