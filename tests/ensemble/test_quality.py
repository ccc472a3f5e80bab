"""Noise and detail of a slice (``ensemble.quality``): known answers on made-up arrays."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from ensemble import quality as q
from neurostack.errors import ArtifactError


def _noisy(sd: float, level: float = 100.0, shape=(200, 200), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(level + rng.normal(0.0, sd, shape)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("sd", [2.0, 5.0, 12.0])
def test_noise_and_detail_read_the_sd_of_gaussian_noise_on_a_flat_head(sd):
    head = _noisy(sd)
    assert q.noise_sigma(head) == pytest.approx(sd, rel=0.06)
    assert q.detail_level(head) == pytest.approx(sd, rel=0.06)


def test_a_plane_has_no_noise_and_no_detail():
    yy, xx = np.mgrid[0:64, 0:80]
    plane = (40 + xx + 2 * yy).astype(np.uint8)  # 40..245: every pixel is head
    assert q.noise_sigma(plane) == 0.0
    assert q.detail_level(plane) == 0.0
    assert q.detail_level(np.full((10, 10), 7, np.uint8)) == 0.0


def test_blur_lowers_the_detail_level_and_dark_pixels_do_not_count_as_head():
    head = _noisy(5.0)
    blurred = cv2.GaussianBlur(head, (0, 0), 1.5)
    assert q.detail_level(blurred) < 0.3 * q.detail_level(head)
    assert np.isnan(q.noise_sigma(np.full((30, 30), q.HEAD_LEVEL, np.uint8)))  # no head pixel
    assert np.isnan(q.noise_sigma(np.zeros((2, 9), np.uint8)))  # smaller than the 3x3 mask
    assert np.isnan(q.detail_level(np.zeros((9, 2), np.uint8)))
    half = head.copy()
    half[:, :100] = 0  # background: the noise estimate uses the head half only
    assert q.noise_sigma(half) == pytest.approx(5.0, rel=0.1)


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.float32), np.zeros((8, 8, 3), np.uint8)])
def test_features_refuse_non_grey_uint8_input(bad):
    with pytest.raises(ValueError, match="2-D uint8"):
        q.noise_sigma(bad)
    with pytest.raises(ValueError, match="2-D uint8"):
        q.detail_level(bad)


def test_check_warnings_name_the_limits_and_a_dominant_training_class():
    quiet = q.QualityCheck(1.0, 0.5, 11.4, 0.36)
    assert (quiet.noisy, quiet.smooth, quiet.warnings()) == (False, False, [])
    noisy = q.QualityCheck(15.2, 3.0, 11.4, 0.36, {"notumor": 38})
    (text,) = noisy.warnings()
    assert text.startswith(q.NOISY_PREFIX) and "15.2 grey levels > 11.4" in text
    assert "38 of the 38 slices this noisy are 'notumor'" in text
    mixed = q.QualityCheck(0.5, 0.2, 11.4, 0.36, None, {"glioma": 9, "meningioma": 6})
    (text,) = mixed.warnings()
    assert text.startswith(q.SMOOTH_PREFIX) and "0.20 < 0.36" in text
    assert "lean" not in text  # no class holds 90 % of them
    both = q.QualityCheck(20.0, 0.1, 11.4, 0.36)
    assert len(both.warnings()) == 2 and both.to_dict()["noisy"] and both.to_dict()["smooth"]
    assert not q.QualityCheck(float("nan"), float("nan"), 11.4, 0.36).warnings()


def test_fit_reference_limits_are_the_training_quantiles_and_nan_rows_are_ignored():
    noise = np.arange(1.0, 101.0)
    detail = np.arange(100.0, 0.0, -1.0)
    features = np.column_stack([noise, detail])
    ref = q.fit_reference(np.vstack([features, [np.nan, 1.0]]), noise_quantile=0.99,
                          detail_quantile=0.05)
    assert len(ref.features) == 100
    assert ref.noise_limit == pytest.approx(np.quantile(noise, 0.99))
    assert ref.detail_limit == pytest.approx(np.quantile(detail, 0.05))
    noisy, smooth = ref.flags(features)
    assert noisy.sum() == 1 and smooth.sum() == 5
    check = ref.check(np.array([200.0, 50.0]))
    assert check.noisy and not check.smooth


@pytest.mark.parametrize(
    "kwargs", [{"noise_quantile": 1.0}, {"detail_quantile": 0.0},
               {"noise_quantile": 0.2, "detail_quantile": 0.3}],
)
def test_fit_reference_refuses_bad_quantiles(kwargs):
    with pytest.raises(ValueError, match="quantiles must be in"):
        q.fit_reference(np.ones((5, 2)), **kwargs)


def test_reference_refuses_bad_shapes_and_limits():
    with pytest.raises(ValueError, match="features must be"):
        q.QualityReference(np.ones((5, 3)), 1.0, 0.1)
    with pytest.raises(ValueError, match="noise_limit"):
        q.QualityReference(np.ones((5, 2)), float("inf"), 0.1)
    with pytest.raises(ValueError, match="at least two finite"):
        q.fit_reference(np.array([[1.0, np.nan], [2.0, 1.0]]))


def test_reference_artifact_round_trip_and_refusals(tmp_path):
    ref = q.fit_reference(np.column_stack([np.arange(1.0, 21.0), np.arange(2.0, 22.0)]))
    folder = q.save_reference(ref, tmp_path / "ref",
                              {"training_classes_beyond_limits": {"noisy": {"notumor": 1}}})
    back = q.load_reference(folder)
    assert (back.noise_limit, back.detail_limit) == (ref.noise_limit, ref.detail_limit)
    assert back.check([50.0, 5.0]).noisy_training_classes == {"notumor": 1}
    cfg_path = folder / q.CONFIG_FILE
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({k: v for k, v in cfg.items() if k != "noise_limit"}))
    with pytest.raises(ArtifactError, match="noise_limit"):
        q.load_reference(folder)
    cfg_path.write_text(json.dumps(cfg))
    with open(folder / q.FEATURES_FILE, "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(ArtifactError, match="SHA-256|sha256|checksum"):
        q.load_reference(folder)


def test_cli_builds_the_reference_reports_an_unreadable_file_and_the_rates(
    dataset_with_broken_file, class_dataset_split, tmp_path, capsys
):
    data, broken = dataset_with_broken_file("train")
    split = pd.read_csv(class_dataset_split)
    out = tmp_path / "ref"
    argv = [str(data), "--split", str(class_dataset_split), "--out", str(out),
            "--check-per-class", "2", "--noise-quantile", "0.9", "--detail-quantile", "0.1"]
    assert q.main(argv) == 0
    cfg = json.loads((out / q.CONFIG_FILE).read_text())
    assert cfg["n_reference"] == (split.split == "train").sum() - 1
    assert [u["path"] for u in cfg["unreadable"]] == [broken]
    rates = {(r["corruption"], r["severity"]): r for r in cfg["check"]["flagged_share"]}
    assert len(rates) == 15 and rates[("none", 0)]["n"] == 8  # 2 per class x 4 classes
    assert rates[("rician_noise", 2)]["noisy_share"] >= rates[("none", 0)]["noisy_share"]
    assert rates[("blur", 2)]["smooth_share"] >= rates[("none", 0)]["smooth_share"]
    beyond = cfg["training_classes_beyond_limits"]
    ref = q.load_reference(out)
    noisy, smooth = ref.flags(ref.features)
    assert sum(beyond["noisy"].values()) == noisy.sum()
    assert sum(beyond["smooth"].values()) == smooth.sum()
    assert "1 unreadable" in capsys.readouterr().out
    assert q.main([*argv[:5], "--noise-quantile", "1.5"]) == 2
    assert "quantiles must be in" in capsys.readouterr().err


def test_describe_reference_names_limits_classes_and_rates():
    config = {
        "n_reference": 3998, "noise_limit": 11.37, "detail_limit": 0.362,
        "noise_quantile": 0.99, "detail_quantile": 0.005,
        "training_classes_beyond_limits": {"noisy": {"notumor": 38},
                                           "smooth": {"glioma": 9, "pituitary": 1}},
        "check": {"part": "val", "flagged_share": [
            {"corruption": "none", "severity": 0, "n": 200, "noisy_share": 0.01,
             "smooth_share": 0.005, "flagged_share": 0.015},
            {"corruption": "rician_noise", "severity": 1, "n": 200, "noisy_share": 0.025,
             "smooth_share": 0.0, "flagged_share": 0.025},
            {"corruption": "rician_noise", "severity": 2, "n": 200, "noisy_share": 1.0,
             "smooth_share": 0.0, "flagged_share": 1.0},
        ]},
    }
    text = q.describe_reference(config)
    assert "above a noise sd of 11.4 grey levels (the 99.0% point" in text
    assert "below a detail level of 0.36 (the 0.5% point)" in text
    assert "Training slices this noisy: notumor 38." in text
    assert "Training slices this smooth: glioma 9, pituitary 1." in text
    assert "On 200 val slices it flagged 1.5% as they are" in text
    assert "2.5% / 100.0% noisy under Rician noise (severity 1 / 2)." in text
    assert "blur" not in text  # not measured in this config
    bare = {k: v for k, v in config.items() if k not in ("check", "training_classes_beyond_limits")}
    assert q.describe_reference(bare).endswith("(the 0.5% point).")
