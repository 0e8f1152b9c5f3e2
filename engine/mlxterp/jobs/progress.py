"""A job's progress: rank 0's bar on stderr (with tokens/s) and, for a job run in-process
alone (the workbench), a listener that hears each unit of work and may stop the job."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from tqdm import tqdm

from .world import JobStopped


@dataclass(frozen=True)
class JobProgress:
    """How far a job is: ``done`` of ``total`` units (records, or optimizer steps)."""

    done: int
    total: int
    unit: str
    tokens: int  # read in this run, by every rank
    seconds: float  # since this run began

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


JobListener = Callable[[JobProgress], bool]
"""Hears each :class:`JobProgress`; ``False`` stops the job there (what is done is kept)."""


class Reporter:
    """Shows progress and tells the listener; a context manager (the bar closes)."""

    def __init__(
        self,
        name: str,
        total: int,
        done: int,
        unit: str,
        show: bool,
        listener: JobListener | None,
    ) -> None:
        self.total, self.done, self.unit, self.listener = total, done, unit, listener
        self.started = time.perf_counter()
        self.bar = tqdm(
            total=total, initial=done, disable=not show, file=sys.stderr, unit=unit, desc=name
        )

    def __enter__(self) -> Reporter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.bar.close()

    def advance(
        self, units: int, tokens: int, before_stop: Callable[[], None] | None = None
    ) -> None:
        """``units`` more done, ``tokens`` read so far; a listener's ``False`` raises
        :class:`JobStopped` (after ``before_stop``, which saves what resuming needs)."""
        self.done += units
        seconds = time.perf_counter() - self.started
        self.bar.update(units)
        self.bar.set_postfix_str(f"{tokens / max(seconds, 1e-9):,.0f} tok/s", refresh=False)
        if self.listener is None:
            return
        if not self.listener(JobProgress(self.done, self.total, self.unit, tokens, seconds)):
            if before_stop is not None:
                before_stop()
            raise JobStopped("stopped; what is done is kept, and --resume continues it")
