"""The project's exception types."""

from __future__ import annotations


class NeuroStackError(Exception):
    """Base class of every error the library raises on purpose."""


class InputImageError(NeuroStackError, ValueError):
    """An input file or array cannot be analysed; the message says why."""


class ArtifactError(NeuroStackError):
    """A trained artifact is missing, incomplete or fails its checksum."""
