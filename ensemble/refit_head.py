"""Refit a base classifier's head (or its last stage) on features at the native input size.

A backbone trained mostly at a reduced size and then briefly at its native size
still hands its head features whose distribution differs from the ones the
head was fitted on. Re-fitting only the head (Dense 128 ReLU -> Dense 4) on the
pooled features of the training split at the native size adapts the decision
to the native scale at the cost of one forward pass per training image: the
backbone is frozen and runs in inference mode, so its batch-norm statistics and
every convolution weight stay exactly as shipped.

With ``--from-layer`` (e.g. ``conv4_block6_out`` of ResNet50) the cut moves
down: the cached features are that layer's feature maps (stored as float16) and
everything above it, the last backbone stage plus the head, is fine-tuned. The
batch-normalisation layers of that tail stay frozen in inference mode, so only
convolution and dense weights move. Each epoch is checkpointed and an
interrupted fit resumes from the last finished epoch.

Protocol (the validation split stays untouched for the decision to ship):

1. Pooled features (the input of ``head_dropout_1``) of every ``train`` and
   ``val`` image at the artifact's input size, no augmentation; written to disk
   in shards so an interrupted extraction resumes where it stopped.
2. A group-aware hold-out of the training split (duplicate groups never
   straddle it) picks the epoch; the head starts from the shipped head weights.
3. The shipped head and the refitted head are both scored on the validation
   features; the record says which is better.

With ``--noise-copies K`` the fit also sees K Rician-noised copies of every
training image (sigma drawn per slice in ``[--noise-sigma-min,
--noise-sigma-max]`` grey levels, seeded by its path), so that the head stops
reading noise as "no tumour" (the training split's noisiest slices are all
notumor). Both heads are then also scored on the validation split under the
robustness run's noise (sigma 8 and 16, same seeds); the record is
``head_refit_noise.json``. Nothing in ``artifacts/`` is
   touched: ``--out`` is a new artifact folder to compare and copy by hand.

Command line::

    python -m ensemble.refit_head artifacts/classification/inceptionv3 \
        --out /work/runs/headfit/inceptionv3 --features-dir /work/runs/headfit/features
    python -m ensemble.refit_head artifacts/classification/xception --noise-copies 1 \
        --out /work/runs/noisefit/xception --features-dir /work/runs/noisefit/features
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from neurostack.cli import print_record
from neurostack.corrupt import CORRUPTIONS, SEVERITIES, apply_corruption, corrupt, slice_seed
from neurostack.errors import ArtifactError
from neurostack.hardware import set_tensorflow_threads

if TYPE_CHECKING:
    import keras

FEATURE_LAYER = "flatten"
"""Name of the layer whose output feeds the head (see :func:`ensemble.models.build_classifier`)."""
KEPT_RECORDS = ("training_log.csv", "resolution.json", "recalibration.json")
NOISE = "rician_noise"
"""The corruption used for noise augmentation and its validation check."""
"""Records of earlier steps copied from the source artifact (with an earlier head refit's)."""
DEFAULT_DATA = Path("../shared/datasets/brain-tumor-mri/Training")
DEFAULT_SPLIT = Path("artifacts/splits/classification_split.csv")


@dataclass(frozen=True)
class HeadFitConfig:
    """Options of the head refit; validated by :meth:`check`.

    Attributes:
        epochs: Maximum epochs over the training features.
        lr: Adam learning rate.
        batch_size: Mini-batch size.
        label_smoothing: As in the base recipe.
        patience: Epochs without a better hold-out score before stopping.
        holdout_fraction: Share of training duplicate groups held out to pick the epoch.
        seed: Seed of the hold-out draw, the shuffling and the dropout.
        noise_copies: Rician-noised copies of every training image added to the fit
            (0: none). Each copy's sigma is drawn per slice, uniformly in
            ``[noise_sigma_min, noise_sigma_max]`` grey levels, and applied to the whole
            slice before the crop; a copy stays on the same side of the hold-out as its
            original.
        noise_sigma_min: Lower end of the noise sigma, grey levels.
        noise_sigma_max: Upper end of the noise sigma, grey levels.
    """

    epochs: int = 60
    lr: float = 3e-4
    batch_size: int = 64
    label_smoothing: float = 0.05
    patience: int = 8
    holdout_fraction: float = 0.15
    seed: int = 0
    noise_copies: int = 0
    noise_sigma_min: float = 2.0
    noise_sigma_max: float = 20.0

    def check(self) -> HeadFitConfig:
        """Raise ``ValueError`` naming the allowed and received value of a bad option."""
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1; received {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; received {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; received {self.batch_size}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1); received {self.label_smoothing}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1; received {self.patience}")
        if not 0 < self.holdout_fraction < 0.5:
            raise ValueError(
                f"holdout_fraction must be in (0, 0.5); received {self.holdout_fraction}"
            )
        if self.noise_copies < 0:
            raise ValueError(f"noise_copies must be >= 0; received {self.noise_copies}")
        if not 0 <= self.noise_sigma_min <= self.noise_sigma_max:
            raise ValueError(
                "noise sigmas must satisfy 0 <= noise_sigma_min <= noise_sigma_max; received "
                f"{self.noise_sigma_min} and {self.noise_sigma_max}"
            )
        return self

    def noise_id(self, copy: int) -> str:
        """Cache and shard name of noisy training copy ``copy`` (0-based)."""
        return f"{NOISE}_copy{copy}_{self._noise_spec()}"

    def fit_dir(self) -> str:
        """Name of the fit checkpoint folder: one per noise recipe, so fits never collide."""
        return (
            f"fit_{NOISE}_x{self.noise_copies}_{self._noise_spec()}" if self.noise_copies else "fit"
        )

    def _noise_spec(self) -> str:
        return f"sigma{self.noise_sigma_min:g}-{self.noise_sigma_max:g}_seed{self.seed}"


def training_noise(cfg: HeadFitConfig, copy: int) -> Callable[[np.ndarray, str], np.ndarray]:
    """Return ``(gray, key) -> gray``: copy ``copy`` of a slice with its own seeded noise.

    The sigma and the noise are drawn from seeds of ``key`` (the relative path),
    ``copy`` and ``cfg.seed``, so a copy is the same on every run and machine.
    """

    def apply(gray: np.ndarray, key: str) -> np.ndarray:
        base = slice_seed(key, f"{NOISE}_train", copy, cfg.seed)
        u = np.random.default_rng(base).random()
        sigma = cfg.noise_sigma_min + (cfg.noise_sigma_max - cfg.noise_sigma_min) * u
        return apply_corruption(gray, NOISE, sigma, base + 1)

    return apply


def robustness_noise(severity: int, seed: int = 0) -> Callable[[np.ndarray, str], np.ndarray]:
    """Return ``(gray, key) -> gray``: the robustness run's noise at ``severity`` (same seeds)."""

    def apply(gray: np.ndarray, key: str) -> np.ndarray:
        return corrupt(gray, NOISE, severity, slice_seed(key, NOISE, severity, seed))

    return apply


def _layer(model: keras.Model, name: str) -> keras.layers.Layer:
    try:
        return model.get_layer(name)
    except ValueError as exc:
        raise ArtifactError(f"{model.name} has no {name!r} layer to refit from") from exc


def feature_extractor(model: keras.Model, layer: str = FEATURE_LAYER) -> keras.Model:
    """Return the part of a base classifier that maps preprocessed images to ``layer``'s output."""
    import keras

    return keras.Model(model.inputs, _layer(model, layer).output, name=f"{model.name}_features")


def build_tail(model: keras.Model, layer: str = FEATURE_LAYER) -> keras.Model:
    """Return the part of ``model`` above ``layer``: ``layer``'s output -> class probabilities.

    The tail shares its layers (and so its weights) with ``model``: fitting the tail
    changes ``model``. Its batch-normalisation layers are set non-trainable, which in
    Keras 3 also runs them in inference mode, so their moving statistics never move.

    Raises:
        ArtifactError: If ``model`` has no layer called ``layer``.
    """
    import keras

    tail = keras.Model(_layer(model, layer).output, model.output, name=f"{model.name}_tail")
    for sub in tail.layers:
        if isinstance(sub, keras.layers.BatchNormalization):
            sub.trainable = False
    return tail


def extract_features(
    extractor: keras.Model,
    preprocess_mode: str,
    crops: np.ndarray,
    *,
    batch_size: int = 32,
    shard_dir: Path | None = None,
    shard_size: int = 256,
    desc: str = "features",
    ident: str | None = None,
) -> np.ndarray:
    """``(N, S, S)`` uint8 greyscale crops -> ``(N, ...)`` features of ``extractor``.

    Pooled ``(N, F)`` features are kept in float32; feature maps ``(N, H, W, C)`` in
    float16, which halves the disk and memory they need (the tail casts them back).

    With ``shard_dir`` every ``shard_size`` images are written as one ``.npy``
    shard as soon as they are computed, and shards already on disk (with the
    right row count) are read instead of recomputed, so an interrupted run
    resumes. ``ident`` (e.g. the weights' SHA-256 and the image list) is stored in
    ``manifest.json``; shards made for another ``ident`` are never reused.

    Raises:
        ValueError: If ``shard_dir`` holds features made for another ``ident``.
    """
    import tensorflow as tf

    from ensemble.registry import preprocess_array

    size = crops.shape[1]
    fn = tf.function(
        lambda x: tf.cast(extractor(x, training=False), tf.float32),
        input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)],
    )
    if shard_dir is not None:
        _claim_shard_dir(Path(shard_dir), ident)
    parts = []
    starts = range(0, len(crops), shard_size)
    for k, start in enumerate(tqdm(starts, desc=desc, unit="shard")):
        stop = min(start + shard_size, len(crops))
        path = Path(shard_dir) / f"shard_{k:05d}.npy" if shard_dir is not None else None
        if path is not None and path.is_file():
            cached = np.load(path)
            if len(cached) == stop - start:
                parts.append(cached)
                continue
        chunk = []
        for b in range(start, stop, batch_size):
            gray = np.asarray(crops[b : min(b + batch_size, stop)], np.float32)
            rgb = np.repeat(gray[..., None], 3, -1)
            chunk.append(fn(preprocess_array(rgb, preprocess_mode)).numpy())
        feats = np.concatenate(chunk)
        feats = feats.astype(np.float32 if feats.ndim == 2 else np.float16)
        if path is not None:
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, feats)
            tmp.replace(path)
        parts.append(feats)
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _claim_shard_dir(shard_dir: Path, ident: str | None) -> None:
    """Create ``shard_dir`` or check that its shards were made for ``ident``."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    manifest = shard_dir / "manifest.json"
    if ident is None:
        return
    if manifest.is_file():
        stored = json.loads(manifest.read_text()).get("ident")
        if stored != ident:
            raise ValueError(
                f"{shard_dir} holds features of other weights or another image list "
                f"(manifest {stored!r}, needed {ident!r}); delete it or use another folder"
            )
    elif any(shard_dir.glob("shard_*.npy")):
        raise ValueError(f"{shard_dir} holds shards without a manifest; delete it")
    else:
        manifest.write_text(json.dumps({"ident": ident}) + "\n")


def features_ident(weights_sha256: str, paths: list[str], layer: str = FEATURE_LAYER) -> str:
    """Identity of a feature set: the weights' SHA-256, the layer and a hash of the image list."""
    import hashlib

    listed = hashlib.sha256("\n".join(paths).encode()).hexdigest()[:16]
    ident = f"{weights_sha256[:16]}-{listed}"
    return ident if layer == FEATURE_LAYER else f"{ident}-{layer}"


def group_holdout(groups: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of hold-out rows: whole duplicate groups, drawn per class.

    Each group is assigned the label of its first row; within each class a
    ``fraction`` of the groups (at least one when the class has two or more) is
    held out, so near-duplicates never sit on both sides.
    """
    groups = np.asarray(groups)
    labels = np.asarray(labels)
    if groups.shape != labels.shape:
        raise ValueError(
            f"groups and labels must have one shape; received {groups.shape} and {labels.shape}"
        )
    rng = np.random.default_rng(seed)
    uniq, first = np.unique(groups, return_index=True)
    held: set = set()
    for c in np.unique(labels):
        cls_groups = uniq[labels[first] == c]
        if len(cls_groups) < 2:
            continue
        n = max(1, int(round(fraction * len(cls_groups))))
        held.update(rng.choice(cls_groups, n, replace=False).tolist())
    return np.isin(groups, list(held))


def _eval_batch(features: np.ndarray) -> int:
    """Batch size for scoring: large for pooled rows, small for feature maps."""
    return 1024 if features.ndim == 2 else 64


def head_accuracy(head: keras.Model, features: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of feature rows whose argmax under ``head`` (or a tail) matches ``labels``."""
    proba = head.predict(features, batch_size=_eval_batch(features), verbose=0)
    return float((proba.argmax(1) == labels).mean())


def _save_checkpoint(path: Path, head: keras.Model, best_weights: list, state: dict) -> None:
    """Write the fit state after an epoch: weights, best weights, optimizer, log (atomic)."""
    arrays = {f"w{i}": w for i, w in enumerate(head.get_weights())}
    arrays |= {f"b{i}": w for i, w in enumerate(best_weights)}
    arrays |= {f"o{i}": np.asarray(v) for i, v in enumerate(head.optimizer.variables)}
    arrays["state"] = np.array(json.dumps(state))  # one file: weights and log never disagree
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "state.tmp.npz"
    np.savez(tmp, **arrays)
    tmp.replace(path / "state.npz")


def _load_checkpoint(path: Path, head: keras.Model, ident: str) -> tuple[list, dict] | None:
    """Restore a fit state written by :func:`_save_checkpoint`; ``None`` when there is none."""
    if not (path / "state.npz").is_file():
        return None
    try:
        z = np.load(path / "state.npz")
        state = json.loads(str(z["state"]))
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path / 'state.npz'} is unreadable ({exc}); delete it") from exc
    if state.get("ident") != ident:
        raise ValueError(
            f"{path} holds a fit of other features or options (checkpoint {state.get('ident')!r}, "
            f"needed {ident!r}); delete it or use another folder"
        )
    with z:
        n = len(head.get_weights())
        head.set_weights([z[f"w{i}"] for i in range(n)])
        best = [z[f"b{i}"] for i in range(n)]
        head.optimizer.build(head.trainable_variables)
        for i, var in enumerate(head.optimizer.variables):
            var.assign(z[f"o{i}"])
    return best, state


def fit_head(
    head: keras.Model,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_hold: np.ndarray,
    y_hold: np.ndarray,
    cfg: HeadFitConfig,
    *,
    checkpoint: Path | None = None,
    ident: str = "",
) -> list[dict]:
    """Train ``head`` (or a tail from :func:`build_tail`) in place; keep the best hold-out epoch.

    "Best" is the highest hold-out accuracy, ties broken by the lower hold-out
    loss. Epoch 0 (the starting weights) competes too, so the result is never
    worse on the hold-out than the start. With ``checkpoint`` the state is saved
    after every epoch and a rerun with the same ``ident`` resumes after the last
    saved epoch. Returns one log row per epoch.

    Raises:
        ValueError: If ``checkpoint`` holds a fit made under another ``ident``.
    """
    import keras

    from ensemble.models import N_CLASSES

    cfg.check()
    keras.utils.set_random_seed(cfg.seed)
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    head.compile(
        optimizer=keras.optimizers.Adam(cfg.lr), loss=loss, metrics=["accuracy"], jit_compile=False
    )
    eye = np.eye(N_CLASSES, dtype=np.float32)
    yt, yh = eye[y_train], eye[y_hold]
    ident = f"{ident}|{json.dumps(cfg.__dict__, sort_keys=True)}"

    def score() -> tuple[float, float]:
        hold_loss, hold_acc = head.evaluate(x_hold, yh, batch_size=_eval_batch(x_hold), verbose=0)
        return float(hold_acc), float(hold_loss)

    resumed = _load_checkpoint(Path(checkpoint), head, ident) if checkpoint else None
    if resumed is not None:
        best_weights, state = resumed
        log, since, best = state["log"], state["since"], tuple(state["best"])
    else:
        acc, lss = score()
        best, best_weights, since = (acc, -lss), head.get_weights(), 0
        log = [
            {
                "epoch": 0,
                "train_loss": None,
                "train_accuracy": None,
                "holdout_loss": round(lss, 5),
                "holdout_accuracy": round(acc, 5),
            }
        ]
    bar = tqdm(range(log[-1]["epoch"] + 1, cfg.epochs + 1), desc="fit", unit="epoch")
    for epoch in bar:
        if since >= cfg.patience:
            break
        keras.utils.set_random_seed(cfg.seed + epoch)
        hist = head.fit(x_train, yt, batch_size=cfg.batch_size, epochs=1, shuffle=True, verbose=0)
        acc, lss = score()
        log.append(
            {
                "epoch": epoch,
                "train_loss": round(float(hist.history["loss"][-1]), 5),
                "train_accuracy": round(float(hist.history["accuracy"][-1]), 5),
                "holdout_loss": round(lss, 5),
                "holdout_accuracy": round(acc, 5),
            }
        )
        if (acc, -lss) > best:
            best, best_weights, since = (acc, -lss), head.get_weights(), 0
        else:
            since += 1
        bar.set_postfix(holdout_acc=f"{acc:.4f}", best=f"{best[0]:.4f}")
        if checkpoint:
            state = {"ident": ident, "log": log, "since": since, "best": list(best)}
            _save_checkpoint(Path(checkpoint), head, best_weights, state)
    head.set_weights(best_weights)
    return log


def refit_artifact(
    folder: Path,
    out: Path | None,
    *,
    features_dir: Path,
    cfg: HeadFitConfig = HeadFitConfig(),
    data_dir: Path = DEFAULT_DATA,
    split_csv: Path = DEFAULT_SPLIT,
    cache_dir: Path | None = None,
    from_layer: str = FEATURE_LAYER,
) -> dict:
    """Refit one classifier artifact's head (or tail) and score it against the shipped one.

    Args:
        folder: Classifier artifact folder (SHA-256 checked on load).
        out: Where to write the refitted artifact; ``None`` only scores.
        features_dir: Feature shards go to ``features_dir/<model>_<size>[_<layer>]/<part>/``,
            the per-epoch fit checkpoint to ``.../fit/``.
        cfg: Fit options.
        data_dir: Class-folder dataset the split refers to.
        split_csv: Split CSV (``path, label, group, split``).
        cache_dir: Crop cache folder.
        from_layer: Cut point: everything above this layer is fitted (default: the head).

    Returns:
        The record written to ``head_refit.json`` (``tail_finetune.json`` with a
        ``from_layer`` below the head; the config's ``training`` gets the same key):
        validation accuracy of the shipped and the refitted weights, the chosen epoch,
        sizes and timings.
    """
    from ensemble.data import cached_arrays, label_indices, load_split
    from ensemble.export import write_classifier_artifact
    from ensemble.inference import load_classifier

    cfg.check()
    t0 = time.time()
    clf = load_classifier(folder)
    size = clf.input_size
    kw = {"cache_dir": cache_dir} if cache_dir else {}
    extractor = feature_extractor(clf.model, from_layer)
    key = f"{clf.name}_{size}" + ("" if from_layer == FEATURE_LAYER else f"_{from_layer}")

    def features(part: str, paths: list[str], variant: str = "", transform=None) -> np.ndarray:
        crops = np.asarray(
            cached_arrays(data_dir, paths, size, transform=transform, transform_id=variant, **kw)
        )
        ident = idents[part]
        return extract_features(
            extractor,
            clf.preprocess_mode,
            crops,
            shard_dir=Path(features_dir) / key / (f"{part}_{variant}" if variant else part),
            desc=f"{clf.name} {part} {variant or 'clean'} features",
            ident=f"{ident}|{variant}" if variant else ident,
        )

    feats, labels, groups, idents, noisy_val = {}, {}, {}, {}, {}
    for part in ("train", "val"):
        rows = load_split(split_csv, part)
        paths = rows["path"].tolist()
        idents[part] = features_ident(clf.config["weights_sha256"], paths, from_layer)
        feats[part] = features(part, paths)
        labels[part] = label_indices(rows["label"])
        groups[part] = rows["group"].to_numpy() if "group" in rows else np.arange(len(rows))
        if part == "train" and cfg.noise_copies:
            copies = [
                features(part, paths, cfg.noise_id(k), training_noise(cfg, k))
                for k in range(cfg.noise_copies)
            ]
            feats[part] = np.concatenate([feats[part], *copies])
        if part == "val" and cfg.noise_copies:
            for sev in SEVERITIES:
                noisy_val[sev] = features(part, paths, f"{NOISE}_{sev}", robustness_noise(sev))
    t_feat = time.time() - t0

    copies = 1 + cfg.noise_copies
    y_train = np.tile(labels["train"], copies)
    hold = np.tile(
        group_holdout(groups["train"], labels["train"], cfg.holdout_fraction, cfg.seed), copies
    )
    tail = build_tail(clf.model, from_layer)  # shares its weights with clf.model
    val_before = head_accuracy(tail, feats["val"], labels["val"])
    noise_before = {s: head_accuracy(tail, f, labels["val"]) for s, f in noisy_val.items()}
    log = fit_head(
        tail,
        feats["train"][~hold],
        y_train[~hold],
        feats["train"][hold],
        y_train[hold],
        cfg,
        checkpoint=Path(features_dir) / key / cfg.fit_dir(),
        ident=idents["train"],
    )
    val_after = head_accuracy(tail, feats["val"], labels["val"])
    best = max(log, key=lambda r: (r["holdout_accuracy"], -r["holdout_loss"]))
    record = {
        "model": clf.name,
        "source": str(folder),
        "input_size": size,
        "from_layer": from_layer,
        "trainable_params": int(sum(np.prod(w.shape) for w in tail.trainable_weights)),
        "n_train": int((~hold).sum()),
        "n_holdout": int(hold.sum()),
        "n_val": int(len(labels["val"])),
        "best_epoch": best["epoch"],
        "holdout_accuracy": best["holdout_accuracy"],
        "val_accuracy_shipped_head": round(val_before, 4),
        "val_accuracy_refitted_head": round(val_after, 4),
        "better_on_val": bool(val_after > val_before),
        "config": cfg.__dict__,
        "feature_seconds": round(t_feat, 1),
    }
    if cfg.noise_copies:
        levels = CORRUPTIONS[NOISE].levels
        record["val_accuracy_under_noise"] = {
            f"sigma_{levels[s - 1]:g}": {
                "shipped_head": round(noise_before[s], 4),
                "refitted_head": round(head_accuracy(tail, f, labels["val"]), 4),
            }
            for s, f in noisy_val.items()
        }
    record["seconds"] = round(time.time() - t0, 1)
    if out is not None:
        out = Path(out)
        step = "head_refit" if from_layer == FEATURE_LAYER else "tail_finetune"
        step += "_noise" if cfg.noise_copies else ""
        training = dict(clf.config.get("training", {}))
        training[step] = {
            k: record[k]
            for k in (
                "n_train",
                "n_holdout",
                "from_layer",
                "trainable_params",
                "best_epoch",
                "holdout_accuracy",
                "val_accuracy_shipped_head",
                "val_accuracy_refitted_head",
                "config",
            )
        } | {
            "features": f"output of {from_layer!r} at input_size, train split, "
            + (
                f"plus {cfg.noise_copies} Rician-noised "
                f"{'copy' if cfg.noise_copies == 1 else 'copies'} of every image (sigma "
                f"uniform in [{cfg.noise_sigma_min:g}, {cfg.noise_sigma_max:g}] grey levels, "
                "applied to the whole slice before the crop)"
                if cfg.noise_copies
                else "no augmentation"
            ),
            "batchnorm": "frozen (inference mode, statistics unchanged)",
        }
        write_classifier_artifact(
            clf.model, out, backbone=clf.name, input_size=size, training=training
        )
        kept = (*KEPT_RECORDS, "head_refit.json", "head_refit_log.csv")
        kept += ("tail_finetune.json", "tail_finetune_log.csv") if cfg.noise_copies else ()
        for name in kept:
            if (Path(folder) / name).is_file():
                shutil.copy(Path(folder) / name, out / name)
        with open(out / f"{step}_log.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(log[0]))
            w.writeheader()
            w.writerows(log)
        (out / f"{step}.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, refit, print the record."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("artifact", type=Path, help="classifier artifact folder")
    p.add_argument("--out", type=Path, default=None, help="write the refitted artifact here")
    p.add_argument("--features-dir", type=Path, required=True, help="feature shards (resumable)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--split", type=Path, default=DEFAULT_SPLIT)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument(
        "--from-layer",
        default=FEATURE_LAYER,
        help="fit everything above this layer (default: the head only), e.g. conv4_block6_out",
    )
    p.add_argument("--epochs", type=int, default=HeadFitConfig.epochs)
    p.add_argument("--batch-size", type=int, default=HeadFitConfig.batch_size)
    p.add_argument("--lr", type=float, default=HeadFitConfig.lr)
    p.add_argument("--patience", type=int, default=HeadFitConfig.patience)
    p.add_argument("--holdout-fraction", type=float, default=HeadFitConfig.holdout_fraction)
    p.add_argument("--seed", type=int, default=HeadFitConfig.seed)
    p.add_argument(
        "--noise-copies",
        type=int,
        default=HeadFitConfig.noise_copies,
        help="Rician-noised copies of every training image added to the fit (0: none); the "
        "record then also scores both heads on the validation split under the robustness "
        "run's noise (sigma 8 and 16)",
    )
    p.add_argument("--noise-sigma-min", type=float, default=HeadFitConfig.noise_sigma_min)
    p.add_argument("--noise-sigma-max", type=float, default=HeadFitConfig.noise_sigma_max)
    p.add_argument("--threads", type=int, default=None, help="TensorFlow intra-op threads")
    a = p.parse_args(argv)

    def run() -> dict:
        set_tensorflow_threads(a.threads)
        cfg = HeadFitConfig(
            epochs=a.epochs,
            lr=a.lr,
            batch_size=a.batch_size,
            patience=a.patience,
            holdout_fraction=a.holdout_fraction,
            seed=a.seed,
            noise_copies=a.noise_copies,
            noise_sigma_min=a.noise_sigma_min,
            noise_sigma_max=a.noise_sigma_max,
        ).check()
        return refit_artifact(
            a.artifact,
            a.out,
            features_dir=a.features_dir,
            cfg=cfg,
            data_dir=a.data_dir,
            split_csv=a.split,
            cache_dir=a.cache_dir,
            from_layer=a.from_layer,
        )

    return print_record(run)


if __name__ == "__main__":
    raise SystemExit(main())
