"""Every button of every pane, clicked and pressed (Enter, Space), does what it says."""

from __future__ import annotations

import pytest

pytest.importorskip("textual")

from textual.widgets import Input

from mlxterp_tui.app import WorkbenchApp
from mlxterp_tui.panes.interventions import InterventionScreen

from .pilot_helpers import settle

PROMPT = "The capital of France is"
HANDS = ["click", "enter", "space"]
pytestmark = pytest.mark.anyio


async def press_button(pilot, selector: str, hand: str) -> None:
    """Use the button as a user would: a click, or focus and Enter / Space."""
    if hand == "click":
        await pilot.click(selector)
    else:
        pilot.app.screen.query_one(selector).focus()
        await pilot.press(hand)


def fill(app, values: dict[str, str]) -> None:
    for selector, value in values.items():
        app.query_one(selector, Input).value = value


@pytest.mark.parametrize("hand", HANDS)
async def test_patch_button_runs_the_sweep(model_dir, manager, hand):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("escape", "4")
        fill(app, {"#patch-clean": PROMPT, "#patch-corrupted": "The capital of Germany is"})
        await press_button(pilot, "#patch-run", hand)
        await settle(app, pilot)
        assert [s.kind for s in app.session.steps] == ["activation_patching"]
        assert app.query_one("#patch-table").row_count == manager.model(model_dir).num_layers


@pytest.mark.parametrize("hand", HANDS)
async def test_steer_button_runs_steering(model_dir, manager, hand):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("escape", "6")
        fill(
            app,
            {
                "#steer-positive": "I love it",
                "#steer-negative": "I hate it",
                "#steer-prompt": "It is",
                "#steer-layer": "1",
            },
        )
        await press_button(pilot, "#steer-run", hand)
        await settle(app, pilot)
        assert [s.kind for s in app.session.steps] == ["steering"]
        assert "steered" in str(app.query_one("#steer-result").render())


@pytest.mark.parametrize("hand", HANDS)
async def test_generate_button_generates_at_80x24(model_dir, manager, hand):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("escape", "6")
        fill(app, {"#steer-prompt": "It is", "#gen-max": "3"})
        await press_button(pilot, "#gen-run", hand)
        await settle(app, pilot)
        assert [s.kind for s in app.session.steps] == ["generate"]
        assert "generated (3 tokens)" in str(app.query_one("#gen-result").render())
        assert app.query_one("#gen-result").region.bottom <= 22  # above the status line


@pytest.mark.parametrize("hand", HANDS)
async def test_heads_button_runs_the_analysis_at_80x24(model_dir, manager, hand):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("escape", "8")
        await press_button(pilot, "#heads-run", hand)
        await settle(app, pilot)
        assert [s.kind for s in app.session.steps] == ["head_detectors"]
        assert app.query_one("#heads-table").row_count > 0


@pytest.mark.parametrize("hand", HANDS)
async def test_attention_button_charts_a_head(model_dir, manager, hand):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("escape", "3")
        fill(app, {"#prompt": PROMPT, "#attn-layer": "1", "#attn-head": "1"})
        await press_button(pilot, "#attn-run", hand)
        await settle(app, pilot)
        assert [s.kind for s in app.session.steps] == ["attention"]
        assert "layer 1 head 1" in str(app.query_one("#chart-caption").render())


@pytest.mark.parametrize("hand", HANDS)
async def test_intervention_form_buttons_save_and_cancel(model_dir, manager, hand):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        app.query_one("#module-tree").focus()
        await pilot.press("i")
        assert isinstance(app.screen, InterventionScreen)
        fill(app.screen, {"#iv-module": "layers.1.mlp", "#iv-params": "factor=0.5"})
        await press_button(pilot, "#iv-cancel", hand)
        await settle(app, pilot)
        assert not isinstance(app.screen, InterventionScreen)
        assert app.session.intervention_entries() == [] and app.session.steps == []
        await pilot.press("i")
        fill(app.screen, {"#iv-module": "layers.1.mlp", "#iv-params": "factor=0.5"})
        await press_button(pilot, "#iv-save", hand)
        await settle(app, pilot)
        assert not isinstance(app.screen, InterventionScreen)
        [entry] = app.session.intervention_entries()
        assert entry.module == "model.layers.1.mlp" and entry.enabled
        assert entry.description["params"] == {"factor": 0.5}
        assert app.query_one("#iv-table").row_count == 1


@pytest.mark.parametrize("hand", HANDS)
async def test_quit_dialog_buttons(model_dir, manager, hand):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        fill(app, {"#prompt": PROMPT})
        await pilot.press("ctrl+r")
        await settle(app, pilot)
        await pilot.press("ctrl+q")
        await pilot.pause()
        await press_button(pilot, "#choice-stay", hand)
        await pilot.pause()
        assert app.is_running and app.screen is app.main
        await pilot.press("ctrl+q")
        await pilot.pause()
        await press_button(pilot, "#choice-discard", hand)
        await pilot.pause()
        assert not app.is_running


async def test_enter_right_after_a_click_presses_again():
    """Regression: Textual's button ignores a key while the last press's highlight shows
    (0.2 s), so Enter right after a click on Run did nothing (the jobs pane test caught it
    on a fast machine)."""
    from textual.app import App, ComposeResult

    from mlxterp_tui.widgets import KeyButton

    presses: list[str] = []

    class OneButton(App):
        def compose(self) -> ComposeResult:
            yield KeyButton("Run", id="run", action="app.count")

        def action_count(self) -> None:
            presses.append("pressed")

    app = OneButton()
    async with app.run_test() as pilot:
        await pilot.click("#run")
        app.query_one("#run").focus()
        await pilot.press("enter")
        await pilot.pause()
        assert len(presses) == 2
