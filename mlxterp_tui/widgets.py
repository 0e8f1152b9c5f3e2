"""Small widgets every pane uses: fields that keep what was typed, buttons that answer every
key a user tries, a line beside a field that says what is wrong with it, the prompt (undo,
redo, history), and what table cells draw: signed bars, cells coloured by value and the
colour scale beside them."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, TypeVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.reactive import Reactive
from textual.widgets import Button, Input, Static

from mlxterp.session import InputError, color_at

T = TypeVar("T")

UNDO_DEPTH = 200
BAR = 20  # characters of the longest bar on either side of a signed bar's axis


def signed_bar(value: float, peak: float) -> Text:
    """A bar as long as ``|value|`` against ``peak``: blue to the right of the axis for a
    positive value, red to its left for a negative one."""
    n = 0 if peak <= 0 else min(BAR, round(abs(value) * BAR / peak))
    if value < 0:
        return Text.assemble(" " * (BAR - n), ("█" * n, "red"), "│" + " " * BAR)
    return Text.assemble(" " * BAR + "│", ("█" * n, "blue"))


def heat_text(label: str, fraction: float, cmap: str = "viridis") -> Text:
    """``label`` on the colour of ``fraction`` (0..1) on ``cmap``, in black or white,
    whichever reads on it."""
    r, g, b = color_at(cmap, fraction)
    fg = "black" if (0.299 * r + 0.587 * g + 0.114 * b) > 140 else "white"
    return Text(label, style=f"{fg} on rgb({r},{g},{b})")


def colour_scale(low: float, high: float, width: int = 24, cmap: str = "viridis") -> Text:
    """The colour ramp from ``low`` to ``high``, ``width`` cells wide, with both ends written."""
    cells = [heat_text(" ", i / max(width - 1, 1), cmap) for i in range(width)]
    return Text.assemble(f"{low:.3g} ", *cells, f" {high:.3g}")


class KeyButton(Button):
    """A button that Enter, Space and a click all press."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter,space", "press", "Press", show=False)]

    def action_press(self) -> None:
        """Press, even while the last press's highlight (a fifth of a second) still shows:
        Textual's button drops a key that comes that soon, so Enter right after a click
        did nothing.  What a press starts guards itself against running twice."""
        self.press()


class Field(Input):
    """A text field that never selects its text on focus (tabbing in must not arm the next
    key to wipe it), and whose typing repaints only itself.

    Textual's ``Input`` grows its virtual width with every key, and a widget's virtual size
    asks for a layout of the whole screen; on this screen that made each key cost tens of
    milliseconds.  A field here has a fixed size, so a repaint is all a key needs.
    """

    virtual_size: Reactive[Size] = Reactive(Size(0, 0), repaint=True)

    def __init__(self, value: str = "", **kwargs) -> None:
        kwargs.setdefault("select_on_focus", False)
        super().__init__(value, **kwargs)


class FieldMessage(Static):
    """The line beside a field: what is wrong with what was typed, shown as plain text."""

    DEFAULT_CSS = "FieldMessage { height: auto; color: $error; padding: 0 1; }"

    def __init__(self, **kwargs) -> None:
        super().__init__("", markup=False, **kwargs)
        self.display = False

    def say(self, text: str | None) -> None:
        """Show ``text`` (``None`` or empty hides the line)."""
        self.display = bool(text)
        self.update(Text(text or ""))

    def checked(self, read: Callable[[], T]) -> T:
        """What ``read`` makes of the fields; its ``InputError`` is said here and raised."""
        try:
            value = read()
        except InputError as err:
            self.say(str(err))
            raise
        self.say(None)
        return value

    @property
    def text(self) -> str:
        return str(self.render()) if self.display else ""


class PromptInput(Field):
    """The prompt: ``ctrl+z`` undoes an edit, ``ctrl+y`` redoes it, up and down walk
    through the prompts run before."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+z", "undo", "Undo", show=False, id="prompt_undo"),
        Binding("ctrl+y,ctrl+shift+z", "redo", "Redo", show=False, id="prompt_redo"),
        Binding("up", "history(-1)", "Earlier prompt", show=False, id="prompt_earlier"),
        Binding("down", "history(1)", "Later prompt", show=False, id="prompt_later"),
    ]

    def __init__(self, value: str = "", **kwargs) -> None:
        super().__init__(value, **kwargs)
        self._undo: list[str] = []
        self._redo: list[str] = []
        self._shown = value  # the value the undo stack last saw
        self._typing = False  # the last edit inserted one character (edits coalesce)
        self.history: list[str] = []
        self._history_at: int | None = None
        self._draft = ""

    def remember(self, text: str) -> None:
        """Add ``text`` to the prompt history (newest last, no repeats in a row)."""
        if text and (not self.history or self.history[-1] != text):
            self.history.append(text)
        self._history_at = None

    def _on_input_changed(self, event: Input.Changed) -> None:
        """Record the previous value for undo, one entry per word typed or per other edit."""
        if event.input is not self:
            return
        value, previous = event.value, self._shown
        self._shown = value
        if previous == value:
            return
        typing = len(value) == len(previous) + 1 and not value[-1:].isspace()
        if not (typing and self._typing):
            self._undo.append(previous)
            del self._undo[:-UNDO_DEPTH]
        self._typing = typing
        self._redo.clear()

    def _set(self, value: str) -> None:
        """Show ``value`` without recording it as an edit (undo, redo, history)."""
        self._shown, self._typing = value, False
        self.value = value
        self.cursor_position = len(value)

    def action_undo(self) -> None:
        if self._undo:
            self._redo.append(self.value)
            self._set(self._undo.pop())

    def action_redo(self) -> None:
        if self._redo:
            self._undo.append(self.value)
            self._set(self._redo.pop())

    def action_history(self, step: int) -> None:
        if not self.history:
            return
        if self._history_at is None:
            if step > 0:
                return
            self._draft, at = self.value, len(self.history) - 1
        else:
            at = self._history_at + step
        if at >= len(self.history):
            self._history_at = None
            self._set(self._draft)
        else:
            self._history_at = max(0, at)
            self._set(self.history[self._history_at])
