"""Measure training and inference speed of one backbone at given sizes and settings.

Usage::

    python scripts/train_speed_probe.py resnet50 128,224 --policy mixed_bfloat16 \
        --threads 1 --batch-size 32 --jit off

    python scripts/train_speed_probe.py resunet 192 --policy float32 --batch-size 8 \
        --base-filters 32 --epoch-images 1793

Prints ms per image for a training step and for inference (random data; weights
do not affect speed), and the implied epoch time over ``--epoch-images`` slices.
``resunet`` is the segmentation network (greyscale input, BCE + soft Dice loss,
``--base-filters`` wide, depth 4); the other names are the registry's backbones.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    """Time ``fit`` and ``predict`` for each requested size."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("model")
    p.add_argument("sizes", help="comma-separated input sides")
    p.add_argument("--policy", default="mixed_bfloat16", choices=["mixed_bfloat16", "float32"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=4, help="timed batches")
    p.add_argument("--jit", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--epoch-images", type=int, default=3998)
    p.add_argument("--base-filters", type=int, default=16, help="resunet only")
    a = p.parse_args(argv)

    import keras
    import tensorflow as tf

    from ensemble.models import build_classifier
    from segmentation.metrics import bce_dice_loss
    from segmentation.model import build_resunet

    if a.threads:
        tf.config.threading.set_intra_op_parallelism_threads(a.threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, a.threads))
    keras.mixed_precision.set_global_policy(a.policy)
    jit = {"auto": "auto", "on": True, "off": False}[a.jit]
    bs = a.batch_size
    for size in [int(s) for s in a.sizes.split(",")]:
        n = bs * a.batches
        if a.model == "resunet":
            m = build_resunet(size, a.base_filters, 4)
            loss = bce_dice_loss
            x = np.random.rand(n, size, size, 1).astype("float32")
            y = (np.random.rand(n, size, size, 1) > 0.9).astype("float32")
        else:
            m = build_classifier(a.model, weights=None, input_size=size)
            loss = "sparse_categorical_crossentropy"
            x = np.random.rand(n, size, size, 3).astype("float32")
            y = np.random.randint(0, 4, n)
        m.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, jit_compile=jit)
        m.fit(x[:bs], y[:bs], batch_size=bs, verbose=0)  # trace
        t = time.time()
        m.fit(x, y, batch_size=bs, verbose=0)
        train = (time.time() - t) / len(x)
        m.predict(x[:bs], batch_size=bs, verbose=0)
        t = time.time()
        m.predict(x, batch_size=bs, verbose=0)
        infer = (time.time() - t) / len(x)
        print(
            f"{a.policy} {a.model} {size}px bs{bs} threads={a.threads} jit={a.jit}: "
            f"train {train * 1000:.1f} ms/img "
            f"({a.epoch_images}-slice epoch {train * a.epoch_images / 60:.1f} min); "
            f"infer {infer * 1000:.1f} ms/img",
            flush=True,
        )
        keras.backend.clear_session()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
