"""The logit-lens table (layers x positions, top token per cell coloured by probability) and
the top-k modal of a cell."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from mlxterp.session import InputError, Step, display_token

from .. import checks
from ..state import ModelView, Prompt, WorkbenchState
from ..widgets import Field, FieldMessage, heat_text
from . import Pane

CELL_WIDTH = 8
MOST_TOP_K = 1024


def prob_cell(token: str, prob: float) -> Text:
    """The token on a background coloured by ``prob`` (viridis), readable foreground."""
    return heat_text(display_token(token, CELL_WIDTH), prob)


class TopKScreen(ModalScreen[None]):
    """The top-k tokens of one lens cell."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,enter,q", "dismiss", "Close", id="topk_close")
    ]

    def __init__(self, title: str, rows: list[tuple[str, int, float]]) -> None:
        super().__init__()
        self._title = title
        self._rows = rows

    def compose(self) -> ComposeResult:
        with Vertical(id="topk-box", classes="modal-box"):
            yield Static(Text(self._title), classes="modal-title")
            table: DataTable[str | Text] = DataTable(id="topk-table", cursor_type="row")
            table.add_columns("#", "token", "id", "prob")
            for n, (token, token_id, prob) in enumerate(self._rows, 1):
                table.add_row(str(n), prob_cell(token, prob), str(token_id), f"{prob:.3f}")
            yield table
            yield Static("Esc closes", classes="modal-hint")


class LensPane(Pane):
    """Target token entry and the lens table; Enter on a cell opens its top-k."""

    KINDS = ("logit_lens", "tuned_lens")
    HOME = "#lens-table"
    HELP = (
        "What every layer predicts at every position of the prompt. Rows are layers, "
        "columns the prompt's tokens; each cell is the layer's top token, coloured by its "
        "probability (dark low, yellow high). Tokens show a space as ␣, a newline as ↵, a "
        "tab as ⇥. Enter on a cell lists its top-k. A target token (written the same way, "
        "e.g. ␣Paris) charts its probability per layer in the Chart pane. A tuned lens file "
        "(a .toml saved by mlxterp.tuned_lens) reads every layer through its trained "
        "translators instead of the final norm alone. Enter in the prompt or ctrl+r runs it."
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.result: Any = None
        self.summary: dict | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="lens-options"):
            yield Field(placeholder="target token (optional, e.g. ␣Paris)", id="lens-target")
            yield Field(value="5", placeholder="top-k", id="lens-topk", restrict=r"[0-9]*")
            yield Field(placeholder="tuned lens file (optional)", id="lens-tuned")
        yield FieldMessage(id="lens-message")
        yield Static(
            "Type a prompt and press Enter (or ctrl+r) to run the lens.", id="lens-caption"
        )
        table: DataTable[str | Text] = DataTable(
            id="lens-table", cursor_type="cell", zebra_stripes=False
        )
        yield table

    def params(self, model: ModelView, text: Prompt) -> tuple[str, dict[str, Any]]:
        """The step the form asks for on ``text`` (or a chat), ``logit_lens`` or, with a
        tuned lens file, ``tuned_lens``, and its parameters; ``InputError`` beside the
        fields."""

        def read() -> tuple[str, dict[str, Any]]:
            params = self._common(model, text)
            tuned = self.query_one("#lens-tuned", Field).value.strip()
            if not tuned:
                return "logit_lens", params
            path = Path(tuned).expanduser()
            if not path.is_file():
                raise InputError(f"tuned lens: there is no file {tuned!r}")
            return "tuned_lens", {**params, "lens": str(path)}

        return self.query_one("#lens-message", FieldMessage).checked(read)

    def logit_params(self, model: ModelView, text: Prompt) -> dict[str, Any]:
        """The ``logit_lens`` step's parameters for ``text`` (whatever the tuned lens field
        holds: what an intervention is compared on); ``InputError`` beside the fields."""
        return self.query_one("#lens-message", FieldMessage).checked(
            lambda: self._common(model, text)
        )

    def _common(self, model: ModelView, text: Prompt) -> dict[str, Any]:
        topk = self.query_one("#lens-topk", Field).value or "5"
        params: dict[str, Any] = {
            "text": text,
            "top_k": checks.whole(topk, "top-k", low=1, high=MOST_TOP_K),
        }
        target = self.query_one("#lens-target", Field).value
        if target.strip():
            params["target"] = checks.single_token(model, target, "target")
        return params

    def restore(self, step: Step) -> None:
        target = step.params.get("target")
        self.query_one("#lens-target", Field).value = (
            display_token(target) if isinstance(target, str) else ""
        )
        self.query_one("#lens-topk", Field).value = str(step.params.get("top_k", 5))
        self.query_one("#lens-tuned", Field).value = str(step.params.get("lens", ""))

    def show_step(self, step: Step, state: WorkbenchState) -> None:
        self.show(step.summary, step.result)

    def show(self, summary: dict, result: Any = None) -> None:
        """Draw a lens summary (``LensResult.to_summary()`` form); ``result`` adds top-k."""
        self.summary, self.result = summary, result
        table: DataTable[str | Text] = self.query_one("#lens-table", DataTable)
        table.clear(columns=True)
        tokens = summary.get("tokens") or [str(p) for p in range(len(summary["top_strs"][0]))]
        table.add_column("layer", key="layer", width=5)
        for pos, token in enumerate(tokens):
            table.add_column(
                Text(display_token(token, CELL_WIDTH)), key=f"p{pos}", width=CELL_WIDTH
            )
        for layer, strs, probs in zip(
            summary["layers"], summary["top_strs"], summary["top_probs"], strict=True
        ):
            table.add_row(
                f"L{layer}",
                *[prob_cell(s, p) for s, p in zip(strs, probs, strict=True)],
                key=f"L{layer}",
            )
        caption = (
            f"{len(summary['layers'])} layers x {len(tokens)} positions; Enter on a cell: top-k"
        )
        if "lens_digest" in summary:
            caption = f"tuned lens ({summary['lens_digest'][:8]}): {caption}"
        if summary.get("target_probs"):
            caption += f"; target p at last layer {summary['target_probs'][-1]:.3f}"
        self.query_one("#lens-caption", Static).update(Text(caption))

    def cell_topk(self, row: int, column: int) -> tuple[str, list] | None:
        """Title and ``[(token, id, prob)]`` for the table cell at ``(row, column)``."""
        if self.summary is None or column < 1:
            return None
        pos, layer = column - 1, self.summary["layers"][row]
        token = (self.summary.get("tokens") or [str(pos)] * (pos + 1))[pos]
        title = f"Layer {layer}, position {pos} ({display_token(token, 20)})"
        if self.result is not None and hasattr(self.result, "top_ids"):
            cell = zip(
                self.result.top_strs[row][pos],
                self.result.top_ids[row][pos],
                self.result.top_probs[row][pos],
                strict=True,
            )
            return title, list(cell)
        summary = self.summary
        return title, [
            (
                summary["top_strs"][row][pos],
                summary["top_ids"][row][pos],
                summary["top_probs"][row][pos],
            )
        ]

    def on_data_table_cell_selected(self, event: DataTable.CellSelected) -> None:
        if event.data_table.id != "lens-table":
            return
        found = self.cell_topk(event.coordinate.row, event.coordinate.column)
        if found is not None:
            self.app.push_screen(TopKScreen(*found))
