"""Every ```python block of README.md and docs/*.md runs, in order, against the demo model.

Blocks of one file share a namespace (like cells of a notebook) and run in a scratch folder.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)


def python_blocks(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in FENCE.finditer(text)]


DOCS_WITH_CODE = [p for p in DOC_FILES if p.exists() and python_blocks(p)]


def test_fence_parser_finds_blocks(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text(
        "intro\n```python\na = 1\n```\ntext\n```bash\nls\n```\n```python\nb = a + 1\n```\n"
    )
    assert [code for _, code in python_blocks(doc)] == ["a = 1\n", "b = a + 1\n"]


@pytest.mark.parametrize("doc", DOCS_WITH_CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_snippets_run(doc, tmp_path, monkeypatch, demo):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__doc_snippet__"}
    for line, code in python_blocks(doc):
        try:
            exec(compile(code, f"{doc.name}:{line}", "exec"), namespace)
        except Exception as err:  # report which block failed
            raise AssertionError(
                f"{doc.relative_to(ROOT)} block at line {line} failed: {err!r}"
            ) from err
