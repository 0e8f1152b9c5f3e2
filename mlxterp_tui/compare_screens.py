"""Side by side: two recorded steps (History, ``c``), and a session against its replay
(``F5``: a row per step, Enter on one shows it recorded and replayed).  Every value shows
in two columns, the rows that differ (as replay compares them) marked and coloured; ``d``
keeps only those."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from mlxterp.session import Comparison, ReplayReport, Step, compare_steps, display_token

MISSING = object()  # a key one side lacks
WIDTH = 60  # characters of a value shown in a cell


def paired_rows(left: Any, right: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """``(where, left value, right value)`` of two results walked together, named as replay
    names differences (``summary.tokens[4]``); a list of plain values is one row."""
    if isinstance(left, dict) and isinstance(right, dict):
        rows = []
        for key in sorted(set(left) | set(right)):
            where = f"{path}.{key}".lstrip(".")
            rows += paired_rows(left.get(key, MISSING), right.get(key, MISSING), where)
        return rows
    if (
        isinstance(left, (list, tuple))
        and isinstance(right, (list, tuple))
        and len(left) == len(right)
        and any(isinstance(v, (dict, list, tuple)) for v in (*left, *right))
    ):
        rows = []
        for i, (a, b) in enumerate(zip(left, right, strict=True)):
            rows += paired_rows(a, b, f"{path}[{i}]")
        return rows
    return [(path or "(top)", left, right)]


def differing(comparison: Comparison) -> set[str]:
    """Every path a difference lies at or under (``a.b[2]`` gives ``a``, ``a.b``,
    ``a.b[2]``)."""
    found = set()
    for difference in comparison.differences:
        where = difference.path or "(top)"
        found.add(where)
        found.update(where[:i] for i, c in enumerate(where) if c in ".[" and i)
    return found


def shown_value(value: Any) -> str:
    """A value in a cell: numbers to 6 digits, lists and arrays shortened, the strings in a
    list (tokens, mostly) as tokens are shown (``␣Paris``)."""
    if value is MISSING:
        return "—"
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (list, tuple)):
        shown = (display_token(v) if isinstance(v, str) else shown_value(v) for v in value[:12])
        text = "[" + ", ".join(shown) + ("" if len(value) <= 12 else ", …") + "]"
    elif hasattr(value, "shape") and hasattr(value, "dtype"):
        text = f"array {tuple(value.shape)} {value.dtype}"
    else:
        text = str(value)
    return text if len(text) <= WIDTH else text[: WIDTH - 1] + "…"


class SideBySideScreen(ModalScreen[None]):
    """Two results side by side, every value a row, the ones that differ marked ``≠`` in
    colour; ``d`` shows only those, or everything again."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "dismiss", "Close", id="side_close"),
        Binding("d", "only_differences", "Only differences", id="side_differences"),
    ]

    def __init__(
        self,
        title: str,
        labels: tuple[str, str],
        left: Any,
        right: Any,
        comparison: Comparison,
    ) -> None:
        super().__init__()
        self._title, self._labels, self._comparison = title, labels, comparison
        self._rows = paired_rows(left, right)
        self._differ = differing(comparison)
        self._only = False

    def compose(self) -> ComposeResult:
        n = len(self._comparison.differences)
        gap = self._comparison.max_diff
        said = f"; largest numeric gap {gap:.4g}" if gap else ""
        verdict = f"{n} difference{'s' * (n != 1)}{said}" if n else f"no difference{said}"
        with Vertical(id="compare-box", classes="modal-box"):
            yield Static(Text(self._title), classes="modal-title")
            yield Static(Text(verdict), id="compare-caption")
            yield DataTable(id="compare-table", cursor_type="row")
            yield Static("d: only differences / everything · Esc closes", classes="modal-hint")

    def on_mount(self) -> None:
        self._fill()

    def _fill(self) -> None:
        table: DataTable[Text] = self.query_one("#compare-table", DataTable)
        table.clear(columns=True)
        table.add_column("", width=1)
        table.add_column("where", width=20)
        table.add_column(self._labels[0], width=22)
        table.add_column(self._labels[1], width=22)
        for where, left, right in self._rows:
            differs = where in self._differ
            if self._only and not differs:
                continue
            table.add_row(
                Text("≠" if differs else "", style="bold yellow"),
                Text(where, style="bold" if differs else ""),
                Text(shown_value(left), style="red" if differs else ""),
                Text(shown_value(right), style="green" if differs else ""),
            )

    def action_only_differences(self) -> None:
        self._only = not self._only
        self._fill()


def steps_side_by_side(first: Step, second: Step) -> SideBySideScreen:
    """Two recorded steps: their kinds, parameters and results."""

    def whole(step: Step) -> dict[str, Any]:
        return {"kind": step.kind, "params": step.params, "summary": step.summary}

    return SideBySideScreen(
        f"Step {first.index} ({first.kind}) against step {second.index} ({second.kind})",
        (f"step {first.index}", f"step {second.index}"),
        whole(first),
        whole(second),
        compare_steps(first, second),
    )


class ReplayScreen(ModalScreen[None]):
    """A replay's report: a row per step (matched or not, and why); Enter on one shows its
    recorded and replayed results side by side."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "dismiss", "Close", id="report_close")
    ]

    def __init__(self, report: ReplayReport, steps: list[Step]) -> None:
        super().__init__()
        self._report = report
        self._recorded = {step.index: step for step in steps}

    def compose(self) -> ComposeResult:
        report = self._report
        matched = sum(s.ok for s in report.steps)
        title = "Replay: OK" if report.ok else "Replay: MISMATCH"
        lines = [f"{matched} of {len(report.steps)} steps match", *report.warnings]
        with Vertical(id="report-box", classes="modal-box"):
            yield Static(Text(title), classes="modal-title")
            yield Static(Text("\n".join(lines)), id="report-caption")
            table: DataTable[Text] = DataTable(id="report-table", cursor_type="row")
            table.add_column("", width=4)
            table.add_column("step", width=4)
            table.add_column("kind", width=20)
            table.add_column("", width=60)
            for s in report.steps:
                table.add_row(
                    Text("ok", style="green") if s.ok else Text("FAIL", style="bold red"),
                    Text(str(s.index)),
                    Text(s.kind),
                    Text(s.message),
                )
            yield table
            yield Static(
                "Enter: recorded and replayed side by side · Esc closes", classes="modal-hint"
            )

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        found = self._report.steps[event.cursor_row]
        recorded = self._recorded.get(found.index)
        if recorded is None or found.replayed is None:
            self.notify(found.message, severity="warning", markup=False)
            return
        self.app.push_screen(
            SideBySideScreen(
                f"Step {found.index} ({found.kind}): recorded against replayed",
                ("recorded", "replayed"),
                recorded.summary,
                found.replayed,
                Comparison(found.differences, found.max_diff),
            )
        )
