"""Lists of prompts and of (clean, corrupted) pairs: the logit lens, activation patching and
attribution patching run them as one right-padded batch, and every per-prompt (per-pair)
result equals what the same analysis gives one prompt (one pair) at a time, to 1e-4.

Checked on the demo model (llama) and on tiny random checkpoints of other architectures
(``mlxterp.checkpoints``): a different tokenizer, qk-norm (qwen3), learned absolute
positions and LayerNorm (gpt2)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import plotext
import pytest

from mlxterp import InputError, InterpretableModel
from mlxterp.attribution import AttributionResult, attribution_patching
from mlxterp.checkpoints import TINY
from mlxterp.lens import LensResult, lens, logit_lens
from mlxterp.patching import PatchingBatch, PatchingResult, activation_patching, patching_sweep

# Pairs of different lengths, within a pair and across pairs (token counts on the demo
# model: 6/6, 11/5, 2/5): the longer clean prompt, the longer corrupted one, equal lengths.
PAIRS = [
    ("The capital of France is", "The capital of Italy is"),
    ("The Eiffel Tower is located in the city of", "The Colosseum is in"),
    ("Hello", "Hello, how are you"),
]
CLEAN = [c for c, _ in PAIRS]
CORRUPTED = [k for _, k in PAIRS]
PROMPTS = [*CLEAN, "Paris"]
TOL = dict(rtol=1e-4, atol=1e-4)
OTHER_ARCHS = ["qwen3", "gpt2"]


@pytest.fixture(scope="module", params=["demo", *OTHER_ARCHS])
def model(request, checkpoint_dir) -> InterpretableModel:
    if request.param == "demo":
        return request.getfixturevalue("demo")
    return InterpretableModel(checkpoint_dir(request.param))


def answers(model: InterpretableModel) -> list[tuple[int, int]]:
    """One answer pair per prompt pair: the clean and corrupted prompts' first tokens that
    differ, as token ids (each architecture has its own tokenizer)."""
    out = []
    for clean, corrupted in PAIRS:
        a, b = model.encode(clean), model.encode(corrupted)
        k = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), 1)
        out.append((a[min(k, len(a) - 1)], b[min(k, len(b) - 1)]))
    return out


def close(got: object, want: object) -> None:
    np.testing.assert_allclose(np.asarray(got, float), np.asarray(want, float), **TOL)


# --------------------------------------------------------------------------- padding
@pytest.mark.parametrize("arch", TINY)
def test_right_padding_leaves_every_real_position_unchanged(arch, checkpoint_dir):
    """The claim the batching rests on, checked rather than assumed: a causal model's
    residual at a real position of a right-padded row equals the prompt's own run."""
    model = InterpretableModel(checkpoint_dir(arch))
    names = [model.layer_name(i) for i in range(model.num_layers)]
    batch = model.run(PROMPTS, capture=names)
    assert batch.lengths is not None and len(set(batch.lengths)) > 1  # really padded
    for row, (prompt, length) in enumerate(zip(PROMPTS, batch.lengths, strict=True)):
        alone = model.run(prompt, capture=names)
        for name in names:
            close(batch.activations[name][row, :length], alone.activations[name][0])
        close(batch.output[row, :length], alone.output[0])


# --------------------------------------------------------------------------- the lens
def test_lens_of_a_list_equals_the_lens_of_each_prompt(model):
    target = answers(model)[0][0]
    results = lens(model, PROMPTS, top_k=3, target=target)
    assert isinstance(results, list) and len(results) == len(PROMPTS)
    for prompt, got in zip(PROMPTS, results, strict=True):
        want = lens(model, prompt, top_k=3, target=target)
        assert isinstance(got, LensResult)
        assert got.tokens == want.tokens  # trimmed to the prompt's own tokens
        assert got.layers == want.layers and got.top_ids == want.top_ids
        assert got.top_strs == want.top_strs
        close(got.top_probs, want.top_probs)
        close(got.target_probs, want.target_probs)


@pytest.mark.parametrize("position", [None, -1, 0, 1])
def test_logit_lens_of_a_list_equals_each_prompt(model, position):
    results = logit_lens(model, PROMPTS, top_k=2, layers=[0, -1], position=position)
    assert isinstance(results, list) and len(results) == len(PROMPTS)
    for prompt, got in zip(PROMPTS, results, strict=True):
        want = logit_lens(model, prompt, top_k=2, layers=[0, -1], position=position)
        assert list(got) == list(want)
        cells_got = [c for layer in got.values() for c in np.ravel(layer).tolist()]
        for layer in want:
            flat_got = got[layer] if position is not None else [c for p in got[layer] for c in p]
            flat_want = want[layer] if position is not None else [c for p in want[layer] for c in p]
            assert [c[0] for c in flat_got] == [c[0] for c in flat_want]
            assert [c[2] for c in flat_got] == [c[2] for c in flat_want]
            close([c[1] for c in flat_got], [c[1] for c in flat_want])
        assert cells_got


def test_logit_lens_position_minus_one_is_each_prompts_last_token(demo):
    last = logit_lens(demo, PROMPTS, position=-1)
    full = logit_lens(demo, PROMPTS)
    for one, every in zip(last, full, strict=True):
        for layer, cells in one.items():
            assert [c[0] for c in cells] == [c[0] for c in every[layer][-1]]
            close([c[1] for c in cells], [c[1] for c in every[layer][-1]])


def test_the_lens_of_a_list_is_one_forward_and_one_projection(demo, monkeypatch):
    from mlxterp.unembed import Unembedder

    calls = {"forward": 0, "unembed": 0}
    forward, unembed_call = demo.forward, Unembedder.__call__

    def counting_forward(prepared):
        calls["forward"] += 1
        return forward(prepared)

    def counting_unembed(self, hidden):
        calls["unembed"] += 1
        return unembed_call(self, hidden)

    monkeypatch.setattr(demo, "forward", counting_forward)
    monkeypatch.setattr(Unembedder, "__call__", counting_unembed)
    lens(demo, PROMPTS, top_k=2)
    logit_lens(demo, PROMPTS, position=-1)
    assert calls == {"forward": 2, "unembed": 2}


def test_logit_lens_plot_of_a_list_draws_one_grid_per_prompt(demo, capsys):
    demo.logit_lens(CLEAN, plot=True, max_display_tokens=3)
    printed = plotext.uncolorize(capsys.readouterr().out)
    assert printed.count("Logit lens") == len(CLEAN)


def test_lens_list_errors(demo):
    with pytest.raises(InputError, match="position 5 is out of range: prompt 2 has 2 tokens"):
        logit_lens(demo, PROMPTS, position=5)
    with pytest.raises(InputError, match="strings only, or lists of token ids only"):
        lens(demo, ["The capital", [1, 2, 3]])
    with pytest.raises(InputError, match="strings only, or lists of token ids only"):
        lens(demo, [mx.array([1, 2, 3]), mx.array([1, 2])])
    with pytest.raises(InputError, match="input list is empty"):
        lens(demo, [])
    with pytest.raises(InputError, match="one prompt at a time, or a list of prompts"):
        lens(demo, mx.array([[1, 5, 9], [1, 7, 9]]))


def test_a_list_of_token_id_lists_is_a_list_of_prompts(demo):
    ids = [demo.encode(p) for p in PROMPTS]
    by_ids = lens(demo, ids, top_k=1)
    by_text = lens(demo, PROMPTS, top_k=1)
    assert [r.top_ids for r in by_ids] == [r.top_ids for r in by_text]
    one = lens(demo, ids[0], top_k=1)  # one list of ids stays one prompt
    assert isinstance(one, LensResult) and one.top_ids == by_ids[0].top_ids


# --------------------------------------------------------------------------- patching
def assert_same_sweep(got: PatchingResult, want: PatchingResult) -> None:
    assert got.layers == want.layers and got.positions == want.positions
    assert got.tokens == want.tokens and got.note == want.note
    assert (got.metric, got.component) == (want.metric, want.component)
    close(
        [got.clean_value, got.corrupted_value, got.baseline],
        [want.clean_value, want.corrupted_value, want.baseline],
    )
    close(list(got.values.values()), list(want.values.values()))
    # recovery as a fraction of the gap (it is printed in percent)
    close(np.array(list(got.recovery.values())) / 100, np.array(list(want.recovery.values())) / 100)
    assert (got.matrix is None) == (want.matrix is None)
    if got.matrix is not None:
        close(np.array(got.matrix) / 100, np.array(want.matrix) / 100)


@pytest.mark.parametrize(
    ("metric", "component", "by_position", "positions"),
    [
        ("l2", "mlp", False, None),
        ("kl", "attn", False, -1),
        ("logit_diff", "output", False, None),
        ("l2", "mlp", True, None),
        ("logit_diff", "attn", True, [-2, -1]),
    ],
)
def test_patching_sweep_over_pairs_equals_the_per_pair_loop(
    model, metric, component, by_position, positions
):
    answer = answers(model) if metric == "logit_diff" else None
    kwargs = dict(component=component, metric=metric, by_position=by_position)
    batch = patching_sweep(model, CLEAN, CORRUPTED, positions=positions, answer=answer, **kwargs)
    assert isinstance(batch, PatchingBatch) and len(batch) == len(PAIRS)
    for q, (clean, corrupted) in enumerate(PAIRS):
        one = patching_sweep(
            model,
            clean,
            corrupted,
            positions=positions,
            answer=answer[q] if answer else None,
            **kwargs,
        )
        assert isinstance(one, PatchingResult)
        assert_same_sweep(batch[q], one)


@pytest.mark.parametrize("batch_size", [1, 5])
def test_any_batch_size_gives_the_same_sweep(demo, batch_size):
    want = patching_sweep(demo, CLEAN, CORRUPTED, by_position=True)
    got = patching_sweep(demo, CLEAN, CORRUPTED, by_position=True, batch_size=batch_size)
    for a, b in zip(got, want, strict=True):
        assert_same_sweep(a, b)


def test_one_answer_pair_serves_every_prompt_pair(demo):
    answer = (" Paris", " Rome")
    batch = patching_sweep(demo, CLEAN, CORRUPTED, metric="logit_diff", answer=answer)
    for q, (clean, corrupted) in enumerate(PAIRS):
        one = patching_sweep(demo, clean, corrupted, metric="logit_diff", answer=answer)
        assert_same_sweep(batch[q], one)


def test_the_batched_sweep_is_one_clean_and_one_corrupted_pass_then_few_forwards(demo, monkeypatch):
    """Every pair x layer patched run shares batched forwards with the other pairs'."""
    forwards = []
    forward = demo.forward

    def counting_forward(prepared):
        forwards.append(prepared.array.shape[0])
        return forward(prepared)

    monkeypatch.setattr(demo, "forward", counting_forward)
    patching_sweep(demo, CLEAN, CORRUPTED, batch_size=16)
    rows = len(PAIRS) * demo.num_layers
    assert forwards[:2] == [len(PAIRS), len(PAIRS)]  # clean batch, corrupted batch
    assert forwards[2:] == [16] * (rows // 16)


def test_mean_recovery_leaves_out_pairs_with_nothing_to_recover(demo):
    clean = [*CLEAN, "Hello"]
    corrupted = [*CORRUPTED, "Hello"]  # identical: no gap, a note
    batch = patching_sweep(demo, clean, corrupted)
    assert batch[-1].note and all(r.note is None for r in batch[:-1])
    for layer in batch.layers:
        expected = np.mean([r.recovery[layer] for r in batch[:-1]])
        assert batch.mean_recovery[layer] == pytest.approx(expected)
    summary = batch.to_summary()
    assert summary["layers"] == batch.layers
    assert summary["mean_recovery"] == [batch.mean_recovery[i] for i in batch.layers]
    assert summary["pairs"] == [r.to_summary() for r in batch]
    assert "Mean recovery" in plotext.uncolorize(batch.chart(color=False))
    alone = patching_sweep(demo, ["Hello"], ["Hello"])
    assert alone.mean_recovery == dict.fromkeys(alone.layers, 0.0)


def test_activation_patching_returns_one_result_per_pair(demo, capsys):
    per_pair = activation_patching(demo, CLEAN, CORRUPTED, plot=True)
    assert "Mean recovery % over 3 pairs" in plotext.uncolorize(capsys.readouterr().out)
    sweep = patching_sweep(demo, CLEAN, CORRUPTED)
    assert per_pair == [r.recovery for r in sweep]
    grids = demo.activation_patching(CLEAN, CORRUPTED, by_position=True)
    assert isinstance(grids, list) and all(isinstance(g, PatchingResult) for g in grids)
    # one pair: the return types of before
    assert isinstance(activation_patching(demo, CLEAN[0], CORRUPTED[0]), dict)
    one = activation_patching(demo, CLEAN[0], CORRUPTED[0], by_position=True)
    assert isinstance(one, PatchingResult)


def test_patching_list_errors(demo):
    with pytest.raises(InputError, match="holds 3 prompts and corrupted_text 2"):
        patching_sweep(demo, CLEAN, CORRUPTED[:2])
    with pytest.raises(InputError, match="clean_text is an empty list"):
        patching_sweep(demo, [], [])
    with pytest.raises(InputError, match="clean_text is a list of prompts but the other is one"):
        patching_sweep(demo, CLEAN, CORRUPTED[0])
    with pytest.raises(InputError, match="corrupted_text is a list of prompts but the other"):
        patching_sweep(demo, CLEAN[0], CORRUPTED)
    with pytest.raises(InputError, match="strings only, or lists of token ids only"):
        patching_sweep(demo, [mx.array([[1, 5, 9]]), "Hello"], CORRUPTED[:2])
    with pytest.raises(InputError, match="holds 2 answer pairs for 3 prompt pairs"):
        patching_sweep(
            demo, CLEAN, CORRUPTED, metric="logit_diff", answer=[(" Paris", " Rome")] * 2
        )
    with pytest.raises(InputError, match="position -3 cannot be patched: pair 2's corrupted"):
        patching_sweep(demo, CLEAN, CORRUPTED, positions=-3)  # pair 2 shares 2 tokens
    with pytest.raises(InputError, match="give lists of clean and corrupted prompts"):
        patching_sweep(demo, mx.array([[1, 5, 9], [1, 5, 9]]), mx.array([[1, 7, 9]]))
    with pytest.raises(InputError, match="clean_text is an empty list"):
        attribution_patching(demo, [], [], answer=(" Paris", " Rome"))


# --------------------------------------------------------------------------- attribution
@pytest.mark.parametrize(("metric", "component"), [("logit_diff", "output"), ("kl", "mlp")])
def test_attribution_over_pairs_equals_the_per_pair_loop(model, metric, component):
    answer = answers(model) if metric == "logit_diff" else None
    results = attribution_patching(
        model, CLEAN, CORRUPTED, component=component, metric=metric, answer=answer
    )
    assert isinstance(results, list) and len(results) == len(PAIRS)
    for q, (clean, corrupted) in enumerate(PAIRS):
        one = attribution_patching(
            model,
            clean,
            corrupted,
            component=component,
            metric=metric,
            answer=answer[q] if answer else None,
        )
        got = results[q]
        assert isinstance(got, AttributionResult) and isinstance(one, AttributionResult)
        assert (got.layers, got.positions, got.tokens) == (one.layers, one.positions, one.tokens)
        close(got.scores, one.scores)
        close([got.clean_value, got.corrupted_value], [one.clean_value, one.corrupted_value])


def test_attribution_over_pairs_is_one_forward_and_backward(demo, monkeypatch):
    forwards = []
    forward = demo.forward

    def counting_forward(prepared):
        forwards.append(prepared.array.shape[0])
        return forward(prepared)

    monkeypatch.setattr(demo, "forward", counting_forward)
    demo.attribution_patching(CLEAN, CORRUPTED, answer=(" Paris", " Rome"))
    assert forwards == [len(PAIRS), len(PAIRS)]  # the clean batch, the corrupted batch
