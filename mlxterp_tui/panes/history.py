"""The session's history: one line per step; selecting one shows its result again."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, ListItem, ListView, Static


class HistoryPane(Vertical):
    """A ``ListView`` of the session's steps, newest last."""

    def compose(self) -> ComposeResult:
        yield Static("No steps yet.", id="history-caption")
        yield ListView(id="history-list")

    def show(self, steps: list) -> None:
        listing = self.query_one("#history-list", ListView)
        listing.clear()
        listing.extend(ListItem(Label(s.title(), markup=False)) for s in steps)
        if steps:
            listing.index = len(steps) - 1
        self.query_one("#history-caption", Static).update(
            f"{len(steps)} steps — Enter shows a step's result" if steps else "No steps yet."
        )
