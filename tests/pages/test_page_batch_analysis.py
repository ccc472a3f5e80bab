from __future__ import annotations

import io
import zipfile

from page_helpers import sample_bytes


def _upload_and_run(at, files, *, store=False, anonymise=False):
    at.file_uploader(key="ba_files").set_value(files)
    at.run()
    if not anonymise:
        at.checkbox(key="ba_anonymise").uncheck()
    if store:
        at.checkbox(key="ba_store").check()
    at.button(key="ba_run").click().run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def _metric(at, label):
    return next(m.value for m in at.metric if m.label == label)


def test_batch_reports_corrupt_file_and_finishes_the_rest(make_app):
    a, b = sample_bytes(), sorted_second()
    files = [(a[0], a[1], "image/jpeg"), ("corrupt.png", b"\x89PNG\r\n\x1a\n garbage", "image/png"),
             (b[0], b[1], "image/jpeg")]
    at = _upload_and_run(make_app("pages/2_Batch_Analysis.py").run(), files)
    assert _metric(at, "Images analysed") == "2"
    assert _metric(at, "Failed") == "1"
    assert any("could not be analysed" in e.value for e in at.error)
    failures, results = at.dataframe[0].value, at.dataframe[1].value
    assert list(failures["item"]) == ["corrupt.png"]
    assert failures["error"].str.len().gt(10).all()
    assert sorted(results["item"]) == sorted([a[0], b[0]])
    assert len(at.get("plotly_chart")) == 2  # class counts + area distribution
    assert len(at.get("download_button")) == 3  # all rows, the shown rows, failures
    settings = next(c.value for c in at.caption if c.value.startswith("Settings of this run"))
    assert "mask threshold" in settings and "spacing the files' own (DICOM) or none" in settings
    segmented = int(results["area_px"].notna().sum())
    assert any(c.value.startswith(f"{segmented} of {segmented} measured slice(s) plotted")
               for c in at.caption)


def sorted_second():
    from page_helpers import SAMPLES

    path = sorted(SAMPLES.glob("*.jpg"))[-1]
    return path.name, path.read_bytes()


def test_batch_zip_with_anonymised_names_and_registry(make_app, app_env):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        name, data = sample_bytes()
        zf.writestr(f"patient_smith/{name}", data)
        zf.writestr("notes.txt", b"not an image")
    files = [("cases.zip", buf.getvalue(), "application/zip")]
    at = _upload_and_run(make_app("pages/2_Batch_Analysis.py").run(), files, store=True,
                         anonymise=True)
    assert _metric(at, "Images analysed") == "1"
    results = at.dataframe[-1].value
    assert results["item"].str.startswith("anon-").all()
    assert "smith" not in str(at).lower()
    assert any("Stored 1 case" in s.value for s in at.success)
    from neurostack.cases import CaseStore

    assert CaseStore(data_dir=app_env).count() == 1


def test_batch_page_idle_state(make_app):
    at = make_app("pages/2_Batch_Analysis.py").run()
    assert not at.exception
    assert at.button(key="ba_run").disabled


def test_fast_mode_uses_the_single_crop_meta_learner(make_app, dashboard_artifacts, tmp_path,
                                                      monkeypatch):
    import json
    import shutil

    root = tmp_path / "art"
    shutil.copytree(dashboard_artifacts, root)
    meta = root / "classification" / "meta"
    shutil.copytree(meta, root / "classification" / "meta_single_crop")
    config = json.loads((meta / "config.json").read_text())
    (meta / "config.json").write_text(json.dumps(config | {"input_tta": "hflip"}))
    monkeypatch.setenv("NEUROSTACK_ARTIFACTS", str(root))
    name, data = sample_bytes()
    files = [(name, data, "image/jpeg")]

    from neurostack.artifacts import sha256_file

    # a cascade threshold of 1.0 sends every slice on to the default mode
    cls = root / "classification"
    shas = {n: sha256_file(cls / n / "weights.npz") for n in ("meta", "meta_single_crop")}
    (cls / "cascade.json").write_text(json.dumps({"threshold": 1.0, "meta_sha256": shas}))

    at = _upload_and_run(make_app("pages/2_Batch_Analysis.py").run(), files)
    assert at.radio(key="ba_mode").value == "hflip"
    assert at.radio(key="ba_mode").options == [
        "Default: slice and mirror image", "Cascade: mirror image only when unsure (faster)",
        "Single crop (fastest, less accurate)"]
    default = at.dataframe[-1].value
    assert default["method"].iloc[0].endswith("averaged over the slice and its mirror image")

    at.radio(key="ba_mode").set_value("none")
    at.button(key="ba_run").click().run()
    assert not at.exception, [e.message for e in at.exception]
    fast = at.dataframe[-1].value
    assert fast["method"].iloc[0] == "meta-learner (stacking)"  # single crops, own meta-learner
    assert any(c.value == "Classified by: meta-learner (stacking)" for c in at.caption)
    assert list(fast["item"]) == [name]

    at.radio(key="ba_mode").set_value("cascade")
    at.button(key="ba_run").click().run()
    assert not at.exception, [e.message for e in at.exception]
    cas = at.dataframe[-1].value
    assert cas["method"].iloc[0].startswith("cascade: ") and cas["escalated"].astype(bool).all()
    cols = [f"ensemble_{c}" for c in ("glioma", "meningioma", "notumor", "pituitary")]
    assert abs(cas[cols].to_numpy(float) - default[cols].to_numpy(float)).max() < 1e-5


def test_batch_counts_the_slices_the_input_check_flags(make_app, monkeypatch):
    from dashboard import cache
    from ensemble.intensity import IntensityReference

    at = make_app("pages/2_Batch_Analysis.py").run()
    pipeline = cache.get_pipeline()  # the very object the page uses (st.cache_resource)
    ref = pipeline.intensity
    monkeypatch.setattr(pipeline, "intensity", IntensityReference(ref.features, ref.k, 0.0))
    a, b = sample_bytes(), sorted_second()
    at = _upload_and_run(at, [(a[0], a[1], "image/jpeg"), (b[0], b[1], "image/jpeg")])
    note = next(w.value for w in at.warning if "input check" in w.value)
    assert note.startswith("**2 of 2 slice(s) have grey levels unlike the training slices**")
    results = at.dataframe[0].value
    assert results["intensity_atypicality"].gt(0).all()
    assert results["warnings"].str.contains("grey levels unlike the training slices").all()
    assert results["intensity_corrected"].all()  # each flagged slice analysed as a mapped copy
    assert results["uncorrected_class"].notna().all()  # with the answer on it as given


def test_batch_counts_the_slices_the_quality_check_flags(make_app, monkeypatch):
    from dashboard import cache
    from ensemble.quality import NOISY_PREFIX, QualityReference

    at = make_app("pages/2_Batch_Analysis.py").run()
    pipeline = cache.get_pipeline()
    ref = pipeline.quality
    monkeypatch.setattr(pipeline, "quality", QualityReference(ref.features, 0.0, 0.0))
    a, b = sample_bytes(), sorted_second()
    at = _upload_and_run(at, [(a[0], a[1], "image/jpeg"), (b[0], b[1], "image/jpeg")])
    note = next(w.value for w in at.warning if "Noise and detail check" in w.value)
    assert "2 slice(s) noisier and 0 with less fine detail" in note
    results = at.dataframe[0].value
    assert (results["quality_flags"] == "noisy").all()
    assert results["noise_sigma_grey"].gt(0).all()
    assert results["warnings"].str.contains(NOISY_PREFIX).all()


def test_batch_says_nothing_when_no_slice_is_flagged(make_app):
    a = sample_bytes()
    at = _upload_and_run(make_app("pages/2_Batch_Analysis.py").run(),
                         [(a[0], a[1], "image/jpeg")])
    assert not any("input check" in w.value for w in at.warning)
    assert not any("Noise and detail check" in w.value for w in at.warning)
    results = at.dataframe[0].value
    assert results["intensity_atypicality"].notna().all()
    assert results["uncorrected_class"].isna().all() and not results["intensity_corrected"].any()


def test_batch_counts_answers_for_review_and_lists_only_those_on_request(make_app, monkeypatch):
    from dashboard import cache

    at = make_app("pages/2_Batch_Analysis.py").run()
    pipeline = cache.get_pipeline()
    entry = {"threshold": 1.0, "meta_sha256": "x", "passes_rule": True,
             "validation": {"accuracy_flagged": 0.7, "accuracy_unflagged": 0.99,
                            "n_flagged": 5, "n": 50}}
    monkeypatch.setattr(pipeline, "review", {None: entry, False: entry, True: entry})
    a, b = sample_bytes(), sorted_second()
    at = _upload_and_run(at, [(a[0], a[1], "image/jpeg"), (b[0], b[1], "image/jpeg")])
    note = next(w.value for w in at.warning if "flagged for review" in w.value)
    assert note.startswith("**2 answer(s) flagged for review**")
    results = at.dataframe[0].value
    assert results["review_flagged"].all() and (results["review_threshold"] == 1.0).all()
    assert results["warnings"].str.contains("review this answer").all()
    toggle = at.toggle(key="ba_to_check")
    assert "(2: answer flagged for review or outline uncertain)" in toggle.label
    toggle.set_value(True).run()
    assert not at.exception, [e.message for e in at.exception]
    assert len(at.dataframe[0].value) == 2


def test_the_check_list_is_disabled_when_nothing_is_flagged(make_app, monkeypatch):
    import pandas as pd

    from dashboard import cache

    at = make_app("pages/2_Batch_Analysis.py").run()
    never = {"threshold": 0.0, "meta_sha256": "x", "passes_rule": True, "validation": {}}
    monkeypatch.setattr(cache.get_pipeline(), "review", {None: never, False: never, True: never})
    a = sample_bytes()
    at = _upload_and_run(at, [(a[0], a[1], "image/jpeg")])
    results = at.dataframe[0].value
    assert not results["review_flagged"].any()
    assert results.get("outline_flagged", pd.Series([None])).isna().all()  # no tiny record
    assert at.toggle(key="ba_to_check").disabled
    assert not any("flagged for review" in w.value for w in at.warning)
