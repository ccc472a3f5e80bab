from __future__ import annotations

import keras
import numpy as np
import pytest

from segmentation.metrics import (
    DiceMetric,
    bce_dice_loss,
    cluster_bootstrap_ci,
    dice_coefficient,
    dice_loss,
    dice_metric,
    focal_tversky_loss,
    iou,
    training_loss,
)


def square(shape=(40, 40), top=10, left=10, size=10) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[top : top + size, left : left + size] = 255
    return m


def test_identical_masks():
    m = square()
    assert dice_coefficient(m, m) == 1.0
    assert iou(m, m) == 1.0


def test_half_overlap_squares_exact():
    a = square(left=10)  # 100 px
    b = square(left=15)  # 100 px, 50 px shared
    assert dice_coefficient(a, b) == pytest.approx(2 * 50 / 200)
    assert iou(a, b) == pytest.approx(50 / 150)


def test_disjoint_and_contained():
    a = square(left=0, top=0)
    b = square(left=20, top=20)
    assert dice_coefficient(a, b) == 0.0
    small = square(size=5)  # 25 px inside a 100 px square at the same corner
    big = square(size=10)
    assert dice_coefficient(big, small) == pytest.approx(2 * 25 / 125)
    assert iou(big, small) == pytest.approx(25 / 100)


def test_empty_mask_policy():
    empty = np.zeros((20, 20), bool)
    full = square((20, 20), 2, 2, 5)
    assert dice_coefficient(empty, empty) == 1.0
    assert iou(empty, empty) == 1.0
    assert dice_coefficient(empty, full) == 0.0
    assert dice_coefficient(full, empty) == 0.0
    assert iou(full, empty) == 0.0


def test_batch_gives_per_image_scores():
    a, b = square(left=10), square(left=15)
    empty = np.zeros_like(a)
    t = np.stack([a, a, empty, empty])
    p = np.stack([a, b, empty, a])
    np.testing.assert_allclose(dice_coefficient(t, p), [1.0, 0.5, 1.0, 0.0])
    np.testing.assert_allclose(iou(t, p), [1.0, 1 / 3, 1.0, 0.0])
    # trailing channel axis accepted
    np.testing.assert_allclose(dice_coefficient(t[..., None], p[..., None]), [1.0, 0.5, 1.0, 0.0])


def test_threshold_on_probabilities():
    t = square()
    prob = t.astype(np.float32) / 255 * 0.7  # 0.7 inside, 0 outside
    assert dice_coefficient(t, prob, threshold=0.5) == 1.0
    assert dice_coefficient(t, prob, threshold=0.7) == 1.0  # ">= threshold"
    assert dice_coefficient(t, prob, threshold=0.8) == 0.0
    with pytest.raises(ValueError, match="non-binary values"):
        dice_coefficient(t, prob)


def test_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        dice_coefficient(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"\(H, W\) or \(N, H, W\)"):
        iou(np.zeros(4), np.zeros(4))


def _numpy_soft_dice_loss(t, p, smooth):
    t = t.reshape(len(t), -1).astype(np.float64)
    p = p.reshape(len(p), -1).astype(np.float64)
    return 1 - (2 * (t * p).sum(1) + smooth) / (t.sum(1) + p.sum(1) + smooth)


def _batch():
    rng = np.random.default_rng(0)
    t = np.stack([square(left=10), square(left=15), np.zeros((40, 40), np.uint8)]) > 0
    t = t[..., None].astype(np.float32)
    p = rng.uniform(0.01, 0.99, t.shape).astype(np.float32)
    return t, p


def test_keras_dice_loss_matches_numpy_soft_dice():
    t, p = _batch()
    got = np.asarray(dice_loss(t, p, smooth=1.0))
    np.testing.assert_allclose(got, _numpy_soft_dice_loss(t, p, 1.0), rtol=1e-5)


def test_keras_dice_loss_on_binary_equals_one_minus_numpy_dice():
    t, _ = _batch()
    p = np.stack([square(left=10), square(left=10), square(left=10)])[..., None] / 255.0
    got = np.asarray(dice_loss(t, p.astype(np.float32), smooth=1e-6))
    np.testing.assert_allclose(
        got[:2], 1 - dice_coefficient(t[:2, ..., 0], p[:2, ..., 0] > 0), atol=1e-5
    )
    # empty truth vs non-empty prediction: loss 1 (Dice 0)
    assert got[2] == pytest.approx(1.0, abs=1e-5)


def test_keras_bce_dice_loss_matches_numpy():
    t, p = _batch()
    eps = keras.config.epsilon()
    pc = np.clip(p.astype(np.float64), eps, 1 - eps)
    bce = -(t * np.log(pc) + (1 - t) * np.log(1 - pc)).reshape(len(t), -1).mean(1)
    expected = bce + _numpy_soft_dice_loss(t, p, 1.0)
    np.testing.assert_allclose(np.asarray(bce_dice_loss(t, p)), expected, rtol=1e-4)


def test_focal_tversky_loss_known_answers():
    t = np.array([1, 1, 0, 0], np.float32).reshape(1, 2, 2, 1)
    p = np.array([1, 0, 1, 0], np.float32).reshape(1, 2, 2, 1)
    # tp = fp = fn = 1: TI = (1 + 1) / (1 + 0.3 + 0.7 + 1) = 2/3, loss = (1/3) ** 0.75
    got = float(np.asarray(focal_tversky_loss(t, p))[0])
    assert got == pytest.approx((1 / 3) ** 0.75, rel=1e-5)
    # alpha = beta = 0.5, gamma = 1 is the soft Dice loss (whose smoothing counts twice)
    tb, pb = _batch()
    np.testing.assert_allclose(
        np.asarray(focal_tversky_loss(tb, pb, alpha=0.5, beta=0.5, gamma=1.0, smooth=0.5)),
        np.asarray(dice_loss(tb, pb, smooth=1.0)), rtol=1e-5,
    )
    # a perfect prediction costs nothing; so does an empty truth with an empty prediction
    np.testing.assert_allclose(np.asarray(focal_tversky_loss(t, t)), [0.0], atol=1e-6)
    empty = np.zeros((1, 2, 2, 1), np.float32)
    np.testing.assert_allclose(np.asarray(focal_tversky_loss(empty, empty)), [0.0], atol=1e-6)


def test_focal_tversky_loss_weighs_misses_more_than_false_pixels():
    truth = square()[None, ..., None] / 255.0  # 100 tumour pixels
    missed = square(size=8)[None, ..., None] / 255.0  # 36 tumour pixels missed
    extra = np.zeros_like(truth)
    extra[0, 10:20, 10:20] = 1.0
    extra[0, 20:24, 10:19] = 1.0  # 36 false pixels next to the tumour
    miss_loss = float(np.asarray(focal_tversky_loss(truth, missed.astype(np.float32)))[0])
    extra_loss = float(np.asarray(focal_tversky_loss(truth, extra.astype(np.float32)))[0])
    assert miss_loss > extra_loss > 0.0
    # the soft Dice loss cannot tell the two apart as strongly (it weighs both 0.5)
    dice_miss = float(np.asarray(dice_loss(truth, missed.astype(np.float32)))[0])
    dice_extra = float(np.asarray(dice_loss(truth, extra.astype(np.float32)))[0])
    assert miss_loss / extra_loss > dice_miss / dice_extra


def test_training_loss_names():
    fn, text = training_loss("bce_focal_tversky")
    assert "focal Tversky" in text and "beta 0.7" in text
    assert training_loss("bce_dice")[0] is bce_dice_loss
    with pytest.raises(ValueError, match=r"bce_dice.*received 'lovasz'"):
        training_loss("lovasz")


def test_dice_metric_matches_numpy_with_empty_policy():
    t, p = _batch()
    expected = dice_coefficient(t[..., 0], p[..., 0], threshold=0.5)
    np.testing.assert_allclose(np.asarray(dice_metric(t, p)), expected, rtol=1e-6)
    empty = np.zeros((2, 8, 8, 1), np.float32)
    np.testing.assert_allclose(np.asarray(dice_metric(empty, empty)), [1.0, 1.0])

    metric = DiceMetric()
    metric.update_state(t[:2], p[:2])
    metric.update_state(t[2:], p[2:])
    assert float(metric.result()) == pytest.approx(expected.mean(), rel=1e-6)
    metric.reset_state()
    assert float(metric.result()) == 0.0
    assert DiceMetric.from_config(DiceMetric(threshold=0.3).get_config()).threshold == 0.3


@pytest.mark.slow
def test_usable_in_compile(float32_policy):
    from segmentation.model import build_resunet

    model = build_resunet(input_size=16, base_filters=2, depth=2)
    model.compile(optimizer="adam", loss=bce_dice_loss, metrics=[DiceMetric(), dice_metric])
    x = np.random.default_rng(1).random((4, 16, 16, 1), dtype=np.float32)
    y = (x > 0.7).astype(np.float32)
    logs = model.fit(x, y, epochs=1, batch_size=2, verbose=0).history
    assert {"loss", "dice", "dice_metric"} <= set(logs)


# --------------------------------------------------------------- cluster bootstrap


def test_cluster_bootstrap_constant_scores_give_a_point_interval():
    low, high = cluster_bootstrap_ci(np.full(9, 0.7), np.repeat(["a", "b", "c"], 3))
    assert low == pytest.approx(0.7) and high == pytest.approx(0.7)


def test_cluster_bootstrap_two_patients_known_answer():
    # Patient a scores 0 on every slice, patient b scores 1. A resample holds
    # {a, a}, {a, b} or {b, b} with probability 1/4, 1/2, 1/4 -> means 0, 1/2, 1,
    # so the 95 % percentile interval is (0, 1) and the 40 % one is (1/2, 1/2).
    values = np.array([0.0, 0.0, 1.0, 1.0])
    groups = np.array([1, 1, 2, 2])
    assert cluster_bootstrap_ci(values, groups) == (0.0, 1.0)
    assert cluster_bootstrap_ci(values, groups, confidence=0.4) == (0.5, 0.5)


def test_cluster_bootstrap_is_wider_than_slice_bootstrap_for_correlated_slices():
    # 10 patients x 20 slices: slices of one patient share its score. Resampling
    # patients must see 10 independent values, not 200 -> a clearly wider interval.
    rng = np.random.default_rng(1)
    per_patient = rng.uniform(0.3, 1.0, size=10)
    values = np.repeat(per_patient, 20)
    patients = np.repeat(np.arange(10), 20)
    clustered = cluster_bootstrap_ci(values, patients)
    independent = cluster_bootstrap_ci(values, np.arange(200))
    assert clustered[0] < values.mean() < clustered[1]
    assert clustered[1] - clustered[0] > 3 * (independent[1] - independent[0])


def test_cluster_bootstrap_weights_slices_like_the_reported_mean():
    # Patient a: 3 slices at 0; patient b: 1 slice at 1. The reported mean is 1/4;
    # resample {a, b} has mean 1/4 (slice-weighted), not 1/2 (patient-weighted).
    values = np.array([0.0, 0.0, 0.0, 1.0])
    groups = np.array(["a", "a", "a", "b"])
    assert cluster_bootstrap_ci(values, groups, confidence=0.4) == (0.25, 0.25)


def test_cluster_bootstrap_is_reproducible_and_seeded():
    rng = np.random.default_rng(0)
    values, groups = rng.uniform(size=60), np.repeat(np.arange(12), 5)
    assert cluster_bootstrap_ci(values, groups, seed=3) == cluster_bootstrap_ci(
        values, groups, seed=3
    )


@pytest.mark.parametrize(
    ("values", "groups", "kwargs", "match"),
    [
        ([0.5, 0.6], [1], {}, "differ in length"),
        ([0.5, 0.6], [1, 1], {}, "at least 2 groups"),
        ([], [], {}, "at least 2 groups"),
        ([0.5, np.nan], [1, 2], {}, "finite"),
        ([0.5, 0.6], [1, 2], {"confidence": 1.0}, "confidence"),
        ([0.5, 0.6], [1, 2], {"n_resamples": 0}, "n_resamples"),
    ],
)
def test_cluster_bootstrap_rejects_bad_input(values, groups, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cluster_bootstrap_ci(np.array(values), np.array(groups), **kwargs)
