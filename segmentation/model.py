"""Residual U-Net (ResUNet) for binary tumour segmentation.

Architecture (after Zhang, Liu & Wang, "Road Extraction by Deep Residual U-Net",
IEEE GRSL 2018):

* **Residual unit** (pre-activation): ``BN -> ReLU -> Conv3x3(stride s) -> BN ->
  ReLU -> Conv3x3``, added to a shortcut. The shortcut is the identity when the
  shape is unchanged, otherwise a ``Conv1x1(stride s) -> BN`` projection.
* **Downsampling** uses a stride of 2 in the *first* convolution of each encoder
  unit (and of its projection shortcut), as in Zhang et al.; there is no
  max-pooling. The first (stem) unit works at full resolution and, as in the
  paper, starts with a plain convolution because its input is the raw image.
* **Encoder**: ``depth`` units; unit ``i`` has ``base_filters * 2**i`` filters;
  units ``1 .. depth - 1`` halve the resolution.
* **Bridge**: one more stride-2 residual unit with ``base_filters * 2**depth``
  filters, so the bottleneck is ``input_size / 2**depth`` pixels wide.
* **Decoder**: ``depth`` stages of 2x nearest upsampling, concatenation with the
  encoder feature map of the same resolution, and a residual unit.
* **Head**: ``Conv1x1 -> sigmoid`` computed in float32 (so the output stays
  float32 under a ``mixed_bfloat16`` / ``mixed_float16`` policy).
* **Mirror input** (optional, ``mirror_input=True``): the stem sees the slice
  and its left-right mirror image as two channels (:class:`MirrorConcat`), so
  every pixel can be compared with the same place in the other hemisphere of
  the head crop. A tumour that does not enhance still breaks that symmetry
  (texture, mass effect); without the channel the network can only compare
  hemispheres through its receptive field. Sagittal slices have no such
  symmetry; the network learns how much to use the channel.

Input: ``(S, S, 1)`` greyscale scaled to ``[0, 1]``. Output: ``(S, S, 1)``
per-pixel tumour probability.

**Ensemble** (:func:`build_resunet_ensemble`): several independently trained
ResUNets on the same input, their probabilities averaged in one graph. An
artifact's ``architecture`` is either the keyword arguments of
:func:`build_resunet` or ``{"members": [...], "combine": "mean"}``;
:func:`build_segmenter` builds either.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import keras
from keras import layers

MIN_DEPTH = 1
MAX_DEPTH = 6


@keras.saving.register_keras_serializable(package="neurostack_segmentation")
class MirrorConcat(layers.Layer):
    """``(B, H, W, C)`` -> ``(B, H, W, 2C)``: the input, then its left-right mirror image.

    Channel ``C + k`` at column ``j`` holds channel ``k`` at column ``W - 1 - j``.
    No weights.
    """

    def call(self, inputs):
        """Concatenate ``inputs`` with ``flip(inputs, axis=2)`` on the channel axis."""
        return keras.ops.concatenate([inputs, keras.ops.flip(inputs, axis=2)], axis=-1)

    def compute_output_shape(self, input_shape):
        """Return the input shape with twice the channels."""
        channels = input_shape[-1]
        return (*input_shape[:-1], None if channels is None else 2 * channels)


def _validate(
    input_size: int,
    base_filters: int,
    depth: int,
    dropout: float,
    bn_momentum: float,
    mirror_input: bool = False,
) -> None:
    if not isinstance(mirror_input, bool):
        raise ValueError(f"mirror_input must be True or False; received {mirror_input!r}")
    if isinstance(depth, bool) or not isinstance(depth, int) or not MIN_DEPTH <= depth <= MAX_DEPTH:
        raise ValueError(
            f"depth must be an integer in {MIN_DEPTH}..{MAX_DEPTH}; received {depth!r}"
        )
    if isinstance(base_filters, bool) or not isinstance(base_filters, int) or base_filters < 1:
        raise ValueError(f"base_filters must be an integer >= 1; received {base_filters!r}")
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise ValueError(f"input_size must be a positive integer; received {input_size!r}")
    if input_size % (2**depth) != 0:
        raise ValueError(
            f"input_size must be divisible by 2**depth = {2**depth} for depth={depth}; "
            f"received input_size={input_size}"
        )
    if (
        not isinstance(dropout, (int, float))
        or isinstance(dropout, bool)
        or not 0.0 <= dropout < 1.0
    ):
        raise ValueError(f"dropout must be a float in [0, 1); received {dropout!r}")
    if (
        not isinstance(bn_momentum, (int, float))
        or isinstance(bn_momentum, bool)
        or not 0.0 < bn_momentum < 1.0
    ):
        raise ValueError(f"bn_momentum must be a float in (0, 1); received {bn_momentum!r}")


def _residual_unit(
    x: keras.KerasTensor,
    filters: int,
    *,
    strides: int = 1,
    first: bool = False,
    bn_momentum: float = 0.9,
    name: str,
) -> keras.KerasTensor:
    """One pre-activation residual unit.

    Args:
        x: Input tensor ``(B, H, W, C)``.
        filters: Output channels.
        strides: 1 or 2; applied in the first convolution and the projection.
        first: Stem unit: the first convolution is applied to the raw input
            without a preceding BN/ReLU (Zhang et al. 2018, Fig. 2).
        bn_momentum: Momentum of the BatchNormalization moving statistics.
        name: Prefix of the layer names.

    Returns:
        Tensor ``(B, H / strides, W / strides, filters)``.
    """
    if first:
        y = x
    else:
        y = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn1")(x)
        y = layers.Activation("relu", name=f"{name}_relu1")(y)
    y = layers.Conv2D(
        filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv1"
    )(y)
    y = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn2")(y)
    y = layers.Activation("relu", name=f"{name}_relu2")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)

    if strides != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False, name=f"{name}_proj")(
            x
        )
        shortcut = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_proj_bn")(shortcut)
    else:
        shortcut = x
    return layers.Add(name=f"{name}_add")([y, shortcut])


def build_resunet(
    input_size: int = 256,
    base_filters: int = 16,
    depth: int = 4,
    dropout: float = 0.0,
    name: str = "resunet",
    bn_momentum: float = 0.9,
    mirror_input: bool = False,
) -> keras.Model:
    """Build a ResUNet for ``(input_size, input_size, 1)`` images.

    Args:
        input_size: Side ``S`` of the square input in pixels; must be divisible
            by ``2**depth``.
        base_filters: Filters of the first encoder unit (doubled per level).
        depth: Number of 2x downsamplings (encoder levels incl. the bridge), 1..6.
        dropout: Spatial dropout rate applied after the bridge, in ``[0, 1)``;
            0 disables it.
        name: Keras model name.
        bn_momentum: Momentum of every BatchNormalization's moving mean and
            variance, in ``(0, 1)``. 0.9 (PyTorch's default) instead of Keras'
            0.99: with 0.99 the moving statistics lagged so far behind the
            weights early in training (Adam, lr 1e-3, ~220 steps per epoch)
            that inference-mode validation Dice was 0.09 while the same
            weights with freshly estimated statistics gave 0.41.
        mirror_input: Feed the stem the slice and its left-right mirror image
            (:class:`MirrorConcat`); the model's input is still one channel.

    Returns:
        An uncompiled ``keras.Model`` mapping ``(B, S, S, 1)`` float inputs in
        ``[0, 1]`` to ``(B, S, S, 1)`` float32 probabilities.

    Raises:
        ValueError: If an option is out of range; the message names the
            allowed and the received values.
    """
    _validate(input_size, base_filters, depth, dropout, bn_momentum, mirror_input)

    inputs = keras.Input((input_size, input_size, 1), name="image")
    skips = []
    x = MirrorConcat(name="mirror")(inputs) if mirror_input else inputs
    for level in range(depth):
        x = _residual_unit(
            x,
            base_filters * 2**level,
            strides=1 if level == 0 else 2,
            first=level == 0,
            bn_momentum=bn_momentum,
            name=f"enc{level}",
        )
        skips.append(x)

    x = _residual_unit(
        x, base_filters * 2**depth, strides=2, bn_momentum=bn_momentum, name="bridge"
    )
    if dropout > 0:
        x = layers.SpatialDropout2D(dropout, name="bridge_dropout")(x)

    for level in reversed(range(depth)):
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = _residual_unit(x, base_filters * 2**level, bn_momentum=bn_momentum, name=f"dec{level}")

    # Head in float32: the probabilities must not be rounded to bfloat16.
    x = layers.BatchNormalization(momentum=bn_momentum, name="head_bn")(x)
    x = layers.Activation("relu", name="head_relu")(x)
    outputs = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="mask")(x)
    return keras.Model(inputs, outputs, name=name)


ENSEMBLE_COMBINE = ("mean",)
"""How an ensemble's member probabilities are combined."""


def build_resunet_ensemble(
    members: Sequence[Mapping[str, Any]], combine: str = "mean", name: str = "resunet_ensemble"
) -> keras.Model:
    """Build ResUNets that share one input and average their probabilities.

    Args:
        members: At least two :func:`build_resunet` keyword dicts (``name`` is
            set here: member ``i`` is the sub-model ``member_i``). All must have
            the same ``input_size``.
        combine: One of :data:`ENSEMBLE_COMBINE`; ``"mean"`` averages the
            members' per-pixel probabilities.
        name: Keras model name.

    Returns:
        An uncompiled ``keras.Model`` mapping ``(B, S, S, 1)`` in ``[0, 1]`` to the
        ``(B, S, S, 1)`` float32 mean probability of its members.

    Raises:
        ValueError: Fewer than two members, differing input sizes, a member
            that names itself, or an unknown ``combine``.
    """
    if combine not in ENSEMBLE_COMBINE:
        raise ValueError(f"combine must be one of {list(ENSEMBLE_COMBINE)}; received {combine!r}")
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members; received {len(members)}")
    sizes = [int(m.get("input_size", 256)) for m in members]
    if len(set(sizes)) != 1:
        raise ValueError(f"ensemble members must share one input_size; received {sizes}")
    if any("name" in m for m in members):
        raise ValueError("ensemble members are named member_0, member_1, ...; drop their 'name'")
    inputs = keras.Input((sizes[0], sizes[0], 1), name="image")
    outputs = [
        build_resunet(**dict(m), name=f"member_{i}")(inputs) for i, m in enumerate(members)
    ]
    mean = layers.Average(dtype="float32", name="mean_probability")(outputs)
    return keras.Model(inputs, mean, name=name)


def build_segmenter(architecture: Mapping[str, Any]) -> keras.Model:
    """Build the network an artifact's ``architecture`` describes.

    Args:
        architecture: :func:`build_resunet` keyword arguments, or
            ``{"members": [...], "combine": "mean"}`` for
            :func:`build_resunet_ensemble`.

    Returns:
        The uncompiled ``keras.Model``.

    Raises:
        ValueError: If an option is invalid (see the two builders) or a key is one
            neither builder accepts (the message names the allowed keys).
    """
    if not isinstance(architecture, Mapping):
        raise ValueError(f"architecture must be a mapping; received {architecture!r}")
    if "members" in architecture:
        extra = set(architecture) - {"members", "combine"}
        if extra:
            raise ValueError(
                f"an ensemble architecture has keys 'members' and 'combine'; "
                f"received extra {sorted(extra)}"
            )
        return build_resunet_ensemble(
            architecture["members"], combine=str(architecture.get("combine", "mean"))
        )
    allowed = set(inspect.signature(build_resunet).parameters)
    unknown = set(architecture) - allowed
    if unknown:
        raise ValueError(
            f"architecture keys must be among {sorted(allowed)}; received unknown {sorted(unknown)}"
        )
    return build_resunet(**architecture)
