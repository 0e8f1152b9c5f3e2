"""SAELens interchange: mlxterp SAEs written as SAELens writes them and read back, SAELens
folders built by hand (as SAELens 6 and pre-6 write them) read here, with the encodings
checked against a NumPy reading of SAELens's own encoder, and, where ``sae_lens`` is
installed, our files opened by SAELens itself."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import save_file

from mlxterp import InputError
from mlxterp.sae import SAE, SAEConfig, load_saelens, save_saelens
from mlxterp.sae.saelens import component_of_hook, hook_name

D_IN = 64


def random_sae(kind: str, seed: int = 0) -> SAE:
    """An SAE for the demo model's layer 8 with every weight non-trivial and a scale."""
    config = SAEConfig(kind=kind, expansion_factor=4, k=6, seed=seed)
    sae = SAE(D_IN, config, "model.layers.8", 8, "demo")
    keys = mx.random.split(mx.random.key(seed + 100), 2)
    sae.b_enc = mx.random.normal((sae.d_sae,), key=keys[0]) * 0.1
    sae.b_dec = mx.random.normal((D_IN,), key=keys[1]) * 0.1
    sae.scale = 0.37
    sae.set_training_stats({"tokens": 10, "steps": 2})
    return sae


def activations(demo, prompts=("The capital of France is", "river king apple garden")):
    with demo.trace(list(prompts), capture=["layers.8"]) as trace:
        pass
    return trace.activations["layers.8"]


@pytest.mark.parametrize("kind", ["relu", "topk", "batchtopk"])
def test_round_trip_through_saelens_files_keeps_the_encodings(kind, demo, tmp_path):
    sae = random_sae(kind)
    folder = save_saelens(sae, tmp_path / "sl")
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    cfg = json.loads((folder / "cfg.json").read_text())
    topk = kind != "relu"
    assert cfg["architecture"] == ("topk" if topk else "standard")
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == (64, 256, "float32")
    assert cfg["normalize_activations"] == "none" and cfg["apply_b_dec_to_input"] is True
    assert cfg["metadata"]["hook_name"] == cfg["hook_name"] == "blocks.8.hook_resid_post"
    assert cfg["metadata"]["model_name"] == "demo" and cfg["hook_layer"] == 8
    assert cfg["activation_fn_str"] == ("topk" if topk else "relu")
    assert cfg["activation_fn_kwargs"] == ({"k": 6} if topk else {})
    assert cfg.get("k") == (6 if topk else None)
    weights = mx.load(str(folder / "sae_weights.safetensors"))
    assert {n: tuple(w.shape) for n, w in weights.items()} == {
        "W_enc": (64, 256),
        "b_enc": (256,),
        "W_dec": (256, 64),
        "b_dec": (64,),
    }
    back = load_saelens(folder, demo)  # checks the component against the model
    assert (back.component, back.layer, back.model_ref) == ("model.layers.8", 8, "demo")
    assert back.config == sae.config and back.training_stats == sae.training_stats
    x = activations(demo)
    assert mx.allclose(back.encode(x), sae.encode(x), rtol=1e-5, atol=1e-5).item()
    assert mx.array_equal(back.encode(x) > 0, sae.encode(x) > 0).item()
    assert mx.allclose(back(x), sae(x), rtol=1e-5, atol=1e-5).item()
    assert SAE.load(folder, demo).config == sae.config  # SAE.load opens SAELens folders too


def test_a_batchtopk_sae_is_written_as_jumprelu_with_its_inference_threshold(demo, tmp_path):
    sae = random_sae("batchtopk")
    sae.threshold = 0.05
    folder = save_saelens(sae, tmp_path / "jump")
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and "k" not in cfg
    assert (cfg["activation_fn_str"], cfg["activation_fn_kwargs"]) == ("relu", {})
    weights = {
        k: np.asarray(v) for k, v in mx.load(str(folder / "sae_weights.safetensors")).items()
    }
    assert np.array_equal(weights["threshold"], np.full(256, 0.05, dtype=np.float32))
    x = activations(demo)
    got = sae.encode(x)
    assert 0 < mx.mean(mx.sum(got > 0, axis=-1)).item() < sae.d_sae  # not a fixed k
    reference = saelens_encode(cfg, weights, np.asarray(x, dtype=np.float64))
    assert np.allclose(np.asarray(got), reference, rtol=1e-4, atol=1e-4)
    back = load_saelens(folder, demo)
    assert back.config == sae.config and back.threshold == pytest.approx(0.05)
    assert mx.allclose(back.encode(x), got, rtol=1e-5, atol=1e-5).item()


def test_per_feature_jumprelu_thresholds_are_refused_and_one_threshold_is_read(demo, tmp_path):
    cfg = {**V6_TOPK, "architecture": "jumprelu"}  # SAELens 6's JumpReLU config has neither
    del cfg["k"], cfg["rescale_acts_by_decoder_norm"]
    uneven = {**foreign_weights(128, 3), "threshold": np.linspace(0, 1, 128, dtype=np.float32)}
    with pytest.raises(InputError, match="thresholds differ from feature to feature"):
        load_saelens(write_saelens(tmp_path / "uneven", cfg, uneven))
    even = {**uneven, "threshold": np.full(128, 0.2, dtype=np.float32)}
    sae = load_saelens(write_saelens(tmp_path / "even", cfg, even))
    assert sae.config.kind == "batchtopk" and sae.threshold == pytest.approx(0.2)
    x = np.random.default_rng(1).normal(size=(6, D_IN))
    got = np.asarray(sae.encode(mx.array(x.astype(np.float32))))
    assert np.allclose(got, saelens_encode(cfg, even, x), rtol=1e-4, atol=1e-4)


def saelens_encode(cfg, w, x):
    """SAELens's encoder, read from its source (sae_lens/saes/standard_sae.py and
    topk_sae.py): subtract b_dec if apply_b_dec_to_input, W_enc and b_enc, scale by the
    decoder norms if rescale_acts_by_decoder_norm, then ReLU, top-k of the
    pre-activations with the kept values ReLU'd, or (jumprelu_sae.py) ReLU where the
    pre-activation passes the feature's threshold."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    sae_in = x - w["b_dec"] * cfg.get("apply_b_dec_to_input", True)
    pre = sae_in @ w["W_enc"] + w["b_enc"]
    if cfg.get("rescale_acts_by_decoder_norm"):
        pre = pre * np.linalg.norm(w["W_dec"], axis=-1)
    if cfg.get("architecture") == "jumprelu":
        return np.maximum(pre, 0) * (pre > w["threshold"])
    if cfg.get("architecture", "standard") == "standard" and cfg.get("activation_fn_str") != "topk":
        return np.maximum(pre, 0)
    k = cfg.get("k") or cfg["activation_fn_kwargs"]["k"]
    out = np.zeros_like(pre)
    idx = np.argsort(-pre, axis=-1)[..., :k]
    np.put_along_axis(out, idx, np.maximum(np.take_along_axis(pre, idx, -1), 0), -1)
    return out


def write_saelens(folder: Path, cfg: dict, weights: dict[str, np.ndarray]) -> Path:
    """A folder as SAELens's save_model writes it (json.dump of the config, safetensors)."""
    folder.mkdir()
    save_file(weights, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def foreign_weights(d_sae: int, seed: int, dtype=np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w_dec = rng.normal(size=(d_sae, D_IN)) * rng.uniform(0.2, 3.0, size=(d_sae, 1))
    return {
        "W_enc": (rng.normal(size=(D_IN, d_sae)) / 8).astype(dtype),
        "b_enc": (rng.normal(size=(d_sae,)) * 0.1).astype(dtype),
        "W_dec": w_dec.astype(dtype),
        "b_dec": (rng.normal(size=(D_IN,)) * 0.3).astype(dtype),
    }


V6_TOPK = {  # as SAELens 6's TopKSAE.save_model writes it (cfg.to_dict())
    "d_in": D_IN,
    "d_sae": 128,
    "dtype": "float32",
    "device": "cpu",
    "apply_b_dec_to_input": False,
    "normalize_activations": "none",
    "reshape_activations": "none",
    "metadata": {
        "sae_lens_version": "6.5.1",
        "sae_lens_training_version": "6.5.1",
        "model_name": "tiny-demo",
        "hook_name": "blocks.3.hook_mlp_out",
        "hook_head_index": None,
        "prepend_bos": True,
        "context_size": 128,
        "dataset_path": "some/dataset",
    },
    "architecture": "topk",
    "k": 7,
    "rescale_acts_by_decoder_norm": True,
}
PRE6_RELU = {  # as SAELens 3-5 wrote a standard ReLU SAE
    "architecture": "standard",
    "d_in": D_IN,
    "d_sae": 192,
    "activation_fn_str": "relu",
    "activation_fn_kwargs": {},
    "apply_b_dec_to_input": True,
    "finetuning_scaling_factor": False,
    "context_size": 128,
    "model_name": "tiny-demo",
    "hook_name": "blocks.5.hook_resid_pre",
    "hook_layer": 5,
    "hook_head_index": None,
    "prepend_bos": True,
    "dataset_path": "some/dataset",
    "dataset_trust_remote_code": True,
    "normalize_activations": "expected_average_only_in",
    "dtype": "torch.float32",
    "device": "cuda",
    "sae_lens_training_version": "3.12.0",
    "neuronpedia_id": None,
    "model_from_pretrained_kwargs": {},
    "seqpos_slice": [None],
}
PRE6_TOPK = {**PRE6_RELU, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 5}}


@pytest.mark.parametrize(
    "cfg, component, layer",
    [
        (V6_TOPK, "layers.3.mlp", 3),
        (PRE6_RELU, "layers.4", 4),  # resid_pre of block 5 is what layer 4 outputs
        (PRE6_TOPK, "layers.4", 4),
    ],
    ids=["v6-topk-rescaled-no-bdec-in", "pre6-relu", "pre6-topk"],
)
def test_a_folder_saelens_wrote_opens_here(cfg, component, layer, demo, tmp_path):
    weights = foreign_weights(cfg["d_sae"], seed=layer)
    folder = write_saelens(tmp_path / "foreign", cfg, weights)
    sae = load_saelens(folder, demo)
    assert (sae.component, sae.layer, sae.model_ref) == (component, layer, "tiny-demo")
    assert sae.d_sae == cfg["d_sae"] and sae.scale == 1.0
    assert sae.config.kind == ("relu" if cfg.get("activation_fn_str") == "relu" else "topk")
    x = np.asarray(activations(demo)).astype(np.float64)
    expected = saelens_encode(cfg, weights, x)
    got = np.asarray(sae.encode(mx.array(x.astype(np.float32))))
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-4)
    if sae.config.kind == "topk":
        assert (np.count_nonzero(got, axis=-1) <= sae.config.k).all()
    # SAELens decodes acts (divided back by the decoder norms when rescaled) @ W_dec + b_dec
    acts = expected / np.linalg.norm(weights["W_dec"], axis=-1) if cfg.get("k") else expected
    decoded = acts @ weights["W_dec"].astype(np.float64) + weights["b_dec"]
    assert np.allclose(np.asarray(sae.decode(mx.array(got))), decoded, rtol=1e-4, atol=1e-3)


def test_bfloat16_weights_are_read_in_float32(tmp_path):
    cfg = {**V6_TOPK, "dtype": "bfloat16", "apply_b_dec_to_input": True}
    weights = {k: mx.array(v).astype(mx.bfloat16) for k, v in foreign_weights(128, 1).items()}
    (tmp_path / "bf").mkdir()
    mx.save_safetensors(str(tmp_path / "bf" / "sae_weights.safetensors"), weights)
    (tmp_path / "bf" / "cfg.json").write_text(json.dumps(cfg))
    sae = load_saelens(tmp_path / "bf")
    assert sae.W_enc.dtype == mx.float32
    x = np.random.default_rng(0).normal(size=(5, D_IN))
    ref = {k: np.asarray(v.astype(mx.float32)) for k, v in weights.items()}
    got = np.asarray(sae.encode(mx.array(x.astype(np.float32))))
    assert np.allclose(got, saelens_encode(cfg, ref, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"architecture": "jumprelu"}, r"needs a threshold weight of \(128,\)"),
        ({"architecture": "gated"}, "architecture 'gated'"),
        ({"normalize_activations": "constant_norm_rescale"}, "rescales each token"),
        ({"normalize_activations": "layer_norm"}, "rescales each token"),
        ({"reshape_activations": "hook_z"}, "hook_z"),
        ({"d_sae": 100}, r"W_enc should be shaped \(64, 100\)"),
        ({"k": 0}, "positive integer k"),
    ],
)
def test_what_mlxterp_cannot_compute_is_refused(change, message, tmp_path):
    folder = write_saelens(tmp_path / "x", {**V6_TOPK, **change}, foreign_weights(128, 2))
    with pytest.raises(InputError, match=message):
        load_saelens(folder)


def test_unreadable_folders_and_hook_names(tmp_path):
    with pytest.raises(InputError, match="no readable SAELens SAE"):
        load_saelens(tmp_path)
    assert hook_name("model.layers.2.mlp") == "blocks.2.hook_mlp_out"
    assert hook_name("model.layers.2.self_attn") == "blocks.2.hook_attn_out"
    assert hook_name("model.layers.2.mlp.up_proj") == "model.layers.2.mlp.up_proj"
    assert component_of_hook("blocks.0.hook_resid_pre") == "model.embed_tokens"
    assert component_of_hook("blocks.2.hook_attn_out") == "layers.2.attn"
    # a foreign hook name mlxterp cannot map: the caller names the component
    folder = write_saelens(
        tmp_path / "odd",
        {**V6_TOPK, "metadata": {**V6_TOPK["metadata"], "hook_name": "blocks.3.hook_q"}},
        foreign_weights(128, 3),
    )
    assert load_saelens(folder).component == "blocks.3.hook_q"
    assert load_saelens(folder, component="layers.3.attn").component == "layers.3.attn"


def test_saelens_reads_our_files_to_the_same_encodings(demo, tmp_path):
    """The other direction, in SAELens itself (compared to 1e-5)."""
    sae_lens = pytest.importorskip(
        "sae_lens",
        reason="sae-lens (with torch) is not installed here; the files are checked against "
        "SAELens's encoder as read from its source in the tests above",
    )
    import torch

    x = activations(demo)
    for kind in ("relu", "topk"):
        ours = random_sae(kind)
        folder = save_saelens(ours, tmp_path / kind)
        theirs = sae_lens.SAE.load_from_disk(str(folder), device="cpu")
        got = theirs.encode(torch.tensor(np.asarray(x))).detach().numpy()
        assert np.allclose(got, np.asarray(ours.encode(x)), atol=1e-5), kind


def test_a_width_that_is_no_multiple_of_d_in_opens_and_round_trips(demo, tmp_path):
    """SAELens SAEs come in widths such as 2**15 over 768 inputs; mlxterp keeps d_sae."""
    cfg = {**V6_TOPK, "d_sae": 96}
    weights = foreign_weights(96, seed=4)
    sae = load_saelens(write_saelens(tmp_path / "odd", cfg, weights), demo)
    assert sae.d_sae == 96 and sae.W_enc.shape == (64, 96)
    x = activations(demo)
    assert sae.encode(x).shape == (*x.shape[:-1], 96)
    expected = saelens_encode(cfg, weights, np.asarray(x).astype(np.float64))
    assert np.allclose(np.asarray(sae.encode(x)), expected, rtol=1e-4, atol=1e-4)
    sae.save(tmp_path / "ours")
    again = SAE.load(tmp_path / "ours", demo)
    assert again.d_sae == 96 and mx.array_equal(again.encode(x), sae.encode(x)).item()
    assert load_saelens(save_saelens(sae, tmp_path / "back")).d_sae == 96
