"""Do two ``ensemble.evaluate`` runs on the same images agree? (e.g. TensorFlow vs LiteRT)

Usage::

    python benchmarks/compare_predictions.py A/predictions.csv B/predictions.csv \\
        --json benchmarks/results/avx2_host/litert_vs_tensorflow_test.json

Both files must list the same image paths. For each base model and the ensemble
it reports the accuracy in A and in B, their difference, the share of images
with the same predicted class (agreement) and the largest absolute difference
of any class probability. Exit code 0 when every accuracy is identical and every
predicted class agrees, else 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from neurostack import CLASS_NAMES  # noqa: E402


def compare_tables(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, Any]:
    """Compare two predictions tables (``path``, ``label``, ``<model>_<class>`` columns).

    Raises:
        ValueError: If the paths differ or the tables share no model.
    """
    if a["path"].tolist() != b["path"].tolist():
        raise ValueError("the two tables do not list the same image paths in the same order")
    models = [
        c[: -len("_" + CLASS_NAMES[0])]
        for c in a.columns
        if c.endswith("_" + CLASS_NAMES[0]) and c in b.columns
    ]
    if not models:
        raise ValueError("the two tables share no model probability columns")
    labels = a["label"].map({c: i for i, c in enumerate(CLASS_NAMES)}).to_numpy()
    out: dict[str, Any] = {"n_images": len(a), "models": {}}
    for m in models:
        cols = [f"{m}_{c}" for c in CLASS_NAMES]
        pa, pb = a[cols].to_numpy(np.float64), b[cols].to_numpy(np.float64)
        acc_a = float((pa.argmax(1) == labels).mean())
        acc_b = float((pb.argmax(1) == labels).mean())
        out["models"][m] = {
            "accuracy_a": round(acc_a, 6),
            "accuracy_b": round(acc_b, 6),
            "accuracy_difference": round(acc_b - acc_a, 6),
            "agreement": round(float((pa.argmax(1) == pb.argmax(1)).mean()), 6),
            "max_abs_probability_difference": float(np.abs(pa - pb).max()),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the comparison; 0 when accuracies and predicted classes are identical."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path, help="predictions.csv of run A")
    p.add_argument("b", type=Path, help="predictions.csv of run B")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    report = compare_tables(pd.read_csv(args.a), pd.read_csv(args.b))
    report.update(a=str(args.a), b=str(args.b))
    same = all(
        r["accuracy_difference"] == 0 and r["agreement"] == 1 for r in report["models"].values()
    )
    report["verdict"] = "identical decisions" if same else "changed"
    print(f"{'model':14s} {'acc A':>8s} {'acc B':>8s} {'agree':>7s} {'max |dp|':>10s}")
    for name, r in report["models"].items():
        print(
            f"{name:14s} {r['accuracy_a']:8.4f} {r['accuracy_b']:8.4f} {r['agreement']:7.4f} "
            f"{r['max_abs_probability_difference']:10.2e}"
        )
    print(f"{report['n_images']} images: {report['verdict']}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
