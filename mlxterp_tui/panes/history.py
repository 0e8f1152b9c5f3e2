"""The session's history: one line per step; selecting one shows its result again."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Label, ListItem, ListView, Static

from mlxterp.session import Step

from . import Pane


class HistoryPane(Pane):
    """A ``ListView`` of the session's steps, newest last and highlighted."""

    HOME = "#history-list"
    HELP = (
        "The session's steps, newest last (the newest is highlighted). Enter on a step shows "
        "its result again in its pane; a reopened session shows what was recorded. Every "
        "step is kept in the session file on save, and replayed by F5."
    )

    def compose(self) -> ComposeResult:
        yield Static("No steps yet.", id="history-caption")
        yield ListView(id="history-list")

    async def show(self, steps: list[Step]) -> None:
        """List ``steps`` and highlight the newest."""
        listing = self.query_one("#history-list", ListView)
        await listing.clear()
        await listing.extend(ListItem(Label(Text(s.title()))) for s in steps)
        listing.index = len(steps) - 1 if steps else None
        self.query_one("#history-caption", Static).update(
            f"{len(steps)} steps — Enter shows a step's result" if steps else "No steps yet."
        )
