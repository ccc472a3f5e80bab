"""Grad-CAM heatmaps for the base classifiers (Selvaraju et al., ICCV 2017)."""

from __future__ import annotations

import numpy as np

from ensemble.inference import LoadedClassifier
from ensemble.registry import get_backbone
from neurostack.preprocess import CropBox, paste_crop


def gradcam(clf: LoadedClassifier, brain_crop: np.ndarray, class_index: int) -> np.ndarray:
    """Grad-CAM of one class for one greyscale brain crop.

    Args:
        clf: A loaded base classifier.
        brain_crop: ``(h, w)`` uint8 greyscale crop (as fed to the classifier).
        class_index: Class whose evidence is shown (index in ``CLASS_NAMES``).

    Returns:
        ``(h, w)`` float32 heatmap in [0, 1] on the crop's grid (all zeros when the
        gradients vanish).
    """
    import keras
    import tensorflow as tf

    if not 0 <= class_index < 4:
        raise ValueError(f"class_index must be in 0..3; received {class_index}")
    layer = clf.model.get_layer(get_backbone(clf.name).gradcam_layer)
    grad_model = keras.Model(clf.model.inputs, [layer.output, clf.model.output])
    x = tf.convert_to_tensor(clf.prepare([brain_crop]))
    with tf.GradientTape() as tape:
        fmap, probs = grad_model(x, training=False)
        score = probs[:, class_index]
    grads = tape.gradient(score, fmap)
    weights = tf.reduce_mean(tf.cast(grads, tf.float32), axis=(1, 2))
    cam = tf.nn.relu(tf.reduce_sum(tf.cast(fmap, tf.float32) * weights[:, None, None, :], axis=-1))
    cam = cam[0].numpy()
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else np.zeros_like(cam)
    import cv2

    return cv2.resize(
        cam.astype(np.float32),
        (brain_crop.shape[1], brain_crop.shape[0]),
        interpolation=cv2.INTER_LINEAR,
    )


def gradcam_on_image(
    clf: LoadedClassifier, gray: np.ndarray, box: CropBox, class_index: int
) -> np.ndarray:
    """Grad-CAM mapped onto the full original image grid ``(H, W)`` (0 outside the crop)."""
    brain = gray[box.row0 : box.row1, box.col0 : box.col1]
    return paste_crop(gradcam(clf, brain, class_index), box, gray.shape)
