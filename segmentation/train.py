r"""Train the ResUNet on figshare-seg with crash-safe per-epoch checkpoints, and export it.

Usage::

    python -m segmentation.train --data-dir ../shared/datasets/figshare-seg \\
        --run-dir runs/segmentation --image-size 192 --epochs 60 --batch-size 8 \\
        --threads 1 --mixed-precision bfloat16 [--resume]
    python -m segmentation.train --run-dir runs/segmentation \\
        --export artifacts/segmentation/resunet --export-only

Run folder layout (``--run-dir``)::

    run_config.json            every option of the run (the source of truth on --resume)
    state.json                 commit point: completed epochs, best val Dice, patience
                               counter, wall time and the checkpoint files below
    checkpoints/last_eNNN.keras          full model + optimizer after epoch NNN
    checkpoints/best_eNNN.weights.npz    float32 model weights of the best epoch so far
    last.keras, best.weights.npz         convenience hard links to the two files above
    training_log.csv           one row per completed epoch

Every epoch writes new checkpoint files first and then replaces ``state.json``
atomically, so a ``kill -9`` at any moment leaves a consistent state; ``--resume``
continues after the last committed epoch with the same optimizer state, learning
rate schedule position, early-stopping counter and (deterministic per epoch)
data order and augmentation. ``--export-only`` reads only committed files, so it
is safe while training is still running.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as _dt
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from neurostack.artifacts import (
    CONFIG_FILE,
    TRAINING_LOG_FILE,
    WEIGHTS_FILE,
    keep_lineage,
    load_weights_compact,
    previous_config,
    read_json,
    save_weights_compact,
    sha256_file,
    write_json,
    write_training_log,
)
from neurostack.errors import ArtifactError
from neurostack.hardware import TRAINING_PRECISIONS, resolve_training_precision
from segmentation.data import (
    DEFAULT_SPLIT_PATH,
    PREPROCESS_DESCRIPTION,
    AugmentConfig,
    load_metadata,
    make_eval_dataset,
    make_patient_split,
    make_train_dataset,
    prepare_dataset,
    read_split,
    write_split,
)

RUN_CONFIG = "run_config.json"
STATE = "state.json"
LOG_COLUMNS = ["epoch", "loss", "dice", "val_loss", "val_dice", "lr", "epoch_time_s"]
PRECISIONS = {"bfloat16": "mixed_bfloat16", "float32": "float32"}
DATASET_CITATION = (
    "J. Cheng et al., Enhanced Performance of Brain Tumor Classification via Tumor Region "
    "Augmentation and Partition, PLoS ONE 2015; figshare 1512427 (CC BY 4.0)"
)


@dataclass
class TrainConfig:
    """Every option of a training run (stored as ``run_config.json``).

    Attributes:
        data_dir: figshare-seg folder.
        run_dir: Output folder of the run.
        image_size: Model input side in pixels (divisible by ``2**depth``).
        base_filters: ResUNet filters at full resolution.
        depth: ResUNet downsamplings.
        dropout: Spatial dropout after the bridge.
        bn_momentum: BatchNormalization moving-statistics momentum.
        mirror_input: Feed the stem the slice and its mirror image
            (``build_resunet(mirror_input=True)``).
        epochs: Maximum number of epochs.
        batch_size: Images per training step.
        learning_rate: Peak Adam learning rate (reached after warm-up).
        warmup_epochs: Linear warm-up from ``learning_rate / 10``.
        min_lr_ratio: Final cosine learning rate as a fraction of the peak.
        weight_decay: Adam(W) decoupled weight decay (0 = plain Adam).
        loss: A name of :data:`segmentation.metrics.LOSSES`.
        patience: Early stopping: epochs without a val-Dice improvement.
        min_delta: Smallest val-Dice increase counted as an improvement.
        seed: Seed of initialisation, split, order and augmentation.
        split_path: Split CSV (created when missing).
        holdout_fold: Fold split into val and test patients.
        cache_dir: Preprocessing cache folder (``None``: default).
        mixed_precision: ``"auto"`` (bfloat16 only on CPUs with native bfloat16,
            see :mod:`neurostack.hardware`), ``"bfloat16"`` or ``"float32"``.
        augment: Use random flip/rotation/shift/zoom/brightness.
        max_train_images: Use only the first N training slices (smoke tests).
        init_weights: Start from these weights (``best.weights.npz`` of a run or
            an exported ``weights.npz``; same ``base_filters``/``depth``, any
            input size since the network is fully convolutional) instead of a
            random initialisation, e.g. to fine-tune at a larger input size.
    """

    data_dir: str
    run_dir: str
    image_size: int = 192
    base_filters: int = 16
    depth: int = 4
    dropout: float = 0.0
    bn_momentum: float = 0.9
    mirror_input: bool = False
    epochs: int = 40
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup_epochs: int = 2
    min_lr_ratio: float = 0.02
    weight_decay: float = 0.0
    loss: str = "bce_dice"
    patience: int = 12
    min_delta: float = 1e-4
    seed: int = 42
    split_path: str = str(DEFAULT_SPLIT_PATH)
    holdout_fold: int = 4
    cache_dir: str | None = None
    mixed_precision: str = "auto"
    augment: bool = True
    max_train_images: int | None = None
    init_weights: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def architecture(self) -> dict[str, Any]:
        """Arguments of :func:`segmentation.model.build_resunet`."""
        return {
            "input_size": self.image_size,
            "base_filters": self.base_filters,
            "depth": self.depth,
            "dropout": self.dropout,
            "bn_momentum": self.bn_momentum,
            "mirror_input": self.mirror_input,
        }


@dataclass
class RunState:
    """Committed progress of a run (``state.json``)."""

    epochs_done: int = 0
    best_val_dice: float = -1.0
    best_epoch: int = -1
    wait: int = 0
    wall_time_s: float = 0.0
    last_checkpoint: str | None = None
    best_weights: str | None = None
    finished: bool = False
    stop_reason: str = ""


# ----------------------------------------------------------------------------- helpers


def configure_runtime(threads: int | None, mixed_precision: str) -> str:
    """Set TF thread pools (before any op runs) and the Keras dtype policy.

    Returns:
        The precision used, ``"bfloat16"`` or ``"float32"`` (``"auto"`` resolved by
        :func:`neurostack.hardware.resolve_training_precision`).
    """
    import keras
    import tensorflow as tf

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(int(threads))
        except RuntimeError as exc:  # TF already initialised in this process
            print(f"warning: could not set threads ({exc})", file=sys.stderr)
    precision = resolve_training_precision(mixed_precision)
    keras.mixed_precision.set_global_policy(PRECISIONS[precision])
    return precision


def _atomic_link(src: Path, dst: Path) -> None:
    """Make ``dst`` a hard link (or copy) of ``src``, replacing it atomically."""
    if dst.exists() and os.path.samefile(src, dst):
        return
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    tmp.replace(dst)
    # rename() between two links of one inode is a no-op that keeps tmp: remove it.
    tmp.unlink(missing_ok=True)


def save_weights_npz(model, path: Path) -> None:
    """Save model weights (not the optimizer) as float32 in the ``load_weights_compact`` format."""
    import numpy as np

    arrays = {f"w{i:04d}": np.asarray(w.numpy()) for i, w in enumerate(model.weights)}
    arrays["__names__"] = np.array([w.path for w in model.weights])
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _read_state(run_dir: Path) -> RunState | None:
    path = run_dir / STATE
    if not path.is_file():
        return None
    known = {f.name for f in dataclasses.fields(RunState)}
    return RunState(**{k: v for k, v in read_json(path).items() if k in known})


def _truncate_log(path: Path, epochs_done: int) -> None:
    """Keep only the log rows of committed epochs (rows of a killed epoch are dropped)."""
    if not path.is_file():
        return
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) < epochs_done]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _append_log(path: Path, row: dict[str, Any]) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)
        fh.flush()
        os.fsync(fh.fileno())


def _make_progress_callback(epoch: int, epochs: int, steps: int, interval_s: float):
    """Return a Keras callback printing a plain line every ``interval_s`` seconds."""
    import keras

    class LineProgress(keras.callbacks.Callback):
        def on_epoch_begin(self, _epoch, logs=None):
            self.t0 = self.last = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if now - self.last < interval_s and batch + 1 < steps:
                return
            self.last = now
            per_step = (now - self.t0) / (batch + 1)
            eta = per_step * (steps - batch - 1)
            logs = logs or {}
            loss, dice = logs.get("loss", float("nan")), logs.get("dice", float("nan"))
            print(
                f"epoch {epoch + 1}/{epochs} step {batch + 1}/{steps} "
                f"loss {loss:.4f} dice {dice:.4f} "
                f"{per_step:.2f} s/step eta {eta / 60:.1f} min",
                flush=True,
            )

    return LineProgress()


def _build_compiled_model(cfg: TrainConfig, steps_per_epoch: int):
    import keras

    from segmentation.metrics import DiceMetric, training_loss
    from segmentation.model import build_resunet

    model = build_resunet(**cfg.architecture())
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(cfg.warmup_epochs * steps_per_epoch, total - 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=cfg.learning_rate / 10.0,
        warmup_target=cfg.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(1, total - warmup),
        alpha=cfg.min_lr_ratio,
    )
    if cfg.weight_decay > 0:
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay)
    else:
        optimizer = keras.optimizers.Adam(schedule)
    loss, _ = training_loss(cfg.loss)
    model.compile(optimizer=optimizer, loss=loss, metrics=[DiceMetric(name="dice")])
    return model


def _current_lr(model) -> float:
    opt = model.optimizer
    lr = opt.learning_rate
    try:
        return float(lr)
    except TypeError:
        return float(opt._get_current_learning_rate())  # schedule: value at current step


def _load_or_make_split(cfg: TrainConfig):
    meta = load_metadata(cfg.data_dir)
    path = Path(cfg.split_path)
    if path.is_file():
        split = read_split(path)
        unknown = set(split["id"]) - set(meta["id"])
        if unknown:
            raise ValueError(
                f"{path} lists {len(unknown)} ids that are not in {cfg.data_dir}/metadata.csv, "
                f"e.g. {sorted(unknown)[:3]}"
            )
    else:
        split = make_patient_split(meta, holdout_fold=cfg.holdout_fold, seed=cfg.seed)
        write_split(split, path)
        print(f"wrote patient-level split to {path}", flush=True)
    return split


# ----------------------------------------------------------------------------- training


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    threads: int | None = None,
    verbose: str = "auto",
    max_epochs_this_call: int | None = None,
) -> RunState:
    """Train (or resume) a run; returns the final committed state.

    Args:
        cfg: Options of the run. On ``resume`` the stored ``run_config.json``
            is used instead and differing options are reported.
        resume: Continue the run in ``cfg.run_dir`` after its last committed epoch.
        threads: TF intra/inter-op threads (``None``: TF default). Runtime only.
        verbose: ``"bar"`` (Keras progress bar), ``"lines"`` (a plain line every
            30 s, for log files), ``"epoch"`` (one line per epoch) or ``"auto"``
            (bar on a terminal, otherwise lines).
        max_epochs_this_call: Stop (unfinished, resumable) after this many
            epochs of this call, e.g. to train in slices of a time budget.

    Returns:
        The :class:`RunState` after the last epoch (weights of the best epoch
        are in ``state.best_weights``).

    Raises:
        FileExistsError: If the run folder already holds a run and ``resume`` is false.
        RuntimeError: If another trainer holds the run folder's lock.
        ValueError: If an option is out of range (checked before anything is written).
    """
    run_dir = Path(cfg.run_dir)
    state = _read_state(run_dir) if resume else None
    if resume and (run_dir / RUN_CONFIG).is_file():
        stored = read_json(run_dir / RUN_CONFIG)
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        stored_cfg = TrainConfig(**{k: v for k, v in stored.items() if k in known})
        defaults = TrainConfig(data_dir="", run_dir="")
        diffs = {  # options that were given (differ from the defaults) and differ from the run
            k: (getattr(cfg, k), getattr(stored_cfg, k))
            for k in known
            if k not in {"run_dir", "data_dir", "extra"}
            and getattr(cfg, k) != getattr(defaults, k)
            and getattr(cfg, k) != getattr(stored_cfg, k)
        }
        if diffs:
            print(f"resume: using the stored options, ignoring {diffs} (given, stored)")
        stored_cfg.run_dir = cfg.run_dir
        cfg = stored_cfg
    elif not resume and (run_dir / STATE).is_file():
        raise FileExistsError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose a new --run-dir"
        )
    validate_config(cfg)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    lock = _lock_run_dir(run_dir)
    import keras

    previous_policy = keras.mixed_precision.global_policy()
    try:
        return _train_locked(cfg, state, run_dir, threads, verbose, max_epochs_this_call)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
        lock.close()


def validate_config(cfg: TrainConfig) -> None:
    """Check a run's options before any data is read or file written.

    Raises:
        ValueError: Naming the option, the allowed values and the received value.
    """
    from segmentation.metrics import training_loss

    training_loss(cfg.loss)
    if cfg.mixed_precision not in TRAINING_PRECISIONS:
        raise ValueError(
            f"mixed_precision must be one of {list(TRAINING_PRECISIONS)}; "
            f"received {cfg.mixed_precision!r}"
        )
    positive = {
        k: getattr(cfg, k) for k in ("image_size", "base_filters", "depth", "epochs", "batch_size")
    }
    bad = {k: v for k, v in positive.items() if not (isinstance(v, int) and v >= 1)}
    if cfg.learning_rate <= 0:
        bad["learning_rate"] = cfg.learning_rate
    if not 0 <= cfg.dropout < 1:
        bad["dropout"] = cfg.dropout
    if bad:
        raise ValueError(
            "image_size, base_filters, depth, epochs and batch_size must be integers >= 1, "
            f"learning_rate > 0 and 0 <= dropout < 1; received {bad}"
        )
    if cfg.augment:
        data_augment_config(cfg)  # raises ValueError on a bad range


def _lock_run_dir(run_dir: Path):
    """Take an exclusive lock on the run folder (released by the OS even after ``kill -9``)."""
    import fcntl

    handle = open(run_dir / ".lock", "w")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(f"another trainer is running in {run_dir}") from None
    return handle


def _train_locked(
    cfg: TrainConfig,
    state: RunState | None,
    run_dir: Path,
    threads: int | None,
    verbose: str,
    max_epochs_this_call: int | None,
) -> RunState:
    configure_runtime(threads, cfg.mixed_precision)
    import keras

    keras.utils.set_random_seed(cfg.seed)
    write_json(run_dir / RUN_CONFIG, asdict(cfg))

    split = _load_or_make_split(cfg)
    train_ids = split.loc[split["split"] == "train", "id"].tolist()
    if cfg.max_train_images:
        train_ids = train_ids[: cfg.max_train_images]
    val_ids = split.loc[split["split"] == "val", "id"].tolist()
    data = prepare_dataset(cfg.data_dir, cfg.image_size, cache_dir=cfg.cache_dir)
    train_data, val_data = data.subset(train_ids), data.subset(val_ids)
    steps = len(train_ids) // cfg.batch_size
    if steps < 1:
        raise ValueError(f"{len(train_ids)} training images < batch size {cfg.batch_size}")
    print(
        f"train {len(train_ids)} slices ({steps} steps/epoch), val {len(val_ids)} slices, "
        f"size {cfg.image_size}, policy {keras.mixed_precision.global_policy().name}, "
        f"threads {threads}",
        flush=True,
    )

    if state is not None and state.last_checkpoint:
        ckpt = run_dir / state.last_checkpoint
        print(f"resuming after epoch {state.epochs_done} from {ckpt}", flush=True)
        import segmentation.metrics  # noqa: F401 - registers the custom loss/metric
        import segmentation.model  # noqa: F401 - registers MirrorConcat

        model = keras.models.load_model(ckpt)
    else:
        state = RunState()
        model = _build_compiled_model(cfg, steps)
        if cfg.init_weights:
            load_weights_compact(model, cfg.init_weights)
            if Path(cfg.init_weights).parent.resolve() != run_dir.resolve():
                keep_lineage(Path(cfg.init_weights).parent, run_dir)
            print(f"initialised from {cfg.init_weights}", flush=True)
    if state.finished:
        print(f"run already finished ({state.stop_reason}); nothing to do", flush=True)
        return state

    log_path = run_dir / TRAINING_LOG_FILE
    _truncate_log(log_path, state.epochs_done)
    val_ds = make_eval_dataset(val_data, cfg.batch_size, threads=threads)
    mode = verbose if verbose != "auto" else ("bar" if sys.stdout.isatty() else "lines")

    end = cfg.epochs
    if max_epochs_this_call is not None:
        end = min(end, state.epochs_done + max_epochs_this_call)
    for epoch in range(state.epochs_done, end):
        t0 = time.perf_counter()
        ds = make_train_dataset(
            train_data,
            cfg.batch_size,
            epoch=epoch,
            seed=cfg.seed,
            augment=None if not cfg.augment else data_augment_config(cfg),
            threads=threads,
        )
        callbacks = (
            [] if mode != "lines" else [_make_progress_callback(epoch, cfg.epochs, steps, 30)]
        )
        history = model.fit(
            ds,
            validation_data=val_ds,
            epochs=epoch + 1,
            initial_epoch=epoch,
            verbose=1 if mode == "bar" else 0,
            shuffle=False,
            callbacks=callbacks,
        )
        logs = {k: float(v[-1]) for k, v in history.history.items()}
        elapsed = time.perf_counter() - t0
        val_dice = logs.get("val_dice", float("nan"))

        improved = val_dice > state.best_val_dice + cfg.min_delta
        new = RunState(**asdict(state))
        new.epochs_done = epoch + 1
        new.wall_time_s = state.wall_time_s + elapsed
        tag = f"e{epoch + 1:03d}"
        if improved:
            new.best_val_dice, new.best_epoch, new.wait = val_dice, epoch + 1, 0
            best_rel = f"checkpoints/best_{tag}.weights.npz"
            save_weights_npz(model, run_dir / best_rel)
            new.best_weights = best_rel
        else:
            new.wait = state.wait + 1
        last_rel = f"checkpoints/last_{tag}.keras"
        model.save(run_dir / last_rel)
        new.last_checkpoint = last_rel
        if new.wait >= cfg.patience:
            new.finished, new.stop_reason = True, f"early stopping (patience {cfg.patience})"
        elif new.epochs_done >= cfg.epochs:
            new.finished, new.stop_reason = True, f"reached {cfg.epochs} epochs"
        row = {
            "epoch": epoch,
            "loss": logs.get("loss"),
            "dice": logs.get("dice"),
            "val_loss": logs.get("val_loss"),
            "val_dice": val_dice,
            "lr": _current_lr(model),
            "epoch_time_s": round(elapsed, 1),
        }
        _append_log(log_path, row)
        write_json(run_dir / STATE, asdict(new))  # the commit point
        _cleanup(run_dir, new, state)
        state = new
        print(
            f"epoch {epoch + 1}/{cfg.epochs} loss {row['loss']:.4f} dice {row['dice']:.4f} "
            f"val_loss {row['val_loss']:.4f} val_dice {val_dice:.4f} "
            f"(best {state.best_val_dice:.4f} @ {state.best_epoch}, wait {state.wait}) "
            f"lr {row['lr']:.2e} {elapsed / 60:.1f} min",
            flush=True,
        )
        if state.finished:
            break

    if state.best_weights:
        load_weights_compact(model, run_dir / state.best_weights)  # restore the best epoch
    print(
        f"done: {state.stop_reason or 'stopped'}; best val Dice {state.best_val_dice:.4f} "
        f"at epoch {state.best_epoch}",
        flush=True,
    )
    return state


def data_augment_config(cfg: TrainConfig):
    """Augmentation ranges of a run (defaults, overridable through ``cfg.extra['augment']``)."""
    from segmentation.data import AugmentConfig

    options = dict(cfg.extra.get("augment", {}))
    if "brightness" in options:
        options["brightness"] = tuple(options["brightness"])
    return AugmentConfig(**options)


def _cleanup(run_dir: Path, new: RunState, old: RunState) -> None:
    """Refresh the convenience links and delete checkpoints no longer referenced."""
    _atomic_link(run_dir / new.last_checkpoint, run_dir / "last.keras")
    if new.best_weights:
        _atomic_link(run_dir / new.best_weights, run_dir / "best.weights.npz")
    keep = {new.last_checkpoint, new.best_weights}
    for rel in (old.last_checkpoint, old.best_weights):
        if rel and rel not in keep:
            (run_dir / rel).unlink(missing_ok=True)
    for path in (run_dir / "checkpoints").iterdir():  # leftovers of a killed epoch
        rel = f"checkpoints/{path.name}"
        if rel not in keep:
            path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- export


def export_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Export the best committed weights of a (possibly still running) run.

    Writes ``weights.npz`` (float16, :func:`save_weights_compact`),
    ``config.json`` and ``training_log.csv`` to ``out_dir``.

    Raises:
        ArtifactError: If the run has no committed best weights yet.
    """
    import keras

    from segmentation.metrics import training_loss
    from segmentation.model import build_resunet

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg_dict = read_json(run_dir / RUN_CONFIG)
    for attempt in range(5):  # the trainer may replace the files between our reads
        state = _read_state(run_dir)
        if state is None or not state.best_weights:
            raise ArtifactError(f"{run_dir} has no completed epoch with best weights yet")
        weights = run_dir / state.best_weights
        tmp = out_dir / ".best.weights.npz"
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy2(weights, tmp)
            break
        except FileNotFoundError:
            if attempt == 4:
                raise
            time.sleep(1.0)
    cfg = TrainConfig(
        **{k: v for k, v in cfg_dict.items() if k in TrainConfig.__dataclass_fields__}
    )

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        model = build_resunet(**cfg.architecture())
        load_weights_compact(model, tmp)
    finally:
        keras.mixed_precision.set_global_policy(previous)
        tmp.unlink(missing_ok=True)
    sha = save_weights_compact(model, out_dir / WEIGHTS_FILE)

    split_path = Path(cfg.split_path)
    split_info: dict[str, Any] = {"path": cfg.split_path}
    if split_path.is_file():
        split = read_split(split_path)
        split_info["sha256"] = sha256_file(split_path)
        for part in ("train", "val", "test"):
            rows = split[split["split"] == part]
            split_info[part] = {"slices": len(rows), "patients": int(rows["patient_id"].nunique())}
    write_training_log(run_dir, out_dir)
    prev = previous_config(run_dir)

    import tensorflow as tf

    config = {
        "model": "resunet",
        "architecture": cfg.architecture(),
        "input_size": cfg.image_size,
        "input": "(S, S, 1) float32 greyscale in [0, 1]",
        "output": "(S, S, 1) float32 tumour probability",
        "preprocessing": PREPROCESS_DESCRIPTION,
        "threshold": 0.5,
        "threshold_rule": "probability >= threshold",
        "weights_file": WEIGHTS_FILE,
        "weights_dtype": "float16",
        "weights_sha256": sha,
        "training_data": {
            "dataset": "figshare-seg",
            "data_dir": cfg.data_dir,
            "citation": DATASET_CITATION,
            "pixel_spacing": "unknown (not recorded in the data)",
        },
        "split": split_info,
        "recipe": {
            "loss": training_loss(cfg.loss)[1],
            "optimizer": "AdamW" if cfg.weight_decay > 0 else "Adam",
            "learning_rate": cfg.learning_rate,
            "schedule": f"linear warm-up {cfg.warmup_epochs} epochs from lr/10, cosine to "
            f"{cfg.min_lr_ratio} x lr over {cfg.epochs} epochs",
            "weight_decay": cfg.weight_decay,
            "batch_size": cfg.batch_size,
            "max_epochs": cfg.epochs,
            "early_stopping": f"val Dice, patience {cfg.patience}, best weights restored",
            "augmentation": asdict(data_augment_config(cfg)) if cfg.augment else None,
            "mixed_precision": cfg.mixed_precision,
            "seed": cfg.seed,
            "init_weights": cfg.init_weights,
        },
        "best_epoch": state.best_epoch,
        "best_val_dice": state.best_val_dice,
        "epochs_completed": state.epochs_done,
        "run_finished": state.finished,
        "stop_reason": state.stop_reason,
        "wall_time_s": round(state.wall_time_s, 1),
        "continued_from": str(Path(cfg.init_weights).parent) if cfg.init_weights else None,
        "epochs_completed_total": state.epochs_done
        + int(prev.get("epochs_completed_total", prev.get("epochs_completed", 0)) or 0),
        "wall_time_s_total": round(
            state.wall_time_s
            + float(prev.get("wall_time_s_total", prev.get("wall_time_s", 0.0)) or 0.0),
            1,
        ),
        "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    write_json(out_dir / CONFIG_FILE, config)
    print(
        f"exported epoch {state.best_epoch} (val Dice {state.best_val_dice:.4f}) to {out_dir}",
        flush=True,
    )
    return out_dir


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    d = TrainConfig(data_dir="", run_dir="")
    p = argparse.ArgumentParser(
        prog="python -m segmentation.train", description=__doc__.split("\n")[0]
    )
    p.add_argument("--data-dir", help="figshare-seg folder (images/, masks/, metadata.csv)")
    p.add_argument("--run-dir", default="runs/segmentation")
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--base-filters", type=int, default=d.base_filters)
    p.add_argument("--depth", type=int, default=d.depth)
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--bn-momentum", type=float, default=d.bn_momentum)
    p.add_argument(
        "--mirror-input",
        action="store_true",
        help="second input channel: the slice's left-right mirror image",
    )
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.learning_rate, help="peak learning rate")
    p.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument(
        "--loss",
        default=d.loss,
        help="a name of segmentation.metrics.LOSSES: bce_dice, or bce_focal_tversky "
        "(missed tumour pixels weigh more: alpha 0.3, beta 0.7, gamma 0.75)",
    )
    p.add_argument("--patience", type=int, default=d.patience)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--split", default=d.split_path, help="split CSV (created if missing)")
    p.add_argument("--holdout-fold", type=int, default=d.holdout_fold)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--no-augment", action="store_true")
    aug = AugmentConfig()
    p.add_argument("--aug-rotation", type=float, default=aug.rotation_deg, help="max degrees")
    p.add_argument("--aug-shift", type=float, default=aug.shift, help="max fraction of the side")
    p.add_argument("--aug-zoom", type=float, default=aug.zoom, help="max relative zoom")
    p.add_argument(
        "--aug-gamma", type=float, default=aug.gamma, help="contrast power range (0: off)"
    )
    p.add_argument(
        "--aug-noise",
        type=float,
        default=aug.noise,
        help="max Rician noise sigma on [0, 1] intensities (0: off)",
    )
    p.add_argument(
        "--aug-tumour-flatten",
        type=float,
        default=aug.tumour_flatten,
        help="probability of removing a random fraction of the tumour's enhancement (0: off)",
    )
    p.add_argument("--max-train-images", type=int, default=None, help="smoke tests only")
    p.add_argument(
        "--init-weights",
        default=None,
        help="start from a run's best.weights.npz or an exported weights.npz (fine-tuning)",
    )
    p.add_argument("--threads", type=int, default=None, help="TF intra/inter-op threads")
    p.add_argument(
        "--mixed-precision",
        choices=list(TRAINING_PRECISIONS),
        default=d.mixed_precision,
        help="auto: bfloat16 only on CPUs with native bfloat16 (AVX512_BF16/AMX), else float32",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--verbose", choices=["auto", "bar", "lines", "epoch"], default="auto")
    p.add_argument("--export", default=None, help="artifact folder to write the best weights to")
    p.add_argument(
        "--export-only",
        action="store_true",
        help="do not train; export the best committed checkpoint of --run-dir (safe while it runs)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.export_only:
        if not args.export:
            print("--export-only needs --export DIR", file=sys.stderr)
            return 2
        configure_runtime(args.threads or 1, "float32")
        try:
            export_run(args.run_dir, args.export)
        except (ArtifactError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    if not args.data_dir and not args.resume:
        print("--data-dir is required to start a run", file=sys.stderr)
        return 2
    ranges = {
        "rotation_deg": args.aug_rotation,
        "shift": args.aug_shift,
        "zoom": args.aug_zoom,
        "gamma": args.aug_gamma,
        "noise": args.aug_noise,
        "tumour_flatten": args.aug_tumour_flatten,
    }
    try:
        AugmentConfig(**ranges)  # validate up front
        if not args.resume:
            from segmentation.metrics import training_loss

            training_loss(args.loss)
    except ValueError as exc:
        parser.error(str(exc))
    defaults = asdict(AugmentConfig())
    augment = {k: v for k, v in ranges.items() if v != defaults[k]}  # only what differs
    cfg = TrainConfig(
        data_dir=args.data_dir or "",
        run_dir=args.run_dir,
        image_size=args.image_size,
        base_filters=args.base_filters,
        depth=args.depth,
        dropout=args.dropout,
        bn_momentum=args.bn_momentum,
        mirror_input=args.mirror_input,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_epochs=args.warmup_epochs,
        weight_decay=args.weight_decay,
        loss=args.loss,
        patience=args.patience,
        seed=args.seed,
        split_path=args.split,
        holdout_fold=args.holdout_fold,
        cache_dir=args.cache_dir,
        mixed_precision=args.mixed_precision,
        augment=not args.no_augment,
        max_train_images=args.max_train_images,
        init_weights=args.init_weights,
        extra={"augment": augment} if augment else {},
    )
    try:
        train(cfg, resume=args.resume, threads=args.threads, verbose=args.verbose)
    except (FileExistsError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.export:
        export_run(cfg.run_dir, args.export)
    return 0


if __name__ == "__main__":
    sys.exit(main())
