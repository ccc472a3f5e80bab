"""Helpers shared by the dashboard page tests (sample files, chart titles, a DICOM)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "artifacts" / "samples"


def chart_titles(at: object) -> list[str]:
    """Titles of every plotly chart an ``AppTest`` run rendered."""
    titles = []
    for el in at.get("plotly_chart"):
        spec = json.loads(el.proto.spec)
        title = spec.get("layout", {}).get("title", {})
        titles.append(title.get("text", "") if isinstance(title, dict) else str(title))
    return titles


def sample_bytes(name: str | None = None) -> tuple[str, bytes]:
    """A bundled sample slice as ``(file name, bytes)`` (the first one by default)."""
    files = sorted(SAMPLES.glob("*.jpg"))
    path = next(p for p in files if name is None or p.name == name)
    return path.name, path.read_bytes()


PATIENT_NAME = "Zyxwv^Quintessa"
PATIENT_ID = "PID-8675309"


def multiframe_dicom(frames: int = 3, size: int = 96) -> bytes:
    """A 16-bit MR DICOM with ``frames`` frames, a window, 0.5 mm pixels and identifiers."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    head = ((yy - size / 2) / (0.4 * size)) ** 2 + ((xx - size / 2) / (0.35 * size)) ** 2 < 1
    stack = np.stack([
        np.where(head, 800 + 200 * k + rng.normal(0, 40, (size, size)), 0) for k in range(frames)
    ]).clip(0, 4000).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.Rows = ds.Columns = size
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.5, 0.5]
    ds.WindowCenter = 1000
    ds.WindowWidth = 1600
    ds.PixelData = stack.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
