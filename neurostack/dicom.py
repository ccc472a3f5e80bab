"""DICOM input: one frame of a DICOM file becomes a :class:`LoadedImage`.

Greyscale pipeline: stored values -> modality LUT (Rescale Slope/Intercept or
Modality LUT Sequence, ``pydicom.pixels.apply_modality_lut``) = ``raw`` float32
-> VOI: the VOI LUT Sequence (``pydicom.pixels.apply_voi_lut``), else the
file's first window centre/width (:func:`~neurostack.imaging.window_to_uint8`,
identical to ``apply_voi_lut`` rescaled to 0..255), else raw min..max -> 0..255
uint8 ``gray``. MONOCHROME1 is inverted so that the result displays like
MONOCHROME2. Colour data (RGB/YBR/palette) becomes luma exactly as for 8-bit
raster images.

Spacing comes from Pixel Spacing only (top level or the Pixel Measures
functional group); without it ``spacing_cm`` is ``None`` and ``spacing_source``
``"none"``. Imager Pixel Spacing is deliberately NOT used as a fallback: it is
measured at the detector, not in the patient.

Privacy: :attr:`LoadedImage.metadata` and every error message carry technical,
non-identifying fields only. Patient/study identifiers are returned solely by
:func:`identifying_tags`, which must be called explicitly.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from neurostack.errors import InputImageError
from neurostack.imaging import (
    InputLimits,
    LoadedImage,
    check_dimensions,
    resolve_frame,
    scale_to_uint8,
    window_to_uint8,
)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

IDENTIFYING_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "PatientAge",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "StationName",
    "DeviceSerialNumber",
    "StudyID",
    "StudyDescription",
    "SeriesDescription",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "InstanceCreationDate",
    "StudyTime",
    "SeriesTime",
    "AcquisitionTime",
    "ContentTime",
    "InstanceCreationTime",
    "AcquisitionDateTime",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
)
"""Tags :func:`identifying_tags` reports; none of them ever reaches ``metadata``."""

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_IMAGE_KEYWORDS = ("Rows", "Columns", "SOPClassUID", "Modality", "PhotometricInterpretation")
_MODALITIES = frozenset(
    {
        "MR",
        "CT",
        "PT",
        "NM",
        "US",
        "CR",
        "DX",
        "MG",
        "XA",
        "RF",
        "OT",
        "SC",
        "SEG",
        "RTIMAGE",
        "IO",
        "PX",
        "XC",
        "OP",
        "OPT",
        "ES",
        "GM",
        "SM",
        "DG",
    }
)
_PHOTOMETRICS = frozenset(
    {
        "MONOCHROME1",
        "MONOCHROME2",
        "RGB",
        "YBR_FULL",
        "YBR_FULL_422",
        "YBR_PARTIAL_420",
        "YBR_ICT",
        "YBR_RCT",
        "PALETTE COLOR",
    }
)
_VOI_FUNCTIONS = frozenset({"LINEAR", "LINEAR_EXACT", "SIGMOID"})
_NO_DECODER_HINT = "install python-gdcm or pylibjpeg with its plugins, or export uncompressed"


def _read(data: bytes, *, force: bool, stop_before_pixels: bool = False) -> Dataset:
    """Parse ``data`` with pydicom; any failure becomes a non-identifying InputImageError."""
    from pydicom import dcmread  # noqa: PLC0415 - pydicom is imported lazily
    from pydicom.errors import InvalidDicomError  # noqa: PLC0415

    try:
        ds = dcmread(io.BytesIO(data), force=force, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        raise InputImageError("Not a valid DICOM file") from None
    except MemoryError:
        raise InputImageError("The DICOM file is too large to parse in memory") from None
    except Exception as exc:  # noqa: BLE001 - pydicom messages may quote values: never forward
        raise InputImageError(
            f"The DICOM file is truncated or corrupt ({type(exc).__name__})"
        ) from None
    if force and not any(_has(ds, kw) for kw in _IMAGE_KEYWORDS + _PIXEL_KEYWORDS):
        raise InputImageError("Not a valid DICOM file (no DICOM preamble or image attributes)")
    return ds


def _has(ds: Dataset, keyword: str) -> bool:
    try:
        return keyword in ds
    except Exception:  # noqa: BLE001
        return False


def _get(ds: Any, keyword: str) -> Any:
    """``ds.keyword`` or ``None`` when absent, empty or unparseable."""
    try:
        value = ds.get(keyword, None)
    except Exception:  # noqa: BLE001 - a malformed value counts as absent
        return None
    if value is None or value == "" or (isinstance(value, (list, tuple)) and not value):
        return None
    return value


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [value]
    try:
        return list(value)
    except TypeError:
        return [value]


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return out if np.isfinite(out) else None


def _int(value: Any) -> int | None:
    out = _float(value)
    return int(out) if out is not None and out == int(out) else None


def _fg_value(ds: Dataset, frame: int, sequence: str, keyword: str) -> Any:
    """Look ``keyword`` up per frame, then in shared functional groups, then at top level."""
    per_frame = _values(_get(ds, "PerFrameFunctionalGroupsSequence"))
    shared = _values(_get(ds, "SharedFunctionalGroupsSequence"))
    groups = ([per_frame[frame]] if frame < len(per_frame) else []) + shared[:1]
    for group in groups:
        items = _values(_get(group, sequence))
        if items:
            value = _get(items[0], keyword)
            if value is not None:
                return value
    return _get(ds, keyword)


def _is_uid(text: str) -> bool:
    return re.fullmatch(r"[0-9.]{1,64}", text) is not None


def _ts_name(uid: Any) -> str | None:
    """Return the standard name of a transfer syntax UID, or ``None`` if it has none."""
    text = str(uid)
    name = str(getattr(uid, "name", text))
    return name if _is_uid(text) and name != text else None


def _uid_label(uid: Any) -> str:
    text = str(uid)
    if not _is_uid(text):
        return "an invalid transfer syntax UID"
    name = _ts_name(uid)
    return f"'{name}' ({text})" if name else text


def _transfer_syntax(ds: Dataset) -> Any:
    """Return the transfer syntax UID, inferring it from the parsed encoding if absent."""
    from pydicom import uid as pdu  # noqa: PLC0415
    from pydicom.dataset import FileMetaDataset  # noqa: PLC0415

    meta = getattr(ds, "file_meta", None)
    ts = _get(meta, "TransferSyntaxUID") if meta is not None else None
    if ts is not None:
        return pdu.UID(str(ts))
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if little is False:
        ts = pdu.ExplicitVRBigEndian
    else:
        ts = pdu.ImplicitVRLittleEndian if implicit else pdu.ExplicitVRLittleEndian
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = ts
    return ts


def _check_decoder(ts: Any) -> None:
    from pydicom.pixels import get_decoder  # noqa: PLC0415

    try:
        decoder = get_decoder(ts)
    except Exception:  # noqa: BLE001 - NotImplementedError for unknown/unsupported UIDs
        raise InputImageError(
            f"DICOM pixel data uses transfer syntax {_uid_label(ts)}, which is not supported"
        ) from None
    if not decoder.is_available:
        raise InputImageError(
            f"DICOM pixel data is compressed with transfer syntax {_uid_label(ts)} and no "
            f"decoder for it is installed ({_NO_DECODER_HINT})"
        )


def _decode(ds: Dataset, index: int, ts: Any) -> np.ndarray:
    from pydicom.pixels import pixel_array  # noqa: PLC0415

    try:
        return np.asarray(pixel_array(ds, index=index))
    except MemoryError:
        raise InputImageError("The DICOM pixel data is too large to decode in memory") from None
    except Exception as exc:  # noqa: BLE001 - never forward pydicom's text
        if getattr(ts, "is_compressed", False):
            raise InputImageError(
                f"The DICOM pixel data compressed with {_uid_label(ts)} could not be decoded: "
                "it is corrupt or truncated"
            ) from None
        if "less than expected" in str(exc).lower():
            raise InputImageError(
                "DICOM pixel data is shorter than Rows x Columns x frames requires "
                "(truncated file?)"
            ) from None
        raise InputImageError(
            f"The DICOM pixel data could not be decoded ({type(exc).__name__})"
        ) from None


def _rgb_to_uint8(rgb: np.ndarray, palette: bool) -> np.ndarray:
    rgb = np.asarray(rgb)[..., :3]
    if rgb.dtype == np.uint8:
        return rgb
    if palette and rgb.dtype == np.uint16:
        return np.clip(np.rint(rgb / 257.0), 0, 255).astype(np.uint8)
    return scale_to_uint8(rgb)


def _modality(ds: Dataset, arr: np.ndarray, index: int) -> tuple[np.ndarray, float, float]:
    """Apply the modality LUT; return ``(raw float32, slope, intercept)``."""
    from pydicom.dataset import Dataset as PdDataset  # noqa: PLC0415
    from pydicom.pixels import apply_modality_lut  # noqa: PLC0415

    slope = _float(_fg_value(ds, index, "PixelValueTransformationSequence", "RescaleSlope"))
    intercept = _float(_fg_value(ds, index, "PixelValueTransformationSequence", "RescaleIntercept"))
    if _get(ds, "ModalityLUTSequence") is not None:
        out = apply_modality_lut(arr, ds)
        slope, intercept = 1.0, 0.0
    else:
        slope = 1.0 if slope is None else slope
        intercept = 0.0 if intercept is None else intercept
        params = PdDataset()
        params.RescaleSlope = slope
        params.RescaleIntercept = intercept
        out = apply_modality_lut(arr, params)
    raw = np.nan_to_num(np.asarray(out, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return raw, slope, intercept


def _voi_lut(ds: Dataset, raw: np.ndarray) -> np.ndarray | None:
    """Apply the first VOI LUT Sequence item and scale its output range to 0..255."""
    from pydicom.pixels import apply_voi_lut  # noqa: PLC0415

    items = _values(_get(ds, "VOILUTSequence"))
    if not items:
        return None
    descriptor = [_int(v) for v in _values(_get(items[0], "LUTDescriptor"))]
    if len(descriptor) != 3 or None in descriptor:
        return None
    n_entries = descriptor[0] or 65536
    first = descriptor[1]
    if first >= 2**15:  # first mapped value is signed when the data are signed
        first -= 2**16
    inputs = np.arange(first, first + n_entries, dtype=np.int64)
    lut = np.asarray(apply_voi_lut(inputs, ds, prefer_lut=True), dtype=np.float64)
    values = np.clip(np.rint(raw), first, first + n_entries - 1).astype(np.int64)
    out = np.asarray(apply_voi_lut(values, ds, prefer_lut=True), dtype=np.float64)
    lo, hi = float(lut.min()), float(lut.max())
    if hi <= lo:
        return np.zeros(raw.shape, dtype=np.uint8)
    return np.clip(np.rint((out - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def _window(ds: Dataset, index: int) -> tuple[float, float, str] | None:
    seq = "FrameVOILUTSequence"
    centers = _values(_fg_value(ds, index, seq, "WindowCenter"))
    widths = _values(_fg_value(ds, index, seq, "WindowWidth"))
    if not centers or not widths:
        return None
    center, width = _float(centers[0]), _float(widths[0])
    if center is None or width is None:
        return None
    function = str(_fg_value(ds, index, seq, "VOILUTFunction") or "LINEAR").strip().upper()
    if function not in _VOI_FUNCTIONS:
        function = "LINEAR"
    return center, width, function


def _spacing_mm(ds: Dataset, index: int) -> tuple[float, float] | None:
    values = _values(_fg_value(ds, index, "PixelMeasuresSequence", "PixelSpacing"))
    if len(values) != 2:
        return None
    row, col = _float(values[0]), _float(values[1])
    if row is None or col is None or row <= 0 or col <= 0:
        return None
    return row, col


def _clean_photometric(value: Any) -> str:
    text = str(value or "").strip().upper()
    return text if text in _PHOTOMETRICS else "OTHER"


def load_dicom(
    data: bytes,
    frame: int | None = None,
    limits: InputLimits | None = None,
    *,
    force: bool = False,
) -> LoadedImage:
    """Decode one frame of a DICOM file.

    Args:
        data: The file's bytes.
        frame: Frame to decode; default the middle frame (``n_frames // 2``).
        limits: Size limits, checked on Rows x Columns before decoding.
        force: Parse files without the 128-byte preamble (``dcmread(force=True)``);
            the result must still contain image attributes.

    Returns:
        The slice, with ``raw`` (after the modality LUT) for greyscale data,
        ``spacing_cm`` from Pixel Spacing and non-identifying ``metadata``.

    Raises:
        InputImageError: With a specific, non-identifying message.
    """
    limits = limits or InputLimits()
    with _quiet():
        try:
            return _load(bytes(data), frame, limits, force)
        except InputImageError:
            raise
        except MemoryError:
            raise InputImageError("The DICOM file is too large to decode in memory") from None
        except Exception as exc:  # noqa: BLE001 - contract: only InputImageError escapes
            raise InputImageError(
                f"The DICOM file could not be read ({type(exc).__name__})"
            ) from None


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence pydicom's value warnings and log lines: they can quote identifiers."""
    from pydicom import config  # noqa: PLC0415

    with warnings.catch_warnings(), config.disable_value_validation():
        warnings.simplefilter("ignore")
        yield


def _load(data: bytes, frame: int | None, limits: InputLimits, force: bool) -> LoadedImage:
    ds = _read(data, force=force)
    if not any(_has(ds, kw) for kw in _PIXEL_KEYWORDS):
        if not any(_has(ds, kw) for kw in _IMAGE_KEYWORDS):
            raise InputImageError(
                "DICOM file contains no image: no pixel data or image attributes (truncated file?)"
            )
        raise InputImageError("DICOM file has no pixel data")
    rows, cols = _int(_get(ds, "Rows")), _int(_get(ds, "Columns"))
    if rows is None or cols is None:
        raise InputImageError("DICOM file is missing Rows/Columns, so its pixels cannot be read")
    check_dimensions(rows, cols, limits)
    spp = _int(_get(ds, "SamplesPerPixel")) or 1
    if spp not in (1, 3):
        raise InputImageError(f"DICOM Samples per Pixel of {spp} is not supported (1 or 3)")
    n_frames = max(1, _int(_get(ds, "NumberOfFrames")) or 1)
    index = resolve_frame(frame, n_frames, default=n_frames // 2)
    ts = _transfer_syntax(ds)
    _check_decoder(ts)
    photometric = _clean_photometric(_get(ds, "PhotometricInterpretation"))
    arr = _decode(ds, index, ts)
    if arr.ndim == 3 and arr.shape[0] == 1 and spp == 1:
        arr = arr[0]
    expected = (rows, cols) if spp == 1 and photometric != "PALETTE COLOR" else None
    if expected is not None and arr.shape != expected:
        raise InputImageError(
            f"DICOM pixel data has shape {arr.shape}, expected {rows}x{cols} for one frame"
        )

    meta: dict[str, Any] = {
        "format": "DICOM",
        "modality": m if (m := str(_get(ds, "Modality") or "").upper()) in _MODALITIES else None,
        "rows": rows,
        "cols": cols,
        "samples_per_pixel": spp,
        "bits_allocated": _int(_get(ds, "BitsAllocated")),
        "bits_stored": _int(_get(ds, "BitsStored")),
        "pixel_representation": _int(_get(ds, "PixelRepresentation")),
        "photometric_interpretation": photometric,
        "transfer_syntax": _ts_name(ts),
        "transfer_syntax_uid": str(ts) if _is_uid(str(ts)) else None,
        "number_of_frames": n_frames,
    }
    if spp == 3 or photometric == "PALETTE COLOR":
        gray, display, raw = _colour(ds, arr, photometric)
        meta.update(voi="luma")
    else:
        gray, raw = _grey(ds, arr, index, photometric, meta)
        display = np.repeat(gray[..., None], 3, axis=-1)

    spacing = _spacing_mm(ds, index)
    thickness = _float(_fg_value(ds, index, "PixelMeasuresSequence", "SliceThickness"))
    meta["pixel_spacing_mm"] = spacing
    meta["slice_thickness_mm"] = thickness if thickness is not None and thickness > 0 else None
    return LoadedImage(
        gray=np.ascontiguousarray(gray, dtype=np.uint8),
        display=np.ascontiguousarray(display, dtype=np.uint8),
        spacing_cm=(spacing[0] / 10.0, spacing[1] / 10.0) if spacing else None,
        spacing_source="dicom" if spacing else "none",
        format="DICOM",
        n_frames=n_frames,
        frame_index=index,
        raw=raw,
        metadata=meta,
    )


def _colour(ds: Dataset, arr: np.ndarray, photometric: str) -> tuple[np.ndarray, np.ndarray, None]:
    palette = photometric == "PALETTE COLOR"
    if palette:
        from pydicom.pixels import apply_color_lut  # noqa: PLC0415

        try:
            arr = apply_color_lut(arr, ds)
        except Exception as exc:  # noqa: BLE001
            raise InputImageError(
                f"DICOM palette colour lookup table is missing or invalid ({type(exc).__name__})"
            ) from None
    if arr.ndim != 3 or arr.shape[-1] < 3:
        raise InputImageError(f"DICOM colour pixel data has unexpected shape {arr.shape}")
    rgb = np.ascontiguousarray(_rgb_to_uint8(arr, palette))
    gray = np.asarray(Image.fromarray(rgb, "RGB").convert("L"), dtype=np.uint8)
    return gray, rgb, None


def _grey(
    ds: Dataset, arr: np.ndarray, index: int, photometric: str, meta: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw, slope, intercept = _modality(ds, arr, index)
    except Exception as exc:  # noqa: BLE001
        raise InputImageError(
            f"DICOM modality LUT / rescale could not be applied ({type(exc).__name__})"
        ) from None
    invert = photometric == "MONOCHROME1"
    meta.update(rescale_slope=slope, rescale_intercept=intercept, inverted=invert)
    meta.update(window_center=None, window_width=None, voi_lut_function=None)
    try:
        gray = _voi_lut(ds, raw)
    except Exception:  # noqa: BLE001 - a broken VOI LUT falls back to the window / min..max
        gray = None
    if gray is not None:
        meta["voi"] = "voi_lut_sequence"
        return (255 - gray if invert else gray), raw
    window = _window(ds, index)
    if window is not None:
        center, width, function = window
        try:
            gray = window_to_uint8(raw, center, width, function=function, invert=invert)
        except ValueError:
            gray = None
        else:
            meta.update(
                voi="window", window_center=center, window_width=width, voi_lut_function=function
            )
    if gray is None:
        gray = scale_to_uint8(raw)
        gray = 255 - gray if invert else gray
        meta["voi"] = "min_max"
    return gray, raw


def identifying_tags(data: bytes) -> dict[str, str]:
    """Return the patient/study identifiers of a DICOM file, for an explicit opt-in only.

    Args:
        data: The file's bytes.

    Returns:
        ``{keyword: value}`` for each present, non-empty tag of
        :data:`IDENTIFYING_KEYWORDS` (plus ``MediaStorageSOPInstanceUID``).

    Raises:
        InputImageError: If ``data`` is not a readable DICOM file.
    """
    data = bytes(data)
    has_preamble = len(data) >= 132 and data[128:132] == b"DICM"
    with _quiet():
        ds = _read(data, force=not has_preamble, stop_before_pixels=True)
        found: dict[str, str] = {}
        for keyword in IDENTIFYING_KEYWORDS:
            value = _get(ds, keyword)
            if value is not None and str(value).strip():
                found[keyword] = str(value)
        meta = getattr(ds, "file_meta", None)
        media_uid = _get(meta, "MediaStorageSOPInstanceUID") if meta is not None else None
        if media_uid is not None:
            found["MediaStorageSOPInstanceUID"] = str(media_uid)
    return found
