"""segmentation.cohorts: known answers on a hand-made table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from segmentation import cohorts as sc


def _tables():
    per_image = pd.DataFrame(
        {
            "id": ["1", "2", "3", "4", "5", "6"],
            "label": ["glioma", "glioma", "glioma", "meningioma", "meningioma", "glioma"],
            "dice": [0.2, 0.4, 0.6, 0.9, 0.7, 0.8],
        }
    )
    split = pd.DataFrame(
        {
            "id": ["1", "2", "3", "4", "5", "6", "7"],
            "patient_id": ["MR1A", "MR1A", "MR2B", "90101", "90102", "90103", "90104"],
        }
    )
    return per_image, split


def test_cohort_of_splits_numeric_from_alphanumeric_ids():
    got = sc.cohort_of(pd.Series(["98871", " 101 ", "MR026175C", "A1"]))
    assert got.tolist() == ["numeric id", "numeric id", "alphanumeric id", "alphanumeric id"]


def test_known_means_counts_and_intervals():
    table = sc.cohort_table(*_tables()).set_index(["cohort", "label"])
    alpha = table.loc[("alphanumeric id", "all")]
    assert alpha["slices"] == 3 and alpha["patients"] == 2
    assert alpha["mean_dice"] == pytest.approx(0.4)
    assert alpha["median_dice"] == pytest.approx(0.4)
    assert alpha["ci95_low"] <= 0.4 <= alpha["ci95_high"]
    numeric = table.loc[("numeric id", "all")]
    assert numeric["slices"] == 3 and numeric["mean_dice"] == pytest.approx(0.8)
    single = table.loc[("numeric id", "glioma")]  # one patient: no interval
    assert single["patients"] == 1 and np.isnan(single["ci95_low"])
    assert ("alphanumeric id", "meningioma") not in table.index


def test_missed_share_and_mean_of_the_found_slices():
    default = sc.cohort_table(*_tables()).set_index(["cohort", "label"])
    assert default.loc[("alphanumeric id", "all"), "missed_share"] == 0.0
    assert default.loc[("alphanumeric id", "all"), "mean_dice_found"] == pytest.approx(0.4)

    table = sc.cohort_table(*_tables(), miss_below=0.3).set_index(["cohort", "label"])
    alpha = table.loc[("alphanumeric id", "all")]  # Dice 0.2 (missed), 0.4, 0.6
    assert alpha["missed_share"] == pytest.approx(1 / 3)
    assert alpha["mean_dice_found"] == pytest.approx(0.5)
    assert alpha["mean_dice"] == pytest.approx(0.4)  # the mean still counts every slice

    everything = sc.cohort_table(*_tables(), miss_below=0.95).set_index(["cohort", "label"])
    assert everything.loc[("numeric id", "all"), "missed_share"] == 1.0
    assert np.isnan(everything.loc[("numeric id", "all"), "mean_dice_found"])


def test_summary_reads_the_split_and_gives_up_cleanly(tmp_path):
    per_image, split = _tables()
    path = tmp_path / "split.csv"
    split.to_csv(path, index=False)
    table = sc.cohort_summary(per_image, path).set_index("cohort")
    assert table.loc["alphanumeric id", "mean_dice"] == pytest.approx(0.4)
    assert table.loc["numeric id", "slices"] == 3
    assert table.loc["alphanumeric id", "ci95"].count("–") == 1
    assert sc.cohort_summary(per_image, tmp_path / "missing.csv") is None
    path.write_bytes(b"\xff\xfe\x00garbage\x00\x81")  # not a CSV
    assert sc.cohort_summary(per_image, path) is None
    split.drop(columns="patient_id").to_csv(path, index=False)
    assert sc.cohort_summary(per_image, path) is None
    split.iloc[:3].to_csv(path, index=False)  # slices 4-6 have no patient
    assert sc.cohort_summary(per_image, path) is None
    assert sc.cohort_summary(per_image.iloc[:0], path) is None


def test_tumour_contrast_known_answers():
    img = np.full((8, 8), 100.0)
    img[0, :] = 0.0  # background below BRAIN_MIN: not tissue
    img[1, :4] = 120.0  # tissue: 4 x 120, 44 x 100 -> median 100
    mask = np.zeros((8, 8), bool)
    mask[5:7, 5:7] = True
    tissue = img[~mask & (img > sc.BRAIN_MIN)]
    img[mask] = 130.0
    assert sc.tumour_contrast_sd(img, mask) == pytest.approx(30.0 / tissue.std())
    img[mask] = 100.0  # as bright as the median tissue: no contrast
    assert sc.tumour_contrast_sd(img, mask) == pytest.approx(0.0)
    img[mask] = 80.0  # darker than the tissue: negative
    assert sc.tumour_contrast_sd(img.astype(np.uint8), mask) < 0


def test_tumour_contrast_undefined_cases_and_shape_errors():
    img = np.full((6, 6), 90, np.uint8)
    empty = np.zeros((6, 6), bool)
    assert np.isnan(sc.tumour_contrast_sd(img, empty))  # no tumour
    mask = empty.copy()
    mask[2, 2] = True
    assert np.isnan(sc.tumour_contrast_sd(img, mask))  # uniform tissue: no spread
    assert np.isnan(sc.tumour_contrast_sd(np.zeros((6, 6)), mask))  # no tissue above BRAIN_MIN
    with pytest.raises(ValueError, match="same 2-D shape"):
        sc.tumour_contrast_sd(img, mask[:5])
    with pytest.raises(ValueError, match="same 2-D shape"):
        sc.tumour_contrast_sd(np.zeros((6, 6, 3)), np.zeros((6, 6, 3), bool))


def test_contrast_bands_are_closed_on_the_right():
    got = sc.contrast_band(pd.Series([-0.3, 0.0, 0.2, 0.5, 0.9, 1.0, 4.0, np.nan]))
    assert got.iloc[:7].tolist() == ["<= 0", "<= 0", "0-0.5", "0-0.5", "0.5-1", "0.5-1", "> 1"]
    assert pd.isna(got.iloc[7])
    with pytest.raises(ValueError, match="increasing"):
        sc.contrast_band(pd.Series([0.1]), edges=(1.0, 0.5))


def test_contrast_table_known_answers():
    per_image, split = _tables()
    per_image["tumour_contrast_sd"] = [-0.2, 0.1, 0.3, 2.0, 1.5, np.nan]  # slice 6: no contrast
    table = sc.contrast_table(per_image, split).set_index("band")
    assert table.index.tolist() == ["<= 0", "0-0.5", "> 1"]  # empty bands left out
    low = table.loc["0-0.5"]
    assert low["slices"] == 2 and low["patients"] == 2
    assert low["mean_dice"] == pytest.approx(0.5) and low["missed_share"] == 0.0
    assert low["alphanumeric_share"] == 1.0
    high = table.loc["> 1"]
    assert high["mean_dice"] == pytest.approx(0.8) and high["alphanumeric_share"] == 0.0
    assert sc.contrast_table(per_image, split, miss_below=0.3).loc[0, "missed_share"] == 1.0
    with pytest.raises(ValueError, match="no patient"):
        sc.contrast_table(per_image, split[split["id"] != "4"])
