"""What the workbench's Pilot tests share besides fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any


async def settle(app: Any, pilot: Any) -> None:
    """Until the keys sent so far are handled and every worker they started has finished."""
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()


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
