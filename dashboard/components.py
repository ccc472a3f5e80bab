"""Small render helpers shared by the pages (Streamlit widgets).

The tables the pages show are built by :mod:`dashboard.tables` (plain Python).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import cache, paths
from neurostack import __version__
from neurostack.errors import ArtifactError
from neurostack.pipeline import Pipeline

DISCLAIMER = (
    "**Research tool — not a diagnostic device.** NeuroStack's predictions, masks and "
    "measurements are produced by machine-learning models for research and teaching. They "
    "have not been validated for clinical use and must not be used to diagnose, treat or "
    "triage patients."
)
PAGES: list[tuple[str, str, str, str]] = [
    ("pages/1_Case_Explorer.py", "Case Explorer", ":material/biotech:",
     "Radiologists: analyse one slice — class, tumour mask and probability map, "
     "measurements, Grad-CAM, printable report."),
    ("pages/2_Batch_Analysis.py", "Batch Analysis", ":material/stacks:",
     "Analysts: many images or a ZIP, one row per image, CSV export."),
    ("pages/3_Model_Evaluation.py", "Model Evaluation", ":material/monitoring:",
     "Examiners: confusion matrices, ROC/PR curves, calibration, training curves."),
    ("pages/4_Segmentation_Quality.py", "Segmentation Quality", ":material/target:",
     "Dice/IoU distributions and a browser of held-out cases, worst first."),
    ("pages/5_Cases_and_Features.py", "Cases & Features", ":material/table_chart:",
     "The case registry: filter, sort, plot features, export."),
]


PERSISTENT_PREFIXES = ("ce_", "ba_", "cf_", "me_", "sq_")
"""Pages whose settings survive a visit to another page (see :func:`keep_page_settings`)."""
_NOT_KEPT = ("_upload", "_files", "_dl_", "_download", "_run", "_analyse", "_save",
             "_button", "_segment_anyway", "me_correction_", "me_quality_flags",
             "sq_case", "cf_x", "cf_y", "cf_colour", "cf_box")
"""Keys that are not kept: buttons, uploads, downloads and tables (Streamlit refuses
to set them) and selections whose options depend on the data shown."""


def keep_page_settings() -> None:
    """Keep every page's settings when the user visits another page and comes back.

    With a ``pages/`` folder Streamlit deletes a widget's value once a run does not
    draw it; assigning each kept key to itself at the top of every page turns it
    into plain session state that survives (Streamlit's documented way to interrupt
    the widget clean-up). Keys are those of :data:`PERSISTENT_PREFIXES`, except
    buttons, uploads, downloads and data-dependent selections (:data:`_NOT_KEPT`).
    """
    for key in list(st.session_state.keys()):
        if (isinstance(key, str) and key.startswith(PERSISTENT_PREFIXES)
                and not any(part in key for part in _NOT_KEPT)):
            st.session_state[key] = st.session_state[key]


def page_setup(title: str, icon: str) -> None:
    """Page config, the sidebar notice every page shows, and the kept page settings."""
    st.set_page_config(page_title=f"{title} · NeuroStack", page_icon=icon, layout="wide")
    keep_page_settings()
    with st.sidebar:
        st.caption(f"NeuroStack {__version__} · research use only, not a diagnostic device")


PLOTLY_CONFIG: dict[str, Any] = {
    "displaylogo": False,
    "modeBarButtonsToRemove": ["zoom2d", "pan2d", "select2d", "lasso2d", "zoomIn2d",
                               "zoomOut2d", "autoScale2d"],
    "toImageButtonOptions": {"format": "png", "scale": 2},
}
"""Plotly toolbar: keep 'download as PNG' (for reports) and 'reset axes' only."""


def chart(fig: Any, key: str, where: Any = None) -> None:
    """Render a plotly figure full-width with the dashboard's toolbar settings."""
    (where or st).plotly_chart(fig, width="stretch", key=key, config=PLOTLY_CONFIG)


def research_notice() -> None:
    """Show the prominent 'not a diagnostic device' notice."""
    st.warning(DISCLAIMER, icon=":material/warning:")


def require_pipeline(tta: str | None = None) -> Pipeline:
    """Return the loaded pipeline; show the reason and stop the page when it cannot load.

    ``tta`` as in :func:`dashboard.cache.get_pipeline`.
    """
    try:
        return cache.get_pipeline(tta)
    except ArtifactError as exc:
        st.error(f"The models could not be loaded from `{paths.artifacts_root()}`: {exc}")
        st.info("Set NEUROSTACK_ARTIFACTS to an artifact tree, or train and export the models.")
        st.stop()
        raise  # unreachable: st.stop() raises


def missing_artifacts(pipeline: Pipeline) -> None:
    """List missing artifacts (the pipeline still works with what is present)."""
    if pipeline.missing:
        items = "\n".join(f"- `{m}`" for m in pipeline.missing)
        st.warning(f"**Missing artifacts** — running with what is present:\n{items}",
                   icon=":material/extension_off:")


def not_available(feature: str, module: str, exc: BaseException | None = None) -> None:
    """Explain that a library module this page needs is not available yet."""
    detail = f" ({type(exc).__name__}: {exc})" if exc else ""
    st.info(f"**{feature} is not available yet**: the library module `{module}` could not be "
            f"imported{detail}. The rest of the dashboard works without it.",
            icon=":material/construction:")


def number_table(frame: pd.DataFrame, three: Sequence[str] = (), one: Sequence[str] = ()
                 ) -> None:
    """Show ``frame`` without its index, columns ``three`` at 3 decimals and ``one`` at 1."""
    config = {c: st.column_config.NumberColumn(format="%.3f") for c in three}
    config |= {c: st.column_config.NumberColumn(format="%.1f") for c in one}
    st.dataframe(frame, hide_index=True, width="stretch", column_config=config)


# ------------------------------------------------------------------- spacing
def spacing_controls(
    key: str, dicom_spacing_cm: tuple[float, float] | None = None, *, stacked: bool = False,
    image_shape: tuple[int, ...] | None = None,
) -> tuple[tuple[float, float] | None, str | None]:
    """Pixel-spacing widgets; returns ``(spacing_cm, source)`` for ``Pipeline.analyse``.

    ``(None, None)`` means: the file's own spacing (DICOM) or none (pixel units).
    ``stacked`` puts the two inputs under each other (narrow sidebars). With
    ``image_shape``, choosing the figshare assumption for an image that is not a
    512 x 512 matrix shows a warning.
    """
    st.markdown("**Pixel spacing**")
    if dicom_spacing_cm is not None:
        r, c = dicom_spacing_cm
        st.caption(f"From the DICOM file: {r * 10:.4g} × {c * 10:.4g} mm per pixel (row × column).")
        if not st.checkbox("Override the DICOM spacing", key=f"{key}_override"):
            return None, None
    assumed = st.checkbox(
        f"Use the figshare assumption {paths.FIGSHARE_SPACING_MM} mm (assumed)",
        key=f"{key}_assumed",
        help="The figshare slices are usually reported as 512×512 matrices of about 0.49 mm "
             "pixels; it does not hold for resized images. Results are labelled 'assumed', "
             "not measured.",
    )
    if assumed:
        caveat = paths.figshare_assumption_caveat(image_shape)
        if caveat:
            st.warning(caveat, icon=":material/straighten:")
        mm = paths.FIGSHARE_SPACING_MM
        return (mm / 10.0, mm / 10.0), "assumed"
    col1, col2 = (st, st) if stacked else st.columns(2)
    row_mm = col1.number_input("Row (mm/pixel)", min_value=0.0, max_value=50.0, value=0.0,
                               step=0.01, format="%.4f", key=f"{key}_row_mm",
                               help="Vertical pixel size; 0 = unknown.")
    col_mm = col2.number_input("Column (mm/pixel)", min_value=0.0, max_value=50.0, value=0.0,
                               step=0.01, format="%.4f", key=f"{key}_col_mm",
                               help="Horizontal pixel size; 0 = unknown.")
    if row_mm > 0 and col_mm > 0:
        return (row_mm / 10.0, col_mm / 10.0), "user"
    if (row_mm > 0) != (col_mm > 0):
        st.caption("Enter both pixel sizes to get physical units.")
    else:
        st.caption("No spacing entered: measurements will be in pixel units.")
    return None, None
