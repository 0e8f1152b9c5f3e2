"""The offline checkpoint builder: every architecture loads through ``mlx_lm.load`` and runs."""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import pytest

from mlxterp.checkpoints import ARCHITECTURES, TINY, build_checkpoint, build_tokenizer

SENTENCE = "The quick brown fox jumps over the lazy dog."


def _forward(folder):
    model, tokenizer = mlx_lm.load(str(folder))
    ids = tokenizer.encode(SENTENCE)
    logits = model(mx.array([ids]))
    mx.eval(logits)
    return model, tokenizer, ids, logits


@pytest.mark.parametrize("arch", TINY)
def test_builds_loads_and_runs(arch, tmp_path):
    folder = build_checkpoint(arch, tmp_path / arch, seed=0)
    config = json.loads((folder / "config.json").read_text())
    model, tokenizer, ids, logits = _forward(folder)
    assert ids[0] == tokenizer.bos_token_id  # the post-processor prepends <s>
    assert logits.shape == (1, len(ids), config["vocab_size"])
    assert config["vocab_size"] % 64 == 0 and config["vocab_size"] >= len(tokenizer)
    assert mx.all(mx.isfinite(logits)).item()
    kinds = {type(m) for _, m in model.named_modules()}
    if arch == "llama_4bit":
        assert nn.QuantizedLinear in kinds and nn.Linear not in kinds
        assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 64
    else:
        assert not any(issubclass(k, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for k in kinds)


def test_tie_settings(tmp_path):
    names = {}
    for arch in ("llama", "llama_tied", "gemma3_text", "gpt_neox"):
        model, *_ = _forward(build_checkpoint(arch, tmp_path / arch))
        names[arch] = {n for n, _ in model.named_modules()}
    assert "lm_head" in names["llama"] and "lm_head" not in names["llama_tied"]
    assert "lm_head" not in names["gemma3_text"]  # tied like the published checkpoints
    assert "model.embed_out" in names["gpt_neox"]


def test_quantize_bits_argument(tmp_path):
    model, *_ = _forward(build_checkpoint("qwen2", tmp_path / "q", quantize_bits=8))
    quantized = [m for _, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)]
    assert quantized and all(m.bits == 8 for m in quantized)
    assert any(isinstance(m, nn.QuantizedEmbedding) for _, m in model.named_modules())


def test_config_overrides(tmp_path):
    model, _, ids, logits = _forward(
        build_checkpoint("llama", tmp_path / "l3", num_hidden_layers=3)
    )
    assert len(model.layers) == 3 and logits.shape[1] == len(ids)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "llama_4bit"])
def test_same_seed_same_weights(arch, tmp_path):
    a = mx.load(str(build_checkpoint(arch, tmp_path / "a", seed=3) / "model.safetensors"))
    b = mx.load(str(build_checkpoint(arch, tmp_path / "b", seed=3) / "model.safetensors"))
    c = mx.load(str(build_checkpoint(arch, tmp_path / "c", seed=4) / "model.safetensors"))
    assert a.keys() == b.keys() == c.keys()
    assert all(mx.array_equal(a[k], b[k]).item() for k in a)
    assert not all(mx.array_equal(a[k], c[k]).item() for k in a)


def test_tokenizer_is_deterministic(tmp_path):
    build_tokenizer(tmp_path / "t1")
    build_tokenizer(tmp_path / "t2")
    first, second = ((tmp_path / t / "tokenizer.json").read_text() for t in ("t1", "t2"))
    assert first == second
    tokenizer = mlx_lm.load(str(build_checkpoint("llama", tmp_path / "m")))[1]
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "<s>", "</s>"]
    assert tokenizer.eos_token_id == 2


def test_unknown_architecture(tmp_path):
    with pytest.raises(KeyError, match="unknown architecture"):
        build_checkpoint("not-a-model", tmp_path)


def test_medium_llama_if_quick(tmp_path):
    start = time.perf_counter()
    folder = build_checkpoint("medium_llama", tmp_path / "medium")
    if time.perf_counter() - start > 3.0:
        pytest.skip("building medium_llama took over 3 s on this machine")
    config = json.loads((folder / "config.json").read_text())
    assert config == {**config, **ARCHITECTURES["medium_llama"]}
    _, _, ids, logits = _forward(folder)
    assert logits.shape == (1, len(ids), 8192)
    assert mx.all(mx.isfinite(logits)).item()
