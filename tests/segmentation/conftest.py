"""Fixtures of the segmentation tests: a tiny figshare-seg-like folder and a tiny artifact."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

LABELS = ("glioma", "meningioma", "pituitary")


def fake_slice(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Return (gray, mask 0/255): a bright ellipse 'head' on black with a brighter 'tumour' disc."""
    h, w = shape
    img = np.zeros((h, w), np.uint8)
    cy, cx = int(h / 2), int(w / 2)
    cv2.ellipse(img, (cx, cy), (int(0.38 * w), int(0.4 * h)), 0, 0, 360, 110, -1)
    head = img > 0
    mask = np.zeros((h, w), np.uint8)
    r = int(rng.uniform(0.08, 0.14) * min(h, w))
    ty = cy + int(rng.uniform(-0.15, 0.15) * h)
    tx = cx + int(rng.uniform(-0.15, 0.15) * w)
    cv2.circle(mask, (tx, ty), r, 255, -1)
    img[mask > 0] = 230
    noise = rng.normal(0, 6, (h, w))
    img = np.where(head, np.clip(img + noise, 1, 255), 0).astype(np.uint8)
    return img, mask


def write_figshare_like(
    root: Path, n_patients: int = 16, per_patient: int = 2, seed: int = 0
) -> Path:
    """Write images/NNNN.jpg, masks/NNNN.png and metadata.csv with 4 patient-level folds."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    k = 1
    for p in range(n_patients):
        label = LABELS[p % 3]
        fold = p % 4 + 1
        for _ in range(per_patient):
            shape = (96, 96) if k % 5 else (80, 112)
            gray, mask = fake_slice(rng, shape)
            stem = f"{k:04d}"
            Image.fromarray(gray).save(root / "images" / f"{stem}.jpg", quality=95)
            Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
            rows.append({"id": stem, "patient_id": str(1000 + p), "label": label, "fold": fold})
            k += 1
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


@pytest.fixture(scope="session")
def figshare_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only tiny figshare-seg-like folder: 32 slices of 16 patients (some non-square)."""
    return write_figshare_like(tmp_path_factory.mktemp("figshare_like"))


@pytest.fixture
def float32_policy():
    """Run a test under the float32 Keras policy and restore the previous policy afterwards."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy(previous)


def write_tiny_artifact(
    folder: Path, *, input_size: int = 32, seed: int = 0
) -> tuple[Path, object]:
    """Export a random tiny ResUNet through the real export path; return (folder, model).

    The model's weights are rounded to float16 first, so the exported artifact
    is numerically identical to the returned model.
    """
    import json

    import keras

    from segmentation.model import build_resunet
    from segmentation.train import RunState, TrainConfig, export_run, save_weights_npz

    keras.utils.set_random_seed(seed)
    run = folder.parent / f"{folder.name}_run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = TrainConfig(
        data_dir="fake",
        run_dir=str(run),
        image_size=input_size,
        base_filters=4,
        depth=2,
        split_path=str(run / "no_split.csv"),
    )
    model = build_resunet(**cfg.architecture())
    for w in model.weights:
        w.assign(np.asarray(w.numpy()).astype(np.float16).astype(np.float32))
    save_weights_npz(model, run / "checkpoints" / "best_e001.weights.npz")
    from dataclasses import asdict

    (run / "run_config.json").write_text(json.dumps(asdict(cfg)))
    state = RunState(
        epochs_done=1,
        best_val_dice=0.5,
        best_epoch=1,
        best_weights="checkpoints/best_e001.weights.npz",
    )
    (run / "state.json").write_text(json.dumps(asdict(state)))
    export_run(run, folder)
    return folder, model


@pytest.fixture(scope="session")
def make_fake_slice():
    """Factory fixture: :func:`fake_slice`."""
    return fake_slice


@pytest.fixture(scope="session")
def make_tiny_artifact():
    """Factory fixture: :func:`write_tiny_artifact`."""
    return write_tiny_artifact


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only tiny exported segmenter (input 32, base_filters 4, depth 2, random weights)."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        folder, _ = write_tiny_artifact(tmp_path_factory.mktemp("seg_art") / "resunet")
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return folder
