"""The workbench's form checks follow the engine's intervention kinds."""

from __future__ import annotations

import importlib

import pytest

pytest.importorskip("textual")

from mlxterp import session as engine_session
from mlxterp.session import INTERVENTION_KINDS, InputError, InterventionKind
from mlxterp_tui import checks


def test_the_form_offers_every_number_kind_of_the_engine_with_its_parameters():
    for name, kind in INTERVENTION_KINDS.items():
        if name in checks.INTERVENTION_PARAMS:
            assert tuple(checks.INTERVENTION_PARAMS[name]) == kind.params
        else:  # a vector, an array or other descriptions: not typed as numbers
            assert any(p not in checks.NUMBER_PARAMS for p in kind.params), name
    assert set(checks.INTERVENTION_PARAMS) == {"zero_out", "scale", "clamp", "noise"}
    # what the engine requires, the form requires; what has a default there may be left out
    with pytest.raises(InputError, match="scale needs factor"):
        checks.intervention_params("scale", "")
    assert checks.intervention_params("noise", "seed=3") == {"seed": 3}


def test_a_number_kind_added_to_the_engine_reaches_the_form(monkeypatch):
    added = InterventionKind("shift", ("factor",), ("factor",), "Shift by factor.")
    monkeypatch.setitem(engine_session.INTERVENTION_KINDS, "shift", added)
    try:
        importlib.reload(checks)
        assert checks.INTERVENTION_PARAMS["shift"] == {"factor": (None, None)}
        assert checks.intervention_params("shift", "factor=2") == {"factor": 2.0}
    finally:
        monkeypatch.undo()
        importlib.reload(checks)
    assert "shift" not in checks.INTERVENTION_PARAMS
