"""Keeping SAE features alive while training: what the literature shows working.

* :func:`auxk_loss` — the auxiliary loss of Gao et al. (2024, "Scaling and evaluating
  sparse autoencoders"): the ``k_aux`` strongest *dead* latents of each token (by
  pre-activation, ReLU'd) reconstruct the residual the live ones leave, as a normalised MSE
  (the residual's variance as the unit), weighted by ``aux_coefficient`` (1/32 in the
  paper) and scaled down while fewer than ``k_aux`` latents are dead (as SAELens and
  EleutherAI's ``sae`` do); ``k_aux`` is ``d_model / 2`` by default (the paper's Appendix
  B.1 heuristic, as those implementations read it).  Ranked by their ReLU'd
  pre-activations, a latent whose pre-activation is negative on every input gets no
  gradient and stays dead, as batch top-k's dead mostly are.  ``aux_signed`` ranks the dead
  by their signed pre-activations instead, and the chosen ones below zero reconstruct
  with their decoder rows held (only their encoders learn): each is pushed up where its
  direction would shrink the residual and down where it would grow it, and its decoder
  still learns only from positive activations, as published.
* :func:`resample_dead` — Anthropic's resampling ("Towards Monosemanticity", 2023) for
  ReLU SAEs: a dead feature's decoder row becomes the direction of an input drawn with
  probability proportional to the square of its reconstruction loss (without replacement:
  each dead feature gets an input of its own), its encoder column
  that direction times 0.2 times the mean norm of the live encoder columns, its bias 0, and
  its Adam moments are reset.  One resampling touches at most a quarter of the dictionary
  (and no more features than there are inputs), drawn at random among the dead: every
  re-initialised feature fires on about half the inputs, so thousands at once swamp the
  reconstruction (explained variance -1841 on SmolLM2 with 4 323 of 4 608 resampled); the
  rest stay dead for the next resampling.
* :func:`geometric_median` — Weiszfeld's iterations, the decoder bias's initial value
  (Gao et al. initialise it so).
* :func:`project_decoder_grad` — the part of the decoder gradient that would change a
  row's norm removed before each step (the rows are renormalised after it as well), so
  the decoder stays unit-norm and the L1 penalty cannot be dodged by growing it.
"""

from __future__ import annotations

from typing import Any, cast

import mlx.core as mx

from .model import SAE

RESAMPLE_ENCODER_NORM = 0.2  # x the mean live encoder norm (Anthropic, 2023)
RESAMPLE_MAX_SHARE = 0.25  # of the dictionary, at most, re-initialised by one resampling


def aux_k(sae: SAE) -> int:
    """How many dead latents the auxiliary loss uses: ``config.aux_k``, or
    ``d_model / 2`` when it is 0."""
    return min(sae.config.aux_k or max(sae.d_model // 2, 1), sae.d_sae)


def auxk_loss(
    sae: SAE,
    pre: mx.array,
    dead: mx.array,
    residual: mx.array,
    whole: tuple[float, float] | None = None,
) -> mx.array:
    """Gao et al.'s auxiliary loss (see the module doc) for pre-activations ``pre``
    ``(n, d_sae)``, the ``dead`` mask ``(d_sae,)`` and the main reconstruction's
    ``residual`` ``(n, d_model)`` (its gradient stopped), scaled inputs.  With
    ``config.aux_signed`` the chosen dead latents whose pre-activation is negative take
    part too, their decoder rows held (see the module doc).  ``whole``: ``(rows, spread)``
    of the whole batch when these rows are a rank's share of it (its rows and the
    residual's summed squared distance to its mean), so that the ranks' losses add up to
    the whole batch's."""
    k = aux_k(sae)
    ranked = mx.where(dead, pre, -mx.inf)
    kth = mx.stop_gradient(mx.sort(ranked, axis=-1)[..., sae.d_sae - k : sae.d_sae - k + 1])
    chosen = (ranked >= kth) & dead
    recon = mx.where(chosen & (pre > 0), pre, 0.0) @ sae.W_dec
    if sae.config.aux_signed:
        below = mx.where(chosen & (pre <= 0), pre, 0.0)
        recon = recon + below @ mx.stop_gradient(sae.W_dec)
    errors = mx.sum((recon - residual) ** 2, -1)
    few = mx.minimum(mx.sum(dead) / k, 1.0)
    if whole is not None:
        rows, spread = whole
        return few * (mx.sum(errors) / rows) / (spread / rows + 1e-8)
    variance = mx.mean(mx.sum((residual - mx.mean(residual, axis=0)) ** 2, -1))
    return few * mx.mean(errors) / (variance + 1e-8)


def geometric_median(points: mx.array, iterations: int = 100, tolerance: float = 1e-6) -> mx.array:
    """The point minimising the summed distance to ``points`` ``(n, d)`` (Weiszfeld's
    algorithm from the mean, stopped when a step moves it less than ``tolerance`` times
    its scale)."""
    median = mx.mean(points, axis=0)
    for _ in range(iterations):
        weights = 1.0 / mx.maximum(mx.linalg.norm(points - median, axis=-1), 1e-8)
        moved = (weights @ points) / mx.sum(weights)
        step = cast(float, mx.linalg.norm(moved - median).item())
        median = moved
        if step <= tolerance * max(cast(float, mx.linalg.norm(median).item()), 1.0):
            break
    return median


def project_decoder_grad(sae: SAE, grads: dict[str, Any]) -> dict[str, Any]:
    """``grads`` with each decoder row's gradient made orthogonal to that (unit) row."""
    g, w = grads["W_dec"], sae.W_dec
    return {**grads, "W_dec": g - mx.sum(g * w, axis=-1, keepdims=True) * w}


def resample_dead(
    sae: SAE, optimizer_state: dict[str, Any], data: mx.array, dead: mx.array, key: mx.array
) -> mx.array:
    """Re-initialise ``dead`` features of a ReLU SAE toward inputs of ``data`` (model-scale
    activations) it reconstructs worst (see the module doc: at most a quarter of the
    dictionary, and one input each); returns the mask ``(d_sae,)`` of those re-initialised.
    ``optimizer_state`` (an Adam state) has their moments zeroed."""
    dead_index = [i for i, d in enumerate(cast(list[bool], dead.tolist())) if d]
    cap = min(max(int(sae.d_sae * RESAMPLE_MAX_SHARE), 1), data.shape[0])
    pick_key, draw_key = mx.random.split(key)
    if len(dead_index) > cap:  # a random subset of the dead, the same for the same key
        chosen = mx.random.permutation(len(dead_index), key=pick_key)[:cap].tolist()
        dead_index = sorted(dead_index[i] for i in cast(list[int], chosen))
    resampled = mx.zeros((sae.d_sae,), mx.bool_)
    if not dead_index:
        return resampled
    rows = mx.array(dead_index)
    resampled[rows] = True
    centred = data * sae.scale - sae.b_dec
    loss = mx.sum((sae.decode(sae.encode(data)) - data) ** 2 * sae.scale**2, axis=-1)
    logits = 2 * mx.log(mx.maximum(loss, 1e-30))  # probability ~ loss squared
    # drawn without replacement (Gumbel top-k), so that many dead features do not all take
    # the one worst input (the cap keeps them no more than the inputs)
    gumbel = -mx.log(-mx.log(mx.random.uniform(1e-12, 1.0, logits.shape, key=draw_key)))
    picked = mx.argsort(-(logits + gumbel))[: len(dead_index)]
    directions = centred[picked]
    directions = directions / mx.maximum(mx.linalg.norm(directions, axis=-1, keepdims=True), 1e-8)
    live = mx.logical_not(dead)
    enc_norms = mx.linalg.norm(sae.W_enc, axis=0)
    live_norm = mx.sum(mx.where(live, enc_norms, 0.0)) / mx.maximum(mx.sum(live), 1)
    w_dec, w_enc_t = sae.W_dec, sae.W_enc.T
    w_dec[rows] = directions
    w_enc_t[rows] = directions * RESAMPLE_ENCODER_NORM * live_norm
    b_enc = sae.b_enc
    b_enc[rows] = 0.0
    sae.update({"W_dec": w_dec, "W_enc": w_enc_t.T, "b_enc": b_enc})
    for name, cols in (("W_dec", False), ("W_enc", True), ("b_enc", False)):
        for moment in ("m", "v"):
            state = optimizer_state.get(name, {})
            if moment in state:
                shape = (1, -1) if cols else (-1, *[1] * (state[moment].ndim - 1))
                state[moment] = mx.where(resampled.reshape(shape), 0.0, state[moment])
    return resampled
