"""The shipped ``artifacts/`` tree: checksums, configs and records agree with the weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ensemble.inference import select_meta_folder
from ensemble.registry import BACKBONES
from neurostack import CLASS_NAMES
from neurostack.artifacts import sha256_file

REPO = Path(__file__).resolve().parents[1]
ART = REPO / "artifacts"
MB = 1024 * 1024


def _configs() -> dict[str, dict]:
    out = {}
    for name in BACKBONES:
        cfg = ART / "classification" / name / "config.json"
        if cfg.is_file():
            out[name] = json.loads(cfg.read_text())
    return out


def test_at_least_one_classifier_and_the_segmenter_are_shipped() -> None:
    assert _configs(), "no classifier in artifacts/classification"
    assert (ART / "segmentation" / "resunet" / "weights.npz").is_file()


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_classifier_folder_describes_itself(name: str) -> None:
    folder = ART / "classification" / name
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["backbone"] == name and cfg["class_names"] == list(CLASS_NAMES)
    assert cfg["input_size"] == cfg["native_size"] == BACKBONES[name].native_size
    assert cfg["preprocessing"]["keras_preprocess_mode"] == BACKBONES[name].preprocess_mode
    assert sha256_file(folder / cfg["weights_file"]) == cfg["weights_sha256"]
    log = pd.read_csv(folder / "training_log.csv")
    assert {"epoch", "val_accuracy", "image_size", "seconds"} <= set(log.columns)
    assert log["epoch"].tolist() == list(range(len(log)))  # one row per epoch, merged runs too
    # per-model share of the evaluations (ensemble.evaluate --record-in-artifacts)
    evaluations = json.loads((folder / "metrics.json").read_text())["evaluations"]
    assert {"val", "test"} <= set(evaluations)
    for part, rec in evaluations.items():
        assert rec["weights_sha256"] == cfg["weights_sha256"], f"{name} {part} is stale"
    tr = cfg["training"]
    assert tr["epochs_run_total" if "epochs_run_total" in tr else "epochs_run"] == len(log)


def test_segmenter_checksum_and_log() -> None:
    folder = ART / "segmentation" / "resunet"
    cfg = json.loads((folder / "config.json").read_text())
    assert sha256_file(folder / cfg["weights_file"]) == cfg["weights_sha256"]
    log = pd.read_csv(folder / "training_log.csv")
    # an ensemble (segmentation.combine) stacks its members' logs under a "member" column
    groups = [g for _, g in log.groupby("member", sort=False)] if "member" in log else [log]
    if "members" in cfg:
        assert len(groups) == len(cfg["members"])
    for group in groups:
        assert group["epoch"].tolist() == list(range(len(group)))
    total = cfg.get("epochs_completed_total", cfg.get("epochs_completed"))
    assert total == len(log)
    # segmentation.evaluate --record-in-artifacts: every entry describes the shipped weights
    evaluations = json.loads((folder / "metrics.json").read_text())["evaluations"]
    assert {"val", "test"} <= set(evaluations)
    for split, rec in evaluations.items():
        assert rec["weights_sha256"] == cfg["weights_sha256"], f"resunet {split} is stale"
        record = json.loads((REPO / rec["record"]).read_text())
        assert record["mean_dice"] == rec["mean_dice"] and record["split"] == split


@pytest.mark.parametrize("folder", ["meta", "meta_single_crop"])
def test_meta_learner_was_fitted_on_the_shipped_base_weights(folder: str) -> None:
    configs = _configs()
    path = ART / "classification" / folder / "config.json"
    meta = json.loads(path.read_text())
    # its own record of the fit: group cross-validated accuracy on the rows it was fitted on
    metrics = json.loads((path.parent / "metrics.json").read_text())
    assert metrics["cv_accuracy"] == pytest.approx(np.mean(metrics["cv_fold_accuracies"]))
    assert metrics["input_tta"] == meta["input_tta"]
    recorded = meta["training"]["input_models_sha256"]
    assert set(recorded) == set(meta["inputs"]) == set(BACKBONES)
    for name, sha in recorded.items():
        assert sha == configs[name]["weights_sha256"], f"{folder} is stale for {name}"
    # fitted on validation probabilities made with the mode it is used for
    heldout = json.loads((REPO / meta["training"]["heldout_predictions"]).parent.joinpath(
        "metrics.json").read_text())
    assert heldout["split"]["part"] == "val"
    assert metrics["n_rows"] == heldout["n_images"] - heldout["n_failed"]
    assert heldout["tta"] == meta["input_tta"]


def test_evaluation_records_were_made_with_the_shipped_weights() -> None:
    configs = _configs()
    records = sorted((ART / "evaluation" / "classification").glob("*/metrics.json"))
    assert records, "no classification evaluation record"
    for path in records:
        record = json.loads(path.read_text())
        tta = record.get("tta", "none")
        if tta == "cascade":  # both meta-learners, the ones its threshold was chosen for
            chosen_for = json.loads((ART / "classification" / "cascade.json").read_text())
            assert record["artifacts"]["meta_single_crop"] == chosen_for["meta_sha256"][
                "meta_single_crop"] == json.loads((ART / "classification" / "meta_single_crop"
                                                   / "config.json").read_text())["weights_sha256"]
            assert record["artifacts"]["meta"] == chosen_for["meta_sha256"]["meta"]
            tta = "hflip"  # the default mode answers the unsure slices
        meta_dir = select_meta_folder(ART / "classification", tta)
        meta_cfg = json.loads((meta_dir / "config.json").read_text())
        # the meta-learner was fitted on, and is applied to, inputs of one augmentation
        assert tta == meta_cfg.get("input_tta", "none"), path
        used = record["artifacts"]
        for name, sha in used.items():
            if name in configs:
                assert sha == configs[name]["weights_sha256"], f"{path} is stale for {name}"
            elif name == "meta":
                assert sha == meta_cfg["weights_sha256"], f"{path} is stale for {meta_dir.name}"
        assert set(configs) <= set(used), f"{path} lacks a shipped model"
    seg_sha = json.loads((ART / "segmentation" / "resunet" / "config.json").read_text())[
        "weights_sha256"
    ]
    for path in sorted((ART / "evaluation" / "segmentation").glob("*/metrics.json")):
        assert json.loads(path.read_text())["artifact"]["weights_sha256"] == seg_sha, path


@pytest.mark.parametrize("tta", [None, "none"])
def test_bfloat16_record_pins_the_shipped_weights(tta: str | None) -> None:
    """A retrained model without a new precision check would silently fall back to float32."""
    from ensemble.precision import auto_precision, read_record

    root = ART / "classification"
    record = read_record(root, tta)
    if record is None:
        pytest.skip(f"no bfloat16 check recorded for test-time augmentation {tta}")
    assert record["checked_on"]["part"] == "test" and record["tolerance"] == 0.0
    if tta is not None:  # a mode's own record was checked in that mode
        assert record["checked_on"]["tta"] == tta
    per_model, why = auto_precision(root, frozenset({"avx512_bf16"}), tta=tta)
    assert "accuracy unchanged" in why, why
    assert {n for n, p in per_model.items() if p == "bfloat16"} == {
        e.split("=")[0] for e in record["precision"].split(",")}
    for name, acc in record["accuracy"].items():  # the check itself: nothing moved
        assert acc["float32"] == acc["bfloat16"], name


def test_intensity_shortcut_record_covers_the_shipped_split() -> None:
    path = ART / "evaluation" / "classification" / "intensity_shortcut.json"
    rec = json.loads(path.read_text())
    split = pd.read_csv(REPO / rec["split"])
    sizes = split["split"].value_counts()
    assert rec["unreadable"] == []  # every slice of both parts measured
    assert rec["n_fit"] == sizes[rec["fit_part"]] and rec["n_score"] == sizes[rec["score_part"]]
    assert "test" not in (rec["fit_part"], rec["score_part"])  # the test split stays untouched
    assert set(rec["median_relative_gamma"]) == set(CLASS_NAMES)
    assert rec["majority_baseline"] < rec["accuracy"] <= 1


def test_intensity_reference_loads_and_its_threshold_is_reproducible() -> None:
    from ensemble.intensity import REFERENCE_FOLDER, fit_reference, load_reference

    ref = load_reference(ART / "classification" / REFERENCE_FOLDER)  # SHA-256 checked
    split = pd.read_csv(REPO / ref.config["split"])
    assert len(ref.features) == (split["split"] == ref.config["fit_part"]).sum()
    refit = fit_reference(ref.features, k=ref.k, quantile=ref.config["quantile"])
    assert refit.threshold == pytest.approx(ref.threshold, rel=1e-5)
    rates = {(r["corruption"], r["severity"]): r["flagged_share"]
             for r in ref.config["check"]["flagged_share"]}
    assert rates[("none", 0)] <= 0.05 and len(rates) == 15


def test_quality_reference_loads_and_its_limits_are_reproducible() -> None:
    from ensemble.quality import REFERENCE_FOLDER, fit_reference, load_reference

    ref = load_reference(ART / "classification" / REFERENCE_FOLDER)  # SHA-256 checked
    split = pd.read_csv(REPO / ref.config["split"])
    assert ref.config["fit_part"] == "train" and ref.config["unreadable"] == []
    assert len(ref.features) == (split["split"] == "train").sum()
    refit = fit_reference(ref.features, noise_quantile=ref.config["noise_quantile"],
                          detail_quantile=ref.config["detail_quantile"])
    assert (refit.noise_limit, refit.detail_limit) == (ref.noise_limit, ref.detail_limit)
    noisy, smooth = ref.flags(ref.features)
    beyond = ref.config["training_classes_beyond_limits"]
    assert sum(beyond["noisy"].values()) == noisy.sum()
    assert sum(beyond["smooth"].values()) == smooth.sum()
    rates = {(r["corruption"], r["severity"]): r for r in ref.config["check"]["flagged_share"]}
    assert rates[("none", 0)]["flagged_share"] <= 0.05 and len(rates) == 15
    assert rates[("rician_noise", 2)]["noisy_share"] >= 0.9  # what it was built to catch


def test_all_weights_together_stay_under_200_mb() -> None:
    total = sum(p.stat().st_size for p in ART.rglob("weights.npz"))
    assert total < 200 * MB, f"{total / MB:.1f} MB of weights"


@pytest.mark.slow
def test_shipped_classifiers_give_the_same_answers_in_litert() -> None:
    """The default runtime ("auto": three backbones in LiteRT) reproduces TensorFlow's output."""
    from ensemble.inference import AUTO_RUNTIMES, load_ensemble
    from neurostack.imaging import load_image
    from neurostack.litert import litert_available
    from neurostack.preprocess import crop, find_brain_box

    if not litert_available():
        pytest.skip("ai-edge-litert missing")
    samples = sorted((ART / "samples").glob("*.jpg"))
    crops = []
    for cls in CLASS_NAMES:  # one slice per class
        gray = load_image(next(p for p in samples if p.name.startswith(cls)).read_bytes()).gray
        crops.append(crop(gray, find_brain_box(gray)))
    ref = load_ensemble(ART / "classification", runtime="tensorflow")
    auto = load_ensemble(ART / "classification", runtime="auto")
    assert auto.runtimes == AUTO_RUNTIMES and auto.tta == ref.tta == "hflip"
    want, got = ref.predict_crops(crops), auto.predict_crops(crops)
    for name in BACKBONES:
        np.testing.assert_allclose(got.per_model[name], want.per_model[name], atol=1e-4)
    np.testing.assert_allclose(got.ensemble, want.ensemble, atol=1e-4)
    assert list(got.ensemble.argmax(1)) == list(want.ensemble.argmax(1))


def test_outline_confidence_record_is_reproducible_from_the_shipped_evaluations() -> None:
    from segmentation import confidence as oc

    seg = ART / "segmentation" / "resunet"
    config = json.loads((seg / "config.json").read_text())
    record = oc.read_record(seg, config["weights_sha256"])
    assert record is not None, "outline_confidence.json missing, stale or failing its rule"
    assert record["weights_sha256"] == sha256_file(seg / config["weights_file"])
    assert record["operating_point"] == {
        "threshold": config["threshold"], "postprocess": config["postprocess"],
        "test_time_augmentation": config["test_time_augmentation"]}
    evals = ART / "evaluation" / "segmentation"
    val = pd.read_csv(evals / "val" / "per_image.csv", dtype={"id": str})
    sweep = oc.confidence_sweep(val["outline_confidence"], val["dice"])
    assert oc.choose_flag_threshold(sweep) == record["flag_threshold"]
    again = oc.flag_summary(val["outline_confidence"], val["dice"], record["flag_threshold"])
    assert again == pytest.approx(record["validation"])
    test = pd.read_csv(evals / "test" / "per_image.csv", dtype={"id": str})
    scored = oc.flag_summary(test["outline_confidence"], test["dice"], record["flag_threshold"])
    stored = {k: v for k, v in record["evaluated"]["test"].items() if k != "per_image"}
    assert scored == pytest.approx(stored)


@pytest.mark.slow
def test_review_flag_record_is_reproducible_from_the_shipped_predictions(tmp_path: Path) -> None:
    """Refit into a copy (the out-of-fold outputs are recomputed) and rescore the test runs."""
    import shutil

    from ensemble import review

    shipped = review.read_record(ART / "classification")
    assert shipped is not None, "artifacts/classification/review.json missing or unreadable"
    root = tmp_path / "classification"
    for name in ("meta", "meta_single_crop"):
        shutil.copytree(ART / "classification" / name, root / name)
    evals = ART / "evaluation" / "classification"
    record = review.fit([evals / "val" / "predictions.csv",
                         evals / "val_single_crop" / "predictions.csv"], root)
    for meta, entry in shipped["meta_learners"].items():
        again = record["meta_learners"][meta]
        assert again["meta_sha256"] == entry["meta_sha256"] == sha256_file(
            ART / "classification" / meta / "weights.npz")
        assert again["threshold"] == entry["threshold"]
        assert again["validation"] == pytest.approx(entry["validation"], abs=1e-9)
        assert again["passes_rule"] == entry["passes_rule"]
    assert shipped["meta_learners"]["meta"]["passes_rule"]  # the default mode's flag is used
    runs = ("test", "test_single_crop", "test_cascade")
    scored = review.score([evals / r / "predictions.csv" for r in runs], root)
    for r in runs:
        stored = {k: v for k, v in shipped["evaluated"][r].items()
                  if k not in ("risk_coverage", "predictions")}
        assert scored[r] == pytest.approx(stored), r
