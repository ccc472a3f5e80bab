"""Training-time augmentation, no stronger than the seed pipeline's.

Rotation up to 10 degrees, shifts up to 10 %, zoom up to 10 %, brightness x0.8-1.2,
horizontal flip. Operates on float batches ``(B, H, W, C)`` in 0..255. Rician noise
(:func:`random_rician_noise`) is opt-in (``ensemble.train --aug-noise-sigma``).
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


def random_rician_noise(batch: tf.Tensor, max_sigma: float, probability: float = 0.5) -> tf.Tensor:
    """Give a random share of the images Rician noise, as magnitude MR images carry.

    Each image is drawn with ``probability``; a drawn image gets a sigma uniform in
    ``[0, max_sigma]`` grey levels and becomes ``|x + n_re + i n_im|`` (two Gaussian
    fields of that sigma), clipped to 0..255. Images not drawn are returned unchanged.
    The sigma is in grey levels of the batch as given (the training-size crop; noise
    added to a 512-pixel slice before the crop is smoothed by the down-sampling).

    Args:
        batch: ``(B, H, W, C)`` float images in 0..255.
        max_sigma: Largest sigma, grey levels (>= 0).
        probability: Share of images that get noise, in ``[0, 1]``.
    """
    shape = tf.shape(batch)
    per_image = (shape[0], 1, 1, 1)
    drawn = tf.random.uniform(per_image) < probability
    sigma = tf.random.uniform(per_image, 0.0, max_sigma)
    real = batch + tf.random.normal(shape) * sigma
    imag = tf.random.normal(shape) * sigma
    noisy = tf.clip_by_value(tf.sqrt(real * real + imag * imag), 0.0, 255.0)
    return tf.where(drawn, noisy, batch)
