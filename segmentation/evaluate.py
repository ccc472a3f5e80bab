r"""Evaluate an exported segmenter on a folder of images and ground-truth masks.

Usage::

    python -m segmentation.evaluate IMAGES_DIR MASKS_DIR --out OUT_DIR \\
        [--artifacts artifacts/segmentation/resunet] \\
        [--ids-from artifacts/splits/segmentation_split.csv --split test] \\
        [--metadata metadata.csv] [--threshold 0.5] [--postprocess largest_component]

Masks are matched to images by file stem (``0001.jpg`` <-> ``0001.png``); a mask
pixel > 127 is tumour. Scores are computed per image at the ORIGINAL image
resolution (the prediction is mapped back from the brain crop) with the
empty-mask policy of :mod:`segmentation.metrics`.

Outputs in ``OUT_DIR``:

* ``per_image.csv``: ``id, [label,] dice, iou, gt_area_px, pred_area_px,
  tumour_contrast_sd, intensity_corrected`` (the reference tumour's contrast against
  the rest of the head, :func:`segmentation.cohorts.tumour_contrast_sd`, empty for
  an empty mask; whether the input check mapped the slice to the training curve
  before the network, as the analysis pipeline does).
* ``metrics.json``: mean/median Dice and IoU, ``n_images``, per-class scores
  when labels are known, patient-level 95 % bootstrap intervals of the means
  when patient ids are known (``patient_id`` column of ``--ids-from`` or
  ``--metadata``; the ids are used for resampling only and are not written),
  the threshold and post-processing, the artifact's weight SHA-256, and every
  skipped file with its reason.
* ``threshold_sweep.csv`` (with ``--sweep``): mean and median Dice at each
  threshold, once per post-processing mode (column ``postprocess``).

By default the network is scored on the slices as they are. With
``--intensity-reference auto`` (the reference shipped beside the segmenter,
``ARTIFACTS/../../classification/intensity_reference``) or a reference folder, the
slices go to the network as the analysis pipeline sends them: a slice the input
check of grey levels flags is first mapped to the training intensity curve
(:func:`ensemble.intensity.corrected_slice`).

Unreadable or unmatched files are reported and skipped; the exit status is 0
when at least one image was evaluated, 1 otherwise, 2 for a bad artifact or
arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurostack.artifacts import write_json
from neurostack.errors import ArtifactError, InputImageError
from neurostack.imaging import InputLimits, load_image
from segmentation.cohorts import tumour_contrast_sd
from segmentation.metrics import cluster_bootstrap_ci, dice_coefficient, iou
from segmentation.postprocess import POSTPROCESS_MODES, check_postprocess, probability_to_mask

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".dcm"}
DEFAULT_ARTIFACTS = "artifacts/segmentation/resunet"


def default_reference(artifacts: str | Path) -> Path:
    """Where the intensity reference of a segmenter's artifact tree lives.

    ``artifacts/segmentation/resunet`` -> ``artifacts/classification/intensity_reference``.
    """
    from ensemble.intensity import REFERENCE_FOLDER

    return Path(artifacts).parent.parent / "classification" / REFERENCE_FOLDER


def resolve_reference(choice: str | Path | None, artifacts: str | Path
                      ) -> tuple[Any, Path | None]:
    """Load the input check's reference for a segmenter's evaluation.

    ``choice`` as in :func:`ensemble.intensity.resolve_reference`; ``"auto"`` is the
    reference beside the segmenter's artifact tree (:func:`default_reference`).
    """
    from ensemble.intensity import resolve_reference as resolve

    return resolve(choice, default_reference(artifacts))


MASK_LEVEL = 127
"""Ground-truth mask pixels brighter than this (8-bit grey) are tumour."""


def load_mask(path: str | Path, limits: InputLimits | None = None) -> np.ndarray:
    """Read a ground-truth mask file as ``(H, W)`` bool (grey > :data:`MASK_LEVEL`).

    Raises:
        InputImageError: If the file cannot be read (see :func:`~neurostack.imaging.load_image`).
    """
    return load_image(path, limits=limits).gray > MASK_LEVEL


def index_folder(folder: Path, skipped: list[dict[str, str]], kind: str) -> dict[str, Path]:
    """Map file stem -> path for the image files of a folder.

    Duplicate stems and non-image files are appended to ``skipped`` as ``{file, reason}``.
    """
    index: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append({"file": str(path), "reason": f"not an image file ({kind})"})
            continue
        if path.stem in index:
            skipped.append(
                {
                    "file": str(path),
                    "reason": f"duplicate {kind} stem; using {index[path.stem].name}",
                }
            )
            continue
        index[path.stem] = path
    return index


CI_METHOD = (
    "95 % percentile bootstrap over patients (2000 resamples of whole patients, "
    "slice-weighted mean, seed 0)"
)
"""How ``mean_dice_ci95`` / ``mean_iou_ci95`` are computed (recorded next to them)."""


def _summary(df: pd.DataFrame, patients: dict[str, str] | None = None) -> dict[str, Any]:
    """Mean/median Dice and IoU of ``df`` (columns ``id, dice, iou``).

    With ``patients`` (image id -> patient id) covering every row and at least two
    patients, also ``n_patients`` and patient-level bootstrap intervals
    (:data:`CI_METHOD`) of the means.
    """
    out: dict[str, Any] = {
        "n_images": len(df),
        "mean_dice": float(df["dice"].mean()),
        "median_dice": float(df["dice"].median()),
        "mean_iou": float(df["iou"].mean()),
        "median_iou": float(df["iou"].median()),
    }
    groups = df["id"].map(patients or {})
    if patients and groups.notna().all() and groups.nunique() >= 2:
        out["n_patients"] = int(groups.nunique())
        for key in ("dice", "iou"):
            low, high = cluster_bootstrap_ci(df[key].to_numpy(), groups.to_numpy())
            out[f"mean_{key}_ci95"] = [low, high]
    return out


def threshold_sweep_table(per_image: pd.DataFrame) -> pd.DataFrame:
    """Summarise per-image Dice at several thresholds.

    Args:
        per_image: One row per (image, threshold[, postprocess]): columns
            ``threshold``, ``dice`` and optionally ``postprocess`` and ``label``.

    Returns:
        One row per threshold (per ``postprocess`` mode when that column is given),
        ascending: ``[postprocess,] threshold, n_images, mean_dice, median_dice``
        and ``mean_dice_<label>`` for every non-empty label.
    """
    keys = ["postprocess", "threshold"] if "postprocess" in per_image else ["threshold"]
    out = per_image.groupby(keys)["dice"].agg(["count", "mean", "median"])
    out.columns = ["n_images", "mean_dice", "median_dice"]
    if "label" in per_image:
        labelled = per_image[per_image["label"].fillna("") != ""]
        if len(labelled):
            by_class = labelled.pivot_table(
                index=keys, columns="label", values="dice", aggfunc="mean"
            )
            out = out.join(by_class.add_prefix("mean_dice_"))
    return out.reset_index()


def best_operating_point(sweep: pd.DataFrame) -> tuple[float, str]:
    """Return ``(threshold, postprocess)`` with the highest mean Dice in a sweep table.

    Ties go to no post-processing, then to the threshold closest to 0.5. A table
    without a ``postprocess`` column is read as ``"none"`` throughout.
    """
    if sweep.empty:
        raise ValueError("the threshold sweep is empty")
    table = sweep if "postprocess" in sweep else sweep.assign(postprocess="none")
    top = table[table["mean_dice"] == table["mean_dice"].max()]
    order = top.assign(
        _plain=(top["postprocess"] != "none").astype(int),
        _dist=(top["threshold"] - 0.5).abs(),
    ).sort_values(["_plain", "_dist", "threshold"])
    row = order.iloc[0]
    return float(row["threshold"]), str(row["postprocess"])


def best_threshold(sweep: pd.DataFrame, postprocess: str | None = None) -> float:
    """Return the threshold with the highest mean Dice in a :func:`threshold_sweep_table`.

    Args:
        sweep: The sweep table.
        postprocess: Only consider the rows of this post-processing mode
            (``None``: every row).

    Ties go to the threshold closest to 0.5.
    """
    if postprocess is not None and "postprocess" in sweep:
        sweep = sweep[sweep["postprocess"] == postprocess]
    return best_operating_point(sweep.drop(columns="postprocess", errors="ignore"))[0]


def write_operating_point(
    artifacts: str | Path,
    threshold: float,
    tta: str,
    evidence: dict[str, Any],
    postprocess: str = "none",
) -> None:
    """Store a chosen threshold, test-time augmentation and post-processing in ``config.json``.

    The weights (and their SHA-256) are untouched; ``evidence`` (split, sweep file,
    scores) is kept under ``operating_point`` so the choice can be traced.
    """
    from neurostack.artifacts import read_json
    from neurostack.preprocess import check_tta

    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1); received {threshold}")
    check_tta(tta)
    check_postprocess(postprocess)
    path = Path(artifacts) / "config.json"
    config = read_json(path)
    config["threshold"] = float(threshold)
    config["test_time_augmentation"] = tta
    config["postprocess"] = postprocess
    config["operating_point"] = {
        "threshold": float(threshold),
        "tta": tta,
        "postprocess": postprocess,
        **evidence,
    }
    write_json(path, config)


def evaluate(
    images_dir: str | Path,
    masks_dir: str | Path,
    out_dir: str | Path,
    *,
    artifacts: str | Path = DEFAULT_ARTIFACTS,
    ids_from: str | Path | None = None,
    split: str | None = None,
    metadata: str | Path | None = None,
    threshold: float | None = None,
    batch_size: int = 8,
    progress: bool = True,
    tta: str | None = None,
    sweep: Sequence[float] | None = None,
    postprocess: str | None = None,
    intensity_reference: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate the segmenter in ``artifacts`` and write ``per_image.csv`` and ``metrics.json``.

    Args:
        images_dir: Folder of slices.
        masks_dir: Folder of ground-truth masks (same stems).
        out_dir: Output folder (created).
        artifacts: Exported segmenter folder.
        ids_from: Optional CSV with an ``id`` column restricting the images
            (e.g. the split file); with ``split``, only rows of that split.
        split: Value of the ``split`` column to keep.
        metadata: Optional CSV with ``id`` and ``label`` for per-class scores
            (labels are also taken from ``ids_from`` when it has them). A
            ``patient_id`` column in either CSV adds patient-level bootstrap
            intervals of the mean Dice and IoU.
        threshold: Probability at or above which a pixel is tumour; ``None`` uses the
            artifact's own threshold.
        batch_size: Slices per network call.
        progress: Show a tqdm bar.
        tta: Test-time augmentation (``"none"`` or ``"hflip"``); ``None`` uses the
            artifact's own setting.
        sweep: Thresholds at which the same probabilities are also scored, once per
            post-processing mode; writes ``threshold_sweep.csv`` (mean and median
            Dice overall and per class).
        postprocess: Mask post-processing (``"none"``, ``"largest_component"``);
            ``None`` uses the artifact's own setting.
        intensity_reference: The input check applied before the network, as in the
            pipeline: ``"auto"``, ``"none"`` / ``None`` or a folder
            (:func:`resolve_reference`).

    Returns:
        The content written to ``metrics.json``.

    Raises:
        ArtifactError: If the artifact cannot be loaded.
        FileNotFoundError: If an input folder or CSV does not exist.
    """
    from tqdm import tqdm

    from ensemble.intensity import correction_record, network_inputs
    from segmentation.predict import load_segmenter

    images_dir, masks_dir, out_dir = Path(images_dir), Path(masks_dir), Path(out_dir)
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"folder not found: {folder}")
    segmenter = load_segmenter(artifacts, tta=tta, postprocess=postprocess)
    reference, reference_path = resolve_reference(intensity_reference, artifacts)
    if threshold is None:
        threshold = segmenter.default_threshold
    sweep = sorted({float(t) for t in sweep}) if sweep else []
    bad = [t for t in sweep if not 0.0 < t < 1.0]
    if bad:
        raise ValueError(f"sweep thresholds must be in (0, 1); received {bad}")
    sweep_rows: list[dict[str, Any]] = []

    skipped: list[dict[str, str]] = []
    images = index_folder(images_dir, skipped, "image")
    masks = index_folder(masks_dir, skipped, "mask")

    labels: dict[str, str] = {}
    patients: dict[str, str] = {}  # only for the patient-level intervals; never written out
    wanted: list[str] | None = None
    if ids_from is not None:
        table = pd.read_csv(ids_from, dtype=str)
        if "id" not in table.columns:
            raise ValueError(f"{ids_from} has no 'id' column; found {list(table.columns)}")
        if split is not None:
            if "split" not in table.columns:
                raise ValueError(f"{ids_from} has no 'split' column to select {split!r}")
            table = table[table["split"] == split]
        wanted = table["id"].tolist()
        if "label" in table.columns:
            labels.update(zip(table["id"], table["label"], strict=True))
        if "patient_id" in table.columns:
            patients.update(zip(table["id"], table["patient_id"], strict=True))
    if metadata is not None:
        meta = pd.read_csv(metadata, dtype=str)
        if "patient_id" in meta.columns and "id" in meta.columns:
            patients.update(zip(meta["id"], meta["patient_id"], strict=True))
        if {"id", "label"} <= set(meta.columns):
            labels.update(zip(meta["id"], meta["label"], strict=True))
        else:
            print(
                f"warning: {metadata} lacks id/label columns; no per-class scores", file=sys.stderr
            )

    if wanted is None:
        candidates = sorted(images)
        for stem in sorted(set(masks) - set(images)):
            skipped.append({"file": str(masks[stem]), "reason": "mask without a matching image"})
    else:
        candidates = []
        for stem in wanted:
            if stem not in images:
                skipped.append({"file": stem, "reason": f"id listed in {ids_from} but no image"})
            else:
                candidates.append(stem)
    pairs = []
    for stem in candidates:
        if stem not in masks:
            skipped.append({"file": str(images[stem]), "reason": "no mask with the same stem"})
        else:
            pairs.append(stem)

    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(pairs), desc="evaluate", disable=not progress)
    for start in range(0, len(pairs), batch_size):
        grays, gts, stems = [], [], []
        for stem in pairs[start : start + batch_size]:
            try:
                gray = load_image(images[stem]).gray
                gt = load_mask(masks[stem])
            except InputImageError as exc:
                skipped.append({"file": stem, "reason": f"unreadable: {exc}"})
                continue
            if gt.shape != gray.shape:
                skipped.append(
                    {"file": stem, "reason": f"mask shape {gt.shape} != image shape {gray.shape}"}
                )
                continue
            grays.append(gray)
            gts.append(gt)
            stems.append(stem)
        inputs, corrected = network_inputs(grays, reference)
        results = segmenter.predict_batch(inputs, threshold=threshold, batch_size=batch_size)
        for stem, gray, gt, res, fixed in zip(stems, grays, gts, results, corrected,
                                              strict=True):
            row: dict[str, Any] = {"id": stem}
            if labels:
                row["label"] = labels.get(stem, "")
            row["dice"] = dice_coefficient(gt, res.mask)
            row["iou"] = iou(gt, res.mask)
            row["gt_area_px"] = int(gt.sum())
            row["pred_area_px"] = res.area_px
            row["tumour_contrast_sd"] = tumour_contrast_sd(gray, gt)
            row["outline_confidence"] = res.confidence
            row["intensity_corrected"] = fixed
            rows.append(row)
            for t in sweep:
                for mode in POSTPROCESS_MODES:
                    sweep_rows.append(
                        {
                            "postprocess": mode,
                            "threshold": t,
                            "label": row.get("label", ""),
                            "dice": dice_coefficient(
                                gt, probability_to_mask(res.probability, t, mode)[0]
                            ),
                        }
                    )
        bar.update(len(pairs[start : start + batch_size]))
    bar.close()

    out_dir.mkdir(parents=True, exist_ok=True)
    columns = ["id"] + (["label"] if labels else []) + [
        "dice", "iou", "gt_area_px", "pred_area_px", "tumour_contrast_sd",
        "outline_confidence", "intensity_corrected"]
    df = pd.DataFrame(rows, columns=columns)
    df.to_csv(out_dir / "per_image.csv", index=False, float_format="%.6f")

    if sweep_rows:
        threshold_sweep_table(pd.DataFrame(sweep_rows)).to_csv(
            out_dir / "threshold_sweep.csv", index=False, float_format="%.6f"
        )

    config = segmenter.config
    result: dict[str, Any] = (
        _summary(df, patients)
        if len(df)
        else {"n_images": 0, "mean_dice": None, "median_dice": None}
    )
    if labels and len(df):
        result["per_class"] = {
            label: _summary(group, patients)
            for label, group in df.groupby("label")
            if label != ""
        }
    if "mean_dice_ci95" in result:
        result["ci_method"] = CI_METHOD
    result.update(
        {
            "threshold": threshold,
            "test_time_augmentation": segmenter.tta,
            "postprocess": segmenter.postprocess,
            "resolution": "original image grid (prediction mapped back from the brain crop)",
            "empty_mask_policy": "both empty -> 1.0, exactly one empty -> 0.0",
            "intensity_correction": correction_record(reference, reference_path),
            "n_intensity_corrected": int(df["intensity_corrected"].sum()),
            "artifact": {
                "path": str(artifacts),
                "weights_sha256": config.get("weights_sha256"),
                "best_epoch": config.get("best_epoch"),
                "epochs_completed": config.get("epochs_completed"),
                "run_finished": config.get("run_finished"),
            },
            "images_dir": str(images_dir),
            "masks_dir": str(masks_dir),
            "ids_from": None if ids_from is None else str(ids_from),
            "split": split,
            "n_skipped": len(skipped),
            "skipped": skipped,
        }
    )
    write_json(out_dir / "metrics.json", result)
    return result


RECORDED_KEYS: tuple[str, ...] = (
    "n_images", "mean_dice", "median_dice", "mean_iou", "median_iou", "per_class",
    "n_patients", "mean_dice_ci95", "mean_iou_ci95", "ci_method",
    "threshold", "test_time_augmentation", "postprocess",
    "intensity_correction", "n_intensity_corrected",
)


def record_in_artifact(result: dict[str, Any], artifacts: str | Path, record: str | Path,
                       split: str) -> Path:
    """Write an evaluation's summary into ``<artifacts>/metrics.json`` under ``split``.

    The file maps split -> the summary (:data:`RECORDED_KEYS`), the evaluation
    record it came from and the SHA-256 of the weights evaluated. Entries of other
    splits are kept only if they were made with the same weights, so the file never
    describes weights that are no longer shipped.

    Args:
        result: What :func:`evaluate` returned.
        artifacts: The segmenter's artifact folder.
        record: The evaluation's ``metrics.json``.
        split: The split evaluated (e.g. ``"val"``, ``"test"``).

    Returns:
        The path written.
    """
    sha = (result.get("artifact") or {}).get("weights_sha256")
    path = Path(artifacts) / "metrics.json"
    try:
        old = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        old = {}
    kept = {part: rec for part, rec in (old.get("evaluations") or {}).items()
            if isinstance(rec, dict) and rec.get("weights_sha256") == sha}
    kept[split] = {"record": str(record), "weights_sha256": sha,
                   **{k: result[k] for k in RECORDED_KEYS if k in result}}
    write_json(path, {"evaluations": dict(sorted(kept.items()))})
    return path


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(
        prog="python -m segmentation.evaluate", description=__doc__.split("\n")[0]
    )
    p.add_argument("images_dir")
    p.add_argument("masks_dir")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--artifacts", default=DEFAULT_ARTIFACTS)
    p.add_argument("--ids-from", default=None, help="CSV with an id column (e.g. the split file)")
    p.add_argument("--split", default=None, help="keep rows of this split (with --ids-from)")
    p.add_argument(
        "--metadata",
        default=None,
        help="CSV with id,label[,patient_id]: per-class scores (and patient-level intervals)",
    )
    p.add_argument(
        "--threshold", type=float, default=None, help="mask threshold (default: the artifact's)"
    )
    p.add_argument(
        "--tta", choices=["none", "hflip"], default=None, help="default: the artifact's setting"
    )
    p.add_argument(
        "--postprocess",
        choices=list(POSTPROCESS_MODES),
        default=None,
        help="mask post-processing (default: the artifact's setting)",
    )
    p.add_argument(
        "--sweep",
        default=None,
        help="comma-separated thresholds also scored on the same probabilities "
        "(threshold_sweep.csv), e.g. 0.2,0.3,0.4,0.5",
    )
    p.add_argument(
        "--choose-threshold",
        action="store_true",
        help="write the sweep's best threshold and post-processing, and the --tta used, "
        "into the artifact's config.json (refused on the test split)",
    )
    p.add_argument(
        "--record-in-artifacts",
        action="store_true",
        help="also write this split's summary into ARTIFACTS/metrics.json (needs --split)",
    )
    p.add_argument(
        "--intensity-reference",
        default="none",
        help="input check applied before the network as in the pipeline: none (default: "
        "slices as they are), auto (the reference beside --artifacts, if any) or a folder",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="TF intra/inter-op threads")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.split and not args.ids_from:
        p.error("--split needs --ids-from")
    if args.record_in_artifacts and not args.split:
        p.error("--record-in-artifacts needs --ids-from and --split")
    if args.choose_threshold and not args.sweep:
        p.error("--choose-threshold needs --sweep")
    if args.choose_threshold and args.split == "test":
        p.error("--choose-threshold is refused on the test split: choose on 'val'")
    try:
        sweep = [float(t) for t in args.sweep.split(",")] if args.sweep else None
    except ValueError:
        p.error(f"--sweep must be comma-separated numbers; received {args.sweep!r}")
    if args.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    try:
        result = evaluate(
            args.images_dir,
            args.masks_dir,
            args.out,
            artifacts=args.artifacts,
            ids_from=args.ids_from,
            split=args.split,
            metadata=args.metadata,
            threshold=args.threshold,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            tta=args.tta,
            sweep=sweep,
            postprocess=args.postprocess,
            intensity_reference=args.intensity_reference,
        )
    except (ArtifactError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for item in result["skipped"]:
        print(f"skipped {item['file']}: {item['reason']}", file=sys.stderr)
    n = result["n_images"]
    if n == 0:
        print("no image could be evaluated", file=sys.stderr)
        return 1
    print(
        f"{n} images: mean Dice {result['mean_dice']:.4f} (median {result['median_dice']:.4f}), "
        f"mean IoU {result['mean_iou']:.4f}; wrote {Path(args.out) / 'metrics.json'}"
    )
    for label, s in result.get("per_class", {}).items():
        print(f"  {label}: n={s['n_images']} mean Dice {s['mean_dice']:.4f}")
    if args.record_in_artifacts:
        written = record_in_artifact(result, args.artifacts, Path(args.out) / "metrics.json",
                                     args.split)
        print(f"recorded in {written}")
    if sweep:
        table = pd.read_csv(Path(args.out) / "threshold_sweep.csv")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.choose_threshold:
        best, mode = best_operating_point(table)
        row = table[(table["threshold"] == best) & (table["postprocess"] == mode)].iloc[0]
        write_operating_point(
            args.artifacts,
            best,
            result["test_time_augmentation"],
            {
                "chosen_on": f"{args.ids_from}:{args.split}" if args.split else args.images_dir,
                "sweep": str(Path(args.out) / "threshold_sweep.csv"),
                "mean_dice": round(float(row["mean_dice"]), 4),
                "n_images": int(row["n_images"]),
            },
            postprocess=mode,
        )
        print(
            f"operating point: threshold {best:g}, post-processing {mode}, "
            f"tta {result['test_time_augmentation']} "
            f"(val mean Dice {row['mean_dice']:.4f}) written to {args.artifacts}/config.json"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
