"""Outline confidence: how far to trust one slice's tumour outline.

The indicator is the segmenter's **mean probability over the pixels of the final
mask** (:func:`outline_confidence`; ``None`` for an empty mask: no outline, no
indicator). A low value means the network outlined a region it was not sure of,
which on the validation patients went with poor outlines (Spearman 0.82 with the
slice's Dice in the probe that motivated it).

A flag threshold turns it into a warning. It is chosen on the validation
patients only (:func:`confidence_sweep`, :func:`choose_flag_threshold`): a
*poor* outline has Dice below :data:`POOR_DICE`, and the threshold on
:data:`GRID` with the largest Youden's J for "confidence below it" detecting a
poor outline is kept (ties: the lower threshold, fewer flags). The record,
:data:`RECORD_FILE` in the segmenter's artifact folder, pins the weights'
SHA-256 and the operating point (threshold, test-time augmentation,
post-processing) it was fitted at; :func:`read_record` ignores it for other
weights. Rule and decision: ``artifacts/evaluation/experiments/2026-12-07_outline_confidence``.

Usage::

    python -m segmentation.confidence fit artifacts/evaluation/segmentation/val/per_image.csv
    python -m segmentation.confidence score artifacts/evaluation/segmentation/test/per_image.csv

Both read the ``outline_confidence`` and ``dice`` columns that
``python -m segmentation.evaluate`` writes; ``score`` only reports (and stores
the report under ``evaluated`` in the record), it never changes the threshold.
"""

from __future__ import annotations

import datetime as _dt
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurostack.artifacts import CONFIG_FILE, read_json, sha256_file, write_json
from neurostack.cli import fit_score_parser, report_errors
from neurostack.errors import ArtifactError
from neurostack.formatting import format_optional

log = logging.getLogger(__name__)

RECORD_FILE = "outline_confidence.json"
"""The flag threshold's record, in the segmenter's artifact folder."""
RECORD_FORMAT = 1
POOR_DICE = 0.5
"""An outline with Dice below this is *poor* (what the flag should catch)."""
MISS_DICE = 0.05
"""Dice below this: the tumour was missed or outlined elsewhere (as in the model card)."""
GRID: tuple[float, ...] = tuple(round(0.30 + 0.05 * k, 2) for k in range(13))
"""Candidate flag thresholds, 0.30 to 0.90."""
MIN_SPEARMAN = 0.5
MIN_DICE_GAP = 0.2
"""The rule: ship the flag only with at least this Spearman correlation and this
gap between the unflagged and flagged slices' mean Dice (validation patients)."""
DEFAULT_ARTIFACTS = Path("artifacts/segmentation/resunet")
REQUIRED_KEYS: tuple[str, ...] = (
    "flag_threshold",
    "operating_point",
    "weights_sha256",
    "passes_rule",
    "validation",
)
"""Keys the runtime reads from a record; a record lacking one is not used."""


def outline_confidence(probability: np.ndarray, mask: np.ndarray) -> float | None:
    """Mean tumour probability over the mask's pixels.

    Args:
        probability: ``(H, W)`` probabilities in ``[0, 1]``.
        mask: ``(H, W)`` bool mask made from them (threshold and post-processing).

    Returns:
        A float in ``[0, 1]``, or ``None`` when the mask is empty.

    Raises:
        ValueError: If the shapes differ or the arrays are not 2-D.
    """
    probability = np.asarray(probability)
    mask = np.asarray(mask, dtype=bool)
    if probability.ndim != 2 or probability.shape != mask.shape:
        raise ValueError(
            f"probability and mask must be 2-D arrays of one shape; received "
            f"{probability.shape} and {mask.shape}"
        )
    if not mask.any():
        return None
    return float(np.mean(probability[mask], dtype=np.float64))


def _checked(confidence: Sequence[float | None], dice: Sequence[float]) -> tuple[np.ndarray, ...]:
    conf = np.asarray([np.nan if c is None else c for c in confidence], dtype=float)
    d = np.asarray(dice, dtype=float)
    if conf.shape != d.shape or conf.ndim != 1:
        raise ValueError(f"need one confidence per Dice value; received {conf.shape} and {d.shape}")
    return conf, d


def flag_summary(
    confidence: Sequence[float | None],
    dice: Sequence[float],
    threshold: float,
    *,
    poor_below: float = POOR_DICE,
) -> dict[str, Any]:
    """How well "confidence below ``threshold``" separates poor outlines.

    Slices without an outline (``None`` / NaN confidence) are counted apart
    (``n_empty``) and left out of every other number.

    Returns:
        ``n`` (with an outline), ``n_empty``, ``n_flagged``, ``n_poor``,
        ``sensitivity`` / ``specificity`` for poor outlines, ``youden``,
        ``mean_dice_flagged`` / ``mean_dice_unflagged``, ``misses`` (Dice below
        :data:`MISS_DICE`) and ``misses_flagged``, ``spearman`` (confidence vs
        Dice). Undefined rates are ``None``.
    """
    from scipy.stats import spearmanr

    from ensemble.metrics import detection_rates

    conf, d = _checked(confidence, dice)
    has = ~np.isnan(conf)
    conf, d = conf[has], d[has]
    flagged = conf < threshold
    poor = d < poor_below
    miss = d < MISS_DICE
    rates = detection_rates(flagged, poor)
    rho = spearmanr(conf, d).correlation if len(d) > 2 and np.ptp(conf) > 0 else None
    return {
        "threshold": float(threshold),
        "poor_below": poor_below,
        "n": int(len(d)),
        "n_empty": int((~has).sum()),
        "n_flagged": int(flagged.sum()),
        "n_poor": int(poor.sum()),
        **rates,
        "mean_dice_flagged": float(d[flagged].mean()) if flagged.any() else None,
        "mean_dice_unflagged": float(d[~flagged].mean()) if (~flagged).any() else None,
        "misses": int(miss.sum()),
        "misses_flagged": int((miss & flagged).sum()),
        "spearman": None if rho is None or np.isnan(rho) else float(rho),
    }


def confidence_sweep(
    confidence: Sequence[float | None],
    dice: Sequence[float],
    grid: Sequence[float] = GRID,
    *,
    poor_below: float = POOR_DICE,
) -> pd.DataFrame:
    """:func:`flag_summary` at every threshold of ``grid``, one row each."""
    rows = [flag_summary(confidence, dice, t, poor_below=poor_below) for t in grid]
    return pd.DataFrame(rows)


def choose_flag_threshold(sweep: pd.DataFrame) -> float:
    """Return the sweep's threshold with the largest Youden's J (ties: the lower one).

    Raises:
        ValueError: If no row has a defined J (no poor or no good outline).
    """
    from ensemble.metrics import choose_youden_threshold

    try:
        return choose_youden_threshold(sweep["threshold"], sweep["youden"])
    except ValueError:
        raise ValueError(
            "Youden's J is undefined at every threshold: need poor and good outlines"
        ) from None


def passes_rule(summary: dict[str, Any]) -> bool:
    """Check the rule on a validation summary (:data:`MIN_SPEARMAN`, :data:`MIN_DICE_GAP`)."""
    flagged, unflagged = summary["mean_dice_flagged"], summary["mean_dice_unflagged"]
    return (
        summary["spearman"] is not None
        and summary["spearman"] >= MIN_SPEARMAN
        and flagged is not None
        and unflagged is not None
        and unflagged - flagged >= MIN_DICE_GAP
    )


def _operating_point(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "threshold": float(config.get("threshold", 0.5)),
        "test_time_augmentation": config.get("test_time_augmentation", "none"),
        "postprocess": config.get("postprocess", "none"),
    }


def _read_per_image(path: str | Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"id": str})
    missing = {"dice", "outline_confidence"} - set(df.columns)
    if missing:
        raise ValueError(
            f"{path} lacks columns {sorted(missing)}; rerun python -m segmentation.evaluate "
            "(it writes outline_confidence since 2026-12-07)"
        )
    for column in ("dice", "outline_confidence"):
        values = pd.to_numeric(df[column], errors="coerce")
        bad = values.isna() & df[column].notna()
        if bad.any():
            raise ValueError(
                f"{path}: column {column!r} holds {int(bad.sum())} non-numeric value(s), "
                f"first in row {int(bad.idxmax()) + 2} (id {df.at[bad.idxmax(), 'id']!r})"
            )
        df[column] = values
    return df


def _check_same_operating_point(metrics_path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Return the evaluation's ``metrics.json``; refuse another operating point or weights."""
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path} not found (written next to per_image.csv)")
    metrics = read_json(metrics_path)
    point = _operating_point(config)
    made = {
        "threshold": metrics.get("threshold"),
        "test_time_augmentation": metrics.get("test_time_augmentation"),
        "postprocess": metrics.get("postprocess"),
    }
    if made != point:
        raise ValueError(f"{metrics_path} was made at {made}, the artifact's point is {point}")
    sha = (metrics.get("artifact") or {}).get("weights_sha256")
    if sha != config.get("weights_sha256"):
        raise ValueError(
            f"{metrics_path} evaluated weights {sha}, the artifact has "
            f"{config.get('weights_sha256')}"
        )
    return metrics


def fit(per_image: str | Path, artifacts: str | Path = DEFAULT_ARTIFACTS) -> dict[str, Any]:
    """Choose the flag threshold on a validation ``per_image.csv`` and write the record.

    Args:
        per_image: ``segmentation.evaluate`` output of the validation patients at the
            artifact's own operating point (its ``metrics.json`` must sit beside it).
        artifacts: The segmenter's artifact folder (the record is written there).

    Returns:
        The record written to ``artifacts/RECORD_FILE``.

    Raises:
        ValueError: If the evaluation is not of the validation split, was made at
            another operating point or with other weights, or lacks the columns.
    """
    per_image, artifacts = Path(per_image), Path(artifacts)
    config = read_json(artifacts / CONFIG_FILE)
    split = _check_same_operating_point(per_image.parent / "metrics.json", config).get("split")
    if split != "val":
        raise ValueError(
            f"the flag threshold is chosen on the validation split; {per_image} is split {split!r}"
        )
    df = _read_per_image(per_image)
    sweep = confidence_sweep(df["outline_confidence"], df["dice"])
    threshold = choose_flag_threshold(sweep)
    summary = flag_summary(df["outline_confidence"], df["dice"], threshold)
    weights = artifacts / config.get("weights_file", "weights.npz")
    record = {
        "format": RECORD_FORMAT,
        "indicator": "mean segmenter probability over the final mask's pixels",
        "flag_threshold": threshold,
        "flag_rule": "outline_confidence < flag_threshold",
        "poor_outline": f"Dice < {POOR_DICE}",
        "chosen_by": "largest Youden's J on the validation patients (ties: lower threshold)",
        "operating_point": _operating_point(config),
        "weights_sha256": sha256_file(weights),
        "validation": summary,
        "passes_rule": passes_rule(summary),
        "rule": {"min_spearman": MIN_SPEARMAN, "min_dice_gap": MIN_DICE_GAP},
        "sweep": sweep.to_dict(orient="records"),
        "fitted_on": str(per_image),
        "fitted_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "evaluated": {},
    }
    write_json(artifacts / RECORD_FILE, record)
    return record


def score(per_image: str | Path, artifacts: str | Path = DEFAULT_ARTIFACTS) -> dict[str, Any]:
    """Report the recorded flag on another split's ``per_image.csv`` (changes no threshold).

    The summary is stored under ``evaluated[<split>]`` in the record.

    Raises:
        ValueError: If there is no valid record for the artifact's weights, or the
            evaluation was made at another operating point or with other weights.
    """
    per_image, artifacts = Path(per_image), Path(artifacts)
    config = read_json(artifacts / CONFIG_FILE)
    record = read_record(artifacts, config.get("weights_sha256", ""))
    if record is None:
        raise ValueError(f"no {RECORD_FILE} for these weights in {artifacts}; run fit first")
    split = str(_check_same_operating_point(per_image.parent / "metrics.json", config).get("split"))
    df = _read_per_image(per_image)
    summary = flag_summary(df["outline_confidence"], df["dice"], record["flag_threshold"])
    record.setdefault("evaluated", {})[split] = {**summary, "per_image": str(per_image)}
    write_json(artifacts / RECORD_FILE, record)
    return summary


def read_record(folder: str | Path, weights_sha256: str) -> dict[str, Any] | None:
    """Read the folder's :data:`RECORD_FILE` if fitted for ``weights_sha256`` and passing its rule.

    Returns ``None`` when the file is absent, made for other weights, or failed the
    rule. An unreadable or incomplete file is logged as a warning and also gives
    ``None``: the outlines are then shown without a flag, and the segmenter itself
    still loads.
    """
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = read_json(path)
    except ArtifactError as exc:
        log.warning("outline-confidence record not used: %s", exc)
        return None
    missing = [k for k in REQUIRED_KEYS if not isinstance(record, dict) or k not in record]
    if missing:
        log.warning("outline-confidence record not used: %s lacks %s", path, missing)
        return None
    if record["weights_sha256"] != weights_sha256 or not record["passes_rule"]:
        return None
    return record


def flag_warning(confidence: float, record: dict[str, Any]) -> str:
    """Word the warning for a flagged outline, with the validation figures behind it."""
    val = record["validation"]
    return (
        f"uncertain outline: the segmenter's mean probability inside it is {confidence:.2f}, "
        f"below {record['flag_threshold']:.2f}; on the validation patients outlines below "
        f"that had mean Dice {val['mean_dice_flagged']:.2f} ({val['n_flagged']} of {val['n']} "
        f"slices) against {val['mean_dice_unflagged']:.2f} for the others. Check it by eye"
    )


def confidence_caption(summary: dict[str, Any], record: dict[str, Any]) -> str:
    """Describe a :func:`flag_summary` of one evaluation run in words (for the dashboard)."""

    def f(x: float | None) -> str:
        return format_optional(x, 2)

    chosen = record.get("validation", {})
    return (
        f"Outline confidence is the mean Res-UNet probability inside the outline. Flag "
        f"threshold {summary['threshold']:.2f}, chosen on the validation patients (largest "
        f"Youden's J for outlines with Dice < {summary['poor_below']:g}; Spearman there "
        f"{f(chosen.get('spearman'))}). On this run: {summary['n_flagged']} of "
        f"{summary['n']} outlines flagged, mean Dice {f(summary['mean_dice_flagged'])} "
        f"flagged against {f(summary['mean_dice_unflagged'])} unflagged; poor outlines "
        f"caught {f(summary['sensitivity'])} (sensitivity), good ones left unflagged "
        f"{f(summary['specificity'])} (specificity); Spearman {f(summary['spearman'])}. "
        f"{summary['n_empty']} slice(s) without an outline are not in the chart."
    )


def _print(summary: dict[str, Any]) -> None:
    f = format_optional
    print(
        f"threshold {f(summary['threshold'])}: flagged {summary['n_flagged']} of {summary['n']} "
        f"outlines ({summary['n_empty']} empty masks apart); poor outlines (Dice < "
        f"{summary['poor_below']}) {summary['n_poor']}: sensitivity {f(summary['sensitivity'])}, "
        f"specificity {f(summary['specificity'])}; mean Dice flagged "
        f"{f(summary['mean_dice_flagged'])} / unflagged {f(summary['mean_dice_unflagged'])}; "
        f"misses flagged {summary['misses_flagged']} of {summary['misses']}; "
        f"Spearman {f(summary['spearman'])}"
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: ``fit`` on validation, ``score`` on another split."""
    args = fit_score_parser(
        __doc__.splitlines()[0], "per_image", "per_image.csv of python -m segmentation.evaluate",
        DEFAULT_ARTIFACTS).parse_args(argv)

    def run() -> None:
        if args.command == "fit":
            record = fit(args.per_image, args.artifacts)
            _print(record["validation"])
            print(f"passes the rule: {record['passes_rule']} -> {args.artifacts / RECORD_FILE}")
        else:
            _print(score(args.per_image, args.artifacts))

    return report_errors(run)


if __name__ == "__main__":
    sys.exit(main())
