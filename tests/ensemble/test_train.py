"""Resumable training of a base classifier, export, and the phase plan."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

import ensemble.train as train_module
from ensemble.data import find_duplicate_groups, list_class_folder, make_split
from ensemble.inference import load_classifier
from ensemble.train import (
    Phase,
    TrainConfig,
    estimated_epoch_s,
    export_model,
    plan_phases,
    train_model,
)


class _Killed(Exception):
    """Stands in for the process being killed."""


@pytest.fixture(autouse=True)
def _float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")  # never leak a policy to other tests


@pytest.fixture(scope="module")
def split_csv(class_dataset: Path, tmp_path_factory) -> Path:
    df = list_class_folder(class_dataset)
    groups, _, _ = find_duplicate_groups(class_dataset, df["path"].tolist())
    split = make_split(df, groups, val_fraction=0.25, test_fraction=0.15, seed=0)
    out = tmp_path_factory.mktemp("split") / "split.csv"
    split.to_csv(out, index=False)
    return out


def _config(class_dataset: Path, split_csv: Path, run_dir: Path, epochs: int) -> TrainConfig:
    # VGG19 at 32 px: the smallest train-step graph of the four (no batch norm), so tracing
    # the train function takes seconds rather than the ~1 min ResNet50 needs on 2 busy cores
    return TrainConfig(
        model="vgg19",
        data_dir=str(class_dataset),
        split_csv=str(split_csv),
        run_dir=str(run_dir),
        phases=[Phase("scratch", 32, epochs, 1e-3, 1, "all")],
        batch_size=8,
        mixed_precision="float32",
        cache_dir=str(run_dir / "cache"),
        seed=3,
    )


@pytest.mark.slow
def test_train_interrupted_then_resumed_then_exported(
    class_dataset: Path, split_csv: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    run_dir = tmp_path / "runs"
    cfg = _config(class_dataset, split_csv, run_dir, epochs=2)
    out = run_dir / "vgg19"

    # first run: killed while writing last.keras at the end of the second epoch, i.e. after
    # that epoch's log row was written but before its state was saved
    real_save = keras.Model.save
    saves = []

    def dying_save(self, *args, **kwargs):
        saves.append(args[0] if args else kwargs.get("filepath"))
        if len(saves) == 2:
            raise _Killed
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", dying_save)
    with pytest.raises(_Killed):
        train_model(cfg)
    monkeypatch.setattr(keras.Model, "save", real_save)
    state = json.loads((out / "state.json").read_text())
    assert state["global_epoch"] == 1 and state["epoch_in_phase"] == 1 and not state["done"]
    assert (out / "last.keras").is_file()

    # without --resume an existing run is refused
    with pytest.raises(FileExistsError, match="--resume"):
        train_model(cfg)

    capsys.readouterr()
    final = train_model(cfg, resume=True)
    assert "resumed phase scratch at epoch 1" in capsys.readouterr().out
    log = pd.read_csv(out / "training_log.csv")
    assert log["epoch"].tolist() == [0, 1]  # exactly one row per epoch, none duplicated
    assert list(log.columns) == [
        "epoch",
        "phase",
        "image_size",
        "lr",
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "seconds",
    ]
    assert (log["phase"] == "scratch").all() and (log["image_size"] == 32).all()
    # warm-up epoch 0 at lr/2, then the cosine schedule at t=0 (the full lr)
    np.testing.assert_allclose(log["lr"], [5e-4, 1e-3], rtol=1e-6)
    state = json.loads((out / "state.json").read_text())
    assert state == final
    assert state["global_epoch"] == 2 and state["done"] and state["phase"] == 1
    assert state["best_epoch"] in (0, 1)
    assert state["best_val_accuracy"] == pytest.approx(log["val_accuracy"].max())
    assert (out / "last.keras").is_file() and (out / "best.weights.h5").is_file()
    assert json.loads((out / "config.json").read_text())["phases"][0]["epochs"] == 2
    assert list((run_dir / "cache").glob("crops_32_*.npy"))  # crops were cached where asked

    # export at the native size and load it back as an artifact
    keras.backend.clear_session()
    dest = export_model(run_dir, "vgg19", tmp_path / "artifact" / "vgg19")
    clf = load_classifier(dest)
    assert clf.input_size == 224 and clf.model.input_shape == (None, 224, 224, 3)
    assert clf.config["training"]["epochs_run"] == 2 and clf.config["training"]["finished"]
    assert (dest / "training_log.csv").read_text() == (out / "training_log.csv").read_text()
    proba = clf.predict([np.full((60, 50), 120, np.uint8)])
    assert proba.shape == (1, 4)
    np.testing.assert_allclose(proba.sum(), 1.0, atol=1e-5)

    # a later session continues from the exported artifact (its run folder is gone):
    # the new export carries the whole history and the summed wall time
    keras.backend.clear_session()
    cont = _config(class_dataset, split_csv, tmp_path / "runs2", epochs=1)
    cont.init_from = str(dest)
    train_model(cont)
    keras.backend.clear_session()
    dest2 = export_model(tmp_path / "runs2", "vgg19", tmp_path / "artifact2" / "vgg19")
    merged = pd.read_csv(dest2 / "training_log.csv")
    assert merged["epoch"].tolist() == [0, 1, 2] and merged["run"].tolist() == [0, 0, 1]
    t2 = json.loads((dest2 / "config.json").read_text())["training"]
    assert t2["continued_from"] == str(dest) and t2["epochs_run"] == 1
    assert t2["epochs_run_total"] == 3
    first_wall = clf.config["training"]["wall_time_s"]
    assert t2["wall_time_s_total"] == pytest.approx(first_wall + t2["wall_time_s"], abs=0.2)


def test_plan_phases_scratch() -> None:
    phases = plan_phases(
        "resnet50",
        weights=None,
        image_size=128,
        epochs=30,
        lr=1e-3,
        warmup_epochs=2,
        native_epochs=0,
    )
    assert phases == [Phase("scratch", 128, 30, 1e-3, 2, "all")]
    assert plan_phases(
        "vgg19",
        weights="none",
        image_size=None,
        epochs=5,
        lr=1e-3,
        warmup_epochs=0,
        native_epochs=3,
    ) == [Phase("scratch", 224, 5, 1e-3, 0, "all")]


def test_plan_phases_imagenet() -> None:
    phases = plan_phases(
        "xception",
        weights="imagenet",
        image_size=None,
        epochs=12,
        lr=1e-3,
        warmup_epochs=2,
        native_epochs=0,
    )
    assert phases == [
        Phase("head", 299, 2, 1e-3, 0, "head"),
        Phase("finetune", 299, 10, 1e-4, 1, "top:0.3"),
    ]
    # a local weights file is treated like ImageNet weights; tiny epoch counts keep one head epoch
    local = plan_phases(
        "xception",
        weights="/x/notop.h5",
        image_size=None,
        epochs=3,
        lr=1e-3,
        warmup_epochs=0,
        native_epochs=0,
    )
    assert [(p.name, p.epochs) for p in local] == [("head", 1), ("finetune", 2)]


def test_plan_phases_native_phase() -> None:
    phases = plan_phases(
        "inceptionv3",
        weights=None,
        image_size=160,
        epochs=20,
        lr=1e-3,
        warmup_epochs=1,
        native_epochs=4,
    )
    assert phases[-1] == Phase("native", 299, 4, 1e-4, 0, "all")
    assert len(phases) == 2
    custom = plan_phases(
        "inceptionv3",
        weights=None,
        image_size=160,
        epochs=20,
        lr=1e-3,
        warmup_epochs=1,
        native_epochs=4,
        native_lr=3e-5,
    )
    assert custom[-1].lr == 3e-5
    with pytest.raises(ValueError, match="backbone must be one of"):
        plan_phases(
            "foo",
            weights=None,
            image_size=None,
            epochs=1,
            lr=1e-3,
            warmup_epochs=0,
            native_epochs=0,
        )


def test_unsaved_and_incomplete_log_rows_are_dropped(tmp_path: Path) -> None:
    from ensemble.train import _drop_unsaved_log_rows

    log = tmp_path / "training_log.csv"
    header = "epoch,phase,loss\n"
    log.write_text(header + "0,scratch,1.5\n1,scratch,1.4\n2,scratch,1.3\n3,scr")
    _drop_unsaved_log_rows(log, 2)  # state.json recorded 2 finished epochs
    assert log.read_text() == header + "0,scratch,1.5\n1,scratch,1.4\n"
    _drop_unsaved_log_rows(log, 2)
    assert log.read_text() == header + "0,scratch,1.5\n1,scratch,1.4\n"  # idempotent
    _drop_unsaved_log_rows(tmp_path / "absent.csv", 3)
    assert not (tmp_path / "absent.csv").exists()


def test_estimated_epoch_s_scales_with_pixels(tmp_path: Path) -> None:
    log = tmp_path / "training_log.csv"
    assert estimated_epoch_s(log, 224) is None
    log.write_text("epoch,phase,image_size,seconds\n0,scratch,128,50.0\n1,scratch,128,100.0\n")
    assert estimated_epoch_s(log, 128) == pytest.approx(100.0)
    assert estimated_epoch_s(log, 256) == pytest.approx(400.0)


@pytest.mark.slow
def test_time_budget_stops_between_epochs_and_resume_finishes(
    class_dataset: Path, split_csv: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import time

    cfg = _config(class_dataset, split_csv, tmp_path / "runs", epochs=2)
    # once an epoch is logged, pretend the next one would take a day
    monkeypatch.setattr(
        train_module, "estimated_epoch_s", lambda log, size: 86400.0 if log.exists() else None
    )
    # and pretend the first epoch collapsed: the trainer rolls back to the best weights
    monkeypatch.setattr(train_module, "has_collapsed", lambda *a: True)
    state = train_model(cfg, deadline=time.time() + 3600)
    assert not state["done"] and state["global_epoch"] == 1
    assert state["rollbacks"] == 1 and state["plateau_scale"] == 0.5
    printed = capsys.readouterr().out
    assert "would overrun the time budget" in printed and "rollback 1" in printed
    monkeypatch.setattr(train_module, "has_collapsed", lambda *a: False)
    assert len(pd.read_csv(tmp_path / "runs" / "vgg19" / "training_log.csv")) == 1
    keras.backend.clear_session()
    final = train_model(cfg, resume=True)
    assert final["done"] and final["global_epoch"] == 2


def test_batch_warmup_factor_ramps_then_holds() -> None:
    from ensemble.train import batch_warmup_factor

    assert [batch_warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert batch_warmup_factor(0, 0) == 1.0


def test_has_collapsed_only_after_learning() -> None:
    from ensemble.train import has_collapsed

    majority = 0.2786
    assert has_collapsed(0.2786, 1.3852, 0.852, majority)  # the InceptionV3 case seen here
    assert not has_collapsed(0.2786, 1.3852, 0.30, majority)  # never learned: early epochs
    assert not has_collapsed(0.60, 1.3852, 0.852, majority)  # a bad epoch, not one class
    assert not has_collapsed(0.2786, 0.90, 0.852, majority)  # training loss still learning


def test_export_with_batchnorm_recalibration_changes_only_moving_statistics(
    class_dataset: Path, split_csv: Path, tmp_path: Path
) -> None:
    """A hand-made run folder (ResNet50, random weights 'trained' at 32 px) exported at 224 px
    with and without re-estimated batch-norm statistics."""
    from dataclasses import asdict

    from ensemble.models import build_classifier
    from neurostack.artifacts import load_weights_compact

    run = tmp_path / "runs" / "resnet50"
    run.mkdir(parents=True)
    cfg = _config(class_dataset, split_csv, tmp_path / "runs", epochs=1)
    cfg.model = "resnet50"
    (run / "config.json").write_text(json.dumps(asdict(cfg)))
    (run / "state.json").write_text(json.dumps({"global_epoch": 1, "done": True}))
    (run / "training_log.csv").write_text(
        "epoch,phase,image_size,lr,loss,accuracy,val_loss,val_accuracy,seconds\n"
        "0,scratch,32,0.001,1.3,0.4,1.3,0.4,1.0\n"
    )
    keras.utils.set_random_seed(0)
    build_classifier("resnet50", input_size=32).save_weights(run / "best.weights.h5")
    plain = export_model(tmp_path / "runs", "resnet50", tmp_path / "plain")
    recal = export_model(tmp_path / "runs", "resnet50", tmp_path / "recal", recalibrate_images=6)
    t = json.loads((recal / "config.json").read_text())["training"]["batchnorm_recalibration"]
    assert t["images"] == 6 and t["input_size"] == 224
    assert (
        json.loads((plain / "config.json").read_text())["training"]["batchnorm_recalibration"]
        is None
    )
    models = []
    for folder in (plain, recal):
        m = build_classifier("resnet50")
        load_weights_compact(m, folder / "weights.npz")
        models.append(m)
    changed = {
        a.path.split("/")[-1]
        for a, b in zip(models[0].weights, models[1].weights, strict=True)
        if not np.array_equal(a.numpy(), b.numpy())
    }
    assert changed == {"moving_mean", "moving_variance"}
    (tmp_path / "runs" / "vgg19").mkdir()
    for f in ("config.json", "state.json"):
        (tmp_path / "runs" / "vgg19" / f).write_text((run / f).read_text())
    build_classifier("vgg19", input_size=32).save_weights(
        tmp_path / "runs" / "vgg19" / "best.weights.h5"
    )
    with pytest.raises(ValueError, match="vgg19 has no batch-norm"):
        export_model(tmp_path / "runs", "vgg19", tmp_path / "v", recalibrate_images=4)
    assert not (tmp_path / "v").exists()  # nothing half-written


def test_noise_options_are_validated_up_front(
    class_dataset: Path, split_csv: Path, tmp_path, capsys
):
    cfg = _config(class_dataset, split_csv, tmp_path, epochs=1)
    with pytest.raises(ValueError, match="aug_noise_sigma must be >= 0; received -1.0"):
        TrainConfig(**{**cfg.__dict__, "aug_noise_sigma": -1.0})
    with pytest.raises(ValueError, match=r"aug_noise_probability must be in \[0, 1\]; received 2"):
        TrainConfig(**{**cfg.__dict__, "aug_noise_probability": 2})
    with pytest.raises(SystemExit) as exc:
        train_module.main(["--models", "vgg19", "--aug-noise-sigma", "-3"])
    assert exc.value.code == 2
    assert "aug_noise_sigma must be >= 0; received -3.0" in capsys.readouterr().err


def test_noise_reaches_training_batches_only() -> None:
    from ensemble.train import make_dataset

    x, y = np.zeros((8, 16, 16), np.uint8), np.arange(8) % 4
    kw = {"mode": "tf", "batch_size": 8, "seed": 0}
    keras.utils.set_random_seed(0)
    plain = next(iter(make_dataset(x, y, train=True, **kw)))[0].numpy()
    np.testing.assert_allclose(plain, -1.0)  # black stays black under the seed augmentation
    noisy = next(iter(make_dataset(x, y, train=True, noise_sigma=30, noise_probability=1, **kw)))
    assert (noisy[0].numpy() > -1.0).mean() > 0.9
    val = next(iter(make_dataset(x, y, train=False, noise_sigma=30, noise_probability=1, **kw)))
    np.testing.assert_allclose(val[0].numpy(), -1.0)


def test_resume_keeps_the_runs_own_noise_recipe(tmp_path: Path, monkeypatch, capsys) -> None:
    run = tmp_path / "runs" / "vgg19"
    run.mkdir(parents=True)
    (run / "state.json").write_text(json.dumps({"done": False}))
    phases = [{"name": "scratch", "image_size": 32, "epochs": 3, "lr": 1e-3}]
    old = {"phases": phases, "aug_noise_sigma": 12.0, "aug_noise_probability": 0.25}
    (run / "config.json").write_text(json.dumps(old))
    seen = []
    monkeypatch.setattr(train_module, "train_model", lambda cfg, **kw: seen.append(cfg) or {})
    argv = ["--models", "vgg19", "--run-dir", str(tmp_path / "runs"), "--resume"]
    train_module.main(argv)
    assert (seen[0].aug_noise_sigma, seen[0].aug_noise_probability) == (12.0, 0.25)
    assert seen[0].phases[0].epochs == 3
    assert "resuming with the run's aug_noise_sigma=12.0 (given: 0.0)" in capsys.readouterr().out
