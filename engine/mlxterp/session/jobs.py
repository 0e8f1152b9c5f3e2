"""Dataset jobs for the workbench: one job run alone, in-process, on the thread the session
layer runs its MLX work on (so a job and a step never evaluate at once)."""

from __future__ import annotations

from pathlib import Path

from ..jobs import JobListener, Outcome, run_job
from .locking import on_mlx_thread


def run_job_alone(path: str | Path, resume: bool, on_progress: JobListener) -> Outcome:
    """Run the job file at ``path`` (see docs/scale.md) with no bar and no signal handling;
    ``on_progress`` hears each shard or step and a ``False`` from it stops the job
    (``JobStopped``; ``resume`` continues it later)."""
    return on_mlx_thread(
        lambda: run_job(path, resume=resume, progress=False, signals=False, on_progress=on_progress)
    )
