"""``segmentation.robustness``: known-answer summary, a fake segmenter, a real tiny run."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from segmentation import robustness as srb


def table_rows() -> pd.DataFrame:
    # two slices; clean: Dice 0.8 / 0.6, areas 100 / 0 (the second is an empty prediction)
    rows = [("a", "glioma", "none", 0, 0.8, 100), ("b", "pituitary", "none", 0, 0.6, 0),
            ("a", "glioma", "blur", 2, 0.5, 130), ("b", "pituitary", "blur", 2, 0.7, 0),
            ("a", "glioma", "rotation", 1, 0.8, 110), ("b", "pituitary", "rotation", 1, 0.2, 5)]
    return pd.DataFrame(rows, columns=["id", "label", "corruption", "severity", "dice",
                                       "pred_area_px"]).assign(gt_area_px=90)


def test_summarise_known_answers():
    s = srb.summarise(table_rows()).set_index(["corruption", "severity"])
    assert list(s.index) == [("none", 0), ("blur", 2), ("rotation", 1)]
    assert s.loc[("none", 0), "mean_dice"] == pytest.approx(0.7)
    assert s.loc[("none", 0), "dice_change"] == 0
    assert s.loc[("blur", 2), "dice_change"] == pytest.approx(((0.5 - 0.8) + (0.7 - 0.6)) / 2)
    # blur: a's area moved by 30 % (> 20 %: unstable); b stayed empty (stable)
    assert s.loc[("blur", 2), "area_stable"] == 0.5
    # rotation: a moved 10 % (stable); b went from empty to 5 px (unstable)
    assert s.loc[("rotation", 1), "area_stable"] == 0.5
    assert s.loc[("blur", 2), "empty_predictions"] == 0.5
    assert s.loc[("rotation", 1), "empty_predictions"] == 0.0
    assert s.loc[("blur", 2), "mean_dice_glioma"] == 0.5
    assert s.loc[("rotation", 1), "mean_dice_pituitary"] == 0.2
    assert "intensity_corrected" not in s.columns  # rows without the column: not reported
    mapped = srb.summarise(table_rows().assign(intensity_corrected=[0, 0, 1, 0, 1, 1]))
    assert list(mapped["intensity_corrected"]) == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="clean"):
        srb.summarise(table_rows().iloc[2:])


class ThresholdSegmenter:
    """Fake segmenter: tumour = pixels brighter than 200."""

    def predict_batch(self, grays):
        return [SimpleNamespace(mask=g > 200, area_px=int((g > 200).sum())) for g in grays]


def test_segment_condition_moves_the_truth_with_a_rotated_slice():
    gray = np.full((101, 101), 60, np.uint8)
    gray[40:60, 20:80] = 250  # a bright bar: the fake segmenter finds exactly the truth
    truth = gray > 200
    slices = {"0001": (gray, truth)}
    clean = srb.segment_condition(ThresholdSegmenter(), slices, {"0001": "glioma"}, "none", 0)
    assert clean.loc[0, "dice"] == 1.0 and clean.loc[0, "pred_area_px"] == truth.sum()
    rotated = srb.segment_condition(ThresholdSegmenter(), slices, {}, "rotation", 2)
    # the truth rotated with the slice: still (nearly) perfect, not the Dice of a misaligned mask
    assert rotated.loc[0, "dice"] > 0.9
    assert rotated.loc[0, "label"] == ""
    dark = srb.segment_condition(ThresholdSegmenter(), slices, {}, "gamma_dark", 2)
    # gamma 2 darkens 250 -> 240: still above 200, mask unchanged
    assert dark.loc[0, "dice"] == 1.0
    assert list(dark.columns) == ["id", "label", "corruption", "severity", "dice",
                                  "gt_area_px", "pred_area_px", "intensity_corrected"]
    assert not dark["intensity_corrected"].any()


def test_segment_condition_maps_flagged_slices_like_the_pipeline():
    from ensemble.intensity import IntensityReference, crop_features
    from neurostack.preprocess import crop, find_brain_box

    gray = np.full((101, 101), 120, np.uint8)  # head: stays above the box threshold
    gray[40:60, 20:80] = 220
    truth = gray > 200
    slices = {"0001": (gray, truth)}
    fake = ThresholdSegmenter()
    feats = crop_features(crop(gray, find_brain_box(gray)))
    ref = IntensityReference(feats + 0.001 * np.arange(12)[:, None] / 12, 3, 0.05)
    # gamma 2 darkens the bar 220 -> 190, below the fake's 200: as given, nothing is found
    as_given = srb.segment_condition(fake, slices, {}, "gamma_dark", 2)
    assert as_given.loc[0, "dice"] == 0.0 and not as_given.loc[0, "intensity_corrected"]
    # the check flags it and maps it back to the reference curve: the bar is found again
    mapped = srb.segment_condition(fake, slices, {}, "gamma_dark", 2, reference=ref)
    assert mapped.loc[0, "intensity_corrected"] and mapped.loc[0, "dice"] == 1.0
    clean = srb.segment_condition(fake, slices, {}, "none", 0, reference=ref)
    assert not clean.loc[0, "intensity_corrected"] and clean.loc[0, "dice"] == 1.0


@pytest.mark.slow
def test_run_reports_bad_slices_and_resumes(figshare_like, tiny_artifact, tmp_path):
    from segmentation.data import load_metadata, make_patient_split, write_split

    data = tmp_path / "data"
    shutil.copytree(figshare_like, data)
    split_csv = write_split(make_patient_split(load_metadata(data)), tmp_path / "split.csv")
    split = pd.read_csv(split_csv, dtype=str)
    test_ids = split.loc[split["split"] == "test", "id"].tolist()
    (data / "images" / f"{test_ids[0]}.jpg").write_bytes(b"garbage")
    out = tmp_path / "out"
    args = [str(data / "images"), str(data / "masks"), "--ids-from", str(split_csv),
            "--corruptions", "rotation", "--out", str(out), "--artifacts", str(tiny_artifact)]
    assert srb.main(args) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert [f["id"] for f in record["failures"]] == [test_ids[0]]
    assert record["n_slices"] == len(test_ids) - 1
    per_slice = pd.read_csv(out / "per_slice.csv", dtype={"id": str})
    assert len(per_slice) == 3 * (len(test_ids) - 1)
    assert "patient_id" not in per_slice.columns
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["corruption"]) == ["none", "rotation", "rotation"]
    clean = per_slice[per_slice["corruption"] == "none"]
    assert summary.loc[0, "mean_dice"] == pytest.approx(clean["dice"].mean(), abs=1e-4)
    assert srb.main(args) == 2  # no silent overwrite
    assert srb.main([*args, "--resume"]) == 0  # nothing left to do, same outputs
    pd.testing.assert_frame_equal(pd.read_csv(out / "per_slice.csv", dtype={"id": str}),
                                  per_slice)
    # resuming with the input check's correction would mix two policies: refused
    from ensemble.intensity import IntensityReference, save_reference

    ref_dir = save_reference(IntensityReference(np.zeros((4, 6)) - 1.0, 2, 0.0),
                             tmp_path / "ref", {})
    assert srb.main([*args, "--resume", "--intensity-reference", str(ref_dir)]) == 2


def test_missing_split_file_is_a_clear_error(tmp_path, capsys):
    code = srb.main([str(tmp_path), str(tmp_path), "--ids-from", str(tmp_path / "none.csv"),
                     "--out", str(tmp_path / "out")])
    assert code == 2
    assert "none.csv" in capsys.readouterr().err
