"""Batch analysis of many slices into a crash-safe, resumable CSV.

:func:`run_batch` analyses every item, records each failure with its reason
and goes on; one bad file never stops a batch. Slices are analysed in chunks
(``chunk_size``, one network call per chunk); each finished row is appended to
``out_csv`` and flushed to disk (``fsync``) as soon as its chunk is done, so a
killed process loses at most the chunk in flight; ``resume=True`` repairs a
truncated last line and skips the items already done (same name *and* same
file content).

The CSV header is fixed before the first row (see :func:`result_columns`):
rows with or without segmentation, in cm or in pixels, all share it and
missing values are empty. Records are identifier-free
(:meth:`~neurostack.pipeline.CaseResult.to_record`), but the ``item`` column
holds file names *as given*; pass ``rename=anonymise_name`` (CLI:
``--anonymise-names``) when file names may identify a patient.

CLI::

    python -m neurostack.batch INPUT [INPUT ...] --out results.csv [--resume]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import re
import sys
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from morphology.measure import FEATURE_UNITS
from neurostack import CLASS_NAMES
from neurostack.errors import InputImageError
from neurostack.formatting import spreadsheet_safe
from neurostack.imaging import (
    DICOM_SUFFIXES,
    InputLimits,
    LoadedImage,
    _looks_like_raw_dicom,
    load_image,
)

if TYPE_CHECKING:
    from neurostack.pipeline import CaseResult

try:  # POSIX only; elsewhere the results file is simply not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".tif", ".tiff", ".bmp", ".gif", ".webp",
     ".ppm", ".pgm", ".pbm", ".pnm"} | set(DICOM_SUFFIXES)
)
"""File suffixes collected from folders and ZIP archives (besides extension-less DICOM
files and ZIPs): every format :func:`neurostack.imaging.load_image` reads."""
DEFAULT_CHUNK = 8
"""Slices per batched analysis call in :func:`run_batch` (see ``benchmarks/README.md``)."""

ZIP_SUFFIX = ".zip"
MAX_ZIP_MEMBERS = 5000
MAX_ZIP_TOTAL_BYTES = 512 * 1024 * 1024
"""Default limit on the summed uncompressed size of one ZIP archive's members."""

KEY_COLUMNS: tuple[str, ...] = ("item", "n", "file_sha256")
"""Leading columns of the results CSV: item name, running index (1-based), file hash."""
RECORD_HEAD: tuple[str, ...] = (
    "image_sha256", "height_px_image", "width_px_image", "predicted_class", "confidence",
    "review_flagged", "review_threshold", "method", "escalated", "models_agree", "tumor_found",
    "segmented", "mask_threshold",
    "outline_confidence", "outline_flagged", "warnings",
    "intensity_atypicality", "relative_gamma", "intensity_corrected", "uncorrected_class",
    "uncorrected_confidence", "noise_sigma_grey", "detail_level_grey", "quality_flags",
)
ENSEMBLE_COLUMNS: tuple[str, ...] = tuple(f"ensemble_{c}" for c in CLASS_NAMES)
SPACING_COLUMNS: tuple[str, ...] = ("spacing_source", "row_spacing_cm", "col_spacing_cm")
MORPHOLOGY_COLUMNS: tuple[str, ...] = tuple(k for k in FEATURE_UNITS if k not in SPACING_COLUMNS)
TAIL_COLUMNS: tuple[str, ...] = ("model_versions", "extra_json")
"""``extra_json`` holds any record key the header does not know (normally empty)."""
FAILURE_COLUMNS: tuple[str, ...] = ("item", "n", "error", "error_type", "file_sha256")
TEXT_COLUMNS: tuple[str, ...] = (
    "item", "file_sha256", "image_sha256", "predicted_class", "uncorrected_class", "method",
    "warnings", "quality_flags",
    "spacing_source", "model_versions", "extra_json",
)
BOOL_COLUMNS: tuple[str, ...] = ("models_agree", "tumor_found", "segmented",
                                 "intensity_corrected", "outline_flagged")

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_DRIVE = re.compile(r"^[A-Za-z]:")


def result_columns(model_names: Iterable[str]) -> list[str]:
    """Return the fixed results-CSV header for an ensemble with these base models.

    Order: :data:`KEY_COLUMNS`, the record head, ensemble and per-model
    probabilities, spacing, every morphology feature (cm and px), the model
    versions and ``extra_json``.
    """
    per_model = [f"{m}_{c}" for m in model_names for c in CLASS_NAMES]
    return [*KEY_COLUMNS, *RECORD_HEAD, *ENSEMBLE_COLUMNS, *per_model, *SPACING_COLUMNS,
            *MORPHOLOGY_COLUMNS, *TAIL_COLUMNS]


def count_intensity_flagged(rows: pd.DataFrame) -> int:
    """Count result rows whose ``warnings`` hold the input check's warning (0 if no column)."""
    from ensemble.intensity import WARNING_PREFIX

    if "warnings" not in rows.columns:
        return 0
    return int(rows["warnings"].fillna("").astype(str).str.contains(WARNING_PREFIX,
                                                                    regex=False).sum())


def count_quality_flagged(rows: pd.DataFrame) -> dict[str, int]:
    """Count result rows the noise and detail check flags: ``{"noisy": n, "smooth": m}``.

    Reads the ``quality_flags`` column (``"noisy"``, ``"smooth"``, both joined by ``;``,
    or empty); zeros when there is no such column.
    """
    if "quality_flags" not in rows.columns:
        return {"noisy": 0, "smooth": 0}
    flags = rows["quality_flags"].fillna("").astype(str).str.split(";")
    return {k: int(flags.map(lambda f, k=k: k in f).sum()) for k in ("noisy", "smooth")}


def flag_values(rows: pd.DataFrame, column: str) -> pd.Series:
    """``(N,)`` bool: where ``column`` is true, read from ``extra_json`` too.

    A results file begun by an older version lacks newer columns; rows appended to
    it on ``--resume`` keep such values in ``extra_json``. Empty cells are false.
    """
    out = pd.Series(False, index=rows.index)
    if column in rows.columns:
        out |= (rows[column].astype("boolean") == True).fillna(False)  # noqa: E712
    if "extra_json" in rows.columns:
        def extra(text: object) -> bool:
            if not isinstance(text, str) or not text.strip():
                return False
            try:
                return json.loads(text).get(column) is True
            except (ValueError, AttributeError):
                return False

        out |= rows["extra_json"].map(extra).astype(bool)
    return out.astype(bool)


def _count_true(rows: pd.DataFrame, column: str) -> int:
    return int(flag_values(rows, column).sum())


def count_outline_flagged(rows: pd.DataFrame) -> int:
    """Count result rows whose outline the recorded confidence flag marks (0 if no column)."""
    return _count_true(rows, "outline_flagged")


def count_review_flagged(rows: pd.DataFrame) -> int:
    """Count result rows whose classification is flagged for review (0 if no column)."""
    return _count_true(rows, "review_flagged")


def to_check(rows: pd.DataFrame) -> pd.Series:
    """``(N,)`` bool: the rows whose answer is flagged for review or whose outline is uncertain.

    Values kept in ``extra_json`` (rows resumed into an older results file) count;
    missing columns and empty cells count as not flagged.
    """
    return flag_values(rows, "review_flagged") | flag_values(rows, "outline_flagged")


def anonymise_name(name: str, key: str = "") -> str:
    """Replace an item name by ``anon-`` and 16 hex digits of a (keyed) SHA-256.

    Deterministic, so resuming still matches items. Without ``key`` anyone who
    can guess a name can confirm it; pass a secret ``key`` to prevent that.
    """
    digest = hashlib.sha256(f"{key}\0{name}".encode("utf-8", "backslashreplace")).hexdigest()
    return f"anon-{digest[:16]}"


# --------------------------------------------------------------------------- inputs
def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _sniff_dicom(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(1024)
    except OSError:
        return False
    return (len(head) >= 132 and head[128:132] == b"DICM") or _looks_like_raw_dicom(head)


def _wanted_file(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES or suffix == ZIP_SUFFIX:
        return True
    return suffix == "" and _sniff_dicom(path)


def collect_inputs(paths: list[Path], ignored: list[Path] | None = None) -> list[Path]:
    """Expand files and folders into the sorted, de-duplicated list of inputs.

    Files given explicitly are always kept. Folders are searched recursively
    (symlinked folders are not followed; hidden files and ``__MACOSX`` are
    skipped) for :data:`IMAGE_SUFFIXES`, ``.zip`` archives and extension-less
    DICOM files (recognised by content). Duplicates (same real path) are
    dropped; the result is sorted by path.

    Args:
        paths: Files and folders.
        ignored: When given, receives the (not hidden) files found in the folders
            that are not inputs, sorted, so that a caller can say what was left out.

    Raises:
        InputImageError: If a path does not exist.
    """
    found: dict[str, Path] = {}
    left_out: list[Path] = []

    def add(path: Path) -> None:
        found.setdefault(os.path.realpath(path), path)

    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
                for name in files:
                    candidate = Path(root) / name
                    if _is_hidden(name) or not candidate.is_file():
                        continue
                    if _wanted_file(candidate):
                        add(candidate)
                    elif ignored is not None:
                        left_out.append(candidate)
        elif path.is_file():
            add(path)
        else:
            raise InputImageError(f"Input not found: {path}")
    if ignored is not None:
        ignored.extend(sorted(left_out, key=str))
    return sorted(found.values(), key=str)


def _member_name_ok(name: str) -> bool:
    clean = name.replace("\\", "/")
    if "\0" in clean or clean.startswith("/") or _DRIVE.match(clean):
        return False
    return ".." not in clean.split("/")


def read_zip(
    data: bytes,
    *,
    max_members: int = MAX_ZIP_MEMBERS,
    max_total_bytes: int = MAX_ZIP_TOTAL_BYTES,
    max_member_bytes: int | None = None,
) -> list[tuple[str, bytes]]:
    """Read a ZIP archive's files into memory, defensively.

    Directories, hidden files and ``__MACOSX`` are skipped. A problem with one
    member (its data fail the CRC or do not decompress, or it declares more
    than ``max_member_bytes``, default ``InputLimits().max_bytes``) is returned
    in place of its bytes, so the other members are still analysed. The whole
    archive is refused when it is unsafe: more than ``max_members`` entries, a
    member name that is absolute or contains ``..``, encryption, members
    declaring more than ``max_total_bytes`` together, or a member that
    decompresses to more than it declared or than the archive budget (zip
    bombs). Error messages never contain member names (they may identify a
    patient). Nothing is written to disk.

    Returns:
        ``(member name, bytes or the member's InputImageError)`` pairs in archive order.

    Raises:
        InputImageError: For an unreadable or unsafe archive; the message says why.
    """
    member_limit = InputLimits().max_bytes if max_member_bytes is None else max_member_bytes
    with _open_zip(data) as zf:
        out: list[tuple[str, bytes | InputImageError]] = []
        total = 0
        for info in _checked_members(zf, max_members, max_total_bytes, member_limit):
            body = _member_body(zf, info, member_limit, max_total_bytes - total)
            if not isinstance(body, InputImageError):
                total += len(body)
            out.append((info.filename, body))
    return out


def _open_zip(source: bytes | Path) -> zipfile.ZipFile:
    """Open an archive held in memory or on disk; an unreadable one is an InputImageError."""
    try:
        return zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except zipfile.BadZipFile as exc:
        raise InputImageError(f"Not a valid ZIP archive ({exc})") from None
    except (OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise InputImageError(f"The ZIP archive is corrupt ({type(exc).__name__}: {exc})") from None


def _checked_members(zf: zipfile.ZipFile, max_members: int, max_total_bytes: int,
                     member_limit: int) -> list[zipfile.ZipInfo]:
    """List the archive's files to read, after the archive-wide checks of :func:`read_zip`."""
    infos = zf.infolist()
    if len(infos) > max_members:
        raise InputImageError(
            f"The ZIP archive has {len(infos):,} entries; the limit is {max_members:,}"
        )
    chosen: list[zipfile.ZipInfo] = []
    declared = 0
    for k, info in enumerate(infos, start=1):
        if not _member_name_ok(info.filename):
            raise InputImageError(
                f"The ZIP archive contains an unsafe member name (entry {k} of {len(infos)}: "
                "absolute path or '..'); refused"
            )
        parts = info.filename.replace("\\", "/").split("/")
        if info.is_dir() or any(_is_hidden(p) for p in parts if p):
            continue
        if info.flag_bits & 0x1:
            raise InputImageError("The ZIP archive is encrypted; refused")
        if info.file_size <= member_limit:
            declared += info.file_size
        if declared > max_total_bytes:
            raise InputImageError(
                f"The ZIP archive declares more than {max_total_bytes / 1e6:.0f} MB "
                "uncompressed; refused as a possible zip bomb"
            )
        chosen.append(info)
    return chosen


def _member_body(zf: zipfile.ZipFile, info: zipfile.ZipInfo, member_limit: int,
                 budget: int) -> bytes | InputImageError:
    """One member's bytes, or the InputImageError that says why it cannot be read.

    Raises:
        InputImageError: When the member decompresses to more than it declared or
            than ``budget`` (a possible zip bomb).
    """
    if info.file_size > member_limit:
        return InputImageError(
            f"This ZIP member declares {info.file_size / 1e6:.1f} MB uncompressed; "
            f"the limit is {member_limit / 1e6:.0f} MB per file"
        )
    try:
        return _read_member(zf, info, min(member_limit, budget))
    except InputImageError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError,
            NotImplementedError) as exc:
        # zipfile's messages quote member names: only the type is kept.
        return InputImageError(
            f"This ZIP member is corrupt ({type(exc).__name__}: its data fail the "
            "checksum or do not decompress); the archive's other files were read"
        )


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int) -> bytes:
    """Decompress one member in chunks, refusing more than declared or than ``budget``."""
    allowed = min(info.file_size, budget)
    chunks: list[bytes] = []
    size = 0
    with zf.open(info) as fh:
        while chunk := fh.read(min(1 << 20, allowed + 1 - size)):
            size += len(chunk)
            if size > allowed:
                raise InputImageError(
                    "A ZIP member decompresses to more than its declared size or the archive "
                    "limit; the archive is refused as a possible zip bomb"
                )
            chunks.append(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------- CSV files
def _clean(text: str) -> str:
    """One-line, UTF-8 encodable text that a spreadsheet shows as text.

    CSV records are exactly one line each; see :func:`neurostack.formatting.spreadsheet_safe`.
    """
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return spreadsheet_safe(text.replace("\r", " ").replace("\n", " "))


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, float):
        return "" if not math.isfinite(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    return _clean(str(value))


def _csv_line(values: Iterable[str]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(list(values))
    return buf.getvalue().encode("utf-8")


def _write_line(fh: IO[bytes], line: bytes) -> None:
    """Append one CSV line and force it to disk."""
    fh.write(line)
    fh.flush()
    os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path.parent if str(path.parent) else ".", os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _read_table(fh: IO[bytes], path: Path, required: Iterable[str]) -> tuple[
        list[str] | None, list[dict[str, str]], bool]:
    """Read a CSV written by this module, cutting off a truncated last line.

    Returns:
        ``(header or None when empty, rows, repaired)``.

    Raises:
        ValueError: If the file is not such a CSV or is damaged before its last line.
    """
    fh.seek(0)
    data = fh.read()
    repaired = False
    keep = len(data)
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        repaired = True
    lines = data[:keep].split(b"\n")[:-1] if keep else []
    parsed: list[list[str]] = []
    for i, raw in enumerate(lines):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        row = next(csv.reader([text]), []) if text is not None and "\0" not in text else None
        if row is None or (parsed and len(row) != len(parsed[0])):
            if i != len(lines) - 1:
                raise ValueError(f"{path} line {i + 1} is malformed; fix or remove it to resume")
            keep -= len(raw) + 1  # a damaged last line is dropped like a truncated one
            repaired = True
            break
        parsed.append(row)
    if repaired:
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    if not parsed:
        return None, [], repaired
    header = parsed[0]
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(f"{path} is not a NeuroStack batch file (missing columns {missing})")
    return header, [dict(zip(header, row, strict=True)) for row in parsed[1:]], repaired


def read_results(path: str | Path) -> pd.DataFrame:
    """Load a results CSV with text columns as ``str`` and flags as ``bool``."""
    present = pd.read_csv(path, nrows=0).columns
    dtypes = {c: str for c in TEXT_COLUMNS if c in present}
    df = pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values=[""])
    for col in dtypes:
        df[col] = df[col].fillna("")
    for col in BOOL_COLUMNS:
        if col in df.columns:
            df[col] = df[col].map({"True": True, "False": False, True: True, False: False})
            df[col] = df[col].astype("boolean")
    return df


# --------------------------------------------------------------------------- batch
@dataclass
class BatchResult:
    """Outcome of :func:`run_batch`.

    Attributes:
        rows: One row per analysed image of this batch (including rows done by an
            earlier run when resuming), columns as in :func:`result_columns`.
        failures: One row per failed item: ``item, n, error, error_type, file_sha256``.
        analysed: Images analysed by this call.
        failed: Items that failed in this call.
        skipped: Items already done (or failed on bad input) in an earlier run,
            or repeated in this batch.
        repaired: Whether a truncated last CSV line was removed on resume.
        elapsed_s: Wall time of the call.
    """

    rows: pd.DataFrame
    failures: pd.DataFrame
    analysed: int = 0
    failed: int = 0
    skipped: int = 0
    repaired: bool = False
    elapsed_s: float = 0.0
    out_csv: Path | None = None
    failures_csv: Path | None = None

    def summary(self) -> str:
        """One human-readable paragraph."""
        text = (f"{len(self.rows)} image(s) in the results, {len(self.failures)} failure(s); "
                f"this run analysed {self.analysed}, failed {self.failed}, skipped {self.skipped} "
                f"already done, in {self.elapsed_s:.1f} s.")
        flagged = count_intensity_flagged(self.rows)
        if flagged:
            text += (f" {flagged} slice(s) have grey levels unlike the training slices "
                     "(input check): see `warnings`; those marked `intensity_corrected` were "
                     "analysed as copies mapped to the training curve (`uncorrected_class`: "
                     "the ensemble on the slice as given).")
        review = count_review_flagged(self.rows)
        if review:
            text += (f" {review} answer(s) flagged for review (`review_flagged`: the ensemble's "
                     "top probability below `review_threshold`).")
        outlines = count_outline_flagged(self.rows)
        if outlines:
            text += f" {outlines} outline(s) flagged as uncertain (`outline_flagged`)."
        quality = count_quality_flagged(self.rows)
        if quality["noisy"] or quality["smooth"]:
            text += (f" The noise and detail check flagged {quality['noisy']} slice(s) as "
                     f"noisier and {quality['smooth']} as less detailed than the training "
                     "slices: see `quality_flags` and `warnings`.")
        if self.repaired:
            text += " A truncated last line left by an interrupted run was removed."
        if self.out_csv is not None:
            text += f"\nResults: {self.out_csv}"
        if self.failures_csv is not None and len(self.failures):
            text += f"\nFailures: {self.failures_csv}"
        return text


@dataclass
class _Unit:
    name: str  # original name (suffix used for decoding)
    out_name: str  # name written to the CSV
    source: Path | bytes | _ZipMember | None = None
    error: InputImageError | None = None
    sha: str = ""


class _Archive:
    """A ZIP archive whose members are decompressed one at a time, when analysed.

    The archive stays where it is (on disk, or the caller's bytes); only its
    directory is read up front, so a batch of large archives never holds more than
    one decompressed member in memory.
    """

    def __init__(self, source: bytes | Path) -> None:
        self.source = source
        self._zf: zipfile.ZipFile | None = None

    def zip(self) -> zipfile.ZipFile:
        if self._zf is None:
            self._zf = _open_zip(self.source)
        return self._zf

    def read(self, name: str, max_bytes: int) -> bytes:
        """One member's bytes; raise its :class:`InputImageError` when it cannot be read."""
        zf = self.zip()
        body = _member_body(zf, zf.getinfo(name), max_bytes, max_bytes)
        if isinstance(body, InputImageError):
            raise body
        return body

    def head(self, name: str, n: int = 1024) -> bytes | InputImageError:
        """Read the first ``n`` bytes of a member (to recognise extension-less DICOM files)."""
        try:
            with self.zip().open(name) as fh:
                return fh.read(n)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError,
                NotImplementedError):
            return InputImageError("This ZIP member is corrupt")

    def close(self) -> None:
        if self._zf is not None:
            self._zf.close()
            self._zf = None


@dataclass
class _ZipMember:
    archive: _Archive
    name: str


@dataclass
class _State:
    header: list[str] | None = None
    done: set[tuple[str, str]] = field(default_factory=set)
    carried: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    repaired: bool = False


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_source(source: Path | bytes | _ZipMember, max_bytes: int) -> bytes:
    if isinstance(source, _ZipMember):
        return source.archive.read(source.name, max_bytes)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        try:
            size = Path(source).stat().st_size
            if size > max_bytes:
                raise InputImageError(f"File is {size / 1e6:.1f} MB; the limit is "
                                      f"{max_bytes / 1e6:.0f} MB")
            with Path(source).open("rb") as fh:
                data = fh.read(min(size, max_bytes) + 1)  # not a max_bytes buffer per file
        except FileNotFoundError:
            raise InputImageError("File not found") from None
        except (OSError, ValueError) as exc:
            if isinstance(exc, InputImageError):
                raise
            raise InputImageError(f"Could not read the file ({type(exc).__name__})") from None
    if len(data) > max_bytes:
        raise InputImageError(f"File is larger than the limit of {max_bytes / 1e6:.0f} MB")
    return data


def _is_zip(name: str, source: Path | bytes) -> bool:
    if name.lower().endswith(ZIP_SUFFIX):
        return True
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source[:4]) in _ZIP_MAGIC
    return False


def _member_wanted(name: str, data: bytes | InputImageError | Callable[[], bytes | InputImageError]
                   ) -> bool:
    suffix = Path(name).suffix.lower()
    if suffix in IMAGE_SUFFIXES or suffix == ZIP_SUFFIX:
        return True
    if suffix:
        return False
    if callable(data):
        data = data()
    if isinstance(data, InputImageError):  # unreadable: an extension-less file is reported
        return suffix == ""
    head = data[:1024]
    return suffix == "" and ((len(head) >= 132 and head[128:132] == b"DICM")
                             or _looks_like_raw_dicom(head))


def _expand(items: Iterable[tuple[str, Path | bytes]], rename: Callable[[str], str] | None,
            max_zip_bytes: int, archives: list[_Archive] | None = None) -> list[_Unit]:
    """Turn items into units, listing ZIP archives' members (read later, one at a time).

    Args:
        items: ``(name, path or bytes)`` pairs.
        rename: Maps names before they are written.
        max_zip_bytes: Limit on an archive's file size and on its members' declared total.
        archives: When given, receives every opened :class:`_Archive`, to be closed
            once the batch is done.
    """
    def out_name(name: str) -> str:
        return _clean(rename(name)) if rename is not None else _clean(name)

    units: list[_Unit] = []
    for name, source in items:
        name = str(name)
        if not _is_zip(name, source):
            units.append(_Unit(name, out_name(name), source))
            continue
        sha = ""
        try:
            sha = _archive_sha(source, max_zip_bytes)
            archive = _Archive(source if isinstance(source, (Path, bytes)) else bytes(source))
            if archives is not None:
                archives.append(archive)
            infos = _checked_members(archive.zip(), MAX_ZIP_MEMBERS, max_zip_bytes,
                                     InputLimits().max_bytes)
            members = [i.filename for i in infos
                       if _member_wanted(i.filename, partial(archive.head, i.filename))]
            if not members:
                raise InputImageError("The ZIP archive contains no image files")
        except InputImageError as exc:
            units.append(_Unit(name, out_name(name), error=exc, sha=sha))
            continue
        for member in sorted(members):
            full = f"{name}/{member}"
            if Path(member).suffix.lower() == ZIP_SUFFIX:
                err = InputImageError("Nested ZIP archives are not expanded")
                units.append(_Unit(full, out_name(full), error=err, sha=sha))
            else:
                # the archive's hash until the member is read (an unreadable member keeps it)
                units.append(_Unit(full, out_name(full), _ZipMember(archive, member), sha=sha))
    return units


def _archive_sha(source: Path | bytes, max_bytes: int) -> str:
    """SHA-256 of an archive, read from disk in chunks; refuse one above ``max_bytes``."""
    if not isinstance(source, Path):
        if len(source) > max_bytes:
            raise InputImageError(f"File is larger than the limit of {max_bytes / 1e6:.0f} MB")
        return _sha(bytes(source))
    try:
        size = source.stat().st_size
        if size > max_bytes:
            raise InputImageError(f"File is {size / 1e6:.1f} MB; the limit is "
                                  f"{max_bytes / 1e6:.0f} MB")
        digest = hashlib.sha256()
        with source.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()
    except FileNotFoundError:
        raise InputImageError("File not found") from None
    except OSError as exc:
        raise InputImageError(f"Could not read the file ({type(exc).__name__})") from None


def _check_options(threshold: float | None, spacing_cm: tuple[float, float] | None,
                   spacing_source: str | None) -> tuple[tuple[float, float] | None, str | None]:
    if threshold is not None and not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must be in (0, 1); received {threshold}")
    if spacing_cm is None:
        return None, None
    try:
        r, c = (float(v) for v in spacing_cm)
    except (TypeError, ValueError):
        raise ValueError(f"spacing_cm must be a (row, col) pair; received {spacing_cm!r}") from None
    if not (math.isfinite(r) and math.isfinite(c) and r > 0 and c > 0):
        raise ValueError(f"spacing_cm must be two positive finite numbers; received {spacing_cm}")
    source = spacing_source or "user"
    if source not in ("user", "assumed"):
        raise ValueError(f"spacing_source must be 'user' or 'assumed'; received {spacing_source!r}")
    return (r, c), source


class _Appender:
    """An append-only CSV file whose every line is fsynced when written."""

    def __init__(self, path: Path, *, lock: bool) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        self.fh: IO[bytes] = path.open("a+b")
        if lock and fcntl is not None:
            try:
                fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self.fh.close()
                raise RuntimeError(f"{path} is being written by another batch process") from None
        if not existed:
            _fsync_dir(path)
        self.header: list[str] | None = None

    def reset(self) -> None:
        self.fh.truncate(0)
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def write(self, values: dict[str, Any], columns: list[str]) -> None:
        line = _csv_line(_fmt(values.get(c)) for c in columns)
        if self.header is None:
            self.header = list(columns)
            line = _csv_line(columns) + line  # header and first row in one write
        _write_line(self.fh, line)

    def close(self) -> None:
        self.fh.close()


def _rewrite_failures(path: Path, rows: list[dict[str, str]]) -> None:
    """Atomically replace the failures file by ``rows`` (header only when empty)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        data = _csv_line(FAILURE_COLUMNS) if rows else b""
        data += b"".join(_csv_line(r.get(c, "") for c in FAILURE_COLUMNS) for r in rows)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path)


def _record(result: CaseResult) -> dict[str, Any]:
    rec = result.to_record()
    if result.spacing_cm is not None:
        rec.setdefault("row_spacing_cm", result.spacing_cm[0])
        rec.setdefault("col_spacing_cm", result.spacing_cm[1])
    return rec


def _row(unit: _Unit, n: int, rec: dict[str, Any], columns: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"item": unit.out_name, "n": n, "file_sha256": unit.sha}
    known = set(columns)
    extra = {k: v for k, v in rec.items() if k not in known and k not in row}
    row.update({k: v for k, v in rec.items() if k in known and k not in KEY_COLUMNS})
    if extra:
        row["extra_json"] = json.dumps(extra, sort_keys=True, default=str)
    return row


def _error_text(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, InputImageError) else f"{type(exc).__name__}: {exc}"
    text = _clean(text.strip() or type(exc).__name__)
    return text if len(text) <= 500 else text[:497] + "..."


def run_batch(
    pipeline: Any,
    items: Iterable[tuple[str, Path | bytes]],
    *,
    out_csv: Path | None = None,
    failures_csv: Path | None = None,
    resume: bool = False,
    threshold: float | None = None,
    spacing_cm: tuple[float, float] | None = None,
    spacing_source: str | None = None,
    force_segmentation: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    rename: Callable[[str], str] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    postprocess: str | None = None,
    override_file_spacing: bool = False,
) -> BatchResult:
    """Analyse many slices; never stop on a bad one.

    Each item is ``(name, path or bytes)``. ZIP archives (``.zip`` name or ZIP
    signature) are expanded into items named ``<archive name>/<member>``, with the
    safety checks of :func:`read_zip`; each member is decompressed only when its
    turn comes, so memory holds one member at a time whatever the archives' size.
    One unreadable member is a failure of its own (its ``file_sha256`` is the
    archive's) and the others are analysed. Every
    item is read and hashed (SHA-256 of the file bytes) and decoded with
    :func:`~neurostack.imaging.load_image`; every
    ``chunk_size`` decoded slices go to ``pipeline.analyse_many`` together (one
    call per network for the chunk), or to ``pipeline.analyse`` one by one when
    the pipeline has no ``analyse_many``. Any exception in one item becomes a
    failure row; the others are analysed.

    Args:
        pipeline: An object with ``analyse(LoadedImage, **options) -> CaseResult``,
            optionally ``analyse_many(list[LoadedImage], **options)`` returning a
            result or an exception per image, and ``limits`` (:class:`InputLimits`).
        items: ``(name, source)`` pairs; names are written as given (one line).
        out_csv: Results CSV; each row is appended and fsynced as soon as it is
            done. Without ``resume`` an existing file is replaced.
        failures_csv: Failures CSV, written the same way.
        resume: Continue ``out_csv``/``failures_csv``: a truncated last line is
            removed, items whose ``(item, file_sha256)`` is already in the results
            (or failed on bad input, :class:`InputImageError`) are skipped; other
            failures are retried.
        threshold: Tumour-mask probability threshold, in (0, 1); ``None`` leaves it
            to the pipeline (the segmenter's operating point).
        spacing_cm: ``(row, col)`` pixel spacing in cm for the images without one of
            their own (DICOM's Pixel Spacing is kept unless ``override_file_spacing``);
            ``None``: DICOM spacing where there is one, pixel units elsewhere.
        spacing_source: ``"user"`` (default with a spacing) or ``"assumed"``.
        force_segmentation: Segment even "notumor" predictions.
        progress: Called as ``progress(done, total, item_name)`` for each item, in
            order, once its chunk is done.
        rename: Maps every item name before it is written, e.g. :func:`anonymise_name`.
        chunk_size: Slices analysed per batched call (1 = one at a time). Rows are
            written when their chunk is done, so an interrupted run redoes at most
            one chunk on ``resume``.
        override_file_spacing: Apply ``spacing_cm`` to DICOM files too, replacing
            their own Pixel Spacing (an entered or assumed value never replaces a
            measured one otherwise).
        postprocess: Mask post-processing (``"none"`` or ``"largest_component"``);
            ``None`` keeps the segmenter's own operating point. A removal is noted
            in the row's ``warnings``.

    Returns:
        The :class:`BatchResult`.

    Raises:
        ValueError: For invalid options or a results file damaged before its last line.
        RuntimeError: If another process is writing ``out_csv``.
        OSError: If a CSV cannot be written (the batch stops; rows written so far are safe).
    """
    t_start = time.perf_counter()
    spacing, s_source = _check_options(threshold, spacing_cm, spacing_source)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1; received {chunk_size!r}")
    options = {"spacing_cm": spacing, "spacing_source": s_source,
               "force_segmentation": force_segmentation,
               _OVERRIDE: bool(override_file_spacing)}
    if threshold is not None:
        options["threshold"] = float(threshold)
    if postprocess is not None:
        from segmentation.postprocess import check_postprocess

        options["postprocess"] = check_postprocess(postprocess)
    limits = getattr(pipeline, "limits", None) or InputLimits()
    archives: list[_Archive] = []  # closed when the batch is done
    state = _State()
    out = fails = None
    try:
        units = _expand(items, rename, MAX_ZIP_TOTAL_BYTES, archives)
        total = len(units)
        out = _Appender(Path(out_csv), lock=True) if out_csv is not None else None
        if out is not None:
            if resume:
                state.header, rows, state.repaired = _read_table(out.fh, out.path, KEY_COLUMNS)
                out.header = state.header
                state.done = {(r["item"], r["file_sha256"]) for r in rows}
                _check_same_method(rows, pipeline, out.path)
            else:
                out.reset()
        if failures_csv is not None:
            failures_path = Path(failures_csv)
            failures_path.parent.mkdir(parents=True, exist_ok=True)
            kept: list[dict[str, str]] = []
            if resume and failures_path.exists():
                with failures_path.open("r+b") as fh:
                    _, old, fixed = _read_table(fh, failures_path, FAILURE_COLUMNS)
                state.repaired |= fixed
                kept = [r for r in old if r["error_type"] == "InputImageError" and r["file_sha256"]]
            _rewrite_failures(failures_path, kept)
            fails = _Appender(failures_path, lock=False)
            fails.header = list(FAILURE_COLUMNS) if kept else None
            state.carried = {(r["item"], r["file_sha256"]): r for r in kept}
        return _run(pipeline, units, total, state, out, fails, limits, options, chunk_size,
                    progress, t_start)
    finally:
        for appender in (out, fails):
            if appender is not None:
                appender.close()
        for archive in archives:
            archive.close()


def _check_same_method(rows: list[dict[str, str]], pipeline: Any, path: Path) -> None:
    """Refuse to resume a CSV whose rows were classified another way than ``pipeline`` does.

    Raises:
        ValueError: Naming the earlier and the current method (for example another
            test-time augmentation), before anything is appended.
    """
    current = getattr(getattr(pipeline, "ensemble", None), "method", None)
    earlier = sorted({r.get("method", "") for r in rows} - {"", current})
    if current is not None and earlier:
        raise ValueError(
            f"{path} was started with classification method {earlier[0]!r}; this run uses "
            f"{current!r}. Resume with the same settings (e.g. --tta) or use --overwrite"
        )


_OVERRIDE = "_override_file_spacing"
"""Key of the batch option that lets ``spacing_cm`` replace a file's own spacing."""


def _analyse_chunk(pipeline: Any, images: list[LoadedImage], options: dict[str, Any]
                   ) -> list[Any]:
    """``pipeline.analyse_many`` when it exists, else ``analyse`` per image; errors as values.

    Unless the options say to override it, an image with its own pixel spacing (DICOM)
    is analysed with that spacing, not the batch's ``spacing_cm``.
    """
    options = dict(options)
    override = options.pop(_OVERRIDE, False)
    if options.get("spacing_cm") is not None and not override:
        own = [i for i, img in enumerate(images) if img.spacing_cm is not None]
        if own:
            keep = options | {"spacing_cm": None, "spacing_source": None}
            rest = [i for i in range(len(images)) if i not in set(own)]
            out: list[Any] = [None] * len(images)
            for group, opts in ((own, keep), (rest, options)):
                if group:
                    for i, result in zip(group, _analyse_chunk(
                            pipeline, [images[i] for i in group], opts), strict=True):
                        out[i] = result
            return out
    if hasattr(pipeline, "analyse_many"):
        return list(pipeline.analyse_many(images, **options))
    out = []
    for img in images:
        try:
            out.append(pipeline.analyse(img, **options))
        except Exception as exc:  # noqa: BLE001 - one bad item never stops the batch
            out.append(exc)
    return out


def _run(pipeline: Any, units: list[_Unit], total: int, state: _State, out: _Appender | None,
         fails: _Appender | None, limits: InputLimits, options: dict[str, Any],
         chunk_size: int, progress: Callable[[int, int, str], None] | None,
         t_start: float) -> BatchResult:
    columns = state.header
    records: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    batch_keys: set[tuple[str, str]] = set()
    seen: set[tuple[str, str]] = set()
    counts = {"analysed": 0, "failed": 0, "skipped": 0}
    # Units read since the last flush, in order; decoded ones wait for one batched analysis.
    chunk: list[tuple[int, _Unit, LoadedImage | None]] = []

    def fail(unit: _Unit, n: int, exc: BaseException) -> None:
        row = {"item": unit.out_name, "n": n, "error": _error_text(exc),
               "error_type": type(exc).__name__, "file_sha256": unit.sha}
        failures.append(row)
        counts["failed"] += 1
        if fails is not None:
            fails.write(row, list(FAILURE_COLUMNS))

    def flush() -> None:
        nonlocal columns
        waiting = [(n, unit, img) for n, unit, img in chunk if img is not None]
        results = _analyse_chunk(pipeline, [img for _, _, img in waiting], options)
        for (n, unit, _), result in zip(waiting, results, strict=True):
            if isinstance(result, BaseException):
                fail(unit, n, result)
                continue
            try:
                rec = _record(result)
                if columns is None:
                    columns = result_columns(result.per_model)
                row = _row(unit, n, rec, columns)
            except Exception as exc:  # noqa: BLE001
                fail(unit, n, exc)
                continue
            if out is not None:
                out.write(row, columns)
            else:
                records.append(row)  # with a CSV the rows are read back from it at the end
            counts["analysed"] += 1
        if progress is not None:
            for n, unit, _ in chunk:
                progress(n, total, unit.out_name)
        chunk.clear()

    for n, unit in enumerate(units, start=1):
        img = None
        try:
            if unit.error is None:
                try:
                    data = _read_source(unit.source, limits.max_bytes)
                    unit.sha = _sha(data)
                except InputImageError as exc:  # e.g. a ZIP member, read only now
                    unit.error = exc
            key = (unit.out_name, unit.sha)
            batch_keys.add(key)
            if key in state.done or key in seen:
                counts["skipped"] += 1
            elif key in state.carried:
                failures.append({**state.carried[key], "n": n})
                counts["skipped"] += 1
            elif unit.error is not None:
                seen.add(key)
                fail(unit, n, unit.error)
            else:
                seen.add(key)
                buf = io.BytesIO(data)
                buf.name = unit.name  # suffix-based DICOM detection
                img = load_image(buf, limits=limits)
        except Exception as exc:  # noqa: BLE001 - unreadable or undecodable: report, go on
            fail(unit, n, exc)
        chunk.append((n, unit, img))
        if sum(1 for _, _, i in chunk if i is not None) >= chunk_size:
            flush()
    flush()

    if out is not None and out.header is not None:
        out.fh.flush()
        rows_df = read_results(out.path)
        keys = list(zip(rows_df["item"], rows_df["file_sha256"], strict=True))
        rows_df = rows_df[[k in batch_keys for k in keys]].reset_index(drop=True)
    else:
        cols = columns or result_columns([])
        rows_df = pd.DataFrame([{c: r.get(c) for c in cols} for r in records], columns=cols)
    fail_df = pd.DataFrame(failures, columns=list(FAILURE_COLUMNS))
    if len(fail_df):
        fail_df["n"] = fail_df["n"].astype(int)
    return BatchResult(
        rows=rows_df, failures=fail_df, analysed=counts["analysed"], failed=counts["failed"],
        skipped=counts["skipped"], repaired=state.repaired,
        elapsed_s=time.perf_counter() - t_start,
        out_csv=out.path if out is not None else None,
        failures_csv=fails.path if fails is not None else None,
    )


# --------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m neurostack.batch",
        description="Analyse many MRI slices (files, folders, ZIP archives) into a CSV. "
                    "Item names are file paths as given; use --anonymise-names when file "
                    "names may identify a patient. DICOM identifiers are never written.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or .zip")
    p.add_argument("--out", required=True, type=Path, help="results CSV")
    p.add_argument("--failures", type=Path, default=None,
                   help="failures CSV (default: <out stem>_failures.csv next to --out)")
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="model artifacts")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--threshold", type=float, default=None,
                   help="mask threshold in (0, 1) (default: the segmentation model's operating "
                        "point from its config.json, else 0.5)")
    p.add_argument("--postprocess", choices=["none", "largest_component"], default=None,
                   help="mask post-processing (default: the segmentation model's operating "
                        "point)")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK,
                   help=f"slices per batched network call (default {DEFAULT_CHUNK})")
    p.add_argument("--spacing-mm", type=float, nargs=2, metavar=("ROW", "COL"), default=None,
                   help="pixel spacing in mm for the images without their own (DICOM files "
                        "keep their Pixel Spacing unless --override-dicom-spacing)")
    p.add_argument("--override-dicom-spacing", action="store_true",
                   help="apply --spacing-mm to DICOM files too")
    p.add_argument("--force-segmentation", action="store_true",
                   help="segment even when the ensemble predicts no tumour")
    p.add_argument("--tta", choices=["none", "hflip", "cascade"], default=None,
                   help="classifiers' test-time augmentation (default: the shipped "
                        "meta-learner's, hflip); none = single crop, about half the "
                        "classification time, with the meta-learner fitted on single crops "
                        "when the artifacts have one; cascade = single crop first and hflip "
                        "only for the slices it is unsure of (the escalated column); accuracy "
                        "of each in README")
    p.add_argument("--anonymise-names", action="store_true",
                   help="write anon-<hash> instead of file names (keyed by the environment "
                        "variable NEUROSTACK_NAME_KEY when set)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the batch CLI; returns 0 when at least one image was analysed, else 1."""
    args = _parser().parse_args(argv)
    out: Path = args.out
    failures = args.failures or out.with_name(f"{out.stem}_failures.csv")
    if out.exists() and out.stat().st_size > 0 and not (args.resume or args.overwrite):
        print(f"error: {out} exists; pass --resume to continue it or --overwrite to replace it",
              file=sys.stderr)
        return 1
    spacing = None
    if args.spacing_mm is not None:
        if not all(math.isfinite(v) and v > 0 for v in args.spacing_mm):
            print("error: --spacing-mm needs two positive numbers", file=sys.stderr)
            return 1
        spacing = (args.spacing_mm[0] / 10.0, args.spacing_mm[1] / 10.0)
    try:
        if args.chunk_size < 1:
            raise ValueError(f"--chunk-size must be >= 1; received {args.chunk_size}")
        if args.threshold is not None:
            _check_options(args.threshold, spacing, "user" if spacing else None)
        ignored: list[Path] = []
        paths = collect_inputs([Path(p) for p in args.inputs], ignored=ignored)
    except (InputImageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if ignored:  # by suffix only: file names may identify patients
        kinds = Counter(p.suffix.lower() or "no extension" for p in ignored)
        print(f"note: {len(ignored)} file(s) in the folders are not images this tool reads "
              "and were left out (" + ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items()))
              + ")", file=sys.stderr)
    if not paths:
        print("error: no image files found in the inputs", file=sys.stderr)
        return 1

    from neurostack.errors import ArtifactError
    from neurostack.pipeline import load_pipeline

    try:
        pipeline = load_pipeline(args.artifacts, tta=args.tta)
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for missing in getattr(pipeline, "missing", []):
        print(f"warning: not available: {missing}", file=sys.stderr)
    threshold = args.threshold
    if threshold is None:
        seg = getattr(pipeline, "segmenter", None)
        threshold = float(seg.default_threshold) if seg is not None else 0.5

    rename = None
    if args.anonymise_names:
        key = os.environ.get("NEUROSTACK_NAME_KEY", "")

        def rename(name: str) -> str:
            return anonymise_name(name, key)

    from tqdm import tqdm

    with tqdm(total=len(paths), unit="img", dynamic_ncols=True) as bar:

        def progress(done: int, total: int, _name: str) -> None:
            if bar.total != total:
                bar.total = total
            bar.update(done - bar.n)

        try:
            result = run_batch(
                pipeline, [(str(p), p) for p in paths], out_csv=out, failures_csv=failures,
                resume=args.resume, threshold=threshold, spacing_cm=spacing,
                spacing_source="user" if spacing else None,
                force_segmentation=args.force_segmentation, progress=progress, rename=rename,
                chunk_size=args.chunk_size, postprocess=args.postprocess,
                override_file_spacing=args.override_dicom_spacing,
            )
        except (ValueError, RuntimeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(result.summary())
    return 0 if len(result.rows) else 1


__all__ = [
    "BatchResult",
    "FAILURE_COLUMNS",
    "IMAGE_SUFFIXES",
    "anonymise_name",
    "collect_inputs",
    "main",
    "read_results",
    "read_zip",
    "result_columns",
    "run_batch",
]

if __name__ == "__main__":
    sys.exit(main())
