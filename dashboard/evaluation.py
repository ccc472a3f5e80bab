"""Read stored evaluation records and training logs into chart-ready data (no Streamlit).

Every number comes from the files under ``artifacts/``; curves and bins are
computed with :mod:`ensemble.metrics`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ensemble.metrics import (
    auc,
    classification_metrics,
    expected_calibration_error,
    mcnemar_exact,
    precision_recall_curve,
    roc_curve,
    wilson_interval,
)
from neurostack import CLASS_NAMES, MODEL_LABELS
from segmentation.metrics import dice_coefficient, iou

ENSEMBLE = "ensemble"
BASE_MODELS: tuple[str, ...] = ("xception", "inceptionv3", "resnet50", "vgg19")
RELIABILITY_BINS = 10


def model_label(name: str) -> str:
    """Human-readable model name."""
    return MODEL_LABELS.get(name, name)


# --------------------------------------------------------------------- files
HEADLINE_RUN = "test"


def list_runs(folder: Path, required: str) -> list[str]:
    """Names of the run subfolders of ``folder`` holding ``required``.

    The held-out test run (:data:`HEADLINE_RUN`) comes first, since the headline
    metrics are the test split's; the others follow newest first. File times alone
    cannot decide: a fresh clone gives every file its checkout time.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    runs = [p for p in folder.iterdir() if p.is_dir() and (p / required).is_file()]
    runs.sort(key=lambda p: ((p / required).stat().st_mtime, p.name), reverse=True)
    runs.sort(key=lambda p: p.name != HEADLINE_RUN)  # stable: the rest stay newest first
    return [p.name for p in runs]


def read_json_file(path: Path) -> dict[str, Any] | None:
    """Read a JSON object from ``path``; ``None`` when it is absent or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class InSampleNote:
    """The meta-learner was fitted on a run's predictions: its scores there are in-sample.

    Attributes:
        cv_accuracy: Its cross-validated accuracy on those predictions (``None`` if unrecorded).
        cv_fold_accuracies: Per-fold accuracies of that cross-validation.
        cv_folds: How the folds were made, as recorded.
    """

    cv_accuracy: float | None
    cv_fold_accuracies: tuple[float, ...]
    cv_folds: str


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.is_file() and b.is_file() and a.samefile(b)
    except OSError:
        return False


def meta_in_sample(predictions_csv: Path, meta_config: dict[str, Any] | None,
                   meta_metrics: dict[str, Any] | None, repo_root: Path) -> InSampleNote | None:
    """Whether the meta-learner was fitted on ``predictions_csv``.

    The meta-learner's ``config.json`` records the held-out predictions it was
    fitted on (``training.heldout_predictions``, relative to the repository root
    or absolute). Evaluating the ensemble on that same file scores it on its own
    training data, so the dashboard must not present it as an evaluation.

    Args:
        predictions_csv: A run's ``predictions.csv``.
        meta_config: The meta-learner's ``config.json`` (``None``: unknown, no note).
        meta_metrics: The meta-learner's ``metrics.json`` (cross-validation record).
        repo_root: Folder that relative recorded paths are resolved against.

    Returns:
        An :class:`InSampleNote` with the cross-validated accuracy when the files are
        the same file, otherwise ``None``.
    """
    training = (meta_config or {}).get("training") or {}
    recorded = training.get("heldout_predictions")
    if not isinstance(recorded, str) or not recorded:
        return None
    fitted_on = Path(recorded)
    candidates = [fitted_on] if fitted_on.is_absolute() else [repo_root / fitted_on]
    if not any(_same_file(Path(predictions_csv), c) for c in candidates):
        return None
    metrics = meta_metrics or {}
    cv = metrics.get("cv_accuracy")
    folds = metrics.get("cv_fold_accuracies") or []
    return InSampleNote(
        cv_accuracy=float(cv) if isinstance(cv, (int, float)) else None,
        cv_fold_accuracies=tuple(float(f) for f in folds if isinstance(f, (int, float))),
        cv_folds=str(training.get("cv_folds", "")),
    )


def operating_point_chosen_on(record: dict[str, Any], segmenter_config: dict[str, Any] | None,
                              ) -> str | None:
    """Name the split a segmentation run shares with the choice of the operating point.

    ``segmentation.evaluate --choose-threshold`` records ``chosen_on`` as
    ``"<split csv>:<split>"`` in the segmenter's config. Scores on that split were
    used to pick the threshold, so they are optimistic.

    Args:
        record: The run's ``metrics.json``.
        segmenter_config: The segmenter's ``config.json`` (``None``: unknown).

    Returns:
        The split name when the run evaluated the split the operating point was
        chosen on, else ``None``.
    """
    chosen = ((segmenter_config or {}).get("operating_point") or {}).get("chosen_on")
    if not isinstance(chosen, str) or ":" not in chosen:
        return None
    csv, split = chosen.rsplit(":", 1)
    ids_from = record.get("ids_from")
    if record.get("split") != split or not ids_from:
        return None
    return split if Path(str(ids_from)).name == Path(csv).name else None


def read_predictions(path: Path) -> pd.DataFrame:
    """Read a classification ``predictions.csv`` (``path, label, pred, <model>_<class>``)."""
    df = pd.read_csv(path)
    missing = {"label"} - set(df.columns)
    if missing:
        raise ValueError(f"{Path(path).name} has no {sorted(missing)} column")
    return df


def models_in_predictions(df: pd.DataFrame) -> list[str]:
    """Models with a full set of probability columns: base models, others, ensemble last."""
    prefixes: list[str] = []
    for col in df.columns:
        model, _, cls = str(col).rpartition("_")
        if model and cls in CLASS_NAMES and model not in prefixes:
            prefixes.append(model)
    complete = [m for m in prefixes if all(f"{m}_{c}" in df.columns for c in CLASS_NAMES)]

    def _key(m: str) -> tuple[int, int]:
        if m == ENSEMBLE:
            return (2, 0)
        if m in BASE_MODELS:
            return (0, BASE_MODELS.index(m))
        return (1, prefixes.index(m))

    return sorted(complete, key=_key)


def labels_and_proba(df: pd.DataFrame, model: str) -> tuple[np.ndarray, np.ndarray]:
    """``(y_true indices, (N, 4) probabilities)`` for ``model``; unknown labels are dropped."""
    index = {c: i for i, c in enumerate(CLASS_NAMES)}
    known = df["label"].isin(list(CLASS_NAMES))
    sub = df.loc[known]
    y = sub["label"].map(index).to_numpy(dtype=int)
    proba = sub[[f"{model}_{c}" for c in CLASS_NAMES]].to_numpy(dtype=np.float64)
    return y, proba


# ---------------------------------------------------------------- evaluation
@dataclass
class Curve:
    """One curve with its summary score (AUC or average precision)."""

    x: np.ndarray
    y: np.ndarray
    score: float | None


@dataclass
class ModelEvaluation:
    """Everything the evaluation page draws for one model."""

    name: str
    n: int
    metrics: dict[str, Any]
    confusion: np.ndarray
    confusion_normalised: np.ndarray
    roc: dict[str, Curve] = field(default_factory=dict)
    pr: dict[str, Curve] = field(default_factory=dict)
    reliability: list[dict[str, Any]] = field(default_factory=list)
    ece: float = float("nan")
    correct: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    """``(n,)`` bool: whether the top class was right, in the predictions file's row order."""
    top_probability: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """``(n,)`` the top class's probability, in the same order."""


def row_normalise(cm: np.ndarray) -> np.ndarray:
    """Divide each row by its sum (rows without samples stay 0)."""
    cm = np.asarray(cm, dtype=np.float64)
    sums = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, sums, out=np.zeros_like(cm), where=sums > 0)


def evaluate_model(df: pd.DataFrame, model: str) -> ModelEvaluation:
    """Confusion matrices, ROC/PR curves, report and reliability bins for ``model``."""
    y, proba = labels_and_proba(df, model)
    metrics = classification_metrics(y, proba, CLASS_NAMES)
    cm = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
    ev = ModelEvaluation(model, int(len(y)), metrics, cm, row_normalise(cm),
                         correct=proba.argmax(axis=1) == y, top_probability=proba.max(axis=1))
    grid = np.linspace(0.0, 1.0, 201)
    interpolated = []
    for k, cls in enumerate(CLASS_NAMES):
        pos = y == k
        if pos.any() and not pos.all():
            fpr, tpr, _ = roc_curve(pos, proba[:, k])
            ev.roc[cls] = Curve(fpr, tpr, auc(fpr, tpr))
            interpolated.append(np.interp(grid, fpr, tpr))
        if pos.any():
            precision, recall, ap = precision_recall_curve(pos, proba[:, k])
            ev.pr[cls] = Curve(recall, precision, ap)
    if interpolated:
        mean_tpr = np.mean(interpolated, axis=0)
        mean_tpr[0] = 0.0
        ev.roc["macro"] = Curve(grid, mean_tpr, metrics["roc_auc"].get("macro"))
    if len(y):
        ev.ece, ev.reliability = expected_calibration_error(proba, y, n_bins=RELIABILITY_BINS)
    return ev


IN_SAMPLE_SUFFIX = " — in-sample (fitted on this run)"


def comparison_table(evals: list[ModelEvaluation], in_sample: frozenset[str] = frozenset(),
                     ) -> pd.DataFrame:
    """One row per model: accuracy and its 95 % interval, macro F1 and AUC, ECE, recalls.

    The accuracy interval is Wilson's (:func:`ensemble.metrics.wilson_interval`).
    Models named in ``in_sample`` were fitted on these predictions; their label
    says so (:data:`IN_SAMPLE_SUFFIX`).
    """
    rows = []
    for ev in evals:
        m = ev.metrics
        label = model_label(ev.name) + (IN_SAMPLE_SUFFIX if ev.name in in_sample else "")
        low, high = wilson_interval(int(ev.correct.sum()), int(ev.correct.size))
        row: dict[str, Any] = {
            "model": label,
            "images": ev.n,
            "accuracy": m["accuracy"],
            "accuracy 95% CI low": low,
            "accuracy 95% CI high": high,
            "macro F1": m["macro_f1"],
            "macro ROC AUC": m["roc_auc"].get("macro"),
            "ECE": m["ece"],
        }
        for cls in CLASS_NAMES:
            row[f"recall {cls}"] = m["per_class"][cls]["recall"]
        rows.append(row)
    return pd.DataFrame(rows)


def paired_comparison(evals: list[ModelEvaluation], reference: str = ENSEMBLE) -> pd.DataFrame:
    """Compare ``reference`` with every other model on the same images (exact McNemar).

    Returns:
        One row per other model: images both got right, only the reference, only the
        model, both wrong, the accuracy difference (reference minus model) and the
        two-sided exact McNemar p-value. Empty when ``reference`` is not evaluated.

    Raises:
        ValueError: If two evaluations cover different numbers of images.
    """
    ref = next((e for e in evals if e.name == reference), None)
    columns = ["model", "both right", f"only {model_label(reference)} right",
               "only this model right", "both wrong", "accuracy difference", "McNemar p"]
    if ref is None:
        return pd.DataFrame(columns=columns)
    rows = []
    for ev in evals:
        if ev.name == reference:
            continue
        if ev.correct.shape != ref.correct.shape:
            raise ValueError(f"{ev.name} covers {ev.correct.size} images, "
                             f"{reference} {ref.correct.size}")
        test = mcnemar_exact(ref.correct, ev.correct)
        rows.append(dict(zip(columns, [
            model_label(ev.name), int((ref.correct & ev.correct).sum()), test["only_a"],
            test["only_b"], int((~ref.correct & ~ev.correct).sum()),
            float(ref.correct.mean() - ev.correct.mean()), test["p_value"],
        ], strict=True)))
    return pd.DataFrame(rows, columns=columns)


COVERAGE_POINTS: tuple[float, ...] = (0.9, 0.8)
"""Coverages at which :func:`selective_table` reads each model's accuracy."""


def risk_coverage_long(evals: list[ModelEvaluation]) -> pd.DataFrame:
    """Each model's risk-coverage curve as one long table.

    Returns:
        Columns ``model``, ``coverage`` (share of images answered, most confident
        first), ``accuracy`` (of those answered) and ``threshold`` (answer when the
        top probability is at least this).
    """
    from ensemble.metrics import risk_coverage

    parts = []
    for e in evals:
        if not e.n:
            continue
        rc = risk_coverage(e.top_probability, e.correct)
        parts.append(pd.DataFrame({"model": e.name, "coverage": rc["coverage"],
                                   "accuracy": rc["accuracy"], "threshold": rc["threshold"]}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["model", "coverage", "accuracy", "threshold"])


def selective_table(evals: list[ModelEvaluation]) -> pd.DataFrame:
    """One row per model: AURC and the accuracy of the most confident 90 % and 80 %.

    AURC is the mean selective risk (:func:`ensemble.metrics.risk_coverage`): lower
    means the model's confidence ranks its errors last. "Accuracy at c" is read at the
    first acceptance point reaching coverage ``c``.
    """
    from ensemble.metrics import risk_coverage

    rows = []
    for e in evals:
        if not e.n:
            continue
        rc = risk_coverage(e.top_probability, e.correct)
        row: dict[str, Any] = {"model": model_label(e.name), "AURC": rc["aurc"],
                               "accuracy (all)": float(e.correct.mean())}
        for c in COVERAGE_POINTS:
            i = int(np.searchsorted(rc["coverage"], c - 1e-12))
            row[f"accuracy, most confident {c:.0%}"] = float(rc["accuracy"][i])
        rows.append(row)
    return pd.DataFrame(rows)


def review_on_run(predictions: pd.DataFrame, metrics: dict[str, Any],
                  record: dict[str, Any] | None, classification_dir: Path,
                  source: Path) -> dict[str, Any] | None:
    """Score the recorded review flag (``ensemble.review``) on one evaluation run.

    Each row is compared with the threshold of the meta-learner that answered it
    (the fixed fallback where none passed its rule). ``None`` without a record or
    without the ensemble's columns or labels.

    Returns:
        :func:`ensemble.review.review_summary` plus ``by_class``: one row per
        predicted class with its answers, how many were flagged, and the accuracy of
        the flagged and the unflagged ones (``None`` where there are none).
    """
    from ensemble.review import review_summary, row_thresholds

    cols = ["label", *(f"ensemble_{c}" for c in CLASS_NAMES)]
    if record is None or any(c not in predictions.columns for c in cols):
        return None
    known = predictions[predictions["label"].isin(CLASS_NAMES)]
    if known.empty:
        return None
    thresholds = row_thresholds(known, metrics, record, classification_dir, source)
    probs = known[cols[1:]].to_numpy(dtype=np.float64)
    y = np.array([CLASS_NAMES.index(c) for c in known["label"]])
    pred, top = probs.argmax(axis=1), probs.max(axis=1)
    right = pred == y
    summary = review_summary(top, right, thresholds)
    flagged = top < thresholds

    def accuracy(mask: np.ndarray) -> float | None:
        return float(right[mask].mean()) if mask.any() else None

    summary["by_class"] = [
        {"predicted class": name, "answers": int((pred == k).sum()),
         "flagged": int((flagged & (pred == k)).sum()),
         "accuracy flagged": accuracy(flagged & (pred == k)),
         "accuracy unflagged": accuracy(~flagged & (pred == k))}
        for k, name in enumerate(CLASS_NAMES)
    ]
    return summary


def report_table(ev: ModelEvaluation) -> pd.DataFrame:
    """Classification report: precision, recall, F1, support, AUC per class + macro row."""
    rows = []
    for cls in CLASS_NAMES:
        r = ev.metrics["per_class"][cls]
        rows.append({"class": cls, "precision": r["precision"], "recall": r["recall"],
                     "F1": r["f1"], "ROC AUC": ev.metrics["roc_auc"].get(cls),
                     "average precision": ev.pr[cls].score if cls in ev.pr else None,
                     "support": r["support"]})
    present = [r for r in rows if r["support"] > 0]

    def _mean(key: str) -> float | None:
        vals = [r[key] for r in present if r[key] is not None]
        return float(np.mean(vals)) if vals else None

    rows.append({"class": "macro average", "precision": _mean("precision"),
                 "recall": _mean("recall"), "F1": ev.metrics["macro_f1"],
                 "ROC AUC": ev.metrics["roc_auc"].get("macro"),
                 "average precision": _mean("average precision"),
                 "support": int(sum(r["support"] for r in rows))})
    rows.append({"class": "accuracy", "precision": None, "recall": None,
                 "F1": ev.metrics["accuracy"], "ROC AUC": None, "average precision": None,
                 "support": ev.n})
    return pd.DataFrame(rows)


# --------------------------------------------------------------- training logs
def read_training_log(path: Path) -> pd.DataFrame | None:
    """Read a ``training_log.csv`` (classification or segmentation); ``None`` if absent."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return None
    if df.empty or "epoch" not in df.columns:
        return None
    return df.sort_values("epoch", kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------- segmentation
def training_phases(log: pd.DataFrame) -> list[str]:
    """Describe each run of consecutive epochs sharing a phase (and input size).

    Args:
        log: A training log with ``epoch`` and ``phase`` (optionally ``image_size``).

    Returns:
        One string per segment in epoch order, e.g. ``"scratch at 128 px (epochs 0–8)"``;
        empty without a ``phase`` column.
    """
    if "phase" not in log.columns or log.empty:
        return []
    keys = ["phase"] + (["image_size"] if "image_size" in log.columns else [])
    changed = log[keys].ne(log[keys].shift()).any(axis=1)
    out = []
    for _, seg in log.groupby(changed.cumsum(), sort=True):
        first, last = int(seg["epoch"].iloc[0]), int(seg["epoch"].iloc[-1])
        size = f" at {int(seg['image_size'].iloc[0])} px" if "image_size" in seg.columns else ""
        span = f"epoch {first}" if first == last else f"epochs {first}–{last}"
        out.append(f"{seg['phase'].iloc[0]}{size} ({span})")
    return out


def segmenter_members(config: dict[str, Any] | None) -> pd.DataFrame | None:
    """One row per member network of an ensemble segmenter's ``config.json``.

    Args:
        config: The segmenter's config (``segmentation.combine`` writes ``members``).

    Returns:
        Columns ``member``, ``base filters``, ``mirror input``, ``best epoch``,
        ``val Dice (training metric)``, ``epochs``, ``wall time h``; ``None`` for a
        single network or an unknown config.
    """
    members = (config or {}).get("members")
    if not members:
        return None
    rows = []
    for m in members:
        arch = m.get("architecture") or {}
        wall = m.get("wall_time_s_total", m.get("wall_time_s"))
        rows.append({
            "member": m.get("name"),
            "base filters": arch.get("base_filters"),
            "mirror input": bool(arch.get("mirror_input", False)),
            "best epoch": m.get("best_epoch"),
            "val Dice (training metric)": m.get("best_val_dice"),
            "epochs": m.get("epochs_completed_total", m.get("epochs_completed")),
            "wall time h": None if wall is None else round(float(wall) / 3600.0, 2),
        })
    return pd.DataFrame(rows)


def read_per_image(path: Path) -> pd.DataFrame:
    """Read a segmentation ``per_image.csv``, ``id`` kept as text (``0006`` stays ``0006``)."""
    df = pd.read_csv(path, dtype={"id": str, "label": str})
    for col in ("dice", "iou"):
        if col not in df.columns:
            raise ValueError(f"{Path(path).name} has no {col!r} column")
    if "label" not in df.columns:
        df["label"] = "unknown"
    df["label"] = df["label"].fillna("unknown")
    return df


def read_table(path: Path, required: tuple[str, ...]) -> pd.DataFrame | None:
    """Read a CSV holding at least the ``required`` columns; ``None`` if absent or malformed."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError):
        return None
    return df if set(required) <= set(df.columns) else None


def read_threshold_sweep(path: Path) -> pd.DataFrame | None:
    """Read ``threshold_sweep.csv``; ``None`` when absent, unreadable or lacking columns."""
    return read_table(path, ("threshold", "mean_dice"))


SEG_CI_COLUMN = "mean Dice 95 % CI"


def seg_summary(df: pd.DataFrame, record: dict[str, Any] | None = None) -> pd.DataFrame:
    """Mean / median / min Dice and IoU, overall and per tumour class.

    Args:
        df: ``per_image.csv`` rows (``dice``, ``iou``, optional ``label``).
        record: The run's ``metrics.json``; when it holds patient-level intervals
            (``segmentation.evaluate`` with patient ids), columns ``patients`` and
            :data:`SEG_CI_COLUMN` (``"low–high"``, blank where not computed) are added.
    """
    def _row(name: str, part: pd.DataFrame) -> dict[str, Any]:
        return {"class": name, "images": len(part),
                "mean Dice": part["dice"].mean(), "median Dice": part["dice"].median(),
                "min Dice": part["dice"].min(), "mean IoU": part["iou"].mean(),
                "median IoU": part["iou"].median()}

    rows = [_row("all", df)]
    if "label" in df.columns:
        rows += [_row(str(label), part) for label, part in df.groupby("label", sort=True)]
    out = pd.DataFrame(rows)
    if record and record.get("mean_dice_ci95"):
        per_class = record.get("per_class") or {}
        sources = [record] + [per_class.get(name) or {} for name in out["class"].iloc[1:]]
        out.insert(2, "patients", [s.get("n_patients") for s in sources])
        out[SEG_CI_COLUMN] = [
            "{:.3f}–{:.3f}".format(*s["mean_dice_ci95"]) if s.get("mean_dice_ci95") else ""
            for s in sources
        ]
    return out


SERIES_MISSED_COLUMN = "missed, % of slices (Dice < 0.05)"
SERIES_FOUND_COLUMN = "mean Dice of the rest"


def series_table(per_image: pd.DataFrame, split_csv: Path) -> pd.DataFrame | None:
    """Dice per patient series of figshare-seg (:func:`segmentation.cohorts.cohort_summary`).

    ``None`` when it cannot be computed (no usable split covering every image).
    Patient ids never leave the library function.
    """
    from segmentation.cohorts import cohort_summary

    table = cohort_summary(per_image, split_csv)
    if table is None:
        return None
    table = table.assign(missed_share=100.0 * table["missed_share"])
    return table.drop(columns=["ci95_low", "ci95_high"]).rename(
        columns={"cohort": "series", "mean_dice": "mean Dice", "median_dice": "median Dice",
                 "ci95": SEG_CI_COLUMN, "missed_share": SERIES_MISSED_COLUMN,
                 "mean_dice_found": SERIES_FOUND_COLUMN}
    )


CONTRAST_BAND_COLUMN = "tumour contrast, SD"
CONTRAST_ALNUM_COLUMN = "from alphanumeric-id patients, %"


def contrast_bands_table(per_image: pd.DataFrame, split_csv: Path) -> pd.DataFrame | None:
    """Dice per tumour-contrast band (:func:`segmentation.cohorts.contrast_summary`), for display.

    ``None`` for records without ``tumour_contrast_sd`` or without a covering split.
    Shares are in percent; patient ids never leave the library function.
    """
    from segmentation.cohorts import contrast_summary

    table = contrast_summary(per_image, split_csv)
    if table is None:
        return None
    table = table.assign(missed_share=100.0 * table["missed_share"],
                         alphanumeric_share=100.0 * table["alphanumeric_share"])
    return table.rename(columns={
        "band": CONTRAST_BAND_COLUMN, "mean_dice": "mean Dice", "median_dice": "median Dice",
        "missed_share": SERIES_MISSED_COLUMN, "alphanumeric_share": CONTRAST_ALNUM_COLUMN})


def test_ids(split_csv: Path) -> list[str] | None:
    """Ids of the ``split == "test"`` rows of a segmentation split CSV (``None`` if absent)."""
    split_csv = Path(split_csv)
    if not split_csv.is_file():
        return None
    df = pd.read_csv(split_csv, dtype=str)
    if "id" not in df.columns or "split" not in df.columns:
        return None
    return df.loc[df["split"] == "test", "id"].tolist()


def browser_cases(per_image: pd.DataFrame, ids: list[str] | None) -> pd.DataFrame:
    """Held-out cases to browse, worst Dice first (restricted to ``ids`` when given)."""
    df = per_image if ids is None else per_image[per_image["id"].isin(set(ids))]
    keep = [c for c in ("id", "label", "dice", "iou", "gt_area_px", "pred_area_px")
            if c in df.columns]
    return df[keep].sort_values(["dice", "id"], kind="stable").reset_index(drop=True)


def with_files(cases: pd.DataFrame, images_dir: Path, masks_dir: Path) -> pd.DataFrame:
    """Keep the cases whose image and mask exist; adds ``image_path`` and ``mask_path``."""
    out = cases.copy()
    out["image_path"] = [find_image(images_dir, i) for i in out["id"]]
    out["mask_path"] = [find_image(masks_dir, i) for i in out["id"]]
    keep = out["image_path"].notna() & out["mask_path"].notna()
    return out[keep].reset_index(drop=True)


@dataclass(frozen=True)
class CaseReview:
    """One held-out slice, its predicted and true masks, and their overlap.

    Attributes:
        image: The decoded slice.
        predicted: ``(H, W)`` bool predicted mask.
        truth: ``(H, W)`` bool ground-truth mask.
        dice: Dice of the two masks (both empty: 1.0, see :mod:`segmentation.metrics`).
        iou: Intersection over union, same policy.
    """

    image: Any
    predicted: np.ndarray
    truth: np.ndarray
    dice: float
    iou: float

    @property
    def truth_area_px(self) -> int:
        """Ground-truth area in pixels."""
        return int(self.truth.sum())

    @property
    def predicted_area_px(self) -> int:
        """Predicted area in pixels."""
        return int(self.predicted.sum())


def review_case(image: Any, predicted: np.ndarray, truth: np.ndarray) -> CaseReview:
    """Score a predicted mask against the ground truth of the same slice.

    Raises:
        ValueError: If the two masks differ in shape.
    """
    if truth.shape != predicted.shape:
        raise ValueError(f"the mask has shape {truth.shape}, the image {predicted.shape}")
    truth, predicted = truth.astype(bool), predicted.astype(bool)
    return CaseReview(image, predicted, truth, float(dice_coefficient(truth, predicted)),
                      float(iou(truth, predicted)))


def find_image(folder: Path, image_id: str) -> Path | None:
    """Find the file ``<image_id>.<ext>`` in ``folder`` (first match), or ``None``."""
    folder = Path(folder)
    for ext in (".jpg", ".png", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm"):
        p = folder / f"{image_id}{ext}"
        if p.is_file():
            return p
    return None


# ---------------------------------------------------------------- robustness
ROBUSTNESS_COLUMNS = ("corruption", "severity", "model", "n", "accuracy", "changed")


def read_robustness_summary(path: Path) -> pd.DataFrame | None:
    """Read ``summary.csv`` of ``ensemble.robustness``; ``None`` if absent or malformed."""
    return read_table(path, ROBUSTNESS_COLUMNS)


def robustness_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per condition: each model's accuracy, and how often the final answer changed.

    Args:
        summary: ``summary.csv`` of ``ensemble.robustness``.

    Returns:
        Columns ``condition`` (e.g. ``"blur 2"``, ``"none"`` for the clean slices),
        one accuracy column per model (display names, ensemble last), the
        ensemble's 95 % Wilson interval (``<ensemble label>, 95% low`` / ``high``),
        ``final answer changed`` (fraction of slices whose ensemble class differs
        from the clean one) and, when recorded, the ensemble's exact McNemar p-value
        against the clean slices; the clean row first, then the worst ensemble
        accuracy first.
    """
    wide = summary.pivot_table(index=["corruption", "severity"], columns="model",
                               values="accuracy", sort=False)
    models = [m for m in (*BASE_MODELS, ENSEMBLE) if m in wide.columns]
    wide = wide[models].rename(columns=model_label)
    if ENSEMBLE in set(summary["model"]):
        changed = summary[summary["model"] == ENSEMBLE].set_index(["corruption", "severity"])
        bounds = [wilson_interval(round(a * n), int(n))
                  for a, n in zip(changed["accuracy"], changed["n"], strict=True)]
        label = model_label(ENSEMBLE)
        wide[f"{label}, 95% low"] = pd.Series([b[0] for b in bounds], index=changed.index)
        wide[f"{label}, 95% high"] = pd.Series([b[1] for b in bounds], index=changed.index)
        wide["final answer changed"] = changed["changed"]
        if "p_vs_clean" in changed.columns:
            wide["p vs clean (McNemar)"] = changed["p_vs_clean"]
    wide = wide.reset_index()
    wide.insert(0, "condition", [c if c == "none" else f"{c} {v}" for c, v in
                                 zip(wide["corruption"], wide["severity"], strict=True)])
    clean = wide["corruption"] == "none"
    key = model_label(models[-1])  # the ensemble when present
    ordered = pd.concat([wide[clean], wide[~clean].sort_values(key, kind="stable")])
    return ordered.drop(columns=["corruption", "severity"]).reset_index(drop=True)


SEG_ROBUSTNESS_COLUMNS = ("corruption", "severity", "n", "mean_dice", "dice_change",
                          "area_stable")


def read_seg_robustness_summary(path: Path) -> pd.DataFrame | None:
    """Read ``summary.csv`` of ``segmentation.robustness``; ``None`` if absent or malformed."""
    return read_table(path, SEG_ROBUSTNESS_COLUMNS)


PIPELINE_SERIES = "all, as the pipeline segments"
"""Series name of the pipeline's mean Dice (input check's mapping applied) in the chart."""


def seg_robustness_long(summary: pd.DataFrame) -> pd.DataFrame:
    """Reshape a segmentation robustness summary for :func:`~dashboard.charts.robustness_figure`.

    Returns:
        Columns ``corruption, severity, series, dice``: one row per condition for
        ``"all"`` (``mean_dice``), per tumour class (``mean_dice_<class>``) and, when
        :func:`with_pipeline_dice` added it, :data:`PIPELINE_SERIES`.
    """
    per_class = [c for c in summary.columns if c.startswith("mean_dice_")]
    extra = ["pipeline_mean_dice"] if "pipeline_mean_dice" in summary.columns else []
    long = summary.melt(id_vars=["corruption", "severity"],
                        value_vars=["mean_dice", *per_class, *extra],
                        var_name="series", value_name="dice")
    long["series"] = long["series"].str.removeprefix("mean_dice_").replace(
        {"mean_dice": "all", "pipeline_mean_dice": PIPELINE_SERIES})
    return long.dropna(subset=["dice"])


def with_pipeline_dice(summary: pd.DataFrame, corrected: pd.DataFrame | None) -> pd.DataFrame:
    """Add the run with the input check's mapping beside a robustness summary.

    Args:
        summary: ``summary.csv`` of ``python -m segmentation.robustness`` (slices as they are).
        corrected: The same with ``--intensity-reference auto``, or ``None``.

    Returns:
        ``summary`` plus ``pipeline_mean_dice`` and ``mapped`` (share of slices the
        check mapped) per condition (NaN for a condition the second run lacks);
        ``summary`` unchanged when ``corrected`` is ``None``.
    """
    if corrected is None:
        return summary
    keep = corrected[["corruption", "severity", "mean_dice"]].rename(
        columns={"mean_dice": "pipeline_mean_dice"})
    keep["mapped"] = corrected.get("intensity_corrected", np.nan)
    return summary.merge(keep, on=["corruption", "severity"], how="left")


def stale_weights(record: dict[str, Any], current: dict[str, str | None]) -> list[str]:
    """Name the models whose weights differ from those a stored run was made with.

    Args:
        record: A run's ``metrics.json`` with ``weights_sha256`` (model -> SHA-256).
        current: Model -> SHA-256 of the shipped weights (``None``: unknown, ignored).

    Returns:
        Sorted names of the models recorded with another SHA-256 than shipped now.
    """
    made_with = record.get("weights_sha256") or {}
    return sorted(name for name, sha in current.items()
                  if sha is not None and name in made_with and made_with[name] != sha)


def record_disagrees(record: dict[str, Any], name: str, accuracy: float,
                     tolerance: float = 1e-6) -> bool:
    """Whether a run's ``metrics.json`` states another accuracy for ``name`` than recomputed.

    Args:
        record: The run's ``metrics.json`` (``models`` -> name -> ``accuracy``).
        name: Model name.
        accuracy: Accuracy recomputed from the run's ``predictions.csv``.
        tolerance: Largest difference that still agrees.

    Returns:
        ``False`` when the record has no accuracy for ``name``.
    """
    stored = (record.get("models") or {}).get(name) or {}
    return "accuracy" in stored and abs(float(stored["accuracy"]) - accuracy) > tolerance


META_FOLDERS = ("meta", "meta_single_crop")


def evaluation_provenance(record: dict[str, Any], shipped: dict[str, str | None]
                          ) -> tuple[list[str], str | None]:
    """Check an evaluation record against the shipped weights.

    Args:
        record: A classification run's ``metrics.json`` (``artifacts``: model ->
            SHA-256 of the weights used, ``reused``: members taken from an earlier
            run) or a segmentation run's (``artifact.weights_sha256``).
        shipped: Model -> SHA-256 of the shipped weights (``resunet`` for the
            segmenter; ``meta`` and ``meta_single_crop`` both count for a run's
            ``meta``, which is the meta-learner of that run's mode).

    Returns:
        ``(stale, reused_note)``: the sorted models whose recorded weights are not the
        shipped ones (models without a recorded or shipped SHA are not judged), and a
        sentence naming the members whose probabilities were reused, or ``None``.
    """
    made_with = record.get("artifacts")
    made_with = dict(made_with) if isinstance(made_with, dict) else {}
    artifact = record.get("artifact")
    if isinstance(artifact, dict) and artifact.get("weights_sha256"):
        made_with["resunet"] = artifact["weights_sha256"]
    metas = {shipped.get(m) for m in META_FOLDERS} - {None}
    stale = []
    for name, sha in made_with.items():
        if name in META_FOLDERS:
            if metas and sha not in metas:
                stale.append(name)
        elif shipped.get(name) is not None and sha != shipped[name]:
            stale.append(name)
    reused = record.get("reused")
    note = None
    if isinstance(reused, dict) and reused.get("members"):
        note = ("The probabilities of " + ", ".join(model_label(m) for m in reused["members"])
                + " were taken from an earlier run with the same weights (SHA-256 checked) and "
                "the final answers recomputed.")
    return sorted(stale), note


def after_training(config: dict[str, Any] | None) -> list[str]:
    """Say what was done to a classifier after its logged training, from its config.

    Args:
        config: The model folder's ``config.json``.

    Returns:
        One sentence per recorded step (batch-norm statistics re-estimated at the
        native size; classification head refitted), with the validation accuracy
        before and after each; empty when neither was done.
    """
    training = (config or {}).get("training") or {}
    out = []
    recal = training.get("batchnorm_recalibration")
    if isinstance(recal, dict):
        out.append(
            f"Batch-norm statistics re-estimated at {recal.get('input_size', '?')} px on "
            f"{recal.get('images', '?')} training images ({recal.get('source', '')}): "
            f"validation accuracy {_fmt3(recal.get('val_accuracy_before'))} -> "
            f"{_fmt3(recal.get('val_accuracy_after'))}.")
    refit = training.get("head_refit")
    if isinstance(refit, dict):
        where = f" from layer {refit['from_layer']}" if refit.get("from_layer") else ""
        out.append(
            f"Classification head refitted{where} on {refit.get('n_train', '?')} training "
            f"slices with {refit.get('n_holdout', '?')} held out (best epoch "
            f"{refit.get('best_epoch', '?')}, hold-out accuracy "
            f"{_fmt3(refit.get('holdout_accuracy'))}): validation accuracy "
            f"{_fmt3(refit.get('val_accuracy_shipped_head'))} -> "
            f"{_fmt3(refit.get('val_accuracy_refitted_head'))}; the curve below is its log.")
    return out


def _fmt3(x: object) -> str:
    return f"{float(x):.3f}" if isinstance(x, (int, float)) else "?"
