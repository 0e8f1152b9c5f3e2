"""The session's history: one line per step; selecting one shows its result again, and
``c`` on two of them compares them."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Label, ListItem, ListView, Static

from mlxterp.session import Step

from ..compare_screens import steps_side_by_side
from . import Pane


class HistoryPane(Pane):
    """A ``ListView`` of the session's steps, newest last and highlighted."""

    HOME = "#history-list"
    HELP = (
        "The session's steps, newest last (the newest is highlighted). Enter on a step shows "
        "its result again in its pane; a reopened session shows what was recorded. c on a "
        "step marks it, c on another compares the two: every difference in kind, "
        "parameters and results side by side (two lens runs on two prompts, a sweep before "
        "and after an intervention...). Every step is kept in the session file on save, and "
        "replayed by F5."
    )
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("c", "compare", "Compare two steps", id="history_compare")
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._steps: list[Step] = []
        self._marked: Step | None = None

    def compose(self) -> ComposeResult:
        yield Static("No steps yet.", id="history-caption")
        yield ListView(id="history-list")

    async def show(self, steps: list[Step]) -> None:
        """List ``steps`` and highlight the newest."""
        self._steps, self._marked = list(steps), None
        listing = self.query_one("#history-list", ListView)
        await listing.clear()
        await listing.extend(ListItem(Label(Text(s.title()))) for s in steps)
        listing.index = len(steps) - 1 if steps else None
        self._say(
            f"{len(steps)} steps — Enter shows a step's result; c on two compares them"
            if steps
            else "No steps yet."
        )

    def _say(self, text: str) -> None:
        self.query_one("#history-caption", Static).update(Text(text))

    def action_compare(self) -> None:
        """Mark the highlighted step, or compare it with the one marked."""
        index = self.query_one("#history-list", ListView).index
        if index is None or not 0 <= index < len(self._steps):
            return
        step = self._steps[index]
        if self._marked is None or self._marked is step:
            self._marked = step
            self._say(f"step {step.index} ({step.kind}) marked: c on another step compares")
            return
        first, self._marked = self._marked, None
        self._say(f"{len(self._steps)} steps — Enter shows a step's result; c on two compares")
        self.app.push_screen(steps_side_by_side(first, step))
