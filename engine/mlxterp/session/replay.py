"""Replay: re-run every step of a session on a freshly loaded model and compare."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import MlxterpError, SessionError
from .active import InterventionList
from .locking import on_mlx_thread
from .session import Session, SessionManager, fingerprint, parameter_count
from .steps import Difference, compare, kind


@dataclass
class StepReport:
    """One replayed step: whether it matched, the first difference, the largest number gap;
    every difference and the replayed summary (None when the step could not run), for a
    side-by-side view of recorded and replayed."""

    index: int
    kind: str
    ok: bool
    message: str
    max_diff: float = 0.0
    differences: list[Difference] = field(default_factory=list)
    replayed: dict[str, Any] | None = None


@dataclass
class ReplayReport:
    """Per-step results of a replay; ``ok`` when every step matched."""

    path: str | None
    model_ref: str
    steps: list[StepReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every step matched."""
        return all(s.ok for s in self.steps)

    def format_text(self) -> str:
        """The report as lines of text: one per step, then the count that matched."""
        lines = [f"replay of {self.path or 'session'} on model {self.model_ref!r}"]
        lines += [f"warning: {w}" for w in self.warnings]
        for s in self.steps:
            mark = "ok  " if s.ok else "FAIL"
            lines.append(f"{mark} step {s.index:>2} {s.kind:<22} {s.message}")
        matched = sum(s.ok for s in self.steps)
        lines.append(
            f"{matched} of {len(self.steps)} steps match" + ("" if self.ok else " — MISMATCH")
        )
        return "\n".join(lines)


def replay(
    source: str | Path | Session,
    manager: SessionManager | None = None,
    tolerance: float = 1e-3,
) -> ReplayReport:
    """Re-run every step of ``source`` and compare each with its recorded summary."""
    if (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, (int, float))
        or not 0 <= tolerance < math.inf
    ):
        raise SessionError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    session = source if isinstance(source, Session) else Session.load(source)
    manager = manager or session.manager or SessionManager()
    report = ReplayReport(str(session.path) if session.path else None, session.model_ref)
    model = manager.model(session.model_ref)
    current = fingerprint(session.model_ref)
    if session.fingerprint and current and current != session.fingerprint:
        report.warnings.append(
            "the model differs from the one the session was recorded with (its config.json, "
            "or its GGUF file's size, header or last weights)"
        )
    if session.parameters is not None and parameter_count(model) != session.parameters:
        report.warnings.append(
            f"the model has {parameter_count(model)} parameters; the session was recorded "
            f"on one with {session.parameters}"
        )
    state = InterventionList()
    for step in session.steps:
        step_kind = kind(step.kind)
        try:
            params = step_kind.complete(step.params)
            _, summary = on_mlx_thread(partial(step_kind.execute, model, params, state))
        except Exception as err:
            known = isinstance(err, MlxterpError)  # said on purpose: its message is enough
            why = str(err) if known else f"{type(err).__name__}: {err}"
            report.steps.append(StepReport(step.index, step.kind, False, f"cannot run: {why}"))
            continue
        result = compare(step.summary, summary, tolerance)
        if result.differences:
            first = result.differences[0]
            message = (
                f"{len(result.differences)} difference(s); first at {first.path or '(top)'}: "
                f"recorded {first.recorded!r}, now {first.replayed!r}"
            )
        else:
            message = f"matches (max numeric difference {result.max_diff:.2g})"
        report.steps.append(
            StepReport(
                step.index,
                step.kind,
                not result.differences,
                message,
                result.max_diff,
                result.differences,
                summary,
            )
        )
    return report
