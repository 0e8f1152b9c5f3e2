"""What a job runs over its records, one shard at a time.

* ``collect`` — activations of ``components`` on every real token, written by the rank
  that computed them as one safetensors file per shard (``lengths`` says how many tokens
  each record gave), and a manifest at the end.
* ``activation_patching``, ``attribution_patching``, ``causal_tracing``, ``lens`` — a row
  of numbers per record, gathered to rank 0, which writes them per shard and, at the end,
  all of them in one file with a summary (means over the records).

An analysis checks its parameters and records before anything runs (``prepare``), says
the shape of a record's row (``row_shapes``, gathered kinds) and computes a shard
(``compute``: arrays whose first axis is the record, and the tokens read).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import mlx.core as mx

from ..attribution import AttributionResult, attribution_patching
from ..causal_tracing import causal_trace
from ..datasets import text_of
from ..errors import InputError
from ..lens import lens
from ..metrics import METRICS
from ..model import InterpretableModel
from ..patching import PatchingResult, patching_sweep

Arrays = dict[str, mx.array]


@dataclass
class Computed:
    """A shard's arrays (first axis: the record, or the token for ``collect``) and how
    many tokens its forwards read."""

    arrays: Arrays
    tokens: int


class Analysis(Protocol):
    """One kind of job."""

    name: str
    gathers: bool  # rows per record, gathered to rank 0 (else each rank writes its shards)

    def prepare(
        self, model: InterpretableModel, records: list[Any], params: dict[str, Any]
    ) -> dict[str, Any]:
        """The checked parameters (an ``InputError`` naming the key or the record)."""
        ...

    def row_shapes(
        self, model: InterpretableModel, params: dict[str, Any]
    ) -> dict[str, tuple[int, ...]]:
        """The shape of one record's row of each array (gathered kinds)."""
        ...

    def compute(
        self, model: InterpretableModel, records: list[Any], params: dict[str, Any]
    ) -> Computed:
        """The shard of ``records``."""
        ...


def _only(params: dict[str, Any], allowed: set[str], analysis: str) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise InputError(
            f"[params] of {analysis} has no {', '.join(unknown)}; it takes "
            f"{', '.join(sorted(allowed)) or 'nothing'}"
        )


def _whole(params: dict[str, Any], key: str, default: int, low: int = 1) -> int:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"[params] {key} must be a whole number >= {low}, got {value!r}")
    return value


def prompt_of(record: Any, n: int) -> Any:
    """A text, or token ids (a list of ints), of record ``n``."""
    if (
        isinstance(record, list)
        and record
        and all(isinstance(t, int) and not isinstance(t, bool) for t in record)
    ):
        return record
    return text_of(record, f"record {n}")


def _field(record: Any, key: str, n: int) -> Any:
    if not isinstance(record, dict) or key not in record:
        raise InputError(f"record {n} needs {key!r} (records are JSON objects here)")
    return record[key]


class Collect:
    """Activations of components on every real token, to disk."""

    name = "collect"
    gathers = False

    def prepare(
        self, model: InterpretableModel, records: list[Any], params: dict[str, Any]
    ) -> dict[str, Any]:
        _only(params, {"components", "batch_size"}, self.name)
        components = params.get("components")
        if isinstance(components, str):
            components = [components]
        if not isinstance(components, list) or not components:
            raise InputError('[params] components: the modules to collect, e.g. ["layers.8"]')
        for n, record in enumerate(records):
            prompt_of(record, n)
        return {
            "components": [model.resolve(str(c)) for c in components],
            "batch_size": _whole(params, "batch_size", 8),
        }

    def row_shapes(
        self, model: InterpretableModel, params: dict[str, Any]
    ) -> dict[str, tuple[int, ...]]:
        return {}

    def compute(
        self, model: InterpretableModel, records: list[Any], params: dict[str, Any]
    ) -> Computed:
        components, size = params["components"], params["batch_size"]
        parts: dict[str, list[mx.array]] = {c: [] for c in components}
        lengths: list[int] = []
        for start in range(0, len(records), size):
            chunk = [prompt_of(r, start + i) for i, r in enumerate(records[start : start + size])]
            trace = model.run(chunk, capture=components, output=False)
            rows = trace.lengths or [trace.activations[components[0]].shape[1]] * len(chunk)
            for component in components:
                acts = trace.activations[component]
                parts[component] += [acts[b, :n].astype(mx.float32) for b, n in enumerate(rows)]
            lengths += rows
            mx.eval([parts[c][-len(rows) :] for c in components])
        arrays = {c: mx.concatenate(parts[c]) for c in components}
        arrays["lengths"] = mx.array(lengths, dtype=mx.int32)
        return Computed(arrays, sum(lengths))


def _pairs(
    model: InterpretableModel,
    records: list[Any],
    params: dict[str, Any],
    analysis: str,
    default_metric: str,
    default_component: str,
) -> dict[str, Any]:
    """The checked parameters of a patching analysis over ``{clean, corrupted, answer?}``
    records."""
    _only(params, {"component", "metric", "layers"}, analysis)
    metric = params.get("metric", default_metric)
    if metric not in METRICS:
        raise InputError(f"[params] metric must be one of {', '.join(METRICS)}")
    for n, record in enumerate(records):
        _field(record, "clean", n), _field(record, "corrupted", n)
        if metric == "logit_diff" and "answer" not in record:
            raise InputError(f"record {n} needs 'answer' ([right, wrong]) for logit_diff")
    layers = params.get("layers", list(range(model.num_layers)))
    if not isinstance(layers, list) or not all(
        isinstance(i, int) and 0 <= i < model.num_layers for i in layers
    ):
        raise InputError(f"[params] layers: a list of layers 0..{model.num_layers - 1}")
    component = str(params.get("component", default_component))
    return {"component": component, "metric": metric, "layers": layers}


class PairSweep:
    """A patching analysis over ``{clean, corrupted, answer?}`` records: each pair's
    recovery per layer (%) and the metric of its clean and corrupted runs; a subclass says
    how one pair is measured."""

    name = ""
    gathers = True
    metric = "l2"  # the default metric
    component = "mlp"  # the default component

    def prepare(
        self, model: InterpretableModel, records: list[Any], params: dict[str, Any]
    ) -> dict[str, Any]:
        return _pairs(model, records, params, self.name, self.metric, self.component)

    def row_shapes(
        self, model: InterpretableModel, params: dict[str, Any]
    ) -> dict[str, tuple[int, ...]]:
        return {"recovery": (len(params["layers"]),), "clean_value": (), "corrupted_value": ()}

    def compute(
        self, model: InterpretableModel, records: list[Any], params: dict[str, Any]
    ) -> Computed:
        rows: dict[str, list[Any]] = {"recovery": [], "clean_value": [], "corrupted_value": []}
        tokens = 0
        for record in records:
            recovery, clean, corrupted, read = self.measure(model, record, params)
            rows["recovery"].append(recovery)
            rows["clean_value"].append(clean)
            rows["corrupted_value"].append(corrupted)
            tokens += read
        return Computed({k: mx.array(v, dtype=mx.float32) for k, v in rows.items()}, tokens)

    def measure(
        self, model: InterpretableModel, record: dict[str, Any], params: dict[str, Any]
    ) -> tuple[list[float], float, float, int]:
        """One pair: recovery per layer, clean and corrupted metric, tokens read."""
        raise NotImplementedError


class ActivationPatching(PairSweep):
    """Recovery per layer of each clean/corrupted pair (``patching_sweep``)."""

    name = "activation_patching"

    def measure(
        self, model: InterpretableModel, record: dict[str, Any], params: dict[str, Any]
    ) -> tuple[list[float], float, float, int]:
        result = cast(
            PatchingResult,
            patching_sweep(
                model,
                record["clean"],
                record["corrupted"],
                component=params["component"],
                layers=params["layers"],
                metric=params["metric"],
                answer=record.get("answer"),
            ),
        )
        recovery = [result.recovery[layer] for layer in params["layers"]]
        return recovery, result.clean_value, result.corrupted_value, 2 * len(result.tokens)


class AttributionPatching(PairSweep):
    """Each pair's gradient estimate of patching every layer at every position (summed
    over positions), as percent of the clean-vs-corrupted gap (``attribution_patching``)."""

    name = "attribution_patching"
    metric = "logit_diff"
    component = "output"

    def measure(
        self, model: InterpretableModel, record: dict[str, Any], params: dict[str, Any]
    ) -> tuple[list[float], float, float, int]:
        result = cast(
            AttributionResult,
            attribution_patching(
                model,
                record["clean"],
                record["corrupted"],
                component=params["component"],
                metric=params["metric"],
                answer=record.get("answer"),
                layers=params["layers"],
            ),
        )
        gap = result.clean_value - result.corrupted_value
        recovery = [
            result.per_layer[layer] / gap * 100.0 if gap else 0.0 for layer in params["layers"]
        ]
        # the clean and corrupted forwards, and the backward pass
        return recovery, result.clean_value, result.corrupted_value, 3 * len(result.tokens)


class CausalTracing:
    """Each fact's answer probability, clean and subject-corrupted, and what restoring each
    layer gives back at the subject's last token and at the last token."""

    name = "causal_tracing"
    gathers = True

    def prepare(
        self, model: InterpretableModel, records: list[Any], params: dict[str, Any]
    ) -> dict[str, Any]:
        _only(params, {"component", "window", "noise", "seed"}, self.name)
        for n, record in enumerate(records):
            _field(record, "prompt", n), _field(record, "subject", n)
        noise = params.get("noise", 3.0)
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise <= 0:
            raise InputError(f"[params] noise must be a number > 0, got {noise!r}")
        prepared: dict[str, Any] = {"noise": float(noise), "seed": _whole(params, "seed", 0, 0)}
        if "component" in params:
            prepared["component"] = str(params["component"])
        if "window" in params:
            prepared["window"] = _whole(params, "window", 1)
        return prepared

    def row_shapes(
        self, model: InterpretableModel, params: dict[str, Any]
    ) -> dict[str, tuple[int, ...]]:
        n = model.num_layers
        return {"p_clean": (), "p_corrupted": (), "restored_subject": (n,), "restored_last": (n,)}

    def compute(
        self, model: InterpretableModel, records: list[Any], params: dict[str, Any]
    ) -> Computed:
        rows: dict[str, list[Any]] = {k: [] for k in self.row_shapes(model, params)}
        tokens = 0
        for record in records:
            trace = causal_trace(
                model, record["prompt"], record["subject"], target=record.get("answer"), **params
            )
            subject_last, last = trace.subject[1] - 1, trace.length - 1
            at = {p: j for j, p in enumerate(trace.positions)}
            rows["p_clean"].append(trace.p_clean)
            rows["p_corrupted"].append(trace.p_corrupted)
            rows["restored_subject"].append([row[at[subject_last]] for row in trace.restored])
            rows["restored_last"].append([row[at[last]] for row in trace.restored])
            tokens += trace.length * (1 + len(trace.layers) * len(trace.positions))
        return Computed({k: mx.array(v, dtype=mx.float32) for k, v in rows.items()}, tokens)


class LensStatistics:
    """Per layer, how often the logit lens's top token is the model's own next token, and
    the mean probability the lens gives its top token, over each text's positions."""

    name = "lens"
    gathers = True

    def prepare(
        self, model: InterpretableModel, records: list[Any], params: dict[str, Any]
    ) -> dict[str, Any]:
        _only(params, set(), self.name)
        for n, record in enumerate(records):
            prompt_of(record, n)
        return {}

    def row_shapes(
        self, model: InterpretableModel, params: dict[str, Any]
    ) -> dict[str, tuple[int, ...]]:
        return {"agreement": (model.num_layers,), "top_prob": (model.num_layers,)}

    def compute(
        self, model: InterpretableModel, records: list[Any], params: dict[str, Any]
    ) -> Computed:
        agreement, top_prob, tokens = [], [], 0
        for n, record in enumerate(records):
            read = lens(model, prompt_of(record, n), top_k=1)
            assert not isinstance(read, list)  # one prompt, one result
            final = [cell[0] for cell in read.top_ids[-1]]
            agreement.append(
                [
                    _mean([c[0] == f for c, f in zip(row, final, strict=True)])
                    for row in read.top_ids
                ]
            )
            top_prob.append([_mean([c[0] for c in row]) for row in read.top_probs])
            tokens += len(final)
        arrays = {"agreement": mx.array(agreement), "top_prob": mx.array(top_prob)}
        return Computed({k: v.astype(mx.float32) for k, v in arrays.items()}, tokens)


def _mean(values: Sequence[float | bool]) -> float:
    return sum(float(v) for v in values) / max(len(values), 1)


ANALYSES: dict[str, Analysis] = {
    a.name: a
    for a in (
        Collect(),
        ActivationPatching(),
        AttributionPatching(),
        CausalTracing(),
        LensStatistics(),
    )
}
