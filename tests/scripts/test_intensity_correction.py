"""scripts/intensity_correction.py: the second-opinion table on hand-made rows."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import intensity_correction as ic  # noqa: E402


def test_correction_table_known_answers():
    rows = pd.DataFrame({
        "label": ["glioma", "notumor", "glioma", "notumor", "pituitary"],
        "corruption": ["none", "none", "gamma_dark", "gamma_dark", "gamma_dark"],
        "severity": [0, 0, 1, 1, 1],
        "predicted_class": ["glioma", "glioma", "glioma", "notumor", "meningioma"],
        "flagged": [False, False, True, False, True],
        "uncorrected_class": ["", "", "notumor", "", "glioma"],
    })
    table = ic.correction_table(rows).set_index("corruption")
    clean, dark = table.loc["none"], table.loc["gamma_dark"]
    assert (clean["n"], clean["accuracy"], clean["accuracy_as_given"], clean["flagged"]) == (
        2, 0.5, 0.5, 0)
    assert np.isnan(clean["accuracy_flagged_as_given"]) and np.isnan(
        clean["accuracy_flagged_decision"])
    assert (dark["n"], dark["flagged"]) == (3, 2)
    assert dark["accuracy"] == 2 / 3  # the mapped glioma right, the notumor right
    assert dark["accuracy_as_given"] == 1 / 3  # as given only the unflagged notumor
    assert dark["accuracy_flagged_as_given"] == 0.0  # both flagged slices wrong as given
    assert dark["accuracy_flagged_decision"] == 0.5  # the glioma put right, the pituitary not
    assert list(table.index) == ["none", "gamma_dark"]


def test_unknown_corruption_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        ic.main([str(tmp_path), "--corruptions", "gamma_dark", "sepia"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "sepia" in err and "gamma_dark" in err  # names the received and allowed values
