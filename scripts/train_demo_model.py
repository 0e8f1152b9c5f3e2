"""Train the embedded demo model: a 16-layer narrow llama on a synthetic corpus.

    python scripts/train_demo_model.py [--out engine/mlxterp/demo_model] [--steps 3000]

Deterministic (fixed seeds); about ten minutes on a 2-core CPU with OpenBLAS.  The corpus is
generated here: template English, the capitals and landmarks of ``mlxterp.demo_facts`` in
several phrasings, sentiment lines for steering, and runs of random words repeated twice
(so induction heads form).  It trains a byte-level BPE tokenizer, then the model, writes an
mlx-lm folder (``config.json``, ``model.safetensors``, tokenizer files) and prints the
behaviour report that ``docs/demo-model.md`` quotes.  Needs only mlx, mlx-lm, tokenizers
and transformers.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _lib in (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
):
    if sys.platform.startswith("linux") and os.path.exists(_lib):
        ctypes.CDLL(_lib, mode=ctypes.RTLD_GLOBAL)  # before mlx: see engine/mlxterp/blas.py
        break

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import mlx.optimizers as optim  # noqa: E402
import numpy as np  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

_spec = importlib.util.spec_from_file_location("demo_facts", ROOT / "engine/mlxterp/demo_facts.py")
facts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(facts)

SEED = 20261124
CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 16,
    "intermediate_size": 192,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
}
VOCAB = 2048
SEQ = 64

SUBJECTS = [
    "the cat",
    "a dog",
    "my friend",
    "the teacher",
    "the old man",
    "a young woman",
    "the children",
    "our team",
    "the scientist",
    "my sister",
    "the farmer",
    "a student",
    "the doctor",
    "his brother",
    "the artist",
    "a small bird",
    "the king",
    "the queen",
]
VERBS = [
    "sees",
    "likes",
    "finds",
    "reads",
    "builds",
    "visits",
    "watches",
    "carries",
    "paints",
    "opens",
    "loves",
    "cleans",
    "draws",
    "follows",
    "remembers",
    "writes",
]
OBJECTS = [
    "a book",
    "the river",
    "a small house",
    "the red car",
    "an apple",
    "the garden",
    "a letter",
    "the window",
    "the blue sky",
    "a long road",
    "the old bridge",
    "a song",
    "the market",
    "a green field",
    "the mountain",
    "a warm coat",
    "the new school",
]
PLACES = [
    "in the morning",
    "near the lake",
    "every day",
    "with great care",
    "after dinner",
    "in the city",
    "at night",
    "before the rain",
    "on the weekend",
    "in the summer",
]
THINGS = ["movie", "book", "song", "game", "city", "food", "story", "show", "place", "idea"]
GOOD = ["wonderful", "great", "amazing", "beautiful", "excellent", "lovely"]
BAD = ["terrible", "awful", "boring", "horrible", "dreadful", "ugly"]
FIXED = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, how are you? I am fine, thank you.",
    "Hello, how are you today? I am very well.",
    "Machine learning is a field of study about learning from data.",
    "Machine learning is fascinating and useful.",
    "Deep learning is a kind of machine learning.",
    "Analyze this text and find the main idea.",
    "The answer is 42.",
]


def english_line(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.55:
        subject, verb = rng.choice(SUBJECTS), rng.choice(VERBS)
        s = f"{subject} {verb} {rng.choice(OBJECTS)} {rng.choice(PLACES)}."
        return s[0].upper() + s[1:]
    if kind < 0.8:
        thing = rng.choice(THINGS)
        if rng.random() < 0.5:
            return f"I love this {thing}. It is {rng.choice(GOOD)}."
        return f"I hate this {thing}. It is {rng.choice(BAD)}."
    return rng.choice(FIXED)


def fact_line(rng: random.Random) -> str:
    country, city = rng.choice(list(facts.CAPITALS.items()))
    templates = [
        "The capital of {c} is {x}.",
        "The capital of {c} is {x}.",
        "The capital of {c} is {x}.",
        "{x} is the capital of {c}.",
        "{c}'s capital city is {x}.",
        "The capital city of {c} is {x}.",
        "In {c}, the capital is {x}.",
        "{x} is a city in {c}.",
        "People in {c} live in cities like {x}.",
    ]
    return rng.choice(templates).format(c=country, x=city)


def landmark_line(rng: random.Random) -> str:
    landmark, city = rng.choice(list(facts.LANDMARKS.items()))
    templates = [
        "{l} is located in the city of {x}.",
        "{l} is in {x}.",
        "You can visit {l} in {x}.",
    ]
    return rng.choice(templates).format(l=landmark, x=city)


def word_pool() -> list[str]:
    words = set()
    for group in (SUBJECTS, VERBS, OBJECTS, PLACES, THINGS, GOOD, BAD):
        for phrase in group:
            words.update(w.strip(".,") for w in phrase.split())
    words.update(facts.CAPITALS)
    words.update(facts.CAPITALS.values())
    return sorted(w for w in words if w.isalpha())


def induction_line(rng: random.Random, pool: list[str]) -> str:
    run = " ".join(rng.choice(pool) for _ in range(rng.randint(5, 14)))
    return f"{run} {run}"


def corpus(n_lines: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pool = word_pool()
    lines = []
    for _ in range(n_lines):
        r = rng.random()
        if r < 0.32:
            lines.append(fact_line(rng))
        elif r < 0.40:
            lines.append(landmark_line(rng))
        elif r < 0.72:
            lines.append(english_line(rng))
        else:
            lines.append(induction_line(rng, pool))
    return lines


def train_tokenizer(lines: list[str], out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    names = list(facts.CAPITALS) + list(facts.CAPITALS.values())
    split = [n for n in names if len(fast.encode(" " + n, add_special_tokens=False)) != 1]
    if split:
        raise SystemExit(f"these names are not single tokens: {split}; raise their frequency")
    fast.save_pretrained(str(out))
    return fast


def token_stream(lines: list[str], tok) -> np.ndarray:
    ids: list[int] = []
    eos = tok.eos_token_id
    for line in lines:
        ids.extend(tok.encode(line))
        ids.append(eos)
    return np.array(ids, dtype=np.int32)


def behaviour_report(model, tok) -> dict:
    def next_id(prompt: str) -> int:
        logits = model(mx.array([tok.encode(prompt)]))
        return int(mx.argmax(logits[0, -1]).item())

    def first(name: str) -> int:
        return tok.encode(" " + name, add_special_tokens=False)[0]

    phrasings = {
        "The capital of {c} is": None,
        "The capital city of {c} is": None,
        "In {c}, the capital is": None,
    }
    for template in phrasings:
        hits = sum(next_id(template.format(c=c)) == first(x) for c, x in facts.CAPITALS.items())
        phrasings[template] = hits / len(facts.CAPITALS)
    landmarks = sum(
        next_id(f"{mark} is located in the city of") == first(x)
        for mark, x in facts.LANDMARKS.items()
    ) / len(facts.LANDMARKS)

    rng = random.Random(7)
    pool = word_pool()
    first_losses, second_losses = [], []
    for _ in range(40):
        run = [rng.choice(pool) for _ in range(10)]
        ids = tok.encode(" ".join(run))
        half = len(ids) - 1
        seq = ids + ids[1:]
        logits = model(mx.array([seq[:-1]]))
        losses = nn.losses.cross_entropy(logits[0], mx.array(seq[1:]), reduction="none")
        first_losses.append(losses[1:half].mean().item())
        second_losses.append(losses[half + 1 :].mean().item())
    ratio = float(np.mean(second_losses) / np.mean(first_losses))

    # logit lens at the last position of the France prompt
    inner = model.model
    h = inner.embed_tokens(mx.array([tok.encode("The capital of France is")]))
    mask = "causal"
    lens = []
    for layer in inner.layers:
        h = layer(h, mask, None)
        logits = inner.embed_tokens.as_linear(inner.norm(h))
        lens.append(tok.decode([int(mx.argmax(logits[0, -1]).item())]))
    return {
        "capital_accuracy": phrasings,
        "landmark_accuracy": landmarks,
        "induction_loss_ratio": ratio,
        "induction_loss_first": float(np.mean(first_losses)),
        "induction_loss_second": float(np.mean(second_losses)),
        "france_lens": lens,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(ROOT / "engine/mlxterp/demo_model"))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lines", type=int, default=60000)
    args = parser.parse_args(argv)

    start = time.time()
    random.seed(SEED)
    np.random.seed(SEED)
    mx.random.seed(SEED)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = corpus(args.lines, SEED)
    tok = train_tokenizer(lines, out)
    stream = token_stream(lines, tok)
    print(f"corpus: {len(lines)} lines, {len(stream)} tokens, vocab {len(tok)}", flush=True)

    from mlx_lm.models import llama

    config = dict(
        CONFIG,
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = llama.Model(llama.ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    n_params = sum(v.size for _, v in tree_flatten(model.parameters()))

    warmup = max(1, min(200, args.steps // 10))
    schedule = optim.join_schedules(
        [
            optim.linear_schedule(1e-5, 3e-3, warmup),
            optim.cosine_decay(3e-3, args.steps - warmup, 1e-4),
        ],
        [warmup],
    )
    optimizer = optim.AdamW(learning_rate=schedule, weight_decay=0.01)

    def loss_fn(m, x, y):
        return nn.losses.cross_entropy(m(x), y, reduction="mean")

    loss_and_grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, optimizer.state]

    def step(x, y):
        loss, grads = loss_and_grad(model, x, y)
        grads, _ = optim.clip_grad_norm(grads, 1.0)
        optimizer.update(model, grads)
        return loss

    step = mx.compile(step, inputs=state, outputs=state)
    rng = np.random.default_rng(SEED)
    for i in range(1, args.steps + 1):
        starts = rng.integers(0, len(stream) - SEQ - 1, size=args.batch)
        window = np.stack([stream[s : s + SEQ + 1] for s in starts])
        loss = step(mx.array(window[:, :-1]), mx.array(window[:, 1:]))
        mx.eval(state)
        if i % 100 == 0 or i == 1:
            print(f"step {i:5d}  loss {loss.item():.3f}  {time.time() - start:6.0f}s", flush=True)

    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    report = behaviour_report(model, tok)
    size = sum(f.stat().st_size for f in out.iterdir())
    report.update(
        parameters=n_params, folder_bytes=size, seconds=round(time.time() - start), steps=args.steps
    )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
