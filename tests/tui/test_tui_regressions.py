"""One test per workbench bug of issues 11 and 13, each driving the app as a user would."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

pytest.importorskip("textual")

from textual.widgets import DataTable, Input, ListView, Static

from mlxterp.session import Session
from mlxterp_tui.actions import PANES
from mlxterp_tui.app import WorkbenchApp
from mlxterp_tui.commands import WorkbenchCommands
from mlxterp_tui.panes.interventions import InterventionScreen
from mlxterp_tui.screens import ChoiceScreen, HelpScreen, PathScreen
from mlxterp_tui.state import recovery_files

from .pilot_helpers import settle

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "The capital of France is"
pytestmark = pytest.mark.anyio


async def lens(app, pilot, text=PROMPT):
    app.query_one("#prompt", Input).value = text
    await pilot.press("ctrl+r")
    await settle(app, pilot)


def said(app, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


def notes(app) -> list[str]:
    return [n.message for n in app._notifications]


async def add_intervention(app, pilot, module: str, kind: str, params: str) -> None:
    app.query_one("#module-tree").focus()
    await pilot.press("i")
    assert isinstance(app.screen, InterventionScreen)
    app.screen.query_one("#iv-module", Input).value = module
    app.screen.query_one("#iv-kind").value = kind
    await pilot.pause()
    app.screen.query_one("#iv-params", Input).value = params
    app.screen.query_one("#iv-module", Input).focus()
    await pilot.press("enter")
    await settle(app, pilot)


# ---------------------------------------------------------------- crashes
async def test_space_as_first_key_and_prompt_deleted_to_a_space(manager):
    app = WorkbenchApp("demo", manager=manager)
    app.token_delay = 0
    async with app.run_test() as pilot:
        await settle(app, pilot)
        await pilot.press("space")
        await settle(app, pilot)
        await pilot.press("x", "backspace")
        await settle(app, pilot)
        assert app.is_running and app.query_one("#prompt", Input).value == " "


async def test_markup_in_typed_and_generated_text_is_shown_as_written(model_dir, manager, tmp_path):
    # a recorded continuation containing markup, shown when the session reopens
    session = Session.new(model_dir, manager=manager)
    step = session.compute(manager, "steering", positive="a", negative="b", prompt="It is", layer=0)
    step.summary["baseline"] = "[/b] closed [b]bold"
    session.record(step)
    session.save(tmp_path / "markup.toml")
    app = WorkbenchApp(model_dir, session=Session.load(tmp_path / "markup.toml"), manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        assert "[/b] closed [b]bold" in str(app.query_one("#steer-result", Static).render())
        await pilot.press(*"[/b] [red]x")  # typed into the prompt, then the lens on it
        await pilot.press("enter")
        await settle(app, pilot)
        assert app.is_running and app.session.steps[-1].kind == "logit_lens"
        await add_intervention(app, pilot, "[/b]", "scale", "factor=1")
        assert app.is_running and "[/b]" in said(app, "#iv-error")


# ---------------------------------------------------------------- work recorded or lost wrongly
async def test_escape_cancelled_sweep_records_nothing(model_dir, manager):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        release, entered = threading.Event(), threading.Event()
        real = app.session.compute

        def slow(*args, **kwargs):
            entered.set()
            release.wait(10)
            return real(*args, **kwargs)

        app.session.compute = slow
        await pilot.press("escape", "4")
        app.query_one("#patch-clean", Input).value = PROMPT
        app.query_one("#patch-corrupted", Input).value = "The capital of Germany is"
        await pilot.press("ctrl+k")
        assert entered.wait(10)
        app.query_one("#patch-table").focus()
        await pilot.press("escape")
        release.set()
        await settle(app, pilot)
        assert app.session.steps == [] and not app.session.dirty
        assert recovery_files(app.state_folder) == []  # nothing autosaved either
        await pilot.press("ctrl+k")  # running it again records it once
        await settle(app, pilot)
        assert [s.kind for s in app.session.steps] == ["activation_patching"]


async def test_shipped_session_is_byte_identical_after_use(manager):
    shipped = ROOT / "sessions" / "factual-recall.toml"
    before = shipped.read_bytes()
    app = WorkbenchApp("demo", session=Session.load(shipped), manager=manager)
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(app, pilot)
            assert app.session.path is None and app.state.copy_of == shipped
            assert "copy of factual-recall.toml" in str(app.query_one("#status").render())
            await lens(app, pilot)
            await pilot.press("ctrl+s")  # asks for a new name: never the shipped file
            assert isinstance(app.screen, PathScreen)
            app.screen.query_one("#path-input", Input).value = str(shipped)
            await pilot.press("enter")
            assert isinstance(app.screen, PathScreen)
            assert "shipped" in said(app, "#path-message")
            await pilot.press("escape")
        assert shipped.read_bytes() == before
    finally:
        if shipped.read_bytes() != before:  # never leave the checkout changed
            shipped.write_bytes(before)


async def test_read_only_session_opens_as_copy(model_dir, manager, tmp_path):
    path = tmp_path / "ro.toml"
    session = Session.new(model_dir, manager=manager)
    session.run(manager, "logit_lens", text=PROMPT)
    session.save(path)
    path.chmod(0o444)
    before = path.read_bytes()
    app = WorkbenchApp(model_dir, session=Session.load(path), manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        assert app.session.path is None and app.state.copy_of == path
        await lens(app, pilot)
        assert any("read-only" in m for m in notes(app))
    assert path.read_bytes() == before


async def test_save_as_refuses_what_opens_as_a_copy(model_dir, manager, tmp_path):
    # one rule for both: a file that would open as a copy (read-only here) is no target
    ro = tmp_path / "ro.toml"
    ro.write_text("")
    ro.chmod(0o444)
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        assert app._check_save_path(str(ro)) == ("ro.toml is read-only: choose another path", False)
        assert app._check_save_path(str(tmp_path / "new.toml")) is None


async def test_quit_with_unsaved_work_asks(model_dir, manager):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await lens(app, pilot)
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert app.is_running and isinstance(app.screen, ChoiceScreen)
        await pilot.press("escape")  # stay
        assert app.is_running and app.screen is app.main


async def test_unsaved_work_is_kept_from_the_first_step_and_offered_back(manager):
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        app.query_one("#lens-target", Input).value = "␣Paris"
        await lens(app, pilot)
        kept = recovery_files(app.state_folder)
        assert len(kept) == 1 and app.session.path is None  # before any save
        app.exit()  # as if the terminal closed: no quit dialog
    again = WorkbenchApp("demo", manager=manager)
    async with again.run_test(size=(100, 30)) as pilot:
        await settle(again, pilot)
        assert isinstance(again.screen, ChoiceScreen)
        await pilot.click("#choice-restore")
        await settle(again, pilot)
        assert [s.kind for s in again.session.steps] == ["logit_lens"]
        assert again.session.dirty and again.session.path is None
        assert again.query_one("#prompt", Input).value == PROMPT
        assert again.query_one("#lens-target", Input).value == "␣Paris"
        assert again.query_one("#lens-table", DataTable).row_count > 0


async def test_second_intervention_on_a_module_asks_replace_or_compose(model_dir, manager):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await add_intervention(app, pilot, "layers.1.mlp", "scale", "factor=0.5")
        await add_intervention(app, pilot, "layers.1.mlp", "clamp", "min_val=-1, max_val=1")
        assert isinstance(app.screen, ChoiceScreen)  # asks instead of replacing silently
        await pilot.click("#choice-compose")
        await settle(app, pilot)
        [entry] = app.session.intervention_entries()
        assert entry.description["kind"] == "compose"
        assert [s["kind"] for s in entry.description["params"]["steps"]] == ["scale", "clamp"]
        await add_intervention(app, pilot, "layers.1.mlp", "scale", "factor=2")
        await pilot.click("#choice-replace")
        await settle(app, pilot)
        [entry] = app.session.intervention_entries()
        assert entry.description == {"kind": "scale", "params": {"factor": 2.0}}


async def test_editing_an_intervention_onto_another_module_moves_it(model_dir, manager):
    # the remove's lens re-run used to mark the app busy, so the set was refused
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await lens(app, pilot)
        await add_intervention(app, pilot, "layers.0.mlp", "scale", "factor=0.5")
        assert [e.module for e in app.session.intervention_entries()] == ["model.layers.0.mlp"]
        app.query_one("#panes").active = "interventions"
        await pilot.pause()
        app.query_one("#iv-table").focus()
        await pilot.press("e")
        assert isinstance(app.screen, InterventionScreen)
        app.screen.query_one("#iv-module", Input).value = "layers.1.mlp"
        app.screen.query_one("#iv-module", Input).focus()
        await pilot.press("enter")
        await settle(app, pilot)
        [entry] = app.session.intervention_entries()  # the old module's entry is gone
        assert entry.module == "model.layers.1.mlp"
        assert entry.description == {"kind": "scale", "params": {"factor": 0.5}}
        assert not any("wait for the running step" in n for n in notes(app))


async def test_the_baseline_comparison_is_a_table_that_scrolls_to_the_last_layer(manager):
    # at 80x24 the comparison was a text block cut after layer 6, with no way to scroll
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await lens(app, pilot)  # the baseline
        await add_intervention(app, pilot, "layers.4", "scale", "factor=0")
        app.query_one("#panes").active = "interventions"
        await pilot.pause()
        app.query_one("#iv-table").focus()
        await pilot.press("tab")
        compare = app.query_one("#iv-compare", DataTable)
        assert app.focused is compare and compare.row_count == 16
        visible = compare.size.height - 1  # the header row
        assert 0 < visible < 16  # the table does not fit: it must scroll
        for _ in range(15):
            await pilot.press("down")
        await settle(app, pilot)
        assert compare.cursor_row == 15 and compare.scroll_offset.y > 0
        last = [str(cell) for cell in compare.get_row_at(15)]
        assert last[0] == "L15" and last[3] in ("", "*")
        changed = [str(compare.get_row_at(i)[3]) for i in range(16)]
        assert "*" in changed  # zeroing layer 4 changes some layer's top token


@pytest.mark.parametrize(
    "kind, params, expected",
    [
        ("scale", "factor=nan", "not a finite number"),
        ("scale", "factor=inf", "not a finite number"),
        ("noise", "std=-1", "out of range"),
        ("clamp", "min_val=2, max_val=1", "above max_val"),
    ],
)
async def test_non_finite_and_out_of_range_parameters_are_refused_in_the_form(
    model_dir, manager, kind, params, expected
):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await add_intervention(app, pilot, "layers.0.mlp", kind, params)
        assert isinstance(app.screen, InterventionScreen)
        assert expected in said(app, "#iv-error")
        assert app.session.intervention_entries() == []


async def test_numbers_and_answers_are_checked_beside_their_fields(model_dir, manager):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        app.query_one("#lens-topk", Input).value = "0"
        await lens(app, pilot)
        assert "out of range" in said(app, "#lens-message")
        app.query_one("#lens-topk", Input).value = "5"
        app.query_one("#lens-target", Input).value = "␣Paris␣Texas"
        await lens(app, pilot)
        assert "tokens" in said(app, "#lens-message")
        await pilot.press("escape", "6")
        for key, value in {"positive": "a", "negative": "b", "prompt": "c"}.items():
            app.query_one(f"#steer-{key}", Input).value = value
        app.query_one("#steer-coefficient", Input).value = "nan"
        await pilot.press("ctrl+g")
        await settle(app, pilot)
        assert "not a finite number" in said(app, "#steer-message")
        await pilot.press("escape", "4")
        app.query_one("#patch-clean", Input).value = PROMPT
        app.query_one("#patch-corrupted", Input).value = "The capital of Germany is"
        app.query_one("#patch-answer", Input).value = "␣Paris␣Texas,␣London"
        await pilot.press("ctrl+k")
        await settle(app, pilot)
        assert "tokens" in said(app, "#patch-message")
        assert app.session.steps == []


async def test_save_as_into_a_missing_folder_asks_then_creates_it(model_dir, manager, tmp_path):
    target = tmp_path / "new" / "folder" / "s.toml"
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await lens(app, pilot)
        await pilot.press("ctrl+s")
        app.screen.query_one("#path-input", Input).value = str(target)
        await pilot.press("enter")
        assert "does not exist" in said(app, "#path-message") and not target.exists()
        await pilot.press("enter")
        await pilot.pause()
        assert target.exists() and app.session.path == target and not app.session.dirty
        assert "saved" in str(app.query_one("#status").render())
        assert recovery_files(app.state_folder) == []  # saved work needs no recovery file


# ---------------------------------------------------------------- keys that never trap
async def test_ctrl_k_inside_a_patch_field_runs_patching(model_dir, manager):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("escape", "4")
        app.query_one("#patch-corrupted", Input).value = "The capital of Germany is"
        field = app.query_one("#patch-clean", Input)
        field.value = PROMPT
        field.focus()
        field.cursor_position = 4
        await pilot.press("ctrl+k")
        await settle(app, pilot)
        assert field.value == PROMPT  # not cut at the cursor
        assert [s.kind for s in app.session.steps] == ["activation_patching"]


async def test_panes_switch_from_inside_fields_and_escape_leaves_a_field(model_dir, manager):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        prompt = app.query_one("#prompt", Input)
        assert app.focused is prompt
        order = [pane for pane, _label, _name in PANES]
        assert order[:4] == ["model", "lens", "charts", "patching"]
        for pane in [*order[1:], order[0]]:  # f3 walks the panes from inside the prompt
            await pilot.press("f3")
            assert app.query_one("#panes").active == pane and app.focused is prompt
        await pilot.press("f2")
        assert app.query_one("#panes").active == order[-1]
        await pilot.press("f3", "f3", "f3", "f3")
        field = app.query_one("#patch-clean", Input)
        field.focus()
        await pilot.pause()
        await pilot.press("f3")  # from a Patch field too; the focus follows the pane
        assert app.query_one("#panes").active == "interventions"
        assert not isinstance(app.focused, Input)
        await pilot.press("f2")
        field.focus()
        await pilot.pause()
        await pilot.press("escape")
        assert not isinstance(app.focused, Input)
        await pilot.press("2")  # outside a field a digit switches panes
        assert app.query_one("#panes").active == "lens"
        assert app.query_one("#patch-clean", Input).value == ""


async def test_tabbing_into_the_prompt_keeps_its_text(model_dir, manager):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        prompt = app.query_one("#prompt", Input)
        prompt.value = "The capital"
        app.query_one("#module-tree").focus()
        await pilot.pause()
        for _ in range(20):
            if app.focused is prompt:
                break
            await pilot.press("shift+tab")
        assert app.focused is prompt
        await pilot.press("end", "x")
        assert prompt.value == "The capitalx"


async def test_prompt_undo_redo_and_history(model_dir, manager):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        prompt = app.query_one("#prompt", Input)
        await pilot.press(*"abc def")
        await pilot.press("ctrl+z")
        assert prompt.value == "abc "
        await pilot.press("ctrl+z", "ctrl+z")
        assert prompt.value == ""
        await pilot.press("ctrl+y", "ctrl+y", "ctrl+y")
        assert prompt.value == "abc def"
        await lens(app, pilot, "one")
        await lens(app, pilot, "two")
        prompt.focus()
        prompt.value = "draft"
        await pilot.press("up")
        assert prompt.value == "two"
        await pilot.press("up")
        assert prompt.value == "one"
        await pilot.press("down", "down")
        assert prompt.value == "draft"


async def test_history_highlights_the_newest_step(model_dir, manager):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await lens(app, pilot, "one")
        await lens(app, pilot, "two")
        await pilot.press("escape", "7")
        listing = app.query_one("#history-list", ListView)
        assert listing.index == 1
        assert listing.highlighted_child is listing.children[-1]


async def test_reopened_session_restores_prompt_forms_and_every_pane(model_dir, manager, tmp_path):
    path = tmp_path / "full.toml"
    session = Session.new(model_dir, manager=manager)
    session.run(manager, "logit_lens", text=PROMPT, top_k=4)
    session.run(
        manager,
        "activation_patching",
        clean=PROMPT,
        corrupted="The capital of Germany is",
        component="attn",
    )
    session.run(manager, "steering", positive="good", negative="bad", prompt="It is", layer=1)
    session.save(path)
    app = WorkbenchApp(model_dir, session=Session.load(path), manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        layers = manager.model(model_dir).num_layers
        assert app.query_one("#prompt", Input).value == PROMPT
        assert app.query_one("#lens-topk", Input).value == "4"
        assert app.query_one("#lens-table", DataTable).row_count == layers
        assert app.query_one("#patch-clean", Input).value == PROMPT
        assert app.query_one("#patch-component").value == "attn"
        assert app.query_one("#patch-table", DataTable).row_count == layers
        assert app.query_one("#steer-layer", Input).value == "1"
        assert "steered" in str(app.query_one("#steer-result", Static).render())
        assert len(app.query_one("#history-list", ListView)) == 3
        assert "saved" in str(app.query_one("#status").render())


async def test_typing_a_long_prompt_tokenizes_off_the_ui_thread_once_typing_pauses(
    model_dir, manager, monkeypatch
):
    model = manager.model(model_dir)
    threads: list[str] = []
    real = model.encode

    def encode(text):
        threads.append(threading.current_thread().name)
        return real(text)

    monkeypatch.setattr(model, "encode", encode)
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        app.token_delay = 60.0  # no pause in this typing is that long
        await pilot.press(*("the capital of France is Paris " * 4))
        assert threads == []  # not a single tokenization per key
        app.token_delay = 0
        await pilot.press("x")
        await settle(app, pilot)
        assert threads and threading.main_thread().name not in threads
        count = len(real(app.query_one("#prompt", Input).value))
        assert f"{count} tokens" in str(app.query_one("#token-strip", Static).render())


async def test_help_explains_each_pane_and_the_palette_lists_every_action(model_dir, manager):
    from mlxterp_tui.actions import ACTIONS
    from mlxterp_tui.main_screen import PANE_TYPES

    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        text = said(app, "#help-text")
        for pane in PANE_TYPES.values():
            assert pane.HELP and pane.HELP[:40] in text.replace("\n", " ")
        await pilot.press("escape")
        provider = WorkbenchCommands(app.screen)
        listed = {hit.help async for hit in provider.discover()}
        assert listed == {a.id for a in ACTIONS if a.palette}
        for action in ACTIONS:
            name = action.action.split("(")[0]
            assert hasattr(app, f"action_{name}"), name


async def test_tokens_arriving_while_the_prompt_bar_is_taken_down_are_dropped(manager):
    """Regression (seen in CI): the token strip's worker answered while the prompt bar's
    fields were already removed, and the app died on a NoMatches for '#prompt-chat'."""
    from mlxterp_tui.messages import TokensReady
    from mlxterp_tui.panes.prompt import PromptBar

    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await app.query_one("#prompt-chat").remove()
        app.post_message(TokensReady(PROMPT, [], 0, "(no tokens)"))
        await settle(app, pilot)
        assert app.is_running and app.query_one(PromptBar).is_attached
