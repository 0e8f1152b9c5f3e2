"""Side by side: two steps from the History pane (c marks one, c on another shows every
value of both, the differences marked, numbers as replay compares them), and a session
against its replay (F5, Enter on a step)."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable, Input, ListView, Static

from mlxterp.session import Session, compare_steps
from mlxterp_tui.app import WorkbenchApp
from mlxterp_tui.compare_screens import ReplayScreen, SideBySideScreen

from .pilot_helpers import settle

pytestmark = pytest.mark.anyio


async def lens(app, pilot, prompt: str) -> None:
    app.query_one("#prompt", Input).value = prompt
    app.query_one("#prompt", Input).focus()
    await pilot.press("enter")
    await settle(app, pilot)


def rows(screen) -> list[list[str]]:
    """The table's rows: ``[mark, where, left, right]``."""
    table = screen.query_one("#compare-table", DataTable)
    return [[str(c) for c in table.get_row_at(r)] for r in range(table.row_count)]


def marked(screen) -> list[list[str]]:
    """The rows marked as differing, without the mark."""
    return [r[1:] for r in rows(screen) if r[0] == "≠"]


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
        assert isinstance(app.screen, SideBySideScreen)
        found = compare_steps(first, second)
        everything, shown = rows(app.screen), marked(app.screen)
        assert ["params.text", "The capital of France is", "The capital of Germany is"] in shown
        tokens = next(r for r in shown if r[0] == "summary.tokens")
        assert "France" in tokens[1] and "Germany" in tokens[2]
        assert ["", "kind", "logit_lens", "logit_lens"] in everything  # the same, unmarked
        # every difference lies in a marked row
        paths = {r[0] for r in shown}
        assert all(any(d.path.startswith(p) for p in paths) for d in found.differences)
        await pilot.press("d")  # only the differences
        assert len(rows(app.screen)) == len(shown) < len(everything)
        await pilot.press("d")
        assert len(rows(app.screen)) == len(everything)
        verdict = str(app.screen.query_one("#compare-caption", Static).render())
        assert verdict.startswith(f"{len(found.differences)} differences")
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, SideBySideScreen)
        app.query_one("#history-list", ListView).focus()
        app.query_one("#history-list", ListView).index = 0
        await pilot.press("c", "down", "down", "c")  # the same prompt twice
        await pilot.pause()
        assert marked(app.screen) == [] and rows(app.screen)
        assert str(app.screen.query_one("#compare-caption", Static).render()).startswith(
            "no difference"
        )
        assert not compare_steps(first, third).differences


async def test_a_replay_shows_each_step_recorded_and_replayed(manager, tmp_path):
    """A colleague's file whose recorded lens differs from what the model gives now: F5
    says which step, Enter on it shows both results with the difference marked."""
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await lens(app, pilot, "The capital of France is")
        await lens(app, pilot, "The capital of Germany is")
        path = app.session.save(tmp_path / "lens.toml")
    recorded = app.session.steps[1].summary["top_probs"][5][-1]
    text = path.read_text(encoding="utf-8")
    assert text.count(repr(recorded)) == 1  # the value the file is edited at
    path.write_text(text.replace(repr(recorded), "0.123"), encoding="utf-8")

    session = Session.load(path, manager=manager)
    again = WorkbenchApp("demo", session=session, manager=manager)
    async with again.run_test(size=(100, 30)) as pilot:
        await settle(again, pilot)
        again.query_one("#lens-table").focus()
        await pilot.press("f5")
        await settle(again, pilot)
        assert isinstance(again.screen, ReplayScreen)
        caption = str(again.screen.query_one("#report-caption", Static).render())
        assert caption.startswith("1 of 2 steps match")
        table = again.screen.query_one("#report-table", DataTable)
        assert [str(table.get_row_at(r)[0]) for r in range(2)] == ["ok", "FAIL"]
        table.focus()
        await pilot.press("down", "enter")
        await pilot.pause()
        assert isinstance(again.screen, SideBySideScreen)
        assert [r[0] for r in marked(again.screen)] == ["top_probs[5]"]
        (row,) = marked(again.screen)
        assert "0.123" in row[1] and f"{recorded:.6g}" in row[2]
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(again.screen, ReplayScreen)
