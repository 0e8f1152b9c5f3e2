"""Pilot-driven tests of the workbench flows and of every error path (the app stays up)."""

from __future__ import annotations

import pytest

pytest.importorskip("textual")

from textual.widgets import DataTable, Input, ListView, Static

from mlxterp.session import Session
from mlxterp_tui.app import WorkbenchApp
from mlxterp_tui.cli import main
from mlxterp_tui.commands import WorkbenchCommands
from mlxterp_tui.compare_screens import ReplayScreen
from mlxterp_tui.panes.interventions import InterventionScreen
from mlxterp_tui.panes.lens import TopKScreen
from mlxterp_tui.screens import HelpScreen, PathScreen

from .pilot_helpers import settle

PROMPT = "The capital of France is"
pytestmark = pytest.mark.anyio


async def tokenized(app, pilot):
    """Wait for the debounced token strip (the app's delay is set to 0 in these tests)."""
    await pilot.pause()
    await settle(app, pilot)


async def started(app, pilot):
    await settle(app, pilot)
    assert app.model is not None


async def run_lens(app, pilot, text=PROMPT):
    app.query_one("#prompt", Input).value = text
    app.query_one("#prompt", Input).focus()
    await pilot.press("enter")
    await settle(app, pilot)


def messages(app) -> list[str]:
    return [n.message for n in app._notifications]


async def test_lens_table_and_cell_topk(model_dir, manager):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        await run_lens(app, pilot)
        step = app.session.steps[-1]
        assert step.kind == "logit_lens" and step.params["text"] == PROMPT
        table = app.query_one("#lens-table", DataTable)
        model = manager.model(model_dir)
        assert table.row_count == model.num_layers
        assert len(table.columns) == 1 + len(model.encode(PROMPT))
        last = table.get_cell_at((table.row_count - 1, len(table.columns) - 1))
        assert last.plain.replace("␣", " ") == step.summary["top_strs"][-1][-1][:8].replace(
            "␣", " "
        )
        table.focus()
        table.move_cursor(row=1, column=3)
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, TopKScreen)
        topk = app.screen.query_one("#topk-table", DataTable)
        assert topk.row_count == 5  # the default top-k
        probs = [float(topk.get_row_at(r)[3]) for r in range(topk.row_count)]
        assert probs == sorted(probs, reverse=True)
        assert abs(probs[0] - step.result.top_probs[1][2][0]) < 1e-3
        await pilot.press("escape")
        assert not isinstance(app.screen, TopKScreen)


async def test_token_strip_shows_ids(model_dir, manager):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test() as pilot:
        await started(app, pilot)
        app.token_delay = 0
        await pilot.press(*"Paris")
        await tokenized(app, pilot)
        strip = str(app.query_one("#token-strip", Static).render())
        ids = manager.model(model_dir).encode("Paris")
        for token_id in ids:
            assert f"·{token_id}" in strip


async def test_add_toggle_remove_intervention(model_dir, manager):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        await run_lens(app, pilot)
        baseline = app.session.steps[-1].summary
        app.query_one("#module-tree").focus()
        await pilot.press("i")
        assert isinstance(app.screen, InterventionScreen)
        app.screen.query_one("#iv-module", Input).value = "layers.1"
        app.screen.query_one("#iv-params", Input).value = "factor=0"
        app.screen.query_one("#iv-module", Input).focus()
        await pilot.press("enter")
        await settle(app, pilot)
        canonical = manager.model(model_dir).resolve("layers.1")
        assert list(app.session.interventions) == [canonical]
        assert app.session.steps[-1].kind == "logit_lens"  # lens re-run with the intervention
        changed = app.session.steps[-1].summary
        assert changed["top_probs"][-1] != baseline["top_probs"][-1]
        compare = app.query_one("#iv-compare", DataTable)
        assert compare.row_count == len(changed["layers"])
        assert any(str(compare.get_row_at(i)[3]) == "*" for i in range(compare.row_count))
        table = app.query_one("#iv-table", DataTable)
        assert table.row_count == 1 and str(table.get_row_at(0)[1]) == canonical
        table.focus()
        await pilot.press("space")  # toggle off
        await settle(app, pilot)
        assert app.session.interventions == {}
        assert app.session.steps[-1].summary["top_probs"] == baseline["top_probs"]
        await pilot.press("space")  # back on
        await settle(app, pilot)
        assert list(app.session.interventions) == [canonical]
        await pilot.press("e")
        assert isinstance(app.screen, InterventionScreen)
        app.screen.query_one("#iv-params", Input).value = "factor=2"
        app.screen.query_one("#iv-params", Input).focus()
        await pilot.press("enter")
        await settle(app, pilot)
        assert "factor=2" in repr(app.session.interventions[canonical])
        assert str(table.get_row_at(0)[3]) == "factor=2"
        await pilot.press("d")
        await settle(app, pilot)
        assert app.session.interventions == {} and table.row_count == 0


@pytest.mark.parametrize(
    "module, params, expected",
    [
        ("layers.99.mlp", "factor=2", "layers.99.mlp"),
        ("layers.0.mlp", "factor=abc", "not a number"),
        ("layers.0.mlp", "size=2", "factor"),
    ],
)
async def test_bad_intervention_is_refused_in_the_form(
    model_dir, manager, module, params, expected
):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        app.query_one("#module-tree").focus()
        await pilot.press("i")
        app.screen.query_one("#iv-module", Input).value = module
        app.screen.query_one("#iv-params", Input).value = params
        app.screen.query_one("#iv-module", Input).focus()
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, InterventionScreen)  # still open, showing why
        assert expected in str(app.screen.query_one("#iv-error", Static).render())
        assert app.session.interventions == {}


async def test_patching_sweep(model_dir, manager):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        app.query_one("#patch-clean", Input).value = PROMPT
        app.query_one("#patch-corrupted", Input).value = "The capital of Germany is"
        await pilot.press("4")  # focus is in the prompt: the digit is typed there
        app.query_one("#patch-table").focus()
        await pilot.press("ctrl+k")
        await settle(app, pilot)
        step = app.session.steps[-1]
        assert step.kind == "activation_patching"
        table = app.query_one("#patch-table", DataTable)
        assert table.row_count == manager.model(model_dir).num_layers
        shown = [float(table.get_row_at(r)[1]) for r in range(table.row_count)]
        assert shown == pytest.approx(step.summary["recovery"], abs=0.01)


async def test_save_reopen_replay(model_dir, manager, tmp_path):
    path = tmp_path / "s.toml"
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        await run_lens(app, pilot)
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, PathScreen)
        app.screen.query_one("#path-input", Input).value = str(path)
        await pilot.press("enter")
        await pilot.pause()
        assert path.exists()
        assert "s.toml" in str(app.query_one("#status", Static).render())
    session = Session.load(path, manager=manager)
    app = WorkbenchApp(model_dir, session=session, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        assert len(app.query_one("#history-list", ListView)) == 1
        app.query_one("#history-list", ListView).focus()
        await pilot.press("enter")  # shows the recorded lens again, from its summary
        await pilot.pause()
        assert (
            app.query_one("#lens-table", DataTable).row_count
            == session.steps[0].summary["layers"].__len__()
        )
        await pilot.press("f5")
        await settle(app, pilot)
        assert isinstance(app.screen, ReplayScreen)
        report = str(app.screen.query_one("#report-caption", Static).render())
        assert "1 of 1 steps match" in report


async def test_open_corrupt_session_notifies(model_dir, manager, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("format = [this is not toml")
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test() as pilot:
        await started(app, pilot)
        app.query_one("#module-tree").focus()
        await pilot.press("ctrl+o")
        app.screen.query_one("#path-input", Input).value = str(bad)
        await pilot.press("enter")
        await settle(app, pilot)
        assert any("bad.toml" in m for m in messages(app))
        assert app.is_running and app.model is not None
        good = tmp_path / "good.toml"
        Session.new(model_dir, path=good, manager=manager).run(manager, "logit_lens", text=PROMPT)
        await pilot.press("ctrl+o")
        app.screen.query_one("#path-input", Input).value = str(good)
        await pilot.press("enter")
        await settle(app, pilot)
        assert app.session.path == good and len(app.session.steps) == 1
        assert "good.toml" in str(app.query_one("#status", Static).render())
        assert len(app.query_one("#history-list", ListView)) == 1


async def test_bad_model_name_notifies_and_stays_up():
    app = WorkbenchApp("no-such-model-xyz")
    async with app.run_test() as pilot:
        await settle(app, pilot)
        assert app.model is None and app.is_running
        assert any("no-such-model-xyz" in m for m in messages(app))
        await pilot.press("enter")  # empty prompt, no model: still up
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert app.is_running


async def test_empty_prompt_notifies(model_dir, manager):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test() as pilot:
        await started(app, pilot)
        await pilot.press("enter")
        await pilot.pause()
        assert any("empty" in m for m in messages(app))
        assert app.session.steps == []


async def test_number_keys_and_help(model_dir, manager):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test() as pilot:
        await started(app, pilot)
        app.query_one("#module-tree").focus()
        await pilot.press("7")
        assert app.query_one("#panes").active == "history"
        await pilot.press("3")
        assert app.query_one("#panes").active == "charts"
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        text = str(app.screen.query_one("#help-text", Static).render())
        for binding in WorkbenchApp.BINDINGS:
            assert binding.id in text
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_keymap_remaps_binding(model_dir, manager, tmp_path, monkeypatch):
    config = tmp_path / "cfg"
    config.mkdir()
    (config / "keymap.toml").write_text('[keymap]\nrun_lens = "f9"\n')
    monkeypatch.setenv("MLXTERP_CONFIG_DIR", str(config))
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test() as pilot:
        await started(app, pilot)
        app.query_one("#prompt", Input).value = PROMPT
        await pilot.press("f9")
        await settle(app, pilot)
        assert [s.kind for s in app.session.steps] == ["logit_lens"]


async def test_bad_keymap_notifies(model_dir, manager, tmp_path, monkeypatch):
    config = tmp_path / "cfg"
    config.mkdir()
    (config / "keymap.toml").write_text("[keymap]\nrun_lens = 3\n")
    monkeypatch.setenv("MLXTERP_CONFIG_DIR", str(config))
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test() as pilot:
        await started(app, pilot)
        assert any("keymap" in m for m in messages(app))


async def test_command_palette_provider_finds_actions(model_dir, manager):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test() as pilot:
        await started(app, pilot)
        provider = WorkbenchCommands(app.screen)
        hits = [hit async for hit in provider.search("patching")]
        assert hits and "patching" in str(hits[0].match_display).lower()


def test_cli_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["--model", "no-such-model-xyz"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlxterp: error:") and "no-such-model-xyz" in err and "\n" not in err
    bad = tmp_path / "bad.toml"
    bad.write_text("not = [toml")
    assert main(["open", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.toml" in err and "Traceback" not in err


def test_cli_replay_passes_exit_code(model_dir, manager, tmp_path, capsys):
    session = Session.new(model_dir, path=tmp_path / "r.toml", manager=manager)
    session.run(manager, "logit_lens", text=PROMPT)
    assert main(["replay", str(tmp_path / "r.toml")]) == 0
    assert "1 of 1 steps match" in capsys.readouterr().out
    assert main(["replay", str(tmp_path / "missing.toml")]) == 2


async def test_escape_cancels_running_step(model_dir, manager):
    import threading

    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test() as pilot:
        await started(app, pilot)
        release, entered = threading.Event(), threading.Event()
        real_compute = app.session.compute

        def slow_compute(*args, **kwargs):
            entered.set()
            release.wait(10)
            return real_compute(*args, **kwargs)

        app.session.compute = slow_compute
        app.query_one("#prompt", Input).value = PROMPT
        await pilot.press("enter")
        assert entered.wait(10)
        assert "running logit_lens" in str(app.query_one("#status", Static).render())
        app.query_one("#lens-table").focus()
        await pilot.press("2")  # the UI answers keys while the worker runs
        assert app.query_one("#panes").active == "lens"
        await pilot.press("escape")
        assert "running" not in str(app.query_one("#status", Static).render())
        release.set()
        await settle(app, pilot)
        assert app.query_one("#lens-table", DataTable).row_count == 0  # result dropped
        assert app.session.steps == [] and not app.session.dirty  # and nothing recorded
        assert any("cancelled" in m for m in messages(app))


async def test_steering_shows_both_continuations(model_dir, manager):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        for key, value in {
            "positive": "I love this movie",
            "negative": "I hate this movie",
            "prompt": "This movie is",
            "layer": "1",
            "coefficient": "8",
        }.items():
            app.query_one(f"#steer-{key}", Input).value = value
        app.query_one("#steer-run").focus()
        await pilot.press("ctrl+g")
        await settle(app, pilot)
        step = app.session.steps[-1]
        assert step.kind == "steering" and step.params["layer"] == 1
        shown = str(app.query_one("#steer-result", Static).render())
        assert repr(step.summary["baseline"]) in shown and repr(step.summary["steered"]) in shown


async def test_steering_bad_layer_notifies(model_dir, manager):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        for key, value in {
            "positive": "good",
            "negative": "bad",
            "prompt": "It is",
            "layer": "42",
        }.items():
            app.query_one(f"#steer-{key}", Input).value = value
        app.query_one("#steer-run").focus()
        await pilot.press("ctrl+g")
        await settle(app, pilot)
        assert app.session.steps == [] and app.is_running
        beside = str(app.query_one("#steer-message", Static).render())
        assert "42" in beside and "out of range" in beside


async def test_attention_chart_and_bad_head(model_dir, manager):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        app.query_one("#prompt", Input).value = PROMPT
        app.query_one("#attn-layer", Input).value = "1"
        app.query_one("#attn-head", Input).value = "2"
        app.query_one("#lens-table").focus()
        await pilot.press("f6")
        await settle(app, pilot)
        step = app.session.steps[-1]
        assert step.kind == "attention" and step.params["layer"] == 1
        assert "layer 1 head 2" in str(app.query_one("#chart-caption", Static).render())
        app.query_one("#attn-head", Input).value = "99"
        app.query_one("#lens-table").focus()
        await pilot.press("f6")
        await settle(app, pilot)
        beside = str(app.query_one("#attn-message", Static).render())
        assert "99 is out of range" in beside and "heads" in beside


async def test_save_to_bad_path_notifies(model_dir, manager, tmp_path):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test() as pilot:
        await started(app, pilot)
        await pilot.press("f4")
        app.screen.query_one("#path-input", Input).value = str(tmp_path)  # a folder
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, PathScreen)  # stays open, saying why beside the field
        assert "is a folder" in str(app.screen.query_one("#path-message", Static).render())
        assert app.is_running


async def test_reopened_session_lists_its_active_interventions(model_dir, manager, tmp_path):
    import mlx.core as mx

    from mlxterp import interventions as iv

    path = tmp_path / "active.toml"
    session = Session.new(model_dir, path, manager)
    session.set_intervention("layers.1.mlp", iv.scale(0.5, positions=-1))
    session.set_intervention("layers.0", iv.add_vector(mx.ones((64,))))
    app = WorkbenchApp(model_dir, session=Session.load(path, manager=manager), manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        listed = {
            (e.module, e.description["kind"], tuple(e.description.get("positions", ())))
            for e in app.session.intervention_entries()
        }
        assert listed == {
            ("model.layers.1.mlp", "scale", (-1,)),
            ("model.layers.0", "add_vector", ()),
        }
        assert app.query_one("#iv-table", DataTable).row_count == 2
