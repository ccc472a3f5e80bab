"""Tiny, randomly initialised artifact trees for tests and demos of the plumbing.

The backbones are the real ``keras.applications`` architectures, only run at
small input sizes; predictions are meaningless. Evaluation records are
computed by the real evaluation code on generated images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TINY_SIZES = {"xception": 71, "inceptionv3": 75, "resnet50": 32, "vgg19": 32}
TINY_SEG = {"input_size": 64, "base_filters": 4, "depth": 3}


def make_tiny_artifacts(root: str | Path, *, seed: int = 0, with_evaluation: bool = True) -> Path:
    """Build a complete artifact tree under ``root`` and return ``root``.

    Holds ``classification/<backbone>/``, ``classification/meta/``,
    ``classification/intensity_reference/``,
    ``segmentation/resunet/`` and, with ``with_evaluation``, classification and
    segmentation evaluation records plus training logs.
    """
    import keras

    from ensemble.export import write_classifier_artifact, write_meta_artifact
    from ensemble.models import build_classifier, build_meta_learner
    from ensemble.registry import BACKBONES
    from neurostack import CLASS_NAMES
    from neurostack.artifacts import save_weights_compact, write_json
    from segmentation.model import build_resunet

    root = Path(root)
    keras.utils.set_random_seed(seed)
    cls_dir = root / "classification"
    for name in BACKBONES:
        model = build_classifier(name, weights=None, input_size=TINY_SIZES[name])
        write_classifier_artifact(
            model,
            cls_dir / name,
            backbone=name,
            input_size=TINY_SIZES[name],
            training={"tiny_test_artifact": True},
        )
        log = "epoch,phase,image_size,lr,loss,accuracy,val_loss,val_accuracy,seconds\n" + "".join(
            f"{e},scratch,{TINY_SIZES[name]},0.001,{1.4 - 0.1 * e},{0.3 + 0.1 * e},"
            f"{1.5 - 0.1 * e},{0.3 + 0.08 * e},1.0\n"
            for e in range(4)
        )
        (cls_dir / name / "training_log.csv").write_text(log)
        keras.backend.clear_session()
    write_meta_artifact(
        build_meta_learner(),
        cls_dir / "meta",
        inputs=list(BACKBONES),
        training={"tiny_test_artifact": True},
    )
    seg_dir = root / "segmentation" / "resunet"
    seg = build_resunet(**TINY_SEG)
    sha = save_weights_compact(seg, seg_dir / "weights.npz")
    write_json(
        seg_dir / "config.json",
        {
            "model": "resunet",
            "architecture": TINY_SEG,
            "input_size": TINY_SEG["input_size"],
            "preprocessing": "brain crop -> resize -> /255",
            "threshold": 0.5,
            "weights_file": "weights.npz",
            "weights_sha256": sha,
            "tiny_test_artifact": True,
        },
    )
    _tiny_intensity_reference(cls_dir, seed)
    _tiny_quality_reference(cls_dir, seed)
    if with_evaluation:
        _tiny_evaluation(root, CLASS_NAMES, seed)
    return root


def _tiny_intensity_reference(cls_dir: Path, seed: int) -> None:
    """Write an intensity reference that never flags (threshold far above any distance).

    The features are made-up curves around a typical head crop's; tests of the
    flag itself fit their own reference (``ensemble.intensity.fit_reference``).
    """
    from ensemble.intensity import REFERENCE_FOLDER, IntensityReference, save_reference

    rng = np.random.default_rng(seed)
    curve = np.log(np.array([60.0, 70.0, 80.0, 90.0, 110.0, 135.0]) / 255.0)
    features = curve * rng.uniform(0.7, 1.3, (60, 1)) + rng.normal(0, 0.02, (60, curve.size))
    save_reference(IntensityReference(features, k=5, threshold=100.0),
                   cls_dir / REFERENCE_FOLDER, {"tiny_test_artifact": True})


def _tiny_quality_reference(cls_dir: Path, seed: int) -> None:
    """Write a noise/detail reference that never flags (limits beyond any 8-bit slice)."""
    from ensemble.quality import REFERENCE_FOLDER, QualityReference, save_reference

    rng = np.random.default_rng(seed)
    features = np.column_stack([rng.uniform(0.2, 3.0, 60), rng.uniform(0.3, 3.0, 60)])
    save_reference(QualityReference(features, noise_limit=1000.0, detail_limit=0.0),
                   cls_dir / REFERENCE_FOLDER, {"tiny_test_artifact": True})


def flag_everything_reference(folder: str | Path) -> Path:
    """Write an intensity reference whose threshold 0 flags every slice.

    Its training curve sits at ``log(0.4)`` for every quantile, so each slice's
    relative gamma is finite and positive and the mapping can be checked by hand
    with :func:`ensemble.intensity.correct_gamma`. Returns the folder.
    """
    from ensemble.intensity import IntensityReference, save_reference

    rng = np.random.default_rng(0)
    features = np.log(0.4) + 0.01 * rng.standard_normal((12, 6))
    return save_reference(IntensityReference(features, 3, 0.0), folder, {"fit_part": "test"})


def _tiny_evaluation(root: Path, class_names: tuple[str, ...], seed: int) -> None:
    from ensemble.evaluate import evaluate
    from neurostack.artifacts import write_json

    rng = np.random.default_rng(seed)
    data = root / "_tiny_data"
    from PIL import Image

    for label in class_names:
        (data / label).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            img = np.zeros((96, 96), np.uint8)
            img[16:80, 16:80] = rng.integers(60, 200, (64, 64), dtype=np.uint8)
            Image.fromarray(img).save(data / label / f"{label}_{i}.png")
    evaluate(
        data, root / "evaluation" / "classification" / "test", artifacts=root / "classification"
    )
    seg_eval = root / "evaluation" / "segmentation" / "test"
    seg_eval.mkdir(parents=True, exist_ok=True)
    dice = rng.uniform(0.3, 0.95, 9)
    rows = ["id,label,dice,iou"] + [
        f"{i:04d},{class_names[i % 3 if i % 3 != 2 else 3]},{d:.4f},{d / (2 - d):.4f}"
        for i, d in enumerate(dice)
    ]
    (seg_eval / "per_image.csv").write_text("\n".join(rows) + "\n")
    (seg_eval / "threshold_sweep.csv").write_text(
        "threshold,n_images,mean_dice,median_dice\n"
        + "".join(f"{t},9,{dice.mean() - abs(t - 0.5) / 4:.4f},0.5\n" for t in (0.3, 0.5, 0.7))
    )
    write_json(
        seg_eval / "metrics.json",
        {
            "mean_dice": float(dice.mean()),
            "median_dice": float(np.median(dice)),
            "mean_iou": float((dice / (2 - dice)).mean()),
            "n_images": int(len(dice)),
            "threshold": 0.5,
            "tiny_test_artifact": True,
        },
    )
    (root / "evaluation" / "README.json").write_text(json.dumps({"tiny": True}))
