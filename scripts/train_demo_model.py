"""Train the embedded demo model: a 16-layer narrow llama on a synthetic corpus.

    python scripts/train_demo_model.py [--out engine/mlxterp/demo_model] [--steps 2600]

Deterministic (fixed seeds); under an hour on a 2-core CPU with OpenBLAS.  The corpus is
generated here: template English (with people's names), the capitals and landmarks of
``mlxterp.demo_facts`` in several phrasings, sentiment lines for steering, indirect-object
(IOI) sentences from the training templates and combinations, and runs of words repeated
twice.  Beside the text, every step trains on runs of tokens drawn uniformly from the whole
vocabulary and repeated, with the loss on the second copy only (the part a copier can
predict), so the induction it learns is general, not tied to the corpus words; a short
warm-up on such runs alone comes first, since induction heads did not form when text and
runs started together.  It trains a byte-level BPE tokenizer, then the model, writes an
mlx-lm folder (``config.json``, ``model.safetensors``, tokenizer files, and ``texts.txt``:
800 corpus lines of another seed, the workbench's default SAE texts; ``--texts-only`` writes
only those) and prints the behaviour report that ``docs/demo-model.md`` quotes.  Needs only
mlx, mlx-lm, tokenizers and transformers.
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
from operator import add
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _lib in (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
):
    if sys.platform.startswith("linux") and os.path.exists(_lib):
        # before mlx: see engine/mlxterp/blas.py.  One BLAS thread: the two cores go to the
        # two streams a step runs on (see summed_grads), not to each small matrix product.
        ctypes.CDLL(_lib, mode=ctypes.RTLD_GLOBAL).openblas_set_num_threads(1)
        break
if sys.platform.startswith("linux"):
    # glibc returns every large freed buffer to the kernel by default, so each step pays
    # for fresh zeroed pages; keeping them (32 MiB mmap threshold, 1 GiB trim threshold,
    # 256 MiB top pad) makes a step faster and leaves its numbers unchanged.
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h
    _mallopt = ctypes.CDLL("libc.so.6").mallopt
    _mallopt(M_MMAP_THRESHOLD, 32 << 20)
    _mallopt(M_TRIM_THRESHOLD, 1 << 30)
    _mallopt(M_TOP_PAD, 256 << 20)

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import mlx.optimizers as optim  # noqa: E402
import numpy as np  # noqa: E402
from mlx.utils import tree_flatten, tree_map  # noqa: E402

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
RANDOM_SEQ = 128
"""Length of a row of repeated random runs (runs of RANDOM_RUN tokens, packed twice each)."""
RANDOM_RUN = (5, 48)
WARMUP_SEQ, WARMUP_RUN = 64, (5, 20)

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
        subject = rng.choice(SUBJECTS) if rng.random() < 0.6 else rng.choice(facts.NAMES)
        verb = rng.choice(VERBS)
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


def ioi_line(rng: random.Random) -> str:
    """An IOI sentence from a training template with a combination training may see."""
    while True:
        io, s = rng.sample(facts.NAMES, 2)
        place, obj = rng.choice(facts.IOI_PLACES), rng.choice(facts.IOI_OBJECTS)
        if not facts.ioi_held_out(io, s, place, obj):
            break
    prompt = facts.ioi_prompt(rng.choice(facts.IOI_TEMPLATES), io, s, place, obj)
    return f"{prompt.text} {io}."


def word_pool() -> list[str]:
    words = set()
    for group in (SUBJECTS, VERBS, OBJECTS, PLACES, THINGS, GOOD, BAD):
        for phrase in group:
            words.update(w.strip(".,") for w in phrase.split())
    words.update(facts.CAPITALS)
    words.update(facts.CAPITALS.values())
    words.update(facts.NAMES)
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
        if r < 0.28:
            lines.append(fact_line(rng))
        elif r < 0.35:
            lines.append(landmark_line(rng))
        elif r < 0.60:
            lines.append(english_line(rng))
        elif r < 0.85:
            lines.append(ioi_line(rng))
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
    names = list(facts.CAPITALS) + list(facts.CAPITALS.values()) + list(facts.NAMES)
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


def repeated_runs(
    rng: np.random.Generator, rows: int, length: int, run: tuple[int, int], vocab: int
):
    """Rows of ``length`` + 1 tokens: <s>, then runs of uniform random tokens (special ids
    aside), each followed by a copy of itself, packed until the row is full.  The mask marks
    the targets a copier can predict: every token of a second copy but its first."""
    window = np.empty((rows, length + 1), dtype=np.int32)
    mask = np.zeros((rows, length), dtype=np.float32)
    for r in range(rows):
        seq = [1]
        predictable: list[int] = []
        while len(seq) < length + 1:
            tokens = rng.integers(3, vocab, size=int(rng.integers(run[0], run[1] + 1))).tolist()
            start = len(seq) + len(tokens)
            seq += tokens + tokens
            predictable += range(start + 1, start + len(tokens))
        window[r] = seq[: length + 1]
        for target in predictable:
            if target <= length:
                mask[r, target - 1] = 1.0
    return window, mask


def copy_ratio(model, vocab: int, length: int, samples: int = 16, seed: int = 99) -> float:
    """Second-copy loss / first-copy loss on <s> + a random run + the same run again."""
    rng = np.random.default_rng(seed + length)
    runs = rng.integers(3, vocab, size=(samples, length))
    seq = np.concatenate([np.ones((samples, 1), np.int32), runs, runs], axis=1)
    logits = model(mx.array(seq[:, :-1]))
    losses = nn.losses.cross_entropy(logits, mx.array(seq[:, 1:]), reduction="none")
    first = losses[:, 1:length].mean().item()
    second = losses[:, length + 1 :].mean().item()
    return second / first


def ioi_report(model, tok) -> dict:
    """Top-1 accuracy and mean logit difference IO - S on the held-out IOI prompts."""
    prompts = facts.ioi_test_prompts()
    hits, diffs, unseen = 0, [], []
    for p in prompts:
        logits = model(mx.array([tok.encode(p.text)]))[0, -1]
        io = tok.encode(" " + p.io, add_special_tokens=False)[0]
        s = tok.encode(" " + p.s, add_special_tokens=False)[0]
        hit = int(mx.argmax(logits).item()) == io
        hits += hit
        diffs.append((logits[io] - logits[s]).item())
        if p.template in facts.IOI_HELD_OUT_TEMPLATES:
            unseen.append(hit)
    return {
        "ioi_accuracy": hits / len(prompts),
        "ioi_logit_diff": float(np.mean(diffs)),
        "ioi_unseen_template_accuracy": sum(unseen) / len(unseen),
    }


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
    vocab = len(tok)
    return {
        "capital_accuracy": phrasings,
        "landmark_accuracy": landmarks,
        "random_copy_ratio": {
            n: round(copy_ratio(model, vocab, n), 3) for n in (5, 10, 20, 40, 60)
        },
        **ioi_report(model, tok),
        "induction_loss_ratio": ratio,
        "induction_loss_first": float(np.mean(first_losses)),
        "induction_loss_second": float(np.mean(second_losses)),
        "france_lens": lens,
    }


def save(model, config: dict, out: Path) -> None:
    """Write the weights and config.json (the tokenizer files are written when trained)."""
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


TEXTS_LINES, TEXTS_SEED = 800, 2024  # texts.txt: not the training seed


def write_texts(out: Path) -> None:
    """``texts.txt`` beside the model: lines of its corpus the workbench trains an SAE on
    and browses features over when given no texts file."""
    lines = corpus(TEXTS_LINES, TEXTS_SEED)
    (out / "texts.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(ROOT / "engine/mlxterp/demo_model"))
    parser.add_argument("--steps", type=int, default=2600)
    parser.add_argument("--copy-steps", type=int, default=800, help="warm-up on runs alone")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--random-batch", type=int, default=16)
    parser.add_argument("--lines", type=int, default=60000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--progress", type=int, default=0, help="save and report every N steps")
    parser.add_argument("--texts-only", action="store_true", help="write texts.txt only")
    args = parser.parse_args(argv)
    if args.texts_only:
        write_texts(Path(args.out))
        return 0

    start = time.time()
    random.seed(SEED)
    np.random.seed(SEED)
    mx.random.seed(SEED)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_texts(out)
    lines = corpus(args.lines, SEED)
    tok = train_tokenizer(lines, out)
    stream = token_stream(lines, tok)
    vocab = len(tok)
    print(f"corpus: {len(lines)} lines, {len(stream)} tokens, vocab {vocab}", flush=True)

    from mlx_lm.models import llama

    config = dict(
        CONFIG,
        vocab_size=vocab,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = llama.Model(llama.ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    n_params = sum(v.size for _, v in tree_flatten(model.parameters()))

    total = args.copy_steps + args.steps
    warmup = max(1, min(200, total // 10))
    schedule = optim.join_schedules(
        [
            optim.linear_schedule(1e-5, args.lr, warmup),
            optim.cosine_decay(args.lr, total - warmup, args.lr / 20),
        ],
        [warmup],
    )
    optimizer = optim.AdamW(learning_rate=schedule, weight_decay=0.01)

    state = [model.state, optimizer.state]
    streams = [mx.new_stream(mx.default_device()) for _ in range(2)]

    def text_loss(m, x, y):
        return nn.losses.cross_entropy(m(x), y, reduction="mean")

    def runs_loss(m, x, y, mask, count):
        losses = nn.losses.cross_entropy(m(x), y, reduction="none")
        return (losses * mask).sum() / count

    def summed_grads(terms):
        """Loss and gradients of a sum of two loss terms, each term's forward and backward
        pass on its own stream so that both cores work at once."""
        results = []
        for stream, (loss_fn, *batch) in zip(streams, terms, strict=True):
            with mx.stream(stream):
                results.append(nn.value_and_grad(model, loss_fn)(model, *batch))
        (loss_a, grads_a), (loss_b, grads_b) = results
        return loss_a + loss_b, tree_map(add, grads_a, grads_b)

    def update(terms):
        loss, grads = summed_grads(terms)
        grads, _ = optim.clip_grad_norm(grads, 1.0)
        optimizer.update(model, grads)
        return loss

    def copy_terms(x, y, mask):
        """Runs alone: the rows in two halves, each normalised by the whole batch's count."""
        half, count = x.shape[0] // 2, mask.sum()
        return [
            (runs_loss, x[:half], y[:half], mask[:half], count),
            (runs_loss, x[half:], y[half:], mask[half:], count),
        ]

    def mixed_terms(x, y, rx, ry, mask):
        """Text (mean loss) and runs (loss on the second copies)."""
        return [(text_loss, x, y), (runs_loss, rx, ry, mask, mask.sum())]

    copy_step = mx.compile(lambda *b: update(copy_terms(*b)), inputs=state, outputs=state)
    mixed_step = mx.compile(lambda *b: update(mixed_terms(*b)), inputs=state, outputs=state)
    rng = np.random.default_rng(SEED)

    def runs_batch(rows: int, length: int, run: tuple[int, int]):
        window, mask = repeated_runs(rng, rows, length, run, vocab)
        return mx.array(window[:, :-1]), mx.array(window[:, 1:]), mx.array(mask)

    for i in range(1, total + 1):
        if i <= args.copy_steps:
            loss = copy_step(*runs_batch(args.batch + args.random_batch, WARMUP_SEQ, WARMUP_RUN))
        else:
            starts = rng.integers(0, len(stream) - SEQ - 1, size=args.batch)
            window = np.stack([stream[s : s + SEQ + 1] for s in starts])
            text = (mx.array(window[:, :-1]), mx.array(window[:, 1:]))
            loss = mixed_step(*text, *runs_batch(args.random_batch, RANDOM_SEQ, RANDOM_RUN))
        mx.eval(state)
        if i % 100 == 0 or i == 1:
            print(f"step {i:5d}  loss {loss.item():.3f}  {time.time() - start:6.0f}s", flush=True)
        if args.progress and i % args.progress == 0 and i < total:
            save(model, config, out)
            print(json.dumps({"step": i, **behaviour_report(model, tok)}), flush=True)

    save(model, config, out)
    report = behaviour_report(model, tok)
    size = sum(f.stat().st_size for f in out.iterdir())
    report.update(
        parameters=n_params, folder_bytes=size, seconds=round(time.time() - start), steps=total
    )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
