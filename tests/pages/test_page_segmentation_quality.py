from __future__ import annotations

import shutil

import pytest
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


@pytest.fixture
def own_artifacts(dashboard_artifacts, tmp_path, monkeypatch):
    """A private copy of the tiny artifact tree the page reads (no figshare data)."""
    root = tmp_path / "art"
    shutil.copytree(dashboard_artifacts, root)
    monkeypatch.setenv("NEUROSTACK_ARTIFACTS", str(root))
    monkeypatch.setenv("NEUROSTACK_FIGSHARE_SEG", str(tmp_path / "nowhere"))
    return root


def _write_robustness_summary(folder, mean_dice, area_stable, **extra):
    """A two-condition (clean, blur 2) ``summary.csv`` of a segmentation robustness run."""
    import pandas as pd

    folder.mkdir(parents=True)
    pd.DataFrame({"corruption": ["none", "blur"], "severity": [0, 2], "n": [10, 10],
                  "mean_dice": mean_dice, "dice_change": [0.0, mean_dice[1] - mean_dice[0]],
                  "area_stable": area_stable, "empty_predictions": [0.1, 0.3], **extra}
                 ).to_csv(folder / "summary.csv", index=False)


def test_robustness_section_reads_the_stored_summary(make_app, own_artifacts):
    import json

    root = own_artifacts
    at = make_app("pages/4_Segmentation_Quality.py").run()
    assert any("No robustness run" in i.value for i in at.info)

    folder = root / "evaluation" / "robustness" / "segmentation"
    _write_robustness_summary(folder, [0.7, 0.5], [1.0, 0.4], mean_dice_glioma=[0.6, 0.3])
    (folder / "metrics.json").write_text(json.dumps({"settings": {"split": "test"},
                                                     "area_tolerance": 0.2}))
    at = make_app("pages/4_Segmentation_Quality.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert "Mean Dice under acquisition shift" in chart_titles(at)
    table = next(d.value for d in at.dataframe if "condition" in d.value.columns)
    assert list(table["condition"]) == ["none", "blur 2"]
    assert list(table["area_stable"]) == [1.0, 0.4]
    assert any("within 20%" in c.value and "`test` split" in c.value for c in at.caption)
    assert not any("other Res-UNet weights" in w.value for w in at.warning)
    assert "pipeline_mean_dice" not in table.columns  # no run with the input check yet

    _write_robustness_summary(root / "evaluation" / "robustness" / "segmentation_corrected",
                              [0.7, 0.65], [1.0, 0.6], intensity_corrected=[0.0, 0.8])
    at = make_app("pages/4_Segmentation_Quality.py").run()
    assert not at.exception, [e.message for e in at.exception]
    table = next(d.value for d in at.dataframe if "condition" in d.value.columns)
    assert list(table["pipeline_mean_dice"]) == [0.7, 0.65]
    assert list(table["mapped"]) == [0.0, 0.8]
    assert any(c.value.startswith("**pipeline_mean_dice**") for c in at.caption)

    (folder / "metrics.json").write_text(json.dumps({"settings": {"split": "test"},
                                                     "weights_sha256": {"resunet": "0" * 64}}))
    at = make_app("pages/4_Segmentation_Quality.py").run()
    assert any("other Res-UNet weights" in w.value for w in at.warning)


def test_series_table_shows_counts_not_patient_ids(make_app, own_artifacts):
    import pandas as pd

    root = own_artifacts
    found = (root / "evaluation" / "segmentation").glob("*/per_image.csv")
    run = sorted(p.parent for p in found)[0]
    ids = pd.read_csv(run / "per_image.csv", dtype={"id": str})["id"]
    patients = [f"MRX{i % 3}" if i % 2 else f"7700{i % 4}" for i in range(len(ids))]
    (root / "splits").mkdir(exist_ok=True)
    pd.DataFrame({"id": ids, "patient_id": patients, "split": "test"}).to_csv(
        root / "splits" / "segmentation_split.csv", index=False)
    at = make_app("pages/4_Segmentation_Quality.py").run()
    assert not at.exception, [e.message for e in at.exception]
    tables = [d.value for d in at.dataframe if "series" in d.value.columns]
    assert len(tables) == 1
    table = tables[0]
    assert set(table["series"]) == {"numeric id", "alphanumeric id"}
    assert table["slices"].sum() == len(ids)
    text = table.to_string()
    assert "MRX" not in text and "7700" not in text
    assert not any("tumour contrast, SD" in d.value.columns for d in at.dataframe)  # old record

    per_image = pd.read_csv(run / "per_image.csv", dtype={"id": str})
    contrast = [-0.5 if i % 2 else 1.5 for i in range(len(ids))]  # alphanumeric ones do not enhance
    per_image.assign(tumour_contrast_sd=contrast).to_csv(run / "per_image.csv", index=False)
    at = make_app("pages/4_Segmentation_Quality.py").run()
    assert not at.exception, [e.message for e in at.exception]
    bands = next(d.value for d in at.dataframe if "tumour contrast, SD" in d.value.columns)
    assert bands["tumour contrast, SD"].tolist() == ["<= 0", "> 1"]
    assert bands["slices"].sum() == len(ids)
    assert bands["from alphanumeric-id patients, %"].tolist() == [100.0, 0.0]
    assert "MRX" not in bands.to_string() and "7700" not in bands.to_string()


def test_outline_confidence_section(make_app, own_artifacts):
    import json

    import pandas as pd

    root = own_artifacts
    per_image = root / "evaluation" / "segmentation" / "test" / "per_image.csv"
    df = pd.read_csv(per_image, dtype={"id": str})
    # confidence tracks Dice; the first slice has no outline
    df["outline_confidence"] = [None, *list((0.5 + df["dice"] / 2).iloc[1:])]
    df.to_csv(per_image, index=False)
    at = make_app("pages/4_Segmentation_Quality.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert "Dice by outline confidence" in chart_titles(at)
    assert any("No outline-confidence flag" in c.value for c in at.caption)

    record = {"flag_threshold": 0.8, "validation": {"spearman": 0.81}}
    (root / "segmentation" / "resunet" / "outline_confidence.json").write_text(
        json.dumps(record))
    at = make_app("pages/4_Segmentation_Quality.py").run()
    assert not at.exception, [e.message for e in at.exception]
    caption = next(c.value for c in at.caption if c.value.startswith("Outline confidence is"))
    n_flagged = int((df["outline_confidence"] < 0.8).sum())
    assert f"{n_flagged} of {len(df) - 1} outlines flagged" in caption
    assert "1 slice(s) without an outline" in caption
