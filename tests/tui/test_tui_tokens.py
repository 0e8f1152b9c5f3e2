"""Readable tokens in the workbench (issue 14 part 8): whitespace tokens shown as ␣ ↵ ⇥ on
one line in the token strip, the lens table, its top-k and the charts, typed back the same
way, and charts with integer layer ticks — on the demo model, whose tokenizer has "\\n",
"\\t" and " " tokens."""

from __future__ import annotations

import itertools
import re

import pytest

pytest.importorskip("textual")

from textual.widgets import Checkbox, DataTable, Input, Static
from textual_plotext import PlotextPlot

from mlxterp_tui.app import WorkbenchApp
from mlxterp_tui.panes.lens import LensPane, TopKScreen
from mlxterp_tui.panes.patching import PatchingPane

from .pilot_helpers import settle

PROMPT = "a\n\tb  c"  # the demo tokenizer: <s> a \n \t b ' ' ' c'
SHOWN = ["<s>", "a", "↵", "⇥", "b", "␣", "␣c"]
pytestmark = pytest.mark.anyio


async def lens(app, pilot, text=PROMPT):
    app.query_one("#prompt", Input).value = text
    await pilot.press("ctrl+r")
    await settle(app, pilot)


def chart_lines(app) -> list[str]:
    """The chart pane's plot as plain lines, drawn at its size on screen."""
    return app.query_one("#chart", PlotextPlot).render().plain.splitlines()


def x_ticks(lines: list[str]) -> list[str]:
    (axis,) = [n for n, line in enumerate(lines) if "└" in line]
    return lines[axis + 1].split()


def y_ticks(lines: list[str]) -> list[str]:
    return [line.split("┤")[0].strip() for line in lines if "┤" in line]


def evenly_spaced_integers(labels: list[str]) -> bool:
    if len(labels) < 2 or not all(re.fullmatch(r"-?\d+", s) for s in labels):
        return False
    return len({int(b) - int(a) for a, b in itertools.pairwise(labels)}) == 1


async def test_strip_table_and_topk_show_whitespace_tokens_on_one_line(manager):
    app = WorkbenchApp("demo", manager=manager)
    app.token_delay = 0
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await lens(app, pilot)
        step = app.session.steps[-1]
        assert step.summary["tokens"] == ["<s>", "a", "\n", "\t", "b", " ", " c"]  # raw kept
        strip = str(app.query_one("#token-strip", Static).render())
        assert "\n" not in strip and "\t" not in strip
        for shown, token_id in zip(SHOWN, app.model.encode(PROMPT), strict=True):
            assert f" {shown}·{token_id} " in strip
        table = app.query_one("#lens-table", DataTable)
        assert [str(c.label) for c in table.columns.values()] == ["layer", *SHOWN]
        for row in range(table.row_count):
            for cell in table.get_row_at(row)[1:]:
                assert cell.plain.isprintable() and " " not in cell.plain, cell.plain
        table.focus()
        table.move_cursor(row=0, column=3)  # the newline's column
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, TopKScreen)
        assert "position 2 (↵)" in str(app.screen.query_one(".modal-title", Static).render())
        topk = app.screen.query_one("#topk-table", DataTable)
        for row in range(topk.row_count):
            assert topk.get_row_at(row)[1].plain.isprintable()


async def test_a_target_is_typed_as_it_is_shown(manager):
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        app.query_one("#lens-target", Input).value = "↵"
        await lens(app, pilot, "The capital of France is")
        step = app.session.steps[-1]
        assert step.params["target"] == "\n"
        app.query_one("#lens-target", Input).value = ""
        app.query_one("#lens-pane", LensPane).restore(step)  # as reopening the step does
        assert app.query_one("#lens-target", Input).value == "↵"


async def test_patching_charts_have_integer_layers_and_token_columns(manager):
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        app.query_one("#patch-clean", Input).value = "The capital of France is"
        app.query_one("#patch-corrupted", Input).value = "The capital of Germany is"
        app.query_one("#patch-table").focus()
        await pilot.press("ctrl+k")
        await settle(app, pilot)
        await pilot.press("3")  # the chart pane
        await pilot.pause()
        lines = chart_lines(app)
        assert evenly_spaced_integers(x_ticks(lines)), x_ticks(lines)
        assert x_ticks(lines)[0] == "0"
        app.query_one("#patch-by-position", Checkbox).value = True
        app.query_one("#patch-table").focus()
        await pilot.press("ctrl+k")
        await settle(app, pilot)
        await pilot.press("3")
        await pilot.pause()
        # by position it is a grid: a column per position headed by its index and token
        # as shown, a row per layer from 0 at the top
        summary = app.session.steps[-1].summary
        grid = app.query_one("#chart-grid", DataTable)
        labels = [str(c.label) for c in grid.columns.values()][1:]
        shown = zip(summary["positions"], summary["tokens"], strict=True)
        assert labels == [f"{p} {t.replace(' ', '␣')}"[:7] for p, t in shown]
        rows = [str(grid.get_row_at(r)[0]) for r in range(grid.row_count)]
        assert rows == [str(layer) for layer in summary["layers"]] and rows[0] == "0"


async def test_patching_answers_are_typed_and_restored_as_shown(manager):
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        app.query_one("#patch-clean", Input).value = "The capital of France is"
        app.query_one("#patch-corrupted", Input).value = "The capital of Germany is"
        app.query_one("#patch-metric").value = "logit_diff"
        app.query_one("#patch-answer", Input).value = "␣Paris,↵"
        app.query_one("#patch-table").focus()
        await pilot.press("ctrl+k")
        await settle(app, pilot)
        step = app.session.steps[-1]
        assert step.kind == "activation_patching" and step.params["answer"] == [" Paris", "\n"]
        app.query_one("#patch-answer", Input).value = ""
        app.query_one("#patching-pane", PatchingPane).restore(step)
        assert app.query_one("#patch-answer", Input).value == "␣Paris,↵"
