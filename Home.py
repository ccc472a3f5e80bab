"""NeuroStack dashboard — home page: what the tool is, which models are loaded, how well they do."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import cache, components, paths, tables
from dashboard.evaluation import BASE_MODELS, evaluation_provenance, model_label
from ensemble.intensity import describe_reference
from ensemble.quality import describe_reference as describe_quality

components.page_setup("Home", ":material/neurology:")

st.title(":material/neurology: NeuroStack")
st.markdown(
    "#### Brain MRI slice analysis: tumour classification, segmentation and morphometry"
)
components.research_notice()

left, right = st.columns([3, 2])
with left:
    st.markdown(
        """
**What it does.** For one axial MRI slice (PNG, JPEG, TIFF, BMP or DICOM) NeuroStack

1. classifies it as **glioma, meningioma, pituitary tumour or no tumour** with four
   CNN backbones (Xception, InceptionV3, ResNet50, VGG19; trained from scratch on brain
   MRI, no ImageNet weights) stacked by a meta-learner;
2. segments the tumour with a **Res-UNet** and overlays it in green;
3. measures the mask — area, perimeter, axes, Feret diameter, shape and intensity — in
   cm when the pixel spacing is known (DICOM, user-entered or a labelled assumption),
   otherwise in pixels;
4. explains each base model with **Grad-CAM** heatmaps.
"""
    )
with right:
    st.markdown(
        """
**Who it is for**

- **Radiologists / clinicians-in-research** — inspect single cases in *Case Explorer*.
- **Analysts** — run folders or ZIPs in *Batch Analysis*; query and export the
  feature table in *Cases & Features*.
- **Thesis examiners** — audit the models in *Model Evaluation* and
  *Segmentation Quality*; every number there is computed from the stored records.
"""
    )

st.subheader("Pages")
link_cols = st.columns(3)
for i, (page, label, icon, help_text) in enumerate(components.PAGES):
    with link_cols[i % 3], st.container(border=True):
        st.page_link(page, label=label, icon=icon)
        st.caption(help_text)

# ------------------------------------------------------------------ models
st.subheader("Loaded models")
st.caption(f"Artifacts: `{paths.artifacts_root()}`")
pipeline_error = None
try:
    pipeline = cache.get_pipeline()
except Exception as exc:  # noqa: BLE001 - shown to the user, the page keeps working
    pipeline, pipeline_error = None, exc

cls_runs = cache.classification_runs()
cls_metrics = (cache.json_record(paths.classification_eval_dir() / cls_runs[0] / "metrics.json")
               if cls_runs else None)
eval_models = (cls_metrics or {}).get("models", {})

if pipeline_error is not None:
    st.error(f"The models could not be loaded: {pipeline_error}")
    expected = [(model_label(m), paths.classifier_dir(m)) for m in (*BASE_MODELS, "meta")]
    expected.append((model_label("resunet"), paths.segmenter_dir()))
    st.markdown("**Expected artifacts**\n" + "\n".join(
        f"- {label}: `{folder}` — "
        + ("present" if (folder / "config.json").is_file() else "**missing**")
        for label, folder in expected))
if pipeline is not None:
    rows = []
    tiny = False
    for name, info in pipeline.model_info.items():
        folder = Path(info["folder"]) if info.get("folder") else (
            paths.segmenter_dir() if name == "resunet" else paths.classifier_dir(name))
        config = cache.json_record(folder / "config.json") or {}
        training = config.get("training") or {}
        tiny = tiny or bool(training.get("tiny_test_artifact") or config.get("tiny_test_artifact"))
        role = {"meta": "meta-learner (stacking)", "resunet": "segmentation",
                "meta_single_crop": "meta-learner of the cascade's single-crop pass"}.get(
            name, "base classifier")
        test_key = "ensemble" if name == "meta" else name
        test = eval_models.get(test_key, {})
        rows.append({
            "model": model_label(name) + (f" (ensemble of {len(config['members'])})"
                                          if config.get("members") else ""),
            "role": role,
            "input size": info.get("input_size"),
            "runs in": {"litert": "LiteRT (XNNPACK)", "tensorflow": "TensorFlow"}.get(
                info.get("runtime", "tensorflow"))
            + (", bfloat16" if info.get("precision") == "bfloat16" else "")
            + (f" (single crops: {info['precision_single_crop']})"
               if info.get("precision_single_crop", info.get("precision")) != info.get("precision")
               else ""),
            "weights sha256": tables.sha_prefix(info.get("sha256")),
            "checksum": "verified at load",
            "test accuracy": test.get("accuracy"),
            "test macro F1": test.get("macro_f1"),
            "epochs": next(
                (v for v in (training.get("epochs_run_total"), training.get("epochs_run"),
                             config.get("epochs_completed_total"),
                             config.get("epochs_completed")) if v is not None), None),
        })
    st.dataframe(rows, hide_index=True, width="stretch", column_config={
        "test accuracy": st.column_config.NumberColumn(format="%.3f"),
        "test macro F1": st.column_config.NumberColumn(format="%.3f"),
        "epochs": st.column_config.NumberColumn(
            help="Training epochs over every run the shipped weights continued"),
    })
    if cls_metrics:
        stale, _ = evaluation_provenance(cls_metrics, cache.shipped_weights())
        if stale:
            st.warning(f"The test figures (run `{cls_runs[0]}`) were measured with other weights "
                       "than those shipped now (" + ", ".join(model_label(m) for m in stale)
                       + "); rerun `python -m ensemble.evaluate`.", icon=":material/history:")
        else:
            st.caption(f"Test figures from run `{cls_runs[0]}`, measured with the shipped "
                       "weights (SHA-256 recorded in the run).")
    note = getattr(pipeline.ensemble, "precision_note", "")
    st.caption(f"Final decision: {pipeline.ensemble.method}. Each weight file's SHA-256 is "
               "checked against its config.json before the model is built."
               + (f" Base classifiers' precision: {note}." if note else ""))
    if pipeline.intensity is not None:
        st.caption("**Input check.** " + describe_reference(pipeline.intensity.config)
                   + " A flagged slice is classified, outlined and measured as a copy with its "
                   "grey levels mapped to the training curve; the answer on the slice as given "
                   "is shown beside it.")
    if pipeline.quality is not None:
        st.caption("**Noise and detail check.** " + describe_quality(pipeline.quality.config)
                   + " A flagged slice is analysed as given, with a warning.")
    if tiny:
        st.error("These are **tiny, randomly initialised test artifacts**: every prediction "
                 "is meaningless. Point NEUROSTACK_ARTIFACTS at the trained models.",
                 icon=":material/science:")
    components.missing_artifacts(pipeline)
    if st.button("Re-check checksums now", key="home_recheck",
                 help="Hash every weight file on disk again"):
        checks = [{"model": model_label(row["model"]),
                   "status": ("MISMATCH — restart after restoring the artifact"
                              if row["status"] == "MISMATCH" else row["status"]),
                   "file": row["weights_file"]}
                  for row in pipeline.verify_weights()]
        st.dataframe(checks, hide_index=True)

# ----------------------------------------------------------------- metrics
st.subheader("Headline test metrics")
metric_cols = st.columns(2)
with metric_cols[0]:
    ens = eval_models.get("ensemble")
    if ens:
        st.markdown(f"**Classification — meta-learner** (run `{cls_runs[0]}`, "
                    f"{cls_metrics.get('n_images', '?')} held-out images)")
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("Accuracy", f"{ens['accuracy']:.3f}")
        c2.metric("Macro F1", f"{ens['macro_f1']:.3f}")
        auc_macro = (ens.get("roc_auc") or {}).get("macro")
        c3.metric("Macro ROC AUC", "—" if auc_macro is None else f"{auc_macro:.3f}")
        c4.metric("ECE", f"{ens['ece']:.3f}")
    else:
        st.info("No classification evaluation record found under "
                f"`{paths.classification_eval_dir()}`.")
with metric_cols[1]:
    seg_runs = cache.segmentation_runs()
    seg = (cache.json_record(paths.segmentation_eval_dir() / seg_runs[0] / "metrics.json")
           if seg_runs else None)
    if seg and seg.get("mean_dice") is not None:
        st.markdown(f"**Segmentation — Res-UNet** (run `{seg_runs[0]}`, "
                    f"{seg.get('n_images', '?')} held-out images)")
        c1, c2, c3 = st.columns(3)
        c1.metric("Mean Dice", f"{seg['mean_dice']:.3f}")
        c2.metric("Median Dice", f"{seg['median_dice']:.3f}")
        c3.metric("Mean IoU", f"{seg['mean_iou']:.3f}" if seg.get("mean_iou") is not None else "—")
        if seg.get("mean_dice_ci95"):
            st.caption("Mean Dice 95 % interval {:.3f}–{:.3f}, resampling the {} patients."
                       .format(*seg["mean_dice_ci95"], seg.get("n_patients", "?")))
    else:
        st.info("No segmentation evaluation record found under "
                f"`{paths.segmentation_eval_dir()}`.")

missing_records = []
if not cls_runs:
    missing_records.append(f"`{paths.classification_eval_dir()}/<run>/predictions.csv`")
if not seg_runs:
    missing_records.append(f"`{paths.segmentation_eval_dir()}/<run>/per_image.csv`")
if missing_records:
    st.warning("**Missing evaluation records:** " + ", ".join(missing_records),
               icon=":material/extension_off:")

st.divider()
st.caption(
    "Data: Brain Tumor MRI Dataset (M. Nickparvar, 2021, CC0) for classification; figshare "
    "brain tumour dataset (J. Cheng et al., PLoS ONE 2015, CC BY 4.0) for segmentation. "
    "No patient identifiers are displayed or stored by this dashboard."
)
