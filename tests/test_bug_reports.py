"""Regression tests for the engine-layer defects of ../shared/spec/bug-report-*.md, one per item.

(The analysis items live beside their code: test_lens.py, test_activations.py,
test_patching.py; the SAE items in test_sae.py.)
"""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlxterp import InterventionError
from mlxterp import interventions as iv

PROMPT = "The capital of France is"


# bug-report-docs-review.md -------------------------------------------------------------
def test_saved_values_are_available_after_the_block(demo):
    with demo.trace(PROMPT) as trace:
        saved = demo.layers[3].output.save()
    assert trace.saved_values["layers.3.output"] is saved
    assert trace.get("layers.3.output") is saved


def test_list_of_int_inputs_get_a_batch_dimension(demo):
    tokens = demo.encode(PROMPT)
    with demo.trace(tokens):
        out = demo.output.save()
    assert out.shape == (1, len(tokens), demo.vocab_size)
    with demo.trace(PROMPT) as text_trace:
        pass
    assert mx.array_equal(out, text_trace.output).item()


def test_attn_works_on_mlx_lm_models(demo):
    assert not hasattr(demo.model.model.layers[0], "attn")  # mlx-lm calls it self_attn
    with demo.trace(PROMPT):
        via_alias = demo.layers[3].attn.output.save()
        via_name = demo.layers[3].self_attn.output.save()
    assert via_alias is via_name


def test_prefixed_and_short_activation_keys_reach_the_same_module(demo):
    with demo.trace(PROMPT) as trace:
        pass
    keys = [
        "model.model.layers.5.self_attn",
        "model.layers.5.self_attn",
        "layers.5.self_attn",
        "layers.5.attn",
    ]
    values = [trace.activations[k] for k in keys]
    assert all(v is values[0] for v in values)
    assert (
        trace.get_activation("layers.3.attn") is trace.activations["model.model.layers.3.self_attn"]
    )


def test_activations_stay_readable_after_the_block_and_the_forward_runs_on_entry(demo):
    with demo.trace(PROMPT) as trace:
        inside = len(trace.activations)
    assert inside > 100 and len(trace.activations) == inside


# bug-report-release.md -------------------------------------------------------------------
def test_replace_with_across_different_lengths(demo):
    """Item 2: a clean activation from a shorter prompt broke with a broadcast error."""
    with demo.trace("Paris is the capital of France") as clean:
        clean_mlp = clean.activations["model.model.layers.10.mlp"]
    longer = "Paris is the capital city of France"
    with (
        pytest.raises(InterventionError) as info,
        demo.trace(longer, interventions={"layers.10.mlp": iv.replace_with(clean_mlp)}),
    ):
        pass
    message = str(info.value)
    assert str(tuple(clean_mlp.shape)) in message and "align='right'" in message
    assert "broadcast_shapes" not in message
    n = clean_mlp.shape[1]
    with demo.trace(
        longer, interventions={"layers.10.mlp": iv.replace_with(clean_mlp, align="right")}
    ) as t:
        patched = t.activations["layers.10.mlp"]
    assert mx.array_equal(patched[:, -n:], clean_mlp[:, -n:]).item()
    with demo.trace(longer) as plain:
        pass
    assert mx.array_equal(patched[:, :-n], plain.activations["layers.10.mlp"][:, :-n]).item()


def test_nested_module_access(demo):
    """Item 7: nested module access failed with '[convert] Only length-1 arrays ...'."""
    with demo.trace(PROMPT) as trace:
        q = demo.layers[2].self_attn.q_proj.output.save()
        gate = demo.layers[2].mlp.gate_proj.output.save()
        rope = demo.layers[2].attn.rope.output.save()
    assert q.shape == (1, 6, 64) and gate.shape == (1, 6, 192) and rope.ndim == 4
    assert trace.get("layers.2.mlp.gate_proj.output") is gate


def test_intervention_difference_norm_is_finite(demo):
    """Item 10: the difference between intervened and clean outputs printed as inf."""
    with demo.trace(PROMPT) as base:
        pass
    with demo.trace(PROMPT, interventions={"layers.5": iv.scale(30.0)}) as changed:
        pass
    diff = mx.linalg.norm(base.output - changed.output).item()
    assert 0 < diff < float("inf")
    assert base.output.dtype == mx.float32  # half-precision models too (test_patching.py)


def test_patching_call_is_hooked_on_the_class(tiny_llama):
    """Item 9: patching an instance's __call__ does nothing in MLX; hooks must act anyway."""
    calls = []

    def spy(x):
        calls.append(x.shape)
        return x

    with tiny_llama.trace([1, 2, 3], interventions={"layers.0.mlp": spy}):
        pass
    assert calls == [(1, 3, 64)]
