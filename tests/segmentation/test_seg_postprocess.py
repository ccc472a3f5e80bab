from __future__ import annotations

import numpy as np
import pytest

from segmentation.postprocess import (
    POSTPROCESS_MODES,
    check_postprocess,
    largest_component,
    probability_to_mask,
)


def _two_blobs() -> np.ndarray:
    """A 10x12 map: a 3x3 blob at 0.6 (mass 5.4) and a 2x2 blob at 0.95 (mass 3.8)."""
    p = np.zeros((10, 12), np.float32)
    p[1:4, 1:4] = 0.6
    p[6:8, 8:10] = 0.95
    return p


def test_largest_component_keeps_the_largest_probability_mass():
    p = _two_blobs()
    kept, removed = largest_component(p >= 0.5, p)
    assert removed == 1
    assert kept.sum() == 9 and kept[1:4, 1:4].all() and not kept[6:8, 8:10].any()
    # a denser small blob wins once its mass is larger: 4 x 0.95 > 9 x 0.4
    p[1:4, 1:4] = 0.4
    kept, removed = largest_component(p >= 0.3, p)
    assert removed == 1 and kept.sum() == 4 and kept[6:8, 8:10].all()
    # without probabilities the area decides
    kept, _ = largest_component(p >= 0.3)
    assert kept.sum() == 9


def test_largest_component_uses_8_connectivity_and_leaves_simple_masks_alone():
    diagonal = np.zeros((5, 5), bool)
    diagonal[0, 0] = diagonal[1, 1] = diagonal[2, 2] = True  # one 8-connected component
    kept, removed = largest_component(diagonal)
    assert removed == 0 and np.array_equal(kept, diagonal)
    assert kept is not diagonal  # a new array, the input is not aliased
    empty = np.zeros((4, 4), bool)
    kept, removed = largest_component(empty)
    assert removed == 0 and not kept.any()


def test_largest_component_ties_go_to_the_first_component_in_raster_order():
    m = np.zeros((6, 6), bool)
    m[0:2, 0:2] = True
    m[4:6, 4:6] = True
    kept, removed = largest_component(m)
    assert removed == 1 and kept[0:2, 0:2].all() and not kept[4:6, 4:6].any()


def test_probability_to_mask_modes():
    p = _two_blobs()
    mask, removed = probability_to_mask(p, 0.5, "none")
    assert removed == 0 and np.array_equal(mask, p >= 0.5)
    mask, removed = probability_to_mask(p, 0.5, "largest_component")
    assert removed == 1 and mask.sum() == 9
    mask, removed = probability_to_mask(p, 0.99, "largest_component")  # nothing left
    assert removed == 0 and not mask.any()
    assert set(POSTPROCESS_MODES) == {"none", "largest_component"}


def test_bad_options_raise_value_errors_naming_allowed_values():
    with pytest.raises(ValueError, match=r"\['none', 'largest_component'\].*'biggest'"):
        check_postprocess("biggest")
    with pytest.raises(ValueError, match="postprocess"):
        probability_to_mask(np.zeros((3, 3)), 0.5, "fill")
    with pytest.raises(ValueError, match="2-D"):
        largest_component(np.zeros((2, 3, 3), bool))
    with pytest.raises(ValueError, match="differs"):
        largest_component(np.zeros((3, 3), bool), np.zeros((3, 4)))
