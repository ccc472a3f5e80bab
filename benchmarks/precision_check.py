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
(default 0: identical accuracy); the exit code is 0 then, else 1 (with
``--record``: 0 when a spec was recorded). The report's
``recommended_precision`` is the per-model spec of the base models whose own
accuracy was unchanged. When it differs from ``--precision`` the same run also
scores the ensemble with exactly that mix (``recommended_check``): every base
model's probabilities do not depend on the others' precision, so the meta-learner
is applied to the float32 outputs of the models left in float32 and the
reduced-precision outputs of the others, with no second pass over the images.
``--record`` then records that spec when its ensemble is unchanged too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

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
    tolerance: float = 0.0,
    tta: str | None = None,
) -> dict[str, Any]:
    """Evaluate float32 and ``precision`` (a spec) on ``part`` of ``split_csv``; return the report.

    The report's ``*_bfloat16`` keys hold the results under ``precision``;
    ``recommended_precision`` keeps bfloat16 for the base models whose accuracy
    moved by at most ``tolerance``, and ``recommended_check`` (when that spec
    differs from ``precision`` and still uses bfloat16) scores its ensemble.
    ``tta`` is passed to :func:`ensemble.inference.load_ensemble` (``None``: the
    default meta-learner's mode); the report's ``tta`` and ``meta_learner`` say
    which mode and meta-learner folder were checked.
    """

    from ensemble.data import load_split
    from ensemble.inference import format_precision, load_ensemble, parse_precision
    from ensemble.precision import AUTO
    from neurostack import CLASS_NAMES
    from neurostack.errors import InputImageError
    from neurostack.imaging import load_image
    from neurostack.preprocess import crop, find_brain_box

    rows = load_split(split_csv, part)
    if limit is not None:
        rows = rows.iloc[:limit]
    if precision == AUTO:  # as the pipeline runs: each mode's recorded precision
        reduced = load_ensemble(artifacts / "classification", strict=False, precision=AUTO,
                                tta=tta)
        per_model = {n: c.precision for n, c in reduced.members.items()}
    else:
        per_model = parse_precision(precision)
        reduced = load_ensemble(artifacts / "classification", strict=False,
                                precision=per_model, tta=tta)
    ensembles = {
        "float32": load_ensemble(artifacts / "classification", strict=False,
                                 precision="float32", tta=tta),
        "bfloat16": reduced,
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
    empty = np.zeros((0, len(CLASS_NAMES)), dtype=np.float32)
    out = {
        p: {n: np.concatenate(v) if len(y) else empty for n, v in by_name.items()}
        for p, by_name in probs.items()
    }
    models = {
        n: _scores(out["float32"][n], out["bfloat16"][n], y, per_model.get(n, META_PRECISION))
        for n in names
    }
    kept = {
        n: p if abs(models[n]["accuracy_difference"]) <= tolerance else "float32"
        for n, p in per_model.items()
        if n in models
    }
    recommended_check = None
    meta = ensembles["float32"].meta
    cascade = ensembles["float32"].tta == "cascade"  # its rows mix two meta-learners
    if (len(y) and kept != per_model and "bfloat16" in kept.values() and meta is not None
            and not cascade):
        recommended_check = mixed_check(out, y, kept, meta.inputs, meta.predict)
    return {
        "artifacts": str(artifacts),
        "split_csv": str(split_csv),
        "part": part,
        "data_dir": str(data_dir),
        "reduced_precision": format_precision(per_model),
        "reduced_precision_note": reduced.precision_note,
        "n_images": int(len(y)),
        "failures": failures,
        "missing_artifacts": ensembles["float32"].missing,
        "method": ensembles["float32"].method,
        "tta": ensembles["float32"].tta,
        "meta_learner": meta.folder.name if meta is not None else None,
        "meta_input_tta": meta.config.get("input_tta", "none") if meta is not None else None,
        "models": models,
        "predict_seconds": {p: round(s, 2) for p, s in seconds.items()},
        "recommended_precision": format_precision(kept) if len(y) else "float32",
        "recommended_check": recommended_check,
    }


META_PRECISION = "float32 (meta-learner)"


def _key(precision: str) -> str:
    """Key of ``compare``'s probabilities for a per-model precision."""
    return "float32" if precision == "float32" else "bfloat16"


def mixed_check(
    probs: dict[str, dict[str, Any]],
    y: Any,
    kept: dict[str, str],
    meta_inputs: list[str],
    meta_predict: Any,
) -> dict[str, Any]:
    """Score the ensemble of a per-model precision mix from already computed probabilities.

    Args:
        probs: ``{"float32" | "bfloat16": {model: (N, 4)}}``, the base models'
            probabilities in each precision and the float32 ensemble's (key
            :data:`ENSEMBLE` under ``"float32"``).
        y: ``(N,)`` true class indices.
        kept: ``{backbone: "float32" | "bfloat16"}``, the mix to score.
        meta_inputs: Base models in the meta-learner's input order.
        meta_predict: ``(N, 4 * len(meta_inputs)) -> (N, 4)``, the meta-learner.

    Returns:
        ``{"precision", "method", "models"}``: per base model the scores of its
        precision in the mix (identical float32 scores where kept float32), and
        the ensemble's float32 scores against the mix.
    """
    from ensemble.inference import format_precision

    mixed = np.concatenate([probs[_key(kept[n])][n] for n in meta_inputs], axis=1)
    models = {n: _scores(probs["float32"][n], probs[_key(p)][n], y, p) for n, p in kept.items()}
    models[ENSEMBLE] = _scores(
        probs["float32"][ENSEMBLE], np.asarray(meta_predict(mixed)), y, META_PRECISION
    )
    return {
        "precision": format_precision(kept),
        "method": "meta-learner applied to the float32 outputs of the models kept in float32 "
        "and the reduced-precision outputs of the others, from the same run",
        "models": models,
    }


def _scores(a: Any, b: Any, y: Any, precision: str) -> dict[str, Any]:
    """Accuracy of float32 probabilities ``a`` and reduced ones ``b`` ``(N, 4)`` against ``y``."""
    if not len(y):
        nan = float("nan")
        return {"precision": precision, "accuracy_float32": nan, "accuracy_bfloat16": nan,
                "accuracy_difference": nan, "correct_float32": 0, "correct_bfloat16": 0,
                "agreement": None, "max_abs_probability_difference": None}
    pred_a, pred_b = a.argmax(1), b.argmax(1)
    acc_a, acc_b = float((pred_a == y).mean()), float((pred_b == y).mean())
    return {
        "precision": precision,
        "accuracy_float32": round(acc_a, 6),
        "accuracy_bfloat16": round(acc_b, 6),
        "accuracy_difference": round(acc_b - acc_a, 6),
        "correct_float32": int((pred_a == y).sum()),
        "correct_bfloat16": int((pred_b == y).sum()),
        "agreement": round(float((pred_a == pred_b).mean()), 6),
        "max_abs_probability_difference": round(float(np.abs(a - b).max()), 6),
    }


def _verdict(report: dict[str, Any], tolerance: float) -> bool:
    """Set ``verdict`` and ``largest_accuracy_difference`` of ``report``; True if unchanged."""
    diffs = [abs(m["accuracy_difference"]) for m in report["models"].values()]
    worst = max(diffs, default=0.0)
    unchanged = bool(diffs) and report.get("n_images", 0) > 0 and worst <= tolerance
    report.update(largest_accuracy_difference=worst,
                  verdict="unchanged" if unchanged else "changed")
    return unchanged


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
        "e.g. resnet50=bfloat16,vgg19=bfloat16, or auto (as the pipeline runs: each "
        "mode's recorded precision on a CPU with native bfloat16)",
    )
    p.add_argument(
        "--tta",
        choices=["none", "hflip", "cascade"],
        default=None,
        help="classifiers' test-time augmentation (default: the meta-learner's); --record "
        "then writes that mode's record (precision_single_crop.json for none, when the "
        "default mode is hflip), which pins that mode's meta-learner. cascade (single crop "
        "first, the default mode when unsure) runs each pass in its own mode's record, so "
        "it is checked but never recorded",
    )
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--record",
        action="store_true",
        help="when the verdict is 'unchanged', write ARTIFACTS/classification/precision.json "
        "so that the precision 'auto' (the default) uses this spec on CPUs with native bfloat16",
    )
    return p


def _repo_relative(path: str | Path) -> str:
    """``path`` relative to the repository when it lies inside it (records travel with it)."""
    try:
        return Path(path).resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def record_check(artifacts: Path, per_model: dict[str, str], report: dict[str, Any],
                 command: str, tta: str | None = None) -> Path:
    """Write the record of a passed check next to the classifiers; return its path.

    ``tta`` picks the mode's record file and meta-learner
    (:func:`ensemble.precision.record_path`; ``None``: the default mode).

    Raises:
        ValueError: If the check did not pass or does not pin every model
            (:func:`ensemble.precision.make_record`).
    """
    from datetime import datetime, timezone

    from ensemble.precision import current_weights_sha256, make_record, record_path

    folder = artifacts / "classification"
    record = make_record(
        per_model,
        {**report, "split_csv": _repo_relative(report.get("split_csv", ""))},
        current_weights_sha256(folder, tta),
        recorded_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        command=command,
    )
    path = record_path(folder, tta)
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(record, indent=2) + "\n")
    part.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    """Run the check; 0 when every accuracy is unchanged within the tolerance, else 1."""
    parser = _parser()
    args = parser.parse_args(argv)
    from ensemble.inference import format_precision, parse_precision

    if args.precision == "auto" and args.record:
        parser.error("--record needs an explicit --precision spec, not auto")
    try:
        per_model = parse_precision(args.precision) if args.precision != "auto" else {}
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
        tolerance=args.tolerance,
        tta=args.tta,
    )
    unchanged = _verdict(report, args.tolerance)
    report.update(tolerance=args.tolerance)
    rec = report["recommended_check"]
    if rec is not None:
        rec.update(
            n_images=report["n_images"], split_csv=report["split_csv"], part=report["part"],
            tolerance=args.tolerance, tta=report.get("tta"),
            meta_learner=report.get("meta_learner"),
        )
        rec_unchanged = _verdict(rec, args.tolerance)
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
    if rec is not None:
        m = rec["models"][ENSEMBLE]
        print(
            f"ensemble with the recommended precision: {m['accuracy_float32']:.4f} -> "
            f"{m['accuracy_bfloat16']:.4f} (agreement {m['agreement']:.4f}); "
            f"verdict {rec['verdict']}"
        )
    if args.record and args.tta == "cascade":
        print("not recorded: the cascade runs each pass in its own mode's precision record; "
              "record those modes (--tta none, --tta hflip)", file=sys.stderr)
        return 1 if not unchanged else 0
    if args.record and report.get("meta_input_tta") not in (None, report.get("tta")):
        print(f"not recorded: the meta-learner {report['meta_learner']} was fitted on "
              f"{report['meta_input_tta']!r} inputs, not on the {report['tta']!r} inputs checked "
              "(fit one for this mode with ensemble.stack first)", file=sys.stderr)
        return 1
    if args.record:
        to_record, checked = per_model, report
        if not unchanged and rec is not None and rec_unchanged:
            to_record, checked = parse_precision(rec["precision"]), rec
        elif not unchanged:
            print("not recorded: an accuracy changed and no bfloat16 mix left it unchanged",
                  file=sys.stderr)
            return 1
        command = "python benchmarks/precision_check.py " + " ".join(
            argv if argv is not None else sys.argv[1:])
        try:
            path = record_check(args.artifacts, to_record, checked, command, args.tta)
        except ValueError as exc:
            print(f"not recorded: {exc}", file=sys.stderr)
            return 1
        print(f"recorded: {path} ({format_precision(to_record)})")
        return 0  # with --record: 0 when a spec was recorded
    return 0 if unchanged else 1


if __name__ == "__main__":
    sys.exit(main())
