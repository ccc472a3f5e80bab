"""Re-estimate batch-norm statistics of a classifier at a new input size ("precise BN").

A backbone trained at a reduced size keeps moving means and variances of its
batch-norm layers that describe activations at that size. At the native size
the same filters see every structure at a larger scale and the activation
statistics shift. This module recomputes the moving statistics from forward
passes on training images at the new size, leaving every trained weight
(kernels, gamma, beta) unchanged: inference-only cost, no gradient.

The estimate is the plain average of per-batch means and variances over the
batches given (each batch weighted equally), computed by running every
``BatchNormalization`` layer in training mode with momentum ``k / (k + 1)``
for the ``k``-th batch.

Command line: re-estimate a shipped classifier's statistics and write the
result as a new artifact folder, with validation accuracy before and after::

    python -m ensemble.recalibrate artifacts/classification/inceptionv3 --images 1024 \
        --out /tmp/recalibrated/inceptionv3
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from neurostack.cli import print_record


def batchnorm_layers(model) -> list:
    """Every ``keras.layers.BatchNormalization`` inside ``model``, nested models included."""
    import keras

    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def recalibrate_batchnorm(model, batches: Iterable[np.ndarray]) -> int:
    """Replace the moving statistics of every batch-norm layer by averages over ``batches``.

    Args:
        model: A ``keras.Model``; only its batch-norm moving statistics change.
        batches: Model-ready input batches (already preprocessed), e.g.
            ``(B, S, S, 3)`` float32. Use batches of 16 or more images: the
            statistics are per-batch means and variances.

    Returns:
        The number of batches used.

    Raises:
        ValueError: If the model has no batch-norm layer or no batch was given.
    """
    layers = batchnorm_layers(model)
    if not layers:
        raise ValueError(f"model {model.name!r} has no BatchNormalization layer to recalibrate")
    saved = [(layer, layer.momentum) for layer in layers]
    n = 0
    try:
        for batch in batches:
            for layer in layers:
                layer.momentum = n / (n + 1.0)  # n == 0: take the first batch's statistics
            model(batch, training=True)
            n += 1
    finally:
        for layer, momentum in saved:
            layer.momentum = momentum
    if n == 0:
        raise ValueError("recalibrate_batchnorm needs at least one batch; received none")
    return n


def calibration_crops(
    data_dir: str | Path,
    split_csv: str | Path,
    size: int,
    n_images: int,
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> np.ndarray:
    """``(n, size, size)`` uint8 brain crops of a fixed random subset of the training split.

    Only ``train`` rows are used, so validation and test images never shape the
    statistics. ``n`` is ``min(n_images, number of training images)``.
    """
    from ensemble.data import cached_arrays, load_split

    if n_images < 1:
        raise ValueError(f"n_images must be >= 1; received {n_images}")
    paths = load_split(split_csv, "train")["path"].tolist()
    pick = np.sort(np.random.default_rng(seed).choice(len(paths), min(n_images, len(paths)), False))
    kw = {"cache_dir": cache_dir} if cache_dir else {}
    return np.asarray(cached_arrays(data_dir, paths, size, **kw))[pick]


def recalibration_record(n_images: int, input_size: int) -> dict:
    """How an artifact's batch-norm statistics were re-estimated, for its ``config.json``."""
    return {
        "images": int(n_images),
        "input_size": int(input_size),
        "source": "train split, fixed random subset (seed 0), no augmentation",
    }


def recalibrate_classifier(
    model, preprocess_mode: str, crops: np.ndarray, batch_size: int = 32
) -> int:
    """Re-estimate a base classifier's batch-norm statistics on greyscale uint8 ``crops``.

    The crops go through the same channel repeat and ``keras.applications``
    preprocessing as at inference. Returns the number of batches used.
    """
    from ensemble.registry import preprocess_array

    def batches():
        for start in range(0, len(crops), batch_size):
            rgb = np.repeat(
                np.asarray(crops[start : start + batch_size], np.float32)[..., None], 3, -1
            )
            yield preprocess_array(rgb, preprocess_mode)

    return recalibrate_batchnorm(model, batches())


DEFAULT_DATA = Path("../shared/datasets/brain-tumor-mri/Training")
DEFAULT_SPLIT = Path("artifacts/splits/classification_split.csv")


def recalibrate_artifact(
    folder: Path,
    out: Path | None,
    *,
    n_images: int,
    data_dir: Path = DEFAULT_DATA,
    split_csv: Path = DEFAULT_SPLIT,
    cache_dir: Path | None = None,
) -> dict:
    """Score a classifier artifact on the validation split before and after re-estimation.

    Args:
        folder: A classifier artifact folder (its SHA-256 is checked on load).
        out: Where to write the recalibrated artifact (weights, config, the training
            log and ``recalibration.json``); ``None`` only scores.
        n_images: Training-split images used for the statistics.
        data_dir: The class-folder dataset the split refers to.
        split_csv: Split CSV from ``python -m ensemble.split``.
        cache_dir: Crop cache folder.

    Returns:
        ``{"model", "input_size", "calibration_images", "val_accuracy_before",
        "val_accuracy_after", "n_val", "seconds"}``.
    """
    from ensemble.data import cached_arrays, label_indices, load_split
    from ensemble.export import write_classifier_artifact
    from ensemble.inference import load_classifier
    from ensemble.resolution import model_accuracy

    t0 = time.time()
    clf = load_classifier(folder)
    size, mode = clf.input_size, clf.preprocess_mode
    val = load_split(split_csv, "val")
    kw = {"cache_dir": cache_dir} if cache_dir else {}
    val_crops = np.asarray(cached_arrays(data_dir, val["path"].tolist(), size, **kw))
    labels = label_indices(val["label"])
    before = model_accuracy(clf.model, mode, val_crops, labels)
    crops = calibration_crops(data_dir, split_csv, size, n_images, cache_dir=cache_dir)
    recalibrate_classifier(clf.model, mode, crops)
    after = model_accuracy(clf.model, mode, val_crops, labels)
    record = {
        "model": clf.name,
        "source": str(folder),
        "input_size": size,
        "calibration_images": len(crops),
        "val_accuracy_before": round(before, 4),
        "val_accuracy_after": round(after, 4),
        "n_val": len(labels),
        "seconds": round(time.time() - t0, 1),
    }
    if out is not None:
        training = dict(clf.config.get("training", {}))
        training["batchnorm_recalibration"] = recalibration_record(len(crops), size) | {
            "val_accuracy_before": record["val_accuracy_before"],
            "val_accuracy_after": record["val_accuracy_after"],
        }
        write_classifier_artifact(
            clf.model, out, backbone=clf.name, input_size=size, training=training
        )
        for name in ("training_log.csv", "resolution.json"):
            if (Path(folder) / name).is_file():
                shutil.copy(Path(folder) / name, Path(out) / name)
        (Path(out) / "recalibration.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, recalibrate, print the validation accuracies."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("artifact", type=Path, help="classifier artifact folder")
    p.add_argument("--images", type=int, default=1024, help="training images for the statistics")
    p.add_argument("--out", type=Path, default=None, help="write the recalibrated artifact here")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--split", type=Path, default=DEFAULT_SPLIT)
    p.add_argument("--cache-dir", type=Path, default=None)
    a = p.parse_args(argv)
    return print_record(
        lambda: recalibrate_artifact(
            a.artifact,
            a.out,
            n_images=a.images,
            data_dir=a.data_dir,
            split_csv=a.split,
            cache_dir=a.cache_dir,
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
