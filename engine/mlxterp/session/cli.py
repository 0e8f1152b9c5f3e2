"""``mlxterp replay FILE``: re-run a saved session headless (no Textual).

Exit codes: 0 every step matches, 1 a step differs, 2 the replay could not be done (bad
arguments, a file that cannot be read, a model that cannot be loaded, output that cannot
be written), always with one line on stderr saying why and never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from ..errors import MlxterpError
from .replay import replay
from .session import SessionManager


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _fail(message: str) -> int:
    print(f"mlxterp replay: {message}", file=sys.stderr)
    return 2


def replay_main(argv: list[str]) -> int:
    """``mlxterp replay FILE [--tolerance X] [--dequantize]``: 0 all match, 1 mismatch, 2
    not replayed."""
    parser = argparse.ArgumentParser(
        prog="mlxterp replay", description="Re-run a saved session and compare every step."
    )
    parser.add_argument("file")
    parser.add_argument(
        "--tolerance",
        type=_tolerance,
        default=1e-3,
        help="allowed difference per number: absolute up to 1, relative above (default 1e-3)",
    )
    parser.add_argument(
        "--dequantize",
        action="store_true",
        help="load a quantized model as plain layers: far faster on a CPU, more memory",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error (2); argparse printed why
        return int(stop.code or 0)
    try:
        manager = SessionManager(dequantize=args.dequantize)
        report = replay(args.file, manager, tolerance=args.tolerance)
    except MlxterpError as err:  # a file that cannot be read, a model that cannot load
        return _fail(str(err))
    except RecursionError:
        return _fail(f"{args.file} nests its data too deeply to replay")
    except MemoryError:
        return _fail(f"{args.file} is too large to replay in this much memory")
    # a terminal that cannot show a token prints it escaped rather than failing
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        print(report.format_text(), flush=True)
    except BrokenPipeError:  # `| head`: nobody reads the report any more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return _fail("the output was closed before the report was written")
    return 0 if report.ok else 1
