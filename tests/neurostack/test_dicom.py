"""DICOM input: LUTs, spacing, frames, compression, malformed files and privacy."""

from __future__ import annotations

import io
import logging
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
from neurostack_samples import (
    IDENTIFIERS,
    gradient,
    make_dataset,
    make_dicom,
    make_jpeg_dicom,
    raster_bytes,
    to_bytes,
    with_transfer_syntax,
)
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder

from neurostack.dicom import identifying_tags, load_dicom
from neurostack.errors import InputImageError
from neurostack.imaging import InputLimits, LoadedImage, load_image, window_to_uint8

G = gradient(48, 64)


def _no_identifiers(text: str) -> None:
    for key, value in IDENTIFIERS.items():
        assert value not in text, f"{key} leaked"
    for fragment in ("Zyxwv", "Quintessa", "8675309", "Obscura", "Qwerty", "31337"):
        assert fragment not in text


def _error(data: bytes, **kwargs: object) -> InputImageError:
    with pytest.raises(InputImageError) as info:
        load_image(data, **kwargs)  # type: ignore[arg-type]
    exc = info.value
    _no_identifiers(str(exc))
    _no_identifiers("".join(traceback.format_exception(exc)))
    return exc


# --- Geometry ---


def test_spacing_row_col_in_cm_unequal() -> None:
    out = load_image(make_dicom(G, spacing=(0.5, 0.8)))
    assert out.spacing_cm == pytest.approx((0.05, 0.08))
    assert out.spacing_source == "dicom"
    assert out.metadata["pixel_spacing_mm"] == pytest.approx((0.5, 0.8))
    assert (out.format, out.shape) == ("DICOM", (48, 64))


def test_no_pixel_spacing_gives_none_even_with_imager_pixel_spacing() -> None:
    out = load_image(make_dicom(G, spacing=None, extra={"ImagerPixelSpacing": [0.2, 0.2]}))
    assert out.spacing_cm is None and out.spacing_source == "none"


@pytest.mark.parametrize("bad", [[0.0, 0.5], [-1.0, 1.0], [0.5]])
def test_invalid_pixel_spacing_is_treated_as_unknown(bad: list[float]) -> None:
    out = load_image(make_dicom(G, spacing=None, extra={"PixelSpacing": bad}))
    assert out.spacing_cm is None and out.spacing_source == "none"


def test_slice_thickness_in_metadata() -> None:
    out = load_image(make_dicom(G, extra={"SliceThickness": 5.0}))
    assert out.metadata["slice_thickness_mm"] == 5.0


# --- Modality LUT, VOI, photometric ---


def test_rescale_slope_intercept_applied_to_raw() -> None:
    stored = np.full((40, 40), 100, np.uint16)
    stored[0, 0], stored[0, 1] = 0, 4000
    out = load_image(make_dicom(stored, slope=2.0, intercept=-1024.0))
    assert out.raw.dtype == np.float32
    assert out.raw[5, 5] == pytest.approx(-824.0)
    assert out.raw[0, 0] == pytest.approx(-1024.0) and out.raw[0, 1] == pytest.approx(6976.0)
    assert out.metadata["rescale_slope"] == 2.0 and out.metadata["rescale_intercept"] == -1024.0
    assert out.metadata["voi"] == "min_max"
    assert out.gray[0, 0] == 0 and out.gray[0, 1] == 255


def test_signed_ct_like_pixels() -> None:
    stored = np.full((40, 40), -1000, np.int16)
    stored[10:20, 10:20] = 40
    out = load_image(make_dicom(stored, slope=1.0, intercept=0.0, window=(40.0, 400.0)))
    assert out.raw[0, 0] == -1000.0 and out.raw[15, 15] == 40.0
    assert out.gray[0, 0] == 0 and out.gray[15, 15] == 128


def test_window_applied_known_raw_to_known_gray() -> None:
    stored = np.zeros((40, 40), np.uint16)
    stored[0, :4] = [0, 40, 80, 1000]
    out = load_image(make_dicom(stored, window=(40.0, 80.0)))
    assert out.gray[0, :4].tolist() == [0, 129, 255, 255]
    assert out.metadata["voi"] == "window"
    assert (out.metadata["window_center"], out.metadata["window_width"]) == (40.0, 80.0)
    # The dashboard's re-window of `raw` with the file's window reproduces `gray`.
    np.testing.assert_array_equal(window_to_uint8(out.raw, 40.0, 80.0), out.gray)


def test_window_matches_pydicom_modality_then_voi_lut() -> None:
    from pydicom import dcmread
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    stored = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 7).astype(np.uint16)
    data = make_dicom(stored, slope=2.0, intercept=-100.0, window=(9000.0, 12000.0))
    out = load_image(data)
    ds = dcmread(io.BytesIO(data))
    reference = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    y_min, y_max = -100.0, 65535 * 2.0 - 100.0  # pydicom's output range for this file
    expected = np.rint((reference - y_min) / (y_max - y_min) * 255).astype(np.uint8)
    np.testing.assert_array_equal(out.raw, apply_modality_lut(ds.pixel_array, ds))
    assert np.abs(out.gray.astype(int) - expected).max() <= 1
    assert 0 < out.gray.mean() < 255


def test_window_after_rescale_and_sigmoid_function() -> None:
    stored = (np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 3).astype(np.uint16)
    extra = {"VOILUTFunction": "SIGMOID"}
    out = load_image(
        make_dicom(stored, slope=0.5, intercept=10.0, window=(500.0, 300.0), extra=extra)
    )
    np.testing.assert_array_equal(out.raw, stored * 0.5 + 10.0)
    expected = window_to_uint8(stored * 0.5 + 10.0, 500.0, 300.0, function="SIGMOID")
    np.testing.assert_array_equal(out.gray, expected)
    assert out.metadata["voi_lut_function"] == "SIGMOID"


def test_multi_valued_window_uses_the_first() -> None:
    stored = (G.astype(np.uint16) * 4).astype(np.uint16)
    out = load_image(
        make_dicom(stored, extra={"WindowCenter": [200, 600], "WindowWidth": [100, 50]})
    )
    np.testing.assert_array_equal(out.gray, window_to_uint8(out.raw, 200, 100))


def test_invalid_window_width_falls_back_to_min_max() -> None:
    out = load_image(make_dicom(G, window=(100.0, 0.0)))
    assert out.metadata["voi"] == "min_max"
    assert out.gray.min() == 0 and out.gray.max() == 255


def test_voi_lut_sequence_applied_and_scaled() -> None:
    stored = np.zeros((40, 40), np.uint16)
    stored[0, :4] = [0, 1, 2, 3]
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4, 0, 16])
    item.add_new("LUTData", "US", [0, 1000, 3000, 4000])
    out = load_image(make_dicom(stored, window=(1.0, 2.0), extra={"VOILUTSequence": [item]}))
    assert out.metadata["voi"] == "voi_lut_sequence"
    assert out.gray[0, :4].tolist() == [0, 64, 191, 255]


def test_monochrome1_is_inverted() -> None:
    stored = np.zeros((40, 40), np.uint16)
    stored[0, 0], stored[0, 1] = 0, 1000
    out = load_image(make_dicom(stored, photometric="MONOCHROME1"))
    assert out.gray[0, 0] == 255 and out.gray[0, 1] == 0  # low values display bright
    assert out.raw[0, 1] == 1000.0  # raw keeps the values
    assert out.metadata["inverted"] is True
    windowed = load_image(make_dicom(stored, photometric="MONOCHROME1", window=(500, 1000)))
    np.testing.assert_array_equal(
        windowed.gray, window_to_uint8(windowed.raw, 500, 1000, invert=True)
    )


def test_rgb_dicom_becomes_luma() -> None:
    rgb = np.random.default_rng(5).integers(0, 256, size=(40, 44, 3), dtype=np.uint8)
    out = load_image(make_dicom(rgb, photometric="RGB"))
    np.testing.assert_array_equal(out.gray, np.asarray(Image.fromarray(rgb, "RGB").convert("L")))
    np.testing.assert_array_equal(out.display, rgb)
    assert out.raw is None and out.metadata["samples_per_pixel"] == 3


def test_implicit_vr_little_endian() -> None:
    ds = make_dataset(G)
    ds.file_meta.TransferSyntaxUID = uid.ImplicitVRLittleEndian
    out = load_image(to_bytes(ds))
    np.testing.assert_array_equal(out.raw, G.astype(np.float32))


# --- Frames ---


@pytest.mark.parametrize(("n", "middle"), [(5, 2), (4, 2), (2, 1)])
def test_multiframe_defaults_to_middle(n: int, middle: int) -> None:
    frames = np.stack([np.full((40, 40), 10 * (i + 1), np.uint16) for i in range(n)])
    frames[:, 0, 0] = 0
    out = load_image(make_dicom(frames))
    assert (out.n_frames, out.frame_index) == (n, middle)
    assert out.raw[5, 5] == 10 * (middle + 1)
    assert out.metadata["number_of_frames"] == n


def test_multiframe_explicit_frame_and_out_of_range() -> None:
    frames = np.stack([np.full((40, 40), 10 * (i + 1), np.uint16) for i in range(5)])
    data = make_dicom(frames)
    out = load_dicom(data, frame=4, limits=InputLimits())
    assert out.frame_index == 4 and out.raw[0, 0] == 50.0
    assert load_image(data, frame=0).raw[0, 0] == 10.0
    exc = _error(data, frame=5)
    assert "valid frames are 0..4" in str(exc)
    assert "valid frames are 0..4" in str(_error(data, frame=-1))


def test_enhanced_multiframe_functional_groups() -> None:
    frames = np.stack([np.full((40, 40), 100, np.uint16) for _ in range(3)])
    frames[:, 0, 0] = 0
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [0.7, 0.9]
    measures.SliceThickness = 3.0
    shared.PixelMeasuresSequence = [measures]
    per_frame = []
    for i in range(3):
        group, transform = Dataset(), Dataset()
        transform.RescaleSlope, transform.RescaleIntercept = i + 1, 0
        group.PixelValueTransformationSequence = [transform]
        per_frame.append(group)
    extra = {
        "SharedFunctionalGroupsSequence": [shared],
        "PerFrameFunctionalGroupsSequence": per_frame,
    }
    out = load_image(make_dicom(frames, spacing=None, extra=extra), frame=2)
    assert out.spacing_cm == pytest.approx((0.07, 0.09))
    assert out.raw[5, 5] == 300.0 and out.metadata["slice_thickness_mm"] == 3.0


# --- Compression ---


def test_jpeg_baseline_compressed_dicom_decodes() -> None:
    data, jpeg = make_jpeg_dicom(G)
    out = load_image(data)
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)), dtype=np.float32)
    np.testing.assert_array_equal(out.raw, decoded)
    assert out.metadata["transfer_syntax_uid"] == uid.JPEGBaseline8Bit
    assert np.abs(out.raw - G).max() <= 8  # lossy, but close


def test_rle_lossless_multiframe_decodes() -> None:
    frames = np.stack([G.astype(np.uint16) * (i + 1) for i in range(3)])
    ds = make_dataset(frames)
    ds.compress(uid.RLELossless)
    out = load_image(to_bytes(ds), frame=2)
    np.testing.assert_array_equal(out.raw, frames[2].astype(np.float32))


def test_transfer_syntax_without_any_decoder() -> None:
    exc = _error(with_transfer_syntax(make_dicom(G), uid.MPEG2MPML))
    assert "MPEG2 Main Profile / Main Level" in str(exc) and "not supported" in str(exc)


@pytest.mark.parametrize(
    "ts", [uid.JPEGLosslessSV1, uid.JPEGLSLossless, uid.HTJ2KLossless], ids=lambda t: t.name
)
def test_compressed_transfer_syntax_without_installed_decoder(ts: uid.UID) -> None:
    if get_decoder(ts).is_available:
        pytest.skip(f"a decoder for {ts.name} is installed here")
    exc = _error(with_transfer_syntax(make_dicom(G), ts))
    assert f"'{ts.name}' ({ts})" in str(exc) and "no decoder" in str(exc)


def test_corrupt_compressed_payload() -> None:
    data = with_transfer_syntax(make_dicom(G), uid.JPEGBaseline8Bit, b"\xff\xd8\xff\xe0junk")
    assert "could not be decoded: it is corrupt or truncated" in str(_error(data))


# --- Malformed files ---


def test_dicom_without_pixel_data() -> None:
    exc = _error(make_dicom(None))
    assert str(exc) == "DICOM file has no pixel data"


def test_dicom_pixel_data_truncated() -> None:
    ds = make_dataset(G)
    ds.PixelData = G.tobytes()[: G.size // 2]
    assert "shorter than Rows x Columns" in str(_error(to_bytes(ds)))


def test_dicom_file_cut_in_the_header() -> None:
    data = make_dicom(G)
    assert "no image" in str(_error(data[:300])) and "truncated" in str(_error(data[:300]))
    assert "shorter than Rows x Columns" in str(_error(data[:1000]))


def test_dicom_missing_rows() -> None:
    ds = make_dataset(G)
    del ds.Rows
    assert "missing Rows/Columns" in str(_error(to_bytes(ds)))


def test_dicom_declared_size_over_limit_refused_before_decoding() -> None:
    ds = make_dataset(G)
    ds.Rows, ds.Columns = 20000, 20000  # pixel data is far too short: never decoded
    assert "20000x20000 = 400,000,000 pixels" in str(_error(to_bytes(ds)))
    assert "limit is 1,000 pixels" in str(
        _error(make_dicom(G), limits=InputLimits(max_pixels=1000))
    )


def test_dicom_too_small() -> None:
    assert "10x10 pixels, too small" in str(_error(make_dicom(np.zeros((10, 10), np.uint8))))


def test_dicom_unsupported_samples_per_pixel() -> None:
    ds = make_dataset(G)
    ds.SamplesPerPixel = 4
    assert "Samples per Pixel of 4" in str(_error(to_bytes(ds)))


def test_dicom_max_bytes() -> None:
    data = make_dicom(G)
    assert "the limit is" in str(_error(data, limits=InputLimits(max_bytes=len(data) - 1)))


def test_preambleless_dicom_by_extension_and_by_content(tmp_path: Path) -> None:
    data = make_dicom(G, preamble=False)
    assert data[128:132] != b"DICM"
    path = tmp_path / "slice.dcm"
    path.write_bytes(data)
    np.testing.assert_array_equal(load_image(path).raw, G.astype(np.float32))
    np.testing.assert_array_equal(load_image(data).raw, G.astype(np.float32))


def test_binary_garbage_named_dcm(tmp_path: Path) -> None:
    path = tmp_path / "scan.dcm"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(InputImageError, match="Not a valid DICOM file"):
        load_image(path)


def test_load_dicom_rejects_non_dicom_bytes() -> None:
    with pytest.raises(InputImageError, match="Not a valid DICOM file"):
        load_dicom(raster_bytes(Image.fromarray(G), "PNG"))


# --- Privacy ---


def test_metadata_and_repr_never_contain_identifiers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    frames = np.stack([G, G, G]).astype(np.uint16)
    extra = {"PatientName": "Zyxwv^Quintessa" * 10}  # over-long: pydicom may warn about it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = load_image(make_dicom(frames, window=(100, 200), extra=extra))
    assert isinstance(out, LoadedImage)
    _no_identifiers(repr(out))
    _no_identifiers(str(out.metadata))
    _no_identifiers(" ".join(str(w.message) for w in caught))
    _no_identifiers(caplog.text)
    allowed = {
        "format", "modality", "rows", "cols", "samples_per_pixel", "bits_allocated",
        "bits_stored", "pixel_representation", "photometric_interpretation",
        "transfer_syntax", "transfer_syntax_uid", "number_of_frames", "rescale_slope",
        "rescale_intercept", "inverted", "window_center", "window_width", "voi_lut_function",
        "voi", "pixel_spacing_mm", "slice_thickness_mm",
    }  # fmt: skip
    assert set(out.metadata) <= allowed
    assert all(
        isinstance(v, (str, int, float, bool, tuple, type(None))) for v in out.metadata.values()
    )


def test_identifier_in_a_technical_field_is_dropped() -> None:
    out = load_image(make_dicom(G, extra={"Modality": "QUINTESSA"}))
    assert out.metadata["modality"] is None
    ds = make_dataset(G)
    ds.PhotometricInterpretation = "ZYXWV"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom quotes the bad value while we write it
        ds.file_meta.TransferSyntaxUID = "Quintessa"
        data = to_bytes(ds)
    exc = _error(data)
    assert "invalid transfer syntax UID" in str(exc)


def test_error_messages_never_contain_identifiers() -> None:
    ds = make_dataset(G)
    ds.PixelData = G.tobytes()[:100]
    datasets = [
        make_dicom(None),
        to_bytes(ds),
        make_dicom(G)[:400],
        with_transfer_syntax(make_dicom(G), uid.MPEG2MPML),
        make_dicom(np.zeros((8, 8), np.uint8)),
    ]
    for data in datasets:
        _error(data)
    _error(make_dicom(np.stack([G, G]).astype(np.uint16)), frame=9)


def test_identifying_tags_does_not_log_or_warn_values(caplog: pytest.LogCaptureFixture) -> None:
    bad_name = "Zyxwv^Quintessa\\" * 20  # invalid PN: pydicom would warn and log it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extra = {"PatientName": bad_name, "PatientBirthDate": "19710203xx", "PatientID": "P" * 99}
        data = make_dicom(G, extra=extra)
    caplog.clear()  # writing the bad values above logged them; only reading is under test
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tags = identifying_tags(data)
        load_image(data)
    assert tags["PatientBirthDate"] == "19710203xx"
    _no_identifiers(" ".join(str(w.message) for w in caught))
    _no_identifiers(caplog.text)
    assert not caught and "pydicom" not in caplog.text  # value warnings are silenced


def test_identifying_tags_returns_identifiers_only_on_request() -> None:
    data = make_dicom(G)
    tags = identifying_tags(data)
    for key, value in IDENTIFIERS.items():
        assert tags[key] == value
    assert tags["MediaStorageSOPInstanceUID"] == IDENTIFIERS["SOPInstanceUID"]
    anonymous = identifying_tags(make_dicom(G, identifiers=False))
    assert set(anonymous) == {"MediaStorageSOPInstanceUID", "SOPInstanceUID"} - {"SOPInstanceUID"}
    assert identifying_tags(make_dicom(G, preamble=False))["PatientID"] == "PID-8675309"
    with pytest.raises(InputImageError, match="Not a valid DICOM file"):
        identifying_tags(raster_bytes(Image.fromarray(G), "PNG"))


@pytest.mark.parametrize(("photometric", "extra"), [
    ("MONOCHROME1", {}), ("MONOCHROME2", {"VOILUTFunction": "SIGMOID"}),
    ("MONOCHROME1", {"VOILUTFunction": "SIGMOID"}),
])
def test_rewindow_at_the_files_window_reproduces_its_display(photometric, extra) -> None:
    from neurostack.imaging import default_window, rewindow

    stored = (np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 3).astype(np.uint16)
    out = load_image(make_dicom(stored, window=(2000.0, 1500.0), photometric=photometric,
                                extra=extra))
    assert default_window(out) == (2000.0, 1500.0)
    np.testing.assert_array_equal(rewindow(out, *default_window(out)), out.gray)
    wider = rewindow(out, 2000.0, 4000.0)  # a wider window: less contrast, same direction
    if photometric == "MONOCHROME1":  # inverted: the largest value is the darkest
        assert wider[-1, -1] < wider[0, 0] and out.gray[-1, -1] < out.gray[0, 0]
    else:
        assert wider[-1, -1] > wider[0, 0]


def test_default_window_without_one_in_the_file_is_the_full_range() -> None:
    from neurostack.imaging import default_window, rewindow

    stored = np.zeros((40, 40), np.uint16)
    stored[0, :3] = [100, 300, 500]
    out = load_image(make_dicom(stored))
    assert default_window(out) == (250.0, 500.0)  # min 0, max 500
    buf = io.BytesIO()
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(buf, "PNG")
    png = load_image(buf.getvalue())
    assert default_window(png) is None
    with pytest.raises(ValueError, match="only slices with raw values"):
        rewindow(png, 10, 10)
