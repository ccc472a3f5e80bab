"""scripts/intensity_correction.py: the second-opinion table on hand-made rows."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import intensity_correction as ic  # noqa: E402


def test_second_opinion_table_known_answers():
    rows = pd.DataFrame({
        "label": ["glioma", "notumor", "glioma", "notumor", "pituitary"],
        "corruption": ["none", "none", "gamma_dark", "gamma_dark", "gamma_dark"],
        "severity": [0, 0, 1, 1, 1],
        "predicted_class": ["glioma", "glioma", "notumor", "notumor", "glioma"],
        "flagged": [False, False, True, False, True],
        "corrected_class": ["", "", "glioma", "", "meningioma"],
    })
    table = ic.second_opinion_table(rows).set_index("corruption")
    clean, dark = table.loc["none"], table.loc["gamma_dark"]
    assert (clean["n"], clean["accuracy"], clean["flagged"]) == (2, 0.5, 0)
    assert np.isnan(clean["accuracy_flagged_decision"]) and np.isnan(
        clean["accuracy_flagged_second"])
    assert (dark["n"], dark["accuracy"], dark["flagged"]) == (3, 1 / 3, 2)
    assert dark["accuracy_flagged_decision"] == 0.0  # both flagged slices wrong first
    assert dark["accuracy_flagged_second"] == 0.5  # the glioma put right, the pituitary not
    assert list(table.index) == ["none", "gamma_dark"]
