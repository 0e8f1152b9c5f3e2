"""Tensor-parallel models: one model's weights split over the ranks of ``mx.distributed``
by mlx-lm's own ``model.shard(group)`` (llama, qwen2, qwen3 and the other architectures
mlx-lm shards), run as one :class:`InterpretableModel` by every rank together.

Every rank runs the same forward on the same inputs; the sharded projections sum over
ranks inside the model, so module outputs (layers, residual stream, attention and MLP
outputs) and the logits are whole on every rank, and traces, captures, interventions, the
logit lens and activation patching give the unsharded model's numbers.  What is split is
inside attention and the MLP: each rank holds a contiguous slice of the heads (and of the
MLP's hidden units).  Per-head names (``layers.5.attn.heads.2``) are gathered from every
rank (see :mod:`mlxterp.heads`), so head captures, head interventions and head patching
see all heads; a capture of a projection inside attention or the MLP (``q_proj``,
``gate_proj``) is this rank's slice, and attention patterns are this rank's heads.
"""

from __future__ import annotations

import mlx.core as mx

from .errors import ModelLoadError
from .loading import load_model
from .model import InterpretableModel


def load_sharded(name: str, group: mx.distributed.Group | None = None) -> InterpretableModel:
    """The model ``name`` loaded with its weights split over ``group`` (default: the group
    ``mx.distributed.init()`` joins, e.g. under ``mlx.launch``); each rank reads only its
    slice.  ``ModelLoadError`` for an architecture mlx-lm cannot shard or a model whose
    heads do not divide by the number of ranks."""
    group = group if group is not None else mx.distributed.init()
    loaded = load_model(name, lazy=True)
    module = loaded.module
    shard = getattr(module, "shard", None)
    if not callable(shard):
        raise ModelLoadError(
            f"mlx-lm cannot shard {name!r} ({type(module).__module__}): it has no "
            "model.shard(group); run it whole on each rank instead"
        )
    try:
        shard(group)
    except ValueError as err:  # sizes that do not divide by the ranks
        raise ModelLoadError(f"{name!r} cannot be split over {group.size()} ranks: {err}") from None
    mx.eval(module.parameters())
    model = InterpretableModel(module, loaded.tokenizer)
    model.name = name
    return model
