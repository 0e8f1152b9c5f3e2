"""The lock around every MLX evaluation the session layer does.

MLX's scheduler is not safe to drive from several threads at once (two threads running
steps failed inside ``mx.eval``), so steps run one at a time in a process, whichever
session, manager or model they use, and arrays loaded from a sidecar are evaluated under
the same lock.  Saving needs no MLX work (the arrays of a computed step are evaluated
before it is returned), so a save never waits for a running step.
"""

from __future__ import annotations

import threading
from typing import Any

import mlx.core as mx

MLX_LOCK = threading.RLock()


def arrays_in(value: Any) -> list[mx.array]:
    """Every ``mx.array`` inside nested dicts, lists and tuples."""
    if isinstance(value, mx.array):
        return [value]
    if isinstance(value, dict):
        return [a for v in value.values() for a in arrays_in(v)]
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in arrays_in(v)]
    return []


def evaluate(value: Any) -> None:
    """Evaluate every array inside ``value``, under the lock."""
    found = arrays_in(value)
    if found:
        with MLX_LOCK:
            mx.eval(found)
