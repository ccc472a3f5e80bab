"""``ensemble.robustness``: sampling, seeds, the summary's known answers, a resumable run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from ensemble import robustness as rb
from neurostack import CLASS_NAMES


def split_table(n_per_class: int = 5) -> pd.DataFrame:
    return pd.DataFrame(
        [{"path": f"{c}/{c}_{i:03d}.png", "label": c}
         for c in CLASS_NAMES for i in range(n_per_class)]
    )


def test_sample_rows_is_stratified_capped_sorted_and_seeded():
    rows = split_table(5).iloc[:-3]  # pituitary has only 2 rows
    sample = rb.sample_rows(rows, per_class=3, seed=1)
    assert sample["label"].value_counts().to_dict() == {
        "glioma": 3, "meningioma": 3, "notumor": 3, "pituitary": 2
    }
    assert list(sample["path"]) == sorted(sample["path"])
    pd.testing.assert_frame_equal(sample, rb.sample_rows(rows, per_class=3, seed=1))
    assert list(sample.columns) == ["path", "label"]
    with pytest.raises(ValueError, match="per_class"):
        rb.sample_rows(rows, per_class=0)
    with pytest.raises(ValueError, match="'path' and 'label'"):
        rb.sample_rows(rows.rename(columns={"label": "y"}), per_class=1)


def test_summarise_known_answers():
    # 4 slices, one per class. Clean: model "a" right on all, ensemble right on 3.
    # Blur 1: "a" wrong on the glioma slice (-> meningioma); ensemble unchanged.
    labels = list(CLASS_NAMES)
    clean_ens = ["glioma", "meningioma", "notumor", "glioma"]
    rows = []
    for i, label in enumerate(labels):
        rows.append({"path": f"p{i}", "label": label, "corruption": "none", "severity": 0,
                     "a": label, "ensemble": clean_ens[i]})
        rows.append({"path": f"p{i}", "label": label, "corruption": "blur", "severity": 1,
                     "a": "meningioma" if i == 0 else label, "ensemble": clean_ens[i]})
    summary = rb.summarise(pd.DataFrame(rows)).set_index(["corruption", "model"])
    assert summary.loc[("none", "a"), "accuracy"] == 1.0
    assert summary.loc[("none", "ensemble"), "accuracy"] == 0.75
    blur_a = summary.loc[("blur", "a")]
    assert blur_a["accuracy"] == 0.75 and blur_a["changed"] == 0.25
    assert blur_a["accuracy_change"] == pytest.approx(-0.25)
    # F1: glioma 0 (missed its only slice), meningioma 2/3 (1 TP, 1 FP), others 1
    assert blur_a["macro_f1"] == pytest.approx((0 + 2 / 3 + 1 + 1) / 4)
    assert summary.loc[("blur", "ensemble"), "changed"] == 0.0
    # McNemar: one discordant slice (clean right, blurred wrong) -> p = 1.0; none -> 1.0
    assert blur_a["p_vs_clean"] == 1.0
    assert summary.loc[("blur", "ensemble"), "p_vs_clean"] == 1.0
    assert list(rb.summarise(pd.DataFrame(rows))["corruption"])[:2] == ["none", "none"]
    with pytest.raises(ValueError, match="clean"):
        rb.summarise(pd.DataFrame(rows[1::2]))


class BrightnessEnsemble:
    """Fake ensemble: class = brightness quartile of the crop's mean (0-63 -> glioma, ...)."""

    def predict_crops(self, crops):
        idx = np.array([min(int(np.mean(c)) // 64, 3) for c in crops])
        proba = np.eye(4, dtype=np.float32)[idx]
        return SimpleNamespace(per_model={"fake": proba}, ensemble=proba)


def test_predict_condition_applies_the_corruption_before_the_crop():
    gray = np.full((64, 64), 150, np.uint8)  # mean 150 -> "notumor" (index 2)
    rows = pd.DataFrame({"path": ["s"], "label": ["notumor"]})
    clean = rb.predict_condition(BrightnessEnsemble(), {"s": gray}, rows, "none", 0)
    dark = rb.predict_condition(BrightnessEnsemble(), {"s": gray}, rows, "gamma_dark", 2)
    assert clean.loc[0, "fake"] == clean.loc[0, "ensemble"] == "notumor"
    # gamma 2: 255 * (150/255)^2 = 88 -> "meningioma" (index 1)
    assert dark.loc[0, "ensemble"] == "meningioma"
    assert list(dark.columns) == ["path", "label", "corruption", "severity", "fake", "ensemble"]
    assert (dark.loc[0, "corruption"], dark.loc[0, "severity"]) == ("gamma_dark", 2)


@pytest.mark.slow
def test_run_reports_unreadable_files_and_resumes(tiny_artifacts: Path, make_dataset_dir,
                                                  tmp_path, monkeypatch):
    data = make_dataset_dir(2, shape=(96, 96), seed=5)
    (data / "glioma" / "glioma_001.png").write_bytes(b"not an image")
    from ensemble.data import list_class_folder

    split = tmp_path / "split.csv"
    list_class_folder(data).assign(group=0, split="test").to_csv(split, index=False)
    out = tmp_path / "out"
    args = [str(data), "--split", str(split), "--per-class", "2", "--corruptions", "blur",
            "--out", str(out), "--artifacts", str(tiny_artifacts / "classification")]
    assert rb.main(args) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["n_slices"] == 7
    assert [f["path"] for f in record["failures"]] == ["glioma/glioma_001.png"]
    table = pd.read_csv(out / "per_slice.csv")
    assert len(table) == 7 * 3  # clean + blur 1 + blur 2
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["model"]) == {"xception", "inceptionv3", "resnet50", "vgg19", "ensemble"}
    assert len(summary) == 3 * 5

    assert rb.main(args) == 2  # refuses to overwrite without --resume

    # resume after an interruption: drop the last condition, it alone is recomputed
    table[table["severity"] < 2].to_csv(out / "per_slice.csv", index=False)
    calls = []
    real = rb.predict_condition
    monkeypatch.setattr(rb, "predict_condition",
                        lambda *a, **k: calls.append(a[3:5]) or real(*a, **k))
    assert rb.main([*args, "--resume"]) == 0
    assert calls == [("blur", 2)]
    pd.testing.assert_frame_equal(pd.read_csv(out / "per_slice.csv"), table)

    other = [a if a != "2" else "1" for a in args]  # --per-class 1
    assert rb.main([*other, "--resume"]) == 2  # a run with other settings is not mixed in


def test_summarise_mcnemar_p_known_answer():
    # 6 slices right when clean and all wrong when shifted: 6 discordant pairs one
    # way -> exact two-sided p = 2 * 0.5**6 = 0.03125
    rows = []
    for i in range(6):
        rows.append({"path": f"p{i}", "label": "glioma", "corruption": "none", "severity": 0,
                     "ensemble": "glioma"})
        rows.append({"path": f"p{i}", "label": "glioma", "corruption": "blur", "severity": 2,
                     "ensemble": "notumor"})
    summary = rb.summarise(pd.DataFrame(rows)).set_index("corruption")
    assert summary.loc["blur", "p_vs_clean"] == pytest.approx(0.03125)
    assert summary.loc["blur", "accuracy_change"] == -1.0
