"""Display formatting shared by the pipeline's messages, the pages and the case report."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


def _checked(p: float, decimals: int, lowest: int, highest: int) -> float:
    """``p`` as a float after checking it is a probability and ``decimals`` is in range."""
    if not lowest <= decimals <= highest:
        raise ValueError(f"decimals must be in {lowest}..{highest}; received {decimals!r}")
    p = float(p)
    if not np.isfinite(p) or not 0.0 <= p <= 1.0:
        raise ValueError(f"probability must be a finite number in [0, 1]; received {p!r}")
    return p


def format_probability(p: float, decimals: int = 1) -> str:
    """Format a probability as a percentage that never reads as certainty it does not have.

    A value that would round to 100 % is shown as ``">99.9%"`` and a positive
    value that would round to 0 % as ``"<0.1%"`` (for ``decimals=1``): a
    float32 softmax of 1.0 only means the other classes underflowed.

    Args:
        p: Probability in ``[0, 1]``.
        decimals: Decimal places of the percentage (0-4).

    Raises:
        ValueError: If ``p`` is not a finite number in ``[0, 1]`` or ``decimals``
            is out of range.
    """
    p = _checked(p, decimals, 0, 4)
    step = 10.0 ** -decimals  # smallest shown step, in percent
    percent = 100.0 * p
    if round(percent, decimals) >= 100.0:
        return f">{100.0 - step:.{decimals}f}%"
    if percent > 0.0 and round(percent, decimals) <= 0.0:
        return f"<{step:.{decimals}f}%"
    return f"{percent:.{decimals}f}%"


def format_probability_floor(p: float, decimals: int = 3) -> str:
    """Format a probability as a number rounded down, e.g. for one below a threshold.

    Rounding down never shows a value as reaching a threshold it missed
    (0.19999 -> ``"0.199"``, not ``"0.200"``); a value that rounds down to 0 is
    shown as ``"< 0.001"`` (for ``decimals=3``), never as a hard 0.

    Args:
        p: Probability in ``[0, 1]``.
        decimals: Decimal places (1-6).

    Raises:
        ValueError: If ``p`` is not a finite number in ``[0, 1]`` or ``decimals``
            is out of range.
    """
    p = _checked(p, decimals, 1, 6)
    scale = 10**decimals
    shown = math.floor(p * scale + 1e-9) / scale  # 0.29 * 1000 is 289.99999999999994
    if shown <= 0.0:
        return f"< {1 / scale:.{decimals}f}"
    return f"{shown:.{decimals}f}"


def format_optional(x: object, decimals: int = 3) -> str:
    """Format a figure that may be missing: ``None`` -> ``"—"``, floats to ``decimals``.

    Anything else (counts, text) goes through ``str``.
    """
    if x is None:
        return "—"
    return f"{x:.{decimals}f}" if isinstance(x, float) else str(x)


MEAN_LABEL = "Mean of the base models"
"""Name of the final answer when no meta-learner is loaded (``Ensemble.method`` says so)."""


def final_answer_label(method: str, stacked_label: str = "Meta-learner (ensemble)") -> str:
    """Name the final answer by how it was formed (``CaseResult.method``).

    ``stacked_label`` when a meta-learner gave it, :data:`MEAN_LABEL` when the
    pipeline fell back to the mean of the base models (no meta-learner loaded).
    """
    return MEAN_LABEL if "meta-learner not available" in method else stacked_label


FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet read a CSV cell as a formula."""


def spreadsheet_safe(text: str) -> str:
    """Return ``text`` so that a spreadsheet opening the CSV shows it as text.

    A cell starting with one of :data:`FORMULA_TRIGGERS` (a file named
    ``=HYPERLINK(...).png``, say) is prefixed with an apostrophe, the usual
    defence against CSV formula injection; other text is returned unchanged.
    Numbers are never passed here, so ``-0.5`` in a numeric column stays a number.
    """
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """UTF-8 CSV of ``frame`` (no index) with every text cell :func:`spreadsheet_safe`."""
    def safe(value: object) -> object:
        return spreadsheet_safe(value) if isinstance(value, str) else value

    from pandas.api.types import is_object_dtype, is_string_dtype

    text_columns = [c for c in frame.columns
                    if is_object_dtype(frame[c]) or is_string_dtype(frame[c])]
    out = frame.copy()
    for column in text_columns:
        out[column] = out[column].map(safe)
    return out.to_csv(index=False).encode()
