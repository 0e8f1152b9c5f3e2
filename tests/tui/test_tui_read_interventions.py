"""Interventions read from the model in the intervention form: an add_vector from the
difference of two prompts and a replace_with another prompt's activation. Each is read
when the form is saved, recorded with the prompts it came from, changes the lens, reopens
and is edited through the same form."""

from __future__ import annotations

import mlx.core as mx
import pytest
from textual.widgets import DataTable, Input, Select

from mlxterp_tui.app import WorkbenchApp
from mlxterp_tui.panes.interventions import InterventionScreen

from .pilot_helpers import reopened, settle

pytestmark = pytest.mark.anyio
LOVE, HATE = "I love this song. It is", "I hate this song. It is"


async def fill_form(
    app, pilot, params: str, module: str | None = None, kind: str = "add_vector"
) -> None:
    assert isinstance(app.screen, InterventionScreen)
    if module is not None:
        app.screen.query_one("#iv-module", Input).value = module
    app.screen.query_one("#iv-kind", Select).value = kind
    await pilot.pause()  # the kind's hint fills the parameters
    app.screen.query_one("#iv-params", Input).value = params
    app.screen.query_one("#iv-params", Input).focus()
    await pilot.press("enter")
    await settle(app, pilot)


async def test_a_vector_from_two_prompts_is_read_recorded_and_steers(manager, tmp_path):
    model = manager.model("demo")
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        app.query_one("#prompt", Input).value = "This film is"
        app.query_one("#prompt", Input).focus()
        await pilot.press("enter")
        await settle(app, pilot)
        baseline = app.session.steps[-1].summary
        app.query_one("#module-tree").focus()
        await pilot.press("i")
        await fill_form(app, pilot, f"{LOVE} | {HATE} | 4", module="layers.8")
        step = next(s for s in app.session.steps if s.kind == "interventions")
        desc = step.params["intervention"]
        assert desc["kind"] == "add_vector"
        assert desc["source"] == {"positive": LOVE, "negative": HATE, "factor": 4.0}
        trace = model.run([LOVE, HATE], capture=["layers.8"])
        last = trace.last_token(trace.activations["layers.8"])
        assert mx.allclose(desc["params"]["vector"], (last[0] - last[1]) * 4, atol=1e-5).item()
        assert app.session.steps[-1].kind == "logit_lens"  # re-run under the vector
        assert app.session.steps[-1].summary["top_probs"] != baseline["top_probs"]
        table = app.query_one("#iv-table", DataTable)
        assert str(table.get_row_at(0)[3]) == f"{LOVE} | {HATE} | 4"
        table.focus()
        await pilot.press("e")  # the same form edits it: the prompts come back
        assert app.screen.query_one("#iv-params", Input).value == f"{LOVE} | {HATE} | 4"
        await fill_form(app, pilot, f"{LOVE} | {HATE} | 2")
        (entry,) = app.session.intervention_entries()
        assert entry.description["source"]["factor"] == 2.0
        assert mx.allclose(
            entry.description["params"]["vector"], (last[0] - last[1]) * 2, atol=1e-5
        ).item()
        app.session.save(tmp_path / "steer.toml")
    async with reopened(tmp_path / "steer.toml", manager, (100, 30)) as again:
        (entry,) = again.session.intervention_entries()
        assert entry.description["source"]["positive"] == LOVE
        assert (
            str(again.query_one("#iv-table", DataTable).get_row_at(0)[3]) == f"{LOVE} | {HATE} | 2"
        )


async def test_one_prompt_is_said_beside_the_fields(manager):
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        app.query_one("#module-tree").focus()
        await pilot.press("i")
        await fill_form(app, pilot, LOVE, module="layers.8")
        assert isinstance(app.screen, InterventionScreen)  # the form stays open
        error = str(app.screen.query_one("#iv-error").render())
        assert "two prompts and a factor, split by |" in error
        assert not app.session.steps


async def test_another_prompts_activation_is_put_in_and_moves_the_answer(manager, tmp_path):
    model = manager.model("demo")
    germany = "The capital of Germany is"
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        app.query_one("#prompt", Input).value = "The capital of France is"
        app.query_one("#prompt", Input).focus()
        await pilot.press("enter")
        await settle(app, pilot)
        assert app.session.steps[-1].summary["top_strs"][-1][-1] == " Paris"
        app.query_one("#module-tree").focus()
        await pilot.press("i")
        await fill_form(app, pilot, germany, module="layers.8", kind="replace_with")
        desc = next(s for s in app.session.steps if s.kind == "interventions").params[
            "intervention"
        ]
        assert desc["kind"] == "replace_with" and desc["source"] == {"prompt": germany}
        assert desc["params"]["align"] == "right"
        expected = model.run(germany, capture=["layers.8"]).activations["layers.8"]
        assert mx.array_equal(desc["params"]["value"], expected).item()
        # the lens re-run under it: layer 8 of France's run now carries Germany's state
        assert app.session.steps[-1].summary["top_strs"][-1][-1] == " Berlin"
        table = app.query_one("#iv-table", DataTable)
        assert str(table.get_row_at(0)[3]) == germany
        table.focus()
        await pilot.press("e")
        assert app.screen.query_one("#iv-params", Input).value == germany
        await pilot.press("escape")
        app.session.save(tmp_path / "patched.toml")
    async with reopened(tmp_path / "patched.toml", manager, (100, 30)) as again:
        (entry,) = again.session.intervention_entries()
        assert mx.array_equal(entry.description["params"]["value"], expected).item()
