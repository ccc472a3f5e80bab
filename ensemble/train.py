"""Train the base classifiers: resumable, logged, checkpointed every epoch.

Recipe (from scratch, the default here since ImageNet weights are unreachable):
one phase at ``--image-size`` with a linear warm-up and cosine decay of the
learning rate, plateau halving on top, batch-norm momentum lowered to 0.9,
early stopping on validation accuracy with the best weights kept, then an
optional short phase at the backbone's native size (``--native-epochs``) so
that inference at the native size sees the scale it was tuned on. With
``--weights imagenet`` the first phase trains the head on a frozen base and
the second unfreezes the upper part of the base.

State lives in ``RUN_DIR/<model>/``: ``last.keras`` (model and optimizer,
written every epoch), ``best.weights.h5``, ``state.json`` and
``training_log.csv``. ``--resume`` continues from the last finished epoch.

Example::

    python -m ensemble.train --models resnet50 --image-size 160 --epochs 40 --resume
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ensemble.registry import BACKBONES, get_backbone
from neurostack import CLASS_NAMES
from neurostack.artifacts import previous_config, write_training_log
from neurostack.hardware import (
    TRAINING_PRECISIONS,
    resolve_training_precision,
    set_tensorflow_threads,
)

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

DEFAULT_DATA = Path("../shared/datasets/brain-tumor-mri/Training")
DEFAULT_SPLIT = Path("artifacts/splits/classification_split.csv")


@dataclass
class Phase:
    """One training phase."""

    name: str
    image_size: int
    epochs: int
    lr: float
    warmup_epochs: int = 0
    trainable: str = "all"  # "all", "head", or "top:<fraction>"


@dataclass
class TrainConfig:
    """Everything that defines a training run of one backbone."""

    model: str
    data_dir: str
    split_csv: str
    run_dir: str
    phases: list[Phase]
    batch_size: int = 32
    weights: str | None = None
    optimizer: str = "adam"
    label_smoothing: float = 0.05
    clipnorm: float | None = None
    batch_warmup_steps: int = 0
    bn_momentum: float | None = 0.9
    patience: int = 8
    plateau_patience: int = 3
    mixed_precision: str = "auto"
    seed: int = 42
    cache_dir: str | None = None
    init_from: str | None = None
    aug_noise_sigma: float = 0.0
    aug_noise_probability: float = 0.5
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Raise ``ValueError`` naming the allowed and received value of a bad option."""
        if not self.aug_noise_sigma >= 0:
            raise ValueError(f"aug_noise_sigma must be >= 0; received {self.aug_noise_sigma}")
        if not 0 <= self.aug_noise_probability <= 1:
            raise ValueError(
                f"aug_noise_probability must be in [0, 1]; received {self.aug_noise_probability}"
            )


def plan_phases(
    model: str,
    *,
    weights: str | None,
    image_size: int | None,
    epochs: int,
    lr: float,
    warmup_epochs: int,
    native_epochs: int,
    native_lr: float | None = None,
) -> list[Phase]:
    """Return the phase plan for a backbone and starting weights."""
    spec = get_backbone(model)
    size = image_size or spec.native_size
    if weights == "imagenet" or (weights and weights != "none"):
        head = Phase("head", size, max(1, epochs // 5), lr, 0, "head")
        tune = Phase("finetune", size, epochs - head.epochs, lr / 10, 1, "top:0.3")
        phases = [head, tune]
    else:
        phases = [Phase("scratch", size, epochs, lr, warmup_epochs, "all")]
    if native_epochs > 0 and size != spec.native_size:
        phases.append(
            Phase("native", spec.native_size, native_epochs, native_lr or lr / 10, 0, "all")
        )
    return phases


def _apply_trainable(model: keras.Model, base_layers: int, scope: str) -> None:
    """Freeze according to ``scope``; head layers are always trainable."""
    layers = model.layers
    if scope == "all":
        for layer in layers:
            layer.trainable = True
        return
    frac = 0.0 if scope == "head" else float(scope.split(":")[1])
    first_trainable = int(base_layers * (1 - frac))
    for i, layer in enumerate(layers):
        layer.trainable = i >= first_trainable or i >= base_layers
    for layer in layers[:base_layers]:
        if layer.__class__.__name__ == "BatchNormalization":
            layer.trainable = False  # keep BN statistics frozen while fine-tuning


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    mode: str,
    batch_size: int,
    *,
    train: bool,
    seed: int,
    noise_sigma: float = 0.0,
    noise_probability: float = 0.5,
) -> tf.data.Dataset:
    """Build a ``tf.data`` pipeline from ``(N, S, S)`` uint8 crops and integer labels.

    Training batches get the seed augmentation and, with ``noise_sigma > 0``,
    Rician noise on a ``noise_probability`` share of the images
    (:func:`ensemble.augment.random_rician_noise`); validation batches get neither.
    """
    import tensorflow as tf

    from ensemble.augment import build_augmenter, random_brightness, random_rician_noise
    from ensemble.registry import _CAFFE_MEAN_BGR

    onehot = np.eye(len(CLASS_NAMES), dtype=np.float32)[y]
    ds = tf.data.Dataset.from_tensor_slices((x, onehot))
    if train:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    aug = build_augmenter(seed) if train else None
    mean = tf.constant(_CAFFE_MEAN_BGR)

    def prep(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        images = tf.cast(images, tf.float32)[..., None]
        if train:
            images = aug(images, training=True)
            images = random_brightness(images)
            if noise_sigma > 0:
                images = random_rician_noise(images, noise_sigma, noise_probability)
        images = tf.repeat(images, 3, axis=-1)
        images = images / 127.5 - 1.0 if mode == "tf" else images - mean  # grey: RGB == BGR
        return images, labels

    return ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


def batch_warmup_factor(step: int, warmup_steps: int) -> float:
    """Learning-rate factor of optimizer step ``step`` (0-based) in a linear batch warm-up.

    Ramps ``1/N, 2/N, ... 1`` over the first ``N = warmup_steps`` steps of an
    optimizer, then stays at 1. A fresh Adam takes near sign-sized steps at first;
    ramping from almost zero lets its moment estimates settle before the full rate
    (restarting a trained network at full rate can kill its ReLU head).
    """
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def _batch_warmup_callback(lr: float, warmup_steps: int) -> keras.callbacks.Callback:
    """Return a Keras callback applying :func:`batch_warmup_factor` to ``lr`` per batch."""
    import keras

    class _Warmup(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
            step = int(self.model.optimizer.iterations.numpy())
            if step <= warmup_steps:
                factor = batch_warmup_factor(step, warmup_steps)
                self.model.optimizer.learning_rate.assign(lr * factor)

    return _Warmup()


def _progress_callback(every: int = 20) -> keras.callbacks.Callback:
    """Return a Keras callback printing one line every ``every`` batches (for log files)."""
    import keras

    class _Progress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.t0 = time.time()

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if (batch + 1) % every == 0:
                logs = logs or {}
                rate = (batch + 1) / max(1e-9, time.time() - self.t0)
                print(
                    f"  batch {batch + 1}: loss={logs.get('loss', float('nan')):.4f} "
                    f"acc={logs.get('accuracy', float('nan')):.4f} ({rate:.2f} batch/s)",
                    flush=True,
                )

    return _Progress()


class _State:
    """Training state persisted to ``state.json`` after every epoch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = {
            "phase": 0,
            "epoch_in_phase": 0,
            "global_epoch": 0,
            "best_val_accuracy": -1.0,
            "best_val_loss": math.inf,
            "best_epoch": -1,
            "wait": 0,
            "plateau_wait": 0,
            "plateau_scale": 1.0,
            "plateau_best_loss": math.inf,
            "done": False,
            "wall_time_s": 0.0,
        }
        if path.exists():
            self.data.update(json.loads(path.read_text()))

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)


def _lr_for_epoch(phase: Phase, e: int, scale: float) -> float:
    if e < phase.warmup_epochs:
        return phase.lr * (e + 1) / (phase.warmup_epochs + 1)
    span = max(1, phase.epochs - phase.warmup_epochs)
    t = (e - phase.warmup_epochs) / span
    return scale * (0.02 * phase.lr + 0.98 * phase.lr * 0.5 * (1 + math.cos(math.pi * t)))


def _build(cfg: TrainConfig, phase: Phase) -> keras.Model:
    import keras

    from ensemble.models import build_classifier, set_batchnorm_momentum

    weights = None if cfg.weights in (None, "none") else cfg.weights
    model = build_classifier(cfg.model, weights=weights, input_size=phase.image_size)
    if cfg.bn_momentum:
        set_batchnorm_momentum(model, cfg.bn_momentum)
    base_layers = len(model.layers) - 5
    _apply_trainable(model, base_layers, phase.trainable)
    opt_cls = {"adam": keras.optimizers.Adam, "adamax": keras.optimizers.Adamax}[cfg.optimizer]
    model.compile(
        optimizer=opt_cls(learning_rate=phase.lr, clipnorm=cfg.clipnorm),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )
    return model


def _drop_unsaved_log_rows(log_path: Path, n_epochs: int) -> None:
    """Keep only log rows of the ``n_epochs`` epochs recorded in ``state.json``.

    A run killed after an epoch's row was appended but before its state was saved
    (e.g. while writing ``last.keras``) repeats that epoch on resume; without this
    the log would hold the epoch twice. Incomplete lines are dropped too.
    """
    if not log_path.exists():
        return
    lines = log_path.read_text().splitlines(keepends=True)
    if not lines:
        return
    n_fields = lines[0].count(",")

    def kept(line: str) -> bool:
        head = line.split(",", 1)[0]
        return (
            line.endswith("\n")
            and line.count(",") == n_fields
            and head.isdigit()
            and int(head) < n_epochs
        )

    rows = [line for line in lines[1:] if kept(line)]
    if len(rows) != len(lines) - 1:
        log_path.write_text("".join([lines[0], *rows]))


def estimated_epoch_s(log_path: Path, image_size: int) -> float | None:
    """Estimate an epoch's duration at ``image_size`` from the last logged epoch.

    The time of the last row is scaled by the pixel ratio (a native-size phase
    after a reduced-size one costs roughly that much more). ``None`` without a log.
    """
    if not log_path.is_file():
        return None
    lines = [ln for ln in log_path.read_text().splitlines() if ln.strip()]
    if len(lines) < 2:
        return None
    row = dict(zip(lines[0].split(","), lines[-1].split(","), strict=False))
    try:
        seconds, size = float(row["seconds"]), int(row["image_size"])
    except (KeyError, ValueError):
        return None
    return seconds * (image_size / size) ** 2


MAX_ROLLBACKS = 3


def has_collapsed(
    val_accuracy: float, train_loss: float, best_val_accuracy: float, val_majority: float
) -> bool:
    """Whether a network that had learned now answers one class whatever the input.

    True when the best validation accuracy so far was at least 0.1 above the
    majority-class fraction, the epoch's validation accuracy is back at that
    fraction (within 0.005) and the training loss is near chance (above
    ``0.95 * ln 4``). A dead ReLU head produces exactly this and never recovers.
    """
    return (
        best_val_accuracy >= val_majority + 0.1
        and val_accuracy <= val_majority + 0.005
        and train_loss > 0.95 * math.log(len(CLASS_NAMES))
    )


def train_model(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    threads: int | None = None,
    deadline: float | None = None,
) -> dict:
    """Train one backbone through its phases; return the final state.

    The Keras dtype policy is restored afterwards, also on error.

    Args:
        cfg: Run configuration (saved to ``config.json`` in the run folder).
        resume: Continue from ``state.json``/``last.keras`` if present.
        threads: TensorFlow intra-op threads (None: TensorFlow's default).
        deadline: ``time.time()`` value by which this call must return. An epoch is
            only started when its estimated duration (:func:`estimated_epoch_s`) fits;
            otherwise the call returns with the run saved and ``done`` false, to be
            continued with ``resume=True``.
    """
    import keras

    previous = keras.mixed_precision.global_policy()
    try:
        return _train_model(cfg, resume=resume, threads=threads, deadline=deadline)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _train_model(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    threads: int | None = None,
    deadline: float | None = None,
) -> dict:
    """Train one backbone through its phases; return the final state.

    Args:
        cfg: Run configuration (saved to ``config.json`` in the run folder).
        resume: Continue from ``state.json``/``last.keras`` if present.
        threads: TensorFlow intra-op threads (None: TensorFlow's default).
        deadline: See :func:`train_model`.

    Returns:
        The state dictionary (best epoch, accuracies, wall time).
    """
    import keras

    from ensemble.data import cached_arrays, label_indices, load_split

    set_tensorflow_threads(threads)
    precision = resolve_training_precision(cfg.mixed_precision)
    keras.mixed_precision.set_global_policy(
        "mixed_bfloat16" if precision == "bfloat16" else "float32"
    )
    print(f"[{cfg.model}] precision {precision} (requested {cfg.mixed_precision})", flush=True)
    keras.utils.set_random_seed(cfg.seed)

    out = Path(cfg.run_dir) / cfg.model
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.json"
    if not resume and state_path.exists():
        raise FileExistsError(
            f"{out} already holds a run; pass --resume to continue it or choose another --run-dir"
        )
    state = _State(state_path)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    log_path = out / "training_log.csv"
    _drop_unsaved_log_rows(log_path, state.data["global_epoch"])
    spec = get_backbone(cfg.model)
    cache_kw = {"cache_dir": cfg.cache_dir} if cfg.cache_dir else {}
    train_df = load_split(cfg.split_csv, "train")
    val_df = load_split(cfg.split_csv, "val")
    y_train = label_indices(train_df["label"])
    y_val = label_indices(val_df["label"])
    val_majority = float(np.bincount(y_val).max() / len(y_val))

    while state.data["phase"] < len(cfg.phases) and not state.data["done"]:
        p_idx = state.data["phase"]
        phase = cfg.phases[p_idx]
        x_train = np.asarray(
            cached_arrays(cfg.data_dir, train_df["path"].tolist(), phase.image_size, **cache_kw)
        )
        x_val = np.asarray(
            cached_arrays(cfg.data_dir, val_df["path"].tolist(), phase.image_size, **cache_kw)
        )
        train_ds = make_dataset(
            x_train,
            y_train,
            spec.preprocess_mode,
            cfg.batch_size,
            train=True,
            seed=cfg.seed + state.data["global_epoch"],
            noise_sigma=cfg.aug_noise_sigma,
            noise_probability=cfg.aug_noise_probability,
        )
        val_ds = make_dataset(x_val, y_val, spec.preprocess_mode, 64, train=False, seed=0)

        last = out / "last.keras"
        if state.data["epoch_in_phase"] > 0 and last.exists():
            model = keras.saving.load_model(last)
            print(
                f"[{cfg.model}] resumed phase {phase.name} at epoch {state.data['epoch_in_phase']}"
            )
        else:
            model = _build(cfg, phase)
            best = out / "best.weights.h5"
            if p_idx == 0 and cfg.init_from:
                from neurostack.artifacts import keep_lineage, load_weights_compact

                load_weights_compact(model, Path(cfg.init_from) / "weights.npz")
                keep_lineage(Path(cfg.init_from), out)
                print(f"[{cfg.model}] initialised from {cfg.init_from}")
            elif p_idx > 0 and best.exists():
                model.load_weights(best)  # carry the best weights into the next phase
                print(f"[{cfg.model}] phase {phase.name}: starts from the previous best weights")
        n_params = model.count_params()
        print(
            f"[{cfg.model}] phase {phase.name}: {phase.image_size}px, {n_params:,} parameters, "
            f"{len(x_train)} train / {len(x_val)} val images"
        )

        while state.data["epoch_in_phase"] < phase.epochs:
            e = state.data["epoch_in_phase"]
            if deadline is not None:
                est = estimated_epoch_s(log_path, phase.image_size) or 0.0
                if time.time() + est > deadline:
                    print(
                        f"[{cfg.model}] stopping before epoch {state.data['global_epoch']}: "
                        f"about {est:.0f} s would overrun the time budget; continue with "
                        "--resume",
                        flush=True,
                    )
                    keras.backend.clear_session()
                    return state.data
            lr = _lr_for_epoch(phase, e, state.data["plateau_scale"])
            model.optimizer.learning_rate.assign(lr)
            t0 = time.time()
            tty = os.isatty(1)
            hist = model.fit(
                train_ds,
                epochs=1,
                verbose=1 if tty else 0,
                callbacks=([] if tty else [_progress_callback()])
                + (
                    [_batch_warmup_callback(lr, cfg.batch_warmup_steps)]
                    if cfg.batch_warmup_steps
                    else []
                ),
            )
            val_loss, val_acc = model.evaluate(val_ds, verbose=0)
            dt = time.time() - t0
            row = {
                "epoch": state.data["global_epoch"],
                "phase": phase.name,
                "image_size": phase.image_size,
                "lr": lr,
                "loss": float(hist.history["loss"][0]),
                "accuracy": float(hist.history["accuracy"][0]),
                "val_loss": float(val_loss),
                "val_accuracy": float(val_acc),
                "seconds": round(dt, 1),
            }
            write_header = not log_path.exists()
            with open(log_path, "a") as fh:
                if write_header:
                    fh.write(",".join(row) + "\n")
                fh.write(",".join(str(v) for v in row.values()) + "\n")
            print(
                f"[{cfg.model}] epoch {row['epoch']} ({phase.name} {e + 1}/{phase.epochs}) "
                f"lr={lr:.2e} loss={row['loss']:.4f} acc={row['accuracy']:.4f} "
                f"val_loss={val_loss:.4f} val_acc={val_acc:.4f} [{dt:.0f}s]",
                flush=True,
            )

            d = state.data
            improved = val_acc > d["best_val_accuracy"] or (
                val_acc == d["best_val_accuracy"] and val_loss < d["best_val_loss"]
            )
            # the native-size phase must beat the best so far *at native size*
            if phase.name == "native" and e == 0:
                improved = True
            if improved:
                d.update(
                    best_val_accuracy=float(val_acc),
                    best_val_loss=float(val_loss),
                    best_epoch=d["global_epoch"],
                    best_phase=phase.name,
                    best_image_size=phase.image_size,
                    wait=0,
                )
                model.save_weights(out / "best.weights.h5")
            else:
                d["wait"] += 1
            if val_loss < d["plateau_best_loss"] - 1e-4:
                d["plateau_best_loss"] = float(val_loss)
                d["plateau_wait"] = 0
            else:
                d["plateau_wait"] += 1
                if d["plateau_wait"] >= cfg.plateau_patience:
                    d["plateau_scale"] *= 0.5
                    d["plateau_wait"] = 0
            d["epoch_in_phase"] += 1
            d["global_epoch"] += 1
            d["wall_time_s"] += dt
            if (
                has_collapsed(val_acc, row["loss"], d["best_val_accuracy"], val_majority)
                and (out / "best.weights.h5").exists()
            ):
                d["rollbacks"] = d.get("rollbacks", 0) + 1
                d["plateau_scale"] *= 0.5
                print(
                    f"[{cfg.model}] collapsed to one class (val acc {val_acc:.4f}, loss "
                    f"{row['loss']:.4f}); rollback {d['rollbacks']}: best weights, fresh "
                    f"optimizer, learning rate x{d['plateau_scale']:g}",
                    flush=True,
                )
                keras.backend.clear_session()
                model = _build(cfg, phase)
                model.load_weights(out / "best.weights.h5")
                if d["rollbacks"] > MAX_ROLLBACKS:
                    d["wait"] = cfg.patience  # give up on this phase; keep the best weights
            tmp = out / "last.tmp.keras"
            model.save(tmp)
            tmp.replace(last)
            state.save()
            if d["wait"] >= cfg.patience and e >= phase.warmup_epochs:
                print(
                    f"[{cfg.model}] early stop in {phase.name}: no val gain for {d['wait']} epochs"
                )
                break
        if (out / "best.weights.h5").exists():  # keep each phase's best for diagnostics
            shutil.copy(out / "best.weights.h5", out / f"best_{phase.name}.weights.h5")
        state.data.update(
            phase=p_idx + 1,
            epoch_in_phase=0,
            wait=0,
            plateau_wait=0,
            plateau_scale=1.0,
            plateau_best_loss=math.inf,
        )
        if p_idx + 1 < len(cfg.phases) and cfg.phases[p_idx + 1].name == "native":
            state.data["best_val_accuracy"] = -1.0  # compare native-size epochs among themselves
        state.save()
        keras.backend.clear_session()
    state.data["done"] = True
    state.save()
    return state.data


def _previous_training(run_out: Path) -> dict:
    """Epochs and wall time of the runs this run continued (from ``previous_config.json``)."""
    t = previous_config(run_out).get("training", {})
    return {
        "epochs_run": int(t.get("epochs_run_total", t.get("epochs_run", 0)) or 0),
        "wall_time_s": float(t.get("wall_time_s_total", t.get("wall_time_s", 0.0)) or 0.0),
    }


def export_model(
    run_dir: Path,
    model_name: str,
    dest: Path,
    input_size: int | None = None,
    recalibrate_images: int = 0,
) -> Path:
    """Write the best weights of a run as a self-describing artifact folder.

    Works on a finished or still-running run (it reads ``best.weights.h5``).
    ``input_size`` overrides the native size (for diagnostics only: shipped
    artifacts always use the native size). ``recalibrate_images > 0``
    re-estimates the batch-norm statistics at the export size on that many
    training-split images first (:mod:`ensemble.recalibrate`; measure its effect
    with ``python -m ensemble.resolution --recalibrate-images``).
    """
    from ensemble.export import write_classifier_artifact
    from ensemble.models import build_classifier

    spec = get_backbone(model_name)
    if recalibrate_images > 0 and not spec.has_batchnorm:
        raise ValueError(f"{model_name} has no batch-norm layers to recalibrate")
    src = Path(run_dir) / model_name
    cfg = json.loads((src / "config.json").read_text())
    state = json.loads((src / "state.json").read_text())
    size = input_size or spec.native_size
    model = build_classifier(model_name, weights=None, input_size=size)
    model.load_weights(src / "best.weights.h5")
    recalibration = None
    if recalibrate_images > 0:
        from ensemble.recalibrate import (
            calibration_crops,
            recalibrate_classifier,
            recalibration_record,
        )

        crops = calibration_crops(
            cfg["data_dir"],
            cfg["split_csv"],
            size,
            recalibrate_images,
            cache_dir=cfg.get("cache_dir"),
        )
        recalibrate_classifier(model, spec.preprocess_mode, crops)
        recalibration = recalibration_record(len(crops), size)
    prev = _previous_training(src)
    write_classifier_artifact(
        model,
        dest,
        backbone=model_name,
        input_size=size,
        training={
            "recipe": cfg,
            "best_epoch": state.get("best_epoch"),
            "best_phase": state.get("best_phase"),
            "best_image_size": state.get("best_image_size"),
            "best_val_accuracy": state.get("best_val_accuracy"),
            "epochs_run": state.get("global_epoch"),
            "wall_time_s": round(state.get("wall_time_s", 0.0), 1),
            "finished": bool(state.get("done")),
            "batchnorm_recalibration": recalibration,
            "hardware": "2 CPU cores, no GPU",
            "continued_from": cfg.get("init_from"),
            "epochs_run_total": int(state.get("global_epoch", 0)) + prev.get("epochs_run", 0),
            "wall_time_s_total": round(
                state.get("wall_time_s", 0.0) + prev.get("wall_time_s", 0.0), 1
            ),
        },
    )
    write_training_log(src, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and train (or export) the requested backbones."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument(
        "--split", type=Path, default=DEFAULT_SPLIT, help="split CSV from ensemble.split"
    )
    p.add_argument("--models", default=",".join(BACKBONES), help="comma-separated backbone names")
    p.add_argument("--run-dir", type=Path, default=Path("runs/classification"))
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--image-size", type=int, default=None, help="training size (default native)")
    p.add_argument("--native-epochs", type=int, default=0, help="epochs at native size after")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--native-lr", type=float, default=None)
    p.add_argument("--warmup-epochs", type=int, default=2)
    p.add_argument("--patience", type=int, default=8)
    p.add_argument("--optimizer", choices=["adam", "adamax"], default="adam")
    p.add_argument(
        "--batch-warmup-steps",
        type=int,
        default=0,
        help="ramp the learning rate linearly over the optimizer's first N steps "
        "(use when starting from trained weights with --init-from)",
    )
    p.add_argument(
        "--clipnorm", type=float, default=None, help="clip each gradient to this L2 norm"
    )
    p.add_argument("--weights", default="none", help="none | imagenet | path to backbone weights")
    p.add_argument(
        "--mixed-precision",
        choices=list(TRAINING_PRECISIONS),
        default="auto",
        help="auto: bfloat16 only on CPUs with native bfloat16 (AVX512_BF16/AMX), else float32",
    )
    p.add_argument(
        "--aug-noise-sigma",
        type=float,
        default=0.0,
        help="Rician noise augmentation: largest sigma in grey levels of the training crop "
        "(0: off); each drawn image gets a sigma uniform in [0, this]",
    )
    p.add_argument(
        "--aug-noise-probability",
        type=float,
        default=0.5,
        help="share of training images that get noise (with --aug-noise-sigma)",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument(
        "--time-budget-min",
        type=float,
        default=None,
        help="return (resumable) before an epoch that would end after this many minutes "
        "from now; shared by all --models",
    )
    p.add_argument(
        "--init-from",
        default=None,
        help="artifact folder whose weights.npz initialises the first phase "
        "(e.g. to continue from shipped weights when the run folder was lost)",
    )
    p.add_argument(
        "--export",
        type=Path,
        default=None,
        help="write best weights of each model to EXPORT/<model>/ instead of training",
    )
    p.add_argument(
        "--export-size",
        type=int,
        default=None,
        help="diagnostics only: export at this input size instead of the native one",
    )
    p.add_argument(
        "--recalibrate-bn-images",
        type=int,
        default=0,
        help="with --export: re-estimate batch-norm statistics at the export size on this "
        "many training images before writing the weights",
    )
    a = p.parse_args(argv)
    names = [get_backbone(n).name for n in a.models.split(",") if n]
    deadline = time.time() + 60 * a.time_budget_min if a.time_budget_min else None
    if a.export:
        for name in names:
            print(
                export_model(
                    a.run_dir, name, a.export / name, a.export_size, a.recalibrate_bn_images
                )
            )
        return 0
    for name in names:
        weights = None if a.weights == "none" else a.weights
        try:
            cfg = TrainConfig(
                model=name,
                data_dir=str(a.data_dir),
                split_csv=str(a.split),
                run_dir=str(a.run_dir),
                phases=plan_phases(
                    name,
                    weights=weights,
                    image_size=a.image_size,
                    epochs=a.epochs,
                    lr=a.lr,
                    warmup_epochs=a.warmup_epochs,
                    native_epochs=a.native_epochs,
                    native_lr=a.native_lr,
                ),
                batch_size=a.batch_size,
                weights=weights,
                optimizer=a.optimizer,
                clipnorm=a.clipnorm,
                batch_warmup_steps=a.batch_warmup_steps,
                patience=a.patience,
                mixed_precision=a.mixed_precision,
                cache_dir=a.cache_dir,
                init_from=a.init_from,
                aug_noise_sigma=a.aug_noise_sigma,
                aug_noise_probability=a.aug_noise_probability,
            )
        except ValueError as exc:  # TrainConfig names the bad option and its value
            p.error(str(exc))
        state_file = a.run_dir / name / "state.json"
        resume = a.resume and state_file.exists()
        if resume and json.loads(state_file.read_text()).get("done"):
            print(f"[{name}] already finished; skipping")
            continue
        if resume:
            old = json.loads((a.run_dir / name / "config.json").read_text())
            cfg.phases = [Phase(**ph) for ph in old["phases"]]
            for key in ("aug_noise_sigma", "aug_noise_probability"):  # the run's own recipe
                kept = old.get(key, TrainConfig.__dataclass_fields__[key].default)
                if kept != getattr(cfg, key):
                    given = getattr(cfg, key)
                    print(f"[{name}] resuming with the run's {key}={kept} (given: {given})")
                setattr(cfg, key, kept)
        state = train_model(cfg, resume=resume, threads=a.threads, deadline=deadline)
        if not state.get("done"):
            print(f"[{name}] not finished (time budget); later models not started")
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
