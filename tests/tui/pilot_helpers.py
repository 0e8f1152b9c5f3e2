"""What the workbench's Pilot tests share besides fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any


async def settle(app: Any, pilot: Any) -> None:
    """Until the keys sent so far are handled and every worker they started has finished."""
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()


async def until(app: Any, pilot: Any, done: Callable[[], Any], workers: bool = True) -> None:
    """Let the app work until ``done()`` holds (a screen's result reaches the app through a
    chain of callbacks, more than one pause on a busy machine); the caller asserts it.
    ``workers=False`` does not wait for running workers (one may be held back on purpose)."""
    for _ in range(200):
        await (settle(app, pilot) if workers else pilot.pause())
        if done():
            return
        await pilot.pause(0.02)


@asynccontextmanager
async def reopened(
    path: Path, manager: Any, size: tuple[int, int] = (80, 24)
) -> AsyncIterator[Any]:
    """The workbench on the session saved at ``path`` (as ``mlxterp-tui FILE`` opens it),
    running at ``size`` with its steps shown."""
    from mlxterp.session import Session
    from mlxterp_tui.app import WorkbenchApp

    session = Session.load(path, manager=manager)
    app = WorkbenchApp(session.model_ref, session=session, manager=manager)
    async with app.run_test(size=size) as pilot:
        await settle(app, pilot)
        yield app
