"""Command palette provider: every action of the actions table, searchable by title."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from .actions import palette_actions


class WorkbenchCommands(Provider):
    """Every palette action of ``actions.ACTIONS``."""

    async def discover(self) -> Hits:
        for action in palette_actions():
            yield DiscoveryHit(
                action.title, partial(self.app.run_action, action.action), help=action.id
            )

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for action in palette_actions():
            score = matcher.match(action.title)
            if score > 0:
                yield Hit(
                    score,
                    matcher.highlight(action.title),
                    partial(self.app.run_action, action.action),
                    help=action.id,
                )
