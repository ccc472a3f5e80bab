"""Morphometry of one binary tumour mask as a single flat record.

Geometry model: each mask pixel is a rectangle of ``row_cm`` x ``col_cm``
(``1 x 1`` without a spacing). Every physical quantity is computed from
coordinates scaled to that geometry, so anisotropic pixels are handled
exactly rather than through ``regionprops`` (which refuses anisotropic
perimeters).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np
from skimage.measure import label, regionprops

from morphology.perimeter import contour_perimeter
from neurostack.errors import InputImageError

Record = dict[str, float | int | str | None]
"""One flat morphometry record."""

SPACING_SOURCES: tuple[str, ...] = ("dicom", "user", "assumed")
"""Allowed ``spacing_source`` values when a spacing is given."""

NO_SPACING_SOURCE = "none"
"""The ``spacing_source`` reported when no spacing is known."""

FEATURE_UNITS: dict[str, str] = {
    "area_cm2": "cm2",
    "perimeter_cm": "cm",
    "width_cm": "cm",
    "height_cm": "cm",
    "equivalent_diameter_cm": "cm",
    "major_axis_cm": "cm",
    "minor_axis_cm": "cm",
    "max_feret_cm": "cm",
    "area_px": "px2",
    "perimeter_px": "px",
    "width_px": "px",
    "height_px": "px",
    "equivalent_diameter_px": "px",
    "major_axis_px": "px",
    "minor_axis_px": "px",
    "max_feret_px": "px",
    "circularity": "1",
    "eccentricity": "1",
    "solidity": "1",
    "extent": "1",
    "orientation_deg": "deg",
    "centroid_row_px": "px",
    "centroid_col_px": "px",
    "n_components": "count",
    "mean_intensity": "a.u.",
    "std_intensity": "a.u.",
    "spacing_source": "",
    "row_spacing_cm": "cm",
    "col_spacing_cm": "cm",
}
"""Unit of every key :func:`measure` can return, for display tables."""

RENAMED_FEATURES: dict[str, str] = {
    "centroid_row": "centroid_row_px",
    "centroid_col": "centroid_col_px",
}
"""Earlier key -> current key, for records written before a key gained its unit."""

_LENGTHS = ("equivalent_diameter", "major_axis", "minor_axis", "max_feret")
_SHARED = (
    "circularity",
    "eccentricity",
    "solidity",
    "extent",
    "orientation_deg",
    "centroid_row_px",
    "centroid_col_px",
    "n_components",
    "mean_intensity",
    "std_intensity",
)


def measure(
    mask: np.ndarray,
    spacing_cm: Sequence[float] | None = None,
    image: np.ndarray | None = None,
    spacing_source: str | None = None,
) -> Record:
    """Measure a binary tumour mask.

    Keys with a spacing: ``area_cm2, perimeter_cm, width_cm, height_cm,
    equivalent_diameter_cm, major_axis_cm, minor_axis_cm, max_feret_cm``,
    the shared keys below, ``area_px, perimeter_px, width_px, height_px``,
    ``spacing_source, row_spacing_cm, col_spacing_cm``. Without a spacing only
    pixel units are reported (``area_px, perimeter_px, width_px, height_px,
    equivalent_diameter_px, major_axis_px, minor_axis_px, max_feret_px``), the
    shared keys and ``spacing_source="none"``; no key ends in ``_cm``/``_cm2``
    (the spacing keys are omitted too). Shared keys: ``circularity,
    eccentricity, solidity, extent, orientation_deg, centroid_row_px,
    centroid_col_px, n_components, mean_intensity, std_intensity``.

    Definitions and policies:

    * Several components (8-connectivity): the union of all tumour pixels is
      measured as one object. Area, intensity, centroid and the bounding box
      (``width`` = columns spanned x col spacing, ``height`` = rows spanned x
      row spacing) cover the union; ``perimeter`` is the sum of every boundary
      (all components and holes); axes, eccentricity, orientation, solidity,
      extent and max Feret describe the union as a single shape.
    * Empty mask: ``area_*`` is 0 and ``n_components`` 0; every other
      measurement (shape, extents, centroid, intensity) is ``None``.
    * ``perimeter``: marching-squares contour at level 0.5, smoothed once,
      vertices scaled to physical units before summing (see
      :mod:`morphology.perimeter`; about 1 % accurate on smooth shapes).
      ``circularity = 4*pi*area/perimeter**2`` in those units; it is
      unreliable (and can exceed 1) for objects only a few pixels across.
    * Axes: ``4*sqrt(lambda)`` of the eigenvalues of the physical coordinate
      covariance plus the pixel-size term ``row**2/12`` / ``col**2/12`` (so a
      single pixel has non-zero axes; ``regionprops`` omits this term).
      ``eccentricity = sqrt(1 - lambda_min/lambda_max)``.
    * ``orientation_deg``: angle of the major axis from the image's column
      (horizontal) axis, counter-clockwise as displayed (rows run downwards),
      in ``(-90, 90]``; 0 when the two axes are equal (undefined direction).
    * ``max_feret``: largest distance between corners of the pixel rectangles
      on the convex hull, in physical units.
    * ``solidity`` and ``extent`` are area ratios (to the convex hull, from
      ``regionprops`` of the union, and to the bounding box); area ratios do
      not change with the spacing.
    * Intensity: mean and population standard deviation (``ddof=0``) of
      ``image`` over the mask pixels; ``None`` without an image.

    Args:
        mask: ``(H, W)`` bool array, or integer array with values in
            ``{0, 1}`` or ``{0, 255}``.
        spacing_cm: ``(row_cm, col_cm)`` pixel spacing, positive and finite, or
            ``None`` when unknown.
        image: Optional ``(H, W)`` numeric greyscale image matching ``mask``.
        spacing_source: ``"dicom"``, ``"user"`` or ``"assumed"``; required
            with a spacing. Without one it must be ``None`` or ``"none"``.

    Returns:
        A flat dict of plain Python ``float``/``int``/``str``/``None`` values.

    Raises:
        ValueError: On any invalid argument; the message names the problem.
    """
    binary = _validate_mask(mask)
    spacing = _validate_spacing(spacing_cm)
    source = _validate_source(spacing_source, spacing)
    grey = _validate_image(image, binary)

    row_cm, col_cm = spacing if spacing is not None else (1.0, 1.0)
    n_pixels = int(np.count_nonzero(binary))
    values: dict[str, Any] = {
        "area": n_pixels * row_cm * col_cm,
        "area_px": n_pixels,
        "n_components": 0,
    }
    if n_pixels:
        values.update(_shape_values(binary, row_cm, col_cm))
        if grey is not None:
            inside = grey[binary].astype(np.float64)
            if not np.all(np.isfinite(inside)):
                raise ValueError("image has NaN or infinite values inside the mask")
            values["mean_intensity"] = float(inside.mean())
            values["std_intensity"] = float(inside.std())
    return _assemble(values, spacing, source)


def format_record(record: Record) -> list[tuple[str, float | int | str | None, str]]:
    """Turn a :func:`measure` record into display rows.

    Args:
        record: A record returned by :func:`measure`.

    Returns:
        ``(name, value, unit)`` tuples in the record's key order; the unit is
        taken from :data:`FEATURE_UNITS` (``""`` for unknown keys).
    """
    return [(name, value, FEATURE_UNITS.get(name, "")) for name, value in record.items()]


def _assemble(values: dict[str, Any], spacing: tuple[float, float] | None, source: str) -> Record:
    """Lay out the record keys in their fixed order."""
    get = values.get
    record: Record = {}
    if spacing is not None:
        record["area_cm2"] = float(values["area"])
        record["perimeter_cm"] = get("perimeter")
        record["width_cm"] = get("width")
        record["height_cm"] = get("height")
        for name in _LENGTHS:
            record[f"{name}_cm"] = get(name)
    else:
        record["area_px"] = values["area_px"]
        record["perimeter_px"] = get("perimeter_px")
        record["width_px"] = get("width_px")
        record["height_px"] = get("height_px")
        for name in _LENGTHS:
            record[f"{name}_px"] = get(name)
    for name in _SHARED:
        record[name] = get(name)
    if spacing is not None:
        for name in ("area_px", "perimeter_px", "width_px", "height_px"):
            record[name] = get(name)
    record["spacing_source"] = source
    if spacing is not None:
        record["row_spacing_cm"], record["col_spacing_cm"] = spacing
    return record


def _shape_values(binary: np.ndarray, row_cm: float, col_cm: float) -> dict[str, Any]:
    """Every shape measurement of a non-empty mask, in spacing units."""
    rows, cols = np.nonzero(binary)
    n_pixels = rows.size
    area = n_pixels * row_cm * col_cm
    height_px = int(rows.max() - rows.min() + 1)
    width_px = int(cols.max() - cols.min() + 1)
    perimeter_px = contour_perimeter(binary)
    perimeter = (
        perimeter_px if row_cm == col_cm == 1.0 else contour_perimeter(binary, (row_cm, col_cm))
    )
    major, minor, eccentricity, orientation = _moment_axes(rows, cols, row_cm, col_cm)
    props = regionprops(binary.astype(np.uint8))[0]
    return {
        "perimeter": perimeter,
        "width": width_px * col_cm,
        "height": height_px * row_cm,
        "area_px": n_pixels,
        "perimeter_px": perimeter_px,
        "width_px": width_px,
        "height_px": height_px,
        "circularity": 4.0 * math.pi * area / perimeter**2 if perimeter > 0 else None,
        "equivalent_diameter": math.sqrt(4.0 * area / math.pi),
        "major_axis": major,
        "minor_axis": minor,
        "max_feret": _max_feret(binary, row_cm, col_cm),
        "eccentricity": eccentricity,
        "solidity": float(props.solidity),
        "extent": n_pixels / (width_px * height_px),
        "orientation_deg": orientation,
        "centroid_row_px": float(rows.mean()),
        "centroid_col_px": float(cols.mean()),
        "n_components": int(label(binary, connectivity=2).max()),
    }


def _moment_axes(
    rows: np.ndarray, cols: np.ndarray, row_cm: float, col_cm: float
) -> tuple[float, float, float, float]:
    """Major/minor axis, eccentricity and orientation from second moments."""
    y = rows * row_cm
    x = cols * col_cm
    dy = y - y.mean()
    dx = x - x.mean()
    var_y = float(np.mean(dy * dy)) + row_cm**2 / 12.0
    var_x = float(np.mean(dx * dx)) + col_cm**2 / 12.0
    cov_xy = float(np.mean(dx * dy))
    half_diff = math.hypot((var_x - var_y) / 2.0, cov_xy)
    mid = (var_x + var_y) / 2.0
    lam_max = mid + half_diff
    lam_min = max(mid - half_diff, 0.0)
    eccentricity = math.sqrt(max(0.0, 1.0 - lam_min / lam_max))
    if half_diff <= 1e-12 * lam_max:
        orientation = 0.0
    else:
        # Displayed y axis points up, i.e. against the row index: flip the sign
        # of the row/column covariance.
        orientation = 0.5 * math.degrees(math.atan2(-2.0 * cov_xy, var_x - var_y))
        if orientation <= -90.0:
            orientation += 180.0
    return 4.0 * math.sqrt(lam_max), 4.0 * math.sqrt(lam_min), eccentricity, orientation


def _max_feret(binary: np.ndarray, row_cm: float, col_cm: float) -> float:
    """Largest caliper diameter of the union of pixel rectangles."""
    occupied = np.flatnonzero(binary.any(axis=1))
    sub = binary[occupied]
    first = sub.argmax(axis=1)
    last = sub.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
    # Hull vertices can only be corners of the first/last pixel in each row.
    r = np.concatenate([occupied, occupied + 1, occupied, occupied + 1]).astype(np.float64)
    c = np.concatenate([first, first, last + 1, last + 1]).astype(np.float64)
    hull = _convex_hull(np.column_stack([r * row_cm, c * col_cm]))
    diff = hull[:, None, :] - hull[None, :, :]
    return float(np.sqrt((diff**2).sum(axis=-1).max()))


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Convex hull vertices of 2-D points (Andrew's monotone chain)."""
    pts = np.unique(points, axis=0)
    if len(pts) < 3:
        return pts

    def half(seq: np.ndarray) -> list[np.ndarray]:
        chain: list[np.ndarray] = []
        for p in seq:
            while len(chain) >= 2:
                o, a = chain[-2], chain[-1]
                if (a[0] - o[0]) * (p[1] - o[1]) - (a[1] - o[1]) * (p[0] - o[0]) > 0:
                    break
                chain.pop()
            chain.append(p)
        return chain

    lower = half(pts)
    upper = half(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])


def _validate_mask(mask: Any) -> np.ndarray:
    """Return the mask as a boolean array or raise ``ValueError``."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise InputImageError(f"mask must be a 2-D (H, W) array; received shape {arr.shape}")
    if arr.size == 0:
        raise InputImageError(f"mask must not be empty; received shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputImageError(
            f"mask dtype must be bool or integer; received {arr.dtype} "
            "(threshold a probability map before measuring)"
        )
    present = {int(v) for v in np.unique(arr)}
    if present <= {0, 1}:
        return arr == 1
    if present <= {0, 255}:
        return arr == 255
    allowed = "mask must be binary (bool, {0, 1} or {0, 255})"
    unexpected = sorted(present - {0, 1, 255})
    if not unexpected:
        raise InputImageError(
            f"{allowed}; found values {', '.join(map(str, sorted(present)))}, "
            "which mixes the {0, 1} and {0, 255} conventions"
        )
    shown = ", ".join(str(v) for v in unexpected[:10])
    more = "" if len(unexpected) <= 10 else f" and {len(unexpected) - 10} more"
    raise InputImageError(f"{allowed}; found non-binary values {shown}{more}")


def _validate_spacing(spacing_cm: Any) -> tuple[float, float] | None:
    """Return ``(row_cm, col_cm)`` as floats, ``None``, or raise ``ValueError``."""
    if spacing_cm is None:
        return None
    allowed = "spacing_cm must be None or a (row_cm, col_cm) pair of positive finite numbers"
    try:
        items = list(spacing_cm)
    except TypeError:
        raise ValueError(f"{allowed}; received {spacing_cm!r}") from None
    ok = len(items) == 2 and all(
        isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(float(v)) and float(v) > 0
        for v in items
    )
    if not ok:
        raise ValueError(f"{allowed}; received {spacing_cm!r}")
    return float(items[0]), float(items[1])


def _validate_source(source: Any, spacing: tuple[float, float] | None) -> str:
    """Return the record's ``spacing_source`` or raise ``ValueError``."""
    if spacing is None:
        if source is None or source == NO_SPACING_SOURCE:
            return NO_SPACING_SOURCE
        raise ValueError(
            f"spacing_source must be None or {NO_SPACING_SOURCE!r} when spacing_cm is None; "
            f"received {source!r}"
        )
    if source not in SPACING_SOURCES:
        raise ValueError(
            f"spacing_source must be one of {', '.join(map(repr, SPACING_SOURCES))} "
            f"when spacing_cm is given; received {source!r}"
        )
    return str(source)


def _validate_image(image: Any, binary: np.ndarray) -> np.ndarray | None:
    """Return the image as an array, ``None``, or raise ``ValueError``."""
    if image is None:
        return None
    arr = np.asarray(image)
    if arr.shape != binary.shape:
        raise InputImageError(f"image shape {arr.shape} does not match mask shape {binary.shape}")
    if arr.dtype.kind not in "biuf":
        raise InputImageError(f"image dtype must be numeric; received {arr.dtype}")
    return arr
