"""The optimised inference path computes what the plain one does, once traced, from many threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from ensemble.inference import inference_model, load_ensemble


def _crops(n: int, seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        c = np.zeros((60 + 5 * i, 70 - 4 * i), np.uint8)
        c[6:-6, 5:-5] = rng.integers(20, 250, (c.shape[0] - 12, c.shape[1] - 10))
        out.append(c)
    return out


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from neurostack.testing import make_tiny_artifacts

    return make_tiny_artifacts(tmp_path_factory.mktemp("fast_tiny"), with_evaluation=False)


@pytest.fixture(scope="module")
def plain(artifacts: Path):
    """Per-model calls of the models exactly as rebuilt (the pre-optimisation path)."""
    return load_ensemble(artifacts / "classification", fused=False, fold_batchnorm=False)


@pytest.fixture(scope="module")
def fast(artifacts: Path):
    return load_ensemble(artifacts / "classification")


def test_fused_folded_matches_plain_per_model_inference(plain, fast) -> None:
    crops = _crops(3)
    a, b = plain.predict_crops(crops), fast.predict_crops(crops)
    for name in plain.members:
        np.testing.assert_allclose(b.per_model[name], a.per_model[name], rtol=0, atol=1e-5)
    np.testing.assert_allclose(b.ensemble, a.ensemble, rtol=0, atol=1e-5)
    assert b.method == a.method

    # one trace for every batch size, and the per-model API still works
    fast.predict_crops(crops[:1])
    assert fast._fused.experimental_get_tracing_count() == 1
    clf = fast.members["resnet50"]
    np.testing.assert_allclose(clf.predict(crops), a.per_model["resnet50"], atol=1e-5)

    # concurrent callers (dashboard sessions) get the sequential answer
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: fast.predict_crops(crops).ensemble, range(8)))
    for r in results:
        np.testing.assert_array_equal(r, b.ensemble)


def test_bfloat16_is_close_and_outputs_float32(artifacts: Path, fast) -> None:
    bf = load_ensemble(artifacts / "classification", precision="bfloat16")
    crops = _crops(2)
    a, b = fast.predict_crops(crops), bf.predict_crops(crops)
    assert b.ensemble.dtype == np.float32
    np.testing.assert_allclose(b.ensemble.sum(axis=1), 1.0, atol=1e-3)
    for name in fast.members:
        np.testing.assert_allclose(b.per_model[name], a.per_model[name], atol=0.05)
    assert bf.members["vgg19"].precision == "bfloat16"
    with pytest.raises(ValueError, match="precision must be one of"):
        load_ensemble(artifacts / "classification", precision="float16")


def test_per_model_precision_mixes_float32_and_bfloat16(artifacts: Path, fast) -> None:
    mixed = load_ensemble(artifacts / "classification", precision="resnet50=bfloat16")
    assert {n: c.precision for n, c in mixed.members.items()} == {
        "xception": "float32", "inceptionv3": "float32", "resnet50": "bfloat16",
        "vgg19": "float32"}
    crops = _crops(2)
    a, b = fast.predict_crops(crops), mixed.predict_crops(crops)
    for name in ("xception", "inceptionv3", "vgg19"):  # float32 members: the same numbers
        np.testing.assert_allclose(b.per_model[name], a.per_model[name], rtol=0, atol=1e-6)
    np.testing.assert_allclose(b.per_model["resnet50"], a.per_model["resnet50"], atol=0.05)
    assert b.ensemble.dtype == np.float32


@pytest.mark.parametrize(
    ("backbone", "size"), [("xception", 71), ("inceptionv3", 75), ("resnet50", 32)]
)
def test_inference_model_folds_exactly_and_leaves_the_original_untouched(
    backbone: str, size: int
) -> None:
    """SeparableConv2D (Xception), Conv2D without (Inception) and with bias (ResNet)."""
    import keras

    from ensemble.models import build_classifier
    from ensemble.registry import get_backbone

    rng = np.random.default_rng(1)
    model = build_classifier(backbone, input_size=size)
    for layer in model.layers:  # non-trivial statistics, or folding would be near identity
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, w.shape)
                    if "variance" in w.path or "gamma" in w.path
                    else rng.normal(0, 0.2, w.shape)
                    for w in layer.weights
                ]
            )
    before = [np.array(w) for w in model.get_weights()]
    copy = inference_model(model)
    assert len(copy.layers) < len(model.layers)  # BatchNormalization folded away
    for w0, w1 in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(w0, w1)
    feature = get_backbone(backbone).gradcam_layer
    x = rng.uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
    want = np.asarray(keras.Model(model.input, model.get_layer(feature).output)(x))
    got = np.asarray(keras.Model(copy.input, copy.get_layer(feature).output)(x))
    assert np.abs(want).max() > 1e-3
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    np.testing.assert_allclose(np.asarray(copy(x)), np.asarray(model(x, training=False)), atol=1e-5)


@pytest.mark.parametrize(
    ("backbone", "size", "first"),
    [
        ("vgg19", 32, "block1_conv1"),
        ("resnet50", 32, "conv1_conv"),
        ("xception", 71, "block1_conv1"),
    ],
)
def test_bfloat16_recipe_keeps_the_first_convolution_and_outputs_float32(
    backbone: str, size: int, first: str
) -> None:
    """BFLOAT16_RECIPE 2: raw pixels never meet bfloat16; everything else does."""
    import keras

    from ensemble.inference import BFLOAT16_RECIPE
    from ensemble.models import build_classifier

    assert BFLOAT16_RECIPE == 2
    model = build_classifier(backbone, input_size=size)
    copy = inference_model(model, precision="bfloat16")
    weighted = {layer.name: layer.dtype_policy.name for layer in copy.layers if layer.weights}
    assert weighted.pop(first) == "float32"
    assert weighted.pop("probs") == "float32"
    assert set(weighted.values()) == {"bfloat16"}, weighted
    # the first convolution computes exactly what the float32 model computes
    x = np.random.default_rng(2).uniform(-1, 1, (1, size, size, 3)).astype(np.float32)
    want = keras.Model(model.input, model.get_layer(first).output)(x)
    got = keras.Model(copy.input, copy.get_layer(first).output)(x)
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    if backbone == "vgg19":  # the others' first convolution has BatchNorm folded into it
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
