"""Controlled acquisition shifts of a greyscale slice, for robustness evaluation.

Each corruption maps an ``(H, W)`` uint8 slice to a uint8 slice of the same
shape, at an integer ``severity`` of 1 (moderate) or 2 (strong); severity 0 is
the identity. Parameters scale with the image size where they are lengths
(stated for a 512-pixel slice), and random ones are drawn from a seeded
generator so that a robustness run is reproducible.

The shifts stand in for what differs between scanners and sites: contrast and
windowing (gamma), thermal noise (Rician, as in magnitude MR images), coil
intensity inhomogeneity (a smooth multiplicative bias field), lower
acquisition matrix (down- and up-sampling), blur, and head rotation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

SEVERITIES = (1, 2)
"""Severity levels of every corruption (0 is the unchanged slice)."""

CLEAN = "none"
"""Name of the unchanged condition (severity 0) in robustness tables."""


@dataclass(frozen=True)
class Corruption:
    """One acquisition shift.

    Attributes:
        name: Registry key.
        description: What is changed, with the parameter at each severity.
        levels: The parameter at severity 1 and 2.
        apply: ``(gray, parameter, rng) -> gray``.
    """

    name: str
    description: str
    levels: tuple[float, float]
    apply: Callable[[np.ndarray, float, np.random.Generator], np.ndarray]
    geometric: bool = False
    """Moves pixels (a mask must move with the image, see :func:`corrupt_mask`)."""


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _gamma(gray: np.ndarray, gamma: float, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(255.0 * (gray.astype(np.float64) / 255.0) ** gamma)


def _rician(gray: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    x = gray.astype(np.float64)
    real = x + rng.normal(0.0, sigma, x.shape)
    imag = rng.normal(0.0, sigma, x.shape)
    return _to_uint8(np.hypot(real, imag))


def _bias_field(gray: np.ndarray, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    h, w = gray.shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    terms = np.stack([xx, yy, xx * yy, xx**2, yy**2])
    field = np.tensordot(rng.uniform(-1.0, 1.0, len(terms)), terms, axes=1)
    peak = np.abs(field).max()
    field = field / peak if peak > 0 else field
    return _to_uint8(gray.astype(np.float64) * np.exp(np.log1p(amplitude) * field))


def _lowres(gray: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    h, w = gray.shape
    small = cv2.resize(gray, (max(1, round(w / factor)), max(1, round(h / factor))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _blur(gray: np.ndarray, sigma_512: float, rng: np.random.Generator) -> np.ndarray:
    sigma = sigma_512 * max(gray.shape) / 512.0
    return cv2.GaussianBlur(gray, (0, 0), sigmaX=sigma, sigmaY=sigma)


def _rotate(gray: np.ndarray, degrees: float, rng: np.random.Generator,
            interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    h, w = gray.shape
    angle = degrees if rng.random() < 0.5 else -degrees
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)
    return cv2.warpAffine(gray, m, (w, h), flags=interpolation, borderValue=0)


CORRUPTIONS: dict[str, Corruption] = {
    c.name: c
    for c in (
        Corruption("gamma_dark", "intensity gamma 1.5 / 2.0 (darker mid-tones)", (1.5, 2.0),
                   _gamma),
        Corruption("gamma_bright", "intensity gamma 0.67 / 0.5 (brighter mid-tones)",
                   (1 / 1.5, 0.5), _gamma),
        Corruption("rician_noise", "Rician noise, sigma 8 / 16 grey levels", (8.0, 16.0),
                   _rician),
        Corruption("bias_field", "smooth multiplicative bias field, up to +-20 % / +-40 %",
                   (0.2, 0.4), _bias_field),
        Corruption("low_resolution", "down-sampled by 2 / 4 and back (256 / 128 matrix)",
                   (2.0, 4.0), _lowres),
        Corruption("blur", "Gaussian blur, sigma 1 / 2 px at 512 px", (1.0, 2.0), _blur),
        Corruption("rotation", "in-plane rotation by 10 / 20 degrees (sign random)",
                   (10.0, 20.0), _rotate, geometric=True),
    )
}
"""Registry: name -> :class:`Corruption`."""


def _check(name: str, severity: int) -> Corruption:
    if name not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {sorted(CORRUPTIONS)}; received {name!r}")
    if severity not in (0, *SEVERITIES):
        raise ValueError(f"severity must be one of {[0, *SEVERITIES]}; received {severity!r}")
    return CORRUPTIONS[name]


def corrupt(gray: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Apply corruption ``name`` at ``severity`` to a slice.

    Args:
        gray: ``(H, W)`` uint8 slice.
        name: A key of :data:`CORRUPTIONS`.
        severity: 0 (unchanged copy) or one of :data:`SEVERITIES`.
        seed: Seed for the random parts (noise, bias field, rotation sign).

    Returns:
        ``(H, W)`` uint8 slice.

    Raises:
        ValueError: On an unknown name or severity, or a slice that is not 2-D uint8.
    """
    c = _check(name, severity)
    if severity == 0:
        return _checked_gray(gray).copy()
    return apply_corruption(gray, name, c.levels[severity - 1], seed)


def _checked_gray(gray: np.ndarray) -> np.ndarray:
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"gray must be a 2-D uint8 array; received {gray.dtype} {gray.shape}")
    return gray


def apply_corruption(gray: np.ndarray, name: str, parameter: float, seed: int = 0) -> np.ndarray:
    """Apply corruption ``name`` with an explicit parameter instead of a severity level.

    Training-time augmentation draws the parameter (e.g. a noise sigma) per slice;
    :func:`corrupt` uses the two fixed levels of the robustness tables.

    Args:
        gray: ``(H, W)`` uint8 slice.
        name: A key of :data:`CORRUPTIONS`.
        parameter: In the corruption's own unit (see its ``description``).
        seed: Seed for the random parts.

    Returns:
        ``(H, W)`` uint8 slice.

    Raises:
        ValueError: On an unknown name or a slice that is not 2-D uint8.
    """
    c = _check(name, 1)
    return c.apply(_checked_gray(gray), float(parameter), np.random.default_rng(seed))


def corrupt_mask(mask: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Move a ground-truth mask with its slice: ``corrupt(gray, ...)`` and this agree.

    Intensity corruptions leave the mask unchanged; geometric ones (rotation)
    apply the same transform, drawn from the same ``seed``, with nearest-neighbour
    interpolation.

    Args:
        mask: ``(H, W)`` bool mask.
        name: The corruption given to :func:`corrupt` for the slice.
        severity: Its severity.
        seed: Its seed.

    Returns:
        ``(H, W)`` bool mask.
    """
    c = _check(name, severity)
    mask = np.asarray(mask, dtype=bool)
    if severity == 0 or not c.geometric:
        return mask.copy()
    moved = _rotate(mask.astype(np.uint8), c.levels[severity - 1], np.random.default_rng(seed),
                    interpolation=cv2.INTER_NEAREST)
    return moved.astype(bool)


def slice_seed(key: str, name: str, severity: int, seed: int = 0) -> int:
    """Return a stable seed for one slice and condition (same on every run and machine).

    Args:
        key: The slice's identity, e.g. its relative path or id.
        name: The corruption.
        severity: Its severity.
        seed: Base seed of the run.
    """
    digest = hashlib.sha256(f"{seed}|{name}|{severity}|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def conditions(names: list[str] | None = None) -> list[tuple[str, int]]:
    """List the clean condition then every ``(corruption, severity)`` of ``names`` (default: all).

    Raises:
        ValueError: Naming an unknown corruption and the allowed ones.
    """
    names = sorted(CORRUPTIONS) if names is None else list(names)
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        raise ValueError(f"corruptions must be among {sorted(CORRUPTIONS)}; received {unknown}")
    return [(CLEAN, 0)] + [(n, s) for n in names for s in SEVERITIES]
