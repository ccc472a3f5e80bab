r"""How the shipped Res-UNet's outlines hold up under acquisition shift.

Every held-out slice of a split is segmented unchanged and under each corruption
of :mod:`neurostack.corrupt` at severities 1 and 2, at the artifact's operating
point, and scored against its ground truth (moved with the slice for rotation).
Besides Dice, the run reports how much the predicted tumour area moves from the
clean prediction: the morphology a radiologist reads is computed from that mask.

Example::

    python -m segmentation.robustness ../shared/datasets/figshare-seg/images \
        ../shared/datasets/figshare-seg/masks \
        --ids-from artifacts/splits/segmentation_split.csv --split test \
        --out artifacts/evaluation/robustness/segmentation [--resume]

With ``--intensity-reference auto`` (or a reference folder) every slice goes to the
network as the analysis pipeline sends it: one the input check flags is first
mapped to the training intensity curve (:func:`ensemble.intensity.corrected_slice`);
the default scores the network on the slices as they are.

Outputs in ``--out``: ``per_slice.csv`` (``id, label, corruption, severity, dice,
gt_area_px, pred_area_px, intensity_corrected``), ``summary.csv`` (:func:`summarise`) and
``metrics.json`` (settings, operating point, weights' SHA-256, unreadable files).
Patient ids are read from the split file for nothing but the count; they are not written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurostack.corrupt import CLEAN, CORRUPTIONS, conditions, corrupt, corrupt_mask, slice_seed
from neurostack.errors import ArtifactError, InputImageError
from neurostack.imaging import load_image
from neurostack.robustness import RECORD_FILE, check_weights, open_run, run_conditions
from segmentation.evaluate import DEFAULT_ARTIFACTS, index_folder, load_mask
from segmentation.metrics import dice_coefficient

AREA_TOLERANCE = 0.2
"""A predicted area within this relative distance of the clean prediction counts as stable."""


def segment_condition(
    segmenter: Any,
    slices: dict[str, tuple[np.ndarray, np.ndarray]],
    labels: dict[str, str],
    corruption: str,
    severity: int,
    *,
    seed: int = 0,
    batch_size: int = 8,
    reference: Any | None = None,
) -> pd.DataFrame:
    """Segment and score every slice under one condition.

    Args:
        segmenter: A loaded :class:`~segmentation.predict.Segmenter`.
        slices: ``id -> ((H, W) uint8 slice, (H, W) bool ground truth)``.
        labels: ``id -> tumour class`` (``""`` when unknown).
        corruption: :data:`~neurostack.corrupt.CLEAN` or a corruption name.
        severity: 0 with the clean condition, else 1 or 2.
        seed: Base seed of the random corruptions.
        batch_size: Slices per network call.
        reference: The input check's ``IntensityReference``: flagged slices are mapped
            to the training curve before the network, as in the pipeline (``None``:
            every slice as it is).

    Returns:
        One row per slice: ``id, label, corruption, severity, dice, gt_area_px,
        pred_area_px, intensity_corrected`` (areas in pixels of the original grid).
    """
    from ensemble.intensity import network_inputs

    rows = []
    ids = list(slices)
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        grays, truths = [], []
        for key in chunk:
            gray, truth = slices[key]
            if corruption != CLEAN:
                s = slice_seed(key, corruption, severity, seed)
                gray = corrupt(gray, corruption, severity, s)
                truth = corrupt_mask(truth, corruption, severity, s)
            grays.append(gray)
            truths.append(truth)
        inputs, corrected = network_inputs(grays, reference)
        for key, truth, res, fixed in zip(chunk, truths, segmenter.predict_batch(inputs),
                                          corrected, strict=True):
            rows.append({"id": key, "label": labels.get(key, ""), "corruption": corruption,
                         "severity": severity, "dice": dice_coefficient(truth, res.mask),
                         "gt_area_px": int(truth.sum()), "pred_area_px": res.area_px,
                         "intensity_corrected": fixed})
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Dice and area stability per condition.

    Args:
        table: Rows of :func:`segment_condition` for several conditions, including
            the clean one.

    Returns:
        One row per ``(corruption, severity)``, clean first: ``n``, ``mean_dice``,
        ``median_dice``, ``dice_change`` (mean paired difference to the clean
        slice), ``empty_predictions`` (fraction of slices with no predicted
        tumour), ``area_stable`` (fraction whose predicted area is within
        :data:`AREA_TOLERANCE` of the clean prediction's; a slice with an empty clean
        prediction counts as stable only if it stays empty), ``intensity_corrected``
        (share of slices mapped to the training curve, when the rows say) and
        ``mean_dice_<label>`` per tumour class.

    Raises:
        ValueError: If the clean condition is missing.
    """
    clean = table[table["corruption"] == CLEAN].set_index("id")
    if clean.empty:
        raise ValueError("the table has no clean (corruption 'none') rows to compare with")
    out = []
    for (name, severity), part in table.groupby(["corruption", "severity"], sort=False):
        part = part.set_index("id")
        base = clean.loc[part.index]
        ref = base["pred_area_px"].to_numpy(dtype=float)
        area = part["pred_area_px"].to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            stable = np.where(ref > 0, np.abs(area - ref) / ref <= AREA_TOLERANCE, area == 0)
        row = {"corruption": name, "severity": int(severity), "n": len(part),
               "mean_dice": float(part["dice"].mean()),
               "median_dice": float(part["dice"].median()),
               "dice_change": float((part["dice"] - base["dice"]).mean()),
               "empty_predictions": float((part["pred_area_px"] == 0).mean()),
               "area_stable": float(stable.mean())}
        if "intensity_corrected" in part:  # runs with the input check's correction
            row["intensity_corrected"] = float(part["intensity_corrected"].astype(bool).mean())
        if "label" in part:
            for label, group in part.groupby("label", sort=True):
                if label:
                    row[f"mean_dice_{label}"] = float(group["dice"].mean())
        out.append(row)
    df = pd.DataFrame(out)
    return df.assign(_o=df["corruption"].ne(CLEAN).astype(int)).sort_values(
        "_o", kind="stable").drop(columns="_o").reset_index(drop=True)


def run(
    images_dir: Path,
    masks_dir: Path,
    out_dir: Path,
    *,
    ids_from: Path,
    split: str = "test",
    corruptions: list[str] | None = None,
    artifacts: Path = Path(DEFAULT_ARTIFACTS),
    seed: int = 0,
    resume: bool = False,
    batch_size: int = 8,
    intensity_reference: str | Path | None = None,
) -> dict[str, Any]:
    """Segment one split under every condition; write the outputs (see module doc).

    ``intensity_reference`` is ``None`` / ``"none"`` (slices as they are), ``"auto"``
    or a folder (:func:`segmentation.evaluate.resolve_reference`).

    Unreadable slices or masks, and masks of another shape, are reported under
    ``failures`` and left out; the other slices are analysed.

    Returns:
        The content of ``metrics.json``.

    Raises:
        FileExistsError: If ``out_dir`` holds results and ``resume`` is false.
        ValueError: On bad arguments, or a resumed run with other settings or weights.
        ArtifactError: If the segmenter cannot be loaded.
    """
    from ensemble.intensity import correction_record
    from segmentation.evaluate import resolve_reference
    from segmentation.predict import load_segmenter

    todo = conditions(corruptions)
    table = pd.read_csv(ids_from, dtype=str)
    missing = {"id", "split"} - set(table.columns)
    if missing:
        raise ValueError(f"{ids_from} lacks columns {sorted(missing)}")
    table = table[table["split"] == split]
    if table.empty:
        raise ValueError(f"{ids_from} has no rows of split {split!r}")
    settings = {"ids_from": str(ids_from), "split": split, "seed": seed,
                "conditions": [list(c) for c in todo]}
    old = open_run(out_dir, settings, resume)

    slices: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    failures: list[dict[str, str]] = []
    images = index_folder(Path(images_dir), [], "image")
    masks = index_folder(Path(masks_dir), [], "mask")
    for key in table["id"]:
        if key not in images or key not in masks:
            failures.append({"id": key, "error": "no image or no mask with this id"})
            continue
        try:
            gray, truth = load_image(images[key]).gray, load_mask(masks[key])
        except InputImageError as exc:
            failures.append({"id": key, "error": str(exc)})
            continue
        if gray.shape != truth.shape:
            failures.append({"id": key, "error": f"mask {truth.shape} != image {gray.shape}"})
            continue
        slices[key] = (gray, truth)
    labels = dict(zip(table["id"], table["label"], strict=True)) if "label" in table else {}

    segmenter = load_segmenter(artifacts)
    reference, reference_path = resolve_reference(intensity_reference, artifacts)
    weights = {"resunet": segmenter.config["weights_sha256"]}
    if reference is not None:  # a resumed run must use the same correction
        weights["intensity_reference"] = reference.config.get("features_sha256")
    check_weights(old, weights, out_dir)
    kept = table[table["id"].isin(slices)]
    record: dict[str, Any] = {
        "settings": settings,
        "n_slices": len(slices),
        "n_patients": int(kept["patient_id"].nunique()) if "patient_id" in kept else None,
        "per_label": kept["label"].value_counts().sort_index().to_dict() if labels else {},
        "corruptions": {n: {"description": c.description, "levels": list(c.levels)}
                        for n, c in CORRUPTIONS.items() if any(n == t[0] for t in todo)},
        "operating_point": {"threshold": segmenter.default_threshold, "tta": segmenter.tta,
                            "postprocess": segmenter.postprocess},
        "area_tolerance": AREA_TOLERANCE,
        "weights_sha256": weights,
        "intensity_correction": correction_record(reference, reference_path),
        "failures": failures,
    }
    (out_dir / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    t0 = time.time()
    results = run_conditions(
        out_dir, todo, len(slices),
        lambda name, severity: segment_condition(segmenter, slices, labels, name, severity,
                                                 seed=seed, batch_size=batch_size,
                                                 reference=reference),
        dtype={"id": str, "label": str},
    )
    summarise(results.fillna({"label": ""})).to_csv(out_dir / "summary.csv", index=False,
                                                    float_format="%.4f")
    record["wall_time_s_this_session"] = round(time.time() - t0, 1)
    (out_dir / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the summary."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("images_dir", type=Path)
    p.add_argument("masks_dir", type=Path)
    p.add_argument("--ids-from", type=Path, required=True, help="split CSV (id, split[, label])")
    p.add_argument("--split", default="test")
    p.add_argument("--corruptions", nargs="+", default=None, choices=sorted(CORRUPTIONS),
                   help="default: all")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--artifacts", type=Path, default=Path(DEFAULT_ARTIFACTS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--intensity-reference", default="none",
                   help="none (default: slices as they are), auto (the reference beside "
                   "--artifacts) or a folder: map flagged slices as the pipeline does")
    args = p.parse_args(argv)
    try:
        record = run(args.images_dir, args.masks_dir, args.out, ids_from=args.ids_from,
                     split=args.split, corruptions=args.corruptions, artifacts=args.artifacts,
                     seed=args.seed, resume=args.resume, batch_size=args.batch_size,
                     intensity_reference=args.intensity_reference)
    except (FileExistsError, FileNotFoundError, ValueError, ArtifactError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for f in record["failures"]:
        print(f"unreadable, skipped: {f['id']}: {f['error']}", file=sys.stderr)
    print(pd.read_csv(args.out / "summary.csv").to_string(index=False))
    return 0 if record["n_slices"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
