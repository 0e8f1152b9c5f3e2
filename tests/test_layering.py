"""Structure checks: the dependency direction and the packaging of every package."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_engine_and_sessions_import_no_textual():
    code = (
        "import pkgutil, importlib, sys, mlxterp\n"
        "for info in pkgutil.walk_packages(mlxterp.__path__, 'mlxterp.'):\n"
        "    importlib.import_module(info.name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'mlxterp_tui'))\n"
        "print(len(list(pkgutil.walk_packages(mlxterp.__path__))), bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_package_is_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for base, prefix in (
        (ROOT / "engine" / "mlxterp", "mlxterp"),
        (ROOT / "mlxterp_tui", "mlxterp_tui"),
    ):
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            found.add(".".join((prefix, *rel)))
    assert found == listed
