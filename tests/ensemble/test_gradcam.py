"""Grad-CAM heatmaps on the crop grid and on the original image grid."""

from __future__ import annotations

import numpy as np
import pytest

from ensemble.gradcam import gradcam, gradcam_on_image
from neurostack.preprocess import CropBox, find_brain_box


@pytest.fixture(scope="module")
def slice_and_box(make_slice) -> tuple[np.ndarray, CropBox]:
    gray = make_slice("glioma", np.random.default_rng(3), (110, 190))
    return gray, find_brain_box(gray)


@pytest.mark.parametrize("name", ["xception", "resnet50"])
def test_heatmap_on_the_crop_grid(tiny_pipeline, slice_and_box, name: str) -> None:
    gray, box = slice_and_box
    brain = gray[box.row0 : box.row1, box.col0 : box.col1]
    assert brain.shape[0] != brain.shape[1]  # non-square crop: catches (w, h) mix-ups
    heat = gradcam(tiny_pipeline.ensemble.members[name], brain, 0)
    assert heat.shape == brain.shape
    assert heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0 + 1e-6
    if name == "xception":  # 3 x 3 feature map at 71 px: a real map, normalised to peak 1
        assert heat.max() > 0.95 and heat.std() > 0.05


def test_heatmap_on_the_image_grid_is_zero_outside_the_box(tiny_pipeline, slice_and_box) -> None:
    gray, box = slice_and_box
    clf = tiny_pipeline.ensemble.members["xception"]
    assert (box.height, box.width) != gray.shape  # the box is a strict sub-rectangle
    full = gradcam_on_image(clf, gray, box, 1)
    assert full.shape == gray.shape
    inside = np.zeros(gray.shape, bool)
    inside[box.row0 : box.row1, box.col0 : box.col1] = True
    assert not full[~inside].any()
    brain = gray[box.row0 : box.row1, box.col0 : box.col1]
    np.testing.assert_allclose(full[inside].reshape(brain.shape), gradcam(clf, brain, 1), atol=1e-6)


def test_invalid_class_index(tiny_pipeline, slice_and_box) -> None:
    gray, _ = slice_and_box
    with pytest.raises(ValueError, match="class_index must be in 0..3; received 4"):
        gradcam(tiny_pipeline.ensemble.members["resnet50"], gray, 4)
