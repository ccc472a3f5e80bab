"""Shared fixtures: a tiny random artifact tree, the pipeline built from it, generated slices.

Everything expensive is session-scoped: the artifact tree (four real
``keras.applications`` backbones at small input sizes, the meta-learner and a
tiny ResUNet) is built once and only read by the tests.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from neurostack import CLASS_NAMES

# Tests build many throwaway artifacts: run the classifiers in TensorFlow unless a test
# asks for LiteRT, and keep LiteRT conversions out of the user's cache.
os.environ["NEUROSTACK_RUNTIME"] = "tensorflow"
os.environ["NEUROSTACK_CACHE_DIR"] = tempfile.mkdtemp(prefix="neurostack-test-cache-")


def synthetic_slice(
    label: str, rng: np.random.Generator, shape: tuple[int, int] = (128, 128)
) -> np.ndarray:
    """A fake axial slice: a bright textured ellipse ('head') on black plus class-dependent blobs.

    ``notumor`` has no blob; ``glioma`` one large bright blob inside the head,
    ``meningioma`` a medium blob at the rim, ``pituitary`` a small blob low in the middle.
    Position, size and orientation of everything are random, so distinct images are
    not near-duplicates of each other.
    """
    if label not in CLASS_NAMES:
        raise ValueError(f"label must be one of {list(CLASS_NAMES)}; received {label!r}")
    h, w = shape
    img = np.zeros((h, w), np.uint8)
    cy, cx = h / 2 + rng.uniform(-0.08, 0.08) * h, w / 2 + rng.uniform(-0.08, 0.08) * w
    ay, ax = rng.uniform(0.30, 0.44) * h, rng.uniform(0.26, 0.42) * w
    cv2.ellipse(
        img,
        (int(cx), int(cy)),
        (int(ax), int(ay)),
        float(rng.uniform(-30, 30)),
        0,
        360,
        int(rng.integers(90, 140)),
        -1,
    )
    head = img > 0
    # two dark 'ventricles' of random size and place make the low frequencies differ
    for _ in range(2):
        vy, vx = cy + rng.uniform(-0.4, 0.4) * ay, cx + rng.uniform(-0.4, 0.4) * ax
        cv2.ellipse(
            img,
            (int(vx), int(vy)),
            (int(rng.uniform(0.12, 0.3) * ax), int(rng.uniform(0.08, 0.2) * ay)),
            float(rng.uniform(0, 180)),
            0,
            360,
            int(rng.integers(30, 70)),
            -1,
        )
    r_scale = min(h, w)
    if label == "glioma":
        t = rng.uniform(0, 2 * np.pi)
        pos = (cx + 0.4 * ax * np.cos(t), cy + 0.4 * ay * np.sin(t))
        cv2.circle(img, (int(pos[0]), int(pos[1])), int(rng.uniform(0.10, 0.14) * r_scale), 235, -1)
    elif label == "meningioma":
        t = rng.uniform(0, 2 * np.pi)
        pos = (cx + 0.8 * ax * np.cos(t), cy + 0.8 * ay * np.sin(t))
        cv2.circle(img, (int(pos[0]), int(pos[1])), int(rng.uniform(0.07, 0.10) * r_scale), 220, -1)
    elif label == "pituitary":
        pos = (cx + rng.uniform(-0.1, 0.1) * ax, cy + rng.uniform(0.15, 0.3) * ay)
        cv2.circle(img, (int(pos[0]), int(pos[1])), int(rng.uniform(0.04, 0.06) * r_scale), 250, -1)
    # a random smooth intensity gradient across the head (like an MRI bias field)
    t = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    bias = 1 + rng.uniform(0.25, 0.45) * ((xx - cx) / ax * np.cos(t) + (yy - cy) / ay * np.sin(t))
    noise = rng.normal(0, 10, (h, w))
    out = np.where(head, np.clip(img * bias + noise, 1, 255), 0)
    return out.astype(np.uint8)


def write_class_dataset(
    root: Path,
    n_per_class: int = 8,
    *,
    shape: tuple[int, int] = (128, 128),
    seed: int = 0,
    suffix: str = ".png",
) -> Path:
    """Write ``root/<class>/<class>_<i><suffix>`` generated slices; return ``root``."""
    rng = np.random.default_rng(seed)
    for label in CLASS_NAMES:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.fromarray(synthetic_slice(label, rng, shape)).save(
                root / label / f"{label}_{i:03d}{suffix}"
            )
    return root


@pytest.fixture(scope="session")
def make_slice() -> Callable[..., np.ndarray]:
    """:func:`synthetic_slice` as a fixture (test modules must not ``import conftest``: with
    several ``conftest.py`` files in the tree that name is ambiguous)."""
    return synthetic_slice


@pytest.fixture(scope="session")
def make_dataset_dir(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., Path]:
    """Factory: ``make_dataset_dir(n_per_class=8, shape=(128, 128), seed=0)`` -> fresh folder."""

    def make(
        n_per_class: int = 8,
        *,
        shape: tuple[int, int] = (128, 128),
        seed: int = 0,
        suffix: str = ".png",
    ) -> Path:
        root = tmp_path_factory.mktemp("dataset")
        return write_class_dataset(root, n_per_class, shape=shape, seed=seed, suffix=suffix)

    return make


@pytest.fixture(scope="session")
def class_dataset(make_dataset_dir: Callable[..., Path]) -> Path:
    """A read-only class-folder dataset: 12 generated 128 x 128 PNG slices per class."""
    return make_dataset_dir(12, seed=1234)


@pytest.fixture(scope="session")
def class_dataset_split(class_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Split CSV over :func:`class_dataset`: rows alternate train / val, one group per row."""
    from ensemble.data import list_class_folder

    df = list_class_folder(class_dataset)
    split = tmp_path_factory.mktemp("split") / "split.csv"
    df.assign(group=range(len(df)), split=["train", "val"] * (len(df) // 2)).to_csv(
        split, index=False
    )
    return split


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete tiny random artifact tree (built once, ~30-50 s). Treat as read-only."""
    from neurostack.testing import make_tiny_artifacts

    return make_tiny_artifacts(tmp_path_factory.mktemp("tiny_artifacts"), seed=0)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_artifacts: Path):
    """The analysis pipeline loaded strictly from :func:`tiny_artifacts`, warmed up.

    One forced analysis traces every model's ``tf.function`` (~10 s on a busy 2-core
    machine), so that one-off cost is charged to this fixture, not to the first test.
    """
    from neurostack.pipeline import load_pipeline

    pipe = load_pipeline(tiny_artifacts, strict=True)
    pipe.analyse(_png_bytes(), force_segmentation=True)
    return pipe


def _png_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(synthetic_slice("glioma", np.random.default_rng(0), (96, 112))).save(buf, "PNG")
    return buf.getvalue()
