"""Attention patterns: causal softmax weights per head, across mlx-lm architectures.

The weights are checked against a recomputation from the captured q/k projections, the
model's logits must not change while the weights are read, and everything is restored.
"""

from __future__ import annotations

import importlib
import sys

import mlx.core as mx
import mlx.nn as nn
import pytest
from conftest import SimpleTransformer

from mlxterp import InputError, InterpretableModel
from mlxterp import attention as attention_module
from mlxterp.attention import UnsupportedAttentionError, attention_patterns, explicit_attention
from mlxterp.hooks import _SITES

TOKENS = mx.array([[1, 5, 9, 13, 17, 21, 25]])
SMALL = dict(
    hidden_size=64,
    num_hidden_layers=2,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    vocab_size=128,
    head_dim=16,
)
ARCHS = {
    "llama": SMALL,
    "qwen2": dict(SMALL, rope_theta=10000),
    "qwen3": dict(SMALL, max_position_embeddings=64, rope_theta=10000, tie_word_embeddings=True),
    "phi3": dict(SMALL, max_position_embeddings=64, original_max_position_embeddings=64),
    "gemma2": dict(
        SMALL, query_pre_attn_scalar=16, attn_logit_softcapping=50.0, final_logit_softcapping=30.0
    ),
    "gpt2": dict(
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=64,
        n_ctx=64,
        layer_norm_epsilon=1e-5,
        vocab_size=128,
    ),
    "gpt_neox": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        vocab_size=128,
        layer_norm_eps=1e-5,
        rotary_emb_base=10000,
        rotary_pct=0.25,
        max_position_embeddings=64,
    ),
}


def _build(arch: str) -> nn.Module:
    module = importlib.import_module(f"mlx_lm.models.{arch}")
    mx.random.seed(0)
    model = module.Model(module.ModelArgs.from_dict(dict(ARCHS[arch], model_type=arch)))
    mx.eval(model.parameters())
    return model


def _check_causal_softmax(weights: mx.array) -> None:
    assert weights.dtype == mx.float32
    q, k = weights.shape[-2:]
    upper = mx.triu(mx.ones((q, k)), k=1 + k - q).astype(mx.bool_)
    assert mx.all(mx.where(upper, weights, 0.0) == 0).item()
    assert mx.allclose(weights.sum(axis=-1), mx.ones(weights.shape[:-1]), atol=1e-5).item()
    assert (weights >= 0).all().item()


# --------------------------------------------------------------------------- tiny llama
def test_patterns_are_causal_softmax_per_head(tiny_llama):
    patterns = attention_patterns(tiny_llama, TOKENS)
    assert sorted(patterns) == [0, 1, 2]
    for weights in patterns.values():
        assert weights.shape == (1, 4, 7, 7)
        _check_causal_softmax(weights)
    assert mx.array_equal(patterns[0][0, 0, 0], mx.array([1, 0, 0, 0, 0, 0, 0])).item()
    assert not mx.allclose(patterns[0], patterns[1]).item()  # each layer its own weights


def test_weights_match_a_recomputation_from_q_and_k(tiny_llama):
    layer = 1
    attn = tiny_llama.layers[layer].attn.module
    with tiny_llama.trace(TOKENS):
        q = tiny_llama.layers[layer].self_attn.q_proj.output.save()
        k = tiny_llama.layers[layer].self_attn.k_proj.output.save()
    B, L, _ = q.shape
    queries = attn.rope(q.reshape(B, L, attn.n_heads, -1).transpose(0, 2, 1, 3))
    keys = attn.rope(k.reshape(B, L, attn.n_kv_heads, -1).transpose(0, 2, 1, 3))
    keys = mx.repeat(keys, attn.n_heads // attn.n_kv_heads, axis=1)  # grouped-query heads
    scores = (queries @ keys.swapaxes(-1, -2)) * attn.scale
    causal = mx.tril(mx.ones((L, L))).astype(mx.bool_)
    expected = mx.softmax(mx.where(causal, scores, -mx.inf), axis=-1)
    got = attention_patterns(tiny_llama, TOKENS, layers=[layer])
    assert list(got) == [layer]
    assert mx.allclose(got[layer], expected, atol=1e-5).item()


def test_the_model_computes_the_same_logits_while_weights_are_read(tiny_llama):
    bare = tiny_llama.model(TOKENS)
    recorder = attention_module._Recorder({0, 1, 2})
    modules = [tiny_llama.layers[i].attn.module for i in range(3)]
    with attention_module._patched(attention_module._patches(modules, recorder, "llama")):
        patched = tiny_llama.model(TOKENS)
    assert len(recorder.pending) == 3  # the replacement really ran, once per layer
    assert mx.allclose(patched, bare, atol=1e-4).item()


def test_everything_is_restored_even_when_the_forward_fails(tiny_llama, monkeypatch):
    from mlx_lm.models import base, llama

    bare = tiny_llama.model(TOKENS)

    def failing_forward(prepared):
        assert llama.scaled_dot_product_attention is not base.scaled_dot_product_attention
        raise RuntimeError("boom")

    monkeypatch.setattr(tiny_llama, "forward", failing_forward)
    with pytest.raises(RuntimeError, match="boom"):
        attention_patterns(tiny_llama, TOKENS)
    monkeypatch.undo()
    assert llama.scaled_dot_product_attention is base.scaled_dot_product_attention
    assert not _SITES
    assert not any(hasattr(type(m), "_mlxterp_original") for _, m in tiny_llama.named_modules())
    attention_patterns(tiny_llama, TOKENS, layers=[0])
    assert mx.array_equal(tiny_llama.model(TOKENS), bare).item()


def test_padded_batches_give_each_prompt_its_own_pattern(tiny_llama):
    short, long = [3, 8, 2], [1, 5, 9, 13, 17]
    batch = attention_patterns(tiny_llama, [long, short], layers=[2])[2]
    assert batch.shape == (2, 4, 5, 5)
    alone = attention_patterns(tiny_llama, [short], layers=[2])[2]
    assert mx.allclose(batch[1, :, :3, :3], alone[0], atol=1e-5).item()


def test_layer_selection_and_errors(tiny_llama):
    assert list(attention_patterns(tiny_llama, TOKENS, layers=[-1, 0])) == [2, 0]
    with pytest.raises(InputError, match="layer 3 is out of range"):
        attention_patterns(tiny_llama, TOKENS, layers=[3])


def test_models_without_attention_are_refused_clearly():
    model = InterpretableModel(SimpleTransformer())
    with pytest.raises(UnsupportedAttentionError, match="no attention module"):
        attention_patterns(model, mx.random.normal((1, 5, 64)))


class _FusedAttention(nn.Module):
    """Attention through the fused kernel directly: no weights can be seen."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(16, 48)

    def __call__(self, x):
        q, k, v = [
            t.reshape(1, -1, 2, 8).transpose(0, 2, 1, 3) for t in mx.split(self.qkv(x), 3, -1)
        ]
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask="causal")
        return out.transpose(0, 2, 1, 3).reshape(1, -1, 16)


class _FusedBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = _FusedAttention()

    def __call__(self, x):
        return x + self.attn(x)


class _FusedModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = [_FusedBlock(), _FusedBlock()]

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def test_attention_whose_weights_are_never_computed_is_refused_clearly():
    model = InterpretableModel(_FusedModel())
    with pytest.raises(
        UnsupportedAttentionError, match=r"no attention weights were seen in layer\(s\) \[0, 1\]"
    ):
        attention_patterns(model, mx.random.normal((1, 4, 16)))
    assert sys.modules[__name__].mx is mx  # the module's mx is back


def test_attention_defined_where_neither_hook_exists_is_refused_clearly(monkeypatch):
    from types import ModuleType

    monkeypatch.setitem(sys.modules, "fake_arch", ModuleType("fake_arch"))
    monkeypatch.setattr(_FusedAttention, "__module__", "fake_arch")
    model = InterpretableModel(_FusedModel())
    with pytest.raises(UnsupportedAttentionError, match="_FusedAttention in fake_arch"):
        attention_patterns(model, mx.random.normal((1, 4, 16)))


def test_examples_md_attention_pattern_analysis_runs(tiny_llama, capsys):
    """Regression: the spec's "Attention Pattern Analysis" example, on a tiny llama."""
    model = tiny_llama
    with model.trace(TOKENS) as trace:
        attention_outputs = []
        for i in range(len(model.layers)):
            if hasattr(model.layers[i], "attn"):
                attn = model.layers[i].attn.output.save()
                attention_outputs.append(attn)
    for i, attn in enumerate(attention_outputs):
        print(f"Layer {i} attention: {attn.shape}")
    assert len(attention_outputs) == 3
    assert capsys.readouterr().out.count("attention: (1, 7, 64)") == 3
    assert set(trace.saved_values) == {f"layers.{i}.attn.output" for i in range(3)}


def test_model_method_delegates(tiny_llama):
    via_method = tiny_llama.attention_patterns(TOKENS, layers=[1])
    direct = attention_patterns(tiny_llama, TOKENS, layers=[1])
    assert mx.array_equal(via_method[1], direct[1]).item()


# --------------------------------------------------------------------------- the explicit kernel
@pytest.mark.parametrize("mask_kind", [None, "causal", "bool", "additive", "sinks"])
def test_explicit_attention_equals_the_fused_kernel(mask_kind):
    mx.random.seed(1)
    q = mx.random.normal((2, 6, 5, 8))
    k = mx.random.normal((2, 3, 5, 8))  # grouped: 2 query heads per kv head
    v = mx.random.normal((2, 3, 5, 8))
    mask, sinks = None, None
    if mask_kind == "causal":
        mask = "causal"
    elif mask_kind == "bool":
        mask = mx.random.uniform(shape=(5, 5)) > 0.3
        mask = mask | mx.eye(5).astype(mx.bool_)
    elif mask_kind == "additive":
        mask = mx.random.normal((5, 5))
    elif mask_kind == "sinks":
        mask, sinks = "causal", mx.random.normal((6,))
    out, weights = explicit_attention(q, k, v, 0.35, mask, sinks)
    fused = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.35, mask=mask, sinks=sinks)
    assert weights.shape == (2, 6, 5, 5)
    assert mx.allclose(out, fused, atol=1e-5).item()
    total = weights.sum(-1)
    if sinks is None:
        assert mx.allclose(total, mx.ones_like(total), atol=1e-5).item()
    else:
        assert (total < 1).all().item()  # the sink takes its share


# --------------------------------------------------------------------------- architectures
@pytest.fixture(scope="module", params=list(ARCHS))
def arch_model(request):
    return request.param, InterpretableModel(_build(request.param))


def test_every_architecture_gives_causal_patterns_and_unchanged_logits(arch_model):
    _arch, model = arch_model
    bare = model.model(TOKENS)
    patterns = attention_patterns(model, TOKENS)
    assert sorted(patterns) == [0, 1]
    for weights in patterns.values():
        assert weights.shape == (1, 4, 7, 7)
        _check_causal_softmax(weights)
    assert mx.array_equal(model.model(TOKENS), bare).item()


def test_gemma2_weights_are_its_own_soft_capped_softmax():
    model = InterpretableModel(_build("gemma2"))
    attn = model.layers[0].attn.module
    with model.trace(TOKENS):
        q = model.layers[0].attn.q_proj.output.save()
        k = model.layers[0].attn.k_proj.output.save()
    B, L, _ = q.shape
    queries = attn.rope(q.reshape(B, L, attn.n_heads, -1).transpose(0, 2, 1, 3)) * attn.scale
    keys = mx.repeat(
        attn.rope(k.reshape(B, L, attn.n_kv_heads, -1).transpose(0, 2, 1, 3)), attn.repeats, axis=1
    )
    cap = attn.attn_logit_softcapping
    scores = mx.tanh((queries @ keys.swapaxes(-1, -2)) / cap) * cap
    expected = mx.softmax(mx.where(mx.tril(mx.ones((L, L))).astype(mx.bool_), scores, -mx.inf), -1)
    assert mx.allclose(attention_patterns(model, TOKENS, layers=[0])[0], expected, atol=1e-5).item()
