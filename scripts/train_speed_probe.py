"""Measure training and inference speed of one backbone at one size and precision.

Usage::

    python scripts/train_speed_probe.py mixed_bfloat16 resnet50 128,224

Prints ms per image for a training step and for inference (batch 32, random
data; weights do not affect speed), and the implied epoch time over 3998 slices.
"""

from __future__ import annotations

import sys
import time

import numpy as np


def main(argv: list[str]) -> int:
    """Time ``fit`` and ``predict`` for each requested size."""
    import keras

    from ensemble.models import build_classifier

    policy, name, sizes = argv[0], argv[1], [int(s) for s in argv[2].split(",")]
    keras.mixed_precision.set_global_policy(policy)
    bs = 32
    for size in sizes:
        m = build_classifier(name, weights=None, input_size=size)
        m.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        x = np.random.rand(bs * 4, size, size, 3).astype("float32")
        y = np.random.randint(0, 4, bs * 4)
        m.fit(x[:bs], y[:bs], batch_size=bs, verbose=0)  # trace
        t = time.time()
        m.fit(x, y, batch_size=bs, verbose=0)
        train = (time.time() - t) / len(x)
        m.predict(x[:bs], batch_size=bs, verbose=0)
        t = time.time()
        m.predict(x, batch_size=bs, verbose=0)
        infer = (time.time() - t) / len(x)
        print(
            f"{policy} {name} {size}px: train {train * 1000:.1f} ms/img "
            f"(3998-slice epoch {train * 3998 / 60:.1f} min); infer {infer * 1000:.1f} ms/img"
        )
        keras.backend.clear_session()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
