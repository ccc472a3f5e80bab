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
