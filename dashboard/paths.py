"""Where the dashboard finds its artifacts, samples, records and datasets (no Streamlit)."""

from __future__ import annotations

import os
from pathlib import Path

from morphology.spacing import (  # noqa: F401 - the pages read them from here
    FIGSHARE_MATRIX_PX,
    FIGSHARE_SPACING_MM,
    figshare_assumption_caveat,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The repository checkout this dashboard belongs to."""

ARTIFACTS_ENV = "NEUROSTACK_ARTIFACTS"
DATA_DIR_ENV = "NEUROSTACK_DATA_DIR"
DB_URL_ENV = "NEUROSTACK_DB_URL"
FIGSHARE_ENV = "NEUROSTACK_FIGSHARE_SEG"


def artifacts_root() -> Path:
    """Artifact tree: ``$NEUROSTACK_ARTIFACTS`` or ``<repo>/artifacts``."""
    env = os.environ.get(ARTIFACTS_ENV, "").strip()
    return Path(env).expanduser() if env else REPO_ROOT / "artifacts"


def _with_repo_fallback(sub: str) -> Path:
    """``<artifacts>/<sub>`` if present, else the copy shipped in the repository."""
    own = artifacts_root() / sub
    return own if own.is_dir() else REPO_ROOT / "artifacts" / sub


def samples_dir() -> Path:
    """Bundled demo slices (``samples.csv`` + images)."""
    return _with_repo_fallback("samples")


def splits_dir() -> Path:
    """Return the folder of the data split CSVs."""
    return _with_repo_fallback("splits")


def classification_eval_dir() -> Path:
    """Folder of classification evaluation runs (one subfolder per run)."""
    return artifacts_root() / "evaluation" / "classification"


def segmentation_eval_dir() -> Path:
    """Folder of segmentation evaluation runs (one subfolder per run)."""
    return artifacts_root() / "evaluation" / "segmentation"


def robustness_dir(stage: str = "classification") -> Path:
    """Return the output folder of a robustness run of ``stage``.

    ``"classification"``: ``python -m ensemble.robustness``; ``"segmentation"``:
    ``python -m segmentation.robustness``; ``"segmentation_corrected"``: the same
    with ``--intensity-reference auto`` (slices as the pipeline segments them).
    """
    allowed = ("classification", "segmentation", "segmentation_corrected")
    if stage not in allowed:
        raise ValueError(f"stage must be one of {allowed}; received {stage!r}")
    return artifacts_root() / "evaluation" / "robustness" / stage


def classifier_dir(name: str) -> Path:
    """Artifact folder of one classifier (``meta`` for the meta-learner)."""
    return artifacts_root() / "classification" / name


def meta_dirs() -> list[Path]:
    """Every meta-learner folder: the default one, then those for other test-time augmentations."""
    from ensemble.inference import ALT_META_NAMES, META_NAME

    return [classifier_dir(n) for n in (META_NAME, *ALT_META_NAMES.values())]


def segmenter_dir() -> Path:
    """Artifact folder of the Res-UNet."""
    return artifacts_root() / "segmentation" / "resunet"


def figshare_dir() -> Path:
    """Return the figshare-seg dataset folder; ``$NEUROSTACK_FIGSHARE_SEG`` wins."""
    env = os.environ.get(FIGSHARE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return REPO_ROOT.parent / "shared" / "datasets" / "figshare-seg"


def store_location() -> tuple[str | None, str | None]:
    """``(db_url, data_dir)`` for the case registry from the environment (``None`` = default)."""
    url = os.environ.get(DB_URL_ENV, "").strip() or None
    data_dir = os.environ.get(DATA_DIR_ENV, "").strip() or None
    return url, data_dir
