"""Prompt entry and the token strip (the prompt's tokens as chips with their ids)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from ..widgets import PromptInput

CHIP_STYLES = ("black on #8fbcbb", "black on #d8dee9")
MAX_CHIPS = 160  # more never fit in the strip's two lines; the count says how many there are


def token_chips(pieces: list[tuple[str, int]], count: int) -> Text:
    """``[(text, id)]`` as alternating-colour chips ``text·id``; spaces shown as ``␣``."""
    strip = Text(no_wrap=False)
    strip.append(f"{count} tokens ", style="bold")
    for n, (piece, token_id) in enumerate(pieces):
        shown = piece.replace(" ", "␣").replace("\n", "⏎") or "∅"
        strip.append(f" {shown}·{token_id} ", style=CHIP_STYLES[n % 2])
        strip.append(" ")
    if count > len(pieces):
        strip.append(f"… {count - len(pieces)} more")
    return strip


class PromptBar(Vertical):
    """The prompt (Enter runs the lens; ctrl+z undoes; up/down: earlier prompts) over the
    token strip, which the app fills off the UI thread once typing pauses."""

    def compose(self) -> ComposeResult:
        yield PromptInput(
            placeholder="Prompt — Enter runs the logit lens; ↑/↓ earlier prompts; ctrl+z undo",
            id="prompt",
        )
        yield Static("(no tokens yet)", id="token-strip", markup=False)

    @property
    def prompt(self) -> PromptInput:
        return self.query_one("#prompt", PromptInput)

    @property
    def text(self) -> str:
        return self.prompt.value

    def show_tokens(self, pieces: list[tuple[str, int]], count: int, note: str) -> None:
        """Draw the chips, or ``note`` when there are none to draw."""
        strip = self.query_one("#token-strip", Static)
        strip.update(token_chips(pieces, count) if pieces else Text(note))
