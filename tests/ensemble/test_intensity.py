"""``ensemble.intensity``: features, gamma read-back, the reference, its artifact and CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ensemble import intensity as it
from neurostack.errors import ArtifactError
from neurostack.preprocess import find_brain_box


def _ramp_disk(size: int = 120) -> np.ndarray:
    """A disk whose grey level rises from 80 at the centre to 250 at the rim, on black."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(yy, xx) / (0.45 * size)
    img = np.where(r <= 1, 80 + 170 * r, 0)
    return np.round(img).astype(np.uint8)


def _gamma(gray: np.ndarray, g: float) -> np.ndarray:
    return np.round(255 * (gray / 255.0) ** g).astype(np.uint8)


def test_intensity_features_known_answer_on_a_flat_image():
    feats = it.intensity_features(np.full((64, 64), 128, np.uint8))
    np.testing.assert_allclose(feats, np.log(128 / 255) * np.ones(len(it.INTENSITY_QUANTILES)))
    # a black image: quantiles clipped to grey level 1, never log(0)
    np.testing.assert_allclose(it.intensity_features(np.zeros((32, 32), np.uint8)),
                               np.log(1 / 255))


@pytest.mark.parametrize("g", [0.5, 0.67, 1.5, 2.0])
def test_a_display_gamma_is_read_back(g):
    disk = _ramp_disk()
    shifted = _gamma(disk, g)
    assert find_brain_box(shifted) == find_brain_box(disk)  # same crop, so only grey levels move
    reference = it.intensity_features(disk)
    features = it.intensity_features(shifted)
    np.testing.assert_allclose(features, g * reference, rtol=0.02, atol=0.004)
    assert it.relative_gamma(features, reference) == pytest.approx(g, rel=0.02)
    assert it.relative_gamma(reference, reference) == pytest.approx(1.0)


@pytest.mark.parametrize("g", [0.5, 1.5, 2.0])
def test_correct_gamma_undoes_a_display_gamma(g):
    disk = _ramp_disk()
    back = it.correct_gamma(_gamma(disk, g), g)
    inside = disk > 0
    # uint8 rounding twice: within a few grey levels where the curve is steep
    assert np.abs(back[inside].astype(int) - disk[inside]).max() <= 4
    assert (back[~inside] == 0).all()
    assert it.relative_gamma(it.intensity_features(back), it.intensity_features(disk)) == \
        pytest.approx(1.0, abs=0.02)
    np.testing.assert_array_equal(it.correct_gamma(disk, 1.0), disk)


@pytest.mark.parametrize(("gray", "g", "match"), [
    (np.zeros((4, 4), np.float32), 1.0, "uint8"), (np.zeros((4, 4), np.uint8), 0.0, "positive"),
    (np.zeros((4, 4), np.uint8), float("inf"), "positive"),
])
def test_correct_gamma_refusals(gray, g, match):
    with pytest.raises(ValueError, match=match):
        it.correct_gamma(gray, g)


def test_relative_gamma_shapes_and_refusals():
    ref = np.array([-1.0, -0.5])
    out = it.relative_gamma(np.array([[-2.0, -1.0], [-0.5, -0.25]]), ref)
    np.testing.assert_allclose(out, [2.0, 0.5])
    assert isinstance(it.relative_gamma(np.array([-1.0, -0.5]), ref), float)
    with pytest.raises(ValueError, match="must match reference"):
        it.relative_gamma(np.zeros(3), ref)
    with pytest.raises(ValueError, match="all zero"):
        it.relative_gamma(np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match="2-D uint8"):
        it.intensity_features(np.zeros((8, 8), np.float32))




def _line_reference(k: int) -> it.IntensityReference:
    """Five reference slices one unit apart on a line: atypicalities are easy to work out."""
    unit = np.ones(len(it.INTENSITY_QUANTILES)) / np.sqrt(len(it.INTENSITY_QUANTILES))
    return it.IntensityReference(np.outer(np.arange(5.0), unit), k=k, threshold=0.75)


def test_atypicality_known_answers():
    ref = _line_reference(k=2)
    unit = ref.features[1]
    # at slice 0: nearest are itself (0) and slice 1 (1) -> 0.5; leave-one-out: 1 and 2 -> 1.5
    assert ref.atypicality(ref.features[0]) == pytest.approx([0.5])
    assert ref.atypicality(ref.features[:1], exclude_self=True) == pytest.approx([1.5])
    # half-way between slices 2 and 3: both at 0.5 -> 0.5; far beyond the end: 10 and 11
    np.testing.assert_allclose(ref.atypicality(np.stack([2.5 * unit, 14 * unit])), [0.5, 10.5])
    check = ref.check(14 * unit)
    assert not check.typical and check.threshold == 0.75
    assert check.relative_gamma == pytest.approx(7.0)  # the median slice is 2 * unit
    assert "darker" in check.warning() and "10.500 > 0.750" in check.warning()
    assert ref.check(2.5 * unit).warning() is None
    bright = ref.check(-10 * unit)  # beyond slice 0: 10 and 11 away, gamma -5 < 1
    assert not bright.typical and "brighter" in bright.warning()


def test_fit_reference_threshold_is_the_leave_one_out_quantile():
    ref = it.fit_reference(_line_reference(1).features, k=1, quantile=0.9)
    assert ref.threshold == pytest.approx(1.0)  # every slice's nearest other slice is 1 away
    ref = it.fit_reference(_line_reference(1).features, k=2, quantile=0.5)
    # leave-one-out means: ends (1+2)/2 = 1.5, inner slices (1+1)/2 = 1 -> median 1
    assert ref.threshold == pytest.approx(1.0)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"features": np.zeros((5, 3)), "k": 1, "threshold": 1.0}, "features must be"),
    ({"features": np.zeros((5, 6)), "k": 5, "threshold": 1.0}, "k must be in"),
    ({"features": np.zeros((5, 6)), "k": 0, "threshold": 1.0}, "k must be in"),
    ({"features": np.zeros((5, 6)), "k": 1, "threshold": float("nan")}, "threshold"),
])
def test_reference_validates_its_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        it.IntensityReference(**kwargs)


def test_fit_reference_refuses_a_bad_quantile():
    with pytest.raises(ValueError, match="quantile"):
        it.fit_reference(np.zeros((5, 6)), k=1, quantile=1.0)


def test_a_darkened_slice_is_flagged_and_a_typical_one_is_not():
    rng = np.random.default_rng(0)
    disk = _ramp_disk()
    train = np.stack([it.intensity_features(_gamma(disk, g)) for g in rng.uniform(0.85, 1.15, 60)])
    ref = it.fit_reference(train, k=5, quantile=0.99)
    assert ref.check(it.intensity_features(disk)).typical
    dark = ref.check(it.intensity_features(_gamma(disk, 2.0)))
    assert not dark.typical and dark.relative_gamma == pytest.approx(2.0, rel=0.05)


def _disk_reference() -> it.IntensityReference:
    rng = np.random.default_rng(0)
    disk = _ramp_disk()
    train = np.stack([it.intensity_features(_gamma(disk, g)) for g in rng.uniform(0.85, 1.15, 60)])
    return it.fit_reference(train, k=5, quantile=0.99)


def test_corrected_slice_maps_only_flagged_invertible_slices():
    ref = _disk_reference()
    disk = _ramp_disk()
    typical = it.check_slice(ref, disk)
    assert typical == ref.check(it.intensity_features(disk))  # the head crop is found inside
    assert not it.flagged(typical, disk) and it.corrected_slice(disk, typical) is None
    dark = _gamma(disk, 2.0)
    check = it.check_slice(ref, dark)
    assert it.flagged(check, dark)
    mapped = it.corrected_slice(dark, check)
    assert np.array_equal(mapped, it.correct_gamma(dark, check.relative_gamma))
    assert it.check_slice(ref, mapped).typical  # back on the training curve
    # almost blank: not an intensity problem, never mapped; no reference: never flagged
    blank = np.zeros((120, 120), np.uint8)
    blank[:3, :3] = 200
    assert not it.flagged(it.check_slice(ref, blank), blank)
    assert not it.flagged(None, dark) and it.corrected_slice(dark, None) is None
    # a white slice is flagged but its curve cannot be inverted (relative gamma 0)
    white = np.full((120, 120), 255, np.uint8)
    white_check = it.check_slice(ref, white)
    assert it.flagged(white_check, white) and it.corrected_slice(white, white_check) is None


def test_network_inputs_and_correction_record(tmp_path):
    ref = _disk_reference()
    disk, dark = _ramp_disk(), _gamma(_ramp_disk(), 2.0)
    inputs, corrected = it.network_inputs([disk, dark], ref)
    assert corrected == [False, True]
    assert inputs[0] is disk and not np.array_equal(inputs[1], dark)
    same, none = it.network_inputs([disk, dark], None)
    assert none == [False, False] and same[1] is dark
    assert it.correction_record(None, None) is None
    folder = it.save_reference(ref, tmp_path / "ref", {})
    rec = it.correction_record(it.load_reference(folder), folder)
    assert rec["reference"] == str(folder) and rec["threshold"] == pytest.approx(ref.threshold)
    assert rec["features_sha256"] == json.loads((folder / "config.json").read_text())[
        "features_sha256"]


def test_reference_artifact_round_trip_and_refusals(tmp_path):
    ref = it.fit_reference(_line_reference(1).features, k=2, quantile=0.9)
    folder = it.save_reference(ref, tmp_path / "ref", {"split": "s.csv"})
    back = it.load_reference(folder)
    assert (back.k, back.threshold, back.config["split"]) == (2, ref.threshold, "s.csv")
    query = np.random.default_rng(1).normal(size=(7, len(it.INTENSITY_QUANTILES)))
    np.testing.assert_allclose(back.atypicality(query), ref.atypicality(query), rtol=1e-6)

    cfg_path = folder / it.CONFIG_FILE
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps(cfg | {"quantiles": [0.5, 0.9]}))
    with pytest.raises(ArtifactError, match="quantiles"):
        it.load_reference(folder)
    cfg_path.write_text(json.dumps({k: v for k, v in cfg.items() if k != "threshold"}))
    with pytest.raises(ArtifactError, match="threshold"):
        it.load_reference(folder)
    cfg_path.write_text(json.dumps(cfg))
    with open(folder / it.FEATURES_FILE, "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(ArtifactError, match="SHA-256|sha256|checksum"):
        it.load_reference(folder)


def test_cli_builds_the_reference_reports_an_unreadable_file_and_the_rates(
    dataset_with_broken_file, class_dataset_split, tmp_path, capsys
):
    data, broken = dataset_with_broken_file("train")
    split = pd.read_csv(class_dataset_split)
    out = tmp_path / "ref"
    argv = [str(data), "--split", str(class_dataset_split), "--out", str(out), "--k", "3",
            "--check-per-class", "2"]
    assert it.main(argv) == 0
    cfg = json.loads((out / it.CONFIG_FILE).read_text())
    assert cfg["n_reference"] == (split.split == "train").sum() - 1
    assert [u["path"] for u in cfg["unreadable"]] == [broken]
    rates = {(r["corruption"], r["severity"]): r for r in cfg["check"]["flagged_share"]}
    assert len(rates) == 15 and rates[("none", 0)]["n"] == 8  # 2 per class x 4 classes
    assert all(0 <= r["flagged_share"] <= 1 for r in rates.values())
    assert it.load_reference(out).k == 3
    assert "1 unreadable" in capsys.readouterr().out
    assert it.main([*argv[:5], "--k", "999"]) == 2
    assert "k must be in" in capsys.readouterr().err
