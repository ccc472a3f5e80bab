"""compare_predictions: known answers on hand-made tables, and refusal of mismatched ones."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.compare_predictions import compare_tables, main


def _table(probs: dict[str, list[list[float]]], labels: list[str]) -> pd.DataFrame:
    data: dict[str, list] = {"path": [f"{i}.jpg" for i in range(len(labels))], "label": labels}
    classes = ["glioma", "meningioma", "notumor", "pituitary"]
    for model, rows in probs.items():
        for j, c in enumerate(classes):
            data[f"{model}_{c}"] = [r[j] for r in rows]
    return pd.DataFrame(data)


G, M, N = [0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1]


def test_known_answers_and_exit_codes(tmp_path: Path) -> None:
    labels = ["glioma", "meningioma", "notumor"]
    a = _table({"resnet50": [G, M, N], "ensemble": [G, M, M]}, labels)
    b = _table({"resnet50": [G, M, [0.1, 0.1, 0.69, 0.11]], "ensemble": [G, M, N]}, labels)
    out = compare_tables(a, b)
    r = out["models"]["resnet50"]
    assert out["n_images"] == 3
    assert r["accuracy_a"] == r["accuracy_b"] == 1.0 and r["agreement"] == 1.0
    assert r["max_abs_probability_difference"] == pytest.approx(0.01)
    e = out["models"]["ensemble"]
    assert e["accuracy_a"] == pytest.approx(2 / 3, abs=1e-6) and e["accuracy_b"] == 1.0
    assert e["agreement"] == pytest.approx(2 / 3, abs=1e-6)

    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    report = tmp_path / "r.json"
    assert main([str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--json", str(report)]) == 1
    assert json.loads(report.read_text())["verdict"] == "changed"
    assert main([str(tmp_path / "a.csv"), str(tmp_path / "a.csv")]) == 0


def test_mismatched_tables_are_refused() -> None:
    a = _table({"resnet50": [G, M]}, ["glioma", "meningioma"])
    with pytest.raises(ValueError, match="same image paths"):
        compare_tables(a, a.iloc[::-1].reset_index(drop=True))
    with pytest.raises(ValueError, match="share no model"):
        compare_tables(a, a[["path", "label"]])
