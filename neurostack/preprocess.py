"""Brain cropping and resizing shared by training and inference.

The crop keeps its box so that every mask computed on the crop maps back onto
the original image pixel for pixel (see :func:`paste_crop`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

TTA_MODES: tuple[str, ...] = ("none", "hflip")
"""Test-time augmentation modes shared by the classifiers and the segmenter: ``"hflip"``
averages the predictions for the crop and for its left-right mirror image (a mirrored
mask is mirrored back), ``"none"`` runs the crop once."""


def check_tta(mode: str) -> str:
    """Return ``mode`` if it is one of :data:`TTA_MODES`, else raise ``ValueError``."""
    if mode not in TTA_MODES:
        raise ValueError(
            f"test-time augmentation must be one of {list(TTA_MODES)}; received {mode!r}"
        )
    return mode


@dataclass(frozen=True)
class CropBox:
    """Half-open pixel box ``[row0, row1) x [col0, col1)`` in original image coordinates."""

    row0: int
    col0: int
    row1: int
    col1: int

    @property
    def height(self) -> int:
        """Box height in pixels."""
        return self.row1 - self.row0

    @property
    def width(self) -> int:
        """Box width in pixels."""
        return self.col1 - self.col0

    def as_tuple(self) -> tuple[int, int, int, int]:
        """Return ``(row0, col0, row1, col1)``."""
        return (self.row0, self.col0, self.row1, self.col1)


BLANK_LEVEL = 20
"""Grey level (0-255) at or below which a pixel counts as background for :func:`almost_blank`."""
BLANK_SHARE = 0.02
"""A slice with a smaller share of pixels above :data:`BLANK_LEVEL` is almost blank."""


def almost_blank(gray: np.ndarray) -> bool:
    """Whether fewer than 2 % of the pixels of a uint8 slice are brighter than 20.

    Args:
        gray: ``(H, W)`` uint8 greyscale slice.
    """
    return float((np.asarray(gray) > BLANK_LEVEL).mean()) < BLANK_SHARE


def find_brain_box(gray: np.ndarray, *, threshold: int = 45, margin: int = 2) -> CropBox:
    """Find the bounding box of the head in a greyscale slice.

    Follows the usual brain-MRI recipe (blur, threshold, open, largest connected
    component). If nothing bright enough is found the whole image is returned.

    Args:
        gray: ``(H, W)`` uint8 greyscale slice.
        threshold: Intensity (0-255) separating head from background.
        margin: Pixels added on each side of the box, clipped to the image.

    Returns:
        The crop box; never empty.
    """
    if gray.ndim != 2:
        raise ValueError(f"gray must be 2-D (H, W); received shape {gray.shape}")
    h, w = gray.shape
    blurred = cv2.GaussianBlur(gray, (5, 5), 0)
    binary = (blurred > threshold).astype(np.uint8)
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8), iterations=2)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n <= 1:
        return CropBox(0, 0, h, w)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, bw, bh = (int(v) for v in stats[largest, :4])
    # A tiny component means the slice is essentially empty; keep everything.
    if bw < 0.1 * w or bh < 0.1 * h:
        return CropBox(0, 0, h, w)
    return CropBox(
        max(0, y - margin), max(0, x - margin), min(h, y + bh + margin), min(w, x + bw + margin)
    )


def crop(image: np.ndarray, box: CropBox) -> np.ndarray:
    """Return ``image[box]`` (works for ``(H, W)`` and ``(H, W, C)`` arrays)."""
    return image[box.row0 : box.row1, box.col0 : box.col1]


def resize_square(image: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """Resize to ``size x size`` (area interpolation when shrinking, cubic when enlarging)."""
    if nearest:
        interp = cv2.INTER_NEAREST
    elif image.shape[0] > size or image.shape[1] > size:
        interp = cv2.INTER_AREA
    else:
        interp = cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interp)


def paste_crop(
    values: np.ndarray, box: CropBox, shape: tuple[int, int], fill: float = 0
) -> np.ndarray:
    """Map an array computed on a resized crop back onto the original image grid.

    Args:
        values: ``(h, w)`` float or integer array computed on the crop at any size.
        box: The crop box the values belong to.
        shape: ``(H, W)`` of the original image.
        fill: Value outside the box.

    Returns:
        ``(H, W)`` array of ``values.dtype`` aligned with the original image.
    """
    resized = cv2.resize(
        values.astype(np.float32), (box.width, box.height), interpolation=cv2.INTER_LINEAR
    )
    out = np.full(shape, fill, dtype=np.float32)
    out[box.row0 : box.row1, box.col0 : box.col1] = resized
    return out.astype(values.dtype) if values.dtype != np.float32 else out


def to_rgb(gray: np.ndarray) -> np.ndarray:
    """Stack a greyscale image into three identical channels."""
    return np.repeat(gray[..., None], 3, axis=-1)
