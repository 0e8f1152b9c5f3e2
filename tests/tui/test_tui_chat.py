"""The chat switch: with it on (f9, or a click), the typed prompt goes as one user message
through the model's chat template; the token strip shows the template's tokens, steps
record the chat, and a reopened session has the switch as it was."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("textual")

from textual.widgets import Checkbox, Input, Static

from mlxterp.session import Session, SessionManager
from mlxterp_tui.app import WorkbenchApp

from .pilot_helpers import settle

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
PROMPT = "The capital of France is"
pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def chat_dir(model_dir, tmp_path_factory):
    """The workbench tests' checkpoint, its tokenizer given a chat template."""
    folder = tmp_path_factory.mktemp("chat") / "chatmodel"
    shutil.copytree(model_dir, folder)
    config = folder / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "chat_template": TEMPLATE}))
    return str(folder)


@pytest.fixture(scope="module")
def chat_manager(chat_dir):
    mgr = SessionManager()
    mgr.model(chat_dir)
    return mgr


def strip(app) -> str:
    return str(app.query_one("#token-strip", Static).render())


async def typed(app, pilot, text: str) -> None:
    app.query_one("#prompt", Input).focus()
    app.query_one("#prompt", Input).value = text
    await settle(app, pilot)


async def test_f9_sends_the_prompt_through_the_template(chat_dir, chat_manager, tmp_path):
    model = chat_manager.model(chat_dir)
    chat = [{"role": "user", "content": PROMPT}]
    app = WorkbenchApp(chat_dir, manager=chat_manager)
    async with app.run_test(size=(100, 30)) as pilot:
        app.token_delay = 0
        await settle(app, pilot)
        await typed(app, pilot, PROMPT)
        assert "chat:" not in strip(app)
        assert f"{len(model.encode(PROMPT))} tokens" in strip(app)
        await pilot.press("f9")  # in the prompt field: the switch still flips
        await settle(app, pilot)
        assert app.query_one("#prompt-chat", Checkbox).value
        ids = model.encode_chat(chat)
        assert strip(app).startswith(f"chat: {len(ids)} tokens")
        assert "</s>·" in strip(app)  # the template's special token, whole
        await pilot.press("enter")
        await settle(app, pilot)
        (step,) = app.session.steps
        assert step.kind == "logit_lens" and step.params["text"] == chat
        assert step.summary["tokens"] == [model.token_text(i) for i in ids]
        path = tmp_path / "chat.toml"
        app.session.save(path)
    reopened = Session.load(path, chat_manager)
    app = WorkbenchApp(chat_dir, session=reopened, manager=chat_manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        assert app.query_one("#prompt-chat", Checkbox).value  # as the last prompt was sent
        assert app.query_one("#prompt", Input).history[-1] == PROMPT


async def test_the_switch_is_a_checkbox_to_click(chat_dir, chat_manager):
    app = WorkbenchApp(chat_dir, manager=chat_manager)
    async with app.run_test(size=(100, 30)) as pilot:
        app.token_delay = 0
        await settle(app, pilot)
        await typed(app, pilot, PROMPT)
        await pilot.click("#prompt-chat")
        await settle(app, pilot)
        assert app.query_one("#prompt-chat", Checkbox).value and strip(app).startswith("chat:")
        await pilot.press("ctrl+t")  # a trace, through the template too
        await settle(app, pilot)
        assert app.session.steps[-1].params["text"] == [{"role": "user", "content": PROMPT}]


async def test_a_model_without_a_template_says_so(model_dir, manager):
    app = WorkbenchApp(model_dir, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        app.token_delay = 0
        await settle(app, pilot)
        await typed(app, pilot, PROMPT)
        await pilot.press("f9")
        await settle(app, pilot)
        assert "no chat template" in strip(app)
        await pilot.press("enter")
        await settle(app, pilot)
        assert app.session.steps == [] and app.is_running
        notes = [n.message for n in app._notifications]
        assert any("no chat template" in n for n in notes)
