"""``mlxterp replay FILE``: re-run a saved session headless (no Textual)."""

from __future__ import annotations

import argparse

from ..errors import SessionError
from .replay import replay


def replay_main(argv: list[str]) -> int:
    """``mlxterp replay FILE [--tolerance X]``: 0 all match, 1 mismatch, 2 unreadable/no model."""
    parser = argparse.ArgumentParser(
        prog="mlxterp replay", description="Re-run a saved session and compare every step."
    )
    parser.add_argument("file")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        help="allowed numeric difference, absolute or relative (default 1e-3)",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error (2); argparse printed why
        return int(stop.code or 0)
    try:
        report = replay(args.file, tolerance=args.tolerance)
    except SessionError as err:
        print(f"mlxterp replay: {err}")
        return 2
    print(report.format_text())
    return 0 if report.ok else 1
