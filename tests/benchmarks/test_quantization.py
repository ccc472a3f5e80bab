"""benchmarks/quantization.py on the tiny random artifacts: every recipe, the report, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import quantization
from neurostack.litert import QUANTIZATIONS, litert_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not litert_available(), reason="ai-edge-litert missing"),
]


def test_report_for_one_model_with_a_broken_file(tiny_artifacts: Path, make_dataset_dir,
                                                 tmp_path: Path) -> None:
    data = make_dataset_dir(3, seed=3)
    (data / "glioma" / "broken.png").write_bytes(b"not an image")
    rows = [{"path": p.relative_to(data).as_posix(), "label": p.parent.name, "group": i,
             "split": "train" if i % 2 else "val"}
            for i, p in enumerate(sorted(data.glob("*/*.png")))]
    split = tmp_path / "split.csv"
    pd.DataFrame(rows).to_csv(split, index=False)
    out = tmp_path / "q.json"
    quantization.main(["--artifacts", str(tiny_artifacts), "--data-dir", str(data),
                       "--split-csv", str(split), "--models", "resnet50", "--calibration", "10",
                       "--agreement-limit", "10", "--repeats", "2", "--json", str(out)])
    report = json.loads(out.read_text())
    # limits above the part sizes: every file is read, the broken one is reported, the
    # 12 readable slices are all used
    assert [f["path"] for f in report["failures"]] == ["glioma/broken.png"]
    assert report["calibration_slices"] + report["agreement_slices"] == 12
    recipes = report["models"]["resnet50"]["recipes"]
    assert list(recipes) == list(QUANTIZATIONS)
    # float32 is the reference: compared with itself it agrees exactly
    assert recipes["none"]["agreement"] == 1.0 and recipes["none"]["max_abs_prob_diff"] == 0.0
    assert recipes["none"]["speedup_vs_float32"] == 1.0
    for row in recipes.values():
        assert row["batch2_latency_s"] > 0 and 0.0 <= row["agreement"] <= 1.0
    # int8 weights: the quantised files are much smaller than the float32 one
    assert recipes["dynamic"]["file_mb"] < 0.5 * recipes["none"]["file_mb"]
    assert report["command"].startswith("python benchmarks/quantization.py")


def test_unknown_model_is_refused_before_any_work(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        quantization.main(["--data-dir", str(tmp_path), "--models", "resnet18"])
    err = capsys.readouterr().err
    assert "allowed" in err and "resnet18" in err
