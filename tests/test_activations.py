"""get_activations, batch_get_activations, collect_activations and ActivationCache.

A 4-layer tiny llama with token-id prompts (lists of ids are right-padded like text batches).
"""

from __future__ import annotations

from collections.abc import Mapping

import mlx.core as mx
import pytest
from conftest import build_tiny_llama

from mlxterp import (
    ActivationCache,
    InputError,
    InterpretableModel,
    batch_get_activations,
    collect_activations,
    get_activations,
)

HIDDEN = 64
PROMPTS = [[1, 5, 9, 13], [2, 4], [7, 8, 9, 10, 11, 12, 3], [6]]


@pytest.fixture(scope="module")
def model() -> InterpretableModel:
    return InterpretableModel(build_tiny_llama(seed=4, num_hidden_layers=4))


def _alone(model, prompt, layer, position, component=None):
    """The activation of one prompt run by itself, read straight from a trace."""
    name = model.layer_name(layer, component)
    with model.trace([prompt], capture=[name]) as trace:
        pass
    return trace.activations[name][0, position]


# --------------------------------------------------------------------------- get_activations
def test_api_reference_get_activations_shapes(model):
    acts = get_activations(model, [1, 2, 3], layers=[0, 2, 3])
    assert sorted(acts) == ["layer_0", "layer_2", "layer_3"]
    assert acts["layer_3"].shape == (1, HIDDEN)
    acts = get_activations(model, [[1, 2], [3, 4], [5, 6]], layers=[1], positions=-1)
    assert acts["layer_1"].shape == (3, HIDDEN)
    acts = get_activations(model, [4, 5, 6, 7], layers=[3], positions=[0, -1])
    assert acts["layer_3"].shape == (1, 2, HIDDEN)
    assert sorted(get_activations(model, [1, 2])) == [f"layer_{i}" for i in range(4)]


def test_examples_md_activation_collection_with_text_prompts(model):
    from test_lens import word_tokenizer

    text_model = InterpretableModel(model.model, tokenizer=word_tokenizer())
    prompts = ["the quick brown fox", "hello world", "machine learning is"]
    activations = get_activations(text_model, prompts=prompts, layers=[0, 2, 3], positions=-1)
    assert activations["layer_3"].shape == (3, HIDDEN)
    for b, prompt in enumerate(prompts):  # each row's last word, not the padding
        alone = _alone(text_model, text_model.encode(prompt), 3, -1)
        assert mx.allclose(activations["layer_3"][b], alone, atol=1e-5).item()
    activations = get_activations(text_model, prompts="hello world", layers=[1], positions=[0, -1])
    assert activations["layer_1"].shape == (1, 2, HIDDEN)
    large_dataset = [f"hello world {w}" for w in ("the", "fox", "city") * 4]
    activations = batch_get_activations(
        text_model, prompts=large_dataset, layers=[0, 3], batch_size=5, progress=False
    )
    assert activations["layer_3"].shape == (12, HIDDEN)


@pytest.mark.parametrize("positions", [-1, 0, -2, [0, -1], [1, -1, 0]])
def test_positions_follow_each_rows_real_tokens_in_padded_batches(model, positions):
    prompts = [p for p in PROMPTS if len(p) >= 2]
    acts = get_activations(model, prompts, layers=[1, 3], positions=positions)
    wanted = [positions] if isinstance(positions, int) else positions
    for layer in (1, 3):
        got = acts[f"layer_{layer}"]
        assert got.shape == (
            (len(prompts), HIDDEN)
            if isinstance(positions, int)
            else (len(prompts), len(wanted), HIDDEN)
        )
        for b, prompt in enumerate(prompts):
            expected = mx.stack([_alone(model, prompt, layer, p) for p in wanted])
            row = got[b] if not isinstance(positions, int) else got[b][None]
            assert mx.allclose(row, expected, atol=1e-5).item(), (layer, b)


def test_position_minus_one_is_not_the_padding(model):
    acts = get_activations(model, [[1, 5, 9, 13], [2, 4]], layers=[2])
    with model.trace([[1, 5, 9, 13], [2, 4]], capture=["layers.2"]) as trace:
        padded_last = trace.activations["layers.2"][1, -1]
    assert not mx.allclose(acts["layer_2"][1], padded_last).item()
    assert mx.allclose(acts["layer_2"][1], _alone(model, [2, 4], 2, -1), atol=1e-5).item()


@pytest.mark.parametrize("component", ["mlp", "attn", "self_attn", "mlp.down_proj", "output"])
def test_component_outputs_keep_layer_keys(model, component):
    acts = get_activations(model, PROMPTS[:2], layers=[0, 2], component=component)
    assert sorted(acts) == ["layer_0", "layer_2"]
    for layer in (0, 2):
        for b, prompt in enumerate(PROMPTS[:2]):
            expected = _alone(model, prompt, layer, -1, component)
            assert mx.allclose(acts[f"layer_{layer}"][b], expected, atol=1e-5).item()
    if component != "output":
        plain = get_activations(model, PROMPTS[:2], layers=[0])
        assert not mx.allclose(acts["layer_0"], plain["layer_0"]).item()


def test_only_the_requested_modules_are_captured(model, monkeypatch):
    seen = []
    run = model.run

    def spying_run(inputs, **kwargs):
        seen.append((kwargs["capture"], kwargs["output"]))
        return run(inputs, **kwargs)

    monkeypatch.setattr(model, "run", spying_run)
    get_activations(model, PROMPTS, layers=[1, -1], component="mlp")
    # and not the logits: nothing after the last captured module is computed
    assert seen == [(["model.layers.1.mlp", "model.layers.3.mlp"], False)]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(layers=[4]), InputError, "layer 4 is out of range"),
        (dict(layers=[-5]), InputError, "out of range"),
        (dict(layers=["layers.1"]), InputError, "layer indices"),
        (dict(layers=[]), InputError, "layers is empty"),
        (dict(positions=2), InputError, "position 2 is out of range for prompt 1, which has 2"),
        (dict(positions=[0, -3]), InputError, "position -3 is out of range for prompt 1"),
        (dict(positions="last"), InputError, "positions must be"),
        (dict(positions=[]), InputError, "positions must be"),
        (dict(component="mpl"), KeyError, "Did you mean"),
    ],
)
def test_get_activations_rejects_bad_arguments(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        get_activations(model, [[1, 2, 3], [4, 5]], **kwargs)


# --------------------------------------------------------------------------- batch_get_activations
def test_batches_concatenate_to_the_single_batch_result(model, capsys):
    prompts = PROMPTS * 3  # 12 prompts of mixed lengths: batches of 5, 5, 2
    whole = get_activations(model, prompts, layers=[0, 3], positions=[0, -1])
    streamed = batch_get_activations(
        model, prompts, layers=[0, 3], positions=[0, -1], batch_size=5, progress=False
    )
    assert sorted(streamed) == ["layer_0", "layer_3"]
    for key in whole:
        assert streamed[key].shape == (12, 2, HIDDEN)
        assert mx.allclose(streamed[key], whole[key], atol=1e-5).item()
    assert capsys.readouterr().err == ""


def test_batch_progress_bar_goes_to_stderr(model, capsys):
    acts = batch_get_activations(model, PROMPTS, layers=[1], batch_size=3)
    assert acts["layer_1"].shape == (4, HIDDEN)
    err = capsys.readouterr().err
    assert "4/4" in err and "activations" in err


def test_batch_component_and_api_reference_example(model):
    large_dataset = [[i % 100 + 1, (3 * i) % 100 + 1, 7] for i in range(40)]
    acts = batch_get_activations(
        model, prompts=large_dataset, layers=[0, 2, 3], batch_size=16, progress=False
    )
    assert acts["layer_3"].shape == (40, HIDDEN)
    mlp = batch_get_activations(
        model, large_dataset[:6], layers=[2], component="mlp", batch_size=4, progress=False
    )
    assert mx.allclose(
        mlp["layer_2"][5], _alone(model, large_dataset[5], 2, -1, "mlp"), atol=1e-5
    ).item()


def test_batch_memory_stays_flat_as_the_dataset_grows(model):
    seq = 48

    def peak(n_prompts):
        prompts = [[(i + j) % 120 + 1 for j in range(seq)] for i in range(n_prompts)]
        mx.eval(model.parameters())
        mx.reset_peak_memory()
        base = mx.get_active_memory()
        acts = batch_get_activations(model, prompts, batch_size=4, progress=False)
        mx.eval(list(acts.values()))
        return mx.get_peak_memory() - base

    small, large = peak(8), peak(64)
    full_activations_of_extra_prompts = 56 * seq * HIDDEN * 4 * 4  # float32, 4 layers
    kept_results_of_extra_prompts = 56 * HIDDEN * 4 * 4
    assert large - small < kept_results_of_extra_prompts + full_activations_of_extra_prompts // 8


def test_batch_get_activations_rejects_bad_arguments(model):
    with pytest.raises(InputError, match="batch_size"):
        batch_get_activations(model, PROMPTS, batch_size=0)
    with pytest.raises(InputError, match="non-empty list"):
        batch_get_activations(model, [])


# --------------------------------------------------------------------------- collect_activations
def test_collect_activations_ignores_the_layers_filter(model):
    """Regression for "collect_activations ignores the layers filter"."""
    cache = collect_activations(model, [1, 2, 3], layers=["layers.3", "layers.1"])
    assert isinstance(cache, ActivationCache)
    assert sorted(cache.keys()) == ["model.layers.1", "model.layers.3"]
    assert len(cache) == 2
    assert "layers.2" not in cache and cache.get("layers.2") is None
    assert "layers.3.mlp" not in cache
    with pytest.raises(KeyError, match="not in this cache"):
        cache["layers.2"]


def test_the_cache_is_a_mapping_with_items_and_values(model):
    """Regression: wrapping the alias map instead of subclassing it lost items()/values()."""
    cache = collect_activations(model, [1, 2, 3], layers=["layers.3", "layers.1"])
    assert isinstance(cache, Mapping)
    assert dict(cache.items()) == cache.activations
    assert [v.shape for v in cache.values()] == [v.shape for v in cache.activations.values()]
    assert cache.get("model.model.layers.3") is cache["layers.3"]


def test_cache_keys_dont_match_docs(model):
    """Regression for "cache keys don't match docs": canonical keys, every alias finds them."""
    cache = collect_activations(model, [1, 2, 3], layers=["layers.3", "model.model.layers.0.mlp"])
    assert cache.keys() == ["model.layers.0.mlp", "model.layers.3"]
    with model.trace([1, 2, 3]) as trace:
        pass
    for alias in ("layers.3", "model.layers.3", "model.model.layers.3"):
        assert alias in cache
        assert mx.array_equal(cache.get(alias), trace.activations["layers.3"]).item()
        assert mx.array_equal(cache[alias], cache.activations["model.layers.3"]).item()
    for alias in ("layers.0.mlp", "layers.0.feed_forward", "model.model.layers.0.mlp"):
        assert alias in cache
    assert "layers.9" not in cache
    with pytest.raises(KeyError, match="Did you mean"):
        cache.get("layers.3.mpl")


def test_api_reference_collect_activations_example(model, capsys):
    cache = collect_activations(model, [4, 5, 6], layers=["layers.3", "layers.2"])
    act_3 = cache.get("layers.3")
    print(f"Cached {len(cache)} activations")
    print(f"Available keys: {cache.keys()}")
    assert act_3.shape == (1, 3, HIDDEN)
    if "layers.3" in cache:
        print("Found!")
    for name in cache:
        print(name)
    assert "Cached 2 activations" in capsys.readouterr().out
    assert cache.metadata["tokens"] == [[4, 5, 6]] and cache.metadata["lengths"] == [3]


def test_collect_activations_takes_indices_patterns_and_none(model):
    by_index = collect_activations(model, [1, 2], layers=[0, -1])
    assert by_index.keys() == ["model.layers.0", "model.layers.3"]
    by_glob = collect_activations(model, [1, 2], layers=["layers.*.attn"])
    assert by_glob.keys() == [f"model.layers.{i}.self_attn" for i in range(4)]
    everything = collect_activations(model, [1, 2])
    assert "layers.2.mlp.up_proj" in everything and "__model_output__" in everything
    assert everything.metadata["layers"] is None
    with pytest.raises(InputError, match="layers is empty"):
        collect_activations(model, [1, 2], layers=[])
    with pytest.raises(InputError, match="module names or layer indices"):
        collect_activations(model, [1, 2], layers=[1.5])
    with pytest.raises(KeyError, match="Did you mean"):
        collect_activations(model, [1, 2], layers=["layers.1.mpl"])
