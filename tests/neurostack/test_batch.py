"""Batch analysis: inputs, ZIP safety, failures, crash-safe CSV, resume after SIGKILL, CLI.

No model is loaded: :class:`FakePipeline` returns real :class:`CaseResult` objects
whose morphology comes from the real :func:`morphology.measure` on a thresholded
slice. Child processes import it from this module.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import signal
import struct
import subprocess
import sys
import time
import types
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from neurostack_samples import IDENTIFIERS, make_dicom
from PIL import Image

from morphology import measure
from neurostack import CLASS_NAMES
from neurostack import batch as nb
from neurostack.batch import (
    FAILURE_COLUMNS,
    anonymise_name,
    collect_inputs,
    read_results,
    read_zip,
    result_columns,
    run_batch,
)
from neurostack.errors import InputImageError
from neurostack.imaging import InputLimits, LoadedImage, load_image
from neurostack.pipeline import CaseResult

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parents[1]
MODELS = ("m1", "m2")
HEADER = result_columns(MODELS)


# --------------------------------------------------------------------------- fake pipeline
class FakePipeline:
    """Stands in for :class:`neurostack.pipeline.Pipeline` (same ``analyse`` contract).

    Bright pixels (> 200) are the "tumour"; no bright pixel means "notumor".
    A slice whose pixel (0, 0) is 255 makes ``analyse`` raise ``RuntimeError``.
    """

    def __init__(self, *, delay: float = 0.0, log: Path | None = None) -> None:
        self.limits = InputLimits()
        self.delay = delay
        self.log = log
        self.seen: list[str] = []  # gray hashes of every analysed slice, in order

    @property
    def calls(self) -> int:
        return len(self.seen)

    def analyse(self, source: Any, *, spacing_cm: tuple[float, float] | None = None,
                spacing_source: str | None = None, threshold: float = 0.5,
                force_segmentation: bool = False, frame: int | None = None) -> CaseResult:
        img = source if isinstance(source, LoadedImage) else load_image(source, frame=frame)
        gray = img.gray
        digest = hashlib.sha256(np.ascontiguousarray(gray).tobytes()).hexdigest()
        self.seen.append(digest)
        if self.log is not None:
            with self.log.open("a") as fh:
                fh.write(digest + "\n")
        if self.delay:
            time.sleep(self.delay)
        if gray[0, 0] == 255:
            raise RuntimeError("simulated model crash")
        mask = gray > 200
        k = [0, 1, 3][int(digest[:2], 16) % 3] if mask.any() else CLASS_NAMES.index("notumor")
        probs = np.full(4, 0.05)
        probs[k] = 0.85
        if spacing_cm is not None:
            spacing, src = spacing_cm, spacing_source or "user"
        elif img.spacing_cm is not None:
            spacing, src = img.spacing_cm, "dicom"
        else:
            spacing, src = None, "none"
        tumor = CLASS_NAMES[k] != "notumor"
        result = CaseResult(
            image_sha256=digest, shape=img.shape,
            per_model={m: dict(zip(CLASS_NAMES, map(float, probs), strict=True)) for m in MODELS},
            ensemble=dict(zip(CLASS_NAMES, map(float, probs), strict=True)),
            predicted_class=CLASS_NAMES[k], confidence=float(probs[k]), method="fake mean",
            models_agree=True, warnings=[], tumor_found=tumor, segmented=False,
            threshold=threshold, spacing_cm=spacing, spacing_source=src,
            models={m: {"sha256": hashlib.sha256(m.encode()).hexdigest()} for m in MODELS},
        )
        if tumor or force_segmentation:
            result.segmented = True
            result.mask = mask
            result.morphology = measure(mask, spacing_cm=spacing, image=gray,
                                        spacing_source=src if spacing else None)
        return result


def slice_png(i: int, *, crash: bool = False) -> bytes:
    """A 64x64 synthetic slice; every third one has no bright "tumour"."""
    rng = np.random.default_rng(i)
    img = rng.integers(0, 60, (64, 64), dtype=np.uint8)
    if i % 3:
        yy, xx = np.mgrid[0:64, 0:64]
        cy, cx = 18 + i % 28, 18 + (i * 7) % 28
        img[((yy - cy) / (4 + i % 6)) ** 2 + ((xx - cx) / (3 + i % 5)) ** 2 <= 1] = 230
    if crash:
        img[0, 0] = 255
    buf = io.BytesIO()
    Image.fromarray(img, "L").save(buf, "PNG")
    return buf.getvalue()


def make_slices(folder: Path, n: int, *, every: int = 10) -> tuple[list[str], dict[str, str]]:
    """Write ``n`` PNG slices, every ``every``-th one corrupt (empty, truncated or text).

    Returns:
        ``(good item names, {bad item name: expected reason fragment})``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    good: list[str] = []
    bad: dict[str, str] = {}
    for i in range(n):
        path = folder / f"slice_{i:03d}.png"
        data = slice_png(i)
        if i % every == every - 1:
            kind = (i // every) % 3
            if kind == 0:
                data, reason = b"", "empty"
            elif kind == 1:
                data, reason = data[: len(data) // 2], "truncated"
            else:
                data, reason = b"<html>502 Bad Gateway</html>\n", "text"
            bad[str(path)] = reason
        else:
            good.append(str(path))
        path.write_bytes(data)
    return good, bad


def items_of(folder: Path) -> list[tuple[str, Path]]:
    return [(str(p), p) for p in collect_inputs([folder])]


def csv_lines(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def gray_sha(path: Path) -> str:
    return hashlib.sha256(np.ascontiguousarray(load_image(path).gray).tobytes()).hexdigest()


# --------------------------------------------------------------------------- inputs
def test_collect_inputs_recurses_filters_sorts_and_dedupes(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "b" / "deep").mkdir(parents=True)
    (root / "__MACOSX").mkdir()
    (root / ".hidden_dir").mkdir()
    png = slice_png(1)
    for rel in ("b/deep/z.png", "a.JPG", "b/c.tiff", "b/d.bmp", "e.jpeg", "f.tif", "g.dcm",
                "__MACOSX/x.png", ".hidden_dir/y.png", ".hidden.png", "notes.txt", "README",
                "h.gif", "i.webp", "j.pgm"):
        (root / rel).write_bytes(png)
    (root / "scan0001").write_bytes(make_dicom(np.zeros((40, 40), np.uint8)))
    (root / "pack.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    odd = tmp_path / "explicit.weird"
    odd.write_bytes(b"x")

    ignored: list[Path] = []
    found = collect_inputs([root, root / "a.JPG", odd, root / "b" / ".." / "e.jpeg"],
                           ignored=ignored)
    names = [p.relative_to(tmp_path).as_posix() for p in found]
    # every format the image loader reads is collected; what is left out is listed
    assert [p.name for p in ignored] == ["README", "notes.txt"]
    assert names == sorted(names, key=lambda s: str(tmp_path / s))
    assert set(names) == {
        "in/a.JPG", "in/b/c.tiff", "in/b/d.bmp", "in/b/deep/z.png", "in/e.jpeg", "in/f.tif",
        "in/g.dcm", "in/scan0001", "in/pack.zip", "explicit.weird",
        "in/h.gif", "in/i.webp", "in/j.pgm",
    }
    with pytest.raises(InputImageError, match="not found"):
        collect_inputs([tmp_path / "missing"])


# --------------------------------------------------------------------------- ZIP
def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            if name.endswith("/"):
                zf.writestr(zipfile.ZipInfo(name), b"")
            else:
                zf.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return buf.getvalue()


def _patch_sizes(data: bytes, *, central: int | None = None, local: int | None = None,
                 flags: int | None = None) -> bytes:
    """Rewrite the declared uncompressed size (and flags) of every ZIP entry."""
    out = bytearray(data)
    pos = 0
    while (pos := out.find(b"PK\x01\x02", pos)) != -1:
        if central is not None:
            out[pos + 24:pos + 28] = struct.pack("<I", central)
        if flags is not None:
            out[pos + 8:pos + 10] = struct.pack("<H", flags)
        pos += 4
    pos = 0
    while local is not None and (pos := out.find(b"PK\x03\x04", pos)) != -1:
        out[pos + 22:pos + 26] = struct.pack("<I", local)
        pos += 4
    return bytes(out)


def test_read_zip_skips_junk_and_keeps_files() -> None:
    data = _zip({"scans/": b"", "scans/a.png": b"A", "scans/b.dcm": b"B",
                 "__MACOSX/scans/._a.png": b"junk", "scans/.DS_Store": b"junk", "c": b"C"})
    assert read_zip(data) == [("scans/a.png", b"A"), ("scans/b.dcm", b"B"), ("c", b"C")]
    assert read_zip(_zip({})) == []


@pytest.mark.parametrize("name", ["../evil.png", "a/../../evil.png", "/etc/passwd",
                                  "C:/win.png", "..\\evil.png"])
def test_read_zip_rejects_path_traversal(name: str) -> None:
    data = _zip({"ok.png": b"A", name: b"B"})
    with pytest.raises(InputImageError, match="unsafe member name"):
        read_zip(data)


def test_read_zip_refuses_bombs_and_garbage() -> None:
    zeros = b"\0" * 400_000
    three = _zip({f"{i}.png": zeros for i in range(3)})
    assert len(three) < 10_000  # highly compressed
    with pytest.raises(InputImageError, match="zip bomb"):
        read_zip(three, max_total_bytes=1_000_000)  # declared 1.2 MB > 1 MB
    # A member over the per-file limit is reported on its own, without being decompressed.
    over = read_zip(three, max_member_bytes=100_000)
    assert [name for name, _ in over] == ["0.png", "1.png", "2.png"]
    assert all(isinstance(e, InputImageError) and "per file" in str(e) for _, e in over)
    # A header declaring ~4 GB is refused with the default limits, before decompressing.
    ((name, err),) = read_zip(_patch_sizes(_zip({"a.png": b"x" * 100}), central=0xF000_0000))
    assert isinstance(err, InputImageError) and "MB" in str(err)
    # Lying headers: declared 1000 bytes, actually 400 kB of zeros.
    # zipfile stops at the declared size, the CRC then fails: that member is reported.
    liar = _patch_sizes(_zip({"a.png": zeros}), central=1000, local=1000)
    ((_, lied),) = read_zip(liar)
    assert isinstance(lied, InputImageError) and "corrupt" in str(lied)
    with pytest.raises(InputImageError, match="entries"):
        read_zip(_zip({f"{i}.png": b"x" for i in range(11)}), max_members=10)
    with pytest.raises(InputImageError, match="encrypted"):
        read_zip(_patch_sizes(_zip({"a.png": b"x"}), flags=1))
    with pytest.raises(InputImageError, match="Not a valid ZIP"):
        read_zip(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(InputImageError, match="Not a valid ZIP"):
        read_zip(b"")


def _corrupt_member(archive: bytes, payload: bytes) -> bytes:
    """Flip one byte inside a stored member's data, so that its CRC-32 no longer matches."""
    pos = archive.find(payload)
    assert pos > 0 and archive.find(payload, pos + 1) == -1
    out = bytearray(archive)
    out[pos + len(payload) // 2] ^= 0xFF
    return bytes(out)


def test_one_corrupt_zip_member_loses_only_itself_and_no_name_leaks(tmp_path: Path) -> None:
    names = ["DOE_JOHN_1970/s1.png", "DOE_JOHN_1970/s2.png", "DOE_JOHN_1970/s3.png"]
    bodies = [slice_png(i) for i in (1, 2, 4)]
    archive = _corrupt_member(_zip(dict(zip(names, bodies, strict=True)), zipfile.ZIP_STORED),
                              bodies[1])
    members = read_zip(archive)
    assert [m for m, _ in members] == names
    assert members[0][1] == bodies[0] and members[2][1] == bodies[2]
    err = members[1][1]
    assert isinstance(err, InputImageError) and "corrupt" in str(err)
    assert "DOE" not in str(err) and "s2" not in str(err)

    out, fails = tmp_path / "r.csv", tmp_path / "f.csv"
    res = run_batch(FakePipeline(), [("SMITH_JANE.zip", archive)], out_csv=out,
                    failures_csv=fails, rename=anonymise_name)
    assert res.analysed == 2 and res.failed == 1
    assert list(res.failures["item"]) == [anonymise_name("SMITH_JANE.zip/" + names[1])]
    written = out.read_text() + fails.read_text()
    for identifier in ("SMITH", "JANE", "DOE", "JOHN", "1970"):
        assert identifier not in written


def test_unsafe_member_name_is_not_echoed() -> None:
    archive = _zip({"ok.png": b"A", "../DOE_JOHN/evil.png": b"B"})
    with pytest.raises(InputImageError, match="unsafe member name") as info:
        read_zip(archive)
    assert "DOE" not in str(info.value) and "entry 2 of 2" in str(info.value)


def test_run_batch_expands_zips_and_records_bad_archives(tmp_path: Path) -> None:
    good = {f"scans/s{i}.png": slice_png(i) for i in range(1, 6)}
    archive = _zip({**good, "scans/broken.png": slice_png(9)[:40], "scans/readme.txt": b"hi",
                    "__MACOSX/scans/._s1.png": b"junk", "inner.zip": _zip({"x.png": b"1"})})
    (tmp_path / "pack.zip").write_bytes(archive)
    bomb = _patch_sizes(_zip({"a.png": slice_png(1)}), central=0xF000_0000)
    traversal = _zip({"../../etc/cron.d/evil.png": slice_png(2)})
    items: list[tuple[str, Path | bytes]] = [
        ("pack.zip", tmp_path / "pack.zip"), ("bomb.zip", bomb), ("upload", traversal),
        ("empty.zip", _zip({"notes.txt": b"no images"})),
    ]
    pipe = FakePipeline()
    out, fails = tmp_path / "r.csv", tmp_path / "f.csv"
    res = run_batch(pipe, items, out_csv=out, failures_csv=fails)
    assert sorted(res.rows["item"]) == sorted(f"pack.zip/{m}" for m in good)
    reasons = dict(zip(res.failures["item"], res.failures["error"], strict=True))
    assert set(reasons) == {"pack.zip/scans/broken.png", "pack.zip/inner.zip", "bomb.zip/a.png",
                            "upload", "empty.zip"}
    assert "truncated" in reasons["pack.zip/scans/broken.png"]
    assert "Nested ZIP" in reasons["pack.zip/inner.zip"]
    assert "MB" in reasons["bomb.zip/a.png"] and "unsafe member name" in reasons["upload"]
    assert "no image files" in reasons["empty.zip"]
    assert pipe.calls == 5

    again = FakePipeline()
    res2 = run_batch(again, items, out_csv=out, failures_csv=fails, resume=True)
    assert again.calls == 0 and res2.skipped == 10 and res2.analysed == 0
    assert len(res2.rows) == 5 and len(res2.failures) == 5
    assert len(csv_lines(out)) == 1 + 5 and len(csv_lines(fails)) == 1 + 5


def test_zip_members_are_decompressed_one_at_a_time(tmp_path: Path) -> None:
    """Two archives of 24 MB of members on disk: never more than a few MB in memory."""
    import tracemalloc

    rng = np.random.default_rng(0)
    items: list[tuple[str, Path | bytes]] = []
    for a in range(2):
        members = {f"m{i:02d}.png": rng.bytes(1_000_000) for i in range(12)}  # undecodable
        (tmp_path / f"a{a}.zip").write_bytes(_zip(members, zipfile.ZIP_STORED))
        items.append((f"a{a}.zip", tmp_path / f"a{a}.zip"))
    tracemalloc.start()
    try:
        res = run_batch(FakePipeline(), items)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(res.failures) == 24 and res.failures["file_sha256"].str.len().eq(64).all()
    assert peak < 8_000_000, f"peak {peak / 1e6:.1f} MB while reading 24 MB of members"


# --------------------------------------------------------------------------- one batch
def test_batch_of_200_with_10_percent_corrupt_files(tmp_path: Path) -> None:
    good, bad = make_slices(tmp_path / "in", 200)
    assert len(good) == 180 and len(bad) == 20
    crash = tmp_path / "in" / "slice_crash.png"  # a model exception, not an input error
    crash.write_bytes(slice_png(5, crash=True))
    out, fails = tmp_path / "out" / "results.csv", tmp_path / "out" / "failures.csv"
    seen: list[tuple[int, int]] = []
    pipe = FakePipeline()
    res = run_batch(pipe, items_of(tmp_path / "in"), out_csv=out, failures_csv=fails,
                    progress=lambda d, t, _n: seen.append((d, t)))

    assert seen[-1] == (201, 201) and len(seen) == 201
    assert res.analysed == 180 and res.failed == 21 and res.skipped == 0
    assert pipe.calls == 181  # every readable slice reached the model once
    assert sorted(res.rows["item"]) == sorted(good)
    assert res.rows["n"].is_unique
    reasons = dict(zip(res.failures["item"], res.failures["error"], strict=True))
    assert set(reasons) == {*bad, str(crash)}
    for name, fragment in bad.items():
        assert fragment in reasons[name].lower(), (name, reasons[name])
    assert reasons[str(crash)] == "RuntimeError: simulated model crash"
    assert list(res.failures.columns) == list(FAILURE_COLUMNS)

    lines = csv_lines(out)
    assert lines[0] == HEADER
    assert len(lines) == 181 and all(len(row) == len(HEADER) for row in lines)
    assert len(csv_lines(fails)) == 22
    df = read_results(out)
    seg, plain = df[df["segmented"]], df[~df["segmented"]]
    assert len(seg) and len(plain)
    assert seg["area_px"].gt(0).all() and seg["circularity"].notna().all()
    assert plain["area_px"].isna().all() and plain["predicted_class"].eq("notumor").all()
    assert df["area_cm2"].isna().all()  # no spacing: pixel units only, cm columns empty
    assert df["spacing_source"].eq("none").all()
    assert df["file_sha256"].str.len().eq(64).all()


class ChunkPipeline(FakePipeline):
    """:class:`FakePipeline` with ``analyse_many``; records the size of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[int] = []

    def analyse_many(self, images: list[LoadedImage], **options: Any) -> list[Any]:
        self.chunks.append(len(images))
        out: list[Any] = []
        for img in images:
            try:
                out.append(self.analyse(img, **options))
            except Exception as exc:  # noqa: BLE001 - per-image errors are values
                out.append(exc)
        return out


def test_chunked_batch_gives_the_one_by_one_results(tmp_path: Path) -> None:
    good, bad = make_slices(tmp_path / "in", 23, every=7)  # 20 good, 3 corrupt
    (tmp_path / "in" / "slice_crash.png").write_bytes(slice_png(4, crash=True))
    items = items_of(tmp_path / "in")
    one = run_batch(FakePipeline(), items, chunk_size=1)
    pipe, seen = ChunkPipeline(), []
    many = run_batch(pipe, items, chunk_size=6, progress=lambda d, t, n: seen.append((d, n)))

    assert pipe.chunks == [6, 6, 6, 3]  # 21 decodable slices; the corrupt ones never wait
    assert seen == [(i + 1, name) for i, (name, _) in enumerate(items)]  # each once, in order
    assert many.analysed == one.analysed == 20 and many.failed == one.failed == 4
    assert many.rows.equals(one.rows)
    assert many.failures.equals(one.failures)
    assert set(many.failures["item"]) == {*bad, str(tmp_path / "in" / "slice_crash.png")}


@pytest.mark.parametrize("chunk", [0, -1, 2.5, True])
def test_chunk_size_must_be_a_positive_integer(chunk: Any) -> None:
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        run_batch(FakePipeline(), [("a.png", slice_png(1))], chunk_size=chunk)


def test_postprocess_is_validated_and_passed_to_the_pipeline_only_when_given() -> None:
    class Recording(FakePipeline):
        def __init__(self) -> None:
            super().__init__()
            self.options: list[dict[str, Any]] = []

        def analyse(self, source: Any, **options: Any) -> CaseResult:
            self.options.append(dict(options))
            options.pop("postprocess", None)
            return super().analyse(source, **options)

    pipe = Recording()
    run_batch(pipe, [("a.png", slice_png(1))], postprocess="largest_component")
    run_batch(pipe, [("b.png", slice_png(2))])
    assert [o.get("postprocess", "<absent>") for o in pipe.options] == [
        "largest_component", "<absent>"]
    with pytest.raises(ValueError, match="postprocess must be one of"):
        run_batch(pipe, [("c.png", slice_png(3))], postprocess="erode")
    assert len(pipe.options) == 2  # checked before any image was analysed


def test_stable_header_with_cm_and_px_rows_and_no_identifiers(tmp_path: Path) -> None:
    img = np.zeros((48, 48), np.uint8)
    img[10:30, 12:28] = 240
    dicom = make_dicom(img, spacing=(0.5, 0.8))  # carries PatientName etc.
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.dcm").write_bytes(dicom)
    (folder / "b.png").write_bytes(slice_png(4))
    (folder / "c.png").write_bytes(slice_png(3))  # notumor
    (folder / "d").write_bytes(dicom)  # extension-less DICOM
    out = tmp_path / "r.csv"
    res = run_batch(FakePipeline(), items_of(folder), out_csv=out)
    assert res.failed == 0 and len(res.rows) == 4
    lines = csv_lines(out)
    assert lines[0] == HEADER and all(len(r) == len(HEADER) for r in lines)
    rows = {r["item"]: r for _, r in res.rows.iterrows()}
    a = rows[str(folder / "a.dcm")]
    assert a["spacing_source"] == "dicom" and a["area_cm2"] == pytest.approx(320 * 0.05 * 0.08)
    assert a["row_spacing_cm"] == pytest.approx(0.05) and a["area_px"] == 320
    b = rows[str(folder / "b.png")]
    assert np.isnan(b["area_cm2"]) and b["area_px"] > 0
    text = out.read_bytes()
    for value in IDENTIFIERS.values():
        assert value.encode() not in text

    user = run_batch(FakePipeline(), items_of(folder), spacing_cm=(0.1, 0.1),
                     override_file_spacing=True)
    assert user.rows["spacing_source"].tolist() == ["user"] * 4
    assert user.rows["row_spacing_cm"].tolist() == [0.1] * 4
    assert list(user.rows.columns) == HEADER
    kept = run_batch(FakePipeline(), items_of(folder), spacing_cm=(0.1, 0.1))  # DICOM's own
    assert kept.rows["spacing_source"].tolist() == ["dicom", "user", "user", "dicom"]
    with pytest.raises(ValueError, match="threshold"):
        run_batch(FakePipeline(), [], threshold=1.0)
    with pytest.raises(ValueError, match="spacing"):
        run_batch(FakePipeline(), [], spacing_cm=(0.1, -1))


def test_rename_keeps_file_names_out_of_the_csv(tmp_path: Path) -> None:
    patient = IDENTIFIERS["PatientName"].replace("^", "_")
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / f"{patient}.png").write_bytes(slice_png(1))
    (folder / f"{patient}.zip").write_bytes(_zip({f"{patient}/x.png": slice_png(2)}))
    (folder / f"{patient}_cut.png").write_bytes(slice_png(3)[:60])  # failures carry no name
    (folder / f"{patient}_cut.dcm").write_bytes(b"DICM" * 10)
    out, fails = tmp_path / "r.csv", tmp_path / "f.csv"
    res = run_batch(FakePipeline(), items_of(folder), out_csv=out, failures_csv=fails,
                    rename=anonymise_name)
    assert len(res.rows) == 2 and res.rows["item"].str.fullmatch(r"anon-[0-9a-f]{16}").all()
    assert len(res.failures) == 2 and res.failures["item"].str.startswith("anon-").all()
    for path in (out, fails):
        assert patient.encode() not in path.read_bytes()
    again = FakePipeline()
    run_batch(again, items_of(folder), out_csv=out, resume=True, rename=anonymise_name)
    assert again.calls == 0
    assert anonymise_name("x") != anonymise_name("x", "secret")


def test_formula_like_names_are_defused_in_the_csv_and_resume_still_matches(
        tmp_path: Path) -> None:
    items = [("=HYPERLINK(1).png", slice_png(1)), ("-cut.png", slice_png(2)[:60]),
             ("plain.png", slice_png(3))]  # as uploaded: bare file names
    out, fails = tmp_path / "r.csv", tmp_path / "f.csv"
    res = run_batch(FakePipeline(), items, out_csv=out, failures_csv=fails)
    assert sorted(res.rows["item"]) == ["'=HYPERLINK(1).png", "plain.png"]
    assert res.failures["item"].tolist() == ["'-cut.png"]
    text = out.read_bytes() + fails.read_bytes()
    assert b"\n=HYPERLINK" not in text and b"\n-cut" not in text
    again = FakePipeline()
    run_batch(again, items, out_csv=out, failures_csv=fails, resume=True)
    assert again.calls == 0


@pytest.mark.parametrize("override", [False, True])
def test_a_batch_spacing_never_replaces_a_dicom_files_own_unless_asked(
        tmp_path: Path, override: bool) -> None:
    bright = np.zeros((48, 48), np.uint8)
    bright[10:20, 10:30] = 250  # a "tumour" for the fake pipeline
    items = [("a.png", slice_png(1)), ("b.dcm", make_dicom(bright, spacing=(0.5, 0.5))),
             ("c.png", slice_png(3)), ("d.dcm", make_dicom(bright, spacing=(0.8, 0.8)))]
    res = run_batch(FakePipeline(), items, spacing_cm=(0.1, 0.1), spacing_source="assumed",
                    override_file_spacing=override, chunk_size=4)
    rows = res.rows.set_index("item")
    assert list(res.rows["item"]) == ["a.png", "b.dcm", "c.png", "d.dcm"]  # order kept
    assert rows.loc["a.png", "spacing_source"] == rows.loc["c.png", "spacing_source"] == "assumed"
    assert rows.loc["a.png", "row_spacing_cm"] == 0.1
    if override:
        assert rows.loc["b.dcm", "spacing_source"] == "assumed"
        assert rows.loc["b.dcm", "row_spacing_cm"] == rows.loc["d.dcm", "row_spacing_cm"] == 0.1
    else:
        assert rows.loc["b.dcm", "spacing_source"] == rows.loc["d.dcm", "spacing_source"] == "dicom"
        assert (rows.loc["b.dcm", "row_spacing_cm"], rows.loc["d.dcm", "row_spacing_cm"]) == (
            0.05, 0.08)


# --------------------------------------------------------------------------- resume
def test_resume_repairs_truncated_line_and_skips_done_items(tmp_path: Path) -> None:
    good, bad = make_slices(tmp_path / "in", 12, every=6)
    (tmp_path / "in" / "boom.png").write_bytes(slice_png(7, crash=True))
    out, fails = tmp_path / "r.csv", tmp_path / "f.csv"
    first = FakePipeline()
    run_batch(first, items_of(tmp_path / "in"), out_csv=out, failures_csv=fails)
    assert first.calls == 11
    data = out.read_bytes()
    out.write_bytes(data[:-25])  # kill mid-write of the last row
    last_item = csv_lines(out)[-1][0]

    second = FakePipeline()
    res = run_batch(second, items_of(tmp_path / "in"), out_csv=out, failures_csv=fails,
                    resume=True)
    assert res.repaired and res.analysed == 1 and second.calls == 2  # lost row + crash retry
    assert res.skipped == 10 + len(bad) - 1  # done rows and input failures
    assert out.read_bytes() == data  # byte-identical repair
    assert res.rows["item"].tolist() == sorted(good) and last_item in set(res.rows["item"])
    assert sorted(res.failures["item"]) == sorted([*bad, str(tmp_path / "in" / "boom.png")])
    assert len(csv_lines(fails)) == 1 + len(bad) + 1

    # Same name, new content: analysed again (a new row, not a duplicate).
    Path(good[0]).write_bytes(slice_png(100))
    third = FakePipeline()
    res3 = run_batch(third, items_of(tmp_path / "in"), out_csv=out, failures_csv=fails,
                     resume=True)
    assert third.calls == 2 and res3.analysed == 1  # the changed file + the crash retry
    assert len(res3.rows) == 10 and res3.rows["item"].is_unique
    assert len(csv_lines(out)) == 1 + 11


def test_resume_refuses_rows_classified_another_way(tmp_path: Path) -> None:
    make_slices(tmp_path / "in", 6, every=100)
    out, fails = tmp_path / "r.csv", tmp_path / "f.csv"
    first = FakePipeline()
    first.ensemble = types.SimpleNamespace(method="fake mean")  # what its rows record
    run_batch(first, items_of(tmp_path / "in")[:3], out_csv=out, failures_csv=fails)
    data = out.read_bytes()

    other = FakePipeline()
    other.ensemble = types.SimpleNamespace(method="fake mean of mirrored crops")
    with pytest.raises(ValueError, match="started with classification method 'fake mean'; "
                       "this run uses 'fake mean of mirrored crops'"):
        run_batch(other, items_of(tmp_path / "in"), out_csv=out, failures_csv=fails,
                  resume=True)
    assert other.calls == 0 and out.read_bytes() == data  # nothing lost, nothing mixed
    res = run_batch(first, items_of(tmp_path / "in"), out_csv=out, failures_csv=fails,
                    resume=True)
    assert res.analysed == 3 and len(res.rows) == 6


def test_resume_refuses_damage_before_the_last_line_and_concurrent_writers(tmp_path: Path) -> None:
    make_slices(tmp_path / "in", 4, every=100)
    out = tmp_path / "r.csv"
    items = items_of(tmp_path / "in")
    run_batch(FakePipeline(), items, out_csv=out)
    lines = out.read_bytes().split(b"\n")
    lines[2] = lines[2][:30]
    out.write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match="line 3 is malformed"):
        run_batch(FakePipeline(), items, out_csv=out, resume=True)

    other = tmp_path / "other.csv"

    def nested(*_: object) -> None:
        run_batch(FakePipeline(), items, out_csv=other)

    with pytest.raises(RuntimeError, match="another batch process"):
        run_batch(FakePipeline(), items[:1], out_csv=other, progress=nested)


CHILD = """
import json, os, signal, sys
from pathlib import Path
args = json.loads(sys.argv[1])
sys.path[:0] = [args["tests"], args["repo"]]
import neurostack.batch as nb
from test_batch import FakePipeline, items_of
if args.get("kill_at_row"):
    original, rows = nb._write_line, [0]
    def killer(fh, line):
        if fh.name == args["out"]:
            rows[0] += line.count(b"\\n")
            if rows[0] >= args["kill_at_row"] + 1:  # + header
                fh.write(line[: len(line) // 2]); fh.flush(); os.fsync(fh.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
        original(fh, line)
    nb._write_line = killer
pipe = FakePipeline(delay=args["delay"], log=Path(args["log"]))
nb.run_batch(pipe, items_of(Path(args["folder"])), out_csv=Path(args["out"]),
             failures_csv=Path(args["fail"]), chunk_size=args["chunk_size"])
"""


def _start_child(tmp_path: Path, *, delay: float, kill_at_row: int = 0,
                 chunk_size: int = nb.DEFAULT_CHUNK) -> subprocess.Popen:
    args = {"chunk_size": chunk_size, "tests": str(TESTS_DIR), "repo": str(REPO),
            "folder": str(tmp_path / "in"), "out": str(tmp_path / "r.csv"),
            "fail": str(tmp_path / "f.csv"), "log": str(tmp_path / "child.log"),
            "delay": delay, "kill_at_row": kill_at_row}
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _complete_rows(path: Path) -> int:
    return max(0, path.read_bytes().count(b"\n") - 1) if path.exists() else 0


def _check_resume_after_kill(tmp_path: Path, good: list[str], bad: dict[str, str],
                             chunk_size: int) -> dict:
    """Resume in-process and check: no lost row, no duplicate, finished items not redone.

    Rows are written when their chunk is done, so at most one chunk is redone.
    """
    out = tmp_path / "r.csv"
    data = out.read_bytes() if out.exists() else b""
    complete = data[: data.rfind(b"\n") + 1].decode()
    done_before = {row[0] for row in list(csv.reader(io.StringIO(complete)))[1:]}
    child_log = (tmp_path / "child.log").read_text().split()
    hashes = {gray_sha(Path(name)): name for name in good}
    analysed_by_child = {hashes[h] for h in child_log}

    pipe = FakePipeline()
    res = run_batch(pipe, items_of(tmp_path / "in"), out_csv=out,
                    failures_csv=tmp_path / "f.csv", resume=True)
    redone = {hashes[h] for h in pipe.seen}
    final = csv_lines(out)
    items = [row[0] for row in final[1:]]
    stats = {
        "rows_before_resume": len(done_before),
        "analysed_in_resume": pipe.calls,
        "in_flight_redone": len(redone & analysed_by_child),
        "lost": len(set(good) - set(items)),
        "duplicates": len(items) - len(set(items)),
        "repaired": res.repaired,
    }
    assert final[0] == HEADER and all(len(r) == len(HEADER) for r in final)
    assert stats["lost"] == 0 and stats["duplicates"] == 0, stats
    assert not (redone & done_before), "finished items were analysed again"
    assert pipe.calls == len(good) - len(done_before)
    assert stats["in_flight_redone"] <= chunk_size, stats
    assert sorted(res.rows["item"]) == sorted(good)
    fail_items = [row[0] for row in csv_lines(tmp_path / "f.csv")[1:]]
    assert sorted(fail_items) == sorted(bad)  # each failure exactly once
    return stats


@pytest.mark.slow
def test_resume_after_sigkill_mid_batch(tmp_path: Path) -> None:
    good, bad = make_slices(tmp_path / "in", 80)
    child = _start_child(tmp_path, delay=0.04)
    deadline = time.monotonic() + 90
    try:
        while _complete_rows(tmp_path / "r.csv") < 20:
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "child made no progress"
            time.sleep(0.005)
        time.sleep(0.02)  # land inside the next item's analysis (delay 0.04 s)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert _complete_rows(tmp_path / "r.csv") < len(good)  # really killed mid-batch
    stats = _check_resume_after_kill(tmp_path, good, bad, nb.DEFAULT_CHUNK)
    print("external SIGKILL:", stats)


@pytest.mark.slow
def test_resume_after_sigkill_in_the_middle_of_a_row_write(tmp_path: Path) -> None:
    good, bad = make_slices(tmp_path / "in", 30)
    child = _start_child(tmp_path, delay=0.0, kill_at_row=11, chunk_size=1)
    child.wait(timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()
    data = (tmp_path / "r.csv").read_bytes()
    assert not data.endswith(b"\n") and data.count(b"\n") == 11  # header + 10 rows + half
    stats = _check_resume_after_kill(tmp_path, good, bad, 1)
    assert stats["repaired"] and stats["rows_before_resume"] == 10
    assert stats["in_flight_redone"] == 1
    print("SIGKILL mid-write:", stats)


# --------------------------------------------------------------------------- CLI
def test_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> None:
    import neurostack.pipeline

    monkeypatch.setattr(neurostack.pipeline, "load_pipeline", lambda *_a, **_k: FakePipeline())
    good, bad = make_slices(tmp_path / "in", 10, every=5)
    out = tmp_path / "res" / "results.csv"
    assert nb.main([str(tmp_path / "in"), "--out", str(out), "--spacing-mm", "0.5", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "8 image(s) in the results, 2 failure(s)" in printed
    df = read_results(out)
    assert df["spacing_source"].eq("user").all() and df["row_spacing_cm"].eq(0.05).all()
    assert len(csv_lines(tmp_path / "res" / "results_failures.csv")) == 3

    assert nb.main([str(tmp_path / "in"), "--out", str(out)]) == 1  # would overwrite
    assert "--resume" in capsys.readouterr().err
    assert nb.main([str(tmp_path / "in"), "--out", str(out), "--resume"]) == 0
    assert "skipped 10 already done" in capsys.readouterr().out

    anon = tmp_path / "anon.csv"
    (tmp_path / "in" / "patient_notes.txt").write_text("x")
    assert nb.main([str(tmp_path / "in"), "--out", str(anon), "--anonymise-names"]) == 0
    assert b"slice_" not in anon.read_bytes()
    err = capsys.readouterr().err  # the left-out file is counted by suffix, never named
    assert "1 file(s) in the folders are not images" in err and ".txt: 1" in err
    assert "patient_notes" not in err

    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_bytes(b"")
    assert nb.main([str(only_bad), "--out", str(tmp_path / "b.csv")]) == 1
    assert nb.main([str(tmp_path / "nope"), "--out", str(tmp_path / "c.csv")]) == 1
    assert nb.main([str(only_bad), "--out", str(tmp_path / "d.csv"), "--threshold", "2"]) == 1
    assert nb.main([str(only_bad), "--out", str(tmp_path / "e.csv"), "--chunk-size", "0"]) == 1


def test_cli_threshold_defaults_to_the_segmenter_operating_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import neurostack.pipeline

    class WithSegmenter(FakePipeline):
        segmenter = type("Seg", (), {"default_threshold": 0.4})()

    monkeypatch.setattr(neurostack.pipeline, "load_pipeline", lambda *_a, **_k: WithSegmenter())
    make_slices(tmp_path / "in", 3)
    out = tmp_path / "r.csv"
    assert nb.main([str(tmp_path / "in"), "--out", str(out)]) == 0
    assert read_results(out)["mask_threshold"].eq(0.4).all()
    assert nb.main([str(tmp_path / "in"), "--out", str(out), "--overwrite",
                    "--threshold", "0.7"]) == 0
    assert read_results(out)["mask_threshold"].eq(0.7).all()


def test_run_batch_leaves_an_unset_threshold_to_the_pipeline(tmp_path: Path) -> None:
    """No threshold given: the pipeline's own default applies (the real one resolves it
    to the segmenter's operating point); a given one is passed on."""
    seen: list[dict] = []

    class Recording(FakePipeline):
        def analyse(self, source: Any, **options: Any) -> CaseResult:
            seen.append(options)
            return super().analyse(source, **options)

    make_slices(tmp_path / "in", 2)
    items = [(p.name, p) for p in sorted((tmp_path / "in").iterdir())]
    run_batch(Recording(), items, chunk_size=1)
    assert seen and all("threshold" not in o for o in seen)
    seen.clear()
    run_batch(Recording(), items, chunk_size=1, threshold=0.35)
    assert seen and all(o["threshold"] == 0.35 for o in seen)


def test_count_intensity_flagged_and_the_summary_line() -> None:
    import pandas as pd

    from ensemble.intensity import WARNING_PREFIX

    rows = pd.DataFrame({"warnings": [f"{WARNING_PREFIX} (atypicality 0.4 > 0.2 ...)",
                                      "low confidence (0.50 < 0.6)", None,
                                      f"low confidence; {WARNING_PREFIX} (...)"]})
    assert nb.count_intensity_flagged(rows) == 2
    assert nb.count_intensity_flagged(pd.DataFrame({"item": ["a"]})) == 0
    result = nb.BatchResult(rows=rows, failures=pd.DataFrame(), analysed=4, failed=0,
                            skipped=0, elapsed_s=1.0)
    assert "2 slice(s) have grey levels unlike the training slices" in result.summary()
    clean = nb.BatchResult(rows=rows.iloc[1:3], failures=pd.DataFrame(), analysed=2,
                           failed=0, skipped=0, elapsed_s=1.0)
    assert "grey levels" not in clean.summary()


def test_count_quality_flagged_and_the_summary_line() -> None:
    import pandas as pd

    rows = pd.DataFrame({"quality_flags": ["noisy", "", None, "noisy;smooth", "smooth"]})
    assert nb.count_quality_flagged(rows) == {"noisy": 2, "smooth": 2}
    assert nb.count_quality_flagged(pd.DataFrame({"item": ["a"]})) == {"noisy": 0, "smooth": 0}
    result = nb.BatchResult(rows=rows, failures=pd.DataFrame(), analysed=5, failed=0,
                            skipped=0, elapsed_s=1.0)
    assert "flagged 2 slice(s) as noisier and 2 as less detailed" in result.summary()
    clean = nb.BatchResult(rows=rows.iloc[1:3], failures=pd.DataFrame(), analysed=2,
                           failed=0, skipped=0, elapsed_s=1.0)
    assert "noise and detail" not in clean.summary()


def test_count_outline_flagged_reads_the_nullable_column():
    import pandas as pd

    from neurostack.batch import count_outline_flagged

    rows = pd.DataFrame({"outline_flagged": [True, False, None, True]})
    assert count_outline_flagged(rows) == 2
    assert count_outline_flagged(pd.DataFrame({"x": [1]})) == 0
    # as read back from a results CSV: a nullable boolean column with gaps
    read_back = pd.Series([True, pd.NA, False], dtype="boolean")
    assert count_outline_flagged(pd.DataFrame({"outline_flagged": read_back})) == 1


def test_review_and_outline_flags_are_counted_in_the_summary():
    import pandas as pd

    from neurostack.batch import count_review_flagged

    rows = pd.DataFrame({"review_flagged": [True, False, True, None],
                         "outline_flagged": [None, True, False, None]})
    assert count_review_flagged(rows) == 2
    assert count_review_flagged(pd.DataFrame({"x": [1]})) == 0
    result = nb.BatchResult(rows=rows, failures=pd.DataFrame(), analysed=4, failed=0,
                            skipped=0, elapsed_s=1.0)
    assert "2 answer(s) flagged for review" in result.summary()
    assert "1 outline(s) flagged as uncertain" in result.summary()
    quiet = nb.BatchResult(rows=rows.iloc[3:], failures=pd.DataFrame(), analysed=1,
                           failed=0, skipped=0, elapsed_s=1.0)
    assert "review" not in quiet.summary() and "uncertain" not in quiet.summary()


def test_to_check_marks_flagged_answers_or_outlines_only():
    import pandas as pd

    from neurostack.batch import to_check

    rows = pd.DataFrame({"review_flagged": [True, False, None, False],
                         "outline_flagged": [None, True, False, pd.NA]})
    assert to_check(rows).tolist() == [True, True, False, False]
    assert to_check(rows.drop(columns="outline_flagged")).tolist() == [True, False, False, False]
    assert to_check(pd.DataFrame({"x": [1, 2]})).tolist() == [False, False]  # older results


def test_flags_resumed_into_an_older_results_file_are_read_from_extra_json():
    import pandas as pd

    from neurostack.batch import count_review_flagged, flag_values, to_check

    # an older file has no review columns; rows appended on --resume keep them as JSON
    rows = pd.DataFrame({"outline_flagged": [None, True, None, None],
                         "extra_json": [None, "", '{"review_flagged": true}',
                                        '{"review_flagged": false, "x": 1}']})
    assert flag_values(rows, "review_flagged").tolist() == [False, False, True, False]
    assert count_review_flagged(rows) == 1
    assert to_check(rows).tolist() == [False, True, True, False]
    broken = pd.DataFrame({"extra_json": ["{not json", "[1, 2]"]})
    assert flag_values(broken, "review_flagged").tolist() == [False, False]
