"""Head detectors (issue 15, part 6): synthetic patterns that implement a behaviour score 1,
uniform attention scores low, and every query head of every architecture gets its score."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InputError, InterpretableModel
from mlxterp.attention import attention_patterns
from mlxterp.checkpoints import ARCHITECTURES
from mlxterp.detectors import (
    DETECTIONS,
    detect_heads,
    detection_pattern,
    detection_score,
    repeated_sequences,
)

HALF = 7
TOKENS = [1] + list(range(10, 10 + HALF)) * 2  # BOS, then a half repeated once


def _implementing(detection: str, tokens: list[int]) -> np.ndarray:
    """A causal attention pattern that does exactly ``detection`` wherever it is defined
    (and attends to itself elsewhere)."""
    expected = detection_pattern(detection, tokens)
    n = len(tokens)
    pattern = np.eye(n)
    defined = expected.sum(-1) > 0
    pattern[defined] = expected[defined] / expected[defined].sum(-1, keepdims=True)
    assert np.allclose(np.triu(pattern, 1), 0)  # causal
    return pattern


def _uniform(n: int) -> np.ndarray:
    return np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]


def test_detection_patterns_mark_the_expected_keys():
    n = len(TOKENS)
    prev = detection_pattern("previous_token", TOKENS)
    assert prev[5, 4] == 1 and prev.sum() == n - 1
    dup = detection_pattern("duplicate_token", TOKENS)
    assert np.argwhere(dup).tolist() == [[q, q - HALF] for q in range(1 + HALF, n)]
    ind = detection_pattern("induction", TOKENS)
    assert np.argwhere(ind).tolist() == [[q, q - HALF + 1] for q in range(1 + HALF, n)]
    first = detection_pattern("first_token", TOKENS)
    assert first[:, 0].tolist() == [0] + [1] * (n - 1) and first.sum() == n - 1


@pytest.mark.parametrize("detection", DETECTIONS)
def test_a_pattern_implementing_the_behaviour_scores_one(detection):
    pattern = _implementing(detection, TOKENS)
    assert detection_score(pattern, detection_pattern(detection, TOKENS)) == pytest.approx(1.0)
    for other in DETECTIONS:
        if other != detection and not {detection, other} <= {"previous_token", "first_token"}:
            score = detection_score(pattern, detection_pattern(other, TOKENS))
            assert score < 0.2, (detection, other)


@pytest.mark.parametrize("detection", DETECTIONS)
def test_uniform_attention_scores_low(detection):
    n = len(TOKENS)
    expected = detection_pattern(detection, TOKENS)
    score = detection_score(_uniform(n), expected)
    defined = np.flatnonzero(expected.sum(-1))
    assert score == pytest.approx(np.mean(1.0 / (defined + 1)))  # 1/(i+1) per defined row
    assert score < 0.25


def test_batched_scores_average_sequences_and_keep_heads():
    n = len(TOKENS)
    # two sequences x two heads: head 0 induction, head 1 uniform
    ind = _implementing("induction", TOKENS)
    stack = np.stack([np.stack([ind, _uniform(n)])] * 2)
    scores = detection_score(stack, detection_pattern("induction", TOKENS))
    assert scores.shape == (2,)
    assert scores[0] == pytest.approx(1.0) and scores[1] < 0.2
    # a detection pattern per sequence
    per_seq = np.stack([detection_pattern("induction", TOKENS)] * 2)
    assert np.allclose(detection_score(stack, per_seq), scores)


def test_exclusions_score_the_remaining_mass():
    n = len(TOKENS)
    # half the mass on BOS, half on the previous token
    pattern = np.zeros((n, n))
    pattern[0, 0] = 1
    pattern[1, 0] = 1
    for q in range(2, n):
        pattern[q, 0] = pattern[q, q - 1] = 0.5
    prev = detection_pattern("previous_token", TOKENS)
    assert detection_score(pattern, prev) == pytest.approx((1 + 0.5 * (n - 2)) / (n - 1))
    # without the first key, previous-token queries from 2 on get all of what remains
    assert detection_score(pattern, prev, exclude_first=True) == pytest.approx(1.0)
    custom = np.eye(n)
    assert detection_score(np.eye(n), custom) == pytest.approx(1.0)
    with pytest.raises(InputError, match="expects no key"):
        detection_score(np.eye(n), custom, exclude_current=True)


def test_bad_inputs_are_refused(demo):
    with pytest.raises(InputError, match="unknown detection"):
        detection_pattern("copying", TOKENS)
    with pytest.raises(InputError, match="must be"):
        detection_score(np.eye(4), np.eye(3))
    with pytest.raises(InputError, match="unknown detection"):
        detect_heads(demo, detections=["induction", "copying"])
    with pytest.raises(InputError, match="seq_len"):
        detect_heads(demo, seq_len=1)
    with pytest.raises(InputError, match="this result has"):
        detect_heads(demo).heatmap("copying")


def test_demo_model_scores_and_renders(demo):
    result = detect_heads(demo, batch=2, seq_len=16)
    assert result.layers == list(range(demo.num_layers))
    summary = result.to_summary()
    for name in DETECTIONS:
        grid = np.array(summary["scores"][name])
        assert grid.shape == (demo.num_layers, 4)
        assert ((grid >= 0) & (grid <= 1 + 1e-6)).all()
    # the demo model has strong previous-token heads (layer 2 head 2 among them)
    assert result.top("previous_token", 1)[0][2] > 0.6
    rows = result.tokens
    assert len(rows) == 2 and rows[0][0] == demo.tokenizer.bos_token_id
    assert rows[0][1:17] == rows[0][17:] and len(set(rows[0][1:17])) == 16
    assert rows == repeated_sequences(demo, 16, 2, 0)  # seeded
    text = result.heatmap("previous_token", color=False)
    assert "rows: layers, columns: heads" in text and "L15" in text and "H3" in text


ARCHS = [a for a in ARCHITECTURES if a != "medium_llama"]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_query_head_is_scored_from_its_own_pattern(arch, checkpoint_dir):
    """Scores equal a direct read of the attention weights (query i's weight on key i-1,
    averaged), one per query head, grouped-query models included."""
    model = InterpretableModel(checkpoint_dir(arch))
    result = detect_heads(model, batch=2, seq_len=8, seed=3)
    patterns = attention_patterns(model, mx.array(result.tokens))
    for layer in result.layers:
        weights = np.array(patterns[layer])  # (batch, query heads, q, k)
        assert weights.shape[1] == 4 == len(result.scores["previous_token"][layer])
        n = weights.shape[-1]
        prev = weights[:, :, np.arange(1, n), np.arange(n - 1)].mean(axis=(0, 2))
        first = weights[:, :, 1:, 0].mean(axis=(0, 2))
        half = (n - 1) // 2
        q = np.arange(1 + half, n)
        dup = weights[:, :, q, q - half].mean(axis=(0, 2))
        ind = weights[:, :, q, q - half + 1].mean(axis=(0, 2))
        for name, direct in (
            ("previous_token", prev),
            ("first_token", first),
            ("duplicate_token", dup),
            ("induction", ind),
        ):
            assert np.allclose(result.scores[name][layer], direct, atol=1e-6), (name, layer)
    # heads sharing keys (grouped-query) still differ: each query head has its own score
    assert len({round(s, 6) for s in result.scores["previous_token"][0]}) == 4


def test_tokens_are_drawn_from_rows_the_embedding_has(tiny_llama, demo):
    """Regression: with a tokenizer larger than the embedding (the demo's 1168 tokens on a
    128-row model) the sequences drew ids the model refuses; now from the smaller of the
    two, and a model without a tokenizer draws from its config's vocabulary."""
    model = InterpretableModel(tiny_llama.model, tokenizer=demo.tokenizer)
    result = detect_heads(model, seq_len=24, batch=3)
    assert max(max(row) for row in result.tokens) < 128
    bare = detect_heads(tiny_llama, seq_len=8, batch=1)
    assert len(bare.tokens[0]) == 16  # no BOS without a tokenizer
