"""figshare-seg loading, patient-level split, preprocessing, caching and tf.data pipelines.

Preprocessing (identical for training and prediction, see :func:`preprocess_slice`):
greyscale uint8 slice -> :func:`~neurostack.preprocess.find_brain_box` crop ->
``resize_square`` to the model size -> ``float32 / 255``. The mask gets the same
box, is resized with area (or linear, when enlarging) interpolation and
binarised at 0.5.

The cache stores the cropped and resized arrays as uint8 (images 0..255, masks
0/1) so that a data set takes a quarter of the float32 size; the ``/ 255``
happens when batches are built.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd

from neurostack.imaging import load_image
from neurostack.preprocess import BLANK_LEVEL, CropBox, crop, find_brain_box, resize_square

if TYPE_CHECKING:
    import tensorflow as tf

SPLIT_COLUMNS = ["id", "patient_id", "label", "fold", "split"]
SPLITS = ("train", "val", "test")
LABELS = ("glioma", "meningioma", "pituitary")
DEFAULT_SPLIT_PATH = Path("artifacts/splits/segmentation_split.csv")
PREPROCESS_VERSION = 1
"""Bump when preprocessing changes so that stale caches are not reused."""
PREPROCESS_DESCRIPTION = (
    "gray uint8 -> neurostack.preprocess.find_brain_box crop -> resize_square(input_size) "
    "-> float32 / 255 (brain crop -> resize -> /255); probabilities are mapped back with "
    "paste_crop"
)


def default_cache_dir() -> Path:
    """``$NEUROSTACK_CACHE/segmentation`` or ``~/.cache/neurostack/segmentation``."""
    root = os.environ.get("NEUROSTACK_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "neurostack"
    return base / "segmentation"


# ----------------------------------------------------------------------------- metadata / split


def load_metadata(data_dir: str | Path) -> pd.DataFrame:
    """Read ``metadata.csv`` of a figshare-seg folder.

    Args:
        data_dir: Folder holding ``images/``, ``masks/`` and ``metadata.csv``.

    Returns:
        DataFrame with columns ``id`` (str, the file stem), ``patient_id`` (str),
        ``label`` and ``fold`` (int), sorted by id.

    Raises:
        FileNotFoundError: If the folder or ``metadata.csv`` is missing.
        ValueError: If required columns are missing.
    """
    path = Path(data_dir) / "metadata.csv"
    if not path.is_file():
        raise FileNotFoundError(f"metadata.csv not found in {data_dir}")
    df = pd.read_csv(path, dtype={"id": str, "patient_id": str, "label": str})
    missing = {"id", "patient_id", "label", "fold"} - set(df.columns)
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)}; found {list(df.columns)}")
    df["fold"] = df["fold"].astype(int)
    return df.sort_values("id").reset_index(drop=True)


def make_patient_split(
    metadata: pd.DataFrame, *, holdout_fold: int = 4, seed: int = 42
) -> pd.DataFrame:
    """Assign every slice to train/val/test by **patient**.

    Slices of the folds other than ``holdout_fold`` are ``train``. The patients
    of ``holdout_fold`` are split in two halves, stratified by label: within
    each label the patients are shuffled with ``seed`` and alternately rounded
    so that val and test get about the same number of patients overall.

    Args:
        metadata: Output of :func:`load_metadata`.
        holdout_fold: The fold that becomes val + test.
        seed: Seed of the patient shuffle (deterministic).

    Returns:
        Copy of ``metadata`` with a ``split`` column, columns :data:`SPLIT_COLUMNS`.

    Raises:
        ValueError: If ``holdout_fold`` is not a fold of the data, or a patient
            appears in more than one fold.
    """
    df = metadata.copy()
    folds = sorted(df["fold"].unique())
    if holdout_fold not in folds:
        raise ValueError(f"holdout_fold must be one of {folds}; received {holdout_fold!r}")
    per_patient = df.groupby("patient_id")["fold"].nunique()
    if (per_patient > 1).any():
        bad = per_patient[per_patient > 1].index.tolist()[:5]
        raise ValueError(f"patients in more than one fold: {bad}")

    df["split"] = "train"
    hold = df[df["fold"] == holdout_fold]
    patients = hold.groupby("patient_id")["label"].agg(lambda s: s.mode().iloc[0])
    rng = np.random.default_rng(seed)
    val_patients: list[str] = []
    extra_to_val = True
    for label in sorted(patients.unique()):
        ids = np.array(sorted(patients[patients == label].index))
        rng.shuffle(ids)
        n_val = len(ids) // 2
        if len(ids) % 2:
            n_val += int(extra_to_val)
            extra_to_val = not extra_to_val
        val_patients.extend(ids[:n_val].tolist())
    is_hold = df["fold"] == holdout_fold
    df.loc[is_hold, "split"] = "test"
    df.loc[is_hold & df["patient_id"].isin(val_patients), "split"] = "val"
    return df[SPLIT_COLUMNS].reset_index(drop=True)


def check_split(split: pd.DataFrame) -> None:
    """Raise ``ValueError`` unless every patient is in exactly one split part."""
    parts = split.groupby("patient_id")["split"].nunique()
    if (parts > 1).any():
        bad = parts[parts > 1].index.tolist()[:5]
        raise ValueError(f"patient-level leak: patients {bad} appear in more than one split")
    unknown = set(split["split"]) - set(SPLITS)
    if unknown:
        raise ValueError(f"split values must be in {list(SPLITS)}; found {sorted(unknown)}")


def write_split(split: pd.DataFrame, path: str | Path = DEFAULT_SPLIT_PATH) -> Path:
    """Validate and write a split CSV (columns :data:`SPLIT_COLUMNS`)."""
    check_split(split)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    split[SPLIT_COLUMNS].to_csv(path, index=False)
    return path


def read_split(path: str | Path = DEFAULT_SPLIT_PATH) -> pd.DataFrame:
    """Read and validate a split CSV written by :func:`write_split`."""
    df = pd.read_csv(path, dtype={"id": str, "patient_id": str, "label": str, "split": str})
    missing = set(SPLIT_COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)}; found {list(df.columns)}")
    check_split(df)
    return df


# ----------------------------------------------------------------------------- preprocessing


def preprocess_slice(gray: np.ndarray, size: int) -> tuple[np.ndarray, CropBox]:
    """Crop the head and resize: ``(H, W)`` uint8 -> ``(size, size)`` uint8 and the box.

    Divide by 255 (:func:`to_model_input`) before feeding the model.
    """
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(
            f"gray must be a 2-D uint8 array (H, W); received {gray.dtype} {gray.shape}"
        )
    box = find_brain_box(gray)
    return resize_square(crop(gray, box), size), box


def preprocess_mask(mask: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """Crop a ``(H, W)`` mask (nonzero = tumour) to ``box``; resize to ``(size, size)`` 0/1 uint8.

    Shrinking uses area interpolation, enlarging linear; the result is binarised at 0.5.
    """
    m = (crop(mask, box) > 0).astype(np.float32)
    interp = cv2.INTER_AREA if m.shape[0] > size or m.shape[1] > size else cv2.INTER_LINEAR
    return (cv2.resize(m, (size, size), interpolation=interp) > 0.5).astype(np.uint8)


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 ``(..., S, S)`` -> float32 ``(..., S, S, 1)`` in ``[0, 1]``."""
    return (np.asarray(images, dtype=np.float32) / 255.0)[..., None]


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask file as a boolean ``(H, W)`` array (pixels > 127 are tumour)."""
    return load_image(path).gray > 127


@dataclass
class PreparedData:
    """Preprocessed arrays of a data set, aligned by row.

    Attributes:
        ids: ``(N,)`` str file stems.
        images: ``(N, S, S)`` uint8 cropped and resized slices.
        masks: ``(N, S, S)`` uint8 0/1 masks.
        boxes: ``(N, 4)`` int32 crop boxes ``(row0, col0, row1, col1)``.
    """

    ids: np.ndarray
    images: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray

    def subset(self, ids: list[str] | np.ndarray) -> PreparedData:
        """Rows for ``ids`` in the given order (``KeyError`` naming a missing id)."""
        index = {k: i for i, k in enumerate(self.ids.tolist())}
        try:
            rows = np.array([index[str(k)] for k in ids], dtype=np.int64)
        except KeyError as exc:
            raise KeyError(f"id {exc.args[0]} is not in the prepared data") from None
        return PreparedData(self.ids[rows], self.images[rows], self.masks[rows], self.boxes[rows])


def _cache_key(data_dir: Path, ids: list[str], size: int) -> str:
    payload = json.dumps(
        {"dir": str(data_dir.resolve()), "ids": ids, "size": size, "v": PREPROCESS_VERSION}
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def prepare_dataset(
    data_dir: str | Path,
    size: int,
    *,
    ids: list[str] | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> PreparedData:
    """Load, crop and resize images and masks, with an ``.npy`` cache.

    Args:
        data_dir: figshare-seg folder (``images/NNNN.jpg``, ``masks/NNNN.png``).
        size: Model input side in pixels.
        ids: File stems to load (default: all ids of ``metadata.csv``).
        cache_dir: Cache folder (default :func:`default_cache_dir`); the cache
            key covers the folder path, the ids, the size and the
            preprocessing version.
        progress: Show a tqdm bar while building the cache.

    Returns:
        The prepared arrays in the order of ``ids``.
    """
    data_dir = Path(data_dir)
    if ids is None:
        ids = load_metadata(data_dir)["id"].tolist()
    ids = [str(i) for i in ids]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = cache / f"figshare-seg_{size}_{_cache_key(data_dir, ids, size)}"
    names = ("ids", "images", "masks", "boxes")
    if all((folder / f"{n}.npy").is_file() for n in names):
        arrays = {n: np.load(folder / f"{n}.npy", allow_pickle=False) for n in names}
        return PreparedData(**arrays)

    from tqdm import tqdm

    images = np.zeros((len(ids), size, size), np.uint8)
    masks = np.zeros((len(ids), size, size), np.uint8)
    boxes = np.zeros((len(ids), 4), np.int32)
    for i, stem in enumerate(tqdm(ids, desc=f"preprocess {size}px", disable=not progress)):
        gray = load_image(data_dir / "images" / f"{stem}.jpg").gray
        mask = read_mask(data_dir / "masks" / f"{stem}.png")
        if mask.shape != gray.shape:
            raise ValueError(f"{stem}: mask shape {mask.shape} != image shape {gray.shape}")
        images[i], box = preprocess_slice(gray, size)
        masks[i] = preprocess_mask(mask, box, size)
        boxes[i] = box.as_tuple()
    data = PreparedData(np.array(ids), images, masks, boxes)
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        tmp = folder / f"{n}.tmp.npy"
        np.save(tmp, getattr(data, n), allow_pickle=False)
        tmp.replace(folder / f"{n}.npy")
    return data


# ----------------------------------------------------------------------------- tf.data


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation ranges (applied identically to image and mask, except brightness).

    Attributes:
        flip: Random left-right flip with probability 0.5.
        rotation_deg: Maximum absolute rotation in degrees.
        shift: Maximum absolute shift as a fraction of the side.
        zoom: Maximum relative zoom (scale drawn from ``1 +- zoom``).
        brightness: ``(low, high)`` multiplicative factor for the image only.
        gamma: Contrast change for the image only: intensities in ``[0, 1]`` are
            raised to a power drawn log-uniformly from ``[1 / (1 + gamma), 1 + gamma]``;
            0 switches it off (and leaves every other random draw unchanged).
        noise: Rician noise for the image only, the magnitude MRI stores:
            ``sqrt((x + n1)**2 + n2**2)`` with ``n1, n2 ~ N(0, sigma)`` per pixel and
            ``sigma`` drawn uniformly from ``[0, noise]`` (intensities in ``[0, 1]``);
            0 switches it off (same rule as ``gamma``).
        tumour_flatten: Probability of simulating a non-enhancing tumour: the
            tumour's grey levels are pulled toward the median of the head tissue
            around it (a ring 2-6 px outside the mask, pixels above
            ``HEAD_LEVEL``) by a fraction drawn uniformly from ``[0, 1]``, through a
            Gaussian-softened mask, so its texture and shape stay and only the
            enhancement goes. Tumours no brighter than their surroundings are left
            alone. 0 switches it off (same rule as ``gamma``).
    """

    flip: bool = True
    rotation_deg: float = 10.0
    shift: float = 0.06
    zoom: float = 0.1
    brightness: tuple[float, float] = (0.8, 1.2)
    gamma: float = 0.0
    noise: float = 0.0
    tumour_flatten: float = 0.0

    def __post_init__(self) -> None:
        bad = {
            k: v
            for k, v in {"rotation_deg": self.rotation_deg, "shift": self.shift}.items()
            if v < 0
        }
        if not 0.0 <= self.zoom < 1.0:
            bad["zoom"] = self.zoom
        if self.gamma < 0:
            bad["gamma"] = self.gamma
        if not 0 <= self.noise < 1:
            bad["noise"] = self.noise
        if not 0 <= self.tumour_flatten <= 1:
            bad["tumour_flatten"] = self.tumour_flatten
        lo, hi = self.brightness
        if not 0 < lo <= hi:
            bad["brightness"] = self.brightness
        if bad:
            raise ValueError(
                "augmentation ranges must be >= 0 (zoom, noise < 1; tumour_flatten <= 1; "
                f"0 < brightness low <= high); "
                f"received {bad}"
            )


HEAD_LEVEL = BLANK_LEVEL / 255.0
"""Intensity above which a pixel counts as head tissue for ``tumour_flatten`` (the
background level of :func:`neurostack.preprocess.almost_blank`, on ``[0, 1]``)."""


def _gaussian_blur(x: tf.Tensor, sigma: float) -> tf.Tensor:
    """Blur a ``(1, S, S, 1)`` tensor with a normalised Gaussian (zero padding)."""
    import tensorflow as tf

    r = int(np.ceil(3 * sigma))
    g = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    return tf.nn.conv2d(x, tf.constant(kernel[..., None, None], tf.float32), 1, "SAME")


def flatten_tumour(image: tf.Tensor, mask: tf.Tensor, strength: tf.Tensor) -> tf.Tensor:
    """Remove a fraction of a tumour's enhancement, keeping its fine texture.

    The enhancement is the tumour's excess over the median of the head tissue
    around it (a ring 3-6 px outside the mask, pixels above ``HEAD_LEVEL``),
    smoothed within the mask (Gaussian, sigma 3 px, normalised by the mask) so
    that only its slowly varying part goes; it is subtracted through the mask
    softened by a Gaussian of sigma 1 px, so the tumour fades into the tissue
    over about 2 px instead of ending in a drawn (dark) edge.

    Args:
        image: ``(S, S, 1)`` float32 intensities in ``[0, 1]``.
        mask: ``(S, S, 1)`` float32 tumour mask (``> 0.5`` is tumour).
        strength: Scalar in ``[0, 1]``: 0 returns the image unchanged, 1 removes
            the whole smoothed excess.

    Returns:
        ``(S, S, 1)`` float32 image in ``[0, 1]``. An empty mask, a mask with no
        head tissue around it, or a tumour no brighter than that tissue leaves the
        image unchanged.
    """
    import tensorflow as tf

    m = tf.cast(mask > 0.5, tf.float32)[None]  # (1, S, S, 1)
    near = tf.nn.max_pool2d(m, 7, 1, "SAME")  # within 3 px
    far = tf.nn.max_pool2d(m, 13, 1, "SAME")  # within 6 px
    ring = tf.logical_and((far - near)[0, ..., 0] > 0.5, image[..., 0] > HEAD_LEVEL)
    around = tf.sort(tf.boolean_mask(image[..., 0], ring))
    n_around = tf.size(around)
    median = tf.cond(n_around > 0, lambda: around[n_around // 2], lambda: tf.constant(1.0))
    excess = tf.nn.relu(image[None] - median) * m
    smooth = _gaussian_blur(excess, 3.0) / tf.maximum(_gaussian_blur(m, 3.0), 1e-3)
    soft = _gaussian_blur(m, 1.0)
    return tf.clip_by_value(image - strength * (soft * smooth)[0], 0.0, 1.0)


def _augment_pair(
    image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, size: int, cfg: AugmentConfig
) -> tuple[tf.Tensor, tf.Tensor]:
    """Augment one float32 ``(S, S, 1)`` image/mask pair with a stateless seed ``(2,)``."""
    import tensorflow as tf

    r = tf.random.stateless_uniform([6], seed=seed, minval=-1.0, maxval=1.0)
    pair = tf.concat([image, mask], axis=-1)
    if cfg.flip:
        pair = tf.cond(r[0] > 0, lambda: tf.reverse(pair, axis=[1]), lambda: pair)
    angle = r[1] * cfg.rotation_deg * np.pi / 180.0
    scale = 1.0 + r[2] * cfg.zoom
    tx = r[3] * cfg.shift * size
    ty = r[4] * cfg.shift * size
    c = (size - 1) / 2.0
    # Output pixel (x, y) samples input M @ ((x, y) - c - t) + c, M = R(-angle) / scale.
    cos = tf.cos(angle) / scale
    sin = tf.sin(angle) / scale
    a0, a1 = cos, sin
    b0, b1 = -sin, cos
    a2 = c - a0 * (c + tx) - a1 * (c + ty)
    b2 = c - b0 * (c + tx) - b1 * (c + ty)
    transform = tf.reshape(tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0]), [1, 8])
    pair = tf.raw_ops.ImageProjectiveTransformV3(
        images=pair[None],
        transforms=transform,
        output_shape=[size, size],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )[0]
    image = pair[..., :1]
    if cfg.tumour_flatten > 0:
        u = tf.random.stateless_uniform([2], seed=seed + 4, minval=0.0, maxval=1.0)
        strength = tf.where(u[0] < cfg.tumour_flatten, u[1], 0.0)
        image = flatten_tumour(image, pair[..., 1:], strength)
    lo, hi = cfg.brightness
    factor = lo + (r[5] + 1.0) / 2.0 * (hi - lo)
    image = tf.clip_by_value(image * factor, 0.0, 1.0)
    if cfg.gamma > 0:
        u = tf.random.stateless_uniform([], seed=seed + 1, minval=-1.0, maxval=1.0)
        image = tf.pow(image, tf.exp(u * float(np.log1p(cfg.gamma))))
    if cfg.noise > 0:
        sigma = tf.random.stateless_uniform([], seed=seed + 2, minval=0.0, maxval=cfg.noise)
        n = tf.random.stateless_normal([size, size, 2], seed=seed + 3) * sigma
        image = tf.clip_by_value(
            tf.sqrt(tf.square(image + n[..., :1]) + tf.square(n[..., 1:])), 0.0, 1.0
        )
    mask = tf.cast(pair[..., 1:] > 0.5, tf.float32)
    return image, mask


def make_train_dataset(
    data: PreparedData,
    batch_size: int,
    *,
    epoch: int,
    seed: int = 42,
    augment: AugmentConfig | None = AugmentConfig(),  # noqa: B008 - frozen dataclass
    threads: int | None = None,
) -> tf.data.Dataset:
    """Shuffled, augmented ``tf.data`` batches for one epoch.

    The order and the augmentation depend only on ``(seed, epoch)``, so a resumed
    run sees exactly the batches an uninterrupted run would have seen.

    Args:
        data: Training arrays.
        batch_size: Images per batch; the last incomplete batch is dropped.
        epoch: 0-based epoch index.
        seed: Base seed.
        augment: Augmentation ranges, or ``None`` for no augmentation.
        threads: Size of the tf.data private thread pool (``None``: TF default).

    Returns:
        ``tf.data.Dataset`` of ``(B, S, S, 1)`` float32 ``(image, mask)`` pairs.
    """
    import tensorflow as tf

    n = len(data.ids)
    size = data.images.shape[1]
    order = np.random.default_rng([seed, epoch]).permutation(n)
    seeds = np.stack([np.full(n, seed * 100_003 + epoch), np.arange(n)], axis=1).astype(np.int64)
    ds = tf.data.Dataset.from_tensor_slices((data.images[order], data.masks[order], seeds))

    def load(img: tf.Tensor, msk: tf.Tensor, s: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        img = tf.cast(img, tf.float32)[..., None] / 255.0
        msk = tf.cast(msk, tf.float32)[..., None]
        if augment is not None:
            img, msk = _augment_pair(img, msk, s, size, augment)
        return img, msk

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(2)
    return _with_threads(ds, threads)


def make_eval_dataset(
    data: PreparedData, batch_size: int, *, threads: int | None = None
) -> tf.data.Dataset:
    """Unshuffled, unaugmented ``(image, mask)`` float32 batches."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((data.images, data.masks))
    ds = ds.map(
        lambda i, m: (tf.cast(i, tf.float32)[..., None] / 255.0, tf.cast(m, tf.float32)[..., None])
    )
    return _with_threads(ds.batch(batch_size).prefetch(2), threads)


def _with_threads(ds: tf.data.Dataset, threads: int | None) -> tf.data.Dataset:
    import tensorflow as tf

    if threads:
        options = tf.data.Options()
        options.threading.private_threadpool_size = max(1, int(threads))
        ds = ds.with_options(options)
    return ds
