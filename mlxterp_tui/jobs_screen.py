"""Dataset jobs from the workbench (F12): type a job file, run it (or resume it), watch its
progress with tokens/s, stop it with Esc (what is done is kept), and read what it wrote.
A job runs alone here; several processes are ``mlx.launch -n N -- mlxterp job FILE``."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Checkbox, Input, ProgressBar, Static

from mlxterp.session import (
    JobProgress,
    MlxterpError,
    Outcome,
    read_output,
    run_job_alone,
)

from .messages import error_text
from .widgets import Field, FieldMessage, KeyButton

MEANS_SHOWN = 12  # numbers of a list shown in the result


class JobsScreen(ModalScreen[None]):
    """One job at a time: the file, resume, run; the progress; the result."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "stop_or_close", "Stop / close", id="job_close")
    ]

    def __init__(self) -> None:
        super().__init__()
        self.running = False
        self._stop = False

    def compose(self) -> ComposeResult:
        with Vertical(id="job-box", classes="modal-box"):
            yield Static("Dataset job (docs/scale.md)", classes="modal-title")
            with Horizontal(id="job-row"):
                yield Field(placeholder="job file: path/to/job.toml", id="job-path")
                yield Checkbox("resume", id="job-resume")
                yield KeyButton("Run", id="job-run", variant="primary", action="screen.run_job")
            yield FieldMessage(id="job-message")
            yield ProgressBar(total=1.0, show_eta=False, id="job-progress")
            yield Static("", id="job-status")
            with VerticalScroll(id="job-result-scroll"):
                yield Static("", id="job-result")
            yield Static("Enter runs · Esc stops a running job, else closes", classes="modal-hint")

    def on_mount(self) -> None:
        self.query_one("#job-path", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_run_job()

    def action_run_job(self) -> None:
        if self.running:
            return
        path = self.query_one("#job-path", Input).value.strip()
        message = self.query_one("#job-message", FieldMessage)
        if not path:
            message.say("type the path of a job file")
            return
        message.say(None)
        self.running, self._stop = True, False
        self.query_one("#job-progress", ProgressBar).update(total=1.0, progress=0.0)
        self.query_one("#job-status", Static).update(Text("starting (loading the model)…"))
        self.query_one("#job-result", Static).update("")
        self._run(path, self.query_one("#job-resume", Checkbox).value)

    @work(thread=True, exclusive=True, group="job", exit_on_error=False)
    def _run(self, path: str, resume: bool) -> None:
        def heard(progress: JobProgress) -> bool:
            self.app.call_from_thread(self._show_progress, progress)
            return not self._stop

        try:
            outcome = run_job_alone(path, resume, heard)
            result: Any = read_output(outcome.output)
        except MlxterpError as err:
            self.app.call_from_thread(self._failed, error_text(err))
            return
        self.app.call_from_thread(self._done, outcome, result)

    def _show_progress(self, progress: JobProgress) -> None:
        self.query_one("#job-progress", ProgressBar).update(progress=progress.fraction)
        self.query_one("#job-status", Static).update(
            Text(
                f"{progress.done:,} of {progress.total:,} {progress.unit} · "
                f"{progress.tokens:,} tokens · {progress.tokens_per_second:,.0f} tok/s"
                " (Esc stops)"
            )
        )

    def _failed(self, text: str) -> None:
        self.running = False
        self.query_one("#job-status", Static).update(Text(text, style="bold red"))

    def _done(self, outcome: Outcome, result: dict[str, Any]) -> None:
        self.running = False
        self.query_one("#job-progress", ProgressBar).update(progress=1.0)
        self.query_one("#job-status", Static).update(
            Text(
                f"done: {outcome.shards} {outcome.unit} ({outcome.computed} now, "
                f"{outcome.skipped} already complete), {outcome.tokens:,} tokens in "
                f"{outcome.seconds:.2f} s → {outcome.output}",
                style="green",
            )
        )
        self.query_one("#job-result", Static).update(result_text(result))

    def action_stop_or_close(self) -> None:
        if self.running:
            self._stop = True
            self.query_one("#job-status", Static).update(Text("stopping after this shard…"))
            return
        self.dismiss()


def result_text(result: dict[str, Any]) -> Text:
    """A job's summary or manifest as lines: plain values, lists shortened."""
    text = Text()
    for key, value in sorted(result.items()):
        if key == "shards":
            text.append(f"shards: {len(value)}\n")
        elif isinstance(value, dict):
            text.append(f"{key}:\n", style="bold")
            for inner, item in sorted(value.items()):
                text.append(f"  {inner}: {_short(item)}\n")
        else:
            text.append(f"{key}: {_short(value)}\n")
    return text


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        shown = ", ".join(_short(v) for v in value[:MEANS_SHOWN])
        return f"[{shown}{', …' if len(value) > MEANS_SHOWN else ''}]"
    return str(value)
