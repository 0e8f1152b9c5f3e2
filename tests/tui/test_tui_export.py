"""Pilot tests of export (``e``): the shown step's JSON and CSV land beside the session."""

from __future__ import annotations

import csv
import json

import pytest

pytest.importorskip("textual")

from textual.widgets import Input

from mlxterp.session import Session
from mlxterp_tui.app import WorkbenchApp
from mlxterp_tui.messages import files_text

from .pilot_helpers import settle

PROMPT = "The capital of France is"
pytestmark = pytest.mark.anyio


def messages(app) -> list[str]:
    return [n.message for n in app._notifications]


async def run_lens(app, pilot):
    await settle(app, pilot)
    app.query_one("#prompt", Input).value = PROMPT
    app.query_one("#prompt", Input).focus()
    await pilot.press("enter")
    await settle(app, pilot)


async def export(app, pilot):
    await pilot.press("escape")  # out of the field: there `e` would be typed
    await pilot.press("e")
    await settle(app, pilot)


async def test_e_exports_the_lens_beside_the_session(model_dir, manager, tmp_path):
    path = tmp_path / "work.toml"
    app = WorkbenchApp(model_dir, session=Session.new(model_dir, path, manager), manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await run_lens(app, pilot)
        await export(app, pilot)
        step = app.session.steps[-1]
        assert step.kind == "logit_lens"
        assert app.query_one("#prompt", Input).value == PROMPT  # no `e` typed
        js = tmp_path / "work.step-0-logit_lens.json"
        cs = tmp_path / "work.step-0-logit_lens.csv"
        assert json.loads(js.read_text())["params"] == step.params
        _comment, header, *rows = list(csv.reader(cs.read_text().splitlines()))
        assert header[:4] == ["row", "layers", "column", "tokens"]
        assert len(rows) == len(step.summary["layers"]) * len(step.summary["tokens"])
        assert f"exported {tmp_path / 'work.step-0-logit_lens.'}{{json, csv}}" in messages(app)


async def test_e_without_steps_says_there_is_nothing(model_dir, manager, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        app.set_focus(None)
        await pilot.press("e")
        await settle(app, pilot)
        assert any("nothing to export" in m for m in messages(app))
        assert list(tmp_path.iterdir()) == []


async def test_e_into_an_unwritable_folder_notifies_and_stays_up(model_dir, manager, tmp_path):
    blocker = tmp_path / "gone"
    blocker.write_text("")  # a file where the session's folder should be
    app = WorkbenchApp(model_dir, session=Session.new(model_dir, None, manager), manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await run_lens(app, pilot)
        app.session.path = blocker / "work.toml"  # as if its folder were gone
        await export(app, pilot)
        assert app.is_running
        assert any(n.title == "export failed" for n in app._notifications)


async def test_e_writes_the_chart_shown_as_text_svg_and_png(model_dir, manager, tmp_path):
    path = tmp_path / "work.toml"
    app = WorkbenchApp(model_dir, session=Session.new(model_dir, path, manager), manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        app.query_one("#patch-clean", Input).value = PROMPT
        app.query_one("#patch-corrupted", Input).value = "The capital of Germany is"
        app.query_one("#patch-table").focus()
        await pilot.press("ctrl+k")
        await settle(app, pilot)
        await pilot.press("3")  # the chart pane draws the sweep's recovery per layer
        await export(app, pilot)
        stem = "work.step-0-activation_patching"
        suffixes = (".json", ".csv", ".chart.txt", ".chart.svg", ".chart.png")
        written = [tmp_path / f"{stem}{s}" for s in suffixes]
        assert all(p.exists() for p in written)
        title, *chart = written[2].read_text(encoding="utf-8").splitlines()
        assert title.startswith("# activation_patching step 0, params: {")
        assert "recovery %" in "\n".join(chart) and any("█" in line for line in chart)
        assert len(chart) == 30 and max(map(len, chart)) == 100  # the export size
        assert written[3].read_text(encoding="utf-8").startswith("<svg")
        assert written[4].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        endings = "{json, csv, chart.txt, chart.svg, chart.png}"
        assert f"exported {tmp_path / stem}.{endings}" in messages(app)  # one short line


def test_files_text_names_the_folder_and_stem_once(tmp_path):
    same = [tmp_path / "a.b.step-2-trace.json", tmp_path / "a.b.step-2-trace.chart.svg"]
    assert files_text(same) == f"{tmp_path / 'a.b.step-2-trace.'}{{json, chart.svg}}"
    assert files_text(same[:1]) == str(same[0])
    apart = [tmp_path / "x.json", tmp_path / "sub" / "x.csv"]
    assert files_text(apart) == f"{apart[0]}, {apart[1]}"
    assert files_text([tmp_path / "x", tmp_path / "y"]) == f"{tmp_path / 'x'}, {tmp_path / 'y'}"
