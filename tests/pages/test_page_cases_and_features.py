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
