"""Accuracy of kept weights at another input size (the native-size effect)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ensemble.models import build_classifier
from ensemble.registry import preprocess_array
from ensemble.resolution import accuracy_at_size, main


@pytest.fixture(scope="module")
def weights_and_crops(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (10, 40, 40), dtype=np.uint8)
    model = build_classifier("vgg19", input_size=40)
    rgb = np.repeat(crops[..., None].astype(np.float32), 3, -1)
    own = model.predict(preprocess_array(rgb, "caffe"), verbose=0).argmax(1)
    path = tmp_path_factory.mktemp("w") / "vgg19.weights.h5"
    model.save_weights(path)
    return path, crops, own


def test_accuracy_is_one_on_the_models_own_answers_and_zero_on_shifted(weights_and_crops):
    path, crops, own = weights_and_crops
    assert accuracy_at_size("vgg19", path, 40, crops, own, batch_size=3) == 1.0
    assert accuracy_at_size("vgg19", path, 40, crops, (own + 1) % 4, batch_size=4) == 0.0


def test_crops_of_another_size_are_refused(weights_and_crops):
    path, crops, own = weights_and_crops
    with pytest.raises(ValueError, match=r"\(N, 48, 48\)"):
        accuracy_at_size("vgg19", path, 48, crops, own)


@pytest.mark.slow
def test_cli_writes_a_row_per_kept_weights_file(
    class_dataset: Path, tmp_path: Path, weights_and_crops
) -> None:
    import shutil

    import pandas as pd

    from ensemble.data import list_class_folder

    path, _, _ = weights_and_crops
    run = tmp_path / "run" / "vgg19"
    run.mkdir(parents=True)
    shutil.copy(path, run / "best_scratch.weights.h5")  # no native-phase weights yet
    (run / "config.json").write_text(json.dumps({"phases": [{"image_size": 40}]}))
    df = list_class_folder(class_dataset)
    split = tmp_path / "split.csv"
    df.assign(group=range(len(df)), split="val").to_csv(split, index=False)
    out = tmp_path / "resolution.json"
    argv = [
        "--run-dir",
        str(tmp_path / "run"),
        "--model",
        "vgg19",
        "--data-dir",
        str(class_dataset),
        "--split",
        str(split),
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert main(argv) == 0
    rec = json.loads(out.read_text())
    assert rec["train_size"] == 40 and rec["native_size"] == 224 and rec["n_images"] == len(df)
    assert [(r["weights"], r["eval_size"]) for r in rec["rows"]] == [
        ("best reduced-size epoch", 40),
        ("best reduced-size epoch", 224),
    ]
    assert all(0.0 <= r["val_accuracy"] <= 1.0 for r in rec["rows"])
    assert pd.read_csv(split)["split"].eq("val").all()


def test_recalibrated_rows_change_only_batchnorm_backbones(
    class_dataset: Path, tmp_path: Path
) -> None:
    """ResNet50 weights trained (here: random) at 40 px, BN re-estimated at 224 px on 8
    training images; the weights file itself is left untouched."""
    import hashlib

    from ensemble.data import list_class_folder

    run = tmp_path / "run" / "resnet50"
    run.mkdir(parents=True)
    build_classifier("resnet50", input_size=40).save_weights(run / "best_scratch.weights.h5")
    before = hashlib.sha256((run / "best_scratch.weights.h5").read_bytes()).hexdigest()
    (run / "config.json").write_text(json.dumps({"phases": [{"image_size": 40}]}))
    df = list_class_folder(class_dataset)
    split = tmp_path / "split.csv"
    df.assign(group=range(len(df)), split=["train", "val"] * (len(df) // 2)).to_csv(
        split, index=False
    )
    out = tmp_path / "resolution.json"
    argv = ["--run-dir", str(tmp_path / "run"), "--model", "resnet50"]
    argv += ["--data-dir", str(class_dataset), "--split", str(split), "--out", str(out)]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--recalibrate-images", "8"]
    assert main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["weights"], r["eval_size"], r.get("calibration_images")) for r in rows] == [
        ("best reduced-size epoch", 40, None),
        ("best reduced-size epoch", 224, None),
        ("best reduced-size epoch, BN re-estimated at 224px", 224, 8),
    ]
    assert hashlib.sha256((run / "best_scratch.weights.h5").read_bytes()).hexdigest() == before
