"""Image input: any supported file becomes one canonical greyscale slice.

Canonical form: ``gray`` is a ``(H, W)`` uint8 array. 8-bit colour images are
converted with PIL's ITU-R 601-2 luma transform (``Image.convert("L")``); RGBA
is composited on black first; images with more than 8 bits are scaled from
their minimum..maximum to 0..255. The original is kept (as RGB uint8) for
display. DICOM files are decoded by :mod:`neurostack.dicom`. Every failure
raises :class:`~neurostack.errors.InputImageError` with a specific message;
no PIL, pydicom or numpy exception escapes :func:`load_image`.
"""

from __future__ import annotations

import io
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from neurostack.errors import InputImageError

MIN_SIDE_PX = 32
"""Smallest height or width that can be analysed."""

RASTER_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP", "PPM")
"""PIL formats :func:`load_image` accepts besides DICOM (others, e.g. EPS, are refused)."""

DICOM_SUFFIXES: frozenset[str] = frozenset({".dcm", ".dicom", ".dic"})
"""File extensions that are tried as DICOM even without the 128-byte preamble."""

_SUPPORTED_TEXT = "expected PNG, JPEG, TIFF, BMP, GIF, WebP, PPM/PGM or DICOM"
_RASTER_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
)
_DICOM_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL "
    b"UN UR US UT UV".split()
)


@dataclass(frozen=True)
class InputLimits:
    """Upper bounds enforced before any pixel is decoded.

    PIL refuses images above ``2 * PIL.Image.MAX_IMAGE_PIXELS`` while reading
    the header, so the effective pixel limit is the smaller of the two.
    """

    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side_px: int = MIN_SIDE_PX


@dataclass
class LoadedImage:
    """A decoded slice.

    Attributes:
        gray: ``(H, W)`` uint8 canonical greyscale used by every model.
        display: ``(H, W, 3)`` uint8 RGB rendering of the original for display.
        spacing_cm: ``(row, col)`` pixel spacing in cm, or ``None`` when unknown.
        spacing_source: ``"dicom"`` when read from the file, otherwise ``"none"``.
        format: Container format, e.g. ``"JPEG"``, ``"PNG"``, ``"DICOM"``.
        n_frames: Number of frames in the file.
        frame_index: The frame that was decoded.
        raw: Finite float32 ``(H, W)`` values before display scaling (DICOM after
            the modality LUT; NaN/inf become 0), for window/level controls;
            ``None`` for 8-bit images.
        metadata: Non-identifying technical metadata only.
    """

    gray: np.ndarray = field(repr=False)
    display: np.ndarray = field(repr=False)
    spacing_cm: tuple[float, float] | None = None
    spacing_source: str = "none"
    format: str = ""
    n_frames: int = 1
    frame_index: int = 0
    raw: np.ndarray | None = field(default=None, repr=False)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the slice."""
        return (int(self.gray.shape[0]), int(self.gray.shape[1]))


def default_window(image: LoadedImage) -> tuple[float, float] | None:
    """Return the window a slice is displayed with: the file's own, else its full range.

    Returns:
        ``(centre, width)``, or ``None`` for an 8-bit image (no ``raw`` values).
    """
    if image.raw is None:
        return None
    meta = image.metadata
    lo, hi = float(np.min(image.raw)), float(np.max(image.raw))
    centre = meta.get("window_center")
    width = meta.get("window_width")
    return (float(centre) if centre is not None else (lo + hi) / 2,
            float(width) if width is not None else max(hi - lo, 1.0))


def rewindow(image: LoadedImage, center: float, width: float) -> np.ndarray:
    """Render a DICOM slice's ``raw`` values at another window, as its display was made.

    The file's VOI LUT function and MONOCHROME1 inversion are kept, so the file's own
    window (:func:`default_window`) reproduces ``image.gray``; for a file displayed
    through a VOI LUT table, that window (its full range) is a linear approximation.

    Raises:
        ValueError: For an 8-bit image (nothing to re-window) or a window
            :func:`window_to_uint8` refuses.
    """
    if image.raw is None:
        raise ValueError("only slices with raw values (DICOM) can be re-windowed")
    meta = image.metadata
    function = meta.get("voi_lut_function") or "LINEAR"
    return window_to_uint8(image.raw, center, width, function=function,
                           invert=bool(meta.get("inverted")))


def scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale a numeric array linearly from its finite min..max to 0..255 uint8.

    NaN and infinite values become 0. A constant array becomes all zeros.
    """
    arr = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        return np.zeros(arr.shape, dtype=np.uint8)
    lo = float(arr[finite].min())
    hi = float(arr[finite].max())
    out = np.zeros(arr.shape, dtype=np.float64)
    if hi > lo:
        out[finite] = (arr[finite] - lo) / (hi - lo) * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def window_to_uint8(
    raw: np.ndarray,
    center: float,
    width: float,
    *,
    function: str = "LINEAR",
    invert: bool = False,
) -> np.ndarray:
    """Apply a DICOM window (level ``center``, ``width``) and return 0..255 uint8.

    Implements DICOM PS3.3 C.11.2.1.2 with an output range of 0..255, i.e. the
    result of ``pydicom.pixels.apply_voi_lut`` rescaled to 0..255. Used both by
    :func:`neurostack.dicom.load_dicom` and the dashboard's window/level control,
    so re-windowing ``LoadedImage.raw`` with the file's window reproduces ``gray``.

    Args:
        raw: Values after the modality LUT (``LoadedImage.raw``).
        center: Window centre (level).
        width: Window width; at least 1 for ``LINEAR``, above 0 otherwise.
        function: VOI LUT function: ``"LINEAR"``, ``"LINEAR_EXACT"`` or ``"SIGMOID"``.
        invert: Invert the output (MONOCHROME1 data).

    Returns:
        uint8 array of ``raw``'s shape; NaN and infinite inputs give 0.

    Raises:
        ValueError: For a non-finite centre/width, a too-small width or an
            unknown function.
    """
    center = float(center)
    width = float(width)
    func = function.upper()
    if not (np.isfinite(center) and np.isfinite(width)):
        raise ValueError("Window centre and width must be finite numbers")
    arr = np.asarray(raw, dtype=np.float64)
    finite = np.isfinite(arr)
    x = np.where(finite, arr, 0.0)
    if func == "LINEAR":
        if width < 1:
            raise ValueError(f"Window width must be at least 1 for LINEAR, got {width:g}")
        c, w = center - 0.5, width - 1.0
        if w == 0:
            out = np.where(x <= c, 0.0, 255.0)
        else:
            out = np.clip(((x - c) / w + 0.5) * 255.0, 0.0, 255.0)
            out = np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 255.0, out))
    elif func == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"Window width must be above 0, got {width:g}")
        out = np.clip(((x - center) / width + 0.5) * 255.0, 0.0, 255.0)
        out = np.where(x <= center - width / 2, 0.0, np.where(x > center + width / 2, 255.0, out))
    elif func == "SIGMOID":
        if width <= 0:
            raise ValueError(f"Window width must be above 0, got {width:g}")
        z = np.clip(-4.0 * (x - center) / width, -700.0, 700.0)
        out = 255.0 / (1.0 + np.exp(z))
    else:
        raise ValueError(f"Unknown VOI LUT function {function!r}")
    gray = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if invert:
        gray = 255 - gray
    gray[~finite] = 0
    return gray


def pil_to_gray(img: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Convert a PIL image to ``(gray uint8, display RGB uint8, raw float32 or None)``."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F") or mode.startswith("I;"):
        raw = np.asarray(img, dtype=np.float32)
        gray = scale_to_uint8(raw)
        return gray, np.repeat(gray[..., None], 3, axis=-1), raw
    if mode == "1":
        img = img.convert("L")
    elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba).convert("RGB")
    elif mode not in ("L", "RGB"):
        img = img.convert("RGB")
    gray = np.asarray(img.convert("L"), dtype=np.uint8)
    display = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return gray, display, None


def check_dimensions(h: int, w: int, limits: InputLimits) -> None:
    """Raise :class:`InputImageError` when an ``h`` x ``w`` image is too large or too small."""
    if h * w > limits.max_pixels:
        raise InputImageError(
            f"Image is {w}x{h} = {h * w:,} pixels; the limit is {limits.max_pixels:,} pixels"
        )
    if min(h, w) < limits.min_side_px:
        raise InputImageError(
            f"Image is {w}x{h} pixels, too small to analyse "
            f"(each side must be at least {limits.min_side_px} pixels)"
        )


def resolve_frame(frame: int | None, n_frames: int, default: int) -> int:
    """Validate a requested frame index against ``n_frames``.

    Args:
        frame: Requested index, or ``None`` for ``default``.
        n_frames: Number of frames in the file (at least 1).
        default: Index used when ``frame`` is ``None``.

    Returns:
        The frame index to decode.

    Raises:
        InputImageError: If ``frame`` is not an integer or out of range.
    """
    if frame is None:
        return default
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
        raise InputImageError(f"Frame must be an integer, got {type(frame).__name__}")
    index = int(frame)
    if not 0 <= index < n_frames:
        raise InputImageError(
            f"Frame {index} is out of range: the file has {n_frames} frame(s), "
            f"valid frames are 0..{n_frames - 1}"
        )
    return index


def _too_big(size: int, limits: InputLimits) -> InputImageError:
    return InputImageError(
        f"File is {size / 1e6:.1f} MB; the limit is {limits.max_bytes / 1e6:.0f} MB"
    )


def _read_bytes(source: str | Path | bytes | BinaryIO, limits: InputLimits) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif hasattr(source, "read"):
        try:
            data = source.read(limits.max_bytes + 1)
        except Exception as exc:
            raise InputImageError(f"Could not read the upload ({type(exc).__name__})") from exc
        if isinstance(data, str) or not isinstance(data, (bytes, bytearray, memoryview)):
            raise InputImageError("Expected a binary file object, got a text stream")
        data = bytes(data)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        try:
            if not path.exists():
                raise InputImageError(f"File not found: {path.name}")
            if path.is_dir():
                raise InputImageError(f"Expected an image file, got a folder: {path.name}")
            size = path.stat().st_size
            if size > limits.max_bytes:
                raise _too_big(size, limits)
            with path.open("rb") as fh:
                data = fh.read(limits.max_bytes + 1)
        except (OSError, ValueError) as exc:  # ValueError: e.g. a NUL byte in the path
            if isinstance(exc, InputImageError):
                raise
            raise InputImageError(f"Could not read {path.name} ({type(exc).__name__})") from exc
    else:
        raise InputImageError(
            f"Expected a file path, bytes or a binary file object, got {type(source).__name__}"
        )
    if len(data) == 0:
        raise InputImageError("The file is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise _too_big(len(data), limits)
    return data


def _is_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def _looks_like_raw_dicom(data: bytes) -> bool:
    """Whether ``data`` plausibly starts with a DICOM data set without a preamble."""
    if len(data) < 8:
        return False
    group = int.from_bytes(data[0:2], "little")
    element = int.from_bytes(data[2:4], "little")
    if group not in (0x0002, 0x0008) or element > 0x00FF:
        return False
    if data[4:6] in _DICOM_VRS:
        return True
    return int.from_bytes(data[4:8], "little") < min(len(data), 1024)


def _signature_format(data: bytes) -> str | None:
    """Return the raster format named by the file's magic bytes, if any."""
    for magic, name in _RASTER_SIGNATURES:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if re.match(rb"P[1-7]\s", data[:3]) is not None:
        return "PPM/PGM"
    return None


def _looks_like_text(data: bytes) -> bool:
    """Whether ``data`` is text (HTML, XML, JSON, an error page...) rather than binary."""
    head = data[:4096]
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n\x0c")
    if stripped[:1] == b"<" or stripped[:1] in (b"{", b"["):
        return b"\x00" not in head
    if b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the 4096-byte boundary
            return False
        text = head[: exc.start].decode("utf-8")
    if not text:
        return False
    printable = sum(ch.isprintable() or ch in "\t\r\n" for ch in text)
    return printable / len(text) > 0.95


def _text_error() -> InputImageError:
    return InputImageError(
        "The file contains text (for example an HTML page or an error message), "
        f"not image data; {_SUPPORTED_TEXT}"
    )


def _bomb_pixels(exc: BaseException) -> int | None:
    match = re.search(r"\((\d+) pixels\)", str(exc))
    return int(match.group(1)) if match else None


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _load_raster(data: bytes, frame: int | None, limits: InputLimits) -> LoadedImage:
    try:
        # PIL's own bomb check runs here (error above 2x MAX_IMAGE_PIXELS, warning above
        # 1x); ours runs right after on the declared size, before any pixel is decoded.
        img = Image.open(io.BytesIO(data), formats=RASTER_FORMATS)
        with img:
            w, h = img.size
            check_dimensions(h, w, limits)
            fmt = img.format or ""
            n_frames = max(1, int(getattr(img, "n_frames", 1)))
            index = resolve_frame(frame, n_frames, default=0)
            if index:
                img.seek(index)
                w, h = img.size  # TIFF pages may differ in size
                check_dimensions(h, w, limits)
            ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated data must raise, not grey-fill
            img.load()
            mode = img.mode
            try:
                gray, display, raw = pil_to_gray(img)
            except (ValueError, TypeError, KeyError) as exc:
                raise InputImageError(
                    f"Unsupported pixel format (PIL mode {mode}): {_short(exc)}"
                ) from exc
    except InputImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL refuses above 2x MAX_IMAGE_PIXELS (and warns above 1x, an error only when
        # warnings are errors); report it in the same terms as our own limit.
        declared = _bomb_pixels(exc)
        size = f"{declared:,} pixels" if declared else "an absurd number of pixels"
        pil_limit = int(Image.MAX_IMAGE_PIXELS or 0)
        if isinstance(exc, Image.DecompressionBombError):
            pil_limit *= 2
        limit = min(limits.max_pixels, pil_limit) if pil_limit else limits.max_pixels
        raise InputImageError(
            f"Image declares {size}, refused as a possible decompression bomb; "
            f"the limit is {limit:,} pixels"
        ) from None
    except UnidentifiedImageError:
        if _looks_like_text(data):
            raise _text_error() from None
        if (kind := _signature_format(data)) is not None:
            raise InputImageError(
                f"The file starts like a {kind} image but its header is corrupt or truncated"
            ) from None
        raise InputImageError(f"Not a supported image: {_SUPPORTED_TEXT}") from None
    except MemoryError:
        raise InputImageError("The image is too large to decode in the available memory") from None
    except (OSError, EOFError) as exc:
        if "truncated" in str(exc).lower() or isinstance(exc, EOFError):
            raise InputImageError(
                f"The image data is truncated (the file ends early): {_short(exc)}"
            ) from exc
        raise InputImageError(f"The image data is corrupt ({_short(exc)})") from exc
    except (SyntaxError, ValueError, zlib.error) as exc:
        raise InputImageError(f"The image data is corrupt ({_short(exc)})") from exc
    except Exception as exc:  # noqa: BLE001 - contract: only InputImageError escapes
        raise InputImageError(
            f"The image could not be decoded ({type(exc).__name__}: {_short(exc)})"
        ) from exc
    gray, display = _checked_arrays(gray, display)
    if raw is not None:
        raw = np.nan_to_num(np.asarray(raw, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return LoadedImage(
        gray=gray,
        display=display,
        format=fmt,
        n_frames=n_frames,
        frame_index=index,
        raw=raw,
        metadata={"format": fmt, "mode": mode, "width": w, "height": h},
    )


def _checked_arrays(gray: np.ndarray, display: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Guarantee the output contract: gray ``(H, W)`` uint8, display ``(H, W, 3)`` uint8."""
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise InputImageError(f"Unsupported pixel layout: decoded shape {gray.shape}")
    if display.shape != (*gray.shape, 3) or display.dtype != np.uint8:
        display = np.repeat(gray[..., None], 3, axis=-1)
    return np.ascontiguousarray(gray), np.ascontiguousarray(display)


def _suffix(source: object) -> str:
    if isinstance(source, (str, Path)):
        return Path(source).suffix.lower()
    name = getattr(source, "name", None)  # e.g. an uploaded file object
    return Path(name).suffix.lower() if isinstance(name, str) else ""


def load_image(
    source: str | Path | bytes | BinaryIO,
    *,
    frame: int | None = None,
    limits: InputLimits | None = None,
) -> LoadedImage:
    """Decode a slice from a path, bytes or a binary file object.

    DICOM is recognised by its ``DICM`` preamble; files without the preamble
    are tried as DICOM when their name ends in ``.dcm``/``.dicom``/``.dic`` or
    their first bytes look like a DICOM data element (and not like a raster).

    Args:
        source: File path, the file's bytes, or an object with ``read()``.
        frame: Frame index for multi-frame files (default: first frame for
            rasters, middle frame for DICOM).
        limits: Size limits; defaults to :class:`InputLimits()`.

    Returns:
        The decoded slice.

    Raises:
        InputImageError: With a specific message for any unusable input.
    """
    limits = limits or InputLimits()
    data = _read_bytes(source, limits)
    if _is_dicom(data):
        from neurostack.dicom import load_dicom  # noqa: PLC0415 - optional heavy import

        return load_dicom(data, frame=frame, limits=limits)
    if _signature_format(data) is not None:
        return _load_raster(data, frame, limits)
    if _looks_like_text(data):
        raise _text_error()
    if _suffix(source) in DICOM_SUFFIXES or _looks_like_raw_dicom(data):
        from neurostack.dicom import load_dicom  # noqa: PLC0415 - optional heavy import

        return load_dicom(data, frame=frame, limits=limits, force=True)
    return _load_raster(data, frame, limits)
