"""Model card helpers: recipe notes written from the artifacts' own records."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

_SPEC = importlib.util.spec_from_file_location(
    "model_card", Path(__file__).resolve().parents[2] / "scripts" / "model_card.py"
)
model_card = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(model_card)


def test_head_refit_note_states_protocol_and_validation_change() -> None:
    rec = {
        "n_train": 3386,
        "n_holdout": 612,
        "best_epoch": 33,
        "val_accuracy_shipped_head": 0.8613,
        "val_accuracy_refitted_head": 0.8904,
    }
    note = model_card._head_refit_note(rec)
    assert "3386 training images" in note and "612 held-out" in note
    assert "epoch 33" in note and note.endswith("val acc 0.8613 -> 0.8904")
    assert model_card._head_refit_note(rec, {"seconds": 1587.9}).endswith("0.8904, 26 min wall")
    assert model_card._head_refit_note(None) == "" == model_card._head_refit_note({})
    tail = rec | {"from_layer": "conv4_block6_out", "trainable_params": 15_000_000}
    note = model_card._head_refit_note(tail)
    assert "layers above `conv4_block6_out` (15.0 M weights, batch norm frozen)" in note
    assert "frozen `conv4_block6_out` feature maps of 3386 training images" in note


def test_head_refit_note_states_noise_copies_and_accuracy_under_noise() -> None:
    rec = {
        "n_train": 6772,
        "n_holdout": 1224,
        "best_epoch": 20,
        "val_accuracy_shipped_head": 0.8974,
        "val_accuracy_refitted_head": 0.9138,
        "config": {"noise_copies": 1, "noise_sigma_min": 2.0, "noise_sigma_max": 20.0},
    }
    record = {
        "seconds": 1135.4,
        "val_accuracy_under_noise": {
            "sigma_8": {"shipped_head": 0.542, "refitted_head": 0.8462},
            "sigma_16": {"shipped_head": 0.3368, "refitted_head": 0.7436},
        },
    }
    note = model_card._head_refit_note(rec, record)
    assert "6772 training images plus 1 Rician-noised copy of each (sigma drawn in [2, 20]" in note
    assert "val acc 0.8974 -> 0.9138; val acc under noise sigma 8 0.5420 -> 0.8462" in note
    assert note.endswith("sigma 16 0.3368 -> 0.7436, 19 min wall")


def test_recalibration_note_with_and_without_scores() -> None:
    assert model_card._recalibration_note(None) == ""
    note = model_card._recalibration_note({"input_size": 299, "images": 1024})
    assert "299px on 1024 training images" in note and "val acc" not in note
    scored = {
        "input_size": 299,
        "images": 1024,
        "val_accuracy_before": 0.8,
        "val_accuracy_after": 0.83,
    }
    assert model_card._recalibration_note(scored).endswith("val acc 0.8000 -> 0.8300")


def test_ensemble_vs_best_counts_the_discordant_slices() -> None:
    import pandas as pd

    from neurostack import CLASS_NAMES

    def onehot(names: list[str], prefix: str) -> dict[str, list[float]]:
        return {f"{prefix}_{c}": [float(n == c) for n in names] for c in CLASS_NAMES}

    labels = ["glioma"] * 8
    ens = ["glioma"] * 6 + ["notumor"] * 2  # right on 0-5
    best = ["pituitary"] * 6 + ["glioma"] * 2  # right on 6-7
    table = pd.DataFrame({"label": labels, **onehot(ens, "ensemble"), **onehot(best, "resnet50")})
    models = {"resnet50": {"accuracy": 0.25}, "ensemble": {"accuracy": 0.75}}
    (text, blank) = model_card._ensemble_vs_best(models, table)
    assert blank == ""
    assert "is at least as accurate as its best base model, resnet50 (0.2500)" in text
    # 6 against 2 discordant slices: p = 2 * (1 + 8 + 28) / 2**8 = 0.289
    assert "Only the ensemble was right on 6 slices, only resnet50 on 2" in text
    assert "exact McNemar p = 0.29" in text
    assert model_card._ensemble_vs_best(models) == [text.split(" Only")[0], ""]


def test_segmentation_failures_known_answer():
    table = pd.DataFrame(
        {
            "label": ["glioma", "glioma", "meningioma", "pituitary", "glioma"],
            "dice": [0.0, 0.02, 0.9, 0.8, 0.7],
            "pred_area_px": [0, 150, 300, 200, 100],
        }
    )
    text = model_card._segmentation_failures(table)
    assert "2 of 5 slices (40.0%) have Dice below 0.05 (glioma 2)" in text
    assert (
        "1 with no predicted tumour, 1 with a predicted region that (almost) misses the tumour"
        in text
    )
    assert "the other 3 average Dice 0.8000" in text
    assert model_card._segmentation_failures(table.iloc[2:]) == "No slice has Dice below 0.05."
    assert model_card._segmentation_failures(table.iloc[:0]) == ""
    with pytest.raises(ValueError, match="pred_area_px"):
        model_card._segmentation_failures(table.drop(columns="pred_area_px"))


def test_interval_text_and_span_known_answers():
    ev = {"mean_dice_ci95": [0.67401, 0.79559], "n_patients": 23, "ci_method": "bootstrap"}
    assert model_card._interval_text(ev) == (
        " Mean Dice 95 % interval 0.6740–0.7956 over 23 patients; method: bootstrap."
    )
    assert model_card._interval_text({"mean_dice": 0.7}) == ""
    assert model_card._span([0.5, 0.75]) == "0.5000–0.7500"
    assert model_card._span(float("nan")) == ""


def test_cohort_lines_table_and_silent_without_split(tmp_path):
    per_image = pd.DataFrame(
        {"id": ["1", "2", "3", "4"], "label": ["glioma"] * 4, "dice": [0.2, 0.4, 0.8, 0.9]}
    )
    split = pd.DataFrame({"id": ["1", "2", "3", "4"], "patient_id": ["MRA", "MRB", "11", "12"]})
    split.to_csv(tmp_path / "split.csv", index=False)
    lines = model_card._cohort_lines(per_image, tmp_path / "split.csv")
    text = "\n".join(lines)
    assert "| numeric id | 2 | 2 | 0.850 (" in text
    assert "| alphanumeric id | 2 | 2 | 0.300 (" in text
    assert "| 0.300 | 0.0 % | 0.300 |" in text  # median, missed share, mean of the rest
    assert "| 0.850 | 0.0 % | 0.850 |" in text
    assert "MRA" not in text and "| 11 |" not in text
    assert model_card._cohort_lines(per_image, tmp_path / "missing.csv") == []


def test_contrast_lines_known_rows_and_silent_for_old_records(tmp_path):
    per_image = pd.DataFrame({"id": ["1", "2", "3", "4"], "label": ["glioma"] * 4,
                              "dice": [0.02, 0.4, 0.8, 0.9]})
    split = pd.DataFrame({"id": ["1", "2", "3", "4"], "patient_id": ["MRA", "MRB", "11", "12"]})
    split.to_csv(tmp_path / "split.csv", index=False)
    assert model_card._contrast_lines(per_image, tmp_path / "split.csv") == []  # no column
    with_contrast = per_image.assign(tumour_contrast_sd=[-0.3, -0.1, 0.7, 3.0])
    text = "\n".join(model_card._contrast_lines(with_contrast, tmp_path / "split.csv"))
    assert "| <= 0 | 2 | 2 | 0.210 | 0.210 | 50.0 % | 100 % |" in text
    assert "| 0.5-1 | 1 | 1 | 0.800 | 0.800 | 0.0 % | 0 % |" in text
    assert "| > 1 | 1 | 1 | 0.900 |" in text
    assert "MRA" not in text and "| 11 |" not in text


def test_segmentation_section_tabulates_ensemble_members(tmp_path):
    import json

    folder = tmp_path / "segmentation" / "resunet"
    folder.mkdir(parents=True)
    member = {"architecture": {"base_filters": 16}, "best_epoch": 25, "best_val_dice": 0.6801,
              "epochs_completed": 28, "wall_time_s": 9000.0,
              "recipe": {"learning_rate": 0.001, "max_epochs": 28, "seed": 42,
                         "mixed_precision": "auto", "augmentation": {"gamma": 0.3}}}
    config = {"architecture": {"members": [{}, {}]}, "input_size": 192, "threshold": 0.15,
              "members": [{"name": "shipped", **member, "continued_from": "artifacts/x"},
                          {"name": "scratch", **member}]}
    (folder / "config.json").write_text(json.dumps(config))
    text = "\n".join(model_card.segmentation_section(tmp_path))
    assert "mean of 2 independently trained Res-UNets" in text
    assert "| shipped |" in text and "| scratch |" in text
    assert "continued from artifacts/x" in text and text.count("continued from") == 1
    assert "25 (0.6801)" in text and "2.50 h" in text
    assert "Recipe:" not in text  # the recipes are per member


def test_single_crop_section_only_with_its_meta_learner_and_test_record(tmp_path: Path) -> None:
    assert model_card._single_crop_lines(tmp_path) == []
    meta = tmp_path / "classification" / "meta_single_crop"
    meta.mkdir(parents=True)
    (meta / "config.json").write_text(json.dumps({"training": {"n_rows": 858, "epochs": 15}}))
    (meta / "metrics.json").write_text(json.dumps({"cv_accuracy": 0.95336}))
    assert model_card._single_crop_lines(tmp_path) == []  # no test record yet
    ev = tmp_path / "evaluation" / "classification" / "test_single_crop"
    ev.mkdir(parents=True)
    record = {"tta": "none", "n_images": 856, "models": {
        "resnet50": {"accuracy": 0.95, "macro_f1": 0.949, "roc_auc": {"macro": 0.99}},
        "ensemble": {"accuracy": 0.96, "macro_f1": 0.959, "roc_auc": {"macro": 0.996}}}}
    (ev / "metrics.json").write_text(json.dumps(record))
    text = "\n".join(model_card._single_crop_lines(tmp_path))
    assert "856 test slices" in text and "858 validation rows, 15 epochs" in text
    assert "CV accuracy 0.9534" in text
    assert re.search(r"\| ensemble \|\s+0\.96 \|\s+0\.959 \|\s+0\.996 \|", text)
    (ev / "metrics.json").write_text(json.dumps(record | {"tta": "hflip"}))
    assert model_card._single_crop_lines(tmp_path) == []  # not a single-crop record


def test_cascade_section_needs_a_threshold_and_a_cascade_test_record(tmp_path: Path) -> None:
    assert model_card._cascade_lines(tmp_path) == []
    cls = tmp_path / "classification"
    cls.mkdir()
    record = {"threshold": 0.85, "validation": {"n_images": 858, "out_of_fold": {
        "default_mode": {"accuracy": 0.95921}, "cascade_at_threshold": {
            "escalated": 51, "accuracy": 0.95921}}}}
    (cls / "cascade.json").write_text(json.dumps(record))
    assert model_card._cascade_lines(tmp_path) == []  # no test record yet
    ev = tmp_path / "evaluation" / "classification"
    (ev / "test_cascade").mkdir(parents=True)
    (ev / "test").mkdir()
    ens = {"accuracy": 0.95561, "macro_f1": 0.95504}
    (ev / "test_cascade" / "metrics.json").write_text(json.dumps(
        {"tta": "cascade", "n_images": 856, "n_escalated": 50, "models": {"ensemble": ens}}))
    (ev / "test" / "metrics.json").write_text(json.dumps(
        {"models": {"ensemble": {"accuracy": 0.95794, "macro_f1": 0.95749}}}))
    text = "\n".join(model_card._cascade_lines(tmp_path))
    assert "### Cascade mode (856 test slices)" in text and "below 0.85" in text
    assert "51 of 858 validation slices escalated, accuracy 0.9592" in text
    assert "escalated 50 of 856 slices and scored accuracy 0.9556 / macro-F1 0.955" in text
    assert "(default mode 0.9579 / 0.9575); not the default" in text
    (cls / "cascade.json").write_text(json.dumps(record | {"threshold": None}))
    assert model_card._cascade_lines(tmp_path) == []  # no threshold chosen


def test_shift_and_shortcut_section_reads_both_records(tmp_path: Path) -> None:
    assert model_card._shift_and_shortcut_lines(tmp_path) == []
    rob = tmp_path / "evaluation" / "robustness" / "classification"
    rob.mkdir(parents=True)
    (rob / "metrics.json").write_text(json.dumps({
        "n_slices": 8, "settings": {"per_class": 2},
        "corruptions": {"gamma_dark": {"description": "gamma 1.5 / 2.0"},
                        "blur": {"description": "blur 1 / 2 px"}}}))
    rows = [("none", 0, "ensemble", 1.0), ("gamma_dark", 1, "ensemble", 0.625),
            ("gamma_dark", 2, "ensemble", 0.5), ("gamma_dark", 1, "resnet50", 0.125),
            ("blur", 1, "ensemble", 0.875)]  # blur severity 2 missing: no row
    pd.DataFrame(rows, columns=["corruption", "severity", "model", "accuracy"]).to_csv(
        rob / "summary.csv", index=False)
    text = "\n".join(model_card._shift_and_shortcut_lines(tmp_path))
    assert "on 8 test slices (2 per class)" in text and "clean: 1.000" in text
    assert "| gamma 1.5 / 2.0 | 0.625 | 0.500 |" in text  # the ensemble's rows, not resnet50's
    assert "blur" not in text and "Grey levels alone" not in text

    probe = {"accuracy": 0.698, "balanced_accuracy": 0.69, "majority_baseline": 0.279,
             "n_score": 858, "score_part": "val",
             "median_relative_gamma": {"glioma": 1.108, "notumor": 0.72}}
    (tmp_path / "evaluation" / "classification").mkdir(parents=True)
    (tmp_path / "evaluation" / "classification" / "intensity_shortcut.json").write_text(
        json.dumps(probe))
    text = "\n".join(model_card._shift_and_shortcut_lines(tmp_path))
    assert "right on 69.8% of 858 val slices (balanced 69.0%" in text
    assert "most common class is 27.9%" in text and "glioma 1.11, notumor 0.72" in text


def test_input_check_paragraph_with_its_error_table(tmp_path: Path) -> None:
    from ensemble.intensity import IntensityReference, save_reference

    rob = tmp_path / "evaluation" / "robustness" / "classification"
    rob.mkdir(parents=True)
    (rob / "metrics.json").write_text(json.dumps({"n_slices": 8, "settings": {"per_class": 2},
                                                  "corruptions": {}}))
    pd.DataFrame([("none", 0, "ensemble", 1.0)],
                 columns=["corruption", "severity", "model", "accuracy"]).to_csv(
        rob / "summary.csv", index=False)
    features = np.arange(18, dtype=float).reshape(3, 6)
    save_reference(IntensityReference(features, k=1, threshold=0.5),
                   tmp_path / "classification" / "intensity_reference",
                   {"quantile": 0.99, "check": {"part": "val", "flagged_share": [
                       {"corruption": "none", "severity": 0, "n": 10, "flagged_share": 0.0},
                       {"corruption": "gamma_dark", "severity": 1, "n": 10,
                        "flagged_share": 0.6}]}})
    text = "\n".join(model_card._shift_and_shortcut_lines(tmp_path))
    assert "compared with those of 3 training slices" in text and "atypicality 0.500" in text
    assert "On 10 val slices it flagged 0.0% as they are; 60.0% under" in text
    assert "robustness run's test slices" not in text  # no intensity_flags.json yet

    (rob / "intensity_flags.json").write_text(json.dumps({"table": [
        {"corruption": "none", "severity": 0, "n": 80, "flagged_share": 0.0125, "errors": 0,
         "errors_flagged_share": None, "accuracy_flagged": 1.0, "accuracy_unflagged": 1.0},
        {"corruption": "gamma_dark", "severity": 2, "n": 80, "flagged_share": 0.8375,
         "errors": 44, "errors_flagged_share": 0.909, "accuracy_flagged": 0.403,
         "accuracy_unflagged": 0.692},
        {"corruption": "gamma_bright", "severity": 1, "n": 80, "flagged_share": 0.0125,
         "errors": 6, "errors_flagged_share": 0.167, "accuracy_flagged": 0.0,
         "accuracy_unflagged": 0.937}]}))
    text = "\n".join(model_card._shift_and_shortcut_lines(tmp_path))
    assert ("gamma dark 2: 84% of slices and 91% of the ensemble's 44 errors flagged, accuracy "
            "0.40 flagged vs 0.69 not; unchanged slices flagged: 1 of 80.") in text
    assert "gamma bright" not in text  # 1 flagged slice of 80 is not a shift it responds to


def test_correction_table_from_its_record(tmp_path: Path) -> None:
    assert model_card._correction_lines(tmp_path) == []
    folder = tmp_path / "evaluation" / "classification"
    folder.mkdir(parents=True)
    (folder / "intensity_correction_val.json").write_text(json.dumps({
        "part": "val", "per_class": 50, "table": [
            {"corruption": "none", "severity": 0, "n": 200, "accuracy": 0.955,
             "accuracy_as_given": 0.955, "flagged": 0, "accuracy_flagged_as_given": None,
             "accuracy_flagged_decision": None},
            {"corruption": "gamma_dark", "severity": 2, "n": 200, "accuracy": 0.865,
             "accuracy_as_given": 0.44, "flagged": 167, "accuracy_flagged_as_given": 0.437,
             "accuracy_flagged_decision": 0.946}]}))
    text = "\n".join(model_card._correction_lines(tmp_path))
    assert "On val slices (50 per class" in text
    assert "| none 0 | 200 | 0.955 | 0.955 | 0 | — | — |" in text
    assert "| gamma dark 2 | 200 | 0.440 | 0.865 | 167 | 0.437 | 0.946 |" in text
    # a record of the earlier second-opinion format is left out, not misread
    (folder / "intensity_correction_val.json").write_text(json.dumps({
        "part": "val", "per_class": 50, "table": [
            {"corruption": "none", "severity": 0, "n": 200, "accuracy": 0.955, "flagged": 0,
             "accuracy_flagged_decision": None, "accuracy_flagged_second": None}]}))
    assert model_card._correction_lines(tmp_path) == []


def test_segmentation_shift_table_pairs_the_two_robustness_runs(tmp_path: Path) -> None:
    rob = tmp_path / "evaluation" / "robustness"
    assert model_card._seg_shift_lines(tmp_path) == []  # no runs
    (rob / "segmentation").mkdir(parents=True)
    pd.DataFrame({"corruption": ["none", "gamma_dark"], "severity": [0, 2], "n": [10, 10],
                  "mean_dice": [0.7, 0.2]}).to_csv(rob / "segmentation" / "summary.csv",
                                                   index=False)
    assert model_card._seg_shift_lines(tmp_path) == []  # only one of the two runs
    (rob / "segmentation_corrected").mkdir()
    pd.DataFrame({"corruption": ["gamma_dark", "none"], "severity": [2, 0], "n": [10, 10],
                  "mean_dice": [0.68, 0.7], "intensity_corrected": [0.9, 0.0]}).to_csv(
        rob / "segmentation_corrected" / "summary.csv", index=False)
    text = "\n".join(model_card._seg_shift_lines(tmp_path))
    assert "| none 0 | 10 | 0.700 | 0.700 | 0 % |" in text
    assert "| gamma dark 2 | 10 | 0.200 | 0.680 | 90 % |" in text


def test_noise_limitation_counts_tumours_called_notumor_and_names_refitted_models(tmp_path):
    rob = tmp_path / "evaluation" / "robustness" / "classification"
    rob.mkdir(parents=True)
    rows = [
        ("g.jpg", "glioma", "rician_noise", 2, "notumor"),
        ("m.jpg", "meningioma", "rician_noise", 2, "meningioma"),
        ("p.jpg", "pituitary", "rician_noise", 2, "notumor"),
        ("n.jpg", "notumor", "rician_noise", 2, "notumor"),  # not a tumour slice
        ("g.jpg", "glioma", "rician_noise", 1, "notumor"),  # other severity
        ("g.jpg", "glioma", "none", 0, "glioma"),
    ]
    cols = ["path", "label", "corruption", "severity", "ensemble"]
    pd.DataFrame(rows, columns=cols).to_csv(rob / "per_slice.csv", index=False)
    text = model_card._noise_limitation(tmp_path)
    assert "ensemble called 2 of the 3 tumour\n  slices" in text
    assert "refitted" not in text  # no model records a noise refit
    folder = tmp_path / "classification" / "xception"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"training": {"head_refit_noise": {}}}))
    assert " xception was refitted on" in model_card._noise_limitation(tmp_path)
    assert "ensemble called" not in model_card._noise_limitation(tmp_path / "elsewhere")


def test_noise_augmentation_note_only_when_used() -> None:
    assert model_card._noise_augmentation_note({}) == ""
    assert model_card._noise_augmentation_note({"aug_noise_sigma": 0.0}) == ""
    recipe = {"aug_noise_sigma": 16.0, "aug_noise_probability": 0.5}
    note = model_card._noise_augmentation_note(recipe)
    assert note == ", Rician noise augmentation (sigma <= 16 grey levels, 50% of images)"


def test_outline_confidence_table_needs_a_passing_record(tmp_path: Path) -> None:
    folder = tmp_path / "segmentation" / "resunet"
    folder.mkdir(parents=True)
    assert model_card._outline_confidence_lines(tmp_path) == []
    summary = {"n": 10, "n_empty": 1, "n_flagged": 3, "spearman": 0.8, "sensitivity": 0.75,
               "specificity": 0.9, "mean_dice_flagged": 0.3, "mean_dice_unflagged": 0.85,
               "misses": 2, "misses_flagged": 2}
    record = {"passes_rule": True, "flag_threshold": 0.8, "poor_outline": "Dice < 0.5",
              "validation": summary, "evaluated": {"test": {**summary, "n_flagged": 4}}}
    (folder / "outline_confidence.json").write_text(json.dumps(record))
    text = "\n".join(model_card._outline_confidence_lines(tmp_path))
    assert "below 0.80 is flagged" in text
    assert "| validation (chose the threshold) | 10 (1 without) | 3 | 0.800 | 0.750 |" in text
    assert "| test (reported) | 10 (1 without) | 4 |" in text and "2 of 2 |" in text
    (folder / "outline_confidence.json").write_text(json.dumps({**record, "passes_rule": False}))
    assert model_card._outline_confidence_lines(tmp_path) == []


def test_review_table_lists_each_meta_learner_and_the_reported_runs(tmp_path: Path) -> None:
    folder = tmp_path / "classification"
    folder.mkdir()
    assert model_card._review_lines(tmp_path) == []
    summary = {"threshold": 0.95, "n": 858, "n_flagged": 113, "n_errors": 35,
               "errors_flagged": 27, "accuracy_flagged": 0.761, "accuracy_unflagged": 0.989,
               "auroc": 0.887}
    record = {"meta_learners": {"meta": {"passes_rule": True, "validation": summary},
                                "meta_single_crop": {"passes_rule": False,
                                                     "validation": summary}},
              "evaluated": {"test_cascade": {**summary, "threshold": [0.6, 0.95]}}}
    (folder / "review.json").write_text(json.dumps(record))
    text = "\n".join(model_card._review_lines(tmp_path))
    assert ("| `meta`, validation out of fold (used) | 0.95 | 858 | 113 | 27 of 35 | "
            "0.761 / 0.989 | 0.887 |") in text
    assert "`meta_single_crop`, validation out of fold (failed the rule, not used)" in text
    assert "| cascade mode, test (reported) | 0.6, 0.95 |" in text
