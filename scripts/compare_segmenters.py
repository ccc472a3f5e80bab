r"""Paired comparison of two segmenters' per-slice Dice on the same slices.

Is a candidate really better than the shipped weights, or within the noise of a
few dozen patients? Reads two ``per_image.csv`` files written by
``python -m segmentation.evaluate`` on the same split part (reference first) and
reports the mean Dice of each, the mean paired difference (candidate minus
reference), how many slices moved by more than ``--margin`` either way, the
misses (Dice < 0.05) of each, the Wilcoxon signed-rank p-value over slices, and
a 95 % bootstrap interval of the mean difference that resamples **patients**
(slices of one patient are not independent). Usage::

    PYTHONPATH=. python scripts/compare_segmenters.py /tmp/ship_val/per_image.csv \
        /tmp/candidate_val/per_image.csv --json /tmp/compare.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segmentation.cohorts import MISS_DICE
from segmentation.metrics import cluster_bootstrap_ci


def _read(path: str | Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"id": str})
    missing = {"id", "dice"} - set(df.columns)
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)}; found {list(df.columns)}")
    if df["id"].duplicated().any():
        raise ValueError(f"{path} lists slice ids more than once")
    return df.set_index("id")


def compare(
    reference: pd.Series,
    candidate: pd.Series,
    patients: pd.Series,
    *,
    n_bootstrap: int = 5000,
    margin: float = 0.01,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare per-slice Dice of two segmenters.

    Args:
        reference: Dice per slice id (index) of the reference segmenter.
        candidate: Dice per slice id of the candidate, same ids.
        patients: Patient id per slice id (may hold more ids than compared).
        n_bootstrap: Patient-level bootstrap resamples.
        margin: A slice counts as better / worse when its Dice moved by more.
        seed: Bootstrap random seed.

    Returns:
        A dict of plain floats and ints (module docstring); ``diff`` is candidate
        minus reference and ``ci95`` its patient-bootstrap interval.

    Raises:
        ValueError: If the two sets of slice ids differ, a slice has no patient,
            ``n_bootstrap`` < 1, or fewer than 2 patients are compared.
    """
    from scipy.stats import wilcoxon

    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be >= 1; received {n_bootstrap}")
    only_ref = reference.index.difference(candidate.index)
    only_cand = candidate.index.difference(reference.index)
    if len(only_ref) or len(only_cand):
        raise ValueError(
            f"the two files score different slices: {len(only_ref)} only in the reference "
            f"(e.g. {list(only_ref[:3])}), {len(only_cand)} only in the candidate "
            f"(e.g. {list(only_cand[:3])})"
        )
    ids = reference.index
    unknown = ids.difference(patients.index)
    if len(unknown):
        raise ValueError(f"{len(unknown)} slices have no patient id (e.g. {list(unknown[:3])})")
    ref = reference.to_numpy(float)
    cand = candidate.loc[ids].to_numpy(float)
    diff = cand - ref
    groups = patients.loc[ids].to_numpy()
    ci95 = cluster_bootstrap_ci(diff, groups, n_resamples=n_bootstrap, seed=seed)
    p = 1.0 if not np.any(diff) else float(wilcoxon(cand, ref).pvalue)
    return {
        "n_slices": int(len(ids)),
        "n_patients": int(len(set(groups))),
        "mean_dice_reference": float(ref.mean()),
        "mean_dice_candidate": float(cand.mean()),
        "diff": float(diff.mean()),
        "ci95": list(ci95),
        "wilcoxon_p": p,
        "better": int((diff > margin).sum()),
        "worse": int((diff < -margin).sum()),
        "margin": margin,
        "misses_reference": int((ref < MISS_DICE).sum()),
        "misses_candidate": int((cand < MISS_DICE).sum()),
        "n_bootstrap": n_bootstrap,
        "seed": seed,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; prints and returns the comparison."""
    from segmentation.data import read_split

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reference", type=Path, help="per_image.csv of the reference (shipped)")
    p.add_argument("candidate", type=Path, help="per_image.csv of the candidate")
    p.add_argument("--split", default="artifacts/splits/segmentation_split.csv",
                   help="split CSV with the patient of every slice")
    p.add_argument("--bootstrap", type=int, default=5000)
    p.add_argument("--margin", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    split = read_split(args.split).set_index("id")
    ref, cand = _read(args.reference), _read(args.candidate)
    report = compare(ref["dice"], cand["dice"], split["patient_id"], n_bootstrap=args.bootstrap,
                     margin=args.margin, seed=args.seed)
    report["reference"], report["candidate"] = str(args.reference), str(args.candidate)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
