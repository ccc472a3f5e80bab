"""``python -m ensemble.evaluate`` on a generated dataset with unreadable files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from ensemble.evaluate import main, probability_columns
from ensemble.inference import load_meta
from ensemble.registry import BACKBONES
from neurostack import CLASS_NAMES
from neurostack.testing import flag_everything_reference

pytestmark = pytest.mark.slow  # the module fixture runs a full evaluation (~15 s)

MODELS = [*BACKBONES, "ensemble"]
BAD = {"glioma/corrupt.jpg", "pituitary/empty.png"}


@pytest.fixture(scope="module")
def evaluated(tiny_artifacts: Path, make_dataset_dir, tmp_path_factory) -> dict:
    data = make_dataset_dir(3, shape=(100, 130), seed=21)
    rng = np.random.default_rng(0)
    (data / "glioma" / "corrupt.jpg").write_bytes(
        b"\xff\xd8\xff\xe0" + rng.integers(0, 256, 300, dtype=np.uint8).tobytes()
    )
    (data / "pituitary" / "empty.png").write_bytes(b"")
    shutil.copy(data / "notumor" / "notumor_000.png", data / "notumor" / "readme.txt")  # ignored
    out = tmp_path_factory.mktemp("eval") / "out"
    code = main(
        [
            str(data),
            "--out",
            str(out),
            "--artifacts",
            str(tiny_artifacts / "classification"),
            "--batch-size",
            "5",
        ]
    )
    return {"code": code, "data": data, "out": out, "artifacts": tiny_artifacts / "classification"}


def test_exit_code_and_files(evaluated) -> None:
    assert evaluated["code"] == 0
    assert {p.name for p in evaluated["out"].iterdir()} == {
        "predictions.csv",
        "metrics.json",
        "failures.csv",
    }


def test_predictions_table(evaluated) -> None:
    df = pd.read_csv(evaluated["out"] / "predictions.csv")
    expected_cols = ["path", "label", "pred", *[c for m in MODELS for c in probability_columns(m)]]
    assert list(df.columns) == expected_cols
    good = {f"{c}/{c}_{i:03d}.png" for c in CLASS_NAMES for i in range(3)}
    assert set(df["path"]) == good and len(df) == len(good)  # one row per readable image
    assert (df["label"] == df["path"].str.split("/").str[0]).all()
    for m in MODELS:
        proba = df[probability_columns(m)].to_numpy()
        assert ((proba >= 0) & (proba <= 1)).all()
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    ens = df[probability_columns("ensemble")].to_numpy()
    assert (df["pred"] == [CLASS_NAMES[k] for k in ens.argmax(1)]).all()
    # the ensemble column is the meta-learner applied to the four base columns
    meta = load_meta(evaluated["artifacts"] / "meta")
    stacked = df[[c for m in BACKBONES for c in probability_columns(m)]].to_numpy(np.float32)
    np.testing.assert_allclose(meta.predict(stacked), ens, atol=1e-5)


def test_failures_listed_with_reasons(evaluated) -> None:
    fail = pd.read_csv(evaluated["out"] / "failures.csv")
    assert list(fail.columns) == ["path", "error"]
    reasons = dict(zip(fail["path"], fail["error"], strict=True))
    assert set(reasons) == BAD
    assert "empty" in reasons["pituitary/empty.png"]
    assert "truncated" in reasons["glioma/corrupt.jpg"]


def test_metrics_json_matches_predictions(evaluated) -> None:
    m = json.loads((evaluated["out"] / "metrics.json").read_text())
    df = pd.read_csv(evaluated["out"] / "predictions.csv")
    assert m["n_images"] == 12 and m["n_failed"] == 2
    assert m["ensemble_method"] == "meta-learner (stacking)" and m["missing_artifacts"] == []
    assert m["split"] == {"csv": None, "part": None}
    assert set(m["artifacts"]) == {*BACKBONES, "meta"}
    assert set(m["models"]) == set(MODELS)
    y = np.array([CLASS_NAMES.index(c) for c in df["label"]])
    for model in MODELS:
        rec = m["models"][model]
        assert {"accuracy", "macro_f1", "per_class", "confusion_matrix", "roc_auc"} <= set(rec)
        proba = df[probability_columns(model)].to_numpy()
        pred = proba.argmax(1)
        # recomputed independently (scikit-learn) from the CSV
        assert rec["accuracy"] == pytest.approx(float((pred == y).mean()))
        assert rec["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=range(4)).tolist()
        assert rec["macro_f1"] == pytest.approx(
            skm.f1_score(y, pred, labels=range(4), average="macro", zero_division=0)
        )
        for k, c in enumerate(CLASS_NAMES):
            assert rec["roc_auc"][c] == pytest.approx(skm.roc_auc_score(y == k, proba[:, k]))
            assert rec["per_class"][c]["support"] == 3
            assert rec["per_class"][c]["recall"] == pytest.approx(
                skm.recall_score(y == k, pred == k, zero_division=0)
            )


def test_record_in_artifacts_keeps_other_parts(tmp_path: Path) -> None:
    from ensemble.evaluate import record_in_artifacts

    (tmp_path / "resnet50").mkdir()
    (tmp_path / "vgg19").mkdir()
    (tmp_path / "vgg19" / "metrics.json").write_text('{"accuracy": 0.1}')  # old flat format
    (tmp_path / "resnet50" / "metrics.json").write_text(
        json.dumps({"evaluations": {"test": {"accuracy": 0.9}}})
    )
    metrics = {
        "n_images": 7,
        "tta": "hflip",
        "artifacts": {"resnet50": "aa", "vgg19": "bb", "meta": "cc"},
        "models": {"resnet50": {"accuracy": 0.5}, "vgg19": {"accuracy": 0.25}, "ensemble": {}},
    }
    written = record_in_artifacts(metrics, tmp_path, Path("rec/metrics.json"), "val")
    assert sorted(p.parent.name for p in written) == ["resnet50", "vgg19"]
    r = json.loads((tmp_path / "resnet50" / "metrics.json").read_text())["evaluations"]
    assert r["test"] == {"accuracy": 0.9}
    assert r["val"] == {
        "record": "rec/metrics.json",
        "weights_sha256": "aa",
        "tta": "hflip",
        "n_images": 7,
        "accuracy": 0.5,
    }
    v = json.loads((tmp_path / "vgg19" / "metrics.json").read_text())
    assert list(v) == ["evaluations"] and v["evaluations"]["val"]["accuracy"] == 0.25
    assert not (tmp_path / "meta").exists()


def test_reuse_runs_only_members_whose_weights_changed(evaluated, tmp_path: Path) -> None:
    """Reused columns come from the earlier table; the others and the final answer are rerun."""
    prev = tmp_path / "prev"
    shutil.copytree(evaluated["out"], prev)
    old = pd.read_csv(prev / "predictions.csv")
    marked = old.copy()
    marked[probability_columns("xception")] = 0.25  # visible only if reused
    marked.to_csv(prev / "predictions.csv", index=False)
    m = json.loads((prev / "metrics.json").read_text())
    m["artifacts"]["resnet50"] = "0" * 64  # as if resnet50 had been retrained since
    (prev / "metrics.json").write_text(json.dumps(m))

    out = tmp_path / "new"
    argv = [str(evaluated["data"]), "--out", str(out), "--artifacts", str(evaluated["artifacts"])]
    assert main([*argv, "--reuse", str(prev)]) == 0
    new = pd.read_csv(out / "predictions.csv")
    assert new["path"].tolist() == old["path"].tolist()
    np.testing.assert_array_equal(new[probability_columns("xception")].to_numpy(), 0.25)
    for name in ("resnet50", "inceptionv3", "vgg19"):  # rerun or reused: same numbers
        np.testing.assert_allclose(
            new[probability_columns(name)], old[probability_columns(name)], atol=1e-5
        )
    meta = load_meta(evaluated["artifacts"] / "meta")
    stacked = new[[c for n in meta.inputs for c in probability_columns(n)]].to_numpy(np.float32)
    np.testing.assert_allclose(
        new[probability_columns("ensemble")], meta.predict(stacked), atol=1e-5
    )
    record = json.loads((out / "metrics.json").read_text())
    assert record["reused"] == {"from": str(prev), "members": ["xception", "inceptionv3", "vgg19"]}
    assert record["n_failed"] == 2

    (prev / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="--reuse needs metrics.json.*JSONDecodeError"):
        main([*argv, "--reuse", str(prev)])
    (prev / "metrics.json").unlink()
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--reuse", str(prev)])
    assert exc.value.code == 2


def test_tta_is_recorded_and_reuse_needs_the_same_tta(evaluated, tmp_path: Path) -> None:
    first = json.loads((evaluated["out"] / "metrics.json").read_text())
    assert first["tta"] == "none"  # the tiny meta-learner records no input_tta
    assert first["runtimes"] == dict.fromkeys(BACKBONES, "tensorflow")  # $NEUROSTACK_RUNTIME
    out = tmp_path / "hflip"
    argv = [str(evaluated["data"]), "--out", str(out), "--artifacts", str(evaluated["artifacts"])]
    assert main([*argv, "--tta", "hflip", "--reuse", str(evaluated["out"])]) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["tta"] == "hflip"
    assert record["reused"]["members"] == []  # same weights, other augmentation: all rerun
    old = pd.read_csv(evaluated["out"] / "predictions.csv")
    new = pd.read_csv(out / "predictions.csv")
    assert new["path"].tolist() == old["path"].tolist()
    assert any(
        not np.allclose(new[probability_columns(n)], old[probability_columns(n)], atol=1e-4)
        for n in BACKBONES
    )
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--tta", "vflip"])
    assert exc.value.code == 2


def test_intensity_reference_scores_the_slices_the_pipeline_would_feed(
    evaluated, tmp_path: Path
) -> None:
    """A reference that flags everything: every row is the ensemble on the mapped copy."""
    from ensemble.inference import load_ensemble
    from ensemble.intensity import check_slice, correct_gamma, load_reference
    from neurostack.imaging import load_image
    from neurostack.preprocess import crop, find_brain_box

    ref_dir = flag_everything_reference(tmp_path / "ref")
    prev = tmp_path / "prev"  # an evaluation of the slices as given, marked to show reuse
    shutil.copytree(evaluated["out"], prev)
    old = pd.read_csv(prev / "predictions.csv")
    old[probability_columns("xception")] = 0.25
    old.to_csv(prev / "predictions.csv", index=False)
    out = tmp_path / "mapped"
    argv = [str(evaluated["data"]), "--out", str(out), "--artifacts", str(evaluated["artifacts"])]
    assert main([*argv, "--intensity-reference", str(ref_dir), "--reuse", str(prev)]) == 0
    new = pd.read_csv(out / "predictions.csv")
    assert new["intensity_corrected"].all() and len(new) == len(old)
    record = json.loads((out / "metrics.json").read_text())
    assert record["n_intensity_corrected"] == len(new)
    ref = load_reference(ref_dir)
    assert record["intensity_correction"]["features_sha256"] == ref.config["features_sha256"]
    # probabilities computed on the slices as given are not reused for mapped slices
    assert not np.allclose(new[probability_columns("xception")], 0.25)
    # known answer: the ensemble on the mapped copy's head crop, computed here by hand
    ensemble = load_ensemble(evaluated["artifacts"])
    crops = []
    for path in new["path"].head(3):
        gray = load_image(evaluated["data"] / path).gray
        mapped = correct_gamma(gray, check_slice(ref, gray).relative_gamma)
        crops.append(crop(mapped, find_brain_box(mapped)))
    want = ensemble.predict_crops(crops).ensemble
    np.testing.assert_allclose(
        new[probability_columns("ensemble")].head(3).to_numpy(), want, atol=1e-5
    )
    # a named reference that is not one is refused before any model runs
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--intensity-reference", str(tmp_path / "nowhere")])
    assert exc.value.code == 2 and not (tmp_path / "nowhere").exists()
    # the default scores the slices as given and has no such column
    plain = json.loads((evaluated["out"] / "metrics.json").read_text())
    assert plain["intensity_correction"] is None and plain["n_intensity_corrected"] == 0
    assert "intensity_corrected" not in pd.read_csv(evaluated["out"] / "predictions.csv")


def test_cascade_evaluation_marks_escalated_rows_and_refuses_reuse(
    evaluated, tmp_path: Path
) -> None:
    from neurostack.artifacts import sha256_file

    root = tmp_path / "cls"
    root.mkdir()
    for name in BACKBONES:
        (root / name).symlink_to(evaluated["artifacts"] / name, target_is_directory=True)
    cfg = json.loads((evaluated["artifacts"] / "meta" / "config.json").read_text())
    for name, tta in (("meta", "hflip"), ("meta_single_crop", "none")):
        shutil.copytree(evaluated["artifacts"] / "meta", root / name)
        (root / name / "config.json").write_text(json.dumps(cfg | {"input_tta": tta}))
    shas = {n: sha256_file(root / n / "weights.npz") for n in ("meta", "meta_single_crop")}
    (root / "cascade.json").write_text(json.dumps({"threshold": 1.0, "meta_sha256": shas}))
    out = tmp_path / "cascade"
    argv = [str(evaluated["data"]), "--out", str(out), "--artifacts", str(root)]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--tta", "cascade", "--reuse", str(evaluated["out"])])
    assert exc.value.code == 2
    assert main([*argv, "--tta", "cascade"]) == 0
    record = json.loads((out / "metrics.json").read_text())
    table = pd.read_csv(out / "predictions.csv")
    # threshold 1.0: every slice escalated, so the answers are the default mode's
    assert record["tta"] == "cascade" and record["cascade_threshold"] == 1.0
    assert record["artifacts"]["meta_single_crop"] == shas["meta_single_crop"]
    assert record["artifacts"]["meta"] == shas["meta"]
    assert table["escalated"].all() and record["n_escalated"] == len(table)
    assert main([str(evaluated["data"]), "--out", str(tmp_path / "hf"), "--artifacts",
                 str(root), "--tta", "hflip"]) == 0
    hflip = pd.read_csv(tmp_path / "hf" / "predictions.csv")
    cols = probability_columns("ensemble")
    np.testing.assert_allclose(table[cols], hflip[cols], atol=1e-5)
