"""Segmentation Quality: Dice/IoU distributions and a browser of held-out cases, worst first."""

from __future__ import annotations

import streamlit as st

from dashboard import cache, charts, components, paths
from dashboard.evaluation import (
    CONTRAST_ALNUM_COLUMN,
    SERIES_FOUND_COLUMN,
    SERIES_MISSED_COLUMN,
    browser_cases,
    evaluation_provenance,
    operating_point_chosen_on,
    seg_robustness_long,
    seg_summary,
    segmenter_members,
    stale_weights,
    with_files,
    with_pipeline_dice,
)
from neurostack.errors import InputImageError
from neurostack.render import overlay_mask
from segmentation.confidence import RECORD_FILE as OUTLINE_RECORD_FILE
from segmentation.confidence import confidence_caption, flag_summary

GT_COLOUR = (255, 0, 255)  # magenta: ground truth; green: prediction (render.GREEN)

components.page_setup("Segmentation Quality", ":material/target:")
st.title(":material/target: Segmentation Quality")
st.caption("Res-UNet tumour masks on held-out figshare slices: score distributions from the "
           "stored evaluation and a case browser, worst cases first.")

runs = cache.segmentation_runs()
if not runs:
    st.warning(f"No segmentation evaluation run found: expected "
               f"`{paths.segmentation_eval_dir()}/<run>/per_image.csv`. Run "
               "`python -m segmentation.evaluate …`.", icon=":material/extension_off:")
    st.stop()
run = st.selectbox("Evaluation run", runs, key="sq_run") if len(runs) > 1 else runs[0]
try:
    scores = cache.per_image(run)
except (OSError, ValueError) as exc:
    st.error(f"The per-image scores of run {run} could not be read: {exc}")
    st.stop()
record = cache.json_record(paths.segmentation_eval_dir() / run / "metrics.json") or {}
if evaluation_provenance(record, cache.shipped_weights(("resunet",)))[0]:
    st.warning("This run was made with other segmenter weights than those shipped now: its "
               "scores do not describe the model the dashboard runs. Rerun "
               "`python -m segmentation.evaluate`.", icon=":material/history:")

k1, k2, k3, k4 = st.columns(4)
k1.metric("Images", record.get("n_images", len(scores)))
for col, key, label in ((k2, "mean_dice", "Mean Dice"), (k3, "median_dice", "Median Dice"),
                        (k4, "mean_iou", "Mean IoU")):
    value = record.get(key)
    col.metric(label, "—" if value is None else f"{value:.3f}")
if record.get("threshold") is not None:
    st.caption(f"Threshold {record['threshold']} · test-time augmentation "
               f"{record.get('test_time_augmentation', 'none')} · post-processing "
               f"{record.get('postprocess', 'none')} · {record.get('resolution', '')} · "
               f"empty masks: {record.get('empty_mask_policy', 'n/a')}")
if record.get("mean_dice_ci95"):
    low, high = record["mean_dice_ci95"]
    st.caption(f"Mean Dice 95 % interval **{low:.3f}–{high:.3f}** over "
               f"{record.get('n_patients')} patients: {record.get('ci_method', '')}. Slices of "
               "one patient are correlated, so the patient, not the slice, is resampled.")
chosen_on = operating_point_chosen_on(record,
                                      cache.json_record(paths.segmenter_dir() / "config.json"))
if chosen_on:
    st.info(f"The mask threshold and post-processing were chosen on this **{chosen_on}** "
            "split, so its scores are slightly optimistic; the test run is the unbiased one.",
            icon=":material/info:")

if len(scores):
    c1, c2 = st.columns(2)
    components.chart(charts.score_histograms(scores), "sq_hist", c1)
    components.chart(charts.scores_by_class(scores), "sq_box", c2)
    st.dataframe(seg_summary(scores, record), hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in ("mean Dice", "median Dice", "min Dice", "mean IoU",
                                          "median IoU")})
series = cache.series_table(run)
if series is not None and len(series) > 1:
    with st.expander("By patient series", expanded=True):
        components.number_table(series, ("mean Dice", "median Dice", SERIES_FOUND_COLUMN),
                                (SERIES_MISSED_COLUMN,))
        st.caption("figshare-seg holds two series of patients: numeric ids and alphanumeric "
                   "scanner-style ids (all glioma). The second series loses whole tumours "
                   "more often (missed) and outlines the found ones less well (mean Dice of "
                   "the rest), so the per-class rows above mix a class and a series effect. "
                   "Intervals resample patients; no patient id is shown.")
bands = cache.contrast_bands(run)
if bands is not None and len(bands):
    with st.expander("By tumour contrast", expanded=True):
        components.number_table(bands, ("mean Dice", "median Dice"),
                                (SERIES_MISSED_COLUMN, CONTRAST_ALNUM_COLUMN))
        st.caption("How much brighter the outlined tumour is than the rest of the head on "
                   "these contrast-enhanced T1 slices: mean tumour grey level minus the "
                   "median of the other head pixels, in standard deviations of those pixels "
                   "(`segmentation.cohorts.tumour_contrast_sd`). Tumours that do not enhance "
                   "(contrast at or below 0) are where whole tumours are missed; most of them "
                   "come from the alphanumeric-id series.")
if "outline_confidence" in scores.columns and scores["outline_confidence"].notna().any():
    flag_record = cache.json_record(paths.segmenter_dir() / OUTLINE_RECORD_FILE)
    with st.expander("Outline confidence", expanded=True):
        limit = None if flag_record is None else flag_record.get("flag_threshold")
        components.chart(charts.confidence_scatter(scores, limit), "sq_confidence")
        if limit is None:
            st.caption("No outline-confidence flag is recorded for the shipped segmenter "
                       "(`python -m segmentation.confidence fit …`).")
        else:
            fs = flag_summary(scores["outline_confidence"], scores["dice"], limit)
            st.caption(confidence_caption(fs, flag_record))
sweep = cache.threshold_sweep(run)
if sweep is not None and len(sweep):
    components.chart(charts.threshold_sweep(sweep, record.get("threshold"),
                                            record.get("postprocess")), "sq_sweep")
    st.caption("The same probabilities scored at each threshold "
               "(`python -m segmentation.evaluate --sweep`); the operating point of the "
               "shipped model is chosen on the validation patients only.")

seg_config = cache.json_record(paths.segmenter_dir() / "config.json")
members = segmenter_members(seg_config)
if members is not None:
    with st.expander(f"Ensemble members ({len(members)})"):
        st.dataframe(members, hide_index=True, width="stretch", column_config={
            "val Dice (training metric)": st.column_config.NumberColumn(format="%.3f")})
        st.caption("The shipped segmenter averages the per-pixel probabilities of these "
                   "independently trained Res-UNets in one network call "
                   "(`python -m segmentation.combine`); the threshold and post-processing "
                   "were chosen for the average on the validation patients.")
seg_log = cache.training_log(paths.segmenter_dir())
if seg_log is not None:
    with st.expander("Res-UNet training curves"):
        logs = (list(seg_log.groupby("member", sort=False)) if "member" in seg_log.columns
                else [("Res-UNet", seg_log)])
        for name, log in logs:
            curves = charts.training_curves(log, f"Training curves — {name}", [
                ("Dice", "dice", "val_dice"), ("Loss", "loss", "val_loss")])
            components.chart(curves, f"sq_log_{name}")

robust = cache.seg_robustness_summary()
with st.expander("Robustness to acquisition shift", expanded=robust is not None):
    if robust is None:
        st.info("No robustness run found: expected "
                f"`{paths.robustness_dir('segmentation')}/summary.csv` from "
                "`python -m segmentation.robustness …`.")
    else:
        rob_rec = cache.json_record(paths.robustness_dir("segmentation") / "metrics.json") or {}
        shipped = seg_config or {}
        if stale_weights(rob_rec, {"resunet": shipped.get("weights_sha256")}):
            st.warning("This robustness run was made with other Res-UNet weights than those "
                       "shipped now; rerun `python -m segmentation.robustness` to refresh it.",
                       icon=":material/history:")
        st.caption(
            f"The {int(robust['n'].max())} held-out slices of the "
            f"`{rob_rec.get('settings', {}).get('split', '?')}` split segmented unchanged "
            "(severity 0) and under simulated scanner and site differences, at the shipped "
            "operating point; the ground truth is rotated with the slice. **Area stable**: "
            "share of slices whose predicted tumour area stays within "
            f"{rob_rec.get('area_tolerance', 0.2):.0%} of the clean prediction, i.e. how far "
            "the morphology measurements can be trusted under that shift.")
        corrected = cache.seg_robustness_summary("segmentation_corrected")
        robust = with_pipeline_dice(robust, corrected)
        if corrected is not None:
            st.caption(
                "**pipeline_mean_dice**: the same slices as the analysis pipeline segments "
                "them: a slice whose grey levels the input check flags is first mapped to the "
                "training curve (`python -m segmentation.robustness … --intensity-reference "
                "auto`); **mapped**: share of slices it mapped.")
        components.chart(charts.robustness_figure(seg_robustness_long(robust), value="dice",
                                                  series="series",
                                                  title="Mean Dice under acquisition shift"),
                         "sq_robust")
        shown = robust.assign(condition=[c if c == "none" else f"{c} {v}" for c, v in
                                         zip(robust["corruption"], robust["severity"],
                                             strict=True)])
        cols = ["condition", "n", "mean_dice", "pipeline_mean_dice", "mapped", "dice_change",
                "area_stable", "empty_predictions"]
        st.dataframe(shown[[c for c in cols if c in shown.columns]], hide_index=True,
                     width="stretch",
                     column_config={c: st.column_config.NumberColumn(format="%.3f")
                                    for c in cols[2:]})

# ----------------------------------------------------------------- browser
st.subheader("Held-out case browser")
dataset = paths.figshare_dir()
if not (dataset / "images").is_dir() or not (dataset / "masks").is_dir():
    st.warning(f"The figshare-seg dataset is not available at `{dataset}` (needs `images/` and "
               "`masks/`); set NEUROSTACK_FIGSHARE_SEG to browse the held-out cases.",
               icon=":material/folder_off:")
    st.stop()

ids = cache.segmentation_test_ids()
cases = browser_cases(scores, None)
if ids is None:
    st.caption("No `segmentation_split.csv` found: browsing every image of the evaluation run.")
else:
    held_out = browser_cases(scores, ids)
    outside = len(cases) - len(held_out)
    if outside and len(held_out):
        st.warning(f"{outside} evaluated image(s) are not in the test split of "
                   "`segmentation_split.csv`; they are left out of the browser.",
                   icon=":material/warning:")
        cases = held_out
    elif outside:
        st.warning("None of the evaluated images is in the test split of "
                   "`segmentation_split.csv`; showing every evaluated image.",
                   icon=":material/warning:")
classes = sorted(cases["label"].unique())
f1, f2 = st.columns([2, 1])
chosen = f1.multiselect("Tumour classes", classes, default=classes, key="sq_classes")
threshold = f2.slider("Mask threshold", 0.05, 0.95, float(record.get("threshold") or 0.5), 0.05,
                      key="sq_threshold")
n_cases = len(cases)
cases = with_files(cases, dataset / "images", dataset / "masks")
if len(cases) < n_cases:
    st.warning(f"{n_cases - len(cases)} evaluated image(s) have no image or mask file in "
               f"`{dataset}` and are left out.", icon=":material/folder_off:")
cases = cases[cases["label"].isin(chosen)].reset_index(drop=True)
if cases.empty:
    st.info("No held-out case matches the filter.")
    st.stop()

picked = st.selectbox(
    f"Case ({len(cases)} held-out images, worst Dice first)", cases.index.tolist(),
    format_func=lambda i: (f"#{i + 1} · image {cases.at[i, 'id']} · {cases.at[i, 'label']} · "
                           f"Dice {cases.at[i, 'dice']:.3f}"),
    key="sq_case",
)
case = cases.loc[picked]
image_path, mask_path = case["image_path"], case["mask_path"]

pipeline = components.require_pipeline()
if pipeline.segmenter is None:
    st.error("The segmentation model is not loaded; the browser cannot run it.")
    st.stop()
try:
    with st.spinner("Segmenting…"):
        review = cache.review_case(str(image_path), image_path.stat().st_mtime, str(mask_path),
                                   mask_path.stat().st_mtime, threshold)
except (InputImageError, ValueError) as exc:
    st.error(f"Case {case['id']} could not be reviewed: {exc}")
    st.stop()
img, pred, truth = review.image, review.predicted, review.truth

both = overlay_mask(overlay_mask(img.display, truth, color=GT_COLOUR, alpha=0.0), pred,
                    alpha=0.0)
v1, v2 = st.columns([3, 2])
v1.image(both, width="stretch",
         caption="Ground truth: magenta contour · prediction: green contour")
with v2:
    st.markdown(f"**Image {case['id']}** — {case['label']}")
    s1, s2 = st.columns(2)
    s1.metric("Dice (this view)", f"{review.dice:.3f}")
    s2.metric("IoU (this view)", f"{review.iou:.3f}")
    s1.metric("Dice (stored)", f"{case['dice']:.3f}")
    s2.metric("IoU (stored)", f"{case['iou']:.3f}")
    s1.metric("Ground-truth area", f"{review.truth_area_px:,} px")
    s2.metric("Predicted area", f"{review.predicted_area_px:,} px")
    st.caption("'This view' is recomputed at the threshold above with the loaded model; "
               "'stored' comes from the evaluation record.")
    g1, g2 = st.columns(2)
    g1.image(overlay_mask(img.display, truth, color=GT_COLOUR), caption="Ground truth",
             width="stretch")
    g2.image(overlay_mask(img.display, pred), caption="Prediction", width="stretch")
