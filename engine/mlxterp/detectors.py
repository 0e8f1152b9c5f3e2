"""Head detectors: which attention heads attend to the previous token, to an earlier copy of
the current token, to the token after that copy (induction), or to the first token.

A *detection pattern* is a ``(q, k)`` matrix of 0/1 marking, for each query position, the
key positions a head with the behaviour attends to; it is built from the token ids alone:

* ``previous_token`` — query ``i`` expects key ``i - 1``;
* ``duplicate_token`` — query ``i`` expects every earlier position holding the same token;
* ``induction`` — query ``i`` expects the position *after* every earlier copy of its token;
* ``first_token`` — query ``i >= 1`` expects key 0 (the attention sink, often BOS).

A head's score on a pattern is the attention mass it puts on the expected keys, averaged
over the query positions where the pattern is defined (rows with at least one expected key)
and over the sequences: 1 for a head that does exactly that, about ``1 / position`` for
uniform attention.  :func:`detection_score` scores any attention pattern against any
detection pattern (as TransformerLens's head detector does), optionally leaving the first
and the current key out (the score is then the share of the remaining mass).

:func:`detect_heads` runs generated test sequences — seeded random tokens drawn from the
vocabulary without repeats, the half repeated (``r + r``), after BOS when the tokenizer has
one — through ``mlxterp.attention.attention_patterns`` and scores every query head of every
layer (grouped-query models report one score per query head).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

import mlx.core as mx
import numpy as np

from . import plotting
from .activations import Layers, is_int
from .attention import attention_patterns
from .errors import InputError
from .inputs import check_seed

if TYPE_CHECKING:
    from .model import InterpretableModel

DETECTIONS = ("previous_token", "duplicate_token", "induction", "first_token")


def detection_pattern(detection: str, tokens: Sequence[int]) -> np.ndarray:
    """The ``(seq, seq)`` 0/1 matrix of the keys each query expects under ``detection``
    (one of ``DETECTIONS``) for the token ids ``tokens``."""
    ids = np.asarray([int(t) for t in tokens])
    n = len(ids)
    if n == 0:
        raise InputError("a detection pattern needs at least one token")
    q, k = np.indices((n, n))
    earlier_copy = (ids[:, None] == ids[None, :]) & (k < q)
    if detection == "previous_token":
        pattern = k == q - 1
    elif detection == "duplicate_token":
        pattern = earlier_copy
    elif detection == "induction":
        pattern = np.zeros((n, n), dtype=bool)
        pattern[:, 1:] = earlier_copy[:, :-1]
        pattern &= k <= q
    elif detection == "first_token":
        pattern = (k == 0) & (q >= 1)
    else:
        raise InputError(f"unknown detection {detection!r}; choose one of: {', '.join(DETECTIONS)}")
    marked: np.ndarray = pattern.astype(np.float32)
    return marked


def detection_score(
    pattern: Any,
    detection: Any,
    exclude_first: bool = False,
    exclude_current: bool = False,
) -> np.ndarray:
    """How much of each head's attention follows ``detection``: attention mass on the
    expected keys, averaged over the query rows where ``detection`` expects any key.

    ``pattern`` is attention weights ``(..., q, k)`` (e.g. ``(batch, heads, q, k)``) with
    rows summing to 1; ``detection`` a ``(q, k)`` matrix (0/1, or weights) or a
    ``(batch, q, k)`` stack, one per sequence.  ``exclude_first`` / ``exclude_current``
    drop key 0 / the query's own position from both the attention and the detection
    pattern, the score then being the share of the remaining mass.  Returns one score per
    leading index but the batch, which is averaged: shape ``pattern.shape[1:-2]`` for a
    batched pattern (``(heads,)``), a scalar for a single ``(q, k)`` pattern.
    """
    weights = np.asarray(pattern, dtype=np.float64)
    expected = np.asarray(detection, dtype=np.float64)
    if weights.ndim < 2 or weights.shape[-1] != weights.shape[-2]:
        raise InputError(f"an attention pattern is (..., q, q); got shape {weights.shape}")
    n = weights.shape[-1]
    if expected.shape[-2:] != (n, n) or expected.ndim not in (2, 3):
        raise InputError(
            f"the detection pattern must be ({n}, {n}) or (batch, {n}, {n}) for this attention "
            f"pattern; got shape {expected.shape}"
        )
    keep = np.ones((n, n))
    if exclude_first:
        keep[:, 0] = 0
    if exclude_current:
        keep[np.arange(n), np.arange(n)] = 0
    if weights.ndim == 2:
        weights = weights[None]
    if expected.ndim == 3 and expected.shape[0] != weights.shape[0]:
        raise InputError(
            f"{expected.shape[0]} detection patterns for {weights.shape[0]} attention patterns"
        )
    expected = expected * keep
    if expected.ndim == 2:
        expected = expected[None]
    # the detection stack lines up with the batch axis; heads (and more) broadcast
    expected = expected.reshape(expected.shape[0], *(1,) * (weights.ndim - 3), n, n)
    kept = weights * keep
    mass = (kept * expected).sum(-1)
    total = kept.sum(-1)
    share = np.divide(mass, total, out=np.zeros_like(mass), where=total > 0)
    defined = np.broadcast_to(expected.sum(-1) > 0, share.shape)
    count = defined.sum(axis=(0, -1))
    if not np.all(count):
        left = " once the excluded keys are left out" if exclude_first or exclude_current else ""
        raise InputError(f"the detection pattern expects no key at any query position{left}")
    scores: np.ndarray = (share * defined).sum(axis=(0, -1)) / count
    return scores


class HeadDetectionSummary(TypedDict):
    """``HeadDetection.to_summary()``: one layers x heads matrix per detection."""

    detections: list[str]
    layers: list[int]
    scores: dict[str, list[list[float]]]
    seq_len: int
    batch: int
    seed: int


@dataclass
class HeadDetection:
    """Scores of every head on each detection (see module docstring).

    ``scores[detection][i][h]`` is head ``h`` of layer ``layers[i]``.  ``tokens`` are the
    test sequences that were run (``(batch, seq)`` token ids).
    """

    detections: list[str]
    layers: list[int]
    scores: dict[str, list[list[float]]]
    seq_len: int
    batch: int
    seed: int
    tokens: list[list[int]] = field(default_factory=list)

    def top(self, detection: str, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` highest-scoring heads on ``detection`` as ``(layer, head, score)``."""
        grid = self._grid(detection)
        cells = [
            (self.layers[i], h, score) for i, row in enumerate(grid) for h, score in enumerate(row)
        ]
        return sorted(cells, key=lambda cell: -cell[2])[:k]

    def to_summary(self) -> HeadDetectionSummary:
        """Plain values to store and compare."""
        return {
            "detections": list(self.detections),
            "layers": list(self.layers),
            "scores": {d: [list(row) for row in self.scores[d]] for d in self.detections},
            "seq_len": self.seq_len,
            "batch": self.batch,
            "seed": self.seed,
        }

    def heatmap(
        self, detection: str, cmap: str = "viridis", cell_width: int = 6, color: bool = True
    ) -> str:
        """One detection's scores as a coloured layers x heads grid on a 0..1 scale."""
        grid = self._grid(detection)
        return plotting.heatmap_text(
            grid,
            [f"L{layer}" for layer in self.layers],
            [f"H{h}" for h in range(len(grid[0]) if grid else 0)],
            [[f"{v:.2f}" for v in row] for row in grid],
            cmap=cmap,
            cell_width=cell_width,
            vmin=0.0,
            vmax=1.0,
            color=color,
            title=f"{detection} score per head (rows: layers, columns: heads)",
        )

    def _grid(self, detection: str) -> list[list[float]]:
        if detection not in self.scores:
            raise InputError(
                f"no {detection!r} scores here; this result has: {', '.join(self.detections)}"
            )
        return self.scores[detection]


def repeated_sequences(
    model: InterpretableModel, seq_len: int = 32, batch: int = 4, seed: int = 0
) -> list[list[int]]:
    """``batch`` sequences of seeded random token ids: ``seq_len`` distinct tokens (no
    special ones) repeated once, after BOS when the tokenizer has one."""
    sizes = [v for v in (model.vocab_size, model.config.get("vocab_size")) if is_int(v)]
    if not sizes:
        raise InputError("head detection draws tokens from the vocabulary; this model states none")
    vocab = min(sizes)  # a tokenizer may know more tokens than the embedding has rows
    tokenizer = model.tokenizer
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    bos = getattr(tokenizer, "bos_token_id", None)
    pool = np.array([t for t in range(int(vocab)) if t not in special])
    if len(pool) < seq_len:
        raise InputError(f"seq_len {seq_len} exceeds the {len(pool)} ordinary tokens available")
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(batch):
        half = [int(t) for t in rng.choice(pool, size=seq_len, replace=False)]
        rows.append(([int(bos)] if is_int(bos) else []) + half + half)
    return rows


def detect_heads(
    model: InterpretableModel,
    detections: Sequence[str] | None = None,
    layers: Layers = None,
    seq_len: int = 32,
    batch: int = 4,
    seed: int = 0,
    exclude_first: bool = False,
    exclude_current: bool = False,
) -> HeadDetection:
    """Score every head of ``layers`` (default all) on each of ``detections`` (names from
    ``DETECTIONS``; default all of them), from the
    attention patterns of ``batch`` generated sequences of ``seq_len`` random tokens
    repeated once (see :func:`repeated_sequences`); see :func:`detection_score` for the
    exclusions."""
    if detections is None:
        detections = DETECTIONS
    wanted = [detections] if isinstance(detections, str) else list(detections)
    if not wanted:
        raise InputError(f"detections is empty; choose from: {', '.join(DETECTIONS)}")
    for name in wanted:
        if name not in DETECTIONS:
            raise InputError(f"unknown detection {name!r}; choose one of: {', '.join(DETECTIONS)}")
    for name, value, least in (("seq_len", seq_len, 2), ("batch", batch, 1)):
        if not is_int(value) or value < least:
            raise InputError(f"{name} must be an int >= {least}; got {value!r}")
    checked_seed = check_seed("seed", seed)
    rows = repeated_sequences(model, seq_len, batch, checked_seed or 0)
    patterns = attention_patterns(model, mx.array(rows), layers)
    expected = {name: np.stack([detection_pattern(name, row) for row in rows]) for name in wanted}
    scores: dict[str, list[list[float]]] = {name: [] for name in wanted}
    for layer in patterns:
        weights = np.array(patterns[layer])
        for name in wanted:
            row = detection_score(weights, expected[name], exclude_first, exclude_current)
            scores[name].append([float(s) for s in row])
    return HeadDetection(
        wanted, list(patterns), scores, seq_len, batch, checked_seed or 0, tokens=rows
    )
