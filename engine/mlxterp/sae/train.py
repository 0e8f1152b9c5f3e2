"""Training SAEs on activations streamed from texts, and measuring them.

Activations are never all in memory: texts run through the model in small batches, only
real tokens are kept (right-padding dropped), a bounded buffer is shuffled and consumed by
the optimizer, then refilled.
"""

from __future__ import annotations

import random
import sys
from typing import TYPE_CHECKING, Iterator, Optional

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

from ..errors import InputError
from .model import SAE, SAEConfig, site_width

if TYPE_CHECKING:
    from ..model import InterpretableModel


def resolve_site(model: "InterpretableModel", module: Optional[str] = None,
                 layer: Optional[int] = None, component: Optional[str] = None) -> str:
    """Canonical module name from a name (any alias) or a layer and component."""
    if module is not None:
        return model.resolve(module)
    if layer is None:
        raise InputError("name the activations to train on: module='layers.2.mlp' or layer=2")
    return model.layer_name(layer, component)


def stream_activations(model: "InterpretableModel", texts: list[str], module: str,
                       batch_size: int = 16, progress: bool = True) -> Iterator[mx.array]:
    """``(n_tokens, d)`` arrays of ``module``'s output on the real tokens of each text batch."""
    if not texts:
        raise InputError("no texts to collect activations from")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(texts), desc="sae", unit="text", file=sys.stderr, leave=False)
    try:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            with model.trace(chunk, capture=[module]) as trace:
                pass
            acts = trace.activations[module]
            rows = [acts[b, :n] for b, n in enumerate(trace.lengths)]
            out = mx.concatenate(rows, axis=0).astype(mx.float32)
            mx.eval(out)
            yield out
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()


def _loss(sae: SAE, x: mx.array, dead: mx.array):
    cfg = sae.config
    target = x * sae.scale
    pre = sae.pre_activations(x)
    feats = sae.activate(pre, batch_topk=True)
    recon = feats @ sae.W_dec + sae.b_dec
    mse = mx.mean(mx.sum((recon - target) ** 2, axis=-1)) / mx.mean(mx.sum(target ** 2, axis=-1))
    loss = mse
    if cfg.kind == "relu":
        loss = loss + cfg.l1_coefficient * mx.mean(mx.sum(feats * mx.linalg.norm(sae.W_dec, axis=-1), axis=-1))
    else:  # auxiliary loss: dead features reconstruct what the live ones miss
        k = min(cfg.aux_k, sae.d_sae)
        dead_pre = mx.where(dead, nn.relu(pre), 0.0)
        kth = mx.sort(dead_pre, axis=-1)[..., sae.d_sae - k: sae.d_sae - k + 1]
        aux_feats = mx.where((dead_pre >= kth) & (dead_pre > 0), dead_pre, 0.0)
        residual = mx.stop_gradient(target - recon)
        aux = mx.mean(mx.sum((aux_feats @ sae.W_dec - residual) ** 2, axis=-1)) / (
            mx.mean(mx.sum(residual ** 2, axis=-1)) + 1e-8)
        loss = loss + cfg.aux_coefficient * mx.where(mx.any(dead), aux, 0.0)
    return loss, feats


def train_sae(model: "InterpretableModel", texts: list[str], module: Optional[str] = None,
              layer: Optional[int] = None, component: Optional[str] = None,
              config: SAEConfig = SAEConfig(), progress: bool = True) -> SAE:
    """Train an SAE on the activations of one module over ``texts`` (streamed)."""
    site = resolve_site(model, module, layer, component)
    d_model = site_width(model, site)
    sae = SAE(d_model, config, {"model": model.name or "custom", "module": site,
                                "layer": model._index.layer_index_of(site)})
    rng = random.Random(config.seed)
    optimizer = optim.Adam(learning_rate=config.learning_rate)
    since_fired = mx.zeros((sae.d_sae,))
    loss_and_grad = nn.value_and_grad(sae, lambda m, x, dead: _loss(m, x, dead)[0])
    scale_set = not config.normalize_activations

    def train_on(buffer: list[mx.array]) -> None:
        nonlocal since_fired
        data = mx.concatenate(buffer, axis=0)
        order = list(range(data.shape[0]))
        rng.shuffle(order)
        data = data[mx.array(order)]
        for start in range(0, data.shape[0], config.batch_size):
            x = data[start:start + config.batch_size]
            dead = since_fired > config.dead_feature_window
            _, grads = loss_and_grad(sae, x, dead)
            optimizer.update(sae, grads)
            sae.normalize_decoder()
            fired = mx.any(sae.encode(x) > 0, axis=0)
            since_fired = mx.where(fired, 0.0, since_fired + x.shape[0])
            mx.eval(sae.parameters(), optimizer.state, since_fired)

    for _ in range(config.epochs):
        buffer, held = [], 0
        for acts in stream_activations(model, texts, site, config.text_batch_size, progress):
            if not scale_set:
                sae.scale = (d_model ** 0.5) / mx.mean(mx.linalg.norm(acts, axis=-1))
                scale_set = True
            buffer.append(acts)
            held += acts.shape[0]
            if held >= config.buffer_size:
                train_on(buffer)
                buffer, held = [], 0
        if buffer:
            train_on(buffer)
    return sae


def stats(sae: SAE, acts: mx.array) -> dict[str, float]:
    """``l0``, ``l1_magnitude``, ``mse``, ``explained_variance``, ``dead_fraction`` on ``acts``
    (``(..., d_model)``; dead = never active on these activations)."""
    x = acts.reshape(-1, acts.shape[-1]).astype(mx.float32)
    feats = sae.encode(x)
    recon = sae.decode(feats)
    resid_var = mx.sum(mx.var(x - recon, axis=0))
    total_var = mx.sum(mx.var(x, axis=0))
    out = {
        "l0": mx.mean(mx.sum(feats > 0, axis=-1)).item(),
        "l1_magnitude": mx.mean(mx.sum(mx.abs(feats), axis=-1)).item(),
        "mse": mx.mean((x - recon) ** 2).item(),
        "explained_variance": (1 - resid_var / mx.maximum(total_var, 1e-12)).item(),
        "dead_fraction": mx.mean(~mx.any(feats > 0, axis=0)).item(),
    }
    return out


def evaluate(sae: SAE, model: "InterpretableModel", texts: list[str], progress: bool = False) -> dict[str, float]:
    """:func:`stats` on held-out ``texts`` (activations streamed, then pooled)."""
    module = sae.site.get("module")
    if not module:
        raise InputError("this SAE does not record the module it was trained on")
    acts = mx.concatenate(list(stream_activations(model, texts, model.resolve(module),
                                                  sae.config.text_batch_size, progress)), axis=0)
    return stats(sae, acts)
