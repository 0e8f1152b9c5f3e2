"""Interventions: every built-in, custom callables, positions, descriptions, errors."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterventionError, NotSerializableError
from mlxterp import interventions as iv

TOKENS = mx.array([[3, 1, 4, 1, 5, 9, 2]])
SITE = "layers.1.mlp"


def _site_output(model, fn):
    with model.trace(TOKENS, interventions={SITE: fn}) as trace:
        return trace.activations[SITE], trace.output


@pytest.fixture(scope="module")
def clean(tiny_llama):
    with tiny_llama.trace(TOKENS) as trace:
        return trace.activations[SITE], trace.output


def test_zero_scale_clamp_are_exact(tiny_llama, clean):
    act, _ = clean
    assert mx.array_equal(_site_output(tiny_llama, iv.zero_out)[0], mx.zeros_like(act)).item()
    assert mx.allclose(_site_output(tiny_llama, iv.scale(0.5))[0], act * 0.5).item()
    clamped = _site_output(tiny_llama, iv.clamp(-0.01, 0.01))[0]
    assert mx.array_equal(clamped, mx.clip(act, -0.01, 0.01)).item()
    only_max = _site_output(tiny_llama, iv.clamp(max_val=0.0))[0]
    assert mx.max(only_max).item() <= 0.0


def test_add_vector_replace_noise_compose(tiny_llama, clean):
    act, out = clean
    vec = mx.arange(64, dtype=mx.float32) / 64
    assert mx.allclose(_site_output(tiny_llama, iv.add_vector(vec))[0], act + vec).item()
    assert mx.array_equal(
        _site_output(tiny_llama, iv.replace_with(2.0))[0], mx.full(act.shape, 2.0)
    ).item()
    a = _site_output(tiny_llama, iv.noise(std=0.1, seed=7))[0]
    b = _site_output(tiny_llama, iv.noise(std=0.1, seed=7))[0]
    assert mx.array_equal(a, b).item() and not mx.allclose(a, act).item()
    combined = iv.compose().add(iv.scale(2.0)).add(iv.clamp(-0.05, 0.05)).build()
    assert mx.allclose(_site_output(tiny_llama, combined)[0], mx.clip(act * 2, -0.05, 0.05)).item()
    assert not mx.allclose(_site_output(tiny_llama, iv.zero_out)[1], out).item()


def test_custom_callable(tiny_llama, clean):
    act, _ = clean
    assert mx.allclose(_site_output(tiny_llama, lambda x: mx.tanh(x))[0], mx.tanh(act)).item()


def test_positions_restrict_the_change(tiny_llama, clean):
    act, _ = clean
    last_only = _site_output(tiny_llama, iv.scale(0.0, positions=-1))[0]
    assert mx.array_equal(last_only[:, :-1], act[:, :-1]).item()
    assert mx.array_equal(last_only[:, -1], mx.zeros_like(act[:, -1])).item()
    first_two = _site_output(tiny_llama, iv.zero_out.at([0, 1]))[0]
    assert mx.array_equal(first_two[:, 2:], act[:, 2:]).item()
    custom = _site_output(tiny_llama, iv.at_positions(lambda x: x * 0, [-1]))[0]
    assert mx.array_equal(custom, last_only).item()


def test_negative_positions_follow_each_rows_length(tiny_llama):
    rows = [[1, 2, 3, 4], [5, 6]]
    with tiny_llama.trace(rows, interventions={"layers.0": iv.zero_out.at(-1)}) as trace:
        act = trace.activations["layers.0"]
    assert mx.abs(act[0, 3]).sum().item() == 0 and mx.abs(act[1, 1]).sum().item() == 0
    assert mx.abs(act[1, 3]).sum().item() > 0  # row 1's padding position is untouched


def test_shape_mismatch_names_both_shapes(tiny_llama):
    with pytest.raises(InterventionError) as info:
        _site_output(tiny_llama, lambda x: x[:, :3])
    assert "(1, 3, 64)" in str(info.value) and "(1, 7, 64)" in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(InterventionError, match="64"):
        _site_output(tiny_llama, iv.add_vector(mx.ones((32,))))


def test_bad_parameters_are_refused_up_front():
    with pytest.raises(InterventionError, match="number"):
        iv.scale("two")
    with pytest.raises(InterventionError, match="above"):
        iv.clamp(1.0, -1.0)
    with pytest.raises(InterventionError, match=">= 0"):
        iv.noise(std=-1)
    with pytest.raises(InterventionError, match="at least one"):
        iv.compose().build()


def test_descriptions_round_trip():
    vec = mx.ones((4,))
    for fn in (
        iv.zero_out,
        iv.scale(0.5, positions=-1),
        iv.add_vector(vec),
        iv.replace_with(1.5),
        iv.clamp(max_val=3.0),
        iv.noise(0.2, seed=3),
        iv.compose().add(iv.scale(2.0)).add(iv.noise(0.1, seed=1)).build(),
    ):
        desc = fn.describe()
        again = iv.from_description(desc)
        x = mx.arange(8, dtype=mx.float32).reshape(1, 2, 4)
        assert mx.array_equal(again(x), fn(x)).item(), desc["kind"]
        assert again.describe().keys() == desc.keys()


def test_custom_callables_are_not_serializable():
    with pytest.raises(NotSerializableError, match="my_fn"):

        def my_fn(x):
            return x

        iv.describe(my_fn)
    mixed = iv.compose().add(iv.scale(2.0)).add(lambda x: x).build()
    assert not iv.is_serializable(mixed) and iv.is_serializable(iv.scale(1.0))


def test_two_interventions_on_one_module_are_refused(tiny_llama):
    with pytest.raises(InterventionError, match="compose"):
        tiny_llama.trace(
            TOKENS,
            interventions={"layers.1.mlp": iv.zero_out, "model.model.layers.1.mlp": iv.zero_out},
        )


def test_intervened_context_applies_to_every_forward(tiny_llama, clean):
    _, out = clean
    with tiny_llama.intervened({SITE: iv.zero_out}):
        a = tiny_llama(TOKENS)
    b = _site_output(tiny_llama, iv.zero_out)[1]
    np.testing.assert_allclose(np.array(a.astype(mx.float32)), np.array(b), rtol=1e-6)
    assert mx.array_equal(tiny_llama(TOKENS).astype(mx.float32), out).item()


def test_a_description_cannot_name_a_custom_callable():
    with pytest.raises(InterventionError, match="custom"):
        iv.from_description({"kind": "custom", "params": {"fn": "print"}})
