"""Cases & Features: the case registry — filter, sort, plot features, export."""

from __future__ import annotations

from datetime import datetime, time, timezone

import streamlit as st

from dashboard import cache, charts, components
from neurostack import CLASS_NAMES
from neurostack.formatting import csv_bytes

ORDER_COLUMNS = ["created_utc", "confidence", "predicted_class", "area_cm2", "area_px",
                 "max_feret_cm", "max_feret_px", "circularity", "solidity", "id"]
LEAD_COLUMNS = ["id", "created_utc", "predicted_class", "confidence", "review_flagged",
                "tumor_found", "segmented",
                "outline_confidence", "outline_flagged", "area_cm2", "area_px", "max_feret_cm",
                "circularity", "spacing_source", "warnings"]
HIDDEN_FROM_PLOTS = {"id", "mask_threshold", "height_px_image", "width_px_image"}

components.page_setup("Cases & Features", ":material/table_chart:")
st.title(":material/table_chart: Cases & Features")
st.caption("Every case saved from Case Explorer or Batch Analysis. The registry holds "
           "identifier-free records only: no file names, no DICOM tags.")

try:
    store = cache.get_case_store()
except ImportError as exc:
    components.not_available("The case registry", "neurostack.cases", exc)
    st.stop()

total = store.count()
st.caption(f"Registry: `{store.url}` · {total} case(s)")
if total == 0:
    st.info("The registry is empty. Save a case from **Case Explorer** or tick "
            "'Store the results in the case registry' in **Batch Analysis**.")
    st.stop()

with st.sidebar:
    st.header("Filters")
    classes = st.multiselect("Predicted class", CLASS_NAMES, default=list(CLASS_NAMES),
                             key="cf_classes")
    min_conf = st.slider("Minimum confidence", 0.0, 1.0, 0.0, 0.05, key="cf_min_conf")
    tumour_only = st.checkbox("Tumour predicted only", key="cf_tumour")
    hide_uncertain = st.checkbox(
        "Hide uncertain outlines", key="cf_hide_uncertain",
        help="Leave out cases whose outline was flagged as uncertain (outline_flagged: the "
             "segmenter's mean probability inside it was below the threshold chosen on the "
             "validation patients), e.g. before exporting measurements.")
    hide_review = st.checkbox(
        "Hide answers flagged for review", key="cf_hide_review",
        help="Leave out cases whose classification was flagged for review (review_flagged: "
             "the ensemble's top probability was below the threshold chosen on the "
             "validation split).")
    use_since = st.checkbox("Only cases since a date", key="cf_use_since")
    since = None
    if use_since:
        day = st.date_input("Since (UTC)", key="cf_since")
        since = datetime.combine(day, time.min, tzinfo=timezone.utc)
    st.header("Sort")
    order_by = st.selectbox("Order by", ORDER_COLUMNS, key="cf_order")
    descending = st.checkbox("Descending", value=True, key="cf_desc")
    limit = st.number_input("At most (0 = all)", 0, 1_000_000, 0, 100, key="cf_limit")

df = store.to_frame(class_in=classes, min_confidence=min_conf or None, tumor_only=tumour_only,
                    since=since, order_by=order_by, descending=descending,
                    limit=int(limit) or None, hide_uncertain_outlines=hide_uncertain,
                    hide_review_flagged=hide_review)
st.markdown(f"**{len(df)}** of {total} case(s) match the filters.")
lead = [c for c in LEAD_COLUMNS if c in df.columns]
st.dataframe(df, hide_index=True, width="stretch",
             column_order=[*lead, *[c for c in df.columns if c not in lead]])
st.download_button("Download the filtered table (CSV)", csv_bytes(df),
                   "neurostack_cases.csv", "text/csv", disabled=df.empty, key="cf_download",
                   on_click="ignore")

if df.empty:
    st.stop()

numeric = [c for c in df.select_dtypes("number").columns
           if c not in HIDDEN_FROM_PLOTS and df[c].notna().any()]
if not numeric:
    st.info("No numeric feature to plot yet.")
    st.stop()

st.subheader("Plot features")
scatter_tab, box_tab = st.tabs(["Feature vs feature", "Feature by class"])
with scatter_tab:
    p1, p2, p3 = st.columns(3)
    default_x = next((c for c in ("area_cm2", "area_px") if c in numeric), numeric[0])
    x = p1.selectbox("x", numeric, index=numeric.index(default_x), key="cf_x")
    default_y = next((c for c in ("circularity", "confidence") if c in numeric and c != x),
                     numeric[-1])
    y = p2.selectbox("y", numeric, index=numeric.index(default_y), key="cf_y")
    colour = p3.selectbox("Colour by", ["predicted_class", "spacing_source", "segmented",
                                        "(none)"], key="cf_colour")
    scatter = charts.feature_scatter(df, x, y, None if colour == "(none)" else colour)
    components.chart(scatter, "cf_scatter")
with box_tab:
    feature = st.selectbox("Feature", numeric, index=numeric.index(default_x), key="cf_box")
    components.chart(charts.feature_box(df, feature, "predicted_class"), "cf_boxplot")
if "spacing_source" in df.columns and df["spacing_source"].nunique() > 1:
    st.caption("Note: the table mixes spacing sources; cm features exist only for cases with a "
               "spacing, and 'assumed' spacings are not measurements.")
