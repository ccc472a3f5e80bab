"""The one backbone registry: name -> constructor, native input size, preprocessing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Backbone:
    """A ``keras.applications`` backbone and how to feed it.

    Attributes:
        name: Registry key, also the artifact folder name.
        keras_name: Constructor name in ``keras.applications``.
        native_size: Side of the square input the architecture was designed for.
        preprocess_mode: ``"tf"`` (scale to [-1, 1]) or ``"caffe"`` (BGR, ImageNet
            mean subtracted), as in ``keras.applications``.
        min_size: Smallest input side the architecture accepts.
        gradcam_layer: Name of the last convolutional feature map, for Grad-CAM.
        has_batchnorm: Whether the architecture contains BatchNormalization layers
            (their statistics can be re-estimated at another input size).
    """

    name: str
    keras_name: str
    native_size: int
    preprocess_mode: str
    min_size: int
    gradcam_layer: str
    has_batchnorm: bool = True

    def constructor(self) -> Callable[..., object]:
        """Return the ``keras.applications`` constructor."""
        import keras

        return getattr(keras.applications, self.keras_name)

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """Apply the backbone's ImageNet preprocessing to ``(..., H, W, 3)`` RGB in 0..255.

        Returns float32; identical to ``keras.applications.<model>.preprocess_input``.
        """
        x = np.asarray(rgb, dtype=np.float32)
        return preprocess_array(x, self.preprocess_mode)


_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def preprocess_array(x: np.ndarray, mode: str) -> np.ndarray:
    """Vectorised ``keras.applications`` preprocessing for ``mode`` in {"tf", "caffe"}."""
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "caffe":
        return x[..., ::-1] - _CAFFE_MEAN_BGR
    raise ValueError(f"preprocess mode must be one of ['caffe', 'tf']; received {mode!r}")


BACKBONES: dict[str, Backbone] = {
    "xception": Backbone("xception", "Xception", 299, "tf", 71, "block14_sepconv2_act"),
    "inceptionv3": Backbone("inceptionv3", "InceptionV3", 299, "tf", 75, "mixed10"),
    "resnet50": Backbone("resnet50", "ResNet50", 224, "caffe", 32, "conv5_block3_out"),
    "vgg19": Backbone("vgg19", "VGG19", 224, "caffe", 32, "block5_conv4", has_batchnorm=False),
}
"""Registry of the four base classifiers, in ensemble order."""


def get_backbone(name: str) -> Backbone:
    """Look up a backbone by name.

    Raises:
        ValueError: Naming the allowed and the received value.
    """
    key = name.lower() if isinstance(name, str) else None
    if key not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}; received {name!r}")
    return BACKBONES[key]
