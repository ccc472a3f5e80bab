r"""A slice's noise and fine detail, and a check that they resemble the training slices'.

The intensity check (:mod:`ensemble.intensity`) catches another grey-level curve
but not noise or blur. Both cost accuracy (robustness run, README: Rician noise
of sigma 16 grey levels takes the ensemble from 1.00 to 0.70 and the segmenter's
mean Dice from 0.71 to 0.40), so each slice also gets two numbers, in grey
levels of the 8-bit slice, measured on its head crop without any network:

* :func:`noise_sigma`: a robust estimate of the noise standard deviation: the
  median absolute response of Immerkaer's noise mask (a difference of two
  Laplacians, which cancels locally planar image content) over the head pixels,
  scaled so that Gaussian noise of standard deviation ``s`` reads ``s``.
* :func:`detail_level`: the mean absolute response of the same mask over the
  whole head crop, scaled the same way: how much fine detail (edges, texture,
  noise) the slice holds. Blur and up-sampling from a coarser matrix lower it.

A :class:`QualityReference` holds both numbers for the training slices and two
limits: a slice is *noisy* above the ``noise_quantile`` point of the training
slices' noise and *smooth* below the ``detail_quantile`` point of their detail,
so about ``1 - noise_quantile + detail_quantile`` of slices like the training data
are flagged by design. ``python -m ensemble.quality`` builds the reference from
the training part of a split, measures on the validation part how often it
fires unchanged and under each simulated acquisition shift
(:mod:`neurostack.corrupt`), and writes a self-describing artifact folder
(``features.npz`` + ``config.json`` with its SHA-256 and those rates).

Example::

    python -m ensemble.quality ../shared/datasets/brain-tumor-mri/Training \
        --split artifacts/splits/classification_split.csv \
        --out artifacts/classification/quality_reference
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ensemble.data import load_split
from neurostack.artifacts import (
    FEATURES_FILE,  # noqa: F401 - re-exported: the file name of this reference
    read_features_artifact,
    read_json,
    write_features_artifact,
)
from neurostack.cli import reference_parser
from neurostack.corrupt import CLEAN, conditions, corrupt, slice_seed
from neurostack.errors import ArtifactError, InputImageError
from neurostack.imaging import load_image
from neurostack.preprocess import BLANK_LEVEL, crop, find_brain_box

REFERENCE_FOLDER = "quality_reference"
"""Folder of the reference under ``artifacts/classification``."""
CONFIG_FILE = "config.json"
FEATURE_COLUMNS: tuple[str, ...] = ("noise_sigma_grey", "detail_level_grey")
HEAD_LEVEL = BLANK_LEVEL
"""Grey level above which a pixel of the head crop counts for :func:`noise_sigma` (the
background level of :func:`neurostack.preprocess.almost_blank`)."""
DEFAULT_NOISE_QUANTILE = 0.99
DEFAULT_DETAIL_QUANTILE = 0.005
NOISY_PREFIX = "noisier than the training slices"
SMOOTH_PREFIX = "less fine detail than the training slices"
"""Starts of the warnings :meth:`QualityCheck.warnings` gives (to find flagged results)."""

# Immerkaer (1996): 2 x (4-neighbour Laplacian) - (diagonal Laplacian) on a 3x3 grid.
_MASK = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
_MASK_NORM = float(np.sqrt((_MASK**2).sum()))  # 6: the response's sd per unit noise sd
_MAD_TO_SD = 0.6744897501960817  # median |N(0, 1)|
_MEAN_ABS_TO_SD = float(np.sqrt(2.0 / np.pi))  # mean |N(0, 1)|


def _mask_response(head: np.ndarray) -> np.ndarray | None:
    """``|Immerkaer mask * head|`` on the interior pixels ``(H-2, W-2)``, float64.

    Returns ``None`` for a crop smaller than 3 x 3.

    Raises:
        ValueError: If ``head`` is not a 2-D uint8 array.
    """
    head = np.asarray(head)
    if head.ndim != 2 or head.dtype != np.uint8:
        raise ValueError(f"head must be a 2-D uint8 array; received {head.dtype} {head.shape}")
    if min(head.shape) < 3:
        return None
    response = cv2.filter2D(head.astype(np.float64), -1, _MASK, borderType=cv2.BORDER_REFLECT)
    return np.abs(response[1:-1, 1:-1])


def noise_sigma(head: np.ndarray) -> float:
    """Estimate the noise standard deviation of a head crop, in grey levels.

    Args:
        head: ``(H, W)`` uint8 head crop.

    Returns:
        ``median |mask * head| / (6 * 0.6745)`` over the interior pixels brighter
        than :data:`HEAD_LEVEL` (Gaussian noise of sd ``s`` on a flat or planar
        image reads ``s``); ``nan`` when the crop is smaller than 3 x 3 or has no
        such pixel.

    Raises:
        ValueError: If ``head`` is not a 2-D uint8 array.
    """
    response = _mask_response(head)
    inside = None if response is None else np.asarray(head)[1:-1, 1:-1] > HEAD_LEVEL
    if inside is None or not inside.any():
        return float("nan")
    return float(np.median(response[inside]) / (_MASK_NORM * _MAD_TO_SD))


def detail_level(head: np.ndarray) -> float:
    """Fine detail of a head crop: mean ``|mask * head|`` scaled like a noise sd, grey levels.

    Args:
        head: ``(H, W)`` uint8 head crop.

    Returns:
        ``mean |mask * head| / (6 * sqrt(2 / pi))`` over all interior pixels (pure
        Gaussian noise of sd ``s`` reads ``s``); 0 for a constant crop, ``nan`` when
        the crop is smaller than 3 x 3.

    Raises:
        ValueError: If ``head`` is not a 2-D uint8 array.
    """
    response = _mask_response(head)
    if response is None:
        return float("nan")
    return float(response.mean() / (_MASK_NORM * _MEAN_ABS_TO_SD))


def quality_features(gray: np.ndarray, head: np.ndarray | None = None) -> np.ndarray:
    """``(2,)`` float64 ``[noise_sigma, detail_level]`` of a slice (head crop found if None)."""
    if head is None:
        head = crop(gray, find_brain_box(gray))
    return np.array([noise_sigma(head), detail_level(head)])


@dataclass(frozen=True)
class QualityCheck:
    """How one slice's noise and fine detail compare with the training slices'.

    Attributes:
        noise_sigma: :func:`noise_sigma` of the slice, grey levels.
        detail_level: :func:`detail_level` of the slice, grey levels.
        noise_limit: Noise above which the slice is flagged noisy.
        detail_limit: Detail below which the slice is flagged smooth.
        noisy_training_classes: Class -> number of training slices above the noise
            limit (what the classifiers learnt such slices are), if recorded.
        smooth_training_classes: The same below the detail limit.
    """

    noise_sigma: float
    detail_level: float
    noise_limit: float
    detail_limit: float
    noisy_training_classes: dict[str, int] | None = None
    smooth_training_classes: dict[str, int] | None = None

    @property
    def noisy(self) -> bool:
        """Noisier than the limit (``nan`` never counts)."""
        return bool(self.noise_sigma > self.noise_limit)

    @property
    def smooth(self) -> bool:
        """Less detail than the limit (``nan`` never counts)."""
        return bool(self.detail_level < self.detail_limit)

    def warnings(self) -> list[str]:
        """User-facing warnings: none for a slice within both limits."""
        out = []
        if self.noisy:
            out.append(
                f"{NOISY_PREFIX} (estimated noise sd {self.noise_sigma:.1f} grey levels > "
                f"{self.noise_limit:.1f}): the classifiers and the segmenter lose accuracy on "
                "noisy slices" + _class_note(self.noisy_training_classes, "this noisy")
            )
        if self.smooth:
            out.append(
                f"{SMOOTH_PREFIX} (detail level {self.detail_level:.2f} < "
                f"{self.detail_limit:.2f} grey levels): blurred, or up-sampled from a coarser "
                "matrix; outlines and measurements may be less precise"
                + _class_note(self.smooth_training_classes, "this smooth")
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain values for ``CaseResult.quality``."""
        return {"noise_sigma": self.noise_sigma, "detail_level": self.detail_level,
                "noise_limit": self.noise_limit, "detail_limit": self.detail_limit,
                "noisy": self.noisy, "smooth": self.smooth}


SHORTCUT_SHARE = 0.9
"""A class holding at least this share of the flagged training slices is named as a bias."""


def _class_note(classes: dict[str, int] | None, what: str) -> str:
    """``"; in the training data ..."`` when one class dominates the flagged training slices."""
    if not classes:
        return ""
    total = sum(classes.values())
    top, count = max(classes.items(), key=lambda kv: kv[1])
    if count < SHORTCUT_SHARE * total:
        return ""
    return (f". In the training data {count} of the {total} slices {what} are {top!r}, so "
            f"the classifiers may lean toward {top!r} here: do not rely on the class alone")


class QualityReference:
    """Training slices' noise and detail with the two flag limits.

    Args:
        features: ``(N, 2)`` :func:`quality_features` of the reference (training) slices.
        noise_limit: Noise above which :meth:`check` flags a slice.
        detail_limit: Detail below which :meth:`check` flags a slice.
        config: The artifact's ``config.json`` content (provenance), if loaded.

    Raises:
        ValueError: On a feature array that is not ``(N, 2)`` with ``N >= 2`` or a
            limit that is not a finite number >= 0.
    """

    def __init__(self, features: np.ndarray, noise_limit: float, detail_limit: float,
                 config: dict[str, Any] | None = None) -> None:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != len(FEATURE_COLUMNS) or len(features) < 2:
            raise ValueError(f"features must be (N >= 2, {len(FEATURE_COLUMNS)}); "
                             f"received {features.shape}")
        bad = {k: v for k, v in {"noise_limit": noise_limit, "detail_limit": detail_limit}.items()
               if not (np.isfinite(v) and v >= 0)}
        if bad:
            raise ValueError(f"limits must be finite numbers >= 0; received {bad}")
        self.features = features
        self.noise_limit = float(noise_limit)
        self.detail_limit = float(detail_limit)
        self.config = dict(config or {})

    def check(self, features: np.ndarray) -> QualityCheck:
        """Compare one slice's ``(2,)`` features with the limits."""
        noise, detail = (float(v) for v in np.asarray(features, dtype=np.float64).ravel())
        beyond = self.config.get("training_classes_beyond_limits", {})
        return QualityCheck(noise, detail, self.noise_limit, self.detail_limit,
                            beyond.get("noisy"), beyond.get("smooth"))

    def flags(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(noisy, smooth)`` bool arrays for ``(M, 2)`` features."""
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        return x[:, 0] > self.noise_limit, x[:, 1] < self.detail_limit


def fit_reference(features: np.ndarray, *, noise_quantile: float = DEFAULT_NOISE_QUANTILE,
                  detail_quantile: float = DEFAULT_DETAIL_QUANTILE) -> QualityReference:
    """Fit the limits as quantiles of the reference slices' own features (``nan`` rows ignored).

    Raises:
        ValueError: If a quantile is outside ``(0, 1)``, ``detail_quantile >=
            noise_quantile``, or fewer than two rows are finite.
    """
    q = {"noise_quantile": noise_quantile, "detail_quantile": detail_quantile}
    bad = {k: v for k, v in q.items() if not 0 < v < 1}
    if bad or detail_quantile >= noise_quantile:
        raise ValueError("quantiles must be in (0, 1) with detail_quantile < noise_quantile; "
                         f"received {q}")
    x = np.asarray(features, dtype=np.float64)
    x = x[np.isfinite(x).all(axis=1)] if x.ndim == 2 else x
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least two finite (noise, detail) rows; received {np.shape(x)}")
    return QualityReference(x, float(np.quantile(x[:, 0], noise_quantile)),
                            float(np.quantile(x[:, 1], detail_quantile)))


def save_reference(ref: QualityReference, folder: str | Path,
                   provenance: dict[str, Any]) -> Path:
    """Write ``features.npz`` (float64: the limits stay exact) and ``config.json``."""
    return write_features_artifact(folder, ref.features, {
        "kind": "noise and detail reference",
        "features": {
            "noise_sigma_grey": "median |Immerkaer mask| over head pixels > "
                                f"{HEAD_LEVEL} / (6 x 0.6745), grey levels",
            "detail_level_grey": "mean |Immerkaer mask| over the head crop / "
                                 "(6 x sqrt(2/pi)), grey levels",
        },
        "noise_limit": ref.noise_limit,
        "detail_limit": ref.detail_limit,
        "n_reference": len(ref.features),
        **provenance,
    })


def load_reference(folder: str | Path) -> QualityReference:
    """Load a reference folder, verifying the features' SHA-256 first.

    Raises:
        ArtifactError: If the folder, config or features are missing or corrupt; the
            message names the file.
    """
    features, config = read_features_artifact(folder, ("noise_limit", "detail_limit"))
    try:
        return QualityReference(features, float(config["noise_limit"]),
                                float(config["detail_limit"]), config)
    except ValueError as exc:
        raise ArtifactError(f"{folder}: unusable quality reference: {exc}") from None


def describe_reference(config: dict[str, Any]) -> str:
    """One Markdown paragraph on what a reference's ``config.json`` says it catches.

    Names the limits, the classes of the training slices beyond each limit and the
    flag rates of its check part: unchanged, and the largest rate under any
    simulated noise, blur or down-sampling.
    """
    text = (
        f"Each slice's noise and fine detail are compared with those of "
        f"{config['n_reference']} training slices: flagged *noisy* above a noise sd of "
        f"{config['noise_limit']:.1f} grey levels (the "
        f"{config.get('noise_quantile', DEFAULT_NOISE_QUANTILE):.1%} point of the training "
        f"slices) and *smooth* below a detail level of {config['detail_limit']:.2f} (the "
        f"{config.get('detail_quantile', DEFAULT_DETAIL_QUANTILE):.1%} point)."
    )
    beyond = config.get("training_classes_beyond_limits", {})
    for key, what in (("noisy", "this noisy"), ("smooth", "this smooth")):
        classes = beyond.get(key) or {}
        if classes:
            ordered = sorted(classes.items(), key=lambda kv: -kv[1])
            listed = ", ".join(f"{c} {n}" for c, n in ordered)
            text += f" Training slices {what}: {listed}."
    rates = {(r["corruption"], r["severity"]): r for r in
             config.get("check", {}).get("flagged_share", [])}
    clean = rates.get((CLEAN, 0))
    if clean is None:
        return text
    text += (f" On {clean['n']} {config['check']['part']} slices it flagged "
             f"{clean['flagged_share']:.1%} as they are")
    for name, key, label in (("rician_noise", "noisy_share", "noisy under Rician noise"),
                             ("blur", "smooth_share", "smooth under blur"),
                             ("low_resolution", "smooth_share", "smooth when down-sampled")):
        shares = [rates[(name, sev)][key] for sev in (1, 2) if (name, sev) in rates]
        if shares:
            text += f"; {' / '.join(f'{v:.1%}' for v in shares)} {label} (severity 1 / 2)"
    return text + "."


# ---------------------------------------------------------------------------- build + CLI
def read_quality_features(
    data_dir: str | Path, rows: pd.DataFrame, *, shifts: list[tuple[str, int]] | None = None,
    seed: int = 0, progress: bool = True,
) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Quality features of every readable slice of ``rows``, unchanged and shifted.

    Args:
        data_dir: Root the ``path`` column is relative to.
        rows: Columns ``path`` and ``label``.
        shifts: ``(corruption, severity)`` pairs (:func:`neurostack.corrupt.conditions`);
            ``None``: the slices as they are only.
        seed: Base seed of the corruptions (per slice: :func:`neurostack.corrupt.slice_seed`).
        progress: Show a progress bar.

    Returns:
        ``(table, failures)``: one row per slice and shift (``path``, ``label``,
        ``corruption``, ``severity`` and :data:`FEATURE_COLUMNS`); one ``{path,
        error}`` per unreadable file (reported, not raised).
    """
    shifts = shifts or [(CLEAN, 0)]
    out, failures = [], []
    for row in tqdm(list(rows.itertuples(index=False)), desc="quality features",
                    disable=not progress):
        try:
            gray = load_image(Path(data_dir) / row.path).gray
        except InputImageError as exc:
            failures.append({"path": str(row.path), "error": str(exc)})
            continue
        for name, severity in shifts:
            shifted = gray if name == CLEAN else corrupt(
                gray, name, severity, slice_seed(str(row.path), name, severity, seed))
            out.append({"path": row.path, "label": row.label, "corruption": name,
                        "severity": severity,
                        **dict(zip(FEATURE_COLUMNS, quality_features(shifted), strict=True))})
    columns = ["path", "label", "corruption", "severity", *FEATURE_COLUMNS]
    return pd.DataFrame(out, columns=columns), failures


def flag_rates(ref: QualityReference, features: pd.DataFrame) -> pd.DataFrame:
    """Shares flagged noisy / smooth / either per ``(corruption, severity)``."""
    noisy, smooth = ref.flags(features[list(FEATURE_COLUMNS)].to_numpy())
    table = features.assign(noisy=noisy, smooth=smooth, flagged=noisy | smooth)
    return (table.groupby(["corruption", "severity"], sort=False)
            .agg(n=("flagged", "size"), noisy_share=("noisy", "mean"),
                 smooth_share=("smooth", "mean"), flagged_share=("flagged", "mean"))
            .reset_index())


def build(
    data_dir: str | Path, split_csv: str | Path, out: str | Path, *,
    noise_quantile: float = DEFAULT_NOISE_QUANTILE,
    detail_quantile: float = DEFAULT_DETAIL_QUANTILE, fit_part: str = "train",
    check_part: str = "val", check_per_class: int = 50, seed: int = 0, progress: bool = True,
) -> dict[str, Any]:
    """Fit the limits on ``fit_part``, measure the flag rates on ``check_part``, save.

    ``check_per_class`` slices per class of ``check_part`` are measured unchanged and
    under every corruption of :mod:`neurostack.corrupt` at severities 1 and 2.

    Returns:
        The written ``config.json`` content.

    Raises:
        ValueError: If the parts are the same or a quantile is out of range.
    """
    from ensemble.robustness import sample_rows

    t0 = time.perf_counter()
    if fit_part == check_part:
        raise ValueError(f"fit and check parts must differ; received {fit_part!r} twice")
    fit_reference(np.zeros((2, 2)), noise_quantile=noise_quantile,
                  detail_quantile=detail_quantile)  # validate the quantiles before any work
    fit_rows = load_split(split_csv, fit_part)
    check_rows = sample_rows(load_split(split_csv, check_part), check_per_class, seed)
    fit_feats, fit_fail = read_quality_features(data_dir, fit_rows, progress=progress)
    ref = fit_reference(fit_feats[list(FEATURE_COLUMNS)].to_numpy(),
                        noise_quantile=noise_quantile, detail_quantile=detail_quantile)
    check_feats, check_fail = read_quality_features(
        data_dir, check_rows, shifts=conditions(), seed=seed, progress=progress)
    rates = flag_rates(ref, check_feats)
    finite = fit_feats.dropna(subset=list(FEATURE_COLUMNS))
    noisy, smooth = ref.flags(finite[list(FEATURE_COLUMNS)].to_numpy())
    provenance = {
        "split": str(split_csv), "fit_part": fit_part,
        "training_classes_beyond_limits": {
            "noisy": {str(k): int(v) for k, v in finite.label[noisy].value_counts().items()},
            "smooth": {str(k): int(v) for k, v in finite.label[smooth].value_counts().items()},
        },
        "noise_quantile": noise_quantile, "detail_quantile": detail_quantile,
        "check": {
            "part": check_part, "per_class": check_per_class, "seed": seed,
            "flagged_share": [
                {"corruption": r.corruption, "severity": int(r.severity), "n": int(r.n),
                 "noisy_share": round(float(r.noisy_share), 4),
                 "smooth_share": round(float(r.smooth_share), 4),
                 "flagged_share": round(float(r.flagged_share), 4)}
                for r in rates.itertuples()
            ],
        },
        "unreadable": fit_fail + check_fail,
        "wall_time_s": round(time.perf_counter() - t0, 1),
    }
    save_reference(ref, out, provenance)
    return read_json(Path(out) / CONFIG_FILE)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m ensemble.quality DATA --split CSV --out FOLDER``."""
    p = reference_parser(__doc__.split("\n\n")[0])
    p.add_argument("--noise-quantile", type=float, default=DEFAULT_NOISE_QUANTILE,
                   help="share of training slices at or below the noise limit")
    p.add_argument("--detail-quantile", type=float, default=DEFAULT_DETAIL_QUANTILE,
                   help="share of training slices below the detail limit")
    a = p.parse_args(argv)
    try:
        cfg = build(a.data_dir, a.split, a.out, noise_quantile=a.noise_quantile,
                    detail_quantile=a.detail_quantile, check_per_class=a.check_per_class)
    except (ValueError, FileNotFoundError, ArtifactError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"reference of {cfg['n_reference']} slices: noise limit {cfg['noise_limit']:.2f}, "
          f"detail limit {cfg['detail_limit']:.3f} grey levels; "
          f"{len(cfg['unreadable'])} unreadable; written to {a.out}")
    for r in cfg["check"]["flagged_share"]:
        print(f"  {r['corruption']:15s} {r['severity']}  noisy {r['noisy_share']:6.1%}  "
              f"smooth {r['smooth_share']:6.1%}  (n={r['n']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
