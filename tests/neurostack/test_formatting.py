"""neurostack.formatting: known answers of the probability display."""

from __future__ import annotations

import numpy as np
import pytest

from neurostack.formatting import (
    csv_bytes,
    final_answer_label,
    format_probability,
    format_probability_floor,
    spreadsheet_safe,
)


@pytest.mark.parametrize(("p", "decimals", "text"), [
    (0.81, 1, "81.0%"), (0.5, 0, "50%"), (0.0, 1, "0.0%"), (0.99949, 1, "99.9%"),
    (0.99951, 1, ">99.9%"), (1.0, 1, ">99.9%"), (np.float32(1.0), 2, ">99.99%"),
    (1.0, 0, ">99%"), (0.00049, 1, "<0.1%"), (0.00051, 1, "0.1%"), (1e-9, 2, "<0.01%"),
])
def test_format_probability_never_shows_100_or_0_for_a_model_output(p, decimals, text) -> None:
    assert format_probability(p, decimals) == text


@pytest.mark.parametrize(("p", "decimals"), [(1.01, 1), (-0.1, 1), (float("nan"), 1), (0.5, 5)])
def test_format_probability_rejects_impossible_values(p, decimals) -> None:
    with pytest.raises(ValueError, match="probability|decimals"):
        format_probability(p, decimals)


@pytest.mark.parametrize(("p", "decimals", "text"), [
    (0.19999, 3, "0.199"), (0.2, 3, "0.200"), (0.29, 3, "0.290"), (0.0808, 3, "0.080"),
    (0.000344, 3, "< 0.001"),
    (0.0, 3, "< 0.001"), (1.0, 3, "1.000"), (0.56, 1, "0.5"), (0.04, 1, "< 0.1"),
])
def test_format_probability_floor_never_rounds_up(p, decimals, text) -> None:
    assert format_probability_floor(p, decimals) == text


@pytest.mark.parametrize(("p", "decimals"), [(1.5, 3), (-0.01, 3), (float("inf"), 3), (0.5, 0)])
def test_format_probability_floor_rejects_impossible_values(p, decimals) -> None:
    with pytest.raises(ValueError, match="probability|decimals"):
        format_probability_floor(p, decimals)


def test_format_optional_dashes_missing_figures_and_keeps_counts() -> None:
    from neurostack.formatting import format_optional

    assert format_optional(None) == "—"
    assert format_optional(0.81234) == "0.812" and format_optional(0.81234, 2) == "0.81"
    assert format_optional(27) == "27" and format_optional("x") == "x"


@pytest.mark.parametrize(("text", "safe"), [
    ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"), ("+1.png", "'+1.png"),
    ("-scan.png", "'-scan.png"), ("@cmd", "'@cmd"), ("\tx", "'\tx"),
    ("scan=1.png", "scan=1.png"), ("", ""), ("'=already", "'=already"),
])
def test_spreadsheet_safe_defuses_formula_cells_only(text, safe) -> None:
    assert spreadsheet_safe(text) == safe


def test_csv_bytes_defuses_text_cells_and_keeps_numbers() -> None:
    import io

    import pandas as pd

    frame = pd.DataFrame({"item": ["=1+1.png", "ok.png"], "area_cm2": [-0.5, 1.25],
                          "note": [None, "@x"]})
    back = pd.read_csv(io.BytesIO(csv_bytes(frame)))
    assert back["item"].tolist() == ["'=1+1.png", "ok.png"]
    assert back["area_cm2"].tolist() == [-0.5, 1.25]
    assert back["note"].isna().tolist() == [True, False] and back["note"][1] == "'@x"
    assert frame["item"][0] == "=1+1.png"  # the caller's frame is not changed


def test_final_answer_label_follows_how_the_answer_was_formed() -> None:
    stacked = "meta-learner (stacking); each base model averaged over the slice and its mirror"
    assert final_answer_label(stacked) == "Meta-learner (ensemble)"
    assert final_answer_label(stacked, "Meta") == "Meta"
    fallback = "mean of 3 base model(s); meta-learner not available"
    assert final_answer_label(fallback, "Meta") == "Mean of the base models"
