"""Patching: activation patching (each layer, or layer x position), its gradient estimate
(attribution patching) and causal tracing; the setup form and the results as tables."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on
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
METHODS = (
    ("activation_patching", "patch each layer"),
    ("attribution_patching", "gradient estimate"),
    ("causal_tracing", "causal tracing"),
)
# the fields each method reads (the others are disabled while it is chosen)
USES = {
    "activation_patching": {"#patch-metric", "#patch-by-position", "#patch-positions"},
    "attribution_patching": {"#patch-metric"},
    "causal_tracing": {"#patch-positions"},
}
SECOND_PROMPT = {
    "activation_patching": "corrupted prompt",
    "attribution_patching": "corrupted prompt",
    "causal_tracing": "subject: a part of the clean prompt",
}
ANSWERS = {
    "activation_patching": "answers: ␣Paris,␣London",
    "attribution_patching": "answers: ␣Paris,␣London",
    "causal_tracing": "answer (default: the top one): ␣Paris",
}


class PatchingPane(Pane):
    """The patching inputs; results as tables (the chart pane draws them too)."""

    KINDS = tuple(kind for kind, _ in METHODS)
    HOME = "#patch-table"
    HELP = (
        "Patching, three methods. Patch each layer: run the corrupted prompt with one layer's "
        "component (mlp, attn or the layer output) taken from the clean run, for every layer, "
        "and measure how much of the clean behaviour comes back (recovery %); 'by position' "
        "patches each position separately; positions (-1: the last; 0, 2: a list) patches "
        "only there. Gradient estimate (attribution patching): the same recovery estimated "
        "for every layer x position from one forward and backward pass. Causal tracing: "
        "noise the subject's embeddings (the second field: a part of the clean prompt) and "
        "restore each layer x position; cells are % of the answer's probability given back. "
        "logit_diff needs two answers, one token each (␣Paris,␣London). Run with the button, "
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
            yield Select(
                [(label, kind) for kind, label in METHODS],
                value="activation_patching",
                allow_blank=False,
                id="patch-method",
            )
            yield Field(placeholder=ANSWERS["activation_patching"], id="patch-answer")
            yield KeyButton(
                "Run (ctrl+k)", id="patch-run", variant="primary", action="app.run_patching"
            )
        yield FieldMessage(id="patch-message")
        yield Static("", id="patch-caption")
        table: DataTable[str] = DataTable(id="patch-table", cursor_type="row")
        yield table

    @property
    def method(self) -> str:
        """The chosen step kind."""
        return str(self.query_one("#patch-method", Select).value)

    @on(Select.Changed, "#patch-method")
    def _method_changed(self) -> None:
        method = self.method
        for selector in set().union(*USES.values()):
            self.query_one(selector).disabled = selector not in USES[method]
        self.query_one("#patch-corrupted", Field).placeholder = SECOND_PROMPT[method]
        self.query_one("#patch-answer", Field).placeholder = ANSWERS[method]

    def params(self, model: ModelView) -> tuple[str, dict[str, Any]]:
        """The chosen step kind and its parameters; ``InputError`` beside the fields."""
        return self.query_one("#patch-message", FieldMessage).checked(lambda: self._params(model))

    def _params(self, model: ModelView) -> tuple[str, dict[str, Any]]:
        method = self.method
        clean = self.query_one("#patch-clean", Field).value
        second = self.query_one("#patch-corrupted", Field).value
        component = str(self.query_one("#patch-component", Select).value)
        answer = self.query_one("#patch-answer", Field).value
        where = checks.positions(self.query_one("#patch-positions", Field).value)
        if method == "causal_tracing":
            if not clean.strip() or not second.strip():
                raise InputError("causal tracing needs a prompt and its subject (a part of it)")
            if second not in clean:
                raise InputError(f"the subject {second!r} is not a part of the clean prompt")
            params: dict[str, Any] = {"prompt": clean, "subject": second}
            if component != "output":
                params["component"] = component
            if answer.strip():
                params["target"] = checks.single_token(model, answer, "answer")
            if where is not None:
                params["positions"] = where
            return method, params
        if not clean.strip() or not second.strip():
            raise InputError("patching needs a clean and a corrupted prompt")
        params = {
            "clean": clean,
            "corrupted": second,
            "component": component,
            "metric": str(self.query_one("#patch-metric", Select).value),
        }
        if answer.strip():
            params["answer"] = list(checks.answer_pair(model, answer))
        elif params["metric"] == "logit_diff":
            raise InputError("logit_diff needs two answers, right then wrong: ␣Paris,␣London")
        if method == "activation_patching":
            if self.query_one("#patch-by-position", Checkbox).value:
                params["by_position"] = True
            if where is not None:
                params["positions"] = where
        return method, params

    def restore(self, step: Step) -> None:
        p = step.params
        self.query_one("#patch-method", Select).value = step.kind
        self.query_one("#patch-clean", Field).value = str(p.get("clean", p.get("prompt", "")))
        second = p.get("corrupted", p.get("subject", ""))
        self.query_one("#patch-corrupted", Field).value = second if isinstance(second, str) else ""
        component = p.get("component") or "output"
        if component in COMPONENTS:
            self.query_one("#patch-component", Select).value = component
        if p.get("metric") in METRICS:
            self.query_one("#patch-metric", Select).value = p["metric"]
        answer = p.get("answer") or ([p["target"]] if isinstance(p.get("target"), str) else [])
        self.query_one("#patch-answer", Field).value = ",".join(map(display_token, answer))
        self.query_one("#patch-by-position", Checkbox).value = bool(p.get("by_position"))
        where = p.get("positions")
        listed = [] if where is None else where if isinstance(where, list) else [where]
        self.query_one("#patch-positions", Field).value = ", ".join(map(str, listed))

    def show_step(self, step: Step, state: WorkbenchState) -> None:
        if step.kind == "attribution_patching":
            self.show_estimate(step.summary)
        elif step.kind == "causal_tracing":
            self.show_tracing(step.summary)
        else:
            self.show(step.summary)

    def _grid(
        self, caption: str, summary: dict, rows: list[list[float]], labels: list, total: bool
    ) -> None:
        """A layer x position table: a row per layer (with ``total``, its sum first: what
        the whole layer does), a column per position headed by its index and token."""
        self.query_one("#patch-caption", Static).update(Text(caption))
        table: DataTable[Any] = self.query_one("#patch-table", DataTable)
        table.clear(columns=True)
        table.add_column("layer", width=6)
        if total:
            table.add_column("all", width=8)
        for position, token in zip(summary["positions"], labels, strict=True):
            table.add_column(f"{position} {token}"[:9], width=9)
        for layer, cells in zip(summary["layers"], rows, strict=True):
            first = [f"{sum(cells):8.2f}"] if total else []
            table.add_row(f"L{layer}", *first, *(f"{v:8.2f}" for v in cells))

    def show_estimate(self, summary: dict) -> None:
        """Draw an ``AttributionResult.to_summary()``: estimated recovery % per layer x
        position, and per layer in all."""
        gap = summary["clean_value"] - summary["corrupted_value"]
        rows = [[v / gap * 100.0 if gap else 0.0 for v in row] for row in summary["scores"]]
        best = max(
            ((v, layer, p) for layer, row in zip(summary["layers"], rows, strict=True)
             for p, v in zip(summary["positions"], row, strict=True)),
            default=None,
        )  # fmt: skip
        top = f"; most: L{best[1]} at {best[2]} ({best[0]:.1f}%)" if best else ""
        self._grid(
            f"{summary['component']} / {summary['metric']}: estimated recovery % (gradient "
            f"estimate; clean {summary['clean_value']:.4g}, corrupted "
            f"{summary['corrupted_value']:.4g}){top}",
            summary,
            rows,
            [display_token(t) for t in summary["tokens"]],
            total=True,
        )

    def show_tracing(self, summary: dict) -> None:
        """Draw a ``CausalTrace.to_summary()``: % of the answer's lost probability that
        restoring each layer x position gives back (the subject's tokens marked *, before the
        token so that a cut header keeps it)."""
        lost = summary["total_effect"]
        low = summary["p_corrupted"]
        rows = [[(p - low) / lost * 100.0 if lost else 0.0 for p in r] for r in summary["restored"]]
        start, end = summary["subject"]
        labels = [
            f"*{display_token(t)}" if start <= p < end else display_token(t)
            for p, t in zip(summary["positions"], summary["tokens"], strict=True)
        ]
        self._grid(
            f"causal tracing of {display_token(summary['answer'])} ({summary['component']}, "
            f"window {summary['window']}): p clean {summary['p_clean']:.3g}, subject noised "
            f"{low:.3g}; cells: % of that drop restored",
            summary,
            rows,
            labels,
            total=False,
        )

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
