"""Sparse autoencoders on the demo model: training, stats, files, feature analysis."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import mlx.core as mx
import pytest

from mlxterp import InterpretableModel, InputError
from mlxterp.sae import (SAE, SAEConfig, evaluate, feature_intervention, feature_logit_effects,
                         stats, top_features_for_text, top_texts_for_feature, train_sae)

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("river king apple garden letter bird coat market song window bridge field school "
         "mountain road house book car France Paris Germany Berlin").split()


def texts(n: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append(f"The capital of {rng.choice(['France', 'Germany', 'Italy', 'Spain'])} is")
        else:
            out.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))))
    return out


CONFIG = SAEConfig(expansion_factor=4, k=8, epochs=3, batch_size=128, seed=3)


@pytest.fixture(scope="module")
def trained(demo):
    return train_sae(demo, texts(150, 0), module="model.model.layers.8", config=CONFIG,
                     progress=False)


def test_documented_defaults_match_the_code():
    """Regression: 'Test expects wrong default SAEConfig values' — docs and code disagreed."""
    table = (ROOT / "docs" / "sae.md").read_text()
    documented = dict(re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", table, re.M))
    defaults = {f.name: f.default for f in dataclasses.fields(SAEConfig)}
    assert set(documented) == set(defaults)
    for name, value in defaults.items():
        assert documented[name] == repr(value), name


def test_short_training_reaches_the_stated_explained_variance(trained, demo):
    held_out = evaluate(trained, demo, texts(40, 1))
    assert held_out["explained_variance"] >= 0.75, held_out
    assert held_out["l0"] == pytest.approx(CONFIG.k)


def test_stats_keys_are_the_documented_ones(trained, demo):
    """Regression: 'Test expects wrong SAE stats key name' — it is l1_magnitude."""
    with demo.trace("The capital of France is") as trace:
        pass
    keys = set(stats(trained, trace.activations["layers.8"]))
    assert keys == {"l0", "l1_magnitude", "mse", "explained_variance", "dead_fraction"}


def test_records_its_site_and_reads_any_leading_shape(trained):
    assert trained.site["module"] == "model.layers.8" and trained.site["layer"] == 8
    x = mx.random.normal((2, 5, 64))
    assert trained.encode(x).shape == (2, 5, trained.d_sae)
    assert trained(x).shape == (2, 5, 64)
    assert trained.decode(trained.encode(x[0, 0])).shape == (64,)
    with pytest.raises(InputError, match="64-dimensional"):
        trained.encode(mx.ones((3, 32)))


def test_top_features_for_text_shapes(trained, demo):
    """Regression: 'SAE feature analysis shape mismatch' ((batch, seq, d) activations)."""
    text = "The capital of France is"
    result = top_features_for_text(trained, demo, text, k=5)
    assert len(result["per_position"]) == len(demo.encode(text)) == len(result["tokens"])
    assert all(len(row) <= 5 for row in result["per_position"])
    assert 0 < len(result["pooled"]) <= 5
    values = [v for _, v in result["pooled"]]
    assert values == sorted(values, reverse=True)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_top_texts_for_feature_any_batch(trained, demo, batch_size):
    """Regression: get_top_texts_for_feature failed with '[squeeze] Cannot squeeze axis'."""
    corpus = texts(12, 5)
    feature = top_features_for_text(trained, demo, corpus[1], k=1)["per_position"][-1][0][0]
    found = top_texts_for_feature(trained, demo, corpus, feature, k=4, batch_size=batch_size)
    assert found and len(found) <= 4
    text, pos, token, value = found[0]
    assert text in corpus and 0 <= pos < len(demo.encode(text)) and value > 0
    assert token == demo.token_to_str(demo.encode(text)[pos])
    every = lambda bs: sorted((t, p, round(v, 3)) for t, p, _, v in
                              top_texts_for_feature(trained, demo, corpus, feature, k=12, batch_size=bs))
    assert every(batch_size) == every(5)


def test_feature_intervention(trained, demo):
    text = "The capital of France is"
    with demo.trace(text) as base:
        pass
    feature = top_features_for_text(trained, demo, text, k=1)["pooled"][0][0]
    with demo.trace(text, interventions={"layers.8": feature_intervention(trained, feature, 1.0)}) as same:
        pass
    assert mx.allclose(same.output, base.output, atol=1e-4).item()
    with demo.trace(text, interventions={"layers.8": feature_intervention(trained, feature, 0.0)}) as ablated:
        pass
    assert not mx.allclose(ablated.output, base.output, atol=1e-4).item()
    effects = feature_logit_effects(trained, demo, feature, k=3)
    assert len(effects["promoted"]) == 3 and effects["promoted"][0][1] >= effects["suppressed"][0][1]


def test_save_load_round_trip_and_mismatch_refusal(trained, demo, tmp_path, checkpoint_dir):
    trained.save(tmp_path / "sae")
    again = SAE.load(tmp_path / "sae", demo)
    x = mx.random.normal((4, 64))
    assert mx.array_equal(again(x), trained(x)).item()
    assert again.site == trained.site and again.config == trained.config
    wide = InterpretableModel(checkpoint_dir("medium_llama"))  # 512 wide, 8 layers
    with pytest.raises(KeyError, match="model.layers.8"):
        SAE.load(tmp_path / "sae", wide)  # no such module there
    SAE(64, CONFIG, {"module": "model.layers.1"}).save(tmp_path / "early")
    with pytest.raises(InputError, match="64-dimensional .* produces 512"):
        SAE.load(tmp_path / "early", wide)
    with pytest.raises(InputError, match="no readable SAE"):
        SAE.load(tmp_path / "nothing-here")


def test_same_seed_same_weights(demo):
    config = SAEConfig(expansion_factor=2, k=4, epochs=1, batch_size=64, seed=11)
    a = train_sae(demo, texts(24, 2), layer=2, component="mlp", config=config, progress=False)
    b = train_sae(demo, texts(24, 2), layer=2, component="mlp", config=config, progress=False)
    assert a.site["module"] == "model.layers.2.mlp"
    assert mx.array_equal(a.W_dec, b.W_dec).item() and mx.array_equal(a.b_enc, b.b_enc).item()


def test_bad_config_is_refused():
    with pytest.raises(InputError, match="kind"):
        SAEConfig(kind="gated")
    with pytest.raises(InputError, match="positive"):
        SAEConfig(k=0)
