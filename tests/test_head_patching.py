"""Head-level activation and attribution patching (issue 15, parts 2 and 3)."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from mlxterp import InputError, InterpretableModel
from mlxterp.attribution import attribution_patching
from mlxterp.demo_facts import CAPITALS
from mlxterp.head_patching import HeadPatchingResult, head_attribution, head_patching
from mlxterp.patching import patching_sweep

FRANCE, GERMANY = "The capital of France is", "The capital of Germany is"
ANSWER = (" Paris", " Berlin")


@pytest.fixture(scope="module", params=["demo", "llama", "gpt2"])
def matrix_model(request, demo, checkpoint_dir):
    """The demo model, a grouped-query llama (4 query heads, 2 key/value heads) and gpt2
    (fused QKV projection, biased attention)."""
    if request.param == "demo":
        return demo, "logit_diff", ANSWER
    return InterpretableModel(checkpoint_dir(request.param)), "l2", None


def test_each_cell_is_the_single_head_patch_and_all_heads_the_attention_output(matrix_model):
    model, metric, answer = matrix_model
    grid = head_patching(model, FRANCE, GERMANY, metric=metric, answer=answer, all_heads=True)
    assert isinstance(grid, HeadPatchingResult)
    assert grid.layers == list(range(model.num_layers)) and grid.heads == [0, 1, 2, 3]
    for h in grid.heads:
        single = patching_sweep(
            model, FRANCE, GERMANY, f"attn.heads.{h}", None, metric, None, answer
        )
        for i, layer in enumerate(grid.layers):
            assert grid.recovery[i][h] == pytest.approx(single.recovery[layer], abs=1e-4)
    attn = patching_sweep(model, FRANCE, GERMANY, "attn", None, metric, None, answer)
    assert grid.all_heads == pytest.approx([attn.recovery[i] for i in grid.layers], abs=1e-4)
    assert grid.clean_value == pytest.approx(attn.clean_value, abs=1e-5)
    assert grid.corrupted_value == pytest.approx(attn.corrupted_value, abs=1e-5)


def test_by_position_cells_patch_one_head_at_one_position(demo):
    layers, heads = [0, 2, 9], [1, 3]
    grid = head_patching(
        demo, FRANCE, GERMANY, layers=layers, heads=heads, by_position=True, batch_size=5
    )
    assert grid.by_position is not None and grid.positions == [0, 1, 2, 3, 4, 5]
    for k, h in enumerate(heads):
        ref = patching_sweep(
            demo, FRANCE, GERMANY, f"attn.heads.{h}", layers, "l2", by_position=True
        )
        assert ref.matrix is not None
        for i in range(len(layers)):
            assert grid.by_position[i][k] == pytest.approx(ref.matrix[i], abs=1e-4)
            assert grid.recovery[i][k] == pytest.approx(ref.recovery[layers[i]], abs=1e-4)


def test_lists_of_pairs_give_each_pair_its_own_grid(demo):
    clean = [FRANCE, "Paris is the capital of"]
    corrupted = [GERMANY, "Berlin is the capital city of"]  # another length: right-aligned
    batch = head_patching(demo, clean, corrupted, layers=[0, 1, 2])
    assert isinstance(batch, list) and len(batch) == 2
    for pair, result in zip(zip(clean, corrupted, strict=True), batch, strict=True):
        alone = head_patching(demo, *pair, layers=[0, 1, 2])
        assert not isinstance(alone, list)
        assert np.allclose(result.recovery, alone.recovery, atol=1e-4)
        assert result.positions == alone.positions and result.tokens == alone.tokens


def test_summary_heatmap_top_and_errors(demo):
    grid = head_patching(
        demo,
        FRANCE,
        GERMANY,
        layers=[0, 1],
        heads=3,
        metric="logit_diff",
        answer=ANSWER,
        all_heads=True,
    )
    summary = grid.to_summary()
    assert summary["heads"] == [3] and summary["layers"] == [0, 1]
    assert summary["recovery"] == grid.recovery and summary["all_heads"] == grid.all_heads
    assert "by_position" not in summary and "note" not in summary
    best = max(((row[0], layer) for layer, row in zip((0, 1), grid.recovery, strict=True)))
    assert grid.top(1)[0] == (best[1], 3, best[0])
    text = grid.heatmap(color=False)
    assert "rows: layers, columns: heads" in text and "L1" in text and "H3" in text
    for bad in ({"heads": 4}, {"heads": [-1]}, {"heads": "0"}, {"batch_size": 0}):
        with pytest.raises(InputError):
            head_patching(demo, FRANCE, GERMANY, **bad)
    same = head_patching(demo, FRANCE, FRANCE, layers=[0], heads=[0])
    assert same.note is not None and same.recovery == [[0.0]]


def test_head_attribution_summed_over_heads_is_the_attention_estimate(matrix_model):
    """Each head's output adds into the attention output, so the gradients agree and the
    per-head terms sum to the attention-output term of attribution patching."""
    model, metric, answer = matrix_model
    metric = "kl" if answer is None else metric
    heads = head_attribution(model, FRANCE, GERMANY, metric=metric, answer=answer)
    attn = attribution_patching(
        model, FRANCE, GERMANY, component="attn", metric=metric, answer=answer
    )
    summed = np.asarray(heads.scores).sum(axis=1)  # layers x positions
    scale = max(1e-6, float(np.abs(attn.scores).max()))
    assert np.abs(summed - np.asarray(attn.scores)).max() / scale < 1e-4
    assert heads.corrupted_value == pytest.approx(attn.corrupted_value, abs=1e-5)


def test_head_attribution_orders_the_heads_like_real_patching(demo):
    """Measured on 8 capital pairs of the demo model (docs/circuits.md): Spearman 0.81-0.99,
    the top real head is attribution's top head in 5 of 8 pairs (in England->Russia two
    heads nearly tie, 10.4% and 10.1%, and the estimate orders them the other way) and the
    real top 3 are within attribution's top 5 in 6 of 8.  The bound on the top 3 leaves a
    margin."""
    items = list(CAPITALS.items())[:9]
    clean = [f"The capital of {c} is" for c, _ in items[:8]]
    corrupted = [f"The capital of {c} is" for c, _ in items[1:]]
    answers = [(f" {a}", f" {b}") for (_, a), (_, b) in pairwise(items)]
    real = head_patching(demo, clean, corrupted, metric="logit_diff", answer=answers)
    estimate = head_attribution(demo, clean, corrupted, answer=answers)
    top1 = top3 = 0
    for patched, est in zip(real, estimate, strict=True):
        assert est.rank_correlation(patched) > 0.8
        order = [(layer, head) for layer, head, _ in est.top(5)]
        best = [(layer, head) for layer, head, _ in patched.top(3)]
        top1 += order[0] == best[0]
        top3 += all(cell in order for cell in best)
    assert top1 >= 5 and top3 >= 5


def test_attribution_results_and_rank_correlation(demo):
    est = head_attribution(
        demo, FRANCE, GERMANY, layers=[0, 3], heads=[3, 0], answer=ANSWER, positions=[-2, -1]
    )
    assert np.asarray(est.scores).shape == (2, 2, 2) and est.heads == [3, 0]
    assert est.matrix == [[sum(cell) for cell in row] for row in est.scores]
    assert est.to_summary()["scores"] == est.scores
    assert "attribution" in est.heatmap(color=False)
    other = head_patching(demo, FRANCE, GERMANY, layers=[0, 3], heads=[3, 0])
    assert -1.0 <= est.rank_correlation(other) <= 1.0
    with pytest.raises(InputError):
        est.rank_correlation(head_patching(demo, FRANCE, GERMANY, layers=[0], heads=[3]))
    assert est.positions == [4, 5]
