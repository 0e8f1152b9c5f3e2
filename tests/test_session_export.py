"""Export of recorded steps (mlxterp.session.export_step): JSON with the step's params and
summary, CSV where the summary is a table, beside the session, atomic, never overwriting."""

from __future__ import annotations

import csv
import json
from xml.etree import ElementTree

import pytest
from PIL import Image

from mlxterp.session import Session, SessionError, bar_chart, export_step, to_text
from mlxterp.session import export as export_module

CLEAN = "The capital of France is"
CORRUPTED = "The capital of Spain is"


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        comment, header, *rows = list(csv.reader(handle))
    return comment, header, rows


@pytest.fixture(scope="module")
def recorded(manager, tmp_path_factory):
    session = Session.new("demo", tmp_path_factory.mktemp("export") / "run.toml", manager)
    session.run(manager, "logit_lens", text=CLEAN)
    session.run(manager, "activation_patching", clean=CLEAN, corrupted=CORRUPTED)
    session.run(manager, "activation_patching", clean=CLEAN, corrupted=CORRUPTED, by_position=True)
    return session


def test_lens_exports_params_and_a_layer_by_position_table(recorded, tmp_path):
    step = recorded.steps[0]
    js, cs = export_step(recorded, 0, tmp_path)
    assert js.name == "run.step-0-logit_lens.json" and cs.name == "run.step-0-logit_lens.csv"
    document = json.loads(js.read_text())
    assert document["kind"] == "logit_lens" and document["params"] == step.params
    assert document["summary"]["tokens"] == step.summary["tokens"]  # raw tokens
    comment, header, rows = read_csv(cs)
    assert json.loads(comment[1].removeprefix("params: ")) == step.params
    assert header == ["row", "layers", "column", "tokens", "top_ids", "top_strs", "top_probs"]
    s = step.summary
    assert len(rows) == len(s["layers"]) * len(s["tokens"])
    for row in rows:
        i, j = int(row[0]), int(row[2])
        assert int(row[1]) == s["layers"][i] and row[3] == s["tokens"][j]
        assert int(row[4]) == s["top_ids"][i][j] and row[5] == s["top_strs"][i][j]
        assert float(row[6]) == pytest.approx(s["top_probs"][i][j])


def test_patching_exports_layer_and_recovery(recorded, tmp_path):
    step = recorded.steps[1]
    js, cs = export_step(recorded, step, tmp_path)
    assert json.loads(js.read_text())["params"] == step.params
    _comment, header, rows = read_csv(cs)
    assert header == ["layers", "recovery"]
    assert [int(r[0]) for r in rows] == step.summary["layers"]
    assert [float(r[1]) for r in rows] == pytest.approx(step.summary["recovery"])


def test_by_position_patching_is_a_layer_by_position_table(recorded, tmp_path):
    step = recorded.steps[2]
    _js, cs = export_step(recorded, step, tmp_path)
    _comment, header, rows = read_csv(cs)
    matrix = [
        k for k, v in step.summary.items() if isinstance(v, list) and v and isinstance(v[0], list)
    ]
    assert header[:2] == ["row", "layers"] and header[-len(matrix) :] == matrix
    assert len(rows) == len(step.summary["layers"]) * len(step.summary["positions"])


def test_a_chart_is_written_as_plain_text_svg_and_png(recorded, tmp_path):
    step = recorded.steps[1]
    s = step.summary
    chart = to_text(bar_chart(s["layers"], s["recovery"], xlabel="layer", ylabel="recovery %"))
    assert "\x1b[" in chart  # plotext colours it
    _js, _cs, txt, svg, png = export_step(recorded, step, tmp_path, chart=chart)
    assert (txt.name, svg.name, png.name) == (
        "run.step-1-activation_patching.chart.txt",
        "run.step-1-activation_patching.chart.svg",
        "run.step-1-activation_patching.chart.png",
    )
    title, *lines = txt.read_text(encoding="utf-8").splitlines()
    assert title == f"# activation_patching step 1, params: {json.dumps(step.params)}"
    assert "\x1b" not in txt.read_text() and "recovery %" in "\n".join(lines)
    assert "█" in "\n".join(lines) or "▄" in "\n".join(lines)  # the bars themselves
    root = ElementTree.fromstring(svg.read_text(encoding="utf-8"))  # well-formed SVG
    assert root.tag.endswith("svg")
    texts = ["".join(e.itertext()).replace("\xa0", " ") for e in root.iter() if "text" in e.tag]
    assert f"activation_patching step 1, params: {json.dumps(step.params)}" in texts
    bars = [e for e in root.iter() if "text" in e.tag and "█" in "".join(e.itertext())]
    assert bars and all(e.get("fill", "").startswith("rgb(") for e in bars)  # in colour
    image = Image.open(png)
    assert image.format == "PNG" and image.text["Title"] == texts[0]  # the same heading
    assert image.size[0] > 80 * 8  # the chart's 80 columns
    # a second export of the same step takes the next free stem for all four files
    again = export_step(recorded, step, tmp_path, chart=chart)
    assert [p.name.split(".")[1] for p in again] == ["step-1-activation_patching-2"] * 5


def test_default_is_the_last_step_beside_the_session_file(recorded):
    written = export_step(recorded)
    try:
        assert all(p.parent == recorded.path.parent for p in written)
        assert written[0].name.startswith("run.step-2-activation_patching")
    finally:
        for p in written:
            p.unlink()


def test_never_overwrites_an_existing_file(recorded, tmp_path):
    taken = tmp_path / "run.step-1-activation_patching.csv"
    taken.write_text("mine")
    first = export_step(recorded, 1, tmp_path)
    second = export_step(recorded, 1, tmp_path)
    assert taken.read_text() == "mine"
    assert [p.name for p in first] == [
        "run.step-1-activation_patching-2.json",
        "run.step-1-activation_patching-2.csv",
    ]
    assert [p.name for p in second] == [
        "run.step-1-activation_patching-3.json",
        "run.step-1-activation_patching-3.csv",
    ]


def test_a_failed_write_leaves_no_partial_file(recorded, tmp_path, monkeypatch):
    def broken(handle):
        handle.write("half a row")
        raise OSError("disk full")

    monkeypatch.setattr(export_module.csv, "writer", broken)
    with pytest.raises(OSError, match="disk full"):
        export_step(recorded, 1, tmp_path)
    names = [p.name for p in tmp_path.iterdir()]
    assert not any(n.endswith(".csv") for n in names)  # no half-written CSV
    assert not any(n.startswith(".mlxterp-tmp-") for n in names)  # no temporaries left


def test_an_unwritable_folder_is_an_os_error(recorded, tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(OSError):
        export_step(recorded, 0, not_a_folder)


def test_unsaved_session_exports_to_the_current_folder(manager, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    session = Session.new("demo", None, manager)
    session.run(manager, "logit_lens", text=CLEAN)
    js, _cs = export_step(session)
    assert js == tmp_path / "mlxterp-session.step-0-logit_lens.json"


def test_a_session_without_steps_has_nothing_to_export(manager, tmp_path):
    with pytest.raises(SessionError, match="nothing to export"):
        export_step(Session.new("demo", None, manager), folder=tmp_path)


def test_tables_from_generic_summaries():
    grid = {"layers": [0, 1], "heads": [0, 1, 2], "scores": [[1, 2, 3], [4, 5, 6]]}
    header, rows = export_module.table(grid)
    assert header == ["row", "layers", "column", "heads", "scores"]
    assert rows[-1] == [1, 1, 2, 2, 6]
    assert export_module.table({"text": "hi", "token_ids": [1, 2]}) == (["token_ids"], [[1], [2]])
    assert export_module.table({"metric": "l2", "baseline": 1.5}) is None


def test_numbers_that_are_not_finite_export_as_null(recorded, tmp_path):
    """Regression: a NaN in a summary made the JSON non-standard (``NaN`` is no JSON)."""
    step = recorded.steps[0]
    step.summary["extra"] = [1.0, float("nan"), float("inf")]
    try:
        json_path = export_step(recorded, step, tmp_path)[0]
    finally:
        del step.summary["extra"]
    text = json_path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["summary"]["extra"] == [1.0, None, None]
