"""Feature dashboards: top contexts, histogram, density and logit effects over a dataset
(streamed: the same in any batch size, memory flat), one feature over a prompt, and the
top features at each position, each checked against the SAE's own encodings."""

from __future__ import annotations

import random
import tracemalloc

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InputError
from mlxterp.sae import (
    SAE,
    SAEConfig,
    feature_dashboard,
    feature_logit_effects,
    feature_on_prompt,
    prompt_features,
    top_features_for_text,
    top_texts_for_feature,
)
from mlxterp.sae.dashboard import _StreamingHistogram
from mlxterp.token_display import display_token

WORDS = [
    "river",
    "king",
    "apple",
    "garden",
    "letter",
    "bird",
    "coat",
    "market",
    "song",
    "window",
    "France",
    "Paris",
]
PROMPT = "The capital of France is"


def corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) for _ in range(n)]


@pytest.fixture(scope="module")
def sae():
    """An untrained ReLU SAE on the demo model's layer 4, biased so features fire on some
    tokens and not others."""
    sae = SAE(64, SAEConfig(kind="relu", expansion_factor=2), "model.layers.4", 4, "demo")
    sae.b_enc = mx.random.normal((sae.d_sae,), key=mx.random.key(5)) - 1.0
    return sae


def every_activation(sae, demo, texts, feature):
    """The feature on every real token of each text, one text at a time."""
    out = []
    for text in texts:
        trace = demo.run(text, capture=["layers.4"])
        out.append(np.asarray(sae.encode(trace.activations["layers.4"][0])[:, feature]))
    return out


def a_feature(sae, demo, texts):
    """A feature that fires on some tokens of ``texts`` but not on most."""
    acts = np.concatenate(every_activation(sae, demo, texts, slice(None)))
    density = (acts > 0).mean(axis=0)
    return int(np.argmin(np.abs(density - 0.3)))


def test_the_dashboard_reads_every_token_of_the_dataset(sae, demo):
    texts = corpus(30, 1)
    feature = a_feature(sae, demo, texts)
    per_text = every_activation(sae, demo, texts, feature)
    dash = feature_dashboard(sae, demo, texts, feature, k=5, window=3, bins=10, batch_size=7)
    everything = np.concatenate(per_text)
    assert dash.tokens == everything.size and dash.component == "model.layers.4"
    assert dash.density == pytest.approx((everything > 0).mean())
    assert dash.max_activation == pytest.approx(everything.max(), rel=1e-5)
    assert dash.mean_activation == pytest.approx(everything[everything > 0].mean(), rel=1e-4)
    # contexts: each text at its strongest token, the strongest texts first (texts whose
    # peaks tie to float precision may come in either order, so compare the peaks)
    peaks = sorted((float(v.max()) for v in per_text if v.max() > 0), reverse=True)
    assert [c.activation for c in dash.contexts] == pytest.approx(peaks[:5], rel=1e-4)
    assert len({c.text_index for c in dash.contexts}) == len(dash.contexts)
    for c in dash.contexts:
        values, ids = per_text[c.text_index], demo.encode(texts[c.text_index])
        assert c.position == int(values.argmax())
        assert c.activation == pytest.approx(float(values.max()), rel=1e-4)
        assert c.start == max(0, c.position - 3) and len(c.tokens) == len(c.values) <= 7
        assert c.tokens == [demo.token_to_str(t) for t in ids[c.start : c.start + len(c.tokens)]]
        assert c.values == pytest.approx(
            values[c.start : c.start + len(c.values)].tolist(), abs=1e-4
        )
        shown = display_token(c.tokens[c.position - c.start], keep_spaces=True)
        assert f"«{shown}»" in c.line()
    # the same texts as top_texts_for_feature finds, at the same tokens
    found = top_texts_for_feature(sae, demo, texts, feature, k=5)
    assert [(texts[c.text_index], c.position) for c in dash.contexts] == [
        (t, p) for t, p, _, _ in found
    ]
    # histogram: exact counts of the non-zero activations in its bins
    hist = dash.histogram
    assert len(hist.counts) == 10 and len(hist.edges) == 11 and hist.edges[0] == 0.0
    assert hist.zeros == int((everything <= 0).sum())
    assert sum(hist.counts) == int((everything > 0).sum())
    assert hist.edges[-1] >= everything.max()
    width = hist.edges[1]
    on = everything[everything > 0].astype(np.float64)
    expected = np.bincount(np.minimum((on / width).astype(int), 9), minlength=10)
    # (a value on an inner bin edge may fall either side between batched and one-text
    # forwards; tied activations, such as one token in many texts, can sit on one together)
    steps = on / width
    on_edge = int(((np.abs(steps - np.round(steps)) < 1e-5) & (np.round(steps) % 10 != 0)).sum())
    assert np.abs(np.array(hist.counts) - expected).sum() <= 2 * on_edge
    # logit effects: the decoder column through the unembedding
    assert (dash.promoted, dash.suppressed) == tuple(
        feature_logit_effects(sae, demo, feature, 10).values()
    )
    summary = dash.to_summary()
    assert summary["contexts"][0]["tokens"] == dash.contexts[0].tokens
    assert summary["histogram"]["counts"] == hist.counts


def test_the_streamed_histogram_counts_exactly_while_its_range_grows():
    rng = np.random.default_rng(0)
    chunks = [rng.exponential(scale, size=50) * (rng.random(50) > 0.4) for scale in (0.1, 1, 30)]
    streamed = _StreamingHistogram(8)
    for chunk in chunks:
        streamed.add(chunk)
    hist = streamed.result()
    everything = np.concatenate(chunks)
    assert hist.edges[-1] >= everything.max() > hist.edges[-1] / 2  # doubled only as needed
    on = everything[everything > 0]
    expected = np.bincount(np.minimum((on / hist.edges[1]).astype(int), 7), minlength=8)
    assert hist.counts == expected.tolist() and hist.zeros == int((everything == 0).sum())


def test_any_batch_size_gives_the_same_dashboard(sae, demo):
    texts = corpus(12, 2)
    feature = a_feature(sae, demo, texts)
    one, many = (
        feature_dashboard(sae, demo, texts, feature, k=4, bins=6, batch_size=b) for b in (1, 12)
    )
    assert [c.text_index for c in one.contexts] == [c.text_index for c in many.contexts]
    assert one.histogram.counts == many.histogram.counts and one.tokens == many.tokens


def test_dashboard_memory_is_flat_in_the_number_of_texts(sae, demo):
    feature = 0

    def peak(n):  # extra peak memory, MLX's and Python's (NumPy's included)
        texts = corpus(n, 3)
        mx.eval(mx.zeros(1))
        mx.reset_peak_memory()
        base = mx.get_active_memory()
        tracemalloc.start()
        dash = feature_dashboard(sae, demo, texts, feature, k=3, batch_size=8)
        python = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(dash.contexts) <= 3 and len(dash.histogram.counts) == 20
        return mx.get_peak_memory() - base, python

    peak(16)  # first use: caches warm up
    (mlx_small, py_small), (mlx_large, py_large) = peak(16), peak(320)
    assert mlx_large - mlx_small < 2**20
    assert py_large - py_small < 2**14  # measured ~2.5 KiB; keeping each text's values: ~46 KiB


def test_a_feature_on_a_prompt_and_the_features_of_a_prompt(sae, demo):
    feature = a_feature(sae, demo, [PROMPT])
    on = feature_on_prompt(sae, demo, PROMPT, feature)
    expected = every_activation(sae, demo, [PROMPT], feature)[0]
    assert on.values == pytest.approx(expected.tolist(), abs=1e-5)
    assert on.tokens == [demo.token_to_str(t) for t in demo.encode(PROMPT)]
    assert on.to_summary()["values"] == on.values
    assert "[" in on.line()  # where it fires, the value follows the token
    top = prompt_features(sae, demo, PROMPT, k=3)
    plain = top_features_for_text(sae, demo, PROMPT, k=3)
    assert (top.tokens, top.per_position, top.pooled) == (
        plain["tokens"],
        plain["per_position"],
        plain["pooled"],
    )
    lines = top.lines()
    assert len(lines) == len(top.tokens)
    feature, value = top.per_position[-1][0]
    assert lines[-1].startswith(f"{display_token(top.tokens[-1])}  #{feature} {value:.3g}")
    assert top.to_summary()["per_position"][0] == [list(p) for p in top.per_position[0]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bins": 5}, "even int"),
        ({"window": -1}, "window"),
        ({"k": 0}, "positive"),
        ({"feature": 10**6}, "feature must be"),
        ({"texts": "one text"}, "list of texts"),
    ],
)
def test_bad_dashboard_arguments_are_refused(sae, demo, kwargs, message):
    args = {"texts": corpus(2, 0), "feature": 0, **kwargs}
    with pytest.raises(InputError, match=message):
        feature_dashboard(sae, demo, **args)
