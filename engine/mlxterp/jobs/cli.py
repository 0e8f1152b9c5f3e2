"""``mlxterp job FILE [--resume] [--quiet]``: run a job file, alone or under
``mlx.launch -n N``.

Exit codes: 0 done; 2 the job cannot run (a bad job file, dataset or model; an output
folder holding other work); 3 stopped (another rank failed or stopped answering, or a
signal came).  Always one line on stderr saying why, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import MlxterpError
from .run import run_job
from .world import STOPPED, JobStopped


def job_main(argv: list[str]) -> int:
    """Run ``mlxterp job`` with ``argv``; the exit code."""
    parser = argparse.ArgumentParser(
        prog="mlxterp job",
        description="Run a dataset job (one process, or N under `mlx.launch -n N`).",
    )
    parser.add_argument("file", help="the job file (TOML; see docs/scale.md)")
    parser.add_argument("--resume", action="store_true", help="continue from completed shards")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:
        return int(stop.code or 0)
    try:
        outcome = run_job(args.file, resume=args.resume, progress=not args.quiet)
    except JobStopped as err:
        print(f"mlxterp job: {err}", file=sys.stderr, flush=True)
        return STOPPED
    except MlxterpError as err:
        print(f"mlxterp job: {err}", file=sys.stderr, flush=True)
        return 2
    print(
        f"mlxterp job: {outcome.shards} {outcome.unit} ({outcome.computed} computed by this rank, "
        f"{outcome.skipped} already complete), {outcome.tokens:,} tokens in "
        f"{outcome.seconds:.2f} s -> {outcome.output}",
        flush=True,
    )
    return 0
