"""GGUF files (llama.cpp, LM Studio, Ollama) loaded onto the mlx-lm model of their architecture.

``mx.load`` reads the tensors and the metadata; nothing in the file is executed (the chat
template is rendered by transformers' sandboxed Jinja, as for any Hugging Face model).
Q4_0/Q4_1/Q8_0 blocks arrive as MLX quantized triples (weight, scales, biases) and stay
quantized: the matching modules are quantized with the file's group size and bits before
the weights are loaded (block scales in float32, so the model computes in float32 as
llama.cpp does).  llama.cpp's names are mapped onto mlx-lm's, and the two changes
llama.cpp's converter makes are undone: the interleaved rows of Q and K for llama-arch
models (its rotary layout) and the ``1 +`` folded into Gemma's norm weights.  The tokenizer
is rebuilt from the file's own vocabulary with the ``tokenizers`` package.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .errors import ModelLoadError
from .model_config import Normalization, model_classes, normalize, warn_ignored

MAGIC = b"GGUF"
# llama.cpp's block size for Q4_0, Q4_1 and Q8_0: one scale (and bias) per 32 weights.
GROUP_SIZE = 32

Metadata = dict[str, mx.array | str | list[str]]

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4


@dataclass(frozen=True)
class Architecture:
    """How one ``general.architecture`` maps onto an mlx-lm model."""

    model_type: str  # the mlx-lm module under mlx_lm.models
    ffn_norm: str  # the mlx-lm name of llama.cpp's ``ffn_norm`` (the norm before the MLP)
    permuted_qk: bool = False  # the converter interleaved Q/K rows (llama's rotary layout)
    norm_offset: float = 0.0  # the converter stored ``offset + weight`` in every norm
    extra_config: Callable[[Metadata, str, dict[str, Any]], dict[str, Any]] | None = None


def _gemma2_config(meta: Metadata, arch: str, cfg: dict[str, Any]) -> dict[str, Any]:
    return {
        "attn_logit_softcapping": _float(meta, f"{arch}.attn_logit_softcapping", 50.0),
        "final_logit_softcapping": _float(meta, f"{arch}.final_logit_softcapping", 30.0),
        # llama.cpp scales queries by 1/sqrt(hidden/heads) on the 27B (46 layers), else by
        # 1/sqrt(head_dim); the file does not store the scalar.
        "query_pre_attn_scalar": _query_scalar(cfg, large_layers=46),
    }


def _gemma3_config(meta: Metadata, arch: str, cfg: dict[str, Any]) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "query_pre_attn_scalar": _query_scalar(cfg, large_layers=62),
        "sliding_window_pattern": 6,  # fixed for Gemma 3 in llama.cpp, not stored
        "rope_local_base_freq": 10000.0,
    }
    window = _int(meta, f"{arch}.attention.sliding_window")
    if window is not None:
        extra["sliding_window"] = window
    return extra


def _query_scalar(cfg: dict[str, Any], large_layers: int) -> float:
    if cfg["num_hidden_layers"] == large_layers:
        return float(cfg["hidden_size"] // cfg["num_attention_heads"])
    return float(cfg["head_dim"])


ARCHITECTURES: dict[str, Architecture] = {
    # Mistral 7B and friends are written as "llama" by llama.cpp's converter.
    "llama": Architecture("llama", "post_attention_layernorm", permuted_qk=True),
    "qwen2": Architecture("qwen2", "post_attention_layernorm"),
    "qwen3": Architecture("qwen3", "post_attention_layernorm"),
    "gemma": Architecture("gemma", "post_attention_layernorm", norm_offset=1.0),
    "gemma2": Architecture(
        "gemma2", "pre_feedforward_layernorm", norm_offset=1.0, extra_config=_gemma2_config
    ),
    "gemma3": Architecture(
        "gemma3_text", "pre_feedforward_layernorm", norm_offset=1.0, extra_config=_gemma3_config
    ),
}

_TOP_LEVEL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_IN_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TENSOR_NAME = re.compile(r"^(?:blk\.(\d+)\.)?(\w+)\.(weight|bias|scales|biases)$")


# ---------------------------------------------------------------------------- reading
def is_gguf(path: Path) -> bool:
    """Whether ``path`` is a file that starts with GGUF's magic (Ollama's blobs have no suffix)."""
    try:
        with path.open("rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


FINGERPRINT_HEAD = 8 << 20  # the header, metadata (vocabulary included) and tensor table
FINGERPRINT_TAIL = 1 << 20  # the last weights


def fingerprint(path: Path) -> str:
    """16 hex digits of a sha256 over a GGUF file's size, its first 8 MiB (header,
    metadata and tensor table, where the model's description lives) and its last MiB (the
    last tensors' weights): another file, or the same one re-quantized or fine-tuned, gives
    another, without reading the whole file."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    digest.update(size.to_bytes(8, "little"))
    with path.open("rb") as f:
        digest.update(f.read(FINGERPRINT_HEAD))
        if size > FINGERPRINT_HEAD:
            f.seek(max(FINGERPRINT_HEAD, size - FINGERPRINT_TAIL))
            digest.update(f.read(FINGERPRINT_TAIL))
    return digest.hexdigest()[:16]


def read(path: Path) -> tuple[dict[str, mx.array], Metadata]:
    """``(tensors, metadata)`` of a GGUF file, through ``mx.load`` (data only, no code)."""
    try:
        loaded = mx.load(str(path), format="gguf", return_metadata=True)
    except (RuntimeError, ValueError, OSError) as err:
        raise ModelLoadError(f"could not read GGUF file {str(path)!r}: {err}") from err
    if not isinstance(loaded, tuple):  # mx.load answers a pair when asked for metadata
        raise ModelLoadError(f"{str(path)!r} gave no GGUF metadata")
    tensors, metadata = loaded
    return dict(tensors), dict(metadata)


def _scalar(meta: Metadata, key: str) -> mx.array | None:
    value = meta.get(key)
    if value is None:
        return None
    if not isinstance(value, mx.array) or value.ndim != 0:
        raise ModelLoadError(f"GGUF metadata {key!r} is not a single number: {value!r}")
    return value


def _number(meta: Metadata, key: str) -> int | float | None:
    value = _scalar(meta, key)
    if value is None:
        return None
    item = value.item()
    if isinstance(item, complex):
        raise ModelLoadError(f"GGUF metadata {key!r} is not a real number")
    return item


def _int(meta: Metadata, key: str, default: int | None = None) -> int | None:
    value = _number(meta, key)
    return default if value is None else int(value)


def _float(meta: Metadata, key: str, default: float) -> float:
    value = _number(meta, key)
    return default if value is None else float(value)


def _bool(meta: Metadata, key: str) -> bool | None:
    value = _number(meta, key)
    return None if value is None else bool(value)


def _str(meta: Metadata, key: str) -> str | None:
    value = meta.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ModelLoadError(f"GGUF metadata {key!r} is not a string")
    return value


def _strings(meta: Metadata, key: str) -> list[str]:
    value = meta.get(key)
    if not isinstance(value, list):
        raise ModelLoadError(f"GGUF metadata {key!r} is missing or not a list of strings")
    return value


def _required_int(meta: Metadata, key: str) -> int:
    value = _int(meta, key)
    if value is None:
        raise ModelLoadError(f"GGUF metadata has no {key!r}, which the model needs")
    return value


# ---------------------------------------------------------------------------- the model
def architecture(meta: Metadata) -> tuple[str, Architecture]:
    """``general.architecture`` and how to load it; ``ModelLoadError`` for the others."""
    name = _str(meta, "general.architecture")
    if name is None:
        raise ModelLoadError("GGUF metadata has no 'general.architecture'")
    if name not in ARCHITECTURES:
        raise ModelLoadError(
            f"GGUF architecture {name!r} is not supported (supported: "
            f"{', '.join(sorted(ARCHITECTURES))}); convert the model with mlx_lm.convert instead"
        )
    return name, ARCHITECTURES[name]


def model_config(meta: Metadata, tensors: dict[str, mx.array]) -> dict[str, Any]:
    """The mlx-lm config (``ModelArgs.from_dict`` input) the file's metadata describes."""
    name, arch = architecture(meta)
    if "rope_freqs.weight" in tensors:
        raise ModelLoadError(
            "this GGUF carries per-dimension rope factors (rope_freqs, Llama 3.1-style rope "
            "scaling), which mlxterp cannot load from GGUF yet; use the mlx-lm conversion"
        )
    heads = _required_int(meta, f"{name}.attention.head_count")
    hidden = _required_int(meta, f"{name}.embedding_length")
    head_dim = _int(meta, f"{name}.attention.key_length", hidden // heads)
    rope_dims = _int(meta, f"{name}.rope.dimension_count", head_dim)
    if rope_dims != head_dim:
        raise ModelLoadError(
            f"partial rotary embeddings ({rope_dims} of {head_dim} dims) are not supported "
            f"for GGUF architecture {name!r}"
        )
    embedding = tensors.get("token_embd.weight")
    if embedding is None:
        raise ModelLoadError("GGUF file has no 'token_embd.weight' tensor")
    cfg: dict[str, Any] = {
        "model_type": arch.model_type,
        "hidden_size": hidden,
        "num_hidden_layers": _required_int(meta, f"{name}.block_count"),
        "intermediate_size": _required_int(meta, f"{name}.feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": _int(meta, f"{name}.attention.head_count_kv", heads),
        "head_dim": head_dim,
        "rms_norm_eps": _float(meta, f"{name}.attention.layer_norm_rms_epsilon", 1e-5),
        "rope_theta": _float(meta, f"{name}.rope.freq_base", 10000.0),
        "vocab_size": embedding.shape[0],
        "tie_word_embeddings": "output.weight" not in tensors,
    }
    context = _int(meta, f"{name}.context_length")
    if context is not None:
        cfg["max_position_embeddings"] = context
    scaling = _str(meta, f"{name}.rope.scaling.type")
    if scaling not in (None, "none"):
        factor = _float(meta, f"{name}.rope.scaling.factor", 1.0)
        if scaling != "linear":
            raise ModelLoadError(
                f"GGUF rope scaling {scaling!r} is not supported (only linear); "
                "use the mlx-lm conversion of this model"
            )
        cfg["rope_scaling"] = {"type": "linear", "rope_type": "linear", "factor": factor}
    if arch.extra_config is not None:
        cfg.update(arch.extra_config(meta, name, cfg))
    _check_sizes(cfg, tensors)
    return cfg


def _rows_and_width(tensors: dict[str, mx.array], name: str) -> tuple[int, int] | None:
    """``(rows, input width)`` of a 2-D weight, quantized or not; None when absent."""
    weight = tensors.get(f"{name}.weight")
    if weight is None or weight.ndim != 2:
        return None
    scales = tensors.get(f"{name}.scales")
    width = weight.shape[1] if scales is None else scales.shape[-1] * GROUP_SIZE
    return weight.shape[0], width


def _check_sizes(cfg: dict[str, Any], tensors: dict[str, mx.array]) -> None:
    """Refuse metadata the tensors do not bear out, before any model is built (a file
    claiming a billion layers must not make the loader allocate them)."""
    blocks = {int(m.group(1)) for key in tensors for m in [_TENSOR_NAME.match(key)] if m and m[1]}
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    expected = {
        "block_count": (cfg["num_hidden_layers"], len(blocks)),
        "embedding_length": (hidden, (_rows_and_width(tensors, "token_embd") or (0, 0))[1]),
    }
    q, k = _rows_and_width(tensors, "blk.0.attn_q"), _rows_and_width(tensors, "blk.0.attn_k")
    up = _rows_and_width(tensors, "blk.0.ffn_up")
    if q is not None:
        expected["attention.head_count x key_length"] = (heads * cfg["head_dim"], q[0])
    if k is not None:
        kv_rows = cfg["num_key_value_heads"] * cfg["head_dim"]
        expected["attention.head_count_kv x key_length"] = (kv_rows, k[0])
    if up is not None:
        expected["feed_forward_length"] = (cfg["intermediate_size"], up[0])
    wrong = [
        f"{key}={said} (tensors: {found})"
        for key, (said, found) in expected.items()
        if said != found
    ]
    if wrong or max(blocks, default=-1) + 1 != len(blocks):
        raise ModelLoadError(
            "GGUF metadata does not describe its tensors: " + (", ".join(wrong) or "blocks missing")
        )


def _unpermute_rows(weight: mx.array, heads: int) -> mx.array:
    """Undo llama.cpp's per-head interleaving of rotary rows (pairs -> halves)."""
    rows = weight.shape[0]
    per_head = weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:])
    return per_head.swapaxes(1, 2).reshape(weight.shape)


def map_weights(
    meta: Metadata, tensors: dict[str, mx.array], cfg: dict[str, Any]
) -> dict[str, mx.array]:
    """llama.cpp's tensors under mlx-lm's names, with the converter's changes undone."""
    _, arch = architecture(meta)
    block_names = dict(_IN_BLOCK, ffn_norm=arch.ffn_norm)
    heads = {"attn_q": cfg["num_attention_heads"], "attn_k": cfg["num_key_value_heads"]}
    mapped: dict[str, mx.array] = {}
    unknown: list[str] = []
    for key, value in tensors.items():
        match = _TENSOR_NAME.match(key)
        if match is None:
            unknown.append(key)
            continue
        block, base, suffix = match.groups()
        target = _TOP_LEVEL.get(base) if block is None else block_names.get(base)
        if target is None:
            unknown.append(key)
            continue
        if block is not None:
            target = f"model.layers.{block}.{target}"
        if arch.permuted_qk and base in heads:
            value = _unpermute_rows(value, heads[base])
        if arch.norm_offset and base.endswith("norm") and suffix == "weight":
            value = value - arch.norm_offset
        if suffix in ("scales", "biases"):
            # MLX hands GGUF's block scales over as float16, which would make every
            # activation float16: slow on CPU and less exact than llama.cpp's float32
            value = value.astype(mx.float32)
        mapped[f"{target}.{suffix}"] = value
    if unknown:
        shown = ", ".join(sorted(unknown)[:5])
        raise ModelLoadError(
            f"GGUF tensors with no place in the mlx-lm {cfg['model_type']} model: {shown}"
            + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else "")
        )
    return mapped


def _quantization(weights: dict[str, mx.array]) -> dict[str, dict[str, Any]]:
    """Module path -> ``to_quantized`` parameters, for every quantized triple."""
    found: dict[str, dict[str, Any]] = {}
    for key, scales in weights.items():
        if not key.endswith(".scales"):
            continue
        module = key[: -len(".scales")]
        packed = weights[f"{module}.weight"]
        # packed uint32 columns per scale column = bits (32 weights per group, 32 bits a word)
        bits = packed.shape[-1] // scales.shape[-1]
        found[module] = {"group_size": GROUP_SIZE, "bits": bits, "mode": "affine"}
    return found


def build_model(meta: Metadata, tensors: dict[str, mx.array]) -> nn.Module:
    """The mlx-lm model of the file's architecture, its weights loaded (quantized kept so)."""
    return build(meta, tensors)[0]


def build(meta: Metadata, tensors: dict[str, mx.array]) -> tuple[nn.Module, Normalization]:
    """``build_model``, with the config it was built from (through ``mlxterp.model_config``,
    which also names the keys the architecture would ignore)."""
    normalization = normalize(model_config(meta, tensors))
    cfg = normalization.config
    model_class, args_class = model_classes(cfg)
    model: nn.Module = model_class(args_class.from_dict(cfg))
    weights = map_weights(meta, tensors, cfg)
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)
    quantized = _quantization(weights)
    if quantized:

        def quantize_params(path: str, _module: nn.Module) -> bool | dict[str, Any]:
            return quantized.get(path, False)

        nn.quantize(model, class_predicate=quantize_params)
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as err:
        raise ModelLoadError(
            f"GGUF weights do not fit the mlx-lm {cfg['model_type']} model: {err}"
        ) from err
    mx.eval(model.parameters())
    model.eval()
    return model, normalization


# ---------------------------------------------------------------------------- the tokenizer
# Pre-tokenizer splits by ``tokenizer.ggml.pre``, as the models' own tokenizer.json state them.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class PreTokenizer:
    split: str  # the regex words are cut by
    digits: bool = False  # every digit its own piece first (SmolLM)
    ignore_merges: bool = False  # a whole word in the vocabulary is one token (Llama 3)
    add_bos: bool = False  # llama.cpp's default when the file does not say


PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "gpt-2": PreTokenizer(_GPT2_SPLIT),
    "smollm": PreTokenizer(_GPT2_SPLIT, digits=True),
    "llama3": PreTokenizer(_LLAMA3_SPLIT, ignore_merges=True, add_bos=True),
    "llama-v3": PreTokenizer(_LLAMA3_SPLIT, ignore_merges=True, add_bos=True),
    "llama-bpe": PreTokenizer(_LLAMA3_SPLIT, ignore_merges=True, add_bos=True),
    "qwen2": PreTokenizer(_QWEN2_SPLIT),
    "deepseek-r1-qwen": PreTokenizer(_QWEN2_SPLIT),
}


def _token_id(meta: Metadata, key: str, tokens: list[str]) -> str | None:
    index = _int(meta, f"tokenizer.ggml.{key}_token_id")
    return tokens[index] if index is not None and 0 <= index < len(tokens) else None


def _merge(line: str) -> tuple[str, str]:
    left, space, right = line.partition(" ")
    if not space:
        raise ModelLoadError(f"GGUF merge {line!r} is not two tokens")
    return left, right


def _byte_level_backend(meta: Metadata, tokens: list[str]) -> tuple[Any, bool]:
    """A byte-level BPE ``tokenizers.Tokenizer`` (GPT-2 style) and llama.cpp's add-BOS default."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    pre_name = _str(meta, "tokenizer.ggml.pre") or "default"
    pre = PRE_TOKENIZERS.get(pre_name)
    if pre is None:
        raise ModelLoadError(
            f"GGUF pre-tokenizer {pre_name!r} is not supported (supported: "
            f"{', '.join(sorted(PRE_TOKENIZERS))}): its text would be split differently "
            "from the model's training"
        )
    merges = [_merge(m) for m in _strings(meta, "tokenizer.ggml.merges")]
    bpe = models.BPE(
        vocab={token: index for index, token in enumerate(tokens)},
        merges=merges,
        ignore_merges=pre.ignore_merges,
    )
    backend = Tokenizer(bpe)
    steps: list[pre_tokenizers.PreTokenizer] = (
        [pre_tokenizers.Digits(individual_digits=True)] if pre.digits else []
    )
    steps.append(pre_tokenizers.Split(Regex(pre.split), behavior="isolated"))
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(steps)
    backend.decoder = decoders.ByteLevel()
    return backend, pre.add_bos


def _special_tokens(meta: Metadata, tokens: list[str]) -> tuple[list[str], list[str]]:
    """``(control, user_defined)`` tokens: matched whole in text, never split."""
    types = meta.get("tokenizer.ggml.token_type")
    if not isinstance(types, mx.array):
        return [], []
    kinds = types.tolist()
    assert isinstance(kinds, list)
    control = [t for t, k in zip(tokens, kinds, strict=False) if k == _CONTROL]
    user = [t for t, k in zip(tokens, kinds, strict=False) if k == _USER_DEFINED]
    return control, user


_SPACE = "\u2581"  # sentencepiece's visible space


def _sentencepiece_backend(meta: Metadata, tokens: list[str]) -> Any:
    """A sentencepiece-style BPE ``tokenizers.Tokenizer`` (Llama 2, Mistral): merges rebuilt
    from the pieces' scores (a higher score merges first), byte fallback, ``\u2581`` spaces."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    name = _str(meta, "general.architecture") or ""
    if name.startswith("gemma"):
        raise ModelLoadError(
            f"the sentencepiece vocabulary of GGUF architecture {name!r} is not supported "
            "(its scores do not give the merge order); load the model's Hugging Face folder"
        )
    scores = meta.get("tokenizer.ggml.scores")
    if not isinstance(scores, mx.array) or scores.shape != (len(tokens),):
        raise ModelLoadError("GGUF sentencepiece vocabulary without one score per token")
    score = [float(v) for v in np.asarray(scores, dtype=np.float64)]
    types = meta.get("tokenizer.ggml.token_type")
    kinds = np.asarray(types).tolist() if isinstance(types, mx.array) else [1] * len(tokens)
    pieces = {t: i for i, t in enumerate(tokens) if kinds[i] == _NORMAL}
    candidates = [
        (-score[index], pieces[token[:cut]], pieces[token[cut:]], token[:cut], token[cut:])
        for token, index in pieces.items()
        for cut in range(1, len(token))
        if token[:cut] in pieces and token[cut:] in pieces
    ]
    merges = [(left, right) for *_, left, right in sorted(candidates)]
    unk = _token_id(meta, "unknown", tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    backend = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    prefix = _bool(meta, "tokenizer.ggml.add_space_prefix")
    steps = [normalizers.Prepend(_SPACE)] if prefix is None or prefix else []
    backend.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", _SPACE)])
    decode = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if steps:
        decode.append(decoders.Strip(" ", 1, 0))
    backend.decoder = decoders.Sequence(decode)
    return backend


def build_tokenizer(meta: Metadata) -> Any:
    """The file's tokenizer as mlx-lm wraps tokenizers (``TokenizerWrapper``)."""
    from mlx_lm.tokenizer_utils import (
        BPEStreamingDetokenizer,
        SPMStreamingDetokenizer,
        TokenizerWrapper,
    )
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    kind = _str(meta, "tokenizer.ggml.model")
    tokens = _strings(meta, "tokenizer.ggml.tokens")
    if kind == "gpt2":
        backend, bos_default = _byte_level_backend(meta, tokens)
        detokenizer: Any = BPEStreamingDetokenizer
    elif kind == "llama":
        # llama.cpp adds BOS to a sentencepiece vocabulary that does not say otherwise
        backend, bos_default = _sentencepiece_backend(meta, tokens), True
        detokenizer = SPMStreamingDetokenizer
    else:
        raise ModelLoadError(
            f"GGUF tokenizer {kind!r} is not supported (byte-level BPE 'gpt2' and "
            "sentencepiece 'llama' are); load the model's mlx-lm or Hugging Face folder instead"
        )
    control, user = _special_tokens(meta, tokens)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
    bos = _token_id(meta, "bos", tokens)
    add_bos = _bool(meta, "tokenizer.ggml.add_bos_token")
    if (bos_default if add_bos is None else add_bos) and bos is not None:
        bos_id = _int(meta, "tokenizer.ggml.bos_token_id")
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    chat_template = _str(meta, "tokenizer.chat_template")
    hf = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=_token_id(meta, "eos", tokens),
        unk_token=_token_id(meta, "unknown", tokens),
        pad_token=_token_id(meta, "padding", tokens),
        chat_template=chat_template,
    )
    return TokenizerWrapper(hf, detokenizer_class=detokenizer)


def load(path: Path) -> tuple[nn.Module, Any, Normalization]:
    """``(model, tokenizer, config)`` from a GGUF file; ``ModelLoadError`` says what is
    unsupported, a ``ConfigWarning`` what the architecture ignores."""
    tensors, meta = read(path)
    tokenizer = build_tokenizer(meta)
    model, normalization = build(meta, tensors)
    warn_ignored(normalization, str(path))
    return model, tokenizer, normalization
