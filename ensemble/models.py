"""Model builders: base classifiers on ``keras.applications`` and the stacking meta-learner."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np

from ensemble.registry import get_backbone
from neurostack import CLASS_NAMES

log = logging.getLogger(__name__)

N_CLASSES = len(CLASS_NAMES)
IMAGENET_UNAVAILABLE = (
    "ImageNet weights for {name} could not be loaded ({error}); this machine cannot reach "
    "the Keras weight server. Continuing with randomly initialised weights (weights=None). "
    "To use ImageNet weights offline, pass the path of a local '*_notop.h5' file."
)


def build_classifier(
    backbone: str,
    *,
    weights: str | Path | None = None,
    input_size: int | None = None,
    head_dropout: tuple[float, float] = (0.3, 0.25),
    head_units: int = 128,
) -> keras.Model:
    """Build a base classifier: backbone (max pool) -> Flatten -> Dropout/Dense/Dropout -> softmax.

    Args:
        backbone: Registry name (``xception``, ``inceptionv3``, ``resnet50``, ``vgg19``).
        weights: ``None`` (random init), ``"imagenet"`` (falls back to ``None`` with a
            logged warning when unreachable) or a path to a local backbone weights file.
        input_size: Square input side; defaults to the backbone's native size.
        head_dropout: Dropout rates before and after the hidden dense layer.
        head_units: Width of the hidden dense layer.

    Returns:
        An uncompiled ``keras.Model`` mapping ``(B, S, S, 3)`` preprocessed images to
        ``(B, 4)`` class probabilities (float32) in :data:`CLASS_NAMES` order.

    Raises:
        ValueError: For an unknown backbone, a too small or fractional input size,
            head dropout rates outside [0, 1), a head width below 1, or a weights value
            that is neither None, "imagenet" nor an existing file (checked before the
            backbone is built).
    """
    spec = get_backbone(backbone)
    if input_size is not None and not _is_whole(input_size):
        raise ValueError(f"input_size must be a whole number of pixels; received {input_size!r}")
    if not _are_rates(head_dropout, 2):
        raise ValueError(f"head_dropout must be two rates in [0, 1); received {head_dropout!r}")
    if not _is_whole(head_units) or head_units < 1:
        raise ValueError(f"head_units must be a positive integer; received {head_units!r}")
    size = spec.native_size if input_size is None else int(input_size)
    if size < spec.min_size:
        raise ValueError(
            f"input_size for {spec.name} must be at least {spec.min_size}; received {size}"
        )
    if weights is not None and weights != "imagenet" and not Path(weights).is_file():
        raise ValueError(
            f"weights must be None, 'imagenet' or an existing file path; received {weights!r}"
        )
    ctor = spec.constructor()
    kwargs = dict(include_top=False, input_shape=(size, size, 3), pooling="max")
    try:
        base = ctor(weights=None if weights is None else str(weights), **kwargs)
    except Exception as exc:  # network errors surface as many types (URLError, OSError, ...)
        if weights != "imagenet":
            raise
        log.warning(IMAGENET_UNAVAILABLE.format(name=spec.name, error=type(exc).__name__))
        base = ctor(weights=None, **kwargs)
    x = keras.layers.Flatten(name="flatten")(base.output)
    x = keras.layers.Dropout(float(head_dropout[0]), name="head_dropout_1")(x)
    x = keras.layers.Dense(int(head_units), activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(float(head_dropout[1]), name="head_dropout_2")(x)
    out = keras.layers.Dense(N_CLASSES, activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(base.input, out, name=spec.name)


def _is_whole(value: object) -> bool:
    """Tell whether ``value`` is an int or integral float / NumPy number (not a bool or str)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return bool(np.isfinite(value)) and int(value) == value


def _are_rates(values: object, n: int) -> bool:
    """Tell whether ``values`` is a sequence of ``n`` numbers in ``[0, 1)``."""
    try:
        rates = [float(v) for v in values]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return False
    return len(rates) == n and all(0.0 <= r < 1.0 for r in rates)


def build_meta_learner(n_models: int = 4, n_classes: int = N_CLASSES) -> keras.Model:
    """Build the stacking meta-learner: 16 probabilities -> Dense 64 -> Dense 32 -> softmax.

    Args:
        n_models: Number of base models whose probabilities are concatenated.
        n_classes: Number of classes per model.

    Returns:
        ``keras.Model`` mapping ``(B, n_models * n_classes)`` to ``(B, n_classes)``.

    Raises:
        ValueError: Unless ``n_models`` is a whole number >= 1 and ``n_classes`` >= 2.
    """
    if not (_is_whole(n_models) and _is_whole(n_classes)) or n_models < 1 or n_classes < 2:
        raise ValueError(
            "n_models must be a whole number >= 1 and n_classes one >= 2; "
            f"received {n_models!r} and {n_classes!r}"
        )
    n_models, n_classes = int(n_models), int(n_classes)
    inp = keras.Input((n_models * n_classes,), name="base_probabilities")
    x = keras.layers.Dense(64, activation="relu", name="meta_dense_64")(inp)
    x = keras.layers.Dense(32, activation="relu", name="meta_dense_32")(x)
    out = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(inp, out, name="meta_learner")


def set_batchnorm_momentum(model: keras.Model, momentum: float) -> int:
    """Set the momentum of every BatchNormalization layer; return how many were changed.

    From-scratch training moves the weights fast; a lower momentum lets the moving
    statistics used at validation time keep up.
    """
    n = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
            n += 1
    return n
