"""``python -m mlxterp.jobs FILE [--resume]``: ``mlxterp job`` for launchers that start a
Python module on each host (``mlx.launch --python``)."""

import sys

from .cli import job_main

sys.exit(job_main(sys.argv[1:]))
