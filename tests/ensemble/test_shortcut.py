"""``ensemble.shortcut``: intensity features, gamma read-back, the probe, the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from ensemble import shortcut as sc
from neurostack import CLASS_NAMES
from neurostack.preprocess import find_brain_box

COLS = [f"q{p}" for p in sc.INTENSITY_QUANTILES]


def _ramp_disk(size: int = 120) -> np.ndarray:
    """A disk whose grey level rises from 80 at the centre to 250 at the rim, on black."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(yy, xx) / (0.45 * size)
    img = np.where(r <= 1, 80 + 170 * r, 0)
    return np.round(img).astype(np.uint8)


def _gamma(gray: np.ndarray, g: float) -> np.ndarray:
    return np.round(255 * (gray / 255.0) ** g).astype(np.uint8)


def test_intensity_features_known_answer_on_a_flat_image():
    feats = sc.intensity_features(np.full((64, 64), 128, np.uint8))
    np.testing.assert_allclose(feats, np.log(128 / 255) * np.ones(len(sc.INTENSITY_QUANTILES)))
    # a black image: quantiles clipped to grey level 1, never log(0)
    np.testing.assert_allclose(sc.intensity_features(np.zeros((32, 32), np.uint8)),
                               np.log(1 / 255))


@pytest.mark.parametrize("g", [0.5, 0.67, 1.5, 2.0])
def test_a_display_gamma_is_read_back(g):
    disk = _ramp_disk()
    shifted = _gamma(disk, g)
    assert find_brain_box(shifted) == find_brain_box(disk)  # same crop, so only grey levels move
    reference = sc.intensity_features(disk)
    features = sc.intensity_features(shifted)
    np.testing.assert_allclose(features, g * reference, rtol=0.02, atol=0.004)
    assert sc.relative_gamma(features, reference) == pytest.approx(g, rel=0.02)
    assert sc.relative_gamma(reference, reference) == pytest.approx(1.0)


def test_relative_gamma_shapes_and_refusals():
    ref = np.array([-1.0, -0.5])
    out = sc.relative_gamma(np.array([[-2.0, -1.0], [-0.5, -0.25]]), ref)
    np.testing.assert_allclose(out, [2.0, 0.5])
    assert isinstance(sc.relative_gamma(np.array([-1.0, -0.5]), ref), float)
    with pytest.raises(ValueError, match="must match reference"):
        sc.relative_gamma(np.zeros(3), ref)
    with pytest.raises(ValueError, match="all zero"):
        sc.relative_gamma(np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match="2-D uint8"):
        sc.intensity_features(np.zeros((8, 8), np.float32))


def _features(gammas_by_class: dict[str, float], n: int, rng: np.random.Generator,
              noise: float) -> pd.DataFrame:
    base = sc.intensity_features(_ramp_disk())
    rows = []
    for label, g in gammas_by_class.items():
        for _ in range(n):
            f = g * base * np.exp(rng.normal(0, noise)) if noise else g * base
            rows.append({"label": label, **dict(zip(COLS, f, strict=True))})
    return pd.DataFrame(rows)


def test_probe_finds_a_class_coded_intensity_and_not_an_uninformative_one():
    rng = np.random.default_rng(0)
    coded = dict(zip(CLASS_NAMES, (1.3, 1.0, 0.6, 0.8), strict=True))
    res = sc.shortcut_probe(_features(coded, 40, rng, 0.03), _features(coded, 25, rng, 0.03))
    assert res["accuracy"] > 0.95 and res["balanced_accuracy"] > 0.95
    assert res["majority_baseline"] == pytest.approx(0.25)
    assert (res["n_fit"], res["n_score"]) == (160, 100)
    # medians relative to the fit part's median curve keep the classes' order
    med = res["median_relative_gamma"]
    assert med["notumor"] < med["pituitary"] < med["meningioma"] < med["glioma"]

    same = dict.fromkeys(CLASS_NAMES, 1.0)
    res = sc.shortcut_probe(_features(same, 40, rng, 0.2), _features(same, 100, rng, 0.2))
    assert res["accuracy"] < 0.4  # chance is 0.25 with four balanced classes


def test_probe_refuses_empty_or_single_class_parts():
    rng = np.random.default_rng(1)
    fit = _features({"glioma": 1.0, "notumor": 0.7}, 5, rng, 0.0)
    with pytest.raises(ValueError, match="both parts"):
        sc.shortcut_probe(fit, fit.iloc[:0])
    with pytest.raises(ValueError, match="two classes"):
        sc.shortcut_probe(fit[fit.label == "glioma"], fit)


def test_cli_reports_an_unreadable_file_and_measures_the_rest(
    class_dataset, class_dataset_split, tmp_path, capsys
):
    data = shutil.copytree(class_dataset, tmp_path / "data")
    split = pd.read_csv(class_dataset_split)
    broken = split[split.split == "val"].path.iloc[0]
    (data / broken).write_bytes(b"not an image")
    out = tmp_path / "rec" / "shortcut.json"

    assert sc.main([str(data), "--split", str(class_dataset_split), "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert [u["path"] for u in rec["unreadable"]] == [broken]
    assert rec["n_fit"] == (split.split == "train").sum()
    assert rec["n_score"] == (split.split == "val").sum() - 1
    assert 0 <= rec["accuracy"] <= 1 and rec["fit_part"] == "train"
    assert "1 unreadable" in capsys.readouterr().out

    assert sc.main([str(data), "--split", str(class_dataset_split), "--out", str(out),
                    "--score-part", "train"]) == 2
    assert "must differ" in capsys.readouterr().err
