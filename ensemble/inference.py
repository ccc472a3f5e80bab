"""Inference from self-describing artifact folders.

``artifacts/classification/<backbone>/`` and ``artifacts/classification/meta/``
each hold ``weights.npz``, ``config.json`` (with ``weights_sha256``) and
``metrics.json``. :func:`load_ensemble` rebuilds everything from those files
alone and verifies every checksum before any weight is used.

Speed (measured in ``benchmarks/README.md``):

* :meth:`Ensemble.predict_crops` runs all base models *and* the meta-learner in one
  compiled ``tf.function`` with a fixed input signature (one greyscale input per
  distinct input size; channel repetition and the ``keras.applications``
  preprocessing are done in the graph), traced once at load time and never again,
  so several threads (dashboard sessions) can call it at once;
* ``precision="bfloat16"`` (opt-in) predicts with an *inference copy* of each
  classifier (:func:`inference_model`): every BatchNormalization that follows a
  convolution is folded into that convolution, Dropout is dropped, and weights and
  arithmetic are bfloat16 except the first convolution and the outputs, which stay
  float32 (:data:`BFLOAT16_RECIPE`). Use it only after
  ``benchmarks/precision_check.py`` shows unchanged test-split accuracy. The
  original model (``LoadedClassifier.model``, used by Grad-CAM) is never changed.

Runtime (``runtime=``, :data:`RUNTIMES`): by default (``"auto"``) Xception,
InceptionV3 and ResNet50 run as LiteRT flatbuffers (XNNPACK) converted once from the
verified weights into a cache (:mod:`neurostack.litert`), and VGG19 runs in
TensorFlow. On the AVX2 host this cut the start-up from about 30 s to about 15 s
at the same per-slice speed (XNNPACK was 33 % slower than TensorFlow on VGG19 and
within 5 % on the others); with every model in TensorFlow the fused graph above is
used. Without the ``ai-edge-litert`` package everything runs in TensorFlow, and
so does every model once any of them predicts in bfloat16 (``precision="auto"`` on
a CPU with native bfloat16, :mod:`ensemble.precision`).

Test-time augmentation (``tta="hflip"``) runs every base model on the crop and on
its left-right mirror image in the same call and averages the two probability
vectors; the meta-learner then sees those averages. The meta-learner's config
records which mode its training inputs were computed with (``input_tta``) and
:func:`load_ensemble` uses that mode unless told otherwise.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ensemble.precision import AUTO, auto_precision, default_precision, default_tta
from ensemble.registry import BACKBONES, get_backbone, preprocess_array
from neurostack import CLASS_NAMES
from neurostack.artifacts import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    float32_policy,
    load_weights_compact,
    read_json,
    verify_sha256,
)
from neurostack.errors import ArtifactError
from neurostack.preprocess import TTA_MODES, check_tta, resize_square

log = logging.getLogger(__name__)

META_NAME = "meta"
"""The default meta-learner's folder; its ``input_tta`` is the default test-time augmentation."""
ALT_META_NAMES: dict[str, str] = {"none": "meta_single_crop", "hflip": "meta_mirror"}
"""Folder of a meta-learner fitted for another test-time augmentation than the default one,
by mode; :func:`load_ensemble` uses it when that mode is asked for."""
CASCADE = "cascade"
"""Classifier mode: the single crop first, the default mirror-averaged mode only for
the slices the single-crop ensemble is unsure of (:mod:`ensemble.cascade`)."""
CLASSIFIER_MODES: tuple[str, ...] = (*TTA_MODES, CASCADE)
"""What ``tta=`` accepts for the classifiers: a test-time augmentation or :data:`CASCADE`."""
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16")
"""Inference precisions of the base classifiers; ``float32`` is the default."""
RUNTIME_ENV = "NEUROSTACK_RUNTIME"
"""Environment variable giving :func:`load_ensemble`'s default runtime (``"auto"`` if unset)."""
RUNTIMES: tuple[str, ...] = ("tensorflow", "litert")
"""Where a base classifier runs: TensorFlow (Keras) or LiteRT (XNNPACK), both float32."""
AUTO_RUNTIMES: dict[str, str] = {
    "xception": "litert",
    "inceptionv3": "litert",
    "resnet50": "litert",
    "vgg19": "tensorflow",
}
"""The ``"auto"`` runtime per backbone, from measurements on the 2-core AVX2 host
(2026-12-03, batch 2 = slice and mirror, median of 5 calls): LiteRT vs TensorFlow
0.597 vs 0.605 s (Xception), 0.418 vs 0.398 s (InceptionV3), 0.287 vs 0.272 s
(ResNet50), 1.657 vs 1.248 s (VGG19, kept in TensorFlow)."""


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}; received {precision!r}")
    return precision


def _per_model(
    spec: str | Mapping[str, str],
    what: str,
    check: Callable[[str], str],
    default: Mapping[str, str],
) -> dict[str, str]:
    """``{backbone: value}`` from one value for all, ``"name=value,..."`` or a mapping.

    Unlisted backbones get ``default[name]``; every value passes through ``check``.
    """
    if isinstance(spec, str) and "=" not in spec:
        return dict.fromkeys(BACKBONES, check(spec.strip()))
    if isinstance(spec, str):
        pairs: dict[str, str] = {}
        for entry in filter(None, (e.strip() for e in spec.split(","))):
            name, sep, value = entry.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"{what} entries must be name={what}; received {entry!r}")
            pairs[name.strip()] = value.strip()
        spec = pairs
    unknown = sorted(set(spec) - set(BACKBONES))
    if unknown:
        raise ValueError(f"{what} names backbones {unknown}; allowed: {list(BACKBONES)}")
    return {name: check(spec.get(name, default[name])) for name in BACKBONES}


def parse_precision(spec: str | Mapping[str, str]) -> dict[str, str]:
    """Per-backbone inference precision from one precision or a per-model spec.

    Args:
        spec: ``"float32"`` or ``"bfloat16"`` for every base model; or
            ``"name=precision,..."`` (e.g. ``"resnet50=bfloat16,vgg19=bfloat16"``) or
            a mapping, where unlisted backbones stay float32. Used where
            ``benchmarks/precision_check.py`` found the accuracy of some models, but
            not of all, unchanged in bfloat16.

    Returns:
        ``{backbone: precision}`` for every registered backbone.

    Raises:
        ValueError: Naming an unknown backbone, precision or malformed entry.
    """
    return _per_model(spec, "precision", _check_precision, dict.fromkeys(BACKBONES, "float32"))


def _check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {list(RUNTIMES)}; received {runtime!r}")
    return runtime


def parse_runtime(spec: str | Mapping[str, str] | None = "auto") -> dict[str, str]:
    """Per-backbone runtime from ``"auto"``, one runtime for all, or a per-model spec.

    Args:
        spec: ``"auto"`` or ``None`` (:data:`AUTO_RUNTIMES` when ``ai-edge-litert`` is
            installed, else TensorFlow for all), ``"tensorflow"`` or ``"litert"`` for
            every base model, or ``"name=runtime,..."`` / a mapping, where unlisted
            backbones keep their ``"auto"`` runtime.

    Returns:
        ``{backbone: runtime}`` for every registered backbone.

    Raises:
        ValueError: Naming an unknown backbone, runtime or malformed entry.
    """
    from neurostack.litert import litert_available

    if litert_available():
        auto = dict(AUTO_RUNTIMES)
    else:
        log.info("ai-edge-litert is not installed: every base classifier runs in TensorFlow")
        auto = dict.fromkeys(BACKBONES, "tensorflow")
    if spec is None or (isinstance(spec, str) and spec.strip() == "auto"):
        return auto
    return _per_model(spec, "runtime", _check_runtime, auto)


def format_precision(per_model: Mapping[str, str]) -> str:
    """Return the shortest spec that :func:`parse_precision` reads back as ``per_model``."""
    values = set(per_model.values())
    if len(values) == 1 and set(per_model) == set(BACKBONES):
        return values.pop()
    return ",".join(f"{n}={p}" for n, p in per_model.items() if p != "float32") or "float32"


def _compiled(model, input_shape: tuple[int | None, ...]):
    """Wrap a Keras model in a fixed-signature ``tf.function`` (traced once, thread-safe)."""
    import tensorflow as tf

    def run(x):
        return tf.cast(model(x, training=False), tf.float32)

    return tf.function(run, input_signature=[tf.TensorSpec(input_shape, tf.float32)])


# --------------------------------------------------------------------------- inference copy
_CONV_TYPES = ("Conv2D", "SeparableConv2D", "DepthwiseConv2D")


def _foldable_batchnorms(model: Any) -> dict[str, Any]:
    """Map ``conv layer name -> BatchNormalization layer`` for every foldable pair.

    A pair is foldable when the BatchNormalization normalises the last axis, is
    called once, and its only input is the linear output of a convolution that
    is called once and feeds nothing else.
    """
    import keras

    pairs: dict[str, Any] = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization) or len(layer._inbound_nodes) != 1:
            continue
        axis = layer.axis if isinstance(layer.axis, int) else (list(layer.axis) or [None])[-1]
        rank = len(layer.input.shape)
        if axis not in (-1, rank - 1):
            continue
        node = layer._inbound_nodes[0]
        if len(node.input_tensors) != 1:
            continue
        producer = node.input_tensors[0]._keras_history.operation
        if (
            type(producer).__name__ in _CONV_TYPES
            and isinstance(producer, keras.layers.Layer)
            and len(producer._inbound_nodes) == 1
            and len(producer._outbound_nodes) == 1
            and producer.activation is keras.activations.linear
        ):
            pairs[producer.name] = layer
    return pairs


def _folded_weights(conv: Any, bn: Any) -> list[np.ndarray]:
    """Kernel(s) and bias of ``conv`` followed by inference-mode ``bn``, as one convolution."""
    values = {w.path.rsplit("/", 1)[-1]: np.asarray(w, dtype=np.float64) for w in bn.weights}
    scale = 1.0 / np.sqrt(values["moving_variance"] + bn.epsilon)
    if "gamma" in values:
        scale = scale * values["gamma"]
    shift = values.get("beta", 0.0) - values["moving_mean"] * scale
    w = [np.asarray(v, dtype=np.float64) for v in conv.get_weights()]
    bias = w[-1] if conv.use_bias else 0.0
    kind = type(conv).__name__
    if kind == "SeparableConv2D":  # BN scales the pointwise kernel's output channels
        kernels = [w[0], w[1] * scale]
    elif kind == "DepthwiseConv2D":  # output channel = in_channel * multiplier + m
        k = w[0]
        kernels = [k * scale.reshape(k.shape[2], k.shape[3])]
    else:
        kernels = [w[0] * scale]
    return [*kernels, bias * scale + shift]


BFLOAT16_RECIPE = 2
"""Version of what ``precision="bfloat16"`` computes in bfloat16 (:func:`inference_model`).

1: every layer but the outputs. 2 (current): also the first convolution stays
float32, so the raw preprocessed pixels are never rounded to bfloat16's 8-bit
significand. On 96 training-split slices (mirror TTA) that cut the mean
absolute probability change from float32 3.4-fold for VGG19 (0.0016 -> 0.0005)
and 1.7-fold for InceptionV3 (0.0052 -> 0.0030), for 0.4 % and 0.3 % of their
arithmetic. A recorded accuracy check is valid only for the recipe it ran.
"""


def _first_convolution(model: Any) -> set[str]:
    """``{name}`` of the first convolution in ``model.layers`` (empty if there is none)."""
    import keras

    kinds = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
    for layer in model.layers:
        if isinstance(layer, kinds):
            return {layer.name}
    return set()


def inference_model(model: Any, *, precision: str = "float32", fold_batchnorm: bool = True) -> Any:
    """Return a new Keras model computing ``model(x, training=False)``, made for inference.

    Each BatchNormalization that directly follows a convolution is folded into
    that convolution (kernel scaled per output channel, bias added), and Dropout
    layers are removed; both are no-ops or affine maps at inference. With
    ``precision="bfloat16"`` every layer except the first convolution and the
    layers producing the model's outputs stores its weights and computes in
    bfloat16 (oneDNN uses the CPU's AVX512_BF16 instructions); those stay float32
    (:data:`BFLOAT16_RECIPE`). ``model`` is not changed.

    Args:
        model: A functional Keras model (e.g. from :func:`ensemble.models.build_classifier`).
        precision: ``"float32"`` or ``"bfloat16"``.
        fold_batchnorm: Fold BatchNormalization into the preceding convolution.

    Returns:
        A functional ``keras.Model`` with the same input and output shapes and layer names.
    """
    import keras

    _check_precision(precision)
    pairs = _foldable_batchnorms(model) if fold_batchnorm else {}
    folded = {bn.name for bn in pairs.values()}
    float32_layers = {t._keras_history.operation.name for t in model.outputs}
    float32_layers.update(_first_convolution(model))

    def skipped(layer: Any) -> bool:
        return isinstance(layer, keras.layers.Dropout) or layer.name in folded

    def clone(layer: Any) -> Any:
        if skipped(layer) or isinstance(layer, keras.layers.InputLayer):
            return layer  # skipped layers are never called; inputs are recreated by Keras
        cfg = layer.get_config()
        for key in cfg:  # every weight is assigned below: skip drawing random numbers
            if key.endswith("_initializer") and cfg[key] is not None:
                cfg[key] = "zeros"
        if layer.name in pairs:
            cfg["use_bias"] = True
        if precision == "bfloat16" and layer.name not in float32_layers:
            cfg["dtype"] = "bfloat16"
        return layer.__class__.from_config(cfg)

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        return args[0] if skipped(layer) else layer(*args, **kwargs)

    new = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for layer in model.layers:
        if not layer.weights or skipped(layer):
            continue
        target = new.get_layer(layer.name)
        values = (
            _folded_weights(layer, pairs[layer.name])
            if layer.name in pairs
            else [np.asarray(w) for w in layer.get_weights()]
        )
        target.set_weights([np.asarray(v, dtype=np.float32) for v in values])
    return new


@dataclass
class LoadedClassifier:
    """A base classifier ready for inference.

    :attr:`model` is the float32 Keras model exactly as rebuilt from the artifact
    (used by Grad-CAM); with the LiteRT runtime it is only built when first asked
    for. Predictions come from the LiteRT copy (``runtime="litert"``), else from
    ``inference`` when it is set (a copy made by :func:`inference_model`:
    BatchNorm folded, in ``precision``), else from the Keras model.
    """

    name: str
    input_size: int
    preprocess_mode: str
    config: dict
    folder: Path
    precision: str = "float32"
    runtime: str = "tensorflow"
    inference: object = field(repr=False, default=None)
    _model: object = field(repr=False, default=None)
    _build: Callable[[], Any] | None = field(repr=False, default=None)
    _fn: object = field(repr=False, default=None)
    _lock: threading.Lock = field(repr=False, default_factory=threading.Lock)

    @property
    def model(self) -> Any:
        """The float32 Keras model rebuilt from the artifact (built on first use)."""
        with self._lock:
            if self._model is None:
                self._model = self._build()
            return self._model

    @property
    def predictor(self) -> object:
        """The Keras model TensorFlow predicts with: ``inference`` if set, else ``model``."""
        return self.inference if self.inference is not None else self.model

    def predict_preprocessed(self, x: np.ndarray) -> np.ndarray:
        """``(N, S, S, 3)`` float32 preprocessed batch -> ``(N, 4)`` probabilities."""
        if self._fn is None:
            self._fn = _compiled(self.predictor, (None, self.input_size, self.input_size, 3))
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
        raise ArtifactError(
            f"{folder / CONFIG_FILE} describes a {cfg.get('kind')!r}, expected {kind!r}"
        )
    if "weights_sha256" not in cfg:
        raise ArtifactError(f"{folder / CONFIG_FILE} has no weights_sha256 entry")
    verify_sha256(folder / cfg.get("weights_file", WEIGHTS_FILE), cfg["weights_sha256"])
    if list(cfg.get("class_names", [])) != list(CLASS_NAMES):
        raise ArtifactError(
            f"{folder}: class order {cfg.get('class_names')} differs from {list(CLASS_NAMES)}"
        )
    return cfg


def load_classifier(
    folder: str | Path,
    *,
    precision: str = "float32",
    fold_batchnorm: bool | None = None,
    runtime: str = "tensorflow",
) -> LoadedClassifier:
    """Rebuild a base classifier from its folder, verifying the weights' SHA-256 first.

    Args:
        folder: The artifact folder.
        precision: Inference precision, ``"float32"`` (default) or ``"bfloat16"``.
        fold_batchnorm: Predict with a BatchNorm-folded copy (:func:`inference_model`).
            ``None`` (default): only for ``"bfloat16"``, where it is needed for speed;
            in float32 it measured no faster and costs a second copy of the weights,
            so the rebuilt model itself is used.
        runtime: ``"tensorflow"`` (default) or ``"litert"`` (:data:`RUNTIMES`): a
            float32 LiteRT copy from the cache of :mod:`neurostack.litert`, converted
            from these weights on first use (checksums of both verified).

    Raises:
        ArtifactError: If the folder, config or weights are missing or corrupt.
        ValueError: For an unknown precision or runtime, or LiteRT with
            ``precision`` other than float32 or with ``fold_batchnorm``.
    """
    from ensemble.models import build_classifier

    _check_precision(precision)
    _check_runtime(runtime)
    if runtime == "litert" and (precision != "float32" or fold_batchnorm):
        raise ValueError(
            "the litert runtime runs the float32 model as rebuilt; received "
            f"precision={precision!r}, fold_batchnorm={fold_batchnorm!r}"
        )
    folder = Path(folder)
    cfg = _checked_config(folder, "classifier")
    spec = get_backbone(cfg["backbone"])
    size = int(cfg["input_size"])
    weights = folder / cfg.get("weights_file", WEIGHTS_FILE)
    mode = (cfg.get("preprocessing") or {}).get("keras_preprocess_mode")
    if mode != spec.preprocess_mode:
        raise ArtifactError(
            f"{folder / CONFIG_FILE}: preprocessing.keras_preprocess_mode must be "
            f"{spec.preprocess_mode!r} for {spec.name} (the backbone registry); received {mode!r}"
        )

    def build() -> Any:
        with float32_policy():
            model = build_classifier(spec.name, weights=None, input_size=size)
        load_weights_compact(model, weights)
        return model

    clf = LoadedClassifier(
        spec.name,
        size,
        spec.preprocess_mode,
        cfg,
        folder,
        precision,
        runtime,
        _build=build,
    )
    if runtime == "litert":
        from neurostack.litert import LiteRTRunner, cached_tflite, litert_available

        if not litert_available():
            raise ImportError(
                "runtime 'litert' needs the ai-edge-litert package "
                "(pip install -r requirements.txt); or use runtime='tensorflow'"
            )

        path, clf._model = cached_tflite(spec.name, cfg["weights_sha256"], (size, size, 3), build)
        clf._fn = LiteRTRunner(path)
        return clf
    clf._model = build()
    fold = precision == "bfloat16" if fold_batchnorm is None else bool(fold_batchnorm)
    if fold or precision != "float32":
        with float32_policy():
            clf.inference = inference_model(clf._model, precision=precision, fold_batchnorm=fold)
    return clf


def stale_meta_inputs(meta_config: dict, members: dict[str, LoadedClassifier]) -> list[str]:
    """Name the base models whose weights differ from those the meta-learner was fitted on.

    The meta-learner's ``training.input_models_sha256`` (written by
    :func:`ensemble.stack.fit_meta_learner`) records the SHA-256 of each base
    model's weights that produced its training inputs. A model not recorded there
    is not judged (older artifacts carry no record).

    Returns:
        The names of the loaded base models whose ``weights_sha256`` differs, sorted.
    """
    recorded = (meta_config.get("training") or {}).get("input_models_sha256") or {}
    return sorted(name for name, clf in members.items()
                  if name in recorded and recorded[name] != clf.config.get("weights_sha256"))


def select_meta_folder(classification_dir: str | Path, tta: str | None) -> Path:
    """Return the folder of the meta-learner to use with test-time augmentation ``tta``.

    ``ROOT/meta`` is the default and, through its ``input_tta``, fixes the default
    mode (``tta=None``). Asked for another mode, the folder
    ``ROOT/ALT_META_NAMES[tta]`` is used when it exists (a meta-learner fitted on
    that mode's validation probabilities); otherwise ``ROOT/meta`` is returned and
    :func:`load_ensemble` warns that its inputs differ from its training inputs.

    Raises:
        ArtifactError: If the alternative folder records another ``input_tta``.
        ValueError: If ``tta`` is not one of :data:`~neurostack.preprocess.TTA_MODES`.
    """
    root = Path(classification_dir)
    default = root / META_NAME
    if tta is None:
        return default
    check_tta(tta)
    alt = root / ALT_META_NAMES[tta]
    if not (alt / CONFIG_FILE).is_file() or default_tta(root) == tta:
        return default
    recorded = read_json(alt / CONFIG_FILE).get("input_tta", "none")
    if recorded != tta:
        raise ArtifactError(
            f"{alt / CONFIG_FILE}: the meta-learner for test-time augmentation {tta!r} "
            f"must record input_tta {tta!r}; received {recorded!r}"
        )
    return alt


def load_meta(folder: str | Path) -> LoadedMeta:
    """Rebuild the meta-learner from its folder, verifying the weights' SHA-256 first."""
    from ensemble.models import build_meta_learner

    folder = Path(folder)
    cfg = _checked_config(folder, "meta_learner")
    inputs = list(cfg["inputs"])
    if cfg.get("input_tta", "none") not in TTA_MODES:
        raise ArtifactError(
            f"{folder / CONFIG_FILE}: input_tta must be one of {list(TTA_MODES)}; "
            f"received {cfg['input_tta']!r}"
        )
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
    escalated: np.ndarray | None = None
    """``(N,)`` bool in :data:`CASCADE` mode: the rows the default mode answered."""

    @property
    def label_index(self) -> np.ndarray:
        """``(N,)`` predicted class indices."""
        return self.ensemble.argmax(axis=1)


_TTA_WORDS = {"none": "single-crop", "hflip": "mirror-averaged"}


def check_classifier_mode(mode: str) -> str:
    """Return ``mode`` if it is one of :data:`CLASSIFIER_MODES`, else raise ``ValueError``."""
    if mode not in CLASSIFIER_MODES:
        raise ValueError(
            f"classifier mode (tta) must be one of {list(CLASSIFIER_MODES)}; received {mode!r}"
        )
    return mode


class Ensemble:
    """Four base classifiers and the meta-learner.

    When the meta-learner or a base model is missing (only with ``strict=False``)
    the final answer is the mean of the available base models and ``method`` says so.
    ``tta`` (:data:`~neurostack.preprocess.TTA_MODES`) is applied to every base model.

    With ``fused=True`` (default) and every member in TensorFlow,
    :meth:`predict_crops` runs everything in one compiled graph (see the module
    docstring); it is traced here, once. Otherwise each member runs on its own
    (LiteRT members through their interpreter) and the meta-learner after them.
    """

    def __init__(
        self,
        members: dict[str, LoadedClassifier],
        meta: LoadedMeta | None,
        missing: list[str] | None = None,
        *,
        fused: bool = True,
        tta: str = "none",
    ) -> None:
        if not members:
            raise ArtifactError("No classifier could be loaded")
        self.tta = check_tta(tta)
        self.members = members
        self.meta = meta
        self.missing = missing or []
        self.precision_note = ""
        """How the members' precisions were chosen (set by :func:`load_ensemble`)."""
        self.load_options: dict[str, Any] = {}
        """The precision, folding and runtime options of :func:`load_ensemble`, so that
        :meth:`with_tta` can resolve ``"auto"`` for another mode."""
        self._lock = threading.Lock()
        self._fused_requested = fused
        self.sizes: tuple[int, ...] = tuple(sorted({c.input_size for c in members.values()}))
        in_tf = all(c.runtime == "tensorflow" for c in members.values())
        self._fused = self._build_fused() if fused and in_tf else None

    def _build_fused(self):
        """One ``tf.function`` from per-size greyscale batches to every probability."""
        import tensorflow as tf

        members = dict(self.members)
        meta = self.meta
        sizes = self.sizes
        models = {n: c.predictor for n, c in members.items()}
        mirror = self.tta == "hflip"

        def member_probs(name, x):
            if not mirror:
                return tf.cast(models[name](x, training=False), tf.float32)
            n = tf.shape(x)[0]
            both = models[name](tf.concat([x, tf.reverse(x, axis=[2])], 0), training=False)
            both = tf.cast(both, tf.float32)
            return 0.5 * (both[:n] + both[n:])

        def run(*grays):
            by_size = dict(zip(sizes, grays, strict=True))
            inputs: dict[tuple[int, str], Any] = {}
            probs: dict[str, Any] = {}
            for name, clf in members.items():
                key = (clf.input_size, clf.preprocess_mode)
                if key not in inputs:
                    rgb = tf.repeat(by_size[clf.input_size][..., None], 3, axis=-1)
                    # the registry's own function: its arithmetic works on tensors too
                    inputs[key] = preprocess_array(rgb, clf.preprocess_mode)
                probs[name] = member_probs(name, inputs[key])
            if meta is not None:
                stacked = tf.concat([probs[n] for n in meta.inputs], axis=1)
                final = tf.cast(meta.model(stacked, training=False), tf.float32)
            else:
                final = tf.reduce_mean(tf.stack(list(probs.values())), axis=0)
            return [probs[n] for n in members] + [final]

        spec = [tf.TensorSpec((None, s, s), tf.float32, name=f"gray_{s}") for s in sizes]
        fn = tf.function(run, input_signature=spec)
        fn.get_concrete_function()  # trace now, once; later calls never retrace
        return fn

    def with_tta(self, tta: str) -> Ensemble:
        """Return this ensemble with test-time augmentation ``tta``, sharing the loaded members.

        ``tta="cascade"`` returns :class:`ensemble.cascade.CascadeEnsemble` around this
        ensemble in its default (mirror-averaged) mode.

        The meta-learner follows :func:`select_meta_folder` (the one fitted for ``tta``
        when the artifacts hold one). With ``precision="auto"`` the members follow the
        check recorded for ``tta`` (:func:`ensemble.precision.auto_precision`): a member
        whose precision differs there is loaded again in it, the others are shared;
        the fused graph is traced anew. ``self`` when ``tta`` is already the mode.

        Raises:
            ValueError: If ``tta`` is not one of :data:`CLASSIFIER_MODES`.
            ArtifactError: If the other meta-learner is corrupt (or, for the cascade, its
                record is missing or stale: :func:`ensemble.cascade.build_cascade`).
        """
        check_classifier_mode(tta)
        if tta == self.tta:
            return self
        if tta == CASCADE:
            from ensemble.cascade import build_cascade

            return build_cascade(self)
        meta, missing = self.meta, list(self.missing)
        if meta is not None:
            folder = select_meta_folder(meta.folder.parent, tta)
            if folder != meta.folder:
                meta = load_meta(folder)
                stale = stale_meta_inputs(meta.config, self.members)
                if stale:
                    missing.append(f"{folder} (meta-learner fitted on other weights of "
                                   f"{', '.join(stale)})")
                    meta = self.meta
        members, note = self.members, self.precision_note
        opts = self.load_options
        if opts and opts.get("precision") == AUTO:
            root = next(iter(self.members.values())).folder.parent
            per_model, note = resolve_precision(AUTO, root, tta)
            runtimes = resolve_runtimes(opts.get("runtime"), per_model,
                                        fold_batchnorm=opts.get("fold_batchnorm"))
            members = {
                name: clf if (clf.precision, clf.runtime) == (per_model[name], runtimes[name])
                else load_classifier(clf.folder, precision=per_model[name],
                                     fold_batchnorm=opts.get("fold_batchnorm"),
                                     runtime=runtimes[name])
                for name, clf in self.members.items()
            }
            if all(members[n] is c for n, c in self.members.items()):
                members = self.members
        other = Ensemble(members, meta, missing, fused=self._fused_requested, tta=tta)
        other.precision_note = note
        other.load_options = dict(opts)
        return other

    @property
    def runtimes(self) -> dict[str, str]:
        """``{member name: runtime}`` (:data:`RUNTIMES`)."""
        return {name: clf.runtime for name, clf in self.members.items()}

    @property
    def method(self) -> str:
        """How the final probabilities are formed (and the test-time augmentation, if any)."""
        if self.meta is not None:
            how = "meta-learner (stacking)"
            fitted_on = self.meta.config.get("input_tta", "none")
            if fitted_on != self.tta:
                how += f", fitted on {_TTA_WORDS[fitted_on]} inputs"
        else:
            how = f"mean of {len(self.members)} base model(s); meta-learner not available"
        if self.tta == "hflip":
            how += "; each base model averaged over the slice and its mirror image"
        elif self.meta is not None and self.meta.config.get("input_tta", "none") != self.tta:
            how += "; each base model on the slice alone"
        return how

    def predict_crops(
        self, crops: list[np.ndarray], given: Mapping[str, np.ndarray] | None = None
    ) -> EnsemblePrediction:
        """Classify greyscale uint8 brain crops (any sizes).

        Each crop is resized once per distinct input size and shared by the models
        that use it; with the fused graph (default) one call computes every
        base model and the final probabilities. Members named in ``given``
        (``name -> (N, 4)`` probabilities already computed for these crops) are not
        run; the final answer is formed from them and the others.
        """
        given = dict(given or {})
        if self._fused is not None and not given:
            grays = [
                np.stack([resize_square(c, s) for c in crops]).astype(np.float32)
                for s in self.sizes
            ]
            outs = [np.asarray(o, dtype=np.float32) for o in self._fused(*grays)]
            per = dict(zip(self.members, outs[:-1], strict=True))
            return EnsemblePrediction(per, outs[-1], self.method)
        per_model: dict[str, np.ndarray] = {}
        prepared: dict[tuple[int, str], np.ndarray] = {}
        for name, clf in self.members.items():
            if name in given:
                per_model[name] = np.asarray(given[name], dtype=np.float32)
                continue
            key = (clf.input_size, clf.preprocess_mode)
            if key not in prepared:
                prepared[key] = clf.prepare(crops)
            per_model[name] = self._member_probs(clf, prepared[key])
        return EnsemblePrediction(per_model, self.combine(per_model), self.method)

    def _member_probs(self, clf: LoadedClassifier, x: np.ndarray) -> np.ndarray:
        """``(N, S, S, 3)`` preprocessed batch -> ``(N, 4)`` probabilities, with ``self.tta``."""
        if self.tta == "none":
            return clf.predict_preprocessed(x)
        both = clf.predict_preprocessed(np.concatenate([x, x[:, :, ::-1]]))
        return 0.5 * (both[: len(x)] + both[len(x) :])

    def combine(self, per_model: Mapping[str, np.ndarray]) -> np.ndarray:
        """Return the final ``(N, 4)`` probabilities from every member's ``(N, 4)`` ones.

        The meta-learner when there is one, else the mean (see :attr:`method`).
        """
        if self.meta is not None:
            stacked = np.concatenate([per_model[n] for n in self.meta.inputs], axis=1)
            return np.asarray(self.meta.predict(stacked), dtype=np.float32)
        return np.mean([per_model[n] for n in self.members], axis=0)


def resolve_precision(
    precision: str | Mapping[str, str], classification_dir: str | Path, tta: str | None = None
) -> tuple[dict[str, str], str]:
    """``({backbone: precision}, how it was chosen)`` for a spec, ``"auto"`` included.

    ``"auto"`` follows :func:`ensemble.precision.auto_precision` (the check recorded for
    test-time augmentation ``tta``; ``None``: the default mode); any other spec goes
    through :func:`parse_precision` (``ValueError`` if malformed).
    """
    if isinstance(precision, str) and precision.strip() == AUTO:
        return auto_precision(classification_dir, tta=tta)
    per_model = parse_precision(precision)
    return per_model, f"{format_precision(per_model)}: as requested"


def resolve_runtimes(
    runtime: str | Mapping[str, str] | None,
    per_model: Mapping[str, str],
    *,
    fold_batchnorm: bool | None = None,
) -> dict[str, str]:
    """Per-backbone runtime for :func:`load_ensemble` given the resolved precisions.

    ``None`` reads ``$NEUROSTACK_RUNTIME``, else ``"auto"``. ``"auto"`` is
    :data:`AUTO_RUNTIMES` while every model is float32 and unfolded; otherwise every
    model runs in TensorFlow, where bfloat16 and folding exist, in one fused graph
    (on the AVX512_BF16 host, 2026-12-06: 0.658 s vs 0.678 s per slice, median of 72
    interleaved calls, against InceptionV3 alone in LiteRT).
    """
    if runtime is None:
        runtime = os.environ.get(RUNTIME_ENV, "").strip() or "auto"
    runtimes = parse_runtime(runtime)
    if runtime == "auto" and (fold_batchnorm or set(per_model.values()) != {"float32"}):
        runtimes = dict.fromkeys(BACKBONES, "tensorflow")
    return runtimes


def load_ensemble(
    classification_dir: str | Path,
    *,
    strict: bool = True,
    precision: str | Mapping[str, str] = "float32",
    fused: bool = True,
    fold_batchnorm: bool | None = None,
    tta: str | None = None,
    runtime: str | Mapping[str, str] | None = None,
) -> Ensemble:
    """Load every base classifier and the meta-learner from ``classification_dir``.

    Args:
        classification_dir: Folder holding ``<backbone>/`` and ``meta/`` subfolders.
        strict: Raise when anything is missing; otherwise load what is there and
            record the rest in ``Ensemble.missing``. A corrupt file always raises.
        precision: Base-classifier precision, ``"float32"`` (default) or ``"bfloat16"``,
            or one per model (:func:`parse_precision`, e.g. ``"resnet50=bfloat16"``)
            (faster on CPUs with AVX512_BF16; check accuracy first with
            ``benchmarks/precision_check.py``), or ``"auto"``: the recorded check's
            spec on a CPU with native bfloat16, else float32
            (:func:`ensemble.precision.auto_precision`; the reason is kept in
            ``Ensemble.precision_note``). The meta-learner stays float32.
        fused: Run all models in one compiled graph (default) instead of one call each.
        fold_batchnorm: Fold BatchNormalization into convolutions for inference
            (default: only with ``"bfloat16"``; see :func:`load_classifier`).
        tta: Test-time augmentation of the base models
            (:data:`~neurostack.preprocess.TTA_MODES`). ``None`` (default): the mode
            the meta-learner was fitted with (its config's ``input_tta``), or
            ``"none"`` without a meta-learner. ``"hflip"`` doubles the compute.
            ``"cascade"`` returns :class:`ensemble.cascade.CascadeEnsemble`: single
            crops first, ``"hflip"`` for the unsure slices (``cascade.json``).
        runtime: Where each base model runs (:func:`parse_runtime`). ``None``
            (default) reads ``$NEUROSTACK_RUNTIME``, else ``"auto"``:
            :data:`AUTO_RUNTIMES` when every model is float32 and unfolded, else
            every model in TensorFlow (bfloat16 and folding exist only there, and
            one fused graph beat a mix of runtimes).

    Raises:
        ArtifactError: Naming each missing or corrupt artifact (a meta-learner fitted
            on other base weights counts as missing, see :func:`stale_meta_inputs`).
        ValueError: If ``tta``, ``precision`` or ``runtime`` is not allowed, or LiteRT
            is asked for a model that is not float32.
    """
    if tta is not None:
        check_classifier_mode(tta)
    if tta == CASCADE:
        from ensemble.cascade import SECOND_TTA, build_cascade

        return build_cascade(load_ensemble(
            classification_dir, strict=strict, precision=precision, fused=fused,
            fold_batchnorm=fold_batchnorm, tta=SECOND_TTA, runtime=runtime))
    root = Path(classification_dir)
    per_model, precision_note = resolve_precision(precision, root, tta)
    log.info("classifier precision %s", precision_note)
    runtimes = resolve_runtimes(runtime, per_model, fold_batchnorm=fold_batchnorm)
    members: dict[str, LoadedClassifier] = {}
    missing: list[str] = []
    for name in BACKBONES:
        folder = root / name
        if not (folder / CONFIG_FILE).exists():
            missing.append(f"{folder} (base classifier {name})")
            continue
        members[name] = load_classifier(
            folder,
            precision=per_model[name],
            fold_batchnorm=fold_batchnorm,
            runtime=runtimes[name],
        )
    meta = None
    meta_dir = select_meta_folder(root, tta)
    if (meta_dir / CONFIG_FILE).exists() and not missing:
        meta = load_meta(meta_dir)
        stale = stale_meta_inputs(meta.config, members)
        if stale:
            missing.append(
                f"{meta_dir} (meta-learner fitted on other weights of {', '.join(stale)}; "
                "refit it on their new validation predictions with python -m ensemble.stack)"
            )
            meta = None
    elif not (meta_dir / CONFIG_FILE).exists():
        missing.append(f"{meta_dir} (meta-learner)")
    if missing and strict:
        raise ArtifactError("Missing artifacts: " + "; ".join(missing))
    if not members:
        raise ArtifactError("No classifier artifacts found: " + "; ".join(missing))
    if tta is None:
        tta = meta.config.get("input_tta", "none") if meta is not None else "none"
    if meta is not None and meta.config.get("input_tta", "none") != tta:
        log.warning(
            "%s was fitted on %r inputs but runs on %r ones (no %s folder)",
            meta_dir, meta.config.get("input_tta", "none"), tta, ALT_META_NAMES[tta],
        )
    ens = Ensemble(members, meta, missing, fused=fused, tta=tta)
    ens.precision_note = precision_note
    ens.load_options = {"precision": precision, "fold_batchnorm": fold_batchnorm,
                        "runtime": runtime}
    return ens


def prepare_litert(
    classification_dir: str | Path,
    runtime: str | None = None,
    precision: str | Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Fill the LiteRT cache for every base model that runs there; return their files.

    ``runtime`` and ``precision`` as in :func:`load_ensemble`; ``None`` reads
    ``$NEUROSTACK_RUNTIME`` / ``$NEUROSTACK_PRECISION``, else ``"auto"`` (so nothing
    is converted where ``"auto"`` runs every model in TensorFlow). Models whose
    folder is missing are skipped.
    """
    root = Path(classification_dir)
    if precision is None:
        precision = default_precision()
    per_model, _ = resolve_precision(precision, root)
    out: dict[str, Path] = {}
    for name, rt in resolve_runtimes(runtime, per_model).items():
        if rt == "litert" and (root / name / CONFIG_FILE).exists():
            out[name] = load_classifier(root / name, runtime="litert")._fn.path
    return out
