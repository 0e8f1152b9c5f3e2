"""The final-position path of patching sweeps (a KV cache of the corrupted prefix, one token
per patched row) gives the full path's results, and is the path really taken."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel, patching
from mlxterp.checkpoints import ARCHITECTURES
from mlxterp.head_patching import head_patching
from mlxterp.patching import PrefixCache, patching_sweep

ARCHS = [a for a in ARCHITECTURES if a != "medium_llama"]
CLEAN = "The capital of France is Paris. The capital of Germany is"
CORRUPTED = "The capital of France is Paris. The capital of Italy is"
# 40 tokens: longer than gemma3's 32-token sliding window, so its rotating cache wraps
IDS = [(7 * t + 3) % 97 + 1 for t in range(40)]
# corrupted early and near the end: a large baseline keeps float32 noise well under 1e-4
IDS_CORRUPTED = [*IDS[:5], 50, *IDS[6:37], 11, 12, 13]


def _both(monkeypatch: pytest.MonkeyPatch, run):
    """``run()`` with the final-position path, then with it switched off (the full path)."""
    fast = run()
    with monkeypatch.context() as m:
        m.setattr(PrefixCache, "of", staticmethod(lambda model, setup: None))
        full = run()
    return fast, full


def _close(fast, full) -> None:
    a, b = np.array(fast, dtype=float), np.array(full, dtype=float)
    assert a.shape == b.shape
    # recovery in percent: 5e-4 points is float32 rounding of sums taken in another order
    assert np.abs(a - b).max() < 5e-4, np.abs(a - b).max()


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request, checkpoint_dir):
    return request.param, InterpretableModel(checkpoint_dir(request.param))


@pytest.mark.parametrize("component", ["mlp", "attn", None])
@pytest.mark.parametrize("positions", [-1, [12]])
def test_demo_final_position_sweep_equals_the_full_path(demo, monkeypatch, component, positions):
    assert len(demo.prepare(CORRUPTED).tokens[0]) == 13
    fast, full = _both(
        monkeypatch,
        lambda: patching_sweep(demo, CLEAN, CORRUPTED, component, positions=positions),
    )
    assert fast.layers == full.layers == list(range(demo.num_layers))
    _close(list(fast.recovery.values()), list(full.recovery.values()))
    assert fast.corrupted_value == full.corrupted_value


@pytest.mark.parametrize("component", ["mlp", "attn", None])
def test_every_architecture_final_position_sweep_equals_the_full_path(
    arch_model, monkeypatch, component
):
    _arch, model = arch_model
    fast, full = _both(
        monkeypatch,
        lambda: patching_sweep(model, [IDS], [IDS_CORRUPTED], component, positions=-1),
    )
    _close(list(fast.mean_recovery.values()), list(full.mean_recovery.values()))


def test_every_architecture_head_patching_equals_the_full_path(arch_model, monkeypatch):
    _arch, model = arch_model
    fast, full = _both(
        monkeypatch,
        lambda: head_patching(model, IDS, IDS_CORRUPTED, positions=-1, all_heads=True),
    )
    _close(fast.recovery, full.recovery)
    _close(fast.all_heads, full.all_heads)


def test_demo_head_patching_equals_the_full_path(demo, monkeypatch):
    fast, full = _both(
        monkeypatch, lambda: head_patching(demo, CLEAN, CORRUPTED, positions=-1, by_position=True)
    )
    _close(fast.recovery, full.recovery)
    _close(fast.by_position, full.by_position)


def test_a_list_of_pairs_equals_the_full_path(demo, monkeypatch):
    clean = [CLEAN, "The capital of Spain is Madrid. The capital of Japan is"]
    corrupted = [CORRUPTED, "The capital of Spain is Madrid. The capital of Egypt is"]
    answer = [(" Berlin", " Rome"), (" Tokyo", " Cairo")]
    lengths = {len(t) for t in demo.prepare(corrupted).tokens}
    assert len(lengths) == 1  # equally long corrupted prompts: the final-position path applies

    def run():
        return patching_sweep(
            demo, clean, corrupted, "mlp", metric="logit_diff", answer=answer, positions=-1
        )

    fast, full = _both(monkeypatch, run)
    for a, b in zip(fast, full, strict=True):
        _close(list(a.recovery.values()), list(b.recovery.values()))


def _forward_widths(monkeypatch: pytest.MonkeyPatch, model: InterpretableModel) -> list[tuple]:
    """Every forward of ``model``'s module, as (rows, tokens) of its input."""
    cls, seen = type(model.model), []
    original = cls.__call__

    def counted(self, inputs, cache=None):  # keeps the ``cache`` parameter in sight
        seen.append(tuple(inputs.shape))
        return original(self, inputs, cache=cache)

    monkeypatch.setattr(cls, "__call__", counted)
    return seen


def test_final_position_rows_run_one_token_each(demo, monkeypatch):
    seen = _forward_widths(monkeypatch, demo)
    result = patching_sweep(demo, CLEAN, CORRUPTED, "mlp", positions=-1)
    rows = len(result.layers)
    # the clean and corrupted runs, the corrupted prefix once, then only final tokens
    assert sorted(seen[:3]) == [(1, 12), (1, 13), (1, 13)]
    assert all(tokens == 1 for _, tokens in seen[3:])
    assert sum(batch for batch, _ in seen[3:]) == rows


def test_other_positions_and_padded_pairs_take_the_full_path(demo, monkeypatch):
    seen = _forward_widths(monkeypatch, demo)
    patching_sweep(demo, CLEAN, CORRUPTED, "mlp", positions=[-2, -1])
    assert all(tokens == 13 for _, tokens in seen)
    seen.clear()
    # pairs whose corrupted prompts differ in length are right-padded: full path
    patching_sweep(demo, [CLEAN, "Paris is in"], [CORRUPTED, "Rome is in"], "mlp", positions=-1)
    assert all(tokens == seen[0][1] for _, tokens in seen)


def test_the_stored_prefix_is_never_written(demo):
    setup = patching.prepare_patching(demo, CLEAN, CORRUPTED, "mlp", None, "l2", None, -1)
    prefix = PrefixCache.of(demo, setup)
    assert prefix is not None
    arrays = [[s for s in state if isinstance(s, mx.array)] for _, state in prefix.entries]
    before = [[np.array(a.astype(mx.float32)) for a in entry] for entry in arrays]
    owners = mx.array([0, 0, 0])
    tokens = setup.corrupted.array[owners, -1:]
    first = prefix.final_logits(demo, tokens, owners, {})
    second = prefix.final_logits(demo, tokens, owners, {})
    assert mx.array_equal(first, second).item()
    for kept, (_, state) in zip(before, prefix.entries, strict=True):
        now = [np.array(s.astype(mx.float32)) for s in state if isinstance(s, mx.array)]
        assert all(np.array_equal(a, b) for a, b in zip(kept, now, strict=True))
