"""Batch-norm re-estimation: known statistics on hand-made batches."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from ensemble.recalibrate import batchnorm_layers, recalibrate_batchnorm


def _bn_model(momentum: float = 0.9) -> keras.Model:
    inp = keras.Input((2, 2, 2))
    x = keras.layers.BatchNormalization(momentum=momentum, name="bn")(inp)
    out = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, out)


def _batch(mean0: float, half_range0: float, mean1: float) -> np.ndarray:
    """(4, 2, 2, 2) batch: channel 0 is mean0 +- half_range0 (variance half_range0**2),
    channel 1 is constant mean1 (variance 0)."""
    x = np.empty((4, 2, 2, 2), np.float32)
    x[..., 0] = mean0 + half_range0 * np.array([1, -1, 1, -1], np.float32)[:, None, None]
    x[..., 1] = mean1
    return x


def test_statistics_are_the_average_over_batches_and_weights_are_kept() -> None:
    model = _bn_model(momentum=0.99)
    bn = model.get_layer("bn")
    bn.gamma.assign([2.0, 3.0])
    bn.beta.assign([0.5, -0.5])
    n = recalibrate_batchnorm(model, [_batch(10.0, 2.0, 1.0), _batch(20.0, 4.0, 3.0)])
    assert n == 2
    np.testing.assert_allclose(bn.moving_mean.numpy(), [15.0, 2.0], rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), [(4.0 + 16.0) / 2, 0.0], atol=1e-4)
    np.testing.assert_allclose(bn.gamma.numpy(), [2.0, 3.0])
    np.testing.assert_allclose(bn.beta.numpy(), [0.5, -0.5])
    assert bn.momentum == 0.99  # restored


def test_a_single_batch_replaces_the_old_statistics_entirely() -> None:
    model = _bn_model()
    bn = model.get_layer("bn")
    bn.moving_mean.assign([100.0, 100.0])
    recalibrate_batchnorm(model, iter([_batch(-3.0, 1.0, 7.0)]))
    np.testing.assert_allclose(bn.moving_mean.numpy(), [-3.0, 7.0], rtol=1e-5)
    # inference now normalises channel 0 of that batch to +-1 (mean -3, variance 1, eps 1e-3)
    out = model.predict(_batch(-3.0, 1.0, 7.0), verbose=0)
    np.testing.assert_allclose(out[:, 0], np.array([1, -1, 1, -1]) / np.sqrt(1.001), rtol=1e-4)


def test_nested_backbones_are_found() -> None:
    inner = _bn_model()
    inp = keras.Input((2, 2, 2))
    outer = keras.Model(inp, keras.layers.Dense(1)(inner(inp)))
    assert len(batchnorm_layers(outer)) == 1
    recalibrate_batchnorm(outer, [_batch(4.0, 1.0, 4.0)])
    np.testing.assert_allclose(inner.get_layer("bn").moving_mean.numpy(), [4.0, 4.0], rtol=1e-5)


def test_models_without_batchnorm_and_empty_input_are_refused() -> None:
    inp = keras.Input((3,))
    plain = keras.Model(inp, keras.layers.Dense(2)(inp), name="plain")
    with pytest.raises(ValueError, match="'plain' has no BatchNormalization"):
        recalibrate_batchnorm(plain, [np.zeros((2, 3), np.float32)])
    model = _bn_model(momentum=0.9)
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_batchnorm(model, [])
    assert model.get_layer("bn").momentum == 0.9


def test_cli_writes_a_recalibrated_artifact_that_loads(
    tiny_artifacts, class_dataset, class_dataset_split, tmp_path, capsys
) -> None:
    """Tiny ResNet50 artifact: scored on the val rows before and after, rewritten with a
    new checksum, its training record extended and its log carried over."""
    import json

    from ensemble.data import list_class_folder
    from ensemble.inference import load_classifier
    from ensemble.recalibrate import main
    from neurostack.artifacts import sha256_file

    df = list_class_folder(class_dataset)
    split = class_dataset_split
    src = tiny_artifacts / "classification" / "resnet50"
    out = tmp_path / "recal" / "resnet50"
    argv = [str(src), "--images", "10", "--out", str(out), "--data-dir", str(class_dataset)]
    argv += ["--split", str(split), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["calibration_images"] == 10 and printed["n_val"] == len(df) // 2
    assert 0.0 <= printed["val_accuracy_after"] <= 1.0
    clf = load_classifier(out)  # checks the new SHA-256
    rec = clf.config["training"]["batchnorm_recalibration"]
    assert rec["images"] == 10 and rec["val_accuracy_after"] == printed["val_accuracy_after"]
    assert sha256_file(out / "weights.npz") != sha256_file(src / "weights.npz")
    assert (out / "training_log.csv").read_text() == (src / "training_log.csv").read_text()
    assert json.loads((out / "recalibration.json").read_text()) == printed


def test_cli_reports_a_broken_artifact_without_writing(tiny_artifacts, tmp_path, capsys) -> None:
    import shutil

    from ensemble.recalibrate import main

    bad = tmp_path / "resnet50"
    shutil.copytree(tiny_artifacts / "classification" / "resnet50", bad)
    raw = bytearray((bad / "weights.npz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (bad / "weights.npz").write_bytes(bytes(raw))
    out = tmp_path / "out"
    assert main([str(bad), "--images", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "weights.npz" in err
    assert not out.exists()
    assert main([str(tmp_path / "nowhere"), "--images", "4"]) == 2
    assert "nowhere" in capsys.readouterr().err
