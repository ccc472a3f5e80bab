"""``neurostack.robustness``: resumable per-condition runs with a fake computation."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from neurostack.robustness import (
    RECORD_FILE,
    RESULTS_FILE,
    check_weights,
    open_run,
    run_conditions,
)

TODO = [("none", 0), ("blur", 1), ("blur", 2)]


def fake(calls: list):
    def compute(name: str, severity: int) -> pd.DataFrame:
        calls.append((name, severity))
        return pd.DataFrame({"id": ["0001", "0002"], "corruption": name, "severity": severity,
                             "score": [severity, severity + 0.5]})
    return compute


def test_new_run_computes_every_condition_in_order(tmp_path):
    calls = []
    table = run_conditions(tmp_path, TODO, 2, fake(calls), dtype={"id": str})
    assert calls == TODO
    assert list(zip(table["corruption"], table["severity"], strict=True)) == [
        (n, s) for n, s in TODO for _ in range(2)]
    assert list(table["id"][:2]) == ["0001", "0002"]  # ids kept as text


def test_resume_skips_complete_and_redoes_a_half_written_condition(tmp_path):
    run_conditions(tmp_path, TODO, 2, fake([]), dtype={"id": str})
    results = tmp_path / RESULTS_FILE
    full = pd.read_csv(results, dtype={"id": str})
    full.iloc[:-1].to_csv(results, index=False)  # killed while writing blur 2
    calls = []
    table = run_conditions(tmp_path, TODO, 2, fake(calls), dtype={"id": str})
    assert calls == [("blur", 2)]
    pd.testing.assert_frame_equal(table, full)


def test_open_run_guards_existing_results(tmp_path):
    settings = {"seed": 0}
    assert open_run(tmp_path / "new", settings, resume=False) == {}
    assert (tmp_path / "new").is_dir()
    (tmp_path / RESULTS_FILE).write_text("id,corruption,severity\n")
    (tmp_path / RECORD_FILE).write_text(json.dumps({"settings": settings, "x": 1}))
    with pytest.raises(FileExistsError, match="--resume"):
        open_run(tmp_path, settings, resume=False)
    assert open_run(tmp_path, settings, resume=True)["x"] == 1
    with pytest.raises(ValueError, match="other settings"):
        open_run(tmp_path, {"seed": 1}, resume=True)


def test_check_weights_refuses_other_weights(tmp_path):
    check_weights({}, {"a": "1"}, tmp_path)  # a new run: nothing to compare
    check_weights({"weights_sha256": {"a": "1"}}, {"a": "1"}, tmp_path)
    with pytest.raises(ValueError, match="other weights"):
        check_weights({"weights_sha256": {"a": "1"}}, {"a": "2"}, tmp_path)
