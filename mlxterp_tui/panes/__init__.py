"""The workbench's panes, one module each.  A pane renders the step kinds it lists in
``KINDS`` (``show_step``), fills its form back from a step's parameters (``restore``) and
explains itself in ``HELP``, which the help screen shows."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from textual.containers import Vertical

from mlxterp.session import Step

if TYPE_CHECKING:
    from ..state import WorkbenchState


class Pane(Vertical):
    """A tab of the workbench."""

    KINDS: ClassVar[tuple[str, ...]] = ()
    HELP: ClassVar[str] = ""
    HOME: ClassVar[str | None] = None  # the widget Esc moves to from this pane's fields

    def show_step(self, step: Step, state: WorkbenchState) -> None:
        """Render ``step`` (one of ``KINDS``); a reopened step has its summary only."""

    def restore(self, step: Step) -> None:
        """Fill the pane's form from ``step``'s parameters (a reopened session)."""

    def follow(self, steps: list[Step], restore_forms: bool) -> None:
        """See every step of a session being shown, before its last step of ``KINDS`` is
        (for what a pane keeps from step to step; ``restore_forms``: a reopened session)."""
