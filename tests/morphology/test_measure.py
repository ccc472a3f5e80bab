from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.draw import disk
from skimage.measure import regionprops

from morphology import FEATURE_UNITS, format_record, measure
from morphology.perimeter import contour_perimeter

SQRT3 = math.sqrt(3.0)


def rectangle(rows: int, cols: int, pad: int = 3) -> np.ndarray:
    mask = np.zeros((rows + 2 * pad, cols + 2 * pad), dtype=bool)
    mask[pad : pad + rows, pad : pad + cols] = True
    return mask


def disk_mask(radius: int) -> np.ndarray:
    size = 2 * radius + 10
    mask = np.zeros((size, size), dtype=bool)
    mask[disk((size // 2, size // 2), radius)] = True
    return mask


def tilted_ellipse(a: float, b: float, angle_deg: float, size: int = 160) -> np.ndarray:
    """Ellipse with semi-axes a (major) and b, major axis at angle_deg CCW on screen."""
    r, c = np.mgrid[0:size, 0:size].astype(float)
    x = c - size / 2
    y = size / 2 - r  # screen "up"
    t = math.radians(angle_deg)
    u = x * math.cos(t) + y * math.sin(t)
    v = -x * math.sin(t) + y * math.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def ramanujan(a: float, b: float) -> float:
    h = ((a - b) / (a + b)) ** 2
    return math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))


# --- rectangles ---------------------------------------------------------------------------


def test_rectangle_isotropic_known_answers():
    rec = measure(rectangle(40, 60), spacing_cm=(0.05, 0.05), spacing_source="dicom")
    assert rec["area_cm2"] == pytest.approx(40 * 60 * 0.05 * 0.05, rel=1e-12)
    assert rec["width_cm"] == pytest.approx(3.0, rel=1e-12)
    assert rec["height_cm"] == pytest.approx(2.0, rel=1e-12)
    assert rec["extent"] == 1.0
    assert rec["solidity"] == 1.0
    assert rec["perimeter_cm"] == pytest.approx(2 * (3.0 + 2.0), rel=0.03)
    # Uniform rectangle of side L: 4*sqrt(L**2/12) = 2L/sqrt(3), exact with the 1/12 term.
    assert rec["major_axis_cm"] == pytest.approx(2 * 3.0 / SQRT3, rel=1e-9)
    assert rec["minor_axis_cm"] == pytest.approx(2 * 2.0 / SQRT3, rel=1e-9)
    assert rec["eccentricity"] == pytest.approx(math.sqrt(1 - (2.0 / 3.0) ** 2), rel=1e-9)
    assert rec["max_feret_cm"] == pytest.approx(math.hypot(3.0, 2.0), rel=1e-12)
    assert rec["orientation_deg"] == pytest.approx(0.0, abs=1e-9)
    assert rec["equivalent_diameter_cm"] == pytest.approx(math.sqrt(4 * 6.0 / math.pi))
    assert (rec["centroid_row_px"], rec["centroid_col_px"]) == (3 + 19.5, 3 + 29.5)
    assert rec["n_components"] == 1
    assert (rec["area_px"], rec["width_px"], rec["height_px"]) == (2400, 60, 40)
    assert rec["spacing_source"] == "dicom"
    assert (rec["row_spacing_cm"], rec["col_spacing_cm"]) == (0.05, 0.05)


def test_raw_marching_squares_rectangle_is_exact():
    # Each of the 4 corners is cut by a half-pixel diagonal: 2(w+h) - 4 + 4*sqrt(2)/2.
    expected = 2 * (40 + 60) - 4 + 2 * math.sqrt(2)
    assert contour_perimeter(rectangle(40, 60), smoothing_passes=0) == pytest.approx(expected)
    assert contour_perimeter(rectangle(40, 60), (0.5, 0.5), 0) == pytest.approx(expected / 2)


def test_rectangle_anisotropic_known_answers():
    rec = measure(rectangle(30, 40), spacing_cm=(0.1, 0.05), spacing_source="user")
    assert rec["area_cm2"] == pytest.approx(30 * 40 * 0.1 * 0.05, rel=1e-12)
    assert rec["height_cm"] == pytest.approx(3.0, rel=1e-12)
    assert rec["width_cm"] == pytest.approx(2.0, rel=1e-12)
    assert rec["perimeter_cm"] == pytest.approx(2 * (3.0 + 2.0), rel=0.03)
    assert rec["major_axis_cm"] == pytest.approx(2 * 3.0 / SQRT3, rel=1e-9)
    assert rec["minor_axis_cm"] == pytest.approx(2 * 2.0 / SQRT3, rel=1e-9)
    assert rec["max_feret_cm"] == pytest.approx(math.hypot(3.0, 2.0), rel=1e-12)
    assert rec["orientation_deg"] == pytest.approx(90.0)  # physically taller than wide
    assert rec["extent"] == 1.0
    assert rec["solidity"] == 1.0
    # Pixel values stay pixel values.
    assert (rec["area_px"], rec["width_px"], rec["height_px"]) == (1200, 40, 30)


# --- disks and ellipses -------------------------------------------------------------------


def test_large_disk_known_answers():
    r, s = 60, 0.1
    rec = measure(disk_mask(r), spacing_cm=(s, s), spacing_source="assumed")
    rc = r * s
    assert rec["area_cm2"] == pytest.approx(math.pi * rc**2, rel=0.01)
    assert rec["perimeter_cm"] == pytest.approx(2 * math.pi * rc, rel=0.03)
    assert rec["circularity"] == pytest.approx(1.0, abs=0.05)
    assert rec["equivalent_diameter_cm"] == pytest.approx(2 * rc, rel=0.01)
    assert rec["major_axis_cm"] == pytest.approx(2 * rc, rel=0.01)
    assert rec["minor_axis_cm"] == pytest.approx(2 * rc, rel=0.01)
    assert rec["eccentricity"] < 0.05
    assert rec["max_feret_cm"] == pytest.approx(2 * rc, rel=0.02)
    assert rec["solidity"] > 0.98
    assert rec["extent"] == pytest.approx(math.pi / 4, rel=0.02)


def test_isotropic_values_agree_with_regionprops():
    mask = tilted_ellipse(50, 20, 30)
    props = regionprops(mask.astype(np.uint8))[0]
    rec = measure(mask)
    assert rec["perimeter_px"] == pytest.approx(props.perimeter, rel=0.05)
    # Same moments plus the 1/12 pixel-size term on both eigenvalues.
    assert rec["major_axis_px"] == pytest.approx(math.sqrt(props.axis_major_length**2 + 16 / 12))
    assert rec["minor_axis_px"] == pytest.approx(math.sqrt(props.axis_minor_length**2 + 16 / 12))
    assert rec["max_feret_px"] == pytest.approx(props.feret_diameter_max, rel=0.02)
    assert rec["solidity"] == pytest.approx(props.solidity)
    assert rec["extent"] == pytest.approx(props.extent)
    assert rec["area_px"] == props.area


def test_anisotropic_disk_is_a_physical_ellipse():
    r, row, col = 60, 0.1, 0.05
    rec = measure(disk_mask(r), spacing_cm=(row, col), spacing_source="user")
    assert rec["area_cm2"] == pytest.approx(math.pi * (r * row) * (r * col), rel=0.01)
    assert rec["major_axis_cm"] == pytest.approx(2 * r * row, rel=0.01)
    assert rec["minor_axis_cm"] == pytest.approx(2 * r * col, rel=0.01)
    assert rec["eccentricity"] == pytest.approx(math.sqrt(1 - 0.25), abs=0.01)
    assert rec["orientation_deg"] == pytest.approx(90.0)
    assert rec["perimeter_cm"] == pytest.approx(ramanujan(r * row, r * col), rel=0.03)
    assert rec["max_feret_cm"] == pytest.approx(2 * r * row, rel=0.02)
    assert rec["height_cm"] == pytest.approx(rec["height_px"] * row)
    assert rec["width_cm"] == pytest.approx(rec["width_px"] * col)


@pytest.mark.parametrize("angle", [0.0, 30.0, -45.0, 60.0, 90.0])
def test_orientation_of_tilted_ellipse(angle):
    rec = measure(tilted_ellipse(60, 20, angle))
    assert rec["orientation_deg"] == pytest.approx(angle, abs=1.0)
    assert rec["major_axis_px"] == pytest.approx(120, rel=0.02)
    assert rec["minor_axis_px"] == pytest.approx(40, rel=0.03)
    assert -90.0 < rec["orientation_deg"] <= 90.0


# --- policies -----------------------------------------------------------------------------


def test_no_spacing_reports_pixels_only():
    rec = measure(rectangle(10, 20))
    assert not [k for k in rec if k.endswith(("_cm", "_cm2"))]
    assert rec["spacing_source"] == "none"
    for key in ("area_px", "perimeter_px", "width_px", "height_px", "equivalent_diameter_px"):
        assert key in rec
    for key in ("major_axis_px", "minor_axis_px", "max_feret_px", "circularity", "solidity"):
        assert key in rec
    assert rec["area_px"] == 200
    assert measure(rectangle(10, 20), spacing_source="none") == rec


@pytest.mark.parametrize("spacing", [None, (0.1, 0.05)])
def test_empty_mask_policy(spacing):
    source = None if spacing is None else "dicom"
    img = np.full((8, 9), 7.0)
    rec = measure(np.zeros((8, 9), dtype=np.uint8), spacing, image=img, spacing_source=source)
    assert rec["n_components"] == 0
    assert rec["area_px"] == 0
    if spacing is not None:
        assert rec["area_cm2"] == 0.0
    others = {k: v for k, v in rec.items() if not k.startswith(("area", "n_", "spacing", "row_"))}
    others.pop("col_spacing_cm", None)
    assert others, "shape descriptors must be present"
    assert all(v is None for v in others.values()), others


def test_two_components_union_policy():
    mask = np.zeros((40, 60), dtype=bool)
    mask[5:15, 5:15] = True
    mask[20:30, 40:55] = True
    rec = measure(mask, (0.1, 0.1), spacing_source="user")
    assert rec["n_components"] == 2
    assert rec["area_px"] == 100 + 150
    assert rec["width_px"] == 55 - 5
    assert rec["height_px"] == 30 - 5
    first, second = np.zeros_like(mask), np.zeros_like(mask)
    first[5:15, 5:15] = True
    second[20:30, 40:55] = True
    parts = measure(first)["perimeter_px"] + measure(second)["perimeter_px"]
    assert rec["perimeter_px"] == pytest.approx(parts)
    assert rec["perimeter_cm"] == pytest.approx(parts * 0.1)
    assert rec["solidity"] < 1.0
    assert rec["extent"] == pytest.approx(250 / (50 * 25))


def test_diagonal_neighbours_are_one_component():
    mask = np.zeros((6, 6), dtype=bool)
    mask[1, 1] = mask[2, 2] = True
    assert measure(mask)["n_components"] == 1


def test_intensity_statistics_match_numpy():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(50, 60)).astype(np.uint8)
    mask = tilted_ellipse(20, 10, 15, size=50)[:, :50]
    mask = np.pad(mask, ((0, 0), (0, 10)))
    rec = measure(mask, image=image)
    inside = image[mask].astype(float)
    assert rec["mean_intensity"] == pytest.approx(inside.mean())
    assert rec["std_intensity"] == pytest.approx(inside.std())
    assert measure(mask)["mean_intensity"] is None


def test_255_and_01_masks_equal_bool():
    mask = tilted_ellipse(30, 12, 20, size=80)
    expected = measure(mask)
    assert measure(mask.astype(np.uint8)) == expected
    assert measure(mask.astype(np.uint8) * 255) == expected
    assert measure(mask.astype(np.int64)) == expected


def test_single_pixel_has_nonzero_axes():
    rec = measure(np.ones((1, 1), dtype=bool), (0.2, 0.1), spacing_source="user")
    assert rec["major_axis_cm"] == pytest.approx(4 * math.sqrt(0.2**2 / 12))
    assert rec["minor_axis_cm"] == pytest.approx(4 * math.sqrt(0.1**2 / 12))
    assert rec["max_feret_cm"] == pytest.approx(math.hypot(0.2, 0.1))


def test_record_holds_plain_python_values():
    image = np.arange(100, dtype=np.float32).reshape(10, 10)
    rec = measure(rectangle(4, 4), (0.1, 0.1), image=image, spacing_source="user")
    assert all(v is None or type(v) in (int, float, str) for v in rec.values())


# --- units and display --------------------------------------------------------------------


def test_units_cover_every_key_and_format_record():
    with_spacing = measure(rectangle(5, 7), (0.1, 0.1), spacing_source="dicom")
    without = measure(rectangle(5, 7))
    assert set(with_spacing) | set(without) == set(FEATURE_UNITS)
    rows = format_record(with_spacing)
    assert [name for name, _, _ in rows] == list(with_spacing)
    units = {name: unit for name, _, unit in rows}
    assert units["area_cm2"] == "cm2"
    assert units["perimeter_cm"] == "cm"
    assert units["area_px"] == "px2"
    assert units["orientation_deg"] == "deg"
    assert units["circularity"] == "1"
    assert all(unit != "" for name, unit in units.items() if name != "spacing_source")


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mask": np.zeros((3, 4, 2), bool)}, r"2-D .*received shape \(3, 4, 2\)"),
        ({"mask": np.zeros(5, bool)}, r"2-D .*received shape \(5,\)"),
        ({"mask": np.zeros((0, 4), bool)}, "must not be empty"),
        ({"mask": np.array([[0, 2], [1, 0]])}, "binary .*found non-binary values 2$"),
        ({"mask": np.array([[1, 255], [0, 0]])}, "found values 0, 1, 255, which mixes"),
        ({"mask": np.array([[0.0, 1.0]])}, "bool or integer; received float64"),
        ({"spacing_cm": (0.1, -0.1), "spacing_source": "user"}, r"positive finite.*-0\.1"),
        ({"spacing_cm": (0.0, 0.1), "spacing_source": "user"}, "positive finite"),
        ({"spacing_cm": (float("nan"), 0.1), "spacing_source": "user"}, "positive finite"),
        ({"spacing_cm": (0.1, 0.1, 0.1), "spacing_source": "user"}, "pair"),
        ({"spacing_cm": 0.1, "spacing_source": "user"}, r"pair.*received 0\.1"),
        ({"spacing_cm": ("a", "b"), "spacing_source": "user"}, "positive finite"),
        ({"spacing_cm": (True, 1.0), "spacing_source": "user"}, "positive finite"),
        ({"spacing_cm": (0.1, 0.1)}, r"'dicom', 'user', 'assumed'.*received None"),
        ({"spacing_cm": (0.1, 0.1), "spacing_source": "guess"}, r"'assumed'.*received 'guess'"),
        ({"spacing_cm": (0.1, 0.1), "spacing_source": "none"}, "received 'none'"),
        ({"spacing_source": "dicom"}, r"None or 'none' when spacing_cm is None.*'dicom'"),
        ({"image": np.zeros((5, 5))}, r"image shape \(5, 5\) does not match mask shape \(4, 4\)"),
        ({"image": np.full((4, 4), "x")}, "image dtype must be numeric"),
        ({"image": np.full((4, 4), np.nan)}, "NaN or infinite"),
    ],
)
def test_invalid_inputs_raise_value_error(kwargs, message):
    args = {"mask": np.ones((4, 4), dtype=bool), **kwargs}
    with pytest.raises(ValueError, match=message):
        measure(**args)


# --- properties ---------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(1, 25),
    cols=st.integers(1, 25),
    row_cm=st.floats(0.01, 0.5),
    col_cm=st.floats(0.01, 0.5),
)
def test_rectangles_are_exact_for_any_spacing(rows, cols, row_cm, col_cm):
    rec = measure(rectangle(rows, cols, pad=1), (row_cm, col_cm), spacing_source="user")
    assert rec["area_cm2"] == pytest.approx(rows * cols * row_cm * col_cm)
    assert rec["height_cm"] == pytest.approx(rows * row_cm)
    assert rec["width_cm"] == pytest.approx(cols * col_cm)
    assert rec["max_feret_cm"] == pytest.approx(math.hypot(rows * row_cm, cols * col_cm))
    big, small = sorted((rows * row_cm, cols * col_cm), reverse=True)
    assert rec["major_axis_cm"] == pytest.approx(2 * big / SQRT3)
    assert rec["minor_axis_cm"] == pytest.approx(2 * small / SQRT3)
    assert rec["max_feret_cm"] >= max(rec["width_cm"], rec["height_cm"])
    assert 0 < rec["perimeter_cm"] <= 2 * (rows * row_cm + cols * col_cm)
