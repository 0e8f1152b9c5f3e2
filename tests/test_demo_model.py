"""The shipped demo model: it loads offline and shows the behaviour its card promises."""

from __future__ import annotations

import random

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import pytest

from mlxterp import demo_model
from mlxterp.demo_facts import (
    CAPITALS,
    IOI_HELD_OUT_TEMPLATES,
    IOI_OBJECTS,
    IOI_PLACES,
    IOI_TEMPLATES,
    LANDMARKS,
    NAMES,
    IOIPrompt,
    both_orders,
    ioi_held_out,
    ioi_prompt,
    ioi_test_prompts,
)
from mlxterp.detectors import repeated_sequences
from mlxterp.loading import DEMO_DIR


def first_token(model, word: str) -> int:
    ids = model.encode(" " + word)
    return ids[1] if len(ids) > 1 else ids[0]


def test_loads_offline_with_plain_mlx_lm_and_is_small():
    _module, tokenizer = mlx_lm.load(str(DEMO_DIR))
    assert tokenizer.encode("The capital")[0] == tokenizer.bos_token_id
    size = sum(f.stat().st_size for f in DEMO_DIR.iterdir())
    assert size < 15 * 2**20, f"the demo model folder is {size / 2**20:.1f} MiB"
    assert demo_model().num_layers == 16


def test_recalls_capitals(demo):
    prompts = [f"The capital of {country} is" for country in CAPITALS]
    with demo.trace(prompts) as trace:
        last = trace.last_token(trace.output)
    predicted = mx.argmax(last, axis=-1).tolist()
    hits = [p == first_token(demo, CAPITALS[c]) for p, c in zip(predicted, CAPITALS, strict=True)]
    assert hits[list(CAPITALS).index("France")], "France -> Paris must be top-1"
    accuracy = sum(hits) / len(hits)
    assert accuracy >= 0.9, f"capital accuracy {accuracy:.0%}"
    assert demo.token_to_str(predicted[0]) == " Paris"


def test_knows_landmarks(demo):
    hits = 0
    for landmark, city in LANDMARKS.items():
        with demo.trace(f"{landmark} is located in the city of") as trace:
            pass
        hits += mx.argmax(trace.output[0, -1]).item() == first_token(demo, city)
    assert hits / len(LANDMARKS) >= 0.75


def test_copies_repeated_sequences(demo):
    rng = random.Random(1234)
    words = [
        "river",
        "apple",
        "king",
        "garden",
        "letter",
        "bird",
        "coat",
        "market",
        "song",
        "window",
        "bridge",
        "field",
        "school",
        "mountain",
        "road",
        "house",
        "book",
        "car",
    ]
    first, second = [], []
    for _ in range(20):
        run = " ".join(rng.choice(words) for _ in range(10))
        ids = demo.encode(run)
        seq = ids + ids[1:]
        with demo.trace([seq[:-1]]) as trace:
            pass
        losses = nn.losses.cross_entropy(trace.output[0], mx.array(seq[1:]), reduction="none")
        half = len(ids) - 1
        first.append(losses[1:half].mean().item())
        second.append(losses[half + 1 :].mean().item())
    ratio = (sum(second) / len(second)) / (sum(first) / len(first))
    assert ratio < 0.5, f"second-copy loss / first-copy loss = {ratio:.2f}"


def test_lens_shows_the_answer_only_in_later_layers(demo):
    results = demo.logit_lens("The capital of France is", position=-1)
    top = {layer: preds[0][2] for layer, preds in results.items()}
    assert top[15] == " Paris"
    assert top[0] != " Paris"
    earliest = min(layer for layer, token in top.items() if token == " Paris")
    assert earliest >= 4, f"' Paris' already at layer {earliest}: {top}"


def copy_losses(
    demo, length: int, samples: int = 8, seed: int | None = None, interventions=None
) -> tuple[float, float]:
    """Mean loss on the first and on the second copy of <s> + r + r, r being ``length``
    distinct random tokens from the whole vocabulary (the first token of each copy, which
    nothing predicts, left out), under ``interventions``."""
    seed = 1000 + length if seed is None else seed
    rows = repeated_sequences(demo, seq_len=length, batch=samples, seed=seed)
    with demo.trace([row[:-1] for row in rows], interventions=interventions or {}) as trace:
        pass
    targets = mx.array([row[1:] for row in rows])
    losses = nn.losses.cross_entropy(trace.output, targets, reduction="none")
    return losses[:, 1:length].mean().item(), losses[:, length + 1 :].mean().item()


def test_copies_any_repeated_run_of_random_tokens_at_every_length(demo):
    """General induction (issue 16): second-copy loss <= 0.3 x first-copy loss on held-out
    random runs of 5 to 60 tokens, longer than any run seen in training (48)."""
    failures = []
    for length in range(5, 61):
        first, second = copy_losses(demo, length)
        if second > 0.3 * first:
            failures.append(f"{length}: {second:.2f} / {first:.2f} = {second / first:.2f}")
    assert not failures, "second / first copy loss above 0.3 at lengths " + ", ".join(failures)


def ioi_scores(demo, prompts) -> tuple[float, float]:
    """Top-1 accuracy and mean logit difference IO - S over ``prompts``."""
    with demo.trace([p.text for p in prompts]) as trace:
        last = trace.last_token(trace.output)
    io = mx.array([demo.token_id(" " + p.io) for p in prompts])
    s = mx.array([demo.token_id(" " + p.s) for p in prompts])
    rows = mx.arange(len(prompts))
    accuracy = (mx.argmax(last, axis=-1) == io).mean().item()
    return accuracy, (last[rows, io] - last[rows, s]).mean().item()


def test_indirect_object_identification_on_held_out_prompts(demo):
    prompts = ioi_test_prompts()
    assert len(prompts) >= 200
    groups = {
        "all": prompts,
        "unseen templates": [p for p in prompts if p.template in IOI_HELD_OUT_TEMPLATES],
        "ABBA": [p for p in prompts if p.order == "ABBA"],
        "BABA": [p for p in prompts if p.order == "BABA"],
    }
    for name, group in groups.items():
        accuracy, diff = ioi_scores(demo, group)
        assert accuracy >= 0.9 and diff >= 2, f"{name}: top-1 {accuracy:.0%}, IO - S {diff:.2f}"


@pytest.mark.parametrize(
    "shape, accuracy, diff",
    [
        ("When {A} and {B} visited the {place} on the weekend, {S} gave {obj} to", 1.0, 5.84),
        ("When {A} and {B} were at the {place}, {S} handed {obj} to", 1.0, 8.15),
        ("After {A} and {B} went to the {place}, {S} passed {obj} to", 1.0, 8.61),
        ("In the morning {A} and {B} went to the {place}, and {S} showed {obj} to", 0.725, 4.09),
        ("{A} and {B} visited the {place}. After dinner, {S} gave {obj} to", 0.525, 1.44),
        ("{A} and {B} went to the {place}. Then {S} gave {obj} to", 0.375, -1.31),
        ("{A} and {B} walked to the {place}, and {S} gave {obj} to", 0.375, 0.32),
        ("Once {A} and {B} sat down in the {place}, {S} offered {obj} to", 0.025, 0.67),
    ],
)
def test_ioi_on_unseen_templates_matches_the_model_card(demo, shape, accuracy, diff):
    """docs/demo-model.md's table: 40 held-out combinations per template, both orders."""
    templates = both_orders((shape,))
    rng = random.Random(1)
    prompts: list[IOIPrompt] = []
    while len(prompts) < 40:
        io, s = rng.sample(NAMES, 2)
        place, obj = rng.choice(IOI_PLACES), rng.choice(IOI_OBJECTS)
        if ioi_held_out(io, s, place, obj):
            prompts.append(ioi_prompt(templates[len(prompts) % 2], io, s, place, obj))
    assert shape.replace("{A}", "{IO}").replace("{B}", "{S}") not in IOI_TEMPLATES
    measured = ioi_scores(demo, prompts)
    assert measured == pytest.approx((accuracy, diff), abs=0.05), measured
