"""Pure image renderings for display and download: green overlay, binary mask image, heatmaps."""

from __future__ import annotations

import cv2
import numpy as np

GREEN = (0, 255, 0)


def mask_image(mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool mask -> ``(H, W)`` uint8 image, tumour 255 (white) on 0 (black)."""
    return np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8)


def overlay_mask(
    display: np.ndarray,
    mask: np.ndarray,
    *,
    color: tuple[int, int, int] = GREEN,
    alpha: float = 0.35,
    contour_px: int = 2,
) -> np.ndarray:
    """Blend ``color`` into ``display`` inside ``mask`` and draw the mask outline.

    Args:
        display: ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` greyscale) original.
        mask: ``(H, W)`` bool mask on the same grid.
        color: RGB colour of the fill and the outline.
        alpha: Fill opacity in [0, 1].
        contour_px: Outline thickness in pixels (0: no outline).

    Returns:
        ``(H, W, 3)`` uint8 RGB image; the original is not modified.
    """
    rgb = display if display.ndim == 3 else np.repeat(display[..., None], 3, axis=-1)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {rgb.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; received {alpha}")
    out = rgb.astype(np.float32).copy()
    col = np.array(color, dtype=np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * col
    out = np.clip(out, 0, 255).astype(np.uint8)
    if contour_px > 0 and mask.any():
        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
        )
        out = np.ascontiguousarray(out)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), contour_px)
    return out


def heatmap_overlay(display: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a heatmap in ``[0, 1]`` (JET colour map) onto an image, in proportion to the heat.

    Zero heat leaves a pixel unchanged, so a map that is near 0 everywhere shows
    the image as it is (Grad-CAM maps, the segmenter's tumour probabilities).

    Args:
        display: ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` greyscale) original.
        heat: ``(H, W)`` values in ``[0, 1]`` on the same grid.
        alpha: Opacity of the colour where the heat is 1, in ``[0, 1]``.

    Returns:
        ``(H, W, 3)`` uint8 RGB image; the original is not modified.

    Raises:
        ValueError: If the shapes differ or ``alpha`` is outside ``[0, 1]``.
    """
    heat = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)
    rgb = display if display.ndim == 3 else np.repeat(display[..., None], 3, axis=-1)
    if heat.shape != rgb.shape[:2]:
        raise ValueError(f"heat shape {heat.shape} differs from image shape {rgb.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; received {alpha}")
    colored = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colored = cv2.cvtColor(colored, cv2.COLOR_BGR2RGB).astype(np.float32)
    weight = alpha * heat[..., None]
    out = (1 - weight) * rgb.astype(np.float32) + weight * colored
    return np.clip(out, 0, 255).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """Encode an RGB or greyscale uint8 array as PNG bytes."""
    arr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def colourfulness(display: np.ndarray) -> float:
    """Mean absolute difference between colour channels (0 for a pure greyscale image)."""
    if display.ndim != 3:
        return 0.0
    d = display.astype(np.int16)
    return float((np.abs(d[..., 0] - d[..., 1]) + np.abs(d[..., 1] - d[..., 2])).mean() / 2)
