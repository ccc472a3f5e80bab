"""Dataset listing, duplicate-aware split, split CSV, cached crops, label indices."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ensemble.data import (
    cached_arrays,
    find_duplicate_groups,
    label_indices,
    list_class_folder,
    load_split,
    make_split,
    preprocess_gray,
)
from ensemble.split import run_split
from neurostack import CLASS_NAMES
from neurostack.errors import InputImageError
from neurostack.imaging import load_image

N_PER_CLASS = 20


@pytest.fixture(scope="module")
def dup_dataset(make_dataset_dir) -> dict:
    """20 generated slices per class plus planted duplicates.

    * ``glioma/glioma_000.png`` is copied byte for byte to ``glioma/copy_exact.png``;
    * ``meningioma/meningioma_003.png`` is resized to 90 % and re-encoded as JPEG
      (``meningioma/copy_near.jpg``);
    * ``pituitary/pituitary_005.png`` is copied byte for byte into ``notumor/`` (label noise).
    """
    root = make_dataset_dir(N_PER_CLASS, seed=2)
    shutil.copy(root / "glioma/glioma_000.png", root / "glioma/copy_exact.png")
    src = Image.open(root / "meningioma/meningioma_003.png")
    src.resize((115, 115), Image.BILINEAR).save(root / "meningioma/copy_near.jpg", quality=75)
    shutil.copy(root / "pituitary/pituitary_005.png", root / "notumor/cross_class.png")
    df = list_class_folder(root)
    groups, hashes, report = find_duplicate_groups(root, df["path"].tolist())
    return {"root": root, "df": df, "groups": groups, "hashes": hashes, "report": report}


PAIRS = [
    ("glioma/glioma_000.png", "glioma/copy_exact.png"),
    ("meningioma/meningioma_003.png", "meningioma/copy_near.jpg"),
    ("pituitary/pituitary_005.png", "notumor/cross_class.png"),
]


def _group_of(d: dict, path: str) -> int:
    return int(d["groups"][d["df"].index[d["df"]["path"] == path][0]])


def _expected_partition(root: Path, paths: list[str], max_hamming: int = 4) -> set[frozenset]:
    """Groups computed independently: same bytes, or imagehash pHash distance <= max_hamming."""
    import hashlib

    import imagehash

    n = len(paths)
    digest = [hashlib.sha256((root / p).read_bytes()).hexdigest() for p in paths]
    ph = [imagehash.phash(Image.fromarray(load_image(root / p).gray)) for p in paths]
    adj = {
        i: {
            j
            for j in range(n)
            if j != i and (digest[i] == digest[j] or ph[i] - ph[j] <= max_hamming)
        }
        for i in range(n)
    }
    seen, parts = set(), set()
    for i in range(n):  # connected components
        if i in seen:
            continue
        comp, stack = set(), [i]
        while stack:
            k = stack.pop()
            if k not in comp:
                comp.add(k)
                stack.extend(adj[k] - comp)
        seen |= comp
        parts.add(frozenset(comp))
    return parts


def test_duplicate_groups(dup_dataset) -> None:
    d = dup_dataset
    n = 4 * N_PER_CLASS + 3
    assert len(d["df"]) == n
    for a, b in PAIRS:
        assert _group_of(d, a) == _group_of(d, b), (a, b)
    got = {frozenset(np.nonzero(d["groups"] == g)[0].tolist()) for g in np.unique(d["groups"])}
    assert got == _expected_partition(d["root"], d["df"]["path"].tolist())
    # the group id is the smallest member index
    for i, g in enumerate(d["groups"]):
        assert g <= i and d["groups"][g] == g
    r = d["report"]
    assert r.n_images == n
    assert r.exact_groups == 2 and r.exact_images == 4  # the two byte copies
    # this seed's generated images have no accidental near-duplicates: only the planted pairs
    assert r.near_groups == 3 and r.near_images == 6
    assert r.groups == n - 3


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_split_keeps_duplicates_together_and_stratifies(dup_dataset, seed: int) -> None:
    d = dup_dataset
    split = make_split(d["df"], d["groups"], val_fraction=0.15, test_fraction=0.15, seed=seed)
    assert set(split["split"]) == {"train", "val", "test"}
    assert split.groupby("group")["split"].nunique().max() == 1  # no group straddles parts
    parts = dict(zip(split["path"], split["split"], strict=True))
    for a, b in PAIRS:
        assert parts[a] == parts[b]
    targets = {"train": 0.7, "val": 0.15, "test": 0.15}
    max_group = int(split.groupby("group").size().max())
    assert max_group <= 2
    counts = split.groupby(["label", "split"]).size().unstack(fill_value=0)
    for label in CLASS_NAMES:
        total = counts.loc[label].sum()
        for part, frac in targets.items():
            # whole groups are assigned, so a share can be off by up to the largest group
            assert abs(counts.loc[label, part] - frac * total) <= max_group, (label, part, counts)


def test_split_is_deterministic_in_the_seed(dup_dataset) -> None:
    d = dup_dataset
    a = make_split(d["df"], d["groups"], seed=3)
    b = make_split(d["df"], d["groups"], seed=3)
    pd.testing.assert_frame_equal(a, b)
    c = make_split(d["df"], d["groups"], seed=4)
    assert (a["split"] != c["split"]).any()  # a different seed breaks ties differently


@pytest.mark.parametrize(("val", "test"), [(0.0, 0.2), (0.2, 1.0), (0.5, 0.5), (-0.1, 0.1)])
def test_split_rejects_bad_fractions(dup_dataset, val: float, test: float) -> None:
    with pytest.raises(ValueError, match="val_fraction and test_fraction"):
        make_split(dup_dataset["df"], dup_dataset["groups"], val_fraction=val, test_fraction=test)


def test_run_split_csv_round_trip(dup_dataset, tmp_path: Path) -> None:
    d = dup_dataset
    out = tmp_path / "splits" / "split.csv"
    summary = run_split(d["root"], out, seed=5)
    df = load_split(out)
    assert list(df.columns) == ["path", "label", "group", "split"]
    expected = make_split(d["df"], d["groups"], seed=5)
    pd.testing.assert_frame_equal(df, expected[["path", "label", "group", "split"]])
    for rel in df["path"]:
        assert (d["root"] / rel).is_file()  # paths are relative to the dataset root
    val = load_split(out, "val")
    assert set(val["split"]) == {"val"} and len(val) == (df["split"] == "val").sum()
    with pytest.raises(ValueError, match=r"one of \['test', 'train', 'val'\]; received 'dev'"):
        load_split(out, "dev")
    on_disk = json.loads(out.with_suffix(".json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["duplicates"]["cross_class_groups"] == 1  # the pituitary copy in notumor/
    assert on_disk["seed"] == 5
    n_by_part = {p: sum(c.values()) for p, c in on_disk["counts"].items()}
    assert n_by_part == df["split"].value_counts().to_dict()


def test_list_class_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="none of the class folders"):
        list_class_folder(tmp_path)
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match=str(tmp_path)):
        list_class_folder(tmp_path)
    img = Image.fromarray(np.zeros((40, 40), np.uint8))
    (tmp_path / "pituitary" / "sub").mkdir(parents=True)
    (tmp_path / "glioma").mkdir()
    img.save(tmp_path / "pituitary" / "sub" / "b.PNG")
    img.save(tmp_path / "glioma" / "a.jpg")
    (tmp_path / "glioma" / "notes.txt").write_text("not an image")
    img.save(tmp_path / "other" / "c.png")  # not a class folder
    df = list_class_folder(tmp_path)
    assert df.to_dict("records") == [
        {"path": "glioma/a.jpg", "label": "glioma"},
        {"path": "pituitary/sub/b.PNG", "label": "pituitary"},
    ]


def test_cached_arrays_computes_once_then_reads_the_cache(
    class_dataset: Path, tmp_path: Path
) -> None:
    work = tmp_path / "data"
    shutil.copytree(class_dataset, work)
    paths = list_class_folder(work)["path"].tolist()[:6]
    cache = tmp_path / "cache"
    first = cached_arrays(work, paths, 40, cache_dir=cache)
    assert first.shape == (6, 40, 40) and first.dtype == np.uint8
    for i, rel in enumerate(paths):
        np.testing.assert_array_equal(first[i], preprocess_gray(load_image(work / rel).gray, 40))
    assert len(list(cache.glob("*.npy"))) == 1
    # remove the sources: the second call can only succeed from the cache
    for rel in paths:
        (work / rel).unlink()
    second = cached_arrays(work, paths, 40, cache_dir=cache)
    assert isinstance(second, np.memmap)
    np.testing.assert_array_equal(np.asarray(second), first)
    # another size is another cache entry (and now fails: the files are gone)
    with pytest.raises(InputImageError):
        cached_arrays(work, paths, 48, cache_dir=cache)
    assert len(list(cache.glob("crops_*.npy"))) == 1


def test_cached_arrays_applies_a_named_transform_to_the_whole_slice_before_the_crop(
    class_dataset: Path, tmp_path: Path
) -> None:
    paths = list_class_folder(class_dataset)["path"].tolist()[:3]
    cache = tmp_path / "cache"
    seen = []

    def invert(gray: np.ndarray, key: str) -> np.ndarray:
        seen.append(key)
        return 255 - gray

    out = cached_arrays(class_dataset, paths, 32, cache, transform=invert, transform_id="invert")
    assert seen == paths  # called with each relative path, once
    for i, rel in enumerate(paths):
        expected = preprocess_gray(255 - load_image(class_dataset / rel).gray, 32)
        np.testing.assert_array_equal(out[i], expected)
    clean = cached_arrays(class_dataset, paths, 32, cache)
    assert not np.array_equal(np.asarray(clean), np.asarray(out))  # its own cache entry
    assert len(list(cache.glob("crops_*.npy"))) == 2
    cached_arrays(class_dataset, paths, 32, cache, transform=invert, transform_id="invert")
    assert len(seen) == len(paths)  # the second call reads the cache
    with pytest.raises(ValueError, match="transform_id must name the transform"):
        cached_arrays(class_dataset, paths, 32, cache, transform=invert)


def test_cached_arrays_raises_on_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "glioma").mkdir()
    (tmp_path / "glioma" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(InputImageError, match="^glioma/bad.png: "):
        cached_arrays(tmp_path, ["glioma/bad.png"], 32, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.npy"))  # nothing half-written is cached


def test_preprocess_gray_crops_the_head() -> None:
    gray = np.zeros((100, 160), np.uint8)
    gray[20:80, 50:110] = 120
    out = preprocess_gray(gray, 30)
    assert out.shape == (30, 30)
    assert out[3:-3, 3:-3].min() == 120  # the crop is essentially all head


def test_label_indices() -> None:
    np.testing.assert_array_equal(
        label_indices(["pituitary", "glioma", "notumor", "meningioma", "glioma"]), [3, 0, 2, 1, 0]
    )
    assert label_indices(pd.Series(["notumor"])).dtype == np.int32
    with pytest.raises(ValueError, match=r"received \['Glioma', 'tumor'\]"):
        label_indices(["glioma", "tumor", "Glioma"])


def test_near_duplicate_threshold_is_respected(tmp_path: Path, make_slice) -> None:
    """A JPEG copy joins its original's group; with max_hamming=-1 nothing near is grouped."""
    (tmp_path / "glioma").mkdir()
    g = make_slice("glioma", np.random.default_rng(5))
    Image.fromarray(g).save(tmp_path / "glioma" / "a.png")
    buf = io.BytesIO()
    Image.fromarray(g).save(buf, "JPEG", quality=60)
    (tmp_path / "glioma" / "b.jpg").write_bytes(buf.getvalue())
    groups, _, _ = find_duplicate_groups(tmp_path, ["glioma/a.png", "glioma/b.jpg"])
    assert groups.tolist() == [0, 0]
    groups, _, report = find_duplicate_groups(
        tmp_path, ["glioma/a.png", "glioma/b.jpg"], max_hamming=-1
    )
    assert groups.tolist() == [0, 1] and report.groups == 2
