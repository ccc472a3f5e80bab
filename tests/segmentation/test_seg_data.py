from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from neurostack.preprocess import CropBox
from segmentation.data import (
    SPLIT_COLUMNS,
    AugmentConfig,
    PreparedData,
    flatten_tumour,
    load_metadata,
    make_eval_dataset,
    make_patient_split,
    make_train_dataset,
    prepare_dataset,
    preprocess_mask,
    preprocess_slice,
    read_split,
    to_model_input,
    write_split,
)


def _metadata(n_patients: int = 40, slices: int = 3) -> pd.DataFrame:
    labels = ["glioma", "meningioma", "pituitary"]
    rows = []
    for p in range(n_patients):
        for s in range(slices):
            rows.append(
                {
                    "id": f"{p * slices + s:04d}",
                    "patient_id": f"P{p}",
                    "label": labels[p % 3],
                    "fold": p % 4 + 1,
                }
            )
    return pd.DataFrame(rows)


def test_patient_split_has_no_patient_in_two_parts():
    split = make_patient_split(_metadata(), holdout_fold=4, seed=3)
    assert list(split.columns) == SPLIT_COLUMNS
    assert split.groupby("patient_id")["split"].nunique().max() == 1
    assert set(split.loc[split["fold"] != 4, "split"]) == {"train"}
    assert set(split.loc[split["fold"] == 4, "split"]) == {"val", "test"}


def test_patient_split_deterministic_balanced_and_stratified():
    meta = _metadata()
    a = make_patient_split(meta, seed=1)
    b = make_patient_split(meta, seed=1)
    pd.testing.assert_frame_equal(a, b)
    hold = a[a["fold"] == 4].groupby("patient_id").first()
    counts = hold.groupby(["label", "split"]).size().unstack(fill_value=0)
    assert (counts["val"] - counts["test"]).abs().max() <= 1  # stratified by label
    n_val, n_test = (hold["split"] == "val").sum(), (hold["split"] == "test").sum()
    assert abs(n_val - n_test) <= 1
    c = make_patient_split(meta, seed=2)
    assert not a["split"].equals(c["split"])  # the seed matters


def test_split_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="holdout_fold must be one of"):
        make_patient_split(_metadata(), holdout_fold=9)
    leak = _metadata()
    leak.loc[0, "fold"] = 2 if leak.loc[0, "fold"] != 2 else 3
    with pytest.raises(ValueError, match="more than one fold"):
        make_patient_split(leak)
    split = make_patient_split(_metadata())
    split.loc[split.index[-1], "split"] = "train" if split.iloc[-1]["split"] != "train" else "val"
    with pytest.raises(ValueError, match="patient-level leak"):
        write_split(split, tmp_path / "s.csv")


def test_split_round_trip(tmp_path):
    split = make_patient_split(_metadata())
    path = write_split(split, tmp_path / "sub" / "split.csv")
    back = read_split(path)
    assert back["id"].tolist() == split["id"].tolist()  # leading zeros kept
    pd.testing.assert_frame_equal(back, split, check_dtype=False)


def test_load_metadata(figshare_like):
    meta = load_metadata(figshare_like)
    assert meta["id"].iloc[0] == "0001"
    assert isinstance(meta["patient_id"].iloc[0], str)
    with pytest.raises(FileNotFoundError):
        load_metadata(figshare_like / "images")


def test_preprocess_slice_and_mask_share_the_box():
    gray = np.zeros((60, 100), np.uint8)
    gray[10:50, 20:80] = 120
    mask = np.zeros_like(gray)
    mask[20:30, 30:40] = 255
    image, box = preprocess_slice(gray, 32)
    assert image.shape == (32, 32) and image.dtype == np.uint8
    assert isinstance(box, CropBox)
    assert box.row0 <= 10 and box.row1 >= 50 and box.col0 <= 20 and box.col1 >= 80
    m = preprocess_mask(mask, box, 32)
    assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
    # the tumour occupies the expected fraction of the crop
    expected = (10 * 10) / (box.height * box.width)
    assert m.mean() == pytest.approx(expected, abs=0.02)
    x = to_model_input(image[None])
    assert x.shape == (1, 32, 32, 1) and x.dtype == np.float32 and x.max() <= 1.0
    with pytest.raises(ValueError, match="uint8"):
        preprocess_slice(gray.astype(np.float32), 32)


def test_prepare_dataset_uses_cache(figshare_like, tmp_path):
    data = prepare_dataset(figshare_like, 32, cache_dir=tmp_path, progress=False)
    assert data.images.shape == (32, 32, 32) and data.masks.shape == (32, 32, 32)
    assert data.masks.max() == 1 and data.masks.sum() > 0
    assert data.boxes.shape == (32, 4)
    folders = list(tmp_path.iterdir())
    assert len(folders) == 1 and (folders[0] / "images.npy").is_file()
    again = prepare_dataset(figshare_like, 32, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(again.images, data.images)
    sub = data.subset(["0003", "0001"])
    assert sub.ids.tolist() == ["0003", "0001"]
    with pytest.raises(KeyError, match="9999"):
        data.subset(["9999"])


def _toy_data(n=4, size=32) -> PreparedData:
    images = np.zeros((n, size, size), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        images[i, 8:20, 4 + i : 14 + i] = 200
        masks[i, 8:20, 4 + i : 14 + i] = 1
    return PreparedData(np.array([f"{i}" for i in range(n)]), images, masks, np.zeros((n, 4)))


def test_train_dataset_without_augmentation_is_the_data():
    data = _toy_data()
    batches = list(make_train_dataset(data, 2, epoch=0, augment=None))
    assert len(batches) == 2
    x, y = (np.concatenate([np.asarray(b[i]) for b in batches]) for i in (0, 1))
    assert x.shape == (4, 32, 32, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(x > 0.5, y > 0.5)
    # every image exactly once
    assert sorted(int(np.argmax(xx[10, :, 0])) for xx in x) == [4, 5, 6, 7]


def test_augmentation_keeps_image_and_mask_aligned_and_is_deterministic():
    data = _toy_data(8)
    cfg = AugmentConfig(rotation_deg=20, shift=0.1, zoom=0.15, brightness=(0.8, 1.2))
    a = [
        (np.asarray(x), np.asarray(y)) for x, y in make_train_dataset(data, 4, epoch=3, augment=cfg)
    ]
    b = [
        (np.asarray(x), np.asarray(y)) for x, y in make_train_dataset(data, 4, epoch=3, augment=cfg)
    ]
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    x = np.concatenate([p[0] for p in a])
    y = np.concatenate([p[1] for p in a])
    assert set(np.unique(y)) <= {0.0, 1.0}
    assert x.max() <= 1.0 and x.min() >= 0.0
    # The bright region (>= 0.8 * 200/255 * 0.5) and the mask overlap almost completely.
    bright = x > 0.3
    inter = (bright & (y > 0.5)).sum()
    assert inter / max(1, (y > 0.5).sum()) > 0.9
    assert inter / max(1, bright.sum()) > 0.9
    c = np.concatenate(
        [np.asarray(x) for x, _ in make_train_dataset(data, 4, epoch=4, augment=cfg)]
    )
    assert not np.array_equal(c, x)  # another epoch, other augmentation


def test_gamma_changes_only_the_image_contrast_and_zero_changes_nothing():
    data = _toy_data(8)
    data.images[:, 8:20, :] //= 2  # mid-grey intensities that a power visibly moves

    def run(cfg):
        pairs = [(np.asarray(x), np.asarray(y)) for x, y in make_train_dataset(
            data, 8, epoch=2, augment=cfg)]
        return pairs[0]

    base = AugmentConfig(rotation_deg=10, shift=0.05, zoom=0.1)
    x0, y0 = run(base)
    x_off, y_off = run(AugmentConfig(rotation_deg=10, shift=0.05, zoom=0.1, gamma=0.0))
    np.testing.assert_array_equal(x0, x_off)  # gamma 0: the same draws as before
    x1, y1 = run(AugmentConfig(rotation_deg=10, shift=0.05, zoom=0.1, gamma=0.5))
    np.testing.assert_array_equal(y0, y1)  # masks untouched
    assert not np.allclose(x0, x1)
    # a power keeps 0 at 0 and the order of intensities within an image
    np.testing.assert_array_equal(x0 == 0, x1 == 0)
    for a, b in zip(x0, x1, strict=True):
        order = np.argsort(a.ravel(), kind="stable")
        assert np.all(np.diff(b.ravel()[order]) >= -1e-6)


def test_rician_noise_changes_only_the_image_and_zero_changes_nothing():
    data = _toy_data(8)

    def run(cfg):
        x, y = next(iter(make_train_dataset(data, 8, epoch=1, augment=cfg)))
        return np.asarray(x), np.asarray(y)

    geometry = dict(rotation_deg=10, shift=0.05, zoom=0.1, gamma=0.3)
    x0, y0 = run(AugmentConfig(**geometry))
    x_off, _ = run(AugmentConfig(**geometry, noise=0.0))
    np.testing.assert_array_equal(x0, x_off)  # noise 0: the same draws as before
    x1, y1 = run(AugmentConfig(**geometry, noise=0.1))
    np.testing.assert_array_equal(y0, y1)  # masks untouched
    assert x1.min() >= 0.0 and x1.max() <= 1.0
    diff = x1 - x0
    assert np.abs(diff).max() > 0
    # Rician noise lifts the black background (a magnitude is never below 0)...
    background = x0 == 0
    assert (x1[background] >= 0).all() and x1[background].mean() > 0
    # ...and its spread stays within the largest sigma (0.1): |n| < 5 sigma everywhere
    assert np.abs(diff).max() < 0.5


def _enhancing_tumour(tumour_level: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """A 48x48 head at 0.3 with a textured 12x12 tumour at ``tumour_level``."""
    rng = np.random.default_rng(0)
    image = np.zeros((48, 48, 1), np.float32)
    image[4:44, 4:44] = 0.3
    mask = np.zeros_like(image)
    mask[18:30, 18:30] = 1.0
    texture = rng.uniform(-0.05, 0.05, (12, 12, 1)).astype(np.float32)
    image[18:30, 18:30] = tumour_level + texture
    return image, mask


def test_flatten_tumour_removes_the_enhancement_and_keeps_the_texture():
    image, mask = _enhancing_tumour()
    out = np.asarray(flatten_tumour(image, mask, 1.0))
    core = (slice(21, 27), slice(21, 27))  # >= 3 px inside: the softened mask is ~1 there
    # the tumour's excess over its surroundings (level 0.7 vs median 0.3) is gone...
    np.testing.assert_allclose(out[core].mean(), 0.3, atol=0.01)
    # ...its fine texture (uniform +-0.05 per pixel) is not
    detail = image[core] - image[core].mean()
    np.testing.assert_allclose(out[core] - out[core].mean(), detail, atol=0.015)
    assert np.corrcoef(out[core].ravel(), detail.ravel())[0, 1] > 0.9
    # tissue more than 3 px (the kernel's reach) from the tumour is untouched
    far = np.ones((48, 48, 1), bool)
    far[15:33, 15:33] = False
    np.testing.assert_array_equal(out[far], image[far])
    # no dark rim is drawn, and the border (2 px) keeps under a quarter of its excess
    inner = ndi.binary_erosion(mask[..., 0] > 0.5, np.ones((3, 3), bool), 2)
    border = (mask[..., 0] > 0.5) & ~inner
    assert out[..., 0][border].min() > 0.3 - 0.1
    assert out[..., 0][border].mean() - 0.3 < 0.25 * (image[..., 0][border].mean() - 0.3)
    half = np.asarray(flatten_tumour(image, mask, 0.5))
    np.testing.assert_allclose(half[core].mean(), image[core].mean() - 0.2, atol=0.01)
    np.testing.assert_array_equal(np.asarray(flatten_tumour(image, mask, 0.0)), image)


def test_flatten_tumour_leaves_dark_and_empty_tumours_alone():
    image, mask = _enhancing_tumour(tumour_level=0.2)  # darker than the tissue around it
    np.testing.assert_array_equal(np.asarray(flatten_tumour(image, mask, 1.0)), image)
    np.testing.assert_array_equal(
        np.asarray(flatten_tumour(image, np.zeros_like(mask), 1.0)), image
    )
    black = np.where(mask > 0, image, 0.0).astype(np.float32)  # no head tissue around it
    np.testing.assert_array_equal(np.asarray(flatten_tumour(black, mask, 1.0)), black)


def test_tumour_flatten_augmentation_changes_only_tumour_images_and_zero_changes_nothing():
    data = _toy_data(8)
    data.images[:, 2:30, 2:30] = np.maximum(data.images[:, 2:30, 2:30], 60)  # head tissue

    def run(cfg):
        x, y = next(iter(make_train_dataset(data, 8, epoch=1, augment=cfg)))
        return np.asarray(x), np.asarray(y)

    geometry = dict(rotation_deg=10, shift=0.05, zoom=0.1, gamma=0.3, noise=0.02)
    x0, y0 = run(AugmentConfig(**geometry))
    x_off, _ = run(AugmentConfig(**geometry, tumour_flatten=0.0))
    np.testing.assert_array_equal(x0, x_off)  # 0: the same draws as before
    x1, y1 = run(AugmentConfig(**geometry, tumour_flatten=1.0))
    np.testing.assert_array_equal(y0, y1)  # masks untouched
    changed = np.abs(x1 - x0) > 1e-6
    assert changed.any()
    # only pixels within the softening kernel's reach (3 px) of the tumour change
    square = np.ones((3, 3), bool)
    near = np.stack([ndi.binary_dilation(m[..., 0] > 0.5, square, 3) for m in y1])[..., None]
    assert not changed[~near].any()
    # and they only get darker before the global intensity changes, so the tumours dim
    assert x1[y1 > 0.5].mean() < x0[y0 > 0.5].mean()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tumour_flatten": -0.1},
        {"tumour_flatten": 1.5},
        {"gamma": -0.1},
        {"zoom": 1.0},
        {"rotation_deg": -5},
        {"brightness": (1.2, 0.8)},
        {"noise": -0.01},
        {"noise": 1.0},
    ],
)
def test_augment_config_rejects_bad_ranges(kwargs):
    with pytest.raises(ValueError, match="augmentation ranges"):
        AugmentConfig(**kwargs)


def test_eval_dataset_keeps_order_and_partial_batch():
    data = _toy_data(5)
    batches = list(make_eval_dataset(data, 2))
    assert [len(b[0]) for b in batches] == [2, 2, 1]
    x = np.concatenate([np.asarray(b[0]) for b in batches])
    np.testing.assert_allclose(x[..., 0], data.images / 255.0, rtol=1e-6)
