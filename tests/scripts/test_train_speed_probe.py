"""scripts/train_speed_probe.py times a real training step and prediction of the Res-UNet."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import keras
import pytest

_SPEC = importlib.util.spec_from_file_location(
    "train_speed_probe", Path(__file__).resolve().parents[2] / "scripts" / "train_speed_probe.py"
)
train_speed_probe = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(train_speed_probe)


@pytest.mark.slow
def test_resunet_probe_prints_positive_times_per_size(capsys) -> None:
    # Base 16 (the shipped width), not 4: on an AMD EPYC with AVX512_BF16 (2026-12-06),
    # TensorFlow 2.21's oneDNN kernels corrupted the heap ("double free or corruption",
    # abort) training a base-4 or base-8 Res-UNet from NumPy arrays at 48-192 px, while
    # base 16 ran at every size tried (TF_ENABLE_ONEDNN_OPTS=0 also avoided it):
    # PYTHONPATH=. python scripts/train_speed_probe.py resunet 48 --policy float32
    #     --batch-size 2 --batches 1 --base-filters 4 --jit off
    try:
        code = train_speed_probe.main(["resunet", "32,48", "--policy", "float32",
                                       "--batch-size", "2", "--batches", "1",
                                       "--base-filters", "16", "--jit", "off",
                                       "--epoch-images", "10"])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert code == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "resunet" in ln]
    assert [re.search(r" (\d+)px ", ln).group(1) for ln in lines] == ["32", "48"]
    for ln in lines:
        train, infer = (float(v) for v in re.findall(r"(?:train|infer) ([\d.]+) ms/img", ln))
        assert train > 0 and infer > 0
        assert "10-slice epoch" in ln
