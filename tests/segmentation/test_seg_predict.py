from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from neurostack.errors import ArtifactError
from segmentation.predict import SegmentationResult, load_segmenter


@pytest.mark.slow
def test_export_load_round_trip_identical_predictions(tmp_path, float32_policy, make_tiny_artifact):
    folder, model = make_tiny_artifact(tmp_path / "resunet", input_size=32, seed=5)
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == {
        "input_size": 32,
        "base_filters": 4,
        "depth": 2,
        "dropout": 0.0,
        "bn_momentum": 0.9,
        "mirror_input": False,
    }
    assert config["threshold"] == 0.5
    assert "brain crop -> resize -> /255" in config["preprocessing"]
    assert (folder / "weights.npz").is_file()

    seg = load_segmenter(folder)
    x = np.random.default_rng(0).random((3, 32, 32, 1), dtype=np.float32)
    expected = np.asarray(model(x, training=False))[..., 0]
    np.testing.assert_allclose(seg.predict_crops(x), expected, atol=1e-6)
    again = load_segmenter(folder)
    np.testing.assert_array_equal(again.predict_crops(x), seg.predict_crops(x))


def test_predict_maps_back_to_original_non_square_shape(tiny_artifact, make_fake_slice):
    seg = load_segmenter(tiny_artifact)
    gray, _ = make_fake_slice(np.random.default_rng(1), (90, 140))
    result = seg.predict(gray, threshold=0.5)
    assert isinstance(result, SegmentationResult)
    assert result.probability.shape == (90, 140) and result.probability.dtype == np.float32
    assert result.mask.shape == (90, 140) and result.mask.dtype == bool
    assert result.probability.min() >= 0.0 and result.probability.max() <= 1.0
    np.testing.assert_array_equal(result.mask, result.probability >= 0.5)
    box = result.box
    outside = np.ones_like(result.mask)
    outside[box.row0 : box.row1, box.col0 : box.col1] = False
    assert (result.probability[outside] == 0).all()  # nothing outside the brain box
    assert result.area_px == int(result.mask.sum())
    low = seg.predict(gray, threshold=0.0)
    assert low.mask[box.row0 : box.row1, box.col0 : box.col1].all()


def test_predict_batch_matches_single_predictions(tiny_artifact, make_fake_slice):
    seg = load_segmenter(tiny_artifact)
    rng = np.random.default_rng(2)
    grays = [make_fake_slice(rng, shape)[0] for shape in [(64, 64), (80, 50), (100, 120)] * 3]
    batch = seg.predict_batch(grays, threshold=0.4, batch_size=4)
    assert len(batch) == len(grays)
    for gray, res in zip(grays, batch, strict=True):
        single = seg.predict(gray, threshold=0.4)
        assert res.probability.shape == gray.shape
        np.testing.assert_allclose(res.probability, single.probability, atol=1e-6)
        assert res.box == single.box


def test_result_maps_back_and_applies_the_postprocessing(tiny_artifact):
    from neurostack.preprocess import CropBox

    seg = load_segmenter(tiny_artifact)
    assert seg.postprocess == "none"  # the tiny artifact's config has no postprocess key
    crop = np.zeros((32, 32), np.float32)
    crop[2:10, 2:10] = 0.9  # mass 57.6
    crop[20:24, 20:24] = 0.8  # mass 12.8
    box = CropBox(10, 20, 42, 52)  # the crop fills rows 10-41, cols 20-51 of a 60x70 slice
    plain = seg.result(crop, box, (60, 70), 0.5)
    assert plain.postprocess == "none" and plain.removed_components == 0
    assert plain.mask.shape == (60, 70) and plain.area_px == 64 + 16
    assert plain.mask[12:20, 22:30].all() and plain.mask[30:34, 40:44].all()
    kept = seg.result(crop, box, (60, 70), 0.5, "largest_component")
    assert kept.postprocess == "largest_component" and kept.removed_components == 1
    assert kept.area_px == 64 and not kept.mask[30:34, 40:44].any()
    np.testing.assert_array_equal(kept.probability, plain.probability)
    # the default comes from the loader (or the artifact's config)
    seg_lcc = load_segmenter(tiny_artifact, postprocess="largest_component")
    assert seg_lcc.result(crop, box, (60, 70), 0.5).area_px == 64
    assert seg_lcc.result(crop, box, (60, 70), 0.5, "none").area_px == 80


def test_predict_postprocess_matches_largest_component(tiny_artifact, make_fake_slice):
    from segmentation.postprocess import largest_component

    seg = load_segmenter(tiny_artifact)
    gray, _ = make_fake_slice(np.random.default_rng(3), (96, 96))
    for threshold in (0.3, 0.5, 0.7):
        res = seg.predict(gray, threshold=threshold, postprocess="largest_component")
        expected, removed = largest_component(res.probability >= threshold, res.probability)
        np.testing.assert_array_equal(res.mask, expected)
        assert res.removed_components == removed
    with pytest.raises(ValueError, match="postprocess"):
        seg.predict(gray, postprocess="fill_holes")


def test_postprocess_setting_in_config_is_validated(tiny_artifact, tmp_path):
    folder = tmp_path / "pp"
    shutil.copytree(tiny_artifact, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["postprocess"] = "largest_component"
    (folder / "config.json").write_text(json.dumps(cfg))
    assert load_segmenter(folder).postprocess == "largest_component"
    assert load_segmenter(folder, postprocess="none").postprocess == "none"
    cfg["postprocess"] = "dilate"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="postprocess must be one of"):
        load_segmenter(folder)


def test_predict_rejects_bad_input(tiny_artifact):
    seg = load_segmenter(tiny_artifact)
    with pytest.raises(ValueError, match="2-D"):
        seg.predict(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        seg.predict(np.zeros((40, 40), np.float32))
    with pytest.raises(ValueError, match="threshold"):
        seg.predict(np.zeros((40, 40), np.uint8), threshold=1.5)


def test_tampered_weight_byte_raises_checksum_error(tiny_artifact, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_artifact, folder)
    weights = folder / "weights.npz"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="(?i)checksum"):
        load_segmenter(folder)


def test_missing_pieces_raise_artifact_error(tiny_artifact, tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        load_segmenter(tmp_path / "nowhere")
    folder = tmp_path / "copy"
    shutil.copytree(tiny_artifact, folder)
    (folder / "weights.npz").unlink()
    with pytest.raises(ArtifactError, match="weights.npz"):
        load_segmenter(folder)
    config = json.loads((tiny_artifact / "config.json").read_text())
    shutil.copy(tiny_artifact / "weights.npz", folder / "weights.npz")
    del config["weights_sha256"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="weights_sha256"):
        load_segmenter(folder)
    (folder / "config.json").unlink()
    with pytest.raises(ArtifactError, match="config.json"):
        load_segmenter(folder)


def test_architecture_mismatch_raises_artifact_error(tiny_artifact, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_artifact, folder)
    config = json.loads((folder / "config.json").read_text())
    config["architecture"]["base_filters"] = 8
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="shape|architectures"):
        load_segmenter(folder)
    config["architecture"]["input_size"] = 30
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="invalid architecture"):
        load_segmenter(folder)


def test_hflip_tta_averages_the_mirrored_prediction(tiny_artifact):
    plain = load_segmenter(tiny_artifact)
    tta = load_segmenter(tiny_artifact, tta="hflip")
    assert plain.tta == "none" and tta.tta == "hflip"
    s = plain.input_size
    x = np.random.default_rng(3).random((2, s, s), dtype=np.float32)
    expected = 0.5 * (plain.predict_crops(x) + plain.predict_crops(x[:, :, ::-1])[:, :, ::-1])
    np.testing.assert_allclose(tta.predict_crops(x), expected, atol=1e-6)
    # a left-right symmetric crop gets a symmetric probability map
    sym = np.concatenate([x[:, :, : s // 2], x[:, :, : s // 2][:, :, ::-1]], axis=2)
    p = tta.predict_crops(sym)
    np.testing.assert_allclose(p, p[:, :, ::-1], atol=1e-6)


def test_tta_setting_is_validated(tiny_artifact, tmp_path):
    with pytest.raises(ValueError, match=r"one of \['none', 'hflip'\]; received 'vflip'"):
        load_segmenter(tiny_artifact, tta="vflip")
    bad = tmp_path / "bad"
    shutil.copytree(tiny_artifact, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["test_time_augmentation"] = "rotate"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="test_time_augmentation.*'rotate'"):
        load_segmenter(bad)
