"""NeuroStack shared core: image input, preprocessing, artifacts and the pipeline."""

from __future__ import annotations

__version__ = "0.1.0"

CLASS_NAMES: tuple[str, ...] = ("glioma", "meningioma", "notumor", "pituitary")
"""Class order used by every classifier, file and table in the project."""
