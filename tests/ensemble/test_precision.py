"""ensemble.precision: the recorded bfloat16 check and the "auto" precision it drives."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ensemble import precision as prec
from ensemble.registry import BACKBONES

NATIVE = frozenset({"avx2", "avx512f", "avx512_bf16"})
AVX2 = frozenset({"avx2", "fma"})
SHAS = {name: f"{i:064x}" for i, name in enumerate((*BACKBONES, "meta"), start=1)}


def _report(verdict: str = "unchanged", n: int = 10) -> dict:
    models = {
        name: {"accuracy_float32": 0.9, "accuracy_bfloat16": 0.9, "agreement": 1.0,
               "max_abs_probability_difference": 0.01}
        for name in (*BACKBONES, "ensemble")
    }
    return {"verdict": verdict, "n_images": n, "models": models, "split_csv": "split.csv",
            "part": "test", "tolerance": 0.0}


def _tree(root: Path, shas: dict[str, str] = SHAS) -> Path:
    for name, sha in shas.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "config.json").write_text(json.dumps({"weights_sha256": sha}))
    return root


def _spec(**bf16: bool) -> dict[str, str]:
    return {n: "bfloat16" if bf16.get(n) else "float32" for n in BACKBONES}


def _write(root: Path, record: dict) -> None:
    (root / prec.RECORD_FILE).write_text(json.dumps(record))


def _recorded_copy(tiny_artifacts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   **bf16: bool) -> Path:
    """Copy of the tiny classifiers with a passed check recorded for ``bf16``, on a native CPU."""
    root = tmp_path / "classification"
    shutil.copytree(tiny_artifacts / "classification", root)
    shas = prec.current_weights_sha256(root)
    assert set(shas) == {*BACKBONES, "meta"}
    _write(root, prec.make_record(_spec(**bf16), _report(), shas, recorded_at="t"))
    monkeypatch.setattr(prec, "has_native_bfloat16", lambda flags=None: True)
    return root


def test_make_record_pins_every_checksum_and_keeps_only_the_bfloat16_models() -> None:
    rec = prec.make_record(_spec(resnet50=True, vgg19=True), _report(), SHAS,
                           recorded_at="2026-12-06T11:00:00+00:00", command="cmd")
    assert rec["precision"] == "resnet50=bfloat16,vgg19=bfloat16"
    assert rec["weights_sha256"] == SHAS
    assert rec["checked_on"] == {"split_csv": "split.csv", "part": "test", "n_images": 10}
    assert set(rec["accuracy"]) == {*BACKBONES, "ensemble"}
    assert rec["accuracy"]["ensemble"]["bfloat16"] == 0.9


@pytest.mark.parametrize(
    ("per_model", "report", "shas", "message"),
    [
        (_spec(resnet50=True), _report("changed"), SHAS, "verdict 'changed'"),
        (_spec(resnet50=True), _report(n=0), SHAS, "on 0 images"),
        (_spec(), _report(), SHAS, "uses no bfloat16"),
        ({"resnet50": "bfloat16"}, _report(), SHAS, "per_model must give"),
        (_spec(vgg19=True), _report(), {k: v for k, v in SHAS.items() if k != "meta"},
         "lacks ['meta']"),
    ],
)
def test_make_record_refuses_what_was_not_checked(per_model, report, shas, message) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        prec.make_record(per_model, report, shas, recorded_at="t")


def test_auto_is_float32_without_native_bfloat16_even_with_a_record(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    _write(root, prec.make_record(_spec(resnet50=True), _report(), SHAS, recorded_at="t"))
    per_model, why = prec.auto_precision(root, AVX2)
    assert per_model == _spec()
    assert "no native bfloat16" in why


def test_auto_round_trip_uses_the_recorded_spec_on_a_native_cpu(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    _write(root, prec.make_record(_spec(xception=True, resnet50=True), _report(), SHAS,
                                  recorded_at="t"))
    per_model, why = prec.auto_precision(root, NATIVE)
    assert per_model == _spec(xception=True, resnet50=True)
    assert why.startswith("xception=bfloat16,resnet50=bfloat16: accuracy unchanged")
    assert "test split, 10 slices" in why


def test_auto_is_float32_without_a_record(tmp_path: Path) -> None:
    per_model, why = prec.auto_precision(_tree(tmp_path), NATIVE)
    assert per_model == _spec() and "no precision.json" in why


@pytest.mark.parametrize("changed", ["resnet50", "meta"])
def test_auto_refuses_a_record_made_for_other_weights(tmp_path: Path, changed: str) -> None:
    root = _tree(tmp_path)
    _write(root, prec.make_record(_spec(resnet50=True), _report(), SHAS, recorded_at="t"))
    _tree(root, {changed: "f" * 64})  # the model was retrained after the check
    per_model, why = prec.auto_precision(root, NATIVE)
    assert per_model == _spec()
    assert f"other weights of {changed}" in why


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "unreadable precision record"),
        (json.dumps({"format": 99, "precision": "bfloat16", "weights_sha256": {}}),
         "not a precision record of format 1"),
        (json.dumps({"format": 1, "precision": "resnet18=bfloat16", "weights_sha256": SHAS}),
         "allowed"),
    ],
)
def test_a_broken_record_means_float32_with_the_reason(tmp_path: Path, text: str,
                                                       message: str) -> None:
    root = _tree(tmp_path)
    (root / prec.RECORD_FILE).write_text(text)
    per_model, why = prec.auto_precision(root, NATIVE)
    assert per_model == _spec()
    assert message in why
    if "unreadable" in message or "format 1" in message:
        with pytest.raises(ValueError, match=message):
            prec.read_record(root)


def test_load_ensemble_auto_follows_the_record(tiny_artifacts: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from ensemble.inference import load_ensemble

    root = _recorded_copy(tiny_artifacts, tmp_path, monkeypatch, vgg19=True)
    ens = load_ensemble(root, precision="auto", runtime="tensorflow")
    assert {n: c.precision for n, c in ens.members.items()} == _spec(vgg19=True)
    assert ens.precision_note.startswith("vgg19=bfloat16: accuracy unchanged")
    monkeypatch.setattr(prec, "has_native_bfloat16", lambda flags=None: False)
    ens = load_ensemble(root, precision="auto", runtime="tensorflow")
    assert {c.precision for c in ens.members.values()} == {"float32"}
    assert "no native bfloat16" in ens.precision_note


def test_auto_runtime_keeps_one_graph_once_a_member_is_bfloat16(
        tiny_artifacts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ensemble.inference import AUTO_RUNTIMES, load_ensemble
    from neurostack.litert import litert_available

    root = _recorded_copy(tiny_artifacts, tmp_path, monkeypatch, resnet50=True)
    ens = load_ensemble(root, precision="auto", runtime="auto")
    assert set(ens.runtimes.values()) == {"tensorflow"} and ens._fused is not None
    if litert_available():  # all float32: the measured per-model runtimes
        assert load_ensemble(root, precision="float32", runtime="auto").runtimes == AUTO_RUNTIMES


def test_prepare_litert_converts_nothing_when_auto_runs_all_in_tensorflow(
        tiny_artifacts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ensemble.inference import prepare_litert
    from neurostack import litert

    root = _recorded_copy(tiny_artifacts, tmp_path, monkeypatch, xception=True)
    monkeypatch.setenv(litert.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(prec.PRECISION_ENV, raising=False)
    monkeypatch.delenv("NEUROSTACK_RUNTIME", raising=False)  # tests/conftest.py sets it
    assert prepare_litert(root) == {}
    assert not (tmp_path / "cache").exists()
    if litert.litert_available():  # without native bfloat16: the float32 LiteRT members
        monkeypatch.setattr(prec, "has_native_bfloat16", lambda flags=None: False)
        assert set(prepare_litert(root)) == {"xception", "inceptionv3", "resnet50"}


def test_default_precision_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(prec.PRECISION_ENV, raising=False)
    assert prec.default_precision() == "auto"
    monkeypatch.setenv(prec.PRECISION_ENV, " resnet50=bfloat16 ")
    assert prec.default_precision() == "resnet50=bfloat16"
    monkeypatch.setenv(prec.PRECISION_ENV, "")
    assert prec.default_precision() == "auto"


def test_record_names_its_bfloat16_recipe_and_auto_refuses_another(tmp_path: Path) -> None:
    from ensemble.inference import BFLOAT16_RECIPE

    root = _tree(tmp_path)
    record = prec.make_record(_spec(vgg19=True), _report(), SHAS, recorded_at="t")
    assert record["bfloat16_recipe"] == BFLOAT16_RECIPE
    for old in ({k: v for k, v in record.items() if k != "bfloat16_recipe"},  # recipe 1
                record | {"bfloat16_recipe": BFLOAT16_RECIPE + 1}):
        _write(root, old)
        per_model, why = prec.auto_precision(root, NATIVE)
        assert per_model == _spec()
        assert "ran bfloat16 recipe" in why and "--record" in why
    _write(root, record)
    assert prec.auto_precision(root, NATIVE)[0] == _spec(vgg19=True)


def _two_modes(root: Path) -> None:
    """Make ``meta`` the mirror-mode meta-learner and add a single-crop one."""
    shutil.copytree(root / "meta", root / "meta_single_crop")
    cfg = json.loads((root / "meta" / "config.json").read_text())
    (root / "meta" / "config.json").write_text(json.dumps(cfg | {"input_tta": "hflip"}))


def test_each_mode_has_its_own_record(tmp_path: Path) -> None:
    root = _tree(tmp_path / "cls")
    (root / "meta_single_crop").mkdir()
    single_sha = "e" * 64
    (root / "meta_single_crop" / "config.json").write_text(
        json.dumps({"weights_sha256": single_sha, "input_tta": "none"}))
    (root / "meta" / "config.json").write_text(
        json.dumps({"weights_sha256": SHAS["meta"], "input_tta": "hflip"}))
    assert prec.default_tta(root) == "hflip"
    assert prec.record_path(root) == prec.record_path(root, "hflip") == root / prec.RECORD_FILE
    assert prec.record_path(root, "none") == root / "precision_single_crop.json"
    assert prec.current_weights_sha256(root, "none")["meta"] == single_sha
    _write(root, prec.make_record(_spec(xception=True), _report(), SHAS, recorded_at="t"))
    # the default mode's record does not hold for single crops: float32 there
    per_model, why = prec.auto_precision(root, NATIVE, tta="none")
    assert set(per_model.values()) == {"float32"} and "precision_single_crop.json" in why
    single = prec.make_record(_spec(resnet50=True), _report(),
                              {**SHAS, "meta": single_sha}, recorded_at="t")
    (root / "precision_single_crop.json").write_text(json.dumps(single))
    assert prec.auto_precision(root, NATIVE, tta="none")[0] == _spec(resnet50=True)
    assert prec.auto_precision(root, NATIVE)[0] == _spec(xception=True)
    # a record pinned to the other meta-learner is stale for this mode
    (root / "precision_single_crop.json").write_text(json.dumps(single | {
        "weights_sha256": SHAS}))
    per_model, why = prec.auto_precision(root, NATIVE, tta="none")
    assert set(per_model.values()) == {"float32"} and "other weights of meta" in why
    with pytest.raises(ValueError, match="received 'vflip'"):
        prec.record_path(root, "vflip")


@pytest.mark.slow
def test_with_tta_reloads_only_the_members_whose_precision_differs(
        tiny_artifacts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ensemble.inference import load_ensemble

    root = tmp_path / "classification"
    shutil.copytree(tiny_artifacts / "classification", root)
    _two_modes(root)
    monkeypatch.setattr(prec, "has_native_bfloat16", lambda flags=None: True)
    _write(root, prec.make_record(_spec(xception=True), _report(),
                                  prec.current_weights_sha256(root), recorded_at="t"))
    (root / "precision_single_crop.json").write_text(json.dumps(prec.make_record(
        _spec(resnet50=True), _report(), prec.current_weights_sha256(root, "none"),
        recorded_at="t")))

    ens = load_ensemble(root, precision="auto", fused=False)
    assert ens.tta == "hflip"
    assert {n: c.precision for n, c in ens.members.items()} == _spec(xception=True)
    fast = ens.with_tta("none")
    assert {n: c.precision for n, c in fast.members.items()} == _spec(resnet50=True)
    assert fast.members["inceptionv3"] is ens.members["inceptionv3"]  # same precision: shared
    assert fast.members["vgg19"] is ens.members["vgg19"]
    assert fast.members["xception"] is not ens.members["xception"]
    assert "resnet50=bfloat16" in fast.precision_note
    assert ens.members["xception"].precision == "bfloat16"  # the default mode is untouched
    # an explicit spec is kept as asked, whatever the mode
    explicit = load_ensemble(root, precision="float32", fused=False).with_tta("none")
    assert {c.precision for c in explicit.members.values()} == {"float32"}
