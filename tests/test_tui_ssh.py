"""The workbench over a real SSH connection, the way it is used.

The test starts its own ``sshd`` (openssh-server) on 127.0.0.1, with a config, host key and
authorized key made in a temporary folder; ``ssh -tt`` runs in an 80x24 pseudo-terminal and
opens the workbench inside tmux on the remote side.  Keys are written to the pseudo-terminal,
so they travel through SSH; the screen is read back with ``tmux capture-pane``.
"""

from __future__ import annotations

import fcntl
import os
import pty
import pwd
import re
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SBIN = "/usr/sbin:/usr/local/sbin:/sbin"
TOOLS = {
    name: shutil.which(name) or shutil.which(name, path=SBIN)
    for name in ("sshd", "ssh", "ssh-keygen", "tmux")
}
pytestmark = pytest.mark.skipif(
    None in TOOLS.values(),
    reason="needs sshd, ssh, ssh-keygen and tmux; missing: "
    + ", ".join(n for n, p in TOOLS.items() if p is None)
    + " (scripts/bootstrap.sh --test installs openssh-server and tmux on Debian as root)",
)


@dataclass
class Server:
    port: int
    key: Path
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Server]:
    """An sshd of the test's own on 127.0.0.1 (a child process, not a daemon)."""
    for name in ("host_key", "user_key"):
        subprocess.run(
            [TOOLS["ssh-keygen"], "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)],
            check=True,
            timeout=30,
        )
    shutil.copy(tmp_path / "user_key.pub", tmp_path / "authorized_keys")
    port = _free_port()
    config = tmp_path / "sshd_config"
    config.write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {tmp_path / 'host_key'}\n"
        f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}\n"
        "StrictModes no\n"
        "UsePAM no\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
        "PidFile none\n"
        "PrintMotd no\n"
        "PrintLastLog no\n"
    )
    if os.getuid() == 0:  # sshd as root needs its privilege-separation folder
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = tmp_path / "sshd.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [TOOLS["sshd"], "-D", "-e", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 15
        while not _listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sshd did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield Server(port, tmp_path / "user_key", log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class Terminal:
    """``ssh -tt`` in an 80x24 pseudo-terminal; its output is drained in a thread."""

    def __init__(self, argv: list[str]) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color"}
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        self.output = bytearray()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # the other side closed
                return
            if not chunk:
                return
            self.output += chunk

    def send(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        os.close(self.master)


def test_workbench_over_ssh(sshd: Server, tmp_path: Path) -> None:
    socket_path, session = tmp_path / "tmux.sock", "mlxterp-ssh"
    (tmp_path / "tmux.conf").write_text("set -g status off\n")  # all 24 rows for the app
    app = (
        f"env MLXTERP_CONFIG_DIR={tmp_path} MLXTERP_STATE_DIR={tmp_path} PYTHONPATH=engine:. "
        f"{shlex.quote(sys.executable)} -m mlxterp_tui.cli"
    )
    remote = (
        f"cd {shlex.quote(str(ROOT))} && exec env LANG=C.UTF-8 {TOOLS['tmux']} -u "
        f"-S {socket_path} -f {tmp_path / 'tmux.conf'} new-session -s {session} {shlex.quote(app)}"
    )
    user = pwd.getpwuid(os.getuid()).pw_name
    terminal = Terminal(
        [
            TOOLS["ssh"] or "ssh",
            "-tt",
            "-p",
            str(sshd.port),
            "-i",
            str(sshd.key),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            f"{user}@127.0.0.1",
            remote,
        ]
    )

    def screen() -> str:
        result = subprocess.run(
            [TOOLS["tmux"] or "tmux", "-S", str(socket_path), "capture-pane", "-p", "-t", session],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return result.stdout

    def wait_until(seen: Callable[[str], bool], what: str, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while not seen(screen()):
            if time.monotonic() > deadline or terminal.proc.poll() is not None:
                pytest.fail(
                    f"{what} did not happen; screen:\n{screen()}\nssh output tail:\n"
                    f"{bytes(terminal.output[-2000:]).decode(errors='replace')}\n"
                    f"sshd log:\n{sshd.log.read_text()[-2000:]}"
                )
            time.sleep(0.2)

    def wait_for(text: str, seconds: float = 30) -> None:
        wait_until(lambda shown: text in shown, f"{text!r} showing", seconds)

    try:
        wait_for("1 Model", 90)  # the app is up in an 80x24 terminal, over SSH
        wait_until(lambda shown: "loading model" not in shown, "loading the model", 90)
        lines = screen().splitlines()
        assert len(lines) == 24 and max(len(line) for line in lines) <= 80

        terminal.send("The capital of France is\r")  # Enter in the prompt runs the lens
        wait_for("1 steps", 60)
        # the lens table: the prompt's tokens as columns, a row per layer down to L10 at 80x24
        table = re.compile(
            r"^ *layer +<s> +The +␣capital +␣of +␣France +␣is *$.*^ *L10 ", re.M | re.S
        )
        wait_until(lambda shown: table.search(shown) is not None, "the lens table", 10)

        terminal.send("\x1bOP")  # F1: the help screen, from inside the prompt field
        wait_for("Esc closes", 10)
        terminal.send("\x1b")
        wait_until(lambda shown: "Esc closes" not in shown, "Esc closing the help", 10)

        terminal.send("\x11")  # ctrl+q: the lens step is unsaved, so the app asks first
        wait_for("unsaved changes", 10)
        terminal.send("\x1b[C\r")  # right arrow to "Quit without saving", Enter
        assert terminal.proc.wait(timeout=30) == 0  # app, tmux and ssh all ended cleanly
    finally:
        terminal.close()
        subprocess.run(
            [TOOLS["tmux"] or "tmux", "-S", str(socket_path), "kill-server"],
            capture_output=True,
            timeout=10,
        )
