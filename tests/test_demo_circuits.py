"""Every circuit claim of docs/demo-model.md ("Circuits"), checked on the shipped weights with
the project's own tools: head detectors, head patching, ablation, direct logit attribution,
path patching and causal tracing."""

from __future__ import annotations

import numpy as np
import pytest
from test_demo_model import copy_losses

from mlxterp import interventions as iv
from mlxterp.causal_tracing import trace_facts
from mlxterp.demo_circuits import (
    INDUCTION_HEADS,
    IOI_EARLY_SUBJECT_HEAD,
    IOI_SUBJECT_SUPPRESSORS,
    PREVIOUS_TOKEN_HEADS,
    ioi_pair,
    repeated_pair,
)
from mlxterp.demo_facts import CAPITALS, NAMES, ioi_test_prompts
from mlxterp.detectors import detect_heads


def head_name(layer: int, head: int) -> str:
    return f"layers.{layer}.attn.heads.{head}"


def ranked(grid) -> list[tuple[int, int]]:
    """(layer, head) pairs of a layers x heads grid, largest value first."""
    g = np.asarray(grid)
    order = np.argsort(-g, axis=None)
    return [(int(i // g.shape[1]), int(i % g.shape[1])) for i in order]


def copy_ratio(demo, heads=(), length: int = 30) -> float:
    """Second-copy / first-copy loss on repeated random runs with ``heads`` zeroed."""
    ablate = {head_name(*h): iv.zero_out for h in heads}
    first, second = copy_losses(demo, length, seed=77, interventions=ablate)
    return second / first


def final_attention(demo, prompt, heads) -> dict[tuple[int, int], tuple[float, float, float]]:
    """Each head's attention from the last token to the IO, first-S and second-S tokens."""
    words = [demo.tokenizer.decode([t]).strip() for t in demo.tokenizer.encode(prompt.text)]
    io = words.index(prompt.io)
    s1, s2 = (i for i, w in enumerate(words) if w == prompt.s)
    patterns = demo.attention_patterns(prompt.text, layers=sorted({layer for layer, _ in heads}))
    out = {}
    for layer, head in heads:
        row = np.array(patterns[layer][0, head, -1])
        out[(layer, head)] = (float(row[io]), float(row[s1]), float(row[s2]))
    return out


@pytest.fixture(scope="module")
def detected(demo):
    return detect_heads(demo, ["previous_token", "induction"], seq_len=40, batch=8, seed=3)


@pytest.mark.parametrize(
    "detection, named",
    [("previous_token", PREVIOUS_TOKEN_HEADS), ("induction", INDUCTION_HEADS)],
)
def test_the_named_heads_are_those_the_detectors_score_at_least_0_6(detected, detection, named):
    scored = [(layer, head) for layer, head, score in detected.top(detection, 64) if score >= 0.6]
    assert set(scored) == set(named), detected.top(detection, len(named) + 2)
    assert scored[0] == named[0]


def test_head_patching_on_repeated_runs_ranks_the_induction_heads_first(demo):
    grids = []
    for seed in range(5, 9):
        clean, corrupted, answer = repeated_pair(demo, seed=seed)
        found = demo.head_patching(clean, corrupted, metric="logit_diff", answer=list(answer))
        grids.append(found.recovery)
    order = ranked(np.mean(grids, axis=0))
    assert order[0] == INDUCTION_HEADS[0]
    assert set(order[: len(INDUCTION_HEADS)]) == set(INDUCTION_HEADS)


def test_no_single_induction_head_is_needed_but_all_together_are(demo):
    assert copy_ratio(demo) < 0.1
    for head in INDUCTION_HEADS:
        assert copy_ratio(demo, [head]) < 0.1, head
    assert copy_ratio(demo, INDUCTION_HEADS) > 0.8


def test_ablating_the_previous_token_heads_stops_copying(demo):
    assert copy_ratio(demo, PREVIOUS_TOKEN_HEADS) > 0.7


def test_the_subject_suppressors_write_the_answer_directly(demo):
    grids = []
    for p in ioi_test_prompts()[:24]:
        found = demo.direct_logit_attribution(p.text, target=" " + p.io, baseline=" " + p.s)
        grids.append(found.head_matrix())
    order = ranked(np.mean(grids, axis=0))
    assert order[:2] == list(IOI_SUBJECT_SUPPRESSORS[:2])
    assert set(IOI_SUBJECT_SUPPRESSORS) <= set(order[:8])


def test_the_subject_suppressors_attend_to_the_repeated_name_and_lower_it(demo):
    attention, on_io, on_s = [], [], []
    for p in ioi_test_prompts()[:24]:
        attention.append(list(final_attention(demo, p, IOI_SUBJECT_SUPPRESSORS).values()))
        for target, into in ((p.io, on_io), (p.s, on_s)):
            found = demo.direct_logit_attribution(p.text, target=" " + target)
            matrix = np.array(found.head_matrix())
            into.append([matrix[h] for h in IOI_SUBJECT_SUPPRESSORS])
    to_io, to_s1, to_s2 = np.mean(attention, axis=0).T
    assert (to_s2 >= 0.8).all() and (to_io < 0.05).all() and (to_s1 < 0.05).all()
    io_effect, s_effect = np.mean(on_io, axis=0), np.mean(on_s, axis=0)
    assert (s_effect < 0).all() and (-s_effect > np.abs(io_effect)).all(), (io_effect, s_effect)


def test_path_patching_through_the_subject_suppressors_carries_the_answer(demo):
    for index in range(4):
        clean, corrupted, answer = ioi_pair(index)
        found = demo.path_patching(
            clean,
            corrupted,
            senders=[head_name(*h) for h in IOI_SUBJECT_SUPPRESSORS],
            metric="logit_diff",
            answer=list(answer),
        )
        assert found.effect >= 15, found.to_summary()


def test_head_patching_the_abc_corruption_finds_the_early_subject_head(demo):
    grids = []
    for index in range(8):
        clean, corrupted, answer = ioi_pair(index)
        found = demo.head_patching(clean, corrupted, metric="logit_diff", answer=list(answer))
        grids.append(found.recovery)
    assert ranked(np.mean(grids, axis=0))[0] == IOI_EARLY_SUBJECT_HEAD
    attention = [
        final_attention(demo, p, [IOI_EARLY_SUBJECT_HEAD])[IOI_EARLY_SUBJECT_HEAD]
        for p in ioi_test_prompts()[:24]
    ]
    to_io, to_s1, to_s2 = np.mean(attention, axis=0)
    assert to_s2 > 5 * max(to_io, to_s1)


def test_causal_tracing_moves_the_capital_from_the_subject_to_the_last_token(demo):
    facts = [(f"The capital of {c} is", c, f" {x}") for c, x in CAPITALS.items()]
    found = trace_facts(demo, facts)
    total = found.total_effect
    subject = np.array(found.indirect["last subject token"]) / total
    last = np.array(found.indirect["last token"]) / total
    assert found.p_clean > 0.95 and total > 0.5
    assert (subject[:5] > 0.9).all() and (last[:5] < 0.1).all()
    assert (subject[11:] < 0.1).all() and (last[11:] > 0.9).all()


def test_ioi_pair_corrupts_only_the_repeated_subject():
    clean, corrupted, (io, s) = ioi_pair(3)
    assert clean.count(s.strip()) == 2 and corrupted.count(s.strip()) == 1
    assert clean.count(io.strip()) == corrupted.count(io.strip()) == 1
    (third,) = set(corrupted.split()) - set(clean.split())
    assert third.strip(",.") in NAMES


def test_repeated_pair_has_something_to_copy_only_when_clean(demo):
    clean, corrupted, (copy, other) = repeated_pair(demo, length=10, shown=4)
    assert len(clean) == len(corrupted) == 1 + 10 + 4
    assert clean[1 + 10 : 1 + 14] == clean[1:5] and corrupted[-4:] == clean[-4:]
    assert copy == clean[5] and other == corrupted[5]
