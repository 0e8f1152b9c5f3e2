"""Modal screens: help (the panes and every key), a path prompt (open / save as) and a
question with a few answers (replace or compose, save before quitting...).  Side-by-side
views are in :mod:`.compare_screens`."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from .widgets import Field, FieldMessage, KeyButton

# what a path prompt says about a path: (message to show, whether Enter again accepts it)
PathCheck = Callable[[str], tuple[str, bool] | None]


class HelpScreen(ModalScreen[None]):
    """What each pane is for, then every key binding (with the user's keymap applied)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,f1", "dismiss", "Close", id="help_close")
    ]

    def __init__(self, panes: list[tuple[str, str]], rows: list[tuple[str, str, str]]) -> None:
        super().__init__()
        self._panes, self._rows = panes, rows

    def compose(self) -> ComposeResult:
        text = Text()
        for title, about in self._panes:
            text.append(f"{title}\n", style="bold")
            text.append(f"{about}\n\n")
        text.append("Keys (remap by id in keymap.toml)\n", style="bold")
        for keys, desc, bid in self._rows:
            text.append(f"{keys:<18} {desc:<46} {bid}\n")
        with Vertical(id="help-box", classes="modal-box"):
            yield Static("Help — Esc closes", classes="modal-title")
            with VerticalScroll(id="help-scroll"):
                yield Static(text, id="help-text")


class PathScreen(ModalScreen[str | None]):
    """Ask for a file path; Enter accepts, Esc cancels.  ``check`` may object to a path
    (shown beside the field); an objection that only asks for confirmation (a folder to
    create, a file to overwrite) is accepted by pressing Enter again."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss(None)", "Cancel", id="path_cancel")
    ]

    def __init__(self, title: str, value: str = "", check: PathCheck | None = None) -> None:
        super().__init__()
        self._title, self._value, self._check = title, value, check
        self._confirmed: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="path-box", classes="modal-box"):
            yield Static(self._title, classes="modal-title", markup=False)
            yield Field(self._value, placeholder="path/to/session.toml", id="path-input")
            yield FieldMessage(id="path-message")
            yield Static("Enter accepts, Esc cancels", classes="modal-hint")

    def on_mount(self) -> None:
        self.query_one("#path-input", Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self._confirmed = None
        self.query_one("#path-message", FieldMessage).say(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        path = event.value.strip()
        message = self.query_one("#path-message", FieldMessage)
        if not path:
            message.say("type a path, or Esc to cancel")
            return
        objection = self._check(path) if self._check is not None else None
        if objection is not None and self._confirmed != path:
            text, confirmable = objection
            message.say(text)
            self._confirmed = path if confirmable else None
            return
        self.dismiss(path)


class ChoiceScreen(ModalScreen[str | None]):
    """A question and a button per answer; returns the chosen answer's id (Esc: ``None``)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss(None)", "Cancel", id="choice_cancel"),
        Binding("left", "app.focus_previous", show=False),
        Binding("right", "app.focus_next", show=False),
    ]

    def __init__(self, question: str, answers: list[tuple[str, str]]) -> None:
        super().__init__()
        self._question, self._answers = question, answers

    def compose(self) -> ComposeResult:
        with Vertical(id="choice-box", classes="modal-box"):
            yield Static(Text(self._question), id="choice-question")
            with Horizontal(classes="modal-buttons"):
                for answer_id, label in self._answers:
                    yield KeyButton(label, id=f"choice-{answer_id}")
            yield Static("Enter or Space chooses, Esc cancels", classes="modal-hint")

    def on_mount(self) -> None:
        self.query(KeyButton).first().focus()

    def on_button_pressed(self, event: KeyButton.Pressed) -> None:
        event.stop()
        self.dismiss((event.button.id or "").removeprefix("choice-"))
