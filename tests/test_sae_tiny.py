"""Sparse autoencoders on a tiny in-memory llama fed token ids (no tokenizer, untied head)."""

from __future__ import annotations

import random

import mlx.core as mx
import pytest
from conftest import build_tiny_llama

from mlxterp import InputError, InterpretableModel
from mlxterp.sae import (
    SAE,
    SAEConfig,
    evaluate,
    feature_intervention,
    feature_logit_effects,
    stats,
    stream_activations,
    top_features_for_text,
    top_texts_for_feature,
    train_sae,
    train_sae_on_activations,
)


def token_rows(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(128) for _ in range(rng.randint(3, 10))] for _ in range(n)]


@pytest.fixture(scope="module")
def relu_sae(tiny_llama):
    config = SAEConfig(
        kind="relu",
        expansion_factor=4,
        epochs=4,
        batch_size=64,
        l1_coefficient=1e-3,
        learning_rate=3e-3,
        seed=1,
    )
    return train_sae(
        tiny_llama, token_rows(60, 0), layer=1, component="mlp", config=config, progress=False
    )


def test_trains_on_token_ids_of_a_model_without_tokenizer(relu_sae, tiny_llama):
    assert (relu_sae.component, relu_sae.layer, relu_sae.model_ref) == (
        "model.layers.1.mlp",
        1,
        "custom",
    )
    held_out = token_rows(20, 9)
    trained = evaluate(relu_sae, tiny_llama, held_out)
    untrained = evaluate(SAE(64, relu_sae.config, relu_sae.component), tiny_llama, held_out)
    assert trained["explained_variance"] > 0.5 > untrained["explained_variance"], (
        trained,
        untrained,
    )
    assert 0 < trained["l0"] < relu_sae.d_sae / 2


def test_topk_keeps_k_features_per_token_at_inference(tiny_llama):
    config = SAEConfig(kind="topk", expansion_factor=2, k=5, epochs=1, batch_size=32, seed=2)
    sae = train_sae(tiny_llama, token_rows(12, 1), "layers.0", config=config, progress=False)
    feats = sae.encode(mx.random.normal((3, 7, 64), key=mx.random.key(4)) * 5)
    assert feats.shape == (3, 7, 128)
    assert mx.all(mx.sum(feats > 0, axis=-1) == 5).item()


def test_batchtopk_encodes_with_the_threshold_it_learned(tiny_llama, tmp_path):
    """As Bussmann et al. encode: a feature is on where its pre-activation passes the mean
    smallest activation training kept, so tokens hold k features on average, not each."""
    rows = token_rows(40, 1)
    config = SAEConfig(kind="batchtopk", expansion_factor=2, k=5, epochs=2, batch_size=32, seed=2)
    sae = train_sae(tiny_llama, rows, "layers.0", config=config, progress=False)
    assert sae.threshold > 0
    x = tiny_llama.run(rows, capture=["layers.0"]).activations["layers.0"]
    pre = sae.pre_activations(x)
    feats = sae.encode(x)
    assert mx.array_equal(feats > 0, pre > sae.threshold).item()
    per_token = mx.sum(feats > 0, axis=-1).reshape(-1)
    assert 2.5 < mx.mean(per_token).item() < 10  # about k = 5 ...
    assert mx.max(per_token).item() != mx.min(per_token).item()  # ... not exactly k each
    again = SAE.load(sae.save(tmp_path / "b"))
    assert again.threshold == sae.threshold
    assert mx.array_equal(again.encode(x), feats).item()


def test_analysis_with_token_ids_and_any_batch_size(relu_sae, tiny_llama):
    rows = token_rows(10, 3)
    result = top_features_for_text(relu_sae, tiny_llama, rows[0], k=3)
    assert result["tokens"] == [str(t) for t in rows[0]]
    assert len(result["per_position"]) == len(rows[0])
    feature = result["pooled"][0][0]
    found = {
        bs: top_texts_for_feature(relu_sae, tiny_llama, rows, feature, k=10, batch_size=bs)
        for bs in (1, 4, 10)
    }
    assert found[1] and [(t, p) for t, p, _, _ in found[1]] == [(t, p) for t, p, _, _ in found[4]]
    for text, pos, token, _value in found[10]:
        assert pos < len(text) and token == str(text[pos])
    assert [round(v, 4) for *_, v in found[1]] == [round(v, 4) for *_, v in found[10]]


def test_feature_intervention_and_logit_effects_on_an_untied_head(relu_sae, tiny_llama):
    tokens = token_rows(1, 5)[0]
    feature = top_features_for_text(relu_sae, tiny_llama, tokens, k=1)["pooled"][0][0]
    with tiny_llama.trace(tokens) as base:
        pass
    name = relu_sae.component
    with tiny_llama.trace(
        tokens, interventions={name: feature_intervention(relu_sae, feature, 1.0)}
    ) as same:
        pass
    with tiny_llama.trace(
        tokens, interventions={name: feature_intervention(relu_sae, feature, 0.0)}
    ) as ablated:
        pass
    assert mx.allclose(same.output, base.output, atol=1e-4).item()
    assert not mx.allclose(ablated.output, base.output, atol=1e-4).item()
    effects = feature_logit_effects(relu_sae, tiny_llama, feature, k=4)
    logits = tiny_llama.model.lm_head.weight @ (relu_sae.W_dec[feature] / relu_sae.scale)
    assert [t for t, _ in effects["promoted"]] == [str(i) for i in mx.argsort(-logits)[:4].tolist()]


def test_load_checks_the_width_of_the_component(relu_sae, tiny_llama, tmp_path):
    relu_sae.save(tmp_path / "sae")
    again = SAE.load(tmp_path / "sae", tiny_llama)
    x = mx.random.normal((2, 3, 64), key=mx.random.key(7))
    assert mx.array_equal(again(x), relu_sae(x)).item() and again.scale == relu_sae.scale
    narrow = InterpretableModel(build_tiny_llama(hidden_size=32, intermediate_size=64))
    with pytest.raises(InputError, match=r"64-dimensional .* produces 32"):
        SAE.load(tmp_path / "sae", narrow)
    with pytest.raises(InputError, match="64-dimensional"):
        stats(relu_sae, mx.zeros((4, 32)))


def test_a_failed_save_leaves_the_saved_sae_whole(relu_sae, tmp_path, monkeypatch):
    folder = relu_sae.save(tmp_path / "sae")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def broken(path, arrays):
        with open(path, "wb") as handle:
            handle.write(b"half a file")  # as a full disk would leave it
        raise OSError("No space left on device")

    monkeypatch.setattr(mx, "save_safetensors", broken)
    with pytest.raises(OSError, match="No space"):
        relu_sae.save(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no temporary left
    monkeypatch.undo()
    x = mx.random.normal((2, 3, 64), key=mx.random.key(7))
    assert mx.array_equal(SAE.load(folder)(x), relu_sae(x)).item()


def test_training_on_cached_activations_equals_streaming(tiny_llama):
    rows = token_rows(20, 6)
    config = SAEConfig(expansion_factor=2, k=4, epochs=2, batch_size=16, buffer_size=40, seed=7)
    streamed = train_sae(tiny_llama, rows, "layers.1", config=config, progress=False)
    cached = list(stream_activations(tiny_llama, rows, "layers.1", 16, progress=False))
    again = train_sae_on_activations(cached, config, streamed.component, 1, "custom")
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert mx.array_equal(getattr(again, name), getattr(streamed, name)).item(), name
    assert again.scale == streamed.scale and again.training_stats == streamed.training_stats
    assert (again.component, again.layer) == ("model.layers.1", 1)
    with pytest.raises(InputError, match=r"\(n, d\) arrays"):
        train_sae_on_activations([mx.zeros((2, 3, 4))])
