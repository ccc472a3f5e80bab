"""Floating-point operation counts of the classifier backbones, two independent ways.

* :func:`analytic_flops` walks the Keras model and counts ``2 x multiply-adds``
  of every Conv2D, DepthwiseConv2D, SeparableConv2D (depthwise + pointwise) and
  Dense layer from its static input/output shapes (batch 1). Bias additions,
  BatchNormalization, activations, pooling and element-wise adds are not
  counted (together well under 1 % of the convolutions for these models).
* :func:`profiler_flops` asks TensorFlow's graph profiler
  (``tf.compat.v1.profiler`` with the ``float_operation`` option) about the
  traced inference graph at batch 1 (variables are not frozen: the profiler
  only needs the static shapes). It counts the ops that have a registered FLOP
  statistic (Conv2D, MatMul, ...).

The benchmark uses the analytic count for achieved GFLOP/s and reports both; for
the four backbones at their native sizes they agree within 0.5 %.
"""

from __future__ import annotations

from typing import Any


def _shape(tensor: Any) -> tuple[int, ...]:
    return tuple(int(d) if d is not None else 1 for d in tensor.shape)


def _layer_flops(layer: Any) -> int:
    kind = type(layer).__name__
    if kind not in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense"):
        return 0
    flops = 0
    for node in layer._inbound_nodes:
        x = _shape(node.input_tensors[0])
        y = _shape(node.output_tensors[0])
        if kind == "Dense":
            flops += 2 * int(_prod(x)) * int(y[-1])
            continue
        kh, kw = (int(k) for k in layer.kernel_size)
        cin, cout = x[-1], y[-1]
        spatial = y[0] * y[1] * y[2]
        if kind == "Conv2D":
            groups = int(getattr(layer, "groups", 1) or 1)
            flops += 2 * spatial * cout * kh * kw * (cin // groups)
        elif kind == "DepthwiseConv2D":
            flops += 2 * spatial * cout * kh * kw
        else:  # SeparableConv2D: depthwise to cin * multiplier channels, then 1x1 to cout
            mid = cin * int(layer.depth_multiplier)
            flops += 2 * spatial * mid * kh * kw + 2 * spatial * mid * cout
    return flops


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def analytic_flops(model: Any) -> int:
    """FLOPs (2 x multiply-adds) of one forward pass at batch 1 of a functional Keras model."""
    return int(sum(_layer_flops(layer) for layer in model.layers))


def profiler_flops(model: Any, input_size: int) -> int | None:
    """FLOPs of the traced inference graph at batch 1 per ``tf.compat.v1.profiler``.

    Returns ``None`` when the profiler is unavailable or fails.
    """
    try:
        import tensorflow as tf

        spec = tf.TensorSpec((1, input_size, input_size, 3), tf.float32)
        graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec).graph
        opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        opts["output"] = "none"
        prof = tf.compat.v1.profiler.profile(
            graph=graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=opts
        )
        return int(prof.total_float_ops)
    except Exception:  # noqa: BLE001 - a diagnostic only
        return None
