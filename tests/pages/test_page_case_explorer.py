from __future__ import annotations

import re

import numpy as np
import pytest
from page_helpers import PATIENT_ID, PATIENT_NAME, multiframe_dicom, sample_bytes

from neurostack import CLASS_NAMES


def _analyse_first_sample(make_app):
    at = make_app("pages/1_Case_Explorer.py").run()
    assert not at.exception, [e.message for e in at.exception]
    at.button(key="ce_analyse").click().run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def _metric(at, label):
    return next(m.value for m in at.metric if m.label == label)


def test_sample_is_classified_and_measured(make_app):
    at = _analyse_first_sample(make_app)
    assert _metric(at, "Predicted class") in CLASS_NAMES
    # a model probability is never shown as 100.0 % (bundled samples saturate the softmax)
    assert re.fullmatch(r">99\.9%|<0\.1%|\d{1,2}\.\d%", _metric(at, "Confidence"))
    # the tiny reference never flags: the check is stated as passed, with its numbers
    check = next(c.value for c in at.caption if c.value.startswith("Input check"))
    assert "typical of the training slices" in check and "≤ 100.000" in check
    quality = next(c.value for c in at.caption if c.value.startswith("Noise and detail check"))
    assert "within the training slices' range" in quality and "≤ 1000.0 grey levels" in quality
    chart_count = len(at.get("plotly_chart"))
    assert chart_count == 1  # grouped probability bars
    if any(b.key == "ce_segment_anyway" for b in at.button):
        at.button(key="ce_segment_anyway").click().run()
    assert len(at.table) == 1
    features = list(at.table[0].value.index)
    assert "area_px" in features and "circularity" in features
    assert any("pixel units" in c.value for c in at.caption)
    assert len(at.get("download_button")) == 5
    assert len(at.get("image")) == 4  # original, overlay, mask, probability map
    assert "Segmenter probability map" in [e.label for e in at.expander]
    highest = next(c.value for c in at.caption if "highest on this slice" in c.value)
    assert re.search(r"at or above 0?\.\d+; highest on this slice: (< 0\.001|[01]\.\d{3})\.$",
                     highest)
    # the tiny tree records no confidence flag: the outline's confidence is stated as such
    outline = next(c.value for c in at.caption if c.value.startswith("Outline confidence"))
    assert outline == "Outline confidence: no outline." or (
        re.match(r"Outline confidence [01]\.\d\d \(", outline)
        and "no flag threshold recorded" in outline)


def _force_notumor(monkeypatch):
    from dashboard import cache
    from ensemble.inference import EnsemblePrediction

    pipeline = cache.get_pipeline()  # the very object the pages use (st.cache_resource)
    real = pipeline.ensemble.predict_crops

    def notumor(crops):
        pred = real(crops)
        probs = np.full_like(pred.ensemble, 0.05)
        probs[:, CLASS_NAMES.index("notumor")] = 0.85
        return EnsemblePrediction(pred.per_model, probs, pred.method)

    monkeypatch.setattr(pipeline.ensemble, "predict_crops", notumor)
    cache.analyse.clear()


def test_no_tumour_stops_until_segment_anyway(make_app, monkeypatch):
    make_app("Home.py").run()  # loads the pipeline into the shared cache
    _force_notumor(monkeypatch)
    try:
        at = _analyse_first_sample(make_app)
        assert _metric(at, "Predicted class") == "notumor"
        assert len(at.table) == 0
        assert any("No tumour predicted" in i.value for i in at.info)
        assert "Segmenter probability map" not in [e.label for e in at.expander]
        at.button(key="ce_segment_anyway").click().run()
        assert not at.exception, [e.message for e in at.exception]
        assert len(at.table) == 1
        assert "area_px" in at.table[0].value.index
    finally:
        monkeypatch.undo()
        from dashboard import cache

        cache.analyse.clear()


def test_assumed_spacing_gives_cm_and_says_so(make_app):
    at = make_app("pages/1_Case_Explorer.py").run()
    at.checkbox(key="ce_spacing_assumed").check().run()
    at.button(key="ce_analyse").click().run()
    if any(b.key == "ce_segment_anyway" for b in at.button):
        at.button(key="ce_segment_anyway").click().run()
    assert not at.exception
    table = at.table[0].value
    assert "area_cm2" in table.index
    assert table.loc["spacing_source", "value"] == "assumed"
    assert any("assumed" in c.value and "0.49" in c.value for c in at.caption)


def test_assumed_spacing_on_a_resized_image_is_warned_about(make_app):
    at = make_app("pages/1_Case_Explorer.py").run()
    at.checkbox(key="ce_spacing_assumed").check().run()
    assert not any("figshare matrix" in w.value for w in at.warning)  # a 512 x 512 sample
    at.selectbox(key="ce_sample").select("notumor_Tr-no_0354.jpg").run()
    assert not at.exception, [e.message for e in at.exception]
    warning = next(w.value for w in at.warning if "figshare matrix" in w.value)
    assert "236×268 px" in warning  # width x height (PIL size (236, 268))


def test_user_spacing_per_axis(make_app):
    at = make_app("pages/1_Case_Explorer.py").run()
    at.number_input(key="ce_spacing_row_mm").set_value(0.5)
    at.number_input(key="ce_spacing_col_mm").set_value(0.4).run()
    at.button(key="ce_analyse").click().run()
    if any(b.key == "ce_segment_anyway" for b in at.button):
        at.button(key="ce_segment_anyway").click().run()
    table = at.table[0].value
    assert table.loc["spacing_source", "value"] == "user"
    assert table.loc["row_spacing_cm", "value"] == "0.05"
    assert table.loc["col_spacing_cm", "value"] == "0.04"


def test_save_case_to_registry(make_app, app_env):
    at = _analyse_first_sample(make_app)
    at.button(key="ce_save").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("Saved to the registry as case" in s.value for s in at.success)
    from neurostack.cases import CaseStore

    assert CaseStore(data_dir=app_env).count() == 1
    at.run()  # a rerun does not save twice
    assert CaseStore(data_dir=app_env).count() == 1


def test_gradcam_on_demand(make_app):
    at = _analyse_first_sample(make_app)
    before = len(at.get("image"))
    at.button(key="ce_cam_button").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert len(at.get("image")) == before + 4  # one heatmap per base model


def test_flagged_slice_is_analysed_as_a_mapped_copy(make_app, monkeypatch):
    from dashboard import cache
    from ensemble.intensity import IntensityReference

    at = make_app("pages/1_Case_Explorer.py").run()
    pipeline = cache.get_pipeline()  # the very object the page uses (st.cache_resource)
    ref = pipeline.intensity
    # threshold 0: every slice is flagged, and mapped to the reference's median curve
    monkeypatch.setattr(pipeline, "intensity", IntensityReference(ref.features, ref.k, 0.0))
    cache.analyse.clear()
    cache.gradcam_overlays.clear()
    at.button(key="ce_analyse").click().run()
    assert not at.exception, [e.message for e in at.exception]
    note = next(w.value for w in at.warning if w.value.startswith("analysed as a copy"))
    assert "mapped to the training curve (gamma 1/" in note and "As given, the ensemble" in note
    check = next(c.value for c in at.caption if c.value.startswith("Input check"))
    assert "Classified and outlined as a copy" in check
    before = len(at.get("image"))
    at.button(key="ce_cam_button").click().run()  # Grad-CAM on the mapped copy
    assert not at.exception, [e.message for e in at.exception]
    assert len(at.get("image")) == before + 4
    cache.analyse.clear()
    cache.gradcam_overlays.clear()


def test_corrupt_upload_shows_clear_error(make_app):
    at = make_app("pages/1_Case_Explorer.py").run()
    at.radio(key="ce_source").set_value("Upload a file").run()
    broken = ("broken.png", b"\x89PNG\r\n\x1a\nbroken", "image/png")
    at.file_uploader(key="ce_upload").set_value(broken)
    at.run()
    assert not at.exception
    assert at.error and "cannot be analysed" in at.error[0].value


def test_multiframe_dicom_has_frames_window_and_spacing_and_no_identifiers(make_app):
    at = make_app("pages/1_Case_Explorer.py").run()
    at.radio(key="ce_source").set_value("Upload a file").run()
    dicom = ("slice.dcm", multiframe_dicom(3), "application/dicom")
    at.file_uploader(key="ce_upload").set_value(dicom)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    frame = next(s for s in at.slider if s.label == "Frame")
    assert frame.value == 2 and frame.max == 3  # middle frame by default, numbered from 1
    assert {"Level (window centre)", "Window width"} <= {s.label for s in at.slider}
    assert any("From the DICOM file: 0.5 × 0.5 mm" in c.value for c in at.caption)
    frame.set_value(3).run()
    at.button(key="ce_analyse").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("frame 3 of 3" in m.value for m in at.markdown)
    page = str(at)
    assert PATIENT_NAME not in page and PATIENT_ID not in page and "Quintessa" not in page


@pytest.mark.parametrize("name", [sample_bytes()[0]])
def test_sample_query_param_preselects(make_app, name):
    at = make_app("pages/1_Case_Explorer.py")
    at.query_params["sample"] = name
    at.run()
    assert at.selectbox(key="ce_sample").value == name
