"""``ensemble.shortcut``: the intensity-only probe and its command line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ensemble import intensity as it
from ensemble import shortcut as sc
from neurostack import CLASS_NAMES

COLS = list(it.FEATURE_COLUMNS)


# log(q / 255) of a typical head crop's quantiles
BASE = np.log(np.array([60.0, 70.0, 80.0, 90.0, 110.0, 135.0]) / 255.0)


def _features(gammas_by_class: dict[str, float], n: int, rng: np.random.Generator,
              noise: float) -> pd.DataFrame:
    base = BASE
    rows = []
    for label, g in gammas_by_class.items():
        for _ in range(n):
            f = g * base * np.exp(rng.normal(0, noise)) if noise else g * base
            rows.append({"label": label, **dict(zip(COLS, f, strict=True))})
    return pd.DataFrame(rows)


def test_probe_finds_a_class_coded_intensity_and_not_an_uninformative_one():
    rng = np.random.default_rng(0)
    coded = dict(zip(CLASS_NAMES, (1.3, 1.0, 0.6, 0.8), strict=True))
    res = sc.shortcut_probe(_features(coded, 40, rng, 0.03), _features(coded, 25, rng, 0.03))
    assert res["accuracy"] > 0.95 and res["balanced_accuracy"] > 0.95
    assert res["majority_baseline"] == pytest.approx(0.25)
    assert (res["n_fit"], res["n_score"]) == (160, 100)
    # medians relative to the fit part's median curve keep the classes' order
    med = res["median_relative_gamma"]
    assert med["notumor"] < med["pituitary"] < med["meningioma"] < med["glioma"]

    same = dict.fromkeys(CLASS_NAMES, 1.0)
    res = sc.shortcut_probe(_features(same, 40, rng, 0.2), _features(same, 100, rng, 0.2))
    assert res["accuracy"] < 0.4  # chance is 0.25 with four balanced classes


def test_probe_refuses_empty_or_single_class_parts():
    rng = np.random.default_rng(1)
    fit = _features({"glioma": 1.0, "notumor": 0.7}, 5, rng, 0.0)
    with pytest.raises(ValueError, match="both parts"):
        sc.shortcut_probe(fit, fit.iloc[:0])
    with pytest.raises(ValueError, match="two classes"):
        sc.shortcut_probe(fit[fit.label == "glioma"], fit)


def test_cli_reports_an_unreadable_file_and_measures_the_rest(
    dataset_with_broken_file, class_dataset_split, tmp_path, capsys
):
    data, broken = dataset_with_broken_file("val")
    split = pd.read_csv(class_dataset_split)
    out = tmp_path / "rec" / "shortcut.json"

    assert sc.main([str(data), "--split", str(class_dataset_split), "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert [u["path"] for u in rec["unreadable"]] == [broken]
    assert rec["n_fit"] == (split.split == "train").sum()
    assert rec["n_score"] == (split.split == "val").sum() - 1
    assert 0 <= rec["accuracy"] <= 1 and rec["fit_part"] == "train"
    assert "1 unreadable" in capsys.readouterr().out

    assert sc.main([str(data), "--split", str(class_dataset_split), "--out", str(out),
                    "--score-part", "train"]) == 2
    assert "must differ" in capsys.readouterr().err
