"""Sparse autoencoders: train one on a layer (progress as it goes, Esc stops), then browse
its features: the strongest ones at each position of the prompt, one feature's dashboard
(top contexts, histogram, the logits it moves, its activation on the prompt) and editing a
feature (ablate, scale, clamp, steer) to see what the model says then."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import DataTable, ProgressBar, Select, Static

from mlxterp.session import (
    InputError,
    Step,
    TrainingProgress,
    demo_texts,
    display_token,
    read_texts,
)

from .. import checks
from ..state import ModelView, Prompt, WorkbenchState
from ..widgets import Field, FieldMessage, KeyButton, heat_text
from . import Pane

SAE_KINDS = ("topk", "batchtopk", "relu")
VIEWS = (
    ("sae_features", "prompt features"),
    ("feature_dashboard", "feature dashboard"),
    ("feature_edit", "edit feature"),
)
MODES = ("steer", "clamp", "scale", "ablate")
RANKS = 5  # features shown per position
SPARK = " ▁▂▃▄▅▆▇█"
MOST_EXPANSION = 64
MOST_EPOCHS = 100


class SaePane(Pane):
    """The training form, the browsing form, and the result as a caption and a table."""

    KINDS = ("train_sae", *(kind for kind, _ in VIEWS))
    HOME = "#sae-table"
    HELP = (
        "SAE: train a sparse autoencoder on a layer's output (f8, the button, or Enter in a "
        "training field): kind, expansion (features per model dimension), k (active features "
        "per token; relu ignores it), epochs, and the texts: a .txt file (a text per line) or "
        ".jsonl, blank for the texts that ship with the demo model. Progress shows tokens/s; "
        "Esc (outside a field) stops training and records nothing. Then browse the session's "
        "last SAE (f10): prompt features lists the strongest features at each position of the "
        "prompt (Enter on a cell picks that feature); feature dashboard shows a feature's top "
        "contexts over the texts it was trained on (or the texts file), its histogram, the "
        "tokens it raises and lowers, and its activation on the prompt; edit feature runs the "
        "prompt with the feature steered, clamped, scaled or ablated (value) and shows the "
        "next tokens and continuation both ways."
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._trained: Step | None = None  # the session's last train_sae step

    def compose(self) -> ComposeResult:
        with Horizontal(id="sae-train-row"):
            yield Field(placeholder="layer", id="sae-layer")
            yield Select(
                [(k, k) for k in SAE_KINDS], value="topk", allow_blank=False, id="sae-kind"
            )
            yield Field("8", placeholder="expansion", id="sae-expansion")
            yield Field("16", placeholder="k", id="sae-k")
            yield Field("1", placeholder="epochs", id="sae-epochs")
            yield Field(placeholder="texts: .txt/.jsonl (blank: demo texts)", id="sae-texts")
            yield KeyButton("Train (f8)", id="sae-train", variant="primary", action="app.train_sae")
        with Horizontal(id="sae-browse-row"):
            yield Select(
                [(label, kind) for kind, label in VIEWS],
                value="sae_features",
                allow_blank=False,
                id="sae-view",
            )
            yield Field(placeholder="feature", id="sae-feature")
            yield Select([(m, m) for m in MODES], value="steer", allow_blank=False, id="sae-mode")
            yield Field("8.0", placeholder="value", id="sae-value")
            yield KeyButton("Run (f10)", id="sae-run", variant="primary", action="app.browse_sae")
        yield FieldMessage(id="sae-message")
        with Horizontal(id="sae-progress-row"):
            yield ProgressBar(total=1.0, show_eta=False, id="sae-progress")
            yield Static("", id="sae-progress-text")
        yield Static("", id="sae-caption")
        table: DataTable[Any] = DataTable(id="sae-table", cursor_type="cell")
        yield table

    def on_mount(self) -> None:
        self.query_one("#sae-progress-row").display = False

    # ------------------------------------------------------------------ the forms
    def train_params(self, model: ModelView) -> dict[str, Any]:
        """The ``train_sae`` step's parameters; ``InputError`` beside the fields."""
        return self.query_one("#sae-message", FieldMessage).checked(
            lambda: self._train_params(model)
        )

    def _train_params(self, model: ModelView) -> dict[str, Any]:
        layer_text = self._value("sae-layer")
        layer = (
            checks.whole(layer_text, "layer", low=0, high=model.num_layers - 1)
            if layer_text.strip()
            else model.num_layers // 2
        )
        kind = str(self.query_one("#sae-kind", Select).value)
        config = {
            "kind": kind,
            "expansion_factor": checks.whole(
                self._value("sae-expansion"), "expansion", low=1, high=MOST_EXPANSION
            ),
            "epochs": checks.whole(self._value("sae-epochs"), "epochs", low=1, high=MOST_EPOCHS),
        }
        if kind != "relu":
            config["k"] = checks.whole(self._value("sae-k"), "k", low=1, high=4096)
        return {"texts": self._texts(), "layer": layer, "config": config}

    def _texts(self) -> list[str]:
        path = self._value("sae-texts").strip()
        return read_texts(path) if path else demo_texts()

    def _value(self, field: str) -> str:
        return self.query_one(f"#{field}", Field).value

    def browse_params(self, text: Prompt | None) -> tuple[str, dict[str, Any]]:
        """The browsing step (kind, parameters) over the session's last SAE and the prompt
        ``text``; ``InputError`` beside the fields."""
        return self.query_one("#sae-message", FieldMessage).checked(
            lambda: self._browse_params(text)
        )

    def _browse_params(self, text: Prompt | None) -> tuple[str, dict[str, Any]]:
        if self._trained is None:
            raise InputError("no SAE yet: train one first (f8)")
        if text is None:
            raise InputError("type a prompt to read the SAE's features on")
        kind = str(self.query_one("#sae-view", Select).value)
        sae = self._trained.summary["sae"]
        if kind == "sae_features":
            return kind, {"sae": sae, "text": text, "k": RANKS}
        width = int(self._trained.summary.get("d_sae", 0))
        feature_text = self._value("sae-feature")
        if not feature_text.strip():
            raise InputError("which feature? type its number (prompt features lists them)")
        feature = checks.whole(feature_text, "feature", low=0, high=max(width - 1, 0))
        if kind == "feature_dashboard":
            path = self._value("sae-texts").strip()
            texts = read_texts(path) if path else self._trained.params["texts"]
            return kind, {"sae": sae, "texts": texts, "feature": feature, "text": text}
        mode = str(self.query_one("#sae-mode", Select).value)
        value = checks.number(self._value("sae-value"), "value", low=-1e4, high=1e4)
        return kind, {"sae": sae, "text": text, "feature": feature, "mode": mode, "value": value}

    def follow(self, steps: list[Step], restore_forms: bool) -> None:
        """Keep the session's last SAE (what browsing reads), its training form too."""
        self._trained = next((s for s in reversed(steps) if s.kind == "train_sae"), None)
        if restore_forms and self._trained is not None:
            self.restore(self._trained)

    def restore(self, step: Step) -> None:
        p = step.params
        if step.kind == "train_sae":
            config = p.get("config", {})
            self.query_one("#sae-kind", Select).value = config.get("kind", "topk")
            for field, key in (("expansion", "expansion_factor"), ("k", "k"), ("epochs", "epochs")):
                if key in config:
                    self.query_one(f"#sae-{field}", Field).value = str(config[key])
            if "layer" in p:
                self.query_one("#sae-layer", Field).value = str(p["layer"])
            return
        self.query_one("#sae-view", Select).value = step.kind
        if "feature" in p:
            self.query_one("#sae-feature", Field).value = str(p["feature"])
        if step.kind == "feature_edit":
            self.query_one("#sae-mode", Select).value = p.get("mode", "ablate")
            self.query_one("#sae-value", Field).value = str(p.get("value", 0.0))

    # ------------------------------------------------------------------ training progress
    def start_training(self) -> None:
        """Show an empty progress bar for the run about to start."""
        self.query_one("#sae-progress-row").display = True
        self.query_one("#sae-progress", ProgressBar).update(total=1.0, progress=0.0)
        self.query_one("#sae-progress-text", Static).update("reading activations…")

    def show_progress(self, progress: TrainingProgress) -> None:
        """Move the bar; say tokens, tokens/s, loss and the epoch."""
        self.query_one("#sae-progress", ProgressBar).update(progress=progress.fraction)
        self.query_one("#sae-progress-text", Static).update(
            Text(
                f"{progress.tokens:,} tok · {progress.tokens_per_second:,.0f} tok/s · loss "
                f"{progress.loss:.3g} · epoch {progress.epoch + 1}/{progress.epochs} · Esc stops"
            )
        )

    def stop_training(self) -> None:
        """Hide the progress bar (training ended, failed or was stopped)."""
        self.query_one("#sae-progress-row").display = False

    # ------------------------------------------------------------------ results
    def show_step(self, step: Step, state: WorkbenchState) -> None:
        table: DataTable[Any] = self.query_one("#sae-table", DataTable)
        table.clear(columns=True)
        caption = {
            "train_sae": self._training,
            "sae_features": self._features,
            "feature_dashboard": self._dashboard,
            "feature_edit": self._edit,
        }[step.kind](step, table)
        self.query_one("#sae-caption", Static).update(caption)

    def _training(self, step: Step, table: DataTable[Any]) -> Text:
        self.stop_training()
        self._trained = step
        summary = step.summary
        config, trained, measured = (
            summary["sae"].get("config", {}),
            summary["training"],
            summary["measured"],
        )
        table.add_column("measure", width=34)
        table.add_column("value", width=12)
        rows = [
            ("explained variance", f"{measured['explained_variance']:.4f}"),
            ("L0 (active features per token)", f"{measured['l0']:.1f}"),
            ("dead fraction", f"{measured['dead_fraction']:.3f}"),
            ("MSE", f"{measured['mse']:.4g}"),
            ("tokens trained on", f"{trained['tokens']:,}"),
            ("optimizer steps", f"{trained['steps']:,}"),
            ("final loss", f"{trained['final_loss']:.4g}"),
            ("dead in training (last window)", f"{trained['dead_fraction']:.3f}"),
        ]
        for row in rows:
            table.add_row(*row)
        k = f", k {config['k']}" if config.get("kind", "topk") != "relu" and "k" in config else ""
        return Text(
            f"SAE on {summary['component']}: {summary['d_sae']} features "
            f"({config.get('kind', '?')}{k}), trained on {len(step.params['texts'])} texts; "
            f"measured on the first {measured['texts']} of them"
        )

    def _features(self, step: Step, table: DataTable[Any]) -> Text:
        summary = step.summary
        table.add_column("pos", width=4)
        table.add_column("token", width=12)
        ranks = max((len(row) for row in summary["per_position"]), default=0)
        for rank in range(ranks):
            table.add_column(f"#{rank + 1}", width=11)
        peak = max((v for row in summary["per_position"] for _, v in row), default=0.0)
        for pos, (token, row) in enumerate(
            zip(summary["tokens"], summary["per_position"], strict=True)
        ):
            cells = [heat_text(f"#{f} {v:.2f}", v / peak if peak > 0 else 0.0) for f, v in row]
            cells += [Text("")] * (ranks - len(cells))
            table.add_row(str(pos), display_token(token, 12), *cells)
        pooled = ", ".join(f"#{f} {v:.3g}" for f, v in summary["pooled"])
        return Text(
            f"strongest features at each position (Enter on a cell picks it); over the "
            f"prompt: {pooled or 'none fire'}"
        )

    def _dashboard(self, step: Step, table: DataTable[Any]) -> Text:
        s = step.summary
        table.add_column("act", width=7)
        table.add_column("context (the activating token in « »)", width=64)
        for context in s["contexts"]:
            table.add_row(f"{context['activation']:.3f}", context_line(context))
        caption = Text(
            f"feature #{s['feature']} on {s['component']}: fires on {s['density']:.1%} of "
            f"{s['tokens']:,} tokens, max {s['max_activation']:.3g}, mean "
            f"{s['mean_activation']:.3g} · histogram 0-{s['histogram']['edges'][-1]:.3g}: "
        )
        caption.append(sparkline(s["histogram"]["counts"]), style="bold")
        caption.append(
            "\nraises: "
            + " ".join(display_token(t) for t, _ in s["promoted"][:6])
            + "  lowers: "
            + " ".join(display_token(t) for t, _ in s["suppressed"][:6])
        )
        if "on_prompt" in s:
            on = s["on_prompt"]
            caption.append(
                "\non the prompt: "
                + "".join(
                    display_token(t, keep_spaces=True) + (f"[{v:.2g}]" if v > 0 else "")
                    for t, v in zip(on["tokens"], on["values"], strict=True)
                )
            )
        return caption

    def _edit(self, step: Step, table: DataTable[Any]) -> Text:
        s, p = step.summary, step.params
        table.add_column("rank", width=5)
        table.add_column("baseline", width=22)
        table.add_column("edited", width=22)
        pairs = zip(
            zip(s["baseline_tokens"], s["baseline_probs"], strict=True),
            zip(s["edited_tokens"], s["edited_probs"], strict=True),
            strict=True,
        )
        for rank, ((bt, bp), (et, ep)) in enumerate(pairs, 1):
            table.add_row(
                str(rank), f"{display_token(bt, 12)} {bp:.3f}", f"{display_token(et, 12)} {ep:.3f}"
            )
        return Text(
            f"feature #{s['feature']} {p.get('mode', 'ablate')} {p.get('value', 0.0)} on "
            f"{s['component']} · KL {s['kl']:.4g}\nbaseline: {s['baseline_text']!r}\n"
            f"edited:   {s['edited_text']!r}"
        )

    @on(DataTable.CellSelected, "#sae-table")
    def _cell_picked(self, event: DataTable.CellSelected) -> None:
        """Enter on a prompt-features cell puts its feature in the feature field."""
        label = str(event.value).split(" ", 1)[0]
        if label.startswith("#") and label[1:].isdigit():
            self.query_one("#sae-feature", Field).value = label[1:]
            self.query_one("#sae-view", Select).value = "feature_dashboard"


def sparkline(counts: list[int]) -> str:
    """Counts as one character each, the tallest a full block (a non-zero count shows)."""
    peak = max(counts, default=0)
    if peak <= 0:
        return SPARK[0] * len(counts)
    top = len(SPARK) - 1
    return "".join(SPARK[max(1, round(c * top / peak)) if c else 0] for c in counts)


def context_line(context: dict[str, Any]) -> Text:
    """A top context as one line, the activating token bold between « »."""
    line = Text()
    at = context["position"] - context["start"]
    for i, token in enumerate(context["tokens"]):
        shown = display_token(token, keep_spaces=True)
        if i == at:
            line.append(f"«{shown}»", style="bold reverse")
        else:
            line.append(shown)
    return line
