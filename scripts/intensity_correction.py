"""Measure the input check's correction on slices with a changed intensity curve.

Slices of a split part (``--per-class`` of each class, sampled as the robustness
run samples them) go through the shipped pipeline unchanged and under the given
shifts of :mod:`neurostack.corrupt` (seeded per slice as in the robustness run).
The pipeline analyses a slice the input check flags as a copy mapped back to the
training intensity curve; the table compares its decision with the ensemble's
answer on the slice as given, overall and on the flagged slices.

Usage::

    python scripts/intensity_correction.py ../shared/datasets/brain-tumor-mri/Training \
        --part val --per-class 50 \
        --json artifacts/evaluation/classification/intensity_correction_val.json

``--corruptions`` with no name runs the unchanged slices only (e.g. a whole split
part with ``--per-class 100000``); ``--csv`` keeps one row per slice and condition.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ensemble.data import load_split
from ensemble.robustness import sample_rows
from neurostack.corrupt import CLEAN, conditions, corrupt, slice_seed
from neurostack.imaging import LoadedImage, load_image

DEFAULT_CORRUPTIONS = ("gamma_dark", "gamma_bright")
"""Shifts run by default (each at severities 1 and 2, after the unchanged slice)."""


def correction_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Summarise per ``(corruption, severity)``: flags and accuracy with and without mapping.

    Args:
        rows: One row per slice and condition: ``label``, ``corruption``, ``severity``,
            ``predicted_class`` (the pipeline's decision), ``flagged`` (bool) and
            ``uncorrected_class`` (the ensemble on the slice as given; empty when the
            slice was analysed as given).

    Returns:
        ``n``, ``accuracy`` (the decision) and ``accuracy_as_given`` (every slice as
        given), ``flagged``, and on the flagged slices ``accuracy_flagged_as_given``
        and ``accuracy_flagged_decision`` (NaN when none is flagged), in the order
        the conditions first appear.
    """
    out = []
    given = rows["uncorrected_class"].fillna("").astype(str)
    rows = rows.assign(as_given=given.where(given != "", rows["predicted_class"]))
    for (name, severity), g in rows.groupby(["corruption", "severity"], sort=False):
        f = g[g["flagged"].astype(bool)]
        out.append({
            "corruption": name, "severity": int(severity), "n": len(g),
            "accuracy": float((g["predicted_class"] == g["label"]).mean()),
            "accuracy_as_given": float((g["as_given"] == g["label"]).mean()),
            "flagged": len(f),
            "accuracy_flagged_as_given": float((f["as_given"] == f["label"]).mean())
            if len(f) else np.nan,
            "accuracy_flagged_decision": float((f["predicted_class"] == f["label"]).mean())
            if len(f) else np.nan,
        })
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> int:
    """Run the shipped pipeline on the shifted slices and print (optionally save) the table."""
    from neurostack.pipeline import load_pipeline

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data_dir", type=Path)
    p.add_argument("--split", type=Path, default=Path("artifacts/splits/classification_split.csv"))
    p.add_argument("--part", default="val")
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    p.add_argument("--corruptions", nargs="*", default=list(DEFAULT_CORRUPTIONS),
                   help="shifts of neurostack.corrupt (none given: unchanged slices only)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--csv", type=Path, default=None, help="per-slice rows")
    a = p.parse_args(argv)
    try:
        shifts = conditions(a.corruptions)
    except ValueError as exc:
        p.error(str(exc))
    t0 = time.perf_counter()
    picked = sample_rows(load_split(a.split, a.part), a.per_class, a.seed)
    pipe = load_pipeline(a.artifacts)
    if pipe.intensity is None:
        p.error(f"no intensity reference under {a.artifacts}/classification")
    records, failures = [], []
    for row in tqdm(list(picked.itertuples()), desc="slices", unit="slice"):
        try:
            gray = load_image(a.data_dir / row.path).gray
        except Exception as exc:  # noqa: BLE001 - reported, the others go on
            failures.append({"path": row.path, "error": str(exc)})
            continue
        shifted = [gray if name == CLEAN else
                   corrupt(gray, name, sev, slice_seed(row.path, name, sev, a.seed))
                   for name, sev in shifts]
        results = pipe.analyse_many([LoadedImage(g, np.dstack([g] * 3)) for g in shifted])
        for (name, sev), res in zip(shifts, results, strict=True):
            if isinstance(res, Exception):
                failures.append({"path": row.path, "error": f"{name} {sev}: {res}"})
                continue
            check = res.intensity or {}
            records.append({
                "path": row.path, "label": row.label, "corruption": name, "severity": sev,
                "predicted_class": res.predicted_class,
                "flagged": bool(check.get("flagged")),  # the pipeline's own decision
                "uncorrected_class": check.get("uncorrected_class", ""),
            })
    rows = pd.DataFrame(records)
    if a.csv:
        rows.to_csv(a.csv, index=False)
    table = correction_table(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if a.json:
        a.json.write_text(json.dumps({
            "split": str(a.split), "part": a.part, "per_class": a.per_class, "seed": a.seed,
            "conditions": [list(c) for c in shifts],
            "reference_threshold": pipe.intensity.threshold, "failures": failures,
            "wall_time_s": round(time.perf_counter() - t0, 1),
            "table": json.loads(table.to_json(orient="records")),
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
