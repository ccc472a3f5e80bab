"""Known answers for scripts/segmentation_probe.py's pure helpers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_SPEC = importlib.util.spec_from_file_location(
    "segmentation_probe",
    Path(__file__).resolve().parents[2] / "scripts" / "segmentation_probe.py",
)
probe = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(probe)


def test_component_oracle_picks_the_best_component_with_ground_truth():
    prob = np.zeros((10, 10), np.float32)
    prob[0:2, 0:2] = 0.9  # large confident blob, not the tumour
    prob[0:3, 6:9] = 0.95
    prob[7:9, 7:9] = 0.5  # weaker blob on the tumour
    gt = np.zeros((10, 10), bool)
    gt[7:9, 7:10] = True  # 6 px, 4 of them predicted
    # component on the tumour: Dice 2*4 / (4 + 6) = 0.8
    assert probe.component_oracle([prob], [gt], 0.3) == pytest.approx(0.8)
    # nothing above the threshold: 0 for a slice with a tumour, 1 for an empty one
    empty = np.zeros((10, 10), bool)
    assert probe.component_oracle([prob, prob], [gt, empty], 0.99) == pytest.approx(0.5)


def test_mean_dice_applies_threshold_and_postprocess():
    prob = np.zeros((6, 6), np.float32)
    prob[0:2, 0:2] = 0.9
    prob[4:6, 4:6] = 0.4
    gt = np.zeros((6, 6), bool)
    gt[0:2, 0:2] = True
    assert probe._mean_dice([prob], [gt], 0.5, "none") == pytest.approx(1.0)
    assert probe._mean_dice([prob], [gt], 0.3, "none") == pytest.approx(2 * 4 / (8 + 4))
    assert probe._mean_dice([prob], [gt], 0.3, "largest_component") == pytest.approx(1.0)
