"""Shared behaviour of the command-line entry points: user errors become exit code 2."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from neurostack.errors import ArtifactError, InputImageError

USER_ERRORS: tuple[type[Exception], ...] = (
    ArtifactError,
    InputImageError,
    FileNotFoundError,
    ValueError,
)
"""Exceptions that mean bad input or a bad artifact, reported without a traceback."""


def print_record(compute: Callable[[], dict]) -> int:
    """Run ``compute`` and print its record as JSON (exit code 0).

    A :data:`USER_ERRORS` exception is printed to stderr as ``error: <message>``
    and gives exit code 2; anything else propagates (a bug deserves a traceback).
    """
    try:
        record = compute()
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(record, indent=2))
    return 0
