"""The SAE pane: train an SAE from the keyboard (progress shown, Esc stops and records
nothing), browse its features (prompt features, a feature's dashboard, editing a feature),
save, reopen and see the same."""

from __future__ import annotations

from dataclasses import asdict

import pytest
from textual.widgets import DataTable, Input, Select, Static

import mlxterp_tui.app as app_module
from mlxterp.sae import SAEConfig
from mlxterp.session import Session
from mlxterp_tui.app import WorkbenchApp
from mlxterp_tui.panes.sae import sparkline

from .pilot_helpers import reopened, settle

pytestmark = pytest.mark.anyio
PROMPT = "The capital of France is"
TEXTS = [
    "The capital of France is Paris.",
    "I love this song. It is lovely.",
    "Big Ben is in London.",
    "The capital of Germany is Berlin.",
] * 15


@pytest.fixture
def texts_file(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(TEXTS) + "\n\n", encoding="utf-8")
    return str(path)


def rows(app) -> list[list[str]]:
    table = app.query_one("#sae-table", DataTable)
    return [[str(c) for c in table.get_row_at(r)] for r in range(table.row_count)]


def caption(app) -> str:
    return str(app.query_one("#sae-caption", Static).render())


async def fill(app, pilot, **fields: str) -> None:
    for name, value in fields.items():
        app.query_one(f"#sae-{name}", Input).value = value
    await pilot.pause()


async def train(app, pilot, texts_file: str) -> None:
    await pilot.press("9")
    await fill(app, pilot, layer="6", expansion="2", k="4", epochs="2", texts=texts_file)
    await pilot.press("f8")
    await settle(app, pilot)


async def browse(app, pilot, view: str) -> None:
    app.query_one("#sae-view", Select).value = view
    await pilot.pause()
    await pilot.press("f10")
    await settle(app, pilot)


async def test_train_browse_edit_save_and_reopen(manager, texts_file, tmp_path, monkeypatch):
    monkeypatch.setattr(app_module, "PROGRESS_EVERY", 0.0)  # every step shows
    heard = []
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        pane = app.query_one("#sae-pane")
        shown = pane.show_progress
        monkeypatch.setattr(pane, "show_progress", lambda p: heard.append(p) or shown(p))
        await train(app, pilot, texts_file)
        (step,) = app.session.steps
        assert step.kind == "train_sae" and step.params["texts"] == TEXTS
        given = {"kind": "topk", "expansion_factor": 2, "epochs": 2, "k": 4}  # the pane's fields
        assert step.params["config"] == asdict(SAEConfig(**given))  # with every default
        assert heard and heard[-1].fraction == 1.0  # the bar reached its end
        assert not app.query_one("#sae-progress-row").display  # and went away
        assert caption(app).startswith("SAE on model.layers.6: ")
        trained = rows(app)
        ev = step.summary["measured"]["explained_variance"]
        assert trained[0] == ["explained variance", f"{ev:.4f}"]

        app.query_one("#prompt", Input).value = PROMPT
        await browse(app, pilot, "sae_features")
        features = rows(app)
        assert [r[1] for r in features] == ["<s>", "The", "␣capital", "␣of", "␣France", "␣is"]
        best = app.session.steps[-1].summary["per_position"][-1][0][0]
        assert features[-1][2].startswith(f"#{best} ")
        # Enter on the last row's strongest feature picks it for the dashboard
        table = app.query_one("#sae-table", DataTable)
        table.focus()
        table.move_cursor(row=len(features) - 1, column=2)
        await pilot.press("enter")
        await pilot.pause()
        assert app.query_one("#sae-feature", Input).value == str(best)
        assert app.query_one("#sae-view", Select).value == "feature_dashboard"
        await pilot.press("f10")
        await settle(app, pilot)
        board = app.session.steps[-1]
        assert board.kind == "feature_dashboard" and board.params["texts"] == TEXTS
        assert f"feature #{best} on model.layers.6" in caption(app)
        assert "on the prompt: <s>" in caption(app) and "raises: " in caption(app)
        contexts = rows(app)
        assert contexts and all("«" in r[1] for r in contexts)

        app.query_one("#sae-view", Select).value = "feature_edit"
        await fill(app, pilot, value="20")
        await pilot.press("f10")
        await settle(app, pilot)
        edit = app.session.steps[-1]
        assert edit.kind == "feature_edit" and edit.params["mode"] == "steer"
        assert edit.params["value"] == 20.0 and "KL" in caption(app)
        edited = rows(app)
        app.session.save(tmp_path / "sae.toml")
    assert len(app.session.steps) == 4
    async with reopened(tmp_path / "sae.toml", manager) as again:
        assert rows(again) == edited
        assert again.query_one("#sae-feature", Input).value == str(best)
        assert again.query_one("#sae-layer", Input).value == "6"
    # the reopened session's SAE (read from the sidecar) browses to the same features
    session = Session.load(tmp_path / "sae.toml", manager=manager)
    again = WorkbenchApp("demo", session=session, manager=manager)
    async with again.run_test(size=(80, 24)) as pilot:
        await settle(again, pilot)
        again.query_one("#prompt", Input).value = PROMPT
        await browse(again, pilot, "sae_features")
        assert rows(again) == features and len(again.session.steps) == 5


async def test_esc_stops_training_and_records_nothing(manager, monkeypatch):
    monkeypatch.setattr(app_module, "PROGRESS_EVERY", 0.0)
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("9")
        await fill(app, pilot, layer="6", expansion="2", epochs="100", texts="")
        await pilot.press("f8")
        progress = app.query_one("#sae-progress-text", Static)
        for _ in range(400):  # until training reports its first steps
            await pilot.pause(0.05)
            if "tok/s" in str(progress.render()):
                break
        assert "tok/s" in str(progress.render())
        app.query_one("#sae-table", DataTable).focus()
        await pilot.press("escape")
        await settle(app, pilot)
        assert not app.session.steps
        assert not app.query_one("#sae-progress-row").display
        assert app.state.busy is None


async def test_bad_input_is_said_beside_the_fields(manager, tmp_path):
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        message = app.query_one("#sae-message", Static)
        app.query_one("#prompt", Input).value = PROMPT
        await pilot.press("9")
        await pilot.press("f10")
        await settle(app, pilot)
        assert "no SAE yet: train one first" in str(message.render())
        for fields, said in [
            ({"layer": "99"}, "layer"),
            ({"layer": "", "expansion": "0"}, "expansion"),
            ({"expansion": "2", "texts": str(tmp_path / "none.txt")}, "no dataset file at"),
            ({"texts": str(tmp_path)}, "a .txt"),
        ]:
            await fill(app, pilot, **fields)
            await pilot.press("f8")
            await settle(app, pilot)
            assert said in str(message.render()), fields
        empty = tmp_path / "empty.txt"
        empty.write_text("\n  \n", encoding="utf-8")
        await fill(app, pilot, texts=str(empty))
        await pilot.press("f8")
        await settle(app, pilot)
        assert "has no records" in str(message.render())
        assert not app.session.steps


def test_sparkline_shows_every_nonzero_count():
    assert sparkline([0, 1, 100, 50]) == " ▁█▄"
    assert sparkline([0, 0]) == "  "


async def test_the_buttons_answer_a_click_and_enter(manager, texts_file, monkeypatch):
    monkeypatch.setattr(app_module, "PROGRESS_EVERY", 0.0)
    shown: list[tuple[str, int]] = []  # the progress line, and the room it had
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        pane = app.query_one("#sae-pane")
        text = app.query_one("#sae-progress-text", Static)
        show = pane.show_progress

        def seen(progress):
            show(progress)
            shown.append((str(text.render()), text.size.width))

        monkeypatch.setattr(pane, "show_progress", seen)
        app.query_one("#lens-table").focus()  # out of the prompt: 9 shows the pane
        await pilot.press("9")
        await fill(app, pilot, layer="6", expansion="2", k="4", texts=texts_file)
        await pilot.click("#sae-train")
        await settle(app, pilot)
        assert [s.kind for s in app.session.steps] == ["train_sae"]
        # the progress line fits beside the bar at 80 columns, its Esc hint included
        line, room = shown[-1]
        assert line.endswith("Esc stops") and len(line) <= room
        app.query_one("#prompt", Input).value = PROMPT
        await pilot.click("#sae-run")
        await settle(app, pilot)
        app.query_one("#sae-train").focus()
        await pilot.press("enter")
        await settle(app, pilot)
        app.query_one("#sae-run").focus()
        await pilot.press("enter")
        await settle(app, pilot)
        kinds = [s.kind for s in app.session.steps]
        assert kinds == ["train_sae", "sae_features", "train_sae", "sae_features"]
