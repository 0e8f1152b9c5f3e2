"""The kinds of step a session records: how each runs, and the summary kept of its result.

A kind declares its parameters (required ones and defaults); its runner takes the model,
the parameters and the enabled interventions and returns ``(result, summary)`` — the live
result for whoever shows it, and a small dict of plain values that is saved and compared
on replay.  Arrays a step produces (a steering vector) go in the summary as ``mx.array``
and land in the sidecar.  An ``interventions`` step changes the session's intervention
list instead (see :mod:`.active`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import numpy as np

from .. import attention, attribution, lens, patching, steering
from ..errors import SessionError
from ..interventions import Intervention
from .active import ACTIONS, InterventionFn, InterventionList

if TYPE_CHECKING:
    from ..model import InterpretableModel

Params = dict[str, Any]
Summary = dict[str, Any]
Runner = Callable[["InterpretableModel", Params, dict[str, InterventionFn]], tuple[Any, Summary]]
REQUIRED = object()


@dataclass(frozen=True)
class Param:
    """A step parameter: its default (``REQUIRED`` for none) and the values it accepts."""

    default: Any
    expects: str
    accepts: Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_texts(v: Any) -> bool:
    return isinstance(v, str) or (
        isinstance(v, (list, tuple)) and bool(v) and all(isinstance(x, str) for x in v)
    )


def _text(default: Any = REQUIRED) -> Param:
    return Param(default, "a string", lambda v: isinstance(v, str))


def _texts(default: Any = REQUIRED) -> Param:
    return Param(default, "a string or a list of strings", _is_texts)


def _count(default: Any = REQUIRED, most: int = 1024) -> Param:
    return Param(default, f"an integer from 1 to {most}", lambda v: _is_int(v) and 0 < v <= most)


def _index(default: Any = REQUIRED) -> Param:
    return Param(default, "a layer index (an integer >= 0)", lambda v: _is_int(v) and v >= 0)


LAYERS = Param(
    None,
    "a list of layer indices",
    lambda v: isinstance(v, (list, tuple)) and all(_is_int(x) and x >= 0 for x in v),
)
ANSWER = Param(
    None,
    "a pair of strings (right answer, wrong answer)",
    lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, str) for x in v),
)
NUMBER = Param(
    4.0,
    "a finite number",
    lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
)
FLAG = Param(False, "true or false", lambda v: isinstance(v, bool))
TARGET = Param(None, "a token string or id", lambda v: isinstance(v, str) or _is_int(v))
ACTION = Param(REQUIRED, f"one of {', '.join(map(repr, ACTIONS))}", lambda v: v in ACTIONS)
INTERVENTION = Param(
    None, "an intervention (or its description table)", lambda v: isinstance(v, dict) or callable(v)
)


@dataclass
class StepKind:
    """A kind of step: its parameters, how it runs, and whether it runs under the
    session's interventions (``run`` is None for ``interventions``, which changes them)."""

    name: str
    params: dict[str, Param]
    run: Runner | None
    uses_interventions: bool = False
    doc: str = ""

    def complete(self, given: Params) -> Params:
        """``given`` checked against the declared parameters, defaults filled in."""
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            raise SessionError(
                f"step {self.name!r} takes no parameter {', '.join(map(repr, unknown))}; "
                f"it takes: {', '.join(self.params)}"
            )
        missing = [
            k for k, d in self.params.items() if d.default is REQUIRED and given.get(k) is None
        ]
        if missing:
            raise SessionError(f"step {self.name!r} needs {', '.join(map(repr, missing))}")
        full = {k: given.get(k, d.default) for k, d in self.params.items()}
        for key, value in full.items():
            if value is not None and not self.params[key].accepts(value):
                raise SessionError(
                    f"step {self.name!r}: {key} must be {self.params[key].expects}, "
                    f"got {_short(value)}"
                )
        return {k: v for k, v in full.items() if v is not None}

    def execute(
        self, model: InterpretableModel, params: Params, state: InterventionList
    ) -> tuple[Any, Summary]:
        """``(result, summary)`` of completed ``params``: under the enabled interventions
        of ``state`` when the kind uses them; an ``interventions`` step changes ``state``."""
        if self.run is None:
            return run_interventions(model, params, state)
        return self.run(model, params, state.enabled() if self.uses_interventions else {})


def _short(value: Any, most: int = 80) -> str:
    """``repr(value)``, cut to ``most`` characters (error messages stay one short line)."""
    text = repr(value)
    return text if len(text) <= most else text[: most - 3] + "..."


def _layer(model: InterpretableModel, index: int) -> int:
    """``index`` if the model has that layer, else a ``SessionError``."""
    if index >= model.num_layers:
        raise SessionError(
            f"layer {index} is out of range: the model has {model.num_layers} "
            f"layers (0..{model.num_layers - 1})"
        )
    return index


def _rounded(values: Any, digits: int = 6) -> Any:
    if isinstance(values, float):
        return round(values, digits)
    if isinstance(values, list):
        return [_rounded(v, digits) for v in values]
    if isinstance(values, dict):
        return {k: _rounded(v, digits) for k, v in values.items()}
    return values


def _float(value: mx.array) -> float:
    return _floats(value)[0]


def _floats(values: mx.array) -> list[float]:
    return [float(v) for v in np.asarray(values.astype(mx.float32), dtype=np.float64).ravel()]


def _ints(values: mx.array) -> list[int]:
    return [int(v) for v in np.asarray(values).ravel()]


def _run_trace(
    model: InterpretableModel, p: Params, active: dict[str, InterventionFn]
) -> tuple[Any, Summary]:
    """Full capture (the workbench shows every module's shape); the summary keeps the top
    next tokens and the norm of each layer's residual at the last real token."""
    trace = model.run(p["text"], interventions=active or None)
    last = trace.last_token(trace.output)[0]
    probs = mx.softmax(last, axis=-1)
    ids, top = lens.top_entries(probs, p["top_k"])
    ids_list = _ints(ids)
    norms = [
        _float(mx.linalg.norm(trace.last_token(trace.activations[model.layer_name(i)])[0]))
        for i in range(model.num_layers)
    ]
    summary = {
        "top_ids": ids_list,
        "top_tokens": [model.token_to_str(i) for i in ids_list],
        "top_probs": _floats(top),
        "logit_norm": _float(mx.linalg.norm(last)),
        "layer_norms": norms,
    }
    return trace, _rounded(summary)


def _run_lens(
    model: InterpretableModel, p: Params, active: dict[str, InterventionFn]
) -> tuple[Any, Summary]:
    result = lens.lens(
        model,
        p["text"],
        layers=p.get("layers"),
        top_k=p["top_k"],
        target=p.get("target"),
        interventions=active or None,
    )
    return result, _rounded(result.to_summary())


def _answer(p: Params) -> tuple[str, str] | None:
    return (p["answer"][0], p["answer"][1]) if "answer" in p else None


def _run_patching(
    model: InterpretableModel, p: Params, active: dict[str, InterventionFn]
) -> tuple[Any, Summary]:
    result = patching.patching_sweep(
        model,
        p["clean"],
        p["corrupted"],
        component=p["component"],
        layers=p.get("layers"),
        metric=p["metric"],
        answer=_answer(p),
        by_position=p["by_position"],
    )
    return result, _rounded(result.to_summary(), 4)


def _run_attribution(
    model: InterpretableModel, p: Params, active: dict[str, InterventionFn]
) -> tuple[Any, Summary]:
    result = attribution.attribution_patching(
        model,
        p["clean"],
        p["corrupted"],
        component=p["component"],
        metric=p["metric"],
        answer=_answer(p),
    )
    return result, _rounded(result.to_summary(), 5)


def _run_steering(
    model: InterpretableModel, p: Params, active: dict[str, InterventionFn]
) -> tuple[Any, Summary]:
    layer = _layer(model, p["layer"])
    vector = steering.steering_vector(model, p["positive"], p["negative"], layer)
    baseline, steered = steering.steer(
        model, p["prompt"], vector, layer, coefficient=p["coefficient"], max_tokens=p["max_tokens"]
    )
    summary = {
        "baseline": baseline,
        "steered": steered,
        "vector_norm": round(_float(mx.linalg.norm(vector)), 5),
        "vector": vector,
    }
    return summary, summary


def _run_generate(
    model: InterpretableModel, p: Params, active: dict[str, InterventionFn]
) -> tuple[Any, Summary]:
    text, ids = steering.generate_with_ids(
        model, p["prompt"], p["max_tokens"], interventions=active or None
    )
    summary = {"text": text, "token_ids": ids}
    return summary, summary


def _run_attention(
    model: InterpretableModel, p: Params, active: dict[str, InterventionFn]
) -> tuple[Any, Summary]:
    patterns = attention.attention_patterns(model, p["text"], layers=[_layer(model, p["layer"])])
    weights = next(iter(patterns.values()))[0]  # (heads, q, k)
    summary = {
        "layer": p["layer"],
        "last_query_argmax": _ints(mx.argmax(weights[:, -1, :], axis=-1)),
        "last_query_max": _rounded(_floats(mx.max(weights[:, -1, :], axis=-1)), 5),
    }
    return patterns, summary


def run_interventions(
    model: InterpretableModel, p: Params, state: InterventionList
) -> tuple[InterventionList, Summary]:
    """Change ``state`` in place by one action, on the module its params name (resolved
    to its canonical name by the model)."""
    name = model.resolve(p["module"]) if "module" in p and p["action"] != "clear" else None
    state.canonicalize(model.resolve)  # entries a file named by an alias match too
    state.apply(p["action"], name, p.get("intervention"))
    summary: Summary = {"module": name} if name is not None else {}
    summary["active"] = state.summary()
    return state, summary


def restore(state: InterventionList, params: Params, summary: Summary) -> None:
    """Apply a recorded ``interventions`` step to ``state`` without a model, under the name
    its params give (as replay does); a summary naming another module is refused."""
    name = params.get("module")
    recorded = summary.get("module")
    same = isinstance(recorded, str) and (recorded == name or recorded.endswith(f".{name}"))
    if recorded is not None and name is not None and params["action"] != "clear" and not same:
        raise SessionError(
            f"the summary names module {_short(recorded)} but the params name {name!r}: "
            "the file was edited inconsistently"
        )
    state.apply(params["action"], name, params.get("intervention"))


KINDS: dict[str, StepKind] = {
    k.name: k
    for k in [
        StepKind(
            "trace",
            {"text": _text(), "top_k": _count(5)},
            _run_trace,
            True,
            "one forward; the top next tokens at the last position",
        ),
        StepKind(
            "logit_lens",
            {"text": _text(), "top_k": _count(3), "layers": LAYERS, "target": TARGET},
            _run_lens,
            True,
            "what every layer predicts at every position",
        ),
        StepKind(
            "activation_patching",
            {
                "clean": _text(),
                "corrupted": _text(),
                "component": _text("mlp"),
                "metric": _text("l2"),
                "layers": LAYERS,
                "answer": ANSWER,
                "by_position": FLAG,
            },
            _run_patching,
            False,
            "recovery per layer from patching clean into corrupted",
        ),
        StepKind(
            "attribution_patching",
            {
                "clean": _text(),
                "corrupted": _text(),
                "component": _text("output"),
                "metric": _text("logit_diff"),
                "answer": ANSWER,
            },
            _run_attribution,
            False,
            "gradient estimate of every layer x position patch",
        ),
        StepKind(
            "steering",
            {
                "positive": _texts(),
                "negative": _texts(),
                "layer": _index(),
                "prompt": _text(),
                "coefficient": NUMBER,
                "max_tokens": _count(20),
            },
            _run_steering,
            False,
            "a contrast vector added at a layer while generating",
        ),
        StepKind(
            "generate",
            {"prompt": _text(), "max_tokens": _count(20)},
            _run_generate,
            True,
            "greedy continuation under the active interventions",
        ),
        StepKind(
            "attention",
            {"text": _text(), "layer": _index()},
            _run_attention,
            False,
            "attention weights of every head of one layer",
        ),
        StepKind(
            "interventions",
            {"action": ACTION, "module": _text(None), "intervention": INTERVENTION},
            None,
            False,
            "set, remove, clear, enable or disable an intervention",
        ),
    ]
}


def kind(name: str) -> StepKind:
    if name not in KINDS:
        raise SessionError(f"unknown step kind {_short(name)}; known: {', '.join(KINDS)}")
    return KINDS[name]


@dataclass
class Difference:
    """Where a replayed summary differs from the recorded one, and the two values."""

    path: str
    recorded: Any
    replayed: Any


@dataclass
class Comparison:
    """Every difference found, and the largest numeric gap (inf where one is non-finite)."""

    differences: list[Difference] = field(default_factory=list)
    max_diff: float = 0.0


def close(recorded: np.ndarray, replayed: np.ndarray, tolerance: float) -> np.ndarray:
    """For float64 arrays of one shape, per element, like ``math.isclose`` with
    ``rel_tol = abs_tol = tolerance``: ``|a - b| <= tolerance * max(1, |a|, |b|)``.
    Equal infinities match; an infinity against anything else, and NaN against anything
    (NaN included), never does."""
    a, b = recorded, replayed
    with np.errstate(invalid="ignore", over="ignore"):
        scale = np.maximum(1.0, np.maximum(np.abs(a), np.abs(b)))
        within = np.abs(a - b) <= tolerance * scale
    finite = np.isfinite(a) & np.isfinite(b)
    matches: np.ndarray = np.where(finite, within, a == b)  # non-finite: same infinity only
    return matches


def _gap(recorded: np.ndarray, replayed: np.ndarray) -> float:
    """The largest absolute difference; inf when any pair is non-finite and unequal."""
    a, b = recorded, replayed
    if a.size == 0:
        return 0.0
    finite = np.isfinite(a) & np.isfinite(b)
    if not np.all(finite | (a == b)):
        return math.inf
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf where both are inf
        return float(np.max(np.where(finite, np.abs(a - b), 0.0)))


def _as_numbers(value: Any) -> np.ndarray:
    """``value`` (an array, or the list a summary recorded) as float64 numbers."""
    if isinstance(value, mx.array) and value.dtype == mx.bfloat16:  # numpy has no bfloat16
        value = value.astype(mx.float32)
    numbers: np.ndarray = np.asarray(value).astype(np.float64)
    return numbers


def compare(
    recorded: Any, replayed: Any, tolerance: float, path: str = "", out: Comparison | None = None
) -> Comparison:
    """Numbers and arrays per element within ``tolerance`` (see :func:`close`);
    everything else exactly."""
    out = out or Comparison()
    if isinstance(recorded, mx.array) or isinstance(replayed, mx.array):
        try:
            a, b = _as_numbers(recorded), _as_numbers(replayed)
        except (TypeError, ValueError):
            out.differences.append(Difference(path, "array", _short(replayed)))
            return out
        if a.shape != b.shape:
            out.differences.append(Difference(path, f"shape {a.shape}", f"shape {b.shape}"))
            return out
        out.max_diff = max(out.max_diff, _gap(a, b))
        bad = ~close(a, b, tolerance)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            out.differences.append(
                Difference(
                    f"{path}{list(first)}",
                    float(a[first]),
                    f"{float(b[first])!r} ({int(bad.sum())} of {a.size} elements differ)",
                )
            )
        return out
    if isinstance(recorded, bool) or isinstance(replayed, bool):
        if type(recorded) is not type(replayed) or recorded != replayed:
            out.differences.append(Difference(path, recorded, replayed))
        return out
    if isinstance(recorded, (int, float)) and isinstance(replayed, (int, float)):
        if isinstance(recorded, int) and isinstance(replayed, int):
            if recorded != replayed:
                out.differences.append(Difference(path, recorded, replayed))
            return out
        a, b = np.array([float(recorded)]), np.array([float(replayed)])
        out.max_diff = max(out.max_diff, _gap(a, b))
        if not close(a, b, tolerance)[0]:
            out.differences.append(Difference(path, recorded, replayed))
        return out
    if isinstance(recorded, dict) and isinstance(replayed, dict):
        for key in sorted(set(recorded) | set(replayed)):
            where = f"{path}.{key}".lstrip(".")
            if key not in recorded or key not in replayed:
                out.differences.append(Difference(where, recorded.get(key), replayed.get(key)))
            else:
                compare(recorded[key], replayed[key], tolerance, where, out)
        return out
    if isinstance(recorded, (list, tuple)) and isinstance(replayed, (list, tuple)):
        if len(recorded) != len(replayed):
            out.differences.append(
                Difference(path, f"{len(recorded)} items", f"{len(replayed)} items")
            )
            return out
        for i, (a, b) in enumerate(zip(recorded, replayed, strict=True)):
            compare(a, b, tolerance, f"{path}[{i}]", out)
        return out
    if recorded != replayed:
        out.differences.append(Difference(path, recorded, replayed))
    return out


def describe_params(params: Params) -> Params:
    """Parameters with interventions as descriptions (what is saved)."""
    return {k: (v.describe() if isinstance(v, Intervention) else v) for k, v in params.items()}
