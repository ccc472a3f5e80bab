"""Compact float16 weight files, SHA-256 checks and JSON helpers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from neurostack.artifacts import (
    FEATURES_FILE,
    keep_lineage,
    load_weights_compact,
    merged_training_log,
    read_features_artifact,
    read_json,
    save_weights_compact,
    sha256_file,
    verify_sha256,
    write_features_artifact,
    write_json,
)
from neurostack.errors import ArtifactError


def _model(width: int = 8, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inp = keras.Input((5,))
    x = keras.layers.Dense(width, activation="relu")(inp)
    x = keras.layers.BatchNormalization()(x)
    out = keras.layers.Dense(3, activation="softmax")(x)
    return keras.Model(inp, out)


def test_round_trip_restores_float16_cast_weights(tmp_path: Path) -> None:
    src = _model(seed=0)
    for w in src.weights:  # non-trivial BN statistics too
        w.assign(np.random.default_rng(1).normal(0, 2, w.shape).astype(np.float32) + 1.0)
    path = tmp_path / "sub" / "weights.npz"
    sha = save_weights_compact(src, path)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest() == sha256_file(path)
    with np.load(path) as data:
        assert all(data[f"w{i:04d}"].dtype == np.float16 for i in range(len(src.weights)))
        assert list(data["__names__"]) == [w.path for w in src.weights]

    dest = _model(seed=5)
    load_weights_compact(dest, path)
    for a, b in zip(src.weights, dest.weights, strict=True):
        got = np.asarray(b.numpy())
        assert got.dtype == np.float32
        np.testing.assert_array_equal(
            got, np.asarray(a.numpy()).astype(np.float16).astype(np.float32)
        )
    x = np.random.default_rng(2).normal(size=(4, 5)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(dest(x)), np.asarray(src(x)), atol=2e-2)


def test_integer_weights_keep_their_dtype(tmp_path: Path) -> None:
    class Counter(keras.layers.Layer):
        def build(self, shape):
            self.count = self.add_weight(
                shape=(), dtype="int32", initializer="zeros", trainable=False, name="count"
            )

        def call(self, x):
            return x

    inp = keras.Input((2,))
    model = keras.Model(inp, Counter()(inp))
    model.weights[0].assign(70000)  # beyond float16's range: must not go through float16
    save_weights_compact(model, tmp_path / "w.npz")
    fresh = keras.Model(inp2 := keras.Input((2,)), Counter()(inp2))
    load_weights_compact(fresh, tmp_path / "w.npz")
    assert int(fresh.weights[0].numpy()) == 70000


def test_wrong_architecture(tmp_path: Path) -> None:
    path = tmp_path / "w.npz"
    save_weights_compact(_model(width=8), path)
    with pytest.raises(ArtifactError, match="shape") as info:
        load_weights_compact(_model(width=9), path)  # same count, other shapes
    assert str(path) in str(info.value)
    inp = keras.Input((5,))
    smaller = keras.Model(inp, keras.layers.Dense(3)(inp))
    with pytest.raises(ArtifactError, match="holds 8 weight arrays but the model has 2"):
        load_weights_compact(smaller, path)


def test_failed_load_leaves_the_model_untouched(tmp_path: Path) -> None:
    path = tmp_path / "w.npz"
    save_weights_compact(_model(width=8, seed=0), path)
    target = _model(width=9, seed=3)
    before = [np.asarray(w.numpy()).copy() for w in target.weights]
    with pytest.raises(ArtifactError):
        load_weights_compact(target, path)
    for w, b in zip(target.weights, before, strict=True):
        np.testing.assert_array_equal(np.asarray(w.numpy()), b)


def test_verify_sha256(tmp_path: Path) -> None:
    f = tmp_path / "weights.npz"
    f.write_bytes(b"abc")
    good = hashlib.sha256(b"abc").hexdigest()
    verify_sha256(f, good)
    bad = "0" * 64
    with pytest.raises(ArtifactError) as info:
        verify_sha256(f, bad)
    msg = str(info.value)
    assert msg.startswith(f"Checksum mismatch for {f}: expected SHA-256 {bad}, found {good}.")
    assert "corrupt or was modified" in msg
    with pytest.raises(ArtifactError, match="Missing weight file"):
        verify_sha256(tmp_path / "nope.npz", good)


def test_sha256_file_in_chunks(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    f = tmp_path / "blob"
    f.write_bytes(data)
    assert sha256_file(f, chunk_size=7) == hashlib.sha256(data).hexdigest()


def test_read_and_write_json(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "config.json"
    write_json(target, {"b": [1, 2.5, None], "a": "é"})
    assert read_json(target) == {"b": [1, 2.5, None], "a": "é"}
    assert list(target.parent.iterdir()) == [target]  # no temporary file left behind
    with pytest.raises(ArtifactError, match="Missing file") as info:
        read_json(tmp_path / "missing.json")
    assert str(tmp_path / "missing.json") in str(info.value)
    broken = tmp_path / "broken.json"
    broken.write_text('{"a": 1,')
    with pytest.raises(ArtifactError, match="is not valid JSON") as info:
        read_json(broken)
    assert str(broken) in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\x00\xff\xfe not text")
    with pytest.raises(ArtifactError, match="is not valid JSON"):
        read_json(binary)


def _log(path: Path, epochs: list[int], val: list[float], run: list[int] | None = None) -> None:
    df = pd.DataFrame({"epoch": epochs, "val_accuracy": val})
    if run is not None:
        df.insert(1, "run", run)
    df.to_csv(path, index=False)


def test_merged_training_log_renumbers_and_counts_runs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert merged_training_log(run) is None
    _log(run / "training_log.csv", [0, 1], [0.5, 0.6])
    assert merged_training_log(run)["epoch"].tolist() == [0, 1]  # no lineage: unchanged

    art = tmp_path / "artifact"
    art.mkdir()
    _log(art / "training_log.csv", [0, 1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4, 0.5], [0, 0, 0, 1, 1])
    (art / "config.json").write_text('{"training": {"epochs_run_total": 5}}')
    keep_lineage(art, run)
    # a resumed run must not overwrite the copies with a later (already merged) export
    (art / "training_log.csv").write_text("epoch\n0\n")
    keep_lineage(art, run)
    merged = merged_training_log(run)
    assert merged["epoch"].tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert merged["run"].tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert merged["val_accuracy"].tolist() == [0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.6]


def test_merged_training_log_refuses_a_log_without_epochs(tmp_path: Path) -> None:
    _log(tmp_path / "training_log.csv", [0], [0.5])
    (tmp_path / "previous_log.csv").write_text("loss,acc\n1.0,0.2\n")
    with pytest.raises(ArtifactError, match="previous_log.csv is not a per-epoch training log"):
        merged_training_log(tmp_path)


def test_features_artifact_round_trip_and_refusals(tmp_path: Path) -> None:
    features = np.arange(12, dtype=np.float64).reshape(6, 2) / 7
    folder = write_features_artifact(tmp_path / "ref", features, {"limit": 1.5})
    back, config = read_features_artifact(folder, ("limit",))
    np.testing.assert_array_equal(back, features)  # float64 kept bit for bit
    assert config["limit"] == 1.5 and config["features_file"] == FEATURES_FILE
    assert config["features_sha256"] == sha256_file(folder / FEATURES_FILE)
    with pytest.raises(ArtifactError, match=r"lacks required keys \['k'\]"):
        read_features_artifact(folder, ("limit", "k"))
    with open(folder / FEATURES_FILE, "ab") as fh:
        fh.write(b"x")
    with pytest.raises(ArtifactError, match="SHA-256|sha256|checksum"):
        read_features_artifact(folder, ("limit",))
    with pytest.raises(ArtifactError, match="Missing file"):
        read_features_artifact(tmp_path / "nowhere", ())
