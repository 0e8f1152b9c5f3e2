"""Running a job: on one process, or unchanged on N under ``mlx.launch``.

The records are cut into shards (``per_shard`` each).  Shards already complete in the
output folder are skipped (``resume``); the rest are dealt out in rounds, shard
``todo[round * N + rank]`` to each rank.  A rank writes a ``collect`` shard itself; the rows
of the other analyses are gathered to rank 0, which writes them.  After every round the
ranks add up the tokens read (rank 0's progress bar shows tokens/s) — the exchange that
also finds a rank that stopped.  At the end rank 0 writes ``manifest.json`` (collect) or
``results.safetensors`` and ``summary.json``.  Every file is written atomically, so a job
stopped at any point leaves whole shards and ``--resume`` continues from them.  ``train_sae``
runs its own loop of optimizer steps (:mod:`.sae_job`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import mlx.core as mx
import numpy as np

from ..errors import InputError
from ..files import atomic_write
from ..model import InterpretableModel
from . import sae_job
from .analyses import ANALYSES, Analysis, Arrays
from .progress import JobListener, Reporter
from .spec import Job, load_job
from .world import World, join, launched, stop_on_signals

JOB_FILE = "job.json"  # what the output folder was made by (a resume must match it)


@dataclass
class Outcome:
    """What a finished job did on this rank."""

    output: Path
    shards: int  # in all (train_sae: optimizer steps)
    computed: int  # by this rank in this run
    skipped: int  # complete before it started
    tokens: int  # read by every rank in this run
    seconds: float
    unit: str = "shards"


def run_job(
    path: str | Path,
    resume: bool = False,
    progress: bool = True,
    signals: bool = True,
    on_progress: JobListener | None = None,
) -> Outcome:
    """Run the job of the file at ``path`` on this process's share (see module doc).
    ``progress``: rank 0's bar on stderr; ``signals``: SIGTERM and Ctrl-C stop the process
    (main thread only); ``on_progress`` (a job run alone, in-process) hears each shard or
    step, and a ``False`` stops the job there with :class:`JobStopped`."""
    if on_progress is not None and launched():
        raise InputError("on_progress is for a job run alone, in-process")
    if signals:
        stop_on_signals()
    job = load_job(path, {*ANALYSES, sae_job.NAME})
    world = join(job.timeout)
    model = InterpretableModel(job.model, dequantize=job.dequantize)
    analysis = ANALYSES.get(job.analysis)
    if analysis is not None:
        params = analysis.prepare(model, job.records, job.params)
    else:
        params = sae_job.prepare(model, job.records, job.params)
    started = time.perf_counter()
    identity = _identity(job, model, params)
    job.output.mkdir(parents=True, exist_ok=True)
    _check_output(job.output, identity, resume)
    world.meet("starting")  # every rank loaded the model and checked its output folder
    if world.leader:
        _write_json(job.output / JOB_FILE, identity)
    if analysis is None:  # train_sae: its own loop
        steps, before, tokens = sae_job.run(
            job, model, params, world, resume, progress, on_progress
        )
        seconds = time.perf_counter() - started
        return Outcome(job.output, steps + before, steps, before, tokens, seconds, "steps")
    shards = job.shards
    local = [
        _complete(job.output, analysis, i, shards[i], params, model) for i in range(len(shards))
    ]
    done = cast(list[int], world.all_max(mx.array(local), "finding completed shards").tolist())
    todo = [i for i, d in enumerate(done) if not d]
    rounds = math.ceil(len(todo) / world.size)
    computed = tokens = 0
    total = sum(end - start for start, end in shards)
    skipped = total - sum(shards[i][1] - shards[i][0] for i in todo)
    show = progress and world.leader
    with Reporter(job.analysis, total, skipped, "rec", show, on_progress) as reporter:
        for turn in range(rounds):
            slot = turn * world.size + world.rank
            mine = todo[slot] if slot < len(todo) else None
            read = _compute_shard(job, analysis, model, params, world, mine)
            computed += mine is not None
            own = 0 if mine is None else shards[mine][1] - shards[mine][0]
            counts = world.all_sum(mx.array([read, own]), "a round")
            read_all, records_all = cast(list[int], counts.tolist())
            tokens += read_all
            reporter.advance(records_all, tokens)
    world.all_sum(mx.array(0), "finishing")
    if world.leader:
        _finish(job, analysis, params, model)
    return Outcome(
        job.output,
        len(shards),
        computed,
        len(shards) - len(todo),
        tokens,
        time.perf_counter() - started,
    )


def _compute_shard(
    job: Job,
    analysis: Analysis,
    model: InterpretableModel,
    params: dict[str, Any],
    world: World,
    shard: int | None,
) -> int:
    """Compute ``shard`` (None: nothing this round) and write it, or gather it to rank 0;
    the tokens read."""
    computed = None
    if shard is not None:
        start, end = job.shards[shard]
        computed = analysis.compute(model, job.records[start:end], params)
    if not analysis.gathers:
        if computed is not None and shard is not None:
            _save(job.output / shard_name(shard), computed.arrays, job.shards[shard])
        return computed.tokens if computed is not None else 0
    shapes = analysis.row_shapes(model, params)
    rows = job.per_shard
    padded: Arrays = {}
    for key, shape in sorted(shapes.items()):
        values = computed.arrays[key] if computed is not None else mx.zeros((0, *shape))
        pad = mx.zeros((rows - values.shape[0], *shape), dtype=mx.float32)
        padded[key] = mx.concatenate([values.astype(mx.float32), pad])
    count = 0 if shard is None else job.shards[shard][1] - job.shards[shard][0]
    header = mx.array([-1 if shard is None else shard, count])
    headers = cast(list[list[int]], world.all_gather(header[None], "gathering rows").tolist())
    gathered = {k: world.all_gather(v, "gathering rows") for k, v in padded.items()}
    if world.leader:
        for rank, (index, count) in enumerate(headers):
            if index < 0:
                continue
            part = {k: v[rank * rows : rank * rows + count] for k, v in gathered.items()}
            _save(job.output / part_name(index), part, job.shards[index])
    return computed.tokens if computed is not None else 0


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def part_name(index: int) -> str:
    return f"part-{index:05d}.safetensors"


def _save(path: Path, arrays: Arrays, records: tuple[int, int]) -> None:
    metadata = {"records": f"{records[0]}-{records[1]}"}
    atomic_write(path, lambda tmp: mx.save_safetensors(str(tmp), arrays, metadata=metadata))


def _load(path: Path) -> tuple[Arrays, dict[str, str]] | None:
    """A shard file's arrays and metadata; None if it is missing or cannot be read."""
    if not path.is_file():
        return None
    try:
        arrays, metadata = mx.load(str(path), return_metadata=True)
    except (RuntimeError, ValueError, OSError):
        return None
    return cast(Arrays, arrays), cast(dict[str, str], metadata)


def _complete(
    folder: Path,
    analysis: Analysis,
    index: int,
    records: tuple[int, int],
    params: dict[str, Any],
    model: InterpretableModel,
) -> int:
    """1 when shard ``index`` is in ``folder`` whole, for these records, else 0."""
    name = part_name(index) if analysis.gathers else shard_name(index)
    found = _load(folder / name)
    if found is None:
        return 0
    arrays, metadata = found
    if metadata.get("records") != f"{records[0]}-{records[1]}":
        return 0
    n = records[1] - records[0]
    if analysis.gathers:
        keys = analysis.row_shapes(model, params)
        return int(set(arrays) == set(keys) and all(a.shape[0] == n for a in arrays.values()))
    lengths = arrays.get("lengths")
    return int(
        lengths is not None
        and lengths.shape == (n,)
        and all(c in arrays and arrays[c].shape[0] == _total(lengths) for c in params["components"])
    )


def _identity(job: Job, model: InterpretableModel, params: dict[str, Any]) -> dict[str, Any]:
    """What makes an output folder this job's: analysis, model, parameters, records."""
    records = hashlib.sha256(json.dumps(job.records, sort_keys=True).encode()).hexdigest()
    return {
        "analysis": job.analysis,
        "model": job.model,
        **({"dequantized": True} if job.dequantize else {}),  # older outputs resume as before
        "layers": model.num_layers,
        "params": params,
        "records": len(job.records),
        "records_sha256": records,
        "per_shard": job.per_shard,
    }


def _check_output(folder: Path, identity: dict[str, Any], resume: bool) -> None:
    """Refuse a folder holding another job's output, or this job's without ``resume``."""
    recorded = folder / JOB_FILE
    if not recorded.exists():
        leftovers = sorted(p.name for p in folder.glob("*.safetensors"))
        if leftovers:
            raise InputError(
                f"{folder} holds {leftovers[0]} but no {JOB_FILE}: give another output folder"
            )
        return
    try:
        mine = json.loads(recorded.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read {recorded}: {err}") from None
    if mine != json.loads(json.dumps(identity)):
        raise InputError(
            f"{folder} holds the output of another job (its {JOB_FILE} differs): give another "
            "output folder"
        )
    if not resume:
        raise InputError(f"{folder} already holds this job's output: --resume continues it")


def _finish(
    job: Job, analysis: Analysis, params: dict[str, Any], model: InterpretableModel
) -> None:
    """Rank 0, every shard done: the manifest (collect) or the results and their summary."""
    shards = job.shards
    if not analysis.gathers:
        entries: list[dict[str, Any]] = []
        total, widths = 0, {}
        for i, (start, end) in enumerate(shards):
            found = _load(job.output / shard_name(i))
            if found is None:  # written by a rank on another host
                entries.append({"file": shard_name(i), "records": [start, end]})
                continue
            arrays = found[0]
            tokens = _total(arrays["lengths"])
            widths = {c: int(arrays[c].shape[-1]) for c in params["components"]}
            entries.append({"file": shard_name(i), "records": [start, end], "tokens": tokens})
            total += tokens
        manifest = {
            "analysis": job.analysis,
            "model": job.model,
            "components": widths,
            "records": len(job.records),
            "tokens": total,
            "dtype": "float32",
            "shards": entries,
        }
        _write_json(job.output / "manifest.json", manifest)
        return
    parts = [_load(job.output / part_name(i)) for i in range(len(shards))]
    keys = sorted(analysis.row_shapes(model, params))
    merged = {k: mx.concatenate([p[0][k] for p in parts if p is not None]) for k in keys}
    atomic_write(
        job.output / "results.safetensors",
        lambda tmp: mx.save_safetensors(str(tmp), merged),
    )
    summary = {
        "analysis": job.analysis,
        "model": job.model,
        "params": params,
        "records": len(job.records),
        "mean": {k: _nan_free(mx.mean(v, axis=0)) for k, v in merged.items()},
    }
    _write_json(job.output / "summary.json", summary)


def _total(lengths: mx.array) -> int:
    return cast(int, lengths.sum().item())


def _nan_free(values: mx.array) -> Any:
    """Means as plain numbers (6 digits; NaN as null), a number or a list of them."""
    flat = [None if math.isnan(v) else round(float(v), 6) for v in np.asarray(values).ravel()]
    return flat[0] if values.ndim == 0 else flat


def _write_json(path: Path, value: Any) -> None:
    text = json.dumps(value, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_output(folder: str | Path) -> dict[str, Any]:
    """What a finished job wrote to ``folder`` for people to read: its ``summary.json``
    (sweeps, train_sae) or ``manifest.json`` (collect); ``InputError`` if it has neither."""
    where = Path(folder)
    for name in ("summary.json", "manifest.json"):
        if (where / name).is_file():
            try:
                found: dict[str, Any] = json.loads((where / name).read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise InputError(f"cannot read {where / name}: {err}") from None
            return found
    raise InputError(f"{where} holds no finished job (no summary.json or manifest.json)")
