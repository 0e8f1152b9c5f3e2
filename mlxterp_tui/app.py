"""The workbench application: its actions, the workers, and the handlers that record.

Workers (model load, a step's computation, replay, tokenizing the prompt) run in threads,
compute only, and post a message with what they computed.  The handlers below run on the UI
thread: they record steps in the session (which owns every step and every intervention),
and each pane renders the step kinds it knows.  A cancelled run's message is dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from textual import on, work
from textual.app import App
from textual.binding import Binding, BindingsMap, BindingType
from textual.css.query import NoMatches
from textual.timer import Timer
from textual.widgets import Checkbox, Input, ListView, TabbedContent, Tabs
from textual.worker import Worker, WorkerState

from mlxterp.session import (
    KINDS,
    InputError,
    MlxterpError,
    Session,
    SessionManager,
    Step,
    TrainingProgress,
    export_step,
    is_chat,
    replay,
)

from . import checks
from .actions import PANES, bindings
from .commands import WorkbenchCommands
from .compare_screens import ReplayScreen
from .jobs_screen import JobsScreen
from .keymap import KeymapError, load_keymap
from .main_screen import HOME_PANE, PANE_TYPES, MainScreen
from .messages import (
    ModelLoaded,
    ReplayDone,
    SessionOpened,
    StepComputed,
    TokensReady,
    TokenStreamed,
    TrainingProgressed,
    WorkFailed,
    error_text,
    files_text,
)
from .model_picker import ModelScreen
from .panes import Pane
from .panes.charts import ChartsPane
from .panes.heads import HeadsPane
from .panes.history import HistoryPane
from .panes.interventions import InterventionForm, InterventionScreen, InterventionsPane
from .panes.lens import LensPane
from .panes.model_tree import ModelPane
from .panes.patching import PatchingPane
from .panes.prompt import MAX_CHIPS, PromptBar
from .panes.sae import SaePane
from .panes.steering import SteeringPane
from .screens import ChoiceScreen, HelpScreen, PathScreen
from .state import (
    ModelView,
    Prompt,
    WorkbenchState,
    discard_recovery,
    new_recovery_path,
    opens_as_copy,
    prompt_text,
    recovery_files,
    shown,
    state_dir,
    user_message,
)

PROGRESS_EVERY = 0.2  # seconds between training progress updates
# steps whose ``text`` is the prompt
TEXT_KINDS = ("logit_lens", "tuned_lens", "trace", "attention")
PANE_ACTIONS = {  # Enter in a field runs the action of its innermost row or pane listed here
    "gen-options": "run_generate",
    "lens-pane": "run_lens",
    "charts-pane": "run_attention",
    "patching-pane": "run_patching",
    "steering-pane": "run_steering",
    "heads-pane": "run_heads",
    "sae-train-row": "train_sae",
    "sae-browse-row": "browse_sae",
}


class WorkbenchApp(App[None]):
    """Keyboard-driven interpretability workbench over one model and one session."""

    CSS_PATH = "workbench.tcss"
    TITLE = "mlxterp"
    COMMANDS = App.COMMANDS | {WorkbenchCommands}
    BINDINGS: ClassVar[list[BindingType]] = bindings()

    def __init__(
        self,
        model: str = "demo",
        session: Session | None = None,
        manager: SessionManager | None = None,
        state_folder: Path | None = None,
    ) -> None:
        super().__init__()
        self.mgr = manager or SessionManager()
        self.state_folder = state_folder or state_dir()
        self._offer_recovery = session is None
        session = session or Session.new(model, manager=self.mgr)
        self.state = WorkbenchState(
            session.model_ref, session, new_recovery_path(self.state_folder)
        )
        self._copy_reason = self.state.adopt(session)
        self.user_keymap: dict[str, str] = {}
        self.token_delay = 0.15  # seconds of quiet typing before the token strip updates
        self._token_timer: Timer | None = None
        self._typed_at = 0.0
        self.main = MainScreen()
        self._last_shown: Step | None = None  # the step last shown (what ``e`` exports)

    # ------------------------------------------------------------------ state views
    @property
    def session(self) -> Session:
        return self.state.session

    @property
    def model(self) -> ModelView | None:
        return self.state.model

    def get_default_screen(self) -> MainScreen:
        return self.main

    def notify(self, message: str, *, markup: bool = False, **kwargs: Any) -> None:
        """A notification; its text is shown as written (never read as markup)."""
        super().notify(message, markup=markup, **kwargs)

    def show_status(self) -> None:
        self.main.show_status(self.state)

    def _busy(self, what: str | None) -> None:
        self.state.busy = what
        self.show_status()

    def on_mount(self) -> None:
        try:
            keymap = load_keymap()
        except KeymapError as err:
            self.notify(str(err), severity="error", title="keymap ignored")
        else:
            if keymap:
                self.user_keymap = keymap
                self.set_keymap(keymap)
        self.call_after_refresh(self._first_screen)

    async def _first_screen(self) -> None:
        """The main screen is up: load the model, show the session, say what was opened
        how, offer unsaved work back."""
        self.query_one(PromptBar).prompt.focus()
        self._busy("loading model")
        self._load_model(self.state.next_run(), self.state.model_ref)
        await self._show_session(True)
        if self._copy_reason:
            self._tell_copy(self._copy_reason)
        if self._offer_recovery:
            self._offer_recovered()

    # ------------------------------------------------------------------ workers
    @work(thread=True, exclusive=True, group="compute", exit_on_error=False)
    def _load_model(self, run_id: int, ref: str) -> None:
        """Load the session's model once (the manager keeps it)."""
        try:
            model = self.mgr.model(ref)
        except MlxterpError as err:
            self.post_message(WorkFailed(run_id, "load", error_text(err)))
            return
        self.post_message(ModelLoaded(run_id, ref, model))

    @work(thread=True, exclusive=True, group="compute", exit_on_error=False)
    def _compute(self, run_id: int, kind: str, params: dict[str, Any]) -> None:
        """Compute one step (nothing is recorded here); the result comes as ``StepComputed``.
        A step that streams (``generate``) posts each token as ``TokenStreamed``, one that
        trains (``train_sae``) its progress as ``TrainingProgressed``; either stops as soon
        as its run is cancelled."""
        told = [0.0]  # when progress was last posted

        def heard(token_id: int) -> bool:
            if run_id != self.state.run_id:
                return False  # cancelled: stop generating, nothing will be recorded
            self.post_message(TokenStreamed(run_id, token_id))
            return True

        def trained(progress: TrainingProgress) -> bool:
            if run_id != self.state.run_id:
                return False  # cancelled: stop training, nothing will be recorded
            now = time.monotonic()
            if now - told[0] >= PROGRESS_EVERY or progress.fraction >= 1.0:
                told[0] = now
                self.post_message(TrainingProgressed(run_id, progress))
            return True

        step_kind = KINDS[kind]
        listeners: dict[str, Any] = {}
        if step_kind.listens("on_token"):
            listeners["on_token"] = heard
        if step_kind.listens("on_progress"):
            listeners["on_progress"] = trained
        try:
            step = self.state.session.compute(self.mgr, kind, **listeners, **params)
        except MlxterpError as err:
            self.post_message(WorkFailed(run_id, kind, error_text(err)))
            return
        self.post_message(StepComputed(run_id, step))

    @work(thread=True, exclusive=True, group="compute", exit_on_error=False)
    def _replay(self, run_id: int, session: Session) -> None:
        """Replay every step of ``session`` against its recorded summaries."""
        try:
            report = replay(session, self.mgr)
        except MlxterpError as err:
            self.post_message(WorkFailed(run_id, "replay", error_text(err)))
            return
        self.post_message(ReplayDone(run_id, report))

    @work(thread=True, exclusive=True, group="compute", exit_on_error=False)
    def _open(self, run_id: int, path: Path, recovered: bool) -> None:
        """Read a session file and load its model."""
        try:
            session = Session.load(path, manager=self.mgr)
            model = self.mgr.model(session.model_ref)
        except MlxterpError as err:
            self.post_message(WorkFailed(run_id, "open", error_text(err)))
            return
        self.post_message(SessionOpened(run_id, session, model, recovered))

    @work(thread=True, exclusive=True, group="tokens", exit_on_error=False)
    def _tokenize(self, model: ModelView, text: str, chat: bool) -> None:
        """The prompt's first tokens as ``(piece, id)`` and their count (``chat``: of the
        text as a user message, through the chat template)."""
        try:
            ids = model.encode_chat(user_message(text)) if chat else model.encode(text)
        except MlxterpError as err:
            self.post_message(TokensReady(text, [], 0, f"(no tokens: {err})", chat))
            return
        pieces = [(model.token_to_str(i), i) for i in ids[:MAX_CHIPS]]
        self.post_message(TokensReady(text, pieces, len(ids), "(no tokens)", chat))

    def start_step(self, kind: str, **params: Any) -> None:
        """Compute a step in a worker, if the model is ready."""
        if self._model_or_warn() is None:
            return
        self._busy(f"running {kind}")
        self._compute(self.state.next_run(), kind, params)

    # ------------------------------------------------------------------ worker results
    def _current(self, run_id: int) -> bool:
        """Whether a message belongs to the run awaited now (a cancelled one does not)."""
        if run_id != self.state.run_id or not self.main.is_attached:
            return False
        self._busy(None)
        return True

    @on(ModelLoaded)
    def _model_loaded(self, message: ModelLoaded) -> None:
        if not self._current(message.run_id):
            return
        self.state.model = message.model
        self.query_one(ModelPane).show_model(message.model, Path(message.model_ref).name)
        self._prompt_changed()

    @on(SessionOpened)
    async def _session_opened(self, message: SessionOpened) -> None:
        if not self._current(message.run_id):
            return
        session, source = message.session, message.session.path
        if message.recovered:
            session.path = None
        self.state.model = message.model
        why = self.state.adopt(session)
        if message.recovered and source is not None:
            session.autosave_path = self.state.recovery = source
            session.dirty = True
        self.query_one(ModelPane).show_model(message.model, Path(session.model_ref).name)
        await self._show_session(True)
        if why:
            self._tell_copy(why)
        self.notify(f"opened {len(session.steps)} steps", timeout=3)

    @on(TokenStreamed)
    def _token_streamed(self, message: TokenStreamed) -> None:
        if message.run_id == self.state.run_id and self.model is not None:
            self.query_one(SteeringPane).stream(self.model, message.token_id)

    @on(TrainingProgressed)
    def _training_progressed(self, message: TrainingProgressed) -> None:
        if message.run_id == self.state.run_id:
            self.query_one(SaePane).show_progress(message.progress)

    @on(StepComputed)
    async def _step_computed(self, message: StepComputed) -> None:
        if not self._current(message.run_id):
            return  # cancelled: nothing is recorded
        await self._record(message.step)

    @on(ReplayDone)
    def _replay_done(self, message: ReplayDone) -> None:
        if not self._current(message.run_id):
            return
        report = message.report
        self.push_screen(ReplayScreen(report, self.session.steps))

    @on(WorkFailed)
    def _work_failed(self, message: WorkFailed) -> None:
        if not self._current(message.run_id):
            return
        if message.what == "load":
            self.query_one(ModelPane).show_failure(message.text)
        if message.what == "train_sae":
            self.query_one(SaePane).stop_training()
        self.notify(message.text, severity="error", title=f"{message.what} failed", timeout=8)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A worker that raised something unexpected: say so, keep the app up."""
        if event.state != WorkerState.ERROR:
            return
        if event.worker.group == "compute":
            self._busy(None)
        err = event.worker.error
        text = error_text(err) if err is not None else "unknown error"
        self.notify(text, severity="error", title=f"{event.worker.name} failed", timeout=8)

    @on(TokensReady)
    def _tokens_ready(self, message: TokensReady) -> None:
        if not self.main.is_attached:
            return  # the app is closing
        bar = self.query_one(PromptBar)
        try:
            current = (bar.text, bar.chat)
        except NoMatches:
            return  # the bar's fields are not mounted yet, or already removed
        if (message.text, message.chat) == current:
            bar.show_tokens(message.pieces, message.count, message.note, message.chat)

    # ------------------------------------------------------------------ recording
    async def _record(self, step: Step) -> None:
        """Record a computed step in the session and show it in every pane that knows it."""
        try:
            self.session.record(step)
        except MlxterpError as err:
            self.notify(error_text(err), severity="error", title="not recorded", timeout=8)
            if step.index < 0:
                return
        await self._shown(step)

    async def _shown(self, step: Step, switch: bool = False) -> None:
        """Render ``step`` in every pane that knows its kind (``switch``: and show its pane)."""
        self._last_shown = step
        step = shown(step)  # a batch as its first prompt, prompts as text
        if step.kind == "logit_lens":
            self._lens_seen(step)
        if step.params.get("text") and step.kind in TEXT_KINDS:
            self.query_one(PromptBar).prompt.remember(step.params["text"])
        for pane in self.main.panes():
            if step.kind in pane.KINDS:
                pane.show_step(step, self.state)
        await self.query_one(HistoryPane).show(self.session.steps)
        self.show_status()
        if switch and step.kind in HOME_PANE:
            self.action_show_pane(HOME_PANE[step.kind])

    def _lens_seen(self, step: Step) -> None:
        if not self.session.interventions:
            self.state.baselines[tuple(step.summary.get("tokens") or ())] = step.summary
        self.state.last_lens = step.summary

    async def _show_session(self, restore_forms: bool) -> None:
        """Show the session: its history, every pane's last result, and (for a reopened
        session) the prompt and the forms as they were."""
        steps = self.session.steps
        prompt = self.query_one(PromptBar).prompt
        prompt.history = []
        for step in steps:
            if step.kind in TEXT_KINDS and prompt_text(step.params.get("text")):
                prompt.remember(prompt_text(step.params["text"]))
        texts = [s.params.get("text") for s in steps if s.kind in TEXT_KINDS]
        if restore_forms and texts:  # the chat switch as the last prompt was sent
            self.query_one(PromptBar).chat = is_chat(texts[-1])
        for pane in self.main.panes():
            pane.follow(steps, restore_forms)
            last = next((shown(s) for s in reversed(steps) if s.kind in pane.KINDS), None)
            if last is not None:
                pane.show_step(last, self.state)
                if restore_forms:
                    pane.restore(last)
        self.query_one(InterventionsPane).show(self.session.intervention_entries())
        await self.query_one(HistoryPane).show(steps)
        if restore_forms and prompt.history:
            prompt.value = prompt.history[-1]
            prompt.cursor_position = len(prompt.value)
        self.show_status()

    # ------------------------------------------------------------------ actions: panes, keys
    def action_show_pane(self, pane: str) -> None:
        self.query_one(TabbedContent).active = pane

    def action_next_pane(self, step: int = 1) -> None:
        """Show the pane ``step`` places on (f3 next, f2 previous; from any field)."""
        order = [pane for pane, _label, _name in PANES]
        at = order.index(self.query_one(TabbedContent).active)
        self.action_show_pane(order[(at + step) % len(order)])

    @on(TabbedContent.TabActivated)
    def _pane_shown(self) -> None:
        """Focus left in a pane that is now hidden moves to the shown pane (else Textual
        would hand it to the hidden pane's next field, which brings that pane back)."""
        focused, pane = self.focused, self._active_pane()
        if focused is not None and (focused.id == "prompt" or pane in focused.ancestors):
            return
        if focused is None or any(isinstance(a, Pane) for a in focused.ancestors):
            self._focus_home(pane)

    def _focus_home(self, pane: Pane) -> None:
        """Focus ``pane``'s main widget, or the tabs when it has none."""
        home = pane.query_one(pane.HOME) if pane.HOME else None
        (home or self.query_one(TabbedContent).query_one(Tabs)).focus()

    def _active_pane(self) -> Pane:
        return self.query_one(f"#{self.query_one(TabbedContent).active}-pane", Pane)

    def action_escape(self) -> None:
        """Leave a text field; outside fields, cancel running work."""
        if isinstance(self.focused, Input):
            self._focus_home(self._active_pane())
            return
        self.action_cancel()

    def action_cancel(self) -> None:
        if self.state.busy is None:
            return
        self.state.next_run()  # whatever the running worker posts is dropped
        self.workers.cancel_group(self, "compute")
        self.query_one(SaePane).stop_training()
        self._busy(None)
        self.notify("cancelled: nothing was recorded", timeout=3)

    def key_rows(self) -> list[tuple[str, str, str]]:
        """``(keys, description, binding id)`` of every binding, with the user's keymap."""
        rows = [
            ("tab / shift+tab", "Next / previous widget", "-"),
            ("ctrl+p", "Command palette: every action", "-"),
            ("ctrl+z / ctrl+y", "Prompt: undo / redo an edit", "prompt_undo / prompt_redo"),
            ("up / down", "Prompt: earlier / later prompts", "prompt_earlier / prompt_later"),
        ]
        for where, keyed in (("", self.BINDINGS), ("Interventions: ", InterventionsPane.BINDINGS)):
            keymap = BindingsMap(keyed)
            keymap.apply_keymap(self.user_keymap)
            by_id: dict[str, list[Binding]] = {}
            for group in keymap.key_to_bindings.values():
                for b in group:
                    by_id.setdefault(b.id or b.action, []).append(b)
            for bid, found in by_id.items():
                keys = " / ".join(self.get_key_display(b) for b in found)
                rows.append((keys, where + (found[0].description or found[0].action), bid))
        return rows

    def action_help(self) -> None:
        panes = [(label, PANE_TYPES[pane].HELP) for pane, label, _name in PANES]
        self.push_screen(HelpScreen(panes, self.key_rows()))

    # ------------------------------------------------------------------ actions: steps
    def _prompt(self) -> Prompt | None:
        """What the prompt runs (its text, or a chat with the chat switch on); None, with a
        warning, when it is empty."""
        bar = self.query_one(PromptBar)
        if not bar.text.strip():
            self.notify("the prompt is empty: type some text first", severity="warning")
            return None
        return bar.value

    def _model_or_warn(self) -> ModelView | None:
        if self.state.model is None:
            self.notify("the model is still loading", severity="warning")
        return self.state.model

    @on(Input.Submitted, "#prompt")
    def action_run_lens(self) -> None:
        model, text = self._model_or_warn(), self._prompt()
        if model is None or text is None:
            return
        try:
            kind, params = self.query_one(LensPane).params(model, text)
        except MlxterpError:
            self.action_show_pane("lens")
            return
        self.action_show_pane("lens")
        self.start_step(kind, **params)

    def action_run_trace(self) -> None:
        text = self._prompt()
        if text is not None:
            self.start_step("trace", text=text)

    def _run_form(
        self,
        pane: str,
        read: Callable[[ModelView], tuple[str, dict[str, Any]]],
        before: Callable[[], None] | None = None,
    ) -> None:
        """Show ``pane`` and run the step its form describes (``read`` says what is wrong
        beside the fields and raises, and then nothing runs); ``before`` readies the pane."""
        model = self._model_or_warn()
        if model is None:
            return
        self.action_show_pane(pane)
        try:
            kind, params = read(model)
        except MlxterpError:
            return
        if before is not None:
            before()
        self.start_step(kind, **params)

    def action_run_patching(self) -> None:
        self._run_form("patching", self.query_one(PatchingPane).params)

    def action_run_steering(self) -> None:
        form = self.query_one(SteeringPane)
        self._run_form("steering", lambda model: ("steering", form.params(model)))

    def action_run_heads(self) -> None:
        self._run_form("heads", self.query_one(HeadsPane).params)

    def action_run_generate(self) -> None:
        form = self.query_one(SteeringPane)

        def read(model: ModelView) -> tuple[str, dict[str, Any]]:
            return "generate", form.generate_params(model)

        self._run_form("steering", read, before=form.start_stream)

    def action_train_sae(self) -> None:
        form = self.query_one(SaePane)

        def read(model: ModelView) -> tuple[str, dict[str, Any]]:
            return "train_sae", form.train_params(model)

        self._run_form("sae", read, before=form.start_training)

    def action_browse_sae(self) -> None:
        form = self.query_one(SaePane)
        self._run_form("sae", lambda _model: form.browse_params(self._prompt()))

    def action_jobs(self) -> None:
        self.push_screen(JobsScreen())

    def action_run_attention(self) -> None:
        model = self._model_or_warn()
        if model is None:
            return
        self.action_show_pane("charts")
        try:
            layer = self.query_one(ChartsPane).attention_layer(model)
        except MlxterpError:
            return
        text = self._prompt()
        if text is not None:
            self.start_step("attention", text=text, layer=layer)

    @on(Input.Submitted)
    def _pane_field_submitted(self, event: Input.Submitted) -> None:
        """Enter in a pane's field runs that pane's action (the prompt runs the lens)."""
        if event.input.id == "prompt":
            return
        for ancestor in event.input.ancestors:
            action = PANE_ACTIONS.get(ancestor.id or "")
            if action is not None:
                getattr(self, f"action_{action}")()
                return

    # ------------------------------------------------------------------ interventions
    def _resolve(self, name: str) -> str:
        model = self.state.model
        if model is None:
            raise InputError("the model is still loading")
        return model.resolve(name)

    def _change_interventions(self, *, rerun: bool = True, **params: Any) -> bool:
        """Record one change of the session's intervention list (on the UI thread: it runs
        no model), then show it and, when ``rerun``, re-run the lens to compare with the
        baseline (a change with another to follow passes False: the re-run marks the app
        busy, which would refuse the next change)."""
        if self.state.busy is not None:
            self.notify(
                "wait for the running step (or Esc) before changing interventions",
                severity="warning",
            )
            return False
        try:
            step = self.session.run(self.mgr, "interventions", **params)
        except MlxterpError as err:
            self.notify(error_text(err), severity="error", title="intervention refused")
            return False
        self.call_later(self._shown, step)
        bar = self.query_one(PromptBar)
        if (
            rerun
            and self.state.last_lens is not None
            and bar.text.strip()
            and self.state.model is not None
        ):
            try:
                params = self.query_one(LensPane).logit_params(self.state.model, bar.value)
            except MlxterpError:
                return True
            self.start_step("logit_lens", **params)
        return True

    def _entry_at_cursor(self) -> int | None:
        return self.query_one(InterventionsPane).selected()

    def action_add_intervention(self) -> None:
        if self._model_or_warn() is None:
            return
        module = self.query_one(ModelPane).selected_module() or ""
        self.push_screen(InterventionScreen(self._resolve, module), self._added)

    def _described(self, form: InterventionForm | None) -> InterventionForm | None:
        """``form`` with its description complete: an ``add_vector`` from two prompts gets
        its vector, a ``replace_with`` another prompt's activation, read from the model
        now (None, with a notification, when it cannot)."""
        if form is None or form.prompts is None:
            return form
        if self.state.busy is not None:
            self.notify("wait for the running step (or Esc) first", severity="warning")
            return None
        kind = (
            self.session.activation_of if len(form.prompts) == 1 else self.session.contrast_vector
        )
        try:
            read = kind(self.mgr, form.module, *form.prompts)
        except MlxterpError as err:
            self.notify(error_text(err), severity="error", title="intervention refused")
            return None
        return InterventionForm(form.module, {**read, **form.description})

    def _added(self, form: InterventionForm | None) -> None:
        form = self._described(form)
        if form is None:
            return
        existing = {e.module: e for e in self.session.intervention_entries()}.get(form.module)
        if existing is None:
            self._change_interventions(
                action="set", module=form.module, intervention=form.description
            )
            return

        def decided(answer: str | None) -> None:
            if answer == "replace":
                desc = form.description
            elif answer == "compose":
                desc = checks.composed(existing.description, form.description)
            else:
                return
            self._change_interventions(action="set", module=form.module, intervention=desc)

        self.push_screen(
            ChoiceScreen(
                f"{form.module} already has an intervention. Replace it with the new one, or "
                "compose them (the existing one first, then the new one)?",
                [("replace", "Replace"), ("compose", "Compose"), ("cancel", "Cancel")],
            ),
            decided,
        )

    def action_edit_intervention(self) -> None:
        index = self._entry_at_cursor()
        if index is None or self._model_or_warn() is None:
            return
        old = self.session.intervention_entries()[index]
        from_prompts = "source" in old.description
        if old.description.get("kind") not in checks.INTERVENTION_PARAMS and not from_prompts:
            self.notify(
                f"a {old.description.get('kind')} intervention cannot be edited in the form: "
                "remove it and add a new one",
                severity="warning",
            )
            return

        def edited(form: InterventionForm | None) -> None:
            form = self._described(form)
            if form is None:
                return
            if form.module != old.module and not self._change_interventions(
                action="remove", module=old.module, rerun=False
            ):
                return
            self._change_interventions(
                action="set", module=form.module, intervention=form.description
            )

        self.push_screen(InterventionScreen(self._resolve, entry=old), edited)

    def action_toggle_intervention(self) -> None:
        index = self._entry_at_cursor()
        if index is not None:
            entry = self.session.intervention_entries()[index]
            action = "disable" if entry.enabled else "enable"
            self._change_interventions(action=action, module=entry.module)

    def action_remove_intervention(self) -> None:
        index = self._entry_at_cursor()
        if index is not None:
            entry = self.session.intervention_entries()[index]
            self._change_interventions(action="remove", module=entry.module)

    # ------------------------------------------------------------------ models
    def action_load_model(self) -> None:
        """The model picker; the model chosen there comes back loaded (``_model_picked``)."""
        if not isinstance(self.screen, ModelScreen):
            self.push_screen(
                ModelScreen(self.mgr, self.state.model_ref, Path.cwd()), self._model_picked
            )

    async def _model_picked(self, ref: str | None) -> None:
        """Go on with the session on the loaded model ``ref`` if its steps allow it (none
        yet, or the same model found elsewhere: the session's fingerprint check); else ask
        whether to start a new session on it or keep the old model.  One session file never
        holds steps of two models."""
        if ref is None:
            return
        if ref == self.state.model_ref and self.state.model is not None:
            self.notify(f"{Path(ref).name} is the model in use", timeout=3)
            return
        why = self.session.model_mismatch(ref, self.mgr)
        if why is None:
            self.session.switch_model(ref, self.mgr)
            self._use_model(ref)
            return
        dirty = self.session.dirty

        async def decided(answer: str | None) -> None:
            if answer == "new":
                if dirty:
                    discard_recovery(self.state.recovery)
                await self._new_session(ref)
            elif answer == "save" and self.session.path is not None:
                if self._save(None):
                    await self._new_session(ref)
            elif answer == "save":
                self.push_screen(
                    PathScreen("Save session as", check=self._check_save_path), saved_to
                )

        def saved_to(path: str | None) -> None:
            if path and self._save(Path(path).expanduser()):
                self.call_later(self._new_session, ref)

        answers = [("new", "New session"), ("keep", "Keep the old model")]
        if dirty:
            answers = [
                ("save", "Save, then switch"),
                ("new", "Switch, don't save"),
                ("keep", "Keep the old model"),
            ]
        self.push_screen(
            ChoiceScreen(
                f"{why}. A session holds the steps of one model: start a new session on "
                f"{Path(ref).name}, or keep {Path(self.state.model_ref).name}?",
                answers,
            ),
            decided,
        )

    async def _new_session(self, ref: str) -> None:
        """A new, empty session on ``ref``: fresh panes, the prompt kept."""
        self.state.adopt(Session.new(ref, manager=self.mgr))
        self._last_shown = None
        await self.main.fresh_panes()
        self._use_model(ref)
        self.query_one(PromptBar).prompt.focus()

    def _use_model(self, ref: str) -> None:
        """Show the session's model, now ``ref`` (loaded): work still running on the old
        one is dropped, the Model pane and the token strip show the new one."""
        self.state.next_run()
        self.workers.cancel_group(self, "compute")
        self.state.busy = None
        model = self.mgr.model(ref)
        self.state.model, self.state.model_ref = model, ref
        self.query_one(ModelPane).show_model(model, Path(ref).name)
        self._prompt_changed()
        self.show_status()
        self.notify(f"model: {Path(ref).name}", timeout=3)

    # ------------------------------------------------------------------ sessions
    def _tell_copy(self, why: str) -> None:
        source = self.state.copy_of
        name = source.name if source is not None else "the session"
        self.notify(
            f"{name} is {why}: it opened as a copy and is never written; ctrl+s saves the "
            "copy under a new name",
            timeout=8,
        )

    def _check_save_path(self, text: str) -> tuple[str, bool] | None:
        """What stands in the way of saving to ``text``: (message, whether Enter again
        goes ahead)."""
        path = Path(text).expanduser()
        if path.is_dir():
            return f"{path} is a folder: give a file name, e.g. {path / 'session.toml'}", False
        if path.suffix != ".toml":
            return "a session file name ends in .toml", False
        why = opens_as_copy(path) or (
            "the file this copy came from" if path == self.state.copy_of else None
        )
        if why is not None:
            return f"{path.name} is {why}: choose another path", False
        if not path.parent.exists():
            return f"the folder {path.parent} does not exist: Enter again creates it", True
        if path.exists() and path != self.session.path:
            return f"{path.name} exists: Enter again overwrites it", True
        return None

    def action_export(self) -> None:
        """Export the step last shown (else the last step) to JSON and CSV beside the session,
        and the chart pane's chart of it, if it draws one, as text, SVG and PNG."""
        steps = self.session.steps
        if not steps:
            self.notify("the session has no steps: nothing to export", severity="warning")
            return
        step = next((s for s in steps if s is self._last_shown), steps[-1])
        try:
            chart = self.query_one(ChartsPane).chart_text(step)
            written = export_step(self.session, step, chart=chart)
        except (OSError, MlxterpError) as err:
            self.notify(error_text(err), severity="error", title="export failed", timeout=8)
            return
        self.notify(f"exported {files_text(written)}", timeout=6)

    def action_save(self) -> None:
        if self.session.path is None:
            self.action_save_as()
        else:
            self._save(None)

    def action_save_as(self) -> None:
        self.push_screen(PathScreen("Save session as", check=self._check_save_path), self._save_to)

    def _save_to(self, path: str | None) -> None:
        if path:
            self._save(Path(path).expanduser())

    def _save(self, path: Path | None) -> bool:
        try:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            written = self.session.save(path)
        except (OSError, MlxterpError) as err:
            self.notify(error_text(err), severity="error", title="save failed")
            return False
        self.state.copy_of = None
        discard_recovery(self.state.recovery)
        self.notify(f"saved {written.name}", timeout=3)
        self.show_status()
        return True

    def action_open(self) -> None:
        self.push_screen(PathScreen("Open session"), self._open_path)

    def _open_path(self, path: str | None) -> None:
        if path:
            self._busy("opening session")
            self._open(self.state.next_run(), Path(path).expanduser(), False)

    def _offer_recovered(self) -> None:
        found = recovery_files(self.state_folder)
        if not found:
            return
        newest = found[0]

        def decided(answer: str | None) -> None:
            if answer == "restore":
                self._busy("restoring unsaved work")
                self._open(self.state.next_run(), newest, True)
            elif answer == "discard":
                discard_recovery(newest)

        self.push_screen(
            ChoiceScreen(
                f"Unsaved work from an earlier run was kept ({newest.name}). Restore it, "
                "discard it, or decide later?",
                [("restore", "Restore"), ("discard", "Discard"), ("later", "Later")],
            ),
            decided,
        )

    def action_replay(self) -> None:
        if self._model_or_warn() is None:
            return
        self._busy("replaying")
        self._replay(self.state.next_run(), self.session)

    async def action_quit(self) -> None:
        """Quit; with unsaved work, ask first (save, quit without saving, or stay)."""
        if not self.session.dirty:
            discard_recovery(self.state.recovery)
            self.exit()
            return

        def decided(answer: str | None) -> None:
            if answer == "discard":
                discard_recovery(self.state.recovery)
                self.exit()
            elif answer == "save":
                if self.session.path is not None:
                    if self._save(None):
                        self.exit()
                else:
                    self.push_screen(
                        PathScreen("Save session as", check=self._check_save_path),
                        self._save_and_quit,
                    )

        self.push_screen(
            ChoiceScreen(
                f"The session has unsaved changes ({len(self.session.steps)} steps). Quit anyway?",
                [("save", "Save first"), ("discard", "Quit without saving"), ("stay", "Stay")],
            ),
            decided,
        )

    def _save_and_quit(self, path: str | None) -> None:
        if path and self._save(Path(path).expanduser()):
            self.exit()

    @on(ListView.Selected, "#history-list")
    async def _history_selected(self, event: ListView.Selected) -> None:
        if event.index is not None and event.index < len(self.session.steps):
            await self._shown(self.session.steps[event.index], switch=True)

    # ------------------------------------------------------------------ the prompt
    @on(Input.Changed, "#prompt")
    def _prompt_changed(self) -> None:
        """Tokenize the prompt once typing pauses (``token_delay``), off the UI thread; one
        timer serves a whole burst of keys."""
        self._typed_at = time.monotonic()
        if self.token_delay <= 0:
            self._tokenize_now()
        elif self._token_timer is None:
            self._token_timer = self.set_timer(self.token_delay, self._typing_paused)

    def _typing_paused(self) -> None:
        quiet = time.monotonic() - self._typed_at
        if quiet < self.token_delay:  # keys came since: wait for the rest of the pause
            self._token_timer = self.set_timer(self.token_delay - quiet, self._typing_paused)
            return
        self._token_timer = None
        self._tokenize_now()

    def _tokenize_now(self) -> None:
        if not self.main.is_attached:
            return
        bar, model = self.query_one(PromptBar), self.state.model
        if model is None or model.tokenizer is None or not bar.text:
            bar.show_tokens(
                [], 0, "(loading model…)" if model is None and bar.text else "(no tokens yet)"
            )
            return
        self._tokenize(model, bar.text, bar.chat)

    @on(Checkbox.Changed, "#prompt-chat")
    def _chat_switched(self) -> None:
        """The token strip follows the chat switch at once."""
        self._tokenize_now()

    def action_toggle_chat(self) -> None:
        """Flip the chat switch: the prompt goes as a user message through the template."""
        bar = self.query_one(PromptBar)
        bar.chat = not bar.chat
