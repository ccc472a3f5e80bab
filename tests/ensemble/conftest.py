"""Fixtures shared by the ``ensemble`` tests."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest


@pytest.fixture()
def dataset_with_broken_file(
    class_dataset: Path, class_dataset_split: Path, tmp_path: Path
) -> Callable[[str], tuple[Path, str]]:
    """Factory: copy :func:`class_dataset` and overwrite the first file of split ``part``.

    Returns ``(data_dir, broken_relative_path)``.
    """

    def make(part: str) -> tuple[Path, str]:
        data = shutil.copytree(class_dataset, tmp_path / "data")
        split = pd.read_csv(class_dataset_split)
        broken = split[split.split == part].path.iloc[0]
        (data / broken).write_bytes(b"not an image")
        return data, broken

    return make
