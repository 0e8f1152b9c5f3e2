"""Tokens as one readable line: whitespace and invisible characters made visible.

Every place that shows a token (the terminal plots, the workbench's tables, strips and
lists) shows it through ``display_token``; results and session summaries keep the raw text.

The convention:

* every space is ``␣`` — a leading space included, so ``" Paris"`` reads ``␣Paris``,
  ``" "`` reads ``␣`` and ``"  "`` ``␣␣``;
* a newline is ``↵``, a tab ``⇥``, a carriage return ``␍``, a no-break space ``⍽``;
  ``"\\n\\n"`` reads ``↵↵`` and ``".\\n"`` ``.↵``, so a token never breaks a line;
* any other control character is its Unicode control picture (``"\\x00"`` is ``␀``, DEL
  ``␡``), and any other invisible character (zero-width, format, line or paragraph
  separator, other spaces) is its code point, ``⟨U+200B⟩``;
* the empty token is ``∅``.

Printable characters are shown as they are, so a token that itself holds one of these
symbols reads like the whitespace it stands for.  ``token_from_display`` reads the
convention back (the workbench's token fields take ``␣Paris`` for ``" Paris"``).
"""

from __future__ import annotations

import re

SYMBOLS: dict[str, str] = {
    " ": "␣",
    "\n": "↵",
    "\t": "⇥",
    "\r": "␍",
    "\xa0": "⍽",
    "\x7f": "␡",
}
"""The whitespace characters with a symbol of their own (other control characters show as
their control pictures, U+2400 onwards)."""

EMPTY = "∅"
ELLIPSIS = "…"

_READ_BACK = {shown: raw for raw, shown in SYMBOLS.items()} | {
    chr(0x2400 + code): chr(code) for code in range(0x20) if chr(code) not in SYMBOLS
}
_SHOWN = re.compile("⟨U\\+([0-9A-F]{4,6})⟩|[" + "".join(_READ_BACK) + "]")


def _visible(ch: str) -> str:
    shown = SYMBOLS.get(ch)
    if shown is not None:
        return shown
    code = ord(ch)
    if code < 0x20:
        return chr(0x2400 + code)
    return ch if ch.isprintable() else f"⟨U+{code:04X}⟩"


def display_token(text: str, width: int | None = None, *, keep_spaces: bool = False) -> str:
    """``text`` as one visible line (see the module's convention), cut to at most ``width``
    characters with a closing ``…`` when given.  ``keep_spaces=True`` leaves plain spaces
    as they are, for prose such as a prompt in a one-line title.  For display only: never
    feed it back to a tokenizer (``token_from_display`` reads it back)."""
    if not text:
        shown = EMPTY
    elif text.isprintable() and (keep_spaces or " " not in text):
        shown = text
    else:
        shown = "".join(" " if keep_spaces and ch == " " else _visible(ch) for ch in text)
    if width is not None and len(shown) > width:
        shown = shown[: width - 1] + ELLIPSIS if width > 0 else ""
    return shown


def token_from_display(shown: str) -> str:
    """The raw text of a token written in the display convention (``␣Paris`` is
    ``" Paris"``, ``↵`` a newline, ``⟨U+200B⟩`` a zero-width space); other characters are
    kept as typed."""

    def raw(match: re.Match[str]) -> str:
        if match.group(1) is None:
            return _READ_BACK[match.group(0)]
        code = int(match.group(1), 16)
        return chr(code) if code <= 0x10FFFF else match.group(0)

    return _SHOWN.sub(raw, shown)
