"""Would int8 LiteRT copies of the backbones be faster than float32 on this CPU?

Usage (needs the dataset and the trained artifacts)::

    python benchmarks/quantization.py \\
        --data-dir ../shared/datasets/brain-tumor-mri/Training \\
        --split-csv artifacts/splits/classification_split.csv \\
        --json benchmarks/results/avx2_host/2026-12-05_quantization.json

For every base model asked for (default: the three that run in LiteRT), the
float32 Keras model rebuilt from the verified artifact is converted three ways
(:data:`neurostack.litert.QUANTIZATIONS`): float32 as the runtime ships it,
``dynamic`` (int8 weights) and ``int8`` (int8 weights and activations, calibrated
on ``--calibration`` slices of the **train** part). Each copy is timed on the
batch the pipeline sends (a brain crop and its mirror; median of ``--repeats``
warm calls) and compared with the float32 copy on ``--agreement-limit`` slices
of the **val** part: share of equal predicted classes and the largest
probability difference. The test part is never read: a recipe that is not
faster is not a candidate, and one that is would still need
``precision_check``-style test accuracy before a deployment used it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_MODELS = ("xception", "inceptionv3", "resnet50")


def _crops(data_dir: Path, paths: list[str]) -> tuple[list[Any], list[dict[str, str]]]:
    from neurostack.errors import InputImageError
    from neurostack.imaging import load_image
    from neurostack.preprocess import crop, find_brain_box

    crops, failures = [], []
    for rel in paths:
        try:
            gray = load_image(data_dir / rel).gray
        except InputImageError as exc:
            failures.append({"path": rel, "error": str(exc)})
            continue
        crops.append(crop(gray, find_brain_box(gray)))
    return crops, failures


def _median_call_s(runner: Any, batch: Any, repeats: int) -> float:
    import numpy as np

    runner(batch)  # warm-up: allocation and XNNPACK packing
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runner(batch)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def compare_model(
    folder: Path,
    calibration: list[Any],
    agreement: list[Any],
    work_dir: Path,
    *,
    repeats: int = 7,
    log: Any = print,
) -> dict[str, Any]:
    """Convert one base model every way, time each copy and compare it with float32.

    Args:
        folder: The model's artifact folder.
        calibration: Greyscale brain crops (train part) for the ``int8`` ranges.
        agreement: Greyscale brain crops (val part); the first one is also the
            timed slice (with its mirror, as the pipeline sends it).
        work_dir: Where the ``.tflite`` copies are written.
        repeats: Timed calls per copy (median reported).
        log: Progress printer.

    Returns:
        ``{"model", "input_size", "recipes": {recipe: {file_mb, conversion_s,
        batch2_latency_s, speedup_vs_float32, agreement, max_abs_prob_diff}}}``;
        agreement and probability differences are against the float32 copy.
    """
    import numpy as np

    from ensemble.inference import load_classifier
    from neurostack.litert import QUANTIZATIONS, LiteRTRunner, convert

    clf = load_classifier(folder)
    x_cal = clf.prepare(calibration)
    x_agree = clf.prepare(agreement)
    pair = np.concatenate([x_agree[:1], x_agree[:1, :, ::-1]])

    def representative():
        for i in range(len(x_cal)):
            yield [x_cal[i : i + 1]]

    out: dict[str, Any] = {"model": clf.name, "input_size": clf.input_size, "recipes": {}}
    reference = None
    for recipe in QUANTIZATIONS:
        path = work_dir / f"{clf.name}-{recipe}.tflite"
        t0 = time.perf_counter()
        convert(clf.model, path, quantization=recipe,
                representative=representative if recipe == "int8" else None)
        conversion_s = time.perf_counter() - t0
        runner = LiteRTRunner(path)
        latency = _median_call_s(runner, pair, repeats)
        probs = np.concatenate([runner(x_agree[i : i + 2]) for i in range(0, len(x_agree), 2)])
        if reference is None:
            reference = (probs, latency)
        row = {
            "file_mb": round(path.stat().st_size / 1e6, 2),
            "conversion_s": round(conversion_s, 1),
            "batch2_latency_s": round(latency, 4),
            "speedup_vs_float32": round(reference[1] / latency, 3),
            "agreement": round(float((probs.argmax(1) == reference[0].argmax(1)).mean()), 4),
            "max_abs_prob_diff": round(float(np.abs(probs - reference[0]).max()), 5),
        }
        out["recipes"][recipe] = row
        log(f"{clf.name:12s} {recipe:8s} {row['batch2_latency_s']:.3f} s "
            f"(x{row['speedup_vs_float32']:.2f}), agreement {row['agreement']:.3f}, "
            f"max |dp| {row['max_abs_prob_diff']:.4f}, {row['file_mb']} MB")
    return out


def run(
    artifacts: Path,
    data_dir: Path,
    split_csv: Path,
    models: list[str],
    *,
    calibration: int = 64,
    agreement_limit: int = 128,
    repeats: int = 7,
    work_dir: Path | None = None,
    seed: int = 0,
    log: Any = print,
) -> dict[str, Any]:
    """Compare the recipes for each of ``models``; return the report (module docstring)."""
    from benchmarks.system import conditions, environment
    from ensemble.data import load_split

    train = load_split(split_csv, "train").sample(frac=1.0, random_state=seed)
    val = load_split(split_csv, "val").sample(frac=1.0, random_state=seed)
    cal_crops, cal_fail = _crops(data_dir, list(train.path[:calibration]))
    agree_crops, agree_fail = _crops(data_dir, list(val.path[:agreement_limit]))
    if not cal_crops or not agree_crops:
        raise ValueError(
            f"no readable slices: {len(cal_crops)} calibration, {len(agree_crops)} agreement"
        )
    report: dict[str, Any] = {
        "environment": environment(),
        "conditions_before": conditions(),
        "calibration_slices": len(cal_crops),
        "agreement_slices": len(agree_crops),
        "failures": cal_fail + agree_fail,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="neurostack-quant-") as tmp:
        for name in models:
            report["models"][name] = compare_model(
                artifacts / "classification" / name, cal_crops, agree_crops,
                Path(work_dir or tmp), repeats=repeats, log=log,
            )
    report["conditions_after"] = conditions()
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the command line, run the comparison and write the JSON report."""
    from ensemble.registry import BACKBONES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path, default=REPO / "artifacts")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--split-csv", type=Path,
                   default=REPO / "artifacts" / "splits" / "classification_split.csv")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated base models")
    p.add_argument("--calibration", type=int, default=64, help="train slices for int8 ranges")
    p.add_argument("--agreement-limit", type=int, default=128, help="val slices compared")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--work-dir", type=Path, default=None, help="keep the .tflite copies here")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in BACKBONES]
    if unknown or not models:
        p.error(f"--models: allowed {sorted(BACKBONES)}; received {models}")
    for name, value in (("--calibration", args.calibration),
                        ("--agreement-limit", args.agreement_limit), ("--repeats", args.repeats)):
        if value < 1:
            p.error(f"{name} must be >= 1; received {value}")
    report = run(args.artifacts, args.data_dir, args.split_csv, models,
                 calibration=args.calibration, agreement_limit=args.agreement_limit,
                 repeats=args.repeats, work_dir=args.work_dir)
    report["command"] = " ".join(["python", "benchmarks/quantization.py", *(argv or sys.argv[1:])])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
