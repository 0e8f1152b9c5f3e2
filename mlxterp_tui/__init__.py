"""The mlxterp workbench: a keyboard-driven Textual app over the engine and sessions.

``mlxterp`` (see ``mlxterp_tui.cli``) starts it; ``startup_seconds()`` measures the time from
constructing the app until its first screen is up with the model loaded.
"""

from __future__ import annotations

import asyncio
import time


def startup_seconds(model: str = "demo", size: tuple[int, int] = (80, 24)) -> float:
    """Seconds from importing and constructing the app until the model is loaded and the
    first screen is interactive (run headless)."""
    start = time.perf_counter()
    from .app import WorkbenchApp

    async def run() -> float:
        app = WorkbenchApp(model)
        async with app.run_test(size=size) as pilot:
            # the load starts after the first refresh: wait for it, not just for the
            # workers running now (there may be none yet on a busy machine)
            deadline = time.perf_counter() + 120
            while app.model is None:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"model {model!r} did not load in 120 s")
                await pilot.pause()
                await app.workers.wait_for_complete()
            return time.perf_counter() - start

    return asyncio.run(run())


__all__ = ["startup_seconds"]
