"""The main screen: the prompt bar over the panes, the status line and the footer."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, ProgressBar, Static, TabbedContent, TabPane

from .actions import PANES
from .panes import Pane
from .panes.charts import ChartsPane
from .panes.heads import HeadsPane
from .panes.history import HistoryPane
from .panes.interventions import InterventionsPane
from .panes.lens import LensPane
from .panes.model_tree import ModelPane
from .panes.patching import PatchingPane
from .panes.prompt import PromptBar
from .panes.sae import SaePane
from .panes.steering import SteeringPane
from .state import WorkbenchState

PANE_TYPES: dict[str, type[Pane]] = {
    "model": ModelPane,
    "lens": LensPane,
    "charts": ChartsPane,
    "patching": PatchingPane,
    "interventions": InterventionsPane,
    "steering": SteeringPane,
    "history": HistoryPane,
    "heads": HeadsPane,
    "sae": SaePane,
}
HOME_PANE = {  # the pane that shows a step kind's result first
    "logit_lens": "lens",
    "tuned_lens": "lens",
    **{kind: "patching" for kind in PatchingPane.KINDS},
    "trace": "model",
    "steering": "steering",
    "generate": "steering",
    "attention": "charts",
    "interventions": "interventions",
    **{kind: "heads" for kind in HeadsPane.KINDS},
    **{kind: "sae" for kind in SaePane.KINDS},
}


def status_text(state: WorkbenchState) -> Text:
    """The status line: model, session file and whether it is saved, steps, interventions,
    running work."""
    session = state.session
    if session.path is not None:
        name = session.path.name
    elif state.copy_of is not None:
        name = f"copy of {state.copy_of.name}"
    else:
        name = "unsaved session"
    text = Text(f"model: {Path(state.model_ref).name} │ {name}")
    if session.dirty:
        text.append(" ● modified", style="bold yellow")
    elif session.path is not None:
        text.append(" ✓ saved", style="green")
    text.append(f" │ {len(session.steps)} steps")
    active = len(session.interventions)
    if active:
        text.append(f" │ {active} interventions")
    if state.busy:
        text.append(f" │ {state.busy}… (Esc cancels)")
    return text


class MainScreen(Screen[None]):
    """Prompt bar, the panes as tabs, status line, footer."""

    def compose(self) -> ComposeResult:
        yield PromptBar(id="prompt-bar")
        with TabbedContent(initial="model", id="panes"):
            for pane_id, label, _name in PANES:
                with TabPane(label, id=pane_id):
                    yield PANE_TYPES[pane_id](id=f"{pane_id}-pane")
        with Horizontal(id="status-row"):
            yield Static("", id="status")
            yield ProgressBar(total=None, show_eta=False, show_percentage=False, id="progress")
        yield Footer()

    def _reset_focus(self, widget: Widget, avoiding: list[Widget] | None = None) -> None:
        """A focused widget whose pane was just hidden gives the focus up entirely: Textual
        would hand it to a sibling in the same hidden pane, and that would show the pane
        again (the app then focuses the shown pane)."""
        if self.focused is widget and not all(a.display for a in widget.ancestors_with_self):
            self.set_focus(None)
            return
        super()._reset_focus(widget, avoiding)

    def panes(self) -> list[Pane]:
        return list(self.query(Pane))

    async def fresh_panes(self) -> None:
        """Every pane as on a new session: no results, forms at their defaults (the prompt
        bar is not a pane: it keeps its text)."""
        for pane_id, _label, _name in PANES:
            tab = self.query_one(f"#{pane_id}", TabPane)
            await tab.remove_children()
            await tab.mount(PANE_TYPES[pane_id](id=f"{pane_id}-pane"))

    def show_status(self, state: WorkbenchState) -> None:
        self.query_one("#progress", ProgressBar).display = state.busy is not None
        self.query_one("#status", Static).update(status_text(state))
