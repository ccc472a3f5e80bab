r"""Pretrain the Res-UNet encoder as a tumour classifier on the classification slices.

ImageNet weights are unreachable here, and 139 training patients do not teach the
segmenter what a tumour that does not enhance looks like. The 5712 classification
slices (four classes) are a larger, labelled source of brain MRI: this module
trains the Res-UNet's encoder and bridge, with a pooled softmax head on top, to
tell glioma / meningioma / notumor / pituitary apart, then writes the whole
Res-UNet's weights (decoder untouched) as ``--init-weights`` for
``segmentation.train``.

Held-out segmentation patients must not leak into the encoder: the
classification set is partly the figshare slices the segmentation set comes
from, so every classification slice within ``max_hamming`` bits (64-bit
perceptual hash) of a validation or test segmentation slice is dropped from
both pretraining parts (:func:`held_out_matches`).

Run folder (resumable after any epoch with ``--resume``)::

    run_config.json, state.json, pretrain_log.csv, exclusions.csv,
    last.keras (model + optimizer), unet_init.weights.npz (best epoch by val accuracy)

Example::

    python -m segmentation.pretrain ../shared/datasets/brain-tumor-mri/Training \
        --seg-data-dir ../shared/datasets/figshare-seg --run-dir RUN --epochs 12
    python -m segmentation.train --data-dir ../shared/datasets/figshare-seg \
        --run-dir SEG_RUN --init-weights RUN/unet_init.weights.npz ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurostack.artifacts import read_json, save_weights_compact, write_json

CLASS_ORDER = ("glioma", "meningioma", "notumor", "pituitary")
HELD_OUT_PARTS = ("val", "test")
STATE_FILE = "state.json"
RUN_CONFIG = "run_config.json"
# Not training_log.csv: a segmentation run started from here would take it for its own history.
LOG_FILE = "pretrain_log.csv"
EXCLUSIONS_FILE = "exclusions.csv"
INIT_WEIGHTS_FILE = "unet_init.weights.npz"
LAST_CHECKPOINT = "last.keras"


@dataclass
class PretrainConfig:
    """Options of one pretraining run (stored as ``run_config.json``).

    Attributes:
        data_dir: Class-folder root of the classification slices.
        split_csv: Classification split (``path``, ``label``, ``split``); its
            ``train`` part trains, its ``val`` part chooses the epoch, ``test`` is unused.
        seg_data_dir: figshare-seg folder whose held-out patients are excluded.
        seg_split_csv: Segmentation patient split (``id``, ``split``).
        run_dir: Run folder.
        image_size: Side of the square head crop (the segmenter's input size).
        base_filters, depth, dropout, bn_momentum: The Res-UNet options; must
            match the segmentation run that starts from the weights.
        epochs, batch_size, learning_rate, warmup_epochs, label_smoothing: Schedule.
        max_hamming: pHash distance at or below which a slice counts as a copy.
        mixed_precision: ``"bfloat16"``, ``"float32"`` or ``"auto"``.
        seed: Data order, augmentation and initialisation seed.
        cache_dir: Cache of the preprocessed arrays (``None``: default cache).
    """

    data_dir: str
    split_csv: str
    seg_data_dir: str
    seg_split_csv: str
    run_dir: str
    image_size: int = 192
    base_filters: int = 16
    depth: int = 4
    dropout: float = 0.2
    bn_momentum: float = 0.9
    epochs: int = 12
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    max_hamming: int = 6
    mixed_precision: str = "auto"
    seed: int = 42
    cache_dir: str | None = None
    augment: dict[str, Any] = field(
        default_factory=lambda: {"rotation_deg": 15.0, "shift": 0.08, "zoom": 0.15, "gamma": 0.3}
    )

    def unet_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`segmentation.model.build_resunet`."""
        return {
            "input_size": self.image_size,
            "base_filters": self.base_filters,
            "depth": self.depth,
            "dropout": self.dropout,
            "bn_momentum": self.bn_momentum,
        }


def validate_config(cfg: PretrainConfig) -> None:
    """Raise ``ValueError`` naming every out-of-range option."""
    bad: dict[str, Any] = {}
    for key in ("epochs", "batch_size", "image_size"):
        if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) < 1:
            bad[key] = getattr(cfg, key)
    if not cfg.learning_rate > 0:
        bad["learning_rate"] = cfg.learning_rate
    if not 0 <= cfg.warmup_epochs < max(cfg.epochs, 1):
        bad["warmup_epochs"] = cfg.warmup_epochs
    if not 0.0 <= cfg.label_smoothing < 1.0:
        bad["label_smoothing"] = cfg.label_smoothing
    if not 0 <= cfg.max_hamming <= 64:
        bad["max_hamming"] = cfg.max_hamming
    if cfg.mixed_precision not in ("bfloat16", "float32", "auto"):
        bad["mixed_precision"] = cfg.mixed_precision
    if bad:
        raise ValueError(
            "pretraining options out of range (ints >= 1, learning_rate > 0, "
            "0 <= warmup_epochs < epochs, 0 <= label_smoothing < 1, 0 <= max_hamming <= 64, "
            f"mixed_precision in bfloat16/float32/auto); received {bad}"
        )
    from segmentation.model import build_resunet  # validates the architecture options

    build_resunet(**{**cfg.unet_options(), "input_size": 2**cfg.depth * 2})


# ----------------------------------------------------------------------------- leakage


def held_out_matches(
    class_hashes: np.ndarray,
    seg_hashes: np.ndarray,
    seg_parts: np.ndarray,
    *,
    max_hamming: int = 6,
    held_out: tuple[str, ...] = HELD_OUT_PARTS,
) -> tuple[np.ndarray, np.ndarray]:
    """Which classification slices copy a held-out segmentation slice.

    Args:
        class_hashes: ``(N,)`` uint64 perceptual hashes of the classification slices.
        seg_hashes: ``(M,)`` uint64 hashes of the segmentation slices.
        seg_parts: ``(M,)`` str split part of each segmentation slice.
        max_hamming: A pair within this many differing bits is a copy.
        held_out: Parts whose copies are excluded.

    Returns:
        ``(excluded, distance)``: ``(N,)`` bool, and ``(N,)`` int the distance to the
        nearest held-out segmentation slice (65 when there is none).
    """
    from ensemble.data import _popcount64

    class_hashes = np.asarray(class_hashes, dtype=np.uint64)
    held = np.asarray(seg_hashes, dtype=np.uint64)[np.isin(np.asarray(seg_parts), held_out)]
    distance = np.full(len(class_hashes), 65, dtype=np.int64)
    if len(held):
        for i, h in enumerate(class_hashes):
            distance[i] = int(_popcount64(held ^ h).min())
    return distance <= max_hamming, distance


def perceptual_hashes(paths: list[Path], desc: str) -> tuple[np.ndarray, list[str]]:
    """64-bit pHashes of image files' canonical greyscale, reporting unreadable files.

    Returns:
        ``(hashes, errors)``: ``(N,)`` uint64 (0 where unreadable) and ``(N,)`` str,
        empty for a readable file, else the reason it could not be read.
    """
    from tqdm import tqdm

    from ensemble.data import _phash_bits
    from neurostack.errors import InputImageError
    from neurostack.imaging import load_image

    hashes = np.zeros(len(paths), dtype=np.uint64)
    errors = [""] * len(paths)
    for i, p in enumerate(tqdm(paths, desc=desc, unit="img")):
        try:
            hashes[i] = _phash_bits(load_image(p).gray)
        except (InputImageError, OSError) as exc:
            errors[i] = f"{type(exc).__name__}: {exc}"
    return hashes, errors


def pretraining_table(cfg: PretrainConfig) -> pd.DataFrame:
    """Classification rows with ``excluded``, ``held_out_distance`` and ``unreadable`` columns.

    An unreadable classification file is excluded and its reason kept in
    ``unreadable``; the run goes on with the others. An unreadable segmentation
    slice cannot be compared and is reported on stderr (it cannot be evaluated either).
    """
    from segmentation.data import read_split

    table = pd.read_csv(cfg.split_csv)
    missing = {"path", "label", "split"} - set(table.columns)
    if missing:
        raise ValueError(f"{cfg.split_csv} lacks columns {sorted(missing)}")
    seg = read_split(cfg.seg_split_csv)
    images = Path(cfg.seg_data_dir) / "images"
    seg_hashes, seg_errors = perceptual_hashes(
        [images / f"{i}.jpg" for i in seg["id"]], "hash figshare-seg"
    )
    seg_ok = np.array([not e for e in seg_errors])
    if not seg_ok.all():
        bad = ", ".join(seg["id"][~seg_ok].astype(str).tolist()[:10])
        print(
            f"warning: {int((~seg_ok).sum())} segmentation slices unreadable, not compared "
            f"(ids {bad})",
            file=sys.stderr,
        )
    class_hashes, class_errors = perceptual_hashes(
        [Path(cfg.data_dir) / p for p in table["path"]], "hash classification"
    )
    excluded, distance = held_out_matches(
        class_hashes,
        seg_hashes[seg_ok],
        seg["split"].to_numpy()[seg_ok],
        max_hamming=cfg.max_hamming,
    )
    unreadable = np.array([bool(e) for e in class_errors])
    return table.assign(
        excluded=excluded | unreadable,
        held_out_distance=np.where(unreadable, -1, distance),
        unreadable=class_errors,
    )


# ----------------------------------------------------------------------------- model


def build_encoder_classifier(unet: Any, n_classes: int = len(CLASS_ORDER)) -> Any:
    """Pooled softmax head on the Res-UNet's bridge, sharing the UNet's layers.

    Training this model trains the UNet's encoder and bridge in place.

    Returns:
        ``keras.Model`` ``(B, S, S, 1)`` -> ``(B, n_classes)`` float32 probabilities.
    """
    import keras
    from keras import layers

    x = unet.get_layer("bridge_add").output
    x = layers.BatchNormalization(name="pre_bn")(x)
    x = layers.Activation("relu", name="pre_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(0.3, name="pool_dropout")(x)
    out = layers.Dense(n_classes, activation="softmax", dtype="float32", name="classes")(x)
    return keras.Model(unet.input, out, name="resunet_encoder_classifier")


def _prepare_images(cfg: PretrainConfig, paths: list[str]) -> np.ndarray:
    """``(N, S, S)`` uint8 head crops, cached by path list and size."""
    import hashlib

    from tqdm import tqdm

    from neurostack.imaging import load_image
    from segmentation.data import PREPROCESS_VERSION, default_cache_dir, preprocess_slice

    key = hashlib.sha256(
        json.dumps(
            [str(Path(cfg.data_dir).resolve()), paths, cfg.image_size, PREPROCESS_VERSION]
        ).encode()
    ).hexdigest()[:16]
    cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    file = cache / f"pretrain_{cfg.image_size}_{key}.npy"
    if file.is_file():
        return np.load(file, allow_pickle=False)
    out = np.zeros((len(paths), cfg.image_size, cfg.image_size), np.uint8)
    for i, p in enumerate(tqdm(paths, desc=f"preprocess {cfg.image_size}px", unit="img")):
        out[i], _ = preprocess_slice(load_image(Path(cfg.data_dir) / p).gray, cfg.image_size)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp.npy")
    np.save(tmp, out, allow_pickle=False)
    tmp.replace(file)
    return out


def _dataset(images: np.ndarray, labels: np.ndarray, cfg: PretrainConfig, epoch: int | None):
    """Batches of ``(image, one-hot)``; ``epoch=None``: unshuffled and unaugmented."""
    import tensorflow as tf

    from segmentation.data import AugmentConfig, _augment_pair

    n_classes = len(CLASS_ORDER)
    if epoch is None:
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
        ds = ds.map(
            lambda x, y: (tf.cast(x, tf.float32)[..., None] / 255.0, tf.one_hot(y, n_classes))
        )
        return ds.batch(cfg.batch_size).prefetch(2)
    aug = AugmentConfig(**cfg.augment)
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(images))
    seeds = np.stack(
        [np.full(len(images), cfg.seed * 100_003 + epoch), np.arange(len(images))], axis=1
    ).astype(np.int64)
    size = images.shape[1]

    def load(x, y, s):
        img = tf.cast(x, tf.float32)[..., None] / 255.0
        img, _ = _augment_pair(img, tf.zeros_like(img), s, size, aug)
        return img, tf.one_hot(y, n_classes)

    ds = tf.data.Dataset.from_tensor_slices((images[order], labels[order], seeds))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(cfg.batch_size, drop_remainder=True).prefetch(2)


# ----------------------------------------------------------------------------- training


def pretrain(
    cfg: PretrainConfig,
    *,
    resume: bool = False,
    threads: int | None = None,
    max_epochs_this_call: int | None = None,
) -> Path:
    """Run (or continue) pretraining; return the path of ``unet_init.weights.npz``.

    Raises:
        ValueError: On an out-of-range option or an existing run without ``resume``.
    """
    validate_config(cfg)
    run_dir = Path(cfg.run_dir)
    state_path = run_dir / STATE_FILE
    if state_path.is_file() and not resume:
        raise ValueError(f"{run_dir} already holds a run; pass --resume to continue it")
    if resume and (run_dir / RUN_CONFIG).is_file():
        cfg = PretrainConfig(**read_json(run_dir / RUN_CONFIG))
    run_dir.mkdir(parents=True, exist_ok=True)

    from segmentation.train import configure_runtime

    precision = configure_runtime(threads, cfg.mixed_precision)
    import keras

    keras.utils.set_random_seed(cfg.seed)
    write_json(run_dir / RUN_CONFIG, asdict(cfg))

    excl_path = run_dir / EXCLUSIONS_FILE
    if excl_path.is_file():
        table = pd.read_csv(excl_path)
    else:
        table = pretraining_table(cfg)
        table.to_csv(excl_path, index=False)
    kept = table[~table["excluded"]]
    n_bad = int(table["unreadable"].fillna("").astype(bool).sum())
    print(
        f"excluded {int(table['excluded'].sum())} of {len(table)} classification slices "
        f"(within {cfg.max_hamming} pHash bits of a held-out segmentation slice, or one of "
        f"{n_bad} unreadable files listed in {EXCLUSIONS_FILE})",
        flush=True,
    )
    labels = {c: i for i, c in enumerate(CLASS_ORDER)}
    parts = {}
    for part in ("train", "val"):
        rows = kept[kept["split"] == part]
        parts[part] = (
            _prepare_images(cfg, rows["path"].tolist()),
            rows["label"].map(labels).to_numpy(np.int64),
        )
    steps = len(parts["train"][0]) // cfg.batch_size
    state = (
        read_json(state_path)
        if state_path.is_file()
        else {"epochs_done": 0, "best_val_accuracy": -1.0, "best_epoch": 0, "wall_time_s": 0.0}
    )

    from segmentation.model import build_resunet

    unet = build_resunet(**cfg.unet_options())
    wrapper = build_encoder_classifier(unet)  # shares the UNet's encoder layers
    if state["epochs_done"]:
        model = keras.models.load_model(run_dir / LAST_CHECKPOINT)  # with optimizer state
    else:
        model = wrapper
        total = cfg.epochs * steps
        warmup = min(cfg.warmup_epochs * steps, total - 1)
        model.compile(
            optimizer=keras.optimizers.Adam(
                keras.optimizers.schedules.CosineDecay(
                    cfg.learning_rate / 10.0,
                    decay_steps=max(1, total - warmup),
                    warmup_target=cfg.learning_rate,
                    warmup_steps=warmup,
                    alpha=0.02,
                )
            ),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
            metrics=["accuracy"],
        )
    print(
        f"train {len(parts['train'][0])} slices ({steps} steps/epoch), "
        f"val {len(parts['val'][0])}, {precision}",
        flush=True,
    )
    val_ds = _dataset(*parts["val"], cfg, None)
    end = (
        cfg.epochs
        if max_epochs_this_call is None
        else min(cfg.epochs, state["epochs_done"] + max_epochs_this_call)
    )
    for epoch in range(state["epochs_done"], end):
        t0 = time.perf_counter()
        hist = model.fit(
            _dataset(*parts["train"], cfg, epoch),
            validation_data=val_ds,
            epochs=epoch + 1,
            initial_epoch=epoch,
            verbose=2,
        )
        logs = {k: float(v[-1]) for k, v in hist.history.items()}
        elapsed = time.perf_counter() - t0
        if logs["val_accuracy"] > state["best_val_accuracy"]:
            if model is not wrapper:
                wrapper.set_weights(model.get_weights())
            tmp = run_dir / f".{INIT_WEIGHTS_FILE}"
            save_weights_compact(unet, tmp)
            tmp.replace(run_dir / INIT_WEIGHTS_FILE)
            state.update(best_val_accuracy=logs["val_accuracy"], best_epoch=epoch + 1)
        tmp_ckpt = run_dir / f".tmp_{LAST_CHECKPOINT}"
        model.save(tmp_ckpt)
        tmp_ckpt.replace(run_dir / LAST_CHECKPOINT)
        row = {"epoch": epoch + 1, "seconds": round(elapsed, 1), **logs}
        log = run_dir / LOG_FILE
        pd.DataFrame([row]).to_csv(log, mode="a", header=not log.is_file(), index=False)
        state.update(epochs_done=epoch + 1, wall_time_s=state["wall_time_s"] + elapsed)
        write_json(state_path, state)
        print(f"epoch {epoch + 1}/{cfg.epochs}: {row}", flush=True)
    return run_dir / INIT_WEIGHTS_FILE


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m segmentation.pretrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data_dir", nargs="?", help="classification class-folder root")
    p.add_argument("--split", dest="split_csv", default="artifacts/splits/classification_split.csv")
    p.add_argument("--seg-data-dir", default="../shared/datasets/figshare-seg")
    p.add_argument(
        "--seg-split", dest="seg_split_csv", default="artifacts/splits/segmentation_split.csv"
    )
    p.add_argument("--run-dir", required=True)
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--max-epochs-this-call", type=int, default=None)
    defaults = PretrainConfig("", "", "", "", "")
    for name in (
        "image_size",
        "base_filters",
        "depth",
        "epochs",
        "batch_size",
        "warmup_epochs",
        "max_hamming",
        "seed",
    ):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    for name in ("dropout", "bn_momentum", "learning_rate", "label_smoothing"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    p.add_argument("--mixed-precision", default="auto")
    p.add_argument("--cache-dir", default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    args = _parser().parse_args(argv)
    if args.data_dir is None and not args.resume:
        print("error: data_dir is required for a new run", file=sys.stderr)
        return 2
    options = {f.name: getattr(args, f.name) for f in fields(PretrainConfig) if f.name in args}
    cfg = PretrainConfig(**{**options, "data_dir": args.data_dir or ""})
    try:
        out = pretrain(
            cfg,
            resume=args.resume,
            threads=args.threads,
            max_epochs_this_call=args.max_epochs_this_call,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"encoder-initialised Res-UNet weights: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
