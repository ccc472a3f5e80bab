r"""Segmentation Dice by patient cohort of figshare-seg, with patient-level intervals.

The figshare data set holds two kinds of patient ids in ``metadata.csv``: numbers
(134 patients) and alphanumeric scanner-style codes (52 patients, all glioma), which
look like two acquisition series (:mod:`segmentation.cohorts`). Reads a
``per_image.csv`` of ``python -m segmentation.evaluate`` and the split CSV
(``id, patient_id``); writes no identifier, only counts::

    PYTHONPATH=. python scripts/segmentation_cohorts.py \
        artifacts/evaluation/segmentation/test/per_image.csv \
        --split artifacts/splits/segmentation_split.csv [--json OUT.json] \
        [--contrast-from ../shared/datasets/figshare-seg]

``--contrast-from DATA_DIR`` also measures each slice's tumour contrast from
``DATA_DIR/images/<id>.jpg`` and ``DATA_DIR/masks/<id>.png``
(:func:`segmentation.cohorts.tumour_contrast_sd`) and prints the Dice per contrast
band (:func:`segmentation.cohorts.contrast_table`); unreadable pairs are counted
and left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from segmentation.cohorts import cohort_table, contrast_table, tumour_contrast_sd


def slice_contrasts(ids: pd.Series, data_dir: Path) -> tuple[pd.Series, int]:
    """Tumour contrast (SD units) per slice id, and how many pairs could not be read (NaN)."""
    from neurostack.errors import InputImageError
    from neurostack.imaging import load_image
    from segmentation.data import read_mask

    values, failed = [], 0
    for sid in ids:
        try:
            gray = load_image(data_dir / "images" / f"{sid}.jpg").gray
            values.append(tumour_contrast_sd(gray, read_mask(data_dir / "masks" / f"{sid}.png")))
        except (InputImageError, OSError, ValueError):
            values.append(float("nan"))
            failed += 1
    return pd.Series(values, index=ids.index, dtype=float), failed


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("per_image", type=Path, help="per_image.csv of segmentation.evaluate")
    p.add_argument("--split", type=Path, default=Path("artifacts/splits/segmentation_split.csv"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the table as JSON")
    p.add_argument("--contrast-from", type=Path, default=None, metavar="DATA_DIR",
                   help="figshare-seg folder: also print Dice per tumour-contrast band")
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
    if args.contrast_from is not None:
        contrast, failed = slice_contrasts(per_image["id"], args.contrast_from)
        per_image["tumour_contrast_sd"] = contrast
        print(f"\nDice by tumour contrast (mean tumour minus median tissue, in SDs of the "
              f"tissue; {failed} unreadable slices left out)")
        print(contrast_table(per_image, split).round(4).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
