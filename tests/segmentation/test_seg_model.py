from __future__ import annotations

import keras
import numpy as np
import pytest

from segmentation.model import build_resunet


@pytest.mark.parametrize(
    ("size", "depth", "filters"), [(32, 1, 2), (32, 3, 4), (64, 4, 2), (64, 6, 2), (48, 4, 3)]
)
def test_output_shape_and_range(size, depth, filters, float32_policy):
    model = build_resunet(input_size=size, base_filters=filters, depth=depth)
    assert model.input_shape == (None, size, size, 1)
    assert model.output_shape == (None, size, size, 1)
    x = np.random.default_rng(0).random((2, size, size, 1), dtype=np.float32)
    y = np.asarray(model(x))
    assert y.shape == (2, size, size, 1)
    assert y.dtype == np.float32
    assert (y >= 0).all() and (y <= 1).all()


def test_residual_units_and_downsampling(float32_policy):
    depth = 3
    model = build_resunet(input_size=32, base_filters=4, depth=depth)
    adds = [layer for layer in model.layers if isinstance(layer, keras.layers.Add)]
    # depth encoder units + bridge + depth decoder units
    assert len(adds) == 2 * depth + 1
    strided = [
        layer.name
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D) and layer.strides == (2, 2)
    ]
    # stride 2 in the first conv and the projection of encoder units 1..depth-1 and the bridge
    assert sorted(strided) == sorted(
        [f"enc{i}_conv1" for i in range(1, depth)]
        + [f"enc{i}_proj" for i in range(1, depth)]
        + ["bridge_conv1", "bridge_proj"]
    )
    assert not any(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers)
    assert model.get_layer("bridge_add").output.shape[1] == 32 // 2**depth


def test_identity_shortcut_when_shape_unchanged(float32_policy):
    from segmentation.model import _residual_unit

    x = keras.Input((16, 16, 8))
    y = _residual_unit(x, 8, name="same")
    model = keras.Model(x, y)
    names = {layer.name for layer in model.layers}
    assert "same_add" in names
    assert "same_proj" not in names  # identity shortcut
    z = _residual_unit(x, 16, strides=2, name="down")
    names = {layer.name for layer in keras.Model(x, z).layers}
    assert {"down_proj", "down_proj_bn"} <= names  # 1x1 projection + BN
    assert z.shape[1:] == (8, 8, 16)


def test_output_float32_under_mixed_precision():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_resunet(input_size=32, base_filters=2, depth=2)
        y = model(np.zeros((1, 32, 32, 1), np.float32))
        assert keras.backend.standardize_dtype(y.dtype) == "float32"
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_dropout_and_bn_momentum(float32_policy):
    model = build_resunet(input_size=32, base_filters=2, depth=2, dropout=0.3, bn_momentum=0.8)
    assert model.get_layer("bridge_dropout").rate == pytest.approx(0.3)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(layer.momentum == pytest.approx(0.8) for layer in bns)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_size": 100, "depth": 4}, r"divisible by 2\*\*depth = 16.*received input_size=100"),
        ({"depth": 0}, r"depth must be an integer in 1\.\.6; received 0"),
        ({"depth": 7, "input_size": 256}, r"depth must be an integer in 1\.\.6; received 7"),
        ({"base_filters": 0}, r"base_filters must be an integer >= 1; received 0"),
        ({"base_filters": 2.5}, r"base_filters must be an integer >= 1; received 2\.5"),
        ({"input_size": -16}, r"input_size must be a positive integer; received -16"),
        ({"dropout": 1.0}, r"dropout must be a float in \[0, 1\); received 1\.0"),
        ({"bn_momentum": 1.0}, r"bn_momentum must be a float in \(0, 1\); received 1\.0"),
    ],
)
def test_invalid_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_resunet(**kwargs)


def test_mirror_concat_appends_the_left_right_mirror_image():
    from segmentation.model import MirrorConcat

    x = np.arange(12, dtype=np.float32).reshape(1, 2, 3, 2)  # (B, H, W, C)
    y = np.asarray(MirrorConcat()(x))
    assert y.shape == (1, 2, 3, 4)
    np.testing.assert_array_equal(y[..., :2], x)
    # channel C + k at column j is channel k at column W - 1 - j
    np.testing.assert_array_equal(y[0, :, 0, 2:], x[0, :, 2, :])
    np.testing.assert_array_equal(y[0, :, 2, 2:], x[0, :, 0, :])
    np.testing.assert_array_equal(y[0, :, 1, 2:], x[0, :, 1, :])
    assert MirrorConcat().compute_output_shape((None, 8, 8, 1)) == (None, 8, 8, 2)


def test_mirror_input_model(float32_policy):
    model = build_resunet(input_size=32, base_filters=2, depth=2, mirror_input=True)
    assert model.input_shape == (None, 32, 32, 1)
    assert model.get_layer("mirror").output.shape[-1] == 2
    assert model.get_layer("enc0_conv1").kernel.shape == (3, 3, 2, 2)
    plain = build_resunet(input_size=32, base_filters=2, depth=2)
    assert "mirror" not in {layer.name for layer in plain.layers}
    # Mirroring the input swaps the two stem channels, so the stem sees both images either way.
    x = np.random.default_rng(1).random((1, 32, 32, 1), dtype=np.float32)
    stem = keras.Model(model.input, model.get_layer("mirror").output)
    a, b = np.asarray(stem(x)), np.asarray(stem(x[:, :, ::-1].copy()))
    np.testing.assert_array_equal(a[..., 0], b[..., 1])
    np.testing.assert_array_equal(a[..., 1], b[..., 0])
    with pytest.raises(ValueError, match="mirror_input must be True or False; received 'yes'"):
        build_resunet(input_size=32, base_filters=2, depth=2, mirror_input="yes")


def test_ensemble_output_is_the_mean_of_its_member_networks(float32_policy):
    from segmentation.model import build_resunet_ensemble

    archs = [{"input_size": 32, "base_filters": 4, "depth": 2},
             {"input_size": 32, "base_filters": 3, "depth": 2, "mirror_input": True}]
    model = build_resunet_ensemble(archs)
    x = np.random.default_rng(0).random((2, 32, 32, 1)).astype(np.float32)
    members = [model.get_layer(f"member_{i}") for i in range(2)]
    expected = 0.5 * (np.asarray(members[0](x)) + np.asarray(members[1](x)))
    np.testing.assert_allclose(np.asarray(model(x)), expected, atol=1e-6)
    assert model.output.dtype == "float32"
    assert len(model.weights) == len(members[0].weights) + len(members[1].weights)


def test_ensemble_builder_validates_its_options(float32_policy):
    from segmentation.model import build_resunet_ensemble, build_segmenter

    one = {"input_size": 32, "base_filters": 4, "depth": 2}
    with pytest.raises(ValueError, match="at least 2 members; received 1"):
        build_resunet_ensemble([one])
    with pytest.raises(ValueError, match=r"one input_size; received \[32, 64\]"):
        build_resunet_ensemble([one, {**one, "input_size": 64}])
    with pytest.raises(ValueError, match="combine must be one of \\['mean'\\]; received 'max'"):
        build_resunet_ensemble([one, one], combine="max")
    with pytest.raises(ValueError, match="drop their 'name'"):
        build_resunet_ensemble([one, {**one, "name": "x"}])
    with pytest.raises(ValueError, match=r"extra \['input_size'\]"):
        build_segmenter({"members": [one, one], "input_size": 32})
    with pytest.raises(ValueError, match=r"keys must be among \[.*'base_filters'.*\]; "
                                         r"received unknown \['filters'\]"):
        build_segmenter({**one, "filters": 8})
    with pytest.raises(ValueError, match="must be a mapping; received 'resunet'"):
        build_segmenter("resunet")
    assert build_segmenter(one).name == "resunet"
    assert build_segmenter({"members": [one, one]}).name == "resunet_ensemble"
