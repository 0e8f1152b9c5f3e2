"""Sessions: a model reference plus an ordered history of steps, saved as TOML, replayable.

``Session.new("demo", path)`` starts one; ``session.run(manager, "logit_lens", text=...)``
runs and records a step (and autosaves); ``replay(path)`` re-runs a saved session on a
freshly loaded model and compares every step with what was recorded.  No Textual here:
this package is everything the workbench imports from the engine.
"""

from ..blas import main as blas_main
from ..datasets import demo_texts, read_texts  # texts an SAE trains and is browsed on
from ..doctor import main as doctor_main  # `mlxterp doctor`
from ..errors import InputError, InterventionError, MlxterpError, SessionError
from ..inputs import is_chat  # a recorded prompt may be a chat
from ..jobs import JobProgress, JobStopped, Outcome, read_output  # the workbench runs jobs
from ..jobs.cli import job_main  # `mlxterp job`
from ..loading import model_choices  # the models a session can be switched to
from ..model_sources import FoundModel
from ..plotting import (  # the workbench draws as the plots do
    bar_chart,
    color_at,
    line_chart,
    matrix_chart,
    to_text,
)
from ..sae import SAE, TrainingProgress  # the workbench trains and browses SAEs
from ..sae.io import sae_from_description
from ..token_display import display_token, token_from_display  # tokens shown alike
from .active import (
    ACTIONS,
    INTERVENTION_KINDS,
    InterventionEntry,
    InterventionKind,
    intervention_from_description,
)
from .cli import replay_main
from .export import export_step
from .jobs import run_job_alone
from .replay import ReplayReport, StepReport, replay
from .session import Session, SessionManager, Step
from .steps import KINDS, Comparison, Difference, compare_steps
from .storage import FORMAT

__all__ = [
    "ACTIONS",
    "FORMAT",
    "INTERVENTION_KINDS",
    "KINDS",
    "SAE",
    "Comparison",
    "Difference",
    "FoundModel",
    "InputError",
    "InterventionEntry",
    "InterventionError",
    "InterventionKind",
    "JobProgress",
    "JobStopped",
    "MlxterpError",
    "Outcome",
    "ReplayReport",
    "Session",
    "SessionError",
    "SessionManager",
    "Step",
    "StepReport",
    "TrainingProgress",
    "bar_chart",
    "blas_main",
    "color_at",
    "compare_steps",
    "demo_texts",
    "display_token",
    "doctor_main",
    "export_step",
    "intervention_from_description",
    "is_chat",
    "job_main",
    "line_chart",
    "matrix_chart",
    "model_choices",
    "read_output",
    "read_texts",
    "replay",
    "replay_main",
    "run_job_alone",
    "sae_from_description",
    "to_text",
    "token_from_display",
]
