"""Image input: any supported file becomes one canonical greyscale slice.

Canonical form: ``gray`` is a ``(H, W)`` uint8 array. 8-bit colour images are
converted with PIL's ITU-R 601-2 luma transform (``Image.convert("L")``); RGBA
is composited on black first; images with more than 8 bits are scaled from
their minimum..maximum to 0..255. The original is kept (as RGB uint8) for
display. Every failure raises :class:`~neurostack.errors.InputImageError`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from neurostack.errors import InputImageError

MIN_SIDE_PX = 32
"""Smallest height or width that can be analysed."""


@dataclass(frozen=True)
class InputLimits:
    """Upper bounds enforced before any pixel is decoded."""

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
        raw: Float32 ``(H, W)`` values before display scaling (DICOM after the
            modality LUT), for window/level controls; ``None`` for 8-bit images.
        metadata: Non-identifying technical metadata only.
    """

    gray: np.ndarray
    display: np.ndarray
    spacing_cm: tuple[float, float] | None = None
    spacing_source: str = "none"
    format: str = ""
    n_frames: int = 1
    frame_index: int = 0
    raw: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the slice."""
        return (int(self.gray.shape[0]), int(self.gray.shape[1]))


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


def _read_bytes(source: str | Path | bytes, limits: InputLimits) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.exists():
            raise InputImageError(f"File not found: {path.name}")
        if path.is_dir():
            raise InputImageError(f"Expected an image file, got a folder: {path.name}")
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise InputImageError(
                f"File is {size / 1e6:.1f} MB; the limit is {limits.max_bytes / 1e6:.0f} MB"
            )
        data = path.read_bytes()
    if len(data) == 0:
        raise InputImageError("The file is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise InputImageError(
            f"File is {len(data) / 1e6:.1f} MB; the limit is {limits.max_bytes / 1e6:.0f} MB"
        )
    return data


def _is_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def _check_size(h: int, w: int, limits: InputLimits) -> None:
    if h * w > limits.max_pixels:
        raise InputImageError(
            f"Image is {w}x{h} = {h * w:,} pixels; the limit is {limits.max_pixels:,} pixels"
        )
    if min(h, w) < limits.min_side_px:
        raise InputImageError(
            f"Image is {w}x{h} pixels, too small to analyse "
            f"(each side must be at least {limits.min_side_px} pixels)"
        )


def _load_raster(data: bytes, frame: int | None, limits: InputLimits) -> LoadedImage:
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            _check_size(h, w, limits)
            fmt = img.format or ""
            n_frames = int(getattr(img, "n_frames", 1))
            index = 0 if frame is None else frame
            if not 0 <= index < n_frames:
                raise InputImageError(
                    f"Frame {index} requested but the file has {n_frames} frame(s)"
                )
            if index:
                img.seek(index)
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            img.load()
            gray, display, raw = pil_to_gray(img)
    except InputImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputImageError(f"Image declares an absurd size (decompression bomb): {exc}") from None
    except UnidentifiedImageError:
        raise InputImageError(
            "Not a supported image: expected PNG, JPEG, TIFF, BMP or DICOM"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputImageError(f"The image data is truncated or corrupt ({exc})") from None
    return LoadedImage(
        gray=gray, display=display, format=fmt, n_frames=n_frames, frame_index=index, raw=raw,
        metadata={"format": fmt, "mode": img.mode, "width": w, "height": h},
    )


def load_image(
    source: str | Path | bytes,
    *,
    frame: int | None = None,
    limits: InputLimits | None = None,
) -> LoadedImage:
    """Decode a slice from a path or bytes.

    Args:
        source: File path or the file's bytes.
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
    return _load_raster(data, frame, limits)
