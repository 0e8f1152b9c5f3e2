"""Activation patching and its metrics: the batched sweep against one traced forward per patch,
the metrics against float64 references, the bug-report regressions and the spec's snippets."""

from __future__ import annotations

import json
import time

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import tomli_w
from conftest import build_tiny_llama
from test_lens import WORDS, word_tokenizer

from mlxterp import (
    InputError,
    InterpretableModel,
    InterventionError,
    ModuleNameError,
)
from mlxterp import (
    interventions as iv,
)
from mlxterp.loading import DEMO_DIR
from mlxterp.metrics import Metric, cosine_distance, kl_divergence, l2_distance, mse
from mlxterp.patching import PatchingResult, activation_patching, patching_sweep

CLEAN = [1, 5, 9, 13, 17, 21]
CORRUPT = [1, 7, 9, 13, 17, 21]  # same length, one token changed
CORRUPT_SHORT = [1, 7, 13, 17, 21]  # one token shorter


@pytest.fixture(scope="module")
def llama() -> InterpretableModel:
    return InterpretableModel(build_tiny_llama(seed=0))


def load_text_model() -> InterpretableModel:
    """The demo model once it ships; until then a tiny llama with a word tokenizer."""
    if (DEMO_DIR / "config.json").exists():
        return InterpretableModel("demo")
    return InterpretableModel(
        build_tiny_llama(seed=3, vocab_size=len(WORDS)), tokenizer=word_tokenizer()
    )


@pytest.fixture(scope="module")
def text_model() -> InterpretableModel:
    return load_text_model()


def _reference(model, clean, corrupted, component, metric, positions=None, answer=None):
    """One traced forward per layer with iv.replace_with: {layer: metric value}, clean, corrupt."""
    with model.trace(clean) as c:
        pass
    with model.trace(corrupted) as k:
        pass
    score = Metric(metric, c.output[0, -1], answer)
    values = {}
    for i in range(model.num_layers):
        name = model.layer_name(i, component)
        patch = iv.replace_with(c.activations[name], positions=positions, align="right")
        with model.trace(corrupted, interventions={name: patch}) as p:
            pass
        values[i] = score(p.output[:, -1]).item()
    return values, score(c.output[:, -1]).item(), score(k.output[:, -1]).item()


# --------------------------------------------------------------------------- the batched sweep
@pytest.mark.parametrize("component", ["mlp", "attn", "output", "mlp.up_proj", "self_attn.q_proj"])
@pytest.mark.parametrize("metric", ["l2", "kl", "logit_diff"])
@pytest.mark.parametrize("corrupted", [CORRUPT, CORRUPT_SHORT], ids=["same_len", "shorter"])
def test_batched_sweep_equals_one_forward_per_layer(llama, component, metric, corrupted):
    answer = (25, 114) if metric == "logit_diff" else None
    ref, clean_v, corrupt_v = _reference(llama, CLEAN, corrupted, component, metric, answer=answer)
    for batch_size in (None, 1, 2):
        result = patching_sweep(
            llama,
            CLEAN,
            corrupted,
            component=component,
            metric=metric,
            answer=answer,
            batch_size=batch_size,
        )
        gap = clean_v - corrupt_v
        for layer, value in ref.items():
            assert result.values[layer] == pytest.approx(value, rel=1e-4, abs=1e-5)
            assert result.recovery[layer] / 100 == pytest.approx(
                (value - corrupt_v) / gap, abs=1e-4
            )
        assert result.clean_value == pytest.approx(clean_v, abs=1e-5)
        assert result.corrupted_value == pytest.approx(corrupt_v, rel=1e-5)


def test_by_position_matrix_equals_single_position_patches(llama):
    result = patching_sweep(llama, CLEAN, CORRUPT_SHORT, component="mlp", by_position=True)
    assert result.positions == [0, 1, 2, 3, 4] and len(result.matrix) == llama.num_layers
    for j, p in enumerate(result.positions):
        ref, _, corrupt_v = _reference(llama, CLEAN, CORRUPT_SHORT, "mlp", "l2", positions=[p])
        for i in range(llama.num_layers):
            expected = (corrupt_v - ref[i]) / corrupt_v * 100
            assert result.matrix[i][j] == pytest.approx(expected, abs=1e-2)
    # the per-layer recovery (all positions at once) is still there
    assert set(result.recovery) == {0, 1, 2}


def test_recovery_formula_for_distances_and_logit_diff(llama):
    dist = patching_sweep(llama, CLEAN, CORRUPT, component="attn", metric="mse")
    assert dist.clean_value == 0 and dist.baseline == dist.corrupted_value > 0
    for layer, value in dist.values.items():
        assert dist.recovery[layer] == pytest.approx(
            (dist.baseline - value) / dist.baseline * 100, rel=1e-6
        )
    ld = patching_sweep(
        llama, CLEAN, CORRUPT, component="attn", metric="logit_diff", answer=(25, 114)
    )
    assert ld.baseline == pytest.approx(ld.clean_value - ld.corrupted_value)
    for layer, value in ld.values.items():
        assert ld.recovery[layer] == pytest.approx(
            (value - ld.corrupted_value) / (ld.clean_value - ld.corrupted_value) * 100, rel=1e-6
        )


def test_component_output_is_the_whole_layer(llama):
    """Regression, bug report "component='output' not captured": the layer's output is
    patched, and since it carries the whole residual stream every layer recovers fully."""
    result = patching_sweep(llama, CLEAN, CORRUPT, component="output", by_position=True)
    assert result.component == "output"
    assert result.recovery == pytest.approx({0: 100.0, 1: 100.0, 2: 100.0}, abs=1e-3)
    last = result.matrix[-1]  # after the last layer only the last position reaches the logits
    assert last[-1] == pytest.approx(100.0, abs=1e-3)
    assert last[:-1] == pytest.approx([0.0] * (len(last) - 1), abs=1e-3)


SPEC_COMPONENTS = [
    "mlp",
    "self_attn",
    "attn",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "output",
]


@pytest.mark.parametrize("component", SPEC_COMPONENTS)
def test_every_documented_component_can_be_patched(llama, component):
    result = activation_patching(llama, CLEAN, CORRUPT, component=component)
    assert sorted(result) == [0, 1, 2]
    assert all(np.isfinite(v) for v in result.values())


def test_unknown_component_is_a_key_error_with_suggestions(llama):
    with pytest.raises(KeyError, match="Did you mean") as err:
        activation_patching(llama, CLEAN, CORRUPT, component="mlp.up_projj")
    assert isinstance(err.value, ModuleNameError)
    assert any("up_proj" in c for c in err.value.candidates)


def test_layers_subset_and_negative_indices(llama):
    result = patching_sweep(llama, CLEAN, CORRUPT, layers=[2, -3])
    assert result.layers == [2, 0] and list(result.recovery) == [2, 0]
    full = patching_sweep(llama, CLEAN, CORRUPT)
    assert result.recovery[2] == pytest.approx(full.recovery[2], abs=1e-4)


def test_positions_restrict_where_patches_go(llama):
    last = patching_sweep(llama, CLEAN, CORRUPT_SHORT, component="mlp", positions=-1)
    grid = patching_sweep(llama, CLEAN, CORRUPT_SHORT, component="mlp", by_position=True)
    assert last.positions == [4]
    for i, layer in enumerate(grid.layers):
        assert last.recovery[layer] == pytest.approx(grid.matrix[i][-1], abs=1e-3)
    with pytest.raises(InputError, match="line up"):
        patching_sweep(llama, CLEAN, [1, 2, 3, 4, 5, 6, 7, 8], positions=0)


def test_identical_prompts_give_zero_recovery_and_say_why(llama):
    result = patching_sweep(llama, CLEAN, CLEAN, metric="kl")
    assert result.baseline == 0
    assert result.recovery == {0: 0.0, 1: 0.0, 2: 0.0}
    assert "nothing to recover" in result.note


def test_bad_arguments_are_refused_before_running(llama):
    with pytest.raises(InputError, match="unknown metric"):
        activation_patching(llama, CLEAN, CORRUPT, metric="l3")
    with pytest.raises(InputError, match="answer="):
        activation_patching(llama, CLEAN, CORRUPT, metric="logit_diff")
    with pytest.raises(InputError, match="outside this model's vocabulary"):
        activation_patching(llama, CLEAN, CORRUPT, metric="logit_diff", answer=(1, 10_000))
    with pytest.raises(InputError, match="one prompt"):
        activation_patching(llama, [CLEAN, CLEAN], CORRUPT)
    with pytest.raises(InputError, match="batch_size"):
        activation_patching(llama, CLEAN, CORRUPT, batch_size=0)
    with pytest.raises(InputError, match="out of range"):
        activation_patching(llama, CLEAN, CORRUPT, layers=[3])


def test_summary_is_plain_data_and_by_position_returns_the_result(llama):
    result = activation_patching(llama, CLEAN, CORRUPT_SHORT, by_position=True)
    assert isinstance(result, PatchingResult)
    summary = result.to_summary()
    json.dumps(summary)
    tomli_w.dumps(summary)
    assert summary["recovery"] == [result.recovery[layer] for layer in result.layers]
    assert summary["tokens"] == ["1", "7", "13", "17", "21"]  # no tokenizer: ids as text
    assert len(summary["matrix"]) == 3 and len(summary["matrix"][0]) == 5


def test_plot_prints_a_terminal_chart(llama, capsys):
    activation_patching(llama, CLEAN, CORRUPT, plot=True)
    out = capsys.readouterr().out
    assert "Recovery % patching mlp" in out and "layer" in out
    activation_patching(llama, CLEAN, CORRUPT, by_position=True, plot=True)
    grid = capsys.readouterr().out
    assert "L0" in grid and "L2" in grid


def test_model_method_delegates(llama):
    assert llama.activation_patching(
        CLEAN, CORRUPT, component="attn", metric="cosine"
    ) == pytest.approx(
        activation_patching(llama, CLEAN, CORRUPT, component="attn", metric="cosine"), abs=1e-4
    )


# --------------------------------------------------------------------------- metrics
def test_metrics_match_float64_references():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 500)) * 4, rng.normal(size=(3, 500)) * 4
    x, ref = mx.array(a, dtype=mx.float32), mx.array(b, dtype=mx.float32)
    np.testing.assert_allclose(
        np.array(l2_distance(x, ref)), np.linalg.norm(a - b, axis=-1), rtol=1e-5
    )
    np.testing.assert_allclose(np.array(mse(x, ref)), ((a - b) ** 2).mean(-1), rtol=1e-5)
    cos = 1 - (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    np.testing.assert_allclose(np.array(cosine_distance(x, ref)), cos, rtol=1e-4)
    log_p = b - np.log(np.exp(b).sum(-1, keepdims=True))
    log_q = a - np.log(np.exp(a).sum(-1, keepdims=True))
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
    np.testing.assert_allclose(np.array(kl_divergence(x, ref)), kl, rtol=1e-4)


def test_kl_divergence_patching_returns_nan():
    """Regression, bug report "KL Divergence Patching Test Returns NaN": 151,643-token
    logits with most probabilities underflowing to 0 give a finite, correct KL."""
    rng = np.random.default_rng(1)
    p_logits = rng.normal(size=151_643) * 40.0
    q_logits = rng.normal(size=151_643) * 40.0
    kl = kl_divergence(mx.array(q_logits, dtype=mx.float32), mx.array(p_logits, dtype=mx.float32))
    p32, q32 = (
        mx.softmax(mx.array(p_logits, dtype=mx.float32)),
        mx.softmax(mx.array(q_logits, dtype=mx.float32)),
    )
    assert (p32 == 0).astype(mx.float32).mean().item() > 0.9  # most probabilities underflow
    naive = mx.sum(p32 * (mx.log(p32) - mx.log(q32)))  # what the seed computed
    assert np.isnan(naive.item())
    log_p = p_logits - (p_logits.max() + np.log(np.exp(p_logits - p_logits.max()).sum()))
    log_q = q_logits - (q_logits.max() + np.log(np.exp(q_logits - q_logits.max()).sum()))
    expected = (np.exp(log_p) * (log_p - log_q)).sum()
    assert np.isfinite(kl.item()) and kl.item() == pytest.approx(expected, rel=1e-3)
    same = kl_divergence(mx.array(p_logits), mx.array(p_logits))
    assert same.item() == pytest.approx(0, abs=1e-5)


def test_kl_patching_on_a_150k_vocabulary_model_is_finite():
    model = InterpretableModel(build_tiny_llama(seed=5, vocab_size=151_936, num_hidden_layers=1))
    start = time.perf_counter()
    result = patching_sweep(
        model, [1, 500, 90_000, 151_000], [1, 501, 90_000, 151_000], metric="kl", component="mlp"
    )
    assert time.perf_counter() - start < 10
    assert np.isfinite(result.baseline) and result.baseline > 0
    assert all(np.isfinite(v) for v in result.recovery.values())


def test_numerical_instability_with_long_texts(text_model):
    """Regression, bug report "Numerical Instability with Long Texts": long prompts whose
    lengths differ by one token give finite results with every metric (no broadcast error)."""
    clean = "the capital of france is paris " * 6 + "the capital of germany is"
    corrupted = "the capital of italy is rome " * 6 + "capital of germany is"
    assert len(text_model.encode(clean)) != len(text_model.encode(corrupted))
    for metric in ("l2", "cosine", "mse", "kl"):
        result = activation_patching(text_model, clean, corrupted, metric=metric)
        assert all(np.isfinite(v) for v in result.values())


def test_l2_cannot_overflow_in_float16():
    big = mx.full((1, 151_643), 300.0, dtype=mx.float16)
    assert not np.isfinite(mx.sqrt(mx.sum(mx.square(big - 0))).item())  # the naive way
    assert l2_distance(big, mx.zeros_like(big)).item() == pytest.approx(
        300.0 * np.sqrt(151_643), rel=1e-4
    )


def test_intervention_difference_shows_inf():
    """Regression, bug report "Intervention Difference Shows as 'inf'": on a float16 model the
    difference norm of two outputs (trace outputs are float32) and the patching distances are
    finite."""
    module = build_tiny_llama(seed=2)
    module.set_dtype(mx.float16)
    model = InterpretableModel(module)
    with model.trace(CLEAN) as base:
        pass
    with model.trace(CLEAN, interventions={"layers.1.self_attn": iv.scale(40.0)}) as changed:
        pass
    diff = mx.linalg.norm(base.output - changed.output)
    assert base.output.dtype == mx.float32 and np.isfinite(diff.item()) and diff.item() > 0
    assert l2_distance(changed.output[:, -1], base.output[0, -1]).item() == pytest.approx(
        mx.linalg.norm(changed.output[0, -1] - base.output[0, -1]).item(), rel=1e-4
    )
    result = patching_sweep(model, CLEAN, CORRUPT, metric="l2")
    assert all(np.isfinite(v) for v in result.recovery.values())


def test_broadcast_error_with_different_sequence_lengths(llama):
    """Regression, bug report "Activation Patching Broadcast Error with Different Sequence
    Lengths": prompts are right-aligned (final tokens matched), either way round."""
    longer = patching_sweep(llama, CLEAN, CORRUPT_SHORT, component="mlp")
    shorter = patching_sweep(llama, CORRUPT_SHORT, CLEAN, component="mlp")
    assert longer.positions == [0, 1, 2, 3, 4]  # every corrupted position has a partner
    assert shorter.positions == [1, 2, 3, 4, 5]  # the clean prompt's first token is unmatched
    for result in (longer, shorter):
        assert all(np.isfinite(v) for v in result.recovery.values())
    ref, _, _corrupt_v = _reference(llama, CORRUPT_SHORT, CLEAN, "mlp", "l2")
    for layer, value in ref.items():
        assert shorter.values[layer] == pytest.approx(value, rel=1e-4)


class _Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.RMSNorm(dim)
        self.attn = nn.MultiHeadAttention(dim, 4)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def __call__(self, x):
        h = self.norm(x)
        mask = nn.MultiHeadAttention.create_additive_causal_mask(x.shape[1]).astype(x.dtype)
        x = x + self.attn(h, h, h, mask)
        return x + self.mlp(x)


class BlocksLM(nn.Module):
    """A language model that is not mlx-lm: its layers are ``self.blocks``."""

    def __init__(self, vocab: int = 50, dim: int = 32, depth: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = [_Block(dim) for _ in range(depth)]
        self.head = nn.Linear(dim, vocab)

    def __call__(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_hard_coded_model_model_paths():
    """Regression, bug report "activation_patching hardcodes model.model paths": a custom
    model with its layers under ``blocks`` is patched through the detected layer list."""
    mx.random.seed(4)
    model = InterpretableModel(BlocksLM())
    assert model.layer_name(1, "mlp") == "blocks.1.mlp"
    full = patching_sweep(model, [1, 2, 3, 4], [1, 9, 3, 4], component="output")
    assert full.recovery == pytest.approx({0: 100.0, 1: 100.0, 2: 100.0}, abs=1e-3)
    for component in ("mlp", "attn"):
        ref, _, _corrupt_v = _reference(model, [1, 2, 3, 4], [1, 9, 3, 4], component, "l2")
        result = patching_sweep(model, [1, 2, 3, 4], [1, 9, 3, 4], component=component)
        for layer, value in ref.items():
            assert result.values[layer] == pytest.approx(value, rel=1e-4)


class LoopedLM(BlocksLM):
    """Runs its blocks twice: a layer's output is not one value per forward."""

    def __call__(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks + self.blocks:
            x = block(x)
        return self.head(x)


def test_models_that_call_a_layer_twice_are_patched_exactly():
    mx.random.seed(6)
    model = InterpretableModel(LoopedLM(depth=4))
    ref, _, _ = _reference(model, [1, 2, 3, 4], [1, 9, 3, 4], "mlp", "l2")
    result = patching_sweep(model, [1, 2, 3, 4], [1, 9, 3, 4], component="mlp", batch_size=1)
    for layer, value in ref.items():
        assert result.values[layer] == pytest.approx(value, rel=1e-4)


def test_logit_diff_answers_are_one_token_strings_or_ids(text_model):
    paris, berlin = text_model.tokenizer.encode(" paris berlin", add_special_tokens=False)[:2]
    texts = text_model.token_to_str(paris), text_model.token_to_str(berlin)
    assert (text_model.token_id(texts[0]), text_model.token_id(texts[1])) == (paris, berlin)
    by_text = activation_patching(
        text_model,
        "the capital of france is",
        "the capital of germany is",
        component="output",
        metric="logit_diff",
        answer=texts,
    )
    by_id = activation_patching(
        text_model,
        "the capital of france is",
        "the capital of germany is",
        component="output",
        metric="logit_diff",
        answer=(paris, berlin),
    )
    assert by_text == pytest.approx(by_id, rel=1e-4)  # same tokens; BLAS threads may reorder sums
    assert by_text == pytest.approx({i: 100.0 for i in range(text_model.num_layers)}, abs=1e-2)
    with pytest.raises(InputError, match="one token"):  # " paris" is several tokens here
        activation_patching(text_model, "the", "a", metric="logit_diff", answer=(" paris", 1))


# --------------------------------------------------------------------------- spec snippets
def test_spec_api_reference_activation_patching_examples(text_model, capsys):
    results = text_model.activation_patching(
        clean_text="Paris is the capital of France",
        corrupted_text="London is the capital of France",
        component="mlp",
        plot=True,
    )
    sorted_results = sorted(results.items(), key=lambda x: x[1], reverse=True)
    print("\nMost important layers:")
    for layer_idx, recovery in sorted_results[:3]:
        print(f"  Layer {layer_idx}: {recovery:.1f}% recovery")
    assert "Most important layers" in capsys.readouterr().out

    last = text_model.num_layers - 1
    results = text_model.activation_patching(
        clean_text="Paris is the capital of France",
        corrupted_text="London is the capital of France",
        component="self_attn",
        layers=[0, last],
        plot=False,
    )
    assert sorted(results) == [0, last]
    results = text_model.activation_patching(
        clean_text="The cat sits on the mat",
        corrupted_text="The cat sit on the mat",
        component="mlp.gate_proj",
        layers=[1, last],
    )
    assert sorted(results) == [1, last]
    results = text_model.activation_patching(
        clean_text="Paris is the capital of France",
        corrupted_text="London is the capital of France",
        component="mlp",
        metric="mse",
        plot=True,
    )
    assert len(results) == text_model.num_layers


def test_spec_examples_activation_patching_snippets(text_model):
    clean, corrupted = "Paris is the capital of France", "London is the capital of France"
    mlp_results = text_model.activation_patching(
        clean_text=clean, corrupted_text=corrupted, component="mlp"
    )
    attn_results = text_model.activation_patching(
        clean_text=clean, corrupted_text=corrupted, component="self_attn"
    )
    gate_results = text_model.activation_patching(
        clean_text=clean, corrupted_text=corrupted, component="mlp.gate_proj"
    )
    sorted_layers = sorted(mlp_results.items(), key=lambda x: x[1], reverse=True)
    assert sorted_layers[0][1] == max(mlp_results.values())
    assert len(attn_results) == len(gate_results) == text_model.num_layers

    # manual patching (advanced), with the seed-style prefixed key
    layer = text_model.num_layers - 1
    with text_model.trace(clean) as trace:
        clean_mlp = trace.activations[f"model.model.layers.{layer}.mlp"]
    mx.eval(clean_mlp)
    with text_model.trace(
        corrupted, interventions={f"layers.{layer}.mlp": iv.replace_with(clean_mlp)}
    ):
        patched_output = text_model.output.save()
    assert patched_output.shape[:2] == (1, len(text_model.encode(corrupted)))


def test_spec_jupyter_patching_examples(text_model):
    layer = text_model.num_layers - 1
    prompt, corrupted_prompt = "The Eiffel Tower is located in", "The Big Ben is located in"
    with text_model.trace(prompt) as clean:
        clean_attn = clean.activations[f"model.model.layers.{layer}.self_attn"]
        clean_output = clean.activations["__model_output__"]
    mx.eval(clean_attn)
    same_length = len(text_model.encode(prompt)) == len(text_model.encode(corrupted_prompt))
    patch = iv.replace_with(clean_attn, align=None if same_length else "right")
    with text_model.trace(
        corrupted_prompt, interventions={f"layers.{layer}.self_attn": patch}
    ) as patched:
        patched_output = patched.activations["__model_output__"]
    clean_logits, patched_logits = clean_output[0, -1, :], patched_output[0, -1, :]
    assert np.isfinite(mx.linalg.norm(clean_logits - patched_logits).item())

    # common pattern: patch with a plain function (it must return the module's shape)
    with text_model.trace("clean input") as clean:
        clean_mlp = clean.activations[f"model.model.layers.{layer}.mlp"]
    run = text_model.trace(
        "corrupted input", interventions={f"model.model.layers.{layer}.mlp": lambda x: clean_mlp}
    )
    if len(text_model.encode("clean input")) == len(text_model.encode("corrupted input")):
        with run as patched:
            result = patched.activations["__model_output__"]
        assert mx.array_equal(patched.activations[f"layers.{layer}.mlp"], clean_mlp).item()
        assert result.shape[0] == 1
    else:
        with pytest.raises(InterventionError, match="shape"), run:
            pass
