"""Config normalization (mlxterp.model_config), its ConfigWarning, and ``mlxterp doctor``.

Each folder is a tiny random-weight checkpoint written by ``mlxterp.checkpoints`` whose
``config.json`` is then rewritten in the forms transformers 5 saves; its logits are compared
with the same weights under the classic config that mlx-lm reads.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import pytest

from mlxterp import InterpretableModel
from mlxterp.checkpoints import build_checkpoint
from mlxterp.doctor import diagnose
from mlxterp.errors import ConfigWarning, ModelLoadError
from mlxterp.model_config import normalize

TOKENS = [[1, 40, 75, 200, 7, 300, 12, 99, 150, 33, 250, 60]]
ROOT = Path(__file__).resolve().parent.parent
# RoPE's base as transformers 5 saves it (mlx-lm alone reads only a top-level rope_theta)
TF5_ROPE = {"rope_theta": 100000.0, "rope_type": "default"}


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory) -> Path:
    """A tiny llama checkpoint (untied, rope_theta 10,000 in its config)."""
    return build_checkpoint("llama", tmp_path_factory.mktemp("llama"), seed=3)


def variant(base: Path, to: Path, edit: Any) -> Path:
    """A copy of ``base`` whose config.json is ``edit(config)``."""
    shutil.copytree(base, to)
    config = json.loads((to / "config.json").read_text())
    (to / "config.json").write_text(json.dumps(edit(config), indent=2))
    return to


def with_keys(**keys: Any) -> Any:
    """An ``edit`` that sets ``keys`` (a value of ``None`` removes the key)."""

    def edit(config: dict[str, Any]) -> dict[str, Any]:
        config = {**config, **keys}
        return {k: v for k, v in config.items() if v is not None}

    return edit


def logits(model: InterpretableModel) -> mx.array:
    out = model.model(mx.array(TOKENS))
    mx.eval(out)
    return out


def rope_bases(model: InterpretableModel) -> set[float]:
    return {float(m.base) for _, m in model.model.named_modules() if isinstance(m, nn.RoPE)}


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_transformers5_rope_parameters_give_the_rope_base(llama_folder, tmp_path):
    """transformers 5 keeps the base in rope_parameters; mlx-lm alone would use 10,000."""
    nested = variant(
        llama_folder,
        tmp_path / "nested",
        with_keys(rope_theta=None, rope_parameters=TF5_ROPE),
    )
    classic = variant(llama_folder, tmp_path / "classic", with_keys(rope_theta=100000.0))
    model = InterpretableModel(str(nested))
    assert rope_bases(model) == {100000.0}
    reference, base_10k = InterpretableModel(str(classic)), InterpretableModel(str(llama_folder))
    assert mx.array_equal(logits(model), logits(reference))
    assert mx.max(mx.abs(logits(model) - logits(base_10k))).item() > 1e-4


@pytest.mark.parametrize(
    ("scaling", "changes_short_prompts"),
    [
        ({"rope_type": "linear", "factor": 4.0}, True),
        (
            {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
            True,
        ),
        ({"rope_type": "yarn", "factor": 4.0}, True),
        ({"rope_type": "dynamic", "factor": 2.0}, False),  # only past max_position_embeddings
    ],
    ids=lambda v: v.get("rope_type", "") if isinstance(v, dict) else str(v),
)
def test_rope_scaling_inside_rope_parameters_reaches_the_model(
    llama_folder, tmp_path, scaling, changes_short_prompts
):
    nested = variant(
        llama_folder,
        tmp_path / "nested",
        with_keys(rope_theta=None, rope_parameters={"rope_theta": 10000.0, **scaling}),
    )
    # transformers fills in the pre-training length from max_position_embeddings (512)
    classic_scaling = dict(scaling)
    if scaling["rope_type"] in ("llama3", "yarn"):
        classic_scaling["original_max_position_embeddings"] = 512
    classic = variant(llama_folder, tmp_path / "classic", with_keys(rope_scaling=classic_scaling))
    model, reference = InterpretableModel(str(nested)), InterpretableModel(str(classic))
    assert mx.array_equal(logits(model), logits(reference))
    if changes_short_prompts:
        unscaled = InterpretableModel(str(llama_folder))
        assert mx.max(mx.abs(logits(model) - logits(unscaled))).item() > 1e-5


def test_legacy_llama3_scaling_gets_the_pre_training_length_transformers_uses(
    llama_folder, tmp_path
):
    """mlx-lm alone assumes 8192 where transformers takes max_position_embeddings."""
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
    }
    legacy = variant(llama_folder, tmp_path / "legacy", with_keys(rope_scaling=scaling))
    explicit = variant(
        llama_folder,
        tmp_path / "explicit",
        with_keys(rope_scaling={**scaling, "original_max_position_embeddings": 512}),
    )
    model, reference = InterpretableModel(str(legacy)), InterpretableModel(str(explicit))
    assert mx.array_equal(logits(model), logits(reference))


def test_llama3_scaling_gets_transformers_pre_training_length():
    config = {
        "model_type": "llama",
        "max_position_embeddings": 1024,
        "rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0},
    }
    norm = normalize(config)
    assert norm.overrides["rope_theta"] == 500000.0
    assert norm.overrides["rope_scaling"] == {
        "rope_type": "llama3",
        "factor": 8.0,
        "original_max_position_embeddings": 1024,  # mlx-lm alone would assume 8192
    }


def test_per_layer_type_rope_parameters_map_to_gemma3_fields():
    text = {
        "model_type": "gemma3_text",
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
        },
    }
    norm = normalize({"model_type": "gemma3", "text_config": text})
    inner = norm.overrides["text_config"]
    assert inner["rope_theta"] == 1000000.0 and inner["rope_local_base_freq"] == 10000.0
    assert inner["rope_scaling"] == {"rope_type": "linear", "factor": 8.0}
    assert not norm.ignored


def test_missing_tie_word_embeddings_follows_the_weights(llama_folder, tmp_path):
    """An absent key made mlx-lm tie (its default) and silently drop the lm_head weight."""
    untold = variant(llama_folder, tmp_path / "untold", with_keys(tie_word_embeddings=None))
    model, reference = InterpretableModel(str(untold)), InterpretableModel(str(llama_folder))
    assert "lm_head" in model.model
    assert mx.array_equal(logits(model), logits(reference))


def test_text_config_keys_are_read_where_the_architecture_reads_them(llama_folder, tmp_path):
    moved = ("rope_theta", "tie_word_embeddings", "rms_norm_eps")

    def nest(config: dict[str, Any]) -> dict[str, Any]:
        text = {k: config.pop(k) for k in moved}
        text["rope_theta"] = 100000.0
        return {**config, "text_config": text}

    nested = variant(llama_folder, tmp_path / "nested", nest)
    classic = variant(llama_folder, tmp_path / "classic", with_keys(rope_theta=100000.0))
    model, reference = InterpretableModel(str(nested)), InterpretableModel(str(classic))
    assert mx.array_equal(logits(model), logits(reference))


def test_null_head_dim_is_derived_where_the_architecture_needs_a_number():
    config = {"model_type": "qwen3", "hidden_size": 64, "num_attention_heads": 4, "head_dim": None}
    assert normalize(config).overrides["head_dim"] == 16
    llama = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4}
    assert "head_dim" not in normalize(llama).overrides  # llama derives it itself


def test_an_ignored_numerics_key_warns_once_naming_it(llama_folder, tmp_path):
    capped = variant(
        llama_folder,
        tmp_path / "capped",
        with_keys(final_logit_softcapping=30.0, sliding_window=4096, use_sliding_window=False),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        InterpretableModel(str(capped))
    config_warnings = [w for w in caught if issubclass(w.category, ConfigWarning)]
    assert len(config_warnings) == 1
    message = str(config_warnings[0].message)
    assert "final_logit_softcapping" in message and "llama" in message
    assert "sliding_window" not in message  # switched off by use_sliding_window=false


def test_the_warning_comes_from_the_architectures_fields_not_a_list():
    """gemma2 reads softcapping, llama does not: the same key warns for one only."""
    key = {"attn_logit_softcapping": 50.0}
    assert not normalize({"model_type": "gemma2", **key}).ignored
    (ignored,) = normalize({"model_type": "llama", **key}).ignored
    assert ignored.key == "attn_logit_softcapping"
    (scaling,) = normalize(
        {"model_type": "gemma", "rope_parameters": {"rope_type": "yarn", "factor": 4.0}}
    ).ignored
    assert scaling.key == "rope_parameters.rope_type"  # gemma has no rope_scaling field


def test_a_plain_folder_loads_without_warning_or_change(llama_folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        InterpretableModel(str(llama_folder))
    config = json.loads((llama_folder / "config.json").read_text())
    norm = normalize(config, ["lm_head.weight"])
    assert norm.overrides == {} and norm.changes == () and norm.ignored == ()


def test_normalization_never_writes_to_the_folder(llama_folder, tmp_path):
    nested = variant(
        llama_folder,
        tmp_path / "nested",
        with_keys(
            rope_theta=None,
            tie_word_embeddings=None,
            rope_parameters=TF5_ROPE,
            final_logit_softcapping=30.0,
        ),
    )
    before = folder_digest(nested)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        InterpretableModel(str(nested))
    diagnose(str(nested), parity=False)
    assert folder_digest(nested) == before


def test_loading_safety_checks_still_come_first(llama_folder, tmp_path):
    code = variant(
        llama_folder,
        tmp_path / "code",
        with_keys(auto_map={"AutoModel": "x.Model"}, rope_parameters={"rope_theta": 1e5}),
    )
    with pytest.raises(ModelLoadError, match="auto_map"):
        InterpretableModel(str(code))
    huge = variant(llama_folder, tmp_path / "huge", with_keys(num_hidden_layers=10**9))
    with pytest.raises(ModelLoadError, match="num_hidden_layers"):
        InterpretableModel(str(huge))
    for model_type in ("no_such_arch", "base"):  # base: an mlx-lm module without a Model
        odd = variant(llama_folder, tmp_path / model_type, with_keys(model_type=model_type))
        with pytest.raises(ModelLoadError, match=model_type):
            InterpretableModel(str(odd))


# ---------------------------------------------------------------------------- doctor
def test_doctor_reports_what_was_loaded_and_changed(llama_folder, tmp_path):
    nested = variant(
        llama_folder,
        tmp_path / "nested",
        with_keys(
            rope_theta=None,
            rope_parameters=TF5_ROPE,
            final_logit_softcapping=30.0,
        ),
    )
    report = diagnose(str(nested), parity=False)
    assert report.model_type == "llama" and report.file_format == "safetensors folder"
    assert report.values["layers"] == 2 and report.values["rope theta"] == 100000.0
    assert report.rope_bases == (100000.0,) and not report.tied_embeddings
    assert any("rope_theta" in c and "rope_parameters" in c for c in report.changes)
    assert any("final_logit_softcapping" in k for k in report.ignored)
    assert report.dtypes and not report.quantized and report.parameters > 0
    text = report.format_text()
    assert "100000" in text and "final_logit_softcapping" in text


def test_doctor_names_the_quantization(tmp_path):
    folder = build_checkpoint("llama_4bit", tmp_path / "q4")
    report = diagnose(str(folder))
    (quantized,) = report.quantized
    assert (quantized.bits, quantized.group_size) == (4, 64)
    assert quantized.kinds["q_proj"] == 2  # one per layer
    assert report.parity.status == "skipped" and "quantized" in report.parity.detail


def test_doctor_parity_against_transformers(llama_folder):
    pytest.importorskip(
        "torch", reason="torch is not installed: the parity check with transformers is skipped"
    )
    parity = diagnose(str(llama_folder)).parity
    assert parity.status == "compared", parity.detail
    assert parity.max_abs_diff is not None and parity.max_abs_diff < 1e-3
    assert parity.top1_agreement == 1.0


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    """``mlxterp doctor`` through the console script's entry point, in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "mlxterp_tui.cli", "doctor", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def test_doctor_command_on_the_demo_and_a_folder(llama_folder):
    demo = doctor("demo")
    assert demo.returncode == 0, demo.stderr
    assert "architecture: llama" in demo.stdout and "layers:          16" in demo.stdout
    assert "parity:" in demo.stdout and "Traceback" not in demo.stderr
    folder = doctor(str(llama_folder), "--no-parity")
    assert folder.returncode == 0, folder.stderr
    assert str(llama_folder) in folder.stdout and "parity:       skipped" in folder.stdout


def test_doctor_command_on_a_missing_model_fails_in_one_line(tmp_path):
    out = doctor(str(tmp_path / "no-such-model"))
    assert out.returncode != 0
    assert out.stdout == "" and "Traceback" not in out.stderr
    assert out.stderr.startswith("mlxterp doctor: error: ") and out.stderr.count("\n") == 1
    assert "does not exist" in out.stderr
