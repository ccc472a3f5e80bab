"""Training-time augmentation, no stronger than the seed pipeline's.

Rotation up to 10 degrees, shifts up to 10 %, zoom up to 10 %, brightness x0.8-1.2,
horizontal flip. Operates on float batches ``(B, H, W, C)`` in 0..255.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def build_augmenter(seed: int | None = None) -> keras.Sequential:
    """Return a Keras pipeline applying the seed augmentation to ``(B, H, W, C)`` batches."""
    return keras.Sequential(
        [
            keras.layers.RandomRotation(10 / 360, fill_mode="constant", seed=seed, dtype="float32"),
            keras.layers.RandomTranslation(
                0.1, 0.1, fill_mode="constant", seed=seed, dtype="float32"
            ),
            keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed, dtype="float32"),
            keras.layers.RandomFlip("horizontal", seed=seed, dtype="float32"),
        ],
        name="seed_augmentation",
    )


def random_brightness(batch: tf.Tensor, low: float = 0.8, high: float = 1.2) -> tf.Tensor:
    """Multiply each image by a factor drawn uniformly in ``[low, high]``; clip to 0..255."""
    factors = tf.random.uniform((tf.shape(batch)[0], 1, 1, 1), low, high)
    return tf.clip_by_value(batch * factors, 0.0, 255.0)
