r"""A slice's grey-level profile, and a check that it resembles the training slices'.

The classifiers are sensitive to the intensity curve of a slice (a display gamma
of 1.5 costs the ensemble a third of its accuracy in the robustness run), so a
serious tool should say when a slice's grey levels are unlike anything it was
trained on. This module measures that cheaply, without any network:

* :func:`intensity_features`: six log grey-level quantiles of the head crop.
  A display gamma ``g`` (``255 * (x / 255) ** g``) multiplies every feature by
  ``g``; :func:`relative_gamma` reads it back against a reference curve.
* :class:`IntensityReference`: the features of the training slices. A slice's
  *atypicality* is the mean Euclidean distance of its features to its ``k``
  nearest training slices; it is flagged above a threshold fitted on the
  training slices themselves (leave-one-out, a high quantile such as 0.99), so
  about 1 % of slices like the training data are flagged by design.
* :func:`correct_gamma` maps a flagged slice back to the training curve, and
  :func:`corrected_slice` / :func:`network_inputs` decide which slices the
  networks see mapped. The pipeline classifies and outlines a flagged slice from
  that copy and keeps the ensemble's answer on the slice as given beside it
  (measured on validation slices darkened with gamma 2.0: ensemble accuracy
  0.475 as given, 0.900 in the pipeline, ``scripts/intensity_correction.py``;
  segmenter mean Dice 0.178 as given, 0.665 mapped, ``python -m
  segmentation.robustness ... --intensity-reference auto``).
* ``python -m ensemble.intensity``: builds the reference from the training part
  of a split, measures on the validation part how often it fires on unchanged
  slices and under each simulated acquisition shift (:mod:`neurostack.corrupt`),
  and writes a self-describing artifact folder (``features.npz`` + ``config.json``
  with its SHA-256 and those rates).

Example::

    python -m ensemble.intensity ../shared/datasets/brain-tumor-mri/Training \
        --split artifacts/splits/classification_split.csv \
        --out artifacts/classification/intensity_reference
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from neurostack.preprocess import almost_blank, crop, find_brain_box

INTENSITY_QUANTILES: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
"""Quantile levels of the head crop's grey levels used as features."""
FEATURE_COLUMNS: tuple[str, ...] = tuple(f"q{p}" for p in INTENSITY_QUANTILES)
REFERENCE_FOLDER = "intensity_reference"
"""Folder of the reference under ``artifacts/classification``."""
CONFIG_FILE = "config.json"
DEFAULT_K = 10
WARNING_PREFIX = "grey levels unlike the training slices"
"""Start of the warning :meth:`IntensityCheck.warning` gives (to find flagged results)."""
DEFAULT_QUANTILE = 0.99


# ----------------------------------------------------------------------------- features
def crop_features(head: np.ndarray) -> np.ndarray:
    """Log grey-level quantiles of an already cropped head region.

    Args:
        head: ``(h, w)`` uint8 head crop (e.g. ``crop(gray, find_brain_box(gray))``).

    Returns:
        ``(len(INTENSITY_QUANTILES),)`` float64 ``log(q / 255)``, ``q`` clipped to
        ``[1, 255]`` so every value is in ``[log(1/255), 0]``.

    Raises:
        ValueError: If ``head`` is not a non-empty 2-D uint8 array.
    """
    head = np.asarray(head)
    if head.ndim != 2 or head.dtype != np.uint8 or head.size == 0:
        raise ValueError(
            f"head must be a non-empty 2-D uint8 array; received {head.dtype} {head.shape}"
        )
    q = np.quantile(head, INTENSITY_QUANTILES)
    return np.log(np.clip(q, 1.0, 255.0) / 255.0)


def intensity_features(gray: np.ndarray) -> np.ndarray:
    """:func:`crop_features` of a whole ``(H, W)`` uint8 slice (the head box is found first).

    Raises:
        ValueError: If ``gray`` is not a 2-D uint8 array.
    """
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(
            f"gray must be a 2-D uint8 array (H, W); received {gray.dtype} {gray.shape}"
        )
    return crop_features(crop(gray, find_brain_box(gray)))


def relative_gamma(features: np.ndarray, reference: np.ndarray) -> np.ndarray | float:
    """Least-squares gamma ``g`` with ``features ~ g * reference`` (a line through 0).

    Args:
        features: ``(F,)`` or ``(N, F)`` from :func:`intensity_features`.
        reference: ``(F,)`` reference features (e.g. the training slices' median).

    Returns:
        A float for one slice, ``(N,)`` float64 for several: 1 for the reference
        curve, above 1 for darker mid-tones, below 1 for brighter.

    Raises:
        ValueError: On a shape mismatch or an all-zero reference.
    """
    reference = np.asarray(reference, dtype=np.float64)
    features = np.asarray(features, dtype=np.float64)
    if reference.ndim != 1 or features.shape[-1] != reference.shape[0] or features.ndim > 2:
        raise ValueError(
            f"features (F,) or (N, F) must match reference (F,); received {features.shape} "
            f"and {reference.shape}"
        )
    norm = float(reference @ reference)
    if norm == 0.0:
        raise ValueError("reference features are all zero (a white image); cannot fit a gamma")
    g = features @ reference / norm
    return float(g) if np.ndim(g) == 0 else g


def correct_gamma(gray: np.ndarray, gamma: float) -> np.ndarray:
    """Undo a relative gamma: ``255 * (x / 255) ** (1 / gamma)``, rounded to uint8.

    Mapping a slice with :func:`relative_gamma` ``g`` this way gives it the
    reference curve (relative gamma about 1). Pointwise; find the head box of the
    result again (a darkened slice's box is too tight).

    Args:
        gray: uint8 array of any shape.
        gamma: The slice's relative gamma, > 0.

    Raises:
        ValueError: If ``gamma`` is not a positive finite number or ``gray`` not uint8.
    """
    gray = np.asarray(gray)
    if gray.dtype != np.uint8:
        raise ValueError(f"gray must be uint8; received {gray.dtype}")
    if not (np.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a positive finite number; received {gamma!r}")
    lut = np.round(255.0 * (np.arange(256) / 255.0) ** (1.0 / gamma)).astype(np.uint8)
    return lut[gray]


def check_slice(reference: IntensityReference, gray: np.ndarray,
                brain: np.ndarray | None = None) -> IntensityCheck:
    """Check a whole ``(H, W)`` uint8 slice (its head crop, found here unless given)."""
    if brain is None:
        brain = crop(gray, find_brain_box(gray))
    return reference.check(crop_features(brain))


def flagged(check: IntensityCheck | None, gray: np.ndarray) -> bool:
    """Whether the input check warns about a slice: atypical and not almost blank.

    Args:
        check: The slice's :class:`IntensityCheck` (``None``: no reference loaded).
        gray: The ``(H, W)`` uint8 slice (an almost blank one is reported as such,
            not as an intensity problem).
    """
    return check is not None and not check.typical and not almost_blank(gray)


def corrected_slice(gray: np.ndarray, check: IntensityCheck | None) -> np.ndarray | None:
    """Return the slice the networks should see instead of ``gray``, or ``None`` to keep it.

    A :func:`flagged` slice with an invertible curve (relative gamma > 0) is mapped
    to the training curve with :func:`correct_gamma`. Measured on the 286
    validation-patient slices of figshare-seg (shipped Res-UNet at its operating
    point, ``python -m segmentation.robustness ... --split val``): darkened with
    gamma 1.5 / 2.0, mean Dice 0.539 -> 0.662 / 0.178 -> 0.665; unchanged 0.7059 ->
    0.7052 (6 of 286 flagged); brightened, no loss.

    Args:
        gray: ``(H, W)`` uint8 slice.
        check: Its :class:`IntensityCheck`, or ``None``.
    """
    if not flagged(check, gray) or not check.relative_gamma > 0:
        return None
    return correct_gamma(gray, check.relative_gamma)


def network_inputs(grays: Sequence[np.ndarray], reference: IntensityReference | None
                   ) -> tuple[list[np.ndarray], list[bool]]:
    """Return the slices as the pipeline feeds them to a network, and which were mapped.

    Each slice goes through :func:`check_slice` and :func:`corrected_slice`; used by
    the segmentation evaluation and robustness runs so that their records score what
    the pipeline does.

    Args:
        grays: ``(H_i, W_i)`` uint8 slices.
        reference: The input check's reference; ``None`` keeps every slice as it is.

    Returns:
        ``(inputs, corrected)``: one slice and one flag per input, in order.
    """
    if reference is None:
        return list(grays), [False] * len(grays)
    inputs, corrected = [], []
    for gray in grays:
        mapped = corrected_slice(gray, check_slice(reference, gray))
        inputs.append(gray if mapped is None else mapped)
        corrected.append(mapped is not None)
    return inputs, corrected


def resolve_reference(choice: str | Path | None, default: str | Path
                      ) -> tuple[IntensityReference | None, Path | None]:
    """Load the input check's reference an evaluation should apply.

    Args:
        choice: ``"auto"`` (``default`` if that folder exists, else none),
            ``"none"`` / ``None`` (slices as given) or a reference folder.
        default: The reference shipped beside the models being evaluated.

    Returns:
        ``(reference or None, its folder or None)``.

    Raises:
        ArtifactError: If a named folder (or an existing ``auto`` one) is unusable.
    """
    if choice is None or str(choice) == "none":
        return None, None
    path = Path(default) if str(choice) == "auto" else Path(choice)
    if str(choice) == "auto" and not path.is_dir():
        return None, None
    return load_reference(path), path


def correction_record(reference: IntensityReference | None, path: str | Path | None
                      ) -> dict[str, Any] | None:
    """Provenance of the intensity correction an evaluation used (``None``: none)."""
    if reference is None:
        return None
    return {"reference": None if path is None else str(path),
            "features_sha256": reference.config.get("features_sha256"),
            "threshold": reference.threshold,
            "policy": "slices the input check flags are mapped to the training curve "
                      "(ensemble.intensity.corrected_slice) before the network"}


def read_features(
    data_dir: str | Path, rows: pd.DataFrame, *,
    shifts: Sequence[tuple[str, int]] = ((CLEAN, 0),), seed: int = 0, progress: bool = True,
) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Intensity features of every readable slice of ``rows``, unchanged and shifted.

    Args:
        data_dir: Root the ``path`` column is relative to.
        rows: ``path``, ``label`` and ``split`` columns.
        shifts: ``(corruption, severity)`` pairs of :mod:`neurostack.corrupt`
            (``("none", 0)`` = unchanged); each slice is measured under each.
        seed: Seed of the random corruptions (per slice and condition).
        progress: Show a progress bar.

    Returns:
        ``(features, failures)``: one row per readable slice and shift (``path``,
        ``label``, ``split``, ``corruption``, ``severity`` and
        :data:`FEATURE_COLUMNS`); ``{"path", "error"}`` for each unreadable file
        (the others are still measured).
    """
    data_dir = Path(data_dir)
    out, failures = [], []
    for row in tqdm(rows.itertuples(), total=len(rows), desc="intensity", unit="img",
                    disable=not progress):
        try:
            gray = load_image(data_dir / row.path).gray
            measured = []
            for name, severity in shifts:
                rng_seed = slice_seed(row.path, name, severity, seed)
                shifted = gray if name == CLEAN else corrupt(gray, name, severity, rng_seed)
                measured.append((name, severity, intensity_features(shifted)))
        except (InputImageError, OSError, ValueError) as exc:
            failures.append({"path": row.path, "error": str(exc)})
            continue
        for name, severity, feats in measured:
            out.append({"path": row.path, "label": row.label, "split": row.split,
                        "corruption": name, "severity": severity,
                        **dict(zip(FEATURE_COLUMNS, feats, strict=True))})
    columns = ["path", "label", "split", "corruption", "severity", *FEATURE_COLUMNS]
    return pd.DataFrame(out, columns=columns), failures


# ---------------------------------------------------------------------------- reference
@dataclass(frozen=True)
class IntensityCheck:
    """How one slice's grey levels compare with the training slices'.

    Attributes:
        atypicality: Mean feature distance to the ``k`` nearest training slices.
        threshold: Atypicality above which the slice is flagged.
        relative_gamma: The slice's gamma relative to the training median curve.
    """

    atypicality: float
    threshold: float
    relative_gamma: float

    @property
    def typical(self) -> bool:
        """``True`` unless the atypicality exceeds the threshold."""
        return self.atypicality <= self.threshold

    def warning(self) -> str | None:
        """Return a user-facing warning for an atypical slice, ``None`` for a typical one."""
        if self.typical:
            return None
        tone = "darker" if self.relative_gamma > 1 else "brighter"
        return (
            f"{WARNING_PREFIX} (atypicality {self.atypicality:.3f} > "
            f"{self.threshold:.3f}; mid-tones {tone} than usual, relative gamma "
            f"{self.relative_gamma:.2f}): the classifiers are sensitive to the intensity "
            "curve, so check how the slice was exported or windowed"
        )


class IntensityReference:
    """Training slices' intensity features with a fitted flag threshold.

    Args:
        features: ``(N, F)`` features of the reference (training) slices.
        k: Neighbours averaged by :meth:`atypicality`.
        threshold: Atypicality above which :meth:`check` flags a slice.
        config: The artifact's ``config.json`` content (provenance), if loaded.

    Raises:
        ValueError: On an empty or non-2-D feature array, ``k`` not in ``[1, N-1]``
            or a negative threshold.
    """

    def __init__(self, features: np.ndarray, k: int, threshold: float,
                 config: dict[str, Any] | None = None) -> None:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != len(INTENSITY_QUANTILES):
            raise ValueError(f"features must be (N, {len(INTENSITY_QUANTILES)}); "
                             f"received {features.shape}")
        if not 1 <= k < len(features):
            raise ValueError(f"k must be in [1, {len(features) - 1}]; received {k!r}")
        if not threshold >= 0:
            raise ValueError(f"threshold must be >= 0; received {threshold!r}")
        self.features = features
        self.k = int(k)
        self.threshold = float(threshold)
        self.config = dict(config or {})
        self.median = np.median(features, axis=0)

    def atypicality(self, features: np.ndarray, *, exclude_self: bool = False) -> np.ndarray:
        """Mean distance of each row of ``features`` to its ``k`` nearest reference slices.

        Args:
            features: ``(M, F)`` (or ``(F,)``) features.
            exclude_self: Drop the single nearest neighbour (use when ``features``
                are the reference slices themselves: leave-one-out).

        Returns:
            ``(M,)`` float64 atypicality.
        """
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if x.shape[1] != self.features.shape[1]:
            raise ValueError(f"features must have {self.features.shape[1]} columns; "
                             f"received {x.shape}")
        k = self.k + int(exclude_self)
        out = np.empty(len(x))
        for start in range(0, len(x), 512):  # bounded memory: 512 x N distances at a time
            block = x[start:start + 512]
            d2 = ((block[:, None, :] - self.features[None, :, :]) ** 2).sum(-1)
            near = np.sqrt(np.partition(d2, k - 1, axis=1)[:, :k])
            near.sort(axis=1)
            out[start:start + len(block)] = near[:, int(exclude_self):].mean(1)
        return out

    def check(self, features: np.ndarray) -> IntensityCheck:
        """Compare one slice's ``(F,)`` features with the reference."""
        return IntensityCheck(
            atypicality=float(self.atypicality(features)[0]), threshold=self.threshold,
            relative_gamma=float(relative_gamma(np.asarray(features, float), self.median)),
        )


def fit_reference(features: np.ndarray, *, k: int = DEFAULT_K,
                  quantile: float = DEFAULT_QUANTILE) -> IntensityReference:
    """Fit a reference: threshold = ``quantile`` of its slices' leave-one-out atypicality.

    Raises:
        ValueError: If ``quantile`` is not in ``(0, 1)`` (or as :class:`IntensityReference`).
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1); received {quantile!r}")
    ref = IntensityReference(features, k, 0.0)
    loo = ref.atypicality(ref.features, exclude_self=True)
    return IntensityReference(ref.features, k, float(np.quantile(loo, quantile)))


def save_reference(ref: IntensityReference, folder: str | Path,
                   provenance: dict[str, Any]) -> Path:
    """Write ``features.npz`` and ``config.json`` (with the SHA-256 and ``provenance``)."""
    return write_features_artifact(folder, ref.features.astype(np.float32), {
        "kind": "intensity reference",
        "features": "log(q / 255) of the head crop's grey-level quantiles",
        "quantiles": list(INTENSITY_QUANTILES),
        "k": ref.k,
        "threshold": ref.threshold,
        "n_reference": len(ref.features),
        **provenance,
    })


def load_reference(folder: str | Path) -> IntensityReference:
    """Load a reference folder, verifying the features' SHA-256 first.

    Raises:
        ArtifactError: If the folder, config or features are missing or corrupt,
            or were made with other quantile levels; the message names the file.
    """
    features, config = read_features_artifact(folder, ("quantiles", "k", "threshold"))
    if tuple(config["quantiles"]) != INTENSITY_QUANTILES:
        raise ArtifactError(f"{Path(folder) / CONFIG_FILE}: quantiles {config['quantiles']} "
                            f"differ from this version's {list(INTENSITY_QUANTILES)}")
    try:
        return IntensityReference(features, int(config["k"]), float(config["threshold"]), config)
    except ValueError as exc:
        raise ArtifactError(f"{folder}: unusable intensity reference: {exc}") from None


def describe_reference(config: dict[str, Any], *, notable: float = 0.10) -> str:
    """One Markdown paragraph on what a reference's ``config.json`` says it catches.

    Conditions flagged in at least ``notable`` of the checked slices are named with
    their rates; the others are summarised by their largest rate.
    """
    from neurostack.corrupt import CORRUPTIONS

    rates = config.get("check", {}).get("flagged_share", [])
    clean = next((r for r in rates if r["corruption"] == CLEAN), None)
    text = (
        f"Each slice's grey levels are compared with those of {config['n_reference']} "
        f"training slices; it is flagged above atypicality {config['threshold']:.3f} (the "
        f"{config.get('quantile', DEFAULT_QUANTILE):.0%} point of the training slices "
        "themselves)."
    )
    if clean is None:
        return text
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in rates:
        if r["corruption"] != CLEAN:
            by_name.setdefault(r["corruption"], []).append(r)
    caught = {n: rs for n, rs in by_name.items() if max(r["flagged_share"] for r in rs) >= notable}
    rest = [r["flagged_share"] for n, rs in by_name.items() if n not in caught for r in rs]
    text += (f" On {clean['n']} {config['check']['part']} slices it flagged "
             f"{clean['flagged_share']:.1%} as they are")
    for name, rs in caught.items():
        label = CORRUPTIONS[name].description if name in CORRUPTIONS else name
        ordered = sorted(rs, key=lambda r: r["severity"])
        shares = " / ".join(f"{r['flagged_share']:.1%}" for r in ordered)
        text += f"; {shares} under {label}"
    if rest:
        text += f"; at most {max(rest):.1%} under each of the other simulated shifts"
    return text + "."


# ---------------------------------------------------------------------------- build + CLI
def flag_rates(ref: IntensityReference, features: pd.DataFrame) -> pd.DataFrame:
    """Share of slices flagged per ``(corruption, severity)`` of :func:`read_features` rows."""
    flagged = ref.atypicality(features[list(FEATURE_COLUMNS)].to_numpy()) > ref.threshold
    table = features.assign(flagged=flagged).groupby(["corruption", "severity"], sort=False)
    return table["flagged"].agg(n="size", flagged_share="mean").reset_index()


def build(
    data_dir: str | Path, split_csv: str | Path, out: str | Path, *,
    k: int = DEFAULT_K, quantile: float = DEFAULT_QUANTILE, fit_part: str = "train",
    check_part: str = "val", check_per_class: int = 50, seed: int = 0, progress: bool = True,
) -> dict[str, Any]:
    """Fit the reference on ``fit_part``, measure its flag rates on ``check_part``, save it.

    ``check_per_class`` slices per class of ``check_part`` are measured unchanged and
    under every corruption of :mod:`neurostack.corrupt` at severities 1 and 2.

    Returns:
        The written ``config.json`` content.
    """
    from ensemble.robustness import sample_rows

    t0 = time.perf_counter()
    if fit_part == check_part:
        raise ValueError(f"fit and check parts must differ; received {fit_part!r} twice")
    fit_rows = load_split(split_csv, fit_part)
    check_rows = sample_rows(load_split(split_csv, check_part), check_per_class, seed)
    fit_feats, fit_fail = read_features(data_dir, fit_rows, progress=progress)
    ref = fit_reference(fit_feats[list(FEATURE_COLUMNS)].to_numpy(), k=k, quantile=quantile)
    check_feats, check_fail = read_features(
        data_dir, check_rows.assign(split=check_part), shifts=conditions(), seed=seed,
        progress=progress)
    rates = flag_rates(ref, check_feats)
    provenance = {
        "split": str(split_csv), "fit_part": fit_part, "quantile": quantile,
        "check": {
            "part": check_part, "per_class": check_per_class, "seed": seed,
            "flagged_share": [
                {"corruption": r.corruption, "severity": int(r.severity), "n": int(r.n),
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
    """Command line: ``python -m ensemble.intensity DATA --split CSV --out FOLDER``."""
    p = reference_parser(__doc__.split("\n\n")[0])
    p.add_argument("--k", type=int, default=DEFAULT_K, help="neighbours averaged")
    p.add_argument("--quantile", type=float, default=DEFAULT_QUANTILE,
                   help="share of training slices below the flag threshold")
    a = p.parse_args(argv)
    try:
        cfg = build(a.data_dir, a.split, a.out, k=a.k, quantile=a.quantile,
                    check_per_class=a.check_per_class)
    except (ValueError, FileNotFoundError, ArtifactError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"reference of {cfg['n_reference']} slices, threshold {cfg['threshold']:.4f}; "
          f"{len(cfg['unreadable'])} unreadable; written to {a.out}")
    for r in cfg["check"]["flagged_share"]:
        print(f"  {r['corruption']:>14} {r['severity']}: {r['flagged_share']:.1%} of {r['n']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
