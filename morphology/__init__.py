"""Morphometry of binary tumour masks: one flat record per mask."""

from __future__ import annotations

from morphology.measure import FEATURE_UNITS, SPACING_SOURCES, format_record, measure

__all__ = ["FEATURE_UNITS", "SPACING_SOURCES", "format_record", "measure"]
