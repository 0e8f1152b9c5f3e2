"""The kinds of step a session records: how each runs, and the summary kept of its result.

Every kind but ``interventions`` wraps library functions, and **its parameters are theirs**:
read from their signatures (names, which are required, defaults), less the model, the
session's interventions, what the step computes itself and what only draws (a plot), so
that anything the library takes a session can record.  Three library names read shorter in
a step (``inputs`` is ``text``, ``clean_text`` is ``clean``, ``corrupted_text`` is
``corrupted``), and a kind may add parameters of its own (what its summary keeps).  Values
are checked by name where the name says what it takes (``top_k``, ``layers``, prompts ...)
and otherwise need only be a value a session file can hold; the library checks the rest
when the step runs.

A runner takes the model, the completed parameters and the enabled interventions and
returns ``(result, summary)`` — the live result for whoever shows it, and a small dict of
plain values that is saved and compared on replay.  Arrays (a steering vector, token ids
given as an array) go in params or summary as ``mx.array`` and land in the sidecar; an SAE
parameter is kept as its description (its weights in the sidecar).  An
``interventions`` step changes the session's intervention list instead (see :mod:`.active`).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import numpy as np

from .. import (
    attention,
    attribution,
    causal_tracing,
    detectors,
    dla,
    head_patching,
    lens,
    patching,
    path_patching,
    steering,
    tuned_lens,
)
from ..errors import InputError, SessionError
from ..inputs import is_chat
from ..interventions import Intervention
from ..model import InterpretableModel
from ..sae import SAE, SAEConfig, dashboard, edits, measure
from ..sae import train as sae_train
from ..sae.io import describe_sae, sae_from_description
from .active import ACTIONS, InterventionFn, InterventionList

if TYPE_CHECKING:
    from collections.abc import Iterable

Params = dict[str, Any]
Summary = dict[str, Any]
Runner = Callable[..., tuple[Any, Summary]]
"""``run(model, params, active interventions, **supplied)`` → ``(result, summary)``."""
REQUIRED = object()

# Arguments of the wrapped functions that are no step parameter: the model and the
# interventions are the session's, a steering vector is what the step computes first.
SUPPLIED = frozenset({"model", "interventions", "vector", "on_token", "on_progress"})
# Arguments that only draw (a plot or a progress bar in the terminal): nothing a summary
# could keep.
PRESENTATION = frozenset({"plot", "figsize", "cmap", "max_display_tokens", "progress"})
SAE_CONFIG_FIELDS = frozenset(SAEConfig.__dataclass_fields__)
MEASURED_TEXTS = 64  # a train_sae step measures its SAE on this many of its texts
# Arguments a step always leaves at their default: a trace step reads the logits, which
# ``output=False`` would skip.
FIXED = frozenset({"output"})
# The library's argument name -> the step's (what files have always called them).
STEP_NAMES = {"inputs": "text", "clean_text": "clean", "corrupted_text": "corrupted"}
TOML_INT = 2**63 - 1  # TOML integers are signed 64-bit


@dataclass(frozen=True)
class Param:
    """A step parameter: its default (``REQUIRED`` for none) and the values it accepts."""

    default: Any
    expects: str
    accepts: Callable[[Any], bool]
    fill: Callable[[Any], Any] | None = None  # the accepted value (or None) as recorded


@dataclass(frozen=True)
class Check:
    """What values a parameter of some name accepts (its default comes from elsewhere),
    and, with ``fill``, what is recorded for an accepted value or for none."""

    expects: str
    accepts: Callable[[Any], bool]
    fill: Callable[[Any], Any] | None = None

    def param(self, default: Any) -> Param:
        return Param(default, self.expects, self.accepts, self.fill)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_list(v: Any, item: Callable[[Any], bool]) -> bool:
    return isinstance(v, (list, tuple)) and bool(v) and all(item(x) for x in v)


def _is_texts(v: Any) -> bool:
    return isinstance(v, str) or _is_list(v, lambda x: isinstance(x, str))


def _is_messages(v: Any) -> bool:
    """Text or a chat, or a list of them."""
    return (
        isinstance(v, str) or is_chat(v) or _is_list(v, lambda x: isinstance(x, str) or is_chat(x))
    )


def _is_prompt(v: Any) -> bool:
    """One prompt: text, a chat, or token ids (a list, or an integer array)."""
    return (
        isinstance(v, str)
        or is_chat(v)
        or _is_list(v, _is_int)
        or (isinstance(v, mx.array) and mx.issubdtype(v.dtype, mx.integer))
    )


def _is_prompts(v: Any) -> bool:
    """A prompt, or a batch of them (a list of prompts)."""
    return _is_prompt(v) or _is_list(v, _is_prompt)


def _is_lens_path(v: Any) -> bool:
    return isinstance(v, str) and v.endswith(".toml")


def _is_plain(v: Any) -> bool:
    """A value a session file holds: text, a number, a flag, an array, lists and tables."""
    if isinstance(v, (str, bool, mx.array)):
        return True
    if isinstance(v, int):  # not a bool: those returned above
        return abs(v) <= TOML_INT
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, (list, tuple)):
        return all(_is_plain(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _is_plain(x) for k, x in v.items())
    return False


def _count(most: int = 1024) -> Check:
    return Check(f"an integer from 1 to {most}", lambda v: _is_int(v) and 0 < v <= most)


PROMPT = Check(
    "a prompt (text, a chat of role/content tables, or token ids) or a list of prompts",
    _is_prompts,
)
PROMPTS_TEXT = Check("a string or a chat, or a list of them", _is_messages)
CHAT = Check("a chat: a list of tables with a string role and a string content", is_chat)
TEXT = Check("a string", lambda v: isinstance(v, str))
TEXTS = Check("a string or a list of strings", _is_texts)
INDEX = Check("a layer index (an integer >= 0)", lambda v: _is_int(v) and v >= 0)
LAYERS = Check(
    "a list of layer indices",
    lambda v: isinstance(v, (list, tuple)) and all(_is_int(x) and x >= 0 for x in v),
)
TOKEN = Check("a token string or id", lambda v: isinstance(v, str) or _is_int(v))
TRAINING_TEXTS = Check(
    "a non-empty list of texts (strings, or token-id lists)",
    lambda v: _is_list(v, lambda x: isinstance(x, str) or _is_list(x, _is_int)),
)


def _every_sae_setting(given: dict[str, Any] | None) -> dict[str, Any]:
    """Every ``SAEConfig`` setting, the given ones over the defaults: a step records them
    all, so it replays the same after a default changes (``InputError`` for a bad value)."""
    return asdict(SAEConfig(**(given or {})))


SAE_SETTINGS = Check(
    "a table of mlxterp.sae.SAEConfig settings (expansion_factor, kind, k, epochs, ...)",
    lambda v: isinstance(v, dict) and set(v) <= SAE_CONFIG_FIELDS and _is_plain(v),
    _every_sae_setting,
)
SAE_CHECK = Check(
    "an SAE (mlxterp.sae.SAE) or its description table (mlxterp.sae.io.describe_sae)",
    lambda v: isinstance(v, SAE) or (isinstance(v, dict) and "weights" in v and _is_plain(v)),
)


def _is_answer(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(TOKEN.accepts(x) for x in v)


ANSWER = Check(
    "a pair of tokens (right answer, wrong answer), each a string or an id, or a list of "
    "such pairs (one per prompt pair)",
    lambda v: _is_answer(v) or _is_list(v, _is_answer),
)


def _is_fact(v: Any) -> bool:
    """``[prompt, subject, answer]``: the subject a substring or a ``[start, end]`` token
    range, the answer a token string or id."""
    return (
        isinstance(v, (list, tuple))
        and len(v) == 3
        and _is_prompt(v[0])
        and (isinstance(v[1], str) or (_is_list(v[1], _is_int) and len(v[1]) == 2))
        and TOKEN.accepts(v[2])
    )


FACTS = Check(
    "a list of facts, each [prompt, subject, answer] (the subject a substring of the "
    "prompt or a [start, end] token range, the answer a token string or id)",
    lambda v: _is_list(v, _is_fact),
)
POSITIONS = Check(
    "a position or a list of positions (integers, negative from the end)",
    lambda v: (_is_int(v) and abs(v) <= TOML_INT) or _is_list(v, _is_int),
)
NUMBER = Check("a finite number", _is_number)
FLAG = Check("true or false", lambda v: isinstance(v, bool))
PLAIN = Check("a value a session file can hold (text, numbers, flags, lists, tables)", _is_plain)
INTERVENTION = Param(
    None, "an intervention (or its description table)", lambda v: isinstance(v, dict) or callable(v)
)
ACTION = Param(REQUIRED, f"one of {', '.join(map(repr, ACTIONS))}", lambda v: v in ACTIONS)

# Parameter names (as steps call them) that say what they take; any other is PLAIN.
CHECKS: dict[str, Check] = {
    "text": PROMPT,
    "prompt": PROMPT,
    "clean": PROMPT,
    "corrupted": PROMPT,
    "positive": PROMPTS_TEXT,
    "negative": PROMPTS_TEXT,
    "messages": CHAT,
    "capture": TEXTS,
    "component": TEXT,
    "metric": TEXT,
    "top_k": _count(),
    "max_tokens": _count(),
    "batch_size": _count(2**20),
    "layer": INDEX,
    "layers": LAYERS,
    "target": TOKEN,
    "baseline": TOKEN,
    "heads": Check(
        "a head index or a list of head indices (integers >= 0)",
        lambda v: (_is_int(v) and v >= 0) or _is_list(v, lambda h: _is_int(h) and h >= 0),
    ),
    "all_heads": FLAG,
    "answer": ANSWER,
    "facts": FACTS,
    "positions": POSITIONS,
    "by_position": FLAG,
    "coefficient": NUMBER,
    "value": NUMBER,
    "mode": TEXT,
    "feature": Check("a feature index (an integer >= 0)", lambda v: _is_int(v) and v >= 0),
    "sae": SAE_CHECK,
    "texts": TRAINING_TEXTS,
    "config": SAE_SETTINGS,
    "temperature": Check("a finite number >= 0", lambda v: _is_number(v) and v >= 0),
    "seed": Check(f"an integer from 0 to {TOML_INT}", lambda v: _is_int(v) and 0 <= v <= TOML_INT),
    "position": Check(
        "a token position (an integer) or 'mean'", lambda v: _is_int(v) or v == "mean"
    ),
}


@functools.cache
def library_params(fn: Callable[..., Any]) -> tuple[inspect.Parameter, ...]:
    """The arguments of ``fn`` a step of it records: all but the first (the model, or
    ``self`` of a model method), the ``SUPPLIED``, ``PRESENTATION`` and ``FIXED`` ones."""
    taken = list(inspect.signature(fn).parameters.values())[1:]
    return tuple(
        p
        for p in taken
        if p.name not in SUPPLIED | PRESENTATION | FIXED
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    )


def step_name(library_name: str) -> str:
    """What a step calls the library's argument ``library_name``."""
    return STEP_NAMES.get(library_name, library_name)


def derived_params(
    wraps: Iterable[Callable[..., Any]], own: dict[str, Param] | None = None
) -> dict[str, Param]:
    """The parameter table of a step wrapping ``wraps``: every recorded argument of each
    (the first function that takes a name gives its default), then the step's ``own``."""
    params: dict[str, Param] = {}
    for fn in wraps:
        for p in library_params(fn):
            name = step_name(p.name)
            default = REQUIRED if p.default is inspect.Parameter.empty else p.default
            params.setdefault(name, CHECKS.get(name, PLAIN).param(default))
    return {**params, **(own or {})}


def _call(fn: Callable[..., Any], model: InterpretableModel, p: Params, **supplied: Any) -> Any:
    """``fn(model, ...)`` with every step parameter it takes, under its library name (an
    omitted one gets the function's own default), and the ``supplied`` arguments."""
    kwargs = {q.name: p[step_name(q.name)] for q in library_params(fn) if step_name(q.name) in p}
    return fn(model, **kwargs, **supplied)


@dataclass
class StepKind:
    """A kind of step: its parameters, how it runs, and whether it runs under the
    session's interventions (``run`` is None for ``interventions``, which changes them).
    ``wraps`` names the library functions whose arguments are its parameters."""

    name: str
    params: dict[str, Param]
    run: Runner | None
    uses_interventions: bool = False
    doc: str = ""
    wraps: tuple[Callable[..., Any], ...] = ()

    @classmethod
    def wrapping(
        cls,
        name: str,
        wraps: tuple[Callable[..., Any], ...],
        run: Runner,
        uses_interventions: bool,
        doc: str,
        own: dict[str, Param] | None = None,
    ) -> StepKind:
        """A kind whose parameters are those of ``wraps`` (see :func:`derived_params`)
        and its ``own``."""
        return cls(name, derived_params(wraps, own), run, uses_interventions, doc, wraps)

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
            param = self.params[key]
            if value is not None and not param.accepts(value):
                raise SessionError(
                    f"step {self.name!r}: {key} must be {param.expects}, got {_short(value)}"
                )
            if param.fill is not None:
                try:
                    full[key] = param.fill(value)
                except InputError as err:
                    raise SessionError(f"step {self.name!r}: {key}: {err}") from None
        return {k: v for k, v in full.items() if v is not None}

    def listens(self, listener: str) -> bool:
        """Whether its runner takes ``listener`` (``on_token``, ``on_progress``)."""
        return self.run is not None and listener in inspect.signature(self.run).parameters

    @property
    def streams(self) -> bool:
        """Whether its runs can stream tokens (its runner takes ``on_token``)."""
        return self.listens("on_token")

    def execute(
        self, model: InterpretableModel, params: Params, state: InterventionList, **supplied: Any
    ) -> tuple[Any, Summary]:
        """``(result, summary)`` of completed ``params``: under the enabled interventions
        of ``state`` when the kind uses them; an ``interventions`` step changes ``state``.
        ``supplied``: arguments that are no parameter (``on_token`` for ``generate``)."""
        if self.run is None:
            return run_interventions(model, params, state)
        active = state.enabled() if self.uses_interventions else {}
        return self.run(model, params, active, **supplied)


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


def _summaries(result: Any, digits: int) -> Summary:
    """``result.to_summary()`` rounded; for a list of results (a batch of prompts or
    pairs), ``{"batch": [summary, ...]}`` (a summary is a table in the file)."""
    if isinstance(result, list):
        return {"batch": [_rounded(r.to_summary(), digits) for r in result]}
    summary: Summary = _rounded(result.to_summary(), digits)
    return summary


def _run_trace(
    model: InterpretableModel, p: Params, active: dict[str, InterventionFn]
) -> tuple[Any, Summary]:
    """One forward capturing what ``capture`` names (everything by default) and the layer
    outputs; the summary keeps the top next tokens and the norm of each layer's residual
    at the last real token, of the first row."""
    layers = [model.layer_name(i) for i in range(model.num_layers)]
    capture = p.get("capture")
    if capture is not None:
        capture = [*([capture] if isinstance(capture, str) else capture), *layers]
    trace = _call(type(model).run, model, {**p, "capture": capture}, interventions=active or None)
    last = trace.last_token(trace.output)[0]
    probs = mx.softmax(last, axis=-1)
    ids, top = lens.top_entries(probs, p["top_k"])
    ids_list = _ints(ids)
    norms = [_float(mx.linalg.norm(trace.last_token(trace.activations[n])[0])) for n in layers]
    summary = {
        "top_ids": ids_list,
        "top_tokens": [model.token_text(i) for i in ids_list],
        "top_probs": _floats(top),
        "logit_norm": _float(mx.linalg.norm(last)),
        "layer_norms": norms,
    }
    return trace, _rounded(summary)


def _run_lens(
    model: InterpretableModel, p: Params, active: dict[str, InterventionFn]
) -> tuple[Any, Summary]:
    result = _call(lens.lens, model, p, interventions=active or None)
    return result, _summaries(result, 6)


def _run_tuned_lens(
    model: InterpretableModel, p: Params, active: dict[str, InterventionFn]
) -> tuple[Any, Summary]:
    """The tuned lens saved at ``lens`` (training is a library function only); the summary
    adds its weights' digest, so a replay through other weights is a difference."""
    result = _call(tuned_lens.tuned_lens, model, p, interventions=active or None)
    digest = tuned_lens.load_tuned_lens(p["lens"]).digest
    return result, {**_summaries(result, 6), "lens_digest": digest}


def _run_patching(
    model: InterpretableModel, p: Params, active: dict[str, InterventionFn]
) -> tuple[Any, Summary]:
    result = _call(patching.patching_sweep, model, p)
    return result, _summaries(result, 4)


def _run_attribution(
    model: InterpretableModel, p: Params, active: dict[str, InterventionFn]
) -> tuple[Any, Summary]:
    result = _call(attribution.attribution_patching, model, p)
    return result, _summaries(result, 5)


def _run_head_patching(
    model: InterpretableModel, p: Params, active: dict[str, InterventionFn]
) -> tuple[Any, Summary]:
    result = _call(head_patching.head_patching, model, p)
    return result, _summaries(result, 4)


def _run_head_attribution(
    model: InterpretableModel, p: Params, active: dict[str, InterventionFn]
) -> tuple[Any, Summary]:
    result = _call(head_patching.head_attribution, model, p)
    return result, _summaries(result, 5)


def _run_dla(
    model: InterpretableModel, p: Params, active: dict[str, InterventionFn]
) -> tuple[Any, Summary]:
    result = _call(dla.direct_logit_attribution, model, p)
    return result, _summaries(result, 5)


def _run_steering(
    model: InterpretableModel, p: Params, active: dict[str, InterventionFn]
) -> tuple[Any, Summary]:
    _layer(model, p["layer"])
    vector = _call(steering.steering_vector, model, p)
    baseline, steered = _call(steering.steer, model, p, vector=vector)
    summary = {
        "baseline": baseline,
        "steered": steered,
        "vector_norm": round(_float(mx.linalg.norm(vector)), 5),
        "vector": vector,
    }
    return summary, summary


def _run_generate(
    model: InterpretableModel,
    p: Params,
    active: dict[str, InterventionFn],
    on_token: steering.TokenListener | None = None,
) -> tuple[Any, Summary]:
    text, ids = _call(
        steering.generate_with_ids, model, p, interventions=active or None, on_token=on_token
    )
    summary = {"text": text, "token_ids": ids}
    return summary, summary


def _last_query(weights: mx.array) -> tuple[list[int], list[float]]:
    """Per head of one row's ``(heads, q, k)`` weights: the key the last query attends to
    most, and that weight."""
    last = weights[:, -1, :]
    return _ints(mx.argmax(last, axis=-1)), _rounded(_floats(mx.max(last, axis=-1)), 5)


def _run_attention(
    model: InterpretableModel, p: Params, active: dict[str, InterventionFn]
) -> tuple[Any, Summary]:
    """``layer`` (the step's own): that layer's heads, as steps have always kept them;
    otherwise every layer of ``layers`` (default all), a list per layer."""
    if "layer" in p and "layers" in p:
        raise SessionError("an attention step takes layer (one) or layers (a list), not both")
    one = "layer" in p
    layers = [_layer(model, p["layer"])] if one else p.get("layers")
    patterns = _call(attention.attention_patterns, model, {**p, "layers": layers})
    per_layer = {i: _last_query(weights[0]) for i, weights in patterns.items()}
    if one:
        argmax, top = per_layer[p["layer"]]
        return patterns, {"layer": p["layer"], "last_query_argmax": argmax, "last_query_max": top}
    summary = {
        "layers": list(per_layer),
        "last_query_argmax": [argmax for argmax, _ in per_layer.values()],
        "last_query_max": [top for _, top in per_layer.values()],
    }
    return patterns, summary


def _run_head_detectors(
    model: InterpretableModel, p: Params, active: dict[str, InterventionFn]
) -> tuple[Any, Summary]:
    result = _call(detectors.detect_heads, model, p)
    return result, _summaries(result, 5)


def _run_causal_tracing(
    model: InterpretableModel, p: Params, active: dict[str, InterventionFn]
) -> tuple[Any, Summary]:
    result = _call(causal_tracing.causal_trace, model, p)
    return result, _summaries(result, 5)


def _run_trace_facts(
    model: InterpretableModel, p: Params, active: dict[str, InterventionFn]
) -> tuple[Any, Summary]:
    result = _call(causal_tracing.trace_facts, model, p)
    return result, _summaries(result, 5)


def _run_path_patching(
    model: InterpretableModel, p: Params, active: dict[str, InterventionFn]
) -> tuple[Any, Summary]:
    result = _call(path_patching.path_patching, model, p)
    return result, _summaries(result, 5)


def _run_path_patching_sweep(
    model: InterpretableModel, p: Params, active: dict[str, InterventionFn]
) -> tuple[Any, Summary]:
    result = _call(path_patching.path_patching_sweep, model, p)
    return result, _summaries(result, 5)


def _sae(p: Params) -> SAE:
    """The step's SAE: it travels in the params as its description (weights in the
    sidecar)."""
    return p["sae"] if isinstance(p["sae"], SAE) else sae_from_description(p["sae"])


def _run_feature_edit(
    model: InterpretableModel, p: Params, active: dict[str, InterventionFn]
) -> tuple[Any, Summary]:
    result = _call(edits.run_feature_edit, model, {**p, "sae": _sae(p)})
    return result, _summaries(result, 5)


def _run_train_sae(
    model: InterpretableModel,
    p: Params,
    active: dict[str, InterventionFn],
    on_progress: sae_train.ProgressListener | None = None,
) -> tuple[Any, Summary]:
    """The trained SAE (kept whole in the summary, weights in the sidecar), what training
    saw, and its measures on the first ``MEASURED_TEXTS`` of its texts.  A run its
    listener stopped has ``training.stopped`` and should not be recorded."""
    config = SAEConfig(**p["config"])  # every setting: complete() filled them in
    texts = p["texts"]
    sae = sae_train.train_sae(
        model,
        texts=texts,
        component=p.get("component"),
        layer=p.get("layer"),
        config=config,
        progress=False,
        on_progress=on_progress,
    )
    measured = measure.evaluate(sae, model, texts[:MEASURED_TEXTS])
    return sae, {
        "sae": describe_sae(sae),
        "component": sae.component,
        "d_sae": sae.d_sae,
        "training": _rounded(sae.training_stats),
        "measured": {**_rounded(measured), "texts": min(len(texts), MEASURED_TEXTS)},
    }


def _run_sae_features(
    model: InterpretableModel, p: Params, active: dict[str, InterventionFn]
) -> tuple[Any, Summary]:
    result = dashboard.prompt_features(_sae(p), model, text=p["text"], k=p["k"])
    return result, _summaries(result, 5)


def _run_feature_dashboard(
    model: InterpretableModel, p: Params, active: dict[str, InterventionFn]
) -> tuple[Any, Summary]:
    """The feature's dashboard over ``texts``; with ``text``, its activation there too
    (the result is ``(dashboard, on_prompt or None)``)."""
    sae = _sae(p)
    options = ("k", "window", "bins", "batch_size", "top_logits")
    found = dashboard.feature_dashboard(
        sae, model, texts=p["texts"], feature=p["feature"], **{k: p[k] for k in options}
    )
    on_prompt = (
        dashboard.feature_on_prompt(sae, model, p["text"], p["feature"]) if "text" in p else None
    )
    summary = _summaries(found, 5)
    if on_prompt is not None:
        summary["on_prompt"] = _rounded(on_prompt.to_summary(), 5)
    return (found, on_prompt), summary


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
        StepKind.wrapping(
            "trace",
            (InterpretableModel.run,),
            _run_trace,
            True,
            "one forward; the top next tokens at the last position",
            own={"top_k": CHECKS["top_k"].param(5)},
        ),
        StepKind.wrapping(
            "logit_lens",
            (lens.lens,),
            _run_lens,
            True,
            "what every layer predicts at every position",
        ),
        StepKind.wrapping(
            "tuned_lens",
            (tuned_lens.tuned_lens,),
            _run_tuned_lens,
            True,
            "what every layer predicts through a saved tuned lens's translators",
            own={"lens": Param(REQUIRED, "the path of a saved tuned lens (.toml)", _is_lens_path)},
        ),
        StepKind.wrapping(
            "activation_patching",
            (patching.patching_sweep,),
            _run_patching,
            False,
            "recovery per layer from patching clean into corrupted",
        ),
        StepKind.wrapping(
            "attribution_patching",
            (attribution.attribution_patching,),
            _run_attribution,
            False,
            "gradient estimate of every layer x position patch",
        ),
        StepKind.wrapping(
            "head_patching",
            (head_patching.head_patching,),
            _run_head_patching,
            False,
            "recovery per layer x head from patching each head clean into corrupted",
        ),
        StepKind.wrapping(
            "head_attribution",
            (head_patching.head_attribution,),
            _run_head_attribution,
            False,
            "gradient estimate of every layer x head x position head patch",
        ),
        StepKind.wrapping(
            "direct_logit_attribution",
            (dla.direct_logit_attribution,),
            _run_dla,
            False,
            "a logit (difference) split into embedding, heads, MLPs and biases",
        ),
        StepKind.wrapping(
            "steering",
            (steering.steering_vector, steering.steer),
            _run_steering,
            False,
            "a contrast vector added at a layer while generating",
        ),
        StepKind.wrapping(
            "generate",
            (steering.generate_with_ids,),
            _run_generate,
            True,
            "a continuation (greedy, or sampled) under the active interventions",
        ),
        StepKind.wrapping(
            "attention",
            (attention.attention_patterns,),
            _run_attention,
            False,
            "attention weights of every head of one layer (or of several)",
            own={"layer": INDEX.param(None)},
        ),
        StepKind.wrapping(
            "head_detectors",
            (detectors.detect_heads,),
            _run_head_detectors,
            False,
            "previous-token, duplicate-token, induction and first-token scores of every head",
        ),
        StepKind.wrapping(
            "causal_tracing",
            (causal_tracing.causal_trace,),
            _run_causal_tracing,
            False,
            "the answer's probability restoring each layer x position of a subject-corrupted run",
        ),
        StepKind.wrapping(
            "trace_facts",
            (causal_tracing.trace_facts,),
            _run_trace_facts,
            False,
            "causal tracing averaged over [prompt, subject, answer] facts, by kind of position",
        ),
        StepKind.wrapping(
            "path_patching",
            (path_patching.path_patching,),
            _run_path_patching,
            False,
            "what senders change in receivers along direct paths, everything else frozen",
        ),
        StepKind.wrapping(
            "path_patching_sweep",
            (path_patching.path_patching_sweep,),
            _run_path_patching_sweep,
            False,
            "path patching from every head and MLP, one at a time, to fixed receivers",
        ),
        StepKind.wrapping(
            "feature_edit",
            (edits.run_feature_edit,),
            _run_feature_edit,
            False,
            "ablate, scale, clamp or steer one SAE feature: next tokens and continuation",
        ),
        StepKind.wrapping(
            "train_sae",
            (sae_train.train_sae,),
            _run_train_sae,
            False,
            "a sparse autoencoder trained on one module's activations over texts",
        ),
        StepKind.wrapping(
            "sae_features",
            (dashboard.prompt_features,),
            _run_sae_features,
            False,
            "the strongest SAE features at each position of a prompt",
            own={"sae": SAE_CHECK.param(REQUIRED)},
        ),
        StepKind.wrapping(
            "feature_dashboard",
            (dashboard.feature_dashboard,),
            _run_feature_dashboard,
            False,
            "one SAE feature: top contexts over texts, histogram, logits it moves, a prompt",
            own={"sae": SAE_CHECK.param(REQUIRED), "text": PROMPT.param(None)},
        ),
        StepKind(
            "interventions",
            {"action": ACTION, "module": TEXT.param(None), "intervention": INTERVENTION},
            None,
            False,
            "set, remove, clear, enable or disable an intervention",
        ),
    ]
}


def kind(name: str) -> StepKind:
    """The step kind called ``name``; a ``SessionError`` naming the closest kinds otherwise
    (one short line: the full list, grown long, is in docs/sessions.md)."""
    if name not in KINDS:
        close = difflib.get_close_matches(str(name), KINDS, n=3) if isinstance(name, str) else []
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        raise SessionError(
            f"unknown step kind {_short(name)}{hint}; the {len(KINDS)} kinds are "
            "mlxterp.session.KINDS, listed in docs/sessions.md"
        )
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


def compare_steps(first: Any, second: Any, tolerance: float = 1e-3) -> Comparison:
    """Where two recorded steps differ: their kinds, parameters and results (``summary``),
    numbers within ``tolerance`` as replay compares them; each ``Difference`` holds the
    first step's value as ``recorded`` and the second's as ``replayed``."""
    return compare(
        {"kind": first.kind, "params": first.params, "summary": first.summary},
        {"kind": second.kind, "params": second.params, "summary": second.summary},
        tolerance,
    )


def describe_params(params: Params) -> Params:
    """Parameters with interventions and SAEs as descriptions (what is saved)."""
    return {
        k: (
            v.describe()
            if isinstance(v, Intervention)
            else describe_sae(v)
            if isinstance(v, SAE)
            else v
        )
        for k, v in params.items()
    }
