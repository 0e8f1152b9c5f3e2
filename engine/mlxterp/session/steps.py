"""The kinds of step a session records: how each runs, and the summary kept of its result.

A kind declares its parameters (required ones and defaults); ``run`` takes the model, the
parameters and the session's active interventions and returns ``(result, summary)`` — the
live result for whoever shows it, and a small dict of plain values that is saved and
compared on replay.  Arrays a step produces (a steering vector) go in the summary as
``mx.array`` and land in the sidecar.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import mlx.core as mx

from .. import attention, attribution, lens, patching, steering
from ..interventions import Intervention, from_description
from .storage import SessionError

if TYPE_CHECKING:
    from ..model import InterpretableModel

Runner = Callable[["InterpretableModel", dict, dict], tuple[Any, dict]]
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


def _text(default=REQUIRED):
    return Param(default, "a string", lambda v: isinstance(v, str))


def _texts(default=REQUIRED):
    return Param(default, "a string or a list of strings", _is_texts)


def _count(default=REQUIRED, most=1024):
    return Param(default, f"an integer from 1 to {most}", lambda v: _is_int(v) and 0 < v <= most)


def _index(default=REQUIRED):
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
NUMBER = Param(4.0, "a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
FLAG = Param(False, "true or false", lambda v: isinstance(v, bool))
TARGET = Param(None, "a token string or id", lambda v: isinstance(v, str) or _is_int(v))
ACTION = Param(
    REQUIRED, "one of 'set', 'remove', 'clear'", lambda v: v in ("set", "remove", "clear")
)
INTERVENTION = Param(
    None, "an intervention (or its description table)", lambda v: isinstance(v, dict) or callable(v)
)


@dataclass
class StepKind:
    name: str
    params: dict[str, Param]
    run: Runner
    uses_interventions: bool = False
    doc: str = ""

    def complete(self, given: dict[str, Any]) -> dict[str, Any]:
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
                    f"step {self.name!r}: {key} must be {self.params[key].expects}, got {value!r}"
                )
        return {k: v for k, v in full.items() if v is not None}

    def execute(self, model: InterpretableModel, params: dict, active: dict) -> tuple[Any, dict]:
        """``(result, summary)`` of completed ``params``: under the ``active`` interventions
        when the kind uses them; an ``interventions`` step changes ``active`` itself."""
        changes = self.name == "interventions"
        return self.run(model, params, active if self.uses_interventions or changes else {})


def _layer(model, index: int) -> int:
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


def _run_trace(model, p, active):
    """Full capture (the workbench shows every module's shape); the summary keeps the top
    next tokens and the norm of each layer's residual at the last real token."""
    trace = model.run(p["text"], interventions=active or None)
    last = trace.last_token(trace.output)[0]
    probs = mx.softmax(last, axis=-1)
    ids, top = lens.top_entries(probs, p["top_k"])
    ids_list = ids.tolist()
    norms = [
        mx.linalg.norm(trace.last_token(trace.activations[name])[0]).item()
        for name in model._index.layer_names
    ]
    summary = {
        "top_ids": ids_list,
        "top_tokens": [model.token_to_str(i) for i in ids_list],
        "top_probs": top.tolist(),
        "logit_norm": mx.linalg.norm(last).item(),
        "layer_norms": norms,
    }
    return trace, _rounded(summary)


def _run_lens(model, p, active):
    result = lens.lens(
        model,
        p["text"],
        layers=p.get("layers"),
        top_k=p["top_k"],
        target=p.get("target"),
        interventions=active or None,
    )
    return result, _rounded(result.to_summary())


def _answer(p):
    return tuple(p["answer"]) if "answer" in p else None


def _run_patching(model, p, active):
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


def _run_attribution(model, p, active):
    result = attribution.attribution_patching(
        model,
        p["clean"],
        p["corrupted"],
        component=p["component"],
        metric=p["metric"],
        answer=_answer(p),
    )
    return result, _rounded(result.to_summary(), 5)


def _run_steering(model, p, active):
    layer = _layer(model, p["layer"])
    vector = steering.steering_vector(model, p["positive"], p["negative"], layer)
    baseline, steered = steering.steer(
        model, p["prompt"], vector, layer, coefficient=p["coefficient"], max_tokens=p["max_tokens"]
    )
    summary = {
        "baseline": baseline,
        "steered": steered,
        "vector_norm": round(mx.linalg.norm(vector).item(), 5),
        "vector": vector,
    }
    return summary, summary


def _run_generate(model, p, active):
    text, ids = steering.generate_with_ids(
        model, p["prompt"], p["max_tokens"], interventions=active or None
    )
    summary = {"text": text, "token_ids": ids}
    return summary, summary


def _run_attention(model, p, active):
    patterns = attention.attention_patterns(model, p["text"], layers=[_layer(model, p["layer"])])
    weights = next(iter(patterns.values()))[0]  # (heads, q, k)
    summary = {
        "layer": p["layer"],
        "last_query_argmax": mx.argmax(weights[:, -1, :], axis=-1).tolist(),
        "last_query_max": _rounded(mx.max(weights[:, -1, :], axis=-1).tolist(), 5),
    }
    return patterns, summary


def rebuild(desc: dict) -> Intervention:
    """The intervention a recorded description names; ``SessionError`` if it names none."""
    try:
        return from_description(desc)
    except (ValueError, TypeError, KeyError) as err:
        raise SessionError(f"the recorded intervention is not valid: {err}") from None


def change(active: dict, action: str, name: str | None, intervention: Any) -> None:
    """Apply one ``interventions`` step to ``active`` (canonical name -> intervention)."""
    if action == "clear":
        active.clear()
    elif name is None:
        raise SessionError(f"interventions action {action!r} needs module=")
    elif action == "remove":
        active.pop(name, None)
    elif intervention is None:
        raise SessionError("interventions action 'set' needs intervention=")
    else:
        active[name] = rebuild(intervention) if isinstance(intervention, dict) else intervention


def _run_interventions(model, p, active):
    """Changes ``active`` in place: set, remove or clear one module's intervention."""
    name = model.resolve(p["module"]) if "module" in p and p["action"] != "clear" else None
    change(active, p["action"], name, p.get("intervention"))
    summary = {"module": name} if name is not None else {}
    summary["active"] = {n: repr(fn) for n, fn in active.items()}
    return dict(active), summary


def restore(active: dict, params: dict, summary: dict) -> None:
    """Apply a recorded ``interventions`` step to ``active`` without a model, under the
    canonical name its summary recorded (a loaded session goes on where it stopped)."""
    name = summary.get("module", params.get("module"))
    if name is not None and not isinstance(name, str):
        raise SessionError(f"the recorded module must be a name, got {name!r}")
    change(active, params["action"], name, params.get("intervention"))


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
            _run_interventions,
            False,
            "set, remove or clear an active intervention",
        ),
    ]
}


def kind(name: str) -> StepKind:
    if name not in KINDS:
        raise SessionError(f"unknown step kind {name!r}; known: {', '.join(KINDS)}")
    return KINDS[name]


@dataclass
class Difference:
    path: str
    recorded: Any
    replayed: Any


@dataclass
class Comparison:
    differences: list[Difference] = field(default_factory=list)
    max_diff: float = 0.0


def _widen(out: Comparison, diff: float) -> None:
    out.max_diff = max(out.max_diff, diff) if diff == diff else float("inf")  # NaN: inf


def compare(
    recorded: Any, replayed: Any, tolerance: float, path: str = "", out: Comparison | None = None
) -> Comparison:
    """Numbers within ``tolerance`` (absolute, or relative to the larger magnitude);
    everything else exactly; arrays elementwise."""
    out = out or Comparison()
    if isinstance(recorded, mx.array) or isinstance(replayed, mx.array):
        a = mx.array(recorded).astype(mx.float32)
        b = mx.array(replayed).astype(mx.float32)
        if a.shape != b.shape:
            out.differences.append(Difference(path, f"shape {a.shape}", f"shape {b.shape}"))
            return out
        diff = mx.max(mx.abs(a - b)).item() if a.size else 0.0
        scale = max(1.0, mx.max(mx.abs(a)).item() if a.size else 0.0)
        _widen(out, diff)
        if not diff <= tolerance * scale:  # NaN never matches
            out.differences.append(Difference(path, "array", f"differs by up to {diff:.3g}"))
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
        diff = abs(float(recorded) - float(replayed))
        _widen(out, diff)
        if not diff <= tolerance * max(1.0, abs(float(recorded)), abs(float(replayed))):
            out.differences.append(Difference(path, recorded, replayed))
        return out
    if isinstance(recorded, dict) and isinstance(replayed, dict):
        for key in sorted(set(recorded) | set(replayed)):
            if key not in recorded or key not in replayed:
                out.differences.append(
                    Difference(f"{path}.{key}".lstrip("."), recorded.get(key), replayed.get(key))
                )
            else:
                compare(recorded[key], replayed[key], tolerance, f"{path}.{key}".lstrip("."), out)
        return out
    if isinstance(recorded, (list, tuple)) and isinstance(replayed, (list, tuple)):
        if len(recorded) != len(replayed):
            out.differences.append(
                Difference(path, f"{len(recorded)} items", f"{len(replayed)} items")
            )
            return out
        for i, (a, b) in enumerate(zip(recorded, replayed)):
            compare(a, b, tolerance, f"{path}[{i}]", out)
        return out
    if recorded != replayed:
        out.differences.append(Difference(path, recorded, replayed))
    return out


def describe_params(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters with interventions as descriptions (what is saved)."""
    return {k: (v.describe() if isinstance(v, Intervention) else v) for k, v in params.items()}
