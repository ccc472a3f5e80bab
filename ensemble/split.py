"""Command line: write the duplicate-aware, class-stratified split CSV.

Example::

    python -m ensemble.split ../shared/datasets/brain-tumor-mri/Training \
        --out artifacts/splits/classification_split.csv
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from ensemble.data import find_duplicate_groups, list_class_folder, make_split


def run_split(
    data_dir: Path,
    out: Path,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    max_hamming: int = 4,
    seed: int = 42,
) -> dict:
    """Hash, group and split a class-folder dataset; write the CSV and a JSON report."""
    df = list_class_folder(data_dir)
    groups, _, report = find_duplicate_groups(
        data_dir, df["path"].tolist(), max_hamming=max_hamming
    )
    split = make_split(
        df, groups, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
    )
    labels_per_group = split.groupby("group")["label"].nunique()
    report.cross_class_groups = int((labels_per_group > 1).sum())
    out.parent.mkdir(parents=True, exist_ok=True)
    split[["path", "label", "group", "split"]].to_csv(out, index=False)
    summary = {
        "duplicates": asdict(report),
        "counts": split.groupby(["split", "label"]).size().unstack(fill_value=0).to_dict("index"),
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
    }
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and write the split."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "data_dir", type=Path, help="folder with glioma/ meningioma/ notumor/ pituitary/"
    )
    p.add_argument("--out", type=Path, default=Path("artifacts/splits/classification_split.csv"))
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--test-fraction", type=float, default=0.15)
    p.add_argument("--max-hamming", type=int, default=4, help="near-duplicate pHash distance")
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args(argv)
    summary = run_split(
        a.data_dir,
        a.out,
        val_fraction=a.val_fraction,
        test_fraction=a.test_fraction,
        max_hamming=a.max_hamming,
        seed=a.seed,
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
