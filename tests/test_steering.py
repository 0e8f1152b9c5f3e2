"""Steering vectors, generation with interventions and ``steer``: generation against argmax of
repeated full forwards, steering vectors against traces, and the spec's steering snippets."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from conftest import build_tiny_llama
from test_patching import BlocksLM, load_text_model

from mlxterp import InputError, InterpretableModel, InterventionError
from mlxterp import interventions as iv
from mlxterp.steering import generate, generate_tokens, steer, steering_vector

PROMPT = [1, 5, 9, 13]


@pytest.fixture(scope="module")
def llama() -> InterpretableModel:
    return InterpretableModel(build_tiny_llama(seed=0))


@pytest.fixture(scope="module")
def text_model() -> InterpretableModel:
    return load_text_model()


def _argmax_loop(model, prompt, steps, interventions=None):
    """Greedy continuation by repeated full traced forwards, no cache."""
    tokens, new = list(prompt), []
    for _ in range(steps):
        with model.trace(tokens, interventions=interventions, capture=[]) as trace:
            pass
        new.append(mx.argmax(trace.output[0, -1]).item())
        tokens.append(new[-1])
    return new


# --------------------------------------------------------------------------- generation
def test_greedy_generation_equals_argmax_of_full_forwards(llama):
    assert generate_tokens(llama, PROMPT, 5) == _argmax_loop(llama, PROMPT, 5)


def test_interventions_act_on_every_generation_step(llama):
    vector = mx.random.normal((64,), key=mx.random.key(0)) * 3
    steering = {"layers.1": iv.add_vector(vector)}
    steered = generate_tokens(llama, PROMPT, 5, interventions=steering)
    assert steered == _argmax_loop(llama, PROMPT, 5, steering)
    assert steered != generate_tokens(llama, PROMPT, 5)
    # and they are gone afterwards
    assert generate_tokens(llama, PROMPT, 5) == _argmax_loop(llama, PROMPT, 5)


def test_generation_without_a_cache_on_a_custom_model():
    mx.random.seed(4)
    model = InterpretableModel(BlocksLM())
    assert generate_tokens(model, [1, 2, 3], 4) == _argmax_loop(model, [1, 2, 3], 4)


def test_generation_stops_at_a_stop_token(llama):
    greedy = generate_tokens(llama, PROMPT, 5)
    stop = greedy[2]
    first = greedy.index(stop)
    assert generate_tokens(llama, PROMPT, 5, stop_ids=frozenset({stop})) == greedy[:first]


def test_each_token_is_streamed_as_it_is_made_and_false_stops(llama):
    greedy = generate_tokens(llama, PROMPT, 6)
    heard: list[int] = []
    assert generate_tokens(llama, PROMPT, 6, on_token=heard.append) == greedy == heard
    heard.clear()

    def stop_at_three(token: int) -> bool:
        heard.append(token)
        return len(heard) < 3

    assert generate_tokens(llama, PROMPT, 6, on_token=stop_at_three) == greedy[:3] == heard


def test_sampling_is_reproducible_with_a_seed(llama):
    a = generate_tokens(llama, PROMPT, 8, temperature=1.5, seed=7)
    b = generate_tokens(llama, PROMPT, 8, temperature=1.5, seed=7)
    assert a == b and len(a) == 8
    samples = {tuple(generate_tokens(llama, PROMPT, 8, temperature=5.0, seed=s)) for s in range(4)}
    assert len(samples) > 1  # sampling, not argmax


def test_generate_returns_only_the_continuation_text(text_model):
    prompt = "the capital of france is"
    ids = generate_tokens(
        text_model,
        text_model.encode(prompt),
        6,
        stop_ids=frozenset({text_model.tokenizer.eos_token_id}),
    )
    text = generate(text_model, prompt, max_tokens=6)
    full = text_model.decode(text_model.encode(prompt) + ids)
    assert full.endswith(text) and prompt in full[: len(full) - len(text)]
    assert text_model.generate(prompt, max_tokens=6) == text


def test_generation_input_errors(llama, text_model):
    with pytest.raises(InputError, match="max_tokens"):
        generate_tokens(llama, PROMPT, 0)
    with pytest.raises(InputError, match="empty"):
        generate(text_model, "")
    assert isinstance(generate(text_model, "   ", max_tokens=1), str)  # spaces are tokens
    with pytest.raises(InputError, match="empty"):
        generate_tokens(llama, [], 3)
    with pytest.raises(InputError, match="temperature"):
        generate_tokens(llama, PROMPT, 3, temperature=-1)
    with pytest.raises(ValueError, match="tokenizer"):
        generate(llama, PROMPT)
    with pytest.raises(KeyError, match="Did you mean"):
        generate_tokens(llama, PROMPT, 2, interventions={"layers.1.mlpp": iv.zero_out})


def test_nan_steering_is_a_clear_error(llama, text_model):
    nan = mx.full((64,), float("nan"))
    with pytest.raises(InterventionError, match="NaN or inf"):
        generate_tokens(llama, PROMPT, 3, interventions={"layers.1": iv.add_vector(nan)})
    with pytest.raises(InterventionError, match="NaN or inf"):
        steer(
            text_model,
            "the capital of france is",
            mx.full((text_model.hidden_size,), float("nan")),
            1,
        )
    # the model is untouched afterwards
    assert generate_tokens(llama, PROMPT, 3) == _argmax_loop(llama, PROMPT, 3)


# --------------------------------------------------------------------------- steering
def test_steering_vector_is_the_mean_difference_at_each_last_token(text_model):
    positive = ["the capital of france is paris", "hello"]
    negative = ["machine learning is"]
    name = text_model.layer_name(1)
    vector = steering_vector(text_model, positive, negative, layer=1)
    expected = []
    for prompts in (positive, negative):
        rows = []
        for prompt in prompts:
            with text_model.trace(prompt, capture=[name]) as trace:
                pass
            rows.append(trace.activations[name][0, -1])
        expected.append(mx.stack(rows).mean(axis=0))
    assert vector.shape == (text_model.hidden_size,)
    np.testing.assert_allclose(vector, expected[0] - expected[1], atol=1e-4)

    mean = steering_vector(
        text_model, positive, "machine learning is", layer=1, component="mlp", position="mean"
    )
    with text_model.trace(positive[1], capture=["layers.1.mlp"]) as short:
        pass
    with text_model.trace(positive[0], capture=["layers.1.mlp"]) as long:
        pass
    with text_model.trace(negative[0], capture=["layers.1.mlp"]) as neg:
        pass
    acts = [t.activations["layers.1.mlp"][0].mean(axis=0) for t in (long, short, neg)]
    np.testing.assert_allclose(mean, (acts[0] + acts[1]) / 2 - acts[2], atol=1e-4)
    with pytest.raises(InputError, match="position"):
        steering_vector(text_model, "a", "b", 1, position="last")
    with pytest.raises(InputError, match="positive"):
        steering_vector(text_model, [], "b", 1)


def test_steer_with_coefficient_zero_is_the_baseline_and_large_changes_it(text_model):
    vector = steering_vector(
        text_model, "the capital of france is paris", "machine learning is fascinating", layer=1
    )
    prompt = "the capital of germany is"
    baseline, zero = steer(text_model, prompt, vector, layer=1, coefficient=0.0, max_tokens=6)
    assert zero == baseline == generate(text_model, prompt, max_tokens=6)
    plain = generate_tokens(text_model, text_model.encode(prompt), 6)
    pushed = generate_tokens(
        text_model,
        text_model.encode(prompt),
        6,
        interventions={text_model.layer_name(1): iv.add_vector(vector * 50)},
    )
    assert pushed != plain
    _, steered = steer(text_model, prompt, vector, layer=1, coefficient=50.0, max_tokens=6)
    assert steered == generate(
        text_model, prompt, max_tokens=6, interventions={"layers.1": iv.add_vector(vector * 50)}
    )
    assert text_model.steering_vector("a", "b", 1).shape == (text_model.hidden_size,)


# --------------------------------------------------------------------------- spec snippets
def test_spec_examples_steering_vectors(text_model):
    hidden_dim = text_model.hidden_size
    steering_vector_ = mx.random.normal((hidden_dim,))
    last = text_model.num_layers - 1
    interventions_dict = {
        f"layers.{last - 2}": iv.add_vector(steering_vector_ * 1.0),
        f"layers.{last - 1}": iv.add_vector(steering_vector_ * 1.5),
        f"layers.{last}": iv.add_vector(steering_vector_ * 2.0),
    }
    with text_model.trace("Original prompt", interventions=interventions_dict):
        steered_output = text_model.output.save()
    with text_model.trace("Original prompt"):
        plain_output = text_model.output.save()
    assert steered_output.shape == plain_output.shape
    assert not mx.allclose(steered_output, plain_output).item()


def test_spec_jupyter_steering_vectors(text_model):
    layer = text_model.num_layers - 1
    with text_model.trace("I love this") as pos:
        pos_h = pos.activations[f"model.model.layers.{layer}"]
    with text_model.trace("I hate this") as neg:
        neg_h = neg.activations[f"model.model.layers.{layer}"]
    steering_vector_ = pos_h - neg_h
    # the snippet adds a (1, seq, hidden) difference: it fits a prompt of the same length;
    # the last-token vector (what steering_vector returns) fits any prompt
    same = steering_vector_.shape[1] == len(text_model.encode("This movie is"))
    vector = steering_vector_ if same else steering_vector_[0, -1]
    with text_model.trace(
        "This movie is", interventions={f"model.model.layers.{layer}": iv.add_vector(vector)}
    ) as steered:
        steered_output = steered.activations["__model_output__"]
    assert np.isfinite(np.array(steered_output)).all()
    # steering_vector runs both prompts as one padded batch: float32 sums in another order
    # (OpenBLAS picks other kernels for a batch) move the last layer by about 2e-5
    assert mx.allclose(
        steering_vector(text_model, "I love this", "I hate this", layer),
        steering_vector_[0, -1],
        atol=1e-4,
    ).item()
