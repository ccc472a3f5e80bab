"""Shared behaviour of the command-line entry points: user errors become exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

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


def reference_parser(description: str) -> argparse.ArgumentParser:
    """Parser with the arguments every input-check reference builder takes.

    ``data_dir`` (root of the split's paths), ``--split`` (CSV with ``path, label,
    split``), ``--out`` (artifact folder) and ``--check-per-class`` (validation slices
    per class measured under each simulated shift).
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("data_dir", type=Path, help="root the split's paths are relative to")
    p.add_argument("--split", type=Path, required=True, help="split CSV (path, label, split)")
    p.add_argument("--out", type=Path, required=True, help="artifact folder to write")
    p.add_argument("--check-per-class", type=int, default=50,
                   help="validation slices per class measured under each shift")
    return p


def report_errors(action: Callable[[], object]) -> int:
    """Run ``action`` (which prints its own output); exit code 0, or 2 on a user error.

    A :data:`USER_ERRORS` exception is printed to stderr as ``error: <message>``;
    anything else propagates.
    """
    try:
        action()
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def fit_score_parser(description: str, inputs: str, inputs_help: str, default_artifacts: Path,
                     *, many: bool = False) -> argparse.ArgumentParser:
    """Parser of a ``fit`` (on validation records) / ``score`` (report on others) command.

    Args:
        description: The program's description.
        inputs: Name of the positional record argument(s).
        inputs_help: Its help text.
        default_artifacts: Default of ``--artifacts`` (where the record lives).
        many: Accept one or more records instead of exactly one.
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("command", choices=["fit", "score"])
    p.add_argument(inputs, type=Path, nargs="+" if many else None, help=inputs_help)
    p.add_argument("--artifacts", type=Path, default=default_artifacts)
    return p
