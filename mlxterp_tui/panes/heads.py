"""Head-level circuits: head detectors, head patching, direct logit attribution and path
patching, each a session step, each result a table that scrolls."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import DataTable, Select, Static

from mlxterp.session import InputError, Step, display_token

from .. import checks
from ..state import ModelView, WorkbenchState
from ..widgets import BAR, Field, FieldMessage, KeyButton, signed_bar
from . import Pane

ANALYSES = (
    ("head_detectors", "head detectors"),
    ("head_patching", "head patching"),
    ("direct_logit_attribution", "direct logit attribution"),
    ("path_patching", "path patching"),
)


def ranked(rows: list[list[float]], layers: list[int], heads: list[int]) -> list[tuple]:
    """The cells of a layers x heads grid as ``(value, layer, head)``, largest first."""
    cells = [
        (value, layer, head)
        for layer, row in zip(layers, rows, strict=True)
        for head, value in zip(heads, row, strict=True)
    ]
    return sorted(cells, reverse=True)


class HeadsPane(Pane):
    """The analysis, its prompts and answers; its result as a table."""

    KINDS = tuple(kind for kind, _ in ANALYSES)
    HOME = "#heads-table"
    HELP = (
        "Heads: pick an analysis. Head detectors score every head on previous-token, "
        "duplicate-token, induction and first-token patterns (no prompt needed). Head "
        "patching patches each head's output from the clean prompt into the corrupted one "
        "(recovery %, a row per layer, a column per head). Direct logit attribution splits "
        "the clean prompt's logit for the first answer (minus the second's, if given) into "
        "embeddings, heads and MLPs. Path patching patches the senders (13.2, L13H0 or full "
        "names) along their direct paths to the logits only. Answers: ␣Mary,␣John (right, "
        "then wrong); with two, patching measures their logit difference. Run with the "
        "button, Enter in a field, or f7."
    )

    def compose(self) -> ComposeResult:
        with Horizontal(id="heads-options"):
            yield Select(
                [(label, kind) for kind, label in ANALYSES],
                value="head_detectors",
                allow_blank=False,
                id="heads-analysis",
            )
            yield Field(placeholder="senders (path patching): 13.2, 13.0", id="heads-senders")
        with Horizontal(id="heads-prompts"):
            yield Field(placeholder="clean prompt", id="heads-clean")
            yield Field(placeholder="corrupted prompt", id="heads-corrupted")
        with Horizontal(id="heads-run-row"):
            yield Field(placeholder="answers: ␣Mary,␣John", id="heads-answer")
            yield KeyButton("Run (f7)", id="heads-run", variant="primary", action="app.run_heads")
        yield FieldMessage(id="heads-message")
        yield Static("", id="heads-caption")
        table: DataTable[Any] = DataTable(id="heads-table", cursor_type="row")
        yield table

    # ------------------------------------------------------------------ the form
    def params(self, model: ModelView) -> tuple[str, dict[str, Any]]:
        """The chosen step kind and its parameters; ``InputError`` beside the fields."""
        return self.query_one("#heads-message", FieldMessage).checked(lambda: self._params(model))

    def _params(self, model: ModelView) -> tuple[str, dict[str, Any]]:
        kind = str(self.query_one("#heads-analysis", Select).value)
        if kind == "head_detectors":
            return kind, {}
        clean = self.query_one("#heads-clean", Field).value
        if not clean.strip():
            raise InputError(f"{dict(ANALYSES)[kind]} needs a clean prompt")
        answers = self._answers(model)
        if kind == "direct_logit_attribution":
            if not answers:
                raise InputError("direct logit attribution needs an answer: ␣Mary or ␣Mary,␣John")
            params: dict[str, Any] = {"text": clean, "target": answers[0]}
            if len(answers) == 2:
                params["baseline"] = answers[1]
            return kind, params
        corrupted = self.query_one("#heads-corrupted", Field).value
        if not corrupted.strip():
            raise InputError(f"{dict(ANALYSES)[kind]} needs a corrupted prompt")
        params = {"clean": clean, "corrupted": corrupted}
        if len(answers) == 2:
            params.update(metric="logit_diff", answer=answers)
        elif answers:
            raise InputError("answers: patching compares two tokens, right then wrong")
        if kind == "path_patching":
            params["senders"] = sender_names(self.query_one("#heads-senders", Field).value)
        return kind, params

    def _answers(self, model: ModelView) -> list[str]:
        parts = [p for p in self.query_one("#heads-answer", Field).value.split(",") if p.strip()]
        if len(parts) > 2:
            raise InputError("answers: one or two tokens, right then wrong: ␣Mary,␣John")
        return [checks.single_token(model, part, "answers") for part in parts]

    def restore(self, step: Step) -> None:
        p = step.params
        self.query_one("#heads-analysis", Select).value = step.kind
        self.query_one("#heads-clean", Field).value = str(p.get("clean", p.get("text", "")))
        self.query_one("#heads-corrupted", Field).value = str(p.get("corrupted", ""))
        answers = p.get("answer") or [a for a in (p.get("target"), p.get("baseline")) if a]
        self.query_one("#heads-answer", Field).value = ",".join(
            display_token(a) for a in answers if isinstance(a, str)
        )
        senders = p.get("senders") or []
        self.query_one("#heads-senders", Field).value = ", ".join(
            [senders] if isinstance(senders, str) else senders
        )

    # ------------------------------------------------------------------ results
    def show_step(self, step: Step, state: WorkbenchState) -> None:
        summary = step.summary
        table: DataTable[Any] = self.query_one("#heads-table", DataTable)
        table.clear(columns=True)
        caption = {
            "head_detectors": self._detectors,
            "head_patching": self._head_patching,
            "direct_logit_attribution": self._attribution,
            "path_patching": self._path_patching,
        }[step.kind](summary, table)
        if summary.get("note"):
            caption += f" — {summary['note']}"
        self.query_one("#heads-caption", Static).update(Text(caption))

    @staticmethod
    def _grid_columns(table: DataTable[Any], heads: list[int], first: dict[str, int]) -> None:
        """``first``: the leading columns and their widths; then a column per head."""
        for name, width in first.items():
            table.add_column(name, width=width)
        for head in heads:
            table.add_column(f"H{head}", width=7)

    def _detectors(self, summary: dict, table: DataTable[Any]) -> str:
        scores: dict[str, list[list[float]]] = summary["scores"]
        layers = summary["layers"]
        heads = list(range(max((len(row) for grid in scores.values() for row in grid), default=0)))
        named = max((len(d) for d in scores), default=9)
        self._grid_columns(table, heads, {"detection": named, "layer": 6})
        for detection, grid in scores.items():
            for layer, row in zip(layers, grid, strict=True):
                table.add_row(detection, f"L{layer}", *(f"{v:.3f}" for v in row))
        best = " · ".join(
            f"{d} L{la}H{h} {v:.3g}"
            for d, grid in scores.items()
            for v, la, h in ranked(grid, layers, heads)[:1]
        )
        return f"highest scores: {best} (seq_len {summary['seq_len']}, batch {summary['batch']})"

    def _head_patching(self, summary: dict, table: DataTable[Any]) -> str:
        self._grid_columns(table, summary["heads"], {"layer": 6})
        for layer, row in zip(summary["layers"], summary["recovery"], strict=True):
            table.add_row(f"L{layer}", *(f"{v:7.2f}" for v in row))
        cells = ranked(summary["recovery"], summary["layers"], summary["heads"])
        top = ", ".join(f"L{la}H{h} {v:.1f}%" for v, la, h in cells[:3])
        return (
            f"recovery % ({summary['metric']}; clean {summary['clean_value']:.4g}, corrupted "
            f"{summary['corrupted_value']:.4g}); most: {top}"
        )

    def _attribution(self, summary: dict, table: DataTable[Any]) -> str:
        table.add_column("component", width=12)
        table.add_column("logit", width=9)
        table.add_column("", width=2 * BAR + 1)
        parts = sorted(
            zip(summary["labels"], summary["values"], strict=True), key=lambda p: -abs(p[1])
        )
        peak = max((abs(v) for _, v in parts), default=0.0)
        for label, value in parts:
            table.add_row(label, f"{value:9.3f}", signed_bar(value, peak))
        return (
            f"{summary['target']}: {summary['total']:.4g} in all (the model's own "
            f"{summary['model_value']:.4g}), largest parts first"
        )

    def _path_patching(self, summary: dict, table: DataTable[Any]) -> str:
        table.add_column("run", width=14)
        table.add_column(summary["metric"], width=12)
        for name in ("clean", "corrupted"):
            table.add_row(name, f"{summary[name + '_value']:.4g}")
        table.add_row("path-patched", f"{summary['value']:.4g}")
        senders = ", ".join(summary["senders"])
        receivers = ", ".join(summary["receivers"])
        return f"{senders} → {receivers}: {summary['effect']:.1f}% of the change"


def sender_names(text: str) -> list[str]:
    """``"13.2, L13H0, layers.7.mlp"`` as module names: ``layer.head`` and ``LxHy`` name a
    head's output; anything else is taken as a module name (the engine checks it)."""
    names = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        short = part.upper().removeprefix("L").replace("H", ".", 1)
        layer, dot, head = short.partition(".")
        if dot and layer.isdigit() and head.isdigit():
            names.append(f"layers.{int(layer)}.attn.heads.{int(head)}")
        else:
            names.append(part)
    if not names:
        raise InputError("path patching needs senders: 13.2, L13H0 or layers.13.attn.heads.2")
    return names
