"""The printable case report: content, escaping, embedded images, no identifiers."""

from __future__ import annotations

import base64
import dataclasses
import re
from datetime import datetime, timezone
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest
from neurostack_samples import IDENTIFIERS, make_dicom

from neurostack import CLASS_NAMES
from neurostack.pipeline import CaseResult
from neurostack.render import mask_image, overlay_mask
from neurostack.report import (
    case_report_html,
    format_value,
    intensity_sentence,
    outline_sentence,
    png_data_uri,
    quality_sentence,
    review_sentence,
    spacing_sentence,
)

WHEN = datetime(2026, 12, 6, 5, 0, tzinfo=timezone.utc)


class _Collect(HTMLParser):
    """Text, image sources and open/close balance of a document."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.images: list[tuple[str, str]] = []
        self.stack: list[str] = []
        self.mismatched: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            a = dict(attrs)
            self.images.append((a["alt"], a["src"]))
        elif tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.mismatched.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def _parse(doc: str) -> _Collect:
    p = _Collect()
    p.feed(doc)
    p.close()
    assert not p.mismatched and not p.stack, (p.mismatched, p.stack)
    return p


def _decode(src: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    buf = np.frombuffer(base64.b64decode(src[len(prefix):]), np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _result(segmented: bool = True, warnings: list[str] | None = None) -> CaseResult:
    gray = np.tile(np.arange(40, dtype=np.uint8) * 6, (30, 1))
    mask = np.zeros((30, 40), bool)
    mask[10:20, 5:25] = True  # 10 x 20 px
    per_model = {m: dict(zip(CLASS_NAMES, p, strict=True)) for m, p in {
        "xception": (0.70, 0.10, 0.10, 0.10),
        "resnet50": (0.20, 0.60, 0.10, 0.10)}.items()}
    morph = {"area_cm2": 200 * 0.05 * 0.08, "area_px": 200, "circularity": 0.6981,
             "spacing_source": "dicom", "row_spacing_cm": 0.05, "col_spacing_cm": 0.08}
    return CaseResult(
        image_sha256="ab" * 32, shape=(30, 40), per_model=per_model,
        ensemble=dict(zip(CLASS_NAMES, (0.81, 0.09, 0.05, 0.05), strict=True)),
        predicted_class="glioma", confidence=0.81, method="meta-learner (stacking)",
        models_agree=False, warnings=warnings or [], tumor_found=True, segmented=segmented,
        threshold=0.2, spacing_cm=(0.05, 0.08), spacing_source="dicom",
        morphology=morph if segmented else None, mask=mask if segmented else None,
        overlay=overlay_mask(gray, mask), mask_png=mask_image(mask) if segmented else None,
        models={"xception": {"sha256": "0123456789abcdef" * 4, "input_size": 299}},
        postprocess="largest_component",
    )


def test_report_states_decision_probabilities_measurements_and_versions() -> None:
    res = _result()
    doc = case_report_html(res, model_labels={"xception": "Xception", "ensemble": "Meta"},
                           generated_at=WHEN)
    text = " ".join(_parse(doc).text)
    assert "Generated 2026-12-06 05:00 UTC" in text and res.image_sha256 in text
    assert "Predicted class" in text and "glioma" in text and "81.0%" in text
    assert "Base models agree NO" in re.sub(r"\s+", " ", text)
    # one row per model plus the ensemble, probabilities to 3 decimals, labels applied
    for row in ("Xception 0.700 0.100 0.100 0.100", "resnet50 0.200 0.600 0.100 0.100",
                "Meta 0.810 0.090 0.050 0.050"):
        assert row in re.sub(r"\s+", " ", text), row
    # each row's top class in bold, ensemble row included
    assert doc.count('class="num top"') == 3
    assert "Pixel spacing 0.5 × 0.8 mm (row × column), read from the DICOM file" in text
    assert "area_cm2 0.8 cm2 area_px 200 px2 circularity 0.6981" in re.sub(r"\s+", " ", text)
    assert "Mask threshold 0.20" in text and "largest_component" in text
    assert "0123456789ab" in text and "0123456789abc" not in text  # 12-character prefix


def test_default_model_labels() -> None:
    text = re.sub(r"\s+", " ", " ".join(_parse(case_report_html(_result())).text))
    assert "ResNet50 0.200 0.600" in text and "Meta-learner (ensemble) 0.810" in text


def test_without_a_meta_learner_the_final_row_is_named_the_mean() -> None:
    res = _result()
    res.method = "mean of 2 base model(s); meta-learner not available"
    text = re.sub(r"\s+", " ", " ".join(_parse(case_report_html(res)).text))
    assert "Mean of the base models 0.810" in text and "Meta-learner (ensemble)" not in text
    assert "The final class is the Mean of the base models row" in text


def test_embedded_images_round_trip() -> None:
    res = _result()
    display = np.tile(np.arange(40, dtype=np.uint8) * 6, (30, 1))
    images = dict(_parse(case_report_html(res, display=display)).images)
    assert list(images) == ["Original", "Tumour overlay (green)", "Mask (white = tumour)"]
    np.testing.assert_array_equal(_decode(images["Original"]), display)
    np.testing.assert_array_equal(_decode(images["Tumour overlay (green)"]), res.overlay)
    np.testing.assert_array_equal(_decode(images["Mask (white = tumour)"]), res.mask_png)


def test_overlay_argument_replaces_the_results_overlay() -> None:
    res = _result()
    other = np.full((30, 40, 3), 7, np.uint8)
    images = dict(_parse(case_report_html(res, overlay=other)).images)
    np.testing.assert_array_equal(_decode(images["Tumour overlay (green)"]), other)


def test_unsegmented_slice_has_no_mask_and_says_why() -> None:
    doc = case_report_html(_result(segmented=False), display=np.zeros((30, 40), np.uint8))
    parsed = _parse(doc)
    assert [alt for alt, _ in parsed.images] == ["Original"]
    assert "not segmented (the segmentation model is not available)" in " ".join(parsed.text)
    assert "Mask threshold" not in doc
    res = _result(segmented=False)
    res.tumor_found = False
    assert "not segmented (no tumour was predicted)" in case_report_html(res)


def test_text_is_escaped() -> None:
    doc = case_report_html(_result(warnings=['<script>alert("x")</script> & more']),
                           model_labels={"xception": "<b>X</b>"})
    assert "<script>" not in doc and "<b>X</b>" not in doc
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in doc
    assert '<li class="warn">' in doc


def test_report_of_a_dicom_holds_no_identifiers(tiny_pipeline, make_slice) -> None:
    dicom = make_dicom(make_slice("glioma", np.random.default_rng(3), (120, 150)),
                       spacing=(0.5, 0.8))
    res = tiny_pipeline.analyse(dicom, threshold=0.05, force_segmentation=True)
    doc = case_report_html(res, display=np.zeros(res.shape, np.uint8))
    assert res.spacing_source == "dicom" and "read from the DICOM file" in doc
    doc = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", doc)  # chance matches only
    for key, ident in IDENTIFIERS.items():
        for fragment in {ident, *ident.replace("^", " ").replace("-", " ").split()}:
            if len(fragment) >= 5:
                assert fragment not in doc, key


@pytest.mark.parametrize(("spacing", "source", "expected"), [
    (None, "none", "Pixel spacing unknown — measurements in pixel units."),
    ((0.049, 0.049), "assumed", "Pixel spacing 0.49 × 0.49 mm (row × column), assumed"),
    ((0.1, 0.05), "user", "Pixel spacing 1 × 0.5 mm (row × column), entered by the user."),
])
def test_spacing_sentence(spacing, source, expected) -> None:
    assert spacing_sentence(spacing, source).startswith(expected)


@pytest.mark.parametrize(("value", "text"), [
    (None, "—"), (True, "yes"), (np.bool_(False), "no"), (1234567, "1,234,567"),
    (np.int64(12), "12"), (0.123456, "0.1235"), (np.float32(2.5), "2.5"), ("dicom", "dicom"),
])
def test_format_value(value, text) -> None:
    assert format_value(value) == text




def test_intensity_sentence_and_report_row() -> None:
    assert intensity_sentence(None).startswith("Input check not made")
    typical = {"atypicality": 0.05, "threshold": 0.233, "relative_gamma": 1.02}
    assert intensity_sentence(typical) == ("Input check: grey levels typical of the training "
                                           "slices (atypicality 0.050 ≤ 0.233; relative gamma "
                                           "1.02).")
    odd = typical | {"atypicality": 0.4, "relative_gamma": 1.7}
    assert "unlike the training slices (atypicality 0.400 > 0.233" in intensity_sentence(odd)
    doc = case_report_html(dataclasses.replace(_result(), intensity=odd), generated_at=WHEN)
    text = re.sub(r"\s+", " ", " ".join(_parse(doc).text))
    assert "Input check grey levels unlike the training slices" in text
    mapped = odd | {"corrected": True, "uncorrected_class": "notumor",
                    "uncorrected_confidence": 0.93}
    assert intensity_sentence(mapped).endswith(
        "Classified and outlined as a copy with its grey levels mapped to the training curve; "
        "as given, the ensemble says notumor (93.0%).")
    assert "as given" not in intensity_sentence(odd | {"corrected": False})


def test_report_shows_a_saturated_confidence_as_above_99_9() -> None:
    res = _result()
    sure = dict.fromkeys(res.ensemble, 0.0) | {"glioma": 1.0}
    doc = case_report_html(dataclasses.replace(res, ensemble=sure, confidence=1.0),
                           generated_at=WHEN)
    text = " ".join(_parse(doc).text)
    assert ">99.9%" in text and "100.0%" not in text


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.float32), np.zeros((4, 4, 4), np.uint8),
                                 np.zeros(4, np.uint8)])
def test_png_data_uri_rejects_what_it_cannot_encode(bad) -> None:
    with pytest.raises(ValueError, match="uint8"):
        png_data_uri(bad)


# ------------------------------------------------------------------ command line
def test_cli_writes_the_report_of_one_slice(tiny_artifacts, make_slice, tmp_path, capsys) -> None:
    from PIL import Image

    from neurostack.report import main

    src = tmp_path / "Doe_John_slice.png"  # a name that must not reach the report
    Image.fromarray(make_slice("glioma", np.random.default_rng(5), (140, 170))).save(src)
    out = tmp_path / "report.html"
    code = main([str(src), "--out", str(out), "--artifacts", str(tiny_artifacts),
                 "--spacing-mm", "0.5", "0.5", "--threshold", "0.05", "--force-segmentation"])
    assert code == 0
    doc = out.read_text(encoding="utf-8")
    parsed = _parse(doc)
    assert [alt for alt, _ in parsed.images] == ["Original", "Tumour overlay (green)",
                                                 "Mask (white = tumour)"]
    assert _decode(parsed.images[0][1]).shape[:2] == (140, 170)
    assert "Doe_John" not in doc and "slice.png" not in doc  # "_" and "." are not base64
    assert "0.5 × 0.5 mm (row × column), entered by the user" in doc
    assert "report written to" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.part"))


def test_cli_reports_bad_input_and_writes_nothing(tiny_pipeline, tmp_path, capsys,
                                                  monkeypatch) -> None:
    import neurostack.pipeline
    from neurostack.report import main

    monkeypatch.setattr(neurostack.pipeline, "load_pipeline", lambda *a, **k: tiny_pipeline)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    out = tmp_path / "r.html"
    assert main([str(bad), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert main([str(bad), "--out", str(tmp_path / "no" / "r.html")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(bad), "--out", str(out), "--frame", "0"]) == 2
    assert "numbered from 1" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("*.part"))
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.tile(np.arange(120, dtype=np.uint8), (100, 1)))
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert main([str(good), "--out", str(folder)]) == 2  # the output path is a folder
    assert "cannot write the report" in capsys.readouterr().err
    assert folder.is_dir() and not list(tmp_path.glob("*.part"))


def test_quality_sentence_and_report_row() -> None:
    assert quality_sentence(None).startswith("Noise and detail check not made")
    fine = {"noise_sigma": 0.49, "noise_limit": 11.37, "detail_level": 0.61,
            "detail_limit": 0.362, "noisy": False, "smooth": False}
    assert quality_sentence(fine) == (
        "Noise and detail check: within the training slices' range (noise sd 0.5 ≤ 11.4 grey "
        "levels; detail level 0.61 ≥ 0.36).")
    noisy = fine | {"noise_sigma": 15.04, "detail_level": 14.2, "noisy": True}
    assert quality_sentence(noisy) == (
        "Noise and detail check: outside the training slices' range (noisier than the "
        "training slices (noise sd 15.0 > 11.4 grey levels); detail level 14.20 ≥ 0.36).")
    smooth = fine | {"detail_level": 0.2, "smooth": True}
    assert "less fine detail than the training slices (0.20 < 0.36: blurred or up-sampled)" in (
        quality_sentence(smooth))
    doc = case_report_html(dataclasses.replace(_result(), quality=noisy), generated_at=WHEN)
    text = re.sub(r"\s+", " ", " ".join(_parse(doc).text))
    assert "Noise and detail outside the training slices' range" in text


def test_outline_sentence_covers_every_case() -> None:
    from types import SimpleNamespace

    def case(conf, flagged, limit, segmented=True):
        return SimpleNamespace(segmented=segmented, outline_confidence=conf,
                               outline_flagged=flagged, outline_flag_threshold=limit)

    assert outline_sentence(case(0.9, None, None, segmented=False)) == ""
    assert outline_sentence(case(None, None, 0.8)) == "Outline confidence: no outline."
    low = outline_sentence(case(0.612, True, 0.8))
    assert low.startswith("Outline confidence 0.61") and "below the flag threshold 0.80" in low
    assert "at or above the flag threshold 0.80" in outline_sentence(case(0.93, False, 0.8))
    assert "no flag threshold recorded" in outline_sentence(case(0.93, None, None))
    assert "not applied here" in outline_sentence(case(0.93, None, 0.8))
    doc = case_report_html(dataclasses.replace(_result(), outline_confidence=0.612,
                                               outline_flagged=True, outline_flag_threshold=0.8),
                           generated_at=WHEN)
    text = re.sub(r"\s+", " ", " ".join(_parse(doc).text))
    assert "Outline confidence 0.61 (the segmenter's mean probability inside the outline)" in text
    assert "below the flag threshold 0.80" in text
    plain = case_report_html(_result(segmented=False), generated_at=WHEN)
    assert "Outline confidence" not in plain


def test_review_sentence_says_whether_and_why() -> None:
    flagged = dataclasses.replace(_result(), confidence=0.81, review_flagged=True,
                                  review_threshold=0.95, review_measured=True)
    text = review_sentence(flagged)
    assert text == ("Review: the top probability 0.81 is below 0.95 (chosen on the validation "
                    "split against the ensemble's errors); double-check this answer.")
    fixed = dataclasses.replace(_result(), confidence=0.97, review_flagged=False,
                                review_threshold=0.6, review_measured=False)
    assert review_sentence(fixed) == ("Review: not flagged (top probability 0.97 ≥ 0.60, a "
                                      "fixed limit, not measured against errors).")
    doc = case_report_html(flagged, generated_at=WHEN)
    text = re.sub(r"\s+", " ", " ".join(_parse(doc).text))
    assert "the top probability 0.81 is below 0.95" in text


def test_report_names_the_frame_and_the_display_window() -> None:
    res = _result()
    res.frame_index, res.n_frames = 4, 9
    gray = np.zeros((30, 40), np.uint8)
    doc = case_report_html(res, display=gray, display_note="display window centre 40, width 80")
    text = re.sub(r"\s+", " ", " ".join(_parse(doc).text))
    assert "Frame 5 of 9" in text
    assert "Original (display window centre 40, width 80)" in text
    plain = re.sub(r"\s+", " ", " ".join(_parse(case_report_html(_result(), display=gray)).text))
    assert "Frame" not in plain and "Original" in plain and "display window" not in plain
