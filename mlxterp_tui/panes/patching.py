"""Activation patching setup (clean, corrupted, component, metric, answers) and results."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Checkbox, DataTable, Select, Static

from mlxterp.session import InputError, Step, display_token

from .. import checks
from ..state import ModelView, WorkbenchState
from ..widgets import BAR, Field, FieldMessage, KeyButton, signed_bar
from . import Pane

COMPONENTS = ("mlp", "attn", "output")
METRICS = ("l2", "cosine", "mse", "kl", "logit_diff")


class PatchingPane(Pane):
    """The sweep's inputs; results as a layer table (the chart pane draws them too)."""

    KINDS = ("activation_patching",)
    HOME = "#patch-table"
    HELP = (
        "Activation patching: run the corrupted prompt with one layer's component (mlp, attn "
        "or the layer output) taken from the clean run, for every layer, and measure how much "
        "of the clean behaviour comes back (recovery %). logit_diff needs two answers, one "
        "token each (␣Paris,␣London). 'by position' patches each position separately; "
        "positions (-1: the last; 0, 2: a list) patches only there. Run with the button, "
        "Enter in a field, or ctrl+k."
    )

    def compose(self) -> ComposeResult:
        with Horizontal(id="patch-prompts"):
            yield Field(placeholder="clean prompt", id="patch-clean")
            yield Field(placeholder="corrupted prompt", id="patch-corrupted")
        with Horizontal(id="patch-options"):
            yield Select(
                [(c, c) for c in COMPONENTS], value="mlp", allow_blank=False, id="patch-component"
            )
            yield Select(
                [(m, m) for m in METRICS], value="l2", allow_blank=False, id="patch-metric"
            )
            yield Checkbox("by position", id="patch-by-position")
            yield Field(placeholder="all positions", id="patch-positions")
        with Horizontal(id="patch-run-row"):
            yield Field(placeholder="answers for logit_diff: ␣Paris,␣London", id="patch-answer")
            yield KeyButton(
                "Run (ctrl+k)", id="patch-run", variant="primary", action="app.run_patching"
            )
        yield FieldMessage(id="patch-message")
        yield Static("", id="patch-caption")
        table: DataTable[str] = DataTable(id="patch-table", cursor_type="row")
        yield table

    def params(self, model: ModelView) -> dict[str, Any]:
        """The ``activation_patching`` step's parameters; ``InputError`` beside the fields."""
        return self.query_one("#patch-message", FieldMessage).checked(lambda: self._params(model))

    def _params(self, model: ModelView) -> dict[str, Any]:
        clean = self.query_one("#patch-clean", Field).value
        corrupted = self.query_one("#patch-corrupted", Field).value
        if not clean.strip() or not corrupted.strip():
            raise InputError("patching needs a clean and a corrupted prompt")
        params: dict[str, Any] = {
            "clean": clean,
            "corrupted": corrupted,
            "component": str(self.query_one("#patch-component", Select).value),
            "metric": str(self.query_one("#patch-metric", Select).value),
        }
        answer = self.query_one("#patch-answer", Field).value
        if answer.strip():
            params["answer"] = list(checks.answer_pair(model, answer))
        elif params["metric"] == "logit_diff":
            raise InputError("logit_diff needs two answers, right then wrong: ␣Paris,␣London")
        if self.query_one("#patch-by-position", Checkbox).value:
            params["by_position"] = True
        where = checks.positions(self.query_one("#patch-positions", Field).value)
        if where is not None:
            params["positions"] = where
        return params

    def restore(self, step: Step) -> None:
        p = step.params
        self.query_one("#patch-clean", Field).value = p["clean"]
        self.query_one("#patch-corrupted", Field).value = p["corrupted"]
        if p.get("component") in COMPONENTS:
            self.query_one("#patch-component", Select).value = p["component"]
        if p.get("metric") in METRICS:
            self.query_one("#patch-metric", Select).value = p["metric"]
        answer = p.get("answer")
        self.query_one("#patch-answer", Field).value = (
            ",".join(display_token(a) for a in answer) if answer else ""
        )
        self.query_one("#patch-by-position", Checkbox).value = bool(p.get("by_position"))
        where = p.get("positions")
        listed = [] if where is None else where if isinstance(where, list) else [where]
        self.query_one("#patch-positions", Field).value = ", ".join(map(str, listed))

    def show_step(self, step: Step, state: WorkbenchState) -> None:
        self.show(step.summary)

    def show(self, summary: dict) -> None:
        """Draw a ``PatchingResult.to_summary()``."""
        self.query_one("#patch-caption", Static).update(
            Text(
                f"{summary['component']} / {summary['metric']}: baseline gap "
                f"{summary['baseline']:.4g} (clean {summary['clean_value']:.4g}, corrupted "
                f"{summary['corrupted_value']:.4g})"
                + (f" — {summary['note']}" if summary.get("note") else "")
            )
        )
        table: DataTable[Any] = self.query_one("#patch-table", DataTable)
        table.clear(columns=True)
        table.add_column("layer", width=6)
        table.add_column("recovery %", width=10)
        rows = zip(summary["layers"], summary["recovery"], strict=True)
        if "matrix" in summary:  # by position: a column per patched position
            for position, token in zip(summary["positions"], summary["tokens"], strict=True):
                table.add_column(f"{position} {token}"[:9], width=9)
            for (layer, value), cells in zip(rows, summary["matrix"], strict=True):
                table.add_row(f"L{layer}", f"{value:8.2f}", *(f"{v:8.2f}" for v in cells))
            return
        table.add_column("", width=2 * BAR + 1)
        peak = max([100.0, *(abs(v) for v in summary["recovery"])])
        for layer, value in rows:
            table.add_row(f"L{layer}", f"{value:8.2f}", signed_bar(value, peak))
