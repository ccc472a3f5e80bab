from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dashboard import charts
from dashboard import evaluation as ev
from neurostack import CLASS_NAMES


def _title(fig) -> str:
    return fig.layout.title.text


def _evaluation() -> ev.ModelEvaluation:
    rng = np.random.default_rng(1)
    rows = []
    for k, cls in enumerate(CLASS_NAMES):
        for _ in range(6):
            p = rng.dirichlet(np.ones(4)) * 0.5
            p[k] += 0.5
            rows.append({"label": cls, **{f"vgg19_{c}": v for c, v in zip(CLASS_NAMES, p,
                                                                          strict=True)}})
    return ev.evaluate_model(pd.DataFrame(rows), "vgg19")


def test_probability_bars_groups_models_and_ensemble():
    per_model = {m: dict.fromkeys(CLASS_NAMES, 0.25) for m in ("xception", "vgg19")}
    fig = charts.probability_bars(per_model, dict.fromkeys(CLASS_NAMES, 0.25))
    assert fig.layout.barmode == "group"
    assert [t.name for t in fig.data] == ["Xception", "VGG19", "Meta-learner (ensemble)"]
    assert all(list(t.x) == list(CLASS_NAMES) for t in fig.data)


def test_evaluation_figures_are_titled_per_model():
    e = _evaluation()
    counts = charts.confusion_heatmap(e.confusion, "vgg19")
    assert _title(counts) == "Confusion matrix (counts) — VGG19"
    norm = charts.confusion_heatmap(e.confusion_normalised, "vgg19", normalised=True)
    assert _title(norm) == "Confusion matrix (row-normalised) — VGG19"
    assert norm.data[0].text[0][0].endswith("%")
    roc = charts.roc_figure(e)
    assert _title(roc) == "ROC curves (one-vs-rest) — VGG19"
    assert any(t.name.startswith("macro average (AUC") for t in roc.data)
    assert len(charts.pr_figure(e).data) == 4
    rel = charts.reliability_figure(e)
    assert _title(rel).startswith("Reliability diagram — VGG19 (ECE ")


def test_training_curves_mark_phase_changes():
    log = pd.DataFrame({"epoch": [0, 1, 2, 3], "phase": ["head", "head", "fine", "fine"],
                        "accuracy": [0.5, 0.6, 0.7, 0.8], "val_accuracy": [0.4, 0.5, 0.6, 0.7],
                        "loss": [1.0, 0.8, 0.6, 0.5], "val_loss": [1.1, 0.9, 0.7, 0.6]})
    fig = charts.training_curves(log, "t", [("Accuracy", "accuracy", "val_accuracy"),
                                            ("Loss", "loss", "val_loss")])
    assert len(fig.data) == 4
    assert len(fig.layout.shapes) == 2  # one phase change, drawn in both panels
    assert sum(bool(t.showlegend) for t in fig.data) == 2


def test_segmentation_and_batch_figures():
    df = pd.DataFrame({"dice": [0.2, 0.8, 0.9], "iou": [0.1, 0.7, 0.8],
                       "label": ["glioma", "glioma", "pituitary"]})
    assert _title(charts.score_histograms(df)).startswith("Score distributions over 3")
    assert len(charts.scores_by_class(df).data) == 4
    counts = charts.class_counts(pd.Series(["glioma", "glioma", "notumor"]))
    assert list(counts.data[0].x) == list(CLASS_NAMES)
    assert list(counts.data[0].y) == [2, 0, 1, 0]
    area = charts.area_histogram(pd.Series([1.0, 2.0]), "cm²", pd.Series(["glioma", "pituitary"]))
    assert len(area.data) == 2
    cases = pd.DataFrame({"a": [1, 2], "b": [3, 4], "predicted_class": ["glioma", "notumor"]})
    assert len(charts.feature_scatter(cases, "a", "b", "predicted_class").data) == 2
    assert len(charts.feature_scatter(cases, "a", "b", None).data) == 1
    assert len(charts.feature_box(cases, "a", "predicted_class").data) == 2


def test_threshold_sweep_figure_has_a_line_per_class_and_marks_the_operating_point():
    sweep = pd.DataFrame({"threshold": [0.3, 0.5], "n_images": [3, 3],
                          "mean_dice": [0.5, 0.4], "median_dice": [0.4, 0.1],
                          "mean_dice_glioma": [0.3, 0.1], "mean_dice_pituitary": [0.9, 1.0]})
    fig = charts.threshold_sweep(sweep, chosen=0.3)
    assert [t.name for t in fig.data] == ["all images", "glioma", "pituitary"]
    assert list(fig.data[1].y) == [0.3, 0.1]
    assert len(fig.layout.shapes) == 1 and fig.layout.shapes[0].x0 == 0.3
    assert len(charts.threshold_sweep(sweep).layout.shapes) == 0


def test_threshold_sweep_with_postprocessing_draws_the_chosen_mode_and_the_other_dashed():
    sweep = pd.DataFrame({"postprocess": ["largest_component"] * 2 + ["none"] * 2,
                          "threshold": [0.3, 0.5] * 2, "n_images": [3] * 4,
                          "mean_dice": [0.6, 0.5, 0.5, 0.4],
                          "mean_dice_glioma": [0.4, 0.2, 0.3, 0.1]})
    fig = charts.threshold_sweep(sweep, chosen=0.3, postprocess="largest_component")
    assert [t.name for t in fig.data] == ["all images, post-processing none", "all images",
                                          "glioma"]
    assert list(fig.data[0].y) == [0.5, 0.4] and fig.data[0].line.dash == "dash"
    assert list(fig.data[1].y) == [0.6, 0.5] and list(fig.data[2].y) == [0.4, 0.2]
    plain = charts.threshold_sweep(sweep)  # no mode given: "none" is the solid line
    assert list(plain.data[1].y) == [0.5, 0.4]


def test_comparison_bars_draw_intervals_only_where_given():
    table = pd.DataFrame({"model": ["A", "B"], "accuracy": [0.9, 0.8], "macro F1": [0.85, 0.7],
                          "lo": [0.88, 0.75], "hi": [0.93, 0.84]})
    fig = charts.comparison_bars(table, ["accuracy", "macro F1"], {"accuracy": ("lo", "hi")})
    a = fig.data[0]
    assert list(a.y) == [0.9, 0.85]
    assert list(a.error_y.array) == [pytest.approx(0.03), None]
    assert list(a.error_y.arrayminus) == [pytest.approx(0.02), None]
    assert charts.comparison_bars(table, ["accuracy"]).data[1].error_y.array is None


def test_robustness_figure_has_a_panel_per_corruption_starting_from_clean():
    rows = [("none", 0, "resnet50", 0.9), ("none", 0, "ensemble", 0.95),
            ("blur", 1, "resnet50", 0.85), ("blur", 2, "resnet50", 0.5),
            ("blur", 1, "ensemble", 0.9), ("blur", 2, "ensemble", 0.6),
            ("rotation", 1, "resnet50", 0.9), ("rotation", 2, "resnet50", 0.8),
            ("rotation", 1, "ensemble", 0.95), ("rotation", 2, "ensemble", 0.9)]
    summary = pd.DataFrame(rows, columns=["corruption", "severity", "model", "accuracy"])
    fig = charts.robustness_figure(summary)
    assert [a.text for a in fig.layout.annotations] == ["blur", "rotation"]
    assert len(fig.data) == 4  # 2 models x 2 panels
    blur_resnet = next(t for t in fig.data if t.name == "ResNet50" and t.xaxis == "x")
    assert list(blur_resnet.x) == [0, 1, 2] and list(blur_resnet.y) == [0.9, 0.85, 0.5]
    assert sum(t.showlegend for t in fig.data) == 2  # one legend entry per model


def test_confidence_scatter_leaves_out_slices_without_an_outline():
    df = pd.DataFrame({"label": ["glioma", "glioma", "pituitary"],
                       "dice": [0.2, 0.9, 0.8], "outline_confidence": [0.5, 0.95, None]})
    fig = charts.confidence_scatter(df, 0.8)
    points = sum(len(t.x) for t in fig.data)
    assert points == 2 and [t.name for t in fig.data] == ["glioma"]
    assert fig.layout.shapes[0].x0 == 0.8
    assert len(charts.confidence_scatter(df).layout.shapes) == 0


def test_risk_coverage_figure_one_line_per_model_and_the_flag_marker():
    curves = pd.DataFrame({"model": ["resnet50", "resnet50", "ensemble", "ensemble"],
                           "coverage": [0.5, 1.0, 0.5, 1.0], "accuracy": [1.0, 0.9, 1.0, 0.95],
                           "threshold": [0.9, 0.4, 0.95, 0.5]})
    fig = charts.risk_coverage_figure(curves, (0.8, 0.99, "12 flagged for review"))
    names = [t.name for t in fig.data]
    assert names == ["ResNet50", "Meta-learner (ensemble)", "review flag"]
    assert list(fig.data[1].y) == [1.0, 0.95] and fig.data[1].line.width == 3
    assert list(fig.data[2].text) == ["12 flagged for review"]
    assert fig.layout.title.text.startswith("Risk–coverage")
    assert len(charts.risk_coverage_figure(curves).data) == 2
