"""The one thread on which the session layer does all its MLX work.

MLX's scheduler is not safe to drive from several threads at once (two threads running
steps failed inside ``mx.eval``), and a thread that has used MLX must call
``mx.clear_streams()`` before it ends, or the process aborts at exit ("terminate called
without an active exception", exit code 134).  Workers that come and go (the workbench's)
cannot promise that, so every step, model load and sidecar load of the session layer runs
on one long-lived thread, started on first use: steps run one at a time in a process,
whichever session, manager or thread asks, and at interpreter exit that thread clears its
streams and ends.  Saving needs no MLX work (the arrays of a computed step are evaluated
before it is returned), so a save never waits for a running step.  MLX evaluates an array
only on the thread that built it, so arrays cross between threads evaluated (see
:func:`evaluate`).
"""

from __future__ import annotations

import atexit
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import mlx.core as mx

T = TypeVar("T")

_Job = tuple[Callable[[], Any], "Future[Any]"]


class MlxThread:
    """A daemon thread that runs submitted calls in order; stopped (streams cleared) at exit."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on the MLX thread (directly when already on it); its exception
        propagates to the caller."""
        if threading.current_thread() is self._thread:
            return fn()
        with self._start:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="mlxterp-mlx", daemon=True)
                self._thread.start()
        done: Future[T] = Future()
        self._jobs.put((fn, done))
        return done.result()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, done = job
            try:
                done.set_result(fn())
            except BaseException as err:  # handed to the caller, who raises it
                done.set_exception(err)
        mx.clear_streams()

    def stop(self, timeout: float = 30.0) -> None:
        """End the thread after the calls already submitted (at exit: MLX needs it)."""
        with self._start:
            thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._jobs.put(None)
            thread.join(timeout)


MLX_THREAD = MlxThread()
atexit.register(MLX_THREAD.stop)


def on_mlx_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` where the session layer does its MLX work, and return its result."""
    return MLX_THREAD.call(fn)


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
    """Evaluate every array inside ``value`` on the calling thread.

    MLX evaluates an array only on the thread that built it, so whatever crosses to or from
    the MLX thread (a caller's parameters and models, a step's results) is evaluated first,
    on its own side."""
    found = arrays_in(value)
    if found:
        mx.eval(found)
