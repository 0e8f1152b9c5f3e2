"""Everything the library takes, a session can record: the step parameters are generated
from the library's signatures, every one is given a value, recorded in a real session on
the demo model, saved to disk, reloaded and replayed to the same numbers.

A parameter added to a library function later is picked up here without any edit: it
gets a value from ``SAMPLES`` (by name) or from its annotation, and the test fails when the
step kind does not take it.
"""

from __future__ import annotations

import functools
import inspect
import tomllib

import mlx.core as mx
import pytest

from mlxterp import (
    InterpretableModel,
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
from mlxterp import attention as attention
from mlxterp.errors import SessionError
from mlxterp.sae import SAE, SAEConfig, dashboard, edits
from mlxterp.sae import train as sae_train
from mlxterp.session import KINDS, Session, replay
from mlxterp.session.steps import REQUIRED, step_name

# The library functions each step kind must be able to record, whatever it calls.
LIBRARY = {
    "trace": [InterpretableModel.run],
    "logit_lens": [lens.lens],
    "tuned_lens": [tuned_lens.tuned_lens],
    "activation_patching": [patching.patching_sweep, patching.activation_patching],
    "attribution_patching": [attribution.attribution_patching],
    "steering": [steering.steering_vector, steering.steer],
    "generate": [steering.generate_with_ids, steering.generate],
    "attention": [attention.attention_patterns],
    "head_detectors": [detectors.detect_heads],
    "causal_tracing": [causal_tracing.causal_trace],
    "trace_facts": [causal_tracing.trace_facts],
    "path_patching": [path_patching.path_patching],
    "path_patching_sweep": [path_patching.path_patching_sweep],
    "head_patching": [head_patching.head_patching],
    "head_attribution": [head_patching.head_attribution],
    "direct_logit_attribution": [dla.direct_logit_attribution],
    "feature_edit": [edits.run_feature_edit],
    "train_sae": [sae_train.train_sae],
    "sae_features": [dashboard.prompt_features],
    "feature_dashboard": [dashboard.feature_dashboard],  # its own `text`: feature_on_prompt
}
# Arguments no step records, and why:
NOT_RECORDED = {
    "model",  # the session's model
    "interventions",  # the session's own (intervention steps record them)
    "vector",  # steer's vector: the steering step computes it from positive/negative
    "on_token",  # generate's stream of tokens: Session.compute(on_token=) passes it
    "on_progress",  # train_sae's progress: Session.compute(on_progress=) passes it
    "progress",  # train_sae's progress bar on stderr
    # purely presentational (a terminal plot; nothing a summary keeps):
    "plot",
    "figsize",
    "cmap",
    "max_display_tokens",
    "output",  # run's: a trace step reads the logits, so it never turns them off
}

FRANCE, GERMANY = "The capital of France is", "The capital of Germany is"
SONG = "I hate this song. It is"
SAMPLES = {  # a valid value that is not the default, by step parameter name
    "text": FRANCE,
    "clean": FRANCE,
    "corrupted": GERMANY,
    "prompt": SONG,
    "positive": ["I love this movie. It is", "What a wonderful day. It is"],
    "negative": ["I hate this movie. It is", "What an awful day. It is"],
    "top_k": 2,
    "layers": [0, 7, 15],
    "target": " Paris",
    "baseline": " Berlin",
    "heads": [1, 3],
    "all_heads": True,
    "component": "attn",
    "metric": "logit_diff",
    "answer": [" Paris", " Berlin"],
    "positions": [-2, -1],
    "by_position": True,
    "batch_size": 2,
    "capture": ["layers.3.mlp"],
    "layer": 4,
    "position": "mean",
    "coefficient": 3.0,
    "max_tokens": 4,
    "temperature": 0.8,
    "seed": 3,
    "detections": ["induction", "previous_token"],
    "seq_len": 6,
    "subject": "France",
    "facts": [[FRANCE, "France", " Paris"], [GERMANY, "Germany", " Berlin"]],
    "window": 3,
    "noise": 2.0,
    "senders": "layers.6.attn.heads.2",
    "receivers": ["layers.12.attn.heads.1.q", "layers.12.mlp"],
    "freeze": "heads",
    "include_mlp": False,
    # an untrained SAE of the demo model's layer 4 (its features still move the output)
    "sae": SAE(64, SAEConfig(expansion_factor=2, k=4), "model.layers.4", 4, "demo"),
    "feature": 3,
    "mode": "clamp",
    "value": 12.0,
    "texts": [FRANCE, GERMANY, SONG] * 4,
    "config": {"expansion_factor": 2, "k": 4, "batch_size": 16, "epochs": 2},
}
PER_KIND = {  # where a kind needs another value
    ("attention", "text"): "river king apple garden letter river king apple",
    ("attention", "layers"): [2, 5],
    ("causal_tracing", "prompt"): FRANCE,
    ("steering", "component"): "mlp",
    ("attribution_patching", "metric"): "kl",  # logit_diff is its default
    ("head_attribution", "metric"): "kl",
    ("direct_logit_attribution", "position"): -2,  # one position, not "mean"
}
# Recorded in tests of their own: ``layer`` is the attention step's shorthand for
# ``layers=[layer]`` (not both at once); ``messages`` replaces ``text`` and needs a chat
# template, which the demo model lacks (tests/test_chat.py records it on a model with one).
APART = {("attention", "layer"), ("trace", "messages")}


def sample(kind: str, name: str, annotation: object = None) -> object:
    """A valid, non-default value for parameter ``name`` of step ``kind``."""
    if (kind, name) in PER_KIND:
        return PER_KIND[(kind, name)]
    if name in SAMPLES:
        return SAMPLES[name]
    text = str(annotation)
    for word, value in (("bool", True), ("int", 2), ("float", 0.5)):
        if word in text:
            return value
    pytest.fail(f"no sample value for {kind}.{name} ({text}): add one to SAMPLES")


def library_args(fn):
    """``(name, parameter)`` of every argument of ``fn`` a step should record."""
    taken = list(inspect.signature(fn).parameters.values())[1:]  # the model, or self
    return [(p.name, p) for p in taken if p.name not in NOT_RECORDED]


def test_every_kind_is_listed():
    assert set(LIBRARY) == set(KINDS) - {"interventions"}
    for name, fns in LIBRARY.items():
        assert set(KINDS[name].wraps) <= set(fns), name  # the test covers what it calls


@pytest.mark.parametrize("kind", sorted(LIBRARY))
def test_every_library_argument_is_a_step_parameter(kind):
    params = KINDS[kind].params
    for fn in LIBRARY[kind]:
        for name, p in library_args(fn):
            assert step_name(name) in params, f"{fn.__qualname__}({name}=) has no {kind} param"
            declared = params[step_name(name)].default
            if p.default is inspect.Parameter.empty:
                assert declared is REQUIRED, (kind, name)
            elif fn in KINDS[kind].wraps:
                assert declared == p.default, (kind, name)  # one source of truth


def _spy(calls, fn):
    @functools.wraps(fn)
    def spy(*args, **kwargs):
        calls.setdefault(fn.__name__, []).append(kwargs)
        return fn(*args, **kwargs)

    return spy


def _same(a, b) -> bool:
    if a is b:
        return True
    if isinstance(a, mx.array) or isinstance(b, mx.array):
        return bool(mx.array_equal(mx.array(a), mx.array(b)).item())
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, SAEConfig) and isinstance(b, dict):  # train_sae's config table
        return all(getattr(a, k) == v for k, v in b.items())
    if isinstance(a, dict) and isinstance(b, dict):  # an SAE's description (arrays inside)
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _record_and_replay(manager, tmp_path, kind, params, monkeypatch=None):
    """Record ``kind`` with ``params`` (spying on what the library receives), then load
    the saved file and replay it; returns ``(step, calls, loaded step)``."""
    calls: dict[str, list[dict]] = {}
    if monkeypatch is not None:
        for fn in KINDS[kind].wraps:
            owner = InterpretableModel if fn is InterpretableModel.run else inspect.getmodule(fn)
            monkeypatch.setattr(owner, fn.__name__, _spy(calls, fn))
    path = tmp_path / f"{kind}.toml"
    session = Session.new("demo", path, manager)
    step = session.run(manager, kind, **params)
    if monkeypatch is not None:
        monkeypatch.undo()
    with open(path, "rb") as handle:
        saved = tomllib.load(handle)["steps"][0]["params"]
    for name in params:
        assert name in saved, name  # in the TOML itself (an array as its sidecar reference)
    loaded = Session.load(path, manager).steps[0]
    assert all(_same(loaded.params[k], v) for k, v in step.params.items())
    report = replay(path, manager, tolerance=0.0)
    assert report.ok, report.format_text()
    assert report.steps[0].max_diff == 0.0
    return step, calls, loaded


@pytest.fixture(scope="module")
def lens_file(tmp_path_factory, demo) -> str:
    """A saved tuned lens of the demo model (the identity with a seeded bias), the value of
    a tuned_lens step's ``lens``."""
    saved = tuned_lens.TunedLens.identity(demo)
    saved.bias = mx.random.normal(saved.bias.shape, key=mx.random.key(0)) * 0.1
    return str(saved.save(tmp_path_factory.mktemp("tuned-lens") / "demo.toml"))


@pytest.mark.parametrize("kind", sorted(LIBRARY))
def test_every_parameter_records_reaches_the_library_and_replays(
    kind, manager, tmp_path, monkeypatch, lens_file
):
    params = {}
    for name, p in KINDS[kind].params.items():
        if (kind, name) in APART:
            continue
        fn_params = {step_name(n): q for fn in KINDS[kind].wraps for n, q in library_args(fn)}
        annotation = fn_params[name].annotation if name in fn_params else None
        params[name] = lens_file if name == "lens" else sample(kind, name, annotation)
        assert not _same(params[name], p.default), (kind, name)  # a value that matters
    _, calls, _ = _record_and_replay(manager, tmp_path, kind, params, monkeypatch)
    for fn in KINDS[kind].wraps:
        (received,) = calls[fn.__name__]
        for name, _p in library_args(fn):
            if (kind, step_name(name)) in APART:
                continue
            got, given = received.get(name), params[step_name(name)]
            if kind == "trace" and name == "capture":  # it captures the layers too
                got = got[: len(given)]
            assert _same(got, given), (kind, fn.__name__, name, got, given)


@pytest.mark.parametrize(
    "kind, params",
    [
        ("attention", {"text": "river king apple garden river king", "layer": 3}),
        ("trace", {"text": mx.array([1, 40, 41, 42], dtype=mx.int32)}),  # ids: to the sidecar
        ("logit_lens", {"text": [1, 40, 41, 42], "layers": [15]}),  # ids as a TOML list
        # a fact's subject as a [start, end] token range and its answer as a token id
        ("trace_facts", {"facts": [[FRANCE, [3, 5], 7]], "layers": [0, 15]}),
    ],
)
def test_other_forms_record_and_replay(kind, params, manager, tmp_path):
    _record_and_replay(manager, tmp_path, kind, params)


@pytest.mark.parametrize(
    "facts", [[], [[FRANCE, "France"]], [[FRANCE, 3, " Paris"]], [[FRANCE, "France", None]]]
)
def test_trace_facts_refuses_what_is_no_fact(facts, manager, tmp_path):
    session = Session.new("demo", tmp_path / "facts.toml", manager)
    with pytest.raises(SessionError, match="facts must be a list of facts"):
        session.run(manager, "trace_facts", facts=facts)


BATCHES = [
    ("logit_lens", {"text": [FRANCE, "The capital of Italy is"], "target": " Paris"}),
    (
        "activation_patching",
        {
            "clean": [FRANCE, "The capital of Italy is"],
            "corrupted": [GERMANY, "The capital of Spain is"],
            "component": "output",
            "positions": [-1],
            "layers": [0, 8, 15],
        },
    ),
    (
        "attribution_patching",
        {
            "clean": [FRANCE, FRANCE],
            "corrupted": [GERMANY, "The capital of Spain is"],
            "answer": [[" Paris", " Berlin"], [" Paris", " Madrid"]],  # one pair per pair
        },
    ),
    ("trace", {"text": [FRANCE, "The capital of Italy is"]}),
    ("steering", {"positive": ["a b", "c d"], "negative": "e f", "layer": 2, "prompt": SONG}),
]


@pytest.mark.parametrize("kind, params", BATCHES, ids=[k for k, _ in BATCHES])
def test_batched_forms_record_and_replay(kind, params, manager, tmp_path):
    step, _, _ = _record_and_replay(manager, tmp_path, kind, params)
    if kind in ("logit_lens", "activation_patching", "attribution_patching"):
        assert len(step.summary["batch"]) == 2  # one summary per prompt or pair
