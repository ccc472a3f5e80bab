"""Inference from self-describing artifact folders.

``artifacts/classification/<backbone>/`` and ``artifacts/classification/meta/``
each hold ``weights.npz``, ``config.json`` (with ``weights_sha256``) and
``metrics.json``. :func:`load_ensemble` rebuilds everything from those files
alone and verifies every checksum before any weight is used.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ensemble.registry import BACKBONES, get_backbone, preprocess_array
from neurostack import CLASS_NAMES
from neurostack.artifacts import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_weights_compact,
    read_json,
    verify_sha256,
)
from neurostack.errors import ArtifactError
from neurostack.preprocess import resize_square

META_NAME = "meta"


def _compiled(model, input_shape: tuple[int | None, ...]):
    """Wrap a Keras model in a fixed-signature ``tf.function`` (traced once, thread-safe)."""
    import tensorflow as tf

    fn = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec(input_shape, tf.float32)],
        reduce_retracing=True,
    )
    return fn


@dataclass
class LoadedClassifier:
    """A base classifier ready for inference."""

    name: str
    model: object
    input_size: int
    preprocess_mode: str
    config: dict
    folder: Path
    _fn: object = field(repr=False, default=None)

    def predict_preprocessed(self, x: np.ndarray) -> np.ndarray:
        """``(N, S, S, 3)`` float32 preprocessed batch -> ``(N, 4)`` probabilities."""
        return np.asarray(self._fn(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float32)

    def prepare(self, crops: list[np.ndarray]) -> np.ndarray:
        """Resize greyscale brain crops to the input size and apply the preprocessing."""
        batch = np.stack([resize_square(c, self.input_size) for c in crops]).astype(np.float32)
        return preprocess_array(np.repeat(batch[..., None], 3, axis=-1), self.preprocess_mode)

    def predict(self, crops: list[np.ndarray]) -> np.ndarray:
        """Greyscale uint8 brain crops (any size) -> ``(N, 4)`` probabilities."""
        return self.predict_preprocessed(self.prepare(crops))


@dataclass
class LoadedMeta:
    """The stacking meta-learner ready for inference."""

    model: object
    inputs: list[str]
    config: dict
    folder: Path
    _fn: object = field(repr=False, default=None)

    def predict(self, stacked: np.ndarray) -> np.ndarray:
        """``(N, 16)`` concatenated base probabilities -> ``(N, 4)``."""
        return np.asarray(self._fn(np.asarray(stacked, dtype=np.float32)), dtype=np.float32)


def _checked_config(folder: Path, kind: str) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"Missing artifact folder: {folder}")
    cfg = read_json(folder / CONFIG_FILE)
    if cfg.get("kind") != kind:
        raise ArtifactError(f"{folder / CONFIG_FILE} describes a {cfg.get('kind')!r}, expected {kind!r}")
    if "weights_sha256" not in cfg:
        raise ArtifactError(f"{folder / CONFIG_FILE} has no weights_sha256 entry")
    verify_sha256(folder / cfg.get("weights_file", WEIGHTS_FILE), cfg["weights_sha256"])
    if list(cfg.get("class_names", [])) != list(CLASS_NAMES):
        raise ArtifactError(
            f"{folder}: class order {cfg.get('class_names')} differs from {list(CLASS_NAMES)}"
        )
    return cfg


def load_classifier(folder: str | Path) -> LoadedClassifier:
    """Rebuild a base classifier from its folder, verifying the weights' SHA-256 first."""
    from ensemble.models import build_classifier

    folder = Path(folder)
    cfg = _checked_config(folder, "classifier")
    spec = get_backbone(cfg["backbone"])
    size = int(cfg["input_size"])
    model = build_classifier(spec.name, weights=None, input_size=size)
    load_weights_compact(model, folder / cfg.get("weights_file", WEIGHTS_FILE))
    clf = LoadedClassifier(spec.name, model, size, cfg["preprocessing"]["keras_preprocess_mode"], cfg, folder)
    clf._fn = _compiled(model, (None, size, size, 3))
    return clf


def load_meta(folder: str | Path) -> LoadedMeta:
    """Rebuild the meta-learner from its folder, verifying the weights' SHA-256 first."""
    from ensemble.models import build_meta_learner

    folder = Path(folder)
    cfg = _checked_config(folder, "meta_learner")
    inputs = list(cfg["inputs"])
    model = build_meta_learner(len(inputs), len(CLASS_NAMES))
    load_weights_compact(model, folder / cfg.get("weights_file", WEIGHTS_FILE))
    meta = LoadedMeta(model, inputs, cfg, folder)
    meta._fn = _compiled(model, (None, len(inputs) * len(CLASS_NAMES)))
    return meta


@dataclass
class EnsemblePrediction:
    """Probabilities for a batch: per base model, and the final ensemble."""

    per_model: dict[str, np.ndarray]
    ensemble: np.ndarray
    method: str

    @property
    def label_index(self) -> np.ndarray:
        """``(N,)`` predicted class indices."""
        return self.ensemble.argmax(axis=1)


class Ensemble:
    """Four base classifiers and the meta-learner.

    When the meta-learner or a base model is missing (only with ``strict=False``)
    the final answer is the mean of the available base models and ``method`` says so.
    """

    def __init__(self, members: dict[str, LoadedClassifier], meta: LoadedMeta | None,
                 missing: list[str] | None = None) -> None:
        if not members:
            raise ArtifactError("No classifier could be loaded")
        self.members = members
        self.meta = meta
        self.missing = missing or []
        self._lock = threading.Lock()

    @property
    def method(self) -> str:
        """How the final probabilities are formed."""
        if self.meta is not None:
            return "meta-learner (stacking)"
        return f"mean of {len(self.members)} base model(s); meta-learner not available"

    def predict_crops(self, crops: list[np.ndarray]) -> EnsemblePrediction:
        """Classify greyscale uint8 brain crops (any sizes).

        Each distinct input size is resized once and shared by the models that use it.
        """
        per_model: dict[str, np.ndarray] = {}
        prepared: dict[tuple[int, str], np.ndarray] = {}
        for name, clf in self.members.items():
            key = (clf.input_size, clf.preprocess_mode)
            if key not in prepared:
                prepared[key] = clf.prepare(crops)
            per_model[name] = clf.predict_preprocessed(prepared[key])
        if self.meta is not None:
            stacked = np.concatenate([per_model[n] for n in self.meta.inputs], axis=1)
            final = self.meta.predict(stacked)
        else:
            final = np.mean(list(per_model.values()), axis=0)
        return EnsemblePrediction(per_model, final, self.method)


def load_ensemble(classification_dir: str | Path, *, strict: bool = True) -> Ensemble:
    """Load every base classifier and the meta-learner from ``classification_dir``.

    Args:
        classification_dir: Folder holding ``<backbone>/`` and ``meta/`` subfolders.
        strict: Raise when anything is missing; otherwise load what is there and
            record the rest in ``Ensemble.missing``. A corrupt file always raises.

    Raises:
        ArtifactError: Naming each missing or corrupt artifact.
    """
    root = Path(classification_dir)
    members: dict[str, LoadedClassifier] = {}
    missing: list[str] = []
    for name in BACKBONES:
        folder = root / name
        if not (folder / CONFIG_FILE).exists():
            missing.append(f"{folder} (base classifier {name})")
            continue
        members[name] = load_classifier(folder)
    meta = None
    if (root / META_NAME / CONFIG_FILE).exists() and not missing:
        meta = load_meta(root / META_NAME)
    elif not (root / META_NAME / CONFIG_FILE).exists():
        missing.append(f"{root / META_NAME} (meta-learner)")
    if missing and strict:
        raise ArtifactError("Missing artifacts: " + "; ".join(missing))
    if not members:
        raise ArtifactError("No classifier artifacts found: " + "; ".join(missing))
    return Ensemble(members, meta, missing)
