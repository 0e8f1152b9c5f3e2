"""GGUF files and the places users keep models.

Each architecture is checked by a round trip: a random-weight mlx-lm model is written out
as llama.cpp's converter writes a GGUF (its tensor names, the rotary row interleaving of
Q/K for llama, ``1 + w`` in Gemma's norms, its metadata keys, the tokenizer as tokens and
merges), loaded back with ``InterpretableModel(path)`` and compared with the original.
The real quantized file (SmolLM2, Q4_1) is tested in tests/test_real_model.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from jinja2.exceptions import SecurityError
from mlx.utils import tree_flatten

from mlxterp import InterpretableModel, MlxterpError, gguf, model_sources
from mlxterp.checkpoints import ARCHITECTURES, build_checkpoint, build_tokenizer
from mlxterp.errors import ModelLoadError
from mlxterp.session import Session, SessionManager, replay

VOCAB = 448  # the trained tokenizer's 384 tokens, padded as llama.cpp pads vocabularies
TOKENS = [[1, 40, 75, 200, 7, 300, 12, 99]]
CHAT = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"

# general.architecture -> the mlx-lm config of the reference model: the tiny checkpoints'
# configs, with a rope base of 50,000 (so a dropped base would show) and a padded vocabulary
_TINY = {"rope_theta": 50000.0, "vocab_size": VOCAB}
CONFIGS: dict[str, dict[str, Any]] = {
    "llama": dict(ARCHITECTURES["llama"], **_TINY),
    "qwen2": dict(ARCHITECTURES["qwen2"], **_TINY),
    "qwen3": dict(ARCHITECTURES["qwen3"], **_TINY),
    "gemma": dict(ARCHITECTURES["gemma2"], **_TINY, model_type="gemma"),
    "gemma2": dict(ARCHITECTURES["gemma2"], **_TINY),
    "gemma3": dict(
        ARCHITECTURES["gemma3_text"],
        **_TINY,
        num_hidden_layers=6,  # layer 5 is a global-attention layer (pattern 6)
        sliding_window_pattern=6,
        rope_local_base_freq=10000.0,
    ),
}
GEMMAS = {"gemma", "gemma2", "gemma3"}

# llama.cpp's tensor names for mlx-lm's (its TensorNameMap), per block and at the top.
GGUF_NAMES = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "post_feedforward_layernorm": "post_ffw_norm",
}


def gguf_name(arch: str, name: str) -> str:
    module, _, suffix = name.rpartition(".")
    if not module.startswith("model.layers."):
        return f"{GGUF_NAMES[module]}.{suffix}"
    _, _, block, rest = module.split(".", 3)
    if rest == "post_attention_layernorm":
        target = "post_attention_norm" if arch in ("gemma2", "gemma3") else "ffn_norm"
    elif rest == "pre_feedforward_layernorm":
        target = "ffn_norm"
    else:
        target = GGUF_NAMES[rest]
    return f"blk.{block}.{target}.{suffix}"


def interleave_rows(w: mx.array, heads: int) -> mx.array:
    """llama.cpp's converter on Q and K of llama models: per head, halves -> pairs."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def reference_model(arch: str, seed: int = 0) -> Any:
    """A model of ``arch`` with every parameter random (norms too, so offsets would show)."""
    import importlib

    cfg = CONFIGS[arch]
    module = importlib.import_module(f"mlx_lm.models.{cfg['model_type']}")
    model = module.Model(module.ModelArgs.from_dict(cfg))
    if arch == "gemma3":
        model.sanitize({})  # no lm_head weight: tied, as the published Gemma 3 checkpoints
    mx.random.seed(seed)
    params = [
        (name, mx.random.normal(p.shape) * 0.2 + (1.0 if "norm" in name else 0.0))
        for name, p in tree_flatten(model.parameters())
    ]
    model.load_weights(params)
    mx.eval(model.parameters())
    return model


def tokenizer_metadata(tokenizer: Any, template: str | None = CHAT) -> dict[str, Any]:
    """The tokenizer as llama.cpp's converter stores a byte-level BPE vocabulary."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    special = set(tokenizer.all_special_tokens)
    types = [3 if t in special else 1 for t in tokens]
    tokens += [f"[PAD{i}]" for i in range(len(tokens), VOCAB)]  # llama.cpp pads like this
    types += [5] * (VOCAB - len(types))  # UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": mx.array(types, dtype=mx.int32),
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": mx.array(vocab["<s>"], dtype=mx.uint32),
        "tokenizer.ggml.eos_token_id": mx.array(vocab["</s>"], dtype=mx.uint32),
        "tokenizer.ggml.padding_token_id": mx.array(vocab["<pad>"], dtype=mx.uint32),
        "tokenizer.ggml.add_bos_token": mx.array(True),
    }
    if template is not None:
        meta["tokenizer.chat_template"] = template
    return meta


def write_gguf(
    arch: str,
    model: Any,
    tokenizer: Any,
    path: Path,
    tokenizer_meta: dict[str, Any] | None = None,
    **extra_meta: Any,
) -> Path:
    """``model`` as llama.cpp's converter writes it (float32 tensors); the vocabulary of
    ``tokenizer`` (a byte-level BPE) unless ``tokenizer_meta`` gives another."""
    cfg = CONFIGS[arch]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    tensors = {}
    for name, value in tree_flatten(model.parameters()):
        if arch == "llama" and ".q_proj." in name:
            value = interleave_rows(value, heads)
        if arch == "llama" and ".k_proj." in name:
            value = interleave_rows(value, kv)
        if arch in GEMMAS and name.endswith("norm.weight"):
            value = value + 1.0
        tensors[gguf_name(arch, name)] = value.astype(mx.float32)
    u32 = lambda v: mx.array(v, dtype=mx.uint32)  # noqa: E731
    meta: dict[str, Any] = {
        "general.architecture": arch,
        f"{arch}.context_length": u32(cfg["max_position_embeddings"]),
        f"{arch}.embedding_length": u32(cfg["hidden_size"]),
        f"{arch}.block_count": u32(cfg["num_hidden_layers"]),
        f"{arch}.feed_forward_length": u32(cfg["intermediate_size"]),
        f"{arch}.attention.head_count": u32(heads),
        f"{arch}.attention.head_count_kv": u32(kv),
        f"{arch}.attention.layer_norm_rms_epsilon": mx.array(cfg["rms_norm_eps"]),
        f"{arch}.rope.freq_base": mx.array(cfg["rope_theta"]),
    }
    if "head_dim" in cfg:
        meta[f"{arch}.attention.key_length"] = u32(cfg["head_dim"])
        meta[f"{arch}.attention.value_length"] = u32(cfg["head_dim"])
    if arch == "gemma2":
        meta["gemma2.attn_logit_softcapping"] = mx.array(cfg["attn_logit_softcapping"])
        meta["gemma2.final_logit_softcapping"] = mx.array(cfg["final_logit_softcapping"])
    if arch == "gemma3":
        meta["gemma3.attention.sliding_window"] = u32(cfg["sliding_window"])
    meta.update(tokenizer_meta or tokenizer_metadata(tokenizer))
    meta.update(extra_meta)
    mx.save_gguf(str(path), tensors, meta)
    return path


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def llama_gguf(tmp_path_factory, hf_tokenizer):
    """A llama GGUF and the mlx-lm model it was written from."""
    model = reference_model("llama")
    path = write_gguf("llama", model, hf_tokenizer, tmp_path_factory.mktemp("g") / "tiny.gguf")
    return path, model


def logits(model: Any) -> mx.array:
    return model(mx.array(TOKENS)).astype(mx.float32)


# ---------------------------------------------------------------------------- architectures
@pytest.mark.parametrize("arch", list(CONFIGS))
def test_each_architecture_round_trips_to_the_same_logits(arch, tmp_path, hf_tokenizer):
    reference = reference_model(arch)
    path = write_gguf(arch, reference, hf_tokenizer, tmp_path / f"{arch}.gguf")
    loaded = InterpretableModel(str(path))
    assert type(loaded.model).__module__ == f"mlx_lm.models.{CONFIGS[arch]['model_type']}"
    assert loaded.num_layers == CONFIGS[arch]["num_hidden_layers"]
    assert loaded.config["rope_theta"] == 50000.0
    assert mx.allclose(logits(loaded.model), logits(reference), atol=1e-4).item()


def test_llama_rows_are_un_interleaved_so_q_matches_the_original(llama_gguf):
    path, reference = llama_gguf
    loaded = InterpretableModel(str(path))
    q = loaded.parameters()["model.layers.1.self_attn.q_proj.weight"]
    k = loaded.parameters()["model.layers.1.self_attn.k_proj.weight"]
    assert mx.array_equal(q, reference.model.layers[1].self_attn.q_proj.weight).item()
    assert mx.array_equal(k, reference.model.layers[1].self_attn.k_proj.weight).item()


def test_tied_embeddings_when_the_file_has_no_output_tensor(tmp_path, hf_tokenizer):
    reference = reference_model("qwen3")
    loaded = InterpretableModel(
        str(write_gguf("qwen3", reference, hf_tokenizer, tmp_path / "q.gguf"))
    )
    assert loaded.config["tie_word_embeddings"] is True
    assert "lm_head.weight" not in loaded.parameters()


# ---------------------------------------------------------------------------- tokenizer
TEXTS = [
    "The capital of France is Paris.",
    "Hello,  how are you today?\n\nNumbers: 42 and 2024!",
    "<s>special tokens stay whole</s>",
]


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_from_metadata_encodes_like_the_original(llama_gguf, hf_tokenizer, text):
    loaded = InterpretableModel(str(llama_gguf[0]))
    ids = loaded.tokenizer.encode(text)
    assert ids == hf_tokenizer.encode(text)
    assert ids[0] == hf_tokenizer.bos_token_id  # add_bos_token from the file
    assert loaded.tokenizer.decode(ids, skip_special_tokens=True) == hf_tokenizer.decode(
        ids, skip_special_tokens=True
    )


def test_tokenizer_carries_special_ids_and_the_chat_template(llama_gguf):
    tok = InterpretableModel(str(llama_gguf[0])).tokenizer
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert tok.eos_token_ids == {tok.eos_token_id}
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "<s>user: hi</s>"


def test_a_chat_template_cannot_reach_python(tmp_path, hf_tokenizer):
    """The template is data: rendered in Jinja's sandbox, it cannot reach Python objects."""
    escape = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    path = write_gguf(
        "llama",
        reference_model("llama"),
        hf_tokenizer,
        tmp_path / "evil.gguf",
        **{"tokenizer.chat_template": escape},
    )
    tok = InterpretableModel(str(path)).tokenizer
    with pytest.raises(SecurityError):
        tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


SPM_TEXTS = [
    "Hello world, the capital of France is Paris.",
    "  leading, double  spaces and a trailing one ",
    "a newline\nand\ta tab",
    "unseen characters fall back to bytes: \u00f1 \u65e5\u672c \U0001f642",
    "numbers 12345 and 3.14",
]


@pytest.fixture(scope="module")
def sentencepiece_gguf(tmp_path_factory):
    """A sentencepiece BPE vocabulary (trained like Llama 2's: identity normalization, byte
    fallback, a dummy prefix) written as llama.cpp's converter writes one, and the
    sentencepiece processor itself."""
    import io

    spm = pytest.importorskip("sentencepiece")
    corpus = [text for text in TEXTS + SPM_TEXTS[:2] for _ in range(20)]
    corpus += ["Machine learning studies algorithms that learn from data."] * 20
    written = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=written,
        vocab_size=360,
        model_type="bpe",
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=written.getvalue())
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    types = [
        2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1
        for i in range(len(pieces))
    ]
    pad = VOCAB - len(pieces)
    u32 = lambda v: mx.array(v, dtype=mx.uint32)  # noqa: E731
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": pieces + [f"[PAD{i}]" for i in range(pad)],
        "tokenizer.ggml.scores": mx.array(
            [sp.get_score(i) for i in range(len(pieces))] + [0.0] * pad
        ),
        "tokenizer.ggml.token_type": mx.array(types + [5] * pad, dtype=mx.int32),
        "tokenizer.ggml.bos_token_id": u32(1),
        "tokenizer.ggml.eos_token_id": u32(2),
        "tokenizer.ggml.unknown_token_id": u32(0),
        "tokenizer.ggml.add_space_prefix": mx.array(True),
    }
    path = tmp_path_factory.mktemp("spm") / "spm.gguf"
    write_gguf("llama", reference_model("llama"), None, path, tokenizer_meta=meta)
    return path, sp


@pytest.mark.parametrize("text", SPM_TEXTS)
def test_sentencepiece_vocabulary_encodes_like_sentencepiece(sentencepiece_gguf, text):
    path, sp = sentencepiece_gguf
    tok = InterpretableModel(str(path)).tokenizer
    ids = tok.encode(text)
    assert ids == [1, *sp.encode(text)]  # BOS added by default, as llama.cpp does
    assert tok.decode(ids[1:]) == sp.decode(ids[1:])


# ---------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"general.architecture": "phi3"}, "architecture 'phi3' is not supported"),
        ({"tokenizer.ggml.model": "t5"}, "tokenizer 't5' is not supported"),
        ({"tokenizer.ggml.model": "llama"}, "without one score per token"),
        ({"tokenizer.ggml.pre": "made-up"}, "pre-tokenizer 'made-up' is not supported"),
        ({"llama.rope.scaling.type": "yarn"}, "rope scaling 'yarn' is not supported"),
        ({"llama.block_count": mx.array(10**9, dtype=mx.uint32)}, "block_count=1000000000"),
        ({"llama.feed_forward_length": mx.array(64, dtype=mx.uint32)}, "feed_forward_length=64"),
        (
            {"llama.attention.head_count": mx.array(8, dtype=mx.uint32)},
            "head_count_kv x key_length=16",
        ),
    ],
)
def test_unsupported_files_are_refused_naming_what(tmp_path, hf_tokenizer, change, expected):
    path = write_gguf("llama", reference_model("llama"), hf_tokenizer, tmp_path / "x.gguf")
    tensors, meta = mx.load(str(path), return_metadata=True)
    meta.update(change)
    mx.save_gguf(str(path), tensors, meta)
    with pytest.raises(ModelLoadError, match=expected) as err:
        InterpretableModel(str(path))
    assert isinstance(err.value, MlxterpError) and isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    ("tensor", "expected"),
    [("blk.0.ffn_gate_exps.weight", "no place"), ("rope_freqs.weight", "rope")],
)
def test_tensors_with_no_place_are_refused(tmp_path, llama_gguf, tensor, expected):
    tensors, meta = mx.load(str(llama_gguf[0]), return_metadata=True)
    tensors[tensor] = mx.zeros((4, 4))
    path = tmp_path / "extra.gguf"
    mx.save_gguf(str(path), tensors, meta)
    with pytest.raises(ModelLoadError, match=expected):
        InterpretableModel(str(path))


def test_a_file_that_is_not_gguf_is_not_taken_for_one(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a gguf at all")
    assert not gguf.is_gguf(fake)
    with pytest.raises(ModelLoadError):
        InterpretableModel(str(fake))


# ---------------------------------------------------------------------------- where models live
def same_as(model: InterpretableModel, reference: Any) -> bool:
    return bool(mx.allclose(logits(model.model), logits(reference), atol=1e-4).item())


def test_gguf_in_the_hugging_face_cache(home, llama_gguf):
    path, reference = llama_gguf
    repo = home / ".cache" / "huggingface" / "hub" / "models--someone--tiny-GGUF"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    shutil.copy(path, repo / "snapshots" / "abc123" / "tiny-Q8_0.gguf")
    assert same_as(InterpretableModel("someone/tiny-GGUF"), reference)
    named = InterpretableModel("someone/tiny-GGUF/tiny-Q8_0.gguf")
    assert same_as(named, reference)


def test_hf_home_moves_the_cache(home, tmp_path, monkeypatch, llama_gguf):
    hf_home = tmp_path / "elsewhere"
    snapshot = hf_home / "hub" / "models--org--m" / "snapshots" / "rev"
    snapshot.mkdir(parents=True)
    shutil.copy(llama_gguf[0], snapshot / "m.gguf")
    monkeypatch.setenv("HF_HOME", str(hf_home))
    assert model_sources.locate("org/m") == snapshot / "m.gguf"


def test_mlx_folder_in_the_hugging_face_cache_loads_without_the_network(home, tmp_path):
    snapshot = home / ".cache" / "huggingface" / "hub" / "models--org--tiny" / "snapshots" / "r1"
    build_checkpoint("llama", snapshot)
    assert model_sources.locate("org/tiny") == snapshot
    assert InterpretableModel("org/tiny").num_layers == 2


@pytest.mark.parametrize("root", [".lmstudio/models", ".cache/lm-studio/models"])
def test_gguf_in_lm_studio(home, llama_gguf, root):
    folder = home / root / "lmstudio-community" / "Tiny-GGUF"
    folder.mkdir(parents=True)
    shutil.copy(llama_gguf[0], folder / "Tiny-Q4_K_M.gguf")
    assert same_as(InterpretableModel("lmstudio-community/Tiny-GGUF"), llama_gguf[1])


def test_sessions_fingerprint_the_gguf_loading_finds(home, tmp_path, hf_tokenizer, llama_gguf):
    # an LM Studio name: the session finds the file as loading does and fingerprints it, so
    # a replay on another model's file (same architecture, same size) is warned about
    target = home / ".lmstudio/models" / "org" / "Tiny-GGUF" / "Tiny.gguf"
    target.parent.mkdir(parents=True)
    shutil.copy(llama_gguf[0], target)
    manager = SessionManager()
    session = Session.new("org/Tiny-GGUF", tmp_path / "s.toml", manager)
    session.run(manager, "trace", text="hello world")
    assert session.fingerprint == gguf.fingerprint(target) and len(session.fingerprint) == 16
    assert replay(tmp_path / "s.toml", SessionManager()).warnings == []
    size = target.stat().st_size
    write_gguf("llama", reference_model("llama", seed=1), hf_tokenizer, target)
    assert target.stat().st_size == size
    report = replay(tmp_path / "s.toml", SessionManager())
    assert any("the model differs" in w for w in report.warnings), report.warnings


def test_gguf_fingerprint_reads_the_head_and_the_tail(tmp_path):
    path = tmp_path / "big.gguf"
    data = bytearray(gguf.MAGIC + bytes(gguf.FINGERPRINT_HEAD + 3 * gguf.FINGERPRINT_TAIL))
    path.write_bytes(data)
    first = gguf.fingerprint(path)
    for where in (8, len(data) - 1):  # the header, the last weights
        changed = bytearray(data)
        changed[where] ^= 1
        path.write_bytes(changed)
        assert gguf.fingerprint(path) != first
    path.write_bytes(data + b"\0")
    assert gguf.fingerprint(path) != first


def ollama_store(root: Path, gguf_path: Path, name: str = "tiny", tag: str = "latest") -> Path:
    """Ollama's layout: a manifest naming the model layer's blob by its sha256."""
    data = gguf_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    blob = root / "blobs" / f"sha256-{digest}"
    blob.write_bytes(data)
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    layers = [
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:00"},
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}"},
    ]
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))
    return blob


def test_ollama_model_through_its_manifest(home, llama_gguf):
    blob = ollama_store(home / ".ollama" / "models", llama_gguf[0])
    assert model_sources.locate("tiny") == blob == model_sources.locate("tiny:latest")
    assert same_as(InterpretableModel("tiny:latest"), llama_gguf[1])
    assert model_sources.locate("tiny:other-tag") is None


def test_ollama_models_env_moves_the_store(home, tmp_path, monkeypatch, llama_gguf):
    store = tmp_path / "ollama-store"
    blob = ollama_store(store, llama_gguf[0], tag="q8")
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    assert model_sources.locate("tiny:q8") == blob


def test_ollama_manifest_whose_blob_is_missing_says_so(home, llama_gguf):
    blob = ollama_store(home / ".ollama" / "models", llama_gguf[0])
    blob.unlink()
    with pytest.raises(ModelLoadError, match=r"blob .* is missing"):
        InterpretableModel("tiny")


def test_a_folder_of_several_ggufs_asks_for_one(home, tmp_path, llama_gguf):
    folder = tmp_path / "quants"
    folder.mkdir()
    for name in ("m-Q4_0.gguf", "m-Q8_0.gguf"):
        shutil.copy(llama_gguf[0], folder / name)
    with pytest.raises(ModelLoadError, match=r"several GGUF files \(m-Q4_0.gguf, m-Q8_0.gguf\)"):
        InterpretableModel(str(folder))
    assert same_as(InterpretableModel(str(folder / "m-Q8_0.gguf")), llama_gguf[1])


def test_a_name_found_nowhere_is_still_refused(home):
    assert model_sources.locate("no-such-model") is None
    with pytest.raises(ModelLoadError, match="not found"):
        InterpretableModel("no-such-model")
