from __future__ import annotations

from page_helpers import PATIENT_ID


def test_home_shows_purpose_models_metrics_and_links(make_app):
    at = make_app("Home.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.title[0].value.endswith("NeuroStack")
    assert any("not a diagnostic device" in w.value for w in at.warning)
    links = at.get("page_link")
    assert len(links) == 5
    models = at.dataframe[0].value
    assert {"Xception", "InceptionV3", "ResNet50", "VGG19", "Meta-learner", "Res-UNet"} <= set(
        models["model"])
    assert models["weights sha256"].str.len().eq(12).all()
    assert models["checksum"].str.contains("verified").all()
    # no recorded bfloat16 check for the tiny artifacts: float32 everywhere, and why
    assert not models["runs in"].str.contains("bfloat16").any()
    assert any("Base classifiers' precision: float32: " in c.value for c in at.caption)
    assert any(c.value == "Test figures from run `test`, measured with the shipped weights "
                          "(SHA-256 recorded in the run)." for c in at.caption)
    labels = {m.label for m in at.metric}
    assert {"Accuracy", "Macro F1", "Macro ROC AUC", "Mean Dice"} <= labels
    check = next(c.value for c in at.caption if c.value.startswith("**Input check.**"))
    assert check.startswith("**Input check.** Each slice's grey levels are compared with "
                            "those of 60 training slices")
    assert "as a copy with its grey levels mapped to the training curve" in check
    quality = next(c.value for c in at.caption if c.value.startswith("**Noise and detail"))
    assert "with those of 60 training slices: flagged *noisy* above a noise sd of 1000.0" in (
        quality)
    # the tiny test artifacts are flagged as meaningless
    assert any("tiny" in e.value for e in at.error)
    assert PATIENT_ID not in str(at)


def test_home_recheck_checksums(make_app):
    at = make_app("Home.py").run()
    at.button(key="home_recheck").click().run()
    assert not at.exception
    checks = at.dataframe[-1].value
    assert checks["status"].str.contains("matches").all()


def test_home_lists_missing_artifacts(make_app, dashboard_artifacts, tmp_path, monkeypatch):
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(dashboard_artifacts / "classification", partial / "classification")
    monkeypatch.setenv("NEUROSTACK_ARTIFACTS", str(partial))
    at = make_app("Home.py").run()
    assert not at.exception, [e.message for e in at.exception]
    text = " ".join(w.value for w in at.warning)
    assert "Missing artifacts" in text and "segmentation model" in text
    assert "Missing evaluation records" in text


def test_home_without_models_lists_every_missing_artifact(make_app, tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROSTACK_ARTIFACTS", str(tmp_path / "empty"))
    at = make_app("Home.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert "could not be loaded" in at.error[0].value
    listing = next(m.value for m in at.markdown if m.value.startswith("**Expected artifacts**"))
    assert listing.count("**missing**") == 6
