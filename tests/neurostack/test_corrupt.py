from __future__ import annotations

import hashlib

import numpy as np
import pytest

from neurostack.corrupt import (
    CORRUPTIONS,
    SEVERITIES,
    apply_corruption,
    conditions,
    corrupt,
    corrupt_mask,
    slice_seed,
)


def phantom(size: int = 128) -> np.ndarray:
    """A bright disc (200) with a darker off-centre blob (90) on black."""
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size), np.uint8)
    img[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2] = 200
    img[(yy - 0.4 * size) ** 2 + (xx - 0.6 * size) ** 2 < (0.08 * size) ** 2] = 90
    return img


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
@pytest.mark.parametrize("severity", SEVERITIES)
def test_every_corruption_keeps_shape_dtype_and_is_reproducible(name, severity):
    img = phantom(512)  # blur's sigma is stated at 512 px
    out = corrupt(img, name, severity, seed=7)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert not np.array_equal(out, img)  # it changes something
    np.testing.assert_array_equal(out, corrupt(img, name, severity, seed=7))
    assert img.max() == 200  # input untouched


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_severity_zero_is_an_unchanged_copy(name):
    img = phantom()
    out = corrupt(img, name, 0)
    np.testing.assert_array_equal(out, img)
    assert out is not img


def test_stronger_severity_moves_the_image_further():
    img = phantom().astype(float)
    for name in CORRUPTIONS:
        d1 = np.abs(corrupt(phantom(), name, 1, seed=3) - img).mean()
        d2 = np.abs(corrupt(phantom(), name, 2, seed=3) - img).mean()
        assert d2 > d1, name


def test_gamma_known_values():
    img = np.array([[0, 64, 128, 255]], np.uint8)
    # 255 * (x / 255) ** 2 for x = 64, 128 -> 16.06, 64.25
    np.testing.assert_array_equal(corrupt(img, "gamma_dark", 2), [[0, 16, 64, 255]])
    # gamma 0.5: 255 * sqrt(x / 255) -> 127.75, 180.75
    np.testing.assert_array_equal(corrupt(img, "gamma_bright", 2), [[0, 128, 181, 255]])


def test_rician_noise_has_the_stated_spread_and_positive_floor():
    flat = np.full((200, 200), 100, np.uint8)
    out = corrupt(flat, "rician_noise", 2, seed=0).astype(float)  # sigma 16
    assert out.std() == pytest.approx(16, rel=0.1)
    black = corrupt(np.zeros((200, 200), np.uint8), "rician_noise", 2, seed=0).astype(float)
    # magnitude of pure noise is Rayleigh: mean sigma * sqrt(pi / 2) ~ 20, never negative
    assert black.mean() == pytest.approx(16 * np.sqrt(np.pi / 2), rel=0.1)


def test_bias_field_stays_within_its_amplitude_and_is_smooth():
    flat = np.full((64, 64), 100, np.uint8)
    out = corrupt(flat, "bias_field", 1, seed=5).astype(float)  # up to +-20 %
    assert out.max() <= 120 + 0.5 and out.min() >= 100 / 1.2 - 0.5
    assert out.max() - out.min() > 10  # it does vary
    assert np.abs(np.diff(out, axis=1)).max() <= 2  # smooth, no speckle


def test_low_resolution_removes_fine_detail_only():
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    out = corrupt(checker, "low_resolution", 1)  # factor 2: each 2x2 block averages to 127.5
    assert np.abs(out.astype(float) - 127.5).max() <= 1
    flat = np.full((64, 64), 77, np.uint8)
    np.testing.assert_array_equal(corrupt(flat, "low_resolution", 2), flat)


def test_rotation_turns_a_bar_by_the_stated_angle():
    img = np.zeros((101, 101), np.uint8)
    img[50, 10:91] = 255  # horizontal bar through the centre
    out = corrupt(img, "rotation", 2, seed=1)  # 20 degrees, either sign
    ys, xs = np.nonzero(out > 127)
    angle = np.degrees(np.arctan(np.polyfit(xs - 50, ys - 50, 1)[0]))
    assert abs(angle) == pytest.approx(20, abs=1.5)


def test_blur_scales_with_image_size():
    small, large = phantom(128), phantom(512)
    # same relative edge softness: sigma is stated at 512 px and scaled
    e_small = np.abs(np.diff(corrupt(small, "blur", 2).astype(float), axis=1)).max()
    e_large = np.abs(np.diff(corrupt(large, "blur", 2).astype(float), axis=1)).max()
    assert e_large < e_small


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("speckle", 1), "corruption must be one of"),
        (("blur", 3), "severity must be one of"),
        (("blur", -1), "severity must be one of"),
    ],
)
def test_bad_arguments_name_the_allowed_values(args, match):
    with pytest.raises(ValueError, match=match):
        corrupt(phantom(), *args)


def test_bad_image_is_refused():
    with pytest.raises(ValueError, match="2-D uint8"):
        corrupt(np.zeros((8, 8, 3), np.uint8), "blur", 1)
    with pytest.raises(ValueError, match="2-D uint8"):
        corrupt(np.zeros((8, 8), np.float32), "blur", 1)


def test_slice_seed_is_stable_and_distinct():
    assert slice_seed("a.png", "blur", 1) == slice_seed("a.png", "blur", 1)
    seeds = {slice_seed(p, c, s, k) for p in ("a", "b") for c in ("blur", "rotation")
             for s in (1, 2) for k in (0, 1)}
    assert len(seeds) == 16
    # a fixed value: the hash must not depend on the process (unlike Python's hash())
    assert slice_seed("glioma/x.jpg", "blur", 2) == int.from_bytes(
        hashlib.sha256(b"0|blur|2|glioma/x.jpg").digest()[:8], "little"
    )


def test_conditions_start_clean_and_validate_names():
    assert conditions(["blur"]) == [("none", 0), ("blur", 1), ("blur", 2)]
    assert len(conditions()) == 1 + 2 * len(CORRUPTIONS)
    with pytest.raises(ValueError, match="speckle"):
        conditions(["blur", "speckle"])


def test_mask_moves_with_a_rotated_slice_and_stays_for_intensity_shifts():
    img = np.zeros((101, 101), np.uint8)
    img[50, 10:91] = 255
    mask = img > 0
    for severity in SEVERITIES:
        moved_img = corrupt(img, "rotation", severity, seed=4) > 127
        moved_mask = corrupt_mask(mask, "rotation", severity, seed=4)
        assert moved_mask.dtype == bool
        # same transform (same sign drawn from the same seed): the masks overlap closely
        overlap = (moved_img & moved_mask).sum() / moved_mask.sum()
        assert overlap > 0.8
        assert not np.array_equal(moved_mask, mask)
    np.testing.assert_array_equal(corrupt_mask(mask, "blur", 2), mask)
    np.testing.assert_array_equal(corrupt_mask(mask, "rotation", 0), mask)
    with pytest.raises(ValueError, match="severity"):
        corrupt_mask(mask, "rotation", 5)


def test_apply_corruption_with_a_level_parameter_equals_that_severity():
    gray = np.random.default_rng(1).integers(0, 256, (40, 50), dtype=np.uint8)
    for name, c in CORRUPTIONS.items():
        np.testing.assert_array_equal(
            apply_corruption(gray, name, c.levels[1], seed=7), corrupt(gray, name, 2, seed=7)
        )
    with pytest.raises(ValueError, match="corruption must be one of"):
        apply_corruption(gray, "snow", 1.0)
    with pytest.raises(ValueError, match="2-D uint8"):
        apply_corruption(gray.astype(float), "blur", 1.0)
