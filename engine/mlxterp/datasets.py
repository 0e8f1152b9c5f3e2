"""Datasets read from files: a record per non-empty line of a ``.txt`` file (its text) or
of a ``.jsonl`` file (its JSON value: a string, a list of token ids, or an object such as
``{"text": ...}`` or ``{"clean": ..., "corrupted": ..., "answer": [...]}``); texts, the
records that are one; and the texts that ship beside the demo model.  Bad files are an
:class:`InputError` that says which line is wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import InputError
from .loading import DEMO_DIR

MAX_TEXTS_BYTES = 256 * 2**20  # a larger file is refused: texts are read whole
DEMO_TEXTS = DEMO_DIR / "texts.txt"


def read_records(path: str | Path) -> list[Any]:
    """The records of a ``.txt`` (a line each) or ``.jsonl`` file, in order."""
    where = Path(path).expanduser()
    if where.suffix not in (".txt", ".jsonl"):
        raise InputError(f"records come from a .txt (a text per line) or .jsonl file, not {where}")
    try:
        if where.stat().st_size > MAX_TEXTS_BYTES:
            raise InputError(f"{where} is over {MAX_TEXTS_BYTES // 2**20} MiB: split it")
        raw = where.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"no dataset file at {where}") from None
    except IsADirectoryError:
        raise InputError(f"{where} is a folder; a dataset is a file") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{where} is not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise InputError(f"cannot read {where}: {err.strerror}") from None
    lines = raw.splitlines()
    records = (
        [_json(line, n, where) for n, line in enumerate(lines, 1) if line.strip()]
        if where.suffix == ".jsonl"
        else [line for line in lines if line.strip()]
    )
    if not records:
        raise InputError(f"{where} has no records")
    return records


def _json(line: str, number: int, where: Path) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(f"{where}, line {number}: not JSON ({err.msg})") from None


def read_texts(path: str | Path) -> list[str]:
    """The texts of a ``.txt`` (a line each) or ``.jsonl`` file (a string or
    ``{"text": ...}`` a line), in order."""
    return [
        text_of(record, f"{path}, record {n}") for n, record in enumerate(read_records(path), 1)
    ]


def text_of(record: Any, where: str) -> str:
    """A record's text: the record itself, or its ``"text"``."""
    text = record.get("text") if isinstance(record, dict) else record
    if not isinstance(text, str) or not text.strip():
        raise InputError(f'{where}: expected a text or {{"text": "..."}}')
    return text


def demo_texts() -> list[str]:
    """800 lines of the demo model's corpus (not its training lines): the texts the
    workbench uses when given no file (``scripts/train_demo_model.py --texts-only``)."""
    return read_texts(DEMO_TEXTS)
