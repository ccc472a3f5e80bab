"""Stacking meta-learner fitted on held-out base-model probabilities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import ensemble.stack as stack
from ensemble.evaluate import probability_columns
from ensemble.inference import load_meta
from ensemble.registry import BACKBONES
from neurostack import CLASS_NAMES

MODELS = list(BACKBONES)
INFORMATIVE = "resnet50"


def synthetic_heldout(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Predictions where ``resnet50`` is informative and the other three are confident noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    row = {
        "path": [f"{CLASS_NAMES[k]}/img_{i}.png" for i, k in enumerate(y)],
        "label": [CLASS_NAMES[k] for k in y],
    }
    df = pd.DataFrame(row)
    for m in MODELS:
        if m == INFORMATIVE:
            logits = rng.normal(0, 1, (n, 4))
            logits[np.arange(n), y] += 1.8
            p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        else:
            p = rng.dirichlet(np.full(4, 0.3), n)  # peaked, uninformative
        for k, col in enumerate(probability_columns(m)):
            df[col] = p[:, k]
    df["pred"] = [CLASS_NAMES[k] for k in df[probability_columns(INFORMATIVE)].to_numpy().argmax(1)]
    return df[["path", "label", "pred", *[c for m in MODELS for c in probability_columns(m)]]], y


def _write(folder: Path, df: pd.DataFrame, part: str | None, **recorded) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    df.to_csv(folder / "predictions.csv", index=False)
    if part is not None:
        record = {"split": {"csv": "x.csv", "part": part}, **recorded}
        (folder / "metrics.json").write_text(json.dumps(record))
    return folder / "predictions.csv"


@pytest.mark.slow
def test_meta_learner_beats_the_average_and_round_trips(tmp_path: Path, monkeypatch) -> None:
    train_df, _ = synthetic_heldout(240, seed=0)
    csv = _write(tmp_path / "val", train_df, "val")
    captured = {}
    real_writer = stack.write_meta_artifact

    def capture(model, dest, **kwargs):
        captured["model"] = model
        return real_writer(model, dest, **kwargs)

    monkeypatch.setattr(stack, "write_meta_artifact", capture)
    out = tmp_path / "meta"
    metrics = stack.fit_meta_learner(csv, out, folds=2, max_epochs=20, seed=0)

    assert 1 <= metrics["epochs"] <= 20
    assert metrics["n_rows"] == 240 and len(metrics["cv_fold_accuracies"]) == 2
    assert json.loads((out / "metrics.json").read_text()) == metrics
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["inputs"] == MODELS and cfg["training"]["epochs"] == metrics["epochs"]
    assert cfg["input_features"] == [c for m in MODELS for c in probability_columns(m)]
    assert cfg["input_tta"] == metrics["input_tta"] == "none"  # the evaluation recorded none

    # fresh data from the same distribution
    test_df, y = synthetic_heldout(600, seed=1)
    x = stack.stacked_features(test_df, MODELS)
    meta = load_meta(out)
    proba = meta.predict(x)
    acc_meta = float((proba.argmax(1) == y).mean())
    acc_avg = float((x.reshape(-1, 4, 4).mean(axis=1).argmax(1) == y).mean())
    acc_informative = float(
        (test_df[probability_columns(INFORMATIVE)].to_numpy().argmax(1) == y).mean()
    )
    # the average is dragged down by the noise; the meta-learner learns to trust resnet50
    assert acc_meta > acc_avg + 0.1, (acc_meta, acc_avg)
    assert acc_meta > acc_informative - 0.08, (acc_meta, acc_informative)
    assert abs(metrics["cv_accuracy"] - acc_informative) < 0.15

    # the written artifact reproduces the in-memory model (weights stored as float16)
    in_memory = np.asarray(captured["model"](x))
    np.testing.assert_allclose(proba, in_memory, atol=5e-3)
    assert (proba.argmax(1) == in_memory.argmax(1)).mean() > 0.99


@pytest.mark.parametrize("part", ["test", "train"])
def test_refuses_predictions_not_from_val(tmp_path: Path, part: str) -> None:
    df, _ = synthetic_heldout(40, seed=2)
    csv = _write(tmp_path / part, df, part)
    with pytest.raises(
        ValueError, match="test-split" if part == "test" else "'val' split; got 'train'"
    ):
        stack.fit_meta_learner(csv, tmp_path / "meta", folds=2, max_epochs=2)
    assert not (tmp_path / "meta").exists()


@pytest.mark.parametrize("record", [None, {"split": {"csv": None, "part": None}}, {"split": None},
                                    "not json"])
def test_refuses_predictions_without_a_val_record(tmp_path: Path, record) -> None:
    df, _ = synthetic_heldout(40, seed=2)
    csv = _write(tmp_path / "ev", df, None)
    if record is not None:
        text = record if isinstance(record, str) else json.dumps(record)
        (tmp_path / "ev" / "metrics.json").write_text(text)
    match = "is missing" if record is None else ("not valid JSON" if record == "not json"
                                                 else "'val' split; got None")
    with pytest.raises(ValueError, match=match):
        stack.fit_meta_learner(csv, tmp_path / "meta", folds=2, max_epochs=2)
    assert not (tmp_path / "meta").exists()


def test_missing_probability_columns(tmp_path: Path) -> None:
    df, _ = synthetic_heldout(40, seed=3)
    csv = _write(tmp_path / "val", df.drop(columns=["vgg19_pituitary"]), "val")
    with pytest.raises(ValueError, match=r"lack columns \['vgg19_pituitary'\]"):
        stack.fit_meta_learner(csv, tmp_path / "meta", folds=2, max_epochs=2)


def test_stacked_features_order() -> None:
    df, _ = synthetic_heldout(5, seed=4)
    x = stack.stacked_features(df, ["vgg19", "xception"])
    assert x.shape == (5, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, :4], df[probability_columns("vgg19")].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(x[:, 4:], df[probability_columns("xception")].to_numpy(), rtol=1e-6)


def test_cv_folds_keep_duplicate_groups_whole_and_stratify() -> None:
    y = np.repeat(np.arange(4), 30)
    groups = np.arange(120) // 3  # groups of 3 rows, one class each
    folds = stack.cv_folds(y, groups, 5, seed=0)
    assert len(folds) == 5
    seen = np.concatenate([va for _, va in folds])
    assert sorted(seen.tolist()) == list(range(120))  # every row scored once
    for tr, va in folds:
        assert not set(groups[tr]) & set(groups[va])
        assert set(y[va]) == {0, 1, 2, 3}
    plain = stack.cv_folds(y, None, 5, seed=0)
    assert any(set(groups[tr]) & set(groups[va]) for tr, va in plain)  # would leak


def test_heldout_groups_come_from_the_recorded_split(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    pd.DataFrame(
        {"path": ["a.png", "b.png", "c.png"], "label": ["glioma"] * 3, "group": [7, 7, 9]}
    ).to_csv("split.csv", index=False)
    (tmp_path / "ev").mkdir()
    csv = tmp_path / "ev" / "predictions.csv"
    (tmp_path / "ev" / "metrics.json").write_text(
        json.dumps({"split": {"csv": "split.csv", "part": "val"}})
    )
    groups = stack.heldout_groups(csv, pd.Series(["c.png", "a.png"]))
    assert groups.tolist() == [9, 7]
    with pytest.raises(ValueError, match="no group for 1 held-out path"):
        stack.heldout_groups(csv, pd.Series(["a.png", "zz.png"]))
    (tmp_path / "ev" / "metrics.json").write_text(json.dumps({"split": {"csv": None}}))
    assert stack.heldout_groups(csv, pd.Series(["a.png"])) is None


def test_meta_learner_records_the_heldout_tta_and_base_weights(tmp_path: Path) -> None:
    df, _ = synthetic_heldout(60, seed=4)
    shas = {m: f"{i}" * 64 for i, m in enumerate(MODELS)}
    csv = _write(tmp_path / "val", df, "val", tta="hflip", artifacts={**shas, "meta": "f" * 64})
    metrics = stack.fit_meta_learner(csv, tmp_path / "meta", folds=2, max_epochs=2, seed=0)
    assert metrics["input_tta"] == "hflip"
    cfg = json.loads((tmp_path / "meta" / "config.json").read_text())
    assert cfg["input_tta"] == "hflip"
    assert cfg["training"]["input_models_sha256"] == shas  # the old meta's hash is not an input


def test_unknown_heldout_tta_is_refused_before_fitting(tmp_path: Path) -> None:
    df, _ = synthetic_heldout(40, seed=5)
    csv = _write(tmp_path / "val", df, "val", tta="rot90")
    with pytest.raises(ValueError, match=r"\['none', 'hflip'\]; received 'rot90'"):
        stack.fit_meta_learner(csv, tmp_path / "meta", folds=2, max_epochs=2, seed=0)
    assert not (tmp_path / "meta").exists()


def test_the_single_crop_folder_only_takes_single_crop_predictions(tmp_path: Path) -> None:
    df, _ = synthetic_heldout(40, seed=6)
    csv = _write(tmp_path / "val", df, "val", tta="hflip")
    with pytest.raises(ValueError, match="test-time augmentation 'none'.* made with 'hflip'"):
        stack.fit_meta_learner(csv, tmp_path / "meta_single_crop", folds=2, max_epochs=2)
    assert not (tmp_path / "meta_single_crop").exists()
    single = _write(tmp_path / "val1", df, "val", tta="none")
    metrics = stack.fit_meta_learner(single, tmp_path / "meta_single_crop", folds=2, max_epochs=2)
    assert metrics["input_tta"] == "none"
