"""The intervention list (add, edit, toggle, remove) and the change of the top predictions
against the baseline lens.  The session owns the list; this pane only shows it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Select, Static

from mlxterp.session import (
    InputError,
    InterventionEntry,
    MlxterpError,
    Step,
    display_token,
    intervention_from_description,
)

from .. import checks
from ..state import WorkbenchState
from ..widgets import Field, FieldMessage, KeyButton
from . import Pane

# kinds read from the model: their parameters text -> the prompts to read
READ_KINDS: dict[str, Callable[[str], tuple[Any, ...]]] = {
    "add_vector": checks.contrast,  # the difference of two prompts
    "replace_with": checks.other_prompt,  # another prompt's activation
}
FORM_KINDS = (*checks.INTERVENTION_HINTS, *READ_KINDS)
HINTS = {
    **checks.INTERVENTION_HINTS,
    "add_vector": checks.CONTRAST_HINT,
    "replace_with": checks.OTHER_PROMPT_HINT,
}


def shown_value(value: Any) -> str:
    return (
        f"array{tuple(value.shape)}"
        if hasattr(value, "shape")
        else f"{value:g}"
        if isinstance(value, float)
        else str(value)
    )


def description_text(desc: dict[str, Any]) -> tuple[str, str, str]:
    """``(kind, parameters, positions)`` of a description as the list and the form show them."""
    params = desc.get("params", {})
    if desc.get("kind") == "compose":
        shown = " then ".join(
            f"{s['kind']}({description_text(s)[1]})" for s in params.get("steps", [])
        )
    else:
        shown = ", ".join(f"{k}={shown_value(v)}" for k, v in params.items() if v is not None)
    source = desc.get("source")
    if isinstance(source, dict) and {"positive", "negative"} <= set(source):
        shown = f"{source['positive']} | {source['negative']} | {source.get('factor', 1):g}"
    elif isinstance(source, dict) and isinstance(source.get("prompt"), str):
        shown = source["prompt"]
    where = desc.get("positions")
    positions = ",".join(map(str, where)) if isinstance(where, list) else str(where or "")
    return str(desc.get("kind")), shown, positions


@dataclass
class InterventionForm:
    """What the form returns: the module's canonical name and the intervention's
    description; for a kind read from the model, the description's kind and positions and
    ``prompts``: ``(positive, negative, factor)`` of an ``add_vector`` from the difference
    of two prompts, or ``(prompt,)`` of a ``replace_with`` another prompt's activation."""

    module: str
    description: dict[str, Any]
    prompts: tuple[Any, ...] | None = None


class InterventionScreen(ModalScreen[InterventionForm | None]):
    """Form for a new or edited intervention; ``resolve`` gives a module's canonical name
    (or raises); what is wrong shows beside the fields and the form stays open."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss(None)", "Cancel", id="iv_form_cancel")
    ]

    def __init__(
        self,
        resolve: Callable[[str], str],
        module: str = "",
        entry: InterventionEntry | None = None,
    ) -> None:
        super().__init__()
        self._resolve = resolve
        self._entry = entry
        self._module = entry.module if entry else module

    def compose(self) -> ComposeResult:
        kind, params, positions = (
            description_text(self._entry.description) if self._entry else ("scale", "", "")
        )
        with Vertical(id="iv-box", classes="modal-box"):
            yield Static("Intervention (Enter saves, Esc cancels)", classes="modal-title")
            yield Field(self._module, placeholder="module, e.g. layers.1.mlp", id="iv-module")
            yield Select(
                [(k, k) for k in FORM_KINDS],
                value=kind if kind in FORM_KINDS else "scale",
                allow_blank=False,
                id="iv-kind",
            )
            yield Field(
                params if self._entry else HINTS["scale"],
                placeholder="parameters",
                id="iv-params",
            )
            yield Field(
                positions, placeholder="positions (empty: all; -1: last)", id="iv-positions"
            )
            yield FieldMessage(id="iv-error")
            with Horizontal(classes="modal-buttons"):
                yield KeyButton("Save", id="iv-save", variant="primary")
                yield KeyButton("Cancel", id="iv-cancel")

    def on_select_changed(self, event: Select.Changed) -> None:
        if self._entry is None:
            self.query_one("#iv-params", Field).value = HINTS.get(str(event.value), "")

    def _submit(self) -> None:
        message = self.query_one("#iv-error", FieldMessage)
        try:
            module = self.query_one("#iv-module", Field).value.strip()
            if not module:
                raise InputError("name a module, e.g. layers.0.mlp")
            canonical = self._resolve(module)
            kind = str(self.query_one("#iv-kind", Select).value)
            params = self.query_one("#iv-params", Field).value
            where = self.query_one("#iv-positions", Field).value
            if kind in READ_KINDS:
                prompts = READ_KINDS[kind](params)
                found = checks.positions(where)
                desc: dict[str, Any] = {"kind": kind}
                if found is not None:
                    desc["positions"] = found
                self.dismiss(InterventionForm(canonical, desc, prompts))
                return
            desc = checks.intervention_description(kind, params, where)
            intervention_from_description(desc)  # the engine's own checks
        except MlxterpError as err:
            message.say(str(err))
            return
        self.dismiss(InterventionForm(canonical, desc))

    def on_input_submitted(self, event: Field.Submitted) -> None:
        event.stop()
        self._submit()

    def on_button_pressed(self, event: KeyButton.Pressed) -> None:
        event.stop()
        if event.button.id == "iv-save":
            self._submit()
        else:
            self.dismiss(None)


Comparison = tuple[str, str, str, str, str, str]
"""One layer of the comparison: layer, baseline token and p, change mark, token and p."""


def comparison(baseline: dict | None, current: dict | None) -> str | list[Comparison]:
    """Per layer at the last position: baseline top token vs the one with interventions,
    as table rows; or why there is nothing to compare yet."""
    if current is None:
        return "Run the lens (Enter in the prompt) to compare against the baseline."
    if baseline is None or baseline.get("tokens") != current.get("tokens"):
        return "No baseline for this prompt yet: run the lens with no active interventions."
    rows: list[Comparison] = []
    for layer, b_s, b_p, c_s, c_p in zip(
        current["layers"],
        baseline["top_strs"],
        baseline["top_probs"],
        current["top_strs"],
        current["top_probs"],
        strict=False,  # a lens over some layers compares those
    ):
        mark = "" if b_s[-1] == c_s[-1] else "*"
        rows.append(
            (
                f"L{layer}",
                display_token(b_s[-1], 10),
                f"{b_p[-1]:.3f}",
                mark,
                display_token(c_s[-1], 10),
                f"{c_p[-1]:.3f}",
            )
        )
    return rows


class InterventionsPane(Pane):
    """a: add, e: edit, space: toggle, d: remove; the app applies them to the session."""

    KINDS = ("interventions", "logit_lens")
    HOME = "#iv-table"
    HELP = (
        "Interventions change a module's output in every later lens, trace and generation: "
        "zero_out, scale (factor), clamp (min_val, max_val) or noise (std, seed), on all "
        "positions or some (-1 is the last token). a adds, e edits, space switches one off "
        "and on, d removes. A second intervention on the same module asks: replace it, or "
        "compose the two. Below the list, a table to Tab into and scroll: per layer, the top "
        "token at the last position without interventions (baseline) and with them, * "
        "marking a change."
    )
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "app.add_intervention", "Add", id="iv_add"),
        Binding("e", "app.edit_intervention", "Edit", id="iv_edit"),
        Binding("space", "app.toggle_intervention", "Toggle", id="iv_toggle"),
        Binding("d,delete", "app.remove_intervention", "Remove", id="iv_remove"),
    ]

    def compose(self) -> ComposeResult:
        table: DataTable[str | Text] = DataTable(id="iv-table", cursor_type="row")
        yield table
        yield Static(id="iv-compare-note", markup=False)
        compare: DataTable[str | Text] = DataTable(id="iv-compare", cursor_type="row")
        yield compare

    def on_mount(self) -> None:
        self.query_one("#iv-table", DataTable).add_columns(
            "on", "module", "kind", "params", "positions"
        )
        self.query_one("#iv-compare", DataTable).add_columns(
            "layer", "baseline", "p", "", "with interventions", "p"
        )
        self.show_comparison(None, None)

    def show_step(self, step: Step, state: WorkbenchState) -> None:
        if step.kind == "interventions":
            self.show(state.session.intervention_entries())
        else:
            key = tuple(step.summary.get("tokens") or ())
            self.show_comparison(state.baselines.get(key), step.summary)

    def show(self, entries: list[InterventionEntry]) -> None:
        table: DataTable[str | Text] = self.query_one("#iv-table", DataTable)
        row = table.cursor_row
        table.clear()
        for e in entries:
            kind, params, positions = description_text(e.description)
            table.add_row(
                "●" if e.enabled else "○",
                Text(e.module),
                kind,
                Text(params or "-"),
                positions or "all",
            )
        if entries:
            table.move_cursor(row=min(max(row, 0), len(entries) - 1))

    def selected(self) -> int | None:
        table = self.query_one("#iv-table", DataTable)
        return table.cursor_row if table.row_count else None

    def show_comparison(self, baseline: dict | None, current: dict | None) -> None:
        """The comparison table (every layer; it scrolls), or the note saying why not."""
        rows = comparison(baseline, current)
        note = self.query_one("#iv-compare-note", Static)
        table: DataTable[str | Text] = self.query_one("#iv-compare", DataTable)
        table.clear()
        if isinstance(rows, str):
            note.update(rows)
            note.display, table.display = True, False
            return
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))
        note.display, table.display = False, True
