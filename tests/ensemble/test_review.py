"""Review flag: known answers, the threshold choice, the record and its runtime lookup."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import ensemble.review as review
import ensemble.stack as stack
from ensemble.evaluate import probability_columns
from ensemble.registry import BACKBONES
from neurostack import CLASS_NAMES
from neurostack.artifacts import sha256_file

CONF = np.array([0.99, 0.97, 0.90, 0.80, 0.70, 0.55])
RIGHT = np.array([True, True, True, False, True, False])


def test_summary_known_answers() -> None:
    s = review.review_summary(CONF, RIGHT, 0.85)
    assert (s["n"], s["n_flagged"], s["n_errors"], s["errors_flagged"]) == (6, 3, 2, 2)
    assert s["sensitivity"] == 1.0 and s["specificity"] == pytest.approx(3 / 4)
    assert s["youden"] == pytest.approx(3 / 4)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["accuracy_flagged"] == pytest.approx(1 / 3) and s["accuracy_unflagged"] == 1.0
    assert s["coverage"] == 0.5
    # right answers outrank wrong ones in 7 of the 8 (right, wrong) pairs
    assert s["auroc"] == pytest.approx(7 / 8)


def test_summary_edges_and_per_row_thresholds() -> None:
    none_flagged = review.review_summary(CONF, RIGHT, 0.5)
    assert none_flagged["n_flagged"] == 0 and none_flagged["accuracy_flagged"] is None
    all_right = review.review_summary(CONF, np.ones(6, bool), 0.85)
    assert all_right["auroc"] is None and all_right["sensitivity"] is None
    rows = review.review_summary(CONF, RIGHT, np.array([0.6, 0.6, 0.6, 0.95, 0.95, 0.6]))
    assert rows["n_flagged"] == 3 and rows["threshold"] == [0.6, 0.95]  # 0.80, 0.70, 0.55
    with pytest.raises(ValueError, match="one per answer"):
        review.review_summary(CONF, RIGHT, np.array([0.5, 0.6]))
    with pytest.raises(ValueError, match="one confidence per answer"):
        review.review_summary(CONF, RIGHT[:3], 0.5)


def test_threshold_is_the_largest_youden_lowest_on_ties() -> None:
    sweep = review.review_sweep(CONF, RIGHT, grid=[0.6, 0.75, 0.85, 0.95])
    # flagged below 0.6: {0.55}; 0.75: {0.70, 0.55}; 0.85: {0.80, 0.70, 0.55}; 0.95: + 0.90
    assert list(sweep["youden"]) == pytest.approx([0.5, 0.25, 0.75, 0.5])
    assert review.choose_review_threshold(sweep) == 0.85
    tied = review.review_sweep(CONF, RIGHT, grid=[0.85, 0.81, 0.9])
    assert review.choose_review_threshold(tied) == 0.81


def test_rule() -> None:
    s = review.review_summary(CONF, RIGHT, 0.85)
    assert review.passes_rule(s)  # AUROC 0.875, gap 1 - 1/3
    assert not review.passes_rule({**s, "auroc": 0.79})
    assert not review.passes_rule({**s, "accuracy_flagged": 0.85})
    assert not review.passes_rule({**s, "accuracy_flagged": None})


def _heldout(n: int, seed: int) -> pd.DataFrame:
    """Validation predictions of the four base models; ``resnet50`` carries the label."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    df = pd.DataFrame({"path": [f"{CLASS_NAMES[k]}/v{i}.jpg" for i, k in enumerate(y)],
                       "label": [CLASS_NAMES[k] for k in y]})
    for m in BACKBONES:
        logits = rng.normal(0, 1.2 if m == "resnet50" else 3.0, (n, 4))
        logits[np.arange(n), y] += 2.0 if m == "resnet50" else 0.0
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        for k, col in enumerate(probability_columns(m)):
            df[col] = p[:, k]
    return df


def _evaluation(folder: Path, df: pd.DataFrame, tta: str, part: str) -> Path:
    folder.mkdir(parents=True)
    df.to_csv(folder / "predictions.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps({"tta": tta, "split": {"part": part}}))
    return folder / "predictions.csv"


def _with_final(df: pd.DataFrame, probs: np.ndarray) -> pd.DataFrame:
    out = df.copy()
    for c, name in enumerate(CLASS_NAMES):
        out[f"ensemble_{name}"] = probs[:, c]
    return out


@pytest.mark.slow
def test_fit_and_score_round_trip(tmp_path: Path, capsys) -> None:
    root = tmp_path / "classification"
    val = _evaluation(tmp_path / "val", _heldout(200, 0), "hflip", "val")
    stack.fit_meta_learner(val, root / "meta", folds=2, max_epochs=6, seed=0, progress=False)
    test_like = _evaluation(tmp_path / "test_v", _heldout(200, 0), "hflip", "test")
    with pytest.raises(ValueError, match="chosen on the validation split; .* is 'test'"):
        review.fit([test_like], root)

    assert review.main(["fit", str(val), "--artifacts", str(root)]) == 0
    record = json.loads((root / review.RECORD_FILE).read_text())
    entry = record["meta_learners"]["meta"]
    assert entry["meta_sha256"] == sha256_file(root / "meta" / "weights.npz")
    assert entry["cv_reproduced"]["max_abs_difference"] < 1e-9
    sweep = pd.DataFrame(entry["sweep"])
    assert entry["threshold"] == review.choose_review_threshold(sweep)
    oof, _ = stack.heldout_out_of_fold(val, root / "meta")
    probs = oof[[f"ensemble_{c}" for c in CLASS_NAMES]].to_numpy()
    right = probs.argmax(1) == np.arange(200) % 4
    again = review.review_summary(probs.max(1), right, entry["threshold"])
    assert entry["validation"] == pytest.approx(again)
    assert entry["passes_rule"] == review.passes_rule(again)
    curve = entry["risk_coverage"]
    assert curve["coverage"][-1] == 1.0 and curve["accuracy"][-1] == pytest.approx(right.mean())
    assert "passes the rule" in capsys.readouterr().out

    # scoring: a known table at the recorded threshold (forced to pass for the lookup)
    record["meta_learners"]["meta"]["passes_rule"] = True
    (root / review.RECORD_FILE).write_text(json.dumps(record))
    t = entry["threshold"]
    top = np.array([t + 0.01, t - 0.01, 0.999, t - 0.02])
    final = np.repeat(((1 - top) / 3)[:, None], 4, axis=1)  # the rest spread evenly
    final[np.arange(4), [0, 1, 2, 0]] = top  # the last row is wrong (a pituitary)
    labels = pd.DataFrame({"path": [f"t{i}.jpg" for i in range(4)],
                           "label": ["glioma", "meningioma", "notumor", "pituitary"]})
    test = _evaluation(tmp_path / "test", _with_final(labels, final), "hflip", "test")
    with pytest.raises(ValueError, match="validation split the thresholds were chosen on"):
        review.score([val], root)
    got = review.score([test], root)["test"]
    assert (got["n_flagged"], got["n_errors"], got["errors_flagged"]) == (2, 1, 1)
    stored = json.loads((root / review.RECORD_FILE).read_text())
    assert stored["meta_learners"]["meta"]["threshold"] == t  # scoring changes no threshold
    assert stored["evaluated"]["test"]["n_flagged"] == 2


def test_row_thresholds_follow_the_answering_meta_learner(tmp_path: Path) -> None:
    root = tmp_path / "cls"
    for name, tta in (("meta", "hflip"), ("meta_single_crop", "none")):
        (root / name).mkdir(parents=True)
        (root / name / "weights.npz").write_bytes(name.encode())
        (root / name / "config.json").write_text(json.dumps({"input_tta": tta}))
    shas = {n: sha256_file(root / n / "weights.npz") for n in ("meta", "meta_single_crop")}
    entry = {"threshold": 0.93, "meta_sha256": shas["meta"], "passes_rule": True,
             "validation": {}}
    record = {"meta_learners": {"meta": entry,
                                "meta_single_crop": {**entry, "meta_sha256": shas[
                                    "meta_single_crop"], "passes_rule": False}}}
    cascade_df = pd.DataFrame({"escalated": [True, False, "True", "False"]})
    got = review.row_thresholds(cascade_df, {}, record, root, Path("x"))
    assert got.tolist() == [0.93, review.FALLBACK_THRESHOLD, 0.93, review.FALLBACK_THRESHOLD]
    single = review.row_thresholds(pd.DataFrame({"a": [1, 2]}), {"tta": "none"}, record, root,
                                   Path("x"))
    assert single.tolist() == [review.FALLBACK_THRESHOLD] * 2  # failed its rule
    mirror = review.row_thresholds(pd.DataFrame({"a": [1]}), {"tta": "hflip"}, record, root,
                                   Path("x"))
    assert mirror.tolist() == [0.93]
    with pytest.raises(ValueError, match="tta none or hflip"):
        review.row_thresholds(pd.DataFrame({"a": [1]}), {"tta": "cascade"}, record, root,
                              Path("x"))


def test_runtime_lookup_matches_folder_and_weights(tmp_path: Path, caplog) -> None:
    root = tmp_path / "cls"
    root.mkdir()
    meta = SimpleNamespace(folder=root / "meta", config={"weights_sha256": "a" * 64})
    assert review.meta_entry(meta) is None and review.meta_entry(None) is None  # no record
    entry = {"threshold": 0.9, "meta_sha256": "a" * 64, "passes_rule": True,
             "validation": {"accuracy_flagged": 0.7, "accuracy_unflagged": 0.99,
                            "n_flagged": 10, "n": 100}}
    (root / review.RECORD_FILE).write_text(json.dumps({"meta_learners": {"meta": entry}}))
    assert review.meta_entry(meta) == entry
    other = SimpleNamespace(folder=root / "meta", config={"weights_sha256": "b" * 64})
    assert review.meta_entry(other) is None  # fitted for other weights
    cascade = SimpleNamespace(first=SimpleNamespace(meta=None), second=SimpleNamespace(meta=meta))
    assert review.ensemble_entries(cascade) == {False: None, True: entry}
    assert review.ensemble_entries(SimpleNamespace(meta=meta)) == {None: entry}
    text = review.review_warning(0.81, entry)
    assert text.startswith("review this answer: the ensemble's top probability 0.81 is below "
                           "0.90") and "right 70% of the time (10 of 100 slices)" in text
    assert "fixed limit" in review.review_warning(0.5, None)

    (root / review.RECORD_FILE).write_text(json.dumps(
        {"meta_learners": {"meta": {"threshold": 0.9}}}))
    with caplog.at_level("WARNING"):
        assert review.meta_entry(meta) is None
    assert "lacks ['meta_sha256', 'passes_rule', 'validation']" in caplog.text
    for bad in ("0.9", None, 1.5, True):
        (root / review.RECORD_FILE).write_text(json.dumps(
            {"meta_learners": {"meta": {**entry, "threshold": bad}}}))
        assert review.meta_entry(meta) is None, bad
    assert "is not a number in [0, 1]" in caplog.text
    (root / review.RECORD_FILE).write_text(json.dumps(
        {"meta_learners": {"meta": {**entry, "passes_rule": "yes"}}}))
    assert review.meta_entry(meta) is None  # only a real True passes
    (root / review.RECORD_FILE).write_bytes(b"\xff\xfe not json")
    assert review.read_record(root) is None and review.meta_entry(meta) is None


def test_caption_names_each_meta_learner_and_the_run() -> None:
    record = {"meta_learners": {
        "meta": {"threshold": 0.95, "passes_rule": True,
                 "validation": {"auroc": 0.887, "accuracy_flagged": 0.761,
                                "accuracy_unflagged": 0.989}},
        "meta_single_crop": {"threshold": 0.97, "passes_rule": False,
                             "validation": {"auroc": 0.883, "accuracy_flagged": 0.826,
                                            "accuracy_unflagged": 0.991}}}}
    run = review.review_summary(CONF, RIGHT, np.array([0.95, 0.95, 0.95, 0.95, 0.6, 0.6]))
    text = review.review_caption(run, record)
    assert "`meta` 0.95 — out-of-fold validation AUROC 0.887, accuracy flagged 0.761 / " \
           "unflagged 0.989; used" in text
    assert "`meta_single_crop` 0.97" in text and "not used (failed the rule), the fixed 0.6" \
        in text
    assert "(threshold(s) 0.6, 0.95): 3 of 6 answers flagged; 2 of 2 errors caught" in text


def test_broken_records_are_refused_with_what_is_wrong(tmp_path: Path, capsys) -> None:
    labels = pd.DataFrame({"path": ["a.jpg", "b.jpg"], "label": ["glioma", "notumor"]})
    probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1]])
    good = _with_final(labels, probs)
    bare = tmp_path / "bare"
    bare.mkdir()
    good.to_csv(bare / "predictions.csv", index=False)  # no metrics.json beside it
    with pytest.raises(FileNotFoundError, match="metrics.json not found"):
        review.fit([bare / "predictions.csv"], tmp_path)
    bad = good.astype({"ensemble_glioma": object})
    bad.loc[1, "ensemble_glioma"] = "n/a"
    with pytest.raises(ValueError, match="1 row\\(s\\) with a missing or non-numeric probability, "
                                         "first in row 3 \\('b.jpg'\\)"):
        review._probabilities(bad, Path("p.csv"))
    with pytest.raises(ValueError, match="unknown labels \\['tumour'\\]"):
        review._probabilities(good.assign(label=["glioma", "tumour"]), Path("p.csv"))
    with pytest.raises(ValueError, match="lacks columns \\['ensemble_pituitary'\\]"):
        review._probabilities(good.drop(columns="ensemble_pituitary"), Path("p.csv"))
    # the command line says what is wrong and exits 2; no record is written
    assert review.main(["fit", str(bare / "predictions.csv"), "--artifacts", str(tmp_path)]) == 2
    assert "metrics.json not found" in capsys.readouterr().err
    assert not (tmp_path / review.RECORD_FILE).exists()
    assert review.main(["score", str(bare / "predictions.csv"), "--artifacts",
                        str(tmp_path)]) == 2
    assert "run fit first" in capsys.readouterr().err


def test_importing_the_module_does_not_load_pandas() -> None:
    import subprocess
    import sys

    code = "import sys, ensemble.review, neurostack.pipeline; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"
