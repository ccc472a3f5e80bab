"""NeuroStack shared core: image input, preprocessing, artifacts and the pipeline."""

from __future__ import annotations

__version__ = "0.1.0"

CLASS_NAMES: tuple[str, ...] = ("glioma", "meningioma", "notumor", "pituitary")
"""Class order used by every classifier, file and table in the project."""

MODEL_LABELS: dict[str, str] = {
    "xception": "Xception",
    "inceptionv3": "InceptionV3",
    "resnet50": "ResNet50",
    "vgg19": "VGG19",
    "ensemble": "Meta-learner (ensemble)",
    "meta": "Meta-learner",
    "resunet": "Res-UNet",
}
"""Display names of the models (artifact folder or pipeline name -> label)."""
