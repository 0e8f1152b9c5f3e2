"""Shared fixtures: models built offline (tiny random checkpoints, the embedded demo model)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import mlxterp  # noqa: F401  (on Linux, preloads OpenBLAS: it must come before mlx)

# isort: split
import mlx.core as mx
import mlx.nn as nn
import pytest

from mlxterp import InterpretableModel
from mlxterp.loading import DEMO_DIR

TINY_LLAMA = dict(
    model_type="llama",
    hidden_size=64,
    num_hidden_layers=3,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    vocab_size=128,
    tie_word_embeddings=False,
)


def build_tiny_llama(seed: int = 0, **overrides) -> nn.Module:
    """A 3-layer random llama built in memory (no tokenizer)."""
    from mlx_lm.models import llama

    mx.random.seed(seed)
    module = llama.Model(llama.ModelArgs.from_dict({**TINY_LLAMA, **overrides}))
    mx.eval(module.parameters())
    return module


class SimpleTransformer(nn.Module):
    """The spec's plain custom model: Linear layers with ReLU, no tokenizer."""

    def __init__(self, hidden_dim: int = 64, num_layers: int = 4):
        super().__init__()
        self.layers = [nn.Linear(hidden_dim, hidden_dim) for _ in range(num_layers)]

    def __call__(self, x):
        for layer in self.layers:
            x = nn.relu(layer(x))
        return x


@pytest.fixture(scope="session")
def tiny_llama() -> InterpretableModel:
    return InterpretableModel(build_tiny_llama())


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory):
    """``checkpoint_dir(arch)`` → folder of a tiny checkpoint of that architecture (built once)."""
    from mlxterp.checkpoints import build_checkpoint

    built: dict[str, str] = {}

    def get(arch: str) -> str:
        if arch not in built:
            folder = tmp_path_factory.mktemp(f"ckpt-{arch}")
            built[arch] = str(build_checkpoint(arch, folder, seed=0))
        return built[arch]

    return get


@pytest.fixture(scope="session")
def demo() -> InterpretableModel:
    if not (DEMO_DIR / "config.json").exists():
        pytest.fail("the embedded demo model is missing from engine/mlxterp/demo_model")
    return InterpretableModel("demo")


@pytest.fixture(autouse=True)
def _workbench_state_dir(tmp_path_factory, monkeypatch):
    """The workbench keeps recovery files in a fresh folder per test, never in ~/.local/state
    (a file left there by an earlier run would be offered back and take the first keys)."""
    monkeypatch.setenv("MLXTERP_STATE_DIR", str(tmp_path_factory.mktemp("workbench-state")))


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty home: every model cache the lookup reads (Hugging Face, LM Studio, Ollama)
    points into it, so a test sees only what it puts there."""
    root = tmp_path / "home"
    root.mkdir()
    monkeypatch.setenv("HOME", str(root))
    for var in ("HF_HOME", "HF_HUB_CACHE", "OLLAMA_MODELS"):
        monkeypatch.delenv(var, raising=False)
    return root


@pytest.fixture(scope="session")
def manager(demo):
    """A session manager holding the demo model (test files may define their own)."""
    from mlxterp.session import SessionManager

    mgr = SessionManager()
    mgr.add("demo", demo)
    return mgr
