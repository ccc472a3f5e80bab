r"""Confidence cascade: the single crop first, the mirror-averaged default only when unsure.

The default mode runs every base model on the crop and on its mirror image
(twice the arithmetic of a single crop) because that is what met the accuracy
floors. Most slices do not need it: the single-crop ensemble (its own
meta-learner, ``meta_single_crop``) is already sure of them. The cascade runs
every slice once as a single crop and sends to the default mode only the slices
whose single-crop top probability is below a threshold; their final answer is
the default mode's.

The threshold is chosen on the validation split from *out-of-fold* meta-learner
outputs (both meta-learners were fitted on those rows, so their in-sample
confidence would be too high): the smallest grid value from which on the cascade
is at least as accurate, in accuracy and macro-F1, as the default mode
(:func:`choose_threshold`). ``python -m ensemble.cascade fit`` writes the choice
to ``artifacts/classification/cascade.json``; ``python -m ensemble.cascade score``
scores it on a split from the two modes' saved predictions, without running a model::

    python -m ensemble.cascade fit \
        artifacts/evaluation/classification/val_single_crop/predictions.csv \
        artifacts/evaluation/classification/val/predictions.csv
    python -m ensemble.cascade score \
        artifacts/evaluation/classification/test_single_crop/predictions.csv \
        artifacts/evaluation/classification/test/predictions.csv \
        --out artifacts/evaluation/classification/test_cascade

Shapes: probabilities are ``(N, 4)`` in :data:`neurostack.CLASS_NAMES` order;
labels ``(N,)`` class indices.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from neurostack import CLASS_NAMES

if TYPE_CHECKING:  # at run time each of the two modules imports the other inside functions
    from ensemble.inference import Ensemble, EnsemblePrediction

CASCADE_FILE = "cascade.json"
"""Name of the cascade's record in the classification artifacts folder."""
FIRST_META = "meta_single_crop"
"""Folder of the meta-learner of the first (single-crop) pass."""
SECOND_META = "meta"
"""Folder of the default (mirror-averaged) meta-learner, the second pass."""
DEFAULT_GRID: tuple[float, ...] = (
    0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95, 0.97, 0.98, 0.99,
)
"""Thresholds tried by :func:`choose_threshold` (fixed before the first result)."""


def escalation_mask(first: np.ndarray, threshold: float) -> np.ndarray:
    """``(N,)`` bool: the rows of ``first`` whose top probability is below ``threshold``.

    Args:
        first: ``(N, K)`` probabilities of the first pass.
        threshold: In ``[0, 1]``; 0 escalates nothing, above 1 everything.

    Raises:
        ValueError: If ``first`` is not 2-D or ``threshold`` is negative or not finite.
    """
    first = np.asarray(first, dtype=np.float64)
    if first.ndim != 2:
        raise ValueError(f"first must be (N, K) probabilities; received shape {first.shape}")
    if not np.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite number >= 0; received {threshold!r}")
    return first.max(axis=1) < threshold


def combine(first: np.ndarray, second: np.ndarray, escalate: np.ndarray) -> np.ndarray:
    """``(N, K)``: ``second``'s rows where ``escalate``, ``first``'s elsewhere."""
    first, second = np.asarray(first), np.asarray(second)
    escalate = np.asarray(escalate, dtype=bool)
    if first.shape != second.shape or escalate.shape != first.shape[:1]:
        raise ValueError(
            f"need first and second of one (N, K) shape and escalate (N,); received "
            f"{first.shape}, {second.shape} and {escalate.shape}"
        )
    return np.where(escalate[:, None], second, first)


def _accuracy_f1(y: np.ndarray, pred: np.ndarray, k: int) -> tuple[float, float]:
    """``(accuracy, macro-F1 over the classes present in y)``."""
    from ensemble.metrics import confusion_matrix, per_class_report

    names = [str(c) for c in range(k)]
    report = per_class_report(confusion_matrix(y, pred, k), names)
    f1 = [report[n]["f1"] for n in names if report[n]["support"] > 0]
    return float((pred == y).mean()), float(np.mean(f1))


def threshold_sweep(
    first: np.ndarray, second: np.ndarray, y: np.ndarray, grid: Sequence[float] = DEFAULT_GRID
) -> list[dict[str, float]]:
    """Score the cascade at every threshold of ``grid``.

    Args:
        first: ``(N, K)`` first-pass (single-crop) final probabilities.
        second: ``(N, K)`` second-pass (default mode) final probabilities.
        y: ``(N,)`` true class indices.
        grid: Thresholds, each in ``[0, 1]``.

    Returns:
        One ``{"threshold", "accuracy", "macro_f1", "escalated", "escalated_share"}``
        per grid value, in grid order.
    """
    y = np.asarray(y, dtype=int)
    k = np.asarray(first).shape[1]
    rows = []
    for t in grid:
        esc = escalation_mask(first, float(t))
        acc, f1 = _accuracy_f1(y, combine(first, second, esc).argmax(1), k)
        rows.append({"threshold": float(t), "accuracy": acc, "macro_f1": f1,
                     "escalated": int(esc.sum()), "escalated_share": float(esc.mean())})
    return rows


def choose_threshold(
    sweep: Sequence[dict[str, float]], reference_accuracy: float, reference_macro_f1: float
) -> float | None:
    """Return the smallest threshold from which on (every larger one too) the cascade is no worse.

    "No worse" means accuracy >= ``reference_accuracy`` and macro-F1 >=
    ``reference_macro_f1`` (the default mode's, scored the same way). Requiring it of
    every larger grid value too avoids a lone lucky threshold. ``None`` when even the
    largest grid value fails.
    """
    rows = sorted(sweep, key=lambda r: r["threshold"])
    chosen = None
    for row in reversed(rows):
        ok = (row["accuracy"] >= reference_accuracy - 1e-12
              and row["macro_f1"] >= reference_macro_f1 - 1e-12)
        if not ok:
            break
        chosen = row["threshold"]
    return chosen


def _final(df: pd.DataFrame) -> np.ndarray:
    return df[[f"ensemble_{c}" for c in CLASS_NAMES]].to_numpy(dtype=np.float64)


def _records(first_csv: Path, second_csv: Path, *, part: str | None = None
             ) -> tuple[pd.DataFrame, pd.DataFrame, dict, dict]:
    """Both modes' predictions of one split, aligned by path, and their ``metrics.json``.

    Raises:
        ValueError: If a record is missing, of the wrong test-time augmentation or
            split part, or the two cover different slices.
    """
    out = []
    for csv, tta in ((Path(first_csv), "none"), (Path(second_csv), "hflip")):
        metrics_file = csv.parent / "metrics.json"
        try:
            metrics = json.loads(metrics_file.read_text())
            df = pd.read_csv(csv)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read {csv} and its metrics.json ({exc})") from None
        if metrics.get("tta", "none") != tta:
            raise ValueError(f"{csv} must be evaluated with --tta {tta}; its record says "
                             f"{metrics.get('tta', 'none')!r}")
        got = (metrics.get("split") or {}).get("part")
        if part is not None and got != part:
            raise ValueError(f"{csv} must be of the {part!r} split part; its record says {got!r}")
        out.append((df, metrics))
    (a, ma), (b, mb) = out
    if set(a["path"]) != set(b["path"]):
        raise ValueError(f"{first_csv} and {second_csv} cover different slices "
                         f"({len(set(a['path']) ^ set(b['path']))} differ)")
    b = b.set_index("path").loc[a["path"]].reset_index()
    return a, b, ma, mb


def fit_cascade(
    first_csv: Path,
    second_csv: Path,
    classification_dir: Path,
    *,
    grid: Sequence[float] = DEFAULT_GRID,
    write: bool = True,
) -> dict[str, Any]:
    """Choose the threshold on validation predictions of both modes; write ``cascade.json``.

    Args:
        first_csv: ``predictions.csv`` of the validation split with ``--tta none``.
        second_csv: The same split with ``--tta hflip`` (the default mode).
        classification_dir: Holds ``meta_single_crop/`` and ``meta/`` (fitted on these
            two files); the record is written there as :data:`CASCADE_FILE`.
        grid: Thresholds tried.
        write: Write the record (else only return it).

    Returns:
        The record: ``threshold`` (``None`` when no grid value qualifies), the sweep,
        the default mode's out-of-fold scores and the meta-learners' SHA-256.

    Raises:
        ValueError: If the records are not of the validation split, of the wrong modes,
            or do not match the meta-learners.
    """
    from ensemble.stack import heldout_out_of_fold
    from neurostack.artifacts import sha256_file, write_json

    t0 = time.time()
    first_df, second_df, _, _ = _records(first_csv, second_csv, part="val")
    root = Path(classification_dir)
    oof_first, check_first = heldout_out_of_fold(Path(first_csv), root / FIRST_META)
    oof_second, check_second = heldout_out_of_fold(Path(second_csv), root / SECOND_META)
    oof_second = oof_second.set_index("path").loc[first_df["path"]].reset_index()
    y = np.array([CLASS_NAMES.index(c) for c in first_df["label"]])
    p1, p2 = _final(oof_first), _final(oof_second)
    ref_acc, ref_f1 = _accuracy_f1(y, p2.argmax(1), len(CLASS_NAMES))
    single_acc, single_f1 = _accuracy_f1(y, p1.argmax(1), len(CLASS_NAMES))
    sweep = threshold_sweep(p1, p2, y, grid)
    threshold = choose_threshold(sweep, ref_acc, ref_f1)
    chosen = next((r for r in sweep if r["threshold"] == threshold), None)
    record = {
        "format": 1,
        "threshold": threshold,
        "decision": "escalate a slice to the default (mirror-averaged) mode when the "
                    "single-crop meta-learner's top probability is below the threshold",
        "first_pass": {"meta_learner": FIRST_META, "tta": "none"},
        "second_pass": {"meta_learner": SECOND_META, "tta": "hflip"},
        "chosen_by": "smallest grid threshold from which on the out-of-fold validation "
                     "accuracy and macro-F1 are at least the default mode's",
        "grid": [float(t) for t in grid],
        "validation": {
            "n_images": int(len(y)),
            "out_of_fold": {
                "default_mode": {"accuracy": ref_acc, "macro_f1": ref_f1},
                "single_crop": {"accuracy": single_acc, "macro_f1": single_f1},
                "cascade_at_threshold": chosen,
            },
            "sweep": sweep,
            "cv_reproduced": {FIRST_META: check_first, SECOND_META: check_second},
            "predictions": {"first": str(first_csv), "second": str(second_csv)},
        },
        "meta_sha256": {
            name: sha256_file(root / name / "weights.npz") for name in (FIRST_META, SECOND_META)
        },
        "wall_time_s": round(time.time() - t0, 1),
    }
    if write:
        write_json(root / CASCADE_FILE, record)
    return record


def score_cascade(first_csv: Path, second_csv: Path, threshold: float) -> tuple[pd.DataFrame, dict]:
    """Score the cascade on a split from both modes' saved predictions (no model is run).

    Returns:
        ``(predictions, metrics)``: the per-slice table (the pass that answered in
        ``escalated``, the final ``pred`` and probabilities, the default mode's
        ``default_pred``) and ``{"cascade", "default_mode", "single_crop"}`` metrics
        with the escalated count and the exact McNemar test against the default mode.
    """
    from ensemble.metrics import classification_metrics, mcnemar_exact

    first_df, second_df, m1, m2 = _records(first_csv, second_csv)
    y = np.array([CLASS_NAMES.index(c) for c in first_df["label"]])
    p1, p2 = _final(first_df), _final(second_df)
    esc = escalation_mask(p1, threshold)
    final = combine(p1, p2, esc)
    table = pd.DataFrame({"path": first_df["path"], "label": first_df["label"],
                          "pred": [CLASS_NAMES[i] for i in final.argmax(1)],
                          "escalated": esc,
                          "default_pred": [CLASS_NAMES[i] for i in p2.argmax(1)]})
    for c, name in enumerate(CLASS_NAMES):
        table[f"ensemble_{name}"] = final[:, c]
    metrics = {
        "threshold": float(threshold),
        "n_images": int(len(y)),
        "escalated": int(esc.sum()),
        "escalated_share": float(esc.mean()),
        "split": m2.get("split"),
        "cascade": classification_metrics(y, final, CLASS_NAMES),
        "default_mode": classification_metrics(y, p2, CLASS_NAMES),
        "single_crop": classification_metrics(y, p1, CLASS_NAMES),
        "vs_default_mode": mcnemar_exact(final.argmax(1) == y, p2.argmax(1) == y),
        "predictions": {"first": str(first_csv), "second": str(second_csv)},
    }
    return table, metrics


def read_cascade(classification_dir: Path) -> dict[str, Any] | None:
    """Read the cascade record of ``classification_dir``; ``None`` when there is none.

    Raises:
        ValueError: If the record exists but is unreadable or its threshold is invalid.
    """
    path = Path(classification_dir) / CASCADE_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
    t = record.get("threshold")
    if t is not None and (not isinstance(t, int | float) or not 0 <= t <= 1):
        raise ValueError(f"{path}: threshold must be a number in [0, 1] or null; received {t!r}")
    return record


def cascade_available(classification_dir: Path) -> bool:
    """Whether ``classification_dir`` holds a cascade threshold and both meta-learners."""
    root = Path(classification_dir)
    try:
        record = read_cascade(root)
    except ValueError:
        return False
    return (record is not None and record.get("threshold") is not None
            and all((root / n / "config.json").is_file() for n in (FIRST_META, SECOND_META)))


SECOND_TTA = "hflip"
"""Test-time augmentation of the second pass (the default mode)."""


class CascadeEnsemble:
    """Single crops through every base model first; the default mode for the unsure slices.

    ``first`` is the single-crop mode (its meta-learner and, with ``precision="auto"``,
    the precision recorded for it) and ``second`` the default mode; they share every
    base model loaded in the same precision. Exposes the parts of
    :class:`ensemble.inference.Ensemble` the pipeline, evaluation and benchmark use.
    """

    tta = "cascade"

    def __init__(self, first: Ensemble, second: Ensemble, threshold: float,
                 record: dict[str, Any]) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1]; received {threshold!r}")
        self.first = first
        self.second = second
        self.threshold = float(threshold)
        self.record = record

    members = property(lambda self: self.second.members)
    """The default mode's base models (the first pass may hold copies in another precision)."""
    meta = property(lambda self: self.second.meta)
    sizes = property(lambda self: self.second.sizes)
    runtimes = property(lambda self: self.second.runtimes)

    @property
    def precision_note(self) -> str:
        """Both passes' precisions and why."""
        if self.first.precision_note == self.second.precision_note:
            return self.second.precision_note
        return (f"single-crop pass: {self.first.precision_note}; default-mode pass: "
                f"{self.second.precision_note}")

    load_options = property(lambda self: self.second.load_options)

    @property
    def missing(self) -> list[str]:
        """Missing artifacts of either pass."""
        return [*self.second.missing, *(m for m in self.first.missing
                                         if m not in self.second.missing)]

    @property
    def method(self) -> str:
        """How the final probabilities are formed."""
        return (f"cascade: every base model on the slice alone and the meta-learner fitted on "
                f"single crops; when its top probability is below {self.threshold:.2f}, "
                f"{self.second.method}")

    def predict_crops(self, crops: list[np.ndarray],
                      given: dict[str, np.ndarray] | None = None) -> EnsemblePrediction:
        """Classify greyscale crops; ``escalated`` marks the rows the default mode answered.

        Raises:
            ValueError: If ``given`` (precomputed member probabilities) is passed: which
                pass computes a row is only known after the first pass.
        """
        from ensemble.inference import EnsemblePrediction

        if given:
            raise ValueError("the cascade cannot reuse precomputed probabilities (given=)")
        first = self.first.predict_crops(crops)
        esc = escalation_mask(first.ensemble, self.threshold)
        per = {n: np.array(v, dtype=np.float32) for n, v in first.per_model.items()}
        final = np.array(first.ensemble, dtype=np.float32)
        if esc.any():
            idx = np.flatnonzero(esc)
            second = self.second.predict_crops([crops[i] for i in idx])
            for n in per:
                per[n][idx] = second.per_model[n]
            final[idx] = second.ensemble
        return EnsemblePrediction(per, final, self.method, escalated=esc)

    def with_tta(self, tta: str) -> CascadeEnsemble | Ensemble:
        """``self`` for ``"cascade"``, else the pass of mode ``tta`` (already loaded)."""
        from ensemble.inference import check_classifier_mode

        check_classifier_mode(tta)
        return {"cascade": self, "none": self.first}.get(tta) or self.second.with_tta(tta)


def build_cascade(ensemble: Ensemble) -> CascadeEnsemble:
    """Wrap a loaded :class:`ensemble.inference.Ensemble` into the cascade.

    The second pass is ``ensemble`` in its mirror-averaged mode, the first that
    ensemble in single-crop mode (``Ensemble.with_tta("none")``: the meta-learner of
    ``meta_single_crop/`` and, with ``precision="auto"``, the precision recorded for
    single crops, sharing the models loaded alike); the threshold is the one in
    ``cascade.json`` next to them.

    Raises:
        ArtifactError: If ``cascade.json`` is missing, has no threshold or was chosen
            for other meta-learners, or the single-crop meta-learner is missing or
            fitted on other base weights.
    """
    from ensemble.inference import load_meta, stale_meta_inputs
    from neurostack.errors import ArtifactError

    if ensemble.meta is None:
        raise ArtifactError("the cascade needs both meta-learners; the default one is missing")
    second = ensemble.with_tta(SECOND_TTA)
    root = second.meta.folder.parent
    try:
        record = read_cascade(root)
    except ValueError as exc:
        raise ArtifactError(str(exc)) from None
    if record is None or record.get("threshold") is None:
        raise ArtifactError(
            f"{root / CASCADE_FILE} has no threshold: choose one on the validation split with "
            "python -m ensemble.cascade fit VAL_SINGLE_CROP/predictions.csv VAL/predictions.csv"
        )
    first_meta = load_meta(root / FIRST_META)
    stale = stale_meta_inputs(first_meta.config, second.members)
    if stale:
        raise ArtifactError(f"{root / FIRST_META} was fitted on other weights of "
                            f"{', '.join(stale)}; the cascade cannot use it")
    shipped = {FIRST_META: first_meta.config.get("weights_sha256"),
               SECOND_META: second.meta.config.get("weights_sha256")}
    chosen_for = record.get("meta_sha256") or {}
    if any(chosen_for.get(k) != v for k, v in shipped.items()):
        raise ArtifactError(f"{root / CASCADE_FILE} was chosen for other meta-learners; choose "
                            "its threshold again with python -m ensemble.cascade fit")
    first = second.with_tta("none")
    if first.meta is None or first.meta.folder != first_meta.folder:
        raise ArtifactError(f"the cascade's first pass must use {root / FIRST_META}")
    return CascadeEnsemble(first, second, float(record["threshold"]), record)


def main(argv: list[str] | None = None) -> int:
    """``fit`` (choose the threshold on validation) or ``score`` (a split from records)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="choose the threshold on the validation split")
    s = sub.add_parser("score", help="score the cascade on a split from saved predictions")
    for q in (f, s):
        q.add_argument("first_csv", type=Path, help="predictions.csv evaluated with --tta none")
        q.add_argument("second_csv", type=Path, help="predictions.csv evaluated with --tta hflip")
        q.add_argument("--artifacts", type=Path, default=Path("artifacts/classification"),
                       help="classification artifacts folder (default: %(default)s)")
    f.add_argument("--dry-run", action="store_true", help="print the choice, write nothing")
    s.add_argument("--threshold", type=float, default=None,
                   help="default: the one in ARTIFACTS/cascade.json")
    s.add_argument("--out", type=Path, default=None,
                   help="folder for predictions.csv and metrics.json")
    a = p.parse_args(argv)
    try:
        if a.command == "fit":
            rec = fit_cascade(a.first_csv, a.second_csv, a.artifacts, write=not a.dry_run)
            print(json.dumps({k: rec[k] for k in ("threshold", "validation")}, indent=2))
            return 0
        threshold = a.threshold
        if threshold is None:
            rec = read_cascade(a.artifacts)
            if rec is None or rec.get("threshold") is None:
                p.error(f"no threshold given and no usable {a.artifacts / CASCADE_FILE}")
            threshold = float(rec["threshold"])
        table, metrics = score_cascade(a.first_csv, a.second_csv, threshold)
    except ValueError as exc:
        p.error(str(exc))
    if a.out is not None:
        from neurostack.artifacts import write_json

        a.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(a.out / "predictions.csv", index=False)
        write_json(a.out / "metrics.json", metrics)
    summary = {k: metrics[k] for k in ("threshold", "n_images", "escalated", "escalated_share",
                                       "vs_default_mode")}
    for mode in ("cascade", "default_mode", "single_crop"):
        summary[mode] = {k: metrics[mode][k] for k in ("accuracy", "macro_f1")}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
