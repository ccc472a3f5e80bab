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


def test_paired_dice_changes_counts_moves_beyond_the_tolerance():
    out = probe.paired_dice_changes([0.5, 0.8, 0.9, 0.0], [0.5, 0.805, 0.7, 0.3], tolerance=0.01)
    assert out["mean_change"] == pytest.approx((0.005 - 0.2 + 0.3) / 4)
    assert out["max_abs_change"] == pytest.approx(0.3)
    assert (out["n_changed"], out["n_better"], out["n_worse"]) == (2, 1, 1)
    with pytest.raises(ValueError, match="equal length"):
        probe.paired_dice_changes([0.1], [0.1, 0.2])


@pytest.mark.slow
def test_bfloat16_copy_keeps_weights_and_float32_output(tmp_path):
    import keras

    from neurostack.testing import make_tiny_artifacts
    from segmentation.predict import load_segmenter

    root = make_tiny_artifacts(tmp_path / "a", with_evaluation=False)
    seg = load_segmenter(root / "segmentation" / "resunet")
    before = keras.mixed_precision.global_policy().name
    fast = probe.bfloat16_copy(seg)
    assert keras.mixed_precision.global_policy().name == before
    assert fast.model.output.dtype == "float32"
    assert fast.model.layers[1].compute_dtype == "bfloat16"
    for a, b in zip(seg.model.get_weights(), fast.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).random((2, seg.input_size, seg.input_size), dtype=np.float32)
    p32, p16 = seg.predict_crops(x), fast.predict_crops(x)
    assert p16.dtype == np.float32
    assert np.abs(p32 - p16).max() < 0.05
    assert (fast.default_threshold, fast.postprocess, fast.tta) == (
        seg.default_threshold,
        seg.postprocess,
        seg.tta,
    )


def test_agreement_beyond_confidence_counts_only_unflagged_outlines():
    dice = [0.9, 0.1, 0.85, 0.2, 0.0, 0.95]
    confidence = [0.9, 0.9, 0.85, 0.5, None, 0.95]
    agreement = [0.95, 0.6, 0.7, 0.3, 0.0, 0.99]
    out = probe.agreement_beyond_confidence(dice, confidence, agreement, 0.8, cuts=(0.65, 0.8))
    assert out["n_outlines"] == 5 and out["n_unflagged"] == 4 and out["unflagged_poor"] == 1
    assert out["cuts"]["0.65"] == {"poor_caught": 1, "good_flagged": 0}
    assert out["cuts"]["0.8"] == {"poor_caught": 1, "good_flagged": 1}
    # over unflagged outlines the ranks of agreement and Dice agree exactly
    assert out["spearman_unflagged"] == pytest.approx(1.0)
