"""Terminal charts for the analysis functions: a coloured layer x position grid, bars, lines.

Everything is drawn with plotext, so it works over SSH and needs no GUI.  ``heatmap_text``
returns the grid as a string (cells coloured by value, each holding a short label such as
the top token; labels are shown through ``token_display.display_token``, so whitespace
tokens are visible and never break a line).  ``bar_chart``, ``line_chart`` and
``matrix_chart`` draw onto a plotext figure: pass the ``.plt`` of a
``textual_plotext.PlotextPlot`` to draw inside the workbench, or nothing to get a fresh
figure, which ``to_text`` turns into a string for printing.  Integer labels (layers,
positions) get integer ticks, evenly thinned when there are many.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotext
from plotext._figure import _figure_class as _Figure

from .errors import InputError
from .token_display import display_token

# Colour ramps (a few anchors each, interpolated linearly), named as matplotlib names them.
COLORMAPS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "viridis": ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)),
    "plasma": ((13, 8, 135), (126, 3, 168), (204, 71, 120), (248, 149, 64), (240, 249, 33)),
    "inferno": ((0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)),
    "magma": ((0, 0, 4), (81, 18, 124), (183, 55, 121), (252, 137, 97), (252, 253, 191)),
    "cividis": ((0, 34, 78), (65, 77, 107), (124, 123, 120), (188, 175, 111), (255, 234, 70)),
    "gray": ((0, 0, 0), (255, 255, 255)),
    "RdBu_r": ((5, 48, 97), (67, 147, 195), (247, 247, 247), (214, 96, 77), (103, 0, 31)),
}


def color_at(cmap: str, value: float) -> tuple[int, int, int]:
    """The RGB colour of ``value`` (clipped to 0..1) on the colour ramp ``cmap``."""
    anchors = COLORMAPS.get(cmap)
    if anchors is None:
        raise InputError(f"unknown colour map {cmap!r}; choose one of: {', '.join(COLORMAPS)}")
    v = min(max(float(value), 0.0), 1.0) * (len(anchors) - 1)
    lo = min(int(v), len(anchors) - 2)
    t = v - lo
    r, g, b = (round(a + (z - a) * t) for a, z in zip(anchors[lo], anchors[lo + 1], strict=True))
    return r, g, b


# At most this many labelled ticks on an x axis (fewer when the chart is narrow: see
# _fitting) and on a y axis (a chart in a 24-line terminal has about 10 lines of plot).
MOST_TICKS = 16
MOST_Y_TICKS = 8
TOKEN_TICK_WIDTH = 8  # a token under an axis is cut to this many characters
_TICK_STEPS = (1, 2, 5)  # times 1, 10, 100 ...


def _fit(label: str, width: int) -> str:
    """``label`` shown as a token, cut to ``width - 1`` characters and padded to exactly
    ``width`` (the last column keeps neighbouring labels apart: ``␣machine`` then ``␣lazy``
    must not read ``␣machine␣lazy``)."""
    return display_token(label, width - 1).ljust(width)


def integer_ticks(values: Sequence[int], most: int = MOST_TICKS) -> list[int]:
    """Which of the integers ``values`` (layers, say) get a tick label: all of them when
    there are at most ``most``, else the multiples of the smallest step of 1, 2, 5, 10, 20,
    50 ... that leaves at most ``most`` (every step-th value when none is a multiple)."""
    values = [int(v) for v in values]
    scale = 1
    while True:
        for base in _TICK_STEPS:
            step = base * scale
            picked = [v for v in values if v % step == 0] or values[::step]
            if len(picked) <= most:
                return picked
        scale *= 10


def heatmap_text(
    values: Sequence[Sequence[float]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    cells: Sequence[Sequence[str]] | None = None,
    *,
    cmap: str = "viridis",
    cell_width: int = 8,
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
    color: bool = True,
    centred: bool = False,
) -> str:
    """A grid of rows x columns, each cell coloured by its value and labelled.

    ``cells`` gives each cell's text (default: the value itself); the column labels head
    the grid.  Every label and cell is shown with ``display_token`` (``␣Paris``, ``↵``).
    ``vmin``/``vmax`` fix the colour scale (default: the values' range); ``centred=True``
    makes it symmetric around 0, from minus to plus the largest magnitude (for signed
    effects on a diverging colour map).  ``color=False`` gives plain text.
    """
    n_rows, n_cols = len(row_labels), len(col_labels)
    if len(values) != n_rows or any(len(row) != n_cols for row in values):
        raise InputError(f"heatmap values must be {n_rows} rows of {n_cols} values")
    if cell_width < 2:
        raise InputError("cell_width must be at least 2")
    flat = [float(v) for row in values for v in row]
    if centred:
        peak = max((abs(v) for v in flat), default=0.0) or 1.0
        vmin, vmax = -peak, peak
    lo = min(flat) if vmin is None else vmin
    hi = max(flat) if vmax is None else vmax
    span = hi - lo if hi > lo else 1.0
    rows = [display_token(str(r)) for r in row_labels]
    label_width = max(len(r) for r in rows) + 1 if n_rows else 1
    lines = [title] if title else []
    header = " " * label_width + "".join(_fit(str(c), cell_width) for c in col_labels)
    lines.append(header.rstrip())
    for r in range(n_rows):
        parts = [rows[r].rjust(label_width - 1) + " "]
        for c in range(n_cols):
            value = float(values[r][c])
            text = _fit(cells[r][c] if cells is not None else f"{value:.2f}", cell_width)
            if color:
                bg = color_at(cmap, (value - lo) / span)
                light = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2] > 140
                fg = (0, 0, 0) if light else (255, 255, 255)
                text = plotext.colorize(text, fg, background=bg)
            parts.append(text)
        lines.append("".join(parts))
    return "\n".join(lines)


def _figure(plt: Any) -> Any:
    if plt is None:
        return _Figure()
    plt.clear_figure()
    return plt


def bar_chart(
    labels: Sequence[Any],
    values: Sequence[float],
    *,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    plt: Any = None,
    width: int = 80,
) -> Any:
    """Bars of ``values`` over ``labels`` drawn on ``plt`` (cleared first) or a new figure;
    returns the figure.  Integer labels (layers) are ticked by ``integer_ticks``, as many
    as fit in the ``width`` columns the chart will take."""
    if len(labels) != len(values):
        raise InputError(f"bar_chart: {len(labels)} labels for {len(values)} values")
    fig = _figure(plt)
    if all(_is_int(label) for label in labels):
        fig.bar(list(range(len(labels))), [float(v) for v in values])
        fig.xticks(*_ticks(labels, _fitting(width, labels)))
    else:
        fig.bar([str(label) for label in labels], [float(v) for v in values])
    _decorate(fig, title, xlabel, ylabel)
    return fig


def matrix_chart(
    matrix: Sequence[Sequence[float]],
    rows: Sequence[Any],
    columns: Sequence[Any],
    *,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    plt: Any = None,
    width: int = 80,
) -> Any:
    """``matrix`` (rows x columns) as plotext's colour grid on ``plt`` (cleared first) or a
    new figure, its rows (top down) and columns labelled by ``rows`` and ``columns``:
    integers (layers, positions) by ``integer_ticks``, anything else (tokens) shown by
    ``display_token``; as many columns as fit in ``width`` and at most ``MOST_Y_TICKS``
    rows.  Returns the figure."""
    if len(matrix) != len(rows) or any(len(row) != len(columns) for row in matrix):
        raise InputError(f"matrix_chart: the matrix must be {len(rows)} rows of {len(columns)}")
    fig = _figure(plt)
    fig.matrix_plot([[float(v) for v in row] for row in matrix])
    where, texts = _ticks(columns, _fitting(width, columns))
    fig.xticks(where, texts)
    where, texts = _ticks(rows, MOST_Y_TICKS)
    fig.yticks([len(rows) - 1 - n for n in where], texts)  # plotext draws row 0 on top
    _decorate(fig, title, xlabel, ylabel)
    return fig


def _fitting(width: int, labels: Sequence[Any]) -> int:
    """How many of ``labels`` can be tick labels side by side under a chart ``width``
    columns wide (at most ``MOST_TICKS``, at least 2)."""
    widest = max((min(len(str(label)), TOKEN_TICK_WIDTH) for label in labels), default=1)
    return max(2, min(MOST_TICKS, (width - 10) // (widest + 2)))


def _ticks(labels: Sequence[Any], most: int) -> tuple[list[int], list[str]]:
    """Which of ``labels`` (by index) to tick, at most ``most``, and their text: integer
    labels by ``integer_ticks``, others every n-th, shown as tokens (``display_token``)."""
    if all(_is_int(label) for label in labels):
        where = {int(label): n for n, label in enumerate(labels)}
        picked = integer_ticks(list(where), most)
        return [where[t] for t in picked], [str(t) for t in picked]
    stride = -(-len(labels) // most)  # ceiling division
    indices = list(range(0, len(labels), stride))
    return indices, [display_token(str(labels[n]), TOKEN_TICK_WIDTH) for n in indices]


def line_chart(
    series: dict[str, Sequence[float]],
    x: Sequence[float] | None = None,
    *,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    plt: Any = None,
    width: int = 80,
) -> Any:
    """One line per ``{label: values}`` entry over ``x`` (default 0, 1, ...) drawn on ``plt``
    (cleared first) or a new figure; returns the figure.  The legend names each series
    (an empty label stays out of it); integer ``x`` is ticked by ``integer_ticks``, as many
    as fit in the ``width`` columns the chart will take."""
    fig = _figure(plt)
    for label, ys in series.items():
        xs = list(x) if x is not None else list(range(len(ys)))
        if len(xs) != len(ys):
            raise InputError(f"line_chart: series {label!r} has {len(ys)} values for {len(xs)} x")
        fig.plot(xs, [float(v) for v in ys], label=str(label), marker="braille")
    if x is not None and all(_is_int(v) for v in x):
        fig.xticks(integer_ticks([int(v) for v in x], _fitting(width, x)))
    _decorate(fig, title, xlabel, ylabel)
    return fig


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _decorate(fig: Any, title: str | None, xlabel: str | None, ylabel: str | None) -> None:
    if title:
        fig.title(title)
    if xlabel:
        fig.xlabel(xlabel)
    if ylabel:
        fig.ylabel(ylabel)


def to_text(fig: Any, width: int = 80, height: int = 20, color: bool = True) -> str:
    """The figure rendered as terminal text of ``width`` x ``height`` characters (whatever
    the terminal's size: what plotext's own ``limit_size(False, False)`` does, for this
    figure rather than its global one)."""
    fig._limit_size(False, False)
    fig.plotsize(width, height)
    text: str = fig.build()
    return text if color else plotext.uncolorize(text)
