"""The end-to-end slice analysis on a tiny random artifact tree."""

from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from neurostack_samples import IDENTIFIERS, make_dicom
from PIL import Image

from ensemble.inference import EnsemblePrediction
from ensemble.registry import BACKBONES
from neurostack import CLASS_NAMES
from neurostack.errors import ArtifactError, InputImageError
from neurostack.imaging import LoadedImage, load_image
from neurostack.pipeline import CaseResult, Pipeline, empty_mask_warning, load_pipeline
from neurostack.preprocess import crop, find_brain_box, resize_square

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "artifacts" / "samples" / "notumor_Tr-no_0354.jpg"  # 268 x 236, non-square
IDENTIFYING_KEY_PARTS = (
    "patient",
    "birth",
    "accession",
    "institution",
    "physician",
    "referring",
    "study",
    "series",
    "sop",
    "uid",
    "name",
    "date",
    "operator",
)


@pytest.fixture(scope="module")
def png_slice(tmp_path_factory, make_slice) -> Path:
    path = tmp_path_factory.mktemp("png") / "slice.png"
    Image.fromarray(make_slice("glioma", np.random.default_rng(8), (150, 210))).save(path)
    return path


def _low_threshold(pipe: Pipeline, source) -> float:
    """A threshold at which the tiny random segmenter marks about half of its positive pixels."""
    prob = pipe.segmenter.predict(load_image(source).gray).probability
    return float(np.median(prob[prob > 0]))


def _greenness(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32)
    return rgb[..., 1] - (rgb[..., 0] + rgb[..., 2]) / 2


@pytest.mark.parametrize("which", ["sample_jpg", "generated_png"])
def test_end_to_end_with_forced_segmentation(tiny_pipeline, png_slice, which: str) -> None:
    path = SAMPLE if which == "sample_jpg" else png_slice
    img = load_image(path)
    h, w = img.shape
    assert h != w
    thr = _low_threshold(tiny_pipeline, path)
    res = tiny_pipeline.analyse(path, threshold=thr, force_segmentation=True)
    assert isinstance(res, CaseResult)
    assert res.shape == (h, w)
    assert res.image_sha256 == hashlib.sha256(img.gray.tobytes()).hexdigest()

    # classification: per-model softmax rows, the ensemble from the meta-learner
    assert list(res.per_model) == list(BACKBONES)
    for probs in res.per_model.values():
        assert list(probs) == list(CLASS_NAMES)
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert res.method == "meta-learner (stacking)"
    stacked = np.array([[res.per_model[m][c] for m in BACKBONES for c in CLASS_NAMES]], np.float32)
    expected = tiny_pipeline.ensemble.meta.predict(stacked)[0]
    np.testing.assert_allclose([res.ensemble[c] for c in CLASS_NAMES], expected, atol=1e-6)
    assert res.predicted_class == CLASS_NAMES[int(np.argmax(expected))]
    assert res.confidence == pytest.approx(float(expected.max()))
    votes = {max(p, key=p.get) for p in res.per_model.values()}
    assert res.models_agree == (len(votes) == 1)

    # segmentation on the ORIGINAL grid
    assert res.segmented and res.threshold == thr
    assert res.mask.shape == (h, w) and res.mask.dtype == bool
    assert res.probability.shape == (h, w)
    assert res.overlay.shape == (h, w, 3) and res.overlay.dtype == np.uint8
    assert res.mask_png.shape == (h, w) and res.mask_png.dtype == np.uint8
    np.testing.assert_array_equal(res.mask_png, np.where(res.mask, 255, 0))
    direct = tiny_pipeline.segmenter.predict(img.gray, threshold=thr)
    np.testing.assert_array_equal(res.probability, direct.probability)
    np.testing.assert_array_equal(res.mask, direct.mask)
    assert 0 < res.mask.sum() < h * w
    # the overlay is greener than the original inside the mask, identical far from it
    assert (_greenness(res.overlay)[res.mask] > _greenness(img.display)[res.mask]).all()
    near = cv2.dilate(res.mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    np.testing.assert_array_equal(res.overlay[~near], img.display[~near])

    assert res.morphology["area_px"] == int(res.mask.sum())
    assert res.spacing_cm is None and res.spacing_source == "none"
    assert set(res.timings_s) >= {
        "decode",
        "preprocess",
        "classify",
        "segment",
        "morphology",
        "render",
        "total",
    }
    rec = res.to_record()
    assert rec["area_px"] == int(res.mask.sum()) and rec["segmented"] is True
    assert rec["predicted_class"] == res.predicted_class
    for m in BACKBONES:
        sha = json.loads((tiny_pipeline.ensemble.members[m].folder / "config.json").read_text())
        assert f"{m}:{sha['weights_sha256'][:12]}" in rec["model_versions"]
    assert "resunet:" in rec["model_versions"] and "meta:" in rec["model_versions"]


def _fake_prediction(ensemble_probs, per_model_top=None):
    per_model = {}
    for i, m in enumerate(BACKBONES):
        p = np.full((1, 4), 0.1, np.float32)
        p[0, (per_model_top or [2, 2, 2, 2])[i]] = 0.7
        per_model[m] = p
    return EnsemblePrediction(
        per_model, np.array([ensemble_probs], np.float32), "meta-learner (stacking)"
    )


def test_no_segmentation_for_notumor_unless_forced(tiny_pipeline, png_slice, monkeypatch) -> None:
    monkeypatch.setattr(
        tiny_pipeline.ensemble,
        "predict_crops",
        lambda crops: _fake_prediction([0.05, 0.05, 0.85, 0.05]),
    )
    res = tiny_pipeline.analyse(png_slice)
    assert res.predicted_class == "notumor" and not res.tumor_found
    assert not res.segmented
    assert res.mask is None and res.overlay is None and res.mask_png is None
    assert res.morphology is None and "segment" not in res.timings_s
    assert res.models_agree and res.warnings == []
    rec = res.to_record()
    assert "area_px" not in rec and rec["spacing_source"] == "none"

    forced = tiny_pipeline.analyse(png_slice, force_segmentation=True)
    assert forced.predicted_class == "notumor" and forced.segmented and forced.mask is not None


def test_tumour_prediction_segments_and_warns(tiny_pipeline, png_slice, monkeypatch) -> None:
    monkeypatch.setattr(
        tiny_pipeline.ensemble,
        "predict_crops",
        lambda crops: _fake_prediction([0.5, 0.2, 0.2, 0.1], [0, 0, 1, 2]),
    )
    res = tiny_pipeline.analyse(png_slice)
    assert res.predicted_class == "glioma" and res.tumor_found and res.segmented
    assert not res.models_agree
    # the tiny test artifacts have no review record: the fixed limit, named as such
    assert not res.review_measured and res.review_threshold == 0.6 and res.review_flagged
    assert "low confidence (0.50 < 0.6, a fixed limit not measured against errors)" in (
        res.warnings)
    rec = res.to_record()
    assert rec["review_flagged"] is True and rec["review_threshold"] == 0.6
    assert "base models disagree: glioma, meningioma, notumor" in res.warnings


def test_review_flag_uses_the_threshold_of_the_meta_learner_that_answered(
    tiny_pipeline, png_slice, monkeypatch
) -> None:
    measured = {"threshold": 0.9, "meta_sha256": "x", "passes_rule": True,
                "validation": {"accuracy_flagged": 0.76, "accuracy_unflagged": 0.99,
                               "n_flagged": 113, "n": 858}}
    # a cascade: the single-crop pass has no measured threshold, the default mode has
    monkeypatch.setattr(tiny_pipeline, "review", {False: None, True: measured})

    def cascade_like(escalated: bool):
        pred = _fake_prediction([0.05, 0.05, 0.85, 0.05])
        pred.escalated = np.array([escalated])
        return pred

    monkeypatch.setattr(tiny_pipeline.ensemble, "predict_crops", lambda crops: cascade_like(True))
    res = tiny_pipeline.analyse(png_slice)
    assert res.review_flagged and res.review_measured and res.review_threshold == 0.9
    assert any(w.startswith("review this answer: the ensemble's top probability 0.85 is below "
                            "0.90") and "right 76% of the time (113 of 858 slices)" in w
               for w in res.warnings)
    monkeypatch.setattr(tiny_pipeline.ensemble, "predict_crops", lambda crops: cascade_like(False))
    res = tiny_pipeline.analyse(png_slice)
    assert not res.review_flagged and not res.review_measured and res.review_threshold == 0.6
    assert not any("review" in w or "low confidence" in w for w in res.warnings)
    assert res.to_record()["review_flagged"] is False


def test_empty_outline_says_why_and_gives_the_highest_probability(
    tiny_pipeline, png_slice, monkeypatch
) -> None:
    prob = tiny_pipeline.segmenter.predict(load_image(png_slice).gray).probability
    above = float(prob.max()) + 1e-3  # nothing reaches this threshold
    assert above <= 1.0
    monkeypatch.setattr(tiny_pipeline.ensemble, "predict_crops",
                        lambda crops: _fake_prediction([0.9, 0.05, 0.03, 0.02]))
    res = tiny_pipeline.analyse(png_slice, threshold=above)
    assert res.segmented and not res.mask.any() and res.morphology["area_px"] == 0
    assert res.mask_empty
    assert not tiny_pipeline.analyse(png_slice, threshold=prob.max() / 2).mask_empty
    highest = f"{np.floor(prob.max() * 1000) / 1000:.3f}"
    expected = (f"segmentation found no tumour pixels at threshold {above:g} "
                f"(highest tumour probability on this slice: {highest}), although the "
                "ensemble says glioma: no outline and no measurements")
    assert [w for w in res.warnings if w.startswith(expected)]
    monkeypatch.setattr(tiny_pipeline.ensemble, "predict_crops",
                        lambda crops: _fake_prediction([0.05, 0.05, 0.85, 0.05]))
    forced = tiny_pipeline.analyse(png_slice, threshold=above, force_segmentation=True)
    assert (f"segmentation found no tumour pixels at threshold {above:g} "
            f"(highest tumour probability on this slice: {highest})") in forced.warnings


@pytest.mark.parametrize(
    ("p", "shown"), [(0.000344, "< 0.001"), (0.0, "< 0.001"), (0.0808, "0.080"), (0.19999, "0.199")]
)
def test_empty_mask_warning_never_rounds_up_to_the_threshold(p: float, shown: str) -> None:
    case = SimpleNamespace(threshold=0.2, tumor_found=False, predicted_class="notumor")
    assert empty_mask_warning(case, p) == (
        f"segmentation found no tumour pixels at threshold 0.2 "
        f"(highest tumour probability on this slice: {shown})"
    )


def test_intensity_check_flags_a_darkened_slice_and_records_it(tiny_pipeline, make_slice,
                                                               monkeypatch) -> None:
    from ensemble.intensity import (
        correct_gamma,
        crop_features,
        fit_reference,
        intensity_features,
    )

    rng = np.random.default_rng(3)
    slices = [make_slice(c, rng, (160, 160)) for c in CLASS_NAMES for _ in range(10)]
    reference = fit_reference(np.stack([intensity_features(g) for g in slices]), k=3)
    monkeypatch.setattr(tiny_pipeline, "intensity", reference)
    gray = make_slice("glioma", np.random.default_rng(99), (160, 160))
    dark = np.round(255 * (gray / 255.0) ** 2.0).astype(np.uint8)

    typical = tiny_pipeline.analyse(LoadedImage(gray, np.dstack([gray] * 3)))
    assert not any(w.startswith(("grey levels", "analysed as a copy")) for w in typical.warnings)
    assert not typical.intensity["corrected"] and "uncorrected_class" not in typical.intensity
    rec = typical.to_record()
    assert rec["uncorrected_class"] is None and rec["intensity_corrected"] is False
    assert typical.intensity["threshold"] == pytest.approx(reference.threshold)
    assert typical.intensity["atypicality"] <= reference.threshold

    flagged = tiny_pipeline.analyse(LoadedImage(dark, np.dstack([dark] * 3)),
                                    force_segmentation=True)
    warning = next(w for w in flagged.warnings if w.startswith("grey levels unlike"))
    assert "darker" in warning and flagged.intensity["relative_gamma"] > 1.5
    expected = reference.check(crop_features(crop(dark, find_brain_box(dark))))
    assert flagged.intensity["atypicality"] == pytest.approx(expected.atypicality)
    rec = flagged.to_record()
    assert rec["intensity_atypicality"] == round(expected.atypicality, 4)
    assert rec["relative_gamma"] == round(expected.relative_gamma, 4)
    # the networks analyse the slice mapped back to the training curve (box found again) ...
    mapped = correct_gamma(dark, expected.relative_gamma)
    box = find_brain_box(mapped)
    want = tiny_pipeline.ensemble.predict_crops([crop(mapped, box)])
    assert rec["intensity_corrected"] is True and flagged.crop_box == box.as_tuple()
    assert rec["predicted_class"] == CLASS_NAMES[int(np.argmax(want.ensemble[0]))]
    assert rec["confidence"] == pytest.approx(float(want.ensemble[0].max()), abs=1e-5)
    for name, probs in want.per_model.items():
        assert flagged.per_model[name]["glioma"] == pytest.approx(float(probs[0][0]), abs=1e-5)
    seg = tiny_pipeline.segmenter.predict(mapped, threshold=flagged.threshold)
    assert flagged.segmented and np.array_equal(flagged.mask, seg.mask)
    assert tiny_pipeline.network_view(LoadedImage(dark, np.dstack([dark] * 3)))[1] == box
    # ... and keep the ensemble's answer on the slice as given beside the decision
    as_given = tiny_pipeline.ensemble.predict_crops([crop(dark, find_brain_box(dark))]).ensemble[0]
    assert rec["uncorrected_class"] == CLASS_NAMES[int(np.argmax(as_given))]
    assert rec["uncorrected_confidence"] == pytest.approx(float(as_given.max()), abs=1e-5)
    note = next(w for w in flagged.warnings if w.startswith("analysed as a copy"))
    assert f"gamma 1/{expected.relative_gamma:.2f}" in note and rec["uncorrected_class"] in note
    assert flagged.intensity["flagged"] and not typical.intensity["flagged"]
    # in one batch (mapped copies and copies as given in one call) the answers are the same
    many = tiny_pipeline.analyse_many([LoadedImage(g, np.dstack([g] * 3)) for g in
                                       (dark, gray, dark)], force_segmentation=True)
    for one, alone in zip(many, (flagged, typical, flagged), strict=True):
        assert one.predicted_class == alone.predicted_class
        assert one.confidence == pytest.approx(alone.confidence, abs=1e-5)
        assert one.intensity.get("uncorrected_class") == alone.intensity.get(
            "uncorrected_class")
        assert np.array_equal(one.mask, alone.mask)
    # a white slice cannot be mapped back (relative gamma 0): flagged, analysed as given
    white = np.full((160, 160), 255, np.uint8)
    res = tiny_pipeline.analyse(LoadedImage(white, np.dstack([white] * 3)))
    assert res.intensity["flagged"] and not res.intensity["corrected"]
    assert "the intensity curve cannot be inverted: analysed as given" in res.warnings
    # an almost blank slice says so once, without an input-check warning or a mapping
    black = np.zeros((160, 160), np.uint8)
    res = tiny_pipeline.analyse(LoadedImage(black, np.dstack([black] * 3)))
    assert "almost blank image" in res.warnings and not res.intensity["flagged"]
    assert not res.intensity["corrected"]
    assert not any(w.startswith(("grey levels", "analysed as a copy", "the intensity curve"))
                   for w in res.warnings)

    monkeypatch.setattr(tiny_pipeline, "intensity", None)  # no reference: no check, empty columns
    rec = tiny_pipeline.analyse(LoadedImage(dark, np.dstack([dark] * 3))).to_record()
    assert rec["intensity_atypicality"] is None and rec["relative_gamma"] is None


def test_load_pipeline_reports_a_missing_intensity_reference(tiny_artifacts, tmp_path) -> None:
    import shutil

    root = shutil.copytree(tiny_artifacts, tmp_path / "art")
    shutil.rmtree(root / "classification" / "intensity_reference")
    pipe = load_pipeline(root, warm_up=False)
    assert pipe.intensity is None
    assert any("intensity check" in m for m in pipe.missing)
    with pytest.raises(ArtifactError, match="intensity check"):
        load_pipeline(root, strict=True, warm_up=False)
    assert load_pipeline(tiny_artifacts, warm_up=False).intensity is not None


def test_quality_check_flags_a_noisy_slice_and_records_it(tiny_pipeline, make_slice,
                                                         monkeypatch) -> None:
    from ensemble.quality import NOISY_PREFIX, SMOOTH_PREFIX, fit_reference, quality_features
    from neurostack.corrupt import corrupt

    rng = np.random.default_rng(5)
    slices = [make_slice(c, rng, (160, 160)) for c in ("glioma", "meningioma", "notumor") * 4]
    reference = fit_reference(np.stack([quality_features(g) for g in slices]))
    monkeypatch.setattr(tiny_pipeline, "quality", reference)
    clean = slices[0]
    res = tiny_pipeline.analyse(LoadedImage(clean, np.dstack([clean] * 3)))
    expected = reference.check(quality_features(clean))
    assert res.quality == expected.to_dict()
    rec = res.to_record()
    assert rec["noise_sigma_grey"] == round(expected.noise_sigma, 3)
    assert rec["detail_level_grey"] == round(expected.detail_level, 4)
    noisy = corrupt(clean, "rician_noise", 2, seed=1)  # sd 16 grey levels
    res = tiny_pipeline.analyse(LoadedImage(noisy, np.dstack([noisy] * 3)))
    assert res.quality["noisy"] and res.quality["noise_sigma"] > reference.noise_limit
    assert res.to_record()["quality_flags"] == "noisy"
    assert sum(w.startswith(NOISY_PREFIX) for w in res.warnings) == 1
    smooth = corrupt(clean, "low_resolution", 2, seed=1)
    res = tiny_pipeline.analyse(LoadedImage(smooth, np.dstack([smooth] * 3)))
    assert res.quality["smooth"] and not res.quality["noisy"]
    assert any(w.startswith(SMOOTH_PREFIX) for w in res.warnings)
    black = np.zeros((160, 160), np.uint8)  # almost blank: said once, no quality warning
    res = tiny_pipeline.analyse(LoadedImage(black, np.dstack([black] * 3)))
    assert not any(w.startswith((NOISY_PREFIX, SMOOTH_PREFIX)) for w in res.warnings)
    monkeypatch.setattr(tiny_pipeline, "quality", None)  # no reference: no check, empty columns
    rec = tiny_pipeline.analyse(LoadedImage(clean, np.dstack([clean] * 3))).to_record()
    assert rec["noise_sigma_grey"] is None and rec["quality_flags"] is None


def test_load_pipeline_reports_a_missing_quality_reference(tiny_artifacts, tmp_path) -> None:
    import shutil

    root = shutil.copytree(tiny_artifacts, tmp_path / "art")
    shutil.rmtree(root / "classification" / "quality_reference")
    pipe = load_pipeline(root, warm_up=False)
    assert pipe.quality is None
    assert any("noise and detail check" in m for m in pipe.missing)
    with pytest.raises(ArtifactError, match="noise and detail check"):
        load_pipeline(root, strict=True, warm_up=False)
    loaded = load_pipeline(tiny_artifacts, warm_up=False)
    assert loaded.quality is not None and loaded.with_tta("hflip").quality is loaded.quality


@pytest.fixture()
def three_images(png_slice, make_slice) -> list:
    odd = make_slice("pituitary", np.random.default_rng(11), (97, 131))
    return [load_image(SAMPLE), load_image(png_slice), LoadedImage(odd, np.dstack([odd] * 3))]


def test_analyse_many_gives_the_one_by_one_results(tiny_pipeline, three_images) -> None:
    many = tiny_pipeline.analyse_many(three_images, force_segmentation=True, threshold=0.3)
    assert len(many) == 3
    for img, res in zip(three_images, many, strict=True):
        one = tiny_pipeline.analyse(img, force_segmentation=True, threshold=0.3)
        assert isinstance(res, CaseResult) and res.image_sha256 == one.image_sha256
        assert res.predicted_class == one.predicted_class and res.crop_box == one.crop_box
        for m in BACKBONES:
            np.testing.assert_allclose(list(res.per_model[m].values()),
                                       list(one.per_model[m].values()), atol=1e-5)
        np.testing.assert_allclose(list(res.ensemble.values()), list(one.ensemble.values()),
                                   atol=1e-5)
        np.testing.assert_allclose(res.probability, one.probability, atol=1e-5)
        assert res.mask.shape == img.shape and res.segmented
        # a pixel may only flip where the probability sits on the threshold
        flipped = res.mask != one.mask
        assert np.all(np.abs(one.probability[flipped] - 0.3) < 1e-4)
        assert res.morphology["area_px"] == int(res.mask.sum())
        assert set(res.timings_s) >= {"preprocess", "classify", "segment", "total"}


def test_analyse_many_isolates_the_slice_that_breaks_a_batch(
    tiny_pipeline, three_images, monkeypatch
) -> None:
    """One slice that makes the classifier or the segmenter raise fails alone."""
    bad = three_images[2]
    box = find_brain_box(bad.gray)
    bad_crop = crop(bad.gray, box)
    s = tiny_pipeline.segmenter.input_size
    bad_seg = resize_square(bad_crop, s).astype(np.float32) / 255.0
    classify, segment = tiny_pipeline.ensemble.predict_crops, tiny_pipeline.segmenter.predict_crops
    calls: list[str] = []

    def picky_classify(crops):
        calls.append(f"classify {len(crops)}")
        if any(c.shape == bad_crop.shape and np.array_equal(c, bad_crop) for c in crops):
            raise RuntimeError("classifier rejects this slice")
        return classify(crops)

    def picky_segment(x):
        calls.append(f"segment {len(x)}")
        if any(np.allclose(np.squeeze(v), bad_seg) for v in x):
            raise RuntimeError("segmenter rejects this slice")
        return segment(x)

    monkeypatch.setattr(tiny_pipeline.ensemble, "predict_crops", picky_classify)
    out = tiny_pipeline.analyse_many(three_images, force_segmentation=True)
    assert [type(r).__name__ for r in out] == ["CaseResult", "CaseResult", "RuntimeError"]
    assert str(out[2]) == "classifier rejects this slice"
    assert calls == ["classify 3", "classify 1", "classify 1", "classify 1"]

    monkeypatch.setattr(tiny_pipeline.ensemble, "predict_crops", classify)
    monkeypatch.setattr(tiny_pipeline.segmenter, "predict_crops", picky_segment)
    calls.clear()
    out = tiny_pipeline.analyse_many(three_images, force_segmentation=True)
    assert [type(r).__name__ for r in out] == ["CaseResult", "CaseResult", "RuntimeError"]
    assert str(out[2]) == "segmenter rejects this slice"
    assert calls == ["segment 3", "segment 1", "segment 1", "segment 1"]
    assert all(r.segmented for r in out[:2])


def test_analyse_many_checks_options_before_any_work(tiny_pipeline, three_images) -> None:
    with pytest.raises(ValueError, match="spacing_source"):
        tiny_pipeline.analyse_many(three_images, spacing_cm=(0.1, 0.1), spacing_source="dicom")
    with pytest.raises(ValueError, match="threshold"):
        tiny_pipeline.analyse_many(three_images, threshold=1.0)
    with pytest.raises(ValueError, match="postprocess must be one of"):
        tiny_pipeline.analyse_many(three_images, postprocess="open")
    assert tiny_pipeline.analyse_many([]) == []


def test_largest_component_postprocessing_through_the_pipeline(tiny_pipeline, png_slice) -> None:
    from scipy import ndimage

    from segmentation.postprocess import largest_component

    gray = load_image(png_slice).gray
    prob = tiny_pipeline.segmenter.predict(gray).probability
    # the threshold at which the tiny random segmenter's mask has the most components
    candidates = np.quantile(prob[prob > 0], np.linspace(0.05, 0.95, 19))
    counts = [ndimage.label(prob >= t, structure=np.ones((3, 3)))[1] for t in candidates]
    thr = float(candidates[int(np.argmax(counts))])
    assert max(counts) >= 2, "the test needs a mask with several components"
    plain = tiny_pipeline.analyse(png_slice, threshold=thr, force_segmentation=True,
                                  postprocess="none")
    kept = tiny_pipeline.analyse(png_slice, threshold=thr, force_segmentation=True,
                                 postprocess="largest_component")
    expected, removed = largest_component(plain.mask, plain.probability)
    assert removed == max(counts) - 1
    np.testing.assert_array_equal(kept.mask, expected)
    assert kept.postprocess == "largest_component" and plain.postprocess == "none"
    assert kept.morphology["n_components"] == 1 and kept.morphology["area_px"] < plain.mask.sum()
    assert any(f"removed {removed} smaller" in w for w in kept.warnings)
    assert not any("removed" in w for w in plain.warnings)


@pytest.fixture(scope="module")
def dicom_bytes(make_slice) -> bytes:
    pixels = make_slice("meningioma", np.random.default_rng(4), (140, 180))
    return make_dicom(pixels, spacing=(0.5, 0.8))  # mm: row 0.5, column 0.8


def test_dicom_spacing_is_used_and_identifiers_never_leak(tiny_pipeline, dicom_bytes) -> None:
    thr = _low_threshold(tiny_pipeline, dicom_bytes)
    res = tiny_pipeline.analyse(dicom_bytes, threshold=thr, force_segmentation=True)
    assert res.spacing_cm == pytest.approx((0.05, 0.08)) and res.spacing_source == "dicom"
    rec = res.to_record()
    assert rec["spacing_source"] == "dicom"
    assert rec["row_spacing_cm"] == pytest.approx(0.05) and rec["col_spacing_cm"] == pytest.approx(
        0.08
    )
    assert rec["area_cm2"] == pytest.approx(rec["area_px"] * 0.05 * 0.08)
    text = json.dumps(rec)
    values = [str(v) for v in rec.values()]
    for key, ident in IDENTIFIERS.items():
        for fragment in {ident, *ident.replace("^", " ").replace("-", " ").split()}:
            if len(fragment) >= 5:
                assert fragment not in text, key
                assert not any(fragment in v for v in values), key
    _assert_identifier_free_keys(rec)


def _assert_identifier_free_keys(rec: dict) -> None:
    for key in rec:
        low = key.lower()
        assert not any(part in low for part in IDENTIFYING_KEY_PARTS), key


def test_record_keys_are_identifier_free(tiny_pipeline, png_slice) -> None:
    res = tiny_pipeline.analyse(png_slice, force_segmentation=True)
    _assert_identifier_free_keys(res.to_record())


@pytest.mark.parametrize("source", ["user", "assumed"])
def test_user_spacing_overrides_dicom(tiny_pipeline, dicom_bytes, source: str) -> None:
    thr = _low_threshold(tiny_pipeline, dicom_bytes)
    res = tiny_pipeline.analyse(
        dicom_bytes,
        spacing_cm=(0.1, 0.2),
        spacing_source=source,
        threshold=thr,
        force_segmentation=True,
    )
    assert res.spacing_cm == (0.1, 0.2) and res.spacing_source == source
    rec = res.to_record()
    assert rec["spacing_source"] == source
    assert rec["area_cm2"] == pytest.approx(rec["area_px"] * 0.02)


@pytest.mark.parametrize("source", [None, "dicom", "none", "USER"])
def test_user_spacing_needs_a_valid_source(tiny_pipeline, png_slice, source) -> None:
    with pytest.raises(ValueError, match=r"spacing_source .* one of \['assumed', 'user'\]"):
        tiny_pipeline.analyse(png_slice, spacing_cm=(0.05, 0.05), spacing_source=source)


@pytest.mark.parametrize(
    "spacing", [(0.0, 0.1), (-0.1, 0.1), (float("nan"), 0.1), (0.1, float("inf"))]
)
def test_invalid_spacing_values(tiny_pipeline, png_slice, spacing) -> None:
    with pytest.raises(ValueError, match="two positive finite numbers"):
        tiny_pipeline.analyse(png_slice, spacing_cm=spacing, spacing_source="user")


def test_no_spacing_gives_pixels_only(tiny_pipeline, png_slice) -> None:
    thr = _low_threshold(tiny_pipeline, png_slice)
    rec = tiny_pipeline.analyse(png_slice, threshold=thr, force_segmentation=True).to_record()
    assert rec["spacing_source"] == "none" and rec["area_px"] > 0
    assert not [k for k in rec if k.endswith(("_cm", "_cm2"))]


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.2, 1.5, float("nan")])
def test_threshold_out_of_range(tiny_pipeline, png_slice, threshold: float) -> None:
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\)"):
        tiny_pipeline.analyse(png_slice, threshold=threshold)


@pytest.mark.parametrize("data", [b"", b"definitely not an image", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_corrupt_input(tiny_pipeline, data: bytes, tmp_path: Path) -> None:
    with pytest.raises(InputImageError):
        tiny_pipeline.analyse(data)
    f = tmp_path / "broken.png"
    f.write_bytes(data)
    with pytest.raises(InputImageError):
        tiny_pipeline.analyse(f)


def test_colour_and_blank_warnings(tiny_pipeline, tmp_path: Path) -> None:
    rgb = np.zeros((120, 120, 3), np.uint8)
    rgb[20:100, 20:100] = (200, 30, 30)
    Image.fromarray(rgb).save(tmp_path / "red.png")
    res = tiny_pipeline.analyse(tmp_path / "red.png")
    assert any(w.startswith("colour image") for w in res.warnings)
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "black.png")
    assert "almost blank image" in tiny_pipeline.analyse(tmp_path / "black.png").warnings


def _weights_digest(pipe: Pipeline) -> str:
    d = hashlib.sha256()
    models = [
        *(c.model for c in pipe.ensemble.members.values()),
        pipe.ensemble.meta.model,
        pipe.segmenter.model,
    ]
    for model in models:
        for w in model.weights:
            d.update(np.asarray(w.numpy()).tobytes())
    return d.hexdigest()


def test_threads_give_the_serial_results(tiny_pipeline, png_slice) -> None:
    sources = [SAMPLE, png_slice]
    serial = [tiny_pipeline.analyse(s, force_segmentation=True) for s in sources]
    before = _weights_digest(tiny_pipeline)
    barrier = threading.Barrier(4)

    def work(i: int):
        barrier.wait()
        return [tiny_pipeline.analyse(sources[i % 2], force_segmentation=True) for _ in range(2)]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(4)))
    for i, runs in enumerate(results):
        ref = serial[i % 2]
        for res in runs:
            assert res.to_record() == ref.to_record()
            np.testing.assert_array_equal(res.mask, ref.mask)
            np.testing.assert_array_equal(res.probability, ref.probability)
            np.testing.assert_array_equal(res.overlay, ref.overlay)
    assert serial[0].to_record() != serial[1].to_record()
    assert _weights_digest(tiny_pipeline) == before  # shared models were not mutated


def test_without_segmenter(tiny_pipeline, png_slice) -> None:
    pipe = Pipeline(tiny_pipeline.ensemble, None, missing=["segmentation/resunet"])
    res = pipe.analyse(png_slice, force_segmentation=True)
    assert not res.segmented and res.mask is None
    assert "segmentation model not available" in res.warnings
    assert "resunet" not in pipe.model_info


@pytest.mark.slow
def test_load_pipeline_missing_segmentation(tiny_artifacts: Path, tmp_path: Path) -> None:
    root = tmp_path / "art"
    root.mkdir()
    (root / "classification").symlink_to(
        tiny_artifacts / "classification", target_is_directory=True
    )
    with pytest.raises(ArtifactError, match="segmentation model"):
        load_pipeline(root, strict=True)
    pipe = load_pipeline(root, strict=False)
    assert pipe.segmenter is None
    assert pipe.missing == [f"{root / 'segmentation' / 'resunet'} (segmentation model)"]


def test_threshold_defaults_to_the_segmenters_operating_point(tiny_pipeline, png_slice) -> None:
    """Library callers get the validated operating point, not a hard-coded 0.5."""
    seg = tiny_pipeline.segmenter
    saved = seg.default_threshold
    thr = _low_threshold(tiny_pipeline, png_slice)
    try:
        seg.default_threshold = thr
        res = tiny_pipeline.analyse(png_slice, force_segmentation=True)
        explicit = tiny_pipeline.analyse(png_slice, force_segmentation=True, threshold=thr)
        [many] = tiny_pipeline.analyse_many([load_image(png_slice)], force_segmentation=True)
        direct = seg.predict(load_image(png_slice).gray)
    finally:
        seg.default_threshold = saved
    assert res.threshold == thr == many.threshold == direct.threshold
    assert res.mask.any() and np.array_equal(res.mask, explicit.mask)
    assert tiny_pipeline.resolve_threshold(0.25) == 0.25
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\); received 0.0"):
        tiny_pipeline.resolve_threshold(0.0)


@pytest.mark.slow
def test_tta_comes_from_the_argument_then_the_environment(tiny_artifacts, monkeypatch) -> None:
    monkeypatch.setenv("NEUROSTACK_TTA", "hflip")
    assert load_pipeline(tiny_artifacts, warm_up=False).ensemble.tta == "hflip"
    assert load_pipeline(tiny_artifacts, warm_up=False, tta="none").ensemble.tta == "none"
    monkeypatch.setenv("NEUROSTACK_TTA", "")
    assert load_pipeline(tiny_artifacts, warm_up=False).ensemble.tta == "none"  # meta's own
    monkeypatch.setenv("NEUROSTACK_TTA", "mirror")
    with pytest.raises(ValueError, match="received 'mirror'"):
        load_pipeline(tiny_artifacts, warm_up=False)


def test_with_tta_shares_the_loaded_models(tiny_pipeline, png_slice) -> None:
    assert tiny_pipeline.with_tta("none") is tiny_pipeline  # the tiny meta-learner's mode
    mirrored = tiny_pipeline.with_tta("hflip")
    assert mirrored.segmenter is tiny_pipeline.segmenter
    assert mirrored.ensemble.members is tiny_pipeline.ensemble.members
    assert mirrored.ensemble.tta == "hflip" and tiny_pipeline.ensemble.tta == "none"
    # no meta-learner fitted on mirrored inputs here: the answer says so
    assert "fitted on single-crop inputs" in mirrored.analyse(png_slice).method
    with pytest.raises(ValueError, match="received 'vflip'"):
        tiny_pipeline.with_tta("vflip")


def test_record_has_escalated_only_in_cascade_mode() -> None:
    from neurostack import CLASS_NAMES
    from neurostack.pipeline import CaseResult

    probs = dict.fromkeys(CLASS_NAMES, 0.25)
    base = dict(image_sha256="0" * 64, shape=(8, 8), per_model={}, ensemble=probs,
                predicted_class="glioma", confidence=0.25, method="m", models_agree=True,
                warnings=[], tumor_found=True, segmented=False, threshold=0.5,
                spacing_cm=None, spacing_source="none")
    assert "escalated" not in CaseResult(**base).to_record()  # older results files lack it
    assert CaseResult(**base, escalated=True).to_record()["escalated"] is True
    assert CaseResult(**base, escalated=False).to_record()["escalated"] is False


def test_outline_confidence_and_its_recorded_flag(tiny_pipeline, tiny_artifacts, png_slice,
                                                  tmp_path):
    import shutil

    thr = _low_threshold(tiny_pipeline, png_slice)
    plain = tiny_pipeline.analyse(png_slice, threshold=thr, force_segmentation=True)
    assert plain.mask.any()
    # the mean probability over the outline; no record in the tiny tree, so no flag
    assert plain.outline_confidence == pytest.approx(float(plain.probability[plain.mask].mean()))
    assert plain.outline_confidence >= thr and plain.outline_flagged is None
    assert plain.to_record()["outline_flagged"] is None

    root = Path(shutil.copytree(tiny_artifacts, tmp_path / "a"))
    seg_dir = root / "segmentation" / "resunet"
    config = json.loads((seg_dir / "config.json").read_text())
    config["threshold"] = thr
    (seg_dir / "config.json").write_text(json.dumps(config))
    point = {"threshold": thr, "test_time_augmentation": config.get("test_time_augmentation",
                                                                     "none"),
             "postprocess": config.get("postprocess", "none")}
    record = {"format": 1, "flag_threshold": 1.0, "operating_point": point,
              "weights_sha256": config["weights_sha256"], "passes_rule": True,
              "validation": {"n": 10, "n_flagged": 3, "mean_dice_flagged": 0.25,
                             "mean_dice_unflagged": 0.8}}
    (seg_dir / "outline_confidence.json").write_text(json.dumps(record))
    pipe = load_pipeline(root, strict=True)

    flagged = pipe.analyse(png_slice, force_segmentation=True)  # at the recorded point
    assert flagged.outline_confidence == pytest.approx(plain.outline_confidence, abs=1e-6)
    assert flagged.outline_flagged is True
    assert any(w.startswith("uncertain outline") and "0.25" in w for w in flagged.warnings)
    rec = flagged.to_record()
    assert rec["outline_flagged"] is True and rec["outline_confidence"] == pytest.approx(
        flagged.outline_confidence, abs=1e-4)
    # another mask threshold than the record's: the flag does not apply
    other = pipe.analyse(png_slice, threshold=min(0.99, thr + 0.05), force_segmentation=True)
    assert other.outline_flagged is None
    assert not any(w.startswith("uncertain outline") for w in other.warnings)
    # a record made for other weights is ignored
    (seg_dir / "outline_confidence.json").write_text(json.dumps({**record,
                                                                 "weights_sha256": "0" * 64}))
    assert load_pipeline(root, strict=True).segmenter.confidence_record is None


def _fake_model(folder: Path, payload: bytes, **extra):
    """A stand-in for a loaded model: its folder holds ``weights.npz`` with ``payload``."""
    from types import SimpleNamespace

    from neurostack.artifacts import sha256_file

    folder.mkdir(parents=True)
    (folder / "weights.npz").write_bytes(payload)
    config = {"weights_sha256": sha256_file(folder / "weights.npz")}
    return SimpleNamespace(config=config, folder=folder, **extra)


def test_model_info_of_a_cascade_names_both_meta_learners_and_both_precisions(tmp_path) -> None:
    from types import SimpleNamespace

    from neurostack.pipeline import Pipeline

    def clf(name, precision):
        return _fake_model(tmp_path / precision / name, name.encode(), input_size=224,
                           precision=precision, runtime="tensorflow")

    first = SimpleNamespace(members={"vgg19": clf("vgg19", "float32")},
                            meta=_fake_model(tmp_path / "cls" / "meta_single_crop", b"m1"))
    second = SimpleNamespace(members={"vgg19": clf("vgg19", "bfloat16")},
                             meta=_fake_model(tmp_path / "cls" / "meta", b"m2"))
    cascade = SimpleNamespace(first=first, second=second, members=second.members,
                              meta=second.meta)
    info = Pipeline(cascade, None).model_info
    assert set(info) == {"vgg19", "meta", "meta_single_crop"}
    assert info["vgg19"]["precision"] == "bfloat16"
    assert info["vgg19"]["precision_single_crop"] == "float32"
    assert info["meta_single_crop"]["folder"] == str(tmp_path / "cls" / "meta_single_crop")
    assert info["meta_single_crop"]["sha256"] != info["meta"]["sha256"]
    single = Pipeline(second, None).model_info
    assert set(single) == {"vgg19", "meta"} and "precision_single_crop" not in single["vgg19"]


def test_verify_weights_hashes_the_files_the_models_were_loaded_from(tmp_path) -> None:
    from types import SimpleNamespace

    from neurostack.pipeline import Pipeline

    members = {n: _fake_model(tmp_path / n, n.encode(), input_size=224)
               for n in ("xception", "vgg19")}
    meta = _fake_model(tmp_path / "meta", b"meta")
    segmenter = _fake_model(tmp_path / "resunet", b"seg", input_size=192)
    pipe = Pipeline(SimpleNamespace(members=members, meta=meta), segmenter)
    assert {r["model"]: r["status"] for r in pipe.verify_weights()} == dict.fromkeys(
        ("xception", "vgg19", "meta", "resunet"), "matches")
    (tmp_path / "vgg19" / "weights.npz").write_bytes(b"changed")
    (tmp_path / "resunet" / "weights.npz").unlink()
    rows = {r["model"]: r for r in pipe.verify_weights()}
    assert rows["vgg19"]["status"] == "MISMATCH"
    assert rows["resunet"]["status"] == "weight file missing"
    assert rows["resunet"]["weights_file"] == str(tmp_path / "resunet" / "weights.npz")
    assert rows["xception"]["status"] == rows["meta"]["status"] == "matches"


def test_the_loaded_pipeline_knows_every_weight_file(tiny_pipeline) -> None:
    rows = tiny_pipeline.verify_weights()
    assert {r["model"] for r in rows} == set(tiny_pipeline.model_info)
    assert "resunet" in {r["model"] for r in rows}
    assert all(r["status"] == "matches" for r in rows), rows


def test_an_assumed_spacing_on_a_resized_slice_is_warned_in_the_result(
        tiny_pipeline, png_slice) -> None:
    prob = tiny_pipeline.segmenter.predict(load_image(png_slice).gray).probability
    low = float(prob.max()) / 2  # some pixels are outlined
    shape = load_image(png_slice).shape
    assert shape[:2] != (512, 512)
    res = tiny_pipeline.analyse(png_slice, spacing_cm=(0.049, 0.049), spacing_source="assumed",
                                threshold=low, force_segmentation=True)
    assert res.mask.any() and res.spacing_source == "assumed"
    caveat = [w for w in res.warnings if w.startswith("assumed pixel spacing: ")]
    assert len(caveat) == 1 and f"{shape[1]}×{shape[0]} px" in caveat[0]
    measured = tiny_pipeline.analyse(png_slice, spacing_cm=(0.049, 0.049),
                                     spacing_source="user", threshold=low,
                                     force_segmentation=True)
    assert not [w for w in measured.warnings if w.startswith("assumed pixel spacing")]


def test_the_frame_of_a_multi_frame_file_is_recorded(tiny_pipeline, make_slice) -> None:
    frames = np.stack([make_slice("glioma", np.random.default_rng(k), (96, 96))
                       for k in range(3)])
    data = make_dicom(frames)
    res = tiny_pipeline.analyse(data, frame=2)  # 0-based, the last frame
    assert (res.frame_index, res.n_frames) == (2, 3)
    rec = res.to_record()
    assert (rec["frame"], rec["n_frames"]) == (3, 3)
    single = tiny_pipeline.analyse(make_dicom(frames[0]))
    assert single.frame_index is None and "frame" not in single.to_record()
