"""Prompt entry and the token strip (the prompt's tokens as chips with their ids)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input, Static

CHIP_STYLES = ("black on #8fbcbb", "black on #d8dee9")


def token_chips(pieces: list[tuple[str, int]]) -> Text:
    """``[(text, id)]`` as alternating-colour chips ``text·id``; spaces shown as ``␣``."""
    strip = Text(no_wrap=False)
    for n, (piece, token_id) in enumerate(pieces):
        shown = piece.replace(" ", "␣").replace("\n", "⏎") or "∅"
        strip.append(f" {shown}·{token_id} ", style=CHIP_STYLES[n % 2])
        strip.append(" ")
    return strip


class PromptBar(Vertical):
    """The prompt ``Input`` (Enter runs the lens) over the token strip."""

    def compose(self) -> ComposeResult:
        yield Input(placeholder="Prompt — Enter runs the logit lens", id="prompt")
        yield Static("(no tokens yet)", id="token-strip")

    @property
    def text(self) -> str:
        return self.query_one("#prompt", Input).value

    def show_tokens(self, model: Any) -> None:
        """Tokenize the current prompt with ``model`` and draw the chips."""
        strip = self.query_one("#token-strip", Static)
        if model is None or model.tokenizer is None or not self.text:
            strip.update(
                "(no tokens yet)" if model is not None or not self.text else "(loading model…)"
            )
            return
        ids = model.encode(self.text)
        strip.update(token_chips([(model.token_to_str(i), i) for i in ids]))
