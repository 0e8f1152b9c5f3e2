"""``mlxterp``: open the workbench (``--model``, ``open FILE``), replay a session headless,
run a dataset job (``job FILE``, under ``mlx.launch`` too), or describe what a model loads
as (``doctor MODEL``)."""

from __future__ import annotations

import argparse
import sys

USAGE = """mlxterp [--model NAME_OR_PATH]      open the workbench (default model: demo)
       mlxterp open FILE.toml               open a saved session
       mlxterp --dequantize ...             quantized models as plain layers (fast on CPU)
       mlxterp replay FILE [options]        replay a session headless (exit 1 on mismatch)
       mlxterp job FILE [--resume]          run a dataset job (N ranks: mlx.launch -n N --)
       mlxterp blas [--install | --remove]  which BLAS MLX uses (Linux); the OpenBLAS hook
       mlxterp doctor MODEL [options]       what a model loads as: source, config, parity"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlxterp",
        usage=USAGE,
        description="Keyboard-driven interpretability workbench for MLX language models. "
        "Press F1 inside the app for every key.",
    )
    parser.add_argument(
        "--model", default="demo", help="model name or folder (default: the embedded demo model)"
    )
    parser.add_argument(
        "--dequantize",
        action="store_true",
        help="load quantized models as plain layers: far faster on a CPU, more memory",
    )
    sub = parser.add_subparsers(dest="command")
    opener = sub.add_parser("open", help="open a saved session file")
    opener.add_argument("file", help="session file (.toml)")
    opener.add_argument(  # after the file too; SUPPRESS keeps a --dequantize given before
        "--dequantize", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    sub.add_parser("replay", help="replay a session headless: mlxterp replay FILE", add_help=False)
    sub.add_parser("job", help="run a dataset job: mlxterp job FILE [--resume]", add_help=False)
    sub.add_parser("blas", help="which BLAS MLX uses: mlxterp blas [--install]", add_help=False)
    sub.add_parser("doctor", help="what a model loads as: mlxterp doctor MODEL", add_help=False)
    return parser


def _fail(message: str) -> int:
    print(f"mlxterp: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mlxterp`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["replay"]:
        from mlxterp.session import replay_main

        return replay_main(argv[1:])
    if argv[:1] == ["job"]:
        from mlxterp.session import job_main

        return job_main(argv[1:])
    if argv[:1] == ["blas"]:
        from mlxterp.session import blas_main

        return blas_main(argv[1:])
    if argv[:1] == ["doctor"]:
        from mlxterp.session import doctor_main

        return doctor_main(argv[1:])
    args = _parser().parse_args(argv)
    from mlxterp.session import MlxterpError, Session, SessionManager

    from .app import WorkbenchApp
    from .messages import error_text

    manager, session = SessionManager(dequantize=args.dequantize), None
    try:
        if args.command == "open":
            session = Session.load(args.file, manager=manager)
        manager.model(session.model_ref if session is not None else args.model)
    except MlxterpError as err:
        return _fail(error_text(err))
    WorkbenchApp(args.model, session=session, manager=manager).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
