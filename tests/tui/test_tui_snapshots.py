"""SVG snapshots of each main screen at 80x24 and 120x40 (``--snapshot-update`` to accept)."""

from __future__ import annotations

import pytest

pytest.importorskip("pytest_textual_snapshot")

from textual.widgets import DataTable, Input, Select

from mlxterp_tui.app import WorkbenchApp

SIZES = [(80, 24), (120, 40)]


async def ready(pilot, prompt: str = "The capital of France is") -> None:
    """Model loaded, no blinking cursors, a lens on ``prompt`` done."""
    app = pilot.app
    await pilot.pause()  # the main screen is composed
    await app.workers.wait_for_complete()
    await pilot.pause()
    for widget in app.query(Input):
        widget.cursor_blink = False
    app.query_one("#prompt", Input).value = prompt
    app.query_one("#lens-target", Input).value = "␣Paris"
    app.query_one("#prompt", Input).focus()
    await pilot.pause()
    await pilot.press("enter")
    await app.workers.wait_for_complete()
    await pilot.pause()


async def focus(pilot, selector: str) -> None:
    """Focus a widget and let the focus land before the next key (``focus()`` is deferred)."""
    pilot.app.query_one(selector).focus()
    await pilot.pause()


def screen(setup):
    """A ``run_before`` that readies the app, then runs ``setup(pilot)``."""

    async def run_before(pilot):
        await ready(pilot)
        await setup(pilot)
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()

    return run_before


async def lens(pilot):
    await focus(pilot, "#lens-table")


async def topk(pilot):
    table = pilot.app.query_one("#lens-table", DataTable)
    table.focus()
    await pilot.pause()
    table.move_cursor(row=1, column=5)
    await pilot.press("enter")


async def model_tree(pilot):
    await pilot.press("ctrl+t")  # a trace: the last layer's node shows its shape
    await pilot.app.workers.wait_for_complete()
    await focus(pilot, "#module-tree")
    await pilot.press("1", *["down"] * 6, "enter")


async def patching(pilot):
    app = pilot.app
    app.query_one("#patch-clean", Input).value = "The capital of France is"
    app.query_one("#patch-corrupted", Input).value = "The capital of Germany is"
    await focus(pilot, "#patch-table")
    await pilot.press("ctrl+k")


async def causal_tracing(pilot):
    app = pilot.app
    app.query_one("#patch-method", Select).value = "causal_tracing"
    app.query_one("#patch-component", Select).value = "output"
    app.query_one("#patch-clean", Input).value = "The capital of France is"
    app.query_one("#patch-corrupted", Input).value = "France"
    await focus(pilot, "#patch-table")
    await pilot.press("4", "ctrl+k")


async def chart(pilot):
    await focus(pilot, "#lens-table")
    await pilot.press("3")


async def attention(pilot):
    pilot.app.query_one("#attn-head", Input).value = "1"
    await focus(pilot, "#lens-table")
    await pilot.press("f6")


async def interventions(pilot):
    app = pilot.app
    await focus(pilot, "#module-tree")
    await pilot.press("i")
    app.screen.query_one("#iv-module", Input).value = "layers.1.mlp"
    app.screen.query_one("#iv-params", Input).value = "factor=0"
    app.screen.query_one("#iv-module", Input).focus()
    await pilot.pause()
    await pilot.press("enter")
    await app.workers.wait_for_complete()
    await focus(pilot, "#iv-table")


async def history(pilot):
    await focus(pilot, "#lens-table")
    await pilot.press("7")
    await focus(pilot, "#history-list")


async def heads(pilot):
    app = pilot.app
    app.query_one("#heads-analysis", Select).value = "head_patching"
    app.query_one("#heads-clean", Input).value = "The capital of France is"
    app.query_one("#heads-corrupted", Input).value = "The capital of Germany is"
    await focus(pilot, "#lens-table")
    await pilot.press("8", "f7")
    await pilot.app.workers.wait_for_complete()
    await focus(pilot, "#heads-table")


async def sae(pilot):
    """An SAE trained on the demo texts, then the prompt's strongest features."""
    app = pilot.app
    await focus(pilot, "#lens-table")
    await pilot.press("9")
    for name, value in (("layer", "1"), ("expansion", "2"), ("k", "4")):
        app.query_one(f"#sae-{name}", Input).value = value
    await pilot.press("f8")
    await app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.press("f10")
    await app.workers.wait_for_complete()
    await focus(pilot, "#sae-table")


async def sae_dashboard(pilot):
    await sae(pilot)
    await pilot.press("end", "right", "right", "enter", "f10")


async def replay_side_by_side(pilot):
    """F5 on the lens run, Enter on its step: recorded and replayed side by side."""
    await focus(pilot, "#lens-table")
    await pilot.press("f5")
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    pilot.app.screen.query_one("#report-table").focus()  # the report is a modal screen
    await pilot.pause()
    await pilot.press("enter")


async def help_screen(pilot):
    await focus(pilot, "#lens-table")
    await pilot.press("f1")


SCREENS = {
    "lens": lens,
    "topk": topk,
    "model": model_tree,
    "patching": patching,
    "causal_tracing": causal_tracing,
    "chart": chart,
    "attention": attention,
    "interventions": interventions,
    "history": history,
    "heads": heads,
    "sae": sae,
    "sae_dashboard": sae_dashboard,
    "replay": replay_side_by_side,
    "help": help_screen,
}


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", list(SCREENS))
def test_screen(snap_compare, model_dir, manager, name, size):
    app = WorkbenchApp(model_dir, manager=manager)
    app.token_delay = 0  # the token strip is drawn before the snapshot, not after a pause
    assert snap_compare(app, terminal_size=size, run_before=screen(SCREENS[name]))


async def model_picker(pilot):
    """The picker (``ctrl+l``) over a folder with a copy of the demo and a cached hub model."""
    app = pilot.app
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.press("ctrl+l")
    for _ in range(200):  # until the worker's list is on the screen
        await app.workers.wait_for_complete()
        await pilot.pause()
        if getattr(app.screen, "_models", None):
            break
    for widget in app.screen.query(Input):
        widget.cursor_blink = False
    await pilot.pause()


def test_model_picker(snap_compare, manager, tmp_path, monkeypatch):
    import shutil

    from mlxterp.loading import DEMO_DIR

    home = tmp_path / "home"
    snapshot = home / ".cache/huggingface/hub/models--org--tiny-llama/snapshots/abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"")
    monkeypatch.setenv("HOME", str(home))
    for var in ("HF_HUB_CACHE", "HF_HOME", "OLLAMA_MODELS"):
        monkeypatch.delenv(var, raising=False)
    shutil.copytree(DEMO_DIR, tmp_path / "work" / "demo-copy")
    monkeypatch.chdir(tmp_path / "work")
    app = WorkbenchApp("demo", manager=manager)
    assert snap_compare(app, terminal_size=(80, 24), run_before=model_picker)
