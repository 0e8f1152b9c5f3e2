"""Messages that workers post to the app; only the app's handlers touch widgets."""

from __future__ import annotations

from typing import Any

from textual.message import Message


class ModelReady(Message):
    """The model finished loading (and the session, if one was opened, is in place)."""

    def __init__(self, model: Any, session: Any) -> None:
        super().__init__()
        self.model = model
        self.session = session


class StepDone(Message):
    """A session step finished; ``step`` is the session's ``Step``."""

    def __init__(self, step: Any) -> None:
        super().__init__()
        self.step = step


class ReplayDone(Message):
    """A replay finished with its report."""

    def __init__(self, report: Any) -> None:
        super().__init__()
        self.report = report


class WorkFailed(Message):
    """A worker raised; ``text`` is the one-line reason to show."""

    def __init__(self, what: str, text: str) -> None:
        super().__init__()
        self.what = what
        self.text = text
