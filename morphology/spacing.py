"""Pixel spacing assumptions: what a slice's centimetres rest on when the file has none."""

from __future__ import annotations

FIGSHARE_SPACING_MM = 0.49
"""Pixel size usually reported for the figshare 512x512 acquisitions: an assumption."""
FIGSHARE_MATRIX_PX = 512
"""Side of the figshare matrices the assumption was reported for."""


def figshare_assumption_caveat(shape: tuple[int, ...] | None) -> str | None:
    """Why the figshare spacing assumption is unlikely to hold for an image of ``shape``.

    Args:
        shape: ``(height, width, ...)`` of the image in pixels; ``None`` when unknown.

    Returns:
        ``None`` for a 512 x 512 image (or an unknown shape), else one sentence.
    """
    if shape is None:
        return None
    h, w = int(shape[0]), int(shape[1])
    if (h, w) == (FIGSHARE_MATRIX_PX, FIGSHARE_MATRIX_PX):
        return None
    return (f"This image is {w}×{h} px, not a {FIGSHARE_MATRIX_PX}×{FIGSHARE_MATRIX_PX} "
            f"figshare matrix: it was probably resized or cropped, so {FIGSHARE_SPACING_MM} mm "
            "per pixel is unlikely to hold and the centimetres may be wrong by that factor.")
