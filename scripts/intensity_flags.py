"""Check whether an input check flags the slices the ensemble gets wrong under shift.

Re-creates the shifted slices of a classification robustness run (same paths,
conditions and seeds as ``python -m ensemble.robustness``), applies a shipped
reference to each — the intensity check (``--check intensity``, default) or the
noise and detail check (``--check quality``: flagged = noisy or smooth) — and
tabulates per condition: the ensemble's accuracy, the share of slices flagged,
the accuracy on flagged and unflagged slices, the share of the ensemble's
errors that were flagged, and the share of flagged slices it calls notumor.
Reporting only: the references' limits were fixed on the training slices.

``--predictions PRED.csv`` (an ``ensemble.evaluate`` record) does the same for the
unchanged slices of that evaluation instead of a robustness run.

Usage::

    python scripts/intensity_flags.py ../shared/datasets/brain-tumor-mri/Training \
        [--check intensity|quality] \
        [--robustness artifacts/evaluation/robustness/classification] \
        [--reference artifacts/classification/intensity_reference] [--json OUT.json]
    python scripts/intensity_flags.py ../shared/datasets/brain-tumor-mri/Training --check quality \
        --predictions artifacts/evaluation/classification/test/predictions.csv
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ensemble import intensity, quality

KEYS = ["path", "corruption", "severity"]


def flags_vs_errors(per_slice: pd.DataFrame, flagged: pd.DataFrame) -> pd.DataFrame:
    """Cross the ensemble's right/wrong answers with the input check's flags per condition.

    Args:
        per_slice: ``path, label, corruption, severity, ensemble`` (a robustness run).
        flagged: ``path, corruption, severity, flagged`` (bool), one row per slice and condition.

    Returns:
        One row per ``(corruption, severity)`` in ``per_slice`` order: ``n``, ``accuracy``,
        ``flagged_share``, ``accuracy_unflagged``, ``accuracy_flagged`` (NaN when no slice
        is in the group), ``errors``, ``errors_flagged_share`` (NaN without errors) and
        ``flagged_called_notumor`` (share of flagged slices the ensemble calls notumor).

    Raises:
        ValueError: If a slice and condition of ``per_slice`` has no flag.
    """
    merged = per_slice.merge(flagged[[*KEYS, "flagged"]], on=KEYS, how="left")
    if merged["flagged"].isna().any():
        missing = merged.loc[merged["flagged"].isna(), KEYS].head(3).to_dict("records")
        raise ValueError(f"no input-check flag for {missing} (and maybe more)")
    merged["flagged"] = merged["flagged"].astype(bool)
    merged["right"] = merged["ensemble"] == merged["label"]
    rows = []
    for (name, severity), g in merged.groupby(["corruption", "severity"], sort=False):
        wrong = ~g["right"]
        rows.append({
            "corruption": name, "severity": int(severity), "n": len(g),
            "accuracy": g["right"].mean(),
            "flagged_share": g["flagged"].mean(),
            "accuracy_unflagged": g.loc[~g["flagged"], "right"].mean(),
            "accuracy_flagged": g.loc[g["flagged"], "right"].mean(),
            "errors": int(wrong.sum()),
            "errors_flagged_share": g.loc[wrong, "flagged"].mean() if wrong.any() else np.nan,
            "flagged_called_notumor": (g.loc[g["flagged"], "ensemble"] == "notumor").mean(),
        })
    return pd.DataFrame(rows)


def predictions_as_run(predictions: pd.DataFrame) -> pd.DataFrame:
    """Read an ``ensemble.evaluate`` table (``path, label, pred``) as an unchanged run."""
    return pd.DataFrame({"path": predictions["path"], "label": predictions["label"],
                         "corruption": "none", "severity": 0,
                         "ensemble": predictions["pred"]})


def main(argv: list[str] | None = None) -> int:
    """Compute the table for the shipped records and print it (optionally write JSON)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data_dir", type=Path)
    p.add_argument("--robustness", type=Path,
                   default=Path("artifacts/evaluation/robustness/classification"))
    p.add_argument("--check", choices=("intensity", "quality"), default="intensity")
    p.add_argument("--reference", type=Path, default=None,
                   help="default: the shipped reference of --check")
    p.add_argument("--predictions", type=Path, default=None,
                   help="an ensemble.evaluate predictions.csv: its unchanged slices instead")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    if a.predictions is not None:
        if not a.predictions.is_file():
            p.error(f"no such predictions file: {a.predictions}")
        per_slice = predictions_as_run(pd.read_csv(a.predictions))
        settings = {"conditions": [["none", 0]], "seed": 0}
        a.robustness = a.predictions
    else:
        missing = [f for f in ("per_slice.csv", "metrics.json")
                   if not (a.robustness / f).is_file()]
        if missing:
            p.error(f"{a.robustness} lacks {missing}: run python -m ensemble.robustness first")
        per_slice = pd.read_csv(a.robustness / "per_slice.csv")
        settings = json.loads((a.robustness / "metrics.json").read_text())["settings"]
    module = intensity if a.check == "intensity" else quality
    a.reference = a.reference or Path("artifacts/classification") / module.REFERENCE_FOLDER
    reference = module.load_reference(a.reference)
    rows = per_slice.drop_duplicates("path")[["path", "label"]].assign(split="robustness")
    shifts = [tuple(c) for c in settings["conditions"]]
    if a.check == "intensity":
        feats, failures = intensity.read_features(a.data_dir, rows, shifts=shifts,
                                                  seed=settings["seed"])
        x = feats[list(intensity.FEATURE_COLUMNS)].to_numpy()
        feats["flagged"] = reference.atypicality(x) > reference.threshold
        limits = {"threshold": reference.threshold}
    else:
        feats, failures = quality.read_quality_features(a.data_dir, rows, shifts=shifts,
                                                        seed=settings["seed"])
        noisy, smooth = reference.flags(feats[list(quality.FEATURE_COLUMNS)].to_numpy())
        feats["flagged"] = noisy | smooth
        limits = {"noise_limit": reference.noise_limit, "detail_limit": reference.detail_limit}
    table = flags_vs_errors(per_slice, feats)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if failures:
        print(f"{len(failures)} unreadable: {[f['path'] for f in failures]}")
    if a.json:
        a.json.write_text(json.dumps({
            "robustness_run": str(a.robustness), "check": a.check,
            "reference": str(a.reference), **limits, "unreadable": failures,
            "table": json.loads(table.to_json(orient="records")),
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
