from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from segmentation.evaluate import main


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
    assert list(per_image.columns) == ["id", "dice", "iou", "gt_area_px", "pred_area_px"]
    assert len(per_image) == 30
    assert "0001" not in set(per_image["id"]) and "0002" not in set(per_image["id"])
    assert per_image["dice"].between(0, 1).all() and per_image["iou"].between(0, 1).all()
    assert (per_image["gt_area_px"] > 0).all()
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("mean_dice", "median_dice", "mean_iou", "median_iou", "n_images", "threshold"):
        assert key in metrics
    assert metrics["n_images"] == 30
    assert metrics["mean_dice"] == pytest.approx(per_image["dice"].mean(), abs=1e-5)
    assert metrics["artifact"]["weights_sha256"]
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
    assert list(per_image.columns) == ["id", "label", "dice", "iou", "gt_area_px", "pred_area_px"]
    assert set(per_image["id"]) == set(split.loc[split["split"] == "test", "id"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class"]) == set(per_image["label"])
    assert metrics["split"] == "test"


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
