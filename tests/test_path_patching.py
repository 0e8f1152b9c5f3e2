"""Path patching (issue 15, part 5): identities with activation patching and hand-built runs."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlxterp import InputError, InterpretableModel
from mlxterp.checkpoints import TINY
from mlxterp.patching import patching_sweep
from mlxterp.path_patching import _head_input, path_patching, path_patching_sweep

CLEAN, CORRUPTED = "The capital of France is", "The capital of Germany is"
ANSWER = (" Paris", " Berlin")
# Token-id prompts for the tiny checkpoints (their tokenizer splits the demo's words).
IDS_CLEAN, IDS_CORRUPTED = [1, 40, 41, 42, 43, 44, 45], [1, 40, 41, 60, 43, 61, 45]
IDS_ANSWER = (7, 9)


@pytest.fixture(scope="module", params=TINY)
def arch_model(request, checkpoint_dir):
    return request.param, InterpretableModel(checkpoint_dir(request.param))


@pytest.fixture(scope="module")
def gqa(checkpoint_dir):
    """A tiny grouped-query llama: 4 query heads, 2 key/value heads, 2 layers."""
    return InterpretableModel(checkpoint_dir("llama"))


def _ld(model: InterpretableModel, logits: mx.array, answer) -> float:
    a, b = (model.token_id(t) for t in answer)
    return (logits[0, -1, a] - logits[0, -1, b]).item()


# ------------------------------------------------------------------ identities
def _through_all_paths(model, clean, corrupted, answer, sender, component, layer):
    path = path_patching(
        model, clean, corrupted, sender, "final", "logit_diff", answer, freeze="none"
    )
    # Activation patching denoises: the prompts swapped, it patches the corrupted values of
    # the sender into the clean run, which is what path patching noises with.
    plain = patching_sweep(
        model,
        corrupted,
        clean,
        component=component,
        layers=[layer],
        metric="logit_diff",
        answer=answer,
    )
    assert path.value == pytest.approx(plain.values[layer], abs=1e-4)
    assert path.effect == pytest.approx(plain.recovery[layer], abs=1e-3)
    assert path.value != pytest.approx(path.clean_value, abs=1e-4)  # the sender matters


@pytest.mark.parametrize(
    "sender, component, layer",
    [("layers.6.attn.heads.2", "attn.heads.2", 6), ("layers.9.mlp", "mlp", 9)],
)
def test_sender_to_final_through_all_paths_is_activation_patching(demo, sender, component, layer):
    _through_all_paths(demo, CLEAN, CORRUPTED, ANSWER, sender, component, layer)


def test_sender_to_final_through_all_paths_on_every_architecture(arch_model):
    _arch, model = arch_model
    for sender, component in (("layers.0.attn.heads.1", "attn.heads.1"), ("layers.0.mlp", "mlp")):
        _through_all_paths(model, IDS_CLEAN, IDS_CORRUPTED, IDS_ANSWER, sender, component, 0)


def test_the_last_mlp_to_final_needs_no_freezing(demo):
    frozen = path_patching(
        demo, CLEAN, CORRUPTED, "layers.15.mlp", metric="logit_diff", answer=ANSWER
    )
    plain = patching_sweep(
        demo, CORRUPTED, CLEAN, component="mlp", layers=[15], metric="logit_diff", answer=ANSWER
    )
    assert frozen.freeze == "all"
    assert frozen.value == pytest.approx(plain.values[15], abs=1e-4)


@pytest.mark.parametrize("freeze", ["all", "none"])
def test_a_receiver_before_the_sender_is_untouched(demo, gqa, freeze):
    for model, clean, corrupted, answer, sender, receivers in (
        (
            demo,
            CLEAN,
            CORRUPTED,
            ANSWER,
            "layers.9.attn.heads.1",
            ["layers.4.attn.heads.2", "layers.4.mlp", "layers.9.attn.heads.*"],
        ),
        (demo, CLEAN, CORRUPTED, ANSWER, "layers.9.mlp", ["layers.9.attn.heads.0.q"]),
        (
            gqa,
            IDS_CLEAN,
            IDS_CORRUPTED,
            IDS_ANSWER,
            "layers.1.attn.heads.3",
            ["layers.0.attn.heads", "layers.1.attn.heads.1.k", "layers.0.mlp"],
        ),
    ):
        result = path_patching(
            model, clean, corrupted, sender, receivers, "logit_diff", answer, freeze=freeze
        )
        assert result.value == pytest.approx(result.clean_value, abs=1e-5)
        assert result.effect == pytest.approx(0.0, abs=1e-3)
    later = path_patching(
        demo, CLEAN, CORRUPTED, "layers.0.mlp", ["layers.2.mlp"], "logit_diff", ANSWER
    )
    assert abs(later.effect) > 0.5  # the same machinery moves receivers downstream


# ------------------------------------------------------------------ freezing, by hand
def _delta(model, clean, corrupted, head):
    """The sender head's corrupted-minus-clean share of the residual."""
    return (
        model.run(corrupted, capture=head).activations[head]
        - model.run(clean, capture=head).activations[head]
    )


def _replace_columns(columns: tuple[int, int], value: mx.array):
    def fn(x):
        keep = mx.arange(x.shape[-1])
        inside = (keep >= columns[0]) & (keep < columns[1])
        return mx.where(inside, value.astype(x.dtype), x)

    return fn


@pytest.mark.parametrize(
    "which, head, columns", [("q", 3, (48, 64)), ("k", 3, (16, 32)), ("v", 0, (0, 16))]
)
def test_a_path_to_a_head_equals_the_hand_built_two_step_run(gqa, which, head, columns):
    """Everything but the sender frozen, the receiver's residual is the clean one plus the
    sender's change (no other component moves): the receiver's projection of it, put in its
    head's columns (grouped-query: query head 3 reads key/value head 1), is the path."""
    model, clean, corrupted = gqa, IDS_CLEAN, IDS_CORRUPTED
    delta = _delta(model, clean, corrupted, "layers.0.attn.heads.2")
    layer1 = model.module_index.modules[model.layer_name(1)]
    resid = model.run(clean, capture=model.layer_name(0)).activations[model.layer_name(0)]
    projected = layer1.self_attn[f"{which}_proj"](layer1.input_layernorm(resid + delta))
    site = f"layers.1.attn.{which}_proj"
    by_hand = model.run(clean, interventions={site: _replace_columns(columns, projected)})
    receiver = f"layers.1.attn.heads.{head}.{which}"
    path = path_patching(
        model, clean, corrupted, "layers.0.attn.heads.2", [receiver], "logit_diff", IDS_ANSWER
    )
    assert path.value == pytest.approx(_ld(model, by_hand.output, IDS_ANSWER), abs=1e-4)
    assert path.value != pytest.approx(path.clean_value, abs=1e-4)


def test_a_path_to_an_mlp_and_to_final_equal_hand_built_runs(demo):
    sender, a, b = "layers.3.attn.heads.1", 3, 11
    delta = _delta(demo, CLEAN, CORRUPTED, sender)
    # MLP receiver: its input reads the clean residual after layer b's attention + delta.
    names = [demo.layer_name(b - 1), demo.layer_name(b, "attn")]
    clean = demo.run(CLEAN, capture=names)
    block = demo.module_index.modules[demo.layer_name(b)]
    h = clean.activations[names[0]] + clean.activations[names[1]] + delta
    mlp_out = block.mlp(block.post_attention_layernorm(h))
    by_hand = demo.run(CLEAN, interventions={f"layers.{b}.mlp": lambda x: mlp_out})
    path = path_patching(demo, CLEAN, CORRUPTED, sender, [f"layers.{b}.mlp"], "logit_diff", ANSWER)
    assert path.value == pytest.approx(_ld(demo, by_hand.output, ANSWER), abs=1e-4)
    # The final residual: the clean one plus the sender's change.
    last = demo.layer_name(demo.num_layers - 1)
    by_hand = demo.run(CLEAN, interventions={last: lambda x: x + delta})
    path = path_patching(demo, CLEAN, CORRUPTED, sender, "final", "logit_diff", ANSWER)
    assert path.value == pytest.approx(_ld(demo, by_hand.output, ANSWER), abs=1e-4)
    assert a < b


def test_freezing_the_heads_only_lets_the_mlps_recompute(demo):
    every = {
        freeze: path_patching(
            demo,
            CLEAN,
            CORRUPTED,
            "layers.2.attn.heads.2",
            "final",
            "logit_diff",
            ANSWER,
            freeze=freeze,
        ).value
        for freeze in ("all", "heads", "none")
    }
    assert len({round(v, 5) for v in every.values()}) == 3


# ------------------------------------------------------------------ seams
def test_each_head_input_seam_reaches_its_head_only(arch_model):
    """Replacing a receiver's columns with noise moves its own head (a key or value: its
    group's query heads) and no other head of the layer, on every layout (separate, fused
    and per-head interleaved projections, olmo2's query norm over all heads)."""
    _arch, model = arch_model
    layout = model.module_index.heads[model.layer_name(1, "attn")]
    ids = IDS_CLEAN
    base = model.run(ids, capture=layout.name).activations[layout.name]
    size = layout.n_heads // (model.config.get("num_key_value_heads") or layout.n_heads)
    group = {h for h in range(layout.n_heads) if h // size == 1 // size}  # reads head 1's k, v
    for which in ("q", "k", "v"):
        receiver = _head_input(model, layout, 1, which)
        width = model.run(ids, capture=receiver.site).activations[receiver.site].shape[-1]
        noise = 3 * mx.random.normal((1, len(ids), width), key=mx.random.key(1))
        run = model.run(
            ids,
            capture=layout.name,
            interventions={receiver.site: _replace_columns(receiver.columns, noise)},
        )
        moved = mx.abs(run.activations[layout.name] - base).max(axis=(0, 1, 3)).tolist()
        changed = {h for h, m in enumerate(moved) if m > 1e-6}
        assert changed == ({1} if which == "q" else group), (which, moved)


def test_grouped_keys_are_one_receiver(gqa):
    result = path_patching(
        gqa,
        IDS_CLEAN,
        IDS_CORRUPTED,
        "layers.0.mlp",
        "layers.1.attn.heads.*.k",
        "logit_diff",
        IDS_ANSWER,
    )
    # 4 query heads, 2 key heads: heads 0 and 1 share a key, heads 2 and 3 another.
    assert result.receivers == ["layers.1.self_attn.heads.0.k", "layers.1.self_attn.heads.2.k"]


# ------------------------------------------------------------------ sweep
def test_the_sweep_equals_one_run_per_sender(demo):
    receivers = ["layers.12.attn.heads.0", "layers.12.mlp"]
    sweep = path_patching_sweep(
        demo, CLEAN, CORRUPTED, receivers, "logit_diff", ANSWER, layers=[2, 8], batch_size=3
    )
    assert sweep.layers == [2, 8] and len(sweep.heads) == 2 and len(sweep.heads[0]) == 4
    for i, layer in enumerate(sweep.layers):
        for sender, value in [
            *((f"layers.{layer}.attn.heads.{h}", sweep.head_values[i][h]) for h in range(4)),
            (f"layers.{layer}.mlp", sweep.mlp_values[i]),
        ]:
            one = path_patching(demo, CLEAN, CORRUPTED, sender, receivers, "logit_diff", ANSWER)
            assert value == pytest.approx(one.value, abs=1e-4), sender
    assert sweep.receivers == [
        *(f"layers.12.self_attn.heads.0.{x}" for x in "qkv"),
        "layers.12.mlp",
    ]


def test_results_summarise_and_draw(demo):
    one = path_patching(demo, CLEAN, CORRUPTED, "layers.14.mlp", positions=[-1])
    summary = one.to_summary()
    assert summary["senders"] == ["layers.14.mlp"] and summary["receivers"] == ["final"]
    assert summary["positions"] == [5] and summary["metric"] == "l2"
    assert summary["clean_value"] == 0 and summary["value"] > 0
    assert "corrupted" in one.table() and "path" in one.chart(color=False)
    sweep = path_patching_sweep(demo, CLEAN, CORRUPTED, layers=[14, 15], include_mlp=False)
    assert sweep.mlp is None and "mlp" not in sweep.to_summary()
    grid = sweep.heatmap(color=False)
    assert "L14" in grid and "H3" in grid and "rows: layers" in grid


def test_bad_arguments_say_what_is_wanted(demo):
    cases = [
        ({"senders": "layers.3.attn.q_proj"}, "neither a head nor an MLP"),
        (
            {"senders": "layers.3.attn.heads.0", "receivers": ["final", "layers.5.mlp"]},
            "on its own",
        ),
        ({"senders": "layers.3.mlp", "receivers": "layers.5.mlp.q"}, "receivers are"),
        ({"senders": "layers.3.mlp", "freeze": "some"}, "freeze must be"),
        ({"senders": []}, "non-empty list"),
        ({"senders": "layers.3.mlp", "positions": 9}, "outside the prompt"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message):
            path_patching(demo, CLEAN, CORRUPTED, **kwargs)
    with pytest.raises(InputError, match="same length"):
        path_patching(demo, CLEAN, "The capital of the Netherlands is", "layers.3.mlp")
