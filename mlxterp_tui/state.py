"""The workbench's state, apart from its widgets: the model, the session (which owns every
step and every intervention), the running work, and where unsaved work is kept.

Widgets render this state; only the UI thread changes it.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mlxterp.session import Session, Step, is_chat

STATE_ENV = "MLXTERP_STATE_DIR"
SHIPPED_SESSIONS = Path(__file__).resolve().parent.parent / "sessions"


class ModelView(Protocol):
    """What the workbench reads of a loaded model (tokens, names, sizes)."""

    @property
    def tokenizer(self) -> object: ...
    @property
    def num_layers(self) -> int: ...
    @property
    def hidden_size(self) -> int | None: ...
    @property
    def vocab_size(self) -> int | None: ...
    @property
    def quantized_on_cpu(self) -> bool: ...
    def encode(self, text: str) -> list[int]: ...
    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]: ...
    def token_to_str(self, token_id: int) -> str: ...
    def decode(self, tokens: list[int]) -> str: ...
    def token_id(self, token: int | str) -> int: ...
    def resolve(self, name: str) -> str: ...
    def named_modules(self) -> Iterator[tuple[str, object]]: ...


Prompt = str | list[dict[str, str]]
"""What the prompt runs: its text, or the text as one user message of a chat."""

PROMPT_KEYS = ("text", "messages", "prompt", "clean", "corrupted", "positive", "negative")


def user_message(text: str) -> list[dict[str, str]]:
    """``text`` as a chat of one user message (what the chat switch sends)."""
    return [{"role": "user", "content": text}]


def prompt_text(value: Any) -> str:
    """What a field shows of a recorded prompt: text as it is, a chat's last message, the
    first of a batch; token ids have no text to show (empty)."""
    if isinstance(value, str):
        return value
    if is_chat(value):
        return str(value[-1]["content"])
    if isinstance(value, list) and value and (isinstance(value[0], str) or is_chat(value[0])):
        return prompt_text(value[0])
    return ""


def shown(step: Step) -> Step:
    """``step`` as the panes show it: a batch (recorded by a script) as its first prompt or
    pair, and prompts as the text a field holds."""
    summary, result = step.summary, step.result
    if isinstance(summary.get("batch"), list) and summary["batch"]:
        summary = summary["batch"][0]
        result = result[0] if isinstance(result, list) and result else None
    params = {k: (prompt_text(v) if k in PROMPT_KEYS else v) for k, v in step.params.items()}
    if summary is step.summary and params == step.params:
        return step
    return dataclasses.replace(step, params=params, summary=summary, result=result)


def state_dir() -> Path:
    """Where recovery files live: ``$MLXTERP_STATE_DIR``, else ``$XDG_STATE_HOME/mlxterp``,
    else ``~/.local/state/mlxterp``."""
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV])
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "mlxterp"


def new_recovery_path(folder: Path) -> Path:
    """A recovery file of its own for this run (two workbenches never share one)."""
    return folder / f"recovery-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.toml"


def recovery_files(folder: Path) -> list[Path]:
    """The recovery files left in ``folder`` by earlier runs, newest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("recovery-*.toml") if p.is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def discard_recovery(path: Path) -> None:
    """Delete a recovery file and the array sidecars saved beside it."""
    for sidecar in path.parent.glob(f"{path.stem}.*.safetensors"):
        sidecar.unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def opens_as_copy(path: Path) -> str | None:
    """Why the file at ``path`` must not be written back (a shipped example, a read-only
    file or folder), or ``None`` when the user may save over it."""
    where = path.resolve()
    if where.parent == SHIPPED_SESSIONS:
        return "a shipped example"
    try:
        mode = where.stat().st_mode
    except OSError:
        return None
    writable = mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    if not writable or not os.access(where, os.W_OK) or not os.access(where.parent, os.W_OK):
        return "read-only"
    return None


@dataclass
class WorkbenchState:
    """Everything the app knows besides what its widgets show."""

    model_ref: str
    session: Session
    recovery: Path
    model: ModelView | None = None
    busy: str | None = None
    run_id: int = 0  # the run whose result is awaited; a cancel moves it on
    copy_of: Path | None = None  # the file the session was opened from as a copy
    baselines: dict[tuple[str, ...], dict] = field(default_factory=dict)
    last_lens: dict | None = None

    def adopt(self, session: Session) -> str | None:
        """Make ``session`` current: it autosaves to this run's recovery file only, and a
        shipped or read-only file becomes a copy; returns why it is a copy, if it is."""
        self.session, self.model_ref = session, session.model_ref
        try:
            self.recovery.parent.mkdir(parents=True, exist_ok=True)
            session.autosave_path = self.recovery
        except OSError:
            session.autosave_path = None  # nowhere to keep unsaved work: quit still asks
        self.copy_of, why = None, None
        if session.path is not None:
            why = opens_as_copy(session.path)
            if why is not None:
                self.copy_of, session.path = session.path, None
        self.baselines, self.last_lens = baselines(session.steps)
        return why

    def next_run(self) -> int:
        """A new run id: results of every earlier run are dropped when they arrive."""
        self.run_id += 1
        return self.run_id


def baselines(steps: list[Step]) -> tuple[dict[tuple[str, ...], dict], dict | None]:
    """Lens summaries run with no intervention active, by their tokens, and the last lens
    summary — read back from a session's history."""
    found: dict[tuple[str, ...], dict] = {}
    last: dict | None = None
    active = False
    for step in steps:
        if step.kind == "interventions":
            active = bool(step.summary.get("active"))
        elif step.kind == "logit_lens":
            last = step.summary
            if not active:
                found[tuple(step.summary.get("tokens") or ())] = step.summary
    return found, last
