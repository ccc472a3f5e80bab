r"""Measure what the native-size phase buys: validation accuracy by weights and input size.

A backbone trained at a reduced size (e.g. 128 px) and then evaluated at its
native size sees every structure at a larger scale than it was trained on.
This command scores, on the same validation slices:

- the best reduced-size weights at the training size and at the native size;
- the final (native-phase) weights at the native size.

It reads ``RUN_DIR/<model>/best_scratch.weights.h5`` (kept by ``ensemble.train``
when a phase ends) and ``best.weights.h5``, and writes ``resolution.json``.

Example::

    python -m ensemble.resolution --run-dir /work/runs/classification --model resnet50 \
        --out artifacts/classification/resnet50/resolution.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ensemble.registry import get_backbone, preprocess_array

DEFAULT_DATA = Path("../shared/datasets/brain-tumor-mri/Training")
DEFAULT_SPLIT = Path("artifacts/splits/classification_split.csv")


def accuracy_at_size(
    model_name: str,
    weights: Path,
    size: int,
    crops: np.ndarray,
    labels: np.ndarray,
    batch_size: int = 32,
    calibration_crops: np.ndarray | None = None,
) -> float:
    """Accuracy of ``weights`` evaluated at ``size`` on ``(N, size, size)`` uint8 crops.

    Args:
        model_name: Registry name of the backbone.
        weights: A Keras ``.weights.h5`` file of this backbone's classifier.
        size: Input side to build the network at (weights are size-independent).
        crops: Greyscale brain crops already resized to ``size``.
        labels: ``(N,)`` integer class indices.
        batch_size: Inference batch size.
        calibration_crops: When given, ``(M, size, size)`` uint8 training crops on
            which the batch-norm statistics are re-estimated first
            (:func:`ensemble.recalibrate.recalibrate_batchnorm`).

    Returns:
        The fraction of correct argmax predictions.
    """
    import keras

    from ensemble.models import build_classifier

    spec = get_backbone(model_name)
    if crops.shape[1:] != (size, size):
        raise ValueError(f"crops must be (N, {size}, {size}); received {crops.shape}")
    model = build_classifier(model_name, weights=None, input_size=size)
    model.load_weights(weights)
    if calibration_crops is not None:
        from ensemble.recalibrate import recalibrate_classifier

        recalibrate_classifier(model, spec.preprocess_mode, calibration_crops, batch_size)
    acc = model_accuracy(model, spec.preprocess_mode, crops, labels, batch_size)
    keras.backend.clear_session()
    return acc


def model_accuracy(
    model, preprocess_mode: str, crops: np.ndarray, labels: np.ndarray, batch_size: int = 32
) -> float:
    """Fraction of ``(N, S, S)`` uint8 greyscale crops whose argmax matches ``labels``."""
    correct = 0
    for start in range(0, len(crops), batch_size):
        rgb = np.repeat(np.asarray(crops[start : start + batch_size], np.float32)[..., None], 3, -1)
        proba = model.predict(preprocess_array(rgb, preprocess_mode), verbose=0)
        correct += int((proba.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / len(crops)


def measure(
    run_dir: Path,
    model_name: str,
    data_dir: Path,
    split_csv: Path,
    cache_dir: Path | None = None,
    recalibrate_images: int = 0,
) -> dict:
    """Score the kept weights of one run at the training and the native sizes.

    With ``recalibrate_images > 0`` each native-size row is repeated after the
    batch-norm statistics were re-estimated at the native size on that many
    training-split images (fixed random subset, seed 0); backbones without
    batch-norm (VGG19) get no such rows.
    """
    from ensemble.data import cached_arrays, label_indices, load_split

    spec = get_backbone(model_name)
    src = Path(run_dir) / model_name
    cfg = json.loads((src / "config.json").read_text())
    train_size = int(cfg["phases"][0]["image_size"])
    val = load_split(split_csv, "val")
    labels = label_indices(val["label"])
    paths = val["path"].tolist()
    rows = []
    plan = [  # (label, weights, size, re-estimate batch-norm first)
        ("best reduced-size epoch", src / "best_scratch.weights.h5", train_size, False),
        ("best reduced-size epoch", src / "best_scratch.weights.h5", spec.native_size, False),
        ("after the native-size phase", src / "best.weights.h5", spec.native_size, False),
    ]
    kw = {"cache_dir": cache_dir} if cache_dir else {}
    calibration = None
    if recalibrate_images > 0 and spec.has_batchnorm:
        from ensemble.recalibrate import calibration_crops

        calibration = calibration_crops(
            data_dir, split_csv, spec.native_size, recalibrate_images, cache_dir=cache_dir
        )
        plan += [
            (f"{w}, BN re-estimated at {s}px", f, s, True)
            for w, f, s, _ in plan
            if s == spec.native_size
        ]
    for label, weights, size, recalibrate in plan:
        if not weights.is_file():
            continue
        t0 = time.time()
        crops = np.asarray(cached_arrays(data_dir, paths, size, **kw))
        calib = calibration if recalibrate else None
        acc = accuracy_at_size(model_name, weights, size, crops, labels, calibration_crops=calib)
        row = {
            "weights": label,
            "eval_size": size,
            "val_accuracy": round(acc, 4),
            "seconds": round(time.time() - t0, 1),
        }
        if calib is not None:
            row["calibration_images"] = len(calib)
        rows.append(row)
        print(f"[{model_name}] {label} at {size}px: val accuracy {acc:.4f}", flush=True)
    return {
        "model": model_name,
        "train_size": train_size,
        "native_size": spec.native_size,
        "split": "val",
        "n_images": len(paths),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, measure, write the JSON record."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--split", type=Path, default=DEFAULT_SPLIT)
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--cache-dir", type=Path, default=None, help="crop cache folder")
    p.add_argument(
        "--recalibrate-images",
        type=int,
        default=0,
        help="also score native-size rows after re-estimating batch-norm statistics "
        "on this many training images",
    )
    a = p.parse_args(argv)
    record = measure(
        a.run_dir,
        get_backbone(a.model).name,
        a.data_dir,
        a.split,
        a.cache_dir,
        recalibrate_images=a.recalibrate_images,
    )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=2) + "\n")
    print(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
