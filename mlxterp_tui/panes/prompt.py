"""Prompt entry and the token strip (the prompt's tokens as chips with their ids)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Checkbox, Static

from mlxterp.session import display_token

from ..state import Prompt, user_message
from ..widgets import PromptInput

CHIP_STYLES = ("black on #8fbcbb", "black on #d8dee9")
MAX_CHIPS = 160  # more never fit in the strip's two lines; the count says how many there are


def token_chips(pieces: list[tuple[str, int]], count: int) -> Text:
    """``[(text, id)]`` as alternating-colour chips ``text·id``, each token shown by
    ``display_token`` (``␣`` a space, ``↵`` a newline, ``⇥`` a tab)."""
    strip = Text(no_wrap=False)
    strip.append(f"{count} tokens ", style="bold")
    for n, (piece, token_id) in enumerate(pieces):
        strip.append(f" {display_token(piece)}·{token_id} ", style=CHIP_STYLES[n % 2])
        strip.append(" ")
    if count > len(pieces):
        strip.append(f"… {count - len(pieces)} more")
    return strip


class PromptBar(Vertical):
    """The prompt (Enter runs the lens; ctrl+z undoes; up/down: earlier prompts) and the
    chat switch (f9: the prompt goes as a user message through the chat template), over the
    token strip, which the app fills off the UI thread once typing pauses."""

    def compose(self) -> ComposeResult:
        with Horizontal(id="prompt-row"):
            yield PromptInput(
                placeholder="Prompt — Enter runs the logit lens; ↑/↓ earlier prompts; ctrl+z undo",
                id="prompt",
            )
            yield Checkbox("chat", id="prompt-chat")
        yield Static("(no tokens yet)", id="token-strip", markup=False)

    @property
    def chat(self) -> bool:
        """Whether the prompt goes through the chat template (the switch beside it)."""
        return self.query_one("#prompt-chat", Checkbox).value

    @chat.setter
    def chat(self, on: bool) -> None:
        self.query_one("#prompt-chat", Checkbox).value = on

    @property
    def value(self) -> Prompt:
        """What the prompt runs: its text, or (chat on) the text as one user message."""
        return user_message(self.text) if self.chat else self.text

    @property
    def prompt(self) -> PromptInput:
        return self.query_one("#prompt", PromptInput)

    @property
    def text(self) -> str:
        return self.prompt.value

    def show_tokens(
        self, pieces: list[tuple[str, int]], count: int, note: str, chat: bool = False
    ) -> None:
        """Draw the chips (after ``chat:`` when they are the chat template's), or ``note``
        when there are none to draw."""
        strip = self.query_one("#token-strip", Static)
        shown = token_chips(pieces, count) if pieces else Text(note)
        strip.update(Text.assemble(("chat: ", "bold"), shown) if chat else shown)
