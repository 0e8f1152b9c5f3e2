"""Causal tracing (issue 15, part 7): the batched restored runs equal a naive per-cell loop,
identities that hold whatever the model knows, and the dataset aggregation."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InputError, InterpretableModel
from mlxterp import interventions as iv
from mlxterp.causal_tracing import (
    CATEGORIES,
    categories,
    causal_trace,
    embedding_std,
    subject_range,
    trace_facts,
    window_layers,
)

PROMPT = "The capital of France is"  # <s> The capital of France is: France is token 4


def naive(model, result, prompt, noise=3.0, seed=0):
    """Every cell of ``result`` recomputed by its own forward, through the public
    interventions: the noise added to the subject's embeddings, the clean value of each
    site of the window replaced at the one position."""
    ids = model.encode(prompt) if isinstance(prompt, str) else list(prompt)
    embed = model.unembedder.embed_name
    start, end = result.subject
    hidden = model.hidden_size
    draw = np.random.default_rng(seed).standard_normal((end - start, hidden))
    offsets = np.zeros((len(ids), hidden), dtype=np.float32)
    offsets[start:end] = draw * noise * embedding_std(model)
    component = None if result.component == "hidden" else result.component
    sites = {i: model.layer_name(i, component) for i in range(model.num_layers)}
    clean = model.run(ids, capture=list(sites.values()))
    cells = []
    for layer in result.layers:
        row = []
        for p in result.positions:
            fns = {embed: iv.add_vector(mx.array(offsets))}
            for i in window_layers(layer, result.window, model.num_layers):
                fns[sites[i]] = iv.replace_with(clean.activations[sites[i]], positions=[p])
            out = model.run(ids, interventions=fns, capture=[]).output
            row.append(mx.softmax(out[0, -1].astype(mx.float32))[result.answer_id].item())
        cells.append(row)
    return np.array(cells)


@pytest.mark.parametrize(
    ("component", "window", "batch_size"),
    [(None, None, None), ("mlp", 3, 2), ("attn", 10, None), (None, 2, 5)],
    ids=["hidden", "mlp-window3", "attn-window10", "hidden-window2"],
)
def test_batched_trace_equals_the_naive_loop(demo, component, window, batch_size):
    result = causal_trace(
        demo,
        PROMPT,
        "France",
        component=component,
        window=window,
        layers=[0, 1, 8, 15],
        positions=[1, 3, 4, -1],
        batch_size=batch_size,
    )
    assert result.positions == [1, 3, 4, 5]
    assert np.abs(naive(demo, result, PROMPT) - np.array(result.restored)).max() < 1e-5


@pytest.mark.parametrize("arch", ["gpt2", "gemma2", "llama_4bit"])
def test_batched_trace_equals_the_naive_loop_on_the_matrix(arch, checkpoint_dir):
    """Position embeddings added after the token embedding (gpt2), a scaled embedding and
    soft-capping (gemma2), a quantized embedding (4-bit llama)."""
    model = InterpretableModel(checkpoint_dir(arch))
    ids = model.encode(PROMPT)
    result = causal_trace(model, ids, (2, 4), component="mlp", window=3, target=7)
    assert result.subject == (2, 4) and result.answer_id == 7
    assert np.abs(naive(model, result, ids) - np.array(result.restored)).max() < 1e-5
    assert result.p_corrupted != pytest.approx(result.p_clean, abs=1e-7)


def test_identities_of_the_hidden_state(demo):
    """Before the subject nothing is corrupted, so restoring there changes nothing; the last
    layer's output at the last position is all the answer depends on."""
    result = causal_trace(demo, PROMPT, "France")
    assert result.subject == (4, 5) and result.answer == " Paris"
    assert result.layers == list(range(16)) and result.positions == list(range(6))
    indirect = np.array(result.indirect)
    assert np.abs(indirect[:, :4]).max() < 1e-5  # float32 rounding of a 0.8 probability
    assert result.restored[-1][-1] == pytest.approx(result.p_clean, abs=1e-6)
    assert result.total_effect == pytest.approx(result.p_clean - result.p_corrupted)
    assert result.total_effect > 0.1  # the noise takes Paris from 0.997 to 0.87
    assert result.by_layer() == [row[4] for row in result.indirect]  # the subject's last token
    assert result.by_layer(-1) == [row[5] for row in result.indirect]
    part = causal_trace(demo, PROMPT, "France", layers=[2], positions=[0, 4])
    assert part.length == 6 and part.by_layer(-2) == part.by_layer() == [part.indirect[0][1]]
    with pytest.raises(InputError, match="not traced"):
        part.by_layer(-1)
    summary = result.to_summary()
    assert summary["restored"] == result.restored and summary["tokens"][4] == " France"
    text = result.heatmap(color=False)
    assert "␣France*" in text and "columns: layers" in text
    assert "layer" in result.chart(color=False)


def test_noise_is_seeded_and_scaled(demo):
    weight = np.array(demo.module(demo.unembedder.embed_name).module["weight"])
    assert embedding_std(demo, rows_per_chunk=100) == pytest.approx(weight.std(), rel=1e-5)
    a = causal_trace(demo, PROMPT, "France", layers=[3], seed=1)
    b = causal_trace(demo, PROMPT, "France", layers=[3], seed=1)
    c = causal_trace(demo, PROMPT, "France", layers=[3], seed=2)
    none = causal_trace(demo, PROMPT, "France", layers=[3], noise=0.0)
    assert a.p_corrupted == b.p_corrupted != c.p_corrupted
    assert none.p_corrupted == pytest.approx(none.p_clean, abs=1e-6)


def test_subject_ranges_and_windows(demo):
    ids = demo.encode("The Eiffel Tower is located in the city of")
    assert subject_range(demo, ids, "The Eiffel Tower") == (1, 4)
    assert subject_range(demo, ids, "Eiffel") == (2, 3)
    assert subject_range(demo, ids, "iffel Tow") == (2, 4)  # every token it overlaps
    assert subject_range(demo, ids, (-2, -1)) == (len(ids) - 2, len(ids) - 1)
    with pytest.raises(InputError, match="not in the prompt"):
        subject_range(demo, ids, "Colosseum")
    with pytest.raises(InputError, match="range"):
        subject_range(demo, ids, (3, 3))
    assert list(window_layers(0, 10, 16)) == list(range(5))
    assert list(window_layers(8, 10, 16)) == list(range(3, 13))
    assert list(window_layers(15, 10, 16)) == list(range(10, 16))
    assert list(window_layers(5, 3, 16)) == [4, 5, 6]
    with pytest.raises(InputError, match="window"):
        causal_trace(demo, PROMPT, "France", window=0)
    with pytest.raises(InputError, match="outside"):
        causal_trace(demo, PROMPT, "France", positions=[9])


def test_categories_of_positions():
    assert categories((1, 4), 10) == {
        "first subject token": [1],
        "middle subject tokens": [2],
        "last subject token": [3],
        "first subsequent token": [4],
        "further tokens": [5, 6, 7, 8],
        "last token": [9],
    }
    assert categories((4, 5), 6) == {
        "first subject token": [4],
        "last subject token": [4],
        "last token": [5],
    }


def test_facts_are_averaged_as_they_stream(demo):
    facts = [
        ("The capital of France is", "France", " Paris"),
        ("The Eiffel Tower is located in the city of", "The Eiffel Tower", " Paris"),
        ("The capital of Japan is", "Japan", None),
    ]
    streamed = trace_facts(demo, (fact for fact in facts), component="mlp", window=4)
    singles = [causal_trace(demo, p, s, a, component="mlp", window=4) for p, s, a in facts]
    assert streamed.facts == 3 and streamed.window == 4 and streamed.component == "mlp"
    for kind in CATEGORIES:
        rows = [
            np.array(t.indirect)[:, categories(t.subject, len(t.positions))[kind]].mean(axis=1)
            for t in singles
            if kind in categories(t.subject, len(t.positions))
        ]
        assert streamed.counts[kind] == len(rows)
        assert np.allclose(streamed.indirect[kind], np.mean(rows, axis=0), atol=1e-6)
    assert streamed.p_clean == pytest.approx(np.mean([t.p_clean for t in singles]))
    assert streamed.total_effect == pytest.approx(np.mean([t.total_effect for t in singles]))
    summary = streamed.to_summary()
    assert summary["indirect"]["last subject token"] == streamed.indirect["last subject token"]
    assert "last␣subject␣token" in streamed.heatmap(color=False)
    with pytest.raises(InputError, match="prompt, subject, answer"):
        trace_facts(demo, [("The capital of France is", "France")])
    with pytest.raises(InputError, match="empty"):
        trace_facts(demo, [])
