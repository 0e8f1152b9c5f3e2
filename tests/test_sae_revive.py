"""Dead-feature methods: Gao et al.'s AuxK loss, Anthropic's resampling, the
geometric-median decoder bias and the unit-norm decoder, each checked by what it must do
(scripts/sae_dead_features.py measures what they buy; docs/sae.md has its table)."""

from __future__ import annotations

import random

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest

from mlxterp import InputError
from mlxterp.sae import SAE, SAEConfig, evaluate, stats, stream_activations, train_sae
from mlxterp.sae.revive import (
    auxk_loss,
    geometric_median,
    project_decoder_grad,
    resample_dead,
)
from mlxterp.sae.train import _fit, _loss


def token_rows(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(128) for _ in range(rng.randint(3, 10))] for _ in range(n)]


def test_the_geometric_median_ignores_an_outlier_and_zeroes_the_unit_vector_sum():
    rng = np.random.default_rng(0)
    cluster = rng.normal(size=(40, 3))
    points = mx.array(np.concatenate([cluster, [[500.0, 0, 0]]]).astype(np.float32))
    median = geometric_median(points)
    assert float(mx.linalg.norm(median)) < 1.0 < float(mx.linalg.norm(mx.mean(points, axis=0)))
    units = (points - median) / mx.linalg.norm(points - median, axis=-1, keepdims=True)
    assert float(mx.linalg.norm(mx.sum(units, axis=0))) < 1e-2  # the optimality condition
    triangle = mx.array([[0.0, 0.0], [2.0, 0.0], [1.0, 3**0.5]])
    assert np.allclose(geometric_median(triangle), [1.0, 3**0.5 / 3], atol=1e-4)


def test_the_decoder_gradient_keeps_row_norms():
    sae = SAE(8, SAEConfig(expansion_factor=2))
    grads = {"W_dec": mx.random.normal((16, 8), key=mx.random.key(1)), "b_dec": mx.ones((8,))}
    projected = project_decoder_grad(sae, grads)
    assert mx.all(mx.abs(mx.sum(projected["W_dec"] * sae.W_dec, -1)) < 1e-5).item()
    assert projected["b_dec"] is grads["b_dec"]


def test_auxk_reconstructs_the_residual_from_the_top_dead_latents():
    sae = SAE(8, SAEConfig(expansion_factor=4, aux_k=2))  # 32 latents, 2 in the aux loss
    x = mx.random.normal((5, 8), key=mx.random.key(2))
    pre = sae.pre_activations(x)
    residual = mx.random.normal((5, 8), key=mx.random.key(3))
    dead = mx.arange(32) < 6  # latents 0-5 dead: more than k_aux, so no down-scaling
    got = auxk_loss(sae, pre, dead, residual).item()
    p, w = np.asarray(pre), np.asarray(sae.W_dec)
    feats = np.zeros_like(p)
    for row in range(5):
        top = np.argsort(-np.maximum(p[row, :6], 0))[:2]
        feats[row, top] = np.maximum(p[row, top], 0)
    r = np.asarray(residual)
    error = ((feats @ w - r) ** 2).sum(-1).mean()
    variance = ((r - r.mean(0)) ** 2).sum(-1).mean()
    assert got == pytest.approx(error / variance, rel=1e-4)
    # one dead latent for k_aux 2: half the weight
    one = mx.arange(32) == 0
    half = auxk_loss(sae, pre, one, residual).item()
    feats1 = np.zeros_like(p)
    feats1[:, 0] = np.maximum(p[:, 0], 0)
    assert half == pytest.approx(0.5 * ((feats1 @ w - r) ** 2).sum(-1).mean() / variance, rel=1e-4)
    # its gradient reaches the dead latents' encoder columns only
    grads = nn.value_and_grad(sae, lambda m: auxk_loss(m, m.pre_activations(x), dead, residual))(
        sae
    )[1]
    assert mx.all(grads["W_enc"][:, 6:] == 0).item() and mx.any(grads["W_enc"][:, :6] != 0).item()


def test_resampling_points_dead_features_at_the_worst_reconstructed_inputs():
    sae = SAE(8, SAEConfig(kind="relu", expansion_factor=2, seed=4))
    sae.scale = 2.0
    optimizer = optim.Adam(1e-3)
    fake = {k: mx.ones_like(v) for k, v in sae.parameters().items()}
    optimizer.update(sae, fake)  # moments everywhere
    sae.W_dec = sae.W_dec / mx.linalg.norm(sae.W_dec, axis=-1, keepdims=True)
    sae.b_dec = mx.zeros((8,))
    sae.b_enc = mx.full((16,), -100.0)  # no feature fires: an input's loss is its norm
    easy = mx.full((30, 8), 1e-3)
    hard = mx.array(
        [[0.0, 0, 3.0, 4.0, 0, 0, 0, 0], [6.0, 0, 0, 0, 0, 0, 0, 8], [0, 5.0, 0, 0, 0, 0, 0, 0]]
    )
    data = mx.concatenate([easy[:10], hard[:1], easy[10:20], hard[1:], easy[20:]])
    dead = mx.arange(16) < 3
    live_norm = mx.mean(mx.linalg.norm(sae.W_enc, axis=0)[3:]).item()
    before = dict(sae.parameters())
    assert mx.array_equal(resample_dead(sae, optimizer.state, data, dead, mx.random.key(0)), dead)
    directions = hard / mx.linalg.norm(hard, axis=-1, keepdims=True)
    # each dead feature took one of the three bad inputs, and no two the same one
    match = mx.argmax(sae.W_dec[:3] @ directions.T, axis=-1).tolist()
    assert sorted(match) == [0, 1, 2]
    for f, h in enumerate(match):
        assert mx.allclose(sae.W_dec[f], directions[h], atol=1e-5).item()
        assert mx.linalg.norm(sae.W_enc[:, f]).item() == pytest.approx(0.2 * live_norm, rel=1e-4)
        assert mx.allclose(sae.W_enc[:, f] / mx.linalg.norm(sae.W_enc[:, f]), directions[h]).item()
        assert sae.b_enc[f].item() == 0.0
    assert mx.array_equal(sae.W_dec[3:], before["W_dec"][3:]).item()
    assert mx.array_equal(sae.W_enc[:, 3:], before["W_enc"][:, 3:]).item()
    state = optimizer.state
    for moment in ("m", "v"):
        assert mx.all(state["W_dec"][moment][:3] == 0).item()
        assert mx.all(state["W_dec"][moment][3:] != 0).item()
        assert mx.all(state["W_enc"][moment][:, :3] == 0).item()
        assert mx.all(state["b_enc"][moment][:3] == 0).item()
        assert mx.all(state["b_enc"][moment][3:] != 0).item()
    none = mx.zeros((16,), mx.bool_)
    assert not resample_dead(sae, optimizer.state, data, none, mx.random.key(1)).any().item()


def test_resampling_a_nearly_all_dead_dictionary_touches_a_quarter_and_keeps_reconstruction():
    """With 224 of 256 features dead, re-initialising them all at once (each fires on about
    half the inputs) swamps the reconstruction (explained variance 1.0 -> -1.4); one
    resampling takes at most a quarter of the dictionary, at random among the dead, and the
    reconstruction survives it (0.75, for training to mend)."""
    d, width = 16, 256
    sae = SAE(d, SAEConfig(kind="relu", expansion_factor=16, seed=3))
    eye = mx.eye(d)
    rest = mx.random.normal((width - 2 * d, d), key=mx.random.key(7))
    w_dec = mx.concatenate([eye, -eye, rest / mx.linalg.norm(rest, axis=-1, keepdims=True)])
    w_enc = mx.concatenate([eye, -eye, mx.zeros((width - 2 * d, d))]).T
    b_enc = mx.where(mx.arange(width) < 2 * d, 0.0, -100.0)  # 32 live features (x+, x-)
    sae.update({"W_dec": w_dec, "W_enc": w_enc, "b_enc": b_enc, "b_dec": mx.zeros((d,))})
    data = 3 * mx.random.normal((400, d), key=mx.random.key(5))
    assert stats(sae, data)["explained_variance"] == pytest.approx(1.0)
    optimizer = optim.Adam(1e-3)
    optimizer.update(sae, {k: mx.ones_like(v) for k, v in sae.parameters().items()})
    dead = mx.arange(width) >= 2 * d
    resampled = resample_dead(sae, optimizer.state, data, dead, mx.random.key(0))
    assert mx.sum(resampled).item() == width // 4
    assert not (resampled & mx.logical_not(dead)).any().item()  # only dead ones
    assert stats(sae, data)["explained_variance"] > 0.5
    moment_zero = mx.all(optimizer.state["W_dec"]["m"] == 0, axis=-1)
    assert mx.array_equal(moment_zero, resampled).item()  # the others left for the next time
    kept = dead & mx.logical_not(resampled)
    # never more features than inputs: each gets an input of its own
    few = resample_dead(sae, optimizer.state, data[:5], kept, mx.random.key(1))
    assert mx.sum(few).item() == 5


def test_training_resamples_relu_features_and_starts_b_dec_at_the_median(tiny_llama):
    rows = token_rows(40, 0)
    config = SAEConfig(
        kind="relu",
        expansion_factor=4,
        batch_size=32,
        epochs=2,
        l1_coefficient=0.3,
        learning_rate=0.05,  # fast enough to kill features in 18 steps
        dead_feature_window=16,
        resample_every=3,
        seed=1,
    )
    sae = train_sae(tiny_llama, rows, "layers.1", config=config, progress=False)
    assert sae.training_stats["resampled"] > 0
    norms = mx.linalg.norm(sae.W_dec, axis=-1)
    assert mx.allclose(norms, mx.ones_like(norms), atol=1e-4).item()
    # with a learning rate too small to move it, b_dec stays where it started
    still = train_sae(
        tiny_llama,
        rows[:8],
        "layers.1",
        config=SAEConfig(expansion_factor=1, k=4, learning_rate=1e-12, seed=1),
        progress=False,
    )
    acts = mx.concatenate(list(stream_activations(tiny_llama, rows[:8], "layers.1", 16, False)))
    assert mx.allclose(still.b_dec, geometric_median(acts * still.scale), atol=1e-4).item()
    zeros = train_sae(
        tiny_llama,
        rows[:8],
        "layers.1",
        config=SAEConfig(expansion_factor=1, k=4, learning_rate=1e-12, b_dec_init="zeros"),
        progress=False,
    )
    assert mx.all(mx.abs(zeros.b_dec) < 1e-6).item()


def test_the_auxiliary_loss_gives_dead_topk_latents_a_gradient():
    """The main loss reaches only the latents a token selects; with the auxiliary loss the
    strongest dead ones get a gradient too, and without it (aux_coefficient 0) none."""

    def grads(aux):
        sae = SAE(16, SAEConfig(expansion_factor=8, k=2, aux_coefficient=aux, seed=3))
        x = mx.random.normal((6, 16), key=mx.random.key(5))
        chosen = mx.any(sae.encode(x) > 0, axis=0)
        dead = mx.logical_not(chosen)  # every latent no token selected counts as dead
        _, g = nn.value_and_grad(sae, _loss)(sae, x, dead)
        return mx.any(g["W_enc"] != 0, axis=0), chosen

    with_aux, chosen = grads(1 / 32)
    without, _ = grads(0.0)
    assert mx.array_equal(without, chosen).item()
    assert mx.sum(with_aux & ~chosen).item() > 0


def test_signed_auxk_reaches_dead_latents_below_zero_through_their_encoders_only():
    """A latent negative on every input gets nothing from the published AuxK (ranked by
    ReLU); with aux_signed it is pushed up where its direction would shrink the residual,
    its decoder row untouched, and the published part of the loss is unchanged."""
    x = mx.random.normal((6, 8), key=mx.random.key(7))

    def run(signed: bool):
        sae = SAE(8, SAEConfig(expansion_factor=4, aux_k=6, aux_signed=signed, seed=5))
        b_enc = sae.b_enc
        b_enc[:3] = -100.0  # latents 0-2: below zero on every input
        sae.b_enc = b_enc
        residual = 0.5 * sae.W_dec[0] + 0.01 * x  # what latent 0's direction would explain
        dead = mx.arange(32) < 6  # 0-2 below zero, 3-5 dead but often positive

        def loss(m):
            return auxk_loss(m, m.pre_activations(x), dead, residual)

        return nn.value_and_grad(sae, loss)(sae)

    (plain, g_plain), (signed, g_signed) = run(False), run(True)
    assert mx.all(g_plain["b_enc"][:3] == 0).item()  # published: no gradient at all
    assert g_signed["b_enc"][0].item() < 0  # signed: descending raises its pre-activation
    assert mx.all(g_signed["W_dec"][:3] == 0).item()  # their decoder rows held
    assert mx.array_equal(g_signed["W_dec"][6:], g_plain["W_dec"][6:]).item()
    assert signed.item() != plain.item()


def test_signed_auxk_revives_batchtopk_latents_the_published_loss_leaves_dead():
    """Latents pushed below zero everywhere stay dead under the published AuxK and come
    back with aux_signed (the SmolLM2 measurement is docs/sae.md's table)."""
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(24, 16)).astype(np.float32)
    codes = rng.exponential(size=(3000, 24)) * (rng.random((3000, 24)) < 0.15)
    data = [
        mx.array((codes @ directions).astype(np.float32))[i : i + 500] for i in range(0, 3000, 500)
    ]
    buried = mx.arange(64) < 24

    def dead_after(signed: bool) -> float:
        config = SAEConfig(
            kind="batchtopk", expansion_factor=4, k=4, epochs=5, batch_size=100,
            buffer_size=500, learning_rate=1e-2, dead_feature_window=300, aux_signed=signed,
            seed=1,
        )  # fmt: skip
        sae = SAE(16, config)
        sae.b_enc = mx.where(buried, -6.0, sae.b_enc)  # a third of the dictionary buried
        trained = _fit(sae, lambda: iter(data))
        fired = mx.any(trained.encode(mx.concatenate(data)) > 0, axis=0)
        return 1.0 - mx.mean(fired.astype(mx.float32)).item()

    published, signed = dead_after(False), dead_after(True)
    assert published >= 0.3  # the buried stay buried
    assert signed < 0.5 * published


def test_leading_tokens_can_be_left_out(tiny_llama):
    rows = token_rows(6, 8)
    every = mx.concatenate(list(stream_activations(tiny_llama, rows, "layers.1", 4, False)))
    later = mx.concatenate(list(stream_activations(tiny_llama, rows, "layers.1", 4, False, 1)))
    assert later.shape[0] == every.shape[0] - len(rows)
    starts = [sum(len(r) for r in rows[:i]) for i in range(len(rows))]
    kept = [i for i in range(every.shape[0]) if i not in starts]
    assert mx.array_equal(later, every[mx.array(kept)]).item()
    config = SAEConfig(expansion_factor=1, k=4, skip_tokens=1, seed=2)
    sae = train_sae(tiny_llama, rows, "layers.1", config=config, progress=False)
    assert sae.training_stats["tokens"] == later.shape[0]
    assert evaluate(sae, tiny_llama, rows) == pytest.approx(stats(sae, later), rel=1e-4)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"aux_k": -1}, "aux_k must be an int >= 0"),
        ({"resample_every": 1.5}, "resample_every must be an int >= 0"),
        ({"b_dec_init": "mean"}, "b_dec_init must be one of"),
        ({"skip_tokens": -1}, "skip_tokens must be an int >= 0"),
        ({"aux_signed": 1}, "aux_signed must be True or False"),
    ],
)
def test_bad_settings_are_refused(bad, message):
    with pytest.raises(InputError, match=message):
        SAEConfig(**bad)


def test_the_real_text_of_the_dead_feature_script_is_python_prose_in_two_sources(demo):
    """scripts/sae_dead_features.py --gguf trains on the standard library's docstrings and
    measures on the language reference's help topics: fixed-length texts, no text in both."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts/sae_dead_features.py"
    spec = importlib.util.spec_from_file_location("sae_dead_features", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    train, held = script.python_docs(demo.tokenizer, 40, 10, length=32)
    assert len(train) == 40 and len(held) == 10
    assert all(len(text) == 32 for text in train + held)
    assert not {tuple(t) for t in train} & {tuple(t) for t in held}
    assert script.python_docs(demo.tokenizer, 40, 10, length=32) == (train, held)  # fixed
