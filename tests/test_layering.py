"""Structure checks: the packaging of every package, and the import-linter contracts that
state the architecture (`scripts/check.sh` runs `lint-imports` on the real tree; these tests
keep the contracts' module lists complete and show that each contract can fail)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "engine" / "mlxterp"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONTRACTS = {c["name"]: c for c in PYPROJECT["tool"]["importlinter"]["contracts"]}
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def engine_modules() -> set[str]:
    """Every top-level module and subpackage of the engine, as dotted names."""
    names = {f"mlxterp.{p.stem}" for p in ENGINE.glob("*.py") if p.stem != "__init__"}
    names |= {f"mlxterp.{p.parent.name}" for p in ENGINE.glob("*/__init__.py")}
    return names


def contract(fragment: str) -> dict:
    (name,) = [n for n in CONTRACTS if fragment in n]
    return CONTRACTS[name]


def test_every_package_is_in_pyproject():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = set()
    for base, prefix in ((ENGINE, "mlxterp"), (ROOT / "mlxterp_tui", "mlxterp_tui")):
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            found.add(".".join((prefix, *rel)))
    assert found == listed


def test_workbench_contract_forbids_every_engine_module_but_sessions():
    forbidden = set(contract("only through mlxterp.session")["forbidden_modules"])
    assert forbidden - {"mlx", "mlx_lm"} == engine_modules() - {"mlxterp.session"}


def test_core_contract_covers_every_core_module():
    sources = set(contract("engine core depends")["source_modules"])
    assert sources == engine_modules() - {"mlxterp.session", "mlxterp.sae", "mlxterp.jobs"}


@pytest.mark.parametrize(
    ("file", "line", "broken"),
    [
        ("engine/mlxterp/demo_facts.py", "import textual", "imports no Textual"),
        ("engine/mlxterp/session/replay.py", "import mlxterp_tui", "imports no Textual"),
        ("mlxterp_tui/keymap.py", "import mlxterp.model", "only through mlxterp.session"),
        ("engine/mlxterp/lens.py", "import mlxterp.sae", "engine core depends"),
        # jobs import SAEs, so an SAE that imports sessions takes jobs there too
        (
            "engine/mlxterp/sae/config.py",
            "import mlxterp.session",
            "Sparse autoencoders sit|Dataset jobs sit",
        ),
        ("engine/mlxterp/jobs/spec.py", "import mlxterp.session", "Dataset jobs sit"),
        ("engine/mlxterp/doctor.py", "import mlxterp.jobs", "engine core depends"),
    ],
)
def test_each_contract_fails_on_a_forbidden_import(tmp_path, file, line, broken):
    """A copy of the tree with one forbidden import added breaks exactly the contracts
    named (``|`` between several)."""
    shutil.copytree(
        ENGINE, tmp_path / "engine" / "mlxterp", ignore=shutil.ignore_patterns("demo_model")
    )
    shutil.copytree(ROOT / "mlxterp_tui", tmp_path / "mlxterp_tui")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / file).open("a") as f:
        f.write(f"\n{line}  # forbidden on purpose\n")
    env = {"PYTHONPATH": f"{tmp_path / 'engine'}:{tmp_path}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 1, out.stdout + out.stderr
    names = {n for n in CONTRACTS if any(part in n for part in broken.split("|"))}
    assert len(names) == len(broken.split("|"))
    for name in names:
        assert f"{name} BROKEN" in out.stdout, out.stdout
    assert line.split()[-1] in out.stdout
    for other in CONTRACTS.keys() - names:
        assert f"{other} KEPT" in out.stdout, out.stdout
