from __future__ import annotations

from page_helpers import sample_bytes

from neurostack.cases import CaseStore


def test_empty_registry(make_app):
    at = make_app("pages/5_Cases_and_Features.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert "registry is empty" in at.info[0].value


def test_filter_sort_plot_and_export(make_app, app_env):
    from dashboard import cache

    pipeline = cache.get_pipeline()
    store = CaseStore(data_dir=app_env)
    name, data = sample_bytes()
    for spacing in (None, (0.05, 0.05)):
        store.add(pipeline.analyse(data, force_segmentation=True, spacing_cm=spacing,
                                   spacing_source="user" if spacing else None))
    store.close()
    at = make_app("pages/5_Cases_and_Features.py").run()
    assert not at.exception, [e.message for e in at.exception]
    table = at.dataframe[0].value
    assert len(table) == 2
    assert "area_px" in table.columns and name not in str(at)
    assert len(at.get("plotly_chart")) == 2  # scatter + box
    assert len(at.get("download_button")) == 1
    at.slider(key="cf_min_conf").set_value(1.0).run()
    assert len(at.dataframe[0].value) == 0


def test_hide_flagged_answers_and_outlines(make_app, app_env):
    base = {"predicted_class": "glioma", "confidence": 0.9, "tumor_found": True,
            "segmented": True, "area_px": 42, "spacing_source": "none"}
    store = CaseStore(data_dir=app_env)
    store.add_many([
        {**base, "image_sha256": "a" * 64, "review_flagged": True, "outline_flagged": False},
        {**base, "image_sha256": "b" * 64, "review_flagged": False, "outline_flagged": True},
        {**base, "image_sha256": "c" * 64, "review_flagged": False, "outline_flagged": False},
    ])
    store.close()
    at = make_app("pages/5_Cases_and_Features.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert len(at.dataframe[0].value) == 3
    assert list(at.dataframe[0].value["review_flagged"]) == [False, False, True]  # newest first
    at.checkbox(key="cf_hide_review").check().run()
    assert sorted(at.dataframe[0].value["image_sha256"]) == ["b" * 64, "c" * 64]
    at.checkbox(key="cf_hide_uncertain").check().run()
    assert list(at.dataframe[0].value["image_sha256"]) == ["c" * 64]


def test_the_filters_survive_a_visit_to_another_page(make_app, app_env):
    store = CaseStore(data_dir=app_env)
    store.add({"image_sha256": "a" * 64, "predicted_class": "glioma", "confidence": 0.9,
               "tumor_found": True, "segmented": True, "area_px": 42,
               "spacing_source": "none"})
    store.close()
    at = make_app("Home.py").run()  # the main script, as `streamlit run Home.py`
    at.switch_page("pages/5_Cases_and_Features.py").run()
    assert not at.exception, [e.message for e in at.exception]
    at.slider(key="cf_min_conf").set_value(0.5).run()
    at.checkbox(key="cf_tumour").check().run()
    at.switch_page("Home.py").run()
    assert not at.exception, [e.message for e in at.exception]
    at.switch_page("pages/5_Cases_and_Features.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.slider(key="cf_min_conf").value == 0.5
    assert at.checkbox(key="cf_tumour").value is True
