"""The model picker: a modal listing the models that open without the network (the embedded
demo, mlx-lm folders and GGUF files here and in the sub-folders, the Hugging Face cache, LM
Studio, Ollama) and a field for any path or name.  Enter loads the choice in a worker (the
screen stays responsive); the modal closes with its name once it is loaded, says why in a
line when it cannot be, and Esc drops a load that is still running.  What the app does with
the loaded model (the session's fingerprint check) is the app's business."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from mlxterp.session import FoundModel, SessionManager, model_choices

from .messages import error_text
from .widgets import Field, FieldMessage

HINT = "Enter loads the model, Esc cancels; ↓ goes to the list"
NAME_WIDTH = 36  # names up to this long line their sources up in a column
SOURCES = {"demo": "embedded demo model"}  # how a source is named in the list


def shown_name(model: FoundModel, folder: Path) -> str:
    """The name a row shows: the model's name, or its path (relative under ``folder``)."""
    if model.ref == str(model.path) and model.path.is_relative_to(folder):
        return os.path.join(".", model.path.relative_to(folder))
    return model.ref


def choice_label(model: FoundModel, folder: Path, current: str, width: int = 0) -> Text:
    """One row of the list: the name (``width`` wide), where it was found, and whether it is
    the model in use."""
    text = Text(shown_name(model, folder).ljust(width))
    text.append(f"  {SOURCES.get(model.source, model.source)}", style="dim")
    if model.ref == current:
        text.append("  (in use)", style="bold")
    return text


class ModelScreen(ModalScreen[str | None]):
    """Pick or type a model; returns its name once it is loaded (Esc: ``None``)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss(None)", "Cancel", id="model_cancel")
    ]

    class Listed(Message):
        """The models found (``error``: why looking for them failed)."""

        def __init__(self, models: list[FoundModel], error: str | None = None) -> None:
            super().__init__()
            self.models, self.error = models, error

    class Loaded(Message):
        """Load ``attempt`` is over: ``error`` is None when ``ref`` is loaded."""

        def __init__(self, attempt: int, ref: str, error: str | None) -> None:
            super().__init__()
            self.attempt, self.ref, self.error = attempt, ref, error

    def __init__(self, manager: SessionManager, current: str, folder: Path) -> None:
        super().__init__()
        self._manager, self._current, self._folder = manager, current, folder
        self._models: list[FoundModel] = []
        self._attempt = 0  # the load awaited now; an earlier one's result is dropped
        self._loading: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="model-box", classes="modal-box"):
            yield Static("Open a model", classes="modal-title")
            yield Field(placeholder="a path, org/repo, or a name from the list", id="model-input")
            yield OptionList(id="model-list")
            yield FieldMessage(id="model-message")
            yield Static("looking for models…", id="model-status", classes="modal-hint")

    def on_mount(self) -> None:
        self.query_one("#model-input", Input).focus()
        self._list()

    @work(thread=True, exclusive=True, group="model-list", exit_on_error=False)
    def _list(self) -> None:
        try:
            models = model_choices(self._folder)
        except OSError as err:
            self.post_message(self.Listed([], f"cannot list models: {err}"))
            return
        self.post_message(self.Listed(models))

    @work(thread=True, exclusive=True, group="model-load", exit_on_error=False)
    def _load(self, attempt: int, ref: str) -> None:
        try:
            self._manager.model(ref)
        except Exception as err:  # a user's files can fail in any way: say it, stay up
            self.post_message(self.Loaded(attempt, ref, error_text(err)))
            return
        self.post_message(self.Loaded(attempt, ref, None))

    @on(Listed)
    def _listed(self, message: Listed) -> None:
        message.stop()
        self._models = message.models
        options = self.query_one("#model-list", OptionList)
        options.clear_options()
        width = min(
            NAME_WIDTH, max((len(shown_name(m, self._folder)) for m in self._models), default=0)
        )
        options.add_options(
            Option(choice_label(m, self._folder, self._current, width), id=str(i))
            for i, m in enumerate(message.models)
        )
        self.query_one("#model-message", FieldMessage).say(message.error)
        if self._loading is None:
            self._status(HINT)

    def _status(self, text: str) -> None:
        self.query_one("#model-status", Static).update(Text(text))

    def load(self, ref: str) -> None:
        """Load ``ref`` in the background; the modal closes with it once it is loaded."""
        self._attempt += 1
        self._loading = ref
        self.query_one("#model-message", FieldMessage).say(None)
        self._status(f"loading {ref}… (Esc cancels)")
        self._load(self._attempt, ref)

    @on(Loaded)
    def _loaded(self, message: Loaded) -> None:
        message.stop()
        if message.attempt != self._attempt:
            return  # a load the user replaced with another
        self._loading = None
        if message.error is None:
            self.dismiss(message.ref)
            return
        self._status(HINT)
        self.query_one("#model-message", FieldMessage).say(
            f"The current model stays. {message.error}"
        )

    @on(Input.Submitted, "#model-input")
    def _typed(self, event: Input.Submitted) -> None:
        event.stop()
        ref = event.value.strip()
        if ref:
            self.load(ref)
        else:
            self.query_one("#model-message", FieldMessage).say(
                "type a path or a name, or choose one from the list (↓)"
            )

    @on(OptionList.OptionSelected, "#model-list")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.load(self._models[int(event.option.id or 0)].ref)

    def on_key(self, event: events.Key) -> None:
        """Down from the field goes to the list."""
        if event.key == "down" and self.focused is self.query_one("#model-input"):
            event.stop()
            self.query_one("#model-list", OptionList).focus()
