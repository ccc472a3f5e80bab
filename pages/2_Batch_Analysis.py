"""Batch Analysis: many slices or ZIP archives, one row per image, failures with reasons."""

from __future__ import annotations

import streamlit as st

from dashboard import cache, charts, components
from neurostack.batch import (
    count_intensity_flagged,
    count_outline_flagged,
    count_quality_flagged,
    count_review_flagged,
    to_check,
)
from neurostack.formatting import csv_bytes

components.page_setup("Batch Analysis", ":material/stacks:")
st.title(":material/stacks: Batch Analysis")
st.caption("Analyse many slices at once: one results row per image, every failure listed "
           "with its reason. Research use only — not a diagnostic device.")

try:
    from neurostack.batch import anonymise_name, run_batch
except ImportError as exc:
    components.not_available("Batch analysis", "neurostack.batch", exc)
    st.stop()

MODE_LABELS = {
    "hflip": "Default: slice and mirror image",
    "cascade": "Cascade: mirror image only when unsure (faster)",
    "none": "Single crop (fastest, less accurate)",
}

pipeline = components.require_pipeline()
components.missing_artifacts(pipeline)
limits = cache.input_limits()

uploads = st.file_uploader(
    "Images (PNG, JPEG, TIFF, BMP, GIF, WebP, PPM/PGM, DICOM) and/or ZIP archives of images",
    accept_multiple_files=True, key="ba_files",
    help=f"Each file at most {limits.max_bytes // (1024 * 1024)} MB; ZIP archives are "
         "expanded (folders inside are kept in the item name).",
)

with st.expander("Options", expanded=True):
    o1, o2 = st.columns(2)
    with o1:
        default_thr = pipeline.segmenter.default_threshold if pipeline.segmenter else 0.5
        threshold = st.slider("Mask threshold", 0.05, 0.95, float(default_thr), 0.05,
                              key="ba_threshold")
        largest_only = st.checkbox(
            "Keep only the largest tumour component",
            value=bool(pipeline.segmenter and pipeline.segmenter.postprocess != "none"),
            key="ba_largest",
            help="The shipped model's setting was chosen on the validation patients; a "
                 "removal is noted in the row's warnings.")
        force = st.checkbox("Segment every image (also when 'no tumour' is predicted)",
                            key="ba_force")
        anonymise = st.checkbox(
            "Anonymise file names in the results", value=True, key="ba_anonymise",
            help="Replace each file name by anon-<hash>; keep this on when names may "
                 "identify a patient. Rows can still be matched by file_sha256.")
        store = st.checkbox("Store the results in the case registry", key="ba_store",
                            help="Only identifier-free records are stored (no file names).")
        modes = pipeline.classifier_modes
        mode = st.radio(
            "Classification mode", modes, key="ba_mode", format_func=MODE_LABELS.get,
            help="The default classifies each slice and its mirror image. The cascade "
                 "classifies each slice once and adds the mirror image only when that "
                 "first answer is unsure (the rows' `escalated` column); single crop never "
                 "does, with a meta-learner fitted for single crops. Their test-split scores "
                 "are the runs `test_cascade` and `test_single_crop` on the Model Evaluation "
                 "page; the rows' `method` column says which mode made them.")
    with o2:
        spacing_cm, spacing_source = components.spacing_controls("ba_spacing")
        override = st.checkbox(
            "Apply it to DICOM files too", key="ba_spacing_override",
            disabled=spacing_cm is None,
            help="Off: DICOM files keep their own Pixel Spacing and the value above is used "
                 "for the other images only. On: it replaces the DICOM spacing as well.")
        st.caption("DICOM files use their own Pixel Spacing unless told otherwise; each row's "
                   "`spacing_source` says where its centimetres come from.")

run = st.button("Run batch", type="primary", key="ba_run", disabled=not uploads)

if run and uploads:
    items = [(f.name, f.getvalue()) for f in uploads]
    bar = st.progress(0.0, text="Starting…")

    def _progress(done: int, total: int, name: str) -> None:
        bar.progress(done / max(total, 1), text=f"{done} / {total} · {name}")

    chosen = pipeline if mode == modes[0] else components.require_pipeline(mode)
    try:
        result = run_batch(
            chosen, items, threshold=threshold, spacing_cm=spacing_cm,
            spacing_source=spacing_source, force_segmentation=force, progress=_progress,
            override_file_spacing=override,
            postprocess="largest_component" if largest_only else "none",
            rename=anonymise_name if anonymise else None,
        )
    except ValueError as exc:
        bar.empty()
        st.error(f"**The batch could not run:** {exc}")
        st.stop()
    bar.progress(1.0, text=f"Done in {result.elapsed_s:.1f} s")
    stored: list[int] | None = None
    if store and len(result.rows):
        try:
            stored = cache.get_case_store().add_many(result.rows.to_dict("records"))
        except ImportError as exc:
            components.not_available("The case registry", "neurostack.cases", exc)
    spacing_text = ("the files' own (DICOM) or none" if spacing_cm is None else
                    f"{spacing_cm[0] * 10:.4g} × {spacing_cm[1] * 10:.4g} mm ({spacing_source}"
                    + (", also for DICOM files)" if override else ", files without their own)"))
    st.session_state["ba_result"] = {
        "rows": result.rows, "failures": result.failures, "elapsed_s": result.elapsed_s,
        "stored": stored, "anonymised": anonymise,
        "settings": f"mask threshold {threshold:g}; "
                    f"{'largest component only' if largest_only else 'every component'}; "
                    f"{'every image segmented' if force else 'tumour predictions segmented'}; "
                    f"mode {MODE_LABELS.get(mode, mode)}; spacing {spacing_text}",
    }

outcome = st.session_state.get("ba_result")
if outcome is None:
    st.info("Upload images or ZIP archives, choose the options and press **Run batch**.")
    st.stop()

rows, failures = outcome["rows"], outcome["failures"]
m1, m2, m3, m4 = st.columns(4)
m1.metric("Images analysed", len(rows))
m2.metric("Failed", len(failures))
m3.metric("Tumour predicted", int(rows["tumor_found"].fillna(False).astype(bool).sum())
          if len(rows) else 0)
m4.metric("Time", f"{outcome['elapsed_s']:.1f} s")
if outcome.get("settings"):
    st.caption(f"Settings of this run: {outcome['settings']}.")
if len(rows) and "method" in rows.columns:
    st.caption("Classified by: " + "; ".join(sorted(rows["method"].dropna().astype(str).unique())))
if outcome["stored"]:
    st.success(f"Stored {len(outcome['stored'])} case(s) in the registry "
               f"(ids {outcome['stored'][0]}–{outcome['stored'][-1]}).")

if len(failures):
    st.error(f"**{len(failures)} item(s) could not be analysed** — the others were processed:")
    st.dataframe(failures[["n", "item", "error", "error_type"]], hide_index=True,
                 width="stretch", column_config={"n": st.column_config.NumberColumn("#")})

if outcome.get("anonymised") and (len(rows) or len(failures)):
    st.caption("File names are anonymised (anon-<hash>); # is the position in the upload list "
               "(ZIP members in name order) and file_sha256 identifies each file.")

if len(rows):
    st.subheader("Results")
    flagged = count_intensity_flagged(rows)
    if flagged:
        st.warning(f"**{flagged} of {len(rows)} slice(s) have grey levels unlike the training "
                   "slices** (input check; see `intensity_atypicality`): the networks lose "
                   "accuracy on another intensity curve, so those marked `intensity_corrected` "
                   "were analysed as copies mapped to the training curve (`uncorrected_class`: "
                   "the ensemble on the slice as given). Check how they were exported or "
                   "windowed.",
                   icon=":material/contrast:")
    quality = count_quality_flagged(rows)
    if quality["noisy"] or quality["smooth"]:
        st.warning(f"**Noise and detail check:** {quality['noisy']} slice(s) noisier and "
                   f"{quality['smooth']} with less fine detail than the training slices (see "
                   "`quality_flags`, `noise_sigma_grey`, `detail_level_grey` and `warnings`). "
                   "The networks lose accuracy on noisy slices; outlines of blurred or "
                   "up-sampled slices are less precise.",
                   icon=":material/grain:")
    review = count_review_flagged(rows)
    if review:
        st.warning(f"**{review} answer(s) flagged for review** (`review_flagged`): the ensemble's "
                   "top probability is below `review_threshold`, chosen on the validation split "
                   "where such answers were right far less often. Double-check them.",
                   icon=":material/rate_review:")
    uncertain = count_outline_flagged(rows)
    if uncertain:
        st.warning(f"**{uncertain} outline(s) flagged as uncertain** (`outline_flagged`): the "
                   "segmenter's mean probability inside them (`outline_confidence`) is below "
                   "the threshold chosen on the validation patients, where such outlines had a "
                   "much lower Dice. Check them by eye before using their measurements.",
                   icon=":material/help:")
    lead = [c for c in ("n", "item", "predicted_class", "confidence", "review_flagged",
                        "models_agree", "tumor_found",
                        "segmented", "outline_confidence", "outline_flagged", "area_cm2",
                        "area_px", "spacing_source", "warnings",
                        "intensity_atypicality", "relative_gamma", "intensity_corrected",
                        "uncorrected_class", "quality_flags")
            if c in rows.columns]
    check = to_check(rows)
    shown = rows
    if st.toggle(f"Only the slices to check ({int(check.sum())}: answer flagged for review or "
                 "outline uncertain)", key="ba_to_check", disabled=not check.any()):
        shown = rows[check]
    st.dataframe(shown, hide_index=True, width="stretch",
                 column_order=[*lead, *[c for c in rows.columns if c not in lead]],
                 column_config={"n": st.column_config.NumberColumn("#")})
    ch1, ch2 = st.columns(2)
    components.chart(charts.class_counts(rows["predicted_class"]), "ba_counts", ch1)
    segmented = int(rows["area_px"].notna().sum()) if "area_px" in rows.columns else 0
    for col, unit in (("area_cm2", "cm²"), ("area_px", "px²")):
        if col in rows.columns and rows[col].notna().any():
            areas = charts.area_histogram(rows[col], unit, rows["predicted_class"])
            components.chart(areas, "ba_area", ch2)
            plotted = int(rows[col].notna().sum())
            sources = sorted(rows.loc[rows[col].notna(), "spacing_source"].dropna().unique())
            ch2.caption(f"{plotted} of {segmented} measured slice(s) plotted"
                        + (" (the others have no pixel spacing, so only pixel areas)"
                           if plotted < segmented else "")
                        + (f"; spacing from: {', '.join(sources)}" if unit == "cm²" else "")
                        + ".")
            break
    else:
        ch2.info("No tumour areas: no image was segmented.")
else:
    shown = rows

d1, d2, d3 = st.columns(3)
d1.download_button(f"Download results CSV (all {len(rows)})", csv_bytes(rows),
                   "neurostack_batch_results.csv", "text/csv", disabled=not len(rows),
                   key="ba_dl_rows", on_click="ignore")
d2.download_button(f"Download the shown rows ({len(shown)})", csv_bytes(shown),
                   "neurostack_batch_shown.csv", "text/csv",
                   disabled=not len(shown) or len(shown) == len(rows),
                   key="ba_dl_shown", on_click="ignore",
                   help="The table as filtered above ('Only the slices to check').")
d3.download_button("Download failures CSV", csv_bytes(failures),
                   "neurostack_batch_failures.csv", "text/csv", disabled=not len(failures),
                   key="ba_dl_failures", on_click="ignore")
