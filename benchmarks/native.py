"""A random-weight artifact tree at the native input sizes, for timing only.

Latency does not depend on the weight values, so while the real models are
still training the benchmark can run on this tree: the four backbones at their
native sizes (299/299/224/224), the meta-learner and a Res-UNet with the
architecture of the shipped segmentation artifact when there is one
(``artifacts/segmentation/resunet/config.json``), else input 192, 16 base
filters, depth 4 (the training recipe). Predictions are meaningless.

The tree carries ``RANDOM_ARTIFACTS.json`` and every config says
``"random_native_benchmark_artifact": true``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MARKER = "RANDOM_ARTIFACTS.json"
DEFAULT_SEG_ARCH: dict[str, int] = {"input_size": 192, "base_filters": 16, "depth": 4}
SHIPPED_SEG_CONFIG = REPO / "artifacts" / "segmentation" / "resunet" / "config.json"


def _seg_architecture(reference: Path | None) -> tuple[dict[str, Any], str]:
    if reference is not None and reference.is_file():
        cfg = json.loads(reference.read_text())
        return dict(cfg["architecture"]), str(reference)
    return dict(DEFAULT_SEG_ARCH), "default (no segmentation artifact shipped yet)"


def describe(root: str | Path) -> dict[str, Any]:
    """Describe an artifact tree: ``kind`` (native-random, tiny-random, trained), models, sizes."""
    from ensemble.registry import BACKBONES

    root = Path(root)
    info: dict[str, Any] = {"dir": str(root.resolve()), "models": {}, "missing": []}
    flags = set()
    for name in [*BACKBONES, "meta"]:
        cfg_path = root / "classification" / name / "config.json"
        if not cfg_path.is_file():
            info["missing"].append(f"classification/{name}")
            continue
        cfg = json.loads(cfg_path.read_text())
        flags.update(k for k, v in (cfg.get("training") or {}).items() if v is True)
        info["models"][name] = {
            "input_size": cfg.get("input_size"),
            "sha256": cfg.get("weights_sha256", "")[:16],
        }
    seg_path = root / "segmentation" / "resunet" / "config.json"
    if seg_path.is_file():
        cfg = json.loads(seg_path.read_text())
        flags.update(k for k, v in cfg.items() if v is True)
        info["models"]["resunet"] = {
            "architecture": cfg.get("architecture"),
            "sha256": cfg.get("weights_sha256", "")[:16],
        }
    else:
        info["missing"].append("segmentation/resunet")
    if (root / MARKER).is_file() or "random_native_benchmark_artifact" in flags:
        info["kind"], info["random"] = "native-random", True
    elif "tiny_test_artifact" in flags:
        info["kind"], info["random"] = "tiny-random", True
    else:
        info["kind"], info["random"] = "trained", False
    return info


def make_native_random(
    dest: str | Path,
    *,
    seed: int = 0,
    seg_reference: Path | None = SHIPPED_SEG_CONFIG,
    log: Any = print,
) -> Path:
    """Build (or reuse, when already built with the same recipe) the tree under ``dest``."""
    import keras

    from ensemble.export import write_classifier_artifact, write_meta_artifact
    from ensemble.models import build_classifier, build_meta_learner
    from ensemble.registry import BACKBONES
    from neurostack.artifacts import save_weights_compact, write_json
    from segmentation.model import build_segmenter

    dest = Path(dest)
    arch, arch_source = _seg_architecture(seg_reference)
    recipe = {
        "seed": seed,
        "backbones": {n: b.native_size for n, b in BACKBONES.items()},
        "segmentation_architecture": arch,
    }
    marker = dest / MARKER
    if marker.is_file():
        old = json.loads(marker.read_text())
        if old.get("recipe") == recipe:
            log(f"reusing the random native artifact tree in {dest}")
            return dest
    t0 = time.perf_counter()
    flag = {"random_native_benchmark_artifact": True}
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        keras.utils.set_random_seed(seed)
        for name, spec in BACKBONES.items():
            model = build_classifier(name, weights=None, input_size=spec.native_size)
            write_classifier_artifact(
                model,
                dest / "classification" / name,
                backbone=name,
                input_size=spec.native_size,
                training=dict(flag),
            )
            del model
            keras.backend.clear_session()
        write_meta_artifact(
            build_meta_learner(),
            dest / "classification" / "meta",
            inputs=list(BACKBONES),
            training=dict(flag),
        )
        seg = build_segmenter(arch)
        seg_dir = dest / "segmentation" / "resunet"
        sha = save_weights_compact(seg, seg_dir / "weights.npz")
        write_json(
            seg_dir / "config.json",
            {
                "model": "resunet",
                "architecture": arch,
                "input_size": arch["input_size"],
                "preprocessing": "brain crop -> resize -> /255",
                "threshold": 0.5,
                "weights_file": "weights.npz",
                "weights_sha256": sha,
                "architecture_source": arch_source,
                **flag,
            },
        )
        keras.backend.clear_session()
    finally:
        keras.mixed_precision.set_global_policy(previous)
    write_json(
        marker,
        {
            "random": True,
            "purpose": "latency benchmark only; predictions are meaningless",
            "recipe": recipe,
            "segmentation_source": arch_source,
        },
    )
    log(f"built the random native artifact tree in {dest} ({time.perf_counter() - t0:.1f} s)")
    return dest
