"""Charts: target probability per layer, patching recovery and residual norms drawn by
plotext; grids (attention of one head, patching by position, gradient estimates, causal
tracing) as a table of coloured cells with labelled rows and columns, a colour scale and
the exact value under the cursor."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import DataTable, Static
from textual_plotext import PlotextPlot

from mlxterp.session import (
    InputError,
    Step,
    bar_chart,
    display_token,
    line_chart,
    matrix_chart,
    to_text,
)

from .. import checks
from ..state import ModelView, WorkbenchState
from ..widgets import Field, FieldMessage, KeyButton, colour_scale, heat_text
from . import Pane

EXPORT_SIZE = (100, 30)  # columns x lines of an exported chart
GRID_CELL = 7  # characters of a grid cell
ALL_HEADS = "all"  # typed for the head: every head of the layer, from the last query


class ChartsPane(Pane):
    """One chart at a time, redrawn through ``PlotextPlot.plt`` (never ``show()``)."""

    KINDS = (
        "logit_lens",
        "tuned_lens",
        "activation_patching",
        "attribution_patching",
        "causal_tracing",
        "trace",
        "attention",
    )
    HOME = "#attn-run"
    HELP = (
        "One chart at a time: the target token's probability per layer (after a lens with a "
        "target), recovery per layer of a patching sweep (or its layer x position grid), the "
        "layer x position grid of a gradient estimate or of causal tracing, the "
        "residual norm per layer (after a trace, ctrl+t), or the attention of the layer and "
        "head typed above the chart (f6 or the button: rows are queries, columns keys); "
        "'all' for the head shows every head of the layer from the last query (rows are "
        "heads, columns keys)."
    )

    _step: Step | None = None  # the step being shown
    _drawn: tuple[Step | None, Callable[..., Any]] | None = None  # the chart shown, and how
    _grid: tuple[list[list[float]], list[str], list[str], tuple[str, str]] | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="attn-options"):
            yield Field("0", placeholder="layer", id="attn-layer", restrict=r"[0-9]*")
            yield Field("0", placeholder="head or all", id="attn-head", restrict=r"[0-9]*|a|al|all")
            yield KeyButton("Attention (f6)", id="attn-run", action="app.run_attention")
        yield FieldMessage(id="attn-message")
        yield Static(
            "Charts appear after a lens with a target, a patching sweep, a trace or an "
            "attention run (f6: the prompt's attention for the layer and head above).",
            id="chart-caption",
        )
        yield PlotextPlot(id="chart")
        grid: DataTable[Text] = DataTable(id="chart-grid", cursor_type="cell")
        grid.display = False
        yield grid
        scale = Static("", id="chart-scale")
        scale.display = False
        yield scale

    def attention_layer(self, model: ModelView) -> int:
        """The layer typed above the chart, checked against the model."""

        def read() -> int:
            layer_text = self.query_one("#attn-layer", Field).value
            layer = checks.whole(layer_text, "layer", low=0, high=model.num_layers - 1)
            head_text = self.query_one("#attn-head", Field).value
            if head_text != ALL_HEADS:
                checks.whole(head_text, "head", low=0)
            return layer

        return self.query_one("#attn-message", FieldMessage).checked(read)

    def restore(self, step: Step) -> None:
        if step.kind == "attention":
            self.query_one("#attn-layer", Field).value = str(_attention_layer(step))

    def show_step(self, step: Step, state: WorkbenchState) -> None:
        summary = step.summary
        self._drawn, self._step = None, step
        if step.kind in ("logit_lens", "tuned_lens") and summary.get("target_probs"):
            self.line(
                "p(target) at the last position per layer",
                summary["layers"],
                summary["target_probs"],
                "layer",
                "probability",
            )
        elif step.kind == "activation_patching":
            if summary.get("matrix"):
                self.grid(
                    "Recovery % by layer (rows) x position (columns)",
                    summary["matrix"],
                    summary["layers"],
                    summary.get("tokens") or summary["positions"],
                    ("position", "layer"),
                    summary["positions"],
                )
            else:
                self.bars(
                    f"Recovery % patching {summary['component']} ({summary['metric']})",
                    summary["layers"],
                    summary["recovery"],
                    "layer",
                    "recovery %",
                )
        elif step.kind == "attribution_patching":
            self.grid(
                f"Estimated {summary['metric']} change patching {summary['component']}: layer "
                "(rows) x position (columns)",
                summary["scores"],
                summary["layers"],
                summary["tokens"],
                ("position", "layer"),
                summary["positions"],
            )
        elif step.kind == "causal_tracing":
            self.grid(
                f"p({summary['answer'].strip()}) restoring {summary['component']}: layer (rows) "
                "x position (columns)",
                summary["restored"],
                summary["layers"],
                summary["tokens"],
                ("position", "layer"),
                summary["positions"],
            )
        elif step.kind == "trace" and summary.get("layer_norms"):
            norms = summary["layer_norms"]
            self.line(
                "residual norm at the last token per layer",
                list(range(len(norms))),
                norms,
                "layer",
                "norm",
            )
        elif step.kind == "attention":
            self.attention(step, state)

    def attention(self, step: Step, state: WorkbenchState | None = None) -> None:
        """Chart the head typed above of an attention step (a reopened one has no weights:
        its summary is written out instead), its rows and columns labelled by the prompt's
        tokens where the loaded model gives them."""
        layer = _attention_layer(step)
        message = self.query_one("#attn-message", FieldMessage)
        if not isinstance(step.result, dict) or layer not in step.result:
            argmax = step.summary["last_query_argmax"]
            self._fresh(
                f"attention of layer {layer} (recorded): most attended key per head at the "
                f"last query {argmax if 'layer' in step.summary else argmax[0]}"
            )
            self.query_one("#chart", PlotextPlot).refresh()
            return
        weights = step.result[layer][0]  # (heads, q, k)
        if self.query_one("#attn-head", Field).value == ALL_HEADS:
            message.say(None)
            last = weights[:, -1, :].tolist()  # (heads, k): every head from the last query
            keys = _prompt_tokens(state, step, len(last[0]))
            self.grid(
                f"Attention, layer {layer}, every head from the last query (rows: heads, "
                "columns: keys)",
                last,
                [f"H{h}" for h in range(len(last))],
                keys or list(range(len(last[0]))),
                ("key", "head"),
            )
            return
        try:
            head = checks.whole(
                self.query_one("#attn-head", Field).value,
                "head",
                low=0,
                high=weights.shape[0] - 1,
            )
        except InputError as err:
            message.say(f"{err} — layer {layer} has {weights.shape[0]} heads")
            return
        message.say(None)
        pattern = weights[head].tolist()
        tokens = _prompt_tokens(state, step, len(pattern))
        self.grid(
            f"Attention, layer {layer} head {head} (rows: queries, columns: keys)",
            pattern,
            tokens or list(range(len(pattern))),
            tokens or list(range(len(pattern[0]))),
            ("key", "query"),
        )

    def chart_text(self, step: Step) -> str | None:
        """The chart this pane draws for ``step`` as terminal text (ANSI colours) of
        ``EXPORT_SIZE``, or None when it shows none of it."""
        if self._drawn is None or self._drawn[0] is not step:
            return None
        width, height = EXPORT_SIZE
        figure = self._drawn[1](plt=None, width=width)
        return to_text(figure, width, height)

    @staticmethod
    def _width(plot: PlotextPlot) -> int:
        """The columns the chart has (the whole pane's before the first layout)."""
        return plot.size.width or 80

    def _fresh(self, caption: str) -> PlotextPlot:
        self.query_one("#chart-caption", Static).update(Text(caption))
        plot = self.query_one("#chart", PlotextPlot)
        plot.plt.clear_data()
        plot.plt.clear_figure()
        return plot

    def _draw(self, caption: str, draw: Callable[..., Any]) -> None:
        """Show ``draw`` (an engine chart with its data bound; it takes ``plt`` and
        ``width``) under ``caption``, and keep it for :meth:`chart_text`."""
        plot = self._fresh(caption)
        self._show_grid(False)
        draw(plt=plot.plt, width=self._width(plot))
        plot.refresh()
        self._drawn = (self._step, draw)

    def line(self, caption: str, xs: list, ys: list, xlabel: str, ylabel: str) -> None:
        """A line chart of ``ys`` over ``xs`` (the engine's: integer layers, integer ticks)."""
        # the empty label: no legend
        self._draw(caption, partial(line_chart, {"": ys}, xs, xlabel=xlabel, ylabel=ylabel))

    def bars(self, caption: str, xs: list, ys: list, xlabel: str, ylabel: str) -> None:
        """A bar chart of ``ys`` over ``xs`` (the engine's: integer layers, integer ticks)."""
        self._draw(caption, partial(bar_chart, xs, ys, xlabel=xlabel, ylabel=ylabel))

    def grid(
        self,
        caption: str,
        matrix: list[list[Any]],
        rows: list,
        columns: list,
        axes: tuple,
        positions: list[int] | None = None,
    ) -> None:
        """``matrix`` as a table of cells coloured by value (viridis, from its smallest to
        its largest value), rows and columns labelled by position and token (or integer)
        and named ``axes`` ``(columns, rows)``; a colour scale and the exact value of the
        cell under the cursor below it.  ``positions`` are the columns' token positions
        (default 0, 1, 2 ...).  Exported as plotext's heatmap."""
        self._fresh(caption)
        self._drawn = (
            self._step,
            partial(matrix_chart, matrix, rows, columns, xlabel=axes[0], ylabel=axes[1]),
        )
        values = [[float(v) for v in row] for row in matrix]
        row_labels = [_label(i, r) for i, r in enumerate(rows)]
        where = positions if positions is not None else list(range(len(columns)))
        column_labels = [_label(p, c) for p, c in zip(where, columns, strict=True)]
        self._grid = (values, row_labels, column_labels, (str(axes[0]), str(axes[1])))
        flat = [v for row in values for v in row] or [0.0]
        low, high = min(flat), max(flat)
        span = (high - low) or 1.0
        table: DataTable[Text] = self.query_one("#chart-grid", DataTable)
        table.clear(columns=True)
        table.add_column(Text(f"{axes[1]}\\{axes[0]}"), width=10)
        for label in column_labels:
            table.add_column(Text(label[:GRID_CELL]), width=GRID_CELL)
        for label, row in zip(row_labels, values, strict=True):
            cells = [
                heat_text(f"{v:.3g}"[:GRID_CELL].rjust(GRID_CELL), (v - low) / span) for v in row
            ]
            table.add_row(Text(label[:10]), *cells)
        self._show_grid(True)
        table.move_cursor(row=0, column=1)  # on the first value, not the row labels
        self._read_out(0, 1)

    def _show_grid(self, shown: bool) -> None:
        self.query_one("#chart", PlotextPlot).display = not shown
        self.query_one("#chart-grid", DataTable).display = shown
        self.query_one("#chart-scale", Static).display = shown
        if not shown:
            self._grid = None

    def _read_out(self, row: int, column: int) -> None:
        """The colour scale, and the exact value of the grid's cell at ``(row, column)``
        (column 0 is the row labels)."""
        if self._grid is None:
            return
        values, rows, columns, axes = self._grid
        flat = [v for r in values for v in r] or [0.0]
        scale = colour_scale(min(flat), max(flat))
        if 0 <= row < len(values) and 1 <= column <= len(columns):
            scale.append(
                f"   {axes[1]} {rows[row]} x {axes[0]} {columns[column - 1]}: "
                f"{values[row][column - 1]:.6g}"
            )
        self.query_one("#chart-scale", Static).update(scale)

    def on_data_table_cell_highlighted(self, event: DataTable.CellHighlighted) -> None:
        if event.data_table.id == "chart-grid":
            self._read_out(event.coordinate.row, event.coordinate.column)


def _label(index: int, label: Any) -> str:
    """A grid row's or column's label: its index, and its token when it has one."""
    if isinstance(label, int):
        return str(label)
    return f"{index} {display_token(str(label))}"


def _prompt_tokens(state: WorkbenchState | None, step: Step, n: int) -> list[str] | None:
    """The tokens of ``step``'s prompt as the loaded model splits it, if there are ``n``."""
    text = step.params.get("text")
    model = state.model if state is not None else None
    if model is None or not isinstance(text, str):
        return None
    ids = model.encode(text)
    return [model.token_to_str(i) for i in ids] if len(ids) == n else None


def _attention_layer(step: Step) -> int:
    """The layer an attention step shows: its one ``layer``, or the first of ``layers``."""
    layer = step.summary.get("layer")
    return int(layer) if layer is not None else int(step.summary["layers"][0])
