"""Attribution patching: its gradients against finite differences, its ranking against real
activation patching, and its result object."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from conftest import build_tiny_llama

from mlxterp import InputError, InterpretableModel
from mlxterp.attribution import AttributionResult, attribution_patching
from mlxterp.metrics import Metric
from mlxterp.patching import patching_sweep

CLEAN = [1, 5, 9, 13, 17, 21]
CORRUPT = [1, 7, 9, 13, 17, 21]


@pytest.fixture(scope="module")
def llama() -> InterpretableModel:
    return InterpretableModel(build_tiny_llama(seed=1))


@pytest.fixture(scope="module")
def answer(llama) -> tuple[int, int]:
    """The clean and the corrupted run's own top tokens."""
    with llama.trace(CLEAN) as clean:
        pass
    with llama.trace(CORRUPT) as corrupted:
        pass
    return mx.argmax(clean.output[0, -1]).item(), mx.argmax(corrupted.output[0, -1]).item()


@pytest.mark.parametrize("metric", ["logit_diff", "kl", "l2"])
@pytest.mark.parametrize("component,layer", [("attn", 1), ("mlp", 0), ("output", 2)])
def test_scores_match_finite_differences(llama, answer, metric, component, layer):
    """Each score is d metric / d eps of corrupted + eps * (clean - corrupted) at one cell."""
    result = attribution_patching(
        llama, CLEAN, CORRUPT, component=component, metric=metric, answer=answer
    )
    name = llama.layer_name(layer, component)
    with llama.trace(CLEAN) as clean:
        pass
    with llama.trace(CORRUPT, capture=[name]) as corrupted:
        pass
    score = Metric(metric, clean.output[0, -1], answer)
    direction = clean.activations[name] - corrupted.activations[name]
    eps = 1e-2
    for position in (2, 5):
        mask = (mx.arange(len(CORRUPT)) == position)[None, :, None]

        def nudged(step, mask=mask):
            shift = mx.where(mask, step * direction, 0.0)
            with llama.trace(CORRUPT, interventions={name: lambda x: x + shift}) as run:
                pass
            return score(run.output[:, -1]).item()

        estimate = (nudged(eps) - nudged(-eps)) / (2 * eps)
        got = result.scores[result.layers.index(layer)][result.positions.index(position)]
        assert got == pytest.approx(estimate, rel=2e-2, abs=1e-4)


@pytest.mark.parametrize("component", ["output", "mlp", "attn"])
def test_ranks_the_same_top_cell_as_real_patching(llama, answer, component):
    approx = attribution_patching(llama, CLEAN, CORRUPT, component=component, answer=answer)
    real = patching_sweep(
        llama,
        CLEAN,
        CORRUPT,
        component=component,
        metric="logit_diff",
        answer=answer,
        by_position=True,
    )
    real_matrix = np.array(real.matrix)
    i, j = np.unravel_index(real_matrix.argmax(), real_matrix.shape)
    layer, position, _ = approx.top(1)[0]
    assert (layer, position) == (real.layers[i], real.positions[j])
    estimated = np.array(approx.estimated_recovery)
    assert np.corrcoef(estimated.ravel(), real_matrix.ravel())[0, 1] > 0.9


def test_different_lengths_score_only_the_shared_positions(llama, answer):
    result = attribution_patching(llama, CLEAN, [1, 7, 13, 17, 21], component="mlp", answer=answer)
    assert result.positions == [0, 1, 2, 3, 4]
    assert np.array(result.scores).shape == (llama.num_layers, 5)
    longer = attribution_patching(llama, [1, 7, 13, 17, 21], CLEAN, component="mlp", answer=answer)
    assert longer.positions == [1, 2, 3, 4, 5]
    assert np.isfinite(np.array(longer.scores)).all()


def test_result_helpers_and_summary(llama, answer):
    result = attribution_patching(
        llama, CLEAN, CORRUPT, component="attn", answer=answer, layers=[0, 2]
    )
    assert isinstance(result, AttributionResult) and result.layers == [0, 2]
    assert result.per_layer[2] == pytest.approx(sum(result.scores[1]))
    gap = result.clean_value - result.corrupted_value
    assert gap > 0  # each run's own top token wins its logit difference
    assert result.estimated_recovery[0][3] == pytest.approx(result.scores[0][3] / gap * 100)
    top = result.top(3)
    cells = sorted((s for row in result.scores for s in row), reverse=True)
    assert [score for _, _, score in top] == cells[:3]
    summary = result.to_summary()
    json.dumps(summary)
    assert summary["scores"] == result.scores and summary["tokens"][0] == "1"
    with pytest.raises(InputError, match="positive"):
        result.top(0)


def test_model_method_and_bad_input(llama, answer):
    by_method = llama.attribution_patching(CLEAN, CORRUPT, component="mlp", answer=answer)
    direct = attribution_patching(llama, CLEAN, CORRUPT, component="mlp", answer=answer)
    np.testing.assert_allclose(by_method.scores, direct.scores, atol=1e-6)
    with pytest.raises(InputError, match="answer="):
        attribution_patching(llama, CLEAN, CORRUPT)
    with pytest.raises(KeyError, match="Did you mean"):
        attribution_patching(llama, CLEAN, CORRUPT, component="mpl", answer=answer)
