"""Segmentation scores by patient series of figshare-seg.

figshare-seg's ``metadata.csv`` holds two kinds of patient id: numbers (134
patients) and alphanumeric scanner-style codes (52 patients, all glioma), which
look like two acquisition series. The classes are not spread evenly over them, so
a per-class score mixes a class effect with a series effect; :func:`cohort_table`
separates them. Patient ids are used for grouping and resampling only and never
appear in the output.

:func:`tumour_contrast_sd` and :func:`contrast_table` look at the image instead
of the id: how much brighter the outlined tumour is than the rest of the head on
these contrast-enhanced T1 slices, and the Dice in bands of that contrast.
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


def _covering_split(
    per_image: pd.DataFrame, split_csv: str | Path, columns: set[str]
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Read the split for ``per_image``; ``None`` if either is unusable.

    Returns ``(per_image with str ids, split)`` when ``per_image`` has ``columns``
    and rows and the split file is readable, has ``id, patient_id`` and covers
    every slice.
    """
    if per_image.empty or not columns <= set(per_image.columns):
        return None
    try:
        split = pd.read_csv(Path(split_csv), dtype=str)
    except (OSError, ValueError):  # missing, unreadable or not a CSV
        return None
    if not {"id", "patient_id"} <= set(split.columns):
        return None
    per_image = per_image.assign(id=per_image["id"].astype(str))
    if not set(per_image["id"]) <= set(split["id"]):
        return None
    return per_image, split


def cohort_summary(per_image: pd.DataFrame, split_csv: str | Path) -> pd.DataFrame | None:
    """Return the per-cohort rows of :func:`cohort_table` over all classes, for display.

    Reads ``split_csv`` (``id, patient_id``) and adds ``ci95`` as ``"low–high"`` text
    (blank for a single-patient cohort). Returns ``None`` when the split file is
    missing, unreadable or lacks patient ids, when ``per_image`` has no ``id, label,
    dice`` columns or rows, or when some slice has no patient in the split (e.g. an
    evaluation of other data), so a report can simply leave the table out.
    """
    found = _covering_split(per_image, split_csv, {"id", "label", "dice"})
    if found is None:
        return None
    per_image, split = found
    table = cohort_table(per_image, split)
    table = table[table["label"] == "all"].drop(columns="label").reset_index(drop=True)
    table["ci95"] = [
        "" if pd.isna(lo) else f"{lo:.3f}–{hi:.3f}"
        for lo, hi in zip(table["ci95_low"], table["ci95_high"], strict=True)
    ]
    return table


BRAIN_MIN = 20
"""Grey level (of 0-255) above which a pixel outside the tumour counts as head tissue."""
CONTRAST_EDGES: tuple[float, ...] = (0.0, 0.5, 1.0)
"""Upper edges (SD units) of the contrast bands of :func:`contrast_band`; the last band is open."""


def tumour_contrast_sd(image: np.ndarray, mask: np.ndarray, *, brain_min: float = BRAIN_MIN
                       ) -> float:
    """Contrast of the outlined tumour against the rest of the head, in standard deviations.

    Args:
        image: ``(H, W)`` grey levels (uint8 0-255 or any real dtype on that scale).
        mask: ``(H, W)`` reference tumour mask (non-zero = tumour), same shape.
        brain_min: Pixels outside the mask count as head tissue above this level.

    Returns:
        ``(mean(tumour) - median(tissue)) / std(tissue)``: about 0 for a tumour no
        brighter than its surroundings, positive when it enhances. NaN for an
        empty mask, fewer than two tissue pixels or a uniform tissue.

    Raises:
        ValueError: If the shapes differ or the image is not 2-D.
    """
    img = np.asarray(image, dtype=np.float64)
    m = np.asarray(mask).astype(bool)
    if img.ndim != 2 or img.shape != m.shape:
        raise ValueError(
            f"image and mask must be the same 2-D shape; received {img.shape} and {m.shape}"
        )
    tissue = img[~m & (img > brain_min)]
    if not m.any() or tissue.size < 2 or float(tissue.std()) == 0.0:
        return float("nan")
    return float((img[m].mean() - np.median(tissue)) / tissue.std())


def contrast_band(contrast_sd: pd.Series, edges: tuple[float, ...] = CONTRAST_EDGES) -> pd.Series:
    """Label each contrast with its band: ``"<= 0"``, ``"0-0.5"``, ``"0.5-1"``, ``"> 1"``.

    Bands are closed on the right (a contrast equal to an edge falls in the lower
    band); NaN stays NaN. ``edges`` must be increasing.
    """
    if list(edges) != sorted(set(edges)) or not edges:
        raise ValueError(f"edges must be increasing and non-empty; received {edges}")
    labels = [f"<= {edges[0]:g}"]
    labels += [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    labels.append(f"> {edges[-1]:g}")
    bands = pd.cut(contrast_sd, [-np.inf, *edges, np.inf], labels=labels, right=True)
    return bands.astype(object).where(bands.notna(), np.nan)


def contrast_table(
    per_image: pd.DataFrame, split: pd.DataFrame, *, miss_below: float = MISS_DICE
) -> pd.DataFrame:
    """Dice per tumour-contrast band, and how much of each band each id series makes up.

    Args:
        per_image: ``id, dice, tumour_contrast_sd`` rows (one per slice, as in
            ``per_image.csv`` of ``segmentation.evaluate``; NaN contrasts are left out).
        split: ``id, patient_id`` rows covering every id of ``per_image``.
        miss_below: A slice with Dice below this is a missed tumour.

    Returns:
        One row per band present, in band order: ``band, slices, patients,
        mean_dice, median_dice, missed_share, alphanumeric_share`` (the fraction of
        the band's slices from alphanumeric-id patients).

    Raises:
        ValueError: If a slice has no patient in ``split``.
    """
    df = per_image.dropna(subset=["tumour_contrast_sd"]).merge(
        split[["id", "patient_id"]], on="id", how="left")
    if df["patient_id"].isna().any():
        raise ValueError(f"{int(df['patient_id'].isna().sum())} slices have no patient")
    df["band"] = contrast_band(df["tumour_contrast_sd"])
    df["alnum"] = cohort_of(df["patient_id"]) == COHORTS[1]
    order = list(dict.fromkeys(contrast_band(pd.Series([-1.0, *CONTRAST_EDGES[1:], 1e9]))))
    rows = []
    for band in order:
        sub = df[df["band"] == band]
        if sub.empty:
            continue
        rows.append({
            "band": band,
            "slices": len(sub),
            "patients": int(sub["patient_id"].nunique()),
            "mean_dice": float(sub["dice"].mean()),
            "median_dice": float(sub["dice"].median()),
            "missed_share": float((sub["dice"] < miss_below).mean()),
            "alphanumeric_share": float(sub["alnum"].mean()),
        })
    return pd.DataFrame(rows)


def contrast_summary(per_image: pd.DataFrame, split_csv: str | Path) -> pd.DataFrame | None:
    """Return :func:`contrast_table` for display, or ``None`` when it cannot be computed.

    ``None`` when ``per_image`` lacks ``id, dice, tumour_contrast_sd`` (records made
    before the column existed) or every contrast is NaN, or on the same split
    problems as :func:`cohort_summary`.
    """
    found = _covering_split(per_image, split_csv, {"id", "dice", "tumour_contrast_sd"})
    if found is None or found[0]["tumour_contrast_sd"].isna().all():
        return None
    return contrast_table(*found)
