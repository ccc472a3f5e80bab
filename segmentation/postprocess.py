"""Mask post-processing: pure functions from a probability map to a binary mask.

A post-processing mode is part of the segmenter's operating point, chosen on the
validation patients together with the threshold (``python -m segmentation.evaluate
--split val --sweep ... --choose-threshold``), the way nnU-Net decides on
"keep the largest component" from its cross-validation results.

Modes (:data:`POSTPROCESS_MODES`):

* ``"none"``: the mask is ``probability >= threshold``.
* ``"largest_component"``: of the 8-connected components of that mask, keep the
  one with the largest probability mass (sum of the probabilities of its pixels;
  ties go to the lower label, i.e. the component met first in raster order).
  A mask with zero or one component is returned unchanged. A second, real
  tumour focus is dropped, so the dashboard lets the user switch this off.
"""

from __future__ import annotations

import numpy as np

POSTPROCESS_MODES: tuple[str, ...] = ("none", "largest_component")
"""Allowed values of a segmenter's ``postprocess`` setting."""

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def check_postprocess(mode: str) -> str:
    """Return ``mode`` if it is one of :data:`POSTPROCESS_MODES`, else raise ``ValueError``."""
    if mode not in POSTPROCESS_MODES:
        raise ValueError(f"postprocess must be one of {list(POSTPROCESS_MODES)}; received {mode!r}")
    return mode


def largest_component(
    mask: np.ndarray, probability: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """Keep the 8-connected component of ``mask`` with the largest probability mass.

    Args:
        mask: ``(H, W)`` boolean mask.
        probability: ``(H, W)`` float probabilities; ``None`` ranks components by area.

    Returns:
        ``(kept, n_removed)``: the ``(H, W)`` bool mask with at most one component
        (a new array) and how many components were removed.

    Raises:
        ValueError: If ``mask`` is not 2-D or ``probability`` has another shape.
    """
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W); received shape {mask.shape}")
    if probability is not None and np.shape(probability) != mask.shape:
        raise ValueError(
            f"probability shape {np.shape(probability)} differs from mask shape {mask.shape}"
        )
    labels, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if n <= 1:
        return mask.copy(), 0
    weights = mask.astype(np.float64) if probability is None else np.asarray(probability, float)
    mass = ndimage.sum_labels(weights, labels, index=np.arange(1, n + 1))
    return labels == int(np.argmax(mass)) + 1, n - 1


def probability_to_mask(
    probability: np.ndarray, threshold: float, postprocess: str
) -> tuple[np.ndarray, int]:
    """Threshold a probability map and apply a post-processing mode.

    Args:
        probability: ``(H, W)`` tumour probabilities in ``[0, 1]``.
        threshold: A pixel is tumour when its probability is ``>= threshold``.
        postprocess: One of :data:`POSTPROCESS_MODES`.

    Returns:
        ``(mask, n_removed)``: the ``(H, W)`` bool mask and how many connected
        components the post-processing removed (always 0 for ``"none"``).
    """
    check_postprocess(postprocess)
    mask = np.asarray(probability) >= threshold
    if postprocess == "largest_component":
        return largest_component(mask, probability)
    return mask, 0
