"""Evaluate the shipped classifiers on a folder of class subfolders.

Writes ``predictions.csv`` (one row per image: ``path, label, pred`` and the
probability columns ``<model>_<class>`` for every base model and
``ensemble``), ``metrics.json`` and, when files could not be read,
``failures.csv``. Unreadable files are reported and skipped; the command
exits 0 when at least one image was evaluated.

``--intensity-reference auto`` scores the slices as the pipeline feeds them: a
slice the input check flags is mapped to the training intensity curve first
(``ensemble.intensity.corrected_slice``), and ``predictions.csv`` gains an
``intensity_corrected`` column. The default, ``none``, scores the slices as given.

Example::

    python -m ensemble.evaluate ../shared/datasets/brain-tumor-mri/Training \
        --split artifacts/splits/classification_split.csv --part test \
        --out artifacts/evaluation/classification/test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ensemble.data import label_indices, list_class_folder, load_split
from ensemble.inference import CASCADE, CLASSIFIER_MODES, Ensemble, load_ensemble
from ensemble.intensity import (
    REFERENCE_FOLDER,
    IntensityReference,
    check_slice,
    corrected_slice,
    correction_record,
    resolve_reference,
)
from ensemble.metrics import classification_metrics
from neurostack import CLASS_NAMES
from neurostack.errors import ArtifactError, InputImageError
from neurostack.imaging import load_image
from neurostack.preprocess import crop, find_brain_box

ENSEMBLE_COLUMN = "ensemble"


def probability_columns(model: str) -> list[str]:
    """Column names ``<model>_<class>`` in class order."""
    return [f"{model}_{c}" for c in CLASS_NAMES]


def predict_files(
    ensemble: Ensemble,
    root: Path,
    rows: pd.DataFrame,
    batch_size: int = 32,
    reuse: pd.DataFrame | None = None,
    reference: IntensityReference | None = None,
    reuse_is_mapped: bool = False,
) -> tuple[pd.DataFrame, list[dict]]:
    """Predict every file in ``rows`` (columns ``path``, ``label``); collect failures.

    Args:
        ensemble: The loaded ensemble.
        root: Folder the ``path`` column is relative to.
        rows: Files to predict.
        batch_size: Images per forward pass.
        reuse: Probabilities of some members computed before for the same weights,
            indexed by ``path`` with ``<model>_<class>`` columns (:func:`reusable_predictions`);
            those members are not run again, the final answer is recomputed. A batch
            with a path missing from ``reuse`` is run in full.
        reference: The input check's reference: a slice it flags is mapped to the
            training curve before the networks (as the pipeline does) and its row
            gets ``intensity_corrected = True``. ``None``: slices as given, no column.
        reuse_is_mapped: Whether ``reuse`` was computed with the same ``reference``;
            if not, a batch holding a slice mapped here is run in full.

    Returns:
        ``(predictions, failures)``: one row per readable image; one dict
        ``{path, error}`` per file that could not be read.
    """
    out_rows: list[dict] = []
    failures: list[dict] = []
    names = list(ensemble.members)
    reused = [n for n in names if reuse is not None and probability_columns(n)[0] in reuse]
    for start in tqdm(range(0, len(rows), batch_size), desc="evaluating", unit="batch"):
        chunk = rows.iloc[start : start + batch_size]
        crops, kept, mapped = [], [], []
        for rec in chunk.itertuples(index=False):
            try:
                gray = load_image(root / rec.path).gray
            except InputImageError as exc:
                failures.append({"path": rec.path, "error": str(exc)})
                continue
            if reference is not None:
                corrected = corrected_slice(gray, check_slice(reference, gray))
                gray = gray if corrected is None else corrected
                mapped.append(corrected is not None)
            crops.append(crop(gray, find_brain_box(gray)))
            kept.append(rec)
        if not crops:
            continue
        paths = [r.path for r in kept]
        given = {}
        stale = any(mapped) and not reuse_is_mapped  # reused rows were computed as given
        if reused and not stale and pd.Index(paths).isin(reuse.index).all():
            given = {
                n: reuse.loc[paths, probability_columns(n)].to_numpy(np.float32) for n in reused
            }
        pred = ensemble.predict_crops(crops, given)
        for i, rec in enumerate(kept):
            row = {
                "path": rec.path,
                "label": rec.label,
                "pred": CLASS_NAMES[int(pred.ensemble[i].argmax())],
            }
            for name in names:
                row.update(
                    zip(probability_columns(name), pred.per_model[name][i].tolist(), strict=True)
                )
            row.update(
                zip(probability_columns(ENSEMBLE_COLUMN), pred.ensemble[i].tolist(), strict=True)
            )
            if reference is not None:
                row["intensity_corrected"] = mapped[i]
            if pred.escalated is not None:
                row["escalated"] = bool(pred.escalated[i])
            out_rows.append(row)
    return pd.DataFrame(out_rows), failures


def reusable_predictions(previous: Path, ensemble: Ensemble) -> tuple[pd.DataFrame, list[str]]:
    """Probabilities from an earlier evaluation folder that are still valid.

    A member's columns are reused only when the earlier ``metrics.json`` records the
    same weights SHA-256 as the loaded artifact and the same test-time augmentation
    as ``ensemble.tta`` (``"none"`` when it records none).

    Returns:
        ``(table indexed by path, names of the reused members)``.

    Raises:
        ValueError: If ``previous`` lacks ``metrics.json`` or ``predictions.csv``, either
            cannot be parsed, or the table lists a path twice.
    """
    previous = Path(previous)
    try:
        old_metrics = json.loads((previous / "metrics.json").read_text())
        old_sha = old_metrics["artifacts"]
        old = pd.read_csv(previous / "predictions.csv").set_index("path")
    except (OSError, KeyError, TypeError, ValueError) as exc:  # missing, unreadable, malformed
        raise ValueError(
            f"--reuse needs metrics.json (with 'artifacts') and predictions.csv in {previous}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if old.index.has_duplicates:
        raise ValueError(f"{previous / 'predictions.csv'} lists some paths twice")
    same_tta = old_metrics.get("tta", "none") == ensemble.tta
    names = [
        n
        for n, clf in ensemble.members.items()
        if same_tta
        and old_sha.get(n) == clf.config["weights_sha256"]
        and probability_columns(n)[0] in old
    ]
    cols = [c for n in names for c in probability_columns(n)]
    return old.loc[:, cols], names


def metrics_from_predictions(df: pd.DataFrame) -> dict:
    """Compute ``{"models": {...}, "n_images"}`` from a predictions table."""
    y = label_indices(df["label"])
    models = {}
    for model in [
        *[
            m
            for m in ("xception", "inceptionv3", "resnet50", "vgg19")
            if probability_columns(m)[0] in df
        ],
        ENSEMBLE_COLUMN,
    ]:
        proba = df[probability_columns(model)].to_numpy(dtype=np.float64)
        models[model] = classification_metrics(y, proba, CLASS_NAMES)
    return {"models": models, "n_images": int(len(df))}


def evaluate(
    data_dir: Path,
    out_dir: Path,
    *,
    artifacts: Path = Path("artifacts/classification"),
    split_csv: Path | None = None,
    part: str | None = None,
    strict: bool = True,
    batch_size: int = 32,
    reuse: Path | None = None,
    tta: str | None = None,
    runtime: str | None = None,
    intensity_reference: str | Path | None = None,
) -> dict:
    """Run the ensemble over a dataset and write predictions, metrics and failures.

    ``intensity_reference`` (``auto``, ``none`` or a folder; see
    :func:`ensemble.intensity.resolve_reference`) applies the pipeline's
    input check; ``metrics.json`` records it under ``intensity_correction`` (``None``
    when the slices were scored as given) and the number mapped as
    ``n_intensity_corrected``.

    ``tta`` is the base models' test-time augmentation (``None``: the meta-learner's,
    see :func:`~ensemble.inference.load_ensemble`); ``metrics.json`` records it, and
    each member's ``runtime`` (TensorFlow or LiteRT, ``None``: ``"auto"``).

    With ``reuse`` (an earlier output folder of this function) the members whose
    weights are unchanged are not run again (see :func:`reusable_predictions`);
    ``metrics.json`` names them under ``reused``.
    """
    reference, reference_path = resolve_reference(
        intensity_reference, Path(artifacts) / REFERENCE_FOLDER
    )
    correction = correction_record(reference, reference_path)
    rows = load_split(split_csv, part) if split_csv else list_class_folder(data_dir)
    t0 = time.time()
    reused: list[str] = []
    reuse_is_mapped = False
    if reuse is not None:
        ensemble = load_ensemble(artifacts, strict=strict, fused=False, tta=tta, runtime=runtime)
        table, reused = reusable_predictions(reuse, ensemble)
        old = json.loads((Path(reuse) / "metrics.json").read_text()).get("intensity_correction")
        reuse_is_mapped = correction is not None and old is not None and (
            old.get("features_sha256") == correction["features_sha256"]
            and old.get("threshold") == correction["threshold"]
        )
    else:
        ensemble = load_ensemble(artifacts, strict=strict, tta=tta, runtime=runtime)
        table = None
    preds, failures = predict_files(
        ensemble, Path(data_dir), rows, batch_size, table, reference, reuse_is_mapped
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    preds.to_csv(out_dir / "predictions.csv", index=False)
    if failures:
        pd.DataFrame(failures).to_csv(out_dir / "failures.csv", index=False)
    metrics = metrics_from_predictions(preds) if len(preds) else {"models": {}, "n_images": 0}
    metrics.update(
        n_failed=len(failures),
        ensemble_method=ensemble.method,
        tta=ensemble.tta,
        runtimes=ensemble.runtimes,
        intensity_correction=correction,
        n_intensity_corrected=(
            int(preds["intensity_corrected"].sum()) if correction is not None and len(preds) else 0
        ),
        missing_artifacts=ensemble.missing,
        **({"n_escalated": int(preds["escalated"].sum()), "cascade_threshold":
            ensemble.threshold} if "escalated" in preds else {}),
        split={"csv": str(split_csv) if split_csv else None, "part": part},
        artifacts={name: clf.config["weights_sha256"] for name, clf in ensemble.members.items()}
        | ({"meta": ensemble.meta.config["weights_sha256"]} if ensemble.meta else {})
        | ({"meta_single_crop": ensemble.first.meta.config["weights_sha256"]}
           if ensemble.tta == CASCADE and ensemble.first.meta else {}),
        wall_time_s=round(time.time() - t0, 1),
    )
    if reuse is not None:
        metrics["reused"] = {"from": str(reuse), "members": reused}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def record_in_artifacts(metrics: dict, artifacts: Path, record: Path, part: str) -> list[Path]:
    """Write each base model's share of an evaluation into ``<artifacts>/<model>/metrics.json``.

    The file maps split part -> that model's metrics, the evaluation record it came
    from and the SHA-256 of the weights evaluated; other parts already recorded are
    kept. Returns the files written.
    """
    written = []
    for name, sha in metrics["artifacts"].items():
        if name == "meta" or name not in metrics["models"]:
            continue
        path = Path(artifacts) / name / "metrics.json"
        old = json.loads(path.read_text()) if path.is_file() else {}
        evaluations = old.get("evaluations", {}) if isinstance(old, dict) else {}
        evaluations[part] = {
            "record": str(record),
            "weights_sha256": sha,
            "tta": metrics.get("tta", "none"),
            "n_images": metrics["n_images"],
            **metrics["models"][name],
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"evaluations": evaluations}, indent=2) + "\n")
        tmp.replace(path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, evaluate, print a summary."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("data_dir", type=Path, help="folder with class subfolders")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/classification"))
    p.add_argument("--split", type=Path, default=None, help="split CSV; evaluates --part only")
    p.add_argument("--part", default=None, help="train | val | test (with --split)")
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="evaluate whichever base models exist (final = their mean)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--tta",
        choices=CLASSIFIER_MODES,
        default=None,
        help="base models' test-time augmentation (default: the meta-learner's input_tta); "
        "cascade: single crops first, hflip for the slices the first pass is unsure of",
    )
    p.add_argument(
        "--runtime",
        default=None,
        help="auto, tensorflow, litert or per model (default: $NEUROSTACK_RUNTIME, else auto)",
    )
    p.add_argument(
        "--reuse",
        type=Path,
        default=None,
        help="earlier --out folder: members whose weights SHA-256 is unchanged are not rerun",
    )
    p.add_argument(
        "--record-in-artifacts",
        action="store_true",
        help="also write each model's metrics for --part into ARTIFACTS/<model>/metrics.json",
    )
    p.add_argument(
        "--intensity-reference",
        default="none",
        help="input check applied before the networks as in the pipeline: none (default: "
        "slices as given), auto (ARTIFACTS/intensity_reference, if any) or a folder",
    )
    a = p.parse_args(argv)
    if a.part and not a.split:
        p.error("--part needs --split")
    if a.record_in_artifacts and not a.part:
        p.error("--record-in-artifacts needs --split and --part")
    if a.reuse and a.tta == CASCADE:
        p.error("--reuse cannot be used with --tta cascade (which pass computes a slice is "
                "only known after the first one)")
    if a.reuse and not all((a.reuse / f).is_file() for f in ("metrics.json", "predictions.csv")):
        p.error(f"--reuse needs metrics.json and predictions.csv in {a.reuse}")
    try:  # a named reference must be usable before any model is run
        resolve_reference(a.intensity_reference, a.artifacts / REFERENCE_FOLDER)
    except ArtifactError as exc:
        p.error(f"--intensity-reference: {exc}")
    m = evaluate(
        a.data_dir,
        a.out,
        artifacts=a.artifacts,
        split_csv=a.split,
        part=a.part,
        strict=not a.allow_missing,
        batch_size=a.batch_size,
        reuse=a.reuse,
        tta=a.tta,
        runtime=a.runtime,
        intensity_reference=a.intensity_reference,
    )
    if a.record_in_artifacts and m["n_images"]:
        for path in record_in_artifacts(m, a.artifacts, a.out / "metrics.json", a.part):
            print(f"recorded in {path}")
    for name, rec in m["models"].items():
        print(
            f"{name:12s} accuracy={rec['accuracy']:.4f} macro_f1={rec['macro_f1']:.4f} "
            f"auc={rec['roc_auc']['macro']}"
        )
    if m["intensity_correction"] is not None:
        print(f"{m['n_intensity_corrected']} slices mapped to the training curve first")
    print(f"{m['n_images']} images evaluated, {m['n_failed']} failed -> {a.out}")
    if m["n_images"] == 0:
        print("no image could be evaluated", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
