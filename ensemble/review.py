r"""Review flag: which ensemble answers to double-check.

The indicator is the **top probability of the meta-learner's output**. Each
meta-learner (``meta``, the default mirror-averaged mode; ``meta_single_crop``)
gets its own flag threshold, chosen on the validation split from its
**out-of-fold** outputs (:func:`ensemble.stack.heldout_out_of_fold`: both were
fitted on those rows, so their in-sample confidence would be too high). An
*error* is a wrong answer; the threshold on :data:`GRID` with the largest
Youden's J for "top probability below it" detecting an error is kept (ties: the
lower threshold, fewer flags). In the cascade a slice is answered by one of
the two meta-learners, and that one's threshold applies.

A meta-learner's threshold is used only if it passed the rule written before the
result (:data:`MIN_AUROC`, :data:`MIN_ACCURACY_GAP`;
``artifacts/evaluation/experiments/2026-12-07_review_flag/rule.md``); otherwise
the pipeline keeps its fixed :data:`FALLBACK_THRESHOLD`. The record,
``artifacts/classification/review.json``, pins each meta-learner's SHA-256.

Usage::

    python -m ensemble.review fit artifacts/evaluation/classification/val/predictions.csv \\
        artifacts/evaluation/classification/val_single_crop/predictions.csv
    python -m ensemble.review score artifacts/evaluation/classification/test/predictions.csv \\
        artifacts/evaluation/classification/test_single_crop/predictions.csv \\
        artifacts/evaluation/classification/test_cascade/predictions.csv

``score`` only reports (and stores the report under ``evaluated``); it never
changes a threshold. Shapes: probabilities ``(N, 4)`` in
:data:`neurostack.CLASS_NAMES` order.
"""

from __future__ import annotations

import datetime as _dt
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from neurostack import CLASS_NAMES
from neurostack.artifacts import CONFIG_FILE, read_json, sha256_file, write_json
from neurostack.cli import fit_score_parser, report_errors
from neurostack.errors import ArtifactError
from neurostack.formatting import format_optional

if TYPE_CHECKING:  # pandas is imported where used: the pipeline reads this module at start-up
    import pandas as pd

log = logging.getLogger(__name__)

RECORD_FILE = "review.json"
"""The flag thresholds' record, in the classification artifacts folder."""
RECORD_FORMAT = 1
GRID: tuple[float, ...] = tuple(round(0.50 + 0.01 * k, 2) for k in range(50))
"""Candidate flag thresholds, 0.50 to 0.99."""
MIN_AUROC = 0.80
MIN_ACCURACY_GAP = 0.20
"""The rule: a meta-learner's threshold is used only with at least this AUROC (top
probability separating right from wrong answers) and this gap between the unflagged
and flagged slices' accuracy (out-of-fold, validation split)."""
FALLBACK_THRESHOLD = 0.6
"""The fixed "low confidence" threshold used where no record applies."""
DEFAULT_ARTIFACTS = Path("artifacts/classification")
REQUIRED_KEYS: tuple[str, ...] = ("threshold", "meta_sha256", "passes_rule", "validation")
"""Keys the runtime reads from a meta-learner's entry; an entry lacking one is not used."""


def top_probability(probabilities: np.ndarray) -> np.ndarray:
    """``(N,)`` largest probability of each ``(N, K)`` row."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (N, K); received shape {p.shape}")
    return p.max(axis=1)


def review_summary(confidence: np.ndarray, correct: np.ndarray,
                   threshold: float | np.ndarray) -> dict[str, Any]:
    """How well "confidence below ``threshold``" separates wrong answers.

    Args:
        confidence: ``(N,)`` top probabilities.
        correct: ``(N,)`` bool, the answer was right.
        threshold: Flag when the confidence is below it; a float, or ``(N,)`` when
            rows were answered by meta-learners with different thresholds (cascade).

    Returns:
        ``n``, ``n_flagged``, ``n_errors``, ``errors_flagged``, ``sensitivity`` /
        ``specificity`` for errors, ``youden``, ``accuracy`` (all slices),
        ``accuracy_flagged`` / ``accuracy_unflagged``, ``coverage`` (share not
        flagged) and ``auroc`` (confidence ranking right above wrong answers).
        Undefined values are ``None``.
    """
    from ensemble.metrics import auc, detection_rates, roc_curve

    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if conf.ndim != 1 or conf.shape != ok.shape:
        raise ValueError(f"need one confidence per answer; received {conf.shape} and {ok.shape}")
    t = np.asarray(threshold, dtype=np.float64)
    if t.ndim not in (0, 1) or (t.ndim == 1 and t.shape != conf.shape):
        raise ValueError(f"threshold must be a number or one per answer; received {t.shape}")
    flagged = conf < t
    auroc = None
    if ok.any() and (~ok).any():
        fpr, tpr, _ = roc_curve(ok, conf)
        auroc = auc(fpr, tpr)
    return {
        "threshold": float(t) if t.ndim == 0 else sorted({float(v) for v in t}),
        "n": int(len(ok)),
        "n_flagged": int(flagged.sum()),
        "n_errors": int((~ok).sum()),
        "errors_flagged": int((flagged & ~ok).sum()),
        **detection_rates(flagged, ~ok),
        "accuracy": float(ok.mean()) if len(ok) else None,
        "accuracy_flagged": float(ok[flagged].mean()) if flagged.any() else None,
        "accuracy_unflagged": float(ok[~flagged].mean()) if (~flagged).any() else None,
        "coverage": float((~flagged).mean()) if len(ok) else None,
        "auroc": auroc,
    }


def review_sweep(confidence: np.ndarray, correct: np.ndarray,
                 grid: Sequence[float] = GRID) -> pd.DataFrame:
    """:func:`review_summary` at every threshold of ``grid``, one row each."""
    import pandas as pd

    return pd.DataFrame([review_summary(confidence, correct, t) for t in grid])


def choose_review_threshold(sweep: pd.DataFrame) -> float:
    """Return the sweep's threshold with the largest Youden's J (ties: the lower one)."""
    from ensemble.metrics import choose_youden_threshold

    return choose_youden_threshold(sweep["threshold"], sweep["youden"])


def passes_rule(summary: dict[str, Any]) -> bool:
    """Check the rule on a validation summary (:data:`MIN_AUROC`, :data:`MIN_ACCURACY_GAP`)."""
    flagged, unflagged = summary["accuracy_flagged"], summary["accuracy_unflagged"]
    return (
        summary["auroc"] is not None
        and summary["auroc"] >= MIN_AUROC
        and flagged is not None
        and unflagged is not None
        and unflagged - flagged >= MIN_ACCURACY_GAP
    )


def _probabilities(df: pd.DataFrame, source: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(top probability, correct)`` of a predictions table with ``label`` and ``ensemble_*``."""
    columns = ["label", *(f"ensemble_{c}" for c in CLASS_NAMES)]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"{source} lacks columns {missing} (written by python -m ensemble.evaluate)"
        )
    unknown = sorted(set(df["label"]) - set(CLASS_NAMES))
    if unknown:
        raise ValueError(f"{source}: unknown labels {unknown}; expected {list(CLASS_NAMES)}")
    import pandas as pd

    probs = df[columns[1:]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"{source}: {int(bad.sum())} row(s) with a missing or non-numeric "
                         f"probability, first in row {row + 2} ({df['path'].iloc[row]!r})")
    y = np.array([CLASS_NAMES.index(c) for c in df["label"]])
    return top_probability(probs), probs.argmax(axis=1) == y


def _evaluation(csv: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    csv = Path(csv)
    metrics_file = csv.parent / "metrics.json"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{metrics_file} not found (written next to predictions.csv)")
    try:
        import pandas as pd

        df = pd.read_csv(csv)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {csv} ({exc})") from None
    return df, read_json(metrics_file)


def _meta_of(metrics: dict[str, Any], root: Path, source: Path) -> str:
    """Name of the meta-learner folder that made an evaluation's ensemble column."""
    from ensemble.inference import select_meta_folder

    tta = metrics.get("tta")
    if tta not in ("none", "hflip"):
        raise ValueError(f"{source}: a single mode's evaluation is needed (tta none or hflip); "
                         f"its record says {tta!r}")
    return select_meta_folder(root, tta).name


def _meta_sha(root: Path, meta: str) -> str:
    cfg = read_json(root / meta / CONFIG_FILE)
    return sha256_file(root / meta / cfg.get("weights_file", "weights.npz"))


def _curve(confidence: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    from ensemble.metrics import risk_coverage

    rc = risk_coverage(confidence, correct)
    return {"aurc": rc["aurc"], "coverage": [round(float(v), 6) for v in rc["coverage"]],
            "accuracy": [round(float(v), 6) for v in rc["accuracy"]],
            "threshold": [round(float(v), 6) for v in rc["threshold"]]}


def fit(val_csvs: Sequence[str | Path], artifacts: str | Path = DEFAULT_ARTIFACTS
        ) -> dict[str, Any]:
    """Choose each meta-learner's flag threshold on its validation predictions; write the record.

    Args:
        val_csvs: ``predictions.csv`` of the validation split, one per mode
            (``--tta hflip`` for ``meta``, ``--tta none`` for ``meta_single_crop``);
            each meta-learner's out-of-fold outputs are recomputed from it.
        artifacts: The classification artifacts folder (the record is written there).

    Returns:
        The record written to ``artifacts/RECORD_FILE``.

    Raises:
        ValueError: If an evaluation is not of the validation split or names a mode
            twice, or the meta-learner was not fitted on it.
    """
    from ensemble.stack import heldout_out_of_fold

    root = Path(artifacts)
    entries: dict[str, Any] = {}
    for csv in map(Path, val_csvs):
        df, metrics = _evaluation(csv)
        part = (metrics.get("split") or {}).get("part")
        if part != "val":
            raise ValueError(f"thresholds are chosen on the validation split; {csv} is {part!r}")
        meta = _meta_of(metrics, root, csv)
        if meta in entries:
            raise ValueError(f"{csv}: a second evaluation for meta-learner {meta!r}")
        oof, check = heldout_out_of_fold(csv, root / meta)
        conf, correct = _probabilities(oof, csv)
        sweep = review_sweep(conf, correct)
        threshold = choose_review_threshold(sweep)
        summary = review_summary(conf, correct, threshold)
        entries[meta] = {
            "threshold": threshold,
            "tta": metrics.get("tta"),
            "meta_sha256": _meta_sha(root, meta),
            "validation": summary,
            "passes_rule": passes_rule(summary),
            "risk_coverage": _curve(conf, correct),
            "sweep": sweep.to_dict(orient="records"),
            "cv_reproduced": check,
            "fitted_on": str(csv),
        }
    record = {
        "format": RECORD_FORMAT,
        "indicator": "top probability of the meta-learner's output",
        "flag_rule": "top probability < threshold of the meta-learner that answered",
        "error": "the answer differs from the label",
        "chosen_by": "largest Youden's J for errors on the out-of-fold validation outputs "
                     "(ties: lower threshold)",
        "grid": [GRID[0], GRID[-1], 0.01],
        "rule": {"min_auroc": MIN_AUROC, "min_accuracy_gap": MIN_ACCURACY_GAP},
        "fallback_threshold": FALLBACK_THRESHOLD,
        "meta_learners": entries,
        "fitted_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "evaluated": {},
    }
    write_json(root / RECORD_FILE, record)
    return record


def row_thresholds(df: pd.DataFrame, metrics: dict[str, Any], record: dict[str, Any],
                   root: Path, source: Path) -> np.ndarray:
    """``(N,)`` the flag threshold of the meta-learner that answered each row.

    A cascade evaluation (``escalated`` column) takes ``meta`` for escalated rows and
    ``meta_single_crop`` for the rest; a single mode takes its own. A meta-learner
    without a passing entry for its current weights gets :data:`FALLBACK_THRESHOLD`.
    """
    from ensemble.cascade import FIRST_META, SECOND_META

    def threshold(meta: str) -> float:
        entry = entry_for(record, meta, _meta_sha(root, meta))
        return FALLBACK_THRESHOLD if entry is None else float(entry["threshold"])

    if "escalated" in df.columns:
        esc = df["escalated"].astype(str).str.lower().isin(["true", "1"]).to_numpy()
        return np.where(esc, threshold(SECOND_META), threshold(FIRST_META))
    return np.full(len(df), threshold(_meta_of(metrics, root, source)))


def score(csvs: Sequence[str | Path], artifacts: str | Path = DEFAULT_ARTIFACTS
          ) -> dict[str, dict[str, Any]]:
    """Report the recorded flag on evaluations of another split (changes no threshold).

    Each summary is stored under ``evaluated[<folder name>]`` in the record, with the
    risk-coverage curve of that evaluation.

    Raises:
        ValueError: If there is no record, or an evaluation is of the validation split.
    """
    root = Path(artifacts)
    record = read_record(root)
    if record is None:
        raise ValueError(f"no valid {RECORD_FILE} in {root}; run fit first")
    out = {}
    for csv in map(Path, csvs):
        df, metrics = _evaluation(csv)
        if (metrics.get("split") or {}).get("part") == "val":
            raise ValueError(f"{csv} is the validation split the thresholds were chosen on")
        thresholds = row_thresholds(df, metrics, record, root, csv)
        conf, correct = _probabilities(df, csv)
        summary = review_summary(conf, correct, thresholds)
        name = csv.parent.name
        out[name] = summary
        record["evaluated"][name] = {**summary, "risk_coverage": _curve(conf, correct),
                                     "predictions": str(csv)}
    write_json(root / RECORD_FILE, record)
    return out


def read_record(folder: str | Path) -> dict[str, Any] | None:
    """Read the folder's :data:`RECORD_FILE`; ``None`` when absent or unusable.

    An unreadable or malformed file is logged as a warning and gives ``None``: the
    pipeline then keeps the fixed :data:`FALLBACK_THRESHOLD`, and the ensemble still
    loads.
    """
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = read_json(path)
    except ArtifactError as exc:
        log.warning("review-flag record not used: %s", exc)
        return None
    if not isinstance(record, dict) or not isinstance(record.get("meta_learners"), dict):
        log.warning("review-flag record not used: %s has no meta_learners table", path)
        return None
    record.setdefault("evaluated", {})
    return record


def entry_for(record: dict[str, Any] | None, meta: str, meta_sha256: str) -> dict[str, Any] | None:
    """Return the record's entry for meta-learner ``meta`` if fitted for these weights and passing.

    ``None`` otherwise (no record, no entry, other weights, a failed rule, or an
    entry lacking a key in :data:`REQUIRED_KEYS`, which is logged).
    """
    entry = (record or {}).get("meta_learners", {}).get(meta)
    if not isinstance(entry, dict):
        return None
    missing = [k for k in REQUIRED_KEYS if k not in entry]
    if missing:
        log.warning("review-flag entry for %s not used: it lacks %s", meta, missing)
        return None
    t = entry["threshold"]
    if isinstance(t, bool) or not isinstance(t, int | float) or not 0.0 <= t <= 1.0:
        log.warning("review-flag entry for %s not used: threshold %r is not a number in [0, 1]",
                    meta, t)
        return None
    if entry["meta_sha256"] != meta_sha256 or entry["passes_rule"] is not True:
        return None
    return entry


def meta_entry(meta: Any | None) -> dict[str, Any] | None:
    """Return the passing entry of a loaded meta-learner (``ensemble.inference.LoadedMeta``).

    The record is read from the meta-learner's parent folder (the classification
    artifacts) and matched by folder name and weights SHA-256.
    """
    if meta is None:
        return None
    record = read_record(Path(meta.folder).parent)
    return entry_for(record, Path(meta.folder).name, str(meta.config.get("weights_sha256")))


def ensemble_entries(ensemble: Any) -> dict[bool | None, dict[str, Any] | None]:
    """Entries by who answers: ``{None: ...}`` for a single mode, ``{False, True}`` for a cascade.

    In the cascade (:class:`ensemble.cascade.CascadeEnsemble`) ``False`` is the
    single-crop pass (not escalated) and ``True`` the default mode.
    """
    first, second = getattr(ensemble, "first", None), getattr(ensemble, "second", None)
    if first is not None and second is not None:
        return {False: meta_entry(first.meta), True: meta_entry(second.meta)}
    return {None: meta_entry(getattr(ensemble, "meta", None))}


def review_warning(confidence: float, entry: dict[str, Any] | None) -> str:
    """Word the warning for a flagged answer, with the validation figures behind it.

    Without an entry the fixed :data:`FALLBACK_THRESHOLD` applies and is named as such.
    """
    if entry is None:
        return (f"low confidence ({confidence:.2f} < {FALLBACK_THRESHOLD}, a fixed limit "
                "not measured against errors)")
    val = entry["validation"]
    return (
        f"review this answer: the ensemble's top probability {confidence:.2f} is below "
        f"{entry['threshold']:.2f}; on the validation split answers below that were right "
        f"{val['accuracy_flagged']:.0%} of the time ({val['n_flagged']} of {val['n']} slices) "
        f"against {val['accuracy_unflagged']:.0%} for the others"
    )


def review_caption(summary: dict[str, Any], record: dict[str, Any]) -> str:
    """Describe the flag scored on one evaluation run in words (for the dashboard)."""
    f = format_optional
    thresholds = summary["threshold"]
    thresholds = thresholds if isinstance(thresholds, list) else [thresholds]
    chosen = []
    for meta, entry in (record.get("meta_learners") or {}).items():
        val = entry.get("validation") or {}
        verdict = "used" if entry.get("passes_rule") else (
            f"not used (failed the rule), the fixed {FALLBACK_THRESHOLD} applies")
        chosen.append(f"`{meta}` {entry.get('threshold')} — out-of-fold validation AUROC "
                      f"{f(val.get('auroc'))}, accuracy flagged {f(val.get('accuracy_flagged'))}"
                      f" / unflagged {f(val.get('accuracy_unflagged'))}; {verdict}")
    return (
        "An answer is flagged for review when the ensemble's top probability is below the "
        "threshold of the meta-learner that gave it, chosen on the validation split from "
        "out-of-fold outputs (largest Youden's J for wrong answers): " + "; ".join(chosen)
        + f". On this run (threshold(s) {', '.join(f'{t:g}' for t in thresholds)}): "
        f"{summary['n_flagged']} of {summary['n']} answers flagged; {summary['errors_flagged']}"
        f" of {summary['n_errors']} errors caught; accuracy {f(summary['accuracy_flagged'])} "
        f"flagged against {f(summary['accuracy_unflagged'])} unflagged (all slices "
        f"{f(summary['accuracy'])}, the figure the floors are judged on)."
    )


def _print(name: str, s: dict[str, Any]) -> None:
    f = format_optional
    print(
        f"{name}: threshold {s['threshold']}: flagged {s['n_flagged']} of {s['n']}; errors "
        f"{s['n_errors']}, caught {s['errors_flagged']} (sensitivity {f(s['sensitivity'])}, "
        f"specificity {f(s['specificity'])}); accuracy flagged {f(s['accuracy_flagged'])} / "
        f"unflagged {f(s['accuracy_unflagged'])} / all {f(s['accuracy'])}; AUROC {f(s['auroc'])}"
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: ``fit`` on validation predictions, ``score`` on others."""
    args = fit_score_parser(
        __doc__.splitlines()[0], "predictions",
        "predictions.csv of python -m ensemble.evaluate (metrics.json beside it)",
        DEFAULT_ARTIFACTS, many=True).parse_args(argv)

    def run() -> None:
        if args.command == "fit":
            record = fit(args.predictions, args.artifacts)
            for meta, entry in record["meta_learners"].items():
                _print(meta, entry["validation"])
                print(f"  passes the rule: {entry['passes_rule']}")
            print(f"-> {args.artifacts / RECORD_FILE}")
        else:
            for name, summary in score(args.predictions, args.artifacts).items():
                _print(name, summary)

    return report_errors(run)


if __name__ == "__main__":
    sys.exit(main())
