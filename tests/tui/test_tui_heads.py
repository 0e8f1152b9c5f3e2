"""The Heads pane: head detectors, head patching, direct logit attribution and path patching
from the keyboard, on the demo model (which carries the circuits they find), each recorded,
saved, reopened and shown again."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable, Input, Select, Static

from mlxterp.demo_circuits import INDUCTION_HEADS, IOI_SUBJECT_SUPPRESSORS, ioi_pair
from mlxterp.session import Session
from mlxterp_tui.app import WorkbenchApp
from mlxterp_tui.panes.heads import sender_names
from mlxterp_tui.screens import PathScreen
from mlxterp_tui.widgets import signed_bar

from .pilot_helpers import settle

pytestmark = pytest.mark.anyio
CLEAN, CORRUPTED, (IO, S) = ioi_pair(0)


def fill(app, analysis: str, **fields: str) -> None:
    app.query_one("#heads-analysis", Select).value = analysis
    for name, value in fields.items():
        app.query_one(f"#heads-{name}", Input).value = value


async def run(app, pilot) -> None:
    """Press f7 as a person would, from the pane's first field."""
    app.query_one("#heads-clean", Input).focus()
    await pilot.press("f7")
    await settle(app, pilot)


def caption(app) -> str:
    return str(app.query_one("#heads-caption", Static).render())


def cells(app) -> list[list[str]]:
    table = app.query_one("#heads-table", DataTable)
    return [
        [str(getattr(c, "plain", c)) for c in table.get_row_at(r)] for r in range(table.row_count)
    ]


async def test_pane_8_runs_the_head_detectors_and_names_the_induction_head(manager):
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        app.query_one("#lens-table").focus()
        await pilot.press("8")
        assert app.query_one("#panes").active == "heads"
        await pilot.press("f7")  # the detectors need no prompt
        await settle(app, pilot)
        step = app.session.steps[-1]
        assert step.kind == "head_detectors"
        rows = cells(app)
        assert len(rows) == 16 * len(step.summary["scores"])  # a row per detection and layer
        layer, head = INDUCTION_HEADS[0]
        induction = [r for r in rows if r[0] == "induction" and r[1] == f"L{layer}"]
        assert float(induction[0][2 + head]) > 0.9
        assert f"induction L{layer}H{head}" in caption(app)


async def test_head_patching_saves_reopens_and_shows_the_same_table(manager, tmp_path):
    path = tmp_path / "heads.toml"
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        app.action_show_pane("heads")
        fill(app, "head_patching", clean=CLEAN, corrupted=CORRUPTED, answer=f"␣{IO[1:]},␣{S[1:]}")
        await run(app, pilot)
        step = app.session.steps[-1]
        assert step.kind == "head_patching" and step.params["answer"] == [IO, S]
        assert step.params["metric"] == "logit_diff"
        shown = cells(app)
        assert len(shown) == 16 and len(shown[0]) == 1 + 4
        best = max(
            (v, layer, h)
            for layer, row in enumerate(step.summary["recovery"])
            for h, v in enumerate(row)
        )
        assert f"L{best[1]}H{best[2]} {best[0]:.1f}%" in caption(app)
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, PathScreen)
        app.screen.query_one("#path-input", Input).value = str(path)
        await pilot.press("enter")
        await pilot.pause()
    session = Session.load(path, manager=manager)
    again = WorkbenchApp("demo", session=session, manager=manager)
    async with again.run_test(size=(120, 40)) as pilot:
        await settle(again, pilot)
        assert cells(again) == shown
        assert again.query_one("#heads-analysis", Select).value == "head_patching"
        assert again.query_one("#heads-corrupted", Input).value == CORRUPTED
        assert again.query_one("#heads-answer", Input).value == f"␣{IO[1:]},␣{S[1:]}"


async def test_direct_logit_attribution_lists_signed_parts_largest_first(manager):
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        app.action_show_pane("heads")
        fill(app, "direct_logit_attribution", clean=CLEAN, answer=f"␣{IO[1:]},␣{S[1:]}")
        await run(app, pilot)
        step = app.session.steps[-1]
        assert step.kind == "direct_logit_attribution"
        assert (step.params["target"], step.params["baseline"]) == (IO, S)
        summary = step.summary
        largest = max(
            zip(summary["labels"], summary["values"], strict=True), key=lambda p: abs(p[1])
        )
        first = cells(app)[0]
        assert first[0] == largest[0] and float(first[1]) == pytest.approx(largest[1], abs=1e-3)
        assert len(cells(app)) == len(summary["labels"])


async def test_path_patching_from_the_subject_suppressors(manager):
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        app.action_show_pane("heads")
        senders = ", ".join(f"{layer}.{head}" for layer, head in IOI_SUBJECT_SUPPRESSORS)
        fill(
            app,
            "path_patching",
            clean=CLEAN,
            corrupted=CORRUPTED,
            answer=f"␣{IO[1:]},␣{S[1:]}",
            senders=senders,
        )
        await run(app, pilot)
        step = app.session.steps[-1]
        assert step.kind == "path_patching"
        assert step.params["senders"] == [
            f"layers.{layer}.attn.heads.{head}" for layer, head in IOI_SUBJECT_SUPPRESSORS
        ]
        assert f"{step.summary['effect']:.1f}% of the change" in caption(app)
        assert [row[0] for row in cells(app)] == ["clean", "corrupted", "path-patched"]


@pytest.mark.parametrize(
    "analysis, fields, said",
    [
        ("direct_logit_attribution", {"clean": CLEAN}, "needs an answer"),
        ("head_patching", {"clean": CLEAN}, "needs a corrupted prompt"),
        ("path_patching", {"clean": CLEAN, "corrupted": CORRUPTED}, "needs senders"),
        ("head_patching", {"clean": CLEAN, "corrupted": CORRUPTED, "answer": "␣Mary"}, "two"),
        ("direct_logit_attribution", {"clean": CLEAN, "answer": "␣Mary Ann"}, "answers"),
    ],
)
async def test_bad_input_is_said_beside_the_fields_and_records_nothing(
    manager, analysis, fields, said
):
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        app.action_show_pane("heads")
        fill(app, analysis, **fields)
        await run(app, pilot)
        assert app.session.steps == [] and app.is_running
        assert said in str(app.query_one("#heads-message", Static).render())


def test_sender_shorthands_name_head_outputs():
    assert sender_names("13.2, L7H0, layers.3.mlp") == [
        "layers.13.attn.heads.2",
        "layers.7.attn.heads.0",
        "layers.3.mlp",
    ]


def test_signed_bars_point_left_for_negative_values():
    left, right = signed_bar(-1.0, 2.0).plain, signed_bar(1.0, 2.0).plain
    assert left.index("█") < left.index("│") and right.index("█") > right.index("│")
    assert left.count("█") == right.count("█") == 10
