"""Command palette provider for the workbench's main actions."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

COMMANDS = (
    ("Run logit lens on the prompt", "run_lens"),
    ("Trace the prompt (shapes in the module tree)", "run_trace"),
    ("Run activation patching sweep", "run_patching"),
    ("Run steering", "run_steering"),
    ("Chart the attention of a head", "run_attention"),
    ("Add intervention", "add_intervention"),
    ("Save session", "save"),
    ("Save session as…", "save_as"),
    ("Open session…", "open"),
    ("Replay session", "replay"),
    ("Show help (all keys)", "help"),
    ("Cancel running work", "cancel"),
)


class WorkbenchCommands(Provider):
    """The actions above, searchable by name."""

    async def discover(self) -> Hits:
        for title, action in COMMANDS:
            yield DiscoveryHit(title, partial(self.app.run_action, action))

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, action in COMMANDS:
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), partial(self.app.run_action, action))
