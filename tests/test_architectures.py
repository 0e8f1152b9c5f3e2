"""The engine on every supported architecture: tiny random checkpoints built offline."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import pytest

from mlxterp import InterpretableModel
from mlxterp import interventions as iv
from mlxterp.checkpoints import ARCHITECTURES

ARCHS = [a for a in ARCHITECTURES if a != "medium_llama"]
PROMPT = "The capital of France is"


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request, checkpoint_dir):
    return request.param, InterpretableModel(checkpoint_dir(request.param))


def test_trace_matches_plain_mlx_lm_exactly(arch_model, checkpoint_dir):
    arch, model = arch_model
    plain, tokenizer = mlx_lm.load(checkpoint_dir(arch))
    ids = mx.array([tokenizer.encode(PROMPT)])
    expected = plain(ids).astype(mx.float32)
    with model.trace(PROMPT) as trace:
        pass
    assert mx.array_equal(trace.output, expected).item()


def test_role_aliases_and_name_forms(arch_model):
    _arch, model = arch_model
    with model.trace(PROMPT) as trace:
        attn = model.layers[1].attn.output.save()
        mlp = model.layers[1].mlp.output.save()
        first_child = model.layers[1].attn.module.children()
    canonical = model.resolve("layers.1.attn")
    assert attn.shape[:2] == mlp.shape[:2] == (1, len(model.encode(PROMPT)))
    assert trace.activations["model." + canonical] is trace.activations[canonical]
    assert trace.get("layers.1.attn.output") is attn
    sub = next(k for k, v in first_child.items() if isinstance(v, nn.Module))
    with model.trace(PROMPT):
        nested = getattr(model.layers[0].attn, sub).output.save()
    assert nested.ndim >= 3 and nested.shape[0] == 1


def test_every_intervention_changes_output_and_model_returns_exactly(arch_model):
    _arch, model = arch_model
    with model.trace(PROMPT) as base:
        pass
    hidden = base.activations[model.layer_name(0)].shape[-1]
    for fn in (
        iv.zero_out,
        iv.scale(3.0),
        iv.add_vector(mx.ones((hidden,))),
        iv.replace_with(0.5),
        iv.clamp(-0.01, 0.01),
        iv.noise(1.0, seed=0),
        iv.compose().add(iv.scale(2.0)).add(iv.noise(0.5, seed=1)).build(),
    ):
        with model.trace(PROMPT, interventions={"layers.0.mlp": fn}) as t:
            pass
        assert not mx.array_equal(t.output, base.output).item(), repr(fn)
    with (
        pytest.raises(ZeroDivisionError),
        model.trace(PROMPT, interventions={"layers.1.attn": lambda x: 1 / 0}),
    ):
        pass
    with model.trace(PROMPT) as again:
        pass
    assert mx.array_equal(again.output, base.output).item()


def test_read_out_matches_the_models_own_logits(arch_model):
    _arch, model = arch_model
    with model.trace(PROMPT) as trace:
        pass
    last = trace.activations[model.layer_name(model.num_layers - 1)]
    assert mx.allclose(model.unembedder(last), trace.output, atol=1e-3, rtol=1e-3).item()
    predicted = model.get_token_predictions(last[0, -1], top_k=1)
    assert predicted == [mx.argmax(trace.output[0, -1]).item()]
    batched = model.get_token_predictions(last[0], top_k=2, return_scores=True)
    assert len(batched) == last.shape[1] and len(batched[0]) == 2


def test_quantized_checkpoint_is_really_quantized(checkpoint_dir):
    model = InterpretableModel(checkpoint_dir("llama_4bit"))
    kinds = {type(m).__name__ for _, m in model.named_modules()}
    assert "QuantizedLinear" in kinds
