"""Datasets read from files: records of .txt and .jsonl files, texts, the demo's texts; a
bad file is an InputError that says where."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mlxterp.datasets import DEMO_TEXTS, demo_texts, read_records, read_texts
from mlxterp.errors import InputError


def test_txt_lines_are_records_and_blank_lines_are_not(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("one\n\n  \ntwo words\n", encoding="utf-8")
    assert read_records(path) == read_texts(path) == ["one", "two words"]


def test_jsonl_values_are_records(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('"a"\n{"text": "b"}\n[1, 2]\n{"clean": "x", "corrupted": "y"}\n')
    assert read_records(path) == ["a", {"text": "b"}, [1, 2], {"clean": "x", "corrupted": "y"}]
    with pytest.raises(InputError, match=r"record 3: expected a text"):
        read_texts(path)


@pytest.mark.parametrize(
    "name, content, said",
    [
        ("t.csv", "a", "from a .txt"),
        ("t.jsonl", '"a"\n{oops\n', r"line 2: not JSON"),
        ("t.txt", "\n \n", "has no records"),
        ("t.txt", b"\xff\xfe", "not UTF-8"),
    ],
)
def test_bad_files_say_why(tmp_path, name, content, said):
    path = tmp_path / name
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    with pytest.raises(InputError, match=said):
        read_records(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="no dataset file at"):
        read_records(tmp_path / "none.txt")
    folder = tmp_path / "d.txt"
    folder.mkdir()
    with pytest.raises(InputError, match="is a folder"):
        read_records(folder)


def test_demo_texts_ship_and_are_what_the_training_script_writes(tmp_path):
    texts = demo_texts()
    assert len(texts) == 800 and "The capital of" in " ".join(texts)
    script = Path(__file__).resolve().parent.parent / "scripts" / "train_demo_model.py"
    subprocess.run(
        [sys.executable, str(script), "--texts-only", "--out", str(tmp_path)],
        check=True,
        timeout=120,
    )
    assert (tmp_path / "texts.txt").read_bytes() == DEMO_TEXTS.read_bytes()
