from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from segmentation.pretrain import (
    CLASS_ORDER,
    EXCLUSIONS_FILE,
    INIT_WEIGHTS_FILE,
    LOG_FILE,
    PretrainConfig,
    build_encoder_classifier,
    held_out_matches,
    main,
    pretrain,
    validate_config,
)


def test_held_out_matches_known_answer():
    class_hashes = np.array([0b0000, 0b0001, 0xFF, 0b0110], dtype=np.uint64)
    seg_hashes = np.array([0b0000, 0b0011, 0xF0], dtype=np.uint64)
    parts = np.array(["train", "val", "test"])
    excluded, distance = held_out_matches(class_hashes, seg_hashes, parts, max_hamming=1)
    # Distances to the held-out hashes 0b0011 (val) and 0xF0 (test) only; the
    # exact copy of the training slice 0b0000 is kept.
    assert distance.tolist() == [2, 1, 4, 2]
    assert excluded.tolist() == [False, True, False, False]
    none, far = held_out_matches(class_hashes, seg_hashes[:1], parts[:1])
    assert not none.any() and (far == 65).all()


def test_encoder_classifier_trains_the_unet_encoder_only(float32_policy):
    import keras

    from segmentation.model import build_resunet

    keras.utils.set_random_seed(0)
    unet = build_resunet(input_size=32, base_filters=4, depth=2)
    clf = build_encoder_classifier(unet)
    assert clf.output_shape == (None, len(CLASS_ORDER))
    enc = unet.get_layer("enc1_conv1").kernel.numpy().copy()
    dec = unet.get_layer("dec0_conv1").kernel.numpy().copy()
    clf.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    x = np.random.default_rng(0).random((4, 32, 32, 1), dtype=np.float32)
    clf.train_on_batch(x, np.eye(4, dtype=np.float32))
    assert not np.allclose(unet.get_layer("enc1_conv1").kernel.numpy(), enc)
    np.testing.assert_array_equal(unet.get_layer("dec0_conv1").kernel.numpy(), dec)


def _cfg(tmp_path, **kw) -> PretrainConfig:
    base = dict(
        data_dir="x",
        split_csv="x",
        seg_data_dir="x",
        seg_split_csv="x",
        run_dir=str(tmp_path / "run"),
    )
    return PretrainConfig(**{**base, **kw})


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"epochs": 0}, "epochs"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"warmup_epochs": 12}, "warmup_epochs"),
        ({"max_hamming": 65}, "max_hamming"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
    ],
)
def test_validate_config_names_the_bad_option(tmp_path, kw, name):
    with pytest.raises(ValueError, match=name):
        validate_config(_cfg(tmp_path, **kw))
    assert not (tmp_path / "run").exists()


def test_validate_config_checks_the_architecture(tmp_path):
    with pytest.raises(ValueError, match="depth"):
        validate_config(_cfg(tmp_path, depth=9))


def _classification_folder(root, seg_dir, seg_split, make_fake_slice):
    """Four class folders of fake slices, plus byte copies of one val and one train seg slice."""
    rng = np.random.default_rng(1)
    rows = []
    for label in CLASS_ORDER:
        (root / label).mkdir(parents=True)
        for k in range(6):
            gray, mask = make_fake_slice(rng, (96, 96))
            if label == "notumor":
                gray = np.where(mask > 0, 110, gray).astype(np.uint8)
            rel = f"{label}/{k}.jpg"
            Image.fromarray(gray).save(root / rel, quality=95)
            rows.append({"path": rel, "label": label, "split": "train" if k < 4 else "val"})
    for part in ("val", "train"):
        stem = seg_split.loc[seg_split["split"] == part, "id"].iloc[0]
        rel = f"glioma/copy_of_{part}.jpg"
        shutil.copy(seg_dir / "images" / f"{stem}.jpg", root / rel)
        rows.append({"path": rel, "label": "glioma", "split": "train"})
    (root / "meningioma" / "broken.jpg").write_text("not an image")
    rows.append({"path": "meningioma/broken.jpg", "label": "meningioma", "split": "train"})
    table = pd.DataFrame(rows)
    table.to_csv(root / "split.csv", index=False)
    return root / "split.csv"


@pytest.mark.slow
def test_pretrain_excludes_held_out_copies_resumes_and_feeds_segmentation(
    figshare_like, tmp_path, make_fake_slice, float32_policy
):
    from neurostack.artifacts import load_weights_compact
    from segmentation.data import load_metadata, make_patient_split, write_split
    from segmentation.model import build_resunet

    seg_split_path = write_split(
        make_patient_split(load_metadata(figshare_like)), tmp_path / "seg_split.csv"
    )
    seg_split = pd.read_csv(seg_split_path, dtype={"id": str})
    split_csv = _classification_folder(tmp_path / "cls", figshare_like, seg_split, make_fake_slice)
    cfg = PretrainConfig(
        data_dir=str(tmp_path / "cls"),
        split_csv=str(split_csv),
        seg_data_dir=str(figshare_like),
        seg_split_csv=str(seg_split_path),
        run_dir=str(tmp_path / "run"),
        image_size=32,
        base_filters=2,
        depth=2,
        epochs=2,
        batch_size=4,
        warmup_epochs=0,
        mixed_precision="float32",
        cache_dir=str(tmp_path / "cache"),
    )
    pretrain(cfg, max_epochs_this_call=1)
    run = tmp_path / "run"
    state = json.loads((run / "state.json").read_text())
    assert state["epochs_done"] == 1
    with pytest.raises(ValueError, match="--resume"):
        pretrain(cfg)
    out = pretrain(cfg, resume=True)
    assert json.loads((run / "state.json").read_text())["epochs_done"] == 2
    log = pd.read_csv(run / LOG_FILE)
    assert log["epoch"].tolist() == [1, 2] and log["val_accuracy"].between(0, 1).all()

    excl = pd.read_csv(run / EXCLUSIONS_FILE).set_index("path")
    assert excl.loc["glioma/copy_of_val.jpg", "excluded"]
    assert excl.loc["glioma/copy_of_val.jpg", "held_out_distance"] == 0
    assert not excl.loc["glioma/copy_of_train.jpg", "excluded"]
    # a broken file is reported and left out; the other slices were used
    assert excl.loc["meningioma/broken.jpg", "excluded"]
    assert "Error" in excl.loc["meningioma/broken.jpg", "unreadable"]
    assert excl["unreadable"].isna().sum() == len(excl) - 1
    assert out == run / INIT_WEIGHTS_FILE

    unet = build_resunet(input_size=64, base_filters=2, depth=2, dropout=0.2)
    load_weights_compact(unet, out)  # shapes match a segmentation run of these options


def test_cli_requires_data_dir_for_a_new_run(tmp_path, capsys):
    assert main(["--run-dir", str(tmp_path / "r")]) == 2
    assert "data_dir" in capsys.readouterr().err
    assert main(["x", "--run-dir", str(tmp_path / "r"), "--epochs", "0"]) == 2
    assert "epochs" in capsys.readouterr().err


def test_pretraining_log_is_not_taken_for_a_segmentation_history(tmp_path):
    from neurostack.artifacts import PREVIOUS_LOG_FILE, keep_lineage

    pre = tmp_path / "pre"
    run = tmp_path / "seg_run"
    pre.mkdir()
    run.mkdir()
    (pre / LOG_FILE).write_text("epoch,accuracy\n1,0.5\n")
    assert not keep_lineage(pre, run)
    assert not (run / PREVIOUS_LOG_FILE).exists()


def test_cli_maps_every_option_onto_the_config(monkeypatch, tmp_path):
    import segmentation.pretrain as mod

    seen = {}

    def fake_pretrain(cfg, **kw):
        seen.update(cfg=cfg, **kw)
        return tmp_path / INIT_WEIGHTS_FILE

    monkeypatch.setattr(mod, "pretrain", fake_pretrain)
    argv = [
        "ROOT",
        "--run-dir",
        "R",
        "--split",
        "S.csv",
        "--seg-split",
        "SEG.csv",
        "--seg-data-dir",
        "SEGDIR",
        "--epochs",
        "3",
        "--learning-rate",
        "0.01",
        "--max-hamming",
        "4",
        "--dropout",
        "0.1",
        "--threads",
        "1",
        "--resume",
    ]
    assert main(argv) == 0
    cfg = seen["cfg"]
    assert (cfg.data_dir, cfg.split_csv, cfg.seg_split_csv, cfg.seg_data_dir) == (
        "ROOT",
        "S.csv",
        "SEG.csv",
        "SEGDIR",
    )
    assert (cfg.epochs, cfg.learning_rate, cfg.max_hamming, cfg.dropout) == (3, 0.01, 4, 0.1)
    assert cfg.image_size == PretrainConfig("", "", "", "", "").image_size
    assert seen["threads"] == 1 and seen["resume"] is True
