"""Export of a recorded step to files beside the session: JSON (the step's kind, params
and summary, as plain values), where the summary is a table CSV, and given a chart of it
(terminal text, as ``plotting.to_text`` draws one) the chart as plain text, SVG and PNG.

A summary is a table when it holds list-of-lists matrices of one shape (one CSV row per
cell, labelled by the summary's lists as long as the rows and as long as the columns, e.g.
the lens's layers x positions) or, failing that, lists of one length (one CSV row per
item, e.g. patching's layers and recovery).  Anything else exports as JSON only.  Tokens
stay raw.  Files are written atomically and never replace an existing file: a taken name
gets a numeric suffix (``-2``, ``-3``, ...).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import plotext

from ..errors import SessionError
from ..files import atomic_write
from ..terminal_image import text_png, text_svg
from .session import Session, Step

UNSAVED_STEM = "mlxterp-session"  # the file stem of an unsaved session's exports


def plain(value: Any) -> Any:
    """``value`` as JSON-ready plain values: arrays and tuples become lists, and a number
    that is not finite becomes None (``null`` in JSON, an empty CSV cell), since standard
    JSON has no NaN or infinity."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray | np.generic):
        return plain(value.tolist())
    if hasattr(value, "tolist"):  # an mx.array
        return plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _scalar(v: Any) -> bool:
    return isinstance(v, str | int | float | bool) or v is None


def _vector(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(_scalar(x) for x in v)


def _matrix(v: Any) -> bool:
    return (
        isinstance(v, list)
        and len(v) > 0
        and all(_vector(r) for r in v)
        and len({len(r) for r in v}) == 1
    )


def table(summary: dict[str, Any]) -> tuple[list[str], list[list[Any]]] | None:
    """The summary as a CSV header and rows, or None if it is not tabular."""
    summary = plain(summary)
    matrices = {k: v for k, v in summary.items() if _matrix(v)}
    vectors = {k: v for k, v in summary.items() if _vector(v)}
    if matrices:
        first = next(iter(matrices.values()))
        n_rows, n_cols = len(first), len(first[0])
        cells = {k: v for k, v in matrices.items() if (len(v), len(v[0])) == (n_rows, n_cols)}
        # the rows' label: the first list as long as the rows; the columns': every other
        # list as long as the columns (a lens's positions and tokens)
        row_key = next((k for k, v in vectors.items() if len(v) == n_rows), None)
        col_keys = [k for k, v in vectors.items() if k != row_key and len(v) == n_cols]
        header = ["row", *([row_key] if row_key else []), "column", *col_keys, *cells]
        rows = []
        for i in range(n_rows):
            for j in range(n_cols):
                row = [i, *([vectors[row_key][i]] if row_key else []), j]
                row += [vectors[k][j] for k in col_keys]
                rows.append(row + [m[i][j] for m in cells.values()])
        return header, rows
    if not vectors:
        return None
    length = len(next(iter(vectors.values())))
    columns = {k: v for k, v in vectors.items() if len(v) == length}
    return list(columns), [list(r) for r in zip(*columns.values(), strict=True)]


def _free_stem(folder: Path, stem: str, suffixes: tuple[str, ...]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``, ...: the first with no file of any suffix."""
    n, candidate = 1, stem
    while any((folder / f"{candidate}{s}").exists() for s in suffixes):
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


def export_step(
    session: Session,
    step: Step | int | None = None,
    folder: str | Path | None = None,
    chart: str | None = None,
) -> list[Path]:
    """Write ``step`` (a recorded step or its index; default the last) of ``session`` as
    ``<session stem>.step-<index>-<kind>.json`` and, where its summary is tabular, ``.csv``,
    in ``folder`` (default: beside the session file, or the current directory for an
    unsaved session).  ``chart``, a chart of the step as terminal text (e.g.
    ``plotting.to_text(fig)``; ANSI colours allowed), is written beside them as
    ``.chart.txt`` (plain), ``.chart.svg`` and ``.chart.png`` (coloured,
    ``terminal_image.text_svg`` and ``text_png``), each headed by the step's kind and
    parameters.  Returns the paths written.  Raises
    SessionError when there is no such step, OSError when the folder cannot be written."""
    if not session.steps:
        raise SessionError("the session has no steps: nothing to export")
    if step is None:
        step = session.steps[-1]
    elif isinstance(step, int):
        if not 0 <= step < len(session.steps):
            raise SessionError(f"no step {step}: the session has {len(session.steps)} steps")
        step = session.steps[step]
    if folder is None:
        folder = session.path.parent if session.path is not None else Path.cwd()
    folder = Path(folder)
    base = session.path.stem if session.path is not None else UNSAVED_STEM
    summary = plain(step.summary)
    tabular = table(summary)
    suffixes: tuple[str, ...] = (".json", ".csv") if tabular else (".json",)
    if chart is not None:
        suffixes += (".chart.txt", ".chart.svg", ".chart.png")
    stem = _free_stem(folder, f"{base}.step-{step.index}-{step.kind}", suffixes)
    document = {
        "kind": step.kind,
        "index": step.index,
        "created": step.created,
        "model": session.model_ref,
        "params": plain(step.params),
        "summary": summary,
    }
    written = [folder / f"{stem}.json"]
    text = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write(written[0], lambda p: p.write_text(text, encoding="utf-8"))
    params = json.dumps(plain(step.params), ensure_ascii=False)
    if tabular:
        header, rows = tabular

        def write_csv(p: Path) -> None:
            with open(p, "w", newline="", encoding="utf-8") as handle:
                out = csv.writer(handle)
                out.writerow([f"# {step.kind} step {step.index}", f"params: {params}"])
                out.writerow(header)
                out.writerows(rows)

        written.append(folder / f"{stem}.csv")
        atomic_write(written[-1], write_csv)
    if chart is not None:
        title = f"{step.kind} step {step.index}, params: {params}"
        plain_chart = f"# {title}\n{plotext.uncolorize(chart).rstrip()}\n"
        svg, png = text_svg(chart, title), text_png(chart, title)
        txt_path, svg_path, png_path = (folder / f"{stem}.chart.{s}" for s in ("txt", "svg", "png"))
        atomic_write(txt_path, lambda p: p.write_text(plain_chart, encoding="utf-8"))
        atomic_write(svg_path, lambda p: p.write_text(svg, encoding="utf-8"))
        atomic_write(png_path, lambda p: p.write_bytes(png))
        written += [txt_path, svg_path, png_path]
    return written
