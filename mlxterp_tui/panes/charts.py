"""plotext charts: target probability per layer, patching recovery, attention of a head."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Static
from textual_plotext import PlotextPlot

from mlxterp.errors import InputError


class ChartsPane(Vertical):
    """One chart at a time, redrawn through ``PlotextPlot.plt`` (never ``show()``)."""

    def compose(self) -> ComposeResult:
        with Horizontal(id="attn-options"):
            yield Input("0", placeholder="layer", id="attn-layer", restrict=r"[0-9]*")
            yield Input("0", placeholder="head", id="attn-head", restrict=r"[0-9]*")
            yield Button("Attention (f6)", id="attn-run")
        yield Static(
            "Charts appear after a lens with a target, a patching sweep or an "
            "attention run (f6: the prompt's attention for the layer and head above).",
            id="chart-caption",
        )
        yield PlotextPlot(id="chart")

    def attention_choice(self) -> tuple[int, int]:
        """The ``(layer, head)`` typed above the chart."""
        layer = self.query_one("#attn-layer", Input).value
        head = self.query_one("#attn-head", Input).value
        if not layer or not head:
            raise InputError("give a layer and a head for the attention chart")
        return int(layer), int(head)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "attn-run":
            self.app.run_action("run_attention")

    def _fresh(self, caption: str):
        self.query_one("#chart-caption", Static).update(caption)
        plot = self.query_one("#chart", PlotextPlot)
        plot.plt.clear_data()
        plot.plt.clear_figure()
        return plot

    def line(self, caption: str, xs: list, ys: list, xlabel: str, ylabel: str) -> None:
        """A line chart of ``ys`` over ``xs``."""
        plot = self._fresh(caption)
        plot.plt.plot(xs, ys, marker="braille")
        plot.plt.xticks(xs)
        plot.plt.xlabel(xlabel)
        plot.plt.ylabel(ylabel)
        plot.refresh()

    def bars(self, caption: str, xs: list, ys: list, xlabel: str, ylabel: str) -> None:
        """A bar chart of ``ys`` over ``xs``."""
        plot = self._fresh(caption)
        plot.plt.bar([str(x) for x in xs], ys)
        plot.plt.xlabel(xlabel)
        plot.plt.ylabel(ylabel)
        plot.refresh()

    def grid(self, caption: str, matrix: list[list[float]]) -> None:
        """A heatmap of ``matrix`` through plotext's ``matrix_plot``."""
        plot = self._fresh(caption)
        plot.plt.matrix_plot(matrix)
        plot.refresh()
