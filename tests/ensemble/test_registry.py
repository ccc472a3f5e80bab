"""Backbone registry and model builders."""

from __future__ import annotations

import logging
import socket
import urllib.error

import keras
import numpy as np
import pytest

from ensemble import models as models_module
from ensemble.models import (
    IMAGENET_UNAVAILABLE,
    build_classifier,
    build_meta_learner,
    set_batchnorm_momentum,
)
from ensemble.registry import BACKBONES, get_backbone, preprocess_array
from neurostack import CLASS_NAMES

SMALL = {"xception": 71, "inceptionv3": 75, "resnet50": 32, "vgg19": 32}
NATIVE = {"xception": 299, "inceptionv3": 299, "resnet50": 224, "vgg19": 224}
KERAS_MODULE = {
    "xception": keras.applications.xception,
    "inceptionv3": keras.applications.inception_v3,
    "resnet50": keras.applications.resnet50,
    "vgg19": keras.applications.vgg19,
}


@pytest.fixture(scope="session")
def small_classifiers() -> dict[str, keras.Model]:
    """Every registry backbone built once with random weights at its smallest accepted size."""
    keras.utils.set_random_seed(7)
    return {
        name: build_classifier(name, weights=None, input_size=SMALL[name]) for name in BACKBONES
    }


def test_registry_order_and_native_sizes() -> None:
    assert list(BACKBONES) == ["xception", "inceptionv3", "resnet50", "vgg19"]
    assert {n: b.native_size for n, b in BACKBONES.items()} == NATIVE
    assert {n: b.min_size for n, b in BACKBONES.items()} == SMALL


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_gives_softmax_rows(name: str, small_classifiers) -> None:
    model = small_classifiers[name]
    size = SMALL[name]
    assert model.input_shape == (None, size, size, 3)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (3, size, size, 3)).astype(np.float32)
    proba = np.asarray(model(get_backbone(name).preprocess(rgb), training=False))
    assert proba.shape == (3, len(CLASS_NAMES))
    assert proba.dtype == np.float32
    assert np.all(proba >= 0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_gradcam_layer_exists(name: str, small_classifiers) -> None:
    layer = small_classifiers[name].get_layer(get_backbone(name).gradcam_layer)
    assert len(layer.output.shape) == 4  # a spatial feature map


@pytest.mark.parametrize("name", list(BACKBONES))
def test_has_batchnorm_matches_the_built_model(name: str, small_classifiers) -> None:
    from ensemble.recalibrate import batchnorm_layers

    n_bn = len(batchnorm_layers(small_classifiers[name]))
    assert get_backbone(name).has_batchnorm == (n_bn > 0)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_preprocess_matches_keras_applications(name: str) -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (2, 9, 7, 3)).astype(np.float32)
    rgb[0, 0, 0] = (255.0, 0.0, 17.0)  # asymmetric pixel: catches a missing RGB -> BGR flip
    expected = KERAS_MODULE[name].preprocess_input(rgb.copy())
    got = get_backbone(name).preprocess(rgb)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np.asarray(expected), rtol=0, atol=1e-4)
    # and the vectorised function used by inference agrees with it
    np.testing.assert_array_equal(preprocess_array(rgb, get_backbone(name).preprocess_mode), got)


def test_preprocess_known_values() -> None:
    px = np.array([[[0.0, 127.5, 255.0]]], dtype=np.float32)
    np.testing.assert_allclose(preprocess_array(px, "tf"), [[[-1.0, 0.0, 1.0]]])
    # caffe: BGR order minus the ImageNet means (B 103.939, G 116.779, R 123.68)
    np.testing.assert_allclose(
        preprocess_array(px, "caffe"),
        [[[255.0 - 103.939, 127.5 - 116.779, 0.0 - 123.68]]],
        atol=1e-4,
    )
    with pytest.raises(ValueError, match=r"\['caffe', 'tf'\].*'torch'"):
        preprocess_array(px, "torch")


def test_get_backbone_is_case_insensitive_and_names_allowed_values() -> None:
    assert get_backbone("ResNet50") is BACKBONES["resnet50"]
    with pytest.raises(ValueError) as info:
        get_backbone("foo")
    msg = str(info.value)
    assert "'foo'" in msg
    for name in BACKBONES:
        assert name in msg


@pytest.mark.parametrize("name", list(BACKBONES))
def test_too_small_input_size(name: str) -> None:
    with pytest.raises(ValueError, match=f"at least {SMALL[name]}; received {SMALL[name] - 1}"):
        build_classifier(name, input_size=SMALL[name] - 1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"input_size": 224.7}, "whole number of pixels; received 224.7"),
        ({"input_size": True}, "whole number of pixels; received True"),
        ({"head_dropout": (0.3, 1.0)}, r"two rates in \[0, 1\); received \(0.3, 1.0\)"),
        ({"head_dropout": (0.3,)}, r"two rates in \[0, 1\); received \(0.3,\)"),
        ({"head_units": 0}, "positive integer; received 0"),
        ({"head_units": 12.5}, "positive integer; received 12.5"),
        ({"input_size": "abc"}, "whole number of pixels; received 'abc'"),
        ({"input_size": "224"}, "whole number of pixels; received '224'"),
        ({"head_dropout": 0.3}, r"two rates in \[0, 1\); received 0.3"),
        ({"head_dropout": ("a", 0.2)}, r"two rates in \[0, 1\); received \('a', 0.2\)"),
        ({"head_units": "128"}, "positive integer; received '128'"),
    ],
)
def test_builder_options_are_validated_before_building(monkeypatch, options, message) -> None:
    built = []
    monkeypatch.setattr(keras.applications, "VGG19", lambda **kw: built.append(kw))
    with pytest.raises(ValueError, match=message):
        build_classifier("vgg19", **options)
    assert not built  # refused before any backbone was constructed


@pytest.mark.parametrize("name", ["foo", None, 3])
def test_unknown_backbone_in_builder(name) -> None:
    with pytest.raises(ValueError, match=f"backbone must be one of .*; received {name!r}"):
        build_classifier(name)


def test_missing_weights_file(tmp_path) -> None:
    missing = tmp_path / "nope_notop.h5"
    with pytest.raises(ValueError, match="existing file path") as info:
        build_classifier("vgg19", weights=missing, input_size=32)
    assert "nope_notop.h5" in str(info.value)


def test_corrupt_local_weights_file_is_not_swallowed(tmp_path) -> None:
    bad = tmp_path / "bad_notop.h5"
    bad.write_bytes(b"this is not an HDF5 file")
    with pytest.raises(Exception) as info:  # noqa: B017 - keras/h5py choose the type
        build_classifier("vgg19", weights=bad, input_size=32)
    assert not isinstance(info.value, AssertionError)


def test_imagenet_unreachable_falls_back_to_random_init(monkeypatch, caplog) -> None:
    calls = []

    def offline_get_file(fname, origin=None, *args, **kwargs):
        calls.append(fname)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    def no_network(*args, **kwargs):
        raise AssertionError("the test touched the network")

    monkeypatch.setattr("keras.src.utils.file_utils.get_file", offline_get_file)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    caplog.set_level(logging.WARNING, logger=models_module.__name__)
    model = build_classifier("resnet50", weights="imagenet", input_size=32)

    assert calls and calls[0].endswith("_notop.h5")  # the download was attempted (and failed)
    records = [r for r in caplog.records if r.name == models_module.__name__]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert records[0].getMessage() == IMAGENET_UNAVAILABLE.format(name="resnet50", error="URLError")
    assert "randomly initialised" in records[0].getMessage()
    x = get_backbone("resnet50").preprocess(np.full((2, 32, 32, 3), 100.0, np.float32))
    proba = np.asarray(model(x, training=False))
    assert proba.shape == (2, 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)


def test_meta_learner_shapes() -> None:
    meta = build_meta_learner()
    assert meta.input_shape == (None, 16)
    assert meta.output_shape == (None, 4)
    x = (
        np.random.default_rng(0)
        .dirichlet(np.ones(4), size=(5, 4))
        .reshape(5, 16)
        .astype(np.float32)
    )
    proba = np.asarray(meta(x))
    assert proba.shape == (5, 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert build_meta_learner(2, 3).input_shape == (None, 6)
    with pytest.raises(ValueError, match="n_models must be a whole number >= 1.*received 0 and 4"):
        build_meta_learner(0)
    with pytest.raises(ValueError, match="n_classes one >= 2; received 4 and 1"):
        build_meta_learner(4, 1)
    for bad in (2.5, "4", None, True):
        with pytest.raises(ValueError, match=f"received {bad!r} and 4"):
            build_meta_learner(bad)
    assert build_meta_learner(np.int64(2), 3.0).input_shape == (None, 6)


def test_set_batchnorm_momentum_changes_every_bn_layer(small_classifiers) -> None:
    model = small_classifiers["resnet50"]
    bns = [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    before = [bn.momentum for bn in bns]
    assert len(bns) == 53  # ResNet50: 1 stem + 16 blocks x 3 + 4 projection shortcuts
    try:
        assert set_batchnorm_momentum(model, 0.5) == len(bns)
        assert {bn.momentum for bn in bns} == {0.5}
    finally:
        for bn, m in zip(bns, before, strict=True):
            bn.momentum = m
    assert set_batchnorm_momentum(small_classifiers["vgg19"], 0.5) == 0  # VGG has no BN
