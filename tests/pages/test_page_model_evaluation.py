from __future__ import annotations

import json
import shutil

from page_helpers import chart_titles

MODELS = ["Xception", "InceptionV3", "ResNet50", "VGG19", "Meta-learner (ensemble)"]


def test_one_confusion_matrix_and_roc_per_model(make_app):
    at = make_app("pages/3_Model_Evaluation.py").run()
    assert not at.exception, [e.message for e in at.exception]
    titles = chart_titles(at)
    for model in MODELS:
        assert titles.count(f"Confusion matrix (counts) — {model}") == 1, model
        assert titles.count(f"Confusion matrix (row-normalised) — {model}") == 1, model
        assert titles.count(f"ROC curves (one-vs-rest) — {model}") == 1, model
        assert titles.count(f"Precision-recall curves — {model}") == 1, model
        assert sum(t.startswith(f"Reliability diagram — {model} (ECE") for t in titles) == 1
    for model in MODELS[:4]:
        assert titles.count(f"Training curves — {model}") == 1
    comparison = at.dataframe[0].value
    assert list(comparison["model"]) == MODELS
    assert len(at.tabs) >= 5


def test_numbers_come_from_the_records(make_app, dashboard_artifacts):
    import json

    at = make_app("pages/3_Model_Evaluation.py").run()
    stored = json.loads((dashboard_artifacts / "evaluation" / "classification" / "test"
                         / "metrics.json").read_text())["models"]
    comparison = at.dataframe[0].value.set_index("model")
    assert abs(comparison.loc["Meta-learner (ensemble)", "accuracy"]
               - stored["ensemble"]["accuracy"]) < 1e-9
    assert abs(comparison.loc["Xception", "macro F1"] - stored["xception"]["macro_f1"]) < 1e-9


def test_run_selector_with_two_runs(make_app, dashboard_artifacts, tmp_path, monkeypatch):
    root = tmp_path / "art"
    shutil.copytree(dashboard_artifacts / "evaluation", root / "evaluation")
    shutil.copytree(root / "evaluation" / "classification" / "test",
                    root / "evaluation" / "classification" / "test_b")
    monkeypatch.setenv("NEUROSTACK_ARTIFACTS", str(root))
    at = make_app("pages/3_Model_Evaluation.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert sorted(at.selectbox(key="me_run").options) == ["test", "test_b"]
    assert any("No training logs" in i.value for i in at.info)


def test_no_records_is_explained(make_app, tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROSTACK_ARTIFACTS", str(tmp_path / "empty"))
    at = make_app("pages/3_Model_Evaluation.py").run()
    assert not at.exception
    assert "No classification evaluation run" in at.warning[0].value


def test_a_run_the_meta_learner_was_fitted_on_is_flagged(make_app, dashboard_artifacts, tmp_path,
                                                         monkeypatch):
    root = tmp_path / "art"
    shutil.copytree(dashboard_artifacts, root)
    fitted = root / "evaluation" / "classification" / "fitted_on"
    shutil.copytree(root / "evaluation" / "classification" / "test", fitted)
    config_path = root / "classification" / "meta" / "config.json"
    config = json.loads(config_path.read_text())
    config.setdefault("training", {})["heldout_predictions"] = str(fitted / "predictions.csv")
    config_path.write_text(json.dumps(config))
    (root / "classification" / "meta" / "metrics.json").write_text(
        json.dumps({"cv_accuracy": 0.5, "cv_fold_accuracies": [0.25, 0.75]}))
    monkeypatch.setenv("NEUROSTACK_ARTIFACTS", str(root))

    at = make_app("pages/3_Model_Evaluation.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.selectbox(key="me_run").value == "test"  # the headline run: nothing flagged
    assert not any("fitted on this run" in w.value for w in at.warning)
    assert list(at.dataframe[0].value["model"]) == MODELS

    at.selectbox(key="me_run").select("fitted_on").run()
    assert not at.exception, [e.message for e in at.exception]
    warning = next(w.value for w in at.warning if "fitted on this run" in w.value)
    assert "0.500" in warning and "0.250, 0.750" in warning
    assert list(at.dataframe[0].value["model"])[-1].endswith("in-sample (fitted on this run)")


def test_a_run_the_single_crop_meta_learner_was_fitted_on_is_flagged(
        make_app, dashboard_artifacts, tmp_path, monkeypatch):
    root = tmp_path / "art"
    shutil.copytree(dashboard_artifacts, root)
    fitted = root / "evaluation" / "classification" / "val_single_crop"
    shutil.copytree(root / "evaluation" / "classification" / "test", fitted)
    single = root / "classification" / "meta_single_crop"
    shutil.copytree(root / "classification" / "meta", single)
    config = json.loads((single / "config.json").read_text())
    config["input_tta"] = "none"
    config.setdefault("training", {})["heldout_predictions"] = str(fitted / "predictions.csv")
    (single / "config.json").write_text(json.dumps(config))
    (single / "metrics.json").write_text(json.dumps({"cv_accuracy": 0.625}))
    monkeypatch.setenv("NEUROSTACK_ARTIFACTS", str(root))

    at = make_app("pages/3_Model_Evaluation.py").run()
    assert not any("fitted on this run" in w.value for w in at.warning)  # the test run
    at.selectbox(key="me_run").select("val_single_crop").run()
    assert not at.exception, [e.message for e in at.exception]
    warning = next(w.value for w in at.warning if "fitted on this run" in w.value)
    assert "0.625" in warning


def test_robustness_section_reads_the_stored_summary(make_app, dashboard_artifacts, tmp_path,
                                                     monkeypatch):
    import pandas as pd

    root = tmp_path / "art"
    shutil.copytree(dashboard_artifacts, root)
    at = make_app("pages/3_Model_Evaluation.py")
    monkeypatch.setenv("NEUROSTACK_ARTIFACTS", str(root))
    at.run()
    assert any("No robustness run" in i.value for i in at.info)

    folder = root / "evaluation" / "robustness" / "classification"
    folder.mkdir(parents=True)
    pd.DataFrame([("none", 0, "ensemble", 0.95, 0.0), ("blur", 2, "ensemble", 0.6, 0.35)],
                 columns=["corruption", "severity", "model", "accuracy", "changed"]
                 ).assign(n=80).to_csv(folder / "summary.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps({
        "settings": {"per_class": 20},
        "corruptions": {"blur": {"description": "Gaussian blur, sigma 1 / 2 px"}}}))
    at = make_app("pages/3_Model_Evaluation.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert "Accuracy under acquisition shift" in chart_titles(at)
    table = next(d.value for d in at.dataframe if "condition" in d.value.columns)
    assert list(table["condition"]) == ["none", "blur 2"]
    assert table.loc[1, "final answer changed"] == 0.35
    assert any("80 test slices (20 per class" in c.value for c in at.caption)
    assert any("Gaussian blur, sigma 1 / 2 px" in c.value for c in at.caption)
    assert not any("Grey levels alone" in i.value for i in at.info)  # no shortcut record yet

    (root / "evaluation" / "classification" / "intensity_shortcut.json").write_text(json.dumps({
        "accuracy": 0.5, "balanced_accuracy": 0.48, "majority_baseline": 0.3, "n_score": 40,
        "score_part": "val", "median_relative_gamma": {"glioma": 1.2, "notumor": 0.7}}))
    at = make_app("pages/3_Model_Evaluation.py").run()
    assert not at.exception, [e.message for e in at.exception]
    note = next(i.value for i in at.info if "Grey levels alone" in i.value)
    assert "right on 50.0% of 40 val slices" in note and "glioma 1.20, notumor 0.70" in note
    check = next(i.value for i in at.info if i.value.startswith("**Input check**"))
    assert "those of 60 training slices" in check and "atypicality 100.000" in check
    assert not any("Correction of flagged" in c.value for c in at.caption)
    quality = next(i.value for i in at.info if i.value.startswith("**Noise and detail check**"))
    assert "those of 60 training slices" in quality
    assert not any("robustness run (`scripts/intensity_flags.py" in c.value for c in at.caption)
    (folder / "quality_flags.json").write_text(json.dumps({"check": "quality", "table": [
        {"corruption": "rician_noise", "severity": 2, "n": 20, "accuracy": 0.7,
         "flagged_share": 1.0, "accuracy_flagged": 0.7, "flagged_called_notumor": 0.55}]}))
    at = make_app("pages/3_Model_Evaluation.py").run()
    assert not at.exception, [e.message for e in at.exception]
    table = next(d.value for d in at.dataframe if "flagged_called_notumor" in d.value.columns)
    assert table.loc[0, "flagged_called_notumor"] == 0.55

    (root / "evaluation" / "classification" / "intensity_correction_val.json").write_text(
        json.dumps({"part": "val", "per_class": 5, "table": [
            {"corruption": "gamma_dark", "severity": 1, "n": 20, "accuracy": 0.8,
             "accuracy_as_given": 0.6, "flagged": 9, "accuracy_flagged_as_given": 0.5,
             "accuracy_flagged_decision": 0.9}]}))
    at = make_app("pages/3_Model_Evaluation.py").run()
    assert any(c.value.startswith("Correction of flagged slices (val, 5 per class")
               for c in at.caption)
    table = next(d.value for d in at.dataframe if "accuracy_as_given" in d.value.columns)
    assert table.loc[0, "flagged"] == 9 and table.loc[0, "accuracy_flagged_decision"] == 0.9


def test_review_section_scores_the_recorded_flag_on_the_run(make_app, dashboard_artifacts,
                                                             tmp_path, monkeypatch):
    import pandas as pd

    from neurostack.artifacts import sha256_file

    root = tmp_path / "art"
    shutil.copytree(dashboard_artifacts, root)
    monkeypatch.setenv("NEUROSTACK_ARTIFACTS", str(root))
    at = make_app("pages/3_Model_Evaluation.py").run()
    assert not at.exception, [e.message for e in at.exception]
    titles = chart_titles(at)
    assert sum(t.startswith("Risk–coverage") for t in titles) == 1
    assert any("No review-flag record" in c.value for c in at.caption)
    table = next(d.value for d in at.dataframe if "AURC" in d.value.columns)
    assert list(table["model"]) == MODELS

    predictions = pd.read_csv(root / "evaluation" / "classification" / "test"
                              / "predictions.csv")
    top = predictions[[c for c in predictions.columns if c.startswith("ensemble_")]].max(axis=1)
    threshold = float(top.median())  # roughly half the rows flagged
    sha = sha256_file(root / "classification" / "meta" / "weights.npz")
    (root / "classification" / "review.json").write_text(json.dumps({"meta_learners": {"meta": {
        "threshold": threshold, "meta_sha256": sha, "passes_rule": True,
        "validation": {"auroc": 0.9, "accuracy_flagged": 0.7, "accuracy_unflagged": 0.99}}}}))
    at = make_app("pages/3_Model_Evaluation.py").run()
    assert not at.exception, [e.message for e in at.exception]
    caption = next(c.value for c in at.caption if "flagged for review when" in c.value)
    n_flagged = int((top < threshold).sum())
    assert f"{n_flagged} of {len(predictions)} answers flagged" in caption
    assert "`meta` " in caption and "AUROC 0.900" in caption and "; used" in caption
    by_class = next(d.value for d in at.dataframe if "predicted class" in d.value.columns)
    assert by_class["flagged"].sum() == n_flagged and by_class["answers"].sum() == len(
        predictions)


def test_a_run_made_with_other_weights_is_flagged(make_app, dashboard_artifacts, tmp_path,
                                                 monkeypatch):
    root = tmp_path / "art"
    shutil.copytree(dashboard_artifacts / "evaluation", root / "evaluation")
    (root / "classification").symlink_to(dashboard_artifacts / "classification",
                                         target_is_directory=True)
    metrics = root / "evaluation" / "classification" / "test" / "metrics.json"
    record = json.loads(metrics.read_text())
    record["artifacts"]["xception"] = "0" * 64
    record["reused"] = {"from": "elsewhere", "members": ["vgg19"]}
    metrics.write_text(json.dumps(record))
    monkeypatch.setenv("NEUROSTACK_ARTIFACTS", str(root))
    at = make_app("pages/3_Model_Evaluation.py").run()
    assert not at.exception, [e.message for e in at.exception]
    warning = next(w.value for w in at.warning if "other weights than those shipped" in w.value)
    assert "(Xception)" in warning
    assert any(c.value.startswith("The probabilities of VGG19 were taken from an earlier run")
               for c in at.caption)


def test_a_run_made_with_the_shipped_weights_is_not_flagged(make_app):
    at = make_app("pages/3_Model_Evaluation.py").run()
    assert not any("other weights than those shipped" in w.value for w in at.warning)


def test_steps_after_the_logged_training_are_shown_with_the_refit_log(
        make_app, dashboard_artifacts, tmp_path, monkeypatch):
    root = tmp_path / "art"
    shutil.copytree(dashboard_artifacts, root, symlinks=True)
    folder = root / "classification" / "vgg19"
    config = json.loads((folder / "config.json").read_text())
    config.setdefault("training", {})["head_refit"] = {
        "n_train": 30, "n_holdout": 6, "best_epoch": 1, "holdout_accuracy": 0.5,
        "val_accuracy_shipped_head": 0.25, "val_accuracy_refitted_head": 0.375}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "head_refit_log.csv").write_text(
        "epoch,train_loss,train_accuracy,holdout_loss,holdout_accuracy\n"
        "0,,,1.4,0.25\n1,1.2,0.4,1.3,0.5\n")
    monkeypatch.setenv("NEUROSTACK_ARTIFACTS", str(root))
    at = make_app("pages/3_Model_Evaluation.py").run()
    assert not at.exception, [e.message for e in at.exception]
    text = " ".join(m.value for m in at.markdown)
    assert "**After this training**" in text
    assert "validation accuracy 0.250 -> 0.375" in text
    assert any(c.value.startswith("Validation curve here: the refit's own hold-out")
               for c in at.caption)
