"""What a user's hands type, into every text field of the workbench.

Every class of character (a space as the first key, accents, CJK, emoji, combining marks,
right-to-left scripts, Rich markup brackets, backslashes, the keys that are shortcuts outside
fields) is typed key by key and pasted into every field the user can reach: each pane's
fields and each dialog's.  Then the field is deleted down to a single space.  The app must
keep running, keep exactly what was typed, and open nothing it was not asked to.  A
5,000-character prompt is typed key by key (and pasted) within a generous time bound, and
text the model generates is shown as written even when it reads like markup.

Keys are posted to the app one at a time, each handled before the next, as a terminal
delivers them; the fields are found generically (the focus chain of each pane and dialog),
so fields added later are covered too.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

pytest.importorskip("textual")

from textual import events
from textual.app import App
from textual.keys import _character_to_key  # the key name a terminal's character arrives as
from textual.widgets import Input, Static, TabbedContent, TabPane, TextArea

from mlxterp.session import SessionManager
from mlxterp_tui.app import WorkbenchApp

pytestmark = pytest.mark.anyio

SAMPLES = {
    "latin accents": "é ñ ü ß Ø",
    "CJK": "日本語 中文 한국어",
    "emoji": "🙂 👍🏽 👩‍💻 🇫🇷",
    "combining marks": "e\u0301 a\u0308 n\u0303",
    "right to left": "שלום مرحبا",
    "Rich markup": "[b] [/b] [red]x[/] [/] [@click=app.quit]q[/] [link=x]",
    "backslashes": "\\ \\[b] C:\\path\\ \\\\",
    "shortcuts outside fields": "1234567 i a e d q ? !",
}
TYPED = " " + " ".join(SAMPLES.values())  # a space as the very first key
PASTED = " ".join(SAMPLES.values()) + "\nand a second line"
LONG = ("The capital of France is Paris. " * 160)[:5000]

# LONG is typed in bursts of 10 keys (a fast typist), each burst handled before the next.
# Measured on the 2-core machine: the workbench 8 s in all when the machine is quiet, 19 to
# 27 s under a load average of 6 (slowest burst 0.2 to 0.5 s), where a bare Textual app with
# one Input takes 16 s; the workbench before its token strip was debounced off the UI
# thread took 240 s for 4,660 keys, growing with the prompt's length.  The bounds are about
# 3x the loaded figure, and 5 s for one burst (a freeze).
BURST = 10
LONG_TYPING_LIMIT_S = 60.0
BURST_LIMIT_S = 5.0


@pytest.fixture(scope="module")
def manager():
    mgr = SessionManager()
    mgr.model("demo")
    return mgr


@pytest.fixture(autouse=True)
def own_folders(tmp_path, monkeypatch):
    """No user keymap, and recovery files in the test's own folder."""
    monkeypatch.setenv("MLXTERP_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("MLXTERP_STATE_DIR", str(tmp_path / "state"))


async def settled(app: App) -> None:
    """Until the app and the focused widget's chain have handled every message queued so
    far (three rounds, so the messages those posted are handled too), or the app stopped."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    for _ in range(3):
        focused = app.focused
        nodes = [app, *(focused.ancestors_with_self if focused else [app.screen])]
        pending = set()
        for node in nodes:
            done = loop.create_future()
            if node.call_later(done.set_result, None):
                pending.add(done)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=0.1)
            if app.return_code is not None:  # it crashed or quit: running() says so
                return
            assert loop.time() < deadline, "the app did not handle a key within 30 s"


async def started(app: App, pilot) -> None:
    await app.workers.wait_for_complete()
    await settled(app)
    await pilot.pause()


def running(app: App) -> None:
    assert app.is_running and app.return_code is None, "the app stopped"


async def press(app: App, key: str) -> None:
    """Post one named key (``end``, ``backspace`` ...) and wait until it is handled."""
    app.post_message(events.Key(key, None))
    await settled(app)


def key_of(ch: str) -> events.Key:
    """The key event a terminal's character arrives as."""
    return events.Key(ch if ch.isalnum() else _character_to_key(ch), ch)


async def type_text(app: App, text: str, burst: int = 1) -> None:
    """Type ``text`` one key per character, ``burst`` keys at a time, each burst handled
    before the next."""
    for n in range(0, len(text), burst):
        for ch in text[n : n + burst]:
            app.post_message(key_of(ch))
        await settled(app)
        running(app)


def value(field: Input | TextArea) -> str:
    return field.value if isinstance(field, Input) else field.text


def takes_any_text(field: Input | TextArea) -> bool:
    """A field that keeps whatever is typed (no restriction to digits, no length cap)."""
    if isinstance(field, TextArea):
        return not field.read_only
    return field.restrict is None and field.type == "text" and not field.max_length


def printable(text: str) -> str:
    """What a text field keeps of typed keys: the printable characters (a zero-width
    joiner, for one, is not sent as text by Textual)."""
    return "".join(ch for ch in text if ch.isprintable())


async def exercise(app: App, field: Input | TextArea) -> None:
    """Type, paste and delete in ``field``; check nothing else happened."""
    screen, where = app.screen, f"{field!r} on {app.screen!r}"
    field.focus()
    await settled(app)
    assert app.focused is field, f"{where} cannot be focused"
    field.clear()
    await settled(app)

    await type_text(app, TYPED[0])  # the first key alone: a space
    await type_text(app, TYPED[1:], BURST)
    assert app.screen is screen, f"typing in {where} opened {app.screen!r}"
    assert app.focused is field, f"typing in {where} moved the focus to {app.focused!r}"
    if takes_any_text(field):
        assert value(field) == printable(TYPED), f"{where} did not keep what was typed"

    app.post_message(events.Paste(PASTED))
    await settled(app)
    running(app)
    assert app.screen is screen and app.focused is field, f"pasting in {where} moved away"
    if takes_any_text(field):
        assert printable(PASTED.splitlines()[0]) in value(field), f"{where} lost the paste"

    await press(app, "end")
    for _ in range(len(value(field)) - value(field).startswith(" ")):  # down to the space
        app.post_message(events.Key("backspace", None))
    await settled(app)
    running(app)
    if takes_any_text(field):
        assert value(field) == " ", f"{where} did not delete down to the leading space"


def text_fields(app: App) -> list[Input | TextArea]:
    """The text fields the user can reach with Tab on the current screen."""
    return [w for w in app.screen.focus_chain if isinstance(w, Input | TextArea)]


async def each_pane(app: App, pilot) -> AsyncIterator[str]:
    """Show each pane of the main screen in turn (from outside any field)."""
    tabs = app.screen.query_one(TabbedContent)
    for pane in list(tabs.query(TabPane)):
        app.screen.set_focus(None)
        tabs.active = pane.id or ""
        await settled(app)
        await pilot.pause()
        assert tabs.active == pane.id, f"could not show the {pane.id} pane"
        yield tabs.active


async def run_binding(app: App, binding_id: str) -> None:
    """Run the action of the binding with id ``binding_id``, as its key would."""
    for active in app.active_bindings.values():
        if active.binding.id == binding_id:
            await app.run_action(active.binding.action, active.node)
            await settled(app)
            return
    raise AssertionError(f"no active binding with id {binding_id!r}")


async def test_every_field_takes_every_character(manager):
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        main = app.screen
        done: set[int] = set()
        async for _pane in each_pane(app, pilot):
            for field in text_fields(app):
                if id(field) not in done:
                    done.add(id(field))
                    await exercise(app, field)
        assert len(done) >= 10  # the prompt and every pane's form fields

        for binding_id in ("save_as", "open", "add_intervention"):
            app.screen.set_focus(None)
            await run_binding(app, binding_id)
            assert app.screen is not main, f"{binding_id} opened no dialog"
            dialog_fields = text_fields(app)
            assert dialog_fields, f"the {binding_id} dialog has no text field"
            for field in dialog_fields:
                await exercise(app, field)
            for _ in range(3):  # Esc leaves the field, then closes the dialog
                if app.screen is main:
                    break
                await press(app, "escape")
            assert app.screen is main, f"Esc did not close the {binding_id} dialog"
        await app.workers.wait_for_complete()
        await settled(app)
        running(app)


async def test_a_5000_character_prompt_by_keystrokes_and_by_paste(manager):
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        prompt = app.focused  # the app opens with the prompt focused
        assert isinstance(prompt, Input | TextArea)

        start, slowest = time.perf_counter(), 0.0
        for n in range(0, len(LONG), BURST):
            burst_start = time.perf_counter()
            await type_text(app, LONG[n : n + BURST], BURST)
            now = time.perf_counter()
            slowest, elapsed = max(slowest, now - burst_start), now - start
            assert slowest < BURST_LIMIT_S, f"{BURST} keys took {slowest:.1f} s (at key {n})"
            assert elapsed < LONG_TYPING_LIMIT_S, f"{n + BURST} keys took {elapsed:.0f} s"
        print(f"typed {len(LONG)} keys in {elapsed:.1f} s, slowest burst {slowest:.2f} s")
        assert value(prompt) == LONG
        await app.workers.wait_for_complete()
        await settled(app)
        running(app)

        prompt.clear()
        await settled(app)
        app.post_message(events.Paste(LONG))
        await settled(app)
        assert value(prompt) == LONG

        await press(app, "enter")  # run the lens on it: an answer or a message, no crash
        await app.workers.wait_for_complete()
        await settled(app)
        await pilot.pause()
        running(app)


def build_markup_model(folder: Path) -> Path:
    """A one-layer model on the demo tokenizer that, given ``[``, generates ``/b][/b][...``.

    Attention and MLP are zero, so the residual is the token's embedding; the four tokens
    ``[ / b ]`` embed as four unit vectors and the unembedding maps each to the next."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    from mlxterp.loading import DEMO_DIR

    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DEMO_DIR / name, folder / name)
    vocab = json.loads((DEMO_DIR / "tokenizer.json").read_text())["model"]["vocab"]
    config = json.loads((DEMO_DIR / "config.json").read_text())
    config.update(num_hidden_layers=1, tie_word_embeddings=False)
    (folder / "config.json").write_text(json.dumps(config))
    model = llama.Model(llama.ModelArgs.from_dict(config))
    weights = {
        name: value if name.endswith("norm.weight") else mx.zeros_like(value)
        for name, value in tree_flatten(model.parameters())
    }
    cycle = "[/b]"
    for n, token in enumerate(cycle):
        following = cycle[(n + 1) % len(cycle)]
        weights["model.embed_tokens.weight"][vocab[token], n] = 1.0
        weights["lm_head.weight"][vocab[following], n] = 4.0
    mx.save_safetensors(str(folder / "model.safetensors"), weights)
    return folder


async def test_generated_text_with_markup_is_shown_as_written(tmp_path):
    model_dir = str(build_markup_model(tmp_path))
    app = WorkbenchApp(model_dir, manager=SessionManager())
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        for field_id, text in (("steer-positive", "["), ("steer-negative", "/")):
            app.query_one(f"#{field_id}", Input).value = text
        app.query_one("#steer-prompt", Input).value = "["
        app.query_one(TabbedContent).active = "steering"
        await settled(app)
        await run_binding(app, "run_steering")  # what ctrl+g does
        await app.workers.wait_for_complete()
        await settled(app)
        await pilot.pause()
        running(app)
        step = app.session.steps[-1]
        assert step.kind == "steering"
        generated = step.summary["baseline"]
        assert "[/b]" in generated  # the model did write markup
        shown = [str(w.render()) for w in app.screen.query(Static) if w.display]
        assert any(generated in text for text in shown), "the generated text is not shown"


async def test_the_next_pane_key_works_from_inside_every_field(manager):
    """Typing never traps: from inside any field, the pane key (``pane_next``) still works."""
    app = WorkbenchApp("demo", manager=manager)
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        tabs = app.screen.query_one(TabbedContent)
        panes = [pane.id or "" for pane in tabs.query(TabPane)]
        stuck = []
        for n, pane in enumerate(panes):
            app.screen.set_focus(None)
            tabs.active = pane
            await settled(app)
            for field in text_fields(app):
                app.screen.set_focus(None)
                tabs.active = pane
                await settled(app)
                field.focus()
                await settled(app)
                assert app.focused is field
                keys = [
                    a.binding.key
                    for a in app.active_bindings.values()
                    if a.binding.id == "pane_next"
                ]
                assert keys, f"no pane_next key inside #{field.id}"
                await press(app, keys[0].split(",")[0])
                if tabs.active != panes[(n + 1) % len(panes)]:
                    stuck.append(f"{keys[0]} in #{field.id} ({pane} pane)")
                running(app)
        assert not stuck, "pane keys that did nothing: " + "; ".join(stuck)
