"""Head refit on native-size features: hold-out draw, resumable features, fitting, CLI."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from ensemble.refit_head import (
    HeadFitConfig,
    build_tail,
    extract_features,
    feature_extractor,
    fit_head,
    group_holdout,
    head_accuracy,
)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epochs", 0, "epochs must be >= 1; received 0"),
        ("lr", 0.0, "lr must be > 0; received 0.0"),
        ("batch_size", 0, "batch_size must be >= 1; received 0"),
        ("label_smoothing", 1.0, r"label_smoothing must be in \[0, 1\); received 1.0"),
        ("patience", 0, "patience must be >= 1; received 0"),
        ("holdout_fraction", 0.5, r"holdout_fraction must be in \(0, 0.5\); received 0.5"),
    ],
)
def test_config_names_allowed_and_received_values(field: str, value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HeadFitConfig(**{field: value}).check()


def test_holdout_keeps_duplicate_groups_whole_and_draws_per_class() -> None:
    # class 0: groups 0..9 (group 0 has three rows), class 1: groups 10..19
    groups = np.array([0, 0, 0, *range(1, 10), *range(10, 20)])
    labels = np.array([0] * 12 + [1] * 10)
    hold = group_holdout(groups, labels, 0.2, seed=3)
    for g in np.unique(groups):
        assert len(set(hold[groups == g])) == 1  # never split
    held_groups = np.unique(groups[hold])
    assert (held_groups < 10).sum() == 2 and (held_groups >= 10).sum() == 2
    np.testing.assert_array_equal(hold, group_holdout(groups, labels, 0.2, seed=3))
    assert not np.array_equal(hold, group_holdout(groups, labels, 0.2, seed=4))


def test_holdout_leaves_single_group_classes_in_training_and_checks_shapes() -> None:
    hold = group_holdout(np.array([5, 5, 6, 7]), np.array([0, 0, 1, 1]), 0.3, seed=0)
    assert not hold[:2].any() and hold[2:].sum() == 1
    with pytest.raises(ValueError, match="one shape"):
        group_holdout(np.arange(3), np.arange(4), 0.2, seed=0)


def _tiny_classifier(size: int = 8) -> keras.Model:
    inp = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inp)
    x = keras.layers.GlobalMaxPooling2D()(x)
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(inp, _tiny_head(x))


def _tiny_head(x):
    x = keras.layers.Dropout(0.3, name="head_dropout_1")(x)
    x = keras.layers.Dense(128, activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(0.25, name="head_dropout_2")(x)
    return keras.layers.Dense(4, activation="softmax", name="probs")(x)


def test_features_match_the_model_and_resume_from_shards(tmp_path) -> None:
    model = _tiny_classifier()
    crops = np.random.default_rng(0).integers(0, 256, (10, 8, 8), dtype=np.uint8)
    ext = feature_extractor(model)
    feats = extract_features(ext, "tf", crops, batch_size=3, shard_dir=tmp_path, shard_size=4)
    assert feats.shape == (10, 4) and sorted(p.name for p in tmp_path.iterdir()) == [
        "shard_00000.npy",
        "shard_00001.npy",
        "shard_00002.npy",
    ]
    rgb = np.repeat(crops[..., None].astype(np.float32), 3, -1) / 127.5 - 1.0
    np.testing.assert_allclose(feats, ext.predict(rgb, verbose=0), rtol=1e-5, atol=1e-6)
    # the tail (here: the head) on these features reproduces the full model
    np.testing.assert_allclose(
        build_tail(model).predict(feats, verbose=0),
        model.predict(rgb, verbose=0),
        rtol=1e-5,
        atol=1e-6,
    )
    # a finished shard is read back, not recomputed; a short one is recomputed
    np.save(tmp_path / "shard_00001.npy", np.full((4, 4), 7.0, np.float32))
    np.save(tmp_path / "shard_00002.npy", np.zeros((1, 4), np.float32))
    again = extract_features(ext, "tf", crops, shard_dir=tmp_path, shard_size=4)
    np.testing.assert_array_equal(again[4:8], 7.0)
    np.testing.assert_allclose(again[8:], feats[8:], rtol=1e-5, atol=1e-6)


def test_missing_feature_layer_is_an_artifact_error() -> None:
    from neurostack.errors import ArtifactError

    inp = keras.Input((3,))
    with pytest.raises(ArtifactError, match="no 'flatten' layer"):
        feature_extractor(keras.Model(inp, keras.layers.Dense(4)(inp), name="plain"))


def _head(n_features: int) -> keras.Model:
    """A head as in ``build_classifier``, on ``n_features`` pooled inputs."""
    inp = keras.Input((n_features,))
    x = keras.layers.Flatten(name="flatten")(inp)
    model = keras.Model(inp, _tiny_head(x))
    return build_tail(model)


def _separable(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 4, n)
    centres = np.eye(4, 16, dtype=np.float32) * 4.0
    return centres[y] + rng.normal(0, 0.7, (n, 16)).astype(np.float32), y


def test_fit_learns_separable_features_and_keeps_the_best_epoch() -> None:
    rng = np.random.default_rng(0)
    xt, yt = _separable(400, rng)
    xh, yh = _separable(100, rng)
    head = _head(16)
    start = head_accuracy(head, xh, yh)
    log = fit_head(head, xt, yt, xh, yh, HeadFitConfig(epochs=15, lr=3e-3, patience=15))
    assert log[0]["epoch"] == 0 and log[0]["train_loss"] is None
    best = max(log, key=lambda r: (r["holdout_accuracy"], -r["holdout_loss"]))
    assert best["holdout_accuracy"] >= 0.95 > start
    assert head_accuracy(head, xh, yh) == pytest.approx(best["holdout_accuracy"], abs=1e-6)


def test_fit_stops_after_patience_and_falls_back_to_the_start() -> None:
    """Training on shuffled labels only makes a good head worse: epoch 0 is kept."""
    rng = np.random.default_rng(1)
    xt, yt = _separable(200, rng)
    xh, yh = _separable(60, rng)
    head = _head(16)
    fit_head(head, xt, yt, xh, yh, HeadFitConfig(epochs=30, lr=3e-3, patience=30))
    good = [w.copy() for w in head.get_weights()]
    acc = head_accuracy(head, xh, yh)
    assert acc >= 0.95
    noise = rng.permutation(yt)
    log = fit_head(head, xt, noise, xh, yh, HeadFitConfig(epochs=30, lr=5e-2, patience=2))
    assert [r["epoch"] for r in log] == [0, 1, 2]
    assert all(r["holdout_accuracy"] <= log[0]["holdout_accuracy"] for r in log)
    assert all(np.array_equal(a, b) for a, b in zip(head.get_weights(), good, strict=True))
    assert head_accuracy(head, xh, yh) == acc


def test_cli_writes_a_loadable_artifact_with_an_untouched_backbone(
    tiny_artifacts, class_dataset, class_dataset_split, tmp_path, capsys
) -> None:
    from ensemble.data import list_class_folder
    from ensemble.inference import load_classifier
    from ensemble.refit_head import main

    df = list_class_folder(class_dataset)
    split = class_dataset_split
    src = tiny_artifacts / "classification" / "resnet50"
    out = tmp_path / "refit" / "resnet50"
    argv = [str(src), "--out", str(out), "--features-dir", str(tmp_path / "feats")]
    argv += ["--data-dir", str(class_dataset), "--split", str(split), "--epochs", "3"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--holdout-fraction", "0.25"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n_val"] == len(df) // 2
    assert printed["n_train"] + printed["n_holdout"] == len(df) - len(df) // 2
    assert 0.0 <= printed["val_accuracy_refitted_head"] <= 1.0
    before, after = load_classifier(src), load_classifier(out)  # SHA-256 checked
    changed = set()
    for old, new in zip(before.model.layers, after.model.layers, strict=True):
        for a, b in zip(old.get_weights(), new.get_weights(), strict=True):
            if not np.array_equal(a, b):
                changed.add(new.name)
    assert changed <= {"head_dense", "probs"}
    assert after.config["training"]["head_refit"]["best_epoch"] == printed["best_epoch"]
    assert (out / "training_log.csv").read_text() == (src / "training_log.csv").read_text()
    assert json.loads((out / "head_refit.json").read_text()) == printed
    rows = (out / "head_refit_log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,") and 2 <= len(rows) <= 5
    assert (tmp_path / "feats" / f"resnet50_{before.input_size}" / "val").is_dir()


def test_cli_reports_a_bad_option_without_writing(tiny_artifacts, tmp_path, capsys) -> None:
    from ensemble.refit_head import main

    out = tmp_path / "out"
    src = str(tiny_artifacts / "classification" / "resnet50")
    assert main([src, "--out", str(out), "--features-dir", str(tmp_path), "--lr", "-1"]) == 2
    assert "lr must be > 0; received -1.0" in capsys.readouterr().err
    assert not out.exists()


def test_shards_of_other_weights_or_images_are_never_reused(tmp_path) -> None:
    from ensemble.refit_head import features_ident

    model = _tiny_classifier()
    ext = feature_extractor(model)
    crops = np.random.default_rng(2).integers(0, 256, (5, 8, 8), dtype=np.uint8)
    ident = features_ident("ab" * 32, ["a.png", "b.png"])
    assert ident != features_ident("ab" * 32, ["a.png", "c.png"])
    assert ident != features_ident("cd" * 32, ["a.png", "b.png"])
    first = extract_features(ext, "tf", crops, shard_dir=tmp_path / "f", shard_size=2, ident=ident)
    again = extract_features(ext, "tf", crops, shard_dir=tmp_path / "f", shard_size=2, ident=ident)
    np.testing.assert_array_equal(first, again)
    other = features_ident("cd" * 32, ["a.png", "b.png"])
    with pytest.raises(ValueError, match="other weights or another image list"):
        extract_features(ext, "tf", crops, shard_dir=tmp_path / "f", ident=other)
    (tmp_path / "g").mkdir()  # shards but no manifest
    np.save(tmp_path / "g" / "shard_00000.npy", first[:2])
    with pytest.raises(ValueError, match="without a manifest"):
        extract_features(ext, "tf", crops, shard_dir=tmp_path / "g", ident=ident)


def _bn_classifier(size: int = 8) -> keras.Model:
    inp = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, name="conv_a")(inp)
    x = keras.layers.Activation("relu", name="cut")(x)
    x = keras.layers.Conv2D(6, 3, name="conv_b")(x)
    x = keras.layers.BatchNormalization(name="bn_b")(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(inp, _tiny_head(x))


def test_tail_from_a_feature_map_reproduces_the_model_and_freezes_batchnorm() -> None:
    model = _bn_classifier()
    bn = model.get_layer("bn_b")
    bn.set_weights([w + 0.5 for w in bn.get_weights()])  # non-trivial moving statistics
    rng = np.random.default_rng(5)
    crops = rng.integers(0, 256, (12, 8, 8), dtype=np.uint8)
    feats = extract_features(feature_extractor(model, "cut"), "tf", crops)
    assert feats.shape == (12, 6, 6, 4) and feats.dtype == np.float16
    rgb = np.repeat(crops[..., None].astype(np.float32), 3, -1) / 127.5 - 1.0
    tail = build_tail(model, "cut")
    np.testing.assert_allclose(
        tail.predict(feats, verbose=0), model.predict(rgb, verbose=0), atol=2e-3
    )
    assert not bn.trainable
    stats = [w.copy() for w in bn.get_weights()]
    conv = model.get_layer("conv_b").get_weights()[0].copy()
    y = rng.integers(0, 4, 12)
    fit_head(tail, feats, y, feats, y, HeadFitConfig(epochs=3, lr=1e-2, batch_size=4, patience=3))
    assert all(np.array_equal(a, b) for a, b in zip(bn.get_weights(), stats, strict=True))
    assert not np.array_equal(model.get_layer("conv_b").get_weights()[0], conv)  # shared weights
    with pytest.raises(Exception, match="no 'nope' layer"):
        build_tail(model, "nope")


def test_an_interrupted_fit_resumes_after_the_last_saved_epoch(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(6)
    xt, yt = _separable(200, rng)
    xh, yh = _separable(60, rng)
    cfg = HeadFitConfig(epochs=4, lr=3e-3, patience=4)
    head = _head(16)
    start = [w.copy() for w in head.get_weights()]
    calls = []
    real_fit = keras.Model.fit

    def dying_fit(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", dying_fit)
    with pytest.raises(KeyboardInterrupt):
        fit_head(head, xt, yt, xh, yh, cfg, checkpoint=tmp_path / "fit", ident="a")
    with np.load(tmp_path / "fit" / "state.npz") as z:
        saved = json.loads(str(z["state"]))
    assert [r["epoch"] for r in saved["log"]] == [0, 1, 2]

    calls.clear()
    fresh = _head(16)
    fresh.set_weights(start)
    log = fit_head(fresh, xt, yt, xh, yh, cfg, checkpoint=tmp_path / "fit", ident="a")
    assert len(calls) == 2  # epochs 3 and 4 only
    assert [r["epoch"] for r in log] == [0, 1, 2, 3, 4] and log[:3] == saved["log"]
    best = max(log, key=lambda r: (r["holdout_accuracy"], -r["holdout_loss"]))
    assert head_accuracy(fresh, xh, yh) == pytest.approx(best["holdout_accuracy"], abs=1e-6)
    with pytest.raises(ValueError, match="fit of other features or options"):
        fit_head(_head(16), xt, yt, xh, yh, cfg, checkpoint=tmp_path / "fit", ident="b")
    (tmp_path / "fit" / "state.npz").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="state.npz is unreadable"):
        fit_head(_head(16), xt, yt, xh, yh, cfg, checkpoint=tmp_path / "fit", ident="a")


def test_cli_tail_finetune_moves_only_the_last_stage_and_keeps_earlier_records(
    tiny_artifacts, class_dataset, class_dataset_split, tmp_path, capsys
) -> None:
    from ensemble.inference import load_classifier
    from ensemble.refit_head import main

    src = tiny_artifacts / "classification" / "resnet50"
    head_out, tail_out = tmp_path / "head", tmp_path / "tail"
    common = ["--features-dir", str(tmp_path / "feats"), "--data-dir", str(class_dataset)]
    common += ["--split", str(class_dataset_split), "--cache-dir", str(tmp_path / "cache")]
    common += ["--holdout-fraction", "0.25", "--epochs", "2"]
    assert main([str(src), "--out", str(head_out), *common]) == 0
    capsys.readouterr()
    argv = [str(head_out), "--out", str(tail_out), "--from-layer", "conv4_block6_out"]
    assert main([*argv, *common, "--lr", "1e-3", "--batch-size", "4"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["from_layer"] == "conv4_block6_out" and printed["trainable_params"] > 0
    assert json.loads((tail_out / "tail_finetune.json").read_text()) == printed
    assert (tail_out / "head_refit.json").read_text() == (head_out / "head_refit.json").read_text()
    before, after = load_classifier(head_out), load_classifier(tail_out)
    assert {"head_refit", "tail_finetune"} <= set(after.config["training"])
    changed = set()
    for old, new in zip(before.model.layers, after.model.layers, strict=True):
        for a, b in zip(old.get_weights(), new.get_weights(), strict=True):
            if not np.array_equal(a, b):
                changed.add(new.name)
    if printed["best_epoch"] > 0:
        assert changed, "a chosen epoch > 0 must change weights"
    else:
        assert not changed, "epoch 0 keeps the starting weights exactly"
    assert all(n.startswith("conv5_") or n in {"head_dense", "probs"} for n in changed)
    assert not any(n.endswith("_bn") for n in changed)  # batch norm frozen
    feats = tmp_path / "feats" / f"resnet50_{before.input_size}_conv4_block6_out"
    assert (feats / "fit" / "state.npz").is_file() and (feats / "val" / "manifest.json").is_file()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"noise_copies": -1}, "noise_copies must be >= 0; received -1"),
        ({"noise_sigma_min": 5.0, "noise_sigma_max": 4.0}, "received 5.0 and 4.0"),
        ({"noise_sigma_min": -1.0}, "0 <= noise_sigma_min <= noise_sigma_max"),
    ],
)
def test_noise_options_name_the_allowed_and_received_values(fields, message) -> None:
    with pytest.raises(ValueError, match=message):
        HeadFitConfig(**fields).check()


def test_training_noise_is_seeded_per_slice_and_copy_with_sigma_in_range() -> None:
    from ensemble.refit_head import robustness_noise, training_noise
    from neurostack.corrupt import corrupt, slice_seed

    flat = np.full((128, 128), 120, np.uint8)  # far from 0: Rician ~ Gaussian here
    cfg = HeadFitConfig(noise_copies=2, noise_sigma_min=6.0, noise_sigma_max=10.0)
    first = training_noise(cfg, 0)
    a, again = first(flat, "glioma/a.jpg"), first(flat, "glioma/a.jpg")
    np.testing.assert_array_equal(a, again)
    assert not np.array_equal(a, first(flat, "glioma/b.jpg"))
    assert not np.array_equal(a, training_noise(cfg, 1)(flat, "glioma/a.jpg"))
    sds = [
        training_noise(cfg, k)(flat, f"k{j}").astype(float).std() for k in (0, 1) for j in range(8)
    ]
    assert min(sds) > 5.5 and max(sds) < 10.5 and max(sds) - min(sds) > 0.5  # drawn, not fixed
    # the validation check reproduces the robustness run's noisy slices exactly
    expected = corrupt(flat, "rician_noise", 2, slice_seed("x.jpg", "rician_noise", 2, 0))
    np.testing.assert_array_equal(robustness_noise(2)(flat, "x.jpg"), expected)


def test_cli_noise_refit_scores_both_heads_under_noise_and_keeps_earlier_records(
    tiny_artifacts, class_dataset, class_dataset_split, tmp_path, capsys
) -> None:
    from ensemble.data import list_class_folder
    from ensemble.inference import load_classifier
    from ensemble.refit_head import main

    df = list_class_folder(class_dataset)
    src = tiny_artifacts / "classification" / "resnet50"
    first, out = tmp_path / "head", tmp_path / "noise"
    common = ["--data-dir", str(class_dataset), "--split", str(class_dataset_split)]
    common += ["--cache-dir", str(tmp_path / "cache"), "--holdout-fraction", "0.25"]
    common += ["--epochs", "2"]
    argv = [str(src), "--out", str(first), "--features-dir", str(tmp_path / "f0"), *common]
    assert main(argv) == 0
    capsys.readouterr()
    argv = [str(first), "--out", str(out), "--features-dir", str(tmp_path / "feats"), *common]
    assert main([*argv, "--noise-copies", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    n_train = len(df) - len(df) // 2
    assert printed["n_train"] + printed["n_holdout"] == 2 * n_train  # each image + its noisy copy
    assert printed["n_holdout"] % 2 == 0  # a copy sits on its original's side
    noise = printed["val_accuracy_under_noise"]
    assert set(noise) == {"sigma_8", "sigma_16"}
    assert all(0 <= v <= 1 for pair in noise.values() for v in pair.values())
    assert json.loads((out / "head_refit_noise.json").read_text()) == printed
    assert (out / "head_refit.json").read_text() == (first / "head_refit.json").read_text()
    training = load_classifier(out).config["training"]  # SHA-256 checked
    assert "Rician-noised" in training["head_refit_noise"]["features"]
    key = tmp_path / "feats" / f"resnet50_{load_classifier(src).input_size}"
    names = sorted(p.name for p in key.iterdir())
    assert "val_rician_noise_2" in names
    assert any(n.startswith("train_rician_noise_copy0") for n in names)
    assert "fit_rician_noise_x1_sigma2-20_seed0" in names  # its own checkpoint folder
