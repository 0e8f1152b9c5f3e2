"""Dataset jobs: job files checked, outputs written whole and never over other work, and
the same results from 2 processes over MLX's ring backend on loopback as from one; a rank
killed or hung makes the other stop within the timeout, and --resume completes the job
to the same result as an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import mlx.core as mx
import pytest
from launch_helpers import BIN, free_port
from launch_helpers import launch as launched

from mlxterp.datasets import demo_texts
from mlxterp.demo_facts import CAPITALS
from mlxterp.errors import InputError, MlxterpError
from mlxterp.jobs import ANALYSES, load_job, run_job


def write_job(folder: Path, analysis: str, dataset: str, per_shard: int, params: str = "") -> Path:
    path = folder / f"{analysis}.toml"
    path.write_text(
        f'[job]\nanalysis = "{analysis}"\nmodel = "demo"\noutput = "out-{analysis}"\n'
        f"timeout = 20\n[dataset]\n{dataset}\nper_shard = {per_shard}\n[params]\n{params}\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def datasets(tmp_path) -> Path:
    """Texts, prompt pairs and facts beside the job files."""
    (tmp_path / "texts.txt").write_text("\n".join(demo_texts()[:36]) + "\n", encoding="utf-8")
    capitals = list(CAPITALS.items())[:7]
    pairs = [
        {
            "clean": f"The capital of {a} is",
            "corrupted": f"The capital of {b} is",
            "answer": [f" {x}", f" {y}"],
        }
        for (a, x), (b, y) in zip(capitals, capitals[1:] + capitals[:1], strict=True)
    ]
    facts = [
        {"prompt": f"The capital of {c} is", "subject": c, "answer": f" {a}"} for c, a in capitals
    ]
    for name, records in (("pairs", pairs), ("facts", facts)):
        lines = "\n".join(json.dumps(r) for r in records)
        (tmp_path / f"{name}.jsonl").write_text(lines + "\n", encoding="utf-8")
    return tmp_path


JOBS = {  # analysis: (dataset line, records per shard, params)
    "collect": ('path = "texts.txt"', 5, 'components = ["layers.4", "layers.8.mlp"]'),
    "activation_patching": (
        'path = "pairs.jsonl"',
        2,
        'component = "output"\nmetric = "logit_diff"\nlayers = [2, 6, 10]',
    ),
    "attribution_patching": ('path = "pairs.jsonl"', 3, "layers = [0, 5, 15]"),
    "causal_tracing": ('path = "facts.jsonl"', 2, "window = 3"),
    "lens": ('path = "texts.txt"', 4, ""),
}


def job_file(folder: Path, analysis: str) -> Path:
    dataset, per_shard, params = JOBS[analysis]
    return write_job(folder, analysis, dataset, per_shard, params)


def outputs(folder: Path) -> dict[str, dict[str, mx.array]]:
    """Every safetensors file of an output folder, by name."""
    return {p.name: mx.load(str(p)) for p in sorted(folder.glob("*.safetensors"))}


def same_outputs(a: Path, b: Path) -> bool:
    first, second = outputs(a), outputs(b)
    if first.keys() != second.keys():
        return False
    for name, arrays in first.items():
        if arrays.keys() != second[name].keys():
            return False
        if not all(mx.array_equal(v, second[name][k]).item() for k, v in arrays.items()):
            return False
    summary = "manifest.json" if (a / "manifest.json").exists() else "summary.json"
    return json.loads((a / summary).read_text()) == json.loads((b / summary).read_text())


def launch(job: Path, n: int = 2) -> subprocess.CompletedProcess[str]:
    """``mlx.launch -n N -- mlxterp job FILE`` on loopback (ring backend)."""
    return launched(n, [str(BIN / "mlxterp"), "job", str(job), "--quiet"], job.parent)


# ---------------------------------------------------------------------------- job files
HEAD = "[job]\nanalysis = 'lens'\nmodel = 'demo'\noutput = 'o'\n"
ONE = "[dataset]\nrecords = ['a']\n"


@pytest.mark.parametrize(
    "text, said",
    [
        (HEAD, "needs a [dataset] table"),
        (HEAD.replace("lens", "sweep") + ONE, "'sweep' is not one of"),
        (HEAD + "speed = 2\n" + ONE, "[job] has no speed"),
        (HEAD + "[dataset]\n", "either path"),
        (HEAD + ONE + "per_shard = 0\n", "per_shard must be"),
        (HEAD + "timeout = -1\n" + ONE, "timeout must be"),
        (HEAD + "dequantize = 'yes'\n" + ONE, "dequantize must be true or false"),
        (HEAD + "[dataset]\npath = 'none.txt'\n", "no dataset file"),
        ("[job\n", "is not TOML"),
    ],
)
def test_a_bad_job_file_says_where(tmp_path, text, said):
    path = tmp_path / "job.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=re.escape(said)):
        load_job(path, set(ANALYSES))


def test_records_are_checked_before_anything_runs(datasets):
    path = write_job(datasets, "activation_patching", 'path = "texts.txt"', 4)
    with pytest.raises(InputError, match="record 0 needs 'clean'"):
        run_job(path, progress=False, signals=False)
    assert not (datasets / "out-activation_patching" / "job.json").exists()
    path = write_job(datasets, "collect", 'path = "texts.txt"', 4, 'components = ["layers.99"]')
    with pytest.raises(MlxterpError, match=r"layers\.99"):
        run_job(path, progress=False, signals=False)


# ---------------------------------------------------------------------------- one process
def test_collect_writes_each_records_activations(datasets, demo):
    outcome = run_job(job_file(datasets, "collect"), progress=False, signals=False)
    texts = demo_texts()[:36]
    manifest = json.loads((outcome.output / "manifest.json").read_text())
    assert manifest["records"] == 36 and len(manifest["shards"]) == 8 == outcome.shards
    assert manifest["components"] == {"model.layers.4": 64, "model.layers.8.mlp": 64}
    shard = mx.load(str(outcome.output / "shard-00001.safetensors"))  # records 5..9
    trace = demo.run(texts[5], capture=["model.layers.8.mlp"])
    n = int(shard["lengths"][0].item())
    assert n == trace.activations["model.layers.8.mlp"].shape[1]
    assert mx.allclose(
        shard["model.layers.8.mlp"][:n], trace.activations["model.layers.8.mlp"][0], atol=1e-5
    ).item()
    assert manifest["tokens"] == sum(s["tokens"] for s in manifest["shards"]) == outcome.tokens


def test_an_output_folder_is_never_overwritten(datasets):
    path = job_file(datasets, "lens")
    run_job(path, progress=False, signals=False)
    before = outputs(datasets / "out-lens")
    with pytest.raises(InputError, match="--resume continues it"):
        run_job(path, progress=False, signals=False)
    other = write_job(datasets, "lens", 'path = "texts.txt"', 3)  # another job, same folder
    with pytest.raises(InputError, match="output of another job"):
        run_job(other, progress=False, signals=False)
    after = outputs(datasets / "out-lens")
    assert before.keys() == after.keys()
    path = job_file(datasets, "lens")  # the first job again (the other one took its file)
    again = run_job(path, resume=True, progress=False, signals=False)
    assert again.skipped == again.shards and again.computed == 0


def test_dequantize_loads_a_quantized_model_as_plain_layers(tmp_path, checkpoint_dir):
    """The same activations to float rounding, and an output folder that says which."""
    (tmp_path / "texts.txt").write_text("\n".join(demo_texts()[:6]) + "\n", encoding="utf-8")
    path = tmp_path / "q.toml"
    found = {}
    for dequantize in ("true", "false"):
        path.write_text(
            f'[job]\nanalysis = "collect"\nmodel = "{checkpoint_dir("llama_4bit")}"\n'
            f'output = "out-{dequantize}"\ndequantize = {dequantize}\n'
            '[dataset]\npath = "texts.txt"\nper_shard = 3\n[params]\ncomponents = ["layers.1"]\n',
            encoding="utf-8",
        )
        outcome = run_job(path, progress=False, signals=False)
        found[dequantize] = mx.load(str(outcome.output / "shard-00001.safetensors"))
        said = json.loads((outcome.output / "job.json").read_text())
        assert said.get("dequantized", False) == (dequantize == "true")
    plain, packed = found["true"]["model.layers.1"], found["false"]["model.layers.1"]
    assert mx.allclose(plain, packed, atol=1e-4 * mx.abs(packed).max().item()).item()
    (tmp_path / "out-false").rename(tmp_path / "out-true-was")
    (tmp_path / "out-true").rename(tmp_path / "out-false")  # dequantized output, job says not
    with pytest.raises(InputError, match="output of another job"):
        run_job(path, resume=True, progress=False, signals=False)


def test_the_cli_says_why_in_one_line(datasets):
    missing = subprocess.run(
        [str(BIN / "mlxterp"), "job", str(datasets / "none.toml")], capture_output=True, text=True
    )
    assert missing.returncode == 2 and missing.stderr.startswith("mlxterp job: no job file at")
    assert "Traceback" not in missing.stderr


# ---------------------------------------------------------------------------- two processes
@pytest.mark.parametrize("analysis", sorted(JOBS))
def test_two_processes_give_what_one_gives(datasets, analysis):
    path = job_file(datasets, analysis)
    run_job(path, progress=False, signals=False)
    alone = datasets / f"alone-{analysis}"
    (datasets / f"out-{analysis}").rename(alone)
    done = launch(path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("computed by this rank") == 2
    assert same_outputs(alone, datasets / f"out-{analysis}")


def start_ranks(job: Path, timeout_s: float) -> list[subprocess.Popen[str]]:
    """Two ranks started by hand (as a launcher does), rank 1 first."""
    hosts = job.parent / "hosts.json"
    hosts.write_text(json.dumps([[f"127.0.0.1:{free_port()}"], [f"127.0.0.1:{free_port()}"]]))
    ranks = []
    for rank in (1, 0):
        env = {**os.environ, "MLX_HOSTFILE": str(hosts), "MLX_RANK": str(rank)}
        ranks.append(
            subprocess.Popen(
                [str(BIN / "mlxterp"), "job", str(job), "--quiet"],
                env=env,
                cwd=job.parent,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return ranks[::-1]  # rank 0, rank 1


def wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def big_collect(folder: Path) -> Path:
    """A collect job of 400 demo texts, many small shards (long enough to interrupt)."""
    (folder / "all.txt").write_text("\n".join(demo_texts()[:400]) + "\n", encoding="utf-8")
    return write_job(folder, "collect", 'path = "all.txt"', 4, 'components = ["layers.8"]')


@pytest.mark.parametrize("how", ["killed", "hung"])
def test_a_lost_rank_stops_the_other_and_resume_completes(tmp_path, how):
    job = big_collect(tmp_path)
    text = job.read_text().replace("timeout = 20", "timeout = 4")
    job.write_text(text)
    rank0, rank1 = start_ranks(job, 4)
    out = tmp_path / "out-collect"
    try:
        assert wait_for(lambda: len(list(out.glob("shard-*.safetensors"))) >= 4, 60)
        if how == "killed":
            rank1.kill()
        else:
            rank1.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        _, err = rank0.communicate(timeout=60)
        assert rank0.returncode == 3, err
        assert time.monotonic() - started < 4 + 10  # within the timeout (and some slack)
        assert "stopping" in err and "Traceback" not in err
    finally:
        for rank in (rank0, rank1):
            if rank.poll() is None:
                rank.send_signal(signal.SIGCONT)
                rank.kill()
            rank.communicate()
    written = sorted(out.glob("shard-*.safetensors"))
    assert 4 <= len(written) < 200 and not (out / "manifest.json").exists()
    for shard in written:  # whole files only
        mx.load(str(shard))
    refused = subprocess.run(
        [str(BIN / "mlxterp"), "job", str(job), "--quiet"], capture_output=True, text=True
    )
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = run_job(job, resume=True, progress=False, signals=False)
    assert resumed.skipped == len(written) and resumed.computed == resumed.shards - len(written)
    whole = tmp_path / "whole"
    whole.mkdir()
    shutil.copy(tmp_path / "all.txt", whole)
    run_job(big_collect(whole), progress=False, signals=False)
    assert same_outputs(out, whole / "out-collect")


# ---------------------------------------------------------------------------- SAE training
def sae_job(folder: Path, kind: str, epochs: int = 2) -> Path:
    (folder / "t.txt").write_text("\n".join(demo_texts()[:96]) + "\n", encoding="utf-8")
    path = folder / f"sae-{kind}.toml"
    path.write_text(
        f'[job]\nanalysis = "train_sae"\nmodel = "demo"\noutput = "out-sae"\ntimeout = 20\n'
        '[dataset]\npath = "t.txt"\n[params]\ncomponent = "layers.8"\ntexts_per_step = 12\n'
        f'checkpoint_every = 3\n[params.config]\nkind = "{kind}"\nexpansion_factor = 2\nk = 8\n'
        f"epochs = {epochs}\ndead_feature_window = 100\n",
        encoding="utf-8",
    )
    return path


def weights(folder: Path) -> dict[str, mx.array]:
    from mlxterp.sae import SAE

    sae = SAE.load(folder / "sae")
    return {k: getattr(sae, k) for k in ("W_enc", "W_dec", "b_enc", "b_dec")} | {
        "scale": mx.array(sae.scale),
        "threshold": mx.array(sae.threshold),
    }


@pytest.mark.parametrize("kind", ["topk", "batchtopk", "relu"])
def test_sae_training_on_two_processes_equals_one(tmp_path, kind):
    path = sae_job(tmp_path, kind)
    alone = run_job(path, progress=False, signals=False)
    assert alone.unit == "steps" and alone.shards == 16 and alone.tokens > 0
    (tmp_path / "out-sae").rename(tmp_path / "alone")
    done = launch(path)
    assert done.returncode == 0, done.stderr
    one, two = weights(tmp_path / "alone"), weights(tmp_path / "out-sae")
    for name, value in one.items():
        gap = mx.abs(value - two[name]).max().item()
        assert gap <= 1e-5, (name, gap)
    summary = json.loads((tmp_path / "out-sae" / "summary.json").read_text())
    assert summary["training"]["steps"] == 16 and summary["measured"]["explained_variance"] > 0.5


def test_a_stopped_sae_job_resumes_to_the_same_weights(tmp_path):
    path = sae_job(tmp_path, "topk", epochs=6)
    rank = subprocess.Popen(
        [str(BIN / "mlxterp"), "job", str(path), "--quiet"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    checkpoint = tmp_path / "out-sae" / "checkpoint.safetensors"
    assert wait_for(checkpoint.exists, 60)
    rank.send_signal(signal.SIGTERM)
    _, err = rank.communicate(timeout=60)
    assert rank.returncode == 3 and "stopped by SIGTERM" in err
    assert not (tmp_path / "out-sae" / "sae").exists()
    resumed = run_job(path, resume=True, progress=False, signals=False)
    assert resumed.skipped > 0 and resumed.skipped + resumed.computed == 48
    (tmp_path / "out-sae").rename(tmp_path / "resumed")
    run_job(path, progress=False, signals=False)
    one, two = weights(tmp_path / "resumed"), weights(tmp_path / "out-sae")
    assert all(mx.array_equal(v, two[k]).item() for k, v in one.items())
