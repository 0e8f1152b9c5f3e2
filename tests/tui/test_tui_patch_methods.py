"""The Patch pane's other methods: attribution patching (the gradient estimate of every
layer x position patch) and causal tracing, chosen in the pane, run with ctrl+k, recorded,
saved, reopened and shown again, and drawn as heatmaps in the chart pane."""

from __future__ import annotations

import pytest
from textual.widgets import Checkbox, DataTable, Input, Select, Static

from mlxterp_tui.app import WorkbenchApp

from .pilot_helpers import reopened, settle

pytestmark = pytest.mark.anyio
PROMPT = "The capital of France is"


async def choose(app, pilot, method: str, **fields: str) -> None:
    """Pick ``method`` in the pane, fill the fields and press ctrl+k from the table."""
    app.action_show_pane("patching")
    app.query_one("#patch-method", Select).value = method
    await pilot.pause()  # the form follows the method (fields enabled, placeholders)
    for name, value in fields.items():
        app.query_one(f"#patch-{name}", Input).value = value
    app.query_one("#patch-table").focus()
    await pilot.press("ctrl+k")
    await settle(app, pilot)


def cells(app) -> list[list[str]]:
    table = app.query_one("#patch-table", DataTable)
    return [[str(c) for c in table.get_row_at(r)] for r in range(table.row_count)]


def caption(app, which: str = "#patch-caption") -> str:
    return str(app.query_one(which, Static).render())


async def test_gradient_estimate_fills_a_layer_by_position_table_and_reopens(manager, tmp_path):
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        app.query_one("#patch-metric", Select).value = "logit_diff"
        await choose(
            app,
            pilot,
            "attribution_patching",
            clean=PROMPT,
            corrupted="The capital of Germany is",
            answer="␣Paris,␣Berlin",
        )
        # by position and positions mean nothing to the estimate: they are switched off
        assert app.query_one("#patch-by-position", Checkbox).disabled
        assert app.query_one("#patch-positions", Input).disabled
        step = app.session.steps[-1]
        assert step.kind == "attribution_patching"
        assert step.params["answer"] == [" Paris", " Berlin"]
        summary = step.summary
        gap = summary["clean_value"] - summary["corrupted_value"]
        shown = cells(app)
        assert len(shown) == 16 and len(shown[0]) == 2 + len(summary["positions"])
        for row, scores in zip(shown, summary["scores"], strict=True):
            estimate = [s / gap * 100 for s in scores]
            assert [float(c) for c in row[2:]] == pytest.approx(estimate, abs=0.01)
            assert float(row[1]) == pytest.approx(sum(estimate), abs=0.02)  # the whole layer
        assert "estimated recovery %" in caption(app)
        app.action_show_pane("charts")
        await pilot.pause()
        assert "Estimated logit_diff change" in caption(app, "#chart-caption")
        app.session.save(tmp_path / "estimate.toml")
    async with reopened(tmp_path / "estimate.toml", manager) as again:
        assert cells(again) == shown
        assert again.query_one("#patch-method", Select).value == "attribution_patching"
        assert again.query_one("#patch-answer", Input).value == "␣Paris,␣Berlin"


async def test_causal_tracing_marks_the_subject_and_finds_the_fact_there(manager, tmp_path):
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        app.query_one("#patch-component", Select).value = "output"  # the hidden state
        await choose(
            app, pilot, "causal_tracing", clean=PROMPT, corrupted="France", answer="␣Paris"
        )
        assert app.query_one("#patch-corrupted", Input).placeholder.startswith("subject")
        step = app.session.steps[-1]
        assert step.kind == "causal_tracing"
        wanted = {"prompt": PROMPT, "subject": "France", "target": " Paris"}
        assert {k: step.params.get(k) for k in [*wanted, "component"]} == {
            **wanted,
            "component": None,
        }
        table = app.query_one("#patch-table", DataTable)
        labels = [str(c.label) for c in table.columns.values()]
        assert labels[0] == "layer" and "all" not in labels  # restorations do not add up
        marked = [i for i, label in enumerate(labels) if "*" in label]
        assert [labels[i] for i in marked] == ["4 *␣Franc"]
        # the demo model recalls its capitals from the subject in the early layers: restoring
        # the subject's last token there gives back most of what the noise took
        early = [float(row[marked[0]]) for row in cells(app)[:5]]
        assert max(early) > 80
        assert "causal tracing of ␣Paris" in caption(app)
        app.action_show_pane("charts")
        await pilot.pause()
        assert "p(Paris) restoring" in caption(app, "#chart-caption")
        app.session.save(tmp_path / "tracing.toml")
        shown = cells(app)
    async with reopened(tmp_path / "tracing.toml", manager) as again:
        assert cells(again) == shown
        assert again.query_one("#patch-method", Select).value == "causal_tracing"
        assert again.query_one("#patch-corrupted", Input).value == "France"


async def test_a_subject_outside_the_prompt_is_said_beside_the_fields(manager):
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await choose(app, pilot, "causal_tracing", clean=PROMPT, corrupted="Germany")
        message = str(app.query_one("#patch-message", Static).render())
        assert "'Germany' is not a part of the clean prompt" in message
        assert not app.session.steps
