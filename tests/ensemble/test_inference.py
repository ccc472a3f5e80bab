"""Artifact export and loading: round trip, checksums, missing pieces, class order."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from ensemble.export import write_classifier_artifact
from ensemble.inference import load_classifier, load_ensemble, load_meta, select_meta_folder
from ensemble.models import build_classifier
from ensemble.registry import BACKBONES, get_backbone
from neurostack import CLASS_NAMES
from neurostack.errors import ArtifactError


def _crops(n: int = 3, seed: int = 0) -> list[np.ndarray]:
    """Greyscale 'brain crops' of different sizes and contents."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = 40 + 7 * i, 50 - 3 * i
        c = np.zeros((h, w), np.uint8)
        c[5 : h - 5, 6 : w - 6] = rng.integers(30, 250, (h - 10, w - 12))
        out.append(c)
    return out


def _link_tree(src: Path, dest: Path, keep: list[str]) -> Path:
    """A classification folder holding symlinks to ``keep`` subfolders of ``src`` only."""
    dest.mkdir(parents=True)
    for name in keep:
        (dest / name).symlink_to(src / name, target_is_directory=True)
    return dest


@pytest.fixture(scope="module")
def resnet_artifact(tmp_path_factory) -> tuple[keras.Model, Path]:
    """A random ResNet50 at 32 px and its written artifact folder."""
    keras.utils.set_random_seed(11)
    model = build_classifier("resnet50", weights=None, input_size=32)
    dest = tmp_path_factory.mktemp("export") / "resnet50"
    write_classifier_artifact(model, dest, backbone="resnet50", input_size=32, training={"x": 1})
    return model, dest


@pytest.mark.slow
def test_export_load_round_trip_gives_identical_probabilities(resnet_artifact) -> None:
    model, folder = resnet_artifact
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["kind"] == "classifier" and cfg["backbone"] == "resnet50"
    assert cfg["input_size"] == 32 and cfg["native_size"] == 224
    assert cfg["class_names"] == list(CLASS_NAMES)
    assert cfg["preprocessing"]["keras_preprocess_mode"] == "caffe"
    assert cfg["training"] == {"x": 1}

    clf = load_classifier(folder)
    assert clf.name == "resnet50" and clf.input_size == 32 and clf.preprocess_mode == "caffe"
    crops = _crops()
    got = clf.predict(crops)
    assert got.shape == (3, 4) and got.dtype == np.float32

    # reference: the original model with its weights cast through float16, fed by hand
    reference = keras.models.clone_model(model)
    reference.set_weights(
        [np.asarray(w).astype(np.float16).astype(np.float32) for w in model.get_weights()]
    )
    x = np.stack(
        [
            np.repeat(c_resized[..., None], 3, axis=-1)
            for c_resized in [_resize(c, 32) for c in crops]
        ]
    ).astype(np.float32)
    expected = np.asarray(reference(get_backbone("resnet50").preprocess(x), training=False))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    # the float16 cast is what the tolerance is about: the original weights differ slightly
    assert not np.array_equal(
        np.asarray(model.get_weights()[0]), np.asarray(clf.model.get_weights()[0])
    )
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def _resize(c: np.ndarray, size: int) -> np.ndarray:
    from neurostack.preprocess import resize_square

    return resize_square(c, size)


def test_flipped_byte_fails_the_checksum(resnet_artifact, tmp_path: Path) -> None:
    _, folder = resnet_artifact
    bad = tmp_path / "resnet50"
    shutil.copytree(folder, bad)
    data = bytearray((bad / "weights.npz").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bad / "weights.npz").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="Checksum mismatch") as info:
        load_classifier(bad)
    assert str(bad / "weights.npz") in str(info.value)


def test_flipped_byte_in_meta_weights(tiny_artifacts: Path, tmp_path: Path) -> None:
    bad = tmp_path / "meta"
    shutil.copytree(tiny_artifacts / "classification" / "meta", bad)
    data = bytearray((bad / "weights.npz").read_bytes())
    data[-100] ^= 0x80
    (bad / "weights.npz").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="Checksum mismatch for .*weights.npz"):
        load_meta(bad)


def test_missing_folder_config_and_weights(resnet_artifact, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ArtifactError, match="Missing artifact folder") as info:
        load_classifier(missing)
    assert str(missing) in str(info.value)

    no_config = tmp_path / "no_config"
    no_config.mkdir()
    with pytest.raises(ArtifactError, match="Missing file") as info:
        load_classifier(no_config)
    assert str(no_config / "config.json") in str(info.value)

    _, folder = resnet_artifact
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(folder / "config.json", no_weights / "config.json")
    with pytest.raises(ArtifactError, match="Missing weight file") as info:
        load_classifier(no_weights)
    assert str(no_weights / "weights.npz") in str(info.value)


def _edited_copy(folder: Path, dest: Path, **changes) -> Path:
    """Config edited, weights symlinked (so the checksum still passes)."""
    dest.mkdir()
    (dest / "weights.npz").symlink_to(folder / "weights.npz")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def test_class_order_mismatch(resnet_artifact, tmp_path: Path) -> None:
    _, folder = resnet_artifact
    swapped = ["meningioma", "glioma", "notumor", "pituitary"]
    bad = _edited_copy(folder, tmp_path / "swapped", class_names=swapped)
    with pytest.raises(ArtifactError, match="class order") as info:
        load_classifier(bad)
    assert "meningioma', 'glioma'" in str(info.value)


def test_preprocessing_other_than_the_registry_is_refused(resnet_artifact, tmp_path: Path) -> None:
    folder = tmp_path / "r"
    shutil.copytree(resnet_artifact[1], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["preprocessing"]["keras_preprocess_mode"] = "tf"  # ResNet50 is 'caffe'
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="must be 'caffe' for resnet50 .* received 'tf'"):
        load_classifier(folder)


def test_wrong_kind_and_missing_checksum(resnet_artifact, tmp_path: Path) -> None:
    _, folder = resnet_artifact
    with pytest.raises(ArtifactError, match="describes a 'classifier', expected 'meta_learner'"):
        load_meta(folder)
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["weights_sha256"]
    (tmp_path / "nosha").mkdir()
    (tmp_path / "nosha" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="no weights_sha256"):
        load_classifier(tmp_path / "nosha")


def test_weights_of_another_input_size_still_load(resnet_artifact, tmp_path: Path) -> None:
    """ResNet50 weights do not depend on the input size: a 48 px config loads 32 px weights."""
    _, folder = resnet_artifact
    other = _edited_copy(folder, tmp_path / "r48", input_size=48)
    clf = load_classifier(other)
    assert clf.model.input_shape == (None, 48, 48, 3)
    assert clf.predict(_crops(1)).shape == (1, 4)


def test_weights_of_another_architecture(tiny_artifacts: Path, tmp_path: Path) -> None:
    vgg = tiny_artifacts / "classification" / "vgg19"
    bad = _edited_copy(vgg, tmp_path / "vgg_as_resnet", backbone="resnet50")
    with pytest.raises(ArtifactError, match="weight arrays but the model has"):
        load_classifier(bad)


def test_load_ensemble_strict_lists_every_missing_artifact(
    tiny_artifacts: Path, tmp_path: Path
) -> None:
    root = _link_tree(tiny_artifacts / "classification", tmp_path / "cls", ["meta"])
    with pytest.raises(ArtifactError, match="Missing artifacts") as info:
        load_ensemble(root, strict=True)
    for name in BACKBONES:
        assert f"{root / name} (base classifier {name})" in str(info.value)
    assert "meta-learner" not in str(info.value)  # meta is present

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ArtifactError) as info:
        load_ensemble(empty, strict=False)
    assert "No classifier artifacts found" in str(info.value)
    assert "(meta-learner)" in str(info.value)


@pytest.mark.slow
def test_load_ensemble_lenient_falls_back_to_the_mean(tiny_artifacts: Path, tmp_path: Path) -> None:
    root = _link_tree(tiny_artifacts / "classification", tmp_path / "cls", ["resnet50", "vgg19"])
    with pytest.raises(ArtifactError) as info:
        load_ensemble(root, strict=True)
    for missing in ("xception", "inceptionv3", "meta-learner"):
        assert missing in str(info.value)

    ens = load_ensemble(root, strict=False)
    assert list(ens.members) == ["resnet50", "vgg19"]
    assert ens.meta is None
    assert ens.method == "mean of 2 base model(s); meta-learner not available"
    assert len(ens.missing) == 3 and any("meta" in m for m in ens.missing)
    pred = ens.predict_crops(_crops())
    assert pred.method == ens.method
    np.testing.assert_allclose(
        pred.ensemble, (pred.per_model["resnet50"] + pred.per_model["vgg19"]) / 2, rtol=1e-6
    )
    np.testing.assert_array_equal(pred.label_index, pred.ensemble.argmax(axis=1))


def test_corrupt_member_raises_even_when_lenient(tiny_artifacts: Path, tmp_path: Path) -> None:
    root = _link_tree(tiny_artifacts / "classification", tmp_path / "cls", ["meta"])
    shutil.copytree(tiny_artifacts / "classification" / "vgg19", root / "vgg19")
    with open(root / "vgg19" / "weights.npz", "r+b") as fh:
        fh.seek(1000)
        b = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(ArtifactError, match="Checksum mismatch"):
        load_ensemble(root, strict=False)


def test_full_ensemble_uses_the_meta_learner(tiny_pipeline) -> None:
    ens = tiny_pipeline.ensemble
    assert ens.method == "meta-learner (stacking)" and ens.missing == []
    assert ens.meta.inputs == list(BACKBONES)
    crops = _crops(4, seed=3)
    pred = ens.predict_crops(crops)
    for name, clf in ens.members.items():
        np.testing.assert_allclose(pred.per_model[name], clf.predict(crops), atol=1e-6)
        np.testing.assert_allclose(pred.per_model[name].sum(axis=1), 1.0, atol=1e-5)
    stacked = np.concatenate([pred.per_model[n] for n in BACKBONES], axis=1)
    np.testing.assert_allclose(pred.ensemble, np.asarray(ens.meta.model(stacked)), atol=1e-6)


def test_parse_and_format_precision_known_answers() -> None:
    from ensemble.inference import format_precision, parse_precision

    every = ["xception", "inceptionv3", "resnet50", "vgg19"]
    assert parse_precision("bfloat16") == dict.fromkeys(every, "bfloat16")
    assert parse_precision(" float32 ") == dict.fromkeys(every, "float32")
    mixed = parse_precision("resnet50=bfloat16, vgg19=bfloat16")
    assert mixed == {
        "xception": "float32",
        "inceptionv3": "float32",
        "resnet50": "bfloat16",
        "vgg19": "bfloat16",
    }
    assert parse_precision({"vgg19": "bfloat16"})["vgg19"] == "bfloat16"
    assert format_precision(mixed) == "resnet50=bfloat16,vgg19=bfloat16"
    assert parse_precision(format_precision(mixed)) == mixed  # round trip
    assert format_precision(parse_precision("bfloat16")) == "bfloat16"
    assert format_precision(dict.fromkeys(every, "float32")) == "float32"
    with pytest.raises(ValueError, match=r"backbones \['resnet18'\]; allowed"):
        parse_precision("resnet18=bfloat16")
    with pytest.raises(ValueError, match="precision must be one of"):
        parse_precision("vgg19=float16")
    with pytest.raises(ValueError, match="name=precision"):
        parse_precision("vgg19=bfloat16,resnet50")


@pytest.mark.slow
@pytest.mark.parametrize("fused", [True, False])
def test_hflip_tta_averages_the_crop_and_its_mirror(tiny_artifacts: Path, fused: bool) -> None:
    root = tiny_artifacts / "classification"
    plain = load_ensemble(root, fused=False)
    assert plain.tta == "none"  # the tiny meta-learner records no input_tta
    crops = _crops(3, seed=5)
    a = plain.predict_crops(crops)
    b = plain.predict_crops([np.ascontiguousarray(c[:, ::-1]) for c in crops])
    # the mirror must change some member's answer, or this test could not fail
    assert any(not np.allclose(a.per_model[n], b.per_model[n], atol=1e-4) for n in BACKBONES)

    ens = load_ensemble(root, tta="hflip", fused=fused)
    got = ens.predict_crops(crops)
    for name in BACKBONES:
        expected = (a.per_model[name] + b.per_model[name]) / 2
        np.testing.assert_allclose(got.per_model[name], expected, atol=1e-5)
    np.testing.assert_allclose(got.ensemble, ens.combine(got.per_model), atol=1e-5)
    # the tiny meta-learner was fitted on single crops, and the method says so
    assert got.method == "meta-learner (stacking), fitted on single-crop inputs; each base " \
        "model averaged over the slice and its mirror image"


def test_tta_default_follows_the_meta_learner(tiny_artifacts: Path, tmp_path: Path) -> None:
    root = _link_tree(
        tiny_artifacts / "classification", tmp_path / "cls", [n for n in BACKBONES]
    )
    shutil.copytree(tiny_artifacts / "classification" / "meta", root / "meta")
    cfg_path = root / "meta" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps(cfg | {"input_tta": "hflip"}))
    assert load_ensemble(root, fused=False).tta == "hflip"
    assert load_ensemble(root, fused=False, tta="none").tta == "none"
    with pytest.raises(ValueError, match=r"\['none', 'hflip', 'cascade'\]; received 'vflip'"):
        load_ensemble(root, fused=False, tta="vflip")
    cfg_path.write_text(json.dumps(cfg | {"input_tta": "rot90"}))
    with pytest.raises(ArtifactError, match="input_tta must be one of .* received 'rot90'"):
        load_ensemble(root, fused=False)


def test_a_meta_learner_fitted_for_the_asked_tta_is_preferred(
    tiny_artifacts: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _link_tree(tiny_artifacts / "classification", tmp_path / "cls", list(BACKBONES))
    src = tiny_artifacts / "classification" / "meta"
    shutil.copytree(src, root / "meta")
    cfg = json.loads((src / "config.json").read_text())
    (root / "meta" / "config.json").write_text(json.dumps(cfg | {"input_tta": "hflip"}))
    assert select_meta_folder(root, None) == root / "meta"
    assert select_meta_folder(root, "hflip") == root / "meta"

    # no single-crop meta-learner yet: the default one runs, and says it was fitted otherwise
    with caplog.at_level("WARNING", logger="ensemble.inference"):
        fallback = load_ensemble(root, fused=False, tta="none")
    assert fallback.meta is not None and fallback.meta.folder == root / "meta"
    assert fallback.method == (
        "meta-learner (stacking), fitted on mirror-averaged inputs; each base model on the "
        "slice alone"
    )
    assert "fitted on 'hflip' inputs but runs on 'none' ones" in caplog.text

    # with one: it is used for single crops, the default one for the default mode
    shutil.copytree(src, root / "meta_single_crop")
    (root / "meta_single_crop" / "config.json").write_text(json.dumps(cfg | {"input_tta": "none"}))
    assert select_meta_folder(root, "none") == root / "meta_single_crop"
    fast = load_ensemble(root, fused=False, tta="none")
    assert fast.meta.folder == root / "meta_single_crop" and fast.tta == "none"
    assert fast.method == "meta-learner (stacking)"
    default = load_ensemble(root, fused=False)
    assert default.meta.folder == root / "meta" and default.tta == "hflip"
    assert default.method.endswith("averaged over the slice and its mirror image")
    # derived from the loaded ensemble: same members, the single-crop meta-learner
    derived = default.with_tta("none")
    assert derived.members is default.members and default.with_tta("hflip") is default
    assert derived.meta.folder == root / "meta_single_crop" and derived.tta == "none"
    crops = _crops(2, seed=3)
    np.testing.assert_allclose(derived.predict_crops(crops).ensemble,
                               fast.predict_crops(crops).ensemble, atol=1e-6)
    assert default.tta == "hflip"  # unchanged

    # an alternative folder that records another mode is refused, naming both
    (root / "meta_single_crop" / "config.json").write_text(json.dumps(cfg | {"input_tta": "hflip"}))
    with pytest.raises(ArtifactError, match="must record input_tta 'none'; received 'hflip'"):
        load_ensemble(root, fused=False, tta="none")
    with pytest.raises(ValueError, match="received 'vflip'"):
        select_meta_folder(root, "vflip")


def test_a_stale_single_crop_meta_learner_is_reported_by_its_folder(
    tiny_artifacts: Path, tmp_path: Path
) -> None:
    root = _link_tree(tiny_artifacts / "classification", tmp_path / "cls", list(BACKBONES))
    src = tiny_artifacts / "classification" / "meta"
    shutil.copytree(src, root / "meta")
    shutil.copytree(src, root / "meta_single_crop")
    cfg = json.loads((src / "config.json").read_text())
    (root / "meta" / "config.json").write_text(json.dumps(cfg | {"input_tta": "hflip"}))
    stale = {"input_tta": "none", "training": {"input_models_sha256": {"vgg19": "0" * 64}}}
    (root / "meta_single_crop" / "config.json").write_text(json.dumps(cfg | stale))
    assert load_ensemble(root, fused=False, strict=True).meta is not None  # default: fine
    with pytest.raises(ArtifactError, match="meta_single_crop .*fitted on other weights of vgg19"):
        load_ensemble(root, fused=False, strict=True, tta="none")


def test_a_meta_learner_fitted_on_other_base_weights_is_not_used(
    tiny_artifacts: Path, tmp_path: Path
) -> None:
    root = _link_tree(tiny_artifacts / "classification", tmp_path / "cls", list(BACKBONES))
    shutil.copytree(tiny_artifacts / "classification" / "meta", root / "meta")
    shas = {n: json.loads((root / n / "config.json").read_text())["weights_sha256"]
            for n in BACKBONES}
    cfg_path = root / "meta" / "config.json"
    cfg = json.loads(cfg_path.read_text())

    def record(inputs: dict[str, str]) -> None:
        cfg_path.write_text(json.dumps(cfg | {"training": {"input_models_sha256": inputs}}))

    record(shas)  # the weights it was fitted on: used
    ens = load_ensemble(root, fused=False, strict=True)
    assert ens.meta is not None and not ens.missing
    record({**shas, "vgg19": "0" * 64, "resnet50": "1" * 64})
    with pytest.raises(ArtifactError, match="fitted on other weights of resnet50, vgg19"):
        load_ensemble(root, fused=False, strict=True)
    lenient = load_ensemble(root, fused=False, strict=False)
    assert lenient.meta is None and lenient.method.startswith("mean of 4 base model(s)")
    assert any("ensemble.stack" in m for m in lenient.missing)
    record({"vgg19": shas["vgg19"]})  # models not recorded are not judged
    assert load_ensemble(root, fused=False, strict=True).meta is not None


def test_parse_runtime_known_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    from ensemble import inference
    from neurostack import litert

    monkeypatch.setattr(litert, "litert_available", lambda: True)
    assert inference.parse_runtime("auto") == inference.AUTO_RUNTIMES
    assert inference.parse_runtime(None)["vgg19"] == "tensorflow"
    assert inference.parse_runtime("litert") == dict.fromkeys(BACKBONES, "litert")
    mixed = inference.parse_runtime("vgg19=litert, resnet50=tensorflow")
    assert mixed == {
        "xception": "litert", "inceptionv3": "litert", "resnet50": "tensorflow", "vgg19": "litert"
    }
    with pytest.raises(ValueError, match=r"\['tensorflow', 'litert'\]; received 'onnx'"):
        inference.parse_runtime("onnx")
    with pytest.raises(ValueError, match="allowed: "):
        inference.parse_runtime("resnet18=litert")
    # without the package, "auto" falls back to TensorFlow everywhere
    monkeypatch.setattr(litert, "litert_available", lambda: False)
    assert inference.parse_runtime("auto") == dict.fromkeys(BACKBONES, "tensorflow")


def test_litert_refuses_other_precisions(resnet_artifact) -> None:
    _, folder = resnet_artifact
    with pytest.raises(ValueError, match="litert runtime runs the float32 model"):
        load_classifier(folder, runtime="litert", precision="bfloat16")
    with pytest.raises(ValueError, match="runtime must be one of"):
        load_classifier(folder, runtime="torch")


@pytest.mark.slow
def test_litert_members_match_tensorflow(tiny_artifacts: Path, monkeypatch) -> None:
    """The default mixed runtime gives the TensorFlow probabilities, with and without TTA."""
    from neurostack import litert

    if not litert.litert_available():
        pytest.skip("ai-edge-litert missing")
    root = tiny_artifacts / "classification"
    crops = _crops(3, seed=9)
    for tta in ("none", "hflip"):
        ref = load_ensemble(root, tta=tta, runtime="tensorflow")
        assert ref._fused is not None and set(ref.runtimes.values()) == {"tensorflow"}
        mixed = load_ensemble(root, tta=tta, runtime="xception=litert,resnet50=litert")
        assert mixed._fused is None  # not every member is in TensorFlow
        assert mixed.runtimes["resnet50"] == "litert" and mixed.runtimes["vgg19"] == "tensorflow"
        want, got = ref.predict_crops(crops), mixed.predict_crops(crops)
        for name in BACKBONES:
            np.testing.assert_allclose(got.per_model[name], want.per_model[name], atol=1e-5)
        np.testing.assert_allclose(got.ensemble, want.ensemble, atol=1e-5)
    # the Keras model of a LiteRT member came from the same verified weights and serves Grad-CAM
    clf = mixed.members["resnet50"]
    np.testing.assert_allclose(
        clf.predict(crops),
        np.asarray(clf.model(clf.prepare(crops), training=False)),
        atol=1e-5,
    )
    # $NEUROSTACK_RUNTIME is the default
    monkeypatch.setenv("NEUROSTACK_RUNTIME", "resnet50=litert")
    assert load_ensemble(root).runtimes["resnet50"] == "litert"
