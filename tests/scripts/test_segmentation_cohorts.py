"""scripts/segmentation_cohorts.py: the table on stdout and in JSON, no identifiers out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import segmentation_cohorts as sc  # noqa: E402


def _tables():
    per_image = pd.DataFrame(
        {
            "id": ["1", "2", "3", "4", "5", "6"],
            "label": ["glioma", "glioma", "glioma", "meningioma", "meningioma", "glioma"],
            "dice": [0.2, 0.4, 0.6, 0.9, 0.7, 0.8],
        }
    )
    split = pd.DataFrame(
        {
            "id": ["1", "2", "3", "4", "5", "6", "7"],
            "patient_id": ["MR1A", "MR1A", "MR2B", "90101", "90102", "90103", "90104"],
        }
    )
    return per_image, split


def test_cli_writes_no_patient_ids_and_rejects_unknown_slices(tmp_path, capsys):
    per_image, split = _tables()
    per_image.to_csv(tmp_path / "per_image.csv", index=False)
    split.to_csv(tmp_path / "split.csv", index=False)
    out = tmp_path / "cohorts.json"
    argv = [str(tmp_path / "per_image.csv"), "--split", str(tmp_path / "split.csv")]
    assert sc.main([*argv, "--json", str(out)]) == 0
    printed = capsys.readouterr().out + out.read_text()
    for pid in split["patient_id"]:
        assert pid not in printed
    assert len(json.loads(out.read_text())) == 5
    split.iloc[:5].to_csv(tmp_path / "split.csv", index=False)  # slice 6 loses its patient
    assert sc.main(argv) == 2
    assert "1 slices have no patient" in capsys.readouterr().err
