"""Dataset jobs from the workbench: F12, a job file, Enter; progress with tokens/s; Esc
stops and keeps what is done; resume finishes it; the result is shown."""

from __future__ import annotations

import pytest
from textual.widgets import Checkbox, Input, Static

from mlxterp.session import demo_texts
from mlxterp_tui.app import WorkbenchApp
from mlxterp_tui.jobs_screen import JobsScreen

from .pilot_helpers import settle, until

pytestmark = pytest.mark.anyio


def job_file(folder, analysis: str, records: str, per_shard: int, params: str = "") -> str:
    path = folder / f"{analysis}.toml"
    path.write_text(
        f'[job]\nanalysis = "{analysis}"\nmodel = "demo"\noutput = "out"\n'
        f"[dataset]\n{records}\nper_shard = {per_shard}\n[params]\n{params}\n",
        encoding="utf-8",
    )
    return str(path)


def said(screen, widget: str) -> str:
    return str(screen.query_one(widget, Static).render())


async def open_jobs(app, pilot, path: str) -> JobsScreen:
    """F12 once the app has settled; the jobs window, its path field holding ``path``."""
    await settle(app, pilot)
    await pilot.press("f12")
    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, JobsScreen)
    screen.query_one("#job-path", Input).value = path
    return screen


async def run(app, pilot, path: str, resume: bool = False) -> None:
    screen = app.screen
    screen.query_one("#job-path", Input).value = path
    screen.query_one("#job-resume", Checkbox).value = resume
    screen.query_one("#job-path", Input).focus()
    await pilot.press("enter")
    await settle(app, pilot)


async def test_a_job_runs_refuses_a_rerun_and_resumes(manager, tmp_path):
    records = 'records = ["The capital of France is Paris.", "Big Ben is in London.", "Hi."]'
    path = job_file(tmp_path, "lens", records, 1)
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_jobs(app, pilot, path)
        await run(app, pilot, path)
        assert said(screen, "#job-status").startswith("done: 3 shards (3 now, 0 already complete)")
        result = said(screen, "#job-result")
        assert "analysis: lens" in result and "agreement: [" in result
        await run(app, pilot, path)
        assert "already holds this job's output: --resume continues it" in said(
            screen, "#job-status"
        )
        await run(app, pilot, path, resume=True)
        assert said(screen, "#job-status").startswith("done: 3 shards (0 now, 3 already complete)")
        await run(app, pilot, str(tmp_path / "none.toml"))
        assert "no job file at" in said(screen, "#job-status")
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, JobsScreen)
        assert not app.session.steps  # a job is no session step: its file is its record


async def test_esc_stops_a_job_and_resume_finishes_it(manager, tmp_path):
    # 3,200 texts in 800 shards: long enough that Esc lands while it runs
    texts = demo_texts() * 4
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    path = job_file(tmp_path, "collect", 'path = "texts.txt"', 4, 'components = ["layers.8"]')
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_jobs(app, pilot, path)
        screen.query_one("#job-path", Input).focus()
        await pilot.press("enter")
        for _ in range(600):  # until the first shards are reported
            await pilot.pause(0.05)
            if "tok/s" in said(screen, "#job-status"):
                break
        screen.query_one("#job-resume", Checkbox).focus()  # out of the field
        await pilot.press("escape")
        await settle(app, pilot)
        assert "JobStopped: stopped" in said(screen, "#job-status")
        shards = list((tmp_path / "out").glob("shard-*.safetensors"))
        assert 0 < len(shards) < 800 and not (tmp_path / "out" / "manifest.json").exists()
        await run(app, pilot, path, resume=True)
        status = said(screen, "#job-status")
        assert status.startswith(
            f"done: 800 shards ({800 - len(shards)} now, {len(shards)} already"
        )
        assert "components:" in said(screen, "#job-result") and "model.layers.8: 64" in said(
            screen, "#job-result"
        )


async def test_the_run_button_answers_a_click_and_enter(manager, tmp_path):
    path = job_file(tmp_path, "lens", 'records = ["Big Ben is in London."]', 1)
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_jobs(app, pilot, path)
        await pilot.click("#job-run")
        first = "done: 1 shards (1 now"
        await until(app, pilot, lambda: said(screen, "#job-status").startswith(first))
        assert said(screen, "#job-status").startswith(first)
        screen.query_one("#job-resume", Checkbox).value = True
        screen.query_one("#job-run").focus()
        await pilot.press("enter")
        # Enter this soon after the click once did nothing (the button's press highlight
        # swallowed it); the result reaches the status through a worker and a callback
        again = "done: 1 shards (0 now, 1 already"
        await until(app, pilot, lambda: said(screen, "#job-status").startswith(again))
        assert said(screen, "#job-status").startswith(again)
