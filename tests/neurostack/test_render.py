"""Mask image, green overlay and PNG encoding."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from neurostack.render import (
    GREEN,
    colourfulness,
    encode_png,
    heatmap_overlay,
    mask_image,
    overlay_mask,
)


def _mask(shape=(40, 60)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[10:25, 20:45] = True
    return m


def _display(shape=(40, 60)) -> np.ndarray:
    rng = np.random.default_rng(0)
    g = rng.integers(20, 230, shape, dtype=np.uint8)
    return np.repeat(g[..., None], 3, axis=-1)


def test_mask_image_values() -> None:
    m = _mask()
    img = mask_image(m)
    assert img.dtype == np.uint8 and img.shape == m.shape
    assert set(np.unique(img)) == {0, 255}
    np.testing.assert_array_equal(img == 255, m)
    assert set(np.unique(mask_image(np.array([[0, 2], [0.5, 0]])))) == {0, 255}
    assert not mask_image(np.zeros((3, 4))).any()


def test_overlay_fill_blends_green_inside_and_keeps_outside() -> None:
    display, m = _display(), _mask()
    before = display.copy()
    out = overlay_mask(display, m, alpha=0.35, contour_px=0)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(display, before)  # input not modified
    np.testing.assert_array_equal(out[~m], display[~m])
    expected = 0.65 * display[m].astype(np.float64) + 0.35 * np.array(GREEN)
    assert np.abs(out[m] - expected).max() <= 1.0  # float32 maths, truncated to uint8
    g = out[m].astype(int)
    assert (g[:, 1] > g[:, 0]).all() and (g[:, 1] > g[:, 2]).all()


def test_overlay_contour_only_touches_pixels_near_the_mask() -> None:
    display, m = _display(), _mask()
    for px in (1, 2, 3):
        out = overlay_mask(display, m, contour_px=px)
        near = cv2.dilate(m.astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8)).astype(
            bool
        )
        np.testing.assert_array_equal(out[~near], display[~near])
        changed = (out != display).any(axis=-1)
        # a 1 px outline lies on the mask's own boundary pixels; thicker ones spill outside
        assert changed[near & ~m].any() == (px > 1)
    # the outline is drawn in the pure colour
    out = overlay_mask(display, m, contour_px=1)
    assert tuple(out[10, 30]) == GREEN


def test_overlay_from_greyscale_and_custom_colour() -> None:
    gray = np.full((20, 30), 100, np.uint8)
    m = np.zeros((20, 30), bool)
    m[5:15, 5:15] = True
    out = overlay_mask(gray, m, color=(255, 0, 0), alpha=1.0, contour_px=0)
    assert out.shape == (20, 30, 3)
    assert (out[m] == (255, 0, 0)).all() and (out[~m] == 100).all()
    assert (overlay_mask(gray, m, alpha=0.0, contour_px=0) == 100).all()
    assert (overlay_mask(gray, np.zeros_like(m), contour_px=3) == 100).all()  # empty mask


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_overlay_rejects_invalid_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha must be in"):
        overlay_mask(_display(), _mask(), alpha=alpha)


def test_overlay_rejects_mask_of_another_shape() -> None:
    with pytest.raises(
        ValueError, match=r"mask shape \(60, 40\) differs from image shape \(40, 60\)"
    ):
        overlay_mask(_display(), _mask((60, 40)))


@pytest.mark.parametrize("kind", ["rgb", "gray"])
def test_encode_png_round_trip(kind: str) -> None:
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (17, 23, 3) if kind == "rgb" else (17, 23), dtype=np.uint8)
    data = encode_png(img)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = Image.open(io.BytesIO(data))
    assert decoded.mode == ("RGB" if kind == "rgb" else "L")  # channel order kept
    np.testing.assert_array_equal(np.asarray(decoded), img)


def test_colourfulness() -> None:
    assert colourfulness(_display()) == 0.0
    assert colourfulness(np.zeros((4, 4), np.uint8)) == 0.0
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 200
    assert colourfulness(red) == pytest.approx(100.0)  # (|200 - 0| + |0 - 0|) / 2


def test_heatmap_overlay() -> None:
    display = np.full((20, 30), 100, np.uint8)
    heat = np.zeros((20, 30), np.float32)
    heat[5:10, 5:10] = 1.0
    heat[12, 12] = 0.5
    out = heatmap_overlay(display, heat)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert (out[heat == 0] == 100).all()  # zero heat leaves the image unchanged
    # heat 1 is JET's dark red (RGB 128, 0, 0) at 45 % opacity over grey 100
    expected = (0.55 * 100 + 0.45 * np.array([128.0, 0.0, 0.0])).astype(np.uint8)  # 112, 55, 55
    np.testing.assert_array_equal(out[7, 7], expected)
    assert np.abs(out[12, 12].astype(int) - 100).max() < np.abs(out[7, 7].astype(int) - 100).max()
    assert (display == 100).all()  # the original is not modified


def test_heatmap_overlay_rejects_mismatches() -> None:
    with pytest.raises(ValueError, match=r"heat shape \(4, 4\) differs from image shape \(5, 5\)"):
        heatmap_overlay(np.zeros((5, 5), np.uint8), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="alpha must be in"):
        heatmap_overlay(np.zeros((5, 5), np.uint8), np.zeros((5, 5)), alpha=1.5)
