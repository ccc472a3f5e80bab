"""Every cached loader of the dashboard.

Models are loaded once per server process (``st.cache_resource``) and shared by
all sessions; analysis results and records are cached per input
(``st.cache_data``). File-backed loaders take the file's modification time as
an argument so a rewritten record is re-read.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import evaluation as ev
from dashboard import paths
from neurostack.imaging import InputLimits, LoadedImage, load_image
from neurostack.pipeline import CaseResult, Pipeline, load_pipeline
from segmentation.evaluate import load_mask

_ANALYSIS_CACHE_ENTRIES = 16
_CACHE_TTL_S = 3600


# -------------------------------------------------------------------- models
@st.cache_resource(show_spinner="Loading the models (once per server process)…")
def _pipeline_for(artifacts_dir: str) -> Pipeline:
    # The analysis (single slices and batches, which use ``pipeline.limits``) obeys
    # the same limits as the upload preview.
    return load_pipeline(artifacts_dir, strict=False, limits=input_limits())


@st.cache_resource(show_spinner="Preparing the other classification mode (once per server "
                                "process)…")
def _pipeline_with_tta(artifacts_dir: str, tta: str) -> Pipeline:
    return _pipeline_for(artifacts_dir).with_tta(tta)


def get_pipeline(tta: str | None = None) -> Pipeline:
    """Return the shared pipeline for the configured artifacts root.

    Args:
        tta: The classifiers' test-time augmentation; ``None`` (default) keeps the
            shipped mode. Another mode shares the loaded models
            (:meth:`neurostack.pipeline.Pipeline.with_tta`).

    Raises:
        ArtifactError: When no classifier can be loaded or a weight file is corrupt.
    """
    root = str(paths.artifacts_root())
    if tta is None or tta == _pipeline_for(root).ensemble.tta:
        return _pipeline_for(root)
    return _pipeline_with_tta(root, tta)


def input_limits() -> InputLimits:
    """Return the upload limits, taken from the app's configuration.

    The byte limit is Streamlit's ``server.maxUploadSize`` (``.streamlit/config.toml``,
    in MB); the pixel limit is ``NEUROSTACK_MAX_PIXELS`` when set. The shared
    pipeline is loaded with these limits, so ``neurostack.imaging.load_image``
    enforces both for the preview, the analysis and batch runs alike.
    """
    import os

    default = InputLimits()
    upload_mb = st.get_option("server.maxUploadSize")
    max_bytes = int(upload_mb) * 1024 * 1024 if upload_mb else default.max_bytes
    max_pixels = int(os.environ.get("NEUROSTACK_MAX_PIXELS", default.max_pixels))
    return InputLimits(max_bytes=max_bytes, max_pixels=max_pixels)


# ---------------------------------------------------------------- case store
@st.cache_resource(show_spinner=False)
def _store_for(url: str | None, data_dir: str | None) -> Any:
    from neurostack.cases import CaseStore

    if url:
        return CaseStore(url)
    return CaseStore(data_dir=Path(data_dir) if data_dir else None)


def get_case_store() -> Any:
    """Return the case registry (``neurostack.cases.CaseStore``) for the configured location.

    Raises:
        ImportError: While ``neurostack.cases`` is not available.
    """
    url, data_dir = paths.store_location()
    return _store_for(url, data_dir)


# ------------------------------------------------------------------- images
def digest(data: bytes) -> str:
    """Short SHA-256 of uploaded bytes, used as a widget/session key."""
    return hashlib.sha256(data).hexdigest()[:16]


@st.cache_data(max_entries=8, ttl=_CACHE_TTL_S, show_spinner=False)
def decode(data: bytes, frame: int | None = None) -> LoadedImage:
    """Decode an image (raises ``InputImageError`` with the reason)."""
    return load_image(data, frame=frame, limits=input_limits())


@st.cache_data(max_entries=_ANALYSIS_CACHE_ENTRIES, ttl=_CACHE_TTL_S, show_spinner=False)
def analyse(
    data: bytes,
    frame: int | None,
    spacing_cm: tuple[float, float] | None,
    spacing_source: str | None,
    threshold: float,
    force_segmentation: bool,
    postprocess: str | None = None,
) -> CaseResult:
    """Run the full pipeline on one file's bytes (cached per input and options)."""
    return get_pipeline().analyse(
        data, spacing_cm=spacing_cm, spacing_source=spacing_source, threshold=threshold,
        force_segmentation=force_segmentation, frame=frame, postprocess=postprocess,
    )


@st.cache_data(max_entries=16, ttl=_CACHE_TTL_S, show_spinner=False)
def gradcam_overlays(data: bytes, frame: int | None, class_index: int) -> dict[str, np.ndarray]:
    """Grad-CAM heatmap overlay of ``class_index`` for every loaded base model.

    Computed on the slice the classifiers analysed (a copy mapped to the training
    curve when the input check corrected it), drawn on the slice as given.
    """
    from ensemble.gradcam import gradcam_on_image
    from neurostack.render import heatmap_overlay

    img = decode(data, frame)
    pipeline = get_pipeline()
    gray, box = pipeline.network_view(img)
    out = {}
    for name, clf in pipeline.ensemble.members.items():
        heat = gradcam_on_image(clf, gray, box, class_index)
        out[name] = heatmap_overlay(img.display, heat)
    return out


@st.cache_data(max_entries=64, show_spinner=False)
def read_bytes(path: str, mtime: float) -> bytes:
    """Read a file's bytes (``mtime`` invalidates the entry when the file changes)."""
    return Path(path).read_bytes()


def file_bytes(path: Path) -> bytes:
    """Return the cached bytes of ``path``."""
    return read_bytes(str(path), path.stat().st_mtime)


# ------------------------------------------------------------------ samples
@st.cache_data(show_spinner=False)
def _samples(folder: str, mtime: float) -> pd.DataFrame:
    folder_p = Path(folder)
    csv = folder_p / "samples.csv"
    if csv.is_file():
        df = pd.read_csv(csv, dtype=str)
    else:
        files = sorted(p.name for p in folder_p.glob("*") if p.suffix.lower() in
                       {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".dcm"})
        df = pd.DataFrame({"file": files, "label": ""})
    df = df[df["file"].map(lambda f: (folder_p / f).is_file())]
    return df.sort_values(["label", "file"]).reset_index(drop=True)


def samples() -> pd.DataFrame:
    """Bundled demo slices: ``file`` and ``label`` (empty table when none ship)."""
    folder = paths.samples_dir()
    if not folder.is_dir():
        return pd.DataFrame(columns=["file", "label"])
    return _samples(str(folder), folder.stat().st_mtime)


# --------------------------------------------------------------- evaluation
def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


def classification_runs() -> list[str]:
    """Classification evaluation runs with predictions, the test run first, then newest first."""
    return ev.list_runs(paths.classification_eval_dir(), "predictions.csv")


def segmentation_runs() -> list[str]:
    """Segmentation evaluation runs with per-image scores, the test run first, then newest."""
    return ev.list_runs(paths.segmentation_eval_dir(), "per_image.csv")


@st.cache_data(show_spinner=False)
def _json(path: str, mtime: float) -> dict[str, Any] | None:
    return ev.read_json_file(Path(path))


def json_record(path: Path) -> dict[str, Any] | None:
    """Return a JSON record (``None`` when absent or unreadable)."""
    return _json(str(path), _mtime(path))


def shipped_weights(names: tuple[str, ...] = ("xception", "inceptionv3", "resnet50", "vgg19",
                                              "meta", "meta_single_crop", "resunet")
                    ) -> dict[str, str | None]:
    """Map each model to the SHA-256 in its shipped folder's config (``None`` if missing)."""
    def folder(name: str) -> Path:
        return paths.segmenter_dir() if name == "resunet" else paths.classifier_dir(name)

    return {name: (json_record(folder(name) / "config.json") or {}).get("weights_sha256")
            for name in names}


@st.cache_data(show_spinner="Computing curves from the stored predictions…")
def _evaluations(path: str, mtime: float) -> list[ev.ModelEvaluation]:
    df = ev.read_predictions(Path(path))
    return [ev.evaluate_model(df, m) for m in ev.models_in_predictions(df)]


def model_evaluations(run: str) -> list[ev.ModelEvaluation]:
    """Per-model evaluation (curves, matrices, bins) of a classification run."""
    path = paths.classification_eval_dir() / run / "predictions.csv"
    return _evaluations(str(path), _mtime(path))


def review_record() -> dict[str, Any] | None:
    """Return the classification's review-flag record (``ensemble.review``), if shipped."""
    from ensemble.review import RECORD_FILE

    return json_record(paths.classifier_dir(RECORD_FILE))


@st.cache_data(show_spinner=False)
def _review_on_run(path: str, mtime: float, record_mtime: float) -> dict[str, Any] | None:
    csv = Path(path)
    return ev.review_on_run(ev.read_predictions(csv), json_record(csv.parent / "metrics.json")
                            or {}, review_record(), paths.classifier_dir(""), csv)


def review_on_run(run: str) -> dict[str, Any] | None:
    """Score the recorded review flag on a classification run (``None`` without a record)."""
    from ensemble.review import RECORD_FILE

    path = paths.classification_eval_dir() / run / "predictions.csv"
    return _review_on_run(str(path), _mtime(path), _mtime(paths.classifier_dir(RECORD_FILE)))


@st.cache_data(show_spinner=False)
def _training_log(path: str, mtime: float) -> pd.DataFrame | None:
    return ev.read_training_log(Path(path))


def training_log(folder: Path, name: str = "training_log.csv") -> pd.DataFrame | None:
    """Read a per-epoch log of an artifact folder (``training_log.csv`` by default)."""
    path = folder / name
    return _training_log(str(path), _mtime(path))


@st.cache_data(show_spinner=False)
def _robustness(path: str, mtime: float) -> pd.DataFrame | None:
    return ev.read_robustness_summary(Path(path))


def robustness_summary() -> pd.DataFrame | None:
    """``summary.csv`` of the classifiers' robustness run (``None`` when absent)."""
    path = paths.robustness_dir() / "summary.csv"
    return _robustness(str(path), _mtime(path))


@st.cache_data(show_spinner=False)
def _seg_robustness(path: str, mtime: float) -> pd.DataFrame | None:
    return ev.read_seg_robustness_summary(Path(path))


def seg_robustness_summary(stage: str = "segmentation") -> pd.DataFrame | None:
    """``summary.csv`` of a segmenter robustness run (``None`` when absent).

    ``stage``: ``"segmentation"`` (slices as they are) or ``"segmentation_corrected"``
    (as the pipeline segments them, :func:`dashboard.paths.robustness_dir`).
    """
    path = paths.robustness_dir(stage) / "summary.csv"
    return _seg_robustness(str(path), _mtime(path))


@st.cache_data(show_spinner=False)
def _per_image(path: str, mtime: float) -> pd.DataFrame:
    return ev.read_per_image(Path(path))


def per_image(run: str) -> pd.DataFrame:
    """Return a segmentation run's ``per_image.csv``."""
    path = paths.segmentation_eval_dir() / run / "per_image.csv"
    return _per_image(str(path), _mtime(path))


_SPLIT_TABLES = {"series": ev.series_table, "contrast": ev.contrast_bands_table}


@st.cache_data(show_spinner=False)
def _split_table(kind: str, per_image_path: str, mtime: float, split_path: str,
                 split_mtime: float) -> pd.DataFrame | None:
    return _SPLIT_TABLES[kind](ev.read_per_image(Path(per_image_path)), Path(split_path))


def _run_split_table(kind: str, run: str) -> pd.DataFrame | None:
    path = paths.segmentation_eval_dir() / run / "per_image.csv"
    split = paths.splits_dir() / "segmentation_split.csv"
    return _split_table(kind, str(path), _mtime(path), str(split), _mtime(split))


def series_table(run: str) -> pd.DataFrame | None:
    """Dice per patient series of a segmentation run (``None`` when it cannot be computed)."""
    return _run_split_table("series", run)


def contrast_bands(run: str) -> pd.DataFrame | None:
    """Dice per tumour-contrast band of a segmentation run (``None`` for older records)."""
    return _run_split_table("contrast", run)


@st.cache_data(show_spinner=False)
def _threshold_sweep(path: str, mtime: float) -> pd.DataFrame | None:
    return ev.read_threshold_sweep(Path(path))


def threshold_sweep(run: str) -> pd.DataFrame | None:
    """Return a segmentation run's ``threshold_sweep.csv`` (``None`` when it has none)."""
    path = paths.segmentation_eval_dir() / run / "threshold_sweep.csv"
    return _threshold_sweep(str(path), _mtime(path))


def segmentation_test_ids() -> list[str] | None:
    """Held-out ids of the segmentation split (``None`` without a split file)."""
    path = paths.splits_dir() / "segmentation_split.csv"
    return _test_ids(str(path), _mtime(path))


@st.cache_data(show_spinner=False)
def _test_ids(path: str, mtime: float) -> list[str] | None:
    return ev.test_ids(Path(path))


@st.cache_data(max_entries=32, show_spinner=False)
def review_case(image_path: str, image_mtime: float, mask_path: str, mask_mtime: float,
                threshold: float) -> ev.CaseReview:
    """Segment a held-out slice and score it against its ground-truth mask.

    Raises:
        InputImageError: If the image or the mask cannot be read.
        ValueError: If the mask and the image differ in shape.
    """
    img, pred = segment_file(image_path, image_mtime, threshold)
    truth = load_mask(mask_path, limits=input_limits())
    return ev.review_case(img, pred, truth)


@st.cache_data(max_entries=32, show_spinner=False)
def segment_file(path: str, mtime: float, threshold: float) -> tuple[LoadedImage, np.ndarray]:
    """Decode a dataset slice and run the segmenter on it: ``(image, predicted mask)``."""
    pipeline = get_pipeline()
    if pipeline.segmenter is None:
        raise RuntimeError("The segmentation model is not loaded")
    img = load_image(path, limits=input_limits())
    return img, pipeline.segmenter.predict(img.gray, threshold=threshold).mask
