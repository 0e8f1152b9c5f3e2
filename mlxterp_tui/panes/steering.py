"""Steering: positive/negative prompts, layer, coefficient → baseline vs steered text."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Static

from mlxterp.errors import InputError


class SteeringPane(Vertical):
    """The steering form and its two continuations."""

    def compose(self) -> ComposeResult:
        yield Input(placeholder="positive prompt", id="steer-positive")
        yield Input(placeholder="negative prompt", id="steer-negative")
        yield Input(placeholder="prompt to continue", id="steer-prompt")
        with Horizontal(id="steer-options"):
            yield Input("0", placeholder="layer", id="steer-layer")
            yield Input("4.0", placeholder="coefficient", id="steer-coefficient")
            yield Button("Steer (ctrl+g)", id="steer-run", variant="primary")
        yield Static("", id="steer-result")

    def params(self) -> dict[str, Any]:
        """Keyword arguments for the session's ``steering`` step."""
        values = {
            k: self.query_one(f"#steer-{k}", Input).value
            for k in ("positive", "negative", "prompt", "layer", "coefficient")
        }
        missing = [k for k in ("positive", "negative", "prompt") if not values[k].strip()]
        if missing:
            raise InputError(f"steering needs a {', '.join(missing)} prompt")
        try:
            layer, coefficient = int(values["layer"]), float(values["coefficient"])
        except ValueError:
            raise InputError("layer must be an integer and coefficient a number") from None
        return {
            "positive": values["positive"],
            "negative": values["negative"],
            "prompt": values["prompt"],
            "layer": layer,
            "coefficient": coefficient,
        }

    def show(self, summary: dict) -> None:
        self.query_one("#steer-result", Static).update(
            f"[b]baseline[/]: {summary.get('baseline', '')!r}\n"
            f"[b]steered[/]:  {summary.get('steered', '')!r}"
        )

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "steer-run":
            self.app.run_action("run_steering")
