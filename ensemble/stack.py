"""Fit the stacking meta-learner on saved held-out base-model probabilities.

The input is a ``predictions.csv`` written by ``python -m ensemble.evaluate``
on images the base models never trained on (the validation split). The
test split is refused. The number of epochs is chosen by stratified K-fold
cross-validation on the held-out rows, then the model is refitted on all of them.
When the evaluation recorded its split CSV, the folds keep each duplicate group
(exact and near-duplicate slices) whole, so no fold is scored on a copy of a
slice it was fitted on.

Example::

    python -m ensemble.evaluate ../shared/datasets/brain-tumor-mri/Training \
        --split artifacts/splits/classification_split.csv --part val \
        --out artifacts/evaluation/classification/val
    python -m ensemble.stack artifacts/evaluation/classification/val/predictions.csv \
        --out artifacts/classification/meta
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ensemble.data import label_indices
from ensemble.evaluate import probability_columns
from ensemble.export import write_meta_artifact
from ensemble.inference import ALT_META_NAMES
from ensemble.registry import BACKBONES
from neurostack import CLASS_NAMES
from neurostack.artifacts import write_json
from neurostack.preprocess import check_tta


def stacked_features(df: pd.DataFrame, models: list[str]) -> np.ndarray:
    """``(N, len(models) * 4)`` matrix of base probabilities in ``models`` order."""
    cols = [c for m in models for c in probability_columns(m)]
    missing = [c for c in cols if c not in df]
    if missing:
        raise ValueError(f"held-out predictions lack columns {missing}")
    return df[cols].to_numpy(dtype=np.float32)


def heldout_groups(heldout_csv: Path, paths: pd.Series) -> np.ndarray | None:
    """Duplicate-group id per held-out row, from the split CSV the evaluation recorded.

    Returns ``None`` when the evaluation recorded no split CSV or it is not on disk.

    Raises:
        ValueError: If the split CSV lacks a ``group`` for some held-out path.
    """
    src = Path(heldout_csv).parent / "metrics.json"
    csv = json.loads(src.read_text()).get("split", {}).get("csv") if src.exists() else None
    if not csv or not Path(csv).is_file():
        return None
    split = pd.read_csv(csv)
    if "group" not in split:
        return None
    groups = paths.map(split.set_index("path")["group"])
    if groups.isna().any():
        raise ValueError(f"{csv} has no group for {int(groups.isna().sum())} held-out path(s)")
    return groups.to_numpy()


def cv_folds(y: np.ndarray, groups: np.ndarray | None, folds: int, seed: int) -> list[tuple]:
    """Stratified K-fold ``(train_idx, val_idx)`` pairs; whole groups per fold when given."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if groups is None:
        skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        return list(skf.split(np.zeros(len(y)), y))
    sgkf = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(sgkf.split(np.zeros(len(y)), y, groups))


def _fit(x: np.ndarray, y: np.ndarray, epochs: int, seed: int, x_val=None, y_val=None):
    import keras

    from ensemble.models import build_meta_learner

    keras.utils.set_random_seed(seed)
    model = build_meta_learner(x.shape[1] // len(CLASS_NAMES), len(CLASS_NAMES))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    hist = model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=32,
        verbose=0,
        validation_data=(x_val, y_val) if x_val is not None else None,
    )
    return model, hist.history


def out_of_fold_probabilities(
    x: np.ndarray,
    y: np.ndarray,
    splits: list[tuple],
    epochs: int,
    seed: int,
    *,
    on_fit=None,
) -> np.ndarray:
    """``(N, 4)`` meta-learner probabilities, each row from the fold model that never saw it.

    Fold ``k`` is fitted for ``epochs`` with seed ``seed + k`` (as in
    :func:`fit_meta_learner`'s cross-validation); ``on_fit`` is called after each fit.
    """
    oof = np.full((len(y), len(CLASS_NAMES)), np.nan, dtype=np.float32)
    for k, (tr, va) in enumerate(splits):
        model, _ = _fit(x[tr], y[tr], epochs, seed + k)
        oof[va] = model.predict(x[va], verbose=0)
        if on_fit is not None:
            on_fit()
    return oof


def heldout_out_of_fold(heldout_csv: Path, meta_dir: Path) -> tuple[pd.DataFrame, dict]:
    """Re-run a shipped meta-learner's cross-validation and return its out-of-fold outputs.

    Uses the folds, seed and epoch count the meta-learner in ``meta_dir`` recorded, on
    the held-out predictions it was fitted on (``heldout_csv``, normally the one its
    config names), so every row's probabilities come from a fold model that did not
    see that row (nor its duplicate group).

    Returns:
        ``(table, check)``: the table has ``path``, ``label``, ``fold`` and
        ``ensemble_<class>`` columns in ``heldout_csv`` order; ``check`` compares the
        fold accuracies with the ones the meta-learner recorded
        (``{"recorded", "recomputed", "max_abs_difference"}``).

    Raises:
        ValueError: If ``meta_dir`` lacks its config or metrics, or the held-out rows
            differ in number from the ones it was fitted on.
    """
    meta_dir = Path(meta_dir)
    try:
        cfg = json.loads((meta_dir / "config.json").read_text())
        recorded = json.loads((meta_dir / "metrics.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{meta_dir}: cannot read the meta-learner's config/metrics ({exc})"
        ) from None
    training = cfg.get("training") or {}
    df = pd.read_csv(heldout_csv)
    if int(training.get("n_rows", -1)) != len(df):
        raise ValueError(
            f"{heldout_csv} has {len(df)} rows; the meta-learner in {meta_dir} was fitted on "
            f"{training.get('n_rows')!r}"
        )
    folds = len(recorded.get("cv_fold_accuracies") or []) or 5
    x = stacked_features(df, list(cfg["inputs"]))
    y = label_indices(df["label"])
    groups = heldout_groups(Path(heldout_csv), df["path"])
    splits = cv_folds(y, groups, folds, int(training["seed"]))
    oof = out_of_fold_probabilities(x, y, splits, int(training["epochs"]), int(training["seed"]))
    fold = np.empty(len(df), dtype=int)
    for k, (_, va) in enumerate(splits):
        fold[va] = k
    table = pd.DataFrame({"path": df["path"], "label": df["label"], "fold": fold})
    for c, name in enumerate(CLASS_NAMES):
        table[f"ensemble_{name}"] = oof[:, c]
    again = [float((oof[va].argmax(1) == y[va]).mean()) for _, va in splits]
    before = [float(a) for a in recorded.get("cv_fold_accuracies") or []]
    diff = max((abs(a - b) for a, b in zip(again, before, strict=False)), default=float("nan"))
    return table, {"recorded": before, "recomputed": again, "max_abs_difference": diff}


def fit_meta_learner(
    heldout_csv: Path,
    out: Path,
    *,
    models: list[str] | None = None,
    folds: int = 5,
    max_epochs: int = 150,
    seed: int = 42,
    progress: bool = True,
) -> dict:
    """Choose epochs by K-fold CV, refit on all held-out rows, write the artifact folder.

    ``progress`` shows a bar over the ``2 x folds + 1`` fits on stderr.

    The config records as ``input_tta`` the test-time augmentation the held-out
    evaluation ran with (its ``metrics.json``), so inference feeds the same inputs.

    Raises:
        ValueError: If the predictions come from the test split, lack columns, or
            their ``metrics.json`` records an unknown test-time augmentation.
    """
    heldout_csv = Path(heldout_csv)
    src_metrics = heldout_csv.parent / "metrics.json"
    if not src_metrics.is_file():
        raise ValueError(
            f"{src_metrics} is missing: the meta-learner is only fitted on predictions whose "
            "record proves they are of the 'val' split (python -m ensemble.evaluate ... "
            "--split SPLIT.csv --part val)"
        )
    try:
        recorded = json.loads(src_metrics.read_text())
    except ValueError as exc:
        raise ValueError(f"{src_metrics} is not valid JSON ({exc})") from None
    tta = check_tta(recorded.get("tta", "none"))
    for mode, name in ALT_META_NAMES.items():
        if Path(out).name == name and tta != mode:
            raise ValueError(
                f"{out} is where ensemble.inference looks for the meta-learner of "
                f"test-time augmentation {mode!r}; the held-out predictions in {heldout_csv} "
                f"were made with {tta!r} (evaluate with --tta {mode})"
            )
    split = recorded.get("split")
    part = split.get("part") if isinstance(split, dict) else None
    if part == "test":
        raise ValueError("refusing to fit the meta-learner on test-split predictions")
    if part != "val":
        raise ValueError(
            f"held-out predictions must come from the 'val' split; got {part!r} in {src_metrics} "
            "(an evaluation without --part covers every image, training images included)"
        )
    models = models or list(BACKBONES)
    df = pd.read_csv(heldout_csv)
    x = stacked_features(df, models)
    y = label_indices(df["label"])
    groups = heldout_groups(heldout_csv, df["path"])
    splits = cv_folds(y, groups, folds, seed)
    t0 = time.time()
    curves = []
    bar = tqdm(total=2 * len(splits) + 1, desc="meta-learner fits", unit="fit",
               disable=not progress)
    for k, (tr, va) in enumerate(splits):
        _, hist = _fit(x[tr], y[tr], max_epochs, seed + k, x[va], y[va])
        curves.append(hist["val_loss"])
        bar.update()
    mean_curve = np.mean(curves, axis=0)
    best_epochs = int(np.argmin(mean_curve)) + 1
    bar.set_postfix(epochs=best_epochs)
    # cross-validated accuracy at the chosen epoch count, refitting each fold
    oof = out_of_fold_probabilities(x, y, splits, best_epochs, seed, on_fit=bar.update)
    accs = [float((oof[va].argmax(1) == y[va]).mean()) for _, va in splits]
    cv_acc = float(np.mean(accs))
    model, _ = _fit(x, y, best_epochs, seed)
    bar.update()
    bar.close()
    out.mkdir(parents=True, exist_ok=True)
    write_meta_artifact(
        model,
        out,
        inputs=models,
        input_tta=tta,
        training={
            "heldout_predictions": str(heldout_csv),
            # the base weights that made these inputs (checked by load_ensemble)
            "input_models_sha256": {
                m: sha for m, sha in (recorded.get("artifacts") or {}).items() if m in models
            },
            "n_rows": int(len(df)),
            "epochs": best_epochs,
            "epochs_chosen_by": f"{folds}-fold CV minimum of mean validation loss",
            "cv_folds": "stratified, duplicate groups kept whole"
            if groups is not None
            else "stratified (no duplicate groups recorded)",
            "optimizer": "Adam 1e-3, batch 32",
            "seed": seed,
            "wall_time_s": round(time.time() - t0, 1),
        },
    )
    metrics = {
        "cv_accuracy": cv_acc,
        "cv_fold_accuracies": accs,
        "epochs": best_epochs,
        "n_rows": int(len(df)),
        "input_tta": tta,
    }
    write_json(out / "metrics.json", metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and fit the meta-learner."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("heldout_csv", type=Path, help="predictions.csv of the validation split")
    p.add_argument("--out", type=Path, default=Path("artifacts/classification/meta"))
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--max-epochs", type=int, default=150)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    m = fit_meta_learner(a.heldout_csv, a.out, folds=a.folds, max_epochs=a.max_epochs, seed=a.seed,
                         progress=not a.no_progress)
    print(json.dumps(m, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
