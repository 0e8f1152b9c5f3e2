"""Dataset jobs: one analysis over a dataset, on one process or on N under ``mlx.launch``
(MLX's own distributed engine; no transport of ours).  ``mlxterp job FILE [--resume]``
runs a job file; see docs/scale.md."""

from .analyses import ANALYSES
from .progress import JobListener, JobProgress
from .run import Outcome, read_output, run_job
from .spec import Job, load_job
from .world import JobStopped, World, join

__all__ = [
    "ANALYSES",
    "Job",
    "JobListener",
    "JobProgress",
    "JobStopped",
    "Outcome",
    "World",
    "join",
    "load_job",
    "read_output",
    "run_job",
]
