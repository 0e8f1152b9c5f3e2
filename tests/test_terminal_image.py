"""Terminal text as pictures: the SVG and PNG a chart export writes (mlxterp.terminal_image)."""

from __future__ import annotations

import io
from xml.etree import ElementTree

import pytest
from PIL import Image, ImageFont

from mlxterp import plotting
from mlxterp.terminal_image import cells, png_cell, png_font, text_png, text_svg

RED, BLUE, WHITE, BLACK = (255, 0, 0), (0, 0, 238), (255, 255, 255), (0, 0, 0)


def test_cells_reads_colours_runs_and_size():
    runs, width, height = cells("\x1b[31mab\x1b[44m c\x1b[0md\nxyz12\n")
    assert (width, height) == (5, 2)
    assert [(r.row, r.column, r.text, r.fg, r.bg) for r in runs] == [
        (0, 0, "ab", (205, 0, 0), None),
        (0, 2, " c", (205, 0, 0), (0, 0, 238)),
        (0, 4, "d", None, None),
        (1, 0, "xyz12", None, None),  # colours reset at a new line
    ]


def test_text_svg_draws_terminal_colours_as_cells():
    text = "\x1b[48;5;15m\x1b[38;2;10;20;30mab\x1b[0m cd\n\x1b[38;5;196mX\x1b[39m<&"
    root = ElementTree.fromstring(text_svg(text, title="a & b"))
    texts = {"".join(e.itertext()): e for e in root.iter() if e.tag.endswith("text")}
    assert texts["ab"].get("fill") == "rgb(10, 20, 30)"  # 24-bit
    assert texts["X"].get("fill") == "rgb(255, 0, 0)"  # 256-colour cube
    assert texts[" cd"].get("fill") == "black" and texts["<&"].get("fill") == "black"  # reset
    assert "a & b" in texts  # the title, escaped in the file
    rects = [e for e in root.iter() if e.tag.endswith("rect") and e.get("x")]
    assert [c.get("fill") for c in rects] == ["rgb(255, 255, 255)"]  # xterm colour 15 behind ab
    assert rects[0].get("width") == texts["ab"].get("textLength")  # the same two cells


def _png(text: str, **kw) -> tuple[Image.Image, int, int, int]:
    """The PNG of ``text`` decoded, with its cell width and height and the top of row 0."""
    image = Image.open(io.BytesIO(text_png(text, **kw)))
    size = kw.get("size", 16)
    cell_w, cell_h = png_cell(kw.get("font") or png_font(size), size)
    top = cell_h + 8 if kw.get("title") else 4
    return image.convert("RGB"), cell_w, cell_h, top


def _cell(image: Image.Image, col: int, row: int, cell_w: int, cell_h: int, top: int) -> set:
    """The colours of every pixel of one cell."""
    x0, y0 = 4 + col * cell_w, top + row * cell_h
    return {image.getpixel((x, y)) for x in range(x0, x0 + cell_w) for y in range(y0, y0 + cell_h)}


def test_png_is_the_grid_of_cells_with_backgrounds_and_solid_blocks():
    text = "\x1b[44m  \x1b[0m\x1b[38;5;196m█▄\x1b[0m a"
    image, w, h, top = _png(text)
    assert image.size == (8 + 6 * w, top + h + 4)  # six cells in one row, a 4 px margin
    assert _cell(image, 0, 0, w, h, top) == {BLUE}  # a background without a character
    assert _cell(image, 2, 0, w, h, top) == {RED}  # a full block fills its cell
    lower = _cell(image, 3, 0, w, h, top)
    assert lower == {RED, WHITE}  # a lower half block: half red ...
    x0, y0 = 4 + 3 * w, top
    assert image.getpixel((x0, y0)) == WHITE and image.getpixel((x0, y0 + h - 1)) == RED
    assert _cell(image, 4, 0, w, h, top) == {WHITE}  # a space draws nothing
    assert len(_cell(image, 5, 0, w, h, top)) > 1  # "a" comes from the font


def test_png_box_lines_join_across_cells_and_braille_is_dots():
    image, w, h, top = _png("┌─┐\n⠁⣿ ")
    mid = top + h // 2
    # the frame's top edge is one unbroken line from the corner's centre to the other's
    line = [image.getpixel((x, mid)) for x in range(4 + w // 2, 4 + 2 * w + w // 2)]
    assert set(line) == {BLACK}
    assert image.getpixel((4, mid)) == WHITE  # nothing left of the first corner's centre
    assert image.getpixel((4 + w // 2, mid + h // 4)) == BLACK  # its arm down
    dot1 = _cell(image, 0, 1, w, h, top)
    assert BLACK in dot1
    x0, y0 = 4, top + h  # the one dot (bit 0) is in the cell's top-left quarter
    dark = [
        (x - x0, y - y0)
        for x in range(x0, x0 + w)
        for y in range(y0, y0 + h)
        if image.getpixel((x, y)) != WHITE
    ]
    assert dark and all(x < w / 2 and y < h / 4 for x, y in dark)
    full = sum(
        image.getpixel((x, y)) != WHITE
        for x in range(x0 + w, x0 + 2 * w)
        for y in range(y0, y0 + h)
    )
    assert full >= 8 * len(dark) * 0.9  # eight dots


def test_png_carries_its_title_drawn_and_in_the_file():
    title = 'logit_lens step 0, params: {"prompt": "é"}'
    data = text_png("x", title)
    image = Image.open(io.BytesIO(data))
    assert image.text["Title"] == title  # type: ignore[attr-defined]
    rgb, _w, h, _top = _png("x", title=title)
    band = {rgb.getpixel((x, y)) for x in range(4, 200) for y in range(4, 4 + h)}
    assert BLACK in band or len(band) > 2


@pytest.mark.parametrize("font", [None, "pillow"])
def test_png_draws_any_character_with_the_system_font_or_pillows_own(font):
    """Characters no font may have (CJK, emoji, control pictures) never fail the export."""
    chosen = ImageFont.load_default(16) if font == "pillow" else None
    text = plotting.heatmap_text([[0.0, 1.0]], ["0"], [" Paris", "東京🙂\x00"])
    image, w, h, top = _png(text, font=chosen)
    _runs, columns, rows = cells(text)
    assert image.size == (8 + columns * w, top + rows * h + 4)


def test_a_real_chart_keeps_its_colours_in_the_png():
    s = {"layers": [0, 1, 2, 3], "recovery": [10.0, -20.0, 80.0, 40.0]}
    chart = plotting.to_text(plotting.bar_chart(s["layers"], s["recovery"]), 60, 16)
    image = Image.open(io.BytesIO(text_png(chart))).convert("RGB")
    colours = {colour for _count, colour in image.getcolors(1 << 20)}
    bar = next(r.fg for r in cells(chart)[0] if "█" in r.text)
    assert bar in colours and WHITE in colours
