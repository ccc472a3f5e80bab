"""A small case database: one row per analysed slice, without identifiers.

:class:`CaseStore` keeps results in one SQL table ``cases`` through SQLAlchemy
2 Core. The default is an SQLite file ``<data_dir>/cases.sqlite`` (``data_dir``
from ``NEUROSTACK_DATA_DIR``, else ``./data``); any SQLAlchemy URL can be given
instead (or ``NEUROSTACK_DB_URL``).

Privacy: only a fixed whitelist of result fields is stored (classification,
probabilities, morphology, spacing, model versions, the *pixel* hash). No
patient identifier, no file name and no DICOM tag is ever written; unknown
keys of a dict passed to :meth:`CaseStore.add` are ignored.

Concurrency: SQLite runs in WAL mode with a busy timeout; writes take the
write lock at ``BEGIN IMMEDIATE`` and are retried with back-off while the
database is locked, so concurrent writers (threads or processes) lose nothing.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool

from morphology.measure import FEATURE_UNITS, RENAMED_FEATURES
from neurostack import CLASS_NAMES, __version__
from neurostack.pipeline import CaseResult

SCHEMA_VERSION = 4
"""Version of the ``cases`` table layout written by this module (2: outline confidence;
3: the classification's review flag; 4: the input and noise checks, the cascade's
escalation and the frame of a multi-frame file)."""
MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: ("ALTER TABLE cases ADD COLUMN outline_confidence FLOAT",
        "ALTER TABLE cases ADD COLUMN outline_flagged BOOLEAN"),
    3: ("ALTER TABLE cases ADD COLUMN review_flagged BOOLEAN",
        "ALTER TABLE cases ADD COLUMN review_threshold FLOAT"),
    4: tuple(f"ALTER TABLE cases ADD COLUMN {name} {kind}" for name, kind in (
        ("intensity_atypicality", "FLOAT"), ("relative_gamma", "FLOAT"),
        ("intensity_corrected", "BOOLEAN"), ("uncorrected_class", "VARCHAR(32)"),
        ("uncorrected_confidence", "FLOAT"), ("quality_flags", "VARCHAR(64)"),
        ("noise_sigma_grey", "FLOAT"), ("detail_level_grey", "FLOAT"),
        ("escalated", "BOOLEAN"), ("frame", "INTEGER"), ("n_frames", "INTEGER"))),
}
"""SQL that brings a database of version ``v - 1`` to version ``v`` (run in order)."""

DB_FILE_NAME = "cases.sqlite"
ENV_DATA_DIR = "NEUROSTACK_DATA_DIR"
ENV_DB_URL = "NEUROSTACK_DB_URL"
BUSY_TIMEOUT_S = 30.0

FEATURE_COLUMNS: tuple[str, ...] = (
    "area_cm2", "area_px", "perimeter_cm", "perimeter_px", "width_cm", "height_cm", "width_px",
    "height_px", "equivalent_diameter_cm", "equivalent_diameter_px", "max_feret_cm",
    "max_feret_px", "circularity", "solidity", "eccentricity", "extent", "mean_intensity",
    "std_intensity", "n_components",
)
"""Morphology features stored as real columns (the full record is also kept as JSON)."""
_INT_FEATURES = frozenset({"area_px", "n_components"})

metadata = sa.MetaData()
cases_table = sa.Table(
    "cases",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_utc", sa.DateTime, nullable=False, index=True),
    sa.Column("image_sha256", sa.String(64), nullable=False, index=True),
    sa.Column("predicted_class", sa.String(32), nullable=False, index=True),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("review_flagged", sa.Boolean),
    sa.Column("review_threshold", sa.Float),
    sa.Column("method", sa.String(200)),
    sa.Column("models_agree", sa.Boolean),
    sa.Column("tumor_found", sa.Boolean, nullable=False),
    sa.Column("segmented", sa.Boolean, nullable=False),
    sa.Column("mask_threshold", sa.Float),
    sa.Column("outline_confidence", sa.Float),
    sa.Column("outline_flagged", sa.Boolean),
    sa.Column("warnings", sa.Text),
    sa.Column("intensity_atypicality", sa.Float),
    sa.Column("relative_gamma", sa.Float),
    sa.Column("intensity_corrected", sa.Boolean),
    sa.Column("uncorrected_class", sa.String(32)),
    sa.Column("uncorrected_confidence", sa.Float),
    sa.Column("quality_flags", sa.String(64)),
    sa.Column("noise_sigma_grey", sa.Float),
    sa.Column("detail_level_grey", sa.Float),
    sa.Column("escalated", sa.Boolean),
    sa.Column("frame", sa.Integer),
    sa.Column("n_frames", sa.Integer),
    sa.Column("height_px_image", sa.Integer),
    sa.Column("width_px_image", sa.Integer),
    sa.Column("spacing_source", sa.String(16)),
    sa.Column("row_spacing_cm", sa.Float),
    sa.Column("col_spacing_cm", sa.Float),
    sa.Column("model_versions", sa.Text),
    sa.Column("app_version", sa.String(32)),
    *(sa.Column(f"ensemble_{c}", sa.Float) for c in CLASS_NAMES),
    sa.Column("per_model_json", sa.Text),
    *(sa.Column(f, sa.Integer if f in _INT_FEATURES else sa.Float) for f in FEATURE_COLUMNS),
    sa.Column("morphology_json", sa.Text),
    sqlite_autoincrement=True,  # ids are never reused after a delete
)
meta_table = sa.Table(
    "neurostack_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
)

_T = TypeVar("_T")
_FLOATS = ("confidence", "mask_threshold", "row_spacing_cm", "col_spacing_cm",
           "outline_confidence", "review_threshold", "intensity_atypicality", "relative_gamma",
           "uncorrected_confidence", "noise_sigma_grey", "detail_level_grey")
_BOOLS = ("models_agree", "tumor_found", "segmented", "outline_flagged", "review_flagged",
          "intensity_corrected", "escalated")
_TEXTS = ("method", "warnings", "spacing_source", "model_versions", "uncorrected_class",
          "quality_flags")
_INTS = ("frame", "n_frames")


def default_url(data_dir: Path | None = None) -> str:
    """Return the database URL used when none is given.

    Precedence: ``data_dir`` argument, ``NEUROSTACK_DB_URL``,
    ``NEUROSTACK_DATA_DIR``, ``./data``.
    """
    if data_dir is None:
        env_url = os.environ.get(ENV_DB_URL)
        if env_url:
            return env_url
        data_dir = Path(os.environ.get(ENV_DATA_DIR) or "data")
    return f"sqlite:///{Path(data_dir) / DB_FILE_NAME}"


def _is_busy(exc: OperationalError) -> bool:
    text = str(exc.orig if exc.orig is not None else exc).lower()
    return "locked" in text or "busy" in text


def _missing(value: Any) -> bool:
    """``None``, NaN, ``pd.NA``/``NaT`` or blank text."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # array-likes
        return False


def _clean_float(value: Any) -> float | None:
    if _missing(value):
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def _clean_int(value: Any) -> int | None:
    number = _clean_float(value)
    return None if number is None else int(round(number))


def _clean_bool(value: Any) -> bool | None:
    if _missing(value):
        return None
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ValueError(f"not a boolean: {value!r}")
    return bool(value)


def _json_value(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    if _missing(value) and not isinstance(value, str):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _utc_naive(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    moment = value
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def _to_row(result: CaseResult | Mapping[str, Any]) -> dict[str, Any]:
    """Map a result (or its ``to_record()`` dict) onto the whitelisted columns."""
    if isinstance(result, CaseResult):
        rec: dict[str, Any] = result.to_record()
        per_model = {m: dict(p) for m, p in result.per_model.items()}
        morph = dict(result.morphology or {})
        if result.spacing_cm is not None:
            rec.setdefault("row_spacing_cm", result.spacing_cm[0])
            rec.setdefault("col_spacing_cm", result.spacing_cm[1])
    elif isinstance(result, Mapping):
        rec = {RENAMED_FEATURES.get(k, k): v for k, v in result.items()}
        extra = rec.get("extra_json")  # a batch row keeps keys outside its header here
        if isinstance(extra, str) and extra.strip():
            try:
                more = json.loads(extra)
            except ValueError:
                more = None
            if isinstance(more, dict):
                rec = {**{k: v for k, v in more.items() if k in _INTS + _BOOLS + _TEXTS
                          + _FLOATS}, **rec}
        per_model = {}
        for key, value in rec.items():
            if key.startswith("ensemble_"):
                continue
            for c in CLASS_NAMES:
                if key.endswith(f"_{c}") and len(key) > len(c) + 1:
                    per_model.setdefault(key[: -len(c) - 1], {})[c] = value
        morph = (
            {k: rec[k] for k in FEATURE_UNITS if k in rec}
            if _clean_bool(rec.get("segmented")) else {}
        )
    else:
        raise TypeError(f"expected a CaseResult or a dict, got {type(result).__name__}")
    for required in ("image_sha256", "predicted_class", "confidence"):
        if rec.get(required) in (None, ""):
            raise ValueError(f"a case needs {required!r}")
    if rec["predicted_class"] not in CLASS_NAMES:
        raise ValueError(f"unknown predicted_class {rec['predicted_class']!r}")
    morph = {k: _json_value(v) for k, v in morph.items() if k in FEATURE_UNITS}
    row: dict[str, Any] = {
        "created_utc": _utc_naive(rec["created_utc"]) if rec.get("created_utc")
        else datetime.now(timezone.utc).replace(tzinfo=None),
        "image_sha256": str(rec["image_sha256"])[:64],
        "predicted_class": str(rec["predicted_class"]),
        "height_px_image": _clean_int(rec.get("height_px_image")),
        "width_px_image": _clean_int(rec.get("width_px_image")),
        "app_version": str(rec.get("app_version") or __version__)[:32],
        "per_model_json": json.dumps(
            {m: {c: _clean_float(p.get(c)) for c in CLASS_NAMES} for m, p in per_model.items()}
        ),
        "morphology_json": json.dumps(morph) if morph else None,
    }
    for key in _FLOATS:
        row[key] = _clean_float(rec.get(key))
    for key in _BOOLS:
        row[key] = _clean_bool(rec.get(key))
    row["tumor_found"] = bool(row["tumor_found"])
    row["segmented"] = bool(row["segmented"])
    for key in _TEXTS:
        row[key] = None if _missing(rec.get(key)) else str(rec[key])
    for key in _INTS:
        row[key] = _clean_int(rec.get(key))
    for c in CLASS_NAMES:
        row[f"ensemble_{c}"] = _clean_float(rec.get(f"ensemble_{c}"))
    for f in FEATURE_COLUMNS:
        row[f] = (_clean_int if f in _INT_FEATURES else _clean_float)(morph.get(f))
    if row["confidence"] is None:
        raise ValueError("a case needs a finite 'confidence'")
    return row


class CaseStore:
    """Identifier-free store of analysed cases (SQLAlchemy 2 Core).

    Args:
        url: Any SQLAlchemy URL; default :func:`default_url`.
        data_dir: Folder of the default SQLite file (created when missing).
        retries: Attempts of one write while SQLite reports "database is locked".
        busy_timeout_s: SQLite busy timeout of each connection.
    """

    def __init__(self, url: str | None = None, *, data_dir: Path | None = None,
                 retries: int = 10, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.retries = max(1, int(retries))
        parsed = make_url(url if url is not None else default_url(data_dir))
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.path: Path | None = None
        kwargs: dict[str, Any] = {}
        memory = False
        if self.is_sqlite:
            database = parsed.database or ""
            memory = database in ("", ":memory:") or "mode=memory" in str(parsed)
            if memory:
                kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
            else:
                self.path = Path(database)
                self.path.parent.mkdir(parents=True, exist_ok=True)
                kwargs["connect_args"] = {"timeout": busy_timeout_s, "check_same_thread": False}
        self.engine: Engine = sa.create_engine(parsed, **kwargs)
        if self.is_sqlite:
            _install_sqlite_hooks(self.engine, busy_timeout_s, wal=not memory)
        self._writer = self.engine.execution_options(neurostack_write=True)
        self._retry(self._init_schema)

    # ----------------------------------------------------------------- plumbing
    @property
    def url(self) -> str:
        """The database URL with any password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    def _retry(self, fn: Callable[[], _T]) -> _T:
        delay = 0.02
        for attempt in range(self.retries):
            try:
                return fn()
            except OperationalError as exc:
                if not _is_busy(exc) or attempt == self.retries - 1:
                    raise
            time.sleep(delay * (1.0 + random.random()))
            delay = min(delay * 2.0, 1.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def _init_schema(self) -> None:
        with self._writer.begin() as conn:
            metadata.create_all(conn)
            found = conn.execute(
                sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
            ).scalar_one_or_none()
            if found is None:
                try:
                    with conn.begin_nested():
                        conn.execute(meta_table.insert().values(
                            key="schema_version", value=str(SCHEMA_VERSION)))
                except IntegrityError:  # another writer got there first
                    pass
            elif int(found) > SCHEMA_VERSION:
                raise RuntimeError(
                    f"The case database has schema version {found}; this NeuroStack "
                    f"supports up to {SCHEMA_VERSION}. Upgrade NeuroStack."
                )
            else:  # older layout: add what later versions added, in one transaction
                for version in range(int(found) + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS.get(version, ()):
                        conn.execute(sa.text(statement))
                if int(found) < SCHEMA_VERSION:
                    conn.execute(meta_table.update()
                                 .where(meta_table.c.key == "schema_version")
                                 .values(value=str(SCHEMA_VERSION)))

    @property
    def schema_version(self) -> int:
        """Schema version recorded in the database."""
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
            ).scalar_one()
        return int(value)

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> CaseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- writes
    def add(self, result: CaseResult | Mapping[str, Any]) -> int:
        """Store one case; returns its id.

        Args:
            result: A :class:`CaseResult`, or its ``to_record()`` dict (e.g. a row of
                a batch CSV); only whitelisted keys are read.

        Raises:
            ValueError: If the case lacks ``image_sha256``, ``predicted_class`` or
                ``confidence``, or a value has the wrong type.
        """
        return self.add_many([result])[0]

    def add_many(self, results: Iterable[CaseResult | Mapping[str, Any]]) -> list[int]:
        """Store several cases in one transaction (all or none); returns their ids."""
        rows = [_to_row(r) for r in results]
        if not rows:
            return []

        def write() -> list[int]:
            with self._writer.begin() as conn:
                return [int(conn.execute(cases_table.insert().values(**row))
                            .inserted_primary_key[0]) for row in rows]

        return self._retry(write)

    def delete(self, ids: Iterable[int]) -> int:
        """Delete cases by id; returns how many were deleted."""
        id_list = [int(i) for i in ids]
        if not id_list:
            return 0

        def write() -> int:
            with self._writer.begin() as conn:
                return int(conn.execute(
                    cases_table.delete().where(cases_table.c.id.in_(id_list))).rowcount)

        return self._retry(write)

    # ----------------------------------------------------------------- reads
    def count(self) -> int:
        """Return the number of stored cases."""
        with self.engine.connect() as conn:
            return int(conn.execute(
                sa.select(sa.func.count()).select_from(cases_table)).scalar_one())

    def to_frame(
        self,
        class_in: Iterable[str] | None = None,
        min_confidence: float | None = None,
        tumor_only: bool = False,
        since: datetime | str | None = None,
        order_by: str = "created_utc",
        descending: bool = True,
        limit: int | None = None,
        hide_uncertain_outlines: bool = False,
        hide_review_flagged: bool = False,
    ) -> pd.DataFrame:
        """Cases as a DataFrame, morphology and per-model probabilities expanded to columns.

        Args:
            class_in: Keep only these predicted classes.
            min_confidence: Keep cases with at least this ensemble confidence.
            tumor_only: Keep only cases where a tumour was predicted.
            since: Keep cases created at or after this time (naive = UTC; ISO text allowed).
            order_by: A column of the ``cases`` table.
            descending: Sort order (ties broken by id in the same direction).
            limit: At most this many rows.
            hide_uncertain_outlines: Leave out cases whose outline the confidence flag
                marked (``outline_flagged`` true); unflagged and unknown ones stay.
            hide_review_flagged: Leave out cases whose classification was flagged for
                review (``review_flagged`` true); unflagged and unknown ones stay.

        Returns:
            One row per case; ``created_utc`` is timezone-aware UTC.

        Raises:
            ValueError: For an unknown ``order_by`` column.
        """
        if order_by not in cases_table.c:
            raise ValueError(f"order_by must be a column of 'cases'; received {order_by!r}")
        stmt = sa.select(cases_table)
        if class_in is not None:
            stmt = stmt.where(cases_table.c.predicted_class.in_(list(class_in)))
        if min_confidence is not None:
            stmt = stmt.where(cases_table.c.confidence >= float(min_confidence))
        if tumor_only:
            stmt = stmt.where(cases_table.c.tumor_found.is_(True))
        if since is not None:
            stmt = stmt.where(cases_table.c.created_utc >= _utc_naive(since))
        if hide_uncertain_outlines:
            flag = cases_table.c.outline_flagged
            stmt = stmt.where(sa.or_(flag.is_(None), flag.is_(False)))
        if hide_review_flagged:
            flag = cases_table.c.review_flagged
            stmt = stmt.where(sa.or_(flag.is_(None), flag.is_(False)))
        col, tie = cases_table.c[order_by], cases_table.c.id
        stmt = stmt.order_by(*((col.desc(), tie.desc()) if descending else (col.asc(), tie.asc())))
        if limit is not None:
            stmt = stmt.limit(int(limit))
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(stmt).mappings()]
        df = pd.DataFrame(rows, columns=[c.name for c in cases_table.columns])
        df["created_utc"] = pd.to_datetime(df["created_utc"], utc=True)
        extra: list[dict[str, Any]] = []
        for row in rows:
            morph_text, model_text = row["morphology_json"], row["per_model_json"]
            flat = {RENAMED_FEATURES.get(k, k): v
                    for k, v in (json.loads(morph_text) if morph_text else {}).items()}
            for model, probs in (json.loads(model_text) if model_text else {}).items():
                flat.update({f"{model}_{c}": p for c, p in probs.items()})
            extra.append(flat)
        df = df.drop(columns=["morphology_json", "per_model_json"])
        if extra:
            more = pd.DataFrame(extra, index=df.index)
            more = more[[c for c in more.columns if c not in df.columns]]
            df = pd.concat([df, more], axis=1)
        return df


def _install_sqlite_hooks(engine: Engine, busy_timeout_s: float, *, wal: bool) -> None:
    """WAL, busy timeout, and ``BEGIN IMMEDIATE`` for writes on every SQLite connection."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy's "begin" hook below issues BEGIN
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            if wal:
                deadline = time.monotonic() + busy_timeout_s
                while True:
                    try:
                        cur.execute("PRAGMA journal_mode = WAL")
                        break
                    except Exception as exc:  # sqlite3.OperationalError: database is locked
                        if "locked" not in str(exc).lower() or time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
                cur.execute("PRAGMA synchronous = FULL")
        finally:
            cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("neurostack_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


__all__ = ["FEATURE_COLUMNS", "SCHEMA_VERSION", "CaseStore", "cases_table", "default_url"]
