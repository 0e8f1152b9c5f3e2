"""What the workbench's Pilot tests share besides fixtures."""

from __future__ import annotations

from typing import Any


async def settle(app: Any, pilot: Any) -> None:
    """Until the keys sent so far are handled and every worker they started has finished."""
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()
