from __future__ import annotations

from page_helpers import REPO, chart_titles

from dashboard import paths


def test_distributions_and_browser(make_app):
    at = make_app("pages/4_Segmentation_Quality.py").run()
    assert not at.exception, [e.message for e in at.exception]
    titles = chart_titles(at)
    assert any(t.startswith("Score distributions") for t in titles)
    assert "Scores by tumour class" in titles
    assert "Mean Dice by mask threshold (same probabilities)" in titles
    assert {"Mean Dice", "Median Dice", "Mean IoU"} <= {m.label for m in at.metric}
    summary = at.dataframe[0].value
    assert summary["class"].iloc[0] == "all"
    for df in (d.value for d in at.dataframe):
        assert "patient_id" not in df.columns
    dataset = paths.figshare_dir()
    if (dataset / "images").is_dir():
        # the browser ran the segmenter on the worst available case
        assert {"Dice (this view)", "Dice (stored)"} <= {m.label for m in at.metric}
        assert len(at.get("image")) == 3  # contours + ground truth + prediction
        options = at.selectbox(key="sq_case").options
        dice = [float(o.rsplit("Dice ", 1)[1]) for o in options]
        assert dice == sorted(dice)  # worst first
    else:
        assert any("not available" in w.value for w in at.warning)


def test_missing_dataset_is_reported(make_app, monkeypatch, tmp_path):
    monkeypatch.setenv("NEUROSTACK_FIGSHARE_SEG", str(tmp_path / "nowhere"))
    at = make_app("pages/4_Segmentation_Quality.py").run()
    assert not at.exception
    assert any("figshare-seg dataset is not available" in w.value for w in at.warning)
    assert REPO.exists()
