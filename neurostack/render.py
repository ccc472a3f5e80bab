"""Pure image renderings for display and download: green overlay, binary mask image."""

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
