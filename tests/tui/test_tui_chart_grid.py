"""Grids in the chart pane: a head's attention as a table of coloured cells labelled by the
prompt's tokens, with a colour scale and the exact value of the cell under the cursor."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable, Input, Static

from mlxterp_tui.app import WorkbenchApp

from .pilot_helpers import settle

pytestmark = pytest.mark.anyio
PROMPT = "The capital of France is"


async def test_attention_is_a_labelled_grid_whose_cursor_reads_the_exact_weight(manager):
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        app.query_one("#prompt", Input).value = PROMPT
        app.query_one("#attn-layer", Input).value = "11"
        app.query_one("#attn-head", Input).value = "3"
        app.query_one("#lens-table").focus()
        await pilot.press("f6")
        await settle(app, pilot)
        step = app.session.steps[-1]
        assert step.kind == "attention"
        grid = app.query_one("#chart-grid", DataTable)
        assert grid.display and not app.query_one("#chart").display
        labels = [str(c.label) for c in grid.columns.values()]
        assert labels == ["query\\key", "0 <s>", "1 The", "2 ␣capi", "3 ␣of", "4 ␣Fran", "5 ␣is"]
        assert [str(grid.get_row_at(r)[0]) for r in range(grid.row_count)][4] == "4 ␣France"
        grid.focus()
        await pilot.press("down", "down", "right")  # from the first value: query 2, key 1
        await pilot.pause()
        weight = float(step.result[11][0][3][2][1])
        scale = str(app.query_one("#chart-scale", Static).render())
        assert scale.endswith(f"query 2 ␣capital x key 1 The: {weight:.6g}")
        # the scale runs from the smallest weight (0: masked keys) to the largest (1: the
        # first query attends only to itself); the ramp between them is coloured blanks
        assert scale.split()[:2] == ["0", "1"]
        # a line chart takes the pane back from the grid
        app.query_one("#lens-target", Input).value = "␣Paris"
        app.query_one("#prompt", Input).focus()
        await pilot.press("enter")
        await settle(app, pilot)
        app.action_show_pane("charts")
        await pilot.pause()
        assert app.query_one("#chart").display and not grid.display


async def test_all_heads_of_a_layer_from_the_last_query(manager):
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        app.query_one("#prompt", Input).value = PROMPT
        app.query_one("#attn-layer", Input).value = "11"
        head = app.query_one("#attn-head", Input)
        head.value = ""
        head.focus()
        await pilot.press("a", "l", "l", "x", "enter")  # x is refused: heads are numbers or all
        await settle(app, pilot)
        assert head.value == "all"
        step = app.session.steps[-1]
        weights = step.result[11][0]  # (heads, queries, keys)
        grid = app.query_one("#chart-grid", DataTable)
        assert grid.row_count == weights.shape[0] == 4
        assert [str(grid.get_row_at(r)[0]) for r in range(grid.row_count)] == [
            "0 H0",
            "1 H1",
            "2 H2",
            "3 H3",
        ]
        grid.focus()
        await pilot.press("down", "down", "right", "right")  # head 2, key 2
        await pilot.pause()
        weight = float(weights[2][-1][2])
        scale = str(app.query_one("#chart-scale", Static).render())
        assert scale.endswith(f"head 2 H2 x key 2 ␣capital: {weight:.6g}")
        caption = str(app.query_one("#chart-caption", Static).render())
        assert caption.startswith("Attention, layer 11, every head from the last query")
