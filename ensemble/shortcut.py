r"""How much of the class can be read from grey-level statistics alone (a shortcut probe).

The classification data joins three public sources whose slices were exported
with different intensity curves, and the sources are not spread evenly over the
classes. A classifier can then learn "how bright the head is" as a proxy for
the class: a shortcut that breaks on scans exported another way (the
robustness run shows the ensemble's accuracy falling under a gamma change).
This module measures that confound on the data, without any CNN, from the six
log grey-level quantiles of :func:`ensemble.intensity.intensity_features`:

* :func:`shortcut_probe`: a gradient-boosted classifier fitted on those six
  numbers of the training part and scored on the validation part, next to the
  majority-class baseline. Accuracy far above the baseline means the intensity
  curve alone carries class information the CNNs can exploit.

Example::

    python -m ensemble.shortcut ../shared/datasets/brain-tumor-mri/Training \
        --split artifacts/splits/classification_split.csv \
        --out artifacts/evaluation/classification/intensity_shortcut.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ensemble.data import load_split
from ensemble.intensity import FEATURE_COLUMNS, INTENSITY_QUANTILES, read_features, relative_gamma
from neurostack import CLASS_NAMES

SHORTCUT_RECORD = "intensity_shortcut.json"
"""File name of the record in ``artifacts/evaluation/classification/``."""


def shortcut_probe(
    fit: pd.DataFrame, score: pd.DataFrame, *, seed: int = 0
) -> dict[str, Any]:
    """Fit a classifier on intensity features alone and score it on held-out slices.

    Args:
        fit: Rows of :func:`ensemble.intensity.read_features` to fit on (``label`` +
            feature columns).
        score: Held-out rows in the same format.
        seed: Random state of the classifier.

    Returns:
        ``accuracy`` and ``balanced_accuracy`` of the intensity-only classifier on
        ``score``, ``majority_baseline`` (share of ``score``'s most common class),
        ``n_fit`` / ``n_score``, and ``median_relative_gamma`` per class of
        ``score`` (reference: the median features of ``fit``).

    Raises:
        ValueError: If either part is empty or ``fit`` has fewer than two classes.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import balanced_accuracy_score

    cols = list(FEATURE_COLUMNS)
    if fit.empty or score.empty:
        raise ValueError(
            f"both parts need slices; received {len(fit)} to fit, {len(score)} to score"
        )
    if fit["label"].nunique() < 2:
        raise ValueError(
            f"fit needs at least two classes; received {sorted(fit['label'].unique())}"
        )
    clf = HistGradientBoostingClassifier(random_state=seed).fit(fit[cols], fit["label"])
    pred = clf.predict(score[cols])
    reference = fit[cols].median().to_numpy()
    gamma = pd.Series(relative_gamma(score[cols].to_numpy(), reference), index=score.index)
    classes = [c for c in CLASS_NAMES if c in set(score["label"])]
    return {
        "accuracy": float(np.mean(pred == score["label"].to_numpy())),
        "balanced_accuracy": float(balanced_accuracy_score(score["label"], pred)),
        "majority_baseline": float(score["label"].value_counts(normalize=True).max()),
        "n_fit": len(fit),
        "n_score": len(score),
        "median_relative_gamma": {
            c: round(float(gamma[score["label"] == c].median()), 4) for c in classes
        },
    }


def describe(record: dict[str, Any]) -> str:
    """One Markdown paragraph stating a :func:`run` record's finding (model card, dashboard)."""
    gam = ", ".join(f"{c} {g:.2f}" for c, g in record["median_relative_gamma"].items())
    return (
        f"**Grey levels alone carry much of the class.** A classifier given only six "
        f"grey-level quantiles of the head crop (no CNN; `python -m ensemble.shortcut`) "
        f"is right on {record['accuracy']:.1%} of {record['n_score']} {record['score_part']} "
        f"slices (balanced {record['balanced_accuracy']:.1%}; the most common class is "
        f"{record['majority_baseline']:.1%}). Median gamma of each class relative to the "
        f"training median: {gam}. The three sources were exported with different "
        "intensity curves and hold the classes unevenly (slice orientation and the "
        "tumour itself add to it), so the CNNs can lean on brightness; that is "
        "consistent with the large losses under gamma changes."
    )


def run(
    data_dir: str | Path, split_csv: str | Path, out: str | Path, *,
    fit_part: str = "train", score_part: str = "val", progress: bool = True,
) -> dict[str, Any]:
    """Measure the intensity shortcut on a split and write the record to ``out`` (JSON)."""
    if fit_part == score_part:
        raise ValueError(f"fit and score parts must differ; received {fit_part!r} twice")
    rows = pd.concat([load_split(split_csv, fit_part), load_split(split_csv, score_part)])
    features, failures = read_features(data_dir, rows, progress=progress)
    record = {
        "what": "intensity-only classifier (6 log grey-level quantiles of the head crop, "
                "gradient boosting) fitted on one part, scored on another",
        "quantiles": list(INTENSITY_QUANTILES),
        "split": str(split_csv),
        "fit_part": fit_part,
        "score_part": score_part,
        **shortcut_probe(features[features.split == fit_part],
                         features[features.split == score_part]),
        "unreadable": failures,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m ensemble.shortcut DATA --split CSV --out JSON``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data_dir", type=Path, help="root the split's paths are relative to")
    p.add_argument("--split", type=Path, required=True, help="split CSV (path, label, split)")
    p.add_argument("--out", type=Path, required=True, help="JSON record to write")
    p.add_argument("--fit-part", default="train")
    p.add_argument("--score-part", default="val")
    a = p.parse_args(argv)
    try:
        rec = run(a.data_dir, a.split, a.out, fit_part=a.fit_part, score_part=a.score_part)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"intensity-only accuracy {rec['accuracy']:.3f} "
          f"(balanced {rec['balanced_accuracy']:.3f}) "
          f"vs majority {rec['majority_baseline']:.3f} on {rec['n_score']} {a.score_part} slices; "
          f"{len(rec['unreadable'])} unreadable; written to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
