r"""Segmentation Dice by patient cohort of figshare-seg, with patient-level intervals.

The figshare data set holds two kinds of patient ids in ``metadata.csv``: numbers
(134 patients) and alphanumeric scanner-style codes (52 patients, all glioma), which
look like two acquisition series. Because the classes are not spread evenly over
them, a per-class score mixes a class effect with a cohort effect; this report
separates them. Reads a ``per_image.csv`` of ``python -m segmentation.evaluate``
and the split CSV (``id, patient_id``); writes no identifier, only counts::

    PYTHONPATH=. python scripts/segmentation_cohorts.py \
        artifacts/evaluation/segmentation/test/per_image.csv \
        --split artifacts/splits/segmentation_split.csv [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segmentation.metrics import cluster_bootstrap_ci

COHORTS = ("numeric id", "alphanumeric id")


def cohort_of(patient_ids: pd.Series) -> pd.Series:
    """Map patient ids to :data:`COHORTS`: all digits -> ``"numeric id"``, else alphanumeric."""
    ids = patient_ids.astype(str).str.strip()
    return pd.Series(
        np.where(ids.str.fullmatch(r"\d+"), COHORTS[0], COHORTS[1]), index=patient_ids.index
    )


def cohort_table(per_image: pd.DataFrame, split: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """Mean/median Dice per cohort (and per cohort x class) with a patient bootstrap interval.

    Args:
        per_image: ``id, label, dice`` rows (one per slice).
        split: ``id, patient_id`` rows covering every id of ``per_image``.
        seed: Seed of the bootstrap.

    Returns:
        One row per group: ``cohort, label`` (``"all"`` for the cohort as a whole),
        ``slices, patients, mean_dice, median_dice, ci95_low, ci95_high``; the
        interval is ``None`` for a group of fewer than two patients.

    Raises:
        ValueError: If a slice of ``per_image`` has no patient in ``split``.
    """
    df = per_image.merge(split[["id", "patient_id"]], on="id", how="left")
    if df["patient_id"].isna().any():
        missing = df.loc[df["patient_id"].isna(), "id"].head(3).tolist()
        raise ValueError(
            f"{int(df['patient_id'].isna().sum())} slices have no patient, e.g. {missing}"
        )
    df["cohort"] = cohort_of(df["patient_id"])
    rows: list[dict[str, Any]] = []
    groups = [("all", df)] + [(lab, part) for lab, part in df.groupby("label")]
    for label, part in groups:
        for cohort in COHORTS:
            sub = part[part["cohort"] == cohort]
            if sub.empty:
                continue
            n_pat = int(sub["patient_id"].nunique())
            lo = hi = None
            if n_pat >= 2:
                lo, hi = cluster_bootstrap_ci(
                    sub["dice"].to_numpy(), sub["patient_id"].to_numpy(), seed=seed
                )
            rows.append(
                {
                    "cohort": cohort,
                    "label": label,
                    "slices": len(sub),
                    "patients": n_pat,
                    "mean_dice": float(sub["dice"].mean()),
                    "median_dice": float(sub["dice"].median()),
                    "ci95_low": lo,
                    "ci95_high": hi,
                }
            )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("per_image", type=Path, help="per_image.csv of segmentation.evaluate")
    p.add_argument("--split", type=Path, default=Path("artifacts/splits/segmentation_split.csv"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the table as JSON")
    args = p.parse_args(argv)
    try:
        per_image = pd.read_csv(args.per_image, dtype={"id": str})
        split = pd.read_csv(args.split, dtype={"id": str, "patient_id": str})
        table = cohort_table(per_image, split, seed=args.seed)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table.round(4).to_string(index=False))
    if args.json:
        args.json.write_text(json.dumps(table.to_dict(orient="records"), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
