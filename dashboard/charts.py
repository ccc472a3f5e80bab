"""Plotly figure builders for the dashboard (pure: data in, figure out, no Streamlit)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.evaluation import ModelEvaluation, model_label
from neurostack import CLASS_NAMES

CLASS_COLOURS: dict[str, str] = {
    "glioma": "#d62728",
    "meningioma": "#1f77b4",
    "notumor": "#7f7f7f",
    "pituitary": "#9467bd",
    "unknown": "#bcbd22",
    "macro": "#000000",
}
MODEL_COLOURS: dict[str, str] = {
    "xception": "#8fb8de",
    "inceptionv3": "#f4b183",
    "resnet50": "#a9d18e",
    "vgg19": "#c9a0dc",
    "ensemble": "#1f3b73",
}
_LAYOUT = {"margin": {"l": 10, "r": 10, "t": 50, "b": 10}, "template": "plotly_white"}


def _finish(fig: go.Figure, title: str, height: int = 380) -> go.Figure:
    fig.update_layout(title={"text": title, "x": 0.0, "xanchor": "left"}, height=height, **_LAYOUT)
    return fig


# --------------------------------------------------------------- case explorer
def probability_bars(
    per_model: Mapping[str, Mapping[str, float]],
    ensemble: Mapping[str, float],
    *,
    ensemble_label: str = "Meta-learner (ensemble)",
) -> go.Figure:
    """Draw each base model's class probabilities next to the final ensemble's (grouped)."""
    fig = go.Figure()
    classes = list(CLASS_NAMES)
    for name, probs in per_model.items():
        fig.add_bar(name=model_label(name), x=classes, y=[probs[c] for c in classes],
                    marker_color=MODEL_COLOURS.get(name),
                    hovertemplate="%{x}: %{y:.3f}<extra>" + model_label(name) + "</extra>")
    fig.add_bar(name=ensemble_label, x=classes, y=[ensemble[c] for c in classes],
                marker_color=MODEL_COLOURS["ensemble"],
                text=[f"{ensemble[c]:.2f}" for c in classes], textposition="outside",
                hovertemplate="%{x}: %{y:.3f}<extra>" + ensemble_label + "</extra>")
    fig.update_layout(barmode="group", yaxis={"range": [0, 1.08], "title": "probability"},
                      legend={"orientation": "h", "y": -0.15})
    return _finish(fig, f"Class probabilities: base models vs {ensemble_label}", height=400)


# ---------------------------------------------------------------- evaluation
def confusion_heatmap(cm: np.ndarray, model: str, *, normalised: bool = False) -> go.Figure:
    """Confusion matrix heatmap (rows = true class, columns = predicted class)."""
    cm = np.asarray(cm, dtype=np.float64)
    classes = list(CLASS_NAMES)
    text = [[f"{v:.0%}" if normalised else f"{int(v)}" for v in row] for row in cm]
    fig = go.Figure(go.Heatmap(
        z=cm, x=classes, y=classes, text=text, texttemplate="%{text}",
        colorscale="Blues", zmin=0, zmax=1 if normalised else None, showscale=False,
        hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed", title="true class")
    fig.update_xaxes(title="predicted class", side="bottom")
    kind = "row-normalised" if normalised else "counts"
    return _finish(fig, f"Confusion matrix ({kind}) — {model_label(model)}", height=360)


def roc_figure(ev: ModelEvaluation) -> go.Figure:
    """One-vs-rest ROC curves per class with AUC, the macro average and the chance line."""
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance",
                    line={"dash": "dot", "color": "#aaaaaa"}, hoverinfo="skip")
    for cls, curve in ev.roc.items():
        is_macro = cls == "macro"
        label = "macro average" if is_macro else cls
        score = "n/a" if curve.score is None else f"{curve.score:.3f}"
        fig.add_scatter(x=curve.x, y=curve.y, mode="lines", name=f"{label} (AUC {score})",
                        line={"color": CLASS_COLOURS.get(cls), "dash": "dash" if is_macro else None,
                              "width": 3 if is_macro else 2})
    fig.update_xaxes(title="false positive rate", range=[0, 1])
    fig.update_yaxes(title="true positive rate", range=[0, 1.02])
    fig.update_layout(legend={"x": 0.45, "y": 0.05, "bgcolor": "rgba(255,255,255,0.7)"})
    return _finish(fig, f"ROC curves (one-vs-rest) — {model_label(ev.name)}")


def pr_figure(ev: ModelEvaluation) -> go.Figure:
    """Precision-recall curves per class with average precision."""
    fig = go.Figure()
    for cls, curve in ev.pr.items():
        score = "n/a" if curve.score is None else f"{curve.score:.3f}"
        fig.add_scatter(x=curve.x, y=curve.y, mode="lines", name=f"{cls} (AP {score})",
                        line={"color": CLASS_COLOURS.get(cls), "shape": "hv"})
    fig.update_xaxes(title="recall", range=[0, 1])
    fig.update_yaxes(title="precision", range=[0, 1.02])
    fig.update_layout(legend={"x": 0.02, "y": 0.05, "bgcolor": "rgba(255,255,255,0.7)"})
    return _finish(fig, f"Precision-recall curves — {model_label(ev.name)}")


def reliability_figure(ev: ModelEvaluation) -> go.Figure:
    """Reliability diagram (accuracy vs confidence per bin) with bin counts below; ECE in title."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.72, 0.28],
                        vertical_spacing=0.06)
    bins = ev.reliability
    centres = [(b["lo"] + b["hi"]) / 2 for b in bins]
    width = (bins[0]["hi"] - bins[0]["lo"]) * 0.9 if bins else 0.1
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                    line={"dash": "dot", "color": "#aaaaaa"}, row=1, col=1)
    fig.add_bar(x=centres, y=[b["accuracy"] for b in bins], width=width, name="accuracy",
                marker_color=MODEL_COLOURS["ensemble"], opacity=0.8, row=1, col=1,
                hovertemplate="confidence bin %{x:.2f}<br>accuracy %{y:.3f}<extra></extra>")
    fig.add_scatter(x=centres, y=[b["confidence"] for b in bins], mode="markers",
                    name="mean confidence", marker={"color": "#d62728", "size": 8}, row=1, col=1)
    fig.add_bar(x=centres, y=[b["count"] for b in bins], width=width, name="images",
                marker_color="#999999", row=2, col=1, showlegend=False,
                hovertemplate="confidence bin %{x:.2f}<br>%{y} images<extra></extra>")
    fig.update_xaxes(range=[0, 1], row=1, col=1)
    fig.update_xaxes(range=[0, 1], title="confidence (top-class probability)", row=2, col=1)
    fig.update_yaxes(range=[0, 1.02], title="accuracy", row=1, col=1)
    fig.update_yaxes(title="images", row=2, col=1)
    fig.update_layout(legend={"x": 0.01, "y": 0.99, "bgcolor": "rgba(255,255,255,0.7)"})
    title = f"Reliability diagram — {model_label(ev.name)} (ECE {ev.ece:.3f})"
    return _finish(fig, title, height=420)


def risk_coverage_figure(curves: pd.DataFrame,
                         flag: tuple[float, float, str] | None = None) -> go.Figure:
    """Accuracy of the answers kept against the share kept, one line per model.

    Args:
        curves: :func:`dashboard.evaluation.risk_coverage_long` output.
        flag: ``(coverage, accuracy, label)`` of the ensemble at its review flag.
    """
    fig = go.Figure()
    for name, part in curves.groupby("model", sort=False):
        fig.add_scatter(x=part["coverage"], y=part["accuracy"], mode="lines",
                        name=model_label(str(name)),
                        line={"color": MODEL_COLOURS.get(str(name)),
                              "width": 3 if name == "ensemble" else 1.5},
                        customdata=part["threshold"],
                        hovertemplate="kept %{x:.1%} (top probability ≥ %{customdata:.3f}): "
                                      "accuracy %{y:.3f}<extra></extra>")
    if flag is not None:
        fig.add_scatter(x=[flag[0]], y=[flag[1]], mode="markers+text", name="review flag",
                        marker={"size": 12, "color": "#d62728", "symbol": "diamond"},
                        text=[flag[2]], textposition="bottom left")
    fig.update_xaxes(title="coverage: share of slices answered (most confident first)",
                     range=[0, 1.02])
    fig.update_yaxes(title="accuracy of the answered slices")
    return _finish(fig, "Risk–coverage: accuracy when the least confident answers are "
                        "sent for review", height=420)


def comparison_bars(table: pd.DataFrame, metrics: Sequence[str],
                    intervals: dict[str, tuple[str, str]] | None = None) -> go.Figure:
    """Draw grouped bars of headline metrics, one group per metric, one bar per model.

    ``intervals`` maps a metric to its ``(low, high)`` columns, drawn as error bars.
    """
    fig = go.Figure()
    intervals = intervals or {}
    for _, row in table.iterrows():
        values = [row[m] for m in metrics]
        error = None
        if intervals:
            # None: no error bar at all (a zero-length one would still draw its caps)
            up = [row[intervals[m][1]] - v if m in intervals else None
                  for m, v in zip(metrics, values, strict=True)]
            down = [v - row[intervals[m][0]] if m in intervals else None
                    for m, v in zip(metrics, values, strict=True)]
            error = {"type": "data", "symmetric": False, "array": up, "arrayminus": down}
        fig.add_bar(name=row["model"], x=list(metrics), y=values, error_y=error)
    fig.update_layout(barmode="group", yaxis={"range": [0, 1.05]},
                      legend={"orientation": "h", "y": -0.2})
    return _finish(fig, "Model comparison", height=360)


def robustness_figure(summary: pd.DataFrame, *, value: str = "accuracy", series: str = "model",
                      title: str = "Accuracy under acquisition shift") -> go.Figure:
    """Draw a score against severity (0 = clean), one panel per corruption, one line per series.

    Args:
        summary: Long table with ``corruption``, ``severity``, ``series`` and ``value``
            columns (``summary.csv`` of ``ensemble.robustness`` with the defaults).
        value: Column plotted on the y axis (a score in ``[0, 1]``).
        series: Column naming the lines (models, or tumour classes).
        title: Figure title.
    """
    clean = summary[summary["corruption"] == "none"].set_index(series)[value]
    names = sorted(set(summary["corruption"]) - {"none"})
    cols = min(4, max(1, len(names)))
    rows = -(-len(names) // cols) if names else 1
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[n.replace("_", " ") for n in names],
                        shared_yaxes=True)
    colours = {**CLASS_COLOURS, "all": "#000000", **MODEL_COLOURS}
    present = list(dict.fromkeys(summary[series]))
    lines = [m for m in colours if m in present] + [m for m in present if m not in colours]
    bold = {"ensemble", "all"}
    for i, name in enumerate(names):
        part = summary[summary["corruption"] == name]
        for key in lines:
            line = part[part[series] == key].sort_values("severity")
            fig.add_scatter(x=[0, *line["severity"].tolist()],
                            y=[clean.get(key, np.nan), *line[value].tolist()],
                            mode="lines+markers", name=model_label(key), legendgroup=key,
                            showlegend=i == 0,
                            line={"color": colours.get(key), "width": 4 if key in bold else 2},
                            row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(tickvals=[0, 1, 2], title_text="severity")
    fig.update_yaxes(range=[0, 1.02])
    fig.update_layout(legend={"orientation": "h", "y": -0.15})
    return _finish(fig, title, height=260 * rows + 80)


def training_curves(
    log: pd.DataFrame, title: str, panels: Sequence[tuple[str, str, str]]
) -> go.Figure:
    """Per-epoch curves; ``panels`` = ``(panel title, train column, val column)``.

    Phase changes (classification logs have a ``phase`` column) are marked with
    dotted vertical lines.
    """
    panels = [p for p in panels if p[1] in log.columns or p[2] in log.columns]
    fig = make_subplots(rows=1, cols=max(1, len(panels)),
                        subplot_titles=[p[0] for p in panels] or [""])
    styles = (("train", "#1f77b4", None), ("validation", "#ff7f0e", "dash"))
    for i, (_, train_col, val_col) in enumerate(panels, start=1):
        for col, (name, colour, dash) in zip((train_col, val_col), styles, strict=True):
            if col in log.columns:
                fig.add_scatter(x=log["epoch"], y=log[col], mode="lines+markers", name=name,
                                legendgroup=name, showlegend=i == 1,
                                line={"dash": dash, "color": colour}, row=1, col=i)
        if "phase" in log.columns:
            keys = ["phase"] + (["image_size"] if "image_size" in log.columns else [])
            changes = log.index[log[keys].ne(log[keys].shift()).any(axis=1)][1:]
            for idx in changes:
                fig.add_vline(x=float(log.loc[idx, "epoch"]) - 0.5, line_dash="dot",
                              line_color="#888888", row=1, col=i)
    fig.update_xaxes(title="epoch")
    fig.update_layout(legend={"orientation": "h", "y": -0.25})
    return _finish(fig, title, height=360)


# ----------------------------------------------------------- segmentation
def score_histograms(df: pd.DataFrame) -> go.Figure:
    """Dice and IoU histograms over all images."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["Dice", "IoU"])
    for i, col in enumerate(("dice", "iou"), start=1):
        fig.add_histogram(x=df[col], xbins={"start": 0, "end": 1.0001, "size": 0.05},
                          name=col, marker_color="#1f77b4" if i == 1 else "#ff7f0e",
                          row=1, col=i, showlegend=False)
        fig.update_xaxes(range=[0, 1], title=col, row=1, col=i)
    fig.update_yaxes(title="images", row=1, col=1)
    return _finish(fig, f"Score distributions over {len(df)} held-out images", height=340)


def scores_by_class(df: pd.DataFrame) -> go.Figure:
    """Box plots (with points) of Dice and IoU by tumour class."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["Dice by class", "IoU by class"])
    for i, col in enumerate(("dice", "iou"), start=1):
        for label, part in df.groupby("label", sort=True):
            fig.add_box(y=part[col], name=str(label), boxpoints="all", jitter=0.4, pointpos=0,
                        marker_color=CLASS_COLOURS.get(str(label)), row=1, col=i,
                        showlegend=False)
        fig.update_yaxes(range=[0, 1.02], title=col, row=1, col=i)
    return _finish(fig, "Scores by tumour class", height=360)


def threshold_sweep(
    sweep: pd.DataFrame, chosen: float | None = None, postprocess: str | None = None
) -> go.Figure:
    """Mean Dice against the mask threshold, overall and per class (``threshold_sweep.csv``).

    A sweep with a ``postprocess`` column is drawn for the mode ``postprocess``
    (default ``"none"``) with the per-class lines; every other mode adds one dashed
    line over all images, so the effect of the post-processing can be read off.
    """
    fig = go.Figure()
    if "postprocess" in sweep:
        mode = postprocess or "none"
        for other, part in sweep[sweep["postprocess"] != mode].groupby("postprocess"):
            fig.add_scatter(x=part["threshold"], y=part["mean_dice"], mode="lines+markers",
                            name=f"all images, post-processing {other}",
                            line={"color": "#888888", "dash": "dash"})
        sweep = sweep[sweep["postprocess"] == mode]
    fig.add_scatter(x=sweep["threshold"], y=sweep["mean_dice"], mode="lines+markers",
                    name="all images", line={"color": "#333333", "width": 3})
    for col in [c for c in sweep.columns if c.startswith("mean_dice_")]:
        label = col.removeprefix("mean_dice_")
        fig.add_scatter(x=sweep["threshold"], y=sweep[col], mode="lines+markers", name=label,
                        line={"color": CLASS_COLOURS.get(label)})
    if chosen is not None:
        fig.add_vline(x=chosen, line_dash="dash", line_color="#2ca02c",
                      annotation_text=f"operating point {chosen:g}")
    fig.update_xaxes(title="mask threshold")
    fig.update_yaxes(title="mean Dice", range=[0, 1.02])
    return _finish(fig, "Mean Dice by mask threshold (same probabilities)", height=360)


def confidence_scatter(df: pd.DataFrame, flag_threshold: float | None = None) -> go.Figure:
    """Each slice's Dice against its outline confidence, by class (``per_image.csv``).

    Slices without an outline (no confidence) are left out; ``flag_threshold`` draws the
    recorded flag as a vertical line.
    """
    shown = df.dropna(subset=["outline_confidence"])
    fig = go.Figure()
    groups = shown.groupby("label") if "label" in shown else [("all images", shown)]
    for label, part in groups:
        fig.add_scatter(x=part["outline_confidence"], y=part["dice"], mode="markers",
                        name=str(label), marker={"color": CLASS_COLOURS.get(str(label)),
                                                 "size": 6, "opacity": 0.7})
    if flag_threshold is not None:
        fig.add_vline(x=flag_threshold, line_dash="dash", line_color="#d62728",
                      annotation_text=f"flag below {flag_threshold:g}")
    fig.update_xaxes(title="outline confidence (mean probability inside the outline)",
                     range=[0, 1.02])
    fig.update_yaxes(title="Dice", range=[-0.02, 1.02])
    return _finish(fig, "Dice by outline confidence", height=380)


# -------------------------------------------------------------- batch / cases
def class_counts(series: pd.Series, title: str = "Predicted classes") -> go.Figure:
    """Bar chart of how many images fall in each class."""
    counts = series.value_counts().reindex(
        [*CLASS_NAMES, *sorted(set(series.dropna()) - set(CLASS_NAMES))], fill_value=0
    )
    fig = go.Figure(go.Bar(x=list(counts.index), y=counts.to_numpy(),
                           marker_color=[CLASS_COLOURS.get(str(c), "#1f77b4")
                                         for c in counts.index],
                           text=counts.to_numpy(), textposition="outside"))
    fig.update_yaxes(title="images")
    return _finish(fig, title, height=340)


def area_histogram(values: pd.Series, unit: str, by: pd.Series | None = None) -> go.Figure:
    """Histogram of tumour areas (coloured by class when ``by`` is given)."""
    fig = go.Figure()
    if by is None:
        fig.add_histogram(x=values, marker_color="#1f77b4", name="area", nbinsx=30)
    else:
        for label in sorted(set(by.dropna())):
            fig.add_histogram(x=values[by == label], name=str(label), opacity=0.75, nbinsx=30,
                              marker_color=CLASS_COLOURS.get(str(label)))
        fig.update_layout(showlegend=True)
        fig.update_layout(barmode="overlay")
    fig.update_xaxes(title=f"tumour area ({unit})")
    fig.update_yaxes(title="images")
    return _finish(fig, "Tumour area distribution", height=340)


def feature_scatter(df: pd.DataFrame, x: str, y: str, colour: str | None) -> go.Figure:
    """Scatter plot of two features, one trace per value of ``colour``."""
    fig = go.Figure()
    groups = [(None, df)] if colour is None else list(df.groupby(colour, sort=True))
    for label, part in groups:
        fig.add_scatter(x=part[x], y=part[y], mode="markers",
                        name="cases" if label is None else str(label),
                        marker={"size": 9, "opacity": 0.8,
                                "color": CLASS_COLOURS.get(str(label)) if label else None})
    fig.update_layout(showlegend=colour is not None)
    fig.update_xaxes(title=x)
    fig.update_yaxes(title=y)
    return _finish(fig, f"{y} vs {x}", height=420)


def feature_box(df: pd.DataFrame, feature: str, by: str) -> go.Figure:
    """Box plot (with points) of one feature by a categorical column."""
    fig = go.Figure()
    for label, part in df.groupby(by, sort=True):
        fig.add_box(y=part[feature], name=str(label), boxpoints="all", jitter=0.4, pointpos=0,
                    marker_color=CLASS_COLOURS.get(str(label)))
    fig.update_yaxes(title=feature)
    fig.update_layout(showlegend=False)
    return _finish(fig, f"{feature} by {by}", height=420)
