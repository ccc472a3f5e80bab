"""Write classifier and meta-learner artifact folders (weights, config, checksum)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ensemble.registry import get_backbone
from neurostack import CLASS_NAMES
from neurostack.artifacts import WEIGHTS_FILE, save_weights_compact, write_json

HEAD_DESCRIPTION = (
    "GlobalMaxPool -> Flatten -> Dropout 0.3 -> Dense 128 ReLU -> Dropout 0.25 -> Dense 4 softmax"
)
META_DESCRIPTION = "Dense 64 ReLU -> Dense 32 ReLU -> Dense 4 softmax"


def write_classifier_artifact(
    model: Any, dest: Path, *, backbone: str, input_size: int, training: dict | None = None
) -> str:
    """Save a base classifier's weights (float16) and its config; return the SHA-256."""
    spec = get_backbone(backbone)
    dest = Path(dest)
    sha = save_weights_compact(model, dest / WEIGHTS_FILE)
    write_json(
        dest / "config.json",
        {
            "kind": "classifier",
            "backbone": spec.name,
            "keras_application": spec.keras_name,
            "input_size": int(input_size),
            "native_size": spec.native_size,
            "class_names": list(CLASS_NAMES),
            "preprocessing": {
                "geometry": (
                    "brain crop (blur, threshold 45, largest component) -> resize to input_size"
                ),
                "channels": "greyscale repeated to 3 channels",
                "keras_preprocess_mode": spec.preprocess_mode,
            },
            "head": HEAD_DESCRIPTION,
            "decision": "argmax of the softmax",
            "weights_file": WEIGHTS_FILE,
            "weights_dtype": "float16 (loaded as float32)",
            "weights_sha256": sha,
            "training": training or {},
        },
    )
    return sha


def write_meta_artifact(
    model: Any,
    dest: Path,
    *,
    inputs: list[str],
    training: dict | None = None,
    input_tta: str = "none",
) -> str:
    """Save the meta-learner's weights (float16) and its config; return the SHA-256.

    ``input_tta`` is the test-time augmentation its input probabilities were computed
    with; inference uses the same one by default.
    """
    dest = Path(dest)
    sha = save_weights_compact(model, dest / WEIGHTS_FILE)
    write_json(
        dest / "config.json",
        {
            "kind": "meta_learner",
            "inputs": list(inputs),
            "input_features": [f"{m}_{c}" for m in inputs for c in CLASS_NAMES],
            "input_tta": input_tta,
            "class_names": list(CLASS_NAMES),
            "architecture": META_DESCRIPTION,
            "decision": "argmax of the softmax",
            "weights_file": WEIGHTS_FILE,
            "weights_sha256": sha,
            "training": training or {},
        },
    )
    return sha
