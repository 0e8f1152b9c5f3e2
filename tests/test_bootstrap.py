"""scripts/bootstrap.sh installs only when something changed, and says so on a first run.

The script runs for real on a copy of the project files in a temporary folder, with a
stand-in Python whose ``-m venv`` and ``-m pip`` only record that they were called: offline,
fast, and the real .venv is never touched.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

if shutil.which("bash") is None:
    pytest.skip("bash is not installed", allow_module_level=True)

FAKE_PYTHON = """#!/bin/sh
# Stand-in for python3 and .venv/bin/python: records the call, acts out venv and pip.
echo "$*" >> "{log}"
case "$*" in
  "-m venv .venv")
    mkdir -p .venv/bin && cp "$0" .venv/bin/python ;;
  "-m pip install"*)
    [ -z "$FAKE_PIP_FAIL" ] || exit 1
    printf '#!/bin/sh\\n' > .venv/bin/mlxterp && chmod +x .venv/bin/mlxterp
    case "$*" in *"[test]"*)
      printf '#!/bin/sh\\n' > .venv/bin/pytest && chmod +x .venv/bin/pytest ;;
    esac ;;
esac
"""


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def project(tmp_path):
    """A copy of pyproject.toml and bootstrap.sh, a stand-in Python, and a failing apt-get."""
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    shutil.copy(ROOT / "scripts" / "bootstrap.sh", root / "scripts" / "bootstrap.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "python-calls.log"
    _executable(bin_dir / "python3", FAKE_PYTHON.format(log=log))
    _executable(bin_dir / "apt-get", "#!/bin/sh\nexit 1\n")  # never the real package manager
    return root, bin_dir, log


def bootstrap(project, *args: str, fail_pip: bool = False) -> subprocess.CompletedProcess[str]:
    root, bin_dir, _ = project
    env = {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(root)}
    if fail_pip:
        env["FAKE_PIP_FAIL"] = "1"
    return subprocess.run(
        ["bash", str(root / "scripts" / "bootstrap.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )


def pip_calls(project) -> list[str]:
    log = project[2]
    lines = log.read_text().splitlines() if log.exists() else []
    return [line for line in lines if line.startswith("-m pip")]


def test_first_run_says_what_it_does_and_the_second_run_skips_pip(project):
    first = bootstrap(project)
    assert first.returncode == 0, first.stderr
    assert "creating .venv and installing mlxterp (first run, about a minute)" in first.stderr
    assert first.stdout == ""  # messages on stderr keep `run.sh replay ...` output clean
    assert len(pip_calls(project)) == 1
    assert "-e ." in pip_calls(project)[0] and "[test]" not in pip_calls(project)[0]

    second = bootstrap(project)
    assert second.returncode == 0, second.stderr
    assert second.stderr == "" and second.stdout == ""
    assert len(pip_calls(project)) == 1  # pip was not run again
    assert bootstrap(project, "--check").returncode == 0


def test_test_extras_are_installed_only_for_the_tests(project):
    assert bootstrap(project).returncode == 0
    assert bootstrap(project, "--check", "--test").returncode == 1  # run.sh installed no extras

    before = len(pip_calls(project))
    tests = bootstrap(project, "--test")
    assert tests.returncode == 0, tests.stderr
    assert "test extras" in tests.stderr
    assert any(call.endswith("-e .[test]") for call in pip_calls(project)[before:])
    count = len(pip_calls(project))
    assert bootstrap(project, "--test").stderr == ""
    assert bootstrap(project).stderr == ""  # the test install covers the app too
    assert len(pip_calls(project)) == count


def test_a_changed_pyproject_reinstalls(project):
    assert bootstrap(project).returncode == 0
    pyproject = project[0] / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n# a new dependency\n")
    again = bootstrap(project)
    assert again.returncode == 0, again.stderr
    assert "pyproject.toml or scripts/bootstrap.sh changed" in again.stderr
    assert len(pip_calls(project)) == 2


def test_a_failed_install_is_retried_next_time(project):
    failed = bootstrap(project, fail_pip=True)
    assert failed.returncode != 0
    assert bootstrap(project, "--check").returncode == 1
    retried = bootstrap(project)
    assert retried.returncode == 0, retried.stderr
    assert len(pip_calls(project)) == 2
