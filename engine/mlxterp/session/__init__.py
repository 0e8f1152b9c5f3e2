"""Sessions: a model reference plus an ordered history of steps, saved as TOML, replayable.

``Session.new("demo", path)`` starts one; ``session.run(manager, "logit_lens", text=...)``
runs and records a step (and autosaves); ``replay(path)`` re-runs a saved session on a
freshly loaded model and compares every step with what was recorded.  No Textual here.
"""

from .cli import replay_main
from .replay import ReplayReport, StepReport, replay
from .session import Session, SessionManager, Step, summary_text
from .steps import KINDS
from .storage import FORMAT, SessionError

__all__ = [
    "FORMAT",
    "KINDS",
    "ReplayReport",
    "Session",
    "SessionError",
    "SessionManager",
    "Step",
    "StepReport",
    "replay",
    "replay_main",
    "summary_text",
]
