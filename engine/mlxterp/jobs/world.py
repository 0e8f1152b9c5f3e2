"""The processes of a job: one, or N started by ``mlx.launch`` (any backend MLX has: ring
over TCP, MPI, JACCL).  Every exchange goes through ``mx.distributed`` and is bounded in
time: a rank that stops answering (killed, hung, its host gone) makes every other rank
stop within ``timeout`` seconds with a clear message, never hang.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import TypeVar

import mlx.core as mx

from ..errors import MlxterpError

LAUNCH_VARIABLES = ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")  # set by the launchers
STOPPED = 3  # exit code of a rank stopped because another rank failed or a signal came
STARTUP_GRACE = 600.0  # seconds the first exchange waits at least: ranks load models unevenly
T = TypeVar("T")


class JobStopped(MlxterpError):
    """Another rank stopped, or the connection to it was lost."""


@dataclass
class World:
    """This process's place among the job's processes."""

    rank: int
    size: int
    group: mx.distributed.Group | None
    timeout: float  # seconds an exchange may wait for the other ranks

    @property
    def leader(self) -> bool:
        """Rank 0: it shows progress and writes what is gathered."""
        return self.rank == 0

    def all_sum(self, values: mx.array, what: str) -> mx.array:
        """``values`` summed over every rank (itself when alone)."""
        return self._collective(mx.distributed.all_sum, values, what)

    def all_max(self, values: mx.array, what: str) -> mx.array:
        """``values``' largest over every rank, element by element."""
        return self._collective(mx.distributed.all_max, values, what)

    def all_gather(self, values: mx.array, what: str) -> mx.array:
        """Every rank's ``values`` (one shape on all ranks) stacked along axis 0, in rank
        order."""
        return self._collective(mx.distributed.all_gather, values, what)

    def meet(self, what: str) -> None:
        """Wait until every rank is here, allowing ``STARTUP_GRACE`` at least (the first
        meeting: ranks load their models at different speeds)."""
        wait = max(self.timeout, STARTUP_GRACE)
        self._collective(mx.distributed.all_sum, mx.array(0), what, wait)

    def _collective(
        self,
        operation: Callable[..., mx.array],
        values: mx.array,
        what: str,
        seconds: float | None = None,
    ) -> mx.array:
        """``operation`` over the ranks, done within ``seconds`` (the job's timeout)."""
        if self.group is None:
            return values
        with deadline(seconds or self.timeout, f"rank {self.rank}: {what}"):
            try:
                result = operation(values, group=self.group, stream=mx.cpu)
                mx.eval(result)
            except RuntimeError as err:  # the ring's "connection to a peer was lost"
                raise JobStopped(
                    f"rank {self.rank}: {what}: lost the other ranks ({err}); stopping"
                ) from None
        return result


def launched() -> bool:
    """Whether a launcher started this process as one rank of several."""
    return any(name in os.environ for name in LAUNCH_VARIABLES)


def join(timeout: float) -> World:
    """This process's :class:`World`: the launcher's group when launched, else alone."""
    if not launched():
        return World(0, 1, None, timeout)
    try:
        group = mx.distributed.init(strict=True)
    except RuntimeError as err:
        raise JobStopped(f"cannot join the other ranks: {err}") from None
    if group.size() == 1:
        return World(0, 1, None, timeout)
    return World(group.rank(), group.size(), group, timeout)


@contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Exit the process (code ``STOPPED``, a line on stderr) if the block takes longer than
    ``seconds``: an exchange blocked in MLX cannot be interrupted otherwise."""

    def expired() -> None:
        print(
            f"mlxterp job: {what}: no answer from the other ranks in {seconds:g} s "
            "(a rank stopped, hung or lost its connection); stopping",
            file=sys.stderr,
            flush=True,
        )
        os._exit(STOPPED)

    timer = threading.Timer(seconds, expired)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def stop_on_signals() -> None:
    """SIGTERM and SIGINT (a launcher stopping the job, Ctrl-C) end this rank with a line
    on stderr and code ``STOPPED``; what it wrote is whole (every write is atomic)."""

    def stop(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        print(
            f"mlxterp job: stopped by {name}; completed shards are kept",
            file=sys.stderr,
            flush=True,
        )
        os._exit(STOPPED)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
