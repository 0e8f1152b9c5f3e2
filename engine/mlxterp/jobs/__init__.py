"""Dataset jobs: one analysis over a dataset, on one process or on N under ``mlx.launch``
(MLX's own distributed engine; no transport of ours).  ``mlxterp job FILE [--resume]``
runs a job file; see docs/scale.md."""

from .analyses import ANALYSES
from .run import Outcome, run_job
from .spec import Job, load_job
from .world import JobStopped, World, join

__all__ = ["ANALYSES", "Job", "JobStopped", "Outcome", "World", "join", "load_job", "run_job"]
