"""The circuits functions as InterpretableModel methods and package names: each method
gives exactly what its function gives, and no package name shadows a submodule."""

from __future__ import annotations

import importlib
import types

import mlxterp
from mlxterp import causal_tracing, detectors, head_patching, path_patching, tuned_lens

CLEAN, CORRUPTED = "The capital of France is", "The capital of Germany is"


def test_methods_equal_functions(demo):
    pair = (CLEAN, CORRUPTED)
    cases = [
        (
            demo.head_patching(*pair, layers=[0], heads=[0, 1]),
            head_patching.head_patching(demo, *pair, layers=[0], heads=[0, 1]),
        ),
        (
            demo.head_attribution(*pair, layers=[0], answer=(" Paris", " Berlin")),
            head_patching.head_attribution(demo, *pair, layers=[0], answer=(" Paris", " Berlin")),
        ),
        (
            demo.path_patching(*pair, "layers.0.attn.heads.0"),
            path_patching.path_patching(demo, *pair, "layers.0.attn.heads.0"),
        ),
        (
            demo.path_patching_sweep(*pair, layers=[0], include_mlp=False),
            path_patching.path_patching_sweep(demo, *pair, layers=[0], include_mlp=False),
        ),
        (
            demo.detect_heads(["induction"], layers=[0], seq_len=6, batch=1),
            detectors.detect_heads(demo, ["induction"], layers=[0], seq_len=6, batch=1),
        ),
        (
            demo.causal_trace(CLEAN, "France", layers=[0]),
            causal_tracing.causal_trace(demo, CLEAN, "France", layers=[0]),
        ),
        (
            demo.trace_facts([(CLEAN, "France", " Paris")], layers=[0]),
            causal_tracing.trace_facts(demo, [(CLEAN, "France", " Paris")], layers=[0]),
        ),
        (demo.lens_kl([CLEAN], layers=[0]), tuned_lens.lens_kl(demo, [CLEAN], layers=[0])),
    ]
    for method, function in cases:
        assert type(method) is type(function)
        assert method.to_summary() == function.to_summary()
    trained = demo.train_tuned_lens([CLEAN], steps=1, batch_size=1, max_length=4)
    again = tuned_lens.train_tuned_lens(demo, [CLEAN], steps=1, batch_size=1, max_length=4)
    assert type(trained) is type(again) and trained.digest == again.digest


def test_package_names_keep_submodules():
    # A package attribute named like a submodule would shadow it for `from mlxterp import
    # x`, which mlxterp.session.steps uses; the functions are model methods instead.
    for name in ("head_patching", "path_patching", "tuned_lens", "causal_tracing", "detectors"):
        assert isinstance(getattr(mlxterp, name), types.ModuleType), name
        assert getattr(mlxterp, name) is importlib.import_module(f"mlxterp.{name}")
    for name in ("causal_trace", "trace_facts", "detect_heads", "head_attribution"):
        assert callable(getattr(mlxterp, name)) and name in mlxterp.__all__
