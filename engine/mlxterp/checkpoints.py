"""Tiny random-weight mlx-lm checkpoints of each supported architecture, built offline.

Used by the tests (the architecture matrix) and the benchmark (a medium llama).  Each is a
real mlx-lm folder: ``config.json``, ``model.safetensors`` and a small byte-level BPE
tokenizer saved through ``transformers``, so ``mlx_lm.load(folder)`` and
``InterpretableModel(folder)`` read it exactly as they read a downloaded model.

Everything is deterministic: the tokenizer is trained on a fixed in-code corpus and the
weights come from ``mx.random.seed(seed)``, so two builds with the same arguments write the
same tensors.  Nothing is downloaded.  ``docs/architectures.md`` describes the module layout
of each architecture.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import UnknownArchitectureError
from .model_config import model_classes

_BASE = dict(
    hidden_size=64,
    num_hidden_layers=2,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    max_position_embeddings=512,
)

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama": dict(_BASE, model_type="llama", tie_word_embeddings=False),
    "llama_tied": dict(_BASE, model_type="llama", tie_word_embeddings=True),
    "mistral": dict(_BASE, model_type="mistral", tie_word_embeddings=False),
    "qwen2": dict(_BASE, model_type="qwen2", tie_word_embeddings=False),
    "qwen3": dict(_BASE, model_type="qwen3", head_dim=16, tie_word_embeddings=True),
    "gemma2": dict(
        _BASE,
        model_type="gemma2",
        head_dim=16,
        query_pre_attn_scalar=16,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
    ),
    # Tied like the published Gemma 3 checkpoints: no ``lm_head.weight`` is written, so the
    # loader's ``sanitize`` drops ``lm_head`` and the model reads out through the embedding.
    "gemma3_text": dict(
        _BASE,
        model_type="gemma3_text",
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=32,
        sliding_window_pattern=2,
        tie_word_embeddings=True,
    ),
    "phi3": dict(_BASE, model_type="phi3", num_key_value_heads=4, tie_word_embeddings=False),
    "gpt2": dict(
        model_type="gpt2",
        n_ctx=512,
        n_embd=64,
        n_head=4,
        n_layer=2,
        n_positions=512,
        layer_norm_epsilon=1e-5,
    ),
    "gpt_neox": dict(
        model_type="gpt_neox",
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        layer_norm_eps=1e-5,
        rotary_emb_base=10000,
        rotary_pct=0.25,
        max_position_embeddings=512,
        use_parallel_residual=True,
        tie_word_embeddings=False,
    ),
    "olmo2": dict(_BASE, model_type="olmo2", tie_word_embeddings=False),
    "starcoder2": dict(
        model_type="starcoder2",
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        norm_epsilon=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    ),
    "llama_4bit": dict(_BASE, model_type="llama", tie_word_embeddings=False),
    "medium_llama": dict(
        model_type="llama",
        hidden_size=512,
        num_hidden_layers=8,
        intermediate_size=1376,
        num_attention_heads=8,
        num_key_value_heads=8,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=2048,
        vocab_size=8192,
        tie_word_embeddings=False,
    ),
}
"""Name → mlx-lm config (``vocab_size`` is filled in from the tokenizer unless given)."""

QUANTIZED = {"llama_4bit": 4}
"""Entries built quantized by default: name → bits (affine, group size 64)."""

TINY = [name for name in ARCHITECTURES if name != "medium_llama"]
"""The tiny (hidden 64) entries; ``medium_llama`` is for benchmarks."""

QUANT_GROUP_SIZE = 64

_CORPUS = [
    "The capital of France is Paris.",
    "The capital of Germany is Berlin.",
    "Hello, how are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "Machine learning is the study of algorithms that learn from data.",
    "Paris is the capital of France, and London is the capital of England.",
    "The Eiffel Tower is located in the city of Paris.",
    "Analyze this text carefully.",
    "Sample text about models, layers, attention and residual streams.",
    "I love this movie. I hate this movie. This movie is fine.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024.",
]


def build_tokenizer(folder: Path | str, vocab_size: int = 384) -> Any:
    """Train a small byte-level BPE tokenizer (BOS ``<s>`` prepended) and save it to ``folder``.

    Special tokens: ``<pad>`` (id 0), ``<s>`` (BOS, id 1), ``</s>`` (EOS, id 2).  Returns the
    ``PreTrainedTokenizerFast`` that was saved.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.save_pretrained(str(folder))
    return fast


def _loaded_tokenizer_size(folder: Path, config: dict[str, Any]) -> int:
    """How many tokens the tokenizer in ``folder`` has once loaded as ``mlx_lm.load`` loads it.

    ``transformers`` picks the tokenizer class from the config's ``model_type`` for some
    architectures (qwen2 gets ``Qwen2Tokenizer``, which adds ``<|endoftext|>`` as one more
    token), so the loaded tokenizer can be larger than the trained one; the embedding must
    cover every id it can produce.
    """
    from transformers import AutoTokenizer

    keys = ("model_type", "bos_token_id", "eos_token_id", "pad_token_id")
    (folder / "config.json").write_text(json.dumps({k: config[k] for k in keys}))
    try:
        return len(AutoTokenizer.from_pretrained(str(folder)))
    except Exception:
        return 0


def _quantize(model: Any, config: dict[str, Any], bits: int) -> dict[str, Any]:
    """Quantize ``model`` in place as ``mlx_lm.convert`` does; returns the config to save.

    ``quantize_model`` skips modules whose input size is not a multiple of the group size
    and records ``quantization`` (and its copy ``quantization_config``) in the config.
    """
    import contextlib
    import io

    from mlx_lm.utils import quantize_model

    with contextlib.redirect_stdout(io.StringIO()):  # it prints the bits per weight
        _, config = quantize_model(model, config, QUANT_GROUP_SIZE, bits)
    return config


def build_checkpoint(
    arch: str,
    folder: Path | str,
    *,
    seed: int = 0,
    quantize_bits: int | None = None,
    **config_overrides: Any,
) -> Path:
    """Write a random-weight checkpoint of ``arch`` (a key of ``ARCHITECTURES``) to ``folder``.

    ``config_overrides`` replace entries of the architecture's config (e.g.
    ``num_hidden_layers=3``).  ``quantize_bits`` (or the entry's default in ``QUANTIZED``)
    quantizes every Linear/Embedding whose input size is a multiple of 64, with group size
    64, and records it in ``config.json`` so ``mlx_lm.load`` rebuilds the quantized modules.
    Returns ``folder`` as a ``Path``.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten

    if arch not in ARCHITECTURES:
        raise UnknownArchitectureError(
            f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(folder)
    config = dict(ARCHITECTURES[arch], **config_overrides)
    special = {
        key: config.get(key, tokenizer.convert_tokens_to_ids(token))
        for key, token in (
            ("bos_token_id", "<s>"),
            ("eos_token_id", "</s>"),
            ("pad_token_id", "<pad>"),
        )
    }
    if "vocab_size" not in config:
        loaded = _loaded_tokenizer_size(folder, dict(special, model_type=config["model_type"]))
        config["vocab_size"] = -(-max(len(tokenizer), loaded) // 64) * 64
    for key, value in special.items():
        config.setdefault(key, value)
    model_class, args_class = model_classes(config)
    mx.random.seed(seed)
    model = model_class(args_class.from_dict(config))
    # Some models (gemma3_text) always build an lm_head and are tied only when the checkpoint
    # has no lm_head weight: leave it out when the config asks for tied embeddings.
    args_fields = getattr(args_class, "__dataclass_fields__", {})
    if (
        config.get("tie_word_embeddings")
        and "tie_word_embeddings" not in args_fields
        and "lm_head" in model
    ):
        model.pop("lm_head")
    bits = quantize_bits or QUANTIZED.get(arch)
    if bits:
        config = _quantize(model, config, bits)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder
