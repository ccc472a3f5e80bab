"""scripts/intensity_flags.py: the flag x right/wrong table on hand-made rows."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import intensity_flags as fl  # noqa: E402


def _per_slice():
    # four slices, clean and one shift; the ensemble is wrong on b (clean) and on c, d (shift)
    return pd.DataFrame({
        "path": list("abcd") * 2, "label": ["glioma"] * 8,
        "corruption": ["none"] * 4 + ["gamma_dark"] * 4, "severity": [0] * 4 + [1] * 4,
        "ensemble": ["glioma", "notumor", "glioma", "glioma",
                     "glioma", "glioma", "notumor", "pituitary"],
    })


def test_known_table():
    flags = _per_slice()[fl.KEYS].assign(
        flagged=[False, False, False, False, True, False, True, False])
    table = fl.flags_vs_errors(_per_slice(), flags).set_index("corruption")
    clean, dark = table.loc["none"], table.loc["gamma_dark"]
    assert (clean["n"], clean["accuracy"], clean["flagged_share"]) == (4, 0.75, 0.0)
    assert np.isnan(clean["accuracy_flagged"]) and clean["errors_flagged_share"] == 0.0
    assert (dark["accuracy"], dark["flagged_share"], dark["errors"]) == (0.5, 0.5, 2)
    assert dark["accuracy_flagged"] == 0.5 and dark["accuracy_unflagged"] == 0.5
    assert dark["errors_flagged_share"] == 0.5  # c flagged, d not
    assert dark["flagged_called_notumor"] == 0.5  # a (glioma) and c (notumor) flagged
    assert np.isnan(clean["flagged_called_notumor"])  # nothing flagged
    assert list(table.index) == ["none", "gamma_dark"]  # the run's order


def test_no_errors_gives_nan_and_a_missing_flag_is_refused():
    right = _per_slice().assign(ensemble="glioma")
    flags = right[fl.KEYS].assign(flagged=True)
    assert fl.flags_vs_errors(right, flags)["errors_flagged_share"].isna().all()
    with pytest.raises(ValueError, match="no input-check flag"):
        fl.flags_vs_errors(right, flags.iloc[1:])


def test_cli_names_a_missing_robustness_record(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        fl.main([str(tmp_path), "--robustness", str(tmp_path / "none")])
    assert exc.value.code == 2
    assert "lacks ['per_slice.csv', 'metrics.json']" in capsys.readouterr().err


def test_an_evaluation_record_is_read_as_an_unchanged_run(tmp_path, capsys):
    preds = pd.DataFrame({"path": ["a", "b"], "label": ["glioma", "notumor"],
                          "pred": ["glioma", "glioma"], "ensemble_glioma": [0.9, 0.6]})
    run = fl.predictions_as_run(preds)
    assert run[fl.KEYS].values.tolist() == [["a", "none", 0], ["b", "none", 0]]
    table = fl.flags_vs_errors(run, run[fl.KEYS].assign(flagged=[False, True]))
    assert table.loc[0, "accuracy_flagged"] == 0.0 and table.loc[0, "accuracy_unflagged"] == 1.0
    with pytest.raises(SystemExit) as exc:
        fl.main([str(tmp_path), "--predictions", str(tmp_path / "missing.csv")])
    assert exc.value.code == 2 and "no such predictions file" in capsys.readouterr().err
