"""Messages that workers post to the app: each carries what it computed, nothing more.

Workers never touch widgets or record anything; the app's handlers (on the UI thread) do.
A message from a run the user cancelled (``run_id`` no longer current) is dropped.
"""

from __future__ import annotations

from pathlib import Path

from textual.message import Message

from mlxterp.session import ReplayReport, Session, Step, TrainingProgress

from .state import ModelView


def error_text(err: BaseException) -> str:
    """One line saying what went wrong (the exception's own message, its type if empty)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return f"{type(err).__name__}: {first}"


def files_text(paths: list[Path]) -> str:
    """Files written side by side as one short line: their folder and common name once,
    the endings in braces (``/dir/work.step-0-lens.{json, csv}``), as a shell spells them."""
    names = [p.name for p in paths]
    common = ""
    if len(paths) > 1 and len({p.parent for p in paths}) == 1:
        low, high = min(names), max(names)  # every name shares what these two share
        pairs = enumerate(zip(low, high, strict=False))
        same = next((i for i, (a, b) in pairs if a != b), len(low))
        common = low[: low.rfind(".", 0, same) + 1]  # up to a dot: "x.step-1-a." not "x.step-1-"
    if not common:
        return ", ".join(map(str, paths))
    return f"{paths[0].parent / common}{{{', '.join(n[len(common) :] for n in names)}}}"


class ModelLoaded(Message):
    """The model of ``model_ref`` is loaded."""

    def __init__(self, run_id: int, model_ref: str, model: ModelView) -> None:
        super().__init__()
        self.run_id, self.model_ref, self.model = run_id, model_ref, model


class SessionOpened(Message):
    """A session file was read and its model loaded."""

    def __init__(self, run_id: int, session: Session, model: ModelView, recovered: bool) -> None:
        super().__init__()
        self.run_id, self.session, self.model = run_id, session, model
        self.recovered = recovered  # read from a recovery file, not a file the user saved


class StepComputed(Message):
    """A step finished computing; the UI thread records it unless its run was cancelled."""

    def __init__(self, run_id: int, step: Step) -> None:
        super().__init__()
        self.run_id, self.step = run_id, step


class TokenStreamed(Message):
    """A generate step made one more token (``token_id``); the step itself follows."""

    def __init__(self, run_id: int, token_id: int) -> None:
        super().__init__()
        self.run_id, self.token_id = run_id, token_id


class TrainingProgressed(Message):
    """A train_sae step is ``progress`` along (posted a few times a second at most)."""

    def __init__(self, run_id: int, progress: TrainingProgress) -> None:
        super().__init__()
        self.run_id, self.progress = run_id, progress


class ReplayDone(Message):
    """A replay finished with its report."""

    def __init__(self, run_id: int, report: ReplayReport) -> None:
        super().__init__()
        self.run_id, self.report = run_id, report


class WorkFailed(Message):
    """A worker's work was refused; ``text`` is the one-line reason to show."""

    def __init__(self, run_id: int, what: str, text: str) -> None:
        super().__init__()
        self.run_id, self.what, self.text = run_id, what, text


class TokensReady(Message):
    """The prompt ``text`` tokenized (``chat``: through the chat template): ``(piece, id)``
    of its first tokens and the count."""

    def __init__(
        self, text: str, pieces: list[tuple[str, int]], count: int, note: str, chat: bool = False
    ) -> None:
        super().__init__()
        self.text, self.pieces, self.count, self.note = text, pieces, count, note
        self.chat = chat  # tokenized as one user message through the chat template


__all__ = [
    "ModelLoaded",
    "ReplayDone",
    "SessionOpened",
    "StepComputed",
    "TokensReady",
    "TrainingProgressed",
    "WorkFailed",
    "error_text",
]
