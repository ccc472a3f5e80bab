"""Write artifacts/MODEL_CARD.md from the artifact records (no number is typed in by hand).

Usage::

    python scripts/model_card.py [--artifacts artifacts]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ensemble.intensity import REFERENCE_FOLDER, describe_reference
from ensemble.quality import REFERENCE_FOLDER as QUALITY_FOLDER
from ensemble.quality import describe_reference as describe_quality
from ensemble.shortcut import describe
from neurostack import CLASS_NAMES

BACKBONES = ("xception", "inceptionv3", "resnet50", "vgg19")


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _fmt(v: float | None, digits: int = 4) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _hours(seconds: float | None) -> str:
    return "—" if not seconds else f"{seconds / 3600:.2f} h"


def _recalibration_note(rec: dict | None) -> str:
    """Recipe suffix for batch-norm statistics re-estimated after training."""
    if not rec:
        return ""
    note = (
        f"; then BN statistics re-estimated at {rec['input_size']}px on {rec['images']} "
        "training images (`python -m ensemble.recalibrate`)"
    )
    if "val_accuracy_before" in rec:
        note += f", val acc {rec['val_accuracy_before']:.4f} -> {rec['val_accuracy_after']:.4f}"
    return note


def _head_refit_note(rec: dict | None, record: dict | None = None) -> str:
    """Recipe suffix for a head refitted on frozen native-size features.

    Args:
        rec: The step's entry in the artifact config's ``training``.
        record: The step's own record file (wall time, accuracy under noise), if shipped.
    """
    if not rec:
        return ""
    record = record or {}
    seconds = record.get("seconds")
    took = f", {seconds / 60:.0f} min wall" if seconds else ""
    cfg = rec.get("config", {})
    noise = (
        f" plus {cfg['noise_copies']} Rician-noised copy of each (sigma drawn in "
        f"[{cfg['noise_sigma_min']:g}, {cfg['noise_sigma_max']:g}] grey levels)"
        if cfg.get("noise_copies")
        else ""
    )
    under = "".join(
        f"; val acc under noise {k.replace('sigma_', 'sigma ')} "
        f"{v['shipped_head']:.4f} -> {v['refitted_head']:.4f}"
        for k, v in record.get("val_accuracy_under_noise", {}).items()
    )
    layer = rec.get("from_layer", "flatten")
    what = (
        "the head refitted on frozen pooled features"
        if layer == "flatten"
        else f"the layers above `{layer}` ({rec['trainable_params'] / 1e6:.1f} M weights, "
        f"batch norm frozen) fine-tuned on frozen `{layer}` feature maps"
    )
    return (
        f"; then {what} of {rec['n_train']} training "
        f"images{noise} at the inference size, epoch {rec['best_epoch']} picked on "
        f"{rec['n_holdout']} held-out training images (`python -m ensemble.refit_head`), "
        f"val acc {rec['val_accuracy_shipped_head']:.4f} -> "
        f"{rec['val_accuracy_refitted_head']:.4f}{under}{took}"
    )


def _noise_augmentation_note(recipe: dict) -> str:
    """Recipe suffix for ``ensemble.train --aug-noise-sigma`` (empty when it was off)."""
    sigma = recipe.get("aug_noise_sigma") or 0
    if not sigma:
        return ""
    share = recipe.get("aug_noise_probability", 0.5)
    return f", Rician noise augmentation (sigma <= {sigma:g} grey levels, {share:.0%} of images)"


def classification_section(root: Path) -> list[str]:
    """Split, recipes, wall times and test results of the classifiers."""
    lines = ["## Classification", ""]
    split = _json(root / "splits" / "classification_split.json")
    if split:
        d = split["duplicates"]
        counts = pd.DataFrame(split["counts"]).T
        lines += [
            "**Data.** `brain-tumor-mri/Training` (Nickparvar, Kaggle 2021, CC0-1.0), "
            f"{d['n_images']} slices. Exact copies (same bytes): {d['exact_groups']} groups "
            f"holding {d['exact_images']} files. Exact + near-duplicates (64-bit pHash within "
            f"{d['max_hamming']} bits) grouped into {d['near_groups']} multi-image groups holding "
            f"{d['near_images']} files; {d['groups']} groups in all, "
            f"{d['cross_class_groups']} of them "
            "spanning two class folders. Groups are never split across train/val/test "
            "(`python -m ensemble.split`, seed "
            f"{split['seed']}).",
            "",
            counts.to_markdown(),
            "",
        ]
    rows = []
    for name in BACKBONES:
        cfg_dir = root / "classification" / name
        cfg = _json(cfg_dir / "config.json")
        if cfg is None:
            ckpt = root / "checkpoints" / name / "config.json"
            status = (
                "intermediate checkpoint in artifacts/checkpoints (not shipped)"
                if ckpt.is_file()
                else "not trained yet"
            )
            rows.append({"model": name, "status": status})
            continue
        tr = cfg.get("training", {})
        rec = tr.get("recipe", {})
        phases = "; ".join(
            f"{p['name']} {p['epochs']} ep @ {p['image_size']}px lr {p['lr']:g}"
            for p in rec.get("phases", [])
        )
        rows.append(
            {
                "model": name,
                "status": "finished"
                if tr.get("finished")
                else "training in progress (best so far)",
                "inference size": cfg["input_size"],
                "recipe": (
                    "continued from an earlier run; last run: " if tr.get("continued_from") else ""
                )
                + f"{phases}; batch {rec.get('batch_size')}, {rec.get('optimizer')}, "
                f"label smoothing {rec.get('label_smoothing')}, BN momentum "
                f"{rec.get('bn_momentum')}, {rec.get('mixed_precision')}"
                + (f", clipnorm {rec['clipnorm']}" if rec.get("clipnorm") else "")
                + _noise_augmentation_note(rec)
                + _recalibration_note(tr.get("batchnorm_recalibration"))
                + "".join(
                    _head_refit_note(tr.get(step), _json(cfg_dir / f"{step}.json"))
                    for step in (
                        "head_refit",
                        "tail_finetune",
                        "head_refit_noise",
                        "tail_finetune_noise",
                    )
                ),
                "epochs run (all runs)": tr.get("epochs_run_total", tr.get("epochs_run")),
                "best epoch (last run)": tr.get("best_epoch"),
                "best val acc (at best epoch's size)": _fmt(tr.get("best_val_accuracy")),
                "best epoch's size": tr.get("best_image_size"),
                "wall time (all runs)": _hours(tr.get("wall_time_s_total", tr.get("wall_time_s"))),
            }
        )
    lines += ["### Base models", "", pd.DataFrame(rows).fillna("").to_markdown(index=False), ""]
    res_rows = []
    for name in BACKBONES:
        rec = _json(root / "classification" / name / "resolution.json")
        for r in (rec or {}).get("rows", []):
            res_rows.append(
                {
                    "model": name,
                    "weights": r["weights"],
                    "trained at": rec["train_size"],
                    "evaluated at": r["eval_size"],
                    "val accuracy": _fmt(r["val_accuracy"]),
                }
            )
    if res_rows:
        lines += [
            "### Reduced training size vs native inference size",
            "",
            "Validation accuracy of the same weights at the training size and at the native "
            "size (`python -m ensemble.resolution`); the native-size phase exists because of "
            "this gap. Rows marked *BN re-estimated* score the same weights after their "
            "batch-norm statistics were recomputed at the native size on training images "
            "(`--recalibrate-images`).",
            "",
            pd.DataFrame(res_rows).to_markdown(index=False),
            "",
        ]
    meta = _json(root / "classification" / "meta" / "config.json")
    meta_m = _json(root / "classification" / "meta" / "metrics.json")
    if meta:
        lines += [
            f"**Meta-learner.** {meta['architecture']}, trained on held-out validation "
            f"probabilities ({meta['training'].get('n_rows')} rows), "
            f"{meta['training'].get('epochs')} epochs chosen by "
            f"{meta['training'].get('epochs_chosen_by')}; CV accuracy "
            f"{_fmt(meta_m.get('cv_accuracy') if meta_m else None)}. Its inputs, here and at "
            f"inference, are computed with test-time augmentation "
            f"`{meta.get('input_tta', 'none')}`"
            + (
                " (each base model's probabilities averaged over the slice and its mirror image)."
                if meta.get("input_tta") == "hflip"
                else "."
            ),
            "",
        ]
    else:
        lines += ["**Meta-learner.** Not fitted yet (it needs all four base models).", ""]
    ev_dir = root / "evaluation" / "classification" / "test"
    ev = _json(ev_dir / "metrics.json")
    title = "Test split"
    if ev is None:
        ev_dir = root / "evaluation" / "classification" / "val"
        ev = _json(ev_dir / "metrics.json")
        title = "Validation split (interim; the test split is evaluated once, at the end)"
    if ev:
        res = [
            {
                "model": m,
                "accuracy": _fmt(r["accuracy"]),
                "macro F1": _fmt(r["macro_f1"]),
                "macro AUC": _fmt(r["roc_auc"].get("macro")),
                "ECE": _fmt(r.get("ece")),
            }
            for m, r in ev["models"].items()
        ]
        lines += [
            f"### {title} ({ev['n_images']} slices, native input sizes)",
            "",
            f"Final answer: {ev.get('ensemble_method')}."
            + (
                " This record was made before the meta-learner was fitted on these same "
                "rows, so it shows the plain mean; the meta-learner's held-out estimate is its "
                "cross-validated accuracy above."
                if meta and "meta" not in ev.get("artifacts", {})
                else ""
            ),
            "",
            pd.DataFrame(res).to_markdown(index=False),
            "",
        ]
        table = ev_dir / "predictions.csv"
        preds = pd.read_csv(table) if table.is_file() else None
        lines += _ensemble_vs_best(ev["models"], preds)
    lines += _single_crop_lines(root)
    lines += _cascade_lines(root)
    lines += _review_lines(root)
    lines += _shift_and_shortcut_lines(root)
    return lines


def _shift_and_shortcut_lines(root: Path) -> list[str]:
    """Ensemble accuracy under acquisition shift and the intensity-shortcut probe, if recorded."""
    rob_dir = root / "evaluation" / "robustness" / "classification"
    rob = _json(rob_dir / "metrics.json")
    probe = _json(root / "evaluation" / "classification" / "intensity_shortcut.json")
    if not rob and not probe:  # the input check is described only next to these records
        return []
    lines = ["### Acquisition shift and an intensity shortcut", ""]
    if rob and (rob_dir / "summary.csv").is_file():
        summary = pd.read_csv(rob_dir / "summary.csv")
        ens = summary[summary["model"] == "ensemble"].set_index(["corruption", "severity"])
        clean = float(ens.loc[("none", 0), "accuracy"])
        rows = [
            f"| {info['description']} | {_fmt(float(ens.loc[(name, 1), 'accuracy']), 3)} | "
            f"{_fmt(float(ens.loc[(name, 2), 'accuracy']), 3)} |"
            for name, info in rob["corruptions"].items()
            if (name, 1) in ens.index and (name, 2) in ens.index
        ]
        lines += _titled_table(
            f"Ensemble accuracy on {rob['n_slices']} test slices ({rob['settings']['per_class']} "
            f"per class) when they are altered as another scanner or export might "
            f"(`python -m ensemble.robustness`); clean: {_fmt(clean, 3)}.",
            ["shift (severity 1 / 2)", "severity 1", "severity 2"],
            rows,
        )
    if probe:
        lines += [describe(probe), ""]
    reference = _json(root / "classification" / REFERENCE_FOLDER / "config.json")
    if reference and "n_reference" in reference:
        lines += ["**Input check.** Every analysed slice gets a warning when its grey levels "
                  "are unlike the training slices' (`python -m ensemble.intensity`). "
                  + describe_reference(reference) + _flag_errors_sentence(rob_dir), ""]
        lines += _correction_lines(root)
    quality = _json(root / "classification" / QUALITY_FOLDER / "config.json")
    if quality and "n_reference" in quality:
        lines += ["**Noise and detail check.** Every analysed slice gets a warning when it is "
                  "noisier, or holds less fine detail, than the training slices (`python -m "
                  "ensemble.quality`; the slice is analysed as given). "
                  + describe_quality(quality)
                  + _flag_errors_sentence(rob_dir, "quality_flags.json", "--check quality"), ""]
    return lines


def _correction_lines(root: Path) -> list[str]:
    """Tables of the decision with and without the mapping (``intensity_correction.py``)."""
    lines: list[str] = []
    for part in ("val", "test"):
        rec = _json(root / "evaluation" / "classification" / f"intensity_correction_{part}.json")
        if not rec or "accuracy_as_given" not in (rec.get("table") or [{}])[0]:
            continue
        rows = [
            f"| {r['corruption'].replace('_', ' ')} {r['severity']} | {r['n']} | "
            f"{_fmt(r['accuracy_as_given'], 3)} | {_fmt(r['accuracy'], 3)} | {r['flagged']} | "
            f"{_fmt(r['accuracy_flagged_as_given'], 3)} | "
            f"{_fmt(r['accuracy_flagged_decision'], 3)} |"
            for r in rec["table"]
        ]
        title = (
            "**Correction.** The pipeline analyses a flagged slice as a copy with its grey "
            "levels mapped to the training curve (classification, outline and measurements); "
            "the ensemble's answer on the slice as given is kept beside it. "
            if not lines else ""
        ) + (f"On {rec['part']} slices ({rec['per_class']} per class; "
             "`scripts/intensity_correction.py`):")
        lines += _titled_table(
            title,
            ["condition", "slices", "accuracy as given", "accuracy (pipeline)", "flagged",
             "flagged: as given", "flagged: pipeline"],
            rows,
        )
    return lines


def _flag_errors_sentence(rob_dir: Path, record: str = "intensity_flags.json",
                          option: str = "") -> str:
    """How many of the ensemble's shift errors a check flagged (``intensity_flags.py``)."""
    rec = _json(rob_dir / record)
    if not rec:
        return ""
    parts = []
    for r in rec["table"]:
        if r["errors"] and r["flagged_share"] >= 0.10:  # shifts the check responds to
            parts.append(
                f"{r['corruption'].replace('_', ' ')} {r['severity']}: {r['flagged_share']:.0%} "
                f"of slices and {r['errors_flagged_share']:.0%} of the ensemble's {r['errors']} "
                f"errors flagged, accuracy {_fmt(r['accuracy_flagged'], 2)} flagged vs "
                f"{_fmt(r['accuracy_unflagged'], 2)} not")
    clean = next((r for r in rec["table"] if r["corruption"] == "none"), None)
    script = f"scripts/intensity_flags.py {option}".strip()
    text = f" On the robustness run's test slices (`{script}`): "
    text += "; ".join(parts) if parts else "no shift had 10 % of its slices flagged"
    if clean:
        text += (f"; unchanged slices flagged: {round(clean['flagged_share'] * clean['n'])} "
                 f"of {clean['n']}")
    return text + "."


def _single_crop_lines(root: Path) -> list[str]:
    """Describe the single-crop (no mirror) mode when its meta-learner and test record exist."""
    meta = _json(root / "classification" / "meta_single_crop" / "config.json")
    ev = _json(root / "evaluation" / "classification" / "test_single_crop" / "metrics.json")
    if not meta or not ev or ev.get("tta") != "none":
        return []
    meta_m = _json(root / "classification" / "meta_single_crop" / "metrics.json") or {}
    res = [
        {"model": m, "accuracy": _fmt(r["accuracy"]), "macro F1": _fmt(r["macro_f1"]),
         "macro AUC": _fmt(r["roc_auc"].get("macro"))}
        for m, r in ev["models"].items()
    ]
    return [
        f"### Single-crop mode ({ev['n_images']} test slices, no mirror image)",
        "",
        "Opt-in for large batches (`python -m neurostack.batch ... --tta none` or "
        "`NEUROSTACK_TTA=none`): every base model sees the slice once, about half the "
        "classifier compute, and a meta-learner of its own "
        f"(`meta_single_crop`, {meta['training'].get('n_rows')} validation rows, "
        f"{meta['training'].get('epochs')} epochs, CV accuracy "
        f"{_fmt(meta_m.get('cv_accuracy'))}) forms the answer. Not the default; "
        "evaluated once on the test split:",
        "",
        pd.DataFrame(res).to_markdown(index=False),
        "",
    ]


def _cascade_lines(root: Path) -> list[str]:
    """Describe the confidence cascade when its record and its test evaluation exist."""
    rec = _json(root / "classification" / "cascade.json")
    ev = _json(root / "evaluation" / "classification" / "test_cascade" / "metrics.json")
    default = _json(root / "evaluation" / "classification" / "test" / "metrics.json") or {}
    if not rec or rec.get("threshold") is None or not ev or ev.get("tta") != "cascade":
        return []
    val = rec.get("validation") or {}
    oof = val.get("out_of_fold") or {}
    at = oof.get("cascade_at_threshold") or {}
    ref = (oof.get("default_mode") or {}).get("accuracy")
    ens = ev["models"]["ensemble"]
    text = (
        "Opt-in for large batches (`python -m neurostack.batch ... --tta cascade`, "
        "`NEUROSTACK_TTA=cascade`, or the Batch Analysis page): every slice goes once "
        "through the four base models and the single-crop meta-learner; a slice whose top "
        f"probability is below {rec['threshold']:.2f} is classified again in the default "
        "mode, whose answer is final. The threshold was chosen on the validation split from "
        "out-of-fold meta-learner outputs (`python -m ensemble.cascade fit`): "
        f"{at.get('escalated')} of {val.get('n_images')} validation slices escalated, "
        f"accuracy {_fmt(at.get('accuracy'))} against the default mode's {_fmt(ref)}. "
        f"On the test split it escalated {ev.get('n_escalated')} of {ev['n_images']} slices "
        f"and scored accuracy {_fmt(ens['accuracy'])} / macro-F1 {_fmt(ens['macro_f1'])}"
    )
    d = (default.get("models") or {}).get("ensemble")
    if d:
        text += (f" (default mode {_fmt(d['accuracy'])} / {_fmt(d['macro_f1'])}); not the "
                 "default")
    return [f"### Cascade mode ({ev['n_images']} test slices)", "", text + ".", ""]


def _review_lines(root: Path) -> list[str]:
    """Describe the review flag: each meta-learner's validation choice and the test reports."""
    rec = _json(root / "classification" / "review.json")
    if not rec or not isinstance(rec.get("meta_learners"), dict):
        return []

    def row(name: str, s: dict[str, Any]) -> str:
        t = s["threshold"]
        t = ", ".join(f"{v:g}" for v in t) if isinstance(t, list) else f"{t:g}"
        return (f"| {name} | {t} | {s['n']} | {s['n_flagged']} | {s['errors_flagged']} of "
                f"{s['n_errors']} | {_fmt(s['accuracy_flagged'], 3)} / "
                f"{_fmt(s['accuracy_unflagged'], 3)} | {_fmt(s['auroc'], 3)} |")

    rows = []
    for meta, entry in rec["meta_learners"].items():
        used = "used" if entry.get("passes_rule") else "failed the rule, not used"
        rows.append(row(f"`{meta}`, validation out of fold ({used})", entry["validation"]))
    labels = {"test": "default mode, test (reported)",
              "test_single_crop": "single-crop mode, test (reported)",
              "test_cascade": "cascade mode, test (reported)"}
    for run, s in (rec.get("evaluated") or {}).items():
        rows.append(row(labels.get(run, f"{run} (reported)"), s))
    return _titled_table(
        "**Review flag** (an answer whose top probability is below the threshold of the "
        "meta-learner that gave it is flagged for review; each threshold has the largest "
        "Youden's J for wrong answers on that meta-learner's out-of-fold validation outputs "
        "and is used only if there the AUROC is >= 0.80 and flagged answers are >= 0.20 less "
        "accurate; otherwise the fixed 0.6 applies; `python -m ensemble.review`). A warning "
        "only: the answers and the scores above are unchanged.",
        ["answers of", "threshold", "slices", "flagged", "errors caught",
         "accuracy flagged / unflagged", "AUROC"],
        rows,
    )


def _ensemble_vs_best(models: dict[str, Any], predictions: pd.DataFrame | None = None) -> list[str]:
    """Compare the ensemble with its best base model (issue 8's floor).

    With the evaluation's ``predictions`` table, also the slices only one of the two
    got right and the exact McNemar p-value of the difference.
    """
    if "ensemble" not in models or len(models) < 2:
        return []
    base = {m: r["accuracy"] for m, r in models.items() if m != "ensemble"}
    best = max(base, key=base.get)
    ens = models["ensemble"]["accuracy"]
    verdict = "at least as accurate as" if ens >= base[best] else "**less accurate than**"
    text = (
        f"The ensemble ({_fmt(ens)}) is {verdict} its best base model, {best} "
        f"({_fmt(base[best])}), on this split."
    )
    if predictions is not None:
        from ensemble.evaluate import probability_columns
        from ensemble.metrics import mcnemar_exact

        truth = predictions["label"].to_numpy()

        def right(model: str) -> Any:
            proba = predictions[probability_columns(model)].to_numpy()
            return np.asarray(CLASS_NAMES)[proba.argmax(axis=1)] == truth

        test = mcnemar_exact(right("ensemble"), right(best))
        text += (
            f" Only the ensemble was right on {test['only_a']} slices, only {best} on "
            f"{test['only_b']} (exact McNemar p = {test['p_value']:.2f})."
        )
    return [text, ""]


def _span(interval: object) -> str:
    """``[low, high]`` -> ``"low–high"`` (4 decimals); anything else -> ``""``."""
    if isinstance(interval, list | tuple) and len(interval) == 2:
        return f"{interval[0]:.4f}–{interval[1]:.4f}"
    return ""


def _interval_text(ev: dict) -> str:
    """Sentence on the patient-level interval of the mean Dice ("" when not recorded)."""
    if not ev.get("mean_dice_ci95"):
        return ""
    return (
        f" Mean Dice 95 % interval {_span(ev['mean_dice_ci95'])} over "
        f"{ev.get('n_patients')} patients; method: {ev.get('ci_method', 'bootstrap')}."
    )


def _segmentation_failures(per_image: pd.DataFrame, cutoff: float | None = None) -> str:
    """Describe the slices where the segmenter missed the tumour entirely.

    Args:
        per_image: ``per_image.csv`` of ``segmentation.evaluate``: columns ``dice``,
            ``pred_area_px`` and optionally ``label``; one row per slice.
        cutoff: A slice with Dice below this counts as a miss
            (default :data:`segmentation.cohorts.MISS_DICE`).

    Returns:
        One sentence: how many slices are misses (per class when labelled), how many
        of them have an empty prediction, and the mean Dice of the other slices;
        ``""`` for an empty table.

    Raises:
        ValueError: If ``dice`` or ``pred_area_px`` is missing.
    """
    from segmentation.cohorts import MISS_DICE

    cutoff = MISS_DICE if cutoff is None else cutoff
    missing = {"dice", "pred_area_px"} - set(per_image.columns)
    if missing:
        raise ValueError(f"per_image table lacks columns {sorted(missing)}")
    if per_image.empty:
        return ""
    miss = per_image["dice"] < cutoff
    n, k = len(per_image), int(miss.sum())
    if k == 0:
        return f"No slice has Dice below {cutoff}."
    empty = int((per_image.loc[miss, "pred_area_px"] == 0).sum())
    by_class = ""
    if "label" in per_image:
        counts = per_image.loc[miss, "label"].value_counts().sort_index()
        by_class = " (" + ", ".join(f"{c} {v}" for c, v in counts.items()) + ")"
    rest = per_image.loc[~miss, "dice"]
    rest_txt = f"; the other {len(rest)} average Dice {rest.mean():.4f}" if len(rest) else ""
    return (
        f"**Misses.** {k} of {n} slices ({k / n:.1%}) have Dice below {cutoff}{by_class}: "
        f"{empty} with no predicted tumour, {k - empty} with a predicted region that "
        "(almost) misses the tumour"
        f"{rest_txt}. Misses, not boundary accuracy, are what keeps the mean below the median."
    )


def _segmenter_name(cfg: dict[str, Any]) -> str:
    """``Res-UNet {...}`` or ``mean of N Res-UNets`` for an ensemble config."""
    members = cfg.get("members")
    if not members:
        return f"Res-UNet {cfg['architecture']}"
    return (f"mean of {len(members)} independently trained Res-UNets "
            "(probabilities averaged in one network call; `python -m segmentation.combine`)")


def _member_lines(members: list[dict[str, Any]]) -> list[str]:
    """Tabulate an ensemble's members in Markdown: architecture, recipe, epochs, wall time."""
    lines = ["| member | architecture | recipe | best epoch (val Dice) | epochs | wall time |",
             "|---|---|---|---:|---:|---:|"]
    for m in members:
        recipe = m.get("recipe") or {}
        aug = recipe.get("augmentation") or {}
        text = (f"lr {recipe.get('learning_rate')}, {recipe.get('max_epochs')} epochs max, "
                f"{recipe.get('mixed_precision', 'float32')}, seed {recipe.get('seed')}, "
                f"augmentation {json.dumps(aug)}"
                + (f", continued from {m['continued_from']}" if m.get("continued_from") else ""))
        lines.append(
            f"| {m.get('name')} | {json.dumps(m.get('architecture', {}))} | {text} | "
            f"{m.get('best_epoch')} ({_fmt(m.get('best_val_dice'))}) | "
            f"{m.get('epochs_completed_total', m.get('epochs_completed'))} | "
            f"{_hours(m.get('wall_time_s_total', m.get('wall_time_s')))} |")
    return lines + [""]


def segmentation_section(root: Path) -> list[str]:
    """Recipe, wall time and held-out results of the Res-UNet."""
    lines = ["## Segmentation", ""]
    cfg = _json(root / "segmentation" / "resunet" / "config.json")
    if cfg is None:
        return lines + ["Not trained yet.", ""]
    sp = cfg.get("split", {})
    lines += [
        "**Data.** figshare brain tumor dataset (Cheng et al., PLoS ONE 2015, CC BY 4.0), "
        "patient-level split: "
        + ", ".join(
            f"{p} {sp[p]['slices']} slices / {sp[p]['patients']} patients"
            for p in ("train", "val", "test")
            if p in sp
        )
        + ".",
        "",
        f"**Model.** {_segmenter_name(cfg)}, input {cfg['input_size']}px, "
        f"threshold {cfg['threshold']}, test-time augmentation "
        f"{cfg.get('test_time_augmentation', 'none')}, post-processing "
        f"{cfg.get('postprocess', 'none')}"
        + (
            f" (operating point chosen on {cfg['operating_point']['chosen_on']}, mean Dice "
            f"{cfg['operating_point']['mean_dice']})"
            if cfg.get("operating_point")
            else ""
        )
        + "."
        + ("" if cfg.get("members") else " Recipe: " + json.dumps(cfg.get("recipe", {}))),
        "",
    ]
    if cfg.get("members"):
        lines += _member_lines(cfg["members"])
    else:
        lines += [
            f"Epochs completed {cfg.get('epochs_completed_total', cfg.get('epochs_completed'))} "
            f"(all runs), best epoch of the last run {cfg.get('best_epoch')} "
            f"(val Dice {_fmt(cfg.get('best_val_dice'))}), run finished: "
            f"{cfg.get('run_finished')}, wall time "
            f"{_hours(cfg.get('wall_time_s_total', cfg.get('wall_time_s')))} (all runs).",
            "",
        ]
    ev = _json(root / "evaluation" / "segmentation" / "test" / "metrics.json")
    title = "Held-out test patients"
    if ev is None:
        ev = _json(root / "evaluation" / "segmentation" / "val" / "metrics.json")
        title = "Held-out validation patients (interim)"
    if ev:
        lines += [
            f"### {title} ({ev['n_images']} slices)",
            "",
            f"mean Dice {_fmt(ev.get('mean_dice'))}, median Dice {_fmt(ev.get('median_dice'))}, "
            f"mean IoU {_fmt(ev.get('mean_iou'))}.{_interval_text(ev)}",
            "",
        ]
        per = ev.get("per_class") or {}
        if per:
            table = pd.DataFrame(per).T
            for col in ("mean_dice_ci95", "mean_iou_ci95"):
                if col in table:
                    table[col] = [_span(v) for v in table[col]]
            lines += [table.to_markdown(), ""]
        split = "test" if title.startswith("Held-out test") else "val"
        table = root / "evaluation" / "segmentation" / split / "per_image.csv"
        if table.is_file():
            per_image = pd.read_csv(table, dtype={"id": str})
            failures = _segmentation_failures(per_image)
            lines += [failures, ""] if failures else []
            lines += _cohort_lines(per_image, root / "splits" / "segmentation_split.csv")
            lines += _contrast_lines(per_image, root / "splits" / "segmentation_split.csv")
    lines += _outline_confidence_lines(root)
    lines += _seg_shift_lines(root)
    return lines


def _outline_confidence_lines(root: Path) -> list[str]:
    """Describe the outline-confidence flag: validation choice and test report (the record)."""
    rec = _json(root / "segmentation" / "resunet" / "outline_confidence.json")
    if not rec or not rec.get("passes_rule"):
        return []
    rows = []
    for name, s in (("validation (chose the threshold)", rec.get("validation")),
                    ("test (reported)", (rec.get("evaluated") or {}).get("test"))):
        if s:
            rows.append(
                f"| {name} | {s['n']} ({s['n_empty']} without) | {s['n_flagged']} | "
                f"{_fmt(s['spearman'], 3)} | {_fmt(s['sensitivity'], 3)} | "
                f"{_fmt(s['specificity'], 3)} | {_fmt(s['mean_dice_flagged'], 3)} / "
                f"{_fmt(s['mean_dice_unflagged'], 3)} | {s['misses_flagged']} of {s['misses']} |"
            )
    return _titled_table(
        "**Outline confidence** (mean segmenter probability inside the outline; an outline "
        f"below {rec['flag_threshold']:.2f} is flagged as uncertain, the threshold with the "
        f"largest Youden's J for outlines with {rec.get('poor_outline', 'Dice < 0.5')} on the "
        "validation patients; `python -m segmentation.confidence`). A warning only: the "
        "outline and the scores above are unchanged.",
        ["patients", "outlines", "flagged", "Spearman with Dice", "sensitivity (poor)",
         "specificity", "mean Dice flagged / unflagged", "misses flagged"],
        rows,
    )


def _seg_shift_lines(root: Path) -> list[str]:
    """Mean Dice under shifts: network as given vs pipeline (``segmentation.robustness``)."""
    rob = root / "evaluation" / "robustness"
    try:
        given = pd.read_csv(rob / "segmentation" / "summary.csv")
        mapped = pd.read_csv(rob / "segmentation_corrected" / "summary.csv")
    except (OSError, ValueError):
        return []
    both = given.merge(mapped, on=["corruption", "severity"], suffixes=("", "_pipeline"))
    if both.empty or "intensity_corrected" not in both:
        return []
    rows = [
        f"| {r.corruption.replace('_', ' ')} {r.severity} | {r.n} | {r.mean_dice:.3f} | "
        f"{r.mean_dice_pipeline:.3f} | {100 * r.intensity_corrected:.0f} % |"
        for r in both.itertuples()
    ]
    return _titled_table(
        "**Under acquisition shift** (mean Dice on the held-out test slices altered as "
        "another scanner or export might; `python -m segmentation.robustness`, and with "
        "`--intensity-reference auto` as the pipeline segments them: a slice the input "
        "check flags is mapped to the training curve first):",
        ["shift", "slices", "network, slices as given", "pipeline", "mapped"],
        rows,
    )


def _contrast_lines(per_image: pd.DataFrame, split_csv: Path) -> list[str]:
    """Dice by tumour-contrast band, if the record has ``tumour_contrast_sd`` and a split."""
    from segmentation.cohorts import MISS_DICE, contrast_summary

    table = contrast_summary(per_image, split_csv)
    if table is None:
        return []
    rows = [
        f"| {r.band} | {r.slices} | {r.patients} | {r.mean_dice:.3f} | {r.median_dice:.3f} "
        f"| {100 * r.missed_share:.1f} % | {100 * r.alphanumeric_share:.0f} % |"
        for r in table.itertuples()
    ]
    return _titled_table(
        "**By tumour contrast** (mean tumour grey level minus the median of the other head "
        "pixels, in their standard deviations; `segmentation.cohorts.tumour_contrast_sd`):",
        ["contrast, SD", "slices", "patients", "mean Dice", "median",
         f"missed (Dice < {MISS_DICE})", "from alphanumeric-id patients"],
        rows,
    )


def _cohort_lines(per_image: pd.DataFrame, split_csv: Path) -> list[str]:
    """Dice by patient series (``scripts/segmentation_cohorts.py``), if the split is present."""
    from segmentation.cohorts import MISS_DICE, cohort_summary

    table = cohort_summary(per_image, split_csv)
    if table is None:
        return []
    rows = [
        f"| {r.cohort} | {r.slices} | {r.patients} | {r.mean_dice:.3f}"
        + (f" ({r.ci95})" if r.ci95 else "")
        + f" | {r.median_dice:.3f} | {100 * r.missed_share:.1f} % | {r.mean_dice_found:.3f} |"
        for r in table.itertuples()
    ]
    return _titled_table(
        "**By patient series** (figshare-seg has numeric patient ids and alphanumeric "
        "scanner-style ids, the latter all glioma; `scripts/segmentation_cohorts.py`):",
        ["series", "slices", "patients", "mean Dice (95 % interval)", "median",
         f"missed (Dice < {MISS_DICE})", "mean Dice of the rest"],
        rows,
    )


def _titled_table(title: str, header: list[str], rows: list[str]) -> list[str]:
    """Markdown lines: a title paragraph, then a table (first column left, others right)."""
    return [title, "", "| " + " | ".join(header) + " |",
            "|---|" + "---:|" * (len(header) - 1), *rows, ""]


STATIC_TAIL = """## Hardware

Everything was trained on 2 CPU cores (no GPU), sharing the cores with other work;
wall times above are as measured by the training commands. The runs up to
2026-12-02 used mixed bfloat16 on an AMD EPYC with AVX512_BF16; a run on a CPU
without native bfloat16 trains in float32 (`--mixed-precision auto`, the default),
since emulated bfloat16 measured about 5x slower there. The runs of 2026-12-05
(ResNet50 and Xception continued at their native sizes) used mixed bfloat16 on an
Intel Xeon with AMX (2 cores: float32 matmul 369 GFLOP/s, bfloat16 1535 GFLOP/s),
the two trainings side by side with one thread each, ResNet50's last epoch
resumed with two threads.

## Known limitations

- **No ImageNet pretraining**: the weights server is unreachable here, so all four
  backbones were trained from random initialisation on about 4000 slices.
- **2-D slices only**; no volume context, one slice at a time.
- **No pixel spacing in the training data**: sizes are in pixels unless the input
  carries a spacing (DICOM) or the user gives one.
- The classification data mixes three public sources (figshare, SARTAJ, Br35H);
  performance on other scanners and protocols is unknown. Their grey-level curves
  differ by class, and a change of display gamma (1.5 or 0.5) costs the ensemble
  much of its accuracy (see "Acquisition shift and an intensity shortcut"): use
  slices exported like the training data (8-bit, default window). The input check
  catches darker curves and has the networks analyse such a slice mapped back to the
  training curve, which recovers most of the loss (tables above); it does not
  catch brighter curves (those resemble one of the training sources).
NOISE_LIMITATION
- Training at a reduced size, inference at the native size: see the recipes.
- **Segmentation differs by patient series**: the outlines are much weaker on the
  alphanumeric-id glioma series of figshare-seg than on the other patients (see
  the table above); expect the same on scans that resemble that series.
- **Non-enhancing tumours are the weak point**: the segmenter sees one
  contrast-enhanced T1 slice, and tumours no brighter than the surrounding head
  (contrast at or below 0 SD in the table above; almost all from that series) are
  missed far more often. Without FLAIR or T2 there is little in the image to
  separate them from normal tissue.

## Intended use

Research and teaching: exploring how CNN ensembles and a Res-UNet behave on brain
MRI slices. Not a medical device; not for diagnosis or treatment decisions.
"""


def _noise_limitation(root: Path) -> str:
    """Write the limitation bullet on noisy slices: the robustness count and the fixes."""
    refitted = [
        name
        for name in BACKBONES
        if any(
            step
            in ((_json(root / "classification" / name / "config.json") or {}).get("training") or {})
            for step in ("head_refit_noise", "tail_finetune_noise")
        )
    ]
    text = (
        '- **Noisy slices lean toward "notumor"**: every training slice noisier than the\n'
        "  99th percentile is a notumor slice (one source is noisier), so the backbones\n"
        '  learnt to read noise as "no tumour".'
    )
    if refitted:
        text += (
            f" {', '.join(refitted)} {'was' if len(refitted) == 1 else 'were'} refitted on\n"
            "  frozen backbone features with Rician-noised copies of the training slices added\n"
            "  (see the recipes); the others were not."
        )
    per_slice = root / "evaluation" / "robustness" / "classification" / "per_slice.csv"
    if per_slice.is_file():
        df = pd.read_csv(per_slice)
        noisy = df[(df["corruption"] == "rician_noise") & (df["severity"] == 2)]
        tumour = noisy[noisy["label"] != "notumor"]
        if len(tumour) and "ensemble" in tumour:
            text += (
                "\n  Under simulated noise of sd 16 grey levels the ensemble called "
                f"{int((tumour['ensemble'] == 'notumor').sum())} of the {len(tumour)} tumour\n"
                "  slices of the robustness run notumor."
            )
    return text + (
        "\n  The noise and detail check warns on such slices (and on blurred or up-sampled\n"
        "  ones) but cannot correct them; do not rule out a tumour on a noisy slice from\n"
        "  the class alone."
    )


def main(argv: list[str] | None = None) -> int:
    """Compose the model card."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    a = p.parse_args(argv)
    lines = [
        "# NeuroStack model card",
        "",
        "Generated by `python scripts/model_card.py` from the records in `artifacts/`.",
        "",
    ]
    lines += classification_section(a.artifacts)
    lines += segmentation_section(a.artifacts)
    lines.append(STATIC_TAIL.replace("NOISE_LIMITATION", _noise_limitation(a.artifacts)))
    (a.artifacts / "MODEL_CARD.md").write_text("\n".join(lines))
    print(a.artifacts / "MODEL_CARD.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
