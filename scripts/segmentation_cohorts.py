r"""Segmentation Dice by patient cohort of figshare-seg, with patient-level intervals.

The figshare data set holds two kinds of patient ids in ``metadata.csv``: numbers
(134 patients) and alphanumeric scanner-style codes (52 patients, all glioma), which
look like two acquisition series (:mod:`segmentation.cohorts`). Reads a
``per_image.csv`` of ``python -m segmentation.evaluate`` and the split CSV
(``id, patient_id``); writes no identifier, only counts::

    PYTHONPATH=. python scripts/segmentation_cohorts.py \
        artifacts/evaluation/segmentation/test/per_image.csv \
        --split artifacts/splits/segmentation_split.csv [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from segmentation.cohorts import cohort_table


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
