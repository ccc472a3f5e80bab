"""Resumable robustness runs: one table row per slice and condition, appended per condition.

Shared by ``python -m ensemble.robustness`` and ``python -m segmentation.robustness``:
each condition (see :func:`neurostack.corrupt.conditions`) is computed in full and
appended to a CSV, so an interrupted run loses at most the condition in progress,
and ``--resume`` continues it after checking that settings and weights match.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

RESULTS_FILE = "per_slice.csv"
RECORD_FILE = "metrics.json"


def open_run(out_dir: Path, settings: dict[str, Any], resume: bool) -> dict[str, Any]:
    """Prepare ``out_dir`` for a run with ``settings``; return the stored record (``{}`` if new).

    Raises:
        FileExistsError: If results exist and ``resume`` is false.
        ValueError: If the stored run used other settings.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    results, record = out_dir / RESULTS_FILE, out_dir / RECORD_FILE
    if not results.exists():
        return {}
    if not resume:
        raise FileExistsError(f"{results} exists; pass --resume to continue that run")
    old = json.loads(record.read_text()) if record.exists() else {}
    if old.get("settings") != settings:
        raise ValueError(f"{out_dir} holds a run with other settings: {old.get('settings')}")
    return old


def check_weights(old: dict[str, Any], weights: dict[str, Any], out_dir: Path) -> None:
    """Refuse to resume a run made with other weights (``weights``: name -> SHA-256)."""
    if old and old.get("weights_sha256") != weights:
        raise ValueError(f"{out_dir} was made with other weights; start a new --out")


def run_conditions(
    out_dir: Path,
    todo: list[tuple[str, int]],
    n_slices: int,
    compute: Callable[[str, int], pd.DataFrame],
    *,
    dtype: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Compute every condition of ``todo`` not yet complete in ``out_dir``; return all rows.

    A condition counts as done when the results file holds ``n_slices`` rows of it;
    rows of an incomplete condition (a run killed while writing) are dropped and
    the condition is computed again.

    Args:
        out_dir: Folder of the results file (:data:`RESULTS_FILE`).
        todo: ``(corruption, severity)`` pairs in order.
        n_slices: Rows one condition produces.
        compute: ``(corruption, severity) -> rows`` with ``corruption`` and
            ``severity`` columns.
        dtype: ``pandas.read_csv`` dtypes of the results file (e.g. ids as text).

    Returns:
        Every row of the results file, in the order written.
    """
    results = out_dir / RESULTS_FILE
    if results.exists():
        table = pd.read_csv(results, dtype=dtype)
        counts = table.groupby(["corruption", "severity"]).size()
        complete = {key for key, n in counts.items() if n == n_slices}
        keep = [(c, int(s)) in complete for c, s in zip(table["corruption"], table["severity"],
                                                         strict=True)]
        if not all(keep):
            table[keep].to_csv(results, index=False)
    else:
        complete = set()
    for name, severity in tqdm(todo, desc="conditions", unit="condition"):
        if (name, severity) in complete:
            continue
        rows = compute(name, severity)
        rows.to_csv(results, mode="a", header=not results.exists(), index=False)
    return pd.read_csv(results, dtype=dtype)
