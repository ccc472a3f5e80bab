"""Classification metrics: hand-computed cases and agreement with scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from ensemble.metrics import (
    auc,
    classification_metrics,
    confusion_matrix,
    expected_calibration_error,
    per_class_report,
    precision_recall_curve,
    roc_curve,
)

NAMES = ("a", "b", "c")

# true:  0 0 0 1 1 2 2 2 2
# pred:  0 0 1 1 2 2 2 0 2
Y_TRUE = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
Y_PRED = np.array([0, 0, 1, 1, 2, 2, 2, 0, 2])


def test_confusion_matrix_by_hand() -> None:
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 1, 1], [1, 0, 3]])
    assert cm.dtype == np.int64
    assert confusion_matrix(np.array([], int), np.array([], int), 2).tolist() == [[0, 0], [0, 0]]
    with pytest.raises(ValueError, match="shapes differ"):
        confusion_matrix(Y_TRUE, Y_PRED[:-1], 3)


def test_precision_recall_f1_by_hand() -> None:
    rep = per_class_report(confusion_matrix(Y_TRUE, Y_PRED, 3), NAMES)
    # a: tp 2, predicted 3, true 3 ; b: tp 1, predicted 2, true 2 ; c: tp 3, predicted 4, true 4
    assert rep["a"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    assert rep["b"] == pytest.approx(
        {"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "support": 2}
    )
    assert rep["c"] == pytest.approx(
        {"precision": 3 / 4, "recall": 3 / 4, "f1": 3 / 4, "support": 4}
    )
    # an asymmetric case: class 0 always predicted
    rep2 = per_class_report(confusion_matrix([0, 1, 1, 1], [0, 0, 0, 1], 2), ("x", "y"))
    assert rep2["x"]["precision"] == pytest.approx(1 / 3)
    assert rep2["x"]["recall"] == 1.0
    assert rep2["x"]["f1"] == pytest.approx(2 * (1 / 3) / (1 / 3 + 1))
    assert rep2["y"] == pytest.approx({"precision": 1.0, "recall": 1 / 3, "f1": 0.5, "support": 3})


def test_undefined_precision_and_recall_are_zero() -> None:
    rep = per_class_report(confusion_matrix([0, 0], [0, 0], 3), NAMES)
    assert rep["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_roc_auc_known_answers() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    perfect = np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7])
    assert auc(*roc_curve(y, perfect)[:2]) == pytest.approx(1.0)
    assert auc(*roc_curve(y, 1 - perfect)[:2]) == pytest.approx(0.0)
    assert auc(*roc_curve(y, np.full(6, 0.4))[:2]) == pytest.approx(0.5)
    # one swapped pair out of 3 x 3: AUC = 8 / 9
    one_swap = np.array([0.1, 0.2, 0.35, 0.9, 0.4, 0.7])
    assert auc(*roc_curve(y, one_swap)[:2]) == pytest.approx(8 / 9)
    fpr, tpr, thr = roc_curve(y, perfect)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.isinf(thr[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_agrees_with_sklearn_including_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    score = np.round(rng.random(200) * 0.6 + 0.4 * y, 1)  # rounded: many ties
    assert auc(*roc_curve(y, score)[:2]) == pytest.approx(skm.roc_auc_score(y, score), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, score)
    sk_fpr, sk_tpr, _ = skm.roc_curve(y, score, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_agrees_with_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 150)
    score = np.round(rng.random(150) * 0.7 + 0.3 * y, 2)
    precision, recall, ap = precision_recall_curve(y, score)
    assert ap == pytest.approx(skm.average_precision_score(y, score), abs=1e-12)
    sk_p, sk_r, _ = skm.precision_recall_curve(y, score)
    # sklearn returns the curve from high recall to low, ending at (precision 1, recall 0)
    np.testing.assert_allclose(precision[1:], sk_p[:-1][::-1])
    np.testing.assert_allclose(recall[1:], sk_r[:-1][::-1])


def test_average_precision_known_values() -> None:
    # ranking: pos, neg, pos -> precision at the two positives 1 and 2/3; AP = (1 + 2/3) / 2
    _, _, ap = precision_recall_curve([1, 0, 1], [0.9, 0.8, 0.7])
    assert ap == pytest.approx(5 / 6)
    _, _, ap_none = precision_recall_curve([0, 0], [0.1, 0.2])
    assert np.isnan(ap_none)


def test_ece_zero_for_perfectly_calibrated_bins() -> None:
    # 10 rows at confidence 0.8 with 8 correct, 5 rows at 0.6 with 3 correct
    proba = np.array([[0.8, 0.2]] * 10 + [[0.4, 0.6]] * 5)
    y = np.array([0] * 8 + [1] * 2 + [1] * 3 + [0] * 2)
    ece, bins = expected_calibration_error(proba, y, n_bins=10)
    assert ece == pytest.approx(0.0, abs=1e-12)
    counts = [b["count"] for b in bins]
    assert counts[7] == 10 and counts[5] == 5 and sum(counts) == 15  # 0.8 in (0.7, 0.8]
    assert bins[0]["confidence"] is None and bins[0]["accuracy"] is None


def test_ece_hand_computed() -> None:
    # bin (0.9, 1.0]: 4 rows at 0.95, 2 correct -> |0.95 - 0.5| = 0.45, weight 4/6
    # bin (0.5, 0.6]: 2 rows at 0.55, both correct -> |0.55 - 1.0| = 0.45, weight 2/6
    proba = np.array([[0.95, 0.05]] * 4 + [[0.45, 0.55]] * 2)
    y = np.array([0, 0, 1, 1, 1, 1])
    ece, bins = expected_calibration_error(proba, y, n_bins=10)
    assert ece == pytest.approx(4 / 6 * 0.45 + 2 / 6 * 0.45)
    assert bins[9]["count"] == 4 and bins[9]["accuracy"] == 0.5
    assert bins[5]["count"] == 2 and bins[5]["confidence"] == pytest.approx(0.55)
    # with 2 bins: all 6 rows land in (0.5, 1.0]: mean conf 0.8167, accuracy 4/6
    ece2, _ = expected_calibration_error(proba, y, n_bins=2)
    assert ece2 == pytest.approx(abs((4 * 0.95 + 2 * 0.55) / 6 - 4 / 6))


def test_classification_metrics_keys_and_values() -> None:
    proba = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.6, 0.3, 0.1],
            [0.2, 0.5, 0.3],
            [0.1, 0.8, 0.1],
            [0.2, 0.3, 0.5],
            [0.1, 0.1, 0.8],
            [0.2, 0.2, 0.6],
            [0.5, 0.2, 0.3],
            [0.3, 0.1, 0.6],
        ]
    )
    m = classification_metrics(Y_TRUE, proba, NAMES)
    assert set(m) == {"accuracy", "macro_f1", "per_class", "confusion_matrix", "roc_auc", "ece"}
    assert m["accuracy"] == pytest.approx(6 / 9)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)
    assert m["macro_f1"] == pytest.approx(skm.f1_score(Y_TRUE, proba.argmax(1), average="macro"))
    assert set(m["roc_auc"]) == {*NAMES, "macro"}
    for k, name in enumerate(NAMES):
        assert m["roc_auc"][name] == pytest.approx(skm.roc_auc_score(k == Y_TRUE, proba[:, k]))
    assert m["roc_auc"]["macro"] == pytest.approx(np.mean([m["roc_auc"][n] for n in NAMES]))
    assert m["ece"] == pytest.approx(expected_calibration_error(proba, Y_TRUE)[0])


def test_classification_metrics_with_an_absent_class() -> None:
    y = np.array([0, 0, 2, 2])
    proba = np.array([[0.6, 0.3, 0.1], [0.3, 0.6, 0.1], [0.1, 0.2, 0.7], [0.2, 0.1, 0.7]])
    m = classification_metrics(y, proba, NAMES)
    assert m["roc_auc"]["b"] is None  # no positives for "b"
    assert m["roc_auc"]["a"] == 1.0 and m["roc_auc"]["c"] == 1.0
    assert m["roc_auc"]["macro"] == 1.0  # mean over defined classes only
    assert m["per_class"]["b"]["support"] == 0
    # the absent class is left out of the macro F1: a 0.667 and c 1.0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1.0) / 2)
    single = classification_metrics(np.zeros(3, int), np.tile([0.5, 0.3, 0.2], (3, 1)), NAMES)
    assert single["roc_auc"] == {"a": None, "b": None, "c": None, "macro": None}
    assert single["accuracy"] == 1.0


def test_classification_metrics_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match=r"proba must have shape \(9, 3\)"):
        classification_metrics(Y_TRUE, np.ones((9, 4)) / 4, NAMES)


def test_mcnemar_exact_known_answers() -> None:
    from ensemble.metrics import mcnemar_exact

    a = np.array([1, 1, 1, 1, 1, 1, 0, 0], bool)
    b = np.array([0, 0, 0, 0, 0, 0, 0, 1], bool)
    # 6 discordant for A, 1 for B: 2 * (1 + 7) / 2**7 = 0.125
    assert mcnemar_exact(a, b) == {"only_a": 6, "only_b": 1, "p_value": pytest.approx(0.125)}
    # 6 to 0: 2 / 2**6
    assert mcnemar_exact(a[:6], b[:6])["p_value"] == pytest.approx(0.03125)
    # agreement everywhere: nothing to test
    assert mcnemar_exact(a, a) == {"only_a": 0, "only_b": 0, "p_value": 1.0}
    with pytest.raises(ValueError, match=r"\(8,\) and \(7,\)"):
        mcnemar_exact(a, b[:7])


def test_wilson_interval_known_answers() -> None:
    from ensemble.metrics import wilson_interval

    # textbook values at 95 %: 0/10 -> (0, 0.2775), 10/10 -> (0.7225, 1), 5/10 -> (0.2366, 0.7634)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    low, high = wilson_interval(820, 856)
    assert low < 820 / 856 < high and high - low < 0.03
    assert np.isnan(wilson_interval(0, 0)[0])
    with pytest.raises(ValueError, match="successes=11, n=10"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="confidence must be in"):
        wilson_interval(1, 10, confidence=1.0)


def test_detection_rates_known_answers_and_undefined_rates() -> None:
    from ensemble.metrics import detection_rates

    flagged = np.array([True, True, False, False, True])
    positive = np.array([True, False, True, False, False])
    r = detection_rates(flagged, positive)
    assert r["sensitivity"] == 0.5 and r["specificity"] == pytest.approx(1 / 3)
    assert r["youden"] == pytest.approx(-1 / 6)
    none = detection_rates(flagged, np.zeros(5, bool))
    assert none["sensitivity"] is None and none["youden"] is None and none["specificity"] == 0.4
    with pytest.raises(ValueError, match="one length"):
        detection_rates(flagged, positive[:2])


def test_choose_youden_threshold_ties_low_and_skips_undefined() -> None:
    from ensemble.metrics import choose_youden_threshold

    assert choose_youden_threshold([0.3, 0.4, 0.5, 0.6], [0.1, 0.5, 0.5, None]) == 0.4
    assert choose_youden_threshold([0.6, 0.4], [float("nan"), 0.2]) == 0.4
    with pytest.raises(ValueError, match="undefined at every threshold"):
        choose_youden_threshold([0.3], [None])
    with pytest.raises(ValueError, match="one J per threshold"):
        choose_youden_threshold([0.3, 0.4], [0.1])


def test_risk_coverage_known_answers_with_ties() -> None:
    from ensemble.metrics import risk_coverage

    rc = risk_coverage(np.array([0.6, 0.9, 0.8, 0.8]), np.array([False, True, True, False]))
    np.testing.assert_allclose(rc["coverage"], [0.25, 0.75, 1.0])
    np.testing.assert_allclose(rc["accuracy"], [1.0, 2 / 3, 0.5])
    np.testing.assert_allclose(rc["threshold"], [0.9, 0.8, 0.6])
    # risk per answer: 0 (0.9), 1/3 and 1/3 (the tied 0.8s enter together), 1/2 (0.6)
    assert rc["aurc"] == pytest.approx((0 + 1 / 3 + 1 / 3 + 1 / 2) / 4)
    perfect = risk_coverage(np.array([0.9, 0.2]), np.array([True, True]))
    assert perfect["aurc"] == 0.0
    with pytest.raises(ValueError, match="non-empty"):
        risk_coverage(np.array([]), np.array([], bool))
