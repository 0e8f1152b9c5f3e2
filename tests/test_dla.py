"""Direct logit attribution (issue 15, part 4): the parts sum to the model's own logit."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import pytest
from conftest import build_tiny_llama

from mlxterp import InputError, InterpretableModel, LogitAttribution, UnsupportedAttentionError
from mlxterp.checkpoints import ARCHITECTURES

ARCHS = [a for a in ARCHITECTURES if a != "medium_llama"]
PROMPT = "The capital of France is"


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request, checkpoint_dir):
    return request.param, InterpretableModel(checkpoint_dir(request.param))


def _check_sums(result: LogitAttribution) -> None:
    assert abs(sum(result.values) - result.total) < 1e-4
    assert abs(result.capped_total - result.model_value) < 1e-4
    # Heads, biases and MLPs account for every block: what is left is float rounding.
    rests = [v for v, kind in zip(result.values, result.kinds, strict=True) if kind == "rest"]
    assert max(abs(v) for v in rests) < 1e-4


def test_parts_sum_to_the_models_logit(arch_model):
    arch, model = arch_model
    result = model.direct_logit_attribution(PROMPT, " Paris")
    _check_sums(result)
    logits = model.run(PROMPT, capture=[]).output
    assert result.model_value == pytest.approx(logits[0, -1, result.tokens[0]].item(), abs=1e-6)
    heads = [
        label for label, kind in zip(result.labels, result.kinds, strict=True) if kind == "head"
    ]
    assert len(heads) == 4 * model.num_layers
    if ARCHITECTURES[arch].get("final_logit_softcapping"):
        # The cap acts on the whole logit, so the parts add up to the logit before it.
        assert result.softcap == ARCHITECTURES[arch]["final_logit_softcapping"]
        assert abs(result.total - result.model_value) > 1e-6
    else:
        assert result.softcap is None
        assert abs(result.total - result.model_value) < 1e-4


def test_parts_sum_to_the_models_logit_difference(arch_model):
    _arch, model = arch_model
    result = model.direct_logit_attribution(PROMPT, " Paris", 7, position=-2)
    _check_sums(result)
    logits = model.run(PROMPT, capture=[]).output[0, -2]
    expected = (logits[result.tokens[0]] - logits[7]).item()
    assert result.model_value == pytest.approx(expected, abs=1e-5)
    assert result.position == len(model.encode(PROMPT)) - 2


def test_biases_are_parts_of_their_own(checkpoint_dir):
    model = InterpretableModel(checkpoint_dir("gpt2"))  # c_proj and ln_f have biases
    result = model.direct_logit_attribution(PROMPT, " Paris")
    assert "L0 attn bias" in result.labels and "norm bias" in result.labels
    llama = InterpretableModel(checkpoint_dir("llama"))
    assert not any("bias" in label for label in llama.direct_logit_attribution(PROMPT, 5).labels)


def test_a_head_part_is_its_output_through_the_frozen_final_norm(checkpoint_dir):
    model = InterpretableModel(checkpoint_dir("llama"))
    result = model.direct_logit_attribution(PROMPT, " Paris")
    trace = model.run(PROMPT, capture=[model.layer_name(model.num_layers - 1)])
    final = trace.activations[model.layer_name(model.num_layers - 1)][0, -1]
    norm = model.module("model.norm").module
    scale = mx.rsqrt((final * final).mean() + norm.eps)
    head = model.head_outputs(PROMPT, layers=[1])[1][0, -1, 2]
    direction = model.module("lm_head").module.weight[result.tokens[0]]
    expected = ((head * scale * norm.weight) * direction).sum().item()
    assert result.values[result.labels.index("L1H2")] == pytest.approx(expected, abs=1e-5)


def test_summary_table_chart_and_heatmap(demo):
    result = demo.direct_logit_attribution(PROMPT, " Paris", " Berlin")
    summary = result.to_summary()
    json.dumps(summary)  # plain values only
    assert summary["labels"][0] == "embed" and len(summary["values"]) == len(summary["labels"])
    assert summary["target"] == "' Paris' - ' Berlin'"
    assert result.total > 0  # the demo model knows its capitals
    table = result.table(top=5)
    assert "total" in table and "model" in table and "(" in table.splitlines()[-3]
    assert "L" in result.chart(color=False)
    grid = result.heatmap(color=False).splitlines()
    assert grid[1].split() == ["H0", "H1", "H2", "H3"] and len(grid) == 2 + demo.num_layers
    assert len(result.head_matrix()) == demo.num_layers


def test_bad_requests_are_refused(demo):
    with pytest.raises(InputError, match="one prompt"):
        demo.direct_logit_attribution([PROMPT, "Hello"], " Paris")
    with pytest.raises(InputError, match="position 40"):
        demo.direct_logit_attribution(PROMPT, " Paris", position=40)
    with pytest.raises(InputError, match="one token"):
        demo.direct_logit_attribution(PROMPT, " Parisian capital")


class _Squash(nn.Module):
    def __call__(self, x: mx.array) -> mx.array:
        return mx.tanh(x)


def test_a_final_norm_that_is_no_norm_is_refused():
    module = build_tiny_llama()
    module.model.norm = _Squash()
    model = InterpretableModel(module)
    with pytest.raises(UnsupportedAttentionError, match=r"cannot freeze model\.norm"):
        model.direct_logit_attribution(mx.array([[1, 2, 3]]), 5)


def test_a_tied_quantized_read_out(tmp_path):
    from mlxterp.checkpoints import build_checkpoint

    folder = build_checkpoint("llama_tied", tmp_path / "q", seed=1, quantize_bits=4)
    model = InterpretableModel(str(folder))
    assert type(model.module(model.unembedder.embed_name).module).__name__ == "QuantizedEmbedding"
    _check_sums(model.direct_logit_attribution(PROMPT, " Paris", 9))
