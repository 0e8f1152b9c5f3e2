"""Running several ranks in tests: ``mlx.launch -n N`` over the ring backend on loopback,
bounded in time, and every process it started gone afterwards whatever happens."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
LAUNCH_TIMEOUT = 180  # seconds a whole multi-process run may take before the test fails


def free_port() -> int:
    """A TCP port free on loopback now (the ring's ranks listen from it upwards)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(n: int, command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``mlx.launch -n N --backend ring -- COMMAND`` in its own process group, which is
    killed whole if the run outlasts ``LAUNCH_TIMEOUT`` (the test then fails)."""
    argv = [
        str(BIN / "mlx.launch"), "-n", str(n), "--backend", "ring",
        "--starting-port", str(free_port()), "--", *command,
    ]  # fmt: skip
    process = subprocess.Popen(
        argv,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise AssertionError(
            f"{' '.join(command)} on {n} ranks outlasted {LAUNCH_TIMEOUT} s"
        ) from None
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(argv, process.returncode, out, err)
