from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import pytest

from dashboard import evaluation as ev
from neurostack import CLASS_NAMES


def _predictions(n_per_class: int = 5, *, perfect: bool = True, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for k, cls in enumerate(CLASS_NAMES):
        for i in range(n_per_class):
            row = {"path": f"{cls}/{i}.png", "label": cls}
            for model in ("ensemble", "vgg19", "xception", "custom"):
                p = rng.dirichlet(np.ones(4))
                if perfect or model == "ensemble":
                    p = np.full(4, 0.05)
                    p[k] = 0.85
                row.update({f"{model}_{c}": float(v) for c, v in zip(CLASS_NAMES, p, strict=True)})
            rows.append(row)
    return pd.DataFrame(rows)


def test_models_order_base_then_others_then_ensemble():
    assert ev.models_in_predictions(_predictions()) == ["xception", "vgg19", "custom", "ensemble"]


def test_incomplete_probability_columns_are_ignored():
    df = _predictions().drop(columns=["custom_glioma"])
    assert "custom" not in ev.models_in_predictions(df)


def test_perfect_model_curves_and_matrices():
    result = ev.evaluate_model(_predictions(), "ensemble")
    assert result.n == 20
    assert np.array_equal(result.confusion, np.eye(4, dtype=int) * 5)
    np.testing.assert_allclose(result.confusion_normalised.sum(axis=1), 1.0)
    for cls in CLASS_NAMES:
        assert result.roc[cls].score == pytest.approx(1.0)
        assert result.pr[cls].score == pytest.approx(1.0)
    assert result.roc["macro"].score == pytest.approx(1.0)
    assert result.roc["macro"].y[-1] == pytest.approx(1.0)
    assert sum(b["count"] for b in result.reliability) == 20
    assert result.ece == pytest.approx(0.15)  # confidence 0.85, accuracy 1.0


def test_tables_match_metrics():
    df = _predictions(perfect=False)
    evals = [ev.evaluate_model(df, m) for m in ev.models_in_predictions(df)]
    table = ev.comparison_table(evals)
    assert list(table["model"]) == ["Xception", "VGG19", "custom", "Meta-learner (ensemble)"]
    assert table.loc[3, "accuracy"] == pytest.approx(1.0)
    report = ev.report_table(evals[0])
    assert list(report["class"]) == [*CLASS_NAMES, "macro average", "accuracy"]
    assert report.loc[4, "support"] == 20
    assert report.loc[5, "F1"] == pytest.approx(evals[0].metrics["accuracy"])


def test_class_without_samples_has_no_roc():
    df = _predictions()
    df = df[df["label"] != "pituitary"]
    result = ev.evaluate_model(df, "ensemble")
    assert "pituitary" not in result.roc and "pituitary" not in result.pr
    assert result.metrics["roc_auc"]["pituitary"] is None


def test_row_normalise_keeps_empty_rows_zero():
    out = ev.row_normalise(np.array([[2, 2], [0, 0]]))
    np.testing.assert_allclose(out, [[0.5, 0.5], [0, 0]])


def test_per_image_keeps_leading_zeros_and_browser_sorts_worst_first(tmp_path):
    csv = tmp_path / "per_image.csv"
    csv.write_text("id,label,dice,iou\n0007,glioma,0.9,0.8\n0012,pituitary,0.1,0.05\n"
                   "0100,glioma,0.5,0.33\n")
    df = ev.read_per_image(csv)
    assert list(df["id"]) == ["0007", "0012", "0100"]
    cases = ev.browser_cases(df, None)
    assert list(cases["id"]) == ["0012", "0100", "0007"]
    assert list(ev.browser_cases(df, ["0007", "0100"])["id"]) == ["0100", "0007"]
    summary = ev.seg_summary(df)
    assert list(summary["class"]) == ["all", "glioma", "pituitary"]
    assert summary.loc[1, "mean Dice"] == pytest.approx(0.7)
    assert ev.SEG_CI_COLUMN not in summary.columns  # no record -> no interval column
    record = {"n_patients": 3, "mean_dice_ci95": [0.1, 0.9],
              "per_class": {"glioma": {"n_patients": 2, "mean_dice_ci95": [0.5, 0.9]},
                            "pituitary": {"n_patients": 1}}}
    summary = ev.seg_summary(df, record)
    assert list(summary["patients"]) == [3, 2, 1]
    assert list(summary[ev.SEG_CI_COLUMN]) == ["0.100–0.900", "0.500–0.900", ""]
    assert ev.SEG_CI_COLUMN not in ev.seg_summary(df, {"n_images": 3}).columns


def test_per_image_without_scores_is_refused(tmp_path):
    csv = tmp_path / "per_image.csv"
    csv.write_text("id,dice\n1,0.5\n")
    with pytest.raises(ValueError, match="iou"):
        ev.read_per_image(csv)


def test_split_ids_and_files(tmp_path):
    split = tmp_path / "split.csv"
    split.write_text("id,patient_id,label,fold,split\n0001,9,glioma,1,train\n0002,9,glioma,4,test\n")
    assert ev.test_ids(split) == ["0002"]
    assert ev.test_ids(tmp_path / "missing.csv") is None
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "0002.jpg").write_bytes(b"x")
    (tmp_path / "masks" / "0002.png").write_bytes(b"x")
    (tmp_path / "images" / "0003.jpg").write_bytes(b"x")
    cases = pd.DataFrame({"id": ["0002", "0003"], "label": ["glioma"] * 2, "dice": [0.1, 0.2],
                          "iou": [0.1, 0.2]})
    kept = ev.with_files(cases, tmp_path / "images", tmp_path / "masks")
    assert list(kept["id"]) == ["0002"] and kept.loc[0, "mask_path"].name == "0002.png"


def test_list_runs_newest_first_and_requires_file(tmp_path):
    for name in ("old", "new", "empty"):
        (tmp_path / name).mkdir()
    (tmp_path / "old" / "predictions.csv").write_text("x")
    (tmp_path / "new" / "predictions.csv").write_text("x")
    past = time.time() - 100
    os.utime(tmp_path / "old" / "predictions.csv", (past, past))
    assert ev.list_runs(tmp_path, "predictions.csv") == ["new", "old"]
    assert ev.list_runs(tmp_path / "nowhere", "predictions.csv") == []


def test_list_runs_puts_the_test_run_first_whatever_its_file_time(tmp_path):
    for name in ("val", "test", "extra"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "predictions.csv").write_text("x")
    now = time.time()
    for age, name in ((300, "test"), (200, "extra"), (100, "val")):  # test is the oldest
        os.utime(tmp_path / name / "predictions.csv", (now - age, now - age))
    assert ev.list_runs(tmp_path, "predictions.csv") == ["test", "val", "extra"]


def test_training_log_reading(tmp_path):
    assert ev.read_training_log(tmp_path / "none.csv") is None
    (tmp_path / "empty.csv").write_text("")
    assert ev.read_training_log(tmp_path / "empty.csv") is None
    (tmp_path / "log.csv").write_text("epoch,loss\n1,0.5\n0,0.9\n")
    assert list(ev.read_training_log(tmp_path / "log.csv")["epoch"]) == [0, 1]


def test_read_json_file(tmp_path):
    (tmp_path / "a.json").write_text('{"x": 1}')
    (tmp_path / "b.json").write_text("[1]")
    (tmp_path / "c.json").write_text("{broken")
    assert ev.read_json_file(tmp_path / "a.json") == {"x": 1}
    assert ev.read_json_file(tmp_path / "b.json") is None
    assert ev.read_json_file(tmp_path / "c.json") is None
    assert ev.read_json_file(tmp_path / "d.json") is None


def test_read_threshold_sweep(tmp_path):
    assert ev.read_threshold_sweep(tmp_path / "missing.csv") is None
    good = tmp_path / "threshold_sweep.csv"
    good.write_text("threshold,n_images,mean_dice\n0.3,2,0.5\n0.5,2,0.4\n")
    assert ev.read_threshold_sweep(good)["mean_dice"].tolist() == [0.5, 0.4]
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,b\n1,2\n")
    assert ev.read_threshold_sweep(wrong) is None


def test_meta_in_sample_matches_the_recorded_file_only(tmp_path):
    val = tmp_path / "artifacts" / "evaluation" / "classification" / "val"
    test = val.parent / "test"
    for d in (val, test):
        d.mkdir(parents=True)
        (d / "predictions.csv").write_text("label\n0\n")
    config = {"training": {"heldout_predictions": "artifacts/evaluation/classification/val/"
                                                  "predictions.csv", "cv_folds": "stratified"}}
    metrics = {"cv_accuracy": 0.959, "cv_fold_accuracies": [0.95, 0.97]}
    note = ev.meta_in_sample(val / "predictions.csv", config, metrics, tmp_path)
    assert note == ev.InSampleNote(0.959, (0.95, 0.97), "stratified")
    assert ev.meta_in_sample(test / "predictions.csv", config, metrics, tmp_path) is None
    # an absolute recorded path; unknown provenance gives no note
    absolute = {"training": {"heldout_predictions": str(val / "predictions.csv")}}
    assert ev.meta_in_sample(val / "predictions.csv", absolute, None, tmp_path) == \
        ev.InSampleNote(None, (), "")
    assert ev.meta_in_sample(val / "predictions.csv", None, metrics, tmp_path) is None
    assert ev.meta_in_sample(val / "predictions.csv", {"training": {}}, metrics, tmp_path) is None


def test_comparison_table_labels_in_sample_models():
    df = _predictions(perfect=False)
    evals = [ev.evaluate_model(df, m) for m in ev.models_in_predictions(df)]
    table = ev.comparison_table(evals, frozenset({"ensemble"}))
    assert list(table["model"]) == ["Xception", "VGG19", "custom",
                                    "Meta-learner (ensemble)" + ev.IN_SAMPLE_SUFFIX]


def test_review_case_scores_known_masks():
    truth = np.zeros((8, 8), bool)
    truth[2:6, 2:6] = True  # 16 px
    pred = np.zeros((8, 8), np.uint8)
    pred[2:6, 4:8] = 1  # 16 px, 8 shared
    r = ev.review_case("img", pred, truth)
    assert r.dice == pytest.approx(0.5) and r.iou == pytest.approx(8 / 24)
    assert (r.truth_area_px, r.predicted_area_px) == (16, 16) and r.predicted.dtype == bool
    empty = np.zeros((8, 8), bool)
    assert ev.review_case("img", empty, empty).dice == 1.0  # both empty: the stated policy
    with pytest.raises(ValueError, match=r"\(8, 8\), the image \(8, 9\)"):
        ev.review_case("img", np.zeros((8, 9), bool), truth)


def test_training_phases_split_on_phase_or_size_changes():
    log = pd.DataFrame({"epoch": range(6),
                        "phase": ["scratch", "scratch", "native", "scratch", "scratch", "x"],
                        "image_size": [128, 128, 299, 299, 299, 299]})
    assert ev.training_phases(log) == [
        "scratch at 128 px (epochs 0–1)", "native at 299 px (epoch 2)",
        "scratch at 299 px (epochs 3–4)", "x at 299 px (epoch 5)",
    ]
    assert ev.training_phases(log.drop(columns="image_size"))[0] == "scratch (epochs 0–1)"
    assert ev.training_phases(log.drop(columns="phase")) == []


def test_paired_comparison_counts_discordant_images():
    df = _predictions(perfect=False, seed=3)  # ensemble perfect, the others random
    evals = [ev.evaluate_model(df, m) for m in ev.models_in_predictions(df)]
    table = ev.paired_comparison(evals).set_index("model")
    assert list(table.index) == ["Xception", "VGG19", "custom"]
    for e in evals[:3]:
        row = table.loc[ev.model_label(e.name)]
        right = int(e.correct.sum())
        # the ensemble is right everywhere: no image only the base model got right
        assert row["both right"] == right and row["only this model right"] == 0
        assert row["only Meta-learner (ensemble) right"] == 20 - right
        assert row["both wrong"] == 0
        assert row["accuracy difference"] == pytest.approx(1 - right / 20)
        assert row["McNemar p"] == pytest.approx(2 * 0.5 ** (20 - right) if right < 20 else 1.0)
    assert ev.paired_comparison(evals[:3]).empty  # no ensemble evaluated
    table = ev.comparison_table(evals)
    assert (table["accuracy 95% CI low"] <= table["accuracy"]).all()
    assert (table["accuracy"] <= table["accuracy 95% CI high"]).all()


def robustness_summary_frame() -> pd.DataFrame:
    rows = [("none", 0, "resnet50", 0.9, 0.0), ("none", 0, "ensemble", 0.95, 0.0),
            ("blur", 1, "resnet50", 0.85, 0.1), ("blur", 1, "ensemble", 0.9, 0.05),
            ("blur", 2, "resnet50", 0.5, 0.4), ("blur", 2, "ensemble", 0.6, 0.35),
            ("rotation", 1, "resnet50", 0.9, 0.0), ("rotation", 1, "ensemble", 0.95, 0.0)]
    return pd.DataFrame(rows, columns=["corruption", "severity", "model", "accuracy",
                                       "changed"]).assign(n=20)


def test_robustness_table_is_clean_first_then_worst_first(tmp_path):
    csv = tmp_path / "summary.csv"
    robustness_summary_frame().to_csv(csv, index=False)
    summary = ev.read_robustness_summary(csv)
    table = ev.robustness_table(summary)
    assert list(table["condition"]) == ["none", "blur 2", "blur 1", "rotation 1"]
    assert list(table.columns) == ["condition", "ResNet50", "Meta-learner (ensemble)",
                                   "Meta-learner (ensemble), 95% low",
                                   "Meta-learner (ensemble), 95% high", "final answer changed"]
    assert table.loc[1, "ResNet50"] == 0.5 and table.loc[1, "final answer changed"] == 0.35
    # 12 of 20 right: Wilson 95 % interval 0.387-0.781 (worked by hand)
    assert table.loc[1, "Meta-learner (ensemble), 95% low"] == pytest.approx(0.3866, abs=1e-4)
    assert table.loc[1, "Meta-learner (ensemble), 95% high"] == pytest.approx(0.7812, abs=1e-4)
    assert ev.read_robustness_summary(tmp_path / "absent.csv") is None
    (tmp_path / "bad.csv").write_text("corruption,accuracy\nblur,0.5\n")
    assert ev.read_robustness_summary(tmp_path / "bad.csv") is None


def test_seg_robustness_long_has_all_and_each_class(tmp_path):
    csv = tmp_path / "summary.csv"
    pd.DataFrame({"corruption": ["none", "blur"], "severity": [0, 2], "n": [4, 4],
                  "mean_dice": [0.7, 0.5], "dice_change": [0.0, -0.2], "area_stable": [1, 0.5],
                  "mean_dice_glioma": [0.6, 0.3], "mean_dice_pituitary": [0.8, 0.7]}
                 ).to_csv(csv, index=False)
    long = ev.seg_robustness_long(ev.read_seg_robustness_summary(csv))
    assert sorted(set(long["series"])) == ["all", "glioma", "pituitary"]
    row = long[(long["series"] == "glioma") & (long["corruption"] == "blur")]
    assert row["dice"].tolist() == [0.3]
    assert ev.read_seg_robustness_summary(tmp_path / "none.csv") is None


def test_with_pipeline_dice_joins_the_run_with_the_input_check():
    summary = pd.DataFrame({"corruption": ["none", "gamma_dark", "blur"],
                            "severity": [0, 2, 2], "mean_dice": [0.7, 0.2, 0.6],
                            "mean_dice_glioma": [0.6, 0.1, 0.5]})
    assert ev.with_pipeline_dice(summary, None) is summary
    corrected = pd.DataFrame({"corruption": ["gamma_dark", "none"], "severity": [2, 0],
                              "mean_dice": [0.68, 0.7], "intensity_corrected": [0.95, 0.0]})
    both = ev.with_pipeline_dice(summary, corrected)
    assert both["pipeline_mean_dice"].tolist()[:2] == [0.7, 0.68]
    assert np.isnan(both.loc[2, "pipeline_mean_dice"])  # condition missing from the second run
    assert both["mapped"].tolist()[:2] == [0.0, 0.95]
    long = ev.seg_robustness_long(both)
    assert sorted(set(long["series"])) == sorted(["all", "glioma", ev.PIPELINE_SERIES])
    dark = long[(long["series"] == ev.PIPELINE_SERIES) & (long["corruption"] == "gamma_dark")]
    assert dark["dice"].tolist() == [0.68]
    assert len(long[long["series"] == ev.PIPELINE_SERIES]) == 2  # the NaN row is dropped


def test_robustness_table_shows_the_ensemble_p_value_when_recorded():
    summary = robustness_summary_frame().assign(p_vs_clean=[1.0, 1.0, 0.5, 0.25, 0.01, 0.002,
                                                            1.0, 1.0])
    table = ev.robustness_table(summary).set_index("condition")
    assert table.loc["blur 2", "p vs clean (McNemar)"] == 0.002
    assert table.loc["none", "p vs clean (McNemar)"] == 1.0


def test_stale_weights_names_models_recorded_with_other_weights():
    record = {"weights_sha256": {"resnet50": "aa", "vgg19": "bb", "meta": "cc"}}
    assert ev.stale_weights(record, {"resnet50": "aa", "vgg19": "XX", "meta": "YY"}) == [
        "meta", "vgg19"]
    assert ev.stale_weights(record, {"resnet50": None, "xception": "zz"}) == []
    assert ev.stale_weights({}, {"resnet50": "aa"}) == []


def test_series_table_needs_a_covering_split(tmp_path):
    per_image = pd.DataFrame({"id": ["1", "2", "3", "4"], "label": ["glioma"] * 4,
                              "dice": [0.2, 0.4, 0.8, 0.9], "iou": [0.1, 0.3, 0.7, 0.8]})
    assert ev.series_table(per_image, tmp_path / "none.csv") is None
    split = tmp_path / "split.csv"
    pd.DataFrame({"id": ["1", "2", "3"], "patient_id": ["MRA", "MRB", "11"]}).to_csv(split)
    assert ev.series_table(per_image, split) is None  # slice 4 has no patient
    pd.DataFrame({"id": ["1", "2", "3", "4"],
                  "patient_id": ["MRA", "MRB", "11", "12"]}).to_csv(split, index=False)
    table = ev.series_table(per_image, split).set_index("series")
    assert table.loc["numeric id", "mean Dice"] == pytest.approx(0.85)
    assert table.loc["alphanumeric id", "patients"] == 2
    assert table.loc["alphanumeric id", ev.SEG_CI_COLUMN].count("–") == 1
    assert table.loc["alphanumeric id", ev.SERIES_MISSED_COLUMN] == 0.0
    assert table.loc["numeric id", ev.SERIES_FOUND_COLUMN] == pytest.approx(0.85)
    from segmentation.cohorts import MISS_DICE

    assert f"(Dice < {MISS_DICE})" in ev.SERIES_MISSED_COLUMN  # the label names the cut-off
    missed = ev.series_table(per_image.assign(dice=[0.01, 0.4, 0.8, 0.9]), split)
    missed = missed.set_index("series")
    assert missed.loc["alphanumeric id", ev.SERIES_MISSED_COLUMN] == pytest.approx(50.0)
    assert missed.loc["alphanumeric id", ev.SERIES_FOUND_COLUMN] == pytest.approx(0.4)


def test_contrast_bands_table_in_percent_and_none_for_old_records(tmp_path):
    per_image = pd.DataFrame({"id": ["1", "2", "3", "4"], "label": ["glioma"] * 4,
                              "dice": [0.01, 0.4, 0.8, 0.9]})
    split = tmp_path / "split.csv"
    pd.DataFrame({"id": ["1", "2", "3", "4"],
                  "patient_id": ["MRA", "MRB", "11", "12"]}).to_csv(split, index=False)
    assert ev.contrast_bands_table(per_image, split) is None  # made before the column existed
    nan = per_image.assign(tumour_contrast_sd=float("nan"))
    assert ev.contrast_bands_table(nan, split) is None
    table = ev.contrast_bands_table(
        per_image.assign(tumour_contrast_sd=[-0.1, 0.2, 0.3, 2.0]), split
    ).set_index(ev.CONTRAST_BAND_COLUMN)
    assert table.index.tolist() == ["<= 0", "0-0.5", "> 1"]
    assert table.loc["<= 0", ev.SERIES_MISSED_COLUMN] == pytest.approx(100.0)
    assert table.loc["0-0.5", ev.CONTRAST_ALNUM_COLUMN] == pytest.approx(50.0)
    assert table.loc["0-0.5", "mean Dice"] == pytest.approx(0.6)
    assert table.loc["> 1", "patients"] == 1


def test_segmenter_members_lists_an_ensembles_networks():
    config = {"members": [
        {"name": "a", "architecture": {"base_filters": 16}, "best_epoch": 3,
         "best_val_dice": 0.67, "epochs_completed_total": 31, "wall_time_s_total": 7200.0},
        {"name": "b", "architecture": {"base_filters": 16, "mirror_input": True},
         "best_epoch": 25, "best_val_dice": 0.68, "epochs_completed": 28},
    ]}
    table = ev.segmenter_members(config)
    assert table["member"].tolist() == ["a", "b"]
    assert table["mirror input"].tolist() == [False, True]
    assert table["epochs"].tolist() == [31, 28]
    assert table["wall time h"].tolist()[0] == 2.0 and pd.isna(table["wall time h"][1])
    assert ev.segmenter_members({"architecture": {"base_filters": 16}}) is None
    assert ev.segmenter_members(None) is None


def _hand_made_ensemble() -> pd.DataFrame:
    """Six slices; the ensemble is wrong on the two least confident but one."""
    labels = ["glioma", "meningioma", "notumor", "pituitary", "glioma", "meningioma"]
    top = [0.99, 0.97, 0.90, 0.80, 0.70, 0.55]
    answer = [0, 1, 2, 0, 0, 0]  # rows 3 and 5 are wrong
    df = pd.DataFrame({"path": [f"s{i}.jpg" for i in range(6)], "label": labels})
    probs = np.repeat(((1 - np.array(top)) / 3)[:, None], 4, axis=1)
    probs[np.arange(6), answer] = top
    for k, c in enumerate(CLASS_NAMES):
        df[f"ensemble_{c}"] = probs[:, k]
    return df


def test_risk_coverage_and_selective_table_known_answers():
    evals = [ev.evaluate_model(_hand_made_ensemble(), "ensemble")]
    curves = ev.risk_coverage_long(evals)
    assert list(curves["model"].unique()) == ["ensemble"]
    np.testing.assert_allclose(curves["coverage"], np.arange(1, 7) / 6)
    np.testing.assert_allclose(curves["accuracy"], [1, 1, 1, 3 / 4, 4 / 5, 4 / 6])
    table = ev.selective_table(evals).iloc[0]
    assert table["model"] == "Meta-learner (ensemble)"
    assert table["accuracy (all)"] == pytest.approx(4 / 6)
    assert table["accuracy, most confident 90%"] == pytest.approx(4 / 6)  # needs all 6
    assert table["accuracy, most confident 80%"] == pytest.approx(4 / 5)  # the first 5
    assert table["AURC"] == pytest.approx(np.mean([0, 0, 0, 1 / 4, 1 / 5, 2 / 6]))


def test_review_on_run_compares_each_row_with_its_meta_learners_threshold(tmp_path):
    from ensemble.review import FALLBACK_THRESHOLD
    from neurostack.artifacts import sha256_file

    root = tmp_path / "cls"
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "weights.npz").write_bytes(b"w")
    (root / "meta" / "config.json").write_text('{"input_tta": "hflip"}')
    record = {"meta_learners": {"meta": {"threshold": 0.85, "passes_rule": True,
                                         "meta_sha256": sha256_file(root / "meta" / "weights.npz"),
                                         "validation": {}}}}
    df = _hand_made_ensemble()
    got = ev.review_on_run(df, {"tta": "hflip"}, record, root, tmp_path / "p.csv")
    assert got["threshold"] == [0.85]
    assert (got["n_flagged"], got["errors_flagged"], got["n_errors"]) == (3, 2, 2)
    by_class = {r["predicted class"]: r for r in got["by_class"]}
    # answers: glioma x4 (0.99 right, 0.80 wrong, 0.70 right, 0.55 wrong), meningioma, notumor
    assert by_class["glioma"]["answers"] == 4 and by_class["glioma"]["flagged"] == 3
    assert by_class["glioma"]["accuracy flagged"] == pytest.approx(1 / 3)
    assert by_class["glioma"]["accuracy unflagged"] == 1.0
    assert by_class["pituitary"] == {"predicted class": "pituitary", "answers": 0, "flagged": 0,
                                     "accuracy flagged": None, "accuracy unflagged": None}
    record["meta_learners"]["meta"]["passes_rule"] = False  # the fixed limit instead
    got = ev.review_on_run(df, {"tta": "hflip"}, record, root, tmp_path / "p.csv")
    assert got["threshold"] == [FALLBACK_THRESHOLD]
    assert got["n_flagged"] == 1
    assert ev.review_on_run(df, {"tta": "hflip"}, None, root, tmp_path / "p.csv") is None
    assert ev.review_on_run(df.drop(columns="label"), {}, record, root, tmp_path) is None


def test_record_disagrees_only_when_it_states_another_accuracy() -> None:
    from dashboard.evaluation import record_disagrees

    record = {"models": {"vgg19": {"accuracy": 0.87}, "xception": {"macro_f1": 0.9}}}
    assert not record_disagrees(record, "vgg19", 0.87)
    assert not record_disagrees(record, "vgg19", 0.87 + 1e-9)
    assert record_disagrees(record, "vgg19", 0.8711)
    assert not record_disagrees(record, "xception", 0.5)  # no accuracy stated
    assert not record_disagrees(record, "resnet50", 0.5) and not record_disagrees({}, "x", 0.5)


def test_evaluation_provenance_names_stale_models_and_reused_members() -> None:
    from dashboard.evaluation import evaluation_provenance

    shipped = {"xception": "x1", "vgg19": "v1", "meta": "m1", "meta_single_crop": "s1",
               "resunet": "r1"}
    record = {"artifacts": {"xception": "x1", "vgg19": "v0", "meta": "s1"},
              "reused": {"from": "/somewhere", "members": ["xception"]}}
    stale, note = evaluation_provenance(record, shipped)
    assert stale == ["vgg19"]  # the single-crop meta-learner is a shipped one
    assert note.startswith("The probabilities of Xception were taken from an earlier run")
    assert evaluation_provenance({"artifacts": {"meta": "old"}}, shipped) == (["meta"], None)
    seg = {"artifact": {"weights_sha256": "r0"}}
    assert evaluation_provenance(seg, shipped) == (["resunet"], None)
    assert evaluation_provenance({"artifact": {"weights_sha256": "r1"}}, shipped) == ([], None)
    # nothing recorded or nothing shipped: not judged
    assert evaluation_provenance({}, shipped) == ([], None)
    assert evaluation_provenance(record | {"reused": None}, {}) == ([], None)


def test_after_training_describes_recalibration_and_head_refit() -> None:
    from dashboard.evaluation import after_training

    config = {"training": {
        "batchnorm_recalibration": {"images": 1024, "input_size": 299, "source": "train split",
                                    "val_accuracy_before": 0.8019, "val_accuracy_after": 0.831},
        "head_refit": {"n_train": 3386, "n_holdout": 612, "best_epoch": 26,
                       "holdout_accuracy": 0.89542, "val_accuracy_shipped_head": 0.831,
                       "val_accuracy_refitted_head": 0.8566, "from_layer": "flatten"}}}
    recal, refit = after_training(config)
    assert recal == ("Batch-norm statistics re-estimated at 299 px on 1024 training images "
                     "(train split): validation accuracy 0.802 -> 0.831.")
    assert refit.startswith("Classification head refitted from layer flatten on 3386 training "
                            "slices with 612 held out (best epoch 26, hold-out accuracy 0.895)")
    assert "validation accuracy 0.831 -> 0.857" in refit
    assert after_training({"training": {"head_refit": None}}) == []
    assert after_training(None) == []
