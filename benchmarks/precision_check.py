"""Does bfloat16 inference change the classifiers' accuracy? Evaluate both precisions on a split.

Usage (once the trained artifacts are in place)::

    python benchmarks/precision_check.py \\
        --data-dir ../shared/datasets/brain-tumor-mri/Training \\
        --split-csv artifacts/splits/classification_split.csv --part test \\
        --json benchmarks/results/precision_check.json

Loads the ensemble twice from the same artifacts (``precision="float32"`` and
``--precision``, by default ``"bfloat16"`` for every base model, or a per-model
spec such as ``resnet50=bfloat16,vgg19=bfloat16``), runs every image of the split part through both
(same crops, same batches) and reports, per base model and for the ensemble:
accuracy in each precision, the difference, the share of images whose predicted
class is the same (agreement) and the largest probability difference. The
verdict is ``unchanged`` when no accuracy differs by more than ``--tolerance``
(default 0: identical accuracy); the exit code is 0 then, else 1. The report's
``recommended_precision`` is the per-model spec of the base models whose own
accuracy was unchanged; check that spec once more (``--precision SPEC``) to
see the ensemble with exactly that mix before a deployment uses it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ENSEMBLE = "ensemble"


def compare(
    artifacts: Path,
    data_dir: Path,
    split_csv: Path,
    part: str,
    *,
    limit: int | None = None,
    batch_size: int = 16,
    log: Any = print,
    precision: str = "bfloat16",
) -> dict[str, Any]:
    """Evaluate float32 and ``precision`` (a spec) on ``part`` of ``split_csv``; return the report.

    The report's ``*_bfloat16`` keys hold the results under ``precision``.
    """
    import numpy as np

    from ensemble.data import load_split
    from ensemble.inference import format_precision, load_ensemble, parse_precision
    from neurostack import CLASS_NAMES
    from neurostack.errors import InputImageError
    from neurostack.imaging import load_image
    from neurostack.preprocess import crop, find_brain_box

    rows = load_split(split_csv, part)
    if limit is not None:
        rows = rows.iloc[:limit]
    per_model = parse_precision(precision)
    ensembles = {
        key: load_ensemble(artifacts / "classification", strict=False, precision=p)
        for key, p in (("float32", "float32"), ("bfloat16", per_model))
    }
    names = [*ensembles["float32"].members, ENSEMBLE]
    probs: dict[str, dict[str, list[np.ndarray]]] = {p: {n: [] for n in names} for p in ensembles}
    labels: list[int] = []
    failures: list[dict[str, str]] = []
    seconds = dict.fromkeys(ensembles, 0.0)
    t_start = time.perf_counter()
    for start in range(0, len(rows), batch_size):
        crops = []
        for rec in rows.iloc[start : start + batch_size].itertuples(index=False):
            try:
                gray = load_image(data_dir / rec.path).gray
            except InputImageError as exc:
                failures.append({"path": rec.path, "error": str(exc)})
                continue
            crops.append(crop(gray, find_brain_box(gray)))
            labels.append(CLASS_NAMES.index(rec.label))
        if not crops:
            continue
        for p, ens in ensembles.items():
            t0 = time.perf_counter()
            pred = ens.predict_crops(crops)
            seconds[p] += time.perf_counter() - t0
            for n in names[:-1]:
                probs[p][n].append(pred.per_model[n])
            probs[p][ENSEMBLE].append(pred.ensemble)
        done = min(start + batch_size, len(rows))
        log(f"{done}/{len(rows)} images ({time.perf_counter() - t_start:.0f} s)")
    y = np.asarray(labels)
    models: dict[str, Any] = {}
    for n in names:
        a = np.concatenate(probs["float32"][n]) if len(y) else np.zeros((0, len(CLASS_NAMES)))
        b = np.concatenate(probs["bfloat16"][n]) if len(y) else np.zeros((0, len(CLASS_NAMES)))
        acc_a = float((a.argmax(1) == y).mean()) if len(y) else float("nan")
        acc_b = float((b.argmax(1) == y).mean()) if len(y) else float("nan")
        models[n] = {
            "precision": per_model.get(n, "float32 (meta-learner)"),
            "accuracy_float32": round(acc_a, 6),
            "accuracy_bfloat16": round(acc_b, 6),
            "accuracy_difference": round(acc_b - acc_a, 6),
            "correct_float32": int((a.argmax(1) == y).sum()),
            "correct_bfloat16": int((b.argmax(1) == y).sum()),
            "agreement": round(float((a.argmax(1) == b.argmax(1)).mean()), 6) if len(y) else None,
            "max_abs_probability_difference": round(float(np.abs(a - b).max()), 6)
            if len(y)
            else None,
        }
    return {
        "artifacts": str(artifacts),
        "split_csv": str(split_csv),
        "part": part,
        "data_dir": str(data_dir),
        "reduced_precision": format_precision(per_model),
        "n_images": int(len(y)),
        "failures": failures,
        "missing_artifacts": ensembles["float32"].missing,
        "method": ensembles["float32"].method,
        "models": models,
        "predict_seconds": {p: round(s, 2) for p, s in seconds.items()},
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/precision_check.py", description=__doc__.split("\n")[0]
    )
    p.add_argument("--artifacts", type=Path, default=REPO / "artifacts")
    p.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        help="dataset root the split CSV's paths are relative to",
    )
    p.add_argument(
        "--split-csv", type=Path, default=REPO / "artifacts" / "splits" / "classification_split.csv"
    )
    p.add_argument("--part", default="test", help="split part (default: test)")
    p.add_argument("--limit", type=int, default=None, help="first N images only (smoke runs)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="largest accepted |accuracy difference| (default 0: identical)",
    )
    p.add_argument(
        "--precision",
        default="bfloat16",
        help="the precision compared with float32: bfloat16 (every base model) or per model, "
        "e.g. resnet50=bfloat16,vgg19=bfloat16",
    )
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--record",
        action="store_true",
        help="when the verdict is 'unchanged', write ARTIFACTS/classification/precision.json "
        "so that the precision 'auto' (the default) uses this spec on CPUs with native bfloat16",
    )
    return p


def record_check(artifacts: Path, per_model: dict[str, str], report: dict[str, Any],
                 command: str) -> Path:
    """Write the record of a passed check next to the classifiers; return its path.

    Raises:
        ValueError: If the check did not pass or does not pin every model
            (:func:`ensemble.precision.make_record`).
    """
    from datetime import datetime, timezone

    from ensemble.precision import RECORD_FILE, current_weights_sha256, make_record

    folder = artifacts / "classification"
    record = make_record(
        per_model,
        report,
        current_weights_sha256(folder),
        recorded_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        command=command,
    )
    path = folder / RECORD_FILE
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(record, indent=2) + "\n")
    part.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    """Run the check; 0 when every accuracy is unchanged within the tolerance, else 1."""
    parser = _parser()
    args = parser.parse_args(argv)
    from ensemble.inference import format_precision, parse_precision

    try:
        per_model = parse_precision(args.precision)
    except ValueError as exc:
        parser.error(str(exc))
    report = compare(
        args.artifacts,
        args.data_dir,
        args.split_csv,
        args.part,
        limit=args.limit,
        batch_size=args.batch_size,
        log=lambda m: print(f"[precision] {m}", file=sys.stderr, flush=True),
        precision=args.precision,
    )
    worst = max((abs(m["accuracy_difference"]) for m in report["models"].values()), default=0.0)
    unchanged = report["n_images"] > 0 and worst <= args.tolerance
    kept = {
        n: p if abs(report["models"][n]["accuracy_difference"]) <= args.tolerance else "float32"
        for n, p in per_model.items()
        if n in report["models"]
    }
    report.update(
        tolerance=args.tolerance,
        largest_accuracy_difference=worst,
        verdict="unchanged" if unchanged else "changed",
        recommended_precision=format_precision(kept) if report["n_images"] else "float32",
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{report['n_images']} images of '{args.part}' ({len(report['failures'])} unreadable)")
    print(
        f"{'model':14s} {'acc fp32':>9s} {'acc bf16':>9s} {'diff':>8s} {'agree':>7s} "
        f"{'max|dp|':>8s}"
    )
    for n, m in report["models"].items() if report["n_images"] else ():
        print(
            f"{n:14s} {m['accuracy_float32']:9.4f} {m['accuracy_bfloat16']:9.4f} "
            f"{m['accuracy_difference']:+8.4f} {m['agreement']:7.4f} "
            f"{m['max_abs_probability_difference']:8.4f}"
        )
    print(f"verdict: {report['verdict']} (tolerance {args.tolerance})")
    print(f"recommended precision: {report['recommended_precision']}")
    if args.record:
        if not unchanged:
            print("not recorded: an accuracy changed; check the recommended spec with "
                  "--precision SPEC --record", file=sys.stderr)
            return 1
        command = "python benchmarks/precision_check.py " + " ".join(
            argv if argv is not None else sys.argv[1:])
        try:
            path = record_check(args.artifacts, per_model, report, command)
        except ValueError as exc:
            print(f"not recorded: {exc}", file=sys.stderr)
            return 1
        print(f"recorded: {path}")
    return 0 if unchanged else 1


if __name__ == "__main__":
    sys.exit(main())
