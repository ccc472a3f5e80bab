"""Builders for small test images and DICOM files, all generated in memory."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmread, dcmwrite, uid
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate

IDENTIFIERS: dict[str, str] = {
    "PatientName": "Zyxwv^Quintessa",
    "PatientID": "PID-8675309",
    "PatientBirthDate": "19710203",
    "AccessionNumber": "ACC-4242-XYZ",
    "InstitutionName": "Saint Obscura Hospital",
    "ReferringPhysicianName": "Qwerty^Ulysses",
    "StudyID": "STUDY-31337",
    "StudyDate": "20240117",
    "StudyTime": "093015",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.111111",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.222222",
    "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.333333",
}
"""Identifiers written into every generated DICOM file (unique strings, easy to search)."""


def gradient(h: int = 48, w: int = 64) -> np.ndarray:
    """A deterministic uint8 test pattern of shape ``(h, w)``."""
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy * 7 + xx * 3) % 256).astype(np.uint8)


def raster_bytes(img: Image.Image, fmt: str, **save: Any) -> bytes:
    """Encode a PIL image to bytes."""
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def make_dicom(pixels: np.ndarray | None, *, preamble: bool = True, **kwargs: Any) -> bytes:
    """Encode :func:`make_dataset` to bytes (``preamble=False``: bare data set, no file meta)."""
    return to_bytes(make_dataset(pixels, **kwargs), preamble=preamble)


def make_dataset(
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    spacing: tuple[float, float] | None = (0.5, 0.5),
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    identifiers: bool = True,
    transfer_syntax: str = uid.ExplicitVRLittleEndian,
    extra: dict[str, Any] | None = None,
) -> FileDataset:
    """Build an MR Image Storage data set; ``pixels`` is (H, W), (F, H, W) or (H, W, 3).

    Integer pixels are stored as they are (uint8/uint16/int16); ``None`` writes
    no Pixel Data at all.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = uid.MRImageStorage
    meta.MediaStorageSOPInstanceUID = IDENTIFIERS["SOPInstanceUID"]
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = uid.MRImageStorage
    ds.Modality = "MR"
    if identifiers:
        for key, value in IDENTIFIERS.items():
            setattr(ds, key, value)
    if pixels is not None:
        arr = np.asarray(pixels)
        if arr.ndim == 3 and arr.shape[-1] == 3 and photometric == "RGB":
            rows, cols, spp, frames = arr.shape[0], arr.shape[1], 3, 1
        elif arr.ndim == 3:
            frames, rows, cols, spp = arr.shape[0], arr.shape[1], arr.shape[2], 1
        else:
            rows, cols, spp, frames = arr.shape[0], arr.shape[1], 1, 1
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = spp
        ds.PhotometricInterpretation = photometric
        if spp == 3:
            ds.PlanarConfiguration = 0
        if frames > 1:
            ds.NumberOfFrames = frames
        bits = arr.dtype.itemsize * 8
        ds.BitsAllocated = bits
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
        ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    if spacing is not None:
        ds.PixelSpacing = [spacing[0], spacing[1]]
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept if intercept is not None else 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    return ds


def to_bytes(ds: Dataset, *, preamble: bool = True) -> bytes:
    """Write ``ds`` as a DICOM file, or as a bare data set without preamble/file meta."""
    buf = io.BytesIO()
    if preamble:
        ds.save_as(buf, enforce_file_format=True)
    else:
        bare = Dataset()
        bare.update(ds)
        dcmwrite(buf, bare, implicit_vr=False, little_endian=True)
    return buf.getvalue()


def make_jpeg_dicom(gray: np.ndarray, quality: int = 95) -> tuple[bytes, bytes]:
    """A JPEG Baseline DICOM of ``gray``; also returns the JPEG codestream."""
    jpeg = raster_bytes(Image.fromarray(gray, "L"), "JPEG", quality=quality)
    ds = make_dataset(gray, transfer_syntax=uid.JPEGBaseline8Bit)
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return to_bytes(ds), jpeg


def with_transfer_syntax(data: bytes, ts: str, payload: bytes = b"\xff\xd8garbage") -> bytes:
    """Re-label a DICOM file as compressed with ``ts`` and an encapsulated ``payload``."""
    ds = _reload(data)
    ds.file_meta.TransferSyntaxUID = ts
    ds.PixelData = encapsulate([payload + b"\0" * (len(payload) % 2)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return to_bytes(ds)


def _reload(data: bytes) -> Dataset:
    return dcmread(io.BytesIO(data))
