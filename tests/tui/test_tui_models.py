"""Pilot tests of the model picker (``ctrl+l``): pick or type a model, it loads in the
background, the session goes on with it or (with steps of another model) asks first; a
model that fails to load is said in the picker and the old one stays; Esc cancels."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("textual")

from textual.widgets import DataTable, Input, OptionList, Static

from mlxterp.loading import DEMO_DIR
from mlxterp.session import Session
from mlxterp_tui.actions import palette_actions
from mlxterp_tui.app import WorkbenchApp
from mlxterp_tui.model_picker import ModelScreen
from mlxterp_tui.panes.model_tree import model_summary
from mlxterp_tui.screens import ChoiceScreen, PathScreen

from .pilot_helpers import settle, until

PROMPT = "The capital of France is"
pytestmark = pytest.mark.anyio


@pytest.fixture
def here(home, tmp_path, monkeypatch):
    """The current folder, holding a copy of the demo model; no model cache anywhere else."""
    work = tmp_path / "work"
    shutil.copytree(DEMO_DIR, work / "demo-copy")
    monkeypatch.chdir(work)
    return work


def demo_summary(manager) -> str:
    """The Model pane's line for the demo model's copy."""
    return model_summary(manager.model("demo"), "demo-copy")


def info(app) -> str:
    return str(app.query_one("#model-info", Static).render())


async def run_lens(app, pilot):
    app.query_one("#prompt", Input).value = PROMPT
    app.query_one("#prompt", Input).focus()
    await pilot.press("enter")
    await settle(app, pilot)


async def open_picker(app, pilot) -> ModelScreen:
    await pilot.press("ctrl+l")
    await until(app, pilot, lambda: isinstance(app.screen, ModelScreen) and app.screen._models)
    assert isinstance(app.screen, ModelScreen)  # its list filled in by a worker
    return app.screen


async def pick(app, pilot, path, done) -> None:
    """Choose ``path`` from the picker's list (↓ from the field, then Enter on it), and let
    the app work until ``done()``."""
    picker = await open_picker(app, pilot)
    at = [m.path for m in picker._models].index(path)
    await pilot.press("down")
    picker.query_one("#model-list", OptionList).highlighted = at
    await pilot.press("enter")
    await until(app, pilot, done)


def asking(app, kind):
    return lambda: isinstance(app.screen, kind)


def lens_summary(app) -> list[str]:
    table = app.query_one("#lens-table", DataTable)
    return [str(c) for row in range(table.row_count) for c in table.get_row_at(row)]


async def test_picked_model_replaces_the_model_then_lens_save_reopen(model_dir, manager, here):
    path = here / "work.toml"
    copy = here / "demo-copy"
    app = WorkbenchApp(model_dir, session=Session.new(model_dir, path, manager), manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        app.query_one("#prompt", Input).value = PROMPT
        await pick(app, pilot, copy, lambda: info(app).startswith("demo-copy"))
        assert not isinstance(app.screen, ModelScreen)
        assert info(app) == demo_summary(manager)
        assert app.session.model_ref == str(copy) and app.model is manager.model(str(copy))
        assert app.query_one("#prompt", Input).value == PROMPT  # kept
        assert "model: demo-copy" in str(app.query_one("#status", Static).render())
        await run_lens(app, pilot)
        step = app.session.steps[-1]
        on_demo = Session.new("demo", manager=manager).compute(manager, "logit_lens", **step.params)
        assert step.summary["top_strs"] == on_demo.summary["top_strs"]  # the demo's lens
        shown = lens_summary(app)
        await pilot.press("ctrl+s")
        await settle(app, pilot)
    assert Session.load(path).model_ref == str(copy)
    again = WorkbenchApp(session=Session.load(path, manager), manager=manager)
    async with again.run_test(size=(100, 30)) as pilot:
        await settle(again, pilot)
        assert info(again) == demo_summary(manager)
        assert lens_summary(again) == shown


async def test_typed_path_and_the_palette_reach_the_picker(model_dir, manager, here):
    assert "load_model" in [a.id for a in palette_actions()]
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        assert ("^l", "load_model") in [(r[0], r[2]) for r in app.key_rows()]  # help
        await open_picker(app, pilot)
        await pilot.press(*"demo-copy", "enter")
        await until(app, pilot, lambda: info(app).startswith("demo-copy"))
        assert app.session.model_ref == "demo-copy"
        assert info(app) == demo_summary(manager)


async def test_steps_of_another_model_ask_first(model_dir, manager, here):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await run_lens(app, pilot)
        old_lens = lens_summary(app)
        await pick(app, pilot, here / "demo-copy", asking(app, ChoiceScreen))
        assert isinstance(app.screen, ChoiceScreen)  # the session has a step of the llama
        question = str(app.screen.query_one("#choice-question", Static).render())
        assert "fingerprint differs" in question and "new session" in question
        app.screen.query_one("#choice-keep").focus()
        await pilot.press("enter")
        await until(app, pilot, lambda: not isinstance(app.screen, ChoiceScreen))
        assert app.session.model_ref == model_dir and len(app.session.steps) == 1
        assert lens_summary(app) == old_lens and info(app).startswith("snapmodel")

        await pick(app, pilot, here / "demo-copy", asking(app, ChoiceScreen))
        app.screen.query_one("#choice-new").focus()  # "switch, don't save"
        await pilot.press("enter")
        await until(app, pilot, lambda: info(app).startswith("demo-copy"))
        assert app.session.model_ref == str(here / "demo-copy") and app.session.steps == []
        assert lens_summary(app) == []  # the old model's lens is gone with its session
        assert app.query_one("#prompt", Input).value == PROMPT
        assert info(app).startswith("demo-copy")
        await run_lens(app, pilot)
        assert [s.kind for s in app.session.steps] == ["logit_lens"]
        assert lens_summary(app) != old_lens


async def test_a_model_that_fails_to_load_is_said_and_the_old_one_stays(model_dir, manager, here):
    broken = here / "broken"
    broken.mkdir()
    shutil.copy(DEMO_DIR / "config.json", broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        before = app.model
        await pick(app, pilot, broken, lambda: app.screen.query_one("#model-message").display)
        assert isinstance(app.screen, ModelScreen)  # still open, saying why
        said = str(app.screen.query_one("#model-message", Static).render())
        assert said.startswith(f"The current model stays. SessionError: the model '{broken}'")
        assert "safetensors" in said and "Traceback" not in said
        await pilot.press("escape")
        await settle(app, pilot)
        assert not isinstance(app.screen, ModelScreen)
        assert app.model is before and app.session.model_ref == model_dir
        assert info(app).startswith("snapmodel")


async def test_escape_cancels_a_load_under_way(model_dir, manager, here):
    shutil.copytree(DEMO_DIR, here / "slow-copy")
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        picker = await open_picker(app, pilot)
        with manager._lock:  # holds the load back until the picker is closed
            await pilot.press(*"slow-copy", "enter")

            def status() -> str:
                return str(picker.query_one("#model-status", Static).render())

            await until(app, pilot, lambda: status().startswith("loading"), workers=False)
            assert status().startswith("loading slow-copy")  # the screen answers meanwhile
            await pilot.press("escape")
            await until(app, pilot, lambda: app.screen is not picker, workers=False)
            assert not isinstance(app.screen, ModelScreen)
        await settle(app, pilot)  # the load ends in the background; nothing takes it up
        assert app.session.model_ref == app.state.model_ref == model_dir
        assert info(app).startswith("snapmodel") and not isinstance(app.screen, ModelScreen)


async def test_save_then_switch_keeps_the_old_session_in_its_file(model_dir, manager, here):
    path = here / "old.toml"
    app = WorkbenchApp(model_dir, session=Session.new(model_dir, path, manager), manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await run_lens(app, pilot)
        await pick(app, pilot, DEMO_DIR, asking(app, ChoiceScreen))  # the embedded demo
        app.screen.query_one("#choice-save").focus()
        await pilot.press("enter")
        await until(app, pilot, lambda: info(app).startswith("demo:"))
        assert app.session.model_ref == "demo" and app.session.steps == []
        assert app.session.path is None and info(app).startswith("demo:")
        await open_picker(app, pilot)
        await pilot.press(*"demo", "enter")  # the model in use: nothing changes

        def in_use() -> bool:
            return any("the model in use" in n.message for n in app._notifications)

        await until(app, pilot, in_use)
        assert in_use()
    saved = Session.load(path)
    assert saved.model_ref == model_dir and [s.kind for s in saved.steps] == ["logit_lens"]


async def test_save_then_switch_asks_for_a_path_first(model_dir, manager, here):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await run_lens(app, pilot)
        await pick(app, pilot, DEMO_DIR, asking(app, ChoiceScreen))
        app.screen.query_one("#choice-save").focus()
        await pilot.press("enter")
        await until(app, pilot, asking(app, PathScreen))
        assert isinstance(app.screen, PathScreen)  # the session has no file yet
        await pilot.press(*"kept.toml", "enter")
        await until(app, pilot, lambda: info(app).startswith("demo:"))
        assert app.session.model_ref == "demo" and app.session.steps == []
    assert Session.load(here / "kept.toml").model_ref == model_dir
