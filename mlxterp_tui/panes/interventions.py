"""The intervention list (add, edit, toggle, remove) and the change of the top predictions
against the baseline lens."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Select, Static

from mlxterp import interventions as iv
from mlxterp.errors import InterventionError

KINDS = {  # kind -> parameter hint
    "zero_out": "",
    "scale": "factor=0.5",
    "clamp": "min_val=-1, max_val=1",
    "noise": "std=0.1, seed=0",
}


def parse_params(text: str) -> dict[str, Any]:
    """``"factor=0.5, seed=1"`` → ``{"factor": 0.5, "seed": 1}`` (numbers only)."""
    params: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise InterventionError(f"parameter {part!r} is not name=value (e.g. factor=0.5)")
        try:
            number = float(value)
        except ValueError:
            raise InterventionError(
                f"parameter {key.strip()}={value.strip()!r} is not a number"
            ) from None
        params[key.strip()] = int(number) if number.is_integer() and "." not in value else number
    return params


def parse_positions(text: str) -> list[int] | None:
    """``"-1"`` or ``"0, 2"`` → positions; empty → every position."""
    if not text.strip():
        return None
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise InterventionError(f"positions {text!r} must be integers like -1 or 0,2") from None


def build_intervention(kind: str, params_text: str, positions_text: str) -> iv.Intervention:
    """The engine's intervention for a form's kind, parameters and positions."""
    if kind not in KINDS:
        raise InterventionError(f"unknown intervention kind {kind!r}; choose one of {list(KINDS)}")
    params, positions = parse_params(params_text), parse_positions(positions_text)
    if kind == "zero_out":
        if params:
            raise InterventionError("zero_out takes no parameters")
        fn = iv.zero_out
    else:
        try:
            fn = getattr(iv, kind)(**params)
        except TypeError:
            raise InterventionError(
                f"{kind} takes {KINDS[kind]!r}-style parameters; got {sorted(params)}"
            ) from None
    return fn.at(positions) if positions is not None else fn


@dataclass
class Entry:
    """One row of the list: where, what, and whether it is active."""

    module: str
    kind: str
    params: str
    positions: str
    fn: iv.Intervention
    on: bool = True


def entry_for(module: str, fn: iv.Intervention) -> Entry:
    """A list row for an intervention already active in the session (e.g. a reopened one)."""
    shown = ", ".join(
        f"{k}=array{tuple(v.shape)}" if hasattr(v, "shape") else f"{k}={v}"
        for k, v in fn.params.items()
        if v is not None and k != "steps"
    )
    positions = ",".join(map(str, fn.positions)) if fn.positions is not None else ""
    return Entry(module, fn.kind, shown, positions, fn)


class InterventionScreen(ModalScreen[Optional[Entry]]):
    """Form for a new or edited intervention; ``check`` returns an error text or ``None``."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="iv_form_cancel")]

    def __init__(
        self, check: Callable[[str], str | None], module: str = "", entry: Entry | None = None
    ) -> None:
        super().__init__()
        self._check = check
        self._entry = entry
        self._module = entry.module if entry else module

    def compose(self) -> ComposeResult:
        e = self._entry
        with Vertical(id="iv-box", classes="modal-box"):
            yield Static("Intervention (Enter saves, Esc cancels)", classes="modal-title")
            yield Input(self._module, placeholder="module, e.g. layers.1.mlp", id="iv-module")
            yield Select(
                [(k, k) for k in KINDS],
                value=e.kind if e else "scale",
                allow_blank=False,
                id="iv-kind",
            )
            yield Input(e.params if e else KINDS["scale"], placeholder="parameters", id="iv-params")
            yield Input(
                e.positions if e else "",
                placeholder="positions (empty: all; -1: last)",
                id="iv-positions",
            )
            yield Static("", id="iv-error")
            with Horizontal(classes="modal-buttons"):
                yield Button("Save", id="iv-save", variant="primary")
                yield Button("Cancel", id="iv-cancel")

    def on_select_changed(self, event: Select.Changed) -> None:
        if self._entry is None:
            self.query_one("#iv-params", Input).value = KINDS.get(str(event.value), "")

    def _submit(self) -> None:
        module = self.query_one("#iv-module", Input).value.strip()
        kind = str(self.query_one("#iv-kind", Select).value)
        params = self.query_one("#iv-params", Input).value
        positions = self.query_one("#iv-positions", Input).value
        error = self._check(module)
        if error is None:
            try:
                fn = build_intervention(kind, params, positions)
            except InterventionError as err:
                error = str(err)
        if error is not None:
            self.query_one("#iv-error", Static).update(f"[b red]{error}[/]")
            return
        self.dismiss(Entry(module, kind, params, positions, fn))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "iv-save":
            self._submit()
        else:
            self.dismiss(None)


def comparison(baseline: dict | None, current: dict | None) -> str:
    """Per layer at the last position: baseline top token vs the one with interventions."""
    if current is None:
        return "Run the lens (Enter in the prompt) to compare against the baseline."
    if baseline is None or baseline.get("tokens") != current.get("tokens"):
        return "No baseline for this prompt yet: run the lens with no active interventions."
    lines = ["layer  baseline (p)          with interventions (p)"]
    for layer, b_s, b_p, c_s, c_p in zip(
        current["layers"],
        baseline["top_strs"],
        baseline["top_probs"],
        current["top_strs"],
        current["top_probs"],
    ):
        mark = " " if b_s[-1] == c_s[-1] else "*"
        lines.append(
            f"L{layer:<4} {b_s[-1]!r:>10} {b_p[-1]:.3f}   {mark} {c_s[-1]!r:>10} {c_p[-1]:.3f}"
        )
    return "\n".join(lines)


class InterventionsPane(Vertical):
    """a: add, e: edit, space: toggle, d: remove; the app applies them to the session."""

    BINDINGS = [
        Binding("a", "app.add_intervention", "Add", id="iv_add"),
        Binding("e", "app.edit_intervention", "Edit", id="iv_edit"),
        Binding("space", "app.toggle_intervention", "Toggle", id="iv_toggle"),
        Binding("d,delete", "app.remove_intervention", "Remove", id="iv_remove"),
    ]

    def compose(self) -> ComposeResult:
        yield DataTable(id="iv-table", cursor_type="row")
        yield Static(comparison(None, None), id="iv-compare")

    def on_mount(self) -> None:
        self.query_one("#iv-table", DataTable).add_columns(
            "on", "module", "kind", "params", "positions"
        )

    def show(self, entries: list[Entry]) -> None:
        table = self.query_one("#iv-table", DataTable)
        row = table.cursor_row
        table.clear()
        for e in entries:
            table.add_row(
                "●" if e.on else "○", e.module, e.kind, e.params or "-", e.positions or "all"
            )
        if entries:
            table.move_cursor(row=min(max(row, 0), len(entries) - 1))

    def selected(self) -> int | None:
        table = self.query_one("#iv-table", DataTable)
        return table.cursor_row if table.row_count else None

    def show_comparison(self, baseline: dict | None, current: dict | None) -> None:
        self.query_one("#iv-compare", Static).update(comparison(baseline, current))
