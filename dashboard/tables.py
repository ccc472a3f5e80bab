"""Tables and downloads the pages show, built without Streamlit (testable directly)."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from morphology import format_record
from neurostack.formatting import csv_bytes
from neurostack.pipeline import CaseResult
from neurostack.report import format_value


def sha_prefix(sha: str | None, n: int = 12) -> str:
    """First ``n`` hex digits of a checksum (``—`` when unknown)."""
    return sha[:n] if sha else "—"


def morphology_frame(record: dict[str, Any]) -> pd.DataFrame:
    """Morphology record as a ``feature / value / unit`` table."""
    rows = [{"feature": name, "value": format_value(value), "unit": unit}
            for name, value, unit in format_record(record)]
    return pd.DataFrame(rows, columns=["feature", "value", "unit"])


def record_downloads(result: CaseResult) -> tuple[bytes, bytes]:
    """``(CSV bytes, JSON bytes)`` of the case's identifier-free record."""
    record = result.to_record()
    csv = csv_bytes(pd.DataFrame([record]))
    js = json.dumps(record, indent=2, default=str).encode()
    return csv, js


def timings_frame(result: CaseResult) -> pd.DataFrame:
    """Stage timings in milliseconds."""
    return pd.DataFrame([{"stage": k, "milliseconds": round(v * 1000, 1)}
                         for k, v in result.timings_s.items()])


def versions_frame(models: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Model name, SHA-256 prefix and input size of every model used."""
    return pd.DataFrame([{"model": k, "weights sha256": sha_prefix(v.get("sha256")),
                          "input size": v.get("input_size")}
                         for k, v in models.items()])


def model_votes(result: CaseResult) -> dict[str, str]:
    """Each base model's top class."""
    return {name: max(probs, key=probs.__getitem__) for name, probs in result.per_model.items()}

