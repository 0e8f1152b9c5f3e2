"""Tracing: inputs, capture, saving, reversibility, on a tiny llama and the spec's custom model."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from conftest import SimpleTransformer, build_tiny_llama
from mlx.utils import tree_flatten

from mlxterp import (
    InputError,
    InterpretableModel,
    InterventionError,
    MlxterpError,
    ModuleNameError,
    TraceError,
    collect_activations,
    loading,
)
from mlxterp import interventions as iv
from mlxterp.checkpoints import build_checkpoint
from mlxterp.hooks import _SITES

TOKENS = mx.array([[1, 5, 9, 13, 17, 21]])


def test_trace_output_is_bit_identical_to_bare_forward(tiny_llama):
    bare = tiny_llama.model(TOKENS)
    with tiny_llama.trace(TOKENS) as trace:
        out = tiny_llama.output.save()
    assert out.dtype == mx.float32
    assert mx.array_equal(out, bare.astype(mx.float32)).item()
    assert mx.array_equal(trace.activations["__model_output__"], out).item()


def test_full_capture_covers_every_module(tiny_llama):
    with tiny_llama.trace(TOKENS) as trace:
        pass
    names = [n for n, _ in tiny_llama.named_modules()]
    called = [n for n in names if trace.get_activation(n) is not None]
    # every module but the containers that are never called on their own (none in llama)
    # and the rope module, which has no array-returning parameters but is called
    assert "model.layers.2.self_attn.q_proj" in called
    assert "model.embed_tokens" in called and "lm_head" in called
    assert len(trace.activations) == len(called) + 1  # + __model_output__


def test_capture_can_be_limited_with_names_and_globs(tiny_llama):
    with tiny_llama.trace(TOKENS, capture=["layers.*.mlp", "layers.0"]) as trace:
        pass
    assert sorted(trace.activations) == sorted(
        [
            "__model_output__",
            "model.layers.0",
            "model.layers.0.mlp",
            "model.layers.1.mlp",
            "model.layers.2.mlp",
        ]
    )
    assert trace.get_activation("layers.1.attn") is None  # known module, not captured
    with pytest.raises(KeyError, match="not captured"):
        trace.activations["layers.1.attn"]


def test_save_at_any_depth_inside_and_get_after(tiny_llama):
    with tiny_llama.trace(TOKENS) as trace:
        q = tiny_llama.layers[1].self_attn.q_proj.output.save()
        attn = tiny_llama.layers[1].attn.output.save()
        layer = tiny_llama.layers[2].output.save()
    assert q.shape == (1, 6, 64) and attn.shape == (1, 6, 64) and layer.shape == (1, 6, 64)
    assert set(trace.saved_values) == {
        "layers.1.self_attn.q_proj.output",
        "layers.1.attn.output",
        "layers.2.output",
    }
    assert trace.get("layers.2.output") is layer
    assert trace.get("model.model.layers.2.output") is layer  # any alias of the module
    assert trace.get("layers.0.output") is None  # not saved
    with pytest.raises(KeyError, match="Did you mean"):
        trace.get("layers.2.mpl.output")


def test_save_outside_a_trace_explains(tiny_llama):
    with pytest.raises(RuntimeError, match=r"inside `with model\.trace"):
        tiny_llama.layers[0].output.save()


def test_input_forms_agree(tiny_llama):
    ids = TOKENS[0].tolist()
    outputs = []
    for form in (ids, TOKENS[0], TOKENS, [ids], np.array(ids)):
        with tiny_llama.trace(form) as trace:
            outputs.append(trace.output)
    for out in outputs[1:]:
        assert out.shape == (1, 6, 128)
        assert mx.array_equal(out, outputs[0]).item()


def test_padded_batch_rows_match_single_runs(tiny_llama):
    rows = [[1, 2, 3, 4, 5], [7, 8, 9]]
    with tiny_llama.trace(rows) as trace:
        batch_out = trace.output
    assert trace.lengths == [5, 3]
    for b, row in enumerate(rows):
        with tiny_llama.trace(row) as single:
            pass
        n = len(row)
        np.testing.assert_allclose(
            np.array(batch_out[b, :n]), np.array(single.output[0]), rtol=1e-4, atol=1e-4
        )
        np.testing.assert_allclose(
            np.array(trace.last_token(batch_out)[b]),
            np.array(single.output[0, -1]),
            rtol=1e-4,
            atol=1e-4,
        )


def test_bad_inputs_raise_clear_errors(tiny_llama):
    with pytest.raises(InputError, match="tokenizer"):
        tiny_llama.trace("text needs a tokenizer")
    with pytest.raises(InputError, match="empty"):
        tiny_llama.trace([])
    with pytest.raises(InputError, match="empty"):
        tiny_llama.trace(mx.array([], dtype=mx.int32))
    with pytest.raises(InputError, match="unsupported"):
        tiny_llama.trace({"not": "an input"})


def test_over_long_input_is_refused():
    model = InterpretableModel(build_tiny_llama(max_position_embeddings=8))
    with pytest.raises(InputError, match="at most 8"):
        model.trace(list(range(1, 12)))


def test_model_is_restored_after_a_trace_that_raised(tiny_llama):
    bare = tiny_llama.model(TOKENS)
    params_before = {k: mx.array(v) for k, v in tiny_llama.parameters().items()}

    def explode(x):
        raise RuntimeError("boom inside an intervention")

    with (
        pytest.raises(RuntimeError, match="boom"),
        tiny_llama.trace(TOKENS, interventions={"layers.1.mlp": explode}),
    ):
        pass
    assert not _SITES
    assert all(not hasattr(type(m), "_mlxterp_original") for _, m in tiny_llama.named_modules())
    assert mx.array_equal(tiny_llama.model(TOKENS), bare).item()
    for k, v in tiny_llama.parameters().items():
        assert mx.array_equal(v, params_before[k]).item(), k


def test_nan_producing_intervention_is_reported_and_model_unharmed(tiny_llama):
    bare = tiny_llama.model(TOKENS)
    with (
        pytest.raises(InterventionError, match="NaN or inf") as info,
        tiny_llama.trace(TOKENS, interventions={"layers.1": lambda x: x * float("inf")}),
    ):
        pass
    assert "model.layers.1" in str(info.value)
    assert mx.array_equal(tiny_llama.model(TOKENS), bare).item()


def test_memory_stays_flat_over_repeated_traces(tiny_llama):
    for _ in range(3):
        with tiny_llama.trace(TOKENS):
            pass
    mx.clear_cache()
    start = mx.get_active_memory()
    for _ in range(40):
        with tiny_llama.trace(TOKENS, interventions={"layers.0": iv.scale(0.5)}) as t:
            t.output.sum().item()
        del t
    mx.clear_cache()
    assert mx.get_active_memory() - start < 256 * 1024


def test_spec_simple_custom_model_example():
    model = InterpretableModel(SimpleTransformer())
    input_data = mx.random.normal((1, 10, 64))
    with model.trace(input_data) as trace:
        layer_0 = model.layers[0].output.save()
        layer_2 = model.layers[2].output.save()
    assert layer_0.shape == (1, 10, 64) and layer_2.shape == (1, 10, 64)
    # the jupyter guide's form: 2-D input, seed-prefixed key
    with model.trace(mx.random.normal((1, 64))) as trace:
        pass
    assert trace.activations["model.layers.0"].shape == (1, 64)
    params = model.parameters()
    assert sum(p.size for p in params.values()) == 4 * (64 * 64 + 64)


def test_gradient_flows_through_a_trace():
    """The examples' gradient-based analysis: mx.grad of a function that traces."""
    model = InterpretableModel(SimpleTransformer())
    x = mx.random.normal((1, 5, 64))
    with model.trace(x):
        target = model.layers[2].output.save()

    def loss_fn(inp):
        with model.trace(inp):
            act = model.layers[2].output.save()
        return mx.mean((act - target) ** 2)

    grad = mx.grad(loss_fn)(x + 0.5)
    assert grad.shape == x.shape and mx.abs(grad).sum().item() > 0


def test_activation_map_get_never_hides_a_typo(tiny_llama):
    with tiny_llama.trace(TOKENS, capture=["layers.0"]) as trace:
        pass
    assert trace.activations.get("layers.1.mlp") is None  # real module, not captured
    with pytest.raises(KeyError, match="Did you mean"):
        trace.activations.get("layers.1.mpl")


def test_token_ids_outside_the_vocabulary_are_refused(tiny_llama):
    with pytest.raises(InputError, match="outside this model's vocabulary"):
        tiny_llama.trace([1, 2, 128000])
    with pytest.raises(InputError, match="-1"):
        tiny_llama.trace(mx.array([[1, -1]]))


# --------------------------------------------------------------------------- model.run
def test_run_equals_trace_bit_for_bit(tiny_llama):
    with tiny_llama.trace(TOKENS) as traced:
        pass
    ran = tiny_llama.run(TOKENS)
    assert mx.array_equal(ran.output, traced.output).item()
    assert list(ran.activations) == list(traced.activations)
    for name in traced.activations:
        assert mx.array_equal(ran.activations[name], traced.activations[name]).item(), name
    assert ran.lengths == traced.lengths and ran.inputs == traced.inputs


def test_run_honours_capture_and_interventions(tiny_llama):
    bare = tiny_llama.run(TOKENS, capture=["layers.1", "layers.2.mlp"])
    assert sorted(bare.activations) == [
        "__model_output__",
        "model.layers.1",
        "model.layers.2.mlp",
    ]
    zeroed = tiny_llama.run(TOKENS, interventions={"layers.1": iv.zero_out}, capture=["layers.1"])
    assert not mx.any(zeroed.activations["layers.1"]).item()
    assert not mx.array_equal(zeroed.output, bare.output).item()
    with tiny_llama.trace(TOKENS, interventions={"layers.1": iv.zero_out}) as traced:
        pass
    assert mx.array_equal(zeroed.output, traced.output).item()


def test_run_without_output_gives_the_same_captures_and_skips_the_rest(tiny_llama):
    full = tiny_llama.run(TOKENS, capture=["layers.1"])
    lean = tiny_llama.run(TOKENS, capture=["layers.1"], output=False)
    assert list(lean.activations) == ["model.layers.1"]
    assert mx.array_equal(lean.activations["layers.1"], full.activations["layers.1"]).item()
    with pytest.raises(TraceError, match="output=False"):
        lean.output  # noqa: B018  # the property raises
    # a NaN upstream of the capture is still reported; one downstream is never computed
    nan = {"layers.0": lambda x: x * float("nan")}
    with pytest.raises(InterventionError, match="NaN or inf"):
        tiny_llama.run(TOKENS, capture=["layers.1"], interventions=nan, output=False)
    later = {"layers.2": lambda x: x * float("nan")}
    unharmed = tiny_llama.run(TOKENS, capture=["layers.1"], interventions=later, output=False)
    assert mx.array_equal(unharmed.activations["layers.1"], full.activations["layers.1"]).item()


def test_run_needs_no_block_and_leaves_no_open_trace(tiny_llama):
    trace = tiny_llama.run(TOKENS, capture=[])
    assert trace.output.shape == (1, 6, 128)
    with pytest.raises(MlxterpError, match=r"inside `with model\.trace"):
        tiny_llama.layers[0].output.save()  # run() opened no trace block
    assert not _SITES


# --------------------------------------------------------------------------- public surface
def test_public_names_replace_the_private_ones(tiny_llama, demo):
    assert tiny_llama.layer_index_of("model.model.layers.2.attn") == 2
    assert tiny_llama.layer_index_of("lm_head") is None
    assert tiny_llama.module_index.layer_path == "model.layers"
    assert tiny_llama.token_text(17) == "17"  # no tokenizer: the id as text
    assert demo.token_text(demo.token_id(" Paris")) == " Paris"
    with pytest.raises(InputError, match="no tokenizer"):
        tiny_llama.require_tokenizer()
    prepared = tiny_llama.prepare([1, 5, 9])
    assert prepared.lengths == [3]
    assert mx.array_equal(tiny_llama.forward(prepared), tiny_llama.model(prepared.array)).item()


# --------------------------------------------------------------------------- errors
def _no_layer_list():
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

        def __call__(self, x):
            return self.proj(x)

    return InterpretableModel(Flat()).layers


@pytest.mark.parametrize(
    ("call", "builtin", "error"),
    [
        (lambda m: m.module("layers.0.mpl"), KeyError, ModuleNameError),
        (lambda m: m.run(TOKENS, capture=["layers.0"]).activations["layers.1"], KeyError, None),
        (lambda m: m.layers[0].output.save(), RuntimeError, None),
        (lambda m: m.layers[99], IndexError, None),
        (lambda m: m.layer_name(99), IndexError, None),
        (lambda m: m.layers[0].no_such_thing, AttributeError, None),
        (lambda m: setattr(m.layers[0], "mlp", None), AttributeError, None),
        (lambda m: m.encode("hello"), ValueError, InputError),
        (lambda m: InterpretableModel(42), TypeError, None),
        (lambda m: _no_layer_list(), AttributeError, None),
        (lambda m: build_checkpoint("no_such_arch", "/nonexistent"), KeyError, None),
        (
            lambda m: collect_activations(m, TOKENS, layers=["layers.0"])["layers.1"],
            KeyError,
            None,
        ),
    ],
)
def test_errors_raised_on_purpose_are_mlxterp_errors(tiny_llama, call, builtin, error):
    """Every error the library means to raise is catchable as MlxterpError and still as the
    builtin a caller would expect there."""
    with pytest.raises(MlxterpError) as info:
        call(tiny_llama)
    assert isinstance(info.value, builtin)
    if error is not None:
        assert isinstance(info.value, error)


def test_dequantize_swaps_quantized_layers_for_plain_ones_with_the_same_numbers():
    quantized = build_tiny_llama()
    nn.quantize(quantized, group_size=32, bits=4)
    reference = InterpretableModel(quantized).run([[1, 2, 3, 4, 5]]).output
    module = build_tiny_llama()
    nn.quantize(module, group_size=32, bits=4)
    model = InterpretableModel(module, dequantize=True)
    assert not [name for name, m in model.model.named_modules() if "scales" in m]
    assert all(v.dtype == mx.float32 for _, v in tree_flatten(model.model.parameters()))
    assert mx.allclose(model.run([[1, 2, 3, 4, 5]]).output, reference, atol=1e-5)
    # nothing to do on a plain model
    plain = build_tiny_llama()
    assert loading.dequantize(plain) == 0
