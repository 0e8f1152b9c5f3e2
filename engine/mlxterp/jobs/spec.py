"""Job files: TOML, data only, in the style of a session.  One analysis over one dataset on
one model, written to one output folder::

    [job]
    analysis = "collect"       # collect, activation_patching, attribution_patching,
                               # causal_tracing, lens, train_sae
    model = "demo"             # a model reference, as a session names its model
    output = "acts"            # a folder, relative to this file
    timeout = 300              # seconds a rank waits for the others (optional)
    dequantize = true          # a quantized model as plain layers: fast on CPU (optional)

    [dataset]
    path = "texts.txt"         # .txt or .jsonl, relative to this file; or records = [...]
    limit = 1000               # the first records only (optional)
    per_shard = 32             # records per shard: the unit of work, of output and of resume

    [params]                   # the analysis's own (see docs/scale.md)
    components = ["layers.8"]

Everything is checked when the file is read; a mistake is an :class:`InputError` naming
the table and key.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..datasets import read_records
from ..errors import InputError

TABLES = {"job", "dataset", "params"}
JOB_KEYS = {"analysis", "model", "output", "timeout", "dequantize"}
DATASET_KEYS = {"path", "records", "limit", "per_shard"}
DEFAULT_TIMEOUT = 300.0
DEFAULT_PER_SHARD = 32


@dataclass
class Job:
    """A job as its file describes it, the dataset read."""

    file: Path
    analysis: str
    model: str
    output: Path
    records: list[Any]
    per_shard: int = DEFAULT_PER_SHARD
    timeout: float = DEFAULT_TIMEOUT
    params: dict[str, Any] = field(default_factory=dict)
    dequantize: bool = False  # load a quantized model as plain layers (InterpretableModel)

    @property
    def shards(self) -> list[tuple[int, int]]:
        """``[start, end)`` of the records of each shard, in order."""
        n, size = len(self.records), self.per_shard
        return [(start, min(n, start + size)) for start in range(0, n, size)]


def load_job(path: str | Path, analyses: set[str]) -> Job:
    """The job described by the TOML file at ``path`` (``analyses``: the names known)."""
    file = Path(path).expanduser()
    try:
        document = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"no job file at {file}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read the job file {file}: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{file} is not TOML: {err}") from None
    _only(document, TABLES, "the job file")
    job = _table(document, "job")
    dataset = _table(document, "dataset")
    params = document.get("params", {})
    if not isinstance(params, dict):
        raise InputError("[params] must be a table")
    _only(job, JOB_KEYS, "[job]")
    _only(dataset, DATASET_KEYS, "[dataset]")
    analysis = _text(job, "analysis", "[job]")
    if analysis not in analyses:
        raise InputError(f"[job] analysis {analysis!r} is not one of {', '.join(sorted(analyses))}")
    here = file.resolve().parent
    model = _text(job, "model", "[job]")
    if (here / model).exists():  # a model folder or file beside the job file
        model = str(here / model)
    timeout = job.get("timeout", DEFAULT_TIMEOUT)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not (0 < timeout < math.inf)
    ):
        raise InputError(f"[job] timeout must be a number of seconds > 0, got {timeout!r}")
    dequantize = job.get("dequantize", False)
    if not isinstance(dequantize, bool):
        raise InputError(f"[job] dequantize must be true or false, got {dequantize!r}")
    return Job(
        file=file,
        analysis=analysis,
        model=model,
        output=here / _text(job, "output", "[job]"),
        records=_records(dataset, here),
        per_shard=_count(dataset, "per_shard", DEFAULT_PER_SHARD),
        timeout=float(timeout),
        params=params,
        dequantize=dequantize,
    )


def _records(dataset: dict[str, Any], here: Path) -> list[Any]:
    if ("path" in dataset) == ("records" in dataset):
        raise InputError("[dataset] needs either path (a .txt or .jsonl file) or records")
    if "path" in dataset:
        records = read_records(here / _text(dataset, "path", "[dataset]"))
    else:
        records = dataset["records"]
        if not isinstance(records, list) or not records:
            raise InputError("[dataset] records must be a non-empty list")
    limit = _count(dataset, "limit", len(records))
    return records[:limit]


def _table(document: dict[str, Any], name: str) -> dict[str, Any]:
    table = document.get(name)
    if not isinstance(table, dict):
        raise InputError(f"the job file needs a [{name}] table")
    return table


def _only(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise InputError(
            f"{where} has no {', '.join(unknown)}; it takes {', '.join(sorted(allowed))}"
        )


def _text(table: dict[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where} needs {key} (a string)")
    return value


def _count(table: dict[str, Any], key: str, default: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"[dataset] {key} must be a whole number >= 1, got {value!r}")
    return value
