"""Steering (positive/negative prompts, layer, coefficient → baseline vs steered text) and
free generation of the same prompt under the session's interventions, streamed."""

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
MOST_TOKENS = 1024


class SteeringPane(Pane):
    """The steering form and its two continuations; free generation of the same prompt."""

    KINDS = ("steering", "generate")
    HOME = "#steer-run"
    HELP = (
        "Steering: the difference between the positive and the negative prompt's activations "
        "at a layer is added (times the coefficient) while the model continues the third "
        "prompt; the baseline and the steered continuation show side by side. Run with the "
        "button, Enter in a field, or ctrl+g. Generate (ctrl+n) continues that prompt for up "
        "to 'max tokens' under the session's active interventions, token by token as they "
        "come; Esc (outside a field) stops it and records nothing."
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._streamed: list[int] = []

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
            with Horizontal(id="gen-options"):  # one row with steering's: results fit 80x24
                yield Field("40", placeholder="max tokens", id="gen-max")
                yield KeyButton(
                    "Generate (ctrl+n)", id="gen-run", variant="primary", action="app.run_generate"
                )
        yield FieldMessage(id="steer-message")
        yield Static("", id="steer-result")
        yield Static("", id="gen-result")

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

    def generate_params(self, model: ModelView) -> dict[str, Any]:
        """The ``generate`` step's parameters; ``InputError`` beside the fields."""
        return self.query_one("#steer-message", FieldMessage).checked(
            lambda: self._generate_params(model)
        )

    def _generate_params(self, model: ModelView) -> dict[str, Any]:
        prompt = self.query_one("#steer-prompt", Field).value
        if not prompt.strip():
            raise InputError("generation needs a prompt to continue")
        most = self.query_one("#gen-max", Field).value
        return {
            "prompt": prompt,
            "max_tokens": checks.whole(most, "max tokens", low=1, high=MOST_TOKENS),
        }

    def restore(self, step: Step) -> None:
        for key in ("positive", "negative", "prompt", "layer", "coefficient"):
            value = step.params.get(key)
            if isinstance(value, (str, int, float)):
                self.query_one(f"#steer-{key}", Field).value = str(value)
        if step.kind == "generate":
            self.query_one("#gen-max", Field).value = str(step.params.get("max_tokens", ""))

    def start_stream(self) -> None:
        """Clear the generation's text for the tokens about to stream in."""
        self._streamed = []
        self.query_one("#gen-result", Static).update(Text("generating… (Esc stops)", "dim"))

    def stream(self, model: ModelView, token_id: int) -> None:
        """Show one more streamed token."""
        self._streamed.append(token_id)
        shown = Text("generating… (Esc stops)\n", "dim")
        shown.append(model.decode(self._streamed), style="")
        self.query_one("#gen-result", Static).update(shown)

    def show_step(self, step: Step, state: WorkbenchState) -> None:
        summary = step.summary
        if step.kind == "generate":
            shown = Text(f"generated ({len(summary.get('token_ids', []))} tokens)", "bold")
            shown.append(f": {summary.get('text', '')!r}", style="")
            self.query_one("#gen-result", Static).update(shown)
            return
        shown = Text()
        shown.append("baseline", style="bold")
        shown.append(f": {summary.get('baseline', '')!r}\n")
        shown.append("steered", style="bold")
        shown.append(f":  {summary.get('steered', '')!r}")
        self.query_one("#steer-result", Static).update(shown)
