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
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np


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
