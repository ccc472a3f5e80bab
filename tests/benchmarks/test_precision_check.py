"""benchmarks/precision_check.py on a tiny random tree: a per-model spec and its recommendation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import precision_check
from ensemble.inference import parse_precision

pytestmark = pytest.mark.slow


def test_per_model_spec_report_and_recommendation(tiny_artifacts: Path, make_dataset_dir,
                                                  tmp_path: Path) -> None:
    data = make_dataset_dir(3, seed=7)
    (data / "glioma" / "broken.png").write_bytes(b"not an image")
    rows = [{"path": p.relative_to(data).as_posix(), "label": p.parent.name, "group": i,
             "split": "test"} for i, p in enumerate(sorted(data.glob("*/*.png")))]
    split = tmp_path / "split.csv"
    pd.DataFrame(rows).to_csv(split, index=False)
    out = tmp_path / "check.json"
    code = precision_check.main(["--artifacts", str(tiny_artifacts), "--data-dir", str(data),
                                 "--split-csv", str(split), "--part", "test",
                                 "--precision", "resnet50=bfloat16", "--json", str(out)])
    report = json.loads(out.read_text())
    assert code == (0 if report["verdict"] == "unchanged" else 1)
    assert report["reduced_precision"] == "resnet50=bfloat16"
    assert report["n_images"] == 12 and [f["path"] for f in report["failures"]] == [
        "glioma/broken.png"]
    models = report["models"]
    assert models["resnet50"]["precision"] == "bfloat16"
    for name in ("xception", "inceptionv3", "vgg19"):  # float32 on both sides: identical
        assert models[name]["precision"] == "float32"
        assert models[name]["accuracy_difference"] == 0.0 and models[name]["agreement"] == 1.0
    # the recommendation keeps bfloat16 only where the model's accuracy did not change
    recommended = parse_precision(report["recommended_precision"])
    resnet_same = models["resnet50"]["accuracy_difference"] == 0.0
    assert recommended["resnet50"] == ("bfloat16" if resnet_same else "float32")
    assert {recommended[n] for n in ("xception", "inceptionv3", "vgg19")} == {"float32"}


def test_bad_spec_is_refused_before_any_work(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        precision_check.main(["--data-dir", str(tmp_path), "--precision", "resnet18=bfloat16"])
    assert "allowed" in capsys.readouterr().err


def test_auto_checks_the_pipeline_precision_and_is_never_recorded(
        tiny_artifacts: Path, make_dataset_dir, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        precision_check.main(["--data-dir", str(tmp_path), "--precision", "auto", "--record"])
    assert exc.value.code == 2 and "explicit --precision spec" in capsys.readouterr().err
    data = make_dataset_dir(2, seed=8)
    rows = [{"path": p.relative_to(data).as_posix(), "label": p.parent.name, "group": i,
             "split": "test"} for i, p in enumerate(sorted(data.glob("*/*.png")))]
    pd.DataFrame(rows).to_csv(tmp_path / "split.csv", index=False)
    report = precision_check.compare(tiny_artifacts, data, tmp_path / "split.csv", "test",
                                     precision="auto", log=lambda m: None)
    # no precision record in the tiny tree: "auto" is float32 everywhere, so nothing moves
    assert report["reduced_precision"] == "float32" and "float32" in report[
        "reduced_precision_note"]
    assert all(m["agreement"] == 1.0 for m in report["models"].values())


def test_record_lets_auto_use_the_checked_spec(tiny_artifacts: Path, make_dataset_dir,
                                              tmp_path: Path) -> None:
    import shutil

    from ensemble.precision import RECORD_FILE, auto_precision, read_record

    art = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts / "classification", art / "classification")
    data = make_dataset_dir(1, seed=3)
    rows = [{"path": p.relative_to(data).as_posix(), "label": p.parent.name, "group": i,
             "split": "test"} for i, p in enumerate(sorted(data.glob("*/*.png")))]
    split = tmp_path / "split.csv"
    pd.DataFrame(rows).to_csv(split, index=False)
    args = ["--artifacts", str(art), "--data-dir", str(data), "--split-csv", str(split),
            "--precision", "xception=bfloat16,vgg19=bfloat16", "--record"]
    # tolerance 1: any accuracy change is accepted, so the check passes and is recorded
    assert precision_check.main([*args, "--tolerance", "1"]) == 0
    record = read_record(art / "classification")
    assert record["precision"] == "xception=bfloat16,vgg19=bfloat16"
    assert record["checked_on"]["n_images"] == 4 and record["tolerance"] == 1.0
    assert "--record" in record["command"]
    per_model, _ = auto_precision(art / "classification", frozenset({"avx512_bf16"}))
    assert per_model == parse_precision("xception=bfloat16,vgg19=bfloat16")
    # a check that cannot pass (negative tolerance) writes nothing and fails
    (art / "classification" / RECORD_FILE).unlink()
    assert precision_check.main([*args, "--tolerance", "-1"]) == 1
    assert not (art / "classification" / RECORD_FILE).exists()
    # the record pins the default meta-learner in its own mode: another mode is not recorded
    out = tmp_path / "mirror.json"
    assert precision_check.main([*args, "--tolerance", "1", "--tta", "hflip",
                                 "--json", str(out)]) == 1
    report = json.loads(out.read_text())
    assert report["tta"] == "hflip" and report["meta_input_tta"] == "none"
    assert not (art / "classification" / RECORD_FILE).exists()


def test_a_single_crop_check_is_recorded_for_that_mode_only(tiny_artifacts: Path,
                                                             make_dataset_dir,
                                                             tmp_path: Path) -> None:
    import shutil

    from ensemble.precision import MODE_RECORD_FILES, RECORD_FILE, auto_precision, read_record

    cls = tmp_path / "artifacts" / "classification"
    shutil.copytree(tiny_artifacts / "classification", cls)
    shutil.copytree(cls / "meta", cls / "meta_single_crop")  # fitted on single crops
    config = json.loads((cls / "meta" / "config.json").read_text())
    (cls / "meta" / "config.json").write_text(json.dumps(config | {"input_tta": "hflip"}))
    data = make_dataset_dir(1, seed=3)
    rows = [{"path": p.relative_to(data).as_posix(), "label": p.parent.name, "group": i,
             "split": "test"} for i, p in enumerate(sorted(data.glob("*/*.png")))]
    split = tmp_path / "split.csv"
    pd.DataFrame(rows).to_csv(split, index=False)
    assert precision_check.main(
        ["--artifacts", str(cls.parent), "--data-dir", str(data), "--split-csv", str(split),
         "--precision", "resnet50=bfloat16", "--tta", "none", "--record", "--tolerance", "1"]) == 0
    assert not (cls / RECORD_FILE).exists()  # the default (mirror) mode was not checked
    record = read_record(cls, "none")
    assert (cls / MODE_RECORD_FILES["none"]).is_file()
    assert record["precision"] == "resnet50=bfloat16"
    assert record["checked_on"]["tta"] == "none"
    assert record["checked_on"]["meta_learner"] == "meta_single_crop"
    single = json.loads((cls / "meta_single_crop" / "config.json").read_text())
    assert record["weights_sha256"]["meta"] == single["weights_sha256"]
    native = frozenset({"avx512_bf16"})
    assert auto_precision(cls, native, tta="none")[0] == parse_precision("resnet50=bfloat16")
    per_model, why = auto_precision(cls, native)  # default mode: no record, float32
    assert set(per_model.values()) == {"float32"} and RECORD_FILE in why


def _onehot(classes: list[int], p: float = 0.7) -> np.ndarray:
    out = np.full((len(classes), 4), (1 - p) / 3, dtype=np.float32)
    out[np.arange(len(classes)), classes] = p
    return out


def test_mixed_check_takes_each_model_in_its_kept_precision() -> None:
    # Hand-made: y = [0, 1, 2, 3]; VGG19's reduced outputs are wrong on slice 0,
    # the others' reduced outputs equal float32. A meta-learner that copies VGG19
    # shows which precision of VGG19 it was given.
    y = np.array([0, 1, 2, 3])
    names = ["xception", "inceptionv3", "resnet50", "vgg19"]
    f32 = {n: _onehot([0, 1, 2, 3]) for n in names}
    red = {n: _onehot([0, 1, 2, 3]) for n in names} | {"vgg19": _onehot([3, 1, 2, 3])}
    probs = {"float32": f32 | {"ensemble": _onehot([0, 1, 2, 3])}, "bfloat16": red}

    def copy_vgg19(stacked: np.ndarray) -> np.ndarray:
        assert stacked.shape == (4, 16)
        return stacked[:, 12:16]

    kept = {"xception": "bfloat16", "inceptionv3": "bfloat16", "resnet50": "bfloat16",
            "vgg19": "float32"}
    out = precision_check.mixed_check(probs, y, kept, names, copy_vgg19)
    assert out["precision"] == "xception=bfloat16,inceptionv3=bfloat16,resnet50=bfloat16"
    assert out["models"]["ensemble"]["accuracy_bfloat16"] == 1.0
    assert out["models"]["vgg19"]["precision"] == "float32"
    assert out["models"]["vgg19"]["agreement"] == 1.0

    out = precision_check.mixed_check(probs, y, dict.fromkeys(names, "bfloat16"), names,
                                      copy_vgg19)
    assert out["models"]["ensemble"]["accuracy_bfloat16"] == 0.75
    assert out["models"]["ensemble"]["correct_bfloat16"] == 3
    assert out["models"]["vgg19"]["accuracy_difference"] == -0.25


def test_record_falls_back_to_the_mix_that_kept_every_accuracy(
        tiny_artifacts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import shutil

    from ensemble.precision import read_record

    art = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts / "classification", art / "classification")
    names = ["xception", "inceptionv3", "resnet50", "vgg19"]
    y = np.array([0, 1, 2, 3])
    same = {n: _onehot([0, 1, 2, 3]) for n in names}
    probs = {"float32": same | {"ensemble": _onehot([0, 1, 2, 3])},
             "bfloat16": same | {"vgg19": _onehot([3, 1, 2, 3])}}
    scores = {n: precision_check._scores(probs["float32"][n], probs["bfloat16"][n], y, "bfloat16")
              for n in names}
    kept = dict.fromkeys(names, "bfloat16") | {"vgg19": "float32"}
    report = {
        "split_csv": "split.csv", "part": "test", "n_images": 4, "failures": [],
        "models": scores | {"ensemble": precision_check._scores(
            probs["float32"]["ensemble"], _onehot([3, 1, 2, 3]), y, "meta")},
        "recommended_precision": "xception=bfloat16,inceptionv3=bfloat16,resnet50=bfloat16",
        "recommended_check": precision_check.mixed_check(
            probs, y, kept, names, lambda s: s[:, :4]),
    }
    monkeypatch.setattr(precision_check, "compare", lambda *a, **k: report)
    args = ["--artifacts", str(art), "--data-dir", str(tmp_path), "--precision", "bfloat16",
            "--record"]
    assert precision_check.main(args) == 0
    printed = capsys.readouterr().out
    assert "verdict: changed" in printed and "verdict unchanged" in printed
    record = read_record(art / "classification")
    assert record["precision"] == "xception=bfloat16,inceptionv3=bfloat16,resnet50=bfloat16"
    assert record["accuracy"]["vgg19"]["float32"] == record["accuracy"]["vgg19"]["bfloat16"]

    # when the mix changes the ensemble too, nothing is recorded
    (art / "classification" / "precision.json").unlink()
    report["recommended_check"] = precision_check.mixed_check(
        probs, y, kept, names, lambda s: _onehot([1, 1, 2, 3]))
    assert precision_check.main(args) == 1
    assert not (art / "classification" / "precision.json").exists()
