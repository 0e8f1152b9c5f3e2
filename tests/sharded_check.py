"""Run by tests/test_sharding.py under ``mlx.launch -n 2``: the checkpoint given loaded whole
and sharded over the ranks (``load_sharded``) must agree to 1e-4 on traces, captures,
interventions (module and head), the logit lens, activation patching, head captures and
head patching.  Prints ``rank R ok`` and exits 0, or fails with the first difference."""

from __future__ import annotations

import sys

import mlx.core as mx
import numpy as np

from mlxterp import InterpretableModel, load_sharded
from mlxterp.head_patching import head_patching
from mlxterp.interventions import scale, zero_out
from mlxterp.lens import lens
from mlxterp.patching import patching_sweep

TOLERANCE = 1e-4
CLEAN = "river king apple garden letter river king"
CORRUPTED = "apple king river garden letter river king"


def close(name: str, a, b) -> None:
    gap = float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))
    if not gap <= TOLERANCE:
        raise SystemExit(f"{name}: sharded differs by {gap}")


def main(path: str) -> None:
    group = mx.distributed.init(strict=True)
    whole, sharded = InterpretableModel(path), load_sharded(path, group)
    assert sharded.model.layers[0].self_attn.n_heads * group.size() == 4
    names = [
        "layers.0",
        "layers.1.mlp",
        "layers.1.attn",
        "layers.1.attn.heads",
        "layers.0.attn.heads.3",
    ]
    a, b = whole.run(CLEAN, capture=names), sharded.run(CLEAN, capture=names)
    for name in a.activations:
        close(name, a.activations[name], b.activations[name])
    close("logits", a.output, b.output)
    for site, edit in (("layers.0.mlp", scale(0.5)), ("layers.0.attn.heads.3", zero_out)):
        edited = whole.run(CLEAN, interventions={site: edit}).output
        assert float(mx.abs(edited - a.output).max().item()) > 1e-3  # the edit matters
        close(
            f"intervention on {site}", edited, sharded.run(CLEAN, interventions={site: edit}).output
        )
    la, lb = lens(whole, CLEAN), lens(sharded, CLEAN)
    assert la.top_ids == lb.top_ids
    close("lens", la.top_probs, lb.top_probs)
    for by_position in (False, True):
        pa = patching_sweep(whole, CLEAN, CORRUPTED, component="mlp", by_position=by_position)
        pb = patching_sweep(sharded, CLEAN, CORRUPTED, component="mlp", by_position=by_position)
        close("patching", [pa.recovery[i] for i in pa.layers], [pb.recovery[i] for i in pb.layers])
        if by_position:
            close("patching by position", pa.matrix, pb.matrix)
    ha, hb = head_patching(whole, CLEAN, CORRUPTED), head_patching(sharded, CLEAN, CORRUPTED)
    close("head patching", ha.recovery, hb.recovery)
    print(f"rank {group.rank()} ok", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
