"""Overlap metrics (NumPy, for evaluation) and losses/metrics (Keras 3 ops, for training).

Conventions
-----------
* Masks are ``(H, W)`` for one image or ``(N, H, W)`` for a batch (a trailing
  channel axis of size 1, ``(N, H, W, 1)``, is accepted too). Units: pixels.
* Evaluation metrics are **per image**: a batch gives one score per image, and
  a data-set score is the mean (or median) over images, never a pooled
  pixel count.
* **Empty-mask policy** (both for NumPy and for the Keras ``DiceMetric``): if
  the ground truth and the prediction are both empty the score is 1.0
  (perfect agreement); if exactly one of them is empty it is 0.0.
* Hard metrics binarise ``y_true`` as ``y_true > 0`` (so 0/1, 0/255 and bool
  masks all work) and ``y_pred`` as ``y_pred >= threshold`` when a threshold is
  given; with ``threshold=None`` ``y_pred`` must already be binary.
* The training losses are *soft* (they use probabilities directly) and are
  smoothed: ``dice = (2 * sum(t * p) + smooth) / (sum(t) + sum(p) + smooth)``.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

DEFAULT_SMOOTH = 1.0
"""Additive smoothing of the soft Dice loss, in pixels."""
TVERSKY_ALPHA = 0.3
"""Focal Tversky loss: weight of false-positive mass (Abraham and Khan, 2019)."""
TVERSKY_BETA = 0.7
"""Focal Tversky loss: weight of false-negative mass (> alpha: misses cost more)."""
FOCAL_TVERSKY_GAMMA = 0.75
"""Focal Tversky loss: exponent applied to ``1 - Tversky index``."""


# ----------------------------------------------------------------------------- NumPy


def _as_binary_batch(
    y_true: np.ndarray, y_pred: np.ndarray, threshold: float | None
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Return boolean ``(N, H*W)`` arrays and whether the input was a single image."""
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if t.ndim >= 3 and t.shape[-1] == 1:
        t = t[..., 0]
    if p.ndim >= 3 and p.shape[-1] == 1:
        p = p[..., 0]
    if t.shape != p.shape:
        raise ValueError(
            f"y_true and y_pred must have the same shape; received {t.shape} and {p.shape}"
        )
    if t.ndim not in (2, 3):
        raise ValueError(f"masks must be (H, W) or (N, H, W); received shape {t.shape}")
    single = t.ndim == 2
    if single:
        t = t[None]
        p = p[None]
    if threshold is None:
        if p.dtype != bool and not np.isin(p, (0, 1, 255)).all():
            raise ValueError(
                "y_pred holds non-binary values (e.g. probabilities); pass threshold=..."
            )
        pb = p > 0
    else:
        pb = p >= threshold
    tb = t > 0
    n = t.shape[0]
    return tb.reshape(n, -1), pb.reshape(n, -1), single


def _overlap_scores(
    y_true: np.ndarray, y_pred: np.ndarray, threshold: float | None, kind: str
) -> float | np.ndarray:
    t, p, single = _as_binary_batch(y_true, y_pred, threshold)
    inter = np.logical_and(t, p).sum(axis=1).astype(np.float64)
    sum_t = t.sum(axis=1).astype(np.float64)
    sum_p = p.sum(axis=1).astype(np.float64)
    if kind == "dice":
        denom = sum_t + sum_p
        num = 2.0 * inter
    else:
        denom = sum_t + sum_p - inter
        num = inter
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.where(denom > 0, num / np.where(denom > 0, denom, 1.0), 1.0)
    # denom == 0 <=> both empty -> 1.0; exactly one empty -> inter == 0 -> 0.0 already.
    return float(scores[0]) if single else scores


def dice_coefficient(
    y_true: np.ndarray, y_pred: np.ndarray, threshold: float | None = None
) -> float | np.ndarray:
    """Dice (F1) overlap ``2|T & P| / (|T| + |P|)`` of binary masks.

    Args:
        y_true: Ground truth ``(H, W)`` or ``(N, H, W)``; nonzero = tumour.
        y_pred: Prediction of the same shape: a binary mask, or probabilities
            in ``[0, 1]`` together with ``threshold``.
        threshold: Probability at or above which a pixel is tumour; ``None``
            when ``y_pred`` is already binary.

    Returns:
        A float in ``[0, 1]`` for one image, or an ``(N,)`` float64 array of
        per-image scores. Both masks empty -> 1.0; exactly one empty -> 0.0.

    Raises:
        ValueError: On shape mismatch, or probabilities without a threshold.
    """
    return _overlap_scores(y_true, y_pred, threshold, "dice")


def iou(
    y_true: np.ndarray, y_pred: np.ndarray, threshold: float | None = None
) -> float | np.ndarray:
    """Intersection over union (Jaccard) ``|T & P| / |T | P|`` of binary masks.

    Arguments, return value and empty-mask policy as in :func:`dice_coefficient`.
    """
    return _overlap_scores(y_true, y_pred, threshold, "iou")


def cluster_bootstrap_ci(
    values: np.ndarray,
    groups: np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean over images, resampling whole groups.

    Slices of one patient are correlated, so resampling slices would understate the
    uncertainty of a data-set score; this resamples patients (``groups``) with
    replacement and recomputes the mean over all their slices, the same
    slice-weighted mean that is reported.

    Args:
        values: ``(N,)`` per-image scores (e.g. Dice).
        groups: ``(N,)`` group key of each image (e.g. patient id); any hashable dtype.
        confidence: Two-sided coverage in ``(0, 1)``.
        n_resamples: Bootstrap resamples (>= 1; use thousands).
        seed: Seed of the random generator, so an interval is reproducible.

    Returns:
        ``(low, high)`` bounds of the mean.

    Raises:
        ValueError: On mismatched lengths, no values, fewer than 2 groups, a
            non-finite value, or ``confidence`` / ``n_resamples`` out of range.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    g = np.asarray(groups).reshape(-1)
    if v.shape != g.shape:
        raise ValueError(f"values and groups differ in length: {v.size} vs {g.size}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1); received {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1; received {n_resamples}")
    if not np.isfinite(v).all():
        raise ValueError("values must be finite")
    keys, index = np.unique(g, return_inverse=True)
    if len(keys) < 2:
        raise ValueError(f"need at least 2 groups to resample; received {len(keys)}")
    sums = np.bincount(index, weights=v, minlength=len(keys))
    counts = np.bincount(index, minlength=len(keys)).astype(np.float64)
    picks = np.random.default_rng(seed).integers(0, len(keys), size=(n_resamples, len(keys)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


# ----------------------------------------------------------------------------- Keras


def _flatten(y: keras.KerasTensor) -> keras.KerasTensor:
    """``(B, ...)`` -> ``(B, P)`` float32."""
    y = ops.cast(y, "float32")
    return ops.reshape(y, (ops.shape(y)[0], -1))


@keras.saving.register_keras_serializable(package="neurostack_segmentation")
def dice_loss(y_true: Any, y_pred: Any, smooth: float = DEFAULT_SMOOTH) -> Any:
    """Soft Dice loss ``1 - (2 sum(t p) + s) / (sum(t) + sum(p) + s)`` per image.

    Args:
        y_true: ``(B, H, W, 1)`` ground truth in {0, 1}.
        y_pred: ``(B, H, W, 1)`` probabilities in ``[0, 1]``.
        smooth: Additive smoothing in pixels (keeps the loss defined and
            smooth for empty masks: empty vs. all-zero prediction gives 0).

    Returns:
        ``(B,)`` float32 loss per image (Keras averages it over the batch).
    """
    t = _flatten(y_true)
    p = _flatten(y_pred)
    inter = ops.sum(t * p, axis=1)
    denom = ops.sum(t, axis=1) + ops.sum(p, axis=1)
    return 1.0 - (2.0 * inter + smooth) / (denom + smooth)


@keras.saving.register_keras_serializable(package="neurostack_segmentation")
def focal_tversky_loss(
    y_true: Any,
    y_pred: Any,
    alpha: float = TVERSKY_ALPHA,
    beta: float = TVERSKY_BETA,
    gamma: float = FOCAL_TVERSKY_GAMMA,
    smooth: float = DEFAULT_SMOOTH,
) -> Any:
    """Focal Tversky loss ``(1 - TI) ** gamma`` per image (Abraham and Khan, 2019).

    ``TI = (sum(t p) + s) / (sum(t p) + alpha sum((1 - t) p) + beta sum(t (1 - p)) + s)``:
    with ``beta > alpha`` a missed tumour pixel costs more than a false one, and
    ``gamma < 1`` keeps the gradient large for images that are already fairly good.
    ``alpha = beta = 0.5, gamma = 1`` is :func:`dice_loss` with twice the smoothing.

    Args:
        y_true: ``(B, H, W, 1)`` ground truth in {0, 1}.
        y_pred: ``(B, H, W, 1)`` probabilities in ``[0, 1]``.
        alpha: Weight of false-positive mass.
        beta: Weight of false-negative mass.
        gamma: Focal exponent.
        smooth: Additive smoothing in pixels (empty vs. all-zero prediction gives 0).

    Returns:
        ``(B,)`` float32 loss per image.
    """
    t = _flatten(y_true)
    p = _flatten(y_pred)
    tp = ops.sum(t * p, axis=1)
    fp = ops.sum((1.0 - t) * p, axis=1)
    fn = ops.sum(t * (1.0 - p), axis=1)
    index = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    return ops.power(ops.maximum(1.0 - index, 0.0), gamma)


@keras.saving.register_keras_serializable(package="neurostack_segmentation")
def bce_focal_tversky_loss(y_true: Any, y_pred: Any) -> Any:
    """Pixel-mean binary cross-entropy plus :func:`focal_tversky_loss`, per image.

    Returns:
        ``(B,)`` float32.
    """
    t = _flatten(y_true)
    p = _flatten(y_pred)
    bce = ops.mean(ops.binary_crossentropy(t, p), axis=1)
    return bce + focal_tversky_loss(y_true, y_pred)


@keras.saving.register_keras_serializable(package="neurostack_segmentation")
def bce_dice_loss(y_true: Any, y_pred: Any, smooth: float = DEFAULT_SMOOTH) -> Any:
    """Pixel-mean binary cross-entropy plus soft Dice loss, per image.

    Args:
        y_true: ``(B, H, W, 1)`` ground truth in {0, 1}.
        y_pred: ``(B, H, W, 1)`` probabilities in ``[0, 1]``.
        smooth: Dice smoothing in pixels.

    Returns:
        ``(B,)`` float32: ``mean_pixels(BCE) + dice_loss``.
    """
    t = _flatten(y_true)
    p = _flatten(y_pred)
    bce = ops.mean(ops.binary_crossentropy(t, p), axis=1)
    return bce + dice_loss(y_true, y_pred, smooth)


def _hard_dice_per_image(y_true: Any, y_pred: Any, threshold: float) -> Any:
    t = ops.cast(_flatten(y_true) > 0.5, "float32")
    p = ops.cast(_flatten(y_pred) >= threshold, "float32")
    inter = ops.sum(t * p, axis=1)
    denom = ops.sum(t, axis=1) + ops.sum(p, axis=1)
    safe = ops.where(denom > 0, denom, ops.ones_like(denom))
    return ops.where(denom > 0, 2.0 * inter / safe, ops.ones_like(denom))


@keras.saving.register_keras_serializable(package="neurostack_segmentation")
def dice_metric(y_true: Any, y_pred: Any, threshold: float = 0.5) -> Any:
    """Hard Dice per image at ``threshold`` with the empty-mask policy, for ``compile``.

    Args:
        y_true: ``(B, H, W, 1)`` ground truth in {0, 1}.
        y_pred: ``(B, H, W, 1)`` probabilities.
        threshold: Probability at or above which a pixel is tumour.

    Returns:
        ``(B,)`` float32 per-image Dice (Keras reports the running mean).
    """
    return _hard_dice_per_image(y_true, y_pred, threshold)


@keras.saving.register_keras_serializable(package="neurostack_segmentation")
class DiceMetric(keras.metrics.Metric):
    """Mean per-image hard Dice over all images seen (threshold, empty-mask policy as above).

    Args:
        threshold: Probability at or above which a pixel is tumour.
        name: Metric name shown in logs (default ``"dice"``).
    """

    def __init__(self, threshold: float = 0.5, name: str = "dice", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.threshold = float(threshold)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        """Accumulate the per-image Dice of one batch (``sample_weight`` is not supported)."""
        if sample_weight is not None:
            raise ValueError("DiceMetric does not support sample_weight")
        scores = _hard_dice_per_image(y_true, y_pred, self.threshold)
        self.total.assign_add(ops.sum(scores))
        self.count.assign_add(ops.cast(ops.shape(scores)[0], "float32"))

    def result(self) -> Any:
        """Return the mean per-image Dice (0 before any update)."""
        return ops.where(self.count > 0, self.total / ops.maximum(self.count, 1.0), 0.0)

    def reset_state(self) -> None:
        """Forget all images seen."""
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self) -> dict:
        """Return the constructor arguments."""
        return {**super().get_config(), "threshold": self.threshold}


LOSSES: dict[str, tuple[Any, str]] = {
    "bce_dice": (bce_dice_loss, f"BCE + soft Dice (smooth {DEFAULT_SMOOTH:g})"),
    "bce_focal_tversky": (
        bce_focal_tversky_loss,
        f"BCE + focal Tversky (alpha {TVERSKY_ALPHA:g}, beta {TVERSKY_BETA:g}, "
        f"gamma {FOCAL_TVERSKY_GAMMA:g}, smooth {DEFAULT_SMOOTH:g})",
    ),
}
"""Training losses by name: ``(function, description for the artifact's recipe)``."""


def training_loss(name: str) -> tuple[Any, str]:
    """Look up a training loss of :data:`LOSSES` by name: ``(function, description)``.

    Raises:
        ValueError: Naming the allowed and received values.
    """
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}; received {name!r}")
    return LOSSES[name]
