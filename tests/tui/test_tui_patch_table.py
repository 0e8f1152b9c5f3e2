"""The Patch pane's table: recovery drawn as a signed bar (a negative recovery points left of
the axis, in red), and a sweep by position shown as a layer x position table."""

from __future__ import annotations

import pytest
from textual.widgets import Checkbox, DataTable, Input

from mlxterp.session import Session
from mlxterp_tui.app import WorkbenchApp

from .pilot_helpers import settle

pytestmark = pytest.mark.anyio


async def patch(app, pilot, component: str, by_position: bool = False) -> None:
    app.action_show_pane("patching")
    app.query_one("#patch-clean", Input).value = "The capital of France is"
    app.query_one("#patch-corrupted", Input).value = "The capital of Germany is"
    app.query_one("#patch-component").value = component
    app.query_one("#patch-metric").value = "logit_diff"
    app.query_one("#patch-answer", Input).value = "␣Paris,␣Berlin"
    app.query_one("#patch-by-position", Checkbox).value = by_position
    app.query_one("#patch-table").focus()
    await pilot.press("ctrl+k")
    await settle(app, pilot)


def rows(app) -> list[list]:
    table = app.query_one("#patch-table", DataTable)
    return [table.get_row_at(r) for r in range(table.row_count)]


async def test_negative_recovery_is_a_bar_to_the_left_of_the_axis(manager):
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await patch(app, pilot, "attn")  # on the demo model some attention layers hurt
        recovery = app.session.steps[-1].summary["recovery"]
        assert min(recovery) < -1 and max(recovery) > 1
        for value, (_layer, shown, bar) in zip(recovery, rows(app), strict=True):
            assert float(shown) == pytest.approx(value, abs=0.01)
            axis, blocks = bar.plain.index("│"), [i for i, c in enumerate(bar.plain) if c == "█"]
            if round(abs(value) * 20 / 100):
                assert blocks and all((i < axis) == (value < 0) for i in blocks), (value, bar)
                (span,) = bar.spans  # the blocks, coloured by sign
                assert (span.start, span.end) == (blocks[0], blocks[-1] + 1)
                assert span.style == ("red" if value < 0 else "blue")


async def test_a_sweep_by_position_shows_every_layer_and_position(manager, tmp_path):
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await patch(app, pilot, "mlp", by_position=True)
        summary = app.session.steps[-1].summary
        table = app.query_one("#patch-table", DataTable)
        labels = [str(c.label) for c in table.columns.values()]
        assert labels[:2] == ["layer", "recovery %"]
        assert labels[2:] == [
            f"{p} {t}"[:9] for p, t in zip(summary["positions"], summary["tokens"], strict=True)
        ]
        shown = rows(app)
        assert len(shown) == 16
        for cells, matrix_row in zip(shown, summary["matrix"], strict=True):
            assert [float(c) for c in cells[2:]] == pytest.approx(matrix_row, abs=0.01)
        app.session.save(tmp_path / "p.toml")
    again = WorkbenchApp(
        "demo", session=Session.load(tmp_path / "p.toml", manager=manager), manager=manager
    )
    async with again.run_test(size=(80, 24)) as pilot:
        await settle(again, pilot)
        assert [[str(c) for c in r] for r in rows(again)] == [[str(c) for c in r] for r in shown]
