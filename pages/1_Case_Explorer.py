"""Case Explorer: one slice — class, overlay, mask, probability map, measurements, Grad-CAM."""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard import cache, charts, components, paths, tables
from dashboard.evaluation import model_label
from neurostack import CLASS_NAMES
from neurostack.errors import InputImageError
from neurostack.formatting import final_answer_label, format_probability, format_probability_floor
from neurostack.imaging import default_window, rewindow
from neurostack.render import encode_png, heatmap_overlay, overlay_mask
from neurostack.report import (
    case_report_html,
    intensity_sentence,
    outline_sentence,
    quality_sentence,
    review_sentence,
    spacing_sentence,
)

components.page_setup("Case Explorer", ":material/biotech:")
st.title(":material/biotech: Case Explorer")
st.caption("Analyse one MRI slice: tumour class, segmentation and morphometry. "
           "Research use only — not a diagnostic device.")

pipeline = components.require_pipeline()
components.missing_artifacts(pipeline)
limits = cache.input_limits()
samples = cache.samples()

# ------------------------------------------------------------------ input
data: bytes | None = None
reference_label = ""
with st.sidebar:
    st.header("Input")
    source = st.radio("Image source", ["Bundled sample", "Upload a file"], key="ce_source",
                      horizontal=True)
    if source == "Bundled sample":
        if samples.empty:
            st.info(f"No bundled samples in `{paths.samples_dir()}`.")
        else:
            files = samples["file"].tolist()
            wanted = st.query_params.get("sample")
            choice = st.selectbox(
                "Sample slice", files, index=files.index(wanted) if wanted in files else 0,
                key="ce_sample", format_func=lambda f: f.rsplit(".", 1)[0],
                help="Public dataset slices shipped with NeuroStack (reference label known).",
            )
            data = cache.file_bytes(paths.samples_dir() / choice)
            reference_label = str(samples.set_index("file").loc[choice, "label"] or "")
    else:
        upload = st.file_uploader(
            "MRI slice", key="ce_upload",
            help=f"PNG, JPEG, TIFF, BMP, GIF, WebP, PPM/PGM or DICOM (also without extension); "
                 f"at most {limits.max_bytes // (1024 * 1024)} MB.",
        )
        if upload is not None:
            data = upload.getvalue()

if data is None:
    st.info("Pick a bundled sample or upload a slice in the sidebar to begin.")
    st.stop()

try:
    image = cache.decode(data, None)
except InputImageError as exc:
    st.error(f"**This file cannot be analysed:** {exc}")
    st.stop()

frame: int | None = None
with st.sidebar:
    if image.n_frames > 1:
        frame = st.slider("Frame", 1, image.n_frames, image.frame_index + 1,
                          key=f"ce_frame_{cache.digest(data)}",
                          help=f"This file holds {image.n_frames} frames (numbered from 1).") - 1
        try:
            image = cache.decode(data, frame)
        except InputImageError as exc:
            st.error(f"**Frame {frame + 1} cannot be decoded:** {exc}")
            st.stop()

    st.header("Options")
    default_thr = pipeline.segmenter.default_threshold if pipeline.segmenter else 0.5
    threshold = st.slider("Mask threshold", 0.05, 0.95, float(default_thr), 0.05,
                          key="ce_threshold",
                          help="Tumour probability at or above which a pixel is in the mask.")
    default_lcc = bool(pipeline.segmenter and pipeline.segmenter.postprocess != "none")
    largest_only = st.checkbox(
        "Keep only the largest tumour component", value=default_lcc, key="ce_largest",
        help="Drops smaller separate regions of the mask (the component with the largest "
             "probability mass is kept). The shipped model's setting was chosen on the "
             "validation patients; switch it off to see every region, e.g. a second focus.")
    postprocess = "largest_component" if largest_only else "none"
    spacing_cm, spacing_source = components.spacing_controls("ce_spacing", image.spacing_cm,
                                                                 stacked=True,
                                                                 image_shape=image.gray.shape)

    display = image.display
    display_note = None
    if image.raw is not None:
        st.header("Display window")
        lo, hi = float(np.min(image.raw)), float(np.max(image.raw))
        if hi - lo >= 2:
            span = hi - lo
            centre0, width0 = default_window(image)
            centre0 = float(np.clip(centre0, lo - span / 2, hi + span / 2))
            width0 = float(np.clip(width0, 1.0, 2.0 * span))
            view_key = f"{cache.digest(data)}_{frame}"
            centre = st.slider("Level (window centre)", lo - span / 2, hi + span / 2, centre0,
                               key=f"ce_level_{view_key}")
            width = st.slider("Window width", 1.0, 2.0 * span, width0,
                              key=f"ce_width_{view_key}")
            if (centre, width) != (centre0, width0):  # the file's own rendering until moved
                display = rewindow(image, centre, width)
                display_note = f"display window centre {centre:.4g}, width {width:.4g}"
            st.caption("Changes the display only (the file's VOI function and inversion "
                       "are kept); the models always see the file's own window.")

input_key = f"{cache.digest(data)}:{frame}"

top = st.columns([1, 3])
with top[0]:
    if st.button("Analyse", type="primary", key="ce_analyse", width="stretch"):
        st.session_state["ce_active"] = input_key
with top[1]:
    info = f"{image.format or 'image'} · {image.shape[1]}×{image.shape[0]} px"
    if image.n_frames > 1:
        info += f" · frame {image.frame_index + 1} of {image.n_frames}"
    if reference_label:
        info += f" · dataset reference label: **{reference_label}**"
    st.markdown(info)

if st.session_state.get("ce_active") != input_key:
    st.image(display, caption="Original", width=420)
    st.info("Press **Analyse** to classify this slice.")
    st.stop()

# ---------------------------------------------------------------- analysis
force = st.session_state.get("ce_force") == input_key
with st.spinner("Analysing…"):
    try:
        result = cache.analyse(data, frame, spacing_cm, spacing_source, threshold, force,
                               postprocess)
    except InputImageError as exc:
        st.error(f"**This file cannot be analysed:** {exc}")
        st.stop()
    except ValueError as exc:
        st.error(f"**Invalid option:** {exc}")
        st.stop()

m1, m2, m3, m4 = st.columns(4)
m1.metric("Predicted class", result.predicted_class)
m2.metric("Confidence", format_probability(result.confidence),
          help="The final decision's probability for the predicted class: a model output, "
               "not a clinical certainty. See Model Evaluation for how well these "
               "probabilities are calibrated.")
m3.metric("Base models agree", "yes" if result.models_agree else "NO")
area = (result.morphology or {}).get("area_cm2")
if area is None and result.morphology:
    m4.metric("Tumour area", f"{result.morphology.get('area_px', 0):,} px²")
else:
    m4.metric("Tumour area", "—" if area is None else f"{area:.2f} cm²")

if not result.models_agree:
    votes = ", ".join(f"{model_label(m)} → {c}" for m, c in tables.model_votes(result).items())
    st.warning(f"**Base models disagree:** {votes}. Treat this prediction with extra care.",
               icon=":material/warning:")
for warning in result.warnings:
    if not warning.startswith("base models disagree"):
        st.warning(warning, icon=":material/warning:")
st.caption(review_sentence(result),
           help="Answers whose top probability is below the flag threshold were right far "
                "less often on the validation split; Model Evaluation shows the threshold's "
                "figures and the risk-coverage curves.")
st.caption(intensity_sentence(result.intensity),
           help="Distance of the slice's grey-level quantiles to the nearest training slices; "
                "flagged above the 99th percentile of the training slices themselves. The "
                "classifiers lose accuracy on slices with another intensity curve.")
st.caption(quality_sentence(result.quality),
           help="Noise sd: robust estimate from the median response of Immerkaer's noise mask "
                "over the head. Detail level: its mean response over the head crop (blur and "
                "up-sampling lower it). Flagged above the 99th / below the 0.5th percentile of "
                "the training slices.")
if reference_label and reference_label != result.predicted_class:
    st.caption(f"Note: the dataset's reference label for this sample is *{reference_label}*.")

shown = result.overlay
if result.segmented and result.mask is not None and image.raw is not None:
    shown = overlay_mask(display, result.mask)  # same window as the original on screen

c1, c2, c3 = st.columns(3)
c1.image(display, caption="Original", width="stretch")
if result.segmented:
    c2.image(shown, caption="Tumour overlay (green)", width="stretch")
    c3.image(result.mask_png, caption="Mask (white = tumour)", width="stretch")
else:
    with c2:
        if not result.tumor_found:
            st.info("**No tumour predicted** — segmentation was skipped.")
            if st.button("Segment anyway", key="ce_segment_anyway",
                         help="Run the segmenter even though the classifier says no tumour."):
                st.session_state["ce_force"] = input_key
                st.rerun()
        else:
            st.warning("Segmentation is not available (model not loaded).")

if result.segmented:
    st.caption(outline_sentence(result),
               help="Mean Res-UNet probability over the outline's pixels. On held-out patients "
                    "it ranks outlines by their Dice, and outlines below the flag threshold "
                    "(chosen on the validation patients) score much lower; the Segmentation "
                    "Quality page has the figures. It cannot see a tumour the segmenter "
                    "missed altogether.")

if result.segmented and result.probability is not None:
    with st.expander("Segmenter probability map"):
        pm, note = st.columns([1, 2])
        pm.image(heatmap_overlay(display, result.probability), width="stretch",
                 caption="Tumour probability of the Res-UNet per pixel, on the slice as given")
        note.caption(
            "Colour from blue (low) to dark red (1), drawn in proportion to the probability, "
            "so pixels near 0 show the slice unchanged. The mask is where the probability is "
            f"at or above {result.threshold:g}; highest on this slice: "
            f"{format_probability_floor(float(result.probability.max()))}."
        )

left, right = st.columns([1, 1])
with left:
    probs = charts.probability_bars(result.per_model, result.ensemble,
                                    ensemble_label=final_answer_label(result.method,
                                                                     model_label("ensemble")))
    components.chart(probs, "ce_probs")
    st.caption(f"Final decision: {result.method}.")
with right:
    st.markdown("**Measurements**")
    if result.mask_empty:
        st.caption(f"The mask is empty at threshold {result.threshold:g}: nothing to measure. "
                   "Lower the threshold to see fainter regions.")
    elif result.morphology:
        st.caption(spacing_sentence(result.spacing_cm, result.spacing_source))
        st.table(tables.morphology_frame(result.morphology).set_index("feature"))
    else:
        st.caption("No measurements: the slice was not segmented.")

with st.expander("Grad-CAM heatmaps per base model",
                 expanded=st.session_state.get("ce_cam", ("",))[0] == input_key):
    cam_cls = st.selectbox("Explain the evidence for class", CLASS_NAMES,
                           index=CLASS_NAMES.index(result.predicted_class), key="ce_cam_class")
    if st.button("Compute Grad-CAM", key="ce_cam_button"):
        st.session_state["ce_cam"] = (input_key, cam_cls)
    if st.session_state.get("ce_cam") == (input_key, cam_cls):
        with st.spinner("Computing Grad-CAM for every base model…"):
            overlays = cache.gradcam_overlays(data, frame, CLASS_NAMES.index(cam_cls))
        cols = st.columns(max(1, len(overlays)))
        for col, (name, heat) in zip(cols, overlays.items(), strict=True):
            col.image(heat, width="stretch",
                      caption=f"{model_label(name)} — P({cam_cls}) = "
                              f"{result.per_model[name][cam_cls]:.2f}")
        st.caption("Red = regions that most increase the class score (last convolutional "
                   "block). Heatmaps show where a model looks, not why it is right.")

st.markdown("**Downloads**")
stem = f"neurostack_{result.image_sha256[:12]}"
csv_bytes, json_bytes = tables.record_downloads(result)
report = case_report_html(result, display=display, overlay=shown,
                          display_note=display_note).encode()
d1, d2, d3, d4, d5 = st.columns(5)
d1.download_button("Overlay PNG", encode_png(shown) if result.segmented else b"",
                   f"{stem}_overlay.png", "image/png", disabled=not result.segmented,
                   key="ce_dl_overlay", on_click="ignore")
d2.download_button("Mask PNG", encode_png(result.mask_png) if result.segmented else b"",
                   f"{stem}_mask.png", "image/png", disabled=not result.segmented,
                   key="ce_dl_mask", on_click="ignore")
d3.download_button("Features CSV", csv_bytes, f"{stem}_features.csv", "text/csv",
                   key="ce_dl_csv", on_click="ignore")
d4.download_button("Features JSON", json_bytes, f"{stem}_features.json", "application/json",
                   key="ce_dl_json", on_click="ignore")
d5.download_button("Report (HTML)", report, f"{stem}_report.html", "text/html",
                   key="ce_dl_report", on_click="ignore",
                   help="One printable page: decision, every model's probabilities, images, "
                        "measurements, spacing source and model versions; no file name or "
                        "DICOM tags.")

with st.container(border=True):
    st.markdown("**Case registry**")
    saved: dict[str, object] = st.session_state.setdefault("ce_saved", {})
    save_key = f"{input_key}:{threshold}:{postprocess}:{force}:{spacing_cm}:{spacing_source}"
    if save_key in saved:
        st.success(f"Saved to the registry as case {saved[save_key]}.")
    elif st.button("Save this case to the registry", key="ce_save"):
        try:
            store = cache.get_case_store()
        except ImportError as exc:
            components.not_available("The case registry", "neurostack.cases", exc)
        else:
            saved[save_key] = store.add(result)
            st.success(f"Saved to the registry as case {saved[save_key]}.")
    st.caption("Only the identifier-free record is stored: probabilities, measurements, "
               "model versions and the image checksum — no file name, no DICOM tags.")

with st.expander("Stage timings and model versions"):
    t1, t2 = st.columns(2)
    t1.dataframe(tables.timings_frame(result), hide_index=True, width="stretch")
    t2.dataframe(tables.versions_frame(result.models), hide_index=True, width="stretch")
