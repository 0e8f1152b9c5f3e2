"""Readable tokens: whitespace and invisible characters shown visibly on one line, in the
display function itself and in every engine rendering (lens grid, patching charts), and
integer layer ticks on the terminal charts; raw token text stays raw in results."""

from __future__ import annotations

import itertools
import re

import plotext
import pytest

from mlxterp import plotting
from mlxterp.lens import lens
from mlxterp.patching import PatchingResult
from mlxterp.session import Session
from mlxterp.token_display import display_token, token_from_display

WHITESPACE = [" ", "  ", "\n", "\n\n", "\t", "\r", "\r\n", " \n", "\t\t", "\xa0", "\u200b", ""]


def test_whitespace_tokens_are_distinct_visible_and_one_line():
    shown = [display_token(t) for t in WHITESPACE]
    assert len(set(shown)) == len(WHITESPACE), shown
    for raw, text in zip(WHITESPACE, shown, strict=True):
        assert text and text.isprintable() and " " not in text, (raw, text)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (" ", "␣"),
        ("  ", "␣␣"),
        ("\n", "↵"),
        ("\n\n", "↵↵"),
        ("\t", "⇥"),
        ("\r", "␍"),
        (".\n", ".↵"),
        (" Paris", "␣Paris"),
        ("Paris", "Paris"),
        ("New York", "New␣York"),
        ("\x00\x1b", "␀␛"),
        ("\x7f", "␡"),
        ("\xa0", "⍽"),
        ("a\u200bb", "a⟨U+200B⟩b"),
        ("a\u2028b", "a⟨U+2028⟩b"),
        ("\x85", "⟨U+0085⟩"),
        ("", "∅"),
        ("日本", "日本"),
        ("<s>", "<s>"),
    ],
)
def test_display_convention(raw, shown):
    assert display_token(raw) == shown
    if raw:
        assert token_from_display(shown) == raw


def test_display_is_cut_to_a_width_with_an_ellipsis():
    assert display_token(" Paris", 8) == "␣Paris"
    assert display_token(" Santiago", 8) == "␣Santia…"
    assert display_token("\n\n\n\n", 3) == "↵↵…"
    assert display_token("abc", 0) == ""


def test_prose_keeps_its_spaces_but_stays_one_line():
    assert display_token("The capital\tof\nFrance", keep_spaces=True) == "The capital⇥of↵France"
    assert display_token("a b", keep_spaces=True) == "a b"


def test_a_step_title_is_one_line(manager, tmp_path):
    session = Session.new("demo", tmp_path / "s.toml", manager)
    step = session.run(manager, "logit_lens", text="Hello.\n\nThe capital of France is")
    assert step.title() == " 0 logit_lens: Hello.↵↵The capital of France is"
    assert step.params["text"] == "Hello.\n\nThe capital of France is"  # recorded raw


def test_typed_tokens_read_back():
    assert token_from_display("␣Paris") == " Paris"
    assert token_from_display("x↵⇥") == "x\n\t"
    assert token_from_display("⟨U+110000⟩") == "⟨U+110000⟩"  # past Unicode: kept as typed


def test_heatmap_rows_never_break_and_neighbouring_labels_stay_apart():
    grid = plotting.heatmap_text(
        [[0.1, 0.2, 0.3]],
        ["L0"],
        [" machine", ".\n", "\t"],
        [[" machine", " lazy", "\r\n"]],
        cell_width=8,
        color=False,
    )
    assert grid.splitlines() == ["   ␣machi… .↵      ⇥", "L0 ␣machi… ␣lazy   ␍↵      "]


# --------------------------------------------------------------------------- the demo model
PROMPT = "a\n\tb  c"  # the demo tokenizer: <s> a \n \t b ' ' ' c'


def test_lens_grid_of_a_prompt_with_whitespace_tokens(demo):
    result = lens(demo, PROMPT, top_k=3)
    assert result.tokens == ["<s>", "a", "\n", "\t", "b", " ", " c"]  # raw text kept
    assert result.to_summary()["tokens"] == result.tokens
    lines = result.heatmap(color=False).splitlines()
    assert len(lines) == 2 + demo.num_layers  # title, header, one line per layer
    assert lines[1].split() == ["<s>", "a", "↵", "⇥", "b", "␣", "␣c"]
    assert all(line.startswith(f"L{n}".rjust(3)) for n, line in enumerate(lines[2:]))


def test_logit_lens_plot_shows_whitespace_tokens_on_one_line(demo, capsys):
    results = demo.logit_lens(PROMPT, plot=True, top_k=2)
    assert results[0][2][0][2] == demo.token_text(results[0][2][0][0])  # raw text kept
    printed = plotext.uncolorize(capsys.readouterr().out).splitlines()
    assert len(printed) == 2 + demo.num_layers
    assert printed[1].split() == ["<s>", "a", "↵", "⇥", "b", "␣", "␣c"]


def test_patching_grid_labels_whitespace_positions(demo):
    result = PatchingResult(
        recovery={0: 10.0, 1: 20.0},
        baseline=1.0,
        clean_value=0.0,
        corrupted_value=1.0,
        metric="l2",
        component="mlp",
        layers=[0, 1],
        positions=[0, 1, 2],
        tokens=[" ", "\n", ".\n"],
        matrix=[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]],
    )
    lines = result.chart(color=False).splitlines()
    assert len(lines) == 4
    assert lines[1].split() == ["␣", "↵", ".↵"]
    assert result.to_summary()["tokens"] == [" ", "\n", ".\n"]


# --------------------------------------------------------------------------- integer ticks
def x_tick_labels(text: str) -> list[str]:
    """The labels under a plotext chart's x axis (the line after the ``└`` border)."""
    lines = plotext.uncolorize(text).splitlines()
    (axis,) = [n for n, line in enumerate(lines) if "└" in line]
    return lines[axis + 1].split()


def is_evenly_spaced_integers(labels: list[str]) -> bool:
    if not all(re.fullmatch(r"-?\d+", s) for s in labels) or len(labels) < 2:
        return False
    values = [int(s) for s in labels]
    return len({b - a for a, b in itertools.pairwise(values)}) == 1


@pytest.mark.parametrize("width", [40, 80])
@pytest.mark.parametrize("n_layers", [4, 16, 30, 48])
def test_patching_bar_chart_has_evenly_spaced_integer_layer_ticks(n_layers, width):
    layers = list(range(n_layers))
    result = PatchingResult(
        recovery={layer: 100.0 * layer / n_layers for layer in layers},
        baseline=1.0,
        clean_value=0.0,
        corrupted_value=1.0,
        metric="l2",
        component="mlp",
        layers=layers,
        positions=[-1],
        tokens=["."],
    )
    labels = x_tick_labels(result.chart(width=width, height=16, color=False))
    assert is_evenly_spaced_integers(labels), labels
    assert labels[0] == "0" and len(labels) <= plotting.MOST_TICKS


def test_line_chart_of_layers_has_evenly_spaced_integer_ticks():
    fig = plotting.line_chart({"p": [n / 30 for n in range(30)]}, x=list(range(30)))
    labels = x_tick_labels(plotting.to_text(fig, width=60, height=12, color=False))
    assert is_evenly_spaced_integers(labels), labels


def test_layer_grid_has_integer_rows_and_token_columns():
    fig = plotting.matrix_chart(
        [[float(r * c) for c in range(4)] for r in range(30)],
        list(range(30)),
        ["<s>", " Paris", "\n", "\t"],
        xlabel="position",
        ylabel="layer",
    )
    lines = plotext.uncolorize(plotting.to_text(fig, 60, 14, color=False)).splitlines()
    assert x_tick_labels("\n".join(lines)) == ["<s>", "␣Paris", "↵", "⇥"]
    rows = [line.split("┤")[0].strip() for line in lines if "┤" in line]
    assert is_evenly_spaced_integers(rows) and rows[0] == "0", rows  # layer 0 on top


def test_bar_chart_of_some_layers_ticks_each_of_them():
    fig = plotting.bar_chart([0, 5, 10, 15], [1.0, 2.0, 3.0, 4.0])
    assert x_tick_labels(plotting.to_text(fig, 60, 10, color=False)) == ["0", "5", "10", "15"]


def test_integer_ticks_thin_to_round_steps():
    assert plotting.integer_ticks(range(4)) == [0, 1, 2, 3]
    assert plotting.integer_ticks(range(30)) == list(range(0, 30, 2))
    assert plotting.integer_ticks(range(48)) == list(range(0, 48, 5))
    assert plotting.integer_ticks(range(200)) == list(range(0, 200, 20))
    assert plotting.integer_ticks([1, 3, 5, 7, 9, 11, 13, 15, 17, 19], most=4) == [5, 15]
