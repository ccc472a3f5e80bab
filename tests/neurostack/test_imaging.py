"""Raster input: the 8-bit conversion contract, hardening against bad inputs, fuzzing."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from neurostack_samples import gradient, make_dicom, raster_bytes
from PIL import Image, ImageFile

from neurostack.errors import InputImageError
from neurostack.imaging import (
    InputLimits,
    LoadedImage,
    load_image,
    pil_to_gray,
    scale_to_uint8,
    window_to_uint8,
)

RNG = np.random.default_rng(1234)
NOISE_RGB = RNG.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)


def _png_header_only(width: int, height: int, bit_depth: int = 8, colour: int = 0) -> bytes:
    """A PNG with just IHDR and IEND: declares a size without any pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _assert_valid(img: LoadedImage) -> None:
    assert img.gray.dtype == np.uint8 and img.gray.ndim == 2
    assert img.display.dtype == np.uint8 and img.display.shape == (*img.gray.shape, 3)
    if img.raw is not None:
        assert img.raw.dtype == np.float32 and img.raw.shape == img.gray.shape
        assert np.isfinite(img.raw).all()


# --- The 8-bit conversion contract (training caches depend on these exact values) ---


def test_contract_rgb_gray_equals_pil_convert_l() -> None:
    img = Image.fromarray(NOISE_RGB, "RGB")
    out = load_image(raster_bytes(img, "PNG"))
    np.testing.assert_array_equal(out.gray, np.asarray(img.convert("L")))
    np.testing.assert_array_equal(out.display, NOISE_RGB)
    assert out.raw is None


def test_contract_pinned_luma_values() -> None:
    rgb = np.array(
        [[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [12, 200, 99], [250, 3, 128]]],
        np.uint8,
    )
    gray, _, _ = pil_to_gray(Image.fromarray(rgb, "RGB"))
    assert gray.tolist() == [[76, 150, 29, 255, 132, 91]]


def test_contract_rgba_composited_on_black() -> None:
    rgba = np.array(
        [[[255, 255, 255, 128], [200, 100, 50, 255], [10, 250, 90, 0], [255, 0, 0, 64]]], np.uint8
    )
    gray, display, raw = pil_to_gray(Image.fromarray(rgba, "RGBA"))
    assert gray.tolist() == [[128, 124, 0, 19]]
    assert display.tolist() == [[[128, 128, 128], [200, 100, 50], [0, 0, 0], [64, 0, 0]]]
    assert raw is None


def test_contract_cmyk_via_rgb() -> None:
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((0, 0), (0, 255, 255, 0))
    cmyk.putpixel((1, 0), (30, 60, 90, 40))
    gray, display, _ = pil_to_gray(cmyk)
    assert gray.tolist() == [[76, 169]]
    assert display.tolist() == [[[255, 0, 0], [190, 164, 139]]]


def test_contract_l_identity_and_palette_via_rgb() -> None:
    g = gradient()
    out = load_image(raster_bytes(Image.fromarray(g, "L"), "PNG"))
    np.testing.assert_array_equal(out.gray, g)
    pal = Image.fromarray(NOISE_RGB, "RGB").quantize(colors=64)
    assert pal.mode == "P" and "transparency" not in pal.info
    out = load_image(raster_bytes(pal, "PNG"))
    np.testing.assert_array_equal(out.gray, np.asarray(pal.convert("RGB").convert("L")))


# --- Bad inputs that must give a specific InputImageError ---


def test_zero_bytes() -> None:
    with pytest.raises(InputImageError, match=r"empty \(0 bytes\)"):
        load_image(b"")


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(InputImageError, match="empty"):
        load_image(path)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("page.png", b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n"),
        ("scan.dcm", b"This is not a DICOM file, just a note.\r\nSecond line.\n"),
        ("scan.jpg", b'{"error": "access denied"}'),
        ("image.png", "\ufeff<?xml version='1.0'?><svg></svg>".encode()),
    ],
)
def test_text_renamed_as_image(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputImageError, match="contains text"):
        load_image(path)


def test_random_binary_is_unsupported() -> None:
    junk = bytes(RNG.integers(0, 256, size=4000, dtype=np.uint8))
    with pytest.raises(InputImageError, match="Not a supported image"):
        load_image(b"\x00\x01" + junk)


def test_unsupported_but_valid_format_is_refused() -> None:
    data = raster_bytes(Image.fromarray(gradient(), "L"), "TGA")
    with pytest.raises(InputImageError, match="Not a supported image"):
        load_image(data)


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.95])
def test_truncated_jpeg(fraction: float) -> None:
    data = raster_bytes(Image.fromarray(NOISE_RGB, "RGB"), "JPEG", quality=90)
    with pytest.raises(InputImageError, match="truncated"):
        load_image(data[: int(len(data) * fraction)])


def test_truncated_jpeg_detected_even_if_global_flag_was_flipped() -> None:
    data = raster_bytes(Image.fromarray(NOISE_RGB, "RGB"), "JPEG", quality=90)
    ImageFile.LOAD_TRUNCATED_IMAGES = True  # someone else's code flipped it
    try:
        with pytest.raises(InputImageError, match="truncated"):
            load_image(data[:-200])
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def test_jpeg_missing_end_marker_is_truncated() -> None:
    data = raster_bytes(Image.fromarray(NOISE_RGB, "RGB"), "JPEG")
    with pytest.raises(InputImageError, match="truncated"):
        load_image(data[:-2])


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.9])
def test_truncated_png(fraction: float) -> None:
    data = raster_bytes(Image.fromarray(NOISE_RGB, "RGB"), "PNG")
    with pytest.raises(InputImageError, match="truncated"):
        load_image(data[: int(len(data) * fraction)])


def test_png_with_bad_crc_is_corrupt() -> None:
    data = bytearray(raster_bytes(Image.fromarray(gradient(), "L"), "PNG"))
    data[29] ^= 0xFF  # inside the IHDR CRC
    with pytest.raises(InputImageError, match="corrupt"):
        load_image(bytes(data))


def test_decompression_bomb_png_refused_before_decoding() -> None:
    data = _png_header_only(100_000, 100_000)
    with pytest.raises(InputImageError, match="10,000,000,000 pixels.*decompression bomb"):
        load_image(data)


def test_absurd_declared_size_below_pil_threshold_hits_our_limit() -> None:
    with pytest.raises(InputImageError, match=r"8000x6000 = 48,000,000 pixels; the limit is 40,0"):
        load_image(_png_header_only(8000, 6000))


def test_pil_bomb_warning_is_not_leaked_when_warnings_are_errors() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputImageError, match="100,000,000 pixels.*limit is"):
            load_image(_png_header_only(10_000, 10_000))


def test_pil_bomb_limit_reported_when_our_limit_is_higher() -> None:
    pil_limit = 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(InputImageError, match=f"the limit is {pil_limit:,} pixels"):
        load_image(_png_header_only(20_000, 20_000), limits=InputLimits(max_pixels=10**12))


@pytest.mark.parametrize(("w", "h"), [(1, 1), (10, 10), (5000, 10), (31, 400)])
def test_too_small(w: int, h: int) -> None:
    data = raster_bytes(Image.new("L", (w, h), 128), "PNG")
    with pytest.raises(InputImageError, match=f"{w}x{h} pixels, too small"):
        load_image(data)


def test_max_bytes_enforced_for_bytes_and_paths(tmp_path: Path) -> None:
    data = raster_bytes(Image.fromarray(NOISE_RGB, "RGB"), "PNG")
    limits = InputLimits(max_bytes=1000)
    with pytest.raises(InputImageError, match="the limit is 0 MB"):
        load_image(data, limits=limits)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    with pytest.raises(InputImageError, match="File is 0.0 MB"):
        load_image(path, limits=limits)
    with pytest.raises(InputImageError, match="the limit is"):
        load_image(io.BytesIO(data), limits=limits)


def test_max_pixels_enforced() -> None:
    data = raster_bytes(Image.fromarray(gradient(64, 64), "L"), "PNG")
    with pytest.raises(InputImageError, match="64x64 = 4,096 pixels; the limit is 4,000"):
        load_image(data, limits=InputLimits(max_pixels=4000))


def test_missing_file_folder_and_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(InputImageError, match="File not found: nope.png"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(InputImageError, match="got a folder"):
        load_image(tmp_path)
    with pytest.raises(InputImageError, match="got NoneType"):
        load_image(None)  # type: ignore[arg-type]
    with pytest.raises(InputImageError, match="File not found|Could not read"):
        load_image("bad\0name.png")
    with pytest.raises(InputImageError, match="text stream"):
        load_image(io.StringIO("abc"))  # type: ignore[arg-type]


def _animated_gif(values: tuple[int, ...] = (10, 120, 240)) -> bytes:
    frames = [Image.new("L", (40, 36), v) for v in values]
    return raster_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (3, r"Frame 3 is out of range: the file has 3 frame\(s\), valid frames are 0..2"),
        (-1, "Frame -1 is out of range"),
        ("1", "Frame must be an integer, got str"),
        (1.0, "Frame must be an integer, got float"),
        (True, "Frame must be an integer, got bool"),
    ],
)
def test_bad_frame_requests(frame: object, message: str) -> None:
    with pytest.raises(InputImageError, match=message):
        load_image(_animated_gif(), frame=frame)  # type: ignore[arg-type]


# --- Unusual but valid inputs ---


def test_animated_gif_first_frame_default_and_explicit_frame() -> None:
    data = _animated_gif()
    first = load_image(data)
    assert (first.format, first.n_frames, first.frame_index) == ("GIF", 3, 0)
    assert np.all(first.gray == 10)
    third = load_image(data, frame=2)
    assert third.frame_index == 2 and np.all(third.gray == 240)
    _assert_valid(third)


def test_multipage_tiff_pages_and_per_page_size_check() -> None:
    pages = [Image.fromarray(gradient(40, 50), "L"), Image.new("L", (60, 33), 77)]
    pages.append(Image.new("L", (8, 8), 200))
    data = raster_bytes(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    out = load_image(data, frame=1)
    assert (out.n_frames, out.frame_index, out.shape) == (3, 1, (33, 60))
    assert np.all(out.gray == 77)
    np.testing.assert_array_equal(load_image(data).gray, gradient(40, 50))
    with pytest.raises(InputImageError, match="8x8 pixels, too small"):
        load_image(data, frame=2)


def test_tiff_float32_with_nan() -> None:
    arr = np.linspace(-1.0, 3.0, 40 * 40, dtype=np.float32).reshape(40, 40)
    arr[5, 5] = np.nan
    arr[6, 6] = np.inf
    out = load_image(raster_bytes(Image.fromarray(arr, "F"), "TIFF"))
    _assert_valid(out)
    assert out.gray[5, 5] == 0 and out.gray[6, 6] == 0 and out.raw[5, 5] == 0.0
    assert out.gray[0, 0] == 0 and out.gray[-1, -1] == 255
    assert out.raw[-1, -1] == pytest.approx(3.0)


def test_16bit_png_scaled_min_max_with_raw_kept() -> None:
    arr = (np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 20 + 1000).astype(np.uint16)
    out = load_image(raster_bytes(Image.fromarray(arr), "PNG"))
    np.testing.assert_array_equal(out.raw, arr.astype(np.float32))
    np.testing.assert_array_equal(out.gray, scale_to_uint8(arr))
    assert out.gray.min() == 0 and out.gray.max() == 255


def test_16bit_big_endian_tiff() -> None:
    arr = (np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 40).astype(np.uint16)
    img = Image.frombytes("I;16B", (40, 40), arr.astype(">u2").tobytes())
    out = load_image(raster_bytes(img, "TIFF"))
    np.testing.assert_array_equal(out.raw, arr.astype(np.float32))


def test_rgba_png_and_transparent_palette() -> None:
    rgba = np.dstack([NOISE_RGB, np.full((40, 48), 0, np.uint8)])
    out = load_image(raster_bytes(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert not out.gray.any()  # fully transparent over black
    pal = Image.new("P", (40, 40), 1)
    pal.putpalette([0, 0, 0, 250, 250, 250] + [0] * 762)
    pal.info["transparency"] = 1
    out = load_image(raster_bytes(pal, "PNG", transparency=1))
    assert not out.gray.any()


def test_la_png() -> None:
    la = Image.merge("LA", [Image.new("L", (40, 40), 200), Image.new("L", (40, 40), 255)])
    assert np.all(load_image(raster_bytes(la, "PNG")).gray == 200)


def test_cmyk_jpeg() -> None:
    cmyk = Image.fromarray(NOISE_RGB, "RGB").convert("CMYK")
    data = raster_bytes(cmyk, "JPEG", quality=95)
    out = load_image(data)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").convert("L"))
    np.testing.assert_array_equal(out.gray, expected)
    assert out.metadata["mode"] == "CMYK"


@pytest.mark.parametrize(("value", "mode"), [(0, "L"), (255, "L"), (0, "RGB"), (255, "1")])
def test_all_black_or_all_white(value: int, mode: str) -> None:
    fill = value if mode != "RGB" else (value, value, value)
    out = load_image(raster_bytes(Image.new(mode, (40, 40), fill), "PNG"))
    _assert_valid(out)
    assert np.all(out.gray == value)


def test_bmp_and_grayscale_jpeg() -> None:
    out = load_image(raster_bytes(Image.fromarray(NOISE_RGB, "RGB"), "BMP"))
    assert out.format == "BMP"
    np.testing.assert_array_equal(out.display, NOISE_RGB)
    out = load_image(raster_bytes(Image.fromarray(gradient(), "L"), "JPEG", quality=100))
    assert out.format == "JPEG" and np.abs(out.gray.astype(int) - gradient()).max() <= 3


def test_png_with_trailing_garbage_file_object_and_dcm_named_png(tmp_path: Path) -> None:
    data = raster_bytes(Image.fromarray(gradient(), "L"), "PNG")
    np.testing.assert_array_equal(load_image(data + b"\x00junk" * 50).gray, gradient())
    np.testing.assert_array_equal(load_image(io.BytesIO(data)).gray, gradient())
    path = tmp_path / "really_a_png.dcm"
    path.write_bytes(data)
    assert load_image(path).format == "PNG"


def test_raster_metadata_is_technical_only() -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Author", "Zyxwv Quintessa")
    data = raster_bytes(Image.fromarray(gradient(), "L"), "PNG", pnginfo=info)
    out = load_image(data)
    assert out.metadata == {"format": "PNG", "mode": "L", "width": 64, "height": 48}
    assert "Zyxwv" not in repr(out)


# --- window_to_uint8 ---


def _pydicom_window(raw: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """Reference: pydicom's apply_voi_lut output rescaled from its range to 0..255."""
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_voi_lut

    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored, ds.PixelRepresentation = 16, 1
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, function
    y = apply_voi_lut(raw.astype(np.float64), ds)
    return np.rint((y + 32768) / 65535 * 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("function", "center", "width"),
    [("LINEAR", 40, 80), ("LINEAR", 50, 1), ("LINEAR_EXACT", 50, 100), ("SIGMOID", 50, 100)],
)
def test_window_to_uint8_matches_pydicom_apply_voi_lut(
    function: str, center: float, width: float
) -> None:
    raw = np.array([-1000.0, 0.0, 39.5, 40.0, 80.0, 119.5, 120.0, 3000.0])
    expected = _pydicom_window(raw, center, width, function)
    np.testing.assert_array_equal(window_to_uint8(raw, center, width, function=function), expected)
    inverted = window_to_uint8(raw, center, width, function=function, invert=True)
    np.testing.assert_array_equal(inverted, 255 - expected)


def test_window_to_uint8_known_values_and_bad_arguments() -> None:
    raw = np.array([-1000.0, 0.0, 39.5, 40.0, 80.0, 119.5, 120.0, np.nan])
    assert window_to_uint8(raw, 40, 80).tolist() == [0, 0, 128, 129, 255, 255, 255, 0]
    with pytest.raises(ValueError, match="at least 1"):
        window_to_uint8(raw, 50, 0.5)
    with pytest.raises(ValueError, match="above 0"):
        window_to_uint8(raw, 50, 0, function="SIGMOID")
    with pytest.raises(ValueError, match="finite"):
        window_to_uint8(raw, float("nan"), 10)
    with pytest.raises(ValueError, match="Unknown VOI"):
        window_to_uint8(raw, 50, 10, function="GAMMA")


# --- Fuzzing: anything in, InputImageError or a valid LoadedImage out ---

SEEDS: dict[str, bytes] = {
    "png": raster_bytes(Image.fromarray(NOISE_RGB[:36, :36], "RGB"), "PNG"),
    "jpeg": raster_bytes(Image.fromarray(NOISE_RGB[:36, :36], "RGB"), "JPEG", quality=80),
    "gif": _animated_gif((5, 250)),
    "dicom": make_dicom(
        (gradient(36, 36).astype(np.uint16) * 9)[None].repeat(2, 0),
        slope=1.5,
        intercept=-20,
        window=(300.0, 400.0),
    ),
}


def _load_or_error(data: bytes) -> None:
    try:
        out = load_image(data)
    except InputImageError as exc:
        assert str(exc)
    else:
        _assert_valid(out)


@settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    seed=st.sampled_from(sorted(SEEDS)),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_fuzz_mutated_valid_files(seed: str, flips: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(SEEDS[seed])
    for pos, value in flips:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    _load_or_error(bytes(data))


@settings(max_examples=150, deadline=None, database=None)
@given(
    body=st.binary(max_size=600),
    prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\0" * 128 + b"DICM"]),
)
def test_fuzz_random_bytes(body: bytes, prefix: bytes) -> None:
    _load_or_error(prefix + body)
