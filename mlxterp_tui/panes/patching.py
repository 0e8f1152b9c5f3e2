"""Activation patching setup (clean, corrupted, component, metric, answer) and results."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Checkbox, DataTable, Input, Select, Static

COMPONENTS = ("mlp", "attn", "output")
METRICS = ("l2", "cosine", "mse", "kl", "logit_diff")


class PatchingPane(Vertical):
    """The sweep's inputs; results as a layer table (the chart pane draws them too)."""

    def compose(self) -> ComposeResult:
        with Horizontal(id="patch-prompts"):
            yield Input(placeholder="clean prompt", id="patch-clean")
            yield Input(placeholder="corrupted prompt", id="patch-corrupted")
        with Horizontal(id="patch-options"):
            yield Select(
                [(c, c) for c in COMPONENTS], value="mlp", allow_blank=False, id="patch-component"
            )
            yield Select(
                [(m, m) for m in METRICS], value="l2", allow_blank=False, id="patch-metric"
            )
            yield Checkbox("by position", id="patch-by-position")
        with Horizontal(id="patch-run-row"):
            yield Input(placeholder="answers for logit_diff: ␣Paris,␣London", id="patch-answer")
            yield Button("Run (ctrl+k)", id="patch-run", variant="primary")
        yield Static("", id="patch-caption")
        yield DataTable(id="patch-table", cursor_type="row")

    def params(self) -> dict[str, Any]:
        """Keyword arguments for the session's ``activation_patching`` step."""
        params: dict[str, Any] = {
            "clean": self.query_one("#patch-clean", Input).value,
            "corrupted": self.query_one("#patch-corrupted", Input).value,
            "component": self.query_one("#patch-component", Select).value,
            "metric": self.query_one("#patch-metric", Select).value,
        }
        answer = self.query_one("#patch-answer", Input).value.replace("␣", " ")
        if answer.strip():
            params["answer"] = [a for a in answer.split(",") if a.strip()]
        if self.query_one("#patch-by-position", Checkbox).value:
            params["by_position"] = True
        return params

    def show(self, summary: dict) -> None:
        """Draw a ``PatchingResult.to_summary()``."""
        self.query_one("#patch-caption", Static).update(
            f"{summary['component']} / {summary['metric']}: baseline gap "
            f"{summary['baseline']:.4g} (clean {summary['clean_value']:.4g}, corrupted "
            f"{summary['corrupted_value']:.4g})"
            + (f" — {summary['note']}" if summary.get("note") else "")
        )
        table = self.query_one("#patch-table", DataTable)
        table.clear(columns=True)
        table.add_column("layer", width=6)
        table.add_column("recovery %", width=10)
        table.add_column("", width=30)
        for layer, value in zip(summary["layers"], summary["recovery"]):
            bar = "█" * max(0, min(30, round(abs(value) * 30 / 100)))
            table.add_row(f"L{layer}", f"{value:8.2f}", bar)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "patch-run":
            self.app.run_action("run_patching")
