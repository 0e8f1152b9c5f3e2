"""The shipped demo model: it loads offline and shows the behaviour its card promises."""

from __future__ import annotations

import random

import mlx.core as mx
import mlx.nn as nn
import mlx_lm

from mlxterp import demo_model
from mlxterp.demo_facts import CAPITALS, LANDMARKS
from mlxterp.loading import DEMO_DIR


def first_token(model, word: str) -> int:
    ids = model.encode(" " + word)
    return ids[1] if len(ids) > 1 else ids[0]


def test_loads_offline_with_plain_mlx_lm_and_is_small():
    _module, tokenizer = mlx_lm.load(str(DEMO_DIR))
    assert tokenizer.encode("The capital")[0] == tokenizer.bos_token_id
    size = sum(f.stat().st_size for f in DEMO_DIR.iterdir())
    assert size < 5 * 2**20, f"the demo model folder is {size / 2**20:.1f} MiB"
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
