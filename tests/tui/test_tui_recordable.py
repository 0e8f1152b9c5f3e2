"""The workbench runs what a session records: a positions-restricted patching sweep (the
last-position sweep that finds the answer layer) and attention steps recorded by scripts."""

from __future__ import annotations

import pytest

pytest.importorskip("textual")

from textual.widgets import Input, Static

from mlxterp.session import Session
from mlxterp_tui.app import WorkbenchApp

from .pilot_helpers import settle

FRANCE, GERMANY = "The capital of France is", "The capital of Germany is"
pytestmark = pytest.mark.anyio


async def test_last_position_patching_sweep(model_dir, manager, tmp_path):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        app.query_one("#patch-clean", Input).value = FRANCE
        app.query_one("#patch-corrupted", Input).value = GERMANY
        app.query_one("#patch-positions", Input).focus()
        await pilot.press("minus", "1")  # typed, as a user would
        await pilot.press("ctrl+k")
        await settle(app, pilot)
        (step,) = app.session.steps
        assert step.kind == "activation_patching" and step.params["positions"] == [-1]
        last = len(manager.model(model_dir).encode(GERMANY)) - 1
        assert step.summary["positions"] == [last]
        path = tmp_path / "last.toml"
        app.session.save(path)
    reopened = Session.load(path, manager)
    assert reopened.steps[0].params["positions"] == [-1]
    app = WorkbenchApp(model_dir, session=reopened, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        assert app.query_one("#patch-positions", Input).value == "-1"  # the form, back


async def test_bad_positions_are_said_beside_the_fields(model_dir, manager):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        app.query_one("#patch-clean", Input).value = FRANCE
        app.query_one("#patch-corrupted", Input).value = GERMANY
        app.query_one("#patch-positions", Input).value = "last"
        app.query_one("#patch-positions", Input).focus()
        await pilot.press("ctrl+k")
        await settle(app, pilot)
        assert app.session.steps == []
        assert "positions" in str(app.query_one("#patch-message", Static).render())


async def test_reopens_an_attention_step_over_several_layers(model_dir, manager, tmp_path):
    path = tmp_path / "heads.toml"
    session = Session.new(model_dir, path, manager)
    session.run(manager, "attention", text="river king apple river king", layers=[1, 0])
    app = WorkbenchApp(model_dir, session=Session.load(path, manager), manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        assert app.is_running
        assert "layer 1" in str(app.query_one("#chart-caption", Static).render())


async def test_reopens_batched_and_chat_steps_a_script_recorded(model_dir, manager, tmp_path):
    path = tmp_path / "script.toml"
    session = Session.new(model_dir, path, manager)
    session.run(manager, "logit_lens", text=[FRANCE, GERMANY], layers=[0, 1])
    session.run(
        manager,
        "activation_patching",
        clean=[FRANCE, FRANCE],
        corrupted=[GERMANY, "The capital of Italy is"],
        positions=-1,
    )
    session.run(manager, "steering", positive=["a b", "c d"], negative="e f", layer=1, prompt="x")
    app = WorkbenchApp(model_dir, session=Session.load(path, manager), manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        assert app.is_running
        assert app.query_one("#prompt", Input).history == [FRANCE]  # a batch's first prompt
        assert app.query_one("#patch-clean", Input).value == FRANCE
        assert app.query_one("#patch-positions", Input).value == "-1"
        assert app.query_one("#steer-positive", Input).value == "a b"
        rows = app.query_one("#lens-table").row_count
        assert rows == 2  # the first prompt's lens, one row per layer
