"""Which base classifiers may predict in bfloat16: the recorded accuracy check.

bfloat16 inference is only used where it was *measured* not to change accuracy.
``benchmarks/precision_check.py --record`` compares float32 with a per-model
bfloat16 spec on the test split and, only when no accuracy moved (the base
models and the stacked ensemble), writes :data:`RECORD_FILE` into the
classification artifact folder:

.. code-block:: json

    {"format": 1,
     "precision": "xception=bfloat16,resnet50=bfloat16",
     "weights_sha256": {"xception": "...", "inceptionv3": "...", "resnet50": "...",
                        "vgg19": "...", "meta": "..."},
     "checked_on": {"split_csv": "...", "part": "test", "n_images": 856},
     "accuracy": {"xception": {"float32": 0.86, "bfloat16": 0.86, "agreement": 0.99}, ...},
     "tolerance": 0.0, "recorded_at": "...", "command": "...", "bfloat16_recipe": 2}

The precision ``"auto"`` (:func:`auto_precision`) resolves to that spec only on a
CPU with native bfloat16 arithmetic (:func:`neurostack.hardware.has_native_bfloat16`;
elsewhere bfloat16 is emulated and slower) and only while every weight file and
the meta-learner are the ones that were checked and the check ran this version's
bfloat16 recipe (:data:`ensemble.inference.BFLOAT16_RECIPE`; a record without
``bfloat16_recipe`` ran recipe 1). In every other case it is
float32 for all, with the reason returned for logs and the dashboard.

A record holds for one test-time augmentation: :data:`RECORD_FILE` for the
default mode (the default meta-learner's ``input_tta``) and
:data:`MODE_RECORD_FILES` for another one (the opt-in single-crop mode, checked
with ``precision_check.py --tta none --record``), whose ``"meta"`` checksum is
that mode's meta-learner. A mode without its own record runs in float32.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ensemble.registry import BACKBONES
from neurostack.artifacts import CONFIG_FILE
from neurostack.hardware import has_native_bfloat16

log = logging.getLogger(__name__)

PRECISION_ENV = "NEUROSTACK_PRECISION"
"""Environment variable giving the default classifier precision (``"auto"`` if unset)."""
AUTO = "auto"
"""Precision spec resolved from the recorded check and the CPU (:func:`auto_precision`)."""
RECORD_FILE = "precision.json"
"""The check's record, in the classification artifact folder."""
RECORD_FORMAT = 1
META_NAME = "meta"
MODE_RECORD_FILES: dict[str, str] = {
    "none": "precision_single_crop.json",
    "hflip": "precision_mirror.json",
}
"""The record for a test-time augmentation other than the default one, by mode."""


def default_tta(classification_dir: str | Path) -> str:
    """Return the default test-time augmentation: the default meta-learner's ``input_tta``.

    ``"none"`` when that config is missing or unreadable (the loader reports it).
    """
    try:
        cfg = json.loads((Path(classification_dir) / META_NAME / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return "none"
    return cfg.get("input_tta", "none") if isinstance(cfg, dict) else "none"


def record_path(classification_dir: str | Path, tta: str | None = None) -> Path:
    """Return the precision record's path for test-time augmentation ``tta`` (``None``: default)."""
    root = Path(classification_dir)
    if tta is None or tta == default_tta(root):
        return root / RECORD_FILE
    if tta not in MODE_RECORD_FILES:
        raise ValueError(
            f"test-time augmentation must be one of {list(MODE_RECORD_FILES)}; received {tta!r}"
        )
    return root / MODE_RECORD_FILES[tta]


def default_precision() -> str:
    """Return the spec used when none is given: ``$NEUROSTACK_PRECISION``, else ``"auto"``."""
    return os.environ.get(PRECISION_ENV, "").strip() or AUTO


def current_weights_sha256(classification_dir: str | Path, tta: str | None = None
                           ) -> dict[str, str]:
    """``{model: weights_sha256}`` from the configs of the base models and the meta-learner.

    ``"meta"`` is the meta-learner used with test-time augmentation ``tta``
    (:func:`ensemble.inference.select_meta_folder`; ``None``: the default one).
    Models without a readable config are left out (the loader reports them).
    """
    from ensemble.inference import select_meta_folder
    from neurostack.errors import ArtifactError

    root = Path(classification_dir)
    out: dict[str, str] = {}
    try:
        meta_dir = select_meta_folder(root, tta)
    except (ArtifactError, ValueError):  # a broken alternative: the loader reports it
        meta_dir = root / META_NAME
    for name in (*BACKBONES, META_NAME):
        folder = meta_dir if name == META_NAME else root / name
        try:
            cfg = json.loads((folder / CONFIG_FILE).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(cfg, dict) and isinstance(cfg.get("weights_sha256"), str):
            out[name] = cfg["weights_sha256"]
    return out


def make_record(
    per_model: Mapping[str, str],
    report: Mapping[str, Any],
    weights_sha256: Mapping[str, str],
    *,
    recorded_at: str,
    command: str = "",
) -> dict[str, Any]:
    """Build the record of a passed check.

    Args:
        per_model: ``{backbone: precision}`` that was checked (every backbone).
        report: The report of ``benchmarks/precision_check.py`` (its ``models``,
            ``split_csv``, ``part``, ``n_images``, ``tolerance`` and ``verdict``).
        weights_sha256: The checked weights (:func:`current_weights_sha256`); must
            name every backbone and the meta-learner.
        recorded_at: ISO time stamp.
        command: The command that reproduces the check.

    Raises:
        ValueError: If the check did not pass, found no images, used no bfloat16,
            or the checksums do not cover every model.
    """
    if report.get("verdict") != "unchanged" or not report.get("n_images"):
        raise ValueError(
            "only a passed check (verdict 'unchanged' on at least one image) can be recorded; "
            f"received verdict {report.get('verdict')!r} on {report.get('n_images')} images"
        )
    if set(per_model) != set(BACKBONES) or set(per_model.values()) - {"float32", "bfloat16"}:
        raise ValueError(f"per_model must give float32 or bfloat16 for {list(BACKBONES)}; "
                         f"received {dict(per_model)}")
    if "bfloat16" not in per_model.values():
        raise ValueError("the checked spec uses no bfloat16: nothing to record")
    missing = [n for n in (*BACKBONES, META_NAME) if n not in weights_sha256]
    if missing:
        raise ValueError(f"weights_sha256 lacks {missing}; the record must pin every model")
    spec = ",".join(f"{n}=bfloat16" for n in BACKBONES if per_model[n] == "bfloat16")
    accuracy = {
        name: {
            "float32": m["accuracy_float32"],
            "bfloat16": m["accuracy_bfloat16"],
            "agreement": m["agreement"],
            "max_abs_probability_difference": m["max_abs_probability_difference"],
        }
        for name, m in report["models"].items()
    }
    from ensemble.inference import BFLOAT16_RECIPE

    return {
        "format": RECORD_FORMAT,
        "precision": spec,
        "bfloat16_recipe": BFLOAT16_RECIPE,
        "weights_sha256": {n: weights_sha256[n] for n in (*BACKBONES, META_NAME)},
        "checked_on": {
            "split_csv": str(report.get("split_csv", "")),
            "part": str(report.get("part", "")),
            "n_images": int(report["n_images"]),
            **({"tta": str(report["tta"])} if report.get("tta") else {}),
            **({"meta_learner": str(report["meta_learner"])} if report.get("meta_learner") else {}),
        },
        "tolerance": float(report.get("tolerance", 0.0)),
        "accuracy": accuracy,
        "recorded_at": recorded_at,
        "command": command,
    }


def read_record(classification_dir: str | Path, tta: str | None = None) -> dict[str, Any] | None:
    """Read the record for test-time augmentation ``tta`` (:func:`record_path`); ``None`` if none.

    Raises:
        ValueError: If the file exists but is not a record this version reads.
    """
    path = record_path(classification_dir, tta)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable precision record ({exc})") from exc
    ok = (
        isinstance(record, dict)
        and record.get("format") == RECORD_FORMAT
        and isinstance(record.get("precision"), str)
        and isinstance(record.get("weights_sha256"), dict)
    )
    if not ok:
        raise ValueError(
            f"{path}: not a precision record of format {RECORD_FORMAT} "
            "(needs 'format', 'precision' and 'weights_sha256')"
        )
    return record


def auto_precision(
    classification_dir: str | Path, flags: frozenset[str] | None = None, tta: str | None = None
) -> tuple[dict[str, str], str]:
    """Resolve the ``"auto"`` precision: ``({backbone: precision}, reason)``.

    bfloat16 for the models of the check recorded for test-time augmentation ``tta``
    (``None``: the default mode; :func:`record_path`), on a CPU with native bfloat16
    (``flags`` default: ``/proc/cpuinfo``) and while every checked checksum still
    matches; float32 for all otherwise. Never raises: a broken record means
    float32, and the reason says why.
    """
    from ensemble.inference import BFLOAT16_RECIPE, parse_precision

    float32 = dict.fromkeys(BACKBONES, "float32")
    if not has_native_bfloat16(flags):
        return float32, "float32: this CPU has no native bfloat16 (AVX512_BF16 or AMX_BF16)"
    try:
        path = record_path(classification_dir, tta)
        record = read_record(classification_dir, tta)
        if record is None:
            return float32, f"float32: no {path.name} (no bfloat16 accuracy check recorded)"
        per_model = parse_precision(record["precision"])
    except ValueError as exc:
        log.warning("ignoring the precision record: %s", exc)
        return float32, f"float32: {exc}"
    current = current_weights_sha256(classification_dir, tta)
    stale = sorted(n for n, sha in record["weights_sha256"].items() if current.get(n) != sha)
    if stale:
        return float32, (
            f"float32: the bfloat16 check was made with other weights of {', '.join(stale)}; "
            "rerun benchmarks/precision_check.py --record"
        )
    recipe = record.get("bfloat16_recipe", 1)
    if recipe != BFLOAT16_RECIPE:
        return float32, (
            f"float32: the bfloat16 check ran bfloat16 recipe {recipe!r}, this version runs "
            f"recipe {BFLOAT16_RECIPE}; rerun benchmarks/precision_check.py --record"
        )
    checked = record.get("checked_on") or {}
    where = f"{checked.get('part', '?')} split, {checked.get('n_images', '?')} slices"
    return per_model, f"{record['precision']}: accuracy unchanged in the recorded check ({where})"
