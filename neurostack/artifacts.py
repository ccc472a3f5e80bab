"""Self-describing model artifacts: compact weights, config, metrics, checksums.

Layout of one model folder::

    <folder>/
        weights.npz        float16 arrays, one per model weight, in model.weights order
        config.json        what is needed to rebuild inference (see each package's loader)
        metrics.json       evaluation record (optional at load time)
        training_log.csv   per-epoch log (optional)

``config.json`` carries ``"weights_sha256"`` for ``weights.npz``; loaders call
:func:`verify_sha256` before using the weights.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from neurostack.errors import ArtifactError

WEIGHTS_FILE = "weights.npz"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
TRAINING_LOG_FILE = "training_log.csv"


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    """Raise :class:`ArtifactError` unless ``path`` exists and hashes to ``expected``."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"Missing weight file: {path}")
    actual = sha256_file(path)
    if actual != expected:
        raise ArtifactError(
            f"Checksum mismatch for {path}: expected SHA-256 {expected}, found {actual}. "
            "The file is corrupt or was modified; restore it from the repository."
        )


@contextmanager
def float32_policy() -> Iterator[None]:
    """Build Keras layers under the float32 dtype policy, restoring the previous one after.

    Rebuilt artifacts are always float32, whatever policy a trainer left set
    (the policy is per thread in Keras 3).
    """
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def save_weights_compact(model: Any, path: str | Path) -> str:
    """Save a Keras model's weights as float16 arrays in an ``.npz``; return its SHA-256.

    Float weights are stored as float16 (halving the size); integer weights
    (e.g. counters) keep their dtype. Variable paths are stored for inspection;
    loading checks the count and the shape of every array.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    names = []
    for i, w in enumerate(model.weights):
        value = np.asarray(w.numpy())
        if np.issubdtype(value.dtype, np.floating):
            value = value.astype(np.float16)
        arrays[f"w{i:04d}"] = value
        names.append(w.path if hasattr(w, "path") else w.name)
    arrays["__names__"] = np.array(names)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return sha256_file(path)


def load_weights_compact(model: Any, path: str | Path) -> None:
    """Load weights written by :func:`save_weights_compact` into a built model (as float32).

    Raises:
        ArtifactError: If the number or shapes of the arrays do not match the model.
    """
    path = Path(path)
    with np.load(path, allow_pickle=False) as data:
        n = len([k for k in data.files if k.startswith("w")])
        if n != len(model.weights):
            raise ArtifactError(
                f"{path} holds {n} weight arrays but the model has {len(model.weights)}; "
                "the config and the weights belong to different architectures"
            )
        values = []
        for i, w in enumerate(model.weights):
            value = data[f"w{i:04d}"]
            if tuple(value.shape) != tuple(w.shape):
                raise ArtifactError(
                    f"{path}: weight {i} ({w.path}) has shape {value.shape}, "
                    f"model expects {tuple(w.shape)}"
                )
            values.append(
                value.astype(w.dtype) if np.issubdtype(value.dtype, np.floating) else value
            )
    for w, value in zip(model.weights, values, strict=True):
        w.assign(value)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (atomically, via a temporary file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def read_json(path: str | Path) -> Any:
    """Read JSON, raising :class:`ArtifactError` with the path when missing or invalid."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"Missing file: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from None


FEATURES_FILE = "features.npz"
"""Array file of a reference artifact (``features`` key), beside its ``config.json``."""


def write_features_artifact(folder: str | Path, features: np.ndarray,
                            config: dict[str, Any]) -> Path:
    """Write ``features.npz`` and ``config.json`` (``config`` + the array's SHA-256).

    Used by the input checks' references (:mod:`ensemble.intensity`,
    :mod:`ensemble.quality`). Returns the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / FEATURES_FILE, features=features)
    write_json(folder / "config.json", {
        **config, "features_file": FEATURES_FILE,
        "features_sha256": sha256_file(folder / FEATURES_FILE)})
    return folder


def read_features_artifact(folder: str | Path,
                           required: tuple[str, ...]) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a folder written by :func:`write_features_artifact`, checking the SHA-256 first.

    Returns:
        ``(features, config)``.

    Raises:
        ArtifactError: If ``config.json`` lacks a ``required`` key or the SHA-256, or
            the array file is missing, altered or unreadable; the message names the file.
    """
    folder = Path(folder)
    config = read_json(folder / "config.json")
    missing = [k for k in (*required, "features_sha256") if k not in config]
    if missing:
        raise ArtifactError(f"{folder / 'config.json'} lacks required keys {missing}")
    path = folder / config.get("features_file", FEATURES_FILE)
    verify_sha256(path, config["features_sha256"])
    try:
        with np.load(path) as data:
            return data["features"], config
    except (KeyError, ValueError, OSError) as exc:
        raise ArtifactError(f"{path}: unusable features file: {exc}") from None


PREVIOUS_LOG_FILE = "previous_log.csv"
PREVIOUS_CONFIG_FILE = "previous_config.json"


def keep_lineage(init_dir: str | Path, run_dir: str | Path) -> bool:
    """Copy the log and config of the artifact a run starts from into the run folder.

    A run initialised from an exported artifact continues an earlier run (often
    one of an earlier session, whose run folder is gone). Its export then reports
    the whole history (:func:`merged_training_log`). Existing copies are kept, so
    that a resumed run never replaces them with an already merged export.

    Returns:
        Whether ``init_dir`` had a training log to keep.
    """
    init_dir, run_dir = Path(init_dir), Path(run_dir)
    pairs = ((TRAINING_LOG_FILE, PREVIOUS_LOG_FILE), (CONFIG_FILE, PREVIOUS_CONFIG_FILE))
    for src, dst in pairs:
        if (init_dir / src).is_file() and not (run_dir / dst).exists():
            shutil.copy(init_dir / src, run_dir / dst)
    return (run_dir / PREVIOUS_LOG_FILE).is_file()


def merged_training_log(run_dir: str | Path, log_name: str = TRAINING_LOG_FILE):
    """Return a run's per-epoch log preceded by the logs of the runs it continued.

    Rows gain a ``run`` column (0 = the first run) and ``epoch`` counts on across
    runs. Without a kept previous log the run's own log is returned unchanged.

    Returns:
        A ``pandas.DataFrame``, or ``None`` when the run has no log yet.
    """
    import pandas as pd

    run_dir = Path(run_dir)
    current = run_dir / log_name
    if not current.is_file():
        return None
    new = pd.read_csv(current)
    prev_path = run_dir / PREVIOUS_LOG_FILE
    if not prev_path.is_file():
        return new
    prev = pd.read_csv(prev_path)
    for path, df in ((prev_path, prev), (current, new)):
        if "epoch" not in df.columns or df["epoch"].isna().any():
            raise ArtifactError(
                f"{path} is not a per-epoch training log (no complete 'epoch' column)"
            )
    if "run" not in prev.columns:
        prev.insert(1, "run", 0)
    new.insert(1, "run", int(prev["run"].max()) + 1)
    new["epoch"] = new["epoch"] + int(prev["epoch"].max()) + 1
    return pd.concat([prev, new], ignore_index=True)


def write_training_log(run_dir: str | Path, dest_dir: str | Path) -> None:
    """Write the run's (merged) training log to ``dest_dir/training_log.csv`` atomically."""
    run_dir, dest_dir = Path(run_dir), Path(dest_dir)
    if not (run_dir / PREVIOUS_LOG_FILE).is_file():
        if (run_dir / TRAINING_LOG_FILE).is_file():
            shutil.copy(run_dir / TRAINING_LOG_FILE, dest_dir / TRAINING_LOG_FILE)
        return
    log = merged_training_log(run_dir)
    if log is not None:
        tmp = dest_dir / "training_log.tmp.csv"
        log.to_csv(tmp, index=False)
        tmp.replace(dest_dir / TRAINING_LOG_FILE)


def previous_config(run_dir: str | Path) -> dict:
    """Return the config of the artifact a run continued, or ``{}``."""
    path = Path(run_dir) / PREVIOUS_CONFIG_FILE
    return read_json(path) if path.is_file() else {}
