"""Training-time augmentation of the base classifiers: strength limits, determinism, dtypes."""

from __future__ import annotations

from collections.abc import Iterator

import keras
import numpy as np
import pytest
import tensorflow as tf

from ensemble.augment import build_augmenter, random_brightness

SIZE = 33  # odd, so the image centre (16, 16) is a pixel centre and flips keep it in place
CENTRE = (SIZE - 1) / 2


@pytest.fixture(autouse=True)
def _float32_policy() -> Iterator[None]:
    yield
    keras.mixed_precision.set_global_policy("float32")  # never leak a policy to other tests


def _centred_squares(n: int, value: float = 100.0) -> np.ndarray:
    """``(n, SIZE, SIZE, 1)`` batch of a 9x9 square of ``value`` centred in a zero image."""
    x = np.zeros((n, SIZE, SIZE, 1), np.float32)
    x[:, 12:21, 12:21] = value
    return x


def _moments(img: np.ndarray) -> tuple[float, float, float, float]:
    """Mass, centroid ``(x, y)`` and principal-axis angle (degrees) of one ``(H, W, 1)`` image."""
    w = img[..., 0].astype(np.float64)
    yy, xx = np.mgrid[: w.shape[0], : w.shape[1]]
    mass = w.sum()
    cx, cy = (w * xx).sum() / mass, (w * yy).sum() / mass
    mu20 = (w * (xx - cx) ** 2).sum()
    mu02 = (w * (yy - cy) ** 2).sum()
    mu11 = (w * (xx - cx) * (yy - cy)).sum()
    angle = float(np.degrees(0.5 * np.arctan2(2 * mu11, mu20 - mu02)))
    return float(mass), float(cx), float(cy), angle


def test_pipeline_holds_the_seed_recipe_layers_in_order() -> None:
    aug = build_augmenter(seed=3)
    assert isinstance(aug, keras.Sequential)
    assert aug.name == "seed_augmentation"
    assert [type(layer).__name__ for layer in aug.layers] == [
        "RandomRotation",
        "RandomTranslation",
        "RandomZoom",
        "RandomFlip",
    ]
    rot, shift, zoom, flip = (layer.get_config() for layer in aug.layers)
    assert rot["factor"] == pytest.approx((-10 / 360, 10 / 360))  # fraction of a full turn
    assert (shift["height_factor"], shift["width_factor"]) == (0.1, 0.1)
    assert zoom["height_factor"] == 0.1 and zoom["width_factor"] is None  # keeps aspect ratio
    assert flip["mode"] == "horizontal"
    for cfg in (rot, shift, zoom):
        assert cfg["fill_mode"] == "constant" and cfg["fill_value"] == 0.0
    assert {layer.get_config()["seed"] for layer in aug.layers} == {3}


def test_inference_mode_leaves_the_batch_unchanged() -> None:
    x = np.random.default_rng(0).uniform(0, 255, (3, SIZE, SIZE, 1)).astype(np.float32)
    out = build_augmenter(seed=0)(x, training=False)
    np.testing.assert_array_equal(np.asarray(out), x)


def test_training_mode_keeps_shape_dtype_and_value_range() -> None:
    x = _centred_squares(8, value=200.0)
    out = np.asarray(build_augmenter(seed=1)(x, training=True))
    assert out.shape == x.shape
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 200.0  # bilinear resampling, zero fill
    assert not np.array_equal(out, x)  # it really transforms the images


def test_output_stays_float32_under_a_mixed_precision_policy() -> None:
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    out = build_augmenter(seed=0)(_centred_squares(2), training=True)
    assert out.dtype == tf.float32


def test_same_seed_repeats_and_other_seed_differs() -> None:
    x = _centred_squares(4)
    first = np.asarray(build_augmenter(seed=5)(x, training=True))
    again = np.asarray(build_augmenter(seed=5)(x, training=True))
    other = np.asarray(build_augmenter(seed=6)(x, training=True))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_successive_batches_get_fresh_transforms() -> None:
    aug = build_augmenter(seed=2)
    x = _centred_squares(4)
    assert not np.allclose(np.asarray(aug(x, training=True)), np.asarray(aug(x, training=True)))


def test_flip_mirrors_left_right_only() -> None:
    flip = build_augmenter(seed=3).layers[-1]
    img = np.arange(5 * 7, dtype=np.float32).reshape(5, 7, 1)
    mirrored = img[:, ::-1]
    assert mirrored[0, 0, 0] == 6.0 and mirrored[0, 6, 0] == 0.0  # known answer
    assert not np.array_equal(img[::-1], img) and not np.array_equal(img[::-1], mirrored)
    out = np.asarray(flip(np.repeat(img[None], 16, axis=0), training=True))
    kinds = []
    for o in out:
        if np.array_equal(o, img):
            kinds.append("same")
        elif np.array_equal(o, mirrored):
            kinds.append("mirrored")
        else:
            pytest.fail(f"output is neither the image nor its left-right mirror:\n{o[..., 0]}")
    assert set(kinds) == {"same", "mirrored"}  # seed 3: both outcomes among 16 draws


def test_rotation_is_at_most_ten_degrees() -> None:
    rot = build_augmenter(seed=0).layers[0]
    bar = np.zeros((64, SIZE, SIZE, 1), np.float32)
    bar[:, 16, 4:29] = 255.0  # horizontal bar through the centre: angle 0
    assert _moments(bar[0])[3] == pytest.approx(0.0)
    angles = np.abs([_moments(img)[3] for img in np.asarray(rot(bar, training=True))])
    assert angles.max() <= 10.0 + 0.5
    assert angles.max() > 7.0  # it does use the range


def test_translation_is_at_most_ten_percent_per_axis() -> None:
    shift = build_augmenter(seed=0).layers[1]
    x = _centred_squares(64)
    stats = np.array([_moments(img) for img in np.asarray(shift(x, training=True))])
    mass0 = _moments(x[0])[0]
    np.testing.assert_allclose(stats[:, 0], mass0, rtol=1e-4)  # square stays inside, intact
    dx, dy = np.abs(stats[:, 1] - CENTRE), np.abs(stats[:, 2] - CENTRE)
    assert dx.max() <= 0.1 * SIZE + 0.05 and dy.max() <= 0.1 * SIZE + 0.05
    assert dx.max() > 2.0 and dy.max() > 2.0


def test_zoom_is_at_most_ten_percent_about_the_centre() -> None:
    zoom = build_augmenter(seed=0).layers[2]
    x = _centred_squares(64)
    stats = np.array([_moments(img) for img in np.asarray(zoom(x, training=True))])
    ratio = stats[:, 0] / _moments(x[0])[0]
    # side scaled by 1/(1 +- 0.1): area ratio within [1/1.21, 1/0.81] = [0.826, 1.235]
    assert ratio.min() >= 0.82 and ratio.max() <= 1.24
    assert ratio.min() < 0.9 and ratio.max() > 1.1
    np.testing.assert_allclose(stats[:, 1:3], CENTRE, atol=1e-3)  # zoom about the centre


def test_random_brightness_scales_each_image_by_one_factor_in_range() -> None:
    x = np.full((256, 4, 4, 1), 100.0, np.float32)
    tf.random.set_seed(0)
    out = np.asarray(random_brightness(x))
    assert out.shape == x.shape and out.dtype == np.float32
    factors = out / 100.0
    np.testing.assert_allclose(factors, factors[:, :1, :1, :1] * np.ones_like(factors))
    f = factors[:, 0, 0, 0]
    assert f.min() >= 0.8 - 1e-6 and f.max() <= 1.2 + 1e-6
    assert f.min() < 0.85 and f.max() > 1.15  # spans the range
    assert len(np.unique(f)) > 200  # one factor per image, not one per batch


def test_random_brightness_honours_custom_range() -> None:
    x = np.full((64, 2, 2, 1), 100.0, np.float32)
    tf.random.set_seed(1)
    f = np.asarray(random_brightness(x, low=0.5, high=0.6))[:, 0, 0, 0] / 100.0
    assert f.min() >= 0.5 - 1e-6 and f.max() <= 0.6 + 1e-6


def test_random_brightness_identity_and_clipping_known_answers() -> None:
    x = np.array([0.0, 100.0, 200.0, 250.0], np.float32).reshape(1, 2, 2, 1)
    np.testing.assert_array_equal(np.asarray(random_brightness(x, 1.0, 1.0)), x)
    brighter = np.asarray(random_brightness(x, 1.5, 1.5)).ravel()
    np.testing.assert_allclose(brighter, [0.0, 150.0, 255.0, 255.0])  # clipped at 255
    darker = np.asarray(random_brightness(x, 0.5, 0.5)).ravel()
    np.testing.assert_allclose(darker, [0.0, 50.0, 100.0, 125.0])


def test_random_brightness_follows_the_global_seed() -> None:
    x = np.full((8, 2, 2, 1), 100.0, np.float32)
    tf.random.set_seed(7)
    first = np.asarray(random_brightness(x))
    tf.random.set_seed(7)
    again = np.asarray(random_brightness(x))
    tf.random.set_seed(8)
    other = np.asarray(random_brightness(x))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_rician_noise_known_answers_and_per_image_draw() -> None:
    from ensemble.augment import random_rician_noise

    keras.utils.set_random_seed(0)
    flat = np.full((64, 24, 24, 1), 120.0, np.float32)
    np.testing.assert_array_equal(np.asarray(random_rician_noise(flat, 20.0, 0.0)), flat)
    out = np.asarray(random_rician_noise(flat, 20.0, 1.0))
    sds = out.reshape(64, -1).std(axis=1)
    assert out.min() >= 0 and out.max() <= 255
    assert sds.max() < 20 * 1.2 and sds.min() < 5 < 10 < sds.max()  # one sigma per image
    # on black background the magnitude is the Rician floor: positive, mean sigma*sqrt(pi/2)
    zero = np.asarray(random_rician_noise(np.zeros((4, 64, 64, 1), np.float32), 8.0, 1.0))
    assert (zero >= 0).all() and zero.mean() > 0
    half = np.asarray(random_rician_noise(flat, 20.0, 0.5))
    unchanged = (half.reshape(64, -1) == 120.0).all(axis=1)
    assert 16 < unchanged.sum() < 48  # about half the images drawn
