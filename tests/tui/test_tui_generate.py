"""Free generation from the Steer pane: streamed token by token under the session's
interventions, recorded when it ends, stopped (and not recorded) by Esc."""

from __future__ import annotations

import asyncio
import time

import pytest
from textual.widgets import Input, Static

from mlxterp import interventions as iv
from mlxterp.session import Session
from mlxterp.steering import generate
from mlxterp_tui.app import WorkbenchApp
from mlxterp_tui.panes.steering import SteeringPane

from .pilot_helpers import settle

pytestmark = pytest.mark.anyio
PROMPT = "river king apple garden letter river king"


def shown(app) -> str:
    return str(app.query_one("#gen-result", Static).render())


async def test_generation_streams_then_records_and_reopens(manager, tmp_path):
    app = WorkbenchApp("demo", manager=manager)
    seen: list[str] = []
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        pane = app.query_one(SteeringPane)
        stream = pane.stream

        def watched(model, token_id):
            stream(model, token_id)
            seen.append(shown(app))

        pane.stream = watched
        app.action_show_pane("steering")
        app.query_one("#steer-prompt", Input).value = PROMPT
        app.query_one("#gen-max", Input).value = "6"
        app.query_one("#gen-max", Input).focus()
        await pilot.press("enter")  # Enter in the max-tokens field generates
        await settle(app, pilot)
        step = app.session.steps[-1]
        assert step.kind == "generate" and step.params["max_tokens"] == 6
        assert step.summary["text"] == generate(manager.model("demo"), PROMPT, max_tokens=6)
        assert repr(step.summary["text"]) in shown(app)
        model = manager.model("demo")
        ids = step.summary["token_ids"]
        assert (
            seen
            == [  # each token shown as it came, before the step was recorded
                f"generating… (Esc stops)\n{model.decode(ids[: n + 1])}" for n in range(len(ids))
            ]
        )
        app.session.save(tmp_path / "g.toml")
    again = WorkbenchApp("demo", session=Session.load(tmp_path / "g.toml", manager=manager))
    async with again.run_test(size=(100, 30)) as pilot:
        await settle(again, pilot)
        assert repr(step.summary["text"]) in shown(again)
        assert again.query_one("#gen-max", Input).value == "6"


async def test_streamed_tokens_follow_the_interventions(manager):
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        app.session.set_intervention("layers.11.attn", iv.zero_out)
        app.action_show_pane("steering")
        app.query_one("#steer-prompt", Input).value = PROMPT
        app.query_one("#gen-max", Input).value = "4"
        app.query_one("#gen-run").focus()
        await pilot.press("ctrl+n")
        await settle(app, pilot)
        step = app.session.steps[-1]
        ablated = generate(
            manager.model("demo"), PROMPT, 4, interventions={"layers.11.attn": iv.zero_out}
        )
        assert step.kind == "generate" and step.summary["text"] == ablated


async def test_escape_stops_generation_and_records_nothing(model_dir, manager):
    app = WorkbenchApp(model_dir, manager=manager)  # random weights: no end-of-text soon
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        computed = []
        compute = app.session.compute

        def spy(*args, on_token, **kwargs):  # a slow model: 10 ms a token
            def slowly(token_id):
                time.sleep(0.01)
                return on_token(token_id)

            computed.append(compute(*args, on_token=slowly, **kwargs))
            return computed[-1]

        app.session.compute = spy
        app.action_show_pane("steering")
        app.query_one("#steer-prompt", Input).value = PROMPT
        app.query_one("#gen-max", Input).value = "1024"
        app.query_one("#gen-run").focus()
        pressed = asyncio.create_task(pilot.press("ctrl+n"))  # Pilot waits for the app to idle
        for _ in range(1000):  # until the first tokens have streamed in
            if shown(app).partition("(Esc stops)\n")[2]:
                break
            await asyncio.sleep(0.01)
        await pilot.press("escape", "escape")  # out of a field, if in one; then cancel
        await pressed
        await settle(app, pilot)
        assert app.session.steps == [] and app.state.busy is None
        (stopped,) = computed  # the worker stopped making tokens when Esc cancelled its run
        made = len(stopped.summary["token_ids"])
        context = manager.model(model_dir).max_length - len(manager.model(model_dir).encode(PROMPT))
        assert 0 < made < context / 2, (made, context)


@pytest.mark.parametrize("max_tokens, said", [("0", "max tokens"), ("many", "max tokens")])
async def test_bad_max_tokens_is_said_beside_the_fields(manager, max_tokens, said):
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        app.action_show_pane("steering")
        app.query_one("#steer-prompt", Input).value = PROMPT
        app.query_one("#gen-max", Input).value = max_tokens
        app.query_one("#gen-run").focus()
        await pilot.press("ctrl+n")
        await settle(app, pilot)
        assert app.session.steps == []
        assert said in str(app.query_one("#steer-message", Static).render())
