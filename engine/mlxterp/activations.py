"""Collecting activations: per layer at chosen positions, streamed over datasets, or cached.

* ``get_activations`` — layer outputs (or a component's) at token positions, keyed
  ``"layer_i"``.  Position ``-1`` is each row's last *real* token, also in right-padded
  batches of prompts of different lengths.
* ``batch_get_activations`` — the same over many prompts, in batches: only the requested
  layers are captured and only the selected positions are kept, so memory stays flat as the
  dataset grows.
* ``collect_activations`` — an ``ActivationCache`` of whole module outputs, keyed by
  canonical module names and reachable by every alias.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import mlx.core as mx
from tqdm import tqdm

from .errors import InputError, NotCapturedError
from .inputs import int_list
from .inputs import is_int as is_int  # re-exported: callers take it from here
from .names import ModuleIndex
from .tracing import ActivationMap

if TYPE_CHECKING:
    from .model import InterpretableModel

Layers = int | Sequence[int] | None
"""Layer indices: one, several, or None for every layer (negative ones count from the end)."""
Positions = int | Sequence[int]
"""Token positions: one or several (negative ones count back from each row's last token)."""


def layer_indices(model: InterpretableModel, layers: Layers = None) -> list[int]:
    """Layer indices (negative ones count from the end) checked and made non-negative.

    ``None`` means every layer; repeats are dropped, order is kept.
    """
    n = model.num_layers
    if n == 0:
        raise InputError("this model has no detected layer list; pass layer_attr= to name it")
    if layers is None:
        return list(range(n))
    wanted: object = [layers] if is_int(layers) else layers  # checked: users pass anything
    if isinstance(wanted, str) or not isinstance(wanted, Sequence):
        raise InputError(f"layers must be layer indices (ints); got {layers!r}")
    out: list[int] = []
    for layer in wanted:
        if not is_int(layer):
            raise InputError(f"layers must be layer indices (ints); got {layer!r}")
        if not -n <= layer < n:
            raise InputError(
                f"layer {layer} is out of range: the model has {n} layers (0..{n - 1})"
            )
        out.append(int(layer) % n)
    if not out:
        raise InputError("layers is empty; name at least one layer (or None for all)")
    return list(dict.fromkeys(out))


def position_index(lengths: list[int], positions: Positions) -> tuple[mx.array, bool]:
    """``(batch, n_positions)`` indices into the sequence axis, and whether one position was
    asked for.  Negative positions count back from each row's last real token."""
    single = is_int(positions)
    wanted = int_list(positions)
    if wanted is None:
        raise InputError(f"positions must be an int or a list of ints; got {positions!r}")
    rows = []
    for b, n in enumerate(lengths):
        row = []
        for p in wanted:
            if not -n <= p < n:
                raise InputError(
                    f"position {p} is out of range for prompt {b}, which has {n} tokens"
                )
            row.append(int(p) % n)
        rows.append(row)
    return mx.array(rows, dtype=mx.int32), single


def get_activations(
    model: InterpretableModel,
    prompts: Any,
    layers: Layers = None,
    positions: Positions = -1,
    component: str | None = None,
) -> dict[str, mx.array]:
    """Outputs of ``layers`` at token ``positions`` for a prompt or a batch of prompts.

    Returns ``{"layer_i": array}``: ``(batch, hidden)`` for one position, ``(batch,
    n_positions, hidden)`` for a list.  ``component`` (``"attn"``, ``"mlp"``,
    ``"mlp.down_proj"`` ...) reads that module of each layer instead of the layer output.
    """
    indices = layer_indices(model, layers)
    names = [model.layer_name(i, component) for i in indices]
    trace = model.run(prompts, capture=names, output=False)
    out: dict[str, mx.array] = {}
    index, single = None, False
    for i, name in zip(indices, names, strict=True):
        act = trace.activations[name]
        if act.ndim != 3:
            raise InputError(
                f"{name} outputs shape {tuple(act.shape)}; positions need (batch, seq, hidden)"
            )
        if index is None:
            lengths = trace.lengths or [act.shape[1]] * act.shape[0]
            index, single = position_index(lengths, positions)
        picked = mx.take_along_axis(act, index[:, :, None], axis=1)
        out[f"layer_{i}"] = picked[:, 0] if single else picked
    return out


def batch_get_activations(
    model: InterpretableModel,
    prompts: Sequence[Any],
    layers: Layers = None,
    positions: Positions = -1,
    batch_size: int = 8,
    progress: bool = True,
    component: str | None = None,
) -> dict[str, mx.array]:
    """``get_activations`` over many prompts, ``batch_size`` at a time, concatenated.

    Each batch is evaluated before the next one runs and keeps only the selected positions,
    so memory does not grow with the number of prompts beyond the results themselves.  A
    progress bar goes to stderr unless ``progress=False``.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Sequence) or not prompts:
        raise InputError("prompts must be a non-empty list of prompts")
    if not is_int(batch_size) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int; got {batch_size!r}")
    parts: dict[str, list[mx.array]] = {}
    with tqdm(
        total=len(prompts), disable=not progress, file=sys.stderr, unit="prompt", desc="activations"
    ) as bar:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            acts = get_activations(model, chunk, layers, positions, component)
            mx.eval(list(acts.values()))
            for key, value in acts.items():
                parts.setdefault(key, []).append(value)
            bar.update(len(chunk))
    return {key: mx.concatenate(values, axis=0) for key, values in parts.items()}


class ActivationCache(ActivationMap):
    """Module outputs of one run, keyed by canonical name; every alias finds them.

    A read-only mapping: ``cache["layers.3"]``, ``cache.get("model.model.layers.3")``,
    ``"layers.3" in cache``, ``items()``, ``values()``; ``keys()`` lists the canonical names;
    ``activations`` is ``{canonical_name: array}``; ``metadata`` describes the run.
    """

    def __init__(
        self,
        index: ModuleIndex,
        activations: dict[str, mx.array],
        metadata: dict[str, Any] | None = None,
    ):
        super().__init__(index, activations)
        self.activations = activations
        self.metadata: dict[str, Any] = dict(metadata or {})

    def __getitem__(self, name: str) -> mx.array:
        value = self.get(name)
        if value is None:
            raise NotCapturedError(
                f"{name!r} ({self._index.resolve(name)}) is not in this cache; collect it with "
                "collect_activations(model, inputs, layers=[...])"
            )
        return value

    def keys(self) -> list[str]:  # type: ignore[override]  # the spec's list, not a view
        """The canonical names of the cached activations."""
        return list(self.activations)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} activations)"


def collect_activations(
    model: InterpretableModel,
    inputs: Any,
    layers: str | int | Sequence[str | int] | None = None,
) -> ActivationCache:
    """Run ``inputs`` once and cache the outputs of ``layers``.

    ``layers`` holds module names in any accepted form (``"layers.3"``,
    ``"model.model.layers.3.mlp"``, ``"layers.*.attn"``) or layer indices; ``None`` caches
    every module and the model output.  Only what was asked for is captured and kept.
    """
    capture: list[str] | None = None
    if layers is not None:
        if isinstance(layers, (str, int)):
            layers = [layers]
        if not layers:
            raise InputError("layers is empty; name at least one module (or None for all)")
        bad = [x for x in layers if not (is_int(x) or isinstance(x, str))]
        if bad:
            raise InputError(f"layers must be module names or layer indices; got {bad[0]!r}")
        capture = [
            x if isinstance(x, str) else model.layer_name(layer_indices(model, [x])[0])
            for x in layers
        ]
    trace = model.run(inputs, capture=capture, output=capture is None)
    values = dict(trace.activations.items())
    metadata = {
        "model": model.name,
        "tokens": trace.inputs,
        "lengths": trace.lengths,
        "layers": None if layers is None else list(layers),
    }
    return ActivationCache(model.module_index, values, metadata)
