from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from segmentation.train import TrainConfig, export_run, main, train


def _cfg(figshare_like, tmp_path, run="run", **kw) -> TrainConfig:
    base = dict(
        data_dir=str(figshare_like),
        run_dir=str(tmp_path / run),
        image_size=32,
        base_filters=2,
        depth=2,
        epochs=3,
        batch_size=4,
        warmup_epochs=1,
        patience=5,
        split_path=str(tmp_path / "split.csv"),
        cache_dir=str(tmp_path / "cache"),
        mixed_precision="float32",
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.slow
def test_interrupted_and_resumed_run_equals_uninterrupted(figshare_like, tmp_path):
    full = train(_cfg(figshare_like, tmp_path, "full"), verbose="epoch")
    assert full.finished and full.epochs_done == 3

    cfg = _cfg(figshare_like, tmp_path, "cut")
    part = train(cfg, verbose="epoch", max_epochs_this_call=1)
    assert part.epochs_done == 1 and not part.finished
    run = tmp_path / "cut"
    state = json.loads((run / "state.json").read_text())
    assert state["epochs_done"] == 1 and (run / state["last_checkpoint"]).is_file()
    assert (run / "last.keras").is_file() and (run / "best.weights.npz").is_file()
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, verbose="epoch")
    # Simulate a kill -9 in epoch 2: a half-written log row and a stray checkpoint file.
    with open(run / "training_log.csv", "a") as fh:
        fh.write("1,9.9,0.1,9.9,0.1,0.001,1.0\n")
    (run / "checkpoints" / "last_e002.keras").write_bytes(b"partial")
    resumed = train(cfg, resume=True, verbose="epoch")
    assert resumed.finished and resumed.epochs_done == 3

    log_full = pd.read_csv(tmp_path / "full" / "training_log.csv")
    log_cut = pd.read_csv(run / "training_log.csv")
    assert log_cut["epoch"].tolist() == [0, 1, 2]
    cols = ["loss", "dice", "val_loss", "val_dice", "lr"]
    np.testing.assert_allclose(log_cut[cols].to_numpy(), log_full[cols].to_numpy(), rtol=1e-4)
    assert resumed.best_epoch == full.best_epoch
    assert not list(run.glob("*.tmp"))  # no leftovers of the link refresh
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted(
        {resumed.last_checkpoint.split("/")[-1], resumed.best_weights.split("/")[-1]}
    )

    split = pd.read_csv(tmp_path / "split.csv", dtype=str)
    assert split.groupby("patient_id")["split"].nunique().max() == 1

    out = export_run(run, tmp_path / "artifact")
    config = json.loads((out / "config.json").read_text())
    assert config["best_epoch"] == resumed.best_epoch and config["run_finished"] is True
    assert config["split"]["train"]["patients"] > 0
    assert (out / "training_log.csv").is_file()


@pytest.mark.slow
def test_cli_export_only_and_errors(figshare_like, tmp_path, capsys):
    assert main(["--export-only"]) == 2
    assert (
        main(
            ["--run-dir", str(tmp_path / "none"), "--export", str(tmp_path / "a"), "--export-only"]
        )
        == 1
    )
    cfg = _cfg(figshare_like, tmp_path, epochs=1)
    args = [
        "--data-dir",
        cfg.data_dir,
        "--run-dir",
        cfg.run_dir,
        "--image-size",
        "32",
        "--base-filters",
        "2",
        "--depth",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--split",
        cfg.split_path,
        "--cache-dir",
        cfg.cache_dir,
        "--mixed-precision",
        "float32",
        "--verbose",
        "epoch",
        "--export",
        str(tmp_path / "art"),
    ]
    with pytest.raises(SystemExit):  # ranges are checked before anything is written
        main([*args, "--aug-zoom", "1.5"])
    assert "augmentation ranges" in capsys.readouterr().err
    assert not (tmp_path / "art").exists()
    with pytest.raises(SystemExit):
        main([*args, "--aug-noise", "-0.1"])
    assert "augmentation ranges" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--aug-tumour-flatten", "1.5"])
    assert "tumour_flatten" in capsys.readouterr().err
    assert (
        main(
            [*args, "--aug-gamma", "0.3", "--aug-rotation", "15", "--aug-noise", "0.04",
             "--aug-tumour-flatten", "0.5"]
        )
        == 0
    )
    assert (tmp_path / "art" / "weights.npz").is_file()
    recipe = json.loads((tmp_path / "art" / "config.json").read_text())["recipe"]
    assert recipe["augmentation"]["gamma"] == 0.3
    assert recipe["augmentation"]["noise"] == 0.04
    assert recipe["augmentation"]["tumour_flatten"] == 0.5
    assert recipe["augmentation"]["rotation_deg"] == 15.0
    assert recipe["augmentation"]["zoom"] == 0.1  # the default, unchanged
    assert recipe["loss"] == "BCE + soft Dice (smooth 1)"
    assert main(args) == 2  # run exists, no --resume
    assert (
        main(["--run-dir", cfg.run_dir, "--export", str(tmp_path / "art2"), "--export-only"]) == 0
    )
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.slow
def test_init_weights_fine_tune_at_another_size(figshare_like, tmp_path):
    from neurostack.artifacts import load_weights_compact
    from segmentation.model import build_resunet

    first = train(_cfg(figshare_like, tmp_path, "a", epochs=1), verbose="epoch")
    best = tmp_path / "a" / first.best_weights
    cfg = _cfg(figshare_like, tmp_path, "b", epochs=1, image_size=16, init_weights=str(best))
    cfg_check = build_resunet(input_size=16, base_filters=2, depth=2)
    load_weights_compact(cfg_check, best)  # same weight shapes at another input size
    second = train(cfg, verbose="epoch")
    assert second.epochs_done == 1
    config = json.loads((export_run(tmp_path / "b", tmp_path / "art") / "config.json").read_text())
    assert config["recipe"]["init_weights"] == str(best)
    assert config["input_size"] == 16
    assert config["continued_from"] == str(best.parent) and config["epochs_completed_total"] == 1

    # a later session continues from the exported artifact: the history travels with it
    art_a = export_run(tmp_path / "a", tmp_path / "art_a")
    cfg_c = _cfg(figshare_like, tmp_path, "c", epochs=1, init_weights=str(art_a / "weights.npz"))
    train(cfg_c, verbose="epoch")
    art_c = export_run(tmp_path / "c", tmp_path / "art_c")
    merged = pd.read_csv(art_c / "training_log.csv")
    assert merged["epoch"].tolist() == [0, 1] and merged["run"].tolist() == [0, 1]
    config_c = json.loads((art_c / "config.json").read_text())
    assert config_c["epochs_completed_total"] == 2
    first_wall = json.loads((art_a / "config.json").read_text())["wall_time_s"]
    assert config_c["wall_time_s_total"] == pytest.approx(
        first_wall + config_c["wall_time_s"], abs=0.2
    )


@pytest.mark.slow
def test_mirror_input_run_resumes_and_exports(figshare_like, tmp_path):
    from segmentation.predict import load_segmenter

    cfg = _cfg(figshare_like, tmp_path, "m", epochs=2, mirror_input=True)
    assert cfg.architecture()["mirror_input"] is True
    assert train(cfg, verbose="epoch", max_epochs_this_call=1).epochs_done == 1
    resumed = train(cfg, resume=True, verbose="epoch")  # reloads a checkpoint with MirrorConcat
    assert resumed.finished and resumed.epochs_done == 2

    out = export_run(tmp_path / "m", tmp_path / "art_m")
    assert json.loads((out / "config.json").read_text())["architecture"]["mirror_input"] is True
    model = load_segmenter(out).model  # rebuilt from the folder alone
    assert model.get_layer("enc0_conv1").kernel.shape[2] == 2
    x = np.random.default_rng(0).random((1, 32, 32, 1), dtype=np.float32)
    y = np.asarray(model(x))
    assert y.shape == (1, 32, 32, 1) and np.isfinite(y).all()


def test_cli_passes_mirror_input(monkeypatch, tmp_path):
    import segmentation.train as train_module

    seen = {}

    def fake_train(cfg, **kwargs):
        seen["cfg"] = cfg

    monkeypatch.setattr(train_module, "train", fake_train)
    main(["--data-dir", str(tmp_path), "--run-dir", str(tmp_path / "r"), "--mirror-input"])
    assert seen["cfg"].mirror_input is True
    seen.clear()
    main(["--data-dir", str(tmp_path), "--run-dir", str(tmp_path / "r2")])
    assert seen["cfg"].mirror_input is False
    assert seen["cfg"].loss == "bce_dice"


def test_cli_loss_option(monkeypatch, tmp_path, capsys):
    import segmentation.train as train_module

    seen = {}
    monkeypatch.setattr(train_module, "train", lambda cfg, **kw: seen.setdefault("cfg", cfg))
    base = ["--data-dir", str(tmp_path), "--run-dir", str(tmp_path / "r")]
    main([*base, "--loss", "bce_focal_tversky"])
    assert seen["cfg"].loss == "bce_focal_tversky"
    seen.clear()
    with pytest.raises(SystemExit):  # checked before any work
        main([*base, "--loss", "lovasz"])
    assert "received 'lovasz'" in capsys.readouterr().err and not seen


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"loss": "lovasz"}, "received 'lovasz'"),
        ({"mixed_precision": "float16"}, "received 'float16'"),
        ({"epochs": 0}, "'epochs': 0"),
        ({"learning_rate": -1e-3}, "'learning_rate': -0.001"),
        ({"dropout": 1.0}, "'dropout': 1.0"),
        ({"extra": {"augment": {"tumour_flatten": 2.0}}}, "'tumour_flatten': 2.0"),
    ],
)
def test_train_rejects_bad_options_before_writing_anything(figshare_like, tmp_path, kw, message):
    cfg = _cfg(figshare_like, tmp_path, **kw)
    with pytest.raises(ValueError, match=message):
        train(cfg)
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "cache").exists()
