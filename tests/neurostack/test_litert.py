"""LiteRT cache and runner: conversion round trip, cache hits, corrupt entries, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neurostack import litert

pytestmark = pytest.mark.skipif(not litert.litert_available(), reason="ai-edge-litert missing")


def _tiny_model(seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(4, activation="softmax")(x)
    return keras.Model(inp, out)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(litert.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "litert"


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(litert.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert litert.cache_dir() == tmp_path / "xdg" / "neurostack" / "litert"
    monkeypatch.setenv(litert.CACHE_ENV, str(tmp_path / "mine"))
    assert litert.cache_dir() == tmp_path / "mine" / "litert"


def test_cache_path_names_the_weights_and_shape(cache: Path) -> None:
    path = litert.cache_path("resnet50", "ab" * 32, (224, 224, 3))
    assert path == cache / f"resnet50-224x224x3-{'ab' * 8}-v{litert.FORMAT_VERSION}.tflite"
    with pytest.raises(ValueError, match="alphanumeric"):
        litert.cache_path("../evil", "ab" * 32, (1,))


@pytest.mark.slow
def test_conversion_round_trip_cache_hit_and_corrupt_entry(cache: Path) -> None:
    model = _tiny_model()
    calls: list[int] = []

    def build():
        calls.append(1)
        return model

    path, built = litert.cached_tflite("tiny", "cd" * 32, (16, 16, 3), build)
    assert built is model and calls == [1] and path.is_file()
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["source_weights_sha256"] == "cd" * 32
    assert record["tflite_sha256"] == litert.sha256_file(path)

    runner = litert.LiteRTRunner(path, num_threads=1)
    assert runner.input_shape == (16, 16, 3)
    rng = np.random.default_rng(0)
    for batch in (1, 3, 1):  # the interpreter is resized both ways
        x = rng.normal(size=(batch, 16, 16, 3)).astype(np.float32)
        got = runner(x)
        want = np.asarray(model(x, training=False))
        assert got.shape == (batch, 4) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-5)

    # a second request is a verified cache hit: nothing is built
    again, built = litert.cached_tflite("tiny", "cd" * 32, (16, 16, 3), build)
    assert again == path and built is None and calls == [1]

    # other weights never reuse the entry
    other, _ = litert.cached_tflite("tiny", "ef" * 32, (16, 16, 3), build)
    assert other != path and calls == [1, 1]

    # a corrupt file is detected by its checksum and rebuilt, not used
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    rebuilt, built = litert.cached_tflite("tiny", "cd" * 32, (16, 16, 3), build)
    assert built is model and calls == [1, 1, 1]
    assert litert.sha256_file(rebuilt) == json.loads(rebuilt.with_suffix(".json").read_text())[
        "tflite_sha256"
    ]

    # a missing sidecar also forces a rebuild
    path.with_suffix(".json").unlink()
    litert.cached_tflite("tiny", "cd" * 32, (16, 16, 3), build)
    assert calls == [1, 1, 1, 1]

    with pytest.raises(ValueError, match=r"expected input \(N, 16, 16, 3\)"):
        runner(np.zeros((1, 8, 8, 3), np.float32))


def _int8_tensors(path: Path) -> int:
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=str(path)).get_tensor_details()
    return sum(d["dtype"] == np.int8 for d in details)


def test_quantized_conversions_run_close_to_float32(tmp_path: Path) -> None:
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(32, activation="relu")(x)  # 65k weights: above the dynamic-range cut-off
    model = keras.Model(inp, keras.layers.Dense(4, activation="softmax")(x))
    rng = np.random.default_rng(1)
    calib = rng.uniform(0, 1, size=(16, 16, 16, 3)).astype(np.float32)
    x_test = rng.uniform(0, 1, size=(8, 16, 16, 3)).astype(np.float32)
    want = np.asarray(model(x_test, training=False))

    paths = {}
    for recipe in litert.QUANTIZATIONS:
        rep = None
        if recipe == "int8":
            rep = lambda: ([calib[i : i + 1]] for i in range(len(calib)))  # noqa: E731
        paths[recipe] = tmp_path / f"{recipe}.tflite"
        digest = litert.convert(model, paths[recipe], quantization=recipe, representative=rep)
        assert digest == litert.sha256_file(paths[recipe])
        got = litert.LiteRTRunner(paths[recipe], num_threads=1)(x_test)
        assert got.shape == (8, 4) and got.dtype == np.float32  # float32 in and out
        np.testing.assert_allclose(got, want, atol=1e-5 if recipe == "none" else 0.05)
    assert _int8_tensors(paths["none"]) == 0
    assert _int8_tensors(paths["dynamic"]) > 0 and _int8_tensors(paths["int8"]) > 0
    # int8 weights take about a quarter of the float32 bytes
    assert paths["dynamic"].stat().st_size < 0.5 * paths["none"].stat().st_size


def test_convert_rejects_unknown_recipe_and_misplaced_calibration(tmp_path: Path) -> None:
    model = _tiny_model()
    with pytest.raises(ValueError, match=r"quantization must be one of .*received 'fp8'"):
        litert.convert(model, tmp_path / "m.tflite", quantization="fp8")
    with pytest.raises(ValueError, match="representative dataset is required"):
        litert.convert(model, tmp_path / "m.tflite", quantization="int8")
    with pytest.raises(ValueError, match="representative dataset is required"):
        litert.convert(model, tmp_path / "m.tflite", representative=lambda: iter([]))
    assert not (tmp_path / "m.tflite").exists()
