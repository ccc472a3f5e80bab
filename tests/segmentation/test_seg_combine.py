"""Ensembles of exported Res-UNets (segmentation.combine, build_resunet_ensemble)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from neurostack.errors import ArtifactError
from segmentation.combine import combine_segmenters, combined_training_log, main
from segmentation.predict import load_segmenter


@pytest.fixture(scope="module")
def members(tmp_path_factory, make_tiny_artifact):
    """Two tiny exported segmenters with different random weights (one with a log)."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        root = tmp_path_factory.mktemp("members")
        a, _ = make_tiny_artifact(root / "a", seed=1)
        b, _ = make_tiny_artifact(root / "b", seed=2)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    pd.DataFrame({"epoch": [0, 1], "val_dice": [0.3, 0.4]}).to_csv(a / "training_log.csv",
                                                                  index=False)
    (b / "training_log.csv").unlink(missing_ok=True)
    return a, b


def _crops(n: int = 3, size: int = 32) -> np.ndarray:
    return np.random.default_rng(5).random((n, size, size)).astype(np.float32)


def test_ensemble_artifact_predicts_the_mean_of_its_members(members, tmp_path, float32_policy):
    a, b = members
    config = combine_segmenters([a, b], tmp_path / "ens", names=["first", "second"])
    ens = load_segmenter(tmp_path / "ens", tta="hflip")
    pa = load_segmenter(a, tta="hflip").predict_crops(_crops())
    pb = load_segmenter(b, tta="hflip").predict_crops(_crops())
    assert np.abs(pa - pb).max() > 1e-3  # the members really differ
    np.testing.assert_allclose(ens.predict_crops(_crops()), 0.5 * (pa + pb), atol=1e-6)
    assert config["model"] == "resunet_ensemble"
    assert [m["name"] for m in config["members"]] == ["first", "second"]
    shas = [json.loads((f / "config.json").read_text())["weights_sha256"] for f in (a, b)]
    assert [m["weights_sha256"] for m in config["members"]] == shas
    assert config["threshold"] == 0.5 and "test_time_augmentation" not in config
    assert config["epochs_completed_total"] == 2  # one epoch per tiny member


def test_ensemble_training_log_stacks_members_with_a_name(members):
    a, b = members
    log = combined_training_log([a, b], ["first", "second"])
    assert list(log.columns[:2]) == ["member", "epoch"]
    assert log["member"].tolist() == ["first", "first"]  # b has no log
    assert combined_training_log([b], ["second"]) is None


def test_combine_refuses_what_would_not_be_one_ensemble(members, tmp_path, make_tiny_artifact,
                                                         float32_policy):
    a, b = members
    with pytest.raises(ValueError, match="at least 2"):
        combine_segmenters([a], tmp_path / "x")
    with pytest.raises(ValueError, match="is one of the members"):
        combine_segmenters([a, b], a)
    with pytest.raises(ValueError, match="unique non-empty names"):
        combine_segmenters([a, b], tmp_path / "x", names=["same", "same"])
    big, _ = make_tiny_artifact(tmp_path / "big", input_size=64, seed=3)
    with pytest.raises(ValueError, match="share 'input_size'.*32.*64"):
        combine_segmenters([a, big], tmp_path / "x")
    other_split = tmp_path / "other_split"
    shutil.copytree(b, other_split)
    cfg = json.loads((other_split / "config.json").read_text())
    cfg["split"] = {"sha256": "0" * 64}
    (other_split / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="different split files"):
        combine_segmenters([a, other_split], tmp_path / "x")
    combine_segmenters([a, b], tmp_path / "ens")
    with pytest.raises(ValueError, match="already an ensemble"):
        combine_segmenters([tmp_path / "ens", a], tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing written by a refused combination


def test_combine_checks_every_members_checksum(members, tmp_path):
    a, b = members
    tampered = tmp_path / "tampered"
    shutil.copytree(b, tampered)
    data = bytearray((tampered / "weights.npz").read_bytes())
    data[-100] ^= 0xFF
    (tampered / "weights.npz").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="Checksum mismatch"):
        combine_segmenters([a, tampered], tmp_path / "x")


def test_tampered_ensemble_weights_are_refused_at_load(members, tmp_path):
    a, b = members
    combine_segmenters([a, b], tmp_path / "ens")
    data = bytearray((tmp_path / "ens" / "weights.npz").read_bytes())
    data[-100] ^= 0xFF
    (tmp_path / "ens" / "weights.npz").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="Checksum mismatch"):
        load_segmenter(tmp_path / "ens")


def test_cli_reports_bad_input_and_writes_good_input(members, tmp_path, capsys):
    a, b = members
    assert main([str(a), "--out", str(tmp_path / "x")]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert main([str(a), str(b), "--out", str(tmp_path / "ens"), "--names", "p,q",
                 "--selection", "why"]) == 0
    config = json.loads((tmp_path / "ens" / "config.json").read_text())
    assert config["selection"] == "why" and [m["name"] for m in config["members"]] == ["p", "q"]


def test_extracted_member_predicts_like_the_original(members, tmp_path, float32_policy):
    a, b = members
    combine_segmenters([a, b], tmp_path / "ens", names=["first", "second"])
    out = tmp_path / "second"
    assert main([str(tmp_path / "ens"), "--extract", "second", "--out", str(out)]) == 0
    original = load_segmenter(b).predict_crops(_crops())
    np.testing.assert_array_equal(load_segmenter(out).predict_crops(_crops()), original)
    config = json.loads((out / "config.json").read_text())
    assert config["extracted_from"]["member"] == "second"
    assert config["architecture"] == json.loads((b / "config.json").read_text())["architecture"]
    first = tmp_path / "first"
    main([str(tmp_path / "ens"), "--extract", "first", "--out", str(first)])
    assert pd.read_csv(first / "training_log.csv")["val_dice"].tolist() == [0.3, 0.4]
    assert not (out / "training_log.csv").exists()  # the second member had no log


def test_extract_names_the_members_it_has(members, tmp_path, capsys):
    a, b = members
    combine_segmenters([a, b], tmp_path / "ens", names=["first", "second"])
    assert main([str(tmp_path / "ens"), "--extract", "third", "--out", str(tmp_path / "x")]) == 2
    assert "['first', 'second']; received 'third'" in capsys.readouterr().err
    assert main([str(a), "--extract", "first", "--out", str(tmp_path / "x")]) == 2
    assert "not an ensemble" in capsys.readouterr().err


def test_ensemble_is_evaluated_and_gets_its_own_operating_point(members, figshare_like, tmp_path):
    from segmentation.data import load_metadata, make_patient_split, write_split
    from segmentation.evaluate import main as evaluate_main

    a, b = members
    config = combine_segmenters([a, b], tmp_path / "ens")
    split_csv = write_split(make_patient_split(load_metadata(figshare_like)), tmp_path / "s.csv")
    argv = [str(figshare_like / "images"), str(figshare_like / "masks"), "--no-progress",
            "--artifacts", str(tmp_path / "ens"), "--ids-from", str(split_csv), "--split", "val",
            "--out", str(tmp_path / "val"), "--tta", "hflip", "--sweep", "0.3,0.5",
            "--choose-threshold"]
    assert evaluate_main(argv) == 0
    record = json.loads((tmp_path / "val" / "metrics.json").read_text())
    assert record["artifact"]["weights_sha256"] == config["weights_sha256"]
    chosen = json.loads((tmp_path / "ens" / "config.json").read_text())
    assert chosen["threshold"] in (0.3, 0.5) and chosen["test_time_augmentation"] == "hflip"
    assert chosen["members"] == config["members"]  # provenance kept by the operating point
    assert load_segmenter(tmp_path / "ens").default_threshold == chosen["threshold"]


def test_combine_names_a_broken_member_architecture(members, tmp_path):
    a, b = members
    broken = tmp_path / "broken"
    shutil.copytree(b, broken)
    cfg = json.loads((broken / "config.json").read_text())
    for architecture, message in ((dict(cfg["architecture"], kernel=5), "invalid"),
                                  ("resunet", "must be a mapping")):
        cfg["architecture"] = architecture
        (broken / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ArtifactError, match=message):
            combine_segmenters([a, broken], tmp_path / "x")
    assert not (tmp_path / "x").exists()
