"""Function-preserving widening of a Res-UNet (segmentation.widen)."""

from __future__ import annotations

import numpy as np
import pytest

from segmentation.model import build_resunet
from segmentation.widen import main, resunet_architecture, widen_resunet


def _trained_looking(seed: int, dropout: float):
    """A small Res-UNet whose batch-norm parameters and statistics are not the defaults."""
    import keras

    keras.utils.set_random_seed(seed)
    model = build_resunet(input_size=32, base_filters=3, depth=3, dropout=dropout)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    gamma + rng.normal(0, 0.3, gamma.shape).astype(np.float32),
                    beta + rng.normal(0, 0.3, beta.shape).astype(np.float32),
                    mean + rng.normal(0, 0.3, mean.shape).astype(np.float32),
                    var + rng.uniform(0.1, 1.0, var.shape).astype(np.float32),
                ]
            )
    return model


def _images(n: int = 3) -> np.ndarray:
    return np.random.default_rng(7).random((n, 32, 32, 1)).astype(np.float32)


def test_architecture_is_read_back_from_the_model(float32_policy):
    model = build_resunet(input_size=64, base_filters=5, depth=3, dropout=0.25, bn_momentum=0.8)
    assert resunet_architecture(model) == {
        "input_size": 64,
        "base_filters": 5,
        "depth": 3,
        "dropout": 0.25,
        "bn_momentum": pytest.approx(0.8),
        "mirror_input": False,
    }
    assert resunet_architecture(build_resunet(32, 2, 2, mirror_input=True))["mirror_input"]


@pytest.mark.parametrize("base_filters", [4, 7])
def test_wide_model_has_the_same_output_in_inference_mode(float32_policy, base_filters):
    narrow = _trained_looking(seed=1, dropout=0.2)
    wide = widen_resunet(narrow, base_filters)
    assert resunet_architecture(wide)["base_filters"] == base_filters
    assert wide.count_params() > narrow.count_params()
    x = _images()
    expected = np.asarray(narrow(x, training=False))
    assert expected.std() > 1e-3  # a non-trivial output to compare
    np.testing.assert_allclose(np.asarray(wide(x, training=False)), expected, atol=1e-5)


def test_wide_model_has_the_same_output_in_training_mode(float32_policy):
    # Training mode normalises with batch statistics: the old channels must not see the new ones.
    narrow = _trained_looking(seed=2, dropout=0.0)
    wide = widen_resunet(narrow, 5)
    x = _images(4)
    np.testing.assert_allclose(
        np.asarray(wide(x, training=True)), np.asarray(narrow(x, training=True)), atol=1e-5
    )


def test_new_channels_start_random_and_learn(float32_policy):
    import keras
    import tensorflow as tf

    narrow = _trained_looking(seed=3, dropout=0.0)
    wide = widen_resunet(narrow, 6, seed=0)
    kernel = wide.get_layer("enc1_conv2").kernel
    # Old outputs (first 6 of 12) from new inputs (channels 6..11) are zero; new outputs are not.
    assert np.all(np.asarray(kernel)[:, :, 6:, :6] == 0.0)
    assert np.abs(np.asarray(kernel)[:, :, :, 6:]).sum() > 0.0

    x = _images(2)
    y = (x > 0.5).astype(np.float32)
    optimizer = keras.optimizers.SGD(learning_rate=0.1)
    with tf.GradientTape() as tape:
        loss = keras.losses.binary_crossentropy(y, wide(x, training=True))
    grads = tape.gradient(loss, wide.trainable_weights)
    optimizer.apply_gradients(zip(grads, wide.trainable_weights, strict=True))
    assert np.abs(np.asarray(kernel)[:, :, 6:, :6]).max() > 0.0


def test_widening_checks_its_options(float32_policy):
    import keras

    narrow = build_resunet(input_size=32, base_filters=4, depth=2)
    with pytest.raises(ValueError, match="nothing to widen: base_filters 4 and mirror_input"):
        widen_resunet(narrow, 4)
    with pytest.raises(ValueError, match="nothing to widen"):
        widen_resunet(widen_resunet(narrow, mirror_input=True))  # keeps its mirror channel
    with pytest.raises(ValueError, match="received 2"):
        widen_resunet(narrow, 2)
    other = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)], name="mlp")
    with pytest.raises(ValueError, match="expected a Res-UNet.*'mlp'"):
        widen_resunet(other, 8)


def test_cli_widens_an_exported_artifact(float32_policy, tiny_artifact, tmp_path, capsys):
    from neurostack.artifacts import load_weights_compact, sha256_file
    from segmentation.predict import load_segmenter

    out = tmp_path / "wide.npz"
    assert main([str(tiny_artifact), "--base-filters", "6", "--out", str(out)]) == 0
    assert sha256_file(out) in capsys.readouterr().out

    narrow = load_segmenter(tiny_artifact).model
    wide = build_resunet(**{**resunet_architecture(narrow), "base_filters": 6})
    load_weights_compact(wide, out)
    x = _images()
    np.testing.assert_allclose(
        np.asarray(wide(x, training=False)), np.asarray(narrow(x, training=False)), atol=1e-5
    )


def test_cli_reports_bad_input_and_writes_nothing(tiny_artifact, tmp_path, capsys):
    out = tmp_path / "wide.npz"
    assert main([str(tmp_path / "missing"), "--base-filters", "6", "--out", str(out)]) == 2
    assert "error:" in capsys.readouterr().err
    assert main([str(tiny_artifact), "--base-filters", "4", "--out", str(out)]) == 2
    assert "nothing to widen" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("training", [False, True])
def test_mirror_channel_starts_silent(float32_policy, training):
    # The new input channel has zero weights: same output in both modes, wider or not.
    narrow = _trained_looking(seed=4, dropout=0.0)
    x = _images(4)
    expected = np.asarray(narrow(x, training=training))
    for base_filters in (None, 5):
        wide = widen_resunet(narrow, base_filters, mirror_input=True)
        assert resunet_architecture(wide)["mirror_input"]
        assert wide.get_layer("enc0_conv1").kernel.shape[2] == 2
        np.testing.assert_allclose(np.asarray(wide(x, training=training)), expected, atol=1e-5)


def test_mirror_channel_weights_are_zero_then_learn(float32_policy):
    import keras
    import tensorflow as tf

    wide = widen_resunet(_trained_looking(seed=5, dropout=0.0), mirror_input=True)
    kernels = [wide.get_layer(n).kernel for n in ("enc0_conv1", "enc0_proj")]
    assert all(np.all(np.asarray(k)[:, :, 1, :] == 0.0) for k in kernels)
    assert all(np.abs(np.asarray(k)[:, :, 0, :]).sum() > 0.0 for k in kernels)

    x = _images(2)
    y = (x[:, :, ::-1] > 0.5).astype(np.float32)  # a target only the mirror image explains
    optimizer = keras.optimizers.SGD(learning_rate=0.1)
    with tf.GradientTape() as tape:
        loss = keras.losses.binary_crossentropy(y, wide(x, training=True))
    grads = tape.gradient(loss, wide.trainable_weights)
    optimizer.apply_gradients(zip(grads, wide.trainable_weights, strict=True))
    assert np.abs(np.asarray(kernels[0])[:, :, 1, :]).max() > 0.0


def test_cli_adds_the_mirror_channel(float32_policy, tiny_artifact, tmp_path, capsys):
    from neurostack.artifacts import load_weights_compact
    from segmentation.predict import load_segmenter

    out = tmp_path / "mirror.npz"
    assert main([str(tiny_artifact), "--mirror-input", "--out", str(out)]) == 0
    assert "mirror_input True" in capsys.readouterr().out
    narrow = load_segmenter(tiny_artifact).model
    wide = build_resunet(**{**resunet_architecture(narrow), "mirror_input": True})
    load_weights_compact(wide, out)
    x = _images()
    np.testing.assert_allclose(
        np.asarray(wide(x, training=False)), np.asarray(narrow(x, training=False)), atol=1e-5
    )


def test_cli_refuses_an_ensemble_and_says_how_to_widen_a_member(
    float32_policy, tiny_artifact, make_tiny_artifact, tmp_path, capsys
):
    from segmentation.combine import combine_segmenters

    other, _ = make_tiny_artifact(tmp_path / "other", seed=9)
    combine_segmenters([tiny_artifact, other], tmp_path / "ens")
    out = tmp_path / "wide.npz"
    assert main([str(tmp_path / "ens"), "--base-filters", "6", "--out", str(out)]) == 2
    assert "is an ensemble; extract one member first" in capsys.readouterr().err
    assert not out.exists()
