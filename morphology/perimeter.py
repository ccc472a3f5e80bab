"""Boundary length of a binary mask, in pixels or physical units.

The boundary is the iso-line at level 0.5 of the zero-padded mask, traced by
marching squares (:func:`skimage.measure.find_contours`). Axis-aligned edges
run along pixel borders and diagonal steps are cut across, so a staircase
does not inflate the length the way counting pixel edges would.

Marching squares on binary data still zig-zags along oblique edges (+5 % on a
large disk), so by default the closed polygon is smoothed once: each vertex is
replaced by ``(prev + 2*self + next) / 4``. That brings disks, ellipses and
oblique shapes to within about 1.5 % of their true perimeter while cutting
each 90-degree corner by about half a pixel (-1 % on a 40 x 60 rectangle).
Objects only a few pixels across are under-estimated either way.

Smoothing is done in pixel coordinates and the vertices are then scaled by
``(row_cm, col_cm)`` before segment lengths are summed; both steps are linear
and commute, so the result is correct for anisotropic pixels as well.
"""

from __future__ import annotations

import numpy as np
from skimage.measure import find_contours


def boundary_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Trace every closed boundary (outer and hole) of a binary mask.

    Args:
        mask: ``(H, W)`` boolean array.

    Returns:
        Closed ``(N, 2)`` arrays of ``(row, col)`` vertices in the mask's pixel
        coordinates (first vertex repeated last).
    """
    padded = np.pad(mask.astype(np.float64), 1, mode="constant", constant_values=0.0)
    return [c - 1.0 for c in find_contours(padded, level=0.5)]


def contour_perimeter(
    mask: np.ndarray,
    spacing: tuple[float, float] = (1.0, 1.0),
    smoothing_passes: int = 1,
) -> float:
    """Total length of all boundaries of a binary mask.

    Outer boundaries of every connected component and the boundaries of holes
    are all included (the same policy as ``regionprops`` perimeter).

    Args:
        mask: ``(H, W)`` boolean array.
        spacing: ``(row, col)`` size of one pixel; ``(1, 1)`` gives pixels.
        smoothing_passes: Number of ``(1, 2, 1) / 4`` vertex smoothing passes;
            0 measures the raw marching-squares polygon.

    Returns:
        The boundary length in the units of ``spacing``; ``0.0`` for an empty
        mask.
    """
    scale = np.asarray(spacing, dtype=np.float64)
    total = 0.0
    for contour in boundary_contours(mask):
        closed_input = len(contour) > 1 and np.array_equal(contour[0], contour[-1])
        ring = contour[:-1] if closed_input else contour
        for _ in range(smoothing_passes):
            ring = 0.25 * np.roll(ring, 1, axis=0) + 0.5 * ring + 0.25 * np.roll(ring, -1, axis=0)
        closed = np.vstack([ring, ring[:1]])
        steps = np.diff(closed * scale, axis=0)
        total += float(np.hypot(steps[:, 0], steps[:, 1]).sum())
    return total
