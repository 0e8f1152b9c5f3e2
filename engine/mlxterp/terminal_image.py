"""Terminal text as a picture: a chart from ``plotting.to_text`` (ANSI colours, 16, 256 or
24-bit) drawn cell by cell as SVG (``text_svg``) or PNG (``text_png``).

Both read the text the same way (``cells``): runs of characters with their foreground and
background colour, on a grid of monospace cells.  The PNG draws the characters that make
a chart's shapes (block elements, box-drawing lines, braille dots) as shapes filling their
cells, so bars and frames join as on a terminal; every other character comes from a
monospace font of the machine (Menlo, DejaVu Sans Mono, Consolas, Liberation Mono), else
Pillow's own.  Pillow is imported only when a PNG is drawn.
"""

from __future__ import annotations

import html
import io
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

Colour = tuple[int, int, int]

# the 16 standard terminal colours (xterm's), then the 256-colour cube and grey ramp
_BASIC: list[Colour] = [
    (0, 0, 0), (205, 0, 0), (0, 205, 0), (205, 205, 0), (0, 0, 238), (205, 0, 205),
    (0, 205, 205), (229, 229, 229), (127, 127, 127), (255, 0, 0), (0, 255, 0),
    (255, 255, 0), (92, 92, 255), (255, 0, 255), (0, 255, 255), (255, 255, 255),
]  # fmt: skip
_SGR = re.compile(r"\x1b\[([0-9;]*)m")
_CELL_W, _CELL_H, _FONT = 8.4, 17, 14  # SVG px: a monospace cell at 14px
_BLACK, _WHITE = (0, 0, 0), (255, 255, 255)


@dataclass(frozen=True)
class Run:
    """Characters side by side in one colour: ``text`` from cell ``column`` of ``row``;
    ``fg``/``bg`` None for the terminal's default (black on white here)."""

    row: int
    column: int
    text: str
    fg: Colour | None
    bg: Colour | None


def _xterm(n: int) -> Colour:
    if n < 16:
        return _BASIC[n]
    if n < 232:
        r, g, b = (n - 16) // 36, (n - 16) // 6 % 6, (n - 16) % 6
        return cast(Colour, tuple(0 if c == 0 else 55 + 40 * c for c in (r, g, b)))
    grey = 8 + 10 * (n - 232)
    return grey, grey, grey


def _sgr(codes: list[int], fg: Any, bg: Any) -> tuple[Any, Any]:
    """The colours after one SGR sequence's codes (``None``: the default)."""
    i = 0
    while i < len(codes):
        code = codes[i]
        if code == 0:
            fg = bg = None
        elif code in (39, 49):
            fg, bg = (None, bg) if code == 39 else (fg, None)
        elif code in (38, 48) and i + 1 < len(codes):
            colour: tuple[int, ...] | None = None
            if codes[i + 1] == 5 and i + 2 < len(codes):
                colour, i = _xterm(codes[i + 2]), i + 2
            elif codes[i + 1] == 2 and i + 4 < len(codes):
                colour, i = tuple(codes[i + 2 : i + 5]), i + 4
            fg, bg = (colour, bg) if code == 38 else (fg, colour)
        elif 30 <= code <= 37 or 90 <= code <= 97:
            fg = _BASIC[code - 30 if code < 90 else code - 82]
        elif 40 <= code <= 47 or 100 <= code <= 107:
            bg = _BASIC[code - 40 if code < 100 else code - 92]
        i += 1
    return fg, bg


def cells(text: str) -> tuple[list[Run], int, int]:
    """``text`` (ANSI colours allowed) as its runs, and its size in cells (columns, rows);
    colours carry over within a line and reset at each line's start."""
    lines = text.rstrip("\n").split("\n")
    runs: list[Run] = []
    width = 1
    for row, line in enumerate(lines):
        fg = bg = None
        x = 0
        for n, part in enumerate(_SGR.split(line)):  # text, codes, text, codes, ...
            if n % 2:
                fg, bg = _sgr([int(c) for c in part.split(";") if c] or [0], fg, bg)
            elif part:
                runs.append(Run(row, x, part, fg, bg))
                x += len(part)
        width = max(width, x)
    return runs, width, len(lines)


def text_svg(text: str, title: str | None = None) -> str:
    """Terminal text (a chart from ``plotting.to_text``; ANSI colours, 16, 256 or 24-bit) as
    an SVG of monospace cells on white, ``title`` above it (as wide as the title needs)."""
    top = _CELL_H + 8 if title else 4
    runs, width, height = cells(text)
    shapes: list[str] = []
    for run in runs:
        left, y, length = 4 + run.column * _CELL_W, top + run.row * _CELL_H, len(run.text)
        if run.bg is not None:
            shapes.append(
                f'<rect x="{left:.1f}" y="{y}" width="{length * _CELL_W:.1f}" '
                f'height="{_CELL_H}" fill="rgb{tuple(run.bg)}"/>'
            )
        if run.text.strip():
            colour = f"rgb{tuple(run.fg)}" if run.fg is not None else "black"
            shapes.append(
                f'<text x="{left:.1f}" y="{y + _CELL_H - 4}" fill="{colour}" '
                f'textLength="{length * _CELL_W:.1f}">{html.escape(run.text)}</text>'
            )
    heading = (
        f'<text x="4" y="{_CELL_H}" fill="black" font-weight="bold">{html.escape(title)}</text>'
        if title
        else ""
    )
    w, h = 8 + max(width, len(title or "")) * _CELL_W, top + height * _CELL_H + 4
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0f}" height="{h}" '
        f'viewBox="0 0 {w:.0f} {h}" font-family="DejaVu Sans Mono, Menlo, monospace" '
        f'font-size="{_FONT}" xml:space="preserve">\n<rect width="100%" height="100%" '
        f'fill="white"/>\n{heading}\n' + "\n".join(shapes) + "\n</svg>\n"
    )


# --- PNG -------------------------------------------------------------------------------

MONOSPACE_FONTS = (
    "Menlo.ttc", "DejaVuSansMono.ttf", "consola.ttf", "LiberationMono-Regular.ttf",
    "Courier New.ttf",
)  # fmt: skip
"""Font files tried in turn for a PNG's characters (by name; Pillow looks in the system's
font folders), before Pillow's own font."""

# Block elements as the parts of the cell they fill: (left, top, right, bottom) fractions.
_LOWER = {chr(0x2581 + n): (0.0, 1 - (n + 1) / 8, 1.0, 1.0) for n in range(8)}  # ▁ .. █
_LEFT = {chr(0x2589 + n): (0.0, 0.0, (7 - n) / 8, 1.0) for n in range(7)}  # ▉ .. ▏
_UL, _UR, _LL, _LR = (0, 0, 0.5, 0.5), (0.5, 0, 1, 0.5), (0, 0.5, 0.5, 1), (0.5, 0.5, 1, 1)
BLOCKS: dict[str, tuple[tuple[float, float, float, float], ...]] = {
    **{ch: (box,) for ch, box in (_LOWER | _LEFT).items()},
    "▀": ((0, 0, 1, 0.5),), "▐": ((0.5, 0, 1, 1),), "▔": ((0, 0, 1, 1 / 8),),
    "▕": ((7 / 8, 0, 1, 1),), "▖": (_LL,), "▗": (_LR,), "▘": (_UL,), "▝": (_UR,),
    "▙": (_UL, _LL, _LR), "▚": (_UL, _LR), "▛": (_UL, _UR, _LL), "▜": (_UL, _UR, _LR),
    "▞": (_UR, _LL), "▟": (_UR, _LL, _LR),
}  # fmt: skip
SHADES = {"░": 0.25, "▒": 0.5, "▓": 0.75}  # how much of the foreground shows

# Box drawing as the weight of its arm (0 none, 1 light, 2 heavy): up, down, left, right.
_ARMS = "│┃─━┌┏┐┓└┗┘┛├┣┤┫┬┳┴┻┼╋╭╮╯╰"
_WEIGHTS = (
    (1, 1, 0, 0), (2, 2, 0, 0), (0, 0, 1, 1), (0, 0, 2, 2), (0, 1, 0, 1), (0, 2, 0, 2),
    (0, 1, 1, 0), (0, 2, 2, 0), (1, 0, 0, 1), (2, 0, 0, 2), (1, 0, 1, 0), (2, 0, 2, 0),
    (1, 1, 0, 1), (2, 2, 0, 2), (1, 1, 1, 0), (2, 2, 2, 0), (0, 1, 1, 1), (0, 2, 2, 2),
    (1, 0, 1, 1), (2, 0, 2, 2), (1, 1, 1, 1), (2, 2, 2, 2), (0, 1, 0, 1), (0, 1, 1, 0),
    (1, 0, 1, 0), (1, 0, 0, 1),
)  # fmt: skip
BOX_ARMS: dict[str, tuple[int, int, int, int]] = dict(zip(_ARMS, _WEIGHTS, strict=True))
# Braille: the dot of each bit of (code - U+2800), as (column, row) of a 2 x 4 grid.
_BRAILLE_DOTS = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (0, 3), (1, 3))


@lru_cache(maxsize=8)
def png_font(size: int = 16) -> Any:
    """The font a PNG's characters are drawn in: the first of ``MONOSPACE_FONTS`` the
    machine has, else Pillow's own, at ``size`` px."""
    from PIL import ImageFont

    for name in MONOSPACE_FONTS:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def png_cell(font: Any, size: int) -> tuple[int, int]:
    """The width and height in px of one cell of a PNG drawn in ``font`` at ``size`` px:
    the font's advance of ``M`` by 1.25 x ``size``."""
    return max(1, round(font.getlength("M"))), max(2, round(size * 1.25))


def _mix(a: Colour, b: Colour, share: float) -> Colour:
    return cast(
        Colour, tuple(round(x * share + y * (1 - share)) for x, y in zip(a, b, strict=True))
    )


def _shape(draw: Any, ch: str, box: tuple[int, int, int, int], fg: Colour, bg: Colour) -> bool:
    """Draw ``ch`` as a shape filling its cell ``box`` (left, top, right, bottom px);
    False when it is not a shape character (the font draws it)."""
    left, top, right, bottom = box
    w, h = right - left, bottom - top
    if ch in BLOCKS:
        for a, b, c, d in BLOCKS[ch]:
            draw.rectangle(
                (left + round(a * w), top + round(b * h),
                 left + round(c * w) - 1, top + round(d * h) - 1),
                fill=fg,
            )  # fmt: skip
    elif ch in SHADES:
        draw.rectangle((left, top, right - 1, bottom - 1), fill=_mix(fg, bg, SHADES[ch]))
    elif ch in BOX_ARMS:
        cx, cy = left + w // 2, top + h // 2
        up, down, west, east = BOX_ARMS[ch]
        for weight, (x0, y0, x1, y1) in (
            (up, (cx, top, cx, cy)), (down, (cx, cy, cx, bottom - 1)),
            (west, (left, cy, cx, cy)), (east, (cx, cy, right - 1, cy)),
        ):  # fmt: skip
            if weight:
                t = max(1, w // 9) * weight  # the line's thickness, centred on the cell's
                a, b = t // 2, (t - 1) // 2
                draw.rectangle((x0 - a, y0 - a, x1 + b, y1 + b), fill=fg)
    elif 0x2800 <= ord(ch) <= 0x28FF:
        bits, r = ord(ch) - 0x2800, max(1, w // 5)
        for bit, (col, row) in enumerate(_BRAILLE_DOTS):
            if bits >> bit & 1:
                x, y = left + (2 * col + 1) * w // 4, top + (2 * row + 1) * h // 8
                draw.ellipse((x - r, y - r, x + r - 1, y + r - 1), fill=fg)
    else:
        return False
    return True


def text_png(text: str, title: str | None = None, *, font: Any = None, size: int = 16) -> bytes:
    """Terminal text (as :func:`text_svg` takes it) as PNG bytes: cells of ``size`` px
    type (:func:`png_cell`) on white, ``title`` above them and in the file's ``Title``
    text chunk.  ``font`` is a Pillow font (default :func:`png_font`); block, box-drawing
    and braille characters are drawn as shapes whatever the font.  Needs Pillow."""
    from PIL import Image, ImageDraw, PngImagePlugin

    font = font if font is not None else png_font(size)
    cell_w, cell_h = png_cell(font, size)
    runs, width, height = cells(text)
    pad, top = 4, (cell_h + 8 if title else 4)
    columns = max(width, len(title or ""))  # a title longer than the chart widens it
    image = Image.new("RGB", (2 * pad + columns * cell_w, top + height * cell_h + pad), _WHITE)
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((pad, pad), title, font=font, fill=_BLACK)
    for run in runs:
        fg, bg = run.fg or _BLACK, run.bg or _WHITE
        y = top + run.row * cell_h
        if run.bg is not None:
            x0 = pad + run.column * cell_w
            draw.rectangle((x0, y, x0 + len(run.text) * cell_w - 1, y + cell_h - 1), fill=bg)
        for n, ch in enumerate(run.text):
            x = pad + (run.column + n) * cell_w
            if ch != " " and not _shape(draw, ch, (x, y, x + cell_w, y + cell_h), fg, bg):
                draw.text((x, y + 1), ch, font=font, fill=fg)
    info = PngImagePlugin.PngInfo()
    if title:
        info.add_itxt("Title", title)
    out = io.BytesIO()
    image.save(out, "PNG", pnginfo=info, optimize=True)
    return out.getvalue()
