"""The workbench application: layout, key bindings, workers, and the session it drives.

Workers (model load, session steps, replay) run in threads and only post messages; the
``on_*`` handlers below own every widget.  All computing goes through ``mlxterp.session``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingsMap
from textual.containers import Horizontal
from textual.widgets import Footer, Input, ListView, ProgressBar, Static, TabbedContent, TabPane
from textual.worker import get_current_worker

from mlxterp.session import Session, SessionManager, replay

from .commands import WorkbenchCommands
from .keymap import KeymapError, load_keymap
from .messages import ModelReady, ReplayDone, StepDone, WorkFailed
from .panes.charts import ChartsPane
from .panes.history import HistoryPane
from .panes.interventions import Entry, InterventionScreen, InterventionsPane, entry_for
from .panes.lens import LensPane
from .panes.model_tree import ModelPane
from .panes.patching import PatchingPane
from .panes.prompt import PromptBar
from .panes.steering import SteeringPane
from .screens import HelpScreen, PathScreen, ReportScreen

PANES = (  # (tab id, tab label); number keys 1..7 select them
    ("model", "1 Model"),
    ("lens", "2 Lens"),
    ("charts", "3 Chart"),
    ("patching", "4 Patch"),
    ("interventions", "5 Interv."),
    ("steering", "6 Steer"),
    ("history", "7 History"),
)


def error_text(err: BaseException) -> str:
    """One line saying what went wrong (the exception's own message, its type if empty)."""
    text = (
        str(err.args[0])
        if isinstance(err, KeyError) and err.args and type(err) is KeyError
        else str(err)
    )
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return f"{type(err).__name__}: {first}"


class WorkbenchApp(App):
    """Keyboard-driven interpretability workbench over one model and one session."""

    CSS_PATH = "workbench.tcss"
    TITLE = "mlxterp"
    COMMANDS = App.COMMANDS | {WorkbenchCommands}
    BINDINGS = [
        Binding("f1,question_mark", "help", "Help", id="help"),
        Binding("ctrl+r", "run_lens", "Lens", id="run_lens"),
        Binding("ctrl+t", "run_trace", "Trace", id="run_trace"),
        Binding("ctrl+k", "run_patching", "Patch", id="run_patching", show=False),
        Binding("ctrl+g", "run_steering", "Steer", id="run_steering", show=False),
        Binding("f6", "run_attention", "Attention", id="run_attention", show=False),
        Binding("i", "add_intervention", "Intervene", id="add_intervention", show=False),
        Binding("ctrl+s", "save", "Save", id="save"),
        Binding("f4", "save_as", "Save as", id="save_as", show=False),
        Binding("ctrl+o", "open", "Open", id="open"),
        Binding("f5", "replay", "Replay", id="replay", show=False),
        Binding("escape", "cancel", "Cancel", id="cancel", show=False),
        *[
            Binding(
                str(n),
                f"show_pane('{pane}')",
                label.split(" ", 1)[1],
                id=f"pane_{pane}",
                show=False,
            )
            for n, (pane, label) in enumerate(PANES, 1)
        ],
    ]

    def __init__(
        self,
        model: str = "demo",
        session: Any | None = None,
        manager: SessionManager | None = None,
    ) -> None:
        super().__init__()
        self.mgr = manager or SessionManager()
        self.session = session or Session.new(model, manager=self.mgr)
        self.model_name = self.session.model_ref
        self.model: Any = None
        self.entries: list[Entry] = []
        self.baselines: dict[tuple, dict] = {}  # lens summaries with no intervention, by tokens
        self.last_lens: dict | None = None
        self._busy: str | None = None
        self.user_keymap: dict[str, str] = {}
        self.attention_head = 0

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield PromptBar(id="prompt-bar")
        with TabbedContent(initial="model", id="panes"):
            for pane_id, label in PANES:
                with TabPane(label, id=pane_id):
                    yield {
                        "model": ModelPane,
                        "lens": LensPane,
                        "charts": ChartsPane,
                        "patching": PatchingPane,
                        "interventions": InterventionsPane,
                        "steering": SteeringPane,
                        "history": HistoryPane,
                    }[pane_id](id=f"{pane_id}-pane")
        with Horizontal(id="status-row"):
            yield Static("", id="status")
            yield ProgressBar(total=None, show_eta=False, show_percentage=False, id="progress")
        yield Footer()

    def on_mount(self) -> None:
        try:
            keymap = load_keymap()
        except KeymapError as err:
            self.notify(str(err), severity="error", title="keymap ignored")
        else:
            if keymap:
                self.user_keymap = keymap
                self.set_keymap(keymap)
        self.query_one("#prompt", Input).focus()
        self._set_busy("loading model")
        self.load_model()

    # ------------------------------------------------------------------ status
    def _status_text(self) -> str:
        path = self.session.path
        name = Path(path).name if path else "unsaved session"
        parts = [
            f"model: {Path(self.model_name).name}",
            f"session: {name}",
            f"{len(self.session.steps)} steps",
        ]
        active = sum(e.on for e in self.entries)
        if active:
            parts.append(f"{active} interventions")
        if self._busy:
            parts.append(f"{self._busy}… (Esc cancels)")
        return " │ ".join(parts)

    def _set_busy(self, what: str | None) -> None:
        self._busy = what
        self.query_one("#progress", ProgressBar).display = what is not None
        self.query_one("#status", Static).update(self._status_text())

    # ------------------------------------------------------------------ workers
    @work(thread=True, exclusive=True, group="compute")
    def load_model(self) -> None:
        """Load the session's model once (the manager caches it)."""
        try:
            model = self.mgr.model(self.model_name)
        except Exception as err:
            self.post_message(WorkFailed("load", error_text(err)))
            return
        self.post_message(ModelReady(model, self.session))

    @work(thread=True, exclusive=True, group="compute")
    def run_step(self, kind: str, params: dict) -> None:
        """One session step; the result comes back as ``StepDone``."""
        worker = get_current_worker()
        try:
            step = self.session.run(self.mgr, kind, **params)
        except Exception as err:
            if not worker.is_cancelled:
                self.post_message(WorkFailed(kind, error_text(err)))
            return
        if not worker.is_cancelled:
            self.post_message(StepDone(step))

    @work(thread=True, exclusive=True, group="compute")
    def run_replay(self, session: Any) -> None:
        """Replay every step of ``session`` against its recorded summaries."""
        try:
            report = replay(session, self.mgr)
        except Exception as err:
            self.post_message(WorkFailed("replay", error_text(err)))
            return
        if not get_current_worker().is_cancelled:
            self.post_message(ReplayDone(report))

    @work(thread=True, exclusive=True, group="compute")
    def open_session(self, path: str) -> None:
        """Load a session file and its model."""
        try:
            session = Session.load(path, manager=self.mgr)
            model = self.mgr.model(session.model_ref)
        except Exception as err:
            self.post_message(WorkFailed("open", error_text(err)))
            return
        self.post_message(ModelReady(model, session))

    def start_step(self, kind: str, **params: Any) -> None:
        """Run a session step in a worker, if the model is ready."""
        if self.model is None:
            self.notify("the model is still loading", severity="warning")
            return
        self._set_busy(f"running {kind}")
        self.run_step(kind, params)

    # ------------------------------------------------------------------ worker results
    @on(ModelReady)
    def _model_ready(self, message: ModelReady) -> None:
        self.model, self.session = message.model, message.session
        self.model_name = self.session.model_ref
        # a reopened session's active interventions apply, so they are listed too
        self.entries = [entry_for(name, fn) for name, fn in self.session.interventions.items()]
        self.baselines, self.last_lens = {}, None
        self.query_one(InterventionsPane).show(self.entries)
        self.query_one(ModelPane).show_model(self.model, Path(self.model_name).name)
        self.query_one(PromptBar).show_tokens(self.model)
        self.query_one(HistoryPane).show(self.session.steps)
        self._set_busy(None)

    @on(WorkFailed)
    def _work_failed(self, message: WorkFailed) -> None:
        self._set_busy(None)
        if message.what == "load":
            self.query_one("#model-info", Static).update(Text(f"no model: {message.text}"))
        self.notify(message.text, severity="error", title=f"{message.what} failed", timeout=8)

    @on(StepDone)
    def _step_done(self, message: StepDone) -> None:
        self._set_busy(None)
        self.show_step(message.step)
        self.query_one(HistoryPane).show(self.session.steps)

    @on(ReplayDone)
    def _replay_done(self, message: ReplayDone) -> None:
        self._set_busy(None)
        report = message.report
        self.push_screen(
            ReportScreen("Replay: OK" if report.ok else "Replay: MISMATCH", report.format_text())
        )

    def show_step(self, step: Any) -> None:
        """Render a step's result in its pane (from its summary; ``result`` adds detail)."""
        summary, result = step.summary, step.result
        if step.kind == "logit_lens":
            self.query_one(LensPane).show(summary, result)
            self._lens_compared(summary)
            if summary.get("target_probs"):
                self.query_one(ChartsPane).line(
                    "p(target) at the last position per layer",
                    summary["layers"],
                    summary["target_probs"],
                    "layer",
                    "probability",
                )
        elif step.kind == "activation_patching":
            self.query_one(PatchingPane).show(summary)
            charts = self.query_one(ChartsPane)
            if summary.get("matrix"):
                charts.grid("Recovery % by layer (rows) x position (columns)", summary["matrix"])
            else:
                charts.bars(
                    f"Recovery % patching {summary['component']} ({summary['metric']})",
                    summary["layers"],
                    summary["recovery"],
                    "layer",
                    "recovery %",
                )
        elif step.kind == "trace":
            self.query_one(ModelPane).show_shapes(trace_shapes(step))
            norms = summary.get("layer_norms")
            if norms:
                self.query_one(ChartsPane).line(
                    "residual norm at the last token per layer",
                    list(range(len(norms))),
                    norms,
                    "layer",
                    "norm",
                )
            self.notify(
                "next tokens: "
                + ", ".join(
                    f"{t!r} {p:.3f}" for t, p in zip(summary["top_tokens"], summary["top_probs"])
                ),
                timeout=6,
            )
        elif step.kind == "steering":
            self.query_one(SteeringPane).show(summary)
        elif step.kind == "attention":
            self._show_attention(step)
        else:
            self.notify(f"{step.kind} step done", timeout=3)

    def _show_attention(self, step: Any) -> None:
        """Chart the chosen head of an attention step (recorded steps have no weights)."""
        layer = step.summary["layer"]
        if not isinstance(step.result, dict) or layer not in step.result:
            self.notify(
                f"attention of layer {layer}: most attended key per head at the last "
                f"query {step.summary['last_query_argmax']}",
                timeout=8,
            )
            return
        weights = step.result[layer][0]  # (heads, q, k)
        head = self.attention_head
        if not 0 <= head < weights.shape[0]:
            self.notify(
                f"head {head} is out of range: layer {layer} has {weights.shape[0]} heads",
                severity="error",
            )
            return
        self.query_one(ChartsPane).grid(
            f"Attention, layer {layer} head {head} (rows: queries, columns: keys)",
            weights[head].tolist(),
        )

    def _lens_compared(self, summary: dict) -> None:
        key = tuple(summary.get("tokens") or ())
        if not any(e.on for e in self.entries):
            self.baselines[key] = summary
        self.last_lens = summary
        self.query_one(InterventionsPane).show_comparison(self.baselines.get(key), summary)

    # ------------------------------------------------------------------ actions
    def action_show_pane(self, pane: str) -> None:
        self.query_one(TabbedContent).active = pane

    def key_rows(self) -> list[tuple[str, str, str]]:
        """``(keys, description, binding id)`` of every binding, with the user's keymap."""
        rows = [
            ("tab / shift+tab", "Next / previous widget", "-"),
            ("ctrl+p", "Command palette", "-"),
            ("ctrl+q", "Quit", "-"),
        ]
        for where, bindings in (
            ("", self.BINDINGS),
            ("Interventions: ", InterventionsPane.BINDINGS),
        ):
            keymap = BindingsMap(bindings)
            keymap.apply_keymap(self.user_keymap)
            by_id: dict[str, list[Binding]] = {}
            for group in keymap.key_to_bindings.values():
                for b in group:
                    by_id.setdefault(b.id or b.action, []).append(b)
            for bid, group in by_id.items():
                keys = " / ".join(self.get_key_display(b) for b in group)
                rows.append((keys, where + (group[0].description or group[0].action), bid))
        return rows

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.key_rows()))

    @on(Input.Submitted, "#prompt")
    def action_run_lens(self) -> None:
        text = self.query_one(PromptBar).text
        if not text.strip():
            self.notify("the prompt is empty: type some text first", severity="warning")
            return
        lens = self.query_one(LensPane)
        params: dict[str, Any] = {"text": text}
        if lens.top_k.strip():
            params["top_k"] = int(lens.top_k)
        if lens.target:
            params["target"] = lens.target
        self.action_show_pane("lens")
        self.start_step("logit_lens", **params)

    def action_run_trace(self) -> None:
        text = self.query_one(PromptBar).text
        if not text.strip():
            self.notify("the prompt is empty: type some text first", severity="warning")
            return
        self.start_step("trace", text=text)

    def action_run_patching(self) -> None:
        params = self.query_one(PatchingPane).params()
        if not params["clean"].strip() or not params["corrupted"].strip():
            self.notify("patching needs a clean and a corrupted prompt", severity="warning")
            return
        self.action_show_pane("patching")
        self.start_step("activation_patching", **params)

    def action_run_steering(self) -> None:
        try:
            params = self.query_one(SteeringPane).params()
        except ValueError as err:
            self.notify(str(err), severity="warning")
            return
        self.action_show_pane("steering")
        self.start_step("steering", **params)

    def action_run_attention(self) -> None:
        text = self.query_one(PromptBar).text
        try:
            layer, self.attention_head = self.query_one(ChartsPane).attention_choice()
        except ValueError as err:
            self.notify(str(err), severity="warning")
            return
        if not text.strip():
            self.notify("the prompt is empty: type some text first", severity="warning")
            return
        self.action_show_pane("charts")
        self.start_step("attention", text=text, layer=layer)

    def action_cancel(self) -> None:
        if self._busy is None:
            return
        self.workers.cancel_group(self, "compute")
        self._set_busy(None)
        self.notify("cancelled", timeout=3)

    # interventions ------------------------------------------------------
    def _check_module(self, name: str) -> str | None:
        if self.model is None:
            return "the model is still loading"
        if not name:
            return "name a module, e.g. layers.0.mlp"
        try:
            self.model.resolve(name)
        except KeyError as err:
            return error_text(err)
        return None

    def action_add_intervention(self) -> None:
        module = self.query_one(ModelPane).selected_module() or ""
        self.push_screen(InterventionScreen(self._check_module, module), self._added)

    def _apply(self, change) -> bool:
        """Run an intervention change on the session; errors become notifications."""
        if self._busy is not None:
            self.notify(
                "wait for the running step (or Esc) before changing interventions",
                severity="warning",
            )
            return False
        try:
            change()
        except Exception as err:
            self.notify(error_text(err), severity="error", title="intervention refused")
            return False
        return True

    def _added(self, entry: Entry | None) -> None:
        if entry is not None:
            entry.module = self.model.resolve(entry.module)  # checked by the form
        if entry is None or not self._apply(
            lambda: self.session.set_intervention(entry.module, entry.fn)
        ):
            return
        self.entries = [e for e in self.entries if e.module != entry.module] + [entry]
        self._interventions_changed()

    def action_edit_intervention(self) -> None:
        index = self.query_one(InterventionsPane).selected()
        if index is None:
            return
        old = self.entries[index]

        def edited(entry: Entry | None) -> None:
            if entry is None:
                return
            entry.on, entry.module = old.on, self.model.resolve(entry.module)

            def change() -> None:
                if old.on and entry.module != old.module:
                    self.session.remove_intervention(old.module)
                if entry.on:
                    self.session.set_intervention(entry.module, entry.fn)

            if self._apply(change):
                self.entries[index] = entry
                self._interventions_changed()

        self.push_screen(InterventionScreen(self._check_module, entry=old), edited)

    def action_toggle_intervention(self) -> None:
        index = self.query_one(InterventionsPane).selected()
        if index is None:
            return
        entry = self.entries[index]
        change = (
            (lambda: self.session.remove_intervention(entry.module))
            if entry.on
            else (lambda: self.session.set_intervention(entry.module, entry.fn))
        )
        if self._apply(change):
            entry.on = not entry.on
            self._interventions_changed()

    def action_remove_intervention(self) -> None:
        index = self.query_one(InterventionsPane).selected()
        if index is None:
            return
        entry = self.entries[index]
        if not entry.on or self._apply(lambda: self.session.remove_intervention(entry.module)):
            del self.entries[index]
            self._interventions_changed()

    def _interventions_changed(self) -> None:
        """Show the list and history, then re-run the lens to compare with the baseline."""
        self.query_one(InterventionsPane).show(self.entries)
        self.query_one(HistoryPane).show(self.session.steps)
        self.action_show_pane("interventions")
        self._set_busy(None)
        if self.last_lens is not None and self.query_one(PromptBar).text.strip():
            self.start_step(
                "logit_lens",
                text=self.query_one(PromptBar).text,
                top_k=int(self.query_one(LensPane).top_k or 5),
            )

    # sessions -----------------------------------------------------------
    def action_save(self) -> None:
        if self.session.path is None:
            self.action_save_as()
            return
        self._save(None)

    def action_save_as(self) -> None:
        self.push_screen(PathScreen("Save session as"), self._save_to)

    def _save_to(self, path: str | None) -> None:
        if path:
            self._save(path)

    def _save(self, path: str | None) -> None:
        try:
            written = self.session.save(path)
        except Exception as err:
            self.notify(error_text(err), severity="error", title="save failed")
            return
        self.notify(f"saved {written.name}", timeout=3)
        self._set_busy(self._busy)

    def action_open(self) -> None:
        self.push_screen(PathScreen("Open session"), self._open_path)

    def _open_path(self, path: str | None) -> None:
        if path:
            self._set_busy("opening session")
            self.open_session(path)

    def action_replay(self) -> None:
        if self.model is None:
            self.notify("the model is still loading", severity="warning")
            return
        self._set_busy("replaying")
        self.run_replay(self.session)

    @on(ListView.Selected, "#history-list")
    def _history_selected(self, event: ListView.Selected) -> None:
        step = self.session.steps[event.index]
        self.show_step(step)
        target = {
            "logit_lens": "lens",
            "activation_patching": "patching",
            "trace": "model",
            "steering": "steering",
            "attention": "charts",
        }.get(step.kind)
        if target:
            self.action_show_pane(target)

    @on(Input.Changed, "#prompt")
    def _prompt_changed(self) -> None:
        self.query_one(PromptBar).show_tokens(self.model)


def trace_shapes(step: Any) -> dict[str, tuple]:
    """``{canonical_name: shape}`` of a live trace step (a reopened one has no activations)."""
    activations = getattr(step.result, "activations", None) or {}
    return {name: tuple(value.shape) for name, value in activations.items()}
