"""Per-head outputs (issue 15, part 1): names, capture and interventions on every architecture."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlxterp import InterpretableModel, InterventionError, ModuleNameError
from mlxterp import interventions as iv
from mlxterp.checkpoints import ARCHITECTURES
from mlxterp.heads import projection_bias

ARCHS = [a for a in ARCHITECTURES if a != "medium_llama"]
PROMPT = "The capital of France is"


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request, checkpoint_dir):
    return request.param, InterpretableModel(checkpoint_dir(request.param))


def _layout(model: InterpretableModel, layer: int):
    return model.module_index.heads[model.layer_name(layer, "attn")]


def _bias(model: InterpretableModel, layer: int) -> mx.array | float:
    bias = projection_bias(model.module(_layout(model, layer).proj).module)
    return 0.0 if bias is None else bias


def test_every_attention_layer_has_a_head_layout(arch_model):
    _arch, model = arch_model
    assert len(model.module_index.heads) == model.num_layers
    for layout in model.module_index.heads.values():
        assert layout.n_heads == 4 and layout.head_dim == 16


def test_heads_sum_to_the_attention_output(arch_model):
    _arch, model = arch_model
    per_layer = model.head_outputs(PROMPT)
    trace = model.run(PROMPT, capture=["layers.*.attn"])
    assert sorted(per_layer) == list(range(model.num_layers))
    for layer, heads in per_layer.items():
        attn = trace.activations[f"layers.{layer}.attn"]
        assert heads.shape == (1, attn.shape[1], 4, attn.shape[-1])
        total = heads.sum(axis=-2) + _bias(model, layer)
        assert mx.abs(total - attn).max().item() < 1e-5


@pytest.mark.parametrize(
    "make",
    [
        lambda shape: iv.zero_out,
        lambda shape: iv.scale(2.5),
        lambda shape: iv.replace_with(mx.random.normal(shape, key=mx.random.key(3))),
    ],
    ids=["zero", "scale", "replace"],
)
def test_intervening_on_one_head_changes_only_its_share(arch_model, make):
    _arch, model = arch_model
    capture = ["layers.1.attn", "layers.1.attn.heads", "layers.1.attn.heads.2"]
    base = model.run(PROMPT, capture=capture)
    old = base.activations["layers.1.attn.heads.2"]
    fn = make(old.shape)
    run = model.run(PROMPT, capture=capture, interventions={"layers.1.attn.heads.2": fn})
    new = run.activations["layers.1.attn.heads.2"]
    assert mx.array_equal(new, fn(old)).item()
    before, after = base.activations["layers.1.attn.heads"], run.activations["layers.1.attn.heads"]
    assert mx.array_equal(after[..., 2, :], new).item()
    for other in (0, 1, 3):
        assert mx.array_equal(after[..., other, :], before[..., other, :]).item()
    moved = run.activations["layers.1.attn"] - base.activations["layers.1.attn"]
    assert mx.abs(moved - (new - old)).max().item() < 1e-5
    assert not mx.array_equal(run.output, base.output).item()


def test_all_heads_at_once_and_positions(arch_model):
    _arch, model = arch_model
    base = model.run(PROMPT, capture=["layers.0.attn", "layers.0.attn.heads"])
    run = model.run(
        PROMPT,
        capture=["layers.0.attn", "layers.0.attn.heads.*"],
        interventions={"layers.0.attn.heads": iv.zero_out.at(-1)},
    )
    attn, base_attn = run.activations["layers.0.attn"], base.activations["layers.0.attn"]
    # Every head zeroed at the last position: the attention output there is the bias alone.
    bias = mx.broadcast_to(mx.array(_bias(model, 0)), attn[0, -1].shape)
    assert mx.abs(attn[0, -1] - bias).max().item() < 1e-5
    assert mx.array_equal(attn[0, :-1], base_attn[0, :-1]).item()
    for head in range(4):
        assert mx.abs(run.activations[f"layers.0.attn.heads.{head}"][0, -1]).max().item() == 0


def test_the_model_computes_exactly_as_before_after_head_traces(arch_model):
    _arch, model = arch_model
    before = model(PROMPT)
    model.run(
        PROMPT,
        capture=["layers.*.attn.heads.*"],
        interventions={"layers.0.attn.heads.1": iv.scale(4.0)},
    )
    assert mx.array_equal(model(PROMPT), before).item()


def test_head_names_resolve_through_every_alias(tiny_llama):
    model = tiny_llama
    canonical = "model.layers.2.self_attn.heads.3"
    for name in (
        "layers.2.attn.heads.3",
        "layers.2.self_attn.heads.3",
        "model.layers.2.self_attn.heads.3",
        "model.model.layers.2.self_attn.heads.3",
    ):
        assert model.resolve(name) == canonical
    assert model.resolve("layers.2.attn.heads") == "model.layers.2.self_attn.heads"
    trace = model.run(mx.array([[1, 2, 3]]), capture="layers.2.attn.heads.3")
    assert trace.activations["layers.2.self_attn.heads.3"].shape == (1, 3, 64)
    assert list(trace.activations) == [canonical, "__model_output__"]


def test_default_capture_keeps_modules_not_heads(tiny_llama):
    trace = tiny_llama.run(mx.array([[1, 2, 3]]))
    assert not any(".heads" in name for name in trace.activations)
    assert "layers.0.attn" in trace.activations
    assert "layers.0.attn.heads.0" not in trace.activations


def test_capture_patterns_reach_heads(tiny_llama):
    trace = tiny_llama.run(mx.array([[1, 2, 3]]), capture=["layers.*.attn.heads.[13]"])
    assert list(trace.activations) == [
        *(f"model.layers.{layer}.self_attn.heads.{head}" for layer in range(3) for head in (1, 3)),
        "__model_output__",
    ]


def test_unknown_heads_say_what_exists(tiny_llama):
    with pytest.raises(ModuleNameError, match=r"head '4' does not exist.*4 heads, numbered 0\.\.3"):
        tiny_llama.resolve("layers.0.attn.heads.4")
    with pytest.raises(
        ModuleNameError, match=r"has no per-head outputs.*layers\.0\.self_attn\.heads\.0"
    ):
        tiny_llama.run(mx.array([[1, 2]]), interventions={"layers.0.mlp.heads.0": iv.zero_out})
    with pytest.raises(ModuleNameError, match=r"unknown module name 'layers\.7\.attn'"):
        tiny_llama.run(mx.array([[1, 2]]), capture="layers.7.attn.heads.0")


def test_intervening_on_all_heads_and_one_head_at_once_is_refused(tiny_llama):
    with pytest.raises(InterventionError, match="at once"):
        tiny_llama.run(
            mx.array([[1, 2, 3]]),
            interventions={
                "layers.0.attn.heads": iv.zero_out,
                "layers.0.attn.heads.1": iv.scale(2),
            },
        )


def test_head_interventions_stay_installed_for_generation(tiny_llama):
    ids = mx.array([[5, 6, 7, 8]])
    chosen = {"layers.1.attn.heads.0": iv.zero_out}
    traced = tiny_llama.run(ids, interventions=chosen).output
    with tiny_llama.intervened(chosen):
        plain = tiny_llama(ids)
    assert mx.array_equal(plain.astype(mx.float32), traced).item()
    assert not mx.array_equal(tiny_llama(ids).astype(mx.float32), traced).item()


def test_head_proxies_save_captured_heads(tiny_llama):
    ids = mx.array([[1, 2, 3]])
    with tiny_llama.trace(ids, capture=["layers.1.attn.heads", "layers.1.attn.heads.2"]) as trace:
        every = tiny_llama.layers[1].attn.heads.output.save()
        one = tiny_llama.layers[1].attn.heads[2].output.save()
    assert every.shape == (1, 3, 4, 64) and mx.array_equal(every[..., 2, :], one).item()
    assert trace.get("layers.1.attn.heads.2.output") is one
    assert len(tiny_llama.layers[1].attn.heads) == 4
    with pytest.raises(IndexError, match=r"there are 4 heads \(0\.\.3\)"):
        tiny_llama.layers[1].attn.heads[4]
    with pytest.raises(KeyError, match="not captured"), tiny_llama.trace(ids):
        tiny_llama.layers[1].attn.heads[0].output.save()


def test_patching_takes_head_components_and_all_heads_equal_the_attention(demo):
    clean, corrupted = "The capital of France is", "The capital of Germany is"
    layers = [2, 12]
    heads = demo.activation_patching(clean, corrupted, component="attn.heads", layers=layers)
    attn = demo.activation_patching(clean, corrupted, component="attn", layers=layers)
    assert heads == pytest.approx(attn, abs=1e-3)
    one = demo.activation_patching(clean, corrupted, component="attn.heads.2", layers=layers)
    assert sorted(one) == layers and one != pytest.approx(attn, abs=1e-3)
