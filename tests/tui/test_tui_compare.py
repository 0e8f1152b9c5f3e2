"""Comparing two steps from the History pane: c marks one, c on another shows where they
differ (kind, parameters, results), numbers as replay compares them."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable, Input, ListView, Static

from mlxterp.session import compare_steps
from mlxterp_tui.app import WorkbenchApp
from mlxterp_tui.screens import CompareScreen

from .pilot_helpers import settle

pytestmark = pytest.mark.anyio


async def lens(app, pilot, prompt: str) -> None:
    app.query_one("#prompt", Input).value = prompt
    app.query_one("#prompt", Input).focus()
    await pilot.press("enter")
    await settle(app, pilot)


def rows(screen) -> list[list[str]]:
    table = screen.query_one("#compare-table", DataTable)
    return [[str(c) for c in table.get_row_at(r)] for r in range(table.row_count)]


async def test_two_lens_runs_side_by_side_where_they_differ(manager):
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await lens(app, pilot, "The capital of France is")
        await lens(app, pilot, "The capital of Germany is")
        await lens(app, pilot, "The capital of France is")  # the first again
        first, second, third = app.session.steps
        app.query_one("#lens-table").focus()
        await pilot.press("7")
        app.query_one("#history-list", ListView).focus()
        await pilot.press("up", "up", "c")  # mark the first step (the newest is highlighted)
        caption = str(app.query_one("#history-caption", Static).render())
        assert caption.startswith("step 0 (logit_lens) marked")
        await pilot.press("down", "c")
        await pilot.pause()
        assert isinstance(app.screen, CompareScreen)
        found = compare_steps(first, second)
        shown = rows(app.screen)
        assert len(shown) == len(found.differences) > 0
        assert ["params.text", "The capital of France is", "The capital of Germany is"] in shown
        assert any(r[0] == "summary.tokens[4]" and r[1:] == [" France", " Germany"] for r in shown)
        verdict = str(app.screen.query_one("#compare-caption", Static).render())
        assert verdict.startswith(f"{len(found.differences)} differences")
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, CompareScreen)
        app.query_one("#history-list", ListView).focus()
        app.query_one("#history-list", ListView).index = 0
        await pilot.press("c", "down", "down", "c")  # the same prompt twice
        await pilot.pause()
        assert rows(app.screen) == []
        assert str(app.screen.query_one("#compare-caption", Static).render()).startswith(
            "no difference"
        )
        assert not compare_steps(first, third).differences
