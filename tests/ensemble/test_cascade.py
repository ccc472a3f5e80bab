"""Confidence cascade: known answers, the threshold choice, records and the runtime ensemble."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import ensemble.cascade as cascade
import ensemble.stack as stack
from ensemble.evaluate import probability_columns
from ensemble.inference import load_ensemble
from ensemble.registry import BACKBONES
from neurostack import CLASS_NAMES
from neurostack.artifacts import sha256_file
from neurostack.errors import ArtifactError


def _probs(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64)


def test_escalation_mask_is_top_probability_below_the_threshold() -> None:
    first = _probs([[0.9, 0.1, 0, 0], [0.5, 0.3, 0.2, 0], [0.25, 0.25, 0.25, 0.25]])
    assert cascade.escalation_mask(first, 0.5).tolist() == [False, False, True]
    assert cascade.escalation_mask(first, 0.9).tolist() == [False, True, True]
    assert cascade.escalation_mask(first, 0.0).tolist() == [False, False, False]
    assert cascade.escalation_mask(first, 1.01).all()
    with pytest.raises(ValueError, match="received shape \\(4,\\)"):
        cascade.escalation_mask(first[0], 0.5)
    with pytest.raises(ValueError, match="received -0.1"):
        cascade.escalation_mask(first, -0.1)


def test_combine_takes_second_rows_where_escalated() -> None:
    first = np.eye(4)[:3]
    second = np.eye(4)[[3, 2, 1]]
    out = cascade.combine(first, second, np.array([False, True, False]))
    np.testing.assert_array_equal(out, np.eye(4)[[0, 2, 2]])
    with pytest.raises(ValueError, match="escalate \\(N,\\)"):
        cascade.combine(first, second, np.array([True]))


def _hand_made() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Six slices: the first pass is wrong on the two it is least sure of (0.55, 0.62)."""
    y = np.array([0, 1, 2, 3, 0, 1])
    first = _probs([
        [0.95, 0.05, 0, 0],  # right, sure
        [0.1, 0.9, 0, 0],  # right
        [0, 0.45, 0.55, 0],  # right, unsure
        [0.62, 0, 0, 0.38],  # WRONG (says 0), unsure
        [0.3, 0.7, 0, 0],  # WRONG (says 1)
        [0.2, 0.8, 0, 0],  # right
    ])
    second = np.eye(4)[y]  # the default mode is right everywhere
    return first, second, y


def test_threshold_sweep_known_answers() -> None:
    first, second, y = _hand_made()
    rows = cascade.threshold_sweep(first, second, y, grid=(0.5, 0.6, 0.65, 0.75))
    assert [r["escalated"] for r in rows] == [0, 1, 2, 3]
    # 0.5: 4/6 right; 0.6 fixes nothing new (0.55 was right); 0.65 fixes slice 3; 0.75 slice 4
    assert [round(r["accuracy"], 4) for r in rows] == [0.6667, 0.6667, 0.8333, 1.0]
    assert rows[-1]["macro_f1"] == 1.0 and rows[0]["escalated_share"] == 0.0


def test_choose_threshold_needs_every_larger_threshold_to_qualify() -> None:
    sweep = [
        {"threshold": 0.5, "accuracy": 0.90, "macro_f1": 0.90},
        {"threshold": 0.6, "accuracy": 0.95, "macro_f1": 0.95},  # a lone lucky value
        {"threshold": 0.7, "accuracy": 0.93, "macro_f1": 0.93},
        {"threshold": 0.8, "accuracy": 0.95, "macro_f1": 0.95},
        {"threshold": 0.9, "accuracy": 0.96, "macro_f1": 0.95},
    ]
    assert cascade.choose_threshold(sweep, 0.95, 0.95) == 0.8
    assert cascade.choose_threshold(list(reversed(sweep)), 0.95, 0.95) == 0.8  # order-free
    assert cascade.choose_threshold(sweep, 0.95, 0.951) is None  # macro-F1 counts too
    assert cascade.choose_threshold(sweep, 0.0, 0.0) == 0.5


def _record(folder: Path, y: np.ndarray, final: np.ndarray, tta: str, part: str = "test",
            paths: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    paths = paths or [f"{CLASS_NAMES[k]}/s{i}.jpg" for i, k in enumerate(y)]
    df = pd.DataFrame({"path": paths, "label": [CLASS_NAMES[k] for k in y]})
    for c, name in enumerate(CLASS_NAMES):
        df[f"ensemble_{name}"] = final[:, c]
    df.to_csv(folder / "predictions.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps({"tta": tta, "split": {"part": part}}))
    return folder / "predictions.csv"


def test_score_from_records_known_answers(tmp_path: Path) -> None:
    first, second, y = _hand_made()
    a = _record(tmp_path / "single", y, first, "none")
    # rows in another order in the second record: aligned by path
    order = [5, 4, 3, 2, 1, 0]
    paths = [f"{CLASS_NAMES[k]}/s{i}.jpg" for i, k in enumerate(y)]
    b = _record(tmp_path / "mirror", y[order], second[order], "hflip",
                paths=[paths[i] for i in order])
    table, metrics = cascade.score_cascade(a, b, 0.65)
    assert metrics["escalated"] == 2 and table["escalated"].tolist() == [
        False, False, True, True, False, False]
    assert metrics["cascade"]["accuracy"] == pytest.approx(5 / 6)
    assert metrics["single_crop"]["accuracy"] == pytest.approx(4 / 6)
    assert metrics["default_mode"]["accuracy"] == 1.0
    assert metrics["vs_default_mode"] == {"only_a": 0, "only_b": 1, "p_value": 1.0}
    assert table["pred"].tolist()[3] == "pituitary" and table["default_pred"].tolist() == [
        CLASS_NAMES[k] for k in y]


def test_score_refuses_wrong_modes_and_different_slices(tmp_path: Path) -> None:
    first, second, y = _hand_made()
    a = _record(tmp_path / "single", y, first, "none")
    wrong = _record(tmp_path / "wrong", y, second, "none")
    with pytest.raises(ValueError, match="--tta hflip; its record says 'none'"):
        cascade.score_cascade(a, wrong, 0.6)
    other = _record(tmp_path / "other", y, second, "hflip",
                    paths=[f"x/{i}.jpg" for i in range(len(y))])
    with pytest.raises(ValueError, match="cover different slices \\(12 differ\\)"):
        cascade.score_cascade(a, other, 0.6)


def _heldout(n: int, seed: int, informative_noise: float) -> pd.DataFrame:
    """Validation predictions of the four base models; ``resnet50`` carries the label."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    df = pd.DataFrame({"path": [f"{CLASS_NAMES[k]}/v{i}.jpg" for i, k in enumerate(y)],
                       "label": [CLASS_NAMES[k] for k in y]})
    for m in BACKBONES:
        logits = rng.normal(0, informative_noise if m == "resnet50" else 3.0, (n, 4))
        logits[np.arange(n), y] += 2.0 if m == "resnet50" else 0.0
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        for k, col in enumerate(probability_columns(m)):
            df[col] = p[:, k]
    return df


def _val_record(folder: Path, df: pd.DataFrame, tta: str) -> Path:
    folder.mkdir(parents=True)
    df.to_csv(folder / "predictions.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps({"tta": tta, "split": {"part": "val"}}))
    return folder / "predictions.csv"


@pytest.mark.slow
def test_out_of_fold_outputs_reproduce_the_recorded_cross_validation(tmp_path: Path) -> None:
    csv = _val_record(tmp_path / "val", _heldout(120, 0, 1.0), "none")
    metrics = stack.fit_meta_learner(csv, tmp_path / "meta_single_crop", folds=2, max_epochs=4,
                                     seed=3, progress=False)
    table, check = stack.heldout_out_of_fold(csv, tmp_path / "meta_single_crop")
    assert check["recorded"] == metrics["cv_fold_accuracies"]
    assert check["max_abs_difference"] < 1e-9
    assert sorted(set(table["fold"])) == [0, 1] and len(table) == 120
    probs = table[[f"ensemble_{c}" for c in CLASS_NAMES]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="has 60 rows; the meta-learner .* fitted on 120"):
        short = _val_record(tmp_path / "short", _heldout(60, 1, 1.0), "none")
        stack.heldout_out_of_fold(short, tmp_path / "meta_single_crop")


@pytest.mark.slow
def test_fit_cascade_writes_a_record_the_runtime_accepts(tmp_path: Path) -> None:
    root = tmp_path / "classification"
    single = _val_record(tmp_path / "val1", _heldout(160, 0, 1.6), "none")
    mirror = _val_record(tmp_path / "val2", _heldout(160, 0, 1.0), "hflip")
    for csv, name in ((single, "meta_single_crop"), (mirror, "meta")):
        stack.fit_meta_learner(csv, root / name, folds=2, max_epochs=6, seed=0, progress=False)
    with pytest.raises(ValueError, match="must be of the 'val' split part"):
        test_like = _val_record(tmp_path / "t", _heldout(160, 0, 1.0), "hflip")
        (tmp_path / "t" / "metrics.json").write_text(
            json.dumps({"tta": "hflip", "split": {"part": "test"}}))
        cascade.fit_cascade(single, test_like, root)
    record = cascade.fit_cascade(single, mirror, root)
    assert json.loads((root / cascade.CASCADE_FILE).read_text()) == json.loads(
        json.dumps(record))
    assert record["meta_sha256"] == {n: sha256_file(root / n / "weights.npz")
                                     for n in ("meta_single_crop", "meta")}
    oof = record["validation"]["out_of_fold"]
    assert record["threshold"] == cascade.choose_threshold(
        record["validation"]["sweep"], oof["default_mode"]["accuracy"],
        oof["default_mode"]["macro_f1"])
    assert record["validation"]["cv_reproduced"]["meta"]["max_abs_difference"] < 1e-9
    if record["threshold"] is not None:
        assert oof["cascade_at_threshold"]["accuracy"] >= oof["default_mode"]["accuracy"]


def _crops(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (40 + 3 * i, 44), dtype=np.uint8) for i in range(n)]


@pytest.fixture()
def cascade_tree(tiny_artifacts: Path, tmp_path: Path) -> Path:
    """Tiny classifiers with a default (hflip) and a single-crop meta-learner."""
    root = tmp_path / "cls"
    root.mkdir()
    for name in BACKBONES:
        (root / name).symlink_to(tiny_artifacts / "classification" / name,
                                 target_is_directory=True)
    src = tiny_artifacts / "classification" / "meta"
    cfg = json.loads((src / "config.json").read_text())
    for name, tta in (("meta", "hflip"), ("meta_single_crop", "none")):
        shutil.copytree(src, root / name)
        (root / name / "config.json").write_text(json.dumps(cfg | {"input_tta": tta}))
    return root


def _write_threshold(root: Path, threshold: float | None) -> None:
    shas = {n: sha256_file(root / n / "weights.npz") for n in ("meta_single_crop", "meta")}
    (root / cascade.CASCADE_FILE).write_text(
        json.dumps({"threshold": threshold, "meta_sha256": shas}))


def test_the_runtime_cascade_mixes_the_two_modes_row_by_row(cascade_tree: Path) -> None:
    with pytest.raises(ArtifactError, match="python -m ensemble.cascade fit"):
        load_ensemble(cascade_tree, fused=False, tta="cascade")
    crops = _crops(6, seed=1)
    default = load_ensemble(cascade_tree, fused=False)
    single = default.with_tta("none")
    want_first, want_second = single.predict_crops(crops), default.predict_crops(crops)
    top = want_first.ensemble.max(1)

    _write_threshold(cascade_tree, float(np.median(top)))
    cas = default.with_tta("cascade")
    assert cas.tta == "cascade" and cas.members is default.members
    assert cas.with_tta("cascade") is cas and cas.with_tta("hflip") is default
    assert "below" in cas.method and cas.method.endswith("mirror image")
    got = cas.predict_crops(crops)
    esc = top < float(np.median(top))
    assert got.escalated.tolist() == esc.tolist() and 0 < esc.sum() < len(crops)
    for i in range(len(crops)):
        want = want_second if esc[i] else want_first
        np.testing.assert_allclose(got.ensemble[i], want.ensemble[i], atol=1e-5)
        for n in BACKBONES:
            np.testing.assert_allclose(got.per_model[n][i], want.per_model[n][i], atol=1e-5)
    with pytest.raises(ValueError, match="cannot reuse"):
        cas.predict_crops(crops, {"vgg19": want_first.per_model["vgg19"]})

    _write_threshold(cascade_tree, 0.0)  # nothing escalated: the single-crop mode exactly
    fused = load_ensemble(cascade_tree, tta="cascade")
    out = fused.predict_crops(crops)
    assert not out.escalated.any()
    np.testing.assert_allclose(out.ensemble, want_first.ensemble, atol=1e-5)


def test_a_cascade_record_for_other_meta_learners_is_refused(cascade_tree: Path) -> None:
    (cascade_tree / cascade.CASCADE_FILE).write_text(json.dumps(
        {"threshold": 0.8, "meta_sha256": {"meta": "0" * 64, "meta_single_crop": "1" * 64}}))
    with pytest.raises(ArtifactError, match="chosen for other meta-learners"):
        load_ensemble(cascade_tree, fused=False, tta="cascade")
    (cascade_tree / cascade.CASCADE_FILE).write_text(json.dumps({"threshold": 7}))
    with pytest.raises(ArtifactError, match="threshold must be a number in \\[0, 1\\]"):
        load_ensemble(cascade_tree, fused=False, tta="cascade")
    with pytest.raises(ValueError, match="'hflip', 'cascade'\\]; received 'vflip'"):
        load_ensemble(cascade_tree, fused=False, tta="vflip")


def test_score_cli_uses_the_recorded_threshold(tmp_path: Path, capsys) -> None:
    first, second, y = _hand_made()
    a = _record(tmp_path / "single", y, first, "none")
    b = _record(tmp_path / "mirror", y, second, "hflip")
    arts = tmp_path / "arts"
    arts.mkdir()
    (arts / cascade.CASCADE_FILE).write_text(json.dumps({"threshold": 0.75}))
    assert cascade.main(["score", str(a), str(b), "--artifacts", str(arts),
                         "--out", str(tmp_path / "out")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["escalated"] == 3 and summary["cascade"]["accuracy"] == 1.0
    assert pd.read_csv(tmp_path / "out" / "predictions.csv")["escalated"].sum() == 3
    with pytest.raises(SystemExit) as exc:
        cascade.main(["score", str(a), str(b), "--artifacts", str(tmp_path)])
    assert exc.value.code == 2
