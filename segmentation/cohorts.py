"""Segmentation scores by patient series of figshare-seg.

figshare-seg's ``metadata.csv`` holds two kinds of patient id: numbers (134
patients) and alphanumeric scanner-style codes (52 patients, all glioma), which
look like two acquisition series. The classes are not spread evenly over them, so
a per-class score mixes a class effect with a series effect; :func:`cohort_table`
separates them. Patient ids are used for grouping and resampling only and never
appear in the output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segmentation.metrics import cluster_bootstrap_ci

COHORTS = ("numeric id", "alphanumeric id")
MISS_DICE = 0.05
"""A slice scoring Dice below this counts as a missed tumour (same cut-off as the model card)."""


def cohort_of(patient_ids: pd.Series) -> pd.Series:
    """Map patient ids to :data:`COHORTS`: all digits -> ``"numeric id"``, else alphanumeric."""
    ids = patient_ids.astype(str).str.strip()
    return pd.Series(
        np.where(ids.str.fullmatch(r"\d+"), COHORTS[0], COHORTS[1]), index=patient_ids.index
    )


def cohort_table(
    per_image: pd.DataFrame, split: pd.DataFrame, *, seed: int = 0, miss_below: float = MISS_DICE
) -> pd.DataFrame:
    """Mean/median Dice per cohort (and per cohort x class) with a patient bootstrap interval.

    Args:
        per_image: ``id, label, dice`` rows (one per slice).
        split: ``id, patient_id`` rows covering every id of ``per_image``.
        seed: Seed of the bootstrap.
        miss_below: A slice with Dice below this is a missed tumour.

    Returns:
        One row per group: ``cohort, label`` (``"all"`` for the cohort as a whole),
        ``slices, patients, mean_dice, median_dice, ci95_low, ci95_high,
        missed_share, mean_dice_found``; the interval is ``None`` for a group of
        fewer than two patients. ``missed_share`` is the fraction of slices with
        Dice below ``miss_below`` and ``mean_dice_found`` the mean Dice of the
        others (NaN when every slice is missed), so whole misses and outline
        quality can be told apart.

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
            found = sub.loc[sub["dice"] >= miss_below, "dice"]
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
                    "missed_share": float((sub["dice"] < miss_below).mean()),
                    "mean_dice_found": float(found.mean()) if len(found) else float("nan"),
                }
            )
    return pd.DataFrame(rows)


def cohort_summary(per_image: pd.DataFrame, split_csv: str | Path) -> pd.DataFrame | None:
    """Return the per-cohort rows of :func:`cohort_table` over all classes, for display.

    Reads ``split_csv`` (``id, patient_id``) and adds ``ci95`` as ``"low–high"`` text
    (blank for a single-patient cohort). Returns ``None`` when the split file is
    missing, unreadable or lacks patient ids, when ``per_image`` has no ``id, label,
    dice`` columns or rows, or when some slice has no patient in the split (e.g. an
    evaluation of other data), so a report can simply leave the table out.
    """
    split_csv = Path(split_csv)
    if per_image.empty or not {"id", "label", "dice"} <= set(per_image.columns):
        return None
    try:
        split = pd.read_csv(split_csv, dtype=str)
    except (OSError, ValueError):  # missing, unreadable or not a CSV
        return None
    if not {"id", "patient_id"} <= set(split.columns):
        return None
    per_image = per_image.assign(id=per_image["id"].astype(str))
    if not set(per_image["id"]) <= set(split["id"]):
        return None
    table = cohort_table(per_image, split)
    table = table[table["label"] == "all"].drop(columns="label").reset_index(drop=True)
    table["ci95"] = [
        "" if pd.isna(lo) else f"{lo:.3f}–{hi:.3f}"
        for lo, hi in zip(table["ci95_low"], table["ci95_high"], strict=True)
    ]
    return table
