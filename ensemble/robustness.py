r"""How the shipped classifiers hold up under acquisition shift.

The same held-out slices are classified unchanged and under each corruption of
:mod:`neurostack.corrupt` (gamma, Rician noise, bias field, low resolution,
blur, rotation) at severities 1 and 2, through the full pipeline (brain crop,
resize, test-time augmentation, meta-learner). Reports accuracy and macro-F1
per model and condition, and how many predictions changed from the clean slice.

Example::

    python -m ensemble.robustness ../shared/datasets/brain-tumor-mri/Training \
        --split artifacts/splits/classification_split.csv --part test --per-class 20 \
        --out artifacts/evaluation/robustness/classification [--resume]

Outputs in ``--out``: ``per_slice.csv`` (one row per slice and condition:
``path, label, corruption, severity`` and the predicted class of every model),
``summary.csv`` (:func:`summarise`), ``metrics.json`` (settings, weights' SHA-256,
unreadable files). Each condition is appended as soon as it is done, so
``--resume`` continues an interrupted run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ensemble.data import load_split
from ensemble.evaluate import ENSEMBLE_COLUMN
from ensemble.metrics import confusion_matrix, mcnemar_exact, per_class_report
from neurostack import CLASS_NAMES
from neurostack.corrupt import CLEAN, CORRUPTIONS, conditions, corrupt, slice_seed
from neurostack.errors import InputImageError
from neurostack.imaging import load_image
from neurostack.preprocess import crop, find_brain_box
from neurostack.robustness import RECORD_FILE, check_weights, open_run, run_conditions


def sample_rows(rows: pd.DataFrame, per_class: int, seed: int = 0) -> pd.DataFrame:
    """Draw ``per_class`` rows of each label (all of a smaller class), sorted by path.

    Raises:
        ValueError: If ``per_class < 1`` or ``rows`` lacks ``path`` / ``label``.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1; received {per_class}")
    if not {"path", "label"} <= set(rows.columns):
        raise ValueError(f"rows need 'path' and 'label' columns; found {list(rows.columns)}")
    picked = [
        group.sample(n=min(per_class, len(group)), random_state=seed)
        for _, group in rows.groupby("label", sort=True)
    ]
    return pd.concat(picked).sort_values("path").reset_index(drop=True)[["path", "label"]]


def predict_condition(
    ensemble: object,
    grays: dict[str, np.ndarray],
    rows: pd.DataFrame,
    corruption: str,
    severity: int,
    *,
    seed: int = 0,
    batch_size: int = 16,
) -> pd.DataFrame:
    """Classify every slice of ``rows`` under one condition.

    Args:
        ensemble: A loaded :class:`~ensemble.inference.Ensemble`.
        grays: ``path -> (H, W)`` uint8 slice, for every row.
        rows: ``path, label`` of the slices.
        corruption: :data:`CLEAN` or a key of :data:`~neurostack.corrupt.CORRUPTIONS`.
        severity: 0 with :data:`CLEAN`, else one of :data:`~neurostack.corrupt.SEVERITIES`.
        seed: Base seed of the random corruptions (see :func:`slice_seed`).
        batch_size: Slices per forward pass.

    Returns:
        One row per slice: ``path, label, corruption, severity`` and one column per
        model (and ``ensemble``) holding the predicted class name.
    """
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows.iloc[start : start + batch_size]
        crops = []
        for path in chunk["path"]:
            gray = grays[path]
            if corruption != CLEAN:
                rng_seed = slice_seed(path, corruption, severity, seed)
                gray = corrupt(gray, corruption, severity, rng_seed)
            crops.append(crop(gray, find_brain_box(gray)))
        pred = ensemble.predict_crops(crops)
        part = chunk[["path", "label"]].copy()
        part["corruption"], part["severity"] = corruption, severity
        for name, proba in [*pred.per_model.items(), (ENSEMBLE_COLUMN, pred.ensemble)]:
            part[name] = [CLASS_NAMES[i] for i in np.asarray(proba).argmax(axis=1)]
        out.append(part)
    return pd.concat(out, ignore_index=True)


def model_columns(table: pd.DataFrame) -> list[str]:
    """Return the prediction columns of a :func:`predict_condition` table, ensemble last."""
    fixed = {"path", "label", "corruption", "severity"}
    models = [c for c in table.columns if c not in fixed and c != ENSEMBLE_COLUMN]
    return models + ([ENSEMBLE_COLUMN] if ENSEMBLE_COLUMN in table.columns else [])


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Accuracy, macro-F1 and prediction changes per condition and model.

    Args:
        table: Rows of :func:`predict_condition` for several conditions, including
            the clean one.

    Returns:
        One row per ``(corruption, severity, model)``: ``n``, ``accuracy``,
        ``macro_f1``, ``accuracy_change`` (vs. the same model on the same clean
        slices), ``changed`` (fraction of slices whose predicted class differs
        from the clean prediction) and ``p_vs_clean`` (exact McNemar test of the
        same model on the clean and the shifted slices). Clean rows come first.

    Raises:
        ValueError: If the clean condition is missing.
    """
    clean = table[table["corruption"] == CLEAN].set_index("path")
    if clean.empty:
        raise ValueError("the table has no clean (corruption 'none') rows to compare with")
    index = {c: i for i, c in enumerate(CLASS_NAMES)}
    rows = []
    for (name, severity), part in table.groupby(["corruption", "severity"], sort=False):
        part = part.set_index("path")
        truth = part["label"].map(index).to_numpy()
        for model in model_columns(table):
            pred = part[model].map(index).to_numpy()
            report = per_class_report(confusion_matrix(truth, pred, len(CLASS_NAMES)), CLASS_NAMES)
            f1s = [report[c]["f1"] for c in CLASS_NAMES if report[c]["support"] > 0]
            base = clean.loc[part.index, model]
            base_right = (base == clean.loc[part.index, "label"]).to_numpy()
            right = pred == truth
            rows.append({
                "corruption": name, "severity": int(severity), "model": model, "n": len(part),
                "accuracy": float(right.mean()), "macro_f1": float(np.mean(f1s)),
                "accuracy_change": float(right.mean() - base_right.mean()),
                "changed": float((part[model] != base).mean()),
                "p_vs_clean": mcnemar_exact(base_right, right)["p_value"],
            })
    out = pd.DataFrame(rows)
    order = out["corruption"].ne(CLEAN).astype(int)
    return out.assign(_o=order).sort_values(["_o"], kind="stable").drop(columns="_o")


def run(
    data_dir: Path,
    out_dir: Path,
    *,
    split_csv: Path,
    part: str = "test",
    per_class: int = 20,
    corruptions: list[str] | None = None,
    artifacts: Path = Path("artifacts/classification"),
    seed: int = 0,
    resume: bool = False,
    batch_size: int = 16,
) -> dict:
    """Classify a stratified sample under every condition; write the outputs (see module doc).

    Returns:
        The content of ``metrics.json``.

    Raises:
        FileExistsError: If ``out_dir`` holds results and ``resume`` is false.
        ValueError: On bad arguments, or a resumed run with other settings or weights.
    """
    from ensemble.inference import load_ensemble

    todo = conditions(corruptions)
    rows = sample_rows(load_split(split_csv, part), per_class, seed)
    settings = {"split": {"csv": str(split_csv), "part": part}, "per_class": per_class,
                "seed": seed, "conditions": [list(c) for c in todo]}
    old = open_run(out_dir, settings, resume)

    grays, failures = {}, []
    for path in rows["path"]:
        try:
            grays[path] = load_image(Path(data_dir) / path).gray
        except InputImageError as exc:
            failures.append({"path": path, "error": str(exc)})
    rows = rows[rows["path"].isin(grays)].reset_index(drop=True)

    ensemble = load_ensemble(artifacts)
    weights = {name: clf.config["weights_sha256"] for name, clf in ensemble.members.items()}
    if ensemble.meta:
        weights["meta"] = ensemble.meta.config["weights_sha256"]
    check_weights(old, weights, out_dir)
    record = {
        "settings": settings,
        "n_slices": len(rows),
        "per_label": rows["label"].value_counts().sort_index().to_dict(),
        "corruptions": {n: {"description": c.description, "levels": list(c.levels)}
                        for n, c in CORRUPTIONS.items() if any(n == t[0] for t in todo)},
        "ensemble_method": ensemble.method,
        "tta": ensemble.tta,
        "weights_sha256": weights,
        "failures": failures,
    }
    (out_dir / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    t0 = time.time()
    table = run_conditions(
        out_dir, todo, len(rows),
        lambda name, severity: predict_condition(ensemble, grays, rows, name, severity,
                                                 seed=seed, batch_size=batch_size),
        dtype={"path": str},
    )
    summarise(table).to_csv(out_dir / "summary.csv", index=False, float_format="%.6g")
    record["wall_time_s_this_session"] = round(time.time() - t0, 1)
    (out_dir / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the ensemble's rows of the summary."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("data_dir", type=Path, help="folder with class subfolders")
    p.add_argument("--split", type=Path, required=True, help="split CSV")
    p.add_argument("--part", default="test", help="split part to sample (default: test)")
    p.add_argument("--per-class", type=int, default=20, help="slices per class (default: 20)")
    p.add_argument("--corruptions", nargs="+", default=None, choices=sorted(CORRUPTIONS),
                   help="default: all")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/classification"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    args = p.parse_args(argv)
    try:
        record = run(args.data_dir, args.out, split_csv=args.split, part=args.part,
                     per_class=args.per_class, corruptions=args.corruptions,
                     artifacts=args.artifacts, seed=args.seed, resume=args.resume,
                     batch_size=args.batch_size)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for f in record["failures"]:
        print(f"unreadable, skipped: {f['path']}: {f['error']}", file=sys.stderr)
    summary = pd.read_csv(args.out / "summary.csv")
    print(summary[summary["model"] == ENSEMBLE_COLUMN].to_string(index=False))
    return 0 if record["n_slices"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
