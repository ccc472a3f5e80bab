"""LiteRT (TensorFlow Lite) copies of Keras models: a verified cache and a runner.

Why: on a 2-core CPU, most of a new process's start-up is TensorFlow building and
tracing the Keras graphs of the backbones (about 13 s for Xception, InceptionV3
and ResNet50), while a LiteRT flatbuffer loads in a fraction of a second and runs
the same float32 arithmetic through XNNPACK (probabilities within about 1e-6 of
TensorFlow's). The shipped ``weights.npz`` stays the single source of truth: a
``.tflite`` file is *derived* from it on first use, stored in a cache folder
under a name that includes the weights' SHA-256, and carries a sidecar JSON with
its own SHA-256, which is checked every time it is loaded. A missing, stale or
corrupt cache entry is rebuilt from the verified weights (this needs TensorFlow
and takes 10-40 s per backbone, once per machine).

Cache folder: ``$NEUROSTACK_CACHE_DIR``, else ``$XDG_CACHE_HOME/neurostack``, else
``~/.cache/neurostack``; the files go in its ``litert/`` subfolder.

Command line (fill the cache ahead of time, e.g. before starting the dashboard)::

    python -m neurostack.litert artifacts
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from neurostack.artifacts import sha256_file

log = logging.getLogger(__name__)

CACHE_ENV = "NEUROSTACK_CACHE_DIR"
"""Environment variable naming the cache folder."""
FORMAT_VERSION = 1
"""Bumped when the conversion recipe changes, so old cache entries are not reused."""


def litert_available() -> bool:
    """Whether the LiteRT interpreter (package ``ai-edge-litert``) can be imported."""
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: F401
    except ImportError:
        return False
    return True


def cache_dir() -> Path:
    """Return the folder holding converted models (module docstring); not created here."""
    if os.environ.get(CACHE_ENV):
        root = Path(os.environ[CACHE_ENV])
    elif os.environ.get("XDG_CACHE_HOME"):
        root = Path(os.environ["XDG_CACHE_HOME"]) / "neurostack"
    else:
        root = Path.home() / ".cache" / "neurostack"
    return root / "litert"


def cache_path(name: str, weights_sha256: str, input_shape: tuple[int, ...]) -> Path:
    """Cache file for model ``name`` with these weights and per-sample ``input_shape``."""
    if not name.replace("_", "").isalnum():
        raise ValueError(f"model name must be alphanumeric or '_'; received {name!r}")
    shape = "x".join(str(int(d)) for d in input_shape)
    return cache_dir() / f"{name}-{shape}-{weights_sha256[:16]}-v{FORMAT_VERSION}.tflite"


QUANTIZATIONS: tuple[str, ...] = ("none", "dynamic", "int8")
"""Conversion recipes: ``none`` (float32, what the runtime uses), ``dynamic`` (int8
weights, activations quantised on the fly) and ``int8`` (int8 weights and
activations calibrated on a representative set, float32 input and output).
The two int8 recipes exist for :mod:`benchmarks.quantization`; on the AVX2 host
of 2026-12-05 neither was faster than float32 (see benchmarks/README.md)."""


def convert(
    model: Any,
    out: str | Path,
    *,
    quantization: str = "none",
    representative: Callable[[], Iterable[list[np.ndarray]]] | None = None,
) -> str:
    """Convert a float32 Keras model to a ``.tflite`` file; return its SHA-256.

    The model is exported as a SavedModel to a temporary folder and converted with
    TensorFlow's ``TFLiteConverter``. The file is written under a temporary name
    and renamed, so a concurrent reader never sees half a file.

    Args:
        model: A float32 Keras model with one input.
        out: Where to write the flatbuffer.
        quantization: One of :data:`QUANTIZATIONS`; ``"none"`` (default) keeps the
            float32 weights and arithmetic.
        representative: For ``"int8"`` only (required there): returns an iterable of
            ``[batch]`` lists of float32 model inputs used to calibrate the
            activation ranges.

    Raises:
        ValueError: For an unknown ``quantization``, or ``"int8"`` without
            ``representative`` (or ``representative`` with another recipe).
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}; received {quantization!r}")
    if (quantization == "int8") != (representative is not None):
        raise ValueError(
            "a representative dataset is required for quantization='int8' and only there; "
            f"received quantization={quantization!r} with "
            f"representative={'set' if representative is not None else None}"
        )
    import tensorflow as tf

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="neurostack-export-") as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if quantization != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if representative is not None:
            converter.representative_dataset = representative
        flatbuffer = converter.convert()
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    partial.write_bytes(flatbuffer)
    os.replace(partial, out)
    return sha256_file(out)


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def cached_tflite(
    name: str,
    weights_sha256: str,
    input_shape: tuple[int, ...],
    build: Callable[[], Any],
) -> tuple[Path, Any]:
    """Return ``(path, model_or_None)`` of a verified cached conversion, converting if needed.

    Args:
        name: Model name (part of the file name).
        weights_sha256: SHA-256 of the weights the model is built from (already
            verified by the caller); the cache entry is only used for these weights.
        input_shape: Per-sample input shape, e.g. ``(224, 224, 3)``.
        build: Returns the float32 Keras model; called only when a conversion is needed.

    Returns:
        The ``.tflite`` path, and the Keras model if ``build`` was called (else ``None``),
        so a caller that needs it anyway does not build it twice.
    """
    path = cache_path(name, weights_sha256, input_shape)
    meta_file = _sidecar(path)
    if path.is_file() and meta_file.is_file():
        try:
            recorded = json.loads(meta_file.read_text())
            ok = (
                recorded.get("source_weights_sha256") == weights_sha256
                and recorded.get("tflite_sha256") == sha256_file(path)
            )
        except (OSError, ValueError):
            ok = False
        if ok:
            return path, None
        log.warning("LiteRT cache entry %s failed its checksum; rebuilding it", path)
    t0 = time.perf_counter()
    model = build()
    import tensorflow as tf

    digest = convert(model, path)
    record = {
        "model": name,
        "input_shape": list(input_shape),
        "source_weights_sha256": weights_sha256,
        "tflite_sha256": digest,
        "format_version": FORMAT_VERSION,
        "tensorflow": tf.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "conversion_s": round(time.perf_counter() - t0, 1),
    }
    partial = meta_file.with_name(f".{meta_file.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(partial, meta_file)
    log.info("converted %s to LiteRT in %.1f s: %s", name, record["conversion_s"], path)
    return path, model


class LiteRTRunner:
    """A ``.tflite`` model with one input and one output, callable like a compiled function.

    ``num_threads`` defaults to the CPUs this process may run on.

    ``runner(x)`` takes a float32 batch of any size (the interpreter's input is
    resized when the batch size changes) and returns a float32 array. Calls are
    serialised by a lock: a LiteRT interpreter is not thread-safe.
    """

    def __init__(self, path: str | Path, num_threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        if num_threads is None:
            affinity = getattr(os, "sched_getaffinity", None)
            num_threads = len(affinity(0)) if affinity else (os.cpu_count() or 1)
        threads = max(1, int(num_threads))
        self._interp = Interpreter(model_path=str(self.path), num_threads=threads)
        inputs = self._interp.get_input_details()
        outputs = self._interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                f"{self.path}: expected one input and one output, "
                f"found {len(inputs)} and {len(outputs)}"
            )
        self._in = inputs[0]["index"]
        self._out = outputs[0]["index"]
        self.input_shape = tuple(int(d) for d in inputs[0]["shape_signature"][1:])
        self._batch = -1
        self._lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``(N, *input_shape)`` float32 -> the model's ``(N, ...)`` float32 output."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{self.path.name}: expected input (N, {', '.join(map(str, self.input_shape))}); "
                f"received {x.shape}"
            )
        with self._lock:
            if x.shape[0] != self._batch:
                self._interp.resize_tensor_input(self._in, list(x.shape), strict=False)
                self._interp.allocate_tensors()
                self._batch = x.shape[0]
            self._interp.set_tensor(self._in, x)
            self._interp.invoke()
            return np.array(self._interp.get_tensor(self._out), dtype=np.float32)


def main(argv: list[str] | None = None) -> int:
    """Convert every base classifier under ``ARTIFACTS/classification`` into the cache."""
    p = argparse.ArgumentParser(prog="python -m neurostack.litert", description=main.__doc__)
    p.add_argument("artifacts", nargs="?", default="artifacts")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not litert_available():
        print("ai-edge-litert is not installed; the models will run in TensorFlow.")
        return 0
    from ensemble.inference import prepare_litert

    paths = prepare_litert(Path(args.artifacts) / "classification")
    for name, path in paths.items():
        print(f"{name}: {path}")
    if not paths:
        print("nothing to convert: every base model runs in TensorFlow here "
              "(see NEUROSTACK_RUNTIME / NEUROSTACK_PRECISION)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
