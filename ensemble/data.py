"""Classification data: listing, duplicate-aware split, cached arrays, augmentation.

The split groups exact copies (same bytes) and near-duplicates (perceptual
hash within a Hamming distance) so that no group straddles train/val/test,
and stratifies by class. It is written to a CSV of paths relative to the
dataset root, which training, stacking and evaluation all reuse.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from neurostack import CLASS_NAMES
from neurostack.errors import InputImageError
from neurostack.imaging import load_image
from neurostack.preprocess import crop, find_brain_box, resize_square

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".dcm"}
DEFAULT_CACHE = Path.home() / ".cache" / "neurostack" / "classification"


def list_class_folder(root: str | Path, classes: tuple[str, ...] = CLASS_NAMES) -> pd.DataFrame:
    """List images of a dataset laid out as ``root/<class>/<file>``.

    Returns:
        DataFrame with columns ``path`` (relative to root, POSIX) and ``label``,
        sorted by path.

    Raises:
        ValueError: If none of the class folders exist.
    """
    root = Path(root)
    rows = []
    found = [c for c in classes if (root / c).is_dir()]
    if not found:
        raise ValueError(f"{root} has none of the class folders {list(classes)}")
    for label in found:
        for p in sorted((root / label).rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                rows.append({"path": p.relative_to(root).as_posix(), "label": label})
    return pd.DataFrame(rows).sort_values("path", ignore_index=True)


def _phash_bits(gray: np.ndarray) -> np.uint64:
    import imagehash
    from PIL import Image

    h = imagehash.phash(Image.fromarray(gray), hash_size=8)
    bits = h.hash.flatten()
    return np.uint64(int("".join("1" if b else "0" for b in bits), 2))


def _popcount64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    count = np.zeros(x.shape, dtype=np.uint8)
    for shift in range(0, 64, 8):
        count += _POP8[((x >> np.uint64(shift)) & np.uint64(0xFF)).astype(np.uint8)]
    return count


_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class DuplicateReport:
    """Counts describing the duplicate grouping."""

    n_images: int
    exact_groups: int
    exact_images: int
    near_groups: int
    near_images: int
    groups: int
    cross_class_groups: int
    max_hamming: int


def find_duplicate_groups(
    root: str | Path, paths: list[str], *, max_hamming: int = 4
) -> tuple[np.ndarray, np.ndarray, DuplicateReport]:
    """Group exact and near-duplicate images.

    Exact duplicates share a SHA-256 of their bytes. Near-duplicates have 64-bit
    perceptual hashes (of the canonical greyscale) within ``max_hamming`` bits.

    Returns:
        ``(group_ids, phashes, report)``; ``group_ids[i]`` is the smallest index in
        image ``i``'s group.
    """
    root = Path(root)
    n = len(paths)
    digests: list[str] = []
    hashes = np.zeros(n, dtype=np.uint64)
    for i, rel in enumerate(tqdm(paths, desc="hashing", unit="img")):
        data = (root / rel).read_bytes()
        digests.append(hashlib.sha256(data).hexdigest())
        try:
            hashes[i] = _phash_bits(load_image(data).gray)
        except InputImageError:
            hashes[i] = np.uint64(i) * np.uint64(0x9E3779B97F4A7C15)  # unique, never near
    uf_exact = _UnionFind(n)
    first: dict[str, int] = {}
    for i, d in enumerate(digests):
        if d in first:
            uf_exact.union(first[d], i)
        else:
            first[d] = i
    uf = _UnionFind(n)
    for i in range(n):
        uf.union(uf_exact.find(i), i)
    for i in range(n - 1):
        dist = _popcount64(hashes[i + 1 :] ^ hashes[i])
        for j in np.nonzero(dist <= max_hamming)[0]:
            uf.union(i, i + 1 + int(j))
    groups = np.array([uf.find(i) for i in range(n)])
    exact = np.array([uf_exact.find(i) for i in range(n)])
    ex_ids, ex_counts = np.unique(exact, return_counts=True)
    gr_ids, gr_counts = np.unique(groups, return_counts=True)
    report = DuplicateReport(
        n_images=n,
        exact_groups=int((ex_counts > 1).sum()),
        exact_images=int(ex_counts[ex_counts > 1].sum()),
        near_groups=int((gr_counts > 1).sum()),
        near_images=int(gr_counts[gr_counts > 1].sum()),
        groups=len(gr_ids),
        cross_class_groups=0,
        max_hamming=max_hamming,
    )
    return groups, hashes, report


def make_split(
    df: pd.DataFrame,
    groups: np.ndarray,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 42,
) -> pd.DataFrame:
    """Assign each row to train/val/test, keeping groups whole and classes balanced.

    Groups are assigned greedily, largest first, to the part of their majority
    class furthest below its target share, with seeded tie-breaking.

    Returns:
        Copy of ``df`` with ``group`` and ``split`` columns.
    """
    if not 0 < val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(
            "val_fraction and test_fraction must be in (0, 1) with a sum below 1; "
            f"received {val_fraction} and {test_fraction}"
        )
    out = df.copy()
    out["group"] = groups
    rng = np.random.default_rng(seed)
    targets = {
        "train": 1 - val_fraction - test_fraction,
        "val": val_fraction,
        "test": test_fraction,
    }
    class_totals = out["label"].value_counts().to_dict()
    filled = {(c, s): 0 for c in class_totals for s in targets}
    info = out.groupby("group")["label"].agg(lambda s: s.value_counts().index[0]).rename("major")
    sizes = out.groupby("group").size().rename("size")
    order = pd.concat([info, sizes], axis=1)
    order["tiebreak"] = rng.random(len(order))
    order = order.sort_values(["size", "tiebreak"], ascending=[False, True])
    assignment: dict[int, str] = {}
    for gid, row in order.iterrows():
        c = row["major"]
        deficits = {s: targets[s] - filled[(c, s)] / class_totals[c] for s in targets}
        part = max(deficits, key=lambda s: (deficits[s], targets[s]))
        assignment[gid] = part
        filled[(c, part)] += int(row["size"])
    out["split"] = out["group"].map(assignment)
    return out


def load_split(split_csv: str | Path, part: str | None = None) -> pd.DataFrame:
    """Read a split CSV (``path, label, group, split``), optionally one part."""
    df = pd.read_csv(split_csv)
    if part is not None:
        allowed = sorted(df["split"].unique())
        if part not in allowed:
            raise ValueError(f"split part must be one of {allowed}; received {part!r}")
        df = df[df["split"] == part].reset_index(drop=True)
    return df


def preprocess_gray(gray: np.ndarray, size: int) -> np.ndarray:
    """Brain crop then resize to ``size x size``: the classifiers' geometric preprocessing."""
    return resize_square(crop(gray, find_brain_box(gray)), size)


def cached_arrays(
    root: str | Path,
    paths: list[str],
    size: int,
    cache_dir: str | Path = DEFAULT_CACHE,
    *,
    transform: Callable[[np.ndarray, str], np.ndarray] | None = None,
    transform_id: str = "",
) -> np.ndarray:
    """Return ``(N, size, size)`` uint8 brain crops, computed once and cached as ``.npy``.

    The cache key hashes the dataset root, the file list and the size; an
    unreadable file raises :class:`InputImageError` naming it (nothing is cached).
    ``transform(gray, relative_path) -> gray`` (e.g. seeded noise) is applied to
    each whole slice before the crop, as an acquisition change would be;
    ``transform_id`` must then name it uniquely, since it joins the key.

    Raises:
        ValueError: If ``transform`` is given without ``transform_id``.
    """
    if transform is not None and not transform_id:
        raise ValueError("transform_id must name the transform; received ''")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    ident = f"{Path(root).resolve()}|" + "\n".join(paths) + f"|{size}|crop-v1"
    if transform is not None:
        ident += f"|{transform_id}"
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]
    target = cache_dir / f"crops_{size}_{key}.npy"
    if target.exists():
        return np.load(target, mmap_mode="r")
    out = np.zeros((len(paths), size, size), dtype=np.uint8)
    for i, rel in enumerate(tqdm(paths, desc=f"caching {size}px crops", unit="img")):
        try:
            gray = load_image(Path(root) / rel).gray
        except InputImageError as exc:  # name the file: the list is thousands long
            raise InputImageError(f"{rel}: {exc}") from exc
        if transform is not None:
            gray = transform(gray, rel)
        out[i] = preprocess_gray(gray, size)
    tmp = target.with_suffix(f".{os.getpid()}.tmp.npy")  # concurrent runs: no shared tmp
    np.save(tmp, out)
    tmp.replace(target)
    return out


def label_indices(labels: pd.Series | list[str]) -> np.ndarray:
    """Map class names to indices in :data:`CLASS_NAMES` order."""
    lookup = {c: i for i, c in enumerate(CLASS_NAMES)}
    unknown = sorted(set(labels) - set(lookup))
    if unknown:
        raise ValueError(f"labels must be in {list(CLASS_NAMES)}; received {unknown}")
    return np.array([lookup[c] for c in labels], dtype=np.int32)
