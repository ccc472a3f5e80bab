from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from neurostack.testing import flag_everything_reference
from segmentation.evaluate import main
from segmentation.metrics import cluster_bootstrap_ci


@pytest.fixture
def eval_dirs(figshare_like, tmp_path):
    images = tmp_path / "images"
    masks = tmp_path / "masks"
    shutil.copytree(figshare_like / "images", images)
    shutil.copytree(figshare_like / "masks", masks)
    return images, masks


def test_cli_writes_per_image_and_metrics(eval_dirs, tiny_artifact, tmp_path, capsys):
    images, masks = eval_dirs
    (images / "0001.jpg").write_bytes(b"not a jpeg")  # unreadable -> skipped
    (masks / "0002.png").unlink()  # image without mask -> skipped
    shutil.copy(masks / "0003.png", masks / "9999.png")  # mask without image -> reported
    (images / "notes.txt").write_text("x")  # not an image -> reported
    out = tmp_path / "out"
    code = main(
        [
            str(images),
            str(masks),
            "--out",
            str(out),
            "--artifacts",
            str(tiny_artifact),
            "--no-progress",
        ]
    )
    assert code == 0
    per_image = pd.read_csv(out / "per_image.csv", dtype={"id": str})
    assert list(per_image.columns) == [
        "id", "dice", "iou", "gt_area_px", "pred_area_px", "tumour_contrast_sd",
        "outline_confidence", "intensity_corrected"]
    assert len(per_image) == 30
    # mean probability over the mask: none without a mask, never below the mask threshold
    conf, empty = per_image["outline_confidence"], per_image["pred_area_px"] == 0
    assert (~empty).any() and conf[empty].isna().all() and conf[~empty].notna().all()
    threshold = json.loads((out / "metrics.json").read_text())["threshold"]
    assert (conf[~empty] >= threshold - 1e-6).all() and (conf[~empty] <= 1.0).all()
    assert not per_image["intensity_corrected"].any()  # default: slices as they are
    # the contrast column is the library function on the stored image and reference mask
    from neurostack.imaging import load_image
    from segmentation.cohorts import tumour_contrast_sd
    from segmentation.data import read_mask

    row = per_image.iloc[0]
    gray = load_image(next(images.glob(f"{row['id']}.*"))).gray
    want = tumour_contrast_sd(gray, read_mask(masks / f"{row['id']}.png"))
    assert row["tumour_contrast_sd"] == pytest.approx(want, abs=1e-5)
    assert "0001" not in set(per_image["id"]) and "0002" not in set(per_image["id"])
    assert per_image["dice"].between(0, 1).all() and per_image["iou"].between(0, 1).all()
    assert (per_image["gt_area_px"] > 0).all()
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("mean_dice", "median_dice", "mean_iou", "median_iou", "n_images", "threshold"):
        assert key in metrics
    assert metrics["n_images"] == 30
    assert metrics["mean_dice"] == pytest.approx(per_image["dice"].mean(), abs=1e-5)
    assert metrics["artifact"]["weights_sha256"]
    assert metrics["intensity_correction"] is None and metrics["n_intensity_corrected"] == 0
    reasons = {item["file"].split("/")[-1]: item["reason"] for item in metrics["skipped"]}
    assert "unreadable" in reasons["0001"]
    assert "no mask" in reasons["0002.jpg"]
    assert "without a matching image" in reasons["9999.png"]
    assert "not an image" in reasons["notes.txt"]
    assert "skipped" in capsys.readouterr().err


def test_cli_with_split_and_metadata_gives_labels(figshare_like, tiny_artifact, tmp_path):
    from segmentation.data import load_metadata, make_patient_split, write_split

    split_csv = write_split(
        make_patient_split(load_metadata(figshare_like)), tmp_path / "split.csv"
    )
    split = pd.read_csv(split_csv, dtype=str)
    out = tmp_path / "out"
    code = main(
        [
            str(figshare_like / "images"),
            str(figshare_like / "masks"),
            "--out",
            str(out),
            "--artifacts",
            str(tiny_artifact),
            "--ids-from",
            str(split_csv),
            "--split",
            "test",
            "--metadata",
            str(figshare_like / "metadata.csv"),
            "--no-progress",
        ]
    )
    assert code == 0
    per_image = pd.read_csv(out / "per_image.csv", dtype={"id": str})
    assert list(per_image.columns) == [
        "id", "label", "dice", "iou", "gt_area_px", "pred_area_px", "tumour_contrast_sd",
        "outline_confidence", "intensity_corrected"]
    assert set(per_image["id"]) == set(split.loc[split["split"] == "test", "id"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class"]) == set(per_image["label"])
    assert metrics["split"] == "test"
    # patient-level interval: recomputed from the written scores and the split's
    # patient ids, which are used but never written out
    test_rows = split[split["split"] == "test"].set_index("id")
    patients = per_image["id"].map(test_rows["patient_id"])
    assert metrics["n_patients"] == patients.nunique() >= 2
    expected = cluster_bootstrap_ci(per_image["dice"].to_numpy(), patients.to_numpy())
    assert metrics["mean_dice_ci95"] == pytest.approx(list(expected), abs=1e-6)
    assert metrics["mean_dice_ci95"][0] <= metrics["mean_dice"] <= metrics["mean_dice_ci95"][1]
    assert metrics["mean_iou_ci95"][0] <= metrics["mean_iou"] <= metrics["mean_iou_ci95"][1]
    assert "patient" in metrics["ci_method"]
    assert "patient_id" not in per_image.columns
    for label, record in metrics["per_class"].items():
        n = test_rows.loc[test_rows["label"] == label, "patient_id"].nunique()
        assert ("mean_dice_ci95" in record) == (n >= 2)


def test_cli_nothing_evaluated_or_bad_artifact(tmp_path, tiny_artifact):
    images, masks = tmp_path / "i", tmp_path / "m"
    images.mkdir()
    masks.mkdir()
    assert (
        main(
            [
                str(images),
                str(masks),
                "--out",
                str(tmp_path / "o"),
                "--artifacts",
                str(tiny_artifact),
                "--no-progress",
            ]
        )
        == 1
    )
    assert (
        main(
            [
                str(images),
                str(masks),
                "--out",
                str(tmp_path / "o"),
                "--artifacts",
                str(tmp_path / "missing"),
                "--no-progress",
            ]
        )
        == 2
    )


def test_threshold_sweep_table_and_best_threshold_known_answers():
    from segmentation.evaluate import best_threshold, threshold_sweep_table

    per_image = pd.DataFrame(
        {
            "threshold": [0.3, 0.3, 0.3, 0.5, 0.5, 0.5],
            "label": ["glioma", "glioma", "pituitary"] * 2,
            "dice": [0.2, 0.4, 0.9, 0.1, 0.1, 1.0],
        }
    )
    table = threshold_sweep_table(per_image)
    assert table["threshold"].tolist() == [0.3, 0.5]
    assert table["n_images"].tolist() == [3, 3]
    assert table["mean_dice"].tolist() == pytest.approx([0.5, 0.4])
    assert table["median_dice"].tolist() == pytest.approx([0.4, 0.1])
    assert table["mean_dice_glioma"].tolist() == pytest.approx([0.3, 0.1])
    assert table["mean_dice_pituitary"].tolist() == pytest.approx([0.9, 1.0])
    assert best_threshold(table) == 0.3
    tie = pd.DataFrame({"threshold": [0.2, 0.45, 0.7], "mean_dice": [0.6, 0.6, 0.6]})
    assert best_threshold(tie) == 0.45  # ties go to the threshold nearest 0.5
    with pytest.raises(ValueError, match="empty"):
        best_threshold(tie.iloc[:0])


def test_best_operating_point_known_answers():
    from segmentation.evaluate import best_operating_point, best_threshold

    sweep = pd.DataFrame(
        {
            "postprocess": ["none", "none", "largest_component", "largest_component"],
            "threshold": [0.3, 0.5, 0.3, 0.5],
            "mean_dice": [0.60, 0.62, 0.66, 0.64],
        }
    )
    assert best_operating_point(sweep) == (0.3, "largest_component")
    assert best_threshold(sweep, postprocess="none") == 0.5
    assert best_threshold(sweep) == 0.3
    tie = sweep.assign(mean_dice=0.7)  # ties: no post-processing, then nearest 0.5
    assert best_operating_point(tie) == (0.5, "none")
    old = pd.DataFrame({"threshold": [0.4, 0.6], "mean_dice": [0.5, 0.7]})  # no column
    assert best_operating_point(old) == (0.6, "none")


def test_cli_sweep_and_choose_threshold_on_val(figshare_like, tiny_artifact, tmp_path, capsys):
    from neurostack.artifacts import sha256_file
    from segmentation.data import load_metadata, make_patient_split, write_split
    from segmentation.evaluate import best_operating_point
    from segmentation.predict import load_segmenter

    artifact = tmp_path / "resunet"
    shutil.copytree(tiny_artifact, artifact)
    sha_before = sha256_file(artifact / "weights.npz")
    split_csv = write_split(
        make_patient_split(load_metadata(figshare_like)), tmp_path / "split.csv"
    )
    common = [str(figshare_like / "images"), str(figshare_like / "masks")]
    common += ["--artifacts", str(artifact), "--ids-from", str(split_csv), "--no-progress"]
    common += ["--metadata", str(figshare_like / "metadata.csv")]
    out = tmp_path / "val"
    argv = common + ["--out", str(out), "--split", "val", "--tta", "hflip"]
    argv += ["--sweep", "0.3,0.5,0.7", "--choose-threshold"]
    assert main(argv) == 0
    sweep = pd.read_csv(out / "threshold_sweep.csv")
    assert sweep["postprocess"].tolist() == ["largest_component"] * 3 + ["none"] * 3
    assert sweep["threshold"].tolist() == [0.3, 0.5, 0.7] * 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["threshold"] == 0.5 and metrics["test_time_augmentation"] == "hflip"
    assert metrics["postprocess"] == "none"
    # the sweep row at the evaluated operating point reproduces the main result
    plain = sweep[sweep["postprocess"] == "none"]
    at_half = plain.loc[plain["threshold"] == 0.5, "mean_dice"].item()
    assert at_half == pytest.approx(metrics["mean_dice"], abs=1e-5)
    cfg = json.loads((artifact / "config.json").read_text())
    best, mode = best_operating_point(sweep)
    assert cfg["threshold"] == best and cfg["test_time_augmentation"] == "hflip"
    assert cfg["postprocess"] == mode == cfg["operating_point"]["postprocess"]
    assert cfg["operating_point"]["chosen_on"].endswith(":val")
    assert cfg["operating_point"]["mean_dice"] == pytest.approx(sweep["mean_dice"].max(), abs=1e-4)
    assert sha256_file(artifact / "weights.npz") == sha_before
    seg = load_segmenter(artifact)  # still loads; the new defaults are picked up
    assert seg.default_threshold == best and seg.tta == "hflip" and seg.postprocess == mode
    assert "operating point: threshold" in capsys.readouterr().out
    # a later evaluation without --threshold/--tta uses the artifact's operating point
    assert main(common + ["--out", str(tmp_path / "again"), "--split", "val"]) == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["threshold"] == best and again["test_time_augmentation"] == "hflip"
    assert again["postprocess"] == mode
    # never on the test split
    with pytest.raises(SystemExit):
        main(
            common
            + [
                "--out",
                str(tmp_path / "t"),
                "--split",
                "test",
                "--sweep",
                "0.5",
                "--choose-threshold",
            ]
        )
    assert "refused on the test split" in capsys.readouterr().err


def test_record_in_artifacts_keeps_only_entries_of_the_same_weights(
    figshare_like, tiny_artifact, tmp_path, capsys
):
    from segmentation.data import load_metadata, make_patient_split, write_split

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    sha = json.loads((art / "config.json").read_text())["weights_sha256"]
    stale = {"record": "old", "weights_sha256": "0" * 64, "mean_dice": 0.1}
    (art / "metrics.json").write_text(json.dumps({"evaluations": {"val": stale, "x": stale}}))
    split_csv = write_split(make_patient_split(load_metadata(figshare_like)), tmp_path / "s.csv")
    common = [str(figshare_like / "images"), str(figshare_like / "masks"), "--artifacts",
              str(art), "--ids-from", str(split_csv), "--no-progress", "--record-in-artifacts"]
    assert main([*common, "--split", "test", "--out", str(tmp_path / "t")]) == 0
    recorded = json.loads((art / "metrics.json").read_text())["evaluations"]
    assert set(recorded) == {"test"}  # both stale entries dropped
    test_record = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert recorded["test"]["weights_sha256"] == sha
    assert recorded["test"]["record"] == str(tmp_path / "t" / "metrics.json")
    for key in ("n_images", "mean_dice", "median_dice", "mean_iou", "threshold", "postprocess"):
        assert recorded["test"][key] == test_record[key], key
    assert main([*common, "--split", "val", "--out", str(tmp_path / "v")]) == 0
    recorded = json.loads((art / "metrics.json").read_text())["evaluations"]
    assert set(recorded) == {"test", "val"}  # same weights: the other split is kept
    assert "recorded in" in capsys.readouterr().out


def test_record_in_artifacts_needs_a_split(tiny_artifact, tmp_path):
    with pytest.raises(SystemExit):
        main([str(tmp_path), str(tmp_path), "--out", str(tmp_path / "o"), "--artifacts",
              str(tiny_artifact), "--record-in-artifacts"])


def test_load_mask_thresholds_at_the_stated_level(tmp_path):
    import numpy as np
    from PIL import Image

    from segmentation.evaluate import MASK_LEVEL, load_mask

    grey = np.tile(np.array([[0, MASK_LEVEL, MASK_LEVEL + 1, 255]], np.uint8), (32, 8))
    Image.fromarray(grey).save(tmp_path / "m.png")  # 32 x 32, the smallest accepted
    mask = load_mask(tmp_path / "m.png")
    assert mask.dtype == bool and mask.shape == (32, 32)
    np.testing.assert_array_equal(mask[0, :4], [False, False, True, True])
    assert mask.sum() == 32 * 16


def test_cli_maps_flagged_slices_like_the_pipeline(eval_dirs, tiny_artifact, tmp_path):
    """With a reference that flags everything, each slice is scored on its mapped copy."""
    from ensemble.intensity import check_slice, correct_gamma, load_reference
    from neurostack.imaging import load_image
    from segmentation.data import read_mask
    from segmentation.metrics import dice_coefficient
    from segmentation.predict import load_segmenter

    images, masks = eval_dirs
    ref_dir = flag_everything_reference(tmp_path / "ref")
    out = tmp_path / "out"
    args = [str(images), str(masks), "--out", str(out), "--artifacts", str(tiny_artifact),
            "--no-progress", "--intensity-reference", str(ref_dir)]
    assert main(args) == 0
    per_image = pd.read_csv(out / "per_image.csv", dtype={"id": str})
    assert per_image["intensity_corrected"].all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_intensity_corrected"] == len(per_image)
    ref = load_reference(ref_dir)
    assert metrics["intensity_correction"]["features_sha256"] == ref.config["features_sha256"]
    # known answer: the Dice of the segmenter on the mapped slice, computed here by hand
    seg = load_segmenter(tiny_artifact)
    for row in per_image.head(3).itertuples():
        gray = load_image(next(images.glob(f"{row.id}.*"))).gray
        mapped = correct_gamma(gray, check_slice(ref, gray).relative_gamma)
        want = dice_coefficient(read_mask(masks / f"{row.id}.png"), seg.predict(mapped).mask)
        assert row.dice == pytest.approx(want, abs=1e-6)
    # the default scores the slices as they are
    assert main(args[:-2]) == 0
    plain = pd.read_csv(out / "per_image.csv", dtype={"id": str})
    assert not plain["intensity_corrected"].any()


def test_resolve_reference_choices(tmp_path):
    from neurostack.errors import ArtifactError
    from segmentation.evaluate import default_reference, resolve_reference

    seg_dir = tmp_path / "artifacts" / "segmentation" / "resunet"
    seg_dir.mkdir(parents=True)
    assert default_reference(seg_dir) == (
        tmp_path / "artifacts" / "classification" / "intensity_reference")
    assert default_reference("artifacts/segmentation/resunet") == Path(
        "artifacts/classification/intensity_reference")  # relative stays relative (records)
    assert resolve_reference("auto", seg_dir) == (None, None)  # none shipped: no correction
    assert resolve_reference("none", seg_dir) == (None, None)
    assert resolve_reference(None, seg_dir) == (None, None)
    flag_everything_reference(default_reference(seg_dir))
    ref, path = resolve_reference("auto", seg_dir)
    assert path == default_reference(seg_dir) and ref.threshold == 0.0
    with pytest.raises(ArtifactError):
        resolve_reference(tmp_path / "missing", seg_dir)  # a named folder must exist
