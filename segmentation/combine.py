r"""Combine exported Res-UNet artifacts into one ensemble artifact.

Independently trained networks miss different tumours, so averaging their
probability maps helps where fine-tunes of one network (which make the same
mistakes) do not. The ensemble is an ordinary segmenter artifact: one
``weights.npz`` (every member's weights, float16) with its SHA-256, a
``config.json`` whose ``architecture`` is ``{"members": [...], "combine":
"mean"}`` (:func:`segmentation.model.build_segmenter`), and ``members`` naming
where each member came from. :func:`segmentation.predict.load_segmenter` loads
it like a single network; the operating point (threshold, test-time
augmentation, post-processing) is chosen afterwards on the validation patients
with ``python -m segmentation.evaluate ... --split val --choose-threshold``.

:func:`extract_member` writes one member back out as a single-network
artifact (to fine-tune it with ``segmentation.train --init-weights``, or to
evaluate it alone).

Command line (thin)::

    python -m segmentation.combine MEMBER_DIR MEMBER_DIR [...] --out ENSEMBLE_DIR \
        [--names a,b,...]
    python -m segmentation.combine ENSEMBLE_DIR --extract NAME --out MEMBER_DIR
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from neurostack.artifacts import (
    CONFIG_FILE,
    TRAINING_LOG_FILE,
    WEIGHTS_FILE,
    float32_policy,
    load_weights_compact,
    read_json,
    save_weights_compact,
    verify_sha256,
    write_json,
)
from neurostack.errors import ArtifactError

SHARED_KEYS = ("input_size", "preprocessing", "input", "output")
"""Config keys every member must agree on (they define what the network sees)."""

MEMBER_KEYS = (
    "weights_sha256", "recipe", "best_epoch", "best_val_dice", "epochs_completed",
    "epochs_completed_total", "wall_time_s", "wall_time_s_total", "continued_from",
    "operating_point", "selection", "exported_at",
)
"""Member config keys kept (under ``members``) in the ensemble's config for provenance."""


def _member_config(folder: Path) -> dict[str, Any]:
    config = read_json(folder / CONFIG_FILE)
    for key in ("architecture", "input_size", "weights_sha256"):
        if key not in config:
            raise ArtifactError(f"{folder / CONFIG_FILE} lacks required key {key!r}")
    if not isinstance(config["architecture"], dict):
        raise ArtifactError(
            f"{folder / CONFIG_FILE}: architecture must be a mapping of build_resunet options; "
            f"received {config['architecture']!r}"
        )
    if "members" in config["architecture"]:
        raise ValueError(f"{folder} is already an ensemble; combine its members' folders instead")
    return config


def _check_shared(configs: Sequence[dict[str, Any]], folders: Sequence[Path]) -> None:
    for key in SHARED_KEYS:
        values = [c.get(key) for c in configs]
        if any(v != values[0] for v in values[1:]):
            listed = ", ".join(f"{f}: {v!r}" for f, v in zip(folders, values, strict=True))
            raise ValueError(f"ensemble members must share {key!r}; received {listed}")
    splits = [(c.get("split") or {}).get("sha256") for c in configs]
    if any(s != splits[0] for s in splits[1:]):
        raise ValueError(
            "ensemble members were trained on different split files (split.sha256 "
            f"{splits}); the held-out patients would not be held out from all of them"
        )


def combined_training_log(folders: Sequence[Path], names: Sequence[str]) -> pd.DataFrame | None:
    """Stack the members' ``training_log.csv`` with a leading ``member`` column.

    Args:
        folders: Member artifact folders.
        names: One name per folder.

    Returns:
        The stacked log, or ``None`` when no member has a log.
    """
    logs = []
    for folder, name in zip(folders, names, strict=True):
        path = folder / TRAINING_LOG_FILE
        if path.is_file():
            log = pd.read_csv(path)
            log.insert(0, "member", name)
            logs.append(log)
    return pd.concat(logs, ignore_index=True).convert_dtypes() if logs else None


def combine_segmenters(
    members: Sequence[str | Path],
    out_dir: str | Path,
    *,
    names: Sequence[str] | None = None,
    selection: str | None = None,
) -> dict[str, Any]:
    """Write an ensemble artifact averaging the probabilities of ``members``.

    Args:
        members: At least two exported Res-UNet artifact folders (each with
            ``config.json`` and verified ``weights.npz``), same input size and
            preprocessing, trained on the same split file.
        out_dir: Folder to write ``weights.npz``, ``config.json`` and
            ``training_log.csv`` (the members' logs stacked) to; must not be one
            of the members.
        names: One unique name per member (default ``member_0``, ``member_1``, ...).
        selection: Why this ensemble is shipped (stored as ``selection``).

    Returns:
        The written ``config.json`` content. Its operating point is the neutral
        threshold 0.5 without augmentation or post-processing until
        ``segmentation.evaluate --choose-threshold`` sets one.

    Raises:
        ValueError: Fewer than two members, names that do not fit, members that
            disagree on what the network sees, or ``out_dir`` among the members.
        ArtifactError: A member's config is incomplete or its weights fail
            their checksum.
    """
    import keras
    import tensorflow as tf

    from segmentation.model import build_resunet_ensemble

    folders = [Path(m) for m in members]
    out_dir = Path(out_dir)
    if len(folders) < 2:
        raise ValueError(f"an ensemble needs at least 2 member folders; received {len(folders)}")
    if any(f.resolve() == out_dir.resolve() for f in folders):
        raise ValueError(f"out_dir {out_dir} is one of the members; write the ensemble elsewhere")
    names = [f"member_{i}" for i in range(len(folders))] if names is None else list(names)
    if len(names) != len(folders) or len(set(names)) != len(names) or not all(names):
        raise ValueError(
            f"names must be {len(folders)} unique non-empty names, one per member; "
            f"received {names}"
        )
    configs = [_member_config(f) for f in folders]
    _check_shared(configs, folders)
    for folder, config in zip(folders, configs, strict=True):
        verify_sha256(folder / config.get("weights_file", WEIGHTS_FILE), config["weights_sha256"])

    architectures = [
        {k: v for k, v in c["architecture"].items() if k != "name"} for c in configs
    ]
    try:
        with float32_policy():
            model = build_resunet_ensemble(architectures)
    except TypeError as exc:  # an option build_resunet does not know
        raise ArtifactError(f"a member's architecture is invalid: {exc}") from None
    for i, (folder, config) in enumerate(zip(folders, configs, strict=True)):
        load_weights_compact(
            model.get_layer(f"member_{i}"), folder / config.get("weights_file", WEIGHTS_FILE)
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    sha = save_weights_compact(model, out_dir / WEIGHTS_FILE)

    log = combined_training_log(folders, names)
    if log is not None:
        log.to_csv(out_dir / TRAINING_LOG_FILE, index=False)
    first = configs[0]
    config: dict[str, Any] = {
        "model": "resunet_ensemble",
        "architecture": {"members": architectures, "combine": "mean"},
        **{k: first[k] for k in SHARED_KEYS if k in first},
        "threshold": 0.5,
        "threshold_rule": "probability >= threshold",
        "weights_file": WEIGHTS_FILE,
        "weights_dtype": "float16",
        "weights_sha256": sha,
        "training_data": first.get("training_data"),
        "split": first.get("split"),
        "members": [
            {"name": name, "source": str(folder), "architecture": arch,
             **{k: c[k] for k in MEMBER_KEYS if k in c}}
            for name, folder, arch, c in zip(names, folders, architectures, configs, strict=True)
        ],
        "epochs_completed_total": sum(
            int(c.get("epochs_completed_total", c.get("epochs_completed", 0)) or 0)
            for c in configs
        ),
        "wall_time_s_total": round(
            sum(float(c.get("wall_time_s_total", c.get("wall_time_s", 0.0)) or 0.0)
                for c in configs), 1
        ),
        "selection": selection,
        "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    write_json(out_dir / CONFIG_FILE, config)
    return config


def extract_member(ensemble_dir: str | Path, name: str, out_dir: str | Path) -> dict[str, Any]:
    """Write member ``name`` of an ensemble artifact as a single-network artifact.

    Args:
        ensemble_dir: Folder written by :func:`combine_segmenters` (checksum verified).
        name: The member's name in the ensemble's ``members``.
        out_dir: Folder for ``weights.npz``, ``config.json`` and the member's rows of
            ``training_log.csv``.

    Returns:
        The written ``config.json`` content: the ensemble's shared keys and the
        member's recorded provenance, with the member's own operating point when
        it had one (else threshold 0.5, no augmentation or post-processing). Its
        weights are bit-identical in value to the member's original export.

    Raises:
        ValueError: If ``ensemble_dir`` is not an ensemble or has no member ``name``.
        ArtifactError: If the ensemble's weights fail their checksum.
    """
    from segmentation.predict import load_segmenter

    ensemble_dir, out_dir = Path(ensemble_dir), Path(out_dir)
    seg = load_segmenter(ensemble_dir)
    config = seg.config
    names = [m.get("name") for m in config.get("members", [])]
    if "members" not in config.get("architecture", {}):
        raise ValueError(f"{ensemble_dir} is not an ensemble (no architecture.members)")
    if name not in names:
        raise ValueError(f"member must be one of {names}; received {name!r}")
    index = names.index(name)
    member = config["members"][index]
    out_dir.mkdir(parents=True, exist_ok=True)
    sha = save_weights_compact(seg.model.get_layer(f"member_{index}"), out_dir / WEIGHTS_FILE)
    point = member.get("operating_point") or {}
    out: dict[str, Any] = {
        "model": "resunet",
        **{k: config[k] for k in SHARED_KEYS if k in config},
        **{k: v for k, v in member.items() if k not in ("name", "weights_sha256", "source")},
        "threshold": float(point.get("threshold", 0.5)),
        "threshold_rule": "probability >= threshold",
        "weights_file": WEIGHTS_FILE,
        "weights_dtype": "float16",
        "weights_sha256": sha,
        "training_data": config.get("training_data"),
        "split": config.get("split"),
        "extracted_from": {"ensemble": str(ensemble_dir), "member": name,
                           "ensemble_weights_sha256": config["weights_sha256"]},
    }
    if point:
        out["test_time_augmentation"] = point.get("tta", "none")
        out["postprocess"] = point.get("postprocess", "none")
    log_path = ensemble_dir / TRAINING_LOG_FILE
    if log_path.is_file():
        log = pd.read_csv(log_path)
        if "member" in log.columns:
            rows = log[log["member"] == name].drop(columns="member").dropna(axis=1, how="all")
            if len(rows):
                rows.convert_dtypes().to_csv(out_dir / TRAINING_LOG_FILE, index=False)
    write_json(out_dir / CONFIG_FILE, out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    p = argparse.ArgumentParser(
        prog="python -m segmentation.combine", description=__doc__.split("\n")[0]
    )
    p.add_argument("members", nargs="+", help="exported Res-UNet artifact folders (2 or more)")
    p.add_argument("--out", required=True, help="artifact folder to write")
    p.add_argument("--names", default=None, help="comma-separated member names")
    p.add_argument("--selection", default=None, help="why this ensemble is shipped")
    p.add_argument("--extract", default=None, metavar="NAME",
                   help="write member NAME of the one ensemble folder given as a single network")
    args = p.parse_args(argv)
    names = None if args.names is None else [n.strip() for n in args.names.split(",")]
    if args.extract is not None:
        if len(args.members) != 1:
            p.error(f"--extract takes one ensemble folder; received {len(args.members)}")
        try:
            extract_member(args.members[0], args.extract, args.out)
        except (ValueError, ArtifactError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote member {args.extract!r} to {args.out}")
        return 0
    try:
        config = combine_segmenters(args.members, args.out, names=names, selection=args.selection)
    except (ValueError, ArtifactError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {len(config['members'])} members, weights sha256 "
          f"{config['weights_sha256'][:12]}; choose its operating point with "
          "python -m segmentation.evaluate ... --split val --choose-threshold")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
