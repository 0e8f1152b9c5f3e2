"""The ``train_sae`` job: one SAE trained data-parallel over the ranks.

Each epoch visits the texts in an order drawn from ``config.seed`` and the epoch (the same
on every rank); a step's batch is the real tokens of the next ``texts_per_step`` texts,
rank ``r`` reading texts ``r, r + N, ...`` of them, so every rank runs the model on its own
share only.  The gradient of each share is summed over the ranks
(:mod:`mlxterp.sae.parallel`), so the weights are identical on every rank and equal, to
float rounding, to one process's on the same batches.  Rank 0 writes a checkpoint every
``checkpoint_every`` steps (``--resume`` goes on from it: every rank receives it from rank 0)
and, at the end, the SAE (``sae/``, as ``SAE.save``) and ``summary.json``.

``[params]``: ``component`` (a module name, e.g. ``"layers.8"``), ``config`` (a table of
``SAEConfig`` settings; ``resample_every`` is not supported here), ``texts_per_step`` (16),
``checkpoint_every`` (25).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any, cast

import mlx.core as mx

from ..errors import InputError
from ..files import atomic_write
from ..model import InterpretableModel
from ..sae import SAE, SAEConfig, evaluate
from ..sae.io import component_width
from ..sae.parallel import ParallelTrainer
from ..sae.train import stream_activations
from .analyses import prompt_of
from .progress import JobListener, Reporter
from .spec import Job
from .world import World

NAME = "train_sae"
CHECKPOINT = "checkpoint.safetensors"
MEASURED_TEXTS = 64  # the summary measures the SAE on this many of the texts


def prepare(
    model: InterpretableModel, records: list[Any], params: dict[str, Any]
) -> dict[str, Any]:
    """The checked parameters (``InputError`` naming the key or record)."""
    allowed = {"component", "config", "texts_per_step", "checkpoint_every"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise InputError(
            f"[params] of {NAME} has no {', '.join(unknown)}; it takes {', '.join(sorted(allowed))}"
        )
    component = params.get("component")
    if not isinstance(component, str):
        raise InputError('[params] component: the module to train on, e.g. "layers.8"')
    config = params.get("config", {})
    if not isinstance(config, dict):
        raise InputError("[params] config must be a table of SAEConfig settings")
    try:
        SAEConfig(**config)
    except TypeError as err:
        raise InputError(f"[params] config: {err}") from None
    if config.get("resample_every"):
        raise InputError("[params] config: resample_every is not supported in a job")
    for n, record in enumerate(records):
        prompt_of(record, n)
    counts = {}
    for key, default in (("texts_per_step", 16), ("checkpoint_every", 25)):
        value = params.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"[params] {key} must be a whole number >= 1, got {value!r}")
        counts[key] = value
    return {"component": model.resolve(component), "config": config, **counts}


def run(
    job: Job,
    model: InterpretableModel,
    params: dict[str, Any],
    world: World,
    resume: bool,
    progress: bool,
    on_progress: JobListener | None = None,
) -> tuple[int, int, int]:
    """Train (see the module doc); ``(steps run now, steps done before, tokens)``."""
    config = SAEConfig(**params["config"])
    component = params["component"]
    sae = SAE(
        component_width(model, component),
        config,
        component,
        model.layer_index_of(component),
        job.model,
    )
    trainer = ParallelTrainer(sae, world)
    per_step = params["texts_per_step"]
    per_epoch = math.ceil(len(job.records) / per_step)
    if resume:
        _resume(trainer, job.output, world)
    total = per_epoch * config.epochs
    done_before = trainer.steps
    show = progress and world.leader
    with Reporter(NAME, total, done_before, "step", show, on_progress) as reporter:
        order: list[int] = []
        for step in range(done_before, total):
            epoch, at = divmod(step, per_epoch)
            if at == 0 or not order:  # each epoch's order, drawn once
                order = list(range(len(job.records)))
                random.Random(config.seed * 1000 + epoch).shuffle(order)
            batch = order[at * per_step : (at + 1) * per_step][world.rank :: world.size]
            trainer.step(
                _activations(model, job, batch, component, config.skip_tokens, sae.d_model)
            )
            if world.leader and (
                trainer.steps % params["checkpoint_every"] == 0 or trainer.steps == total
            ):
                _checkpoint(trainer, job.output)
            reporter.advance(1, trainer.tokens, lambda: _checkpoint(trainer, job.output))
    world.all_sum(mx.array(0), "finishing")
    trainer.finish()
    if world.leader:
        _finish(job, model, sae)
    return trainer.steps - done_before, done_before, trainer.tokens


def _activations(
    model: InterpretableModel, job: Job, batch: list[int], component: str, skip: int, width: int
) -> mx.array:
    """``(tokens, width)`` float32: the real tokens (less the first ``skip``) of these texts."""
    if not batch:
        return mx.zeros((0, width))
    texts = [prompt_of(job.records[i], i) for i in batch]
    return next(stream_activations(model, texts, component, len(texts), False, skip))


def _checkpoint(trainer: ParallelTrainer, output: Path) -> None:
    arrays, values = trainer.state()
    metadata = {"values": json.dumps(values)}
    atomic_write(
        output / CHECKPOINT, lambda tmp: mx.save_safetensors(str(tmp), arrays, metadata=metadata)
    )


def _resume(trainer: ParallelTrainer, output: Path, world: World) -> None:
    """Every rank takes rank 0's checkpoint (rank 0 reads it; the others receive it: the
    arrays have the shapes of their own state)."""
    template, _ = trainer.state()
    arrays: dict[str, mx.array] = {k: mx.zeros_like(v) for k, v in template.items()}
    text = ""
    if world.leader and (output / CHECKPOINT).is_file():
        loaded, metadata = mx.load(str(output / CHECKPOINT), return_metadata=True)
        arrays, text = cast(dict[str, mx.array], loaded), cast(dict[str, str], metadata)["values"]
    text = _broadcast_text(world, text)
    if not text:
        return  # no checkpoint: from the beginning
    sent = {k: world.all_sum(arrays[k], "the checkpoint") for k in sorted(template)}
    trainer.restore(sent, json.loads(text))


def _broadcast_text(world: World, text: str) -> str:
    """Rank 0's ``text`` on every rank (the others give "")."""
    raw = list(text.encode()) if world.leader else []
    size = cast(int, world.all_sum(mx.array([len(raw)]), "the checkpoint").item())
    padded = mx.array(raw + [0] * (size - len(raw)), dtype=mx.int32)
    return bytes(cast(list[int], world.all_sum(padded, "the checkpoint").tolist())).decode()


def _finish(job: Job, model: InterpretableModel, sae: SAE) -> None:
    """Rank 0: the SAE and the summary (its measures on the first texts)."""
    sae.save(job.output / "sae")
    texts = [prompt_of(r, i) for i, r in enumerate(job.records[:MEASURED_TEXTS])]
    summary = {
        "analysis": NAME,
        "model": job.model,
        "component": sae.component,
        "d_sae": sae.d_sae,
        "training": sae.training_stats,
        "measured": {**evaluate(sae, model, texts), "texts": len(texts)},
    }
    text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
    atomic_write(job.output / "summary.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
