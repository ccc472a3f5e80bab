"""Brain box, crop, resize and mapping crops back onto the original grid."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from neurostack.preprocess import (
    CropBox,
    almost_blank,
    crop,
    find_brain_box,
    paste_crop,
    resize_square,
    to_rgb,
)

# The 5 x 5 Gaussian blur has the 1-D kernel [1, 4, 6, 4, 1] / 16. For a rectangle of
# intensity 120 the first pixel outside blurs to 120 * 5/16 = 37.5 (< threshold 45) and the
# first pixel inside to 120 * 11/16 = 82.5, a corner to 120 * (11/16)**2 = 56.7 (> 45): the
# detected component is exactly the rectangle.
VALUE = 120


def _rect(shape, r0, c0, r1, c1, value=VALUE) -> np.ndarray:
    g = np.zeros(shape, np.uint8)
    g[r0:r1, c0:c1] = value
    return g


@pytest.mark.parametrize(("r0", "c0", "r1", "c1"), [(20, 30, 70, 110), (11, 50, 95, 77)])
def test_rectangle_is_found_with_margin(r0: int, c0: int, r1: int, c1: int) -> None:
    g = _rect((100, 140), r0, c0, r1, c1)
    assert find_brain_box(g, margin=0) == CropBox(r0, c0, r1, c1)
    assert find_brain_box(g) == CropBox(r0 - 2, c0 - 2, r1 + 2, c1 + 2)  # default margin 2
    assert find_brain_box(g, margin=5) == CropBox(r0 - 5, c0 - 5, r1 + 5, c1 + 5)


def test_box_is_clipped_to_the_image() -> None:
    g = _rect((100, 140), 0, 30, 70, 140)
    assert find_brain_box(g, margin=4) == CropBox(0, 26, 74, 140)


def test_largest_component_wins_and_small_specks_are_ignored() -> None:
    g = _rect((120, 160), 30, 40, 100, 130)
    g[5:15, 5:15] = 255  # a bright label in the corner, smaller than the head
    assert find_brain_box(g, margin=0) == CropBox(30, 40, 100, 130)


@pytest.mark.parametrize("value", [0, 30])
def test_blank_or_dark_image_gives_the_full_box(value: int) -> None:
    g = np.full((64, 80), value, np.uint8)
    assert find_brain_box(g) == CropBox(0, 0, 64, 80)


def test_tiny_component_gives_the_full_box() -> None:
    g = _rect((100, 140), 40, 40, 48, 48, 200)  # 8 px < 10 % of the height
    assert find_brain_box(g) == CropBox(0, 0, 100, 140)


def test_find_brain_box_rejects_non_2d() -> None:
    with pytest.raises(ValueError, match=r"2-D \(H, W\); received shape \(10, 10, 3\)"):
        find_brain_box(np.zeros((10, 10, 3), np.uint8))


def test_crop_box_geometry_and_crop() -> None:
    box = CropBox(2, 3, 7, 11)
    assert (box.height, box.width, box.as_tuple()) == (5, 8, (2, 3, 7, 11))
    img = np.arange(12 * 15).reshape(12, 15)
    np.testing.assert_array_equal(crop(img, box), img[2:7, 3:11])
    assert crop(np.zeros((12, 15, 3)), box).shape == (5, 8, 3)


def _disk_mask(shape=(90, 120), center=(45, 65), radius=25) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return ((yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2).astype(np.uint8)


def test_paste_crop_round_trip_at_the_crop_size_is_exact() -> None:
    mask = _disk_mask()
    box = CropBox(12, 30, 80, 101)
    back = paste_crop(crop(mask, box), box, mask.shape)
    assert back.dtype == np.uint8 and back.shape == mask.shape
    inside = np.zeros(mask.shape, bool)
    inside[12:80, 30:101] = True
    np.testing.assert_array_equal(back[inside], mask[inside])
    assert not back[~inside].any()
    # floats keep their values too, and the fill value is used outside the box
    values = np.random.default_rng(0).random((box.height, box.width)).astype(np.float32)
    full = paste_crop(values, box, mask.shape, fill=-1.0)
    assert full.dtype == np.float32
    np.testing.assert_array_equal(full[12:80, 30:101], values)
    assert (full[~inside] == -1.0).all()


def test_paste_crop_from_another_size_is_within_interpolation_tolerance() -> None:
    mask = _disk_mask()
    box = CropBox(12, 30, 80, 101)  # 68 x 71, mapped to and from a 64 x 64 model grid
    small = resize_square(crop(mask, box).astype(np.float32), 64)
    back = paste_crop(small, box, mask.shape) >= 0.5
    disagree = back != mask.astype(bool)
    assert disagree.sum() <= 0.05 * mask.sum()
    # disagreements only on the disk's boundary (within 1 px of an edge)
    edge = cv2.dilate(mask, np.ones((3, 3), np.uint8)) != cv2.erode(mask, np.ones((3, 3), np.uint8))
    assert not (disagree & ~edge).any()
    # a smooth field survives the round trip within a few percent
    yy, xx = np.mgrid[0:90, 0:120]
    field = (np.sin(yy / 15.0) + np.cos(xx / 20.0)).astype(np.float32)
    small = cv2.resize(crop(field, box), (40, 40), interpolation=cv2.INTER_AREA)
    back = paste_crop(small, box, field.shape)
    inner = back[14:78, 32:99] - field[14:78, 32:99]
    assert np.abs(inner).max() < 0.05


@pytest.mark.parametrize(("shape", "size"), [((50, 70), 32), ((20, 30), 64), ((40, 40), 40)])
def test_resize_square_shapes(shape: tuple[int, int], size: int) -> None:
    rng = np.random.default_rng(1)
    g = rng.integers(0, 256, shape, dtype=np.uint8)
    out = resize_square(g, size)
    assert out.shape == (size, size) and out.dtype == np.uint8
    rgb = resize_square(to_rgb(g), size)
    assert rgb.shape == (size, size, 3)
    np.testing.assert_array_equal(rgb[..., 0], out)
    if shape == (size, size):
        np.testing.assert_array_equal(out, g)


def test_resize_square_nearest_keeps_label_values() -> None:
    labels = np.zeros((30, 50), np.uint8)
    labels[5:20, 10:30] = 3
    labels[22:28, 40:48] = 7
    out = resize_square(labels, 64, nearest=True)
    assert set(np.unique(out)) == {0, 3, 7}
    # constant regions stay constant whatever the interpolation
    assert set(np.unique(resize_square(np.full((30, 50), 9, np.uint8), 17))) == {9}


def test_to_rgb() -> None:
    g = np.arange(6, dtype=np.uint8).reshape(2, 3)
    rgb = to_rgb(g)
    assert rgb.shape == (2, 3, 3)
    for ch in range(3):
        np.testing.assert_array_equal(rgb[..., ch], g)


def test_almost_blank_at_the_stated_share_and_level() -> None:
    img = np.zeros((100, 100), np.uint8)
    assert almost_blank(img)
    img.flat[:199] = 21  # 1.99 % above 20
    assert almost_blank(img)
    img.flat[199] = 21  # 2.00 %: no longer blank
    assert not almost_blank(img)
    assert almost_blank(np.full((100, 100), 20, np.uint8))  # 20 itself is background
