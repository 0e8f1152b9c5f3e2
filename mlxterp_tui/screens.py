"""Modal screens: help (every key), a path prompt (open / save as), a text report."""

from __future__ import annotations

from typing import Optional

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Static


class HelpScreen(ModalScreen[None]):
    """Every key binding of the app and of the panes, with the user's keymap applied."""

    BINDINGS = [Binding("escape,q,f1", "dismiss", "Close", id="help_close")]

    def __init__(self, rows: list[tuple[str, str, str]]) -> None:
        super().__init__()
        self._rows = rows

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box", classes="modal-box"):
            yield Static("Keys (Esc closes; remap by id in keymap.toml)", classes="modal-title")
            with VerticalScroll():
                yield Static(
                    "\n".join(f"{keys:<14} {desc:<30} {bid}" for keys, desc, bid in self._rows),
                    id="help-text",
                    markup=False,
                )


class PathScreen(ModalScreen[Optional[str]]):
    """Ask for a file path; Enter accepts, Esc cancels."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="path_cancel")]

    def __init__(self, title: str, value: str = "") -> None:
        super().__init__()
        self._title, self._value = title, value

    def compose(self) -> ComposeResult:
        with Vertical(id="path-box", classes="modal-box"):
            yield Static(self._title, classes="modal-title")
            yield Input(self._value, placeholder="path/to/session.toml", id="path-input")
            yield Static("Enter accepts, Esc cancels", classes="modal-hint")

    def on_mount(self) -> None:
        self.query_one("#path-input", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value.strip() or None)


class ReportScreen(ModalScreen[None]):
    """A scrollable text report (replay results)."""

    BINDINGS = [Binding("escape,q,enter", "dismiss", "Close", id="report_close")]

    def __init__(self, title: str, text: str) -> None:
        super().__init__()
        self._title, self._text = title, text

    def compose(self) -> ComposeResult:
        with Vertical(id="report-box", classes="modal-box"):
            yield Static(self._title, classes="modal-title")
            with VerticalScroll():
                yield Static(self._text, id="report-text", markup=False)
            yield Static("Esc closes", classes="modal-hint")
