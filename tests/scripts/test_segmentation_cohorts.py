"""scripts/segmentation_cohorts.py: the table on stdout and in JSON, no identifiers out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import segmentation_cohorts as sc  # noqa: E402


def _tables():
    per_image = pd.DataFrame({"id": ["a", "b", "c"], "label": "glioma", "dice": [0.5, 0.7, 0.9]})
    split = pd.DataFrame({"id": ["a", "b", "c"], "patient_id": ["MRQ7", "MRQ8", "90555"]})
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
    rows = json.loads(out.read_text())
    assert {(r["cohort"], r["label"], r["slices"]) for r in rows} == {
        ("alphanumeric id", "all", 2),
        ("numeric id", "all", 1),
        ("alphanumeric id", "glioma", 2),
        ("numeric id", "glioma", 1),
    }
    split.iloc[:2].to_csv(tmp_path / "split.csv", index=False)  # slice c loses its patient
    assert sc.main(argv) == 2
    assert "1 slices have no patient" in capsys.readouterr().err


def test_contrast_bands_from_the_images_and_an_unreadable_pair(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    per_image, split = _tables()
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(0)
    for sid, tumour in (("a", 100), ("b", 200)):  # a: as bright as the tissue; b: enhancing
        img = np.clip(rng.normal(100, 10, (64, 64)), 30, 170).astype(np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        mask[20:30, 20:30] = 255
        img[mask > 0] = tumour
        Image.fromarray(img).save(data / "images" / f"{sid}.jpg", quality=95)
        Image.fromarray(mask).save(data / "masks" / f"{sid}.png")
    (data / "images" / "c.jpg").write_bytes(b"not a jpeg")  # c: unreadable, left out
    per_image.to_csv(tmp_path / "per_image.csv", index=False)
    split.to_csv(tmp_path / "split.csv", index=False)
    argv = [str(tmp_path / "per_image.csv"), "--split", str(tmp_path / "split.csv"),
            "--contrast-from", str(data)]
    assert sc.main(argv) == 0
    out = capsys.readouterr().out
    assert "1 unreadable slices left out" in out
    bands = out.split("Dice by tumour contrast")[1]
    assert "<= 0" in bands or "0-0.5" in bands  # slice a
    assert "> 1" in bands  # slice b
    for pid in split["patient_id"]:
        assert pid not in out
