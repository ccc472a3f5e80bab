"""Known answers for scripts/compare_segmenters.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

_SPEC = importlib.util.spec_from_file_location(
    "compare_segmenters",
    Path(__file__).resolve().parents[2] / "scripts" / "compare_segmenters.py",
)
cmp = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(cmp)

IDS = ["0001", "0002", "0003", "0004", "0005", "0006"]
PATIENTS = pd.Series(["p1", "p1", "p2", "p2", "p3", "p3"], index=IDS)


def _dice(values: list[float]) -> pd.Series:
    return pd.Series(values, index=IDS, dtype=float)


def test_identical_files_differ_by_nothing():
    ref = _dice([0.9, 0.0, 0.5, 0.7, 0.8, 0.02])
    out = cmp.compare(ref, ref.copy(), PATIENTS, n_bootstrap=200)
    assert out["diff"] == 0.0 and out["ci95"] == [0.0, 0.0] and out["wilcoxon_p"] == 1.0
    assert out["better"] == out["worse"] == 0
    assert out["misses_reference"] == out["misses_candidate"] == 2  # 0.0 and 0.02
    assert out["n_slices"] == 6 and out["n_patients"] == 3


def test_one_patient_improved_gives_a_patient_level_interval():
    ref = _dice([0.5] * 6)
    cand = _dice([0.8, 0.8, 0.5, 0.5, 0.5, 0.5])  # only patient p1 gains 0.3 on both slices
    out = cmp.compare(ref, cand, PATIENTS, n_bootstrap=4000, seed=1)
    assert out["diff"] == pytest.approx(0.1)
    assert out["better"] == 2 and out["worse"] == 0
    # resampling patients: the mean difference is 0.3 * (share of p1 draws), 0 to 0.3
    lo, hi = out["ci95"]
    assert lo == pytest.approx(0.0) and hi == pytest.approx(0.3)
    # reversed roles mirror the answer
    back = cmp.compare(cand, ref, PATIENTS, n_bootstrap=4000, seed=1)
    assert back["diff"] == pytest.approx(-0.1) and back["ci95"] == pytest.approx([-hi, -lo])


def test_mismatched_ids_and_missing_patients_are_named():
    ref = _dice([0.5] * 6)
    with pytest.raises(ValueError, match=r"1 only in the reference \(e.g. \['0006'\]\)"):
        cmp.compare(ref, ref.iloc[:5], PATIENTS)
    with pytest.raises(ValueError, match=r"1 slices have no patient id \(e.g. \['0006'\]\)"):
        cmp.compare(ref, ref, PATIENTS.iloc[:5])
    with pytest.raises(ValueError, match="n_bootstrap must be >= 1; received 0"):
        cmp.compare(ref, ref, PATIENTS, n_bootstrap=0)


def test_command_line_round_trip(tmp_path: Path):
    split = pd.DataFrame({"id": IDS, "patient_id": list(PATIENTS), "label": "glioma",
                          "fold": 4, "split": "val"})
    split_csv = tmp_path / "split.csv"
    split.to_csv(split_csv, index=False)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    pd.DataFrame({"id": IDS, "dice": [0.5] * 6}).to_csv(a, index=False)
    pd.DataFrame({"id": IDS, "dice": [0.6] * 6}).to_csv(b, index=False)
    out = tmp_path / "cmp.json"
    report = cmp.main([str(a), str(b), "--split", str(split_csv), "--bootstrap", "100",
                       "--json", str(out)])
    assert report["diff"] == pytest.approx(0.1) and report["ci95"] == pytest.approx([0.1, 0.1])
    assert json.loads(out.read_text())["better"] == 6
    pd.DataFrame({"id": IDS, "score": [0.5] * 6}).to_csv(b, index=False)
    with pytest.raises(ValueError, match=r"lacks columns \['dice'\]"):
        cmp.main([str(a), str(b), "--split", str(split_csv)])


def test_a_file_listing_a_slice_twice_is_refused(tmp_path: Path):
    path = tmp_path / "dup.csv"
    pd.DataFrame({"id": ["0001", "0001"], "dice": [0.5, 0.6]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="lists slice ids more than once"):
        cmp._read(path)
