"""Steering: positive/negative prompts, layer, coefficient → baseline vs steered text."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from mlxterp.session import InputError, Step

from .. import checks
from ..state import ModelView, WorkbenchState
from ..widgets import Field, FieldMessage, KeyButton
from . import Pane

MOST_COEFFICIENT = 1000.0


class SteeringPane(Pane):
    """The steering form and its two continuations."""

    KINDS = ("steering",)
    HOME = "#steer-run"
    HELP = (
        "Steering: the difference between the positive and the negative prompt's activations "
        "at a layer is added (times the coefficient) while the model continues the third "
        "prompt; the baseline and the steered continuation show side by side. Run with the "
        "button, Enter in a field, or ctrl+g."
    )

    def compose(self) -> ComposeResult:
        yield Field(placeholder="positive prompt", id="steer-positive")
        yield Field(placeholder="negative prompt", id="steer-negative")
        yield Field(placeholder="prompt to continue", id="steer-prompt")
        with Horizontal(id="steer-options"):
            yield Field("0", placeholder="layer", id="steer-layer")
            yield Field("4.0", placeholder="coefficient", id="steer-coefficient")
            yield KeyButton(
                "Steer (ctrl+g)", id="steer-run", variant="primary", action="app.run_steering"
            )
        yield FieldMessage(id="steer-message")
        yield Static("", id="steer-result")

    def params(self, model: ModelView) -> dict[str, Any]:
        """The ``steering`` step's parameters; ``InputError`` beside the fields."""
        return self.query_one("#steer-message", FieldMessage).checked(lambda: self._params(model))

    def _params(self, model: ModelView) -> dict[str, Any]:
        values = {
            k: self.query_one(f"#steer-{k}", Field).value
            for k in ("positive", "negative", "prompt", "layer", "coefficient")
        }
        missing = [k for k in ("positive", "negative", "prompt") if not values[k].strip()]
        if missing:
            raise InputError(f"steering needs a {', '.join(missing)} prompt")
        return {
            "positive": values["positive"],
            "negative": values["negative"],
            "prompt": values["prompt"],
            "layer": checks.whole(values["layer"], "layer", low=0, high=model.num_layers - 1),
            "coefficient": checks.number(
                values["coefficient"],
                "coefficient",
                low=-MOST_COEFFICIENT,
                high=MOST_COEFFICIENT,
            ),
        }

    def restore(self, step: Step) -> None:
        for key in ("positive", "negative", "prompt", "layer", "coefficient"):
            value = step.params.get(key)
            if isinstance(value, (str, int, float)):
                self.query_one(f"#steer-{key}", Field).value = str(value)

    def show_step(self, step: Step, state: WorkbenchState) -> None:
        summary = step.summary
        shown = Text()
        shown.append("baseline", style="bold")
        shown.append(f": {summary.get('baseline', '')!r}\n")
        shown.append("steered", style="bold")
        shown.append(f":  {summary.get('steered', '')!r}")
        self.query_one("#steer-result", Static).update(shown)
