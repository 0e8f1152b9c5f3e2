"""The Lens pane's tuned lens: a saved tuned lens file typed beside the target runs a
``tuned_lens`` step instead of the logit lens; it saves, reopens and shows the same table."""

from __future__ import annotations

import mlx.core as mx
import pytest
from textual.widgets import DataTable, Input, Static

from mlxterp.tuned_lens import TunedLens
from mlxterp_tui.app import WorkbenchApp

from .pilot_helpers import reopened, settle

pytestmark = pytest.mark.anyio
PROMPT = "The capital of France is"


@pytest.fixture
def lens_file(tmp_path, manager) -> str:
    """The identity tuned lens of the demo model with a seeded bias, saved."""
    lens = TunedLens.identity(manager.model("demo"))
    lens.bias = mx.random.normal(lens.bias.shape, key=mx.random.key(0)) * 0.5
    return str(lens.save(tmp_path / "demo-lens.toml"))


def cells(app) -> list[list[str]]:
    table = app.query_one("#lens-table", DataTable)
    return [[str(c) for c in table.get_row_at(r)] for r in range(table.row_count)]


async def run_lens(app, pilot, tuned: str) -> None:
    app.query_one("#lens-tuned", Input).value = tuned
    app.query_one("#prompt", Input).value = PROMPT
    app.query_one("#prompt", Input).focus()
    await pilot.press("enter")
    await settle(app, pilot)


async def test_a_tuned_lens_file_runs_the_tuned_lens_and_reopens(manager, lens_file, tmp_path):
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await run_lens(app, pilot, "")
        logit = cells(app)
        await run_lens(app, pilot, lens_file)
        step = app.session.steps[-1]
        assert step.kind == "tuned_lens" and step.params["lens"] == lens_file
        tuned = cells(app)
        assert len(tuned) == len(logit) and tuned != logit  # its translators change the reading
        caption = str(app.query_one("#lens-caption", Static).render())
        assert caption.startswith(f"tuned lens ({step.summary['lens_digest'][:8]})")
        app.session.save(tmp_path / "tuned.toml")
    async with reopened(tmp_path / "tuned.toml", manager) as again:
        assert cells(again) == tuned
        assert again.query_one("#lens-tuned", Input).value == lens_file


async def test_a_missing_tuned_lens_file_is_said_beside_the_field(manager, tmp_path):
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await run_lens(app, pilot, str(tmp_path / "nowhere.toml"))
        message = str(app.query_one("#lens-message", Static).render())
        assert "tuned lens: there is no file" in message
        assert not app.session.steps
