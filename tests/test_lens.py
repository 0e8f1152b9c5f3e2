"""Token predictions, the logit lens and ``lens()``, and the terminal charts, on tiny llamas.

The read-out is checked against the model itself: the last layer's lens must be the model's
own prediction (untied, tied and 4-bit heads), which proves the final norm and head are right.
"""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import plotext
import pytest
from conftest import build_tiny_llama

from mlxterp import InputError, InterpretableModel, plotting
from mlxterp import interventions as iv
from mlxterp.lens import LensResult, lens, logit_lens
from mlxterp.loading import DEMO_DIR
from mlxterp.token_display import display_token
from mlxterp.unembed import Unembedder

WORDS = [
    "<pad>",
    "<s>",
    "</s>",
    "<unk>",
    "the",
    "capital",
    "of",
    "france",
    "is",
    "paris",
    "germany",
    "berlin",
    "italy",
    "rome",
    "eiffel",
    "tower",
    "located",
    "in",
    "city",
    "machine",
    "learning",
    "fascinating",
    "quick",
    "brown",
    "fox",
    "very",
    "long",
    "input",
    "text",
    "that",
    "has",
    "many",
    "tokens",
    "hello",
    "how",
    "are",
    "you",
]
TOKENS = mx.array([[1, 5, 9, 13, 17, 21, 25]])


def word_tokenizer():
    """A word-level tokenizer (BOS added) over WORDS, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


@pytest.fixture(scope="module")
def word_model() -> InterpretableModel:
    return InterpretableModel(build_tiny_llama(seed=3), tokenizer=word_tokenizer())


def _heads():
    """(label, model) for an untied, a tied and two 4-bit quantized tiny llamas."""
    untied = build_tiny_llama(seed=1)
    tied = build_tiny_llama(seed=2, tie_word_embeddings=True)
    q_untied = build_tiny_llama(seed=1)
    nn.quantize(q_untied, group_size=64, bits=4)
    q_tied = build_tiny_llama(seed=2, tie_word_embeddings=True)
    nn.quantize(q_tied, group_size=64, bits=4)
    return [("untied", untied), ("tied", tied), ("quantized", q_untied), ("quantized_tied", q_tied)]


@pytest.fixture(scope="module", params=_heads(), ids=lambda p: p[0])
def head(request) -> tuple[str, InterpretableModel]:
    return request.param[0], InterpretableModel(request.param[1])


@pytest.fixture(scope="module")
def head_model(head) -> InterpretableModel:
    return head[1]


# --------------------------------------------------------------------------- get_token_predictions
def test_get_token_predictions_matches_model_logits_for_every_head(head_model):
    with head_model.trace(TOKENS) as trace:
        last_layer = head_model.layers[-1].output.save()
    logits = trace.output[0]
    for pos in range(TOKENS.shape[1]):
        preds = head_model.get_token_predictions(last_layer[0, pos], top_k=3, return_scores=True)
        assert preds[0][0] == mx.argmax(logits[pos]).item()
        for token_id, score in preds:
            assert score == pytest.approx(logits[pos, token_id].item(), abs=1e-4)


def test_the_read_out_uses_the_head_each_model_has(head):
    label, model = head
    unembed = model.unembedder
    assert unembed.tied == (label in ("tied", "quantized_tied"))
    head_module = model.module(unembed.embed_name if unembed.tied else unembed.head_name).module
    assert isinstance(head_module, (nn.QuantizedEmbedding, nn.QuantizedLinear)) == (
        label.startswith("quantized")
    )


def test_get_token_predictions_batching(tiny_llama):
    """Regression for the bug report's "get_token_predictions batching": (batch, hidden)."""
    with tiny_llama.trace(TOKENS):
        hidden = tiny_llama.layers[1].output.save()[0, :4]  # (4, hidden)
    batched = tiny_llama.get_token_predictions(hidden, top_k=5)
    assert len(batched) == 4 and all(len(row) == 5 for row in batched)
    for b in range(4):
        assert batched[b] == tiny_llama.get_token_predictions(hidden[b], top_k=5)
    scored = tiny_llama.get_token_predictions(hidden, top_k=5, return_scores=True)
    for row in scored:
        scores = [s for _, s in row]
        assert scores == sorted(scores, reverse=True)
    assert [t for t, _ in scored[2]] == batched[2]
    with pytest.raises(InputError, match="hidden_state must be"):
        tiny_llama.get_token_predictions(hidden[None])


# --------------------------------------------------------------------------- logit_lens
def test_last_layer_lens_is_the_models_own_prediction(head_model):
    results = logit_lens(head_model, TOKENS, top_k=2)
    assert sorted(results) == list(range(head_model.num_layers))
    logits = head_model(TOKENS)[0].astype(mx.float32)
    last = results[head_model.num_layers - 1]
    assert len(last) == TOKENS.shape[1]
    for pos, preds in enumerate(last):
        assert preds[0][0] == mx.argmax(logits[pos]).item()
        assert preds[0][1] == pytest.approx(logits[pos].max().item(), abs=1e-4)


def test_logit_lens_structure_and_scores(word_model):
    text = "the capital of france is"
    results = word_model.logit_lens(text, top_k=3)
    n_tokens = len(word_model.encode(text))
    for _layer, per_position in results.items():
        assert len(per_position) == n_tokens
        for preds in per_position:
            assert len(preds) == 3
            ids = [p[0] for p in preds]
            scores = [p[1] for p in preds]
            assert all(isinstance(s, float) for s in scores)
            assert scores == sorted(scores, reverse=True) and len(set(ids)) == 3
            assert [p[2] for p in preds] == [word_model.token_to_str(i) for i in ids]
    # an intermediate layer's lens is the read-out of its output
    with word_model.trace(text):
        h = word_model.layers[1].output.save()
    expected = word_model.get_token_predictions(h[0, 2], top_k=3, return_scores=True)
    got = [(i, s) for i, s, _ in results[1][2]]
    assert [i for i, _ in got] == [i for i, _ in expected]
    assert [s for _, s in got] == pytest.approx([s for _, s in expected], abs=1e-5)


def test_logit_lens_is_one_forward_and_one_projection(tiny_llama, monkeypatch):
    calls = {"forward": 0, "unembed": 0, "capture": None}
    forward, unembed_call, run = tiny_llama.forward, Unembedder.__call__, tiny_llama.run

    def counting_forward(prepared):
        calls["forward"] += 1
        return forward(prepared)

    def counting_unembed(self, hidden):
        calls["unembed"] += 1
        return unembed_call(self, hidden)

    def spying_run(inputs, *, interventions=None, capture=None):
        calls["capture"] = capture
        return run(inputs, interventions=interventions, capture=capture)

    monkeypatch.setattr(tiny_llama, "forward", counting_forward)
    monkeypatch.setattr(Unembedder, "__call__", counting_unembed)
    monkeypatch.setattr(tiny_llama, "run", spying_run)
    logit_lens(tiny_llama, TOKENS, top_k=2)
    assert calls["forward"] == 1 and calls["unembed"] == 1
    assert calls["capture"] == [tiny_llama.layer_name(i) for i in range(3)]


def test_logit_lens_position_param(word_model):
    """Regression for "logit_lens(position=...) not implemented" and its result indexing."""
    text = "the capital of france is paris"
    full = word_model.logit_lens(text, top_k=3, layers=[0, 2])
    for position in (3, -1, -6):
        results = word_model.logit_lens(text, position=position, top_k=3, layers=[0, 2])
        assert sorted(results) == [0, 2]
        for layer_idx, predictions in results.items():  # the loop examples.md uses
            assert len(predictions) == 3
            for token_id, _score, token_str in predictions:
                assert isinstance(token_id, int) and isinstance(token_str, str)
            assert [p[0] for p in predictions] == [p[0] for p in full[layer_idx][position]]
            assert [p[1] for p in predictions] == pytest.approx(
                [p[1] for p in full[layer_idx][position]], abs=1e-5
            )


def test_logit_lens_layers_subset_and_negative_indices(tiny_llama):
    everything = logit_lens(tiny_llama, TOKENS)
    subset = logit_lens(tiny_llama, TOKENS, layers=[-1, 0])
    assert list(subset) == [2, 0]
    assert [p[0][0] for p in subset[2]] == [p[0][0] for p in everything[2]]
    assert list(logit_lens(tiny_llama, TOKENS, layers=1)) == [1]


def test_logit_lens_top_k_larger_than_vocab_is_clamped(tiny_llama):
    results = logit_lens(tiny_llama, TOKENS, top_k=500, layers=[0], position=0)
    assert len(results[0]) == 128 and len({p[0] for p in results[0]}) == 128


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(position=7), "position 7 is out of range"),
        (dict(position=-8), "out of range"),
        (dict(layers=[3]), "layer 3 is out of range"),
        (dict(layers=["layers.1"]), "layer indices"),
        (dict(top_k=0), "top_k must be"),
        (dict(plot=True, cmap="nope"), "unknown colour map"),
        (dict(plot=True, max_display_tokens=0), "max_display_tokens must be"),
    ],
)
def test_logit_lens_rejects_bad_arguments(tiny_llama, kwargs, match):
    with pytest.raises(InputError, match=match):
        logit_lens(tiny_llama, TOKENS, **kwargs)


def test_logit_lens_takes_one_prompt_or_a_list(word_model):
    """A batch array is refused (its rows carry no lengths); a list of prompts is batched
    (tests/test_batched_analyses.py)."""
    with pytest.raises(InputError, match="one prompt at a time, or a list of prompts"):
        word_model.logit_lens(mx.array([[1, 2, 3], [4, 5, 6]]))


def test_logit_lens_plot_prints_a_grid_of_the_last_tokens(word_model, capsys):
    text = "the eiffel tower is located in the city of"
    results = word_model.logit_lens(text, plot=True, max_display_tokens=4)
    printed = plotext.uncolorize(capsys.readouterr().out)
    lines = [line for line in printed.splitlines() if line.strip()]
    assert lines[0].startswith("Logit lens")
    header = lines[1].split()
    assert header == ["in", "the", "city", "of"]  # last 4 input tokens only
    assert [line.split()[0] for line in lines[2:]] == ["L0", "L1", "L2"]
    width = 12  # figsize (16, 10) over 4 columns: the widest cell, 12 characters
    for line, layer in zip(lines[2:], range(3), strict=False):
        cells = [line[3 + width * c : 3 + width * (c + 1)].rstrip() for c in range(4)]
        assert cells == [display_token(p[0][2], width - 1) for p in results[layer][-4:]]


def test_logit_lens_plot_is_coloured_with_the_colour_map(word_model, capsys):
    word_model.logit_lens("hello world", plot=True, cmap="gray")
    out = capsys.readouterr().out
    assert "\x1b[48;2;" in out  # cells carry an RGB background
    greys = {tuple(seg.split("m")[0].split(";")[1:4]) for seg in out.split("\x1b[48;")[1:]}
    assert greys and all(r == g == b for r, g, b in greys)


# --------------------------------------------------------------------------- lens()
def test_lens_result_probabilities_and_target(word_model):
    text = "the capital of france is"
    result = lens(word_model, text, top_k=4, target=" paris")
    assert isinstance(result, LensResult)
    assert result.layers == [0, 1, 2]
    assert result.tokens == ["<s>", "the", "capital", "of", "france", "is"]
    assert len(result.top_ids) == 3 and len(result.top_ids[0]) == 6
    assert len(result.top_ids[0][0]) == 4
    scores = word_model.logit_lens(text, top_k=4)
    paris = word_model.tokenizer.encode("paris", add_special_tokens=False)[0]
    assert result.target == paris
    with word_model.trace(text):
        outs = [word_model.layers[i].output.save() for i in range(3)]
    for layer in range(3):
        logits = word_model.unembedder(outs[layer][0])
        probs = mx.softmax(logits, axis=-1)
        assert result.top_ids[layer] == [[p[0] for p in cell] for cell in scores[layer]]
        assert result.top_probs[layer][-1] == pytest.approx(
            [probs[-1, i].item() for i in result.top_ids[layer][-1]], rel=1e-4
        )
        assert result.target_probs[layer] == pytest.approx(probs[-1, paris].item(), rel=1e-4)
        strs = [word_model.token_to_str(i) for i in result.top_ids[layer][-1]]
        assert result.top_strs[layer][-1] == strs


def test_lens_summary_is_plain_and_small(word_model):
    summary = lens(word_model, "hello how are you", top_k=5, target=7).to_summary()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["layers"] == [0, 1, 2] and summary["target"] == 7
    assert len(summary["top_ids"]) == 3 and all(isinstance(i, int) for i in summary["top_ids"][0])
    assert len(summary["target_probs"]) == 3
    assert "target" not in lens(word_model, "hello", top_k=1).to_summary()


def test_lens_applies_interventions(word_model):
    text = "machine learning is"
    plain = lens(word_model, text, top_k=3)
    zeroed = lens(word_model, text, top_k=3, interventions={"layers.1": iv.zero_out})
    assert zeroed.top_probs[0] == plain.top_probs[0]  # before the intervention: unchanged
    uniform = 1.0 / 128  # layer 1 zeroed: its read-out is the head of a zero vector
    assert zeroed.top_probs[1][0][0] == pytest.approx(uniform, rel=1e-3)
    assert zeroed.top_probs[2] != plain.top_probs[2]


def test_lens_target_checks(word_model, tiny_llama):
    with pytest.raises(InputError, match="2 tokens"):
        lens(word_model, "hello", target="capital of")
    with pytest.raises(InputError, match="outside this model's vocabulary"):
        lens(word_model, "hello", target=500)
    with pytest.raises(InputError, match=r"-1 are outside"):
        lens(word_model, "hello", target=-1)
    with pytest.raises(ValueError, match="no tokenizer"):
        lens(tiny_llama, TOKENS, target="paris")
    assert lens(tiny_llama, TOKENS, target=3).tokens == ["1", "5", "9", "13", "17", "21", "25"]


# --------------------------------------------------------------------------- spec examples
def test_examples_md_logit_lens_snippets_run(word_model, capsys):
    model = word_model
    last = model.num_layers - 1
    text = "the capital of france is"
    results = model.logit_lens(text)
    tokens = model.encode(text)
    token_strs = [model.token_to_str(t) for t in tokens]
    assert token_strs[1:] == text.split()

    results = model.logit_lens(text, layers=[0, 1, last])
    for layer_idx in [0, 1, last]:
        last_pos_pred = results[layer_idx][-1][0][2]
        print(f"Layer {layer_idx:2d}: '{last_pos_pred}'")

    text = "the capital of france"
    results = model.logit_lens(text, layers=[1])
    tokens = model.encode(text)
    for pos_idx, predictions in enumerate(results[1]):
        input_token = model.token_to_str(tokens[pos_idx])
        pred_token = predictions[0][2]
        print(f"  Position {pos_idx} ('{input_token}') -> predicts: '{pred_token}'")

    results = model.logit_lens("machine learning is", top_k=3, layers=[1, last])
    for layer_idx in [1, last]:
        for i, (_token_id, score, token_str) in enumerate(results[layer_idx][-1], 1):
            print(f"  {i}. '{token_str}' (score: {score:.2f})")

    model.logit_lens(
        "the eiffel tower is located in the city of",
        plot=True,
        max_display_tokens=15,
        figsize=(16, 10),
    )
    model.logit_lens(
        "machine learning is fascinating",
        plot=True,
        layers=list(range(3)),
        figsize=(18, 12),
        cmap="viridis",
    )
    model.logit_lens(
        "the quick brown fox", plot=True, layers=[0, 2], max_display_tokens=10, figsize=(14, 8)
    )
    model.logit_lens(
        "very long input text that has many tokens",
        plot=True,
        max_display_tokens=20,
        figsize=(20, 10),
    )

    text = "the capital of france is paris"
    tokens = model.encode(text)
    for i, token_id in enumerate(tokens):
        if "france" in model.token_to_str(token_id):
            france_position = i
            break
    results = model.logit_lens(text, position=france_position, top_k=3, layers=[0, 1, 2])
    for predictions in results.values():
        for _token_id, score, token_str in predictions:
            print(f"  '{token_str}': {score:.2f}")

    for prompt in ["the capital of france is", "the capital of germany is"]:
        results = model.logit_lens(prompt, layers=[last], top_k=1)
        token_id, score, token_str = results[last][-1][0]  # top prediction, last position
        print(f"'{prompt}' -> '{token_str}' ({score:.1f})")
    assert "Logit lens" in capsys.readouterr().out


def test_demo_model_lens_reads_out_its_prediction():
    if not (DEMO_DIR / "config.json").exists():
        pytest.skip("the embedded demo model is not built yet")
    model = InterpretableModel("demo")
    text = "The capital of France is"
    results = model.logit_lens(text, position=-1)
    with model.trace(text) as trace:
        pass
    assert results[model.num_layers - 1][0][0] == mx.argmax(trace.output[0, -1]).item()


# --------------------------------------------------------------------------- plotting helpers
def test_heatmap_text_layout_and_colours():
    grid = plotting.heatmap_text(
        [[0.0, 1.0], [0.5, 0.25]],
        ["L0", "L10"],
        ["a", "bbbbbbbbbbbb"],
        [["x", "y\nz"], ["p", "q"]],
        cell_width=6,
        color=False,
    )
    assert grid.splitlines() == ["    a     bbbb…", " L0 x     y↵z   ", "L10 p     q     "]
    coloured = plotting.heatmap_text([[0.0, 1.0]], ["r"], ["a", "b"], cmap="gray")
    assert "\x1b[48;2;0;0;0m" in coloured and "\x1b[48;2;255;255;255m" in coloured
    assert plotext.uncolorize(coloured).splitlines()[1].split() == ["r", "0.00", "1.00"]
    with pytest.raises(InputError, match="2 rows of 2"):
        plotting.heatmap_text([[1.0]], ["a", "b"], ["x", "y"])


def test_centred_heatmap_scales_colours_symmetrically_around_zero():
    # 0 takes the middle of the ramp whatever the values' range: -peak .. peak
    centred = plotting.heatmap_text(
        [[0.0, 2.0, -1.0]], ["r"], ["a", "b", "c"], cmap="gray", centred=True
    )
    explicit = plotting.heatmap_text(
        [[0.0, 2.0, -1.0]], ["r"], ["a", "b", "c"], cmap="gray", vmin=-2.0, vmax=2.0
    )
    assert centred == explicit
    assert "\x1b[48;2;128;128;128m" in centred  # the 0 cell, mid-grey
    zeros = plotting.heatmap_text([[0.0]], ["r"], ["a"], cmap="gray", centred=True)
    assert "\x1b[48;2;128;128;128m" in zeros  # no values: a scale of -1 .. 1, no division by 0


def test_color_at_interpolates_the_ramp():
    assert plotting.color_at("gray", 0.5) == (128, 128, 128)
    assert plotting.color_at("viridis", 0.0) == plotting.COLORMAPS["viridis"][0]
    assert plotting.color_at("viridis", 2.0) == plotting.COLORMAPS["viridis"][-1]


def test_bar_and_line_charts_render_in_the_terminal():
    fig = plotting.bar_chart(["L0", "L1", "L2"], [10.0, -5.0, 80.0], title="Recovery %")
    text = plotting.to_text(fig, width=60, height=15, color=False)
    assert "Recovery %" in text and "L2" in text and "80" in text
    fig = plotting.line_chart(
        {"p(target)": [0.1, 0.4, 0.9]}, x=[0, 1, 2], title="Target", xlabel="layer"
    )
    text = plotting.to_text(fig, width=60, height=15, color=False)
    assert "p(target)" in text and "layer" in text
    with pytest.raises(InputError, match="2 labels for 3 values"):
        plotting.bar_chart(["a", "b"], [1, 2, 3])


def test_charts_draw_onto_a_given_plotext_figure():
    from textual_plotext.plot import Plot

    plt = Plot()
    assert plotting.bar_chart(["a"], [1.0], plt=plt) is plt
    assert "a" in plotext.uncolorize(plt.build())
