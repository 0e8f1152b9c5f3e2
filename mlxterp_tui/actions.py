"""The table of the workbench's actions: one row gives an action its keys, its binding id
(for the user's keymap), its title in the command palette and the help, and whether it
shows in the footer.  Bindings, palette and help are all read from this table.

Keys that act inside text fields are ``priority`` bindings, so a field never swallows them
(``ctrl+k`` runs patching even in a Patch field); keys a field types (digits, ``i``, ``?``)
act only outside fields, and each of those has a key that works everywhere too (``f2`` and
``f3`` walk the panes; alt+digit cannot: terminals send it as ESC and the digit, which
Textual reads as the macOS option characters ``¡™£¢∞§¶``).
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding, BindingType

PANES = (  # (pane id, tab label, what it is for)
    ("model", "1 Model", "Model"),
    ("lens", "2 Lens", "Lens"),
    ("charts", "3 Chart", "Chart"),
    ("patching", "4 Patch", "Patching"),
    ("interventions", "5 Interv", "Interventions"),
    ("steering", "6 Steer", "Steering"),
    ("history", "7 Hist", "History"),
    ("heads", "8 Heads", "Heads"),
    ("sae", "9 SAE", "SAE"),
)


@dataclass(frozen=True)
class Action:
    """One action of the app (``action`` is its Textual action string)."""

    id: str
    keys: str
    action: str
    title: str
    footer: str | None = None  # the footer's short label, if it shows there
    priority: bool = False  # works inside text fields too
    palette: bool = True


ACTIONS: tuple[Action, ...] = (
    Action("help", "f1,question_mark", "help", "Help: the panes and every key", "Help"),
    Action("run_lens", "ctrl+r", "run_lens", "Run the logit lens on the prompt", "Lens", True),
    Action(
        "run_trace",
        "ctrl+t",
        "run_trace",
        "Trace the prompt (shapes in the module tree)",
        "Trace",
        True,
    ),
    Action(
        "run_patching", "ctrl+k", "run_patching", "Run the activation patching sweep", priority=True
    ),
    Action("run_steering", "ctrl+g", "run_steering", "Run steering", priority=True),
    Action(
        "run_generate",
        "ctrl+n",
        "run_generate",
        "Generate a continuation, streamed (Esc stops)",
        priority=True,
    ),
    Action("run_attention", "f6", "run_attention", "Chart the attention of a head", priority=True),
    Action(
        "run_heads",
        "f7",
        "run_heads",
        "Run the head analysis (detectors, head or path patching, attribution)",
        priority=True,
    ),
    Action(
        "train_sae",
        "f8",
        "train_sae",
        "Train an SAE on a layer (progress shown; Esc stops)",
        priority=True,
    ),
    Action(
        "browse_sae",
        "f10",
        "browse_sae",
        "Browse the SAE: prompt features, a feature's dashboard, edit a feature",
        priority=True,
    ),
    Action(
        "jobs",
        "f12",
        "jobs",
        "Run a dataset job (a job file; progress shown; Esc stops)",
        priority=True,
    ),
    Action(
        "add_intervention", "i", "add_intervention", "Add an intervention (on the selected module)"
    ),
    Action("edit_intervention", "", "edit_intervention", "Edit the selected intervention"),
    Action(
        "toggle_intervention",
        "",
        "toggle_intervention",
        "Switch the selected intervention off / on",
    ),
    Action("remove_intervention", "", "remove_intervention", "Remove the selected intervention"),
    Action(
        "toggle_chat",
        "f9",
        "toggle_chat",
        "Chat switch: send the prompt as a user message through the chat template",
        priority=True,
    ),
    Action("export", "e", "export", "Export the shown step to JSON and CSV beside the session"),
    Action("save", "ctrl+s", "save", "Save the session", "Save", True),
    Action("save_as", "f4", "save_as", "Save the session as a new file", priority=True),
    Action("open", "ctrl+o", "open", "Open a session file", "Open", True),
    Action("replay", "f5", "replay", "Replay the session and compare every step", priority=True),
    Action(
        "load_model",
        "ctrl+l",
        "load_model",
        "Load another model (pick one or type a path or name)",
        priority=True,
    ),
    Action(
        "escape",
        "escape",
        "escape",
        "Leave the field; outside fields, cancel running work",
        palette=False,
    ),
    Action("cancel", "", "cancel", "Cancel running work"),
    Action("quit", "ctrl+q", "quit", "Quit (asks first if there is unsaved work)", "Quit", True),
    Action("pane_next", "f3", "next_pane", "Show the next pane", priority=True),
    Action("pane_previous", "f2", "next_pane(-1)", "Show the previous pane", priority=True),
    *(
        Action(f"pane_{pane}", str(n), f"show_pane('{pane}')", f"Show the {name} pane")
        for n, (pane, _label, name) in enumerate(PANES, 1)
    ),
)


def bindings() -> list[BindingType]:
    """The app's key bindings, each with its id."""
    return [
        Binding(
            a.keys,
            a.action,
            a.footer or a.title,
            show=a.footer is not None,
            priority=a.priority,
            id=a.id,
        )
        for a in ACTIONS
        if a.keys
    ]


def palette_actions() -> list[Action]:
    """Every action the command palette lists."""
    return [a for a in ACTIONS if a.palette]
