"""Classification metrics as pure NumPy functions.

Shapes: ``y_true`` is ``(N,)`` integer class indices, ``proba`` is ``(N, K)``
probabilities whose rows sum to 1, ``y_pred`` is ``(N,)`` indices. Classes
absent from ``y_true`` get ``None`` for metrics that need positives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Return the ``(K, K)`` count matrix, rows = true class, columns = predicted class."""
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred shapes differ: {y_true.shape} vs {y_pred.shape}")
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def per_class_report(cm: np.ndarray, class_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class from a confusion matrix (0 when undefined)."""
    out = {}
    for k, name in enumerate(class_names):
        tp = float(cm[k, k])
        pred = float(cm[:, k].sum())
        true = float(cm[k, :].sum())
        precision = tp / pred if pred else 0.0
        recall = tp / true if true else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(true)}
    return out


def roc_curve(y_binary: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-vs-rest ROC curve; returns ``(fpr, tpr, thresholds)`` starting at (0, 0)."""
    y = np.asarray(y_binary, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    p, n = y.sum(), (~y).sum()
    tpr = np.r_[0.0, tps / p] if p else np.full(len(tps) + 1, np.nan)
    fpr = np.r_[0.0, fps / n] if n else np.full(len(fps) + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, s[distinct]]


def auc(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoidal area under a curve given by increasing ``x``."""
    return float(np.trapezoid(y, x))


def precision_recall_curve(
    y_binary: np.ndarray, score: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """Return ``(precision, recall, average_precision)`` for one class vs rest."""
    y = np.asarray(y_binary, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[distinct].astype(float)
    predicted = (distinct + 1).astype(float)
    p = float(y.sum())
    precision = tps / predicted
    recall = tps / p if p else np.zeros_like(tps)
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision)) if p else float("nan")
    return np.r_[1.0, precision], np.r_[0.0, recall], ap


def expected_calibration_error(
    proba: np.ndarray, y_true: np.ndarray, n_bins: int = 10
) -> tuple[float, list[dict[str, float]]]:
    """Top-label ECE with equal-width confidence bins.

    Returns:
        ``(ece, bins)``; each bin has ``lo, hi, count, confidence, accuracy``
        (confidence and accuracy are ``None`` for empty bins).
    """
    proba = np.asarray(proba, dtype=np.float64)
    conf = proba.max(axis=1)
    correct = proba.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    bins = []
    for b in range(n_bins):
        sel = idx == b
        count = int(sel.sum())
        if count:
            c, a = float(conf[sel].mean()), float(correct[sel].mean())
            ece += count / len(conf) * abs(c - a)
        else:
            c = a = None
        bins.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "count": count,
                "confidence": c,
                "accuracy": a,
            }
        )
    return float(ece), bins


def classification_metrics(
    y_true: np.ndarray, proba: np.ndarray, class_names: Sequence[str]
) -> dict:
    """All headline metrics for one model.

    Returns:
        ``{"accuracy", "macro_f1", "per_class", "confusion_matrix", "roc_auc", "ece"}``;
        ``roc_auc`` maps each class to its one-vs-rest AUC (None if the class has no
        positives or no negatives) plus ``"macro"``, the mean over defined classes.
    """
    y_true = np.asarray(y_true, dtype=int)
    proba = np.asarray(proba, dtype=np.float64)
    k = len(class_names)
    if proba.ndim != 2 or proba.shape != (len(y_true), k):
        raise ValueError(f"proba must have shape ({len(y_true)}, {k}); received {proba.shape}")
    y_pred = proba.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, k)
    report = per_class_report(cm, class_names)
    aucs: dict[str, float | None] = {}
    for c, name in enumerate(class_names):
        pos = y_true == c
        if pos.all() or not pos.any():
            aucs[name] = None
            continue
        fpr, tpr, _ = roc_curve(pos, proba[:, c])
        aucs[name] = auc(fpr, tpr)
    defined = [v for v in aucs.values() if v is not None]
    aucs["macro"] = float(np.mean(defined)) if defined else None
    present = [report[n]["f1"] for n in class_names if report[n]["support"] > 0]
    ece, _ = expected_calibration_error(proba, y_true)
    return {
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else float("nan"),
        "macro_f1": float(np.mean(present)) if present else float("nan"),
        "per_class": report,
        "confusion_matrix": cm.tolist(),
        "roc_auc": aucs,
        "ece": ece,
    }


def _bool_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two ``(N,)`` bool arrays of one length, or ``ValueError`` naming their shapes."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"need two (N,) arrays of one length; received {a.shape} and {b.shape}")
    return a, b


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float | int]:
    """Exact McNemar test of two classifiers scored on the same images.

    Only the discordant images count: ``only_a`` where A is right and B wrong,
    ``only_b`` the reverse. Under "equally accurate" each discordant image is a fair
    coin, so the two-sided p-value is the binomial one of ``only_a`` in
    ``only_a + only_b`` tosses (1.0 when there is no discordant image).

    Args:
        correct_a: ``(N,)`` bool, whether classifier A was right on image ``i``.
        correct_b: ``(N,)`` bool, the same for classifier B.

    Returns:
        ``{"only_a": int, "only_b": int, "p_value": float}``.

    Raises:
        ValueError: If the two arrays are not 1-D of the same length.
    """
    from scipy.stats import binomtest

    a, b = _bool_pair(correct_a, correct_b)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    p = 1.0 if n == 0 else float(binomtest(only_a, n, 0.5).pvalue)
    return {"only_a": only_a, "only_b": only_b, "p_value": p}


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion, e.g. an accuracy of ``successes / n``.

    Unlike the normal approximation it stays inside ``[0, 1]`` and is sensible at
    0 % and 100 %. ``(nan, nan)`` when ``n == 0``.

    Args:
        successes: Number of successes (e.g. correctly classified images), ``0..n``.
        n: Number of trials.
        confidence: Two-sided coverage in ``(0, 1)``.

    Returns:
        ``(low, high)`` bounds of the proportion.

    Raises:
        ValueError: If ``n < 0``, ``successes`` is outside ``0..n`` or ``confidence``
            is outside ``(0, 1)``.
    """
    from scipy.stats import norm

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1); received {confidence}")
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n; received successes={successes}, n={n}")
    if n == 0:
        return float("nan"), float("nan")
    z = float(norm.ppf(0.5 + confidence / 2.0))
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def detection_rates(flagged: np.ndarray, positive: np.ndarray) -> dict[str, float | None]:
    """How well a flag detects positives (e.g. wrong answers, poor outlines).

    Args:
        flagged: ``(N,)`` bool, the flag raised on item ``i``.
        positive: ``(N,)`` bool, item ``i`` is what the flag should catch.

    Returns:
        ``{"sensitivity", "specificity", "youden"}``; a rate without a denominator
        (no positive, or no negative item) and the J built on it are ``None``.

    Raises:
        ValueError: If the two arrays are not 1-D of the same length.
    """
    f, p = _bool_pair(flagged, positive)
    sens = float((f & p).sum() / p.sum()) if p.any() else None
    spec = float((~f & ~p).sum() / (~p).sum()) if (~p).any() else None
    youden = None if sens is None or spec is None else sens + spec - 1.0
    return {"sensitivity": sens, "specificity": spec, "youden": youden}


def choose_youden_threshold(thresholds: Sequence[float], youden: Sequence[float | None]) -> float:
    """Return the threshold with the largest Youden's J; ties go to the lowest threshold.

    Args:
        thresholds: Candidate thresholds of a sweep.
        youden: J at each of them (``None`` / NaN where undefined).

    Raises:
        ValueError: If the lengths differ or J is undefined everywhere.
    """
    t = np.asarray(thresholds, dtype=float)
    j = np.asarray([np.nan if v is None else v for v in youden], dtype=float)
    if t.shape != j.shape or t.ndim != 1:
        raise ValueError(f"need one J per threshold; received {t.shape} and {j.shape}")
    if np.isnan(j).all():
        raise ValueError("Youden's J is undefined at every threshold: need positives and negatives")
    best = np.nanmax(j)
    return float(t[np.isclose(j, best) & ~np.isnan(j)].min())


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> dict[str, np.ndarray | float]:
    """Accuracy of the answers kept when only the most confident ones are accepted.

    Answers are accepted in decreasing confidence; equal confidences are accepted
    together, so each point is reachable by a threshold.

    Args:
        confidence: ``(N,)`` confidence of each answer (e.g. top probability).
        correct: ``(N,)`` bool, the answer was right.

    Returns:
        ``coverage`` (share accepted), ``accuracy`` (of the accepted), ``threshold``
        (accept confidence >= it), each ``(M,)`` with coverage increasing to 1, and
        ``aurc``: the mean selective risk (1 - accuracy) over the N acceptance
        points, one per answer (lower is better; 0 for a perfect ranking
        of an all-correct set).

    Raises:
        ValueError: If the arrays are not 1-D of one non-zero length.
    """
    c = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if c.ndim != 1 or c.shape != ok.shape or not len(c):
        raise ValueError(f"need two non-empty (N,) arrays of one length; received {c.shape} "
                         f"and {ok.shape}")
    order = np.argsort(-c, kind="mergesort")
    c, ok = c[order], ok[order]
    last = np.r_[np.nonzero(np.diff(c))[0], len(c) - 1]  # end of each group of equal values
    hits = np.cumsum(ok)
    n = np.arange(1, len(c) + 1)
    # each answer's risk is that of its group's acceptance point (ties enter together)
    group_end = np.repeat(last, np.diff(np.r_[-1, last]))
    aurc = float(np.mean(1.0 - hits[group_end] / n[group_end]))
    return {"coverage": n[last] / len(c), "accuracy": hits[last] / n[last],
            "threshold": c[last], "aurc": aurc}
