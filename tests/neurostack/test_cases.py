"""Case database: round trip, filters, concurrency (threads and processes), privacy."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from neurostack_samples import IDENTIFIERS, make_dicom
from test_batch import FakePipeline, slice_png

from neurostack import __version__
from neurostack.batch import read_results, run_batch
from neurostack.cases import FEATURE_COLUMNS, SCHEMA_VERSION, CaseStore, default_url
from neurostack.imaging import load_image
from neurostack.pipeline import CaseResult

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parents[1]


def result(i: int, *, spacing: tuple[float, float] | None = None) -> CaseResult:
    """A real CaseResult from the fake pipeline (slice ``i``; every third is "notumor")."""
    kwargs = {"spacing_cm": spacing, "spacing_source": "user"} if spacing else {}
    return FakePipeline().analyse(slice_png(i), **kwargs)


def fake_record(tag: str) -> dict:
    """A minimal ``to_record()``-style dict whose hash field carries ``tag``."""
    return {"image_sha256": tag, "predicted_class": "glioma", "confidence": 0.9,
            "tumor_found": True, "segmented": True, "area_px": 42, "circularity": 0.75,
            "spacing_source": "none", "m1_glioma": 0.9, "m1_meningioma": 0.04,
            "m1_notumor": 0.03, "m1_pituitary": 0.03}


@pytest.fixture
def store(tmp_path: Path) -> CaseStore:
    s = CaseStore(data_dir=tmp_path)
    yield s
    s.close()


def test_round_trip_of_results_and_records(store: CaseStore, tmp_path: Path) -> None:
    assert store.path == tmp_path / "cases.sqlite" and store.schema_version == SCHEMA_VERSION
    with sqlite3.connect(store.path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    cm, px, plain = result(1, spacing=(0.05, 0.04)), result(2), result(3)
    assert cm.segmented and px.segmented and not plain.segmented
    ids = store.add_many([cm, px, plain])
    assert ids == sorted(ids) and store.count() == 3

    df = store.to_frame(order_by="id", descending=False)
    assert df["id"].tolist() == ids
    assert str(df["created_utc"].dt.tz) == "UTC"
    assert set(df["app_version"]) == {__version__}
    for (_, row), res in zip(df.iterrows(), (cm, px, plain), strict=True):
        rec = res.to_record()
        for key in ("image_sha256", "predicted_class", "method", "model_versions"):
            assert row[key] == rec[key], key
        for key in ("confidence", "ensemble_glioma", "m1_glioma", "m2_pituitary"):
            assert row[key] == pytest.approx(rec[key]), key
        assert bool(row["tumor_found"]) == res.tumor_found
        assert bool(row["segmented"]) == res.segmented
        assert bool(row["review_flagged"]) == res.review_flagged
        assert row["review_threshold"] == pytest.approx(res.review_threshold)
        for key, value in (res.morphology or {}).items():
            if isinstance(value, str) or value is None:
                assert row[key] == value or pd.isna(row[key]), key
            else:
                assert row[key] == pytest.approx(value), key
    first = df.iloc[0]
    assert first["area_cm2"] == pytest.approx(cm.morphology["area_cm2"])
    assert first["row_spacing_cm"] == 0.05 and first["spacing_source"] == "user"
    assert pd.isna(df.iloc[1]["area_cm2"]) and df.iloc[1]["area_px"] == px.morphology["area_px"]
    assert pd.isna(df.iloc[2]["area_px"]) and df.iloc[2]["predicted_class"] == "notumor"
    assert set(FEATURE_COLUMNS) <= set(df.columns)
    assert "morphology_json" not in df.columns and "per_model_json" not in df.columns


def test_batch_csv_rows_can_be_stored_and_names_are_dropped(store: CaseStore,
                                                             tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(1, 4):
        (folder / f"Secret_Person_{i}.png").write_bytes(slice_png(i))
    run_batch(FakePipeline(), [(str(p), p) for p in sorted(folder.iterdir())],
              out_csv=tmp_path / "r.csv")
    rows = read_results(tmp_path / "r.csv")
    ids = store.add_many(r.to_dict() for _, r in rows.iterrows())
    df = store.to_frame(order_by="id", descending=False)
    assert df["id"].tolist() == ids
    assert df["image_sha256"].tolist() == rows["image_sha256"].tolist()
    assert df["area_px"].tolist()[:2] == rows["area_px"].tolist()[:2]
    assert "item" not in df.columns and "file_sha256" not in df.columns
    store.close()
    for path in tmp_path.glob("cases.sqlite*"):
        assert b"Secret_Person" not in path.read_bytes()


def test_filters_ordering_delete(store: CaseStore) -> None:
    base = datetime(2024, 1, 1, tzinfo=timezone.utc)
    recs = []
    for i, (cls, conf) in enumerate([("glioma", 0.9), ("meningioma", 0.55), ("notumor", 0.99),
                                     ("pituitary", 0.7), ("glioma", 0.4)]):
        rec = fake_record(f"h{i}") | {"predicted_class": cls, "confidence": conf,
                                      "tumor_found": cls != "notumor",
                                      "created_utc": (base + timedelta(days=i)).isoformat()}
        recs.append(rec)
    ids = store.add_many(recs)
    frame = store.to_frame
    assert frame()["image_sha256"].tolist() == ["h4", "h3", "h2", "h1", "h0"]
    assert frame(descending=False, limit=2)["image_sha256"].tolist() == ["h0", "h1"]
    assert frame(class_in=["glioma"])["image_sha256"].tolist() == ["h4", "h0"]
    assert frame(min_confidence=0.7)["image_sha256"].tolist() == ["h3", "h2", "h0"]
    assert frame(tumor_only=True)["image_sha256"].tolist() == ["h4", "h3", "h1", "h0"]
    assert frame(since="2024-01-04T00:00:00Z")["image_sha256"].tolist() == ["h4", "h3"]
    assert frame(since=datetime(2024, 1, 4, 1, tzinfo=timezone(timedelta(hours=2))),
                 order_by="confidence")["image_sha256"].tolist() == ["h3", "h4"]
    assert frame(class_in=[]).empty
    with pytest.raises(ValueError, match="order_by"):
        frame(order_by="confidence; DROP TABLE cases")

    assert store.delete([ids[0], ids[1], 999_999]) == 2 and store.count() == 3
    new_id = store.add(fake_record("h5"))
    assert new_id > max(ids)  # ids are never reused
    with pytest.raises(ValueError, match="predicted_class"):
        store.add_many([fake_record("ok"), fake_record("bad") | {"predicted_class": "tumour"}])
    assert store.count() == 4  # add_many is all or nothing
    with pytest.raises(ValueError):
        store.add({"image_sha256": "x", "predicted_class": "glioma"})


def test_default_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEUROSTACK_DB_URL", raising=False)
    monkeypatch.setenv("NEUROSTACK_DATA_DIR", str(tmp_path / "d1"))
    assert default_url() == f"sqlite:///{tmp_path / 'd1' / 'cases.sqlite'}"
    with CaseStore() as s:
        s.add(fake_record("a"))
    assert (tmp_path / "d1" / "cases.sqlite").exists()
    monkeypatch.setenv("NEUROSTACK_DB_URL", f"sqlite:///{tmp_path / 'other.db'}")
    assert default_url() == f"sqlite:///{tmp_path / 'other.db'}"
    assert default_url(tmp_path / "d2") == f"sqlite:///{tmp_path / 'd2' / 'cases.sqlite'}"
    monkeypatch.delenv("NEUROSTACK_DATA_DIR")
    monkeypatch.delenv("NEUROSTACK_DB_URL")
    assert default_url() == "sqlite:///data/cases.sqlite"
    with CaseStore("sqlite://") as mem:  # any SQLAlchemy URL; in-memory works across threads
        mem.add(fake_record("m"))
        worker = threading.Thread(target=lambda: mem.add(fake_record("n")))
        worker.start()
        worker.join()
        assert mem.count() == 2


def _check_integrity(store: CaseStore) -> pd.DataFrame:
    with sqlite3.connect(store.path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    df = store.to_frame(order_by="id", descending=False)
    assert df["id"].is_unique
    assert df["area_px"].eq(42).all() and df["m1_glioma"].eq(0.9).all()  # JSON and columns
    return df


def test_four_threads_write_concurrently(store: CaseStore) -> None:
    n_threads, per_thread = 4, 50
    barrier = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                store.add(fake_record(f"t{t}-{i}"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    df = _check_integrity(store)
    expected = {f"t{t}-{i}" for t in range(n_threads) for i in range(per_thread)}
    assert len(df) == n_threads * per_thread == 200
    assert set(df["image_sha256"]) == expected


WRITER = """
import sys, time
from pathlib import Path
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from test_cases import fake_record
from neurostack.cases import CaseStore
store = CaseStore(data_dir=Path(sys.argv[3]))
Path(sys.argv[3], "ready-" + sys.argv[4]).touch()
while not Path(sys.argv[3], "go").exists():
    time.sleep(0.005)
for i in range(int(sys.argv[5])):
    store.add(fake_record(f"p{sys.argv[4]}-{i}"))
store.close()
"""


@pytest.mark.slow
def test_two_processes_write_concurrently(tmp_path: Path) -> None:
    n_proc, per_proc = 2, 50
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(TESTS_DIR), str(REPO),
                               str(tmp_path), str(p), str(per_proc)], cwd=REPO,
                              stderr=subprocess.PIPE) for p in range(n_proc)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{p}").exists() for p in range(n_proc)):
        assert all(pr.poll() is None for pr in procs), [pr.stderr.read() for pr in procs]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    (tmp_path / "go").touch()
    for pr in procs:
        assert pr.wait(timeout=120) == 0, pr.stderr.read().decode()
    with CaseStore(data_dir=tmp_path) as store:
        df = _check_integrity(store)
        assert len(df) == n_proc * per_proc == 100
        assert set(df["image_sha256"]) == {f"p{p}-{i}" for p in range(n_proc)
                                           for i in range(per_proc)}


def test_dicom_identifiers_never_reach_the_database_or_the_csv(tmp_path: Path) -> None:
    pixels = np.zeros((48, 48), np.uint8)
    pixels[8:30, 10:26] = 240
    dicom = make_dicom(pixels, spacing=(0.5, 0.5))
    img = load_image(dicom)
    res = FakePipeline().analyse(img)
    assert res.segmented and res.spacing_source == "dicom"
    record = res.to_record()
    leaky = record | {key: value for key, value in IDENTIFIERS.items()}
    leaky["item"] = f"{IDENTIFIERS['PatientName']}.dcm"
    with CaseStore(data_dir=tmp_path / "db") as store:
        store.add(res)
        store.add(leaky)
        df = store.to_frame()
        assert len(df) == 2 and df["row_spacing_cm"].eq(0.05).all()
        assert not set(IDENTIFIERS) & set(df.columns)
        text = df.to_csv()
        data = b"".join(p.read_bytes() for p in (tmp_path / "db").iterdir())
    (tmp_path / "case.dcm").write_bytes(dicom)
    run_batch(FakePipeline(), [("case.dcm", tmp_path / "case.dcm")], out_csv=tmp_path / "r.csv")
    csv_bytes = (tmp_path / "r.csv").read_bytes()
    assert data and len(csv_bytes) > 500
    for value in IDENTIFIERS.values():
        assert value.encode() not in data, value
        assert value.encode() not in csv_bytes, value
        assert value not in text, value
    assert json.loads(json.dumps(record))  # the record itself is plain JSON


V4_COLUMNS = ("intensity_atypicality", "relative_gamma", "intensity_corrected",
              "uncorrected_class", "uncorrected_confidence", "quality_flags", "noise_sigma_grey",
              "detail_level_grey", "escalated", "frame", "n_frames")


def test_a_version_3_database_gains_the_check_columns_and_keeps_its_cases(
        tmp_path: Path) -> None:
    path = tmp_path / "cases.sqlite"
    with CaseStore(data_dir=tmp_path) as fresh:
        old_id = fresh.add(fake_record("old"))
    with sqlite3.connect(path) as raw:  # the layout of schema version 3
        for column in V4_COLUMNS:
            raw.execute(f"ALTER TABLE cases DROP COLUMN {column}")
        raw.execute("UPDATE neurostack_meta SET value = '3' WHERE key = 'schema_version'")
    checked = {**fake_record("checked"), "intensity_atypicality": 3.5, "relative_gamma": 1.8,
               "intensity_corrected": "True", "uncorrected_class": "notumor",
               "uncorrected_confidence": 0.7, "quality_flags": "noisy",
               "noise_sigma_grey": 12.5, "detail_level_grey": 3.25, "escalated": True,
               "extra_json": '{"frame": 3, "n_frames": 9, "PatientName": "x"}'}
    with CaseStore(data_dir=tmp_path) as store:
        assert store.schema_version == 4
        new_id = store.add(checked)
        df = store.to_frame(order_by="id", descending=False).set_index("id")
    assert df.loc[old_id, list(V4_COLUMNS)].isna().all()
    row = df.loc[new_id]
    assert (row["intensity_atypicality"], row["relative_gamma"]) == (3.5, 1.8)
    assert bool(row["intensity_corrected"]) and bool(row["escalated"])
    assert (row["uncorrected_class"], row["quality_flags"]) == ("notumor", "noisy")
    assert (row["noise_sigma_grey"], row["detail_level_grey"]) == (12.5, 3.25)
    assert (row["frame"], row["n_frames"]) == (3, 9)  # from the batch row's extra_json
    assert "PatientName" not in df.columns


def test_a_version_1_database_is_migrated_and_keeps_its_cases(tmp_path: Path) -> None:
    path = tmp_path / "cases.sqlite"
    with CaseStore(data_dir=tmp_path) as fresh:
        old_id = fresh.add(fake_record("old"))
    with sqlite3.connect(path) as raw:  # the layout of schema version 1
        for column in ("outline_confidence", "outline_flagged", "review_flagged",
                       "review_threshold", *V4_COLUMNS):
            raw.execute(f"ALTER TABLE cases DROP COLUMN {column}")
        raw.execute("UPDATE neurostack_meta SET value = '1' WHERE key = 'schema_version'")
    with CaseStore(data_dir=tmp_path) as store:
        assert store.schema_version == SCHEMA_VERSION == 4
        new_id = store.add({**fake_record("new"), "outline_confidence": 0.61,
                            "outline_flagged": True})
        df = store.to_frame(order_by="id", descending=False).set_index("id")
    assert pd.isna(df.at[old_id, "outline_confidence"])
    assert pd.isna(df.at[old_id, "outline_flagged"])
    assert df.at[new_id, "outline_confidence"] == pytest.approx(0.61)
    assert bool(df.at[new_id, "outline_flagged"]) is True
    with CaseStore(data_dir=tmp_path) as again:  # reopening a migrated database is a no-op
        assert again.schema_version == 4 and again.count() == 2
        clear = again.add({**fake_record("clear"), "outline_confidence": 0.9,
                           "outline_flagged": False})
        kept = again.to_frame(order_by="id", descending=False, hide_uncertain_outlines=True)
        assert kept["id"].tolist() == [old_id, clear]  # unknown and unflagged stay


def test_a_version_2_database_gains_the_review_columns_and_the_filter_works(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cases.sqlite"
    with CaseStore(data_dir=tmp_path) as fresh:
        old_id = fresh.add({**fake_record("old"), "outline_flagged": True})
    with sqlite3.connect(path) as raw:  # the layout of schema version 2
        for column in ("review_flagged", "review_threshold", *V4_COLUMNS):
            raw.execute(f"ALTER TABLE cases DROP COLUMN {column}")
        raw.execute("UPDATE neurostack_meta SET value = '2' WHERE key = 'schema_version'")
    with CaseStore(data_dir=tmp_path) as store:
        assert store.schema_version == 4
        flagged = store.add({**fake_record("review"), "review_flagged": True,
                             "review_threshold": 0.95})
        clear = store.add({**fake_record("clear"), "review_flagged": False,
                           "review_threshold": 0.95})
        df = store.to_frame(order_by="id", descending=False).set_index("id")
        kept = store.to_frame(order_by="id", descending=False, hide_review_flagged=True)
        both = store.to_frame(order_by="id", descending=False, hide_review_flagged=True,
                              hide_uncertain_outlines=True)
    assert pd.isna(df.at[old_id, "review_flagged"]) and bool(df.at[old_id, "outline_flagged"])
    assert bool(df.at[flagged, "review_flagged"]) is True
    assert df.at[flagged, "review_threshold"] == pytest.approx(0.95)
    assert kept["id"].tolist() == [old_id, clear]  # unknown and unflagged stay
    assert both["id"].tolist() == [clear]


def test_centroids_stored_under_their_earlier_names_read_back_with_units(
        store: CaseStore) -> None:
    """Rows and records written before ``centroid_row`` became ``centroid_row_px``."""
    import sqlalchemy as sa

    old = fake_record("old") | {"centroid_row": 12.5, "centroid_col": 40.0}
    first = store.add(old)
    new = store.add(fake_record("new") | {"centroid_row_px": 3.0, "centroid_col_px": 4.0})
    with store.engine.begin() as conn:  # a row as the earlier version stored it
        conn.execute(sa.text("UPDATE cases SET morphology_json = :m WHERE id = :i"),
                     {"m": '{"area_px": 42, "centroid_row": 7.5, "centroid_col": 8.5}',
                      "i": new})
    df = store.to_frame(order_by="id", descending=False).set_index("id")
    assert "centroid_row" not in df.columns and "centroid_col" not in df.columns
    assert (df.loc[first, "centroid_row_px"], df.loc[first, "centroid_col_px"]) == (12.5, 40.0)
    assert (df.loc[new, "centroid_row_px"], df.loc[new, "centroid_col_px"]) == (7.5, 8.5)
