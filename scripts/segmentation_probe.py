"""Probe the shipped segmenter on the validation patients: inference-only variants.

Scores, on the original image grid with hflip TTA and the artifact's threshold
and post-processing (mean Dice over slices, empty-mask policy of
``segmentation.metrics``):

* ``shipped``: the artifact as it is;
* ``component_oracle``: the best single thresholded component per slice, picked
  with the ground truth (an upper bound for any component-selection rule);
* ``scales``: the same weights run at other input sizes, and their average;
* ``precise_bn``: batch-norm statistics re-estimated on training crops;
* ``bfloat16``: the same weights in mixed bfloat16 (the output layer stays
  float32): mean Dice, per-slice Dice changes against float32, misses, and the
  network's time per slice for both precisions on the same validation crops;
* ``agreement``: whether the agreement of the two test-time-augmentation passes
  (Dice between the masks of the slice and of its mirror image, each alone) tells
  poor outlines apart *beyond* the shipped outline confidence: its Spearman
  correlation with Dice over all outlines and over those the confidence flag
  leaves unflagged, and how many poor unflagged outlines (Dice < 0.5) an
  agreement cut would catch against how many good ones it would flag.

Never touches the test split. Usage::

    PYTHONPATH=. python scripts/segmentation_probe.py ../shared/datasets/figshare-seg \
        --sizes 192,224,256 --bn-batches 56 --bfloat16 --agreement \
        --json /tmp/segmentation_probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from segmentation.data import preprocess_slice, read_mask, read_split
from segmentation.metrics import dice_coefficient
from segmentation.postprocess import probability_to_mask
from segmentation.predict import Segmenter, load_segmenter

EIGHT = np.ones((3, 3), dtype=bool)


def _find(folder: Path, stem: str) -> Path:
    """Return the file ``folder/stem.*``; raise ``FileNotFoundError`` naming it if absent."""
    found = sorted(folder.glob(f"{stem}.*"))
    if not found:
        raise FileNotFoundError(f"no file for id {stem!r} in {folder}")
    return found[0]


def _grays(data_dir: Path, ids: list[str]) -> list[np.ndarray]:
    from neurostack.imaging import load_image

    return [load_image(_find(data_dir / "images", i)).gray for i in ids]


def _at_size(seg: Segmenter, size: int) -> Segmenter:
    """Rebuild the network for ``size`` with the same weights (it is fully convolutional)."""
    from segmentation.model import build_resunet

    arch = seg.config["architecture"]
    model = build_resunet(
        size, arch["base_filters"], arch["depth"], arch["dropout"], bn_momentum=arch["bn_momentum"]
    )
    model.set_weights(seg.model.get_weights())
    return Segmenter(model, {**seg.config, "input_size": size}, tta=seg.tta)


def _full_probabilities(seg: Segmenter, data_dir: Path, ids: list[str]) -> list[np.ndarray]:
    """Original-grid probabilities of ``ids`` through the segmenter's own inference path."""
    out = []
    for start in tqdm(range(0, len(ids), 16), desc=f"val {seg.input_size}px", leave=False):
        grays = _grays(data_dir, ids[start : start + 16])
        out += [r.probability for r in seg.predict_batch(grays, batch_size=16)]
    return out


def _mean_dice(probs: list[np.ndarray], masks: list[np.ndarray], t: float, post: str) -> float:
    return float(np.mean(_dice_list(probs, masks, t, post)))


def component_oracle(probs: list[np.ndarray], masks: list[np.ndarray], t: float) -> float:
    """Mean Dice when each slice keeps its best thresholded component (ground truth picks)."""
    scores = []
    for p, m in zip(probs, masks, strict=True):
        labels, n = ndimage.label(p >= t, structure=EIGHT)
        scores.append(
            max((dice_coefficient(labels == k, m) for k in range(1, n + 1)), default=0.0)
            if m.any()
            else float(n == 0)
        )
    return float(np.mean(scores))


def bfloat16_copy(seg: Segmenter) -> Segmenter:
    """Rebuild the segmenter's network under ``mixed_bfloat16`` with the same weights.

    The policy is restored afterwards; the output layer computes in float32
    (:func:`segmentation.model.build_resunet`), so probabilities stay float32.
    """
    import keras

    from segmentation.model import build_segmenter

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_segmenter(seg.config["architecture"])
    finally:
        keras.mixed_precision.set_global_policy(previous)
    model.set_weights(seg.model.get_weights())
    return Segmenter(model, seg.config, tta=seg.tta, postprocess=seg.postprocess)


def paired_dice_changes(
    reference: list[float], other: list[float], *, tolerance: float = 0.01
) -> dict[str, float | int]:
    """Per-slice Dice changes of ``other`` against ``reference`` (same slices, same order).

    Returns:
        ``mean_change`` (other - reference), ``max_abs_change``, and how many
        slices moved by more than ``tolerance`` (``n_changed``) in each direction.
    """
    a = np.asarray(reference, dtype=float)
    b = np.asarray(other, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"need Dice lists of equal length; received {a.shape} and {b.shape}")
    d = b - a
    return {
        "mean_change": float(d.mean()) if d.size else 0.0,
        "max_abs_change": float(np.abs(d).max()) if d.size else 0.0,
        "n_changed": int((np.abs(d) > tolerance).sum()),
        "n_better": int((d > tolerance).sum()),
        "n_worse": int((d < -tolerance).sum()),
        "tolerance": tolerance,
    }


def _network_s_per_slice(seg: Segmenter, crops: np.ndarray, repeats: int = 3) -> float:
    """Median seconds per slice of :meth:`Segmenter.predict_crops` on ``crops`` (warm)."""
    seg.predict_crops(crops[:8])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for k in range(0, len(crops), 8):
            seg.predict_crops(crops[k : k + 8])
        times.append((time.perf_counter() - start) / len(crops))
    return float(np.median(times))


def _dice_list(
    probs: list[np.ndarray], masks: list[np.ndarray], t: float, post: str
) -> list[float]:
    pairs = zip(probs, masks, strict=True)
    return [float(dice_coefficient(m, probability_to_mask(p, t, post)[0])) for p, m in pairs]


def _single_pass(seg: Segmenter, data_dir: Path, ids: list[str], *, mirrored: bool
                 ) -> list[np.ndarray]:
    """Probabilities of one test-time-augmentation pass (the slice, or its mirror flipped back)."""
    one = Segmenter(seg.model, seg.config, tta="none", postprocess=seg.postprocess)
    out = []
    for start in range(0, len(ids), 16):
        grays = _grays(data_dir, ids[start : start + 16])
        if mirrored:
            grays = [np.ascontiguousarray(g[:, ::-1]) for g in grays]
        probs = [r.probability for r in one.predict_batch(grays, batch_size=16)]
        out += [np.ascontiguousarray(q[:, ::-1]) if mirrored else q for q in probs]
    return out


def agreement_beyond_confidence(
    dice: list[float], confidence: list[float | None], agreement: list[float],
    flag_threshold: float, cuts: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9),
) -> dict:
    """Measure whether the passes' agreement finds poor outlines the confidence flag misses.

    Slices without an outline (``None`` confidence) are left out. Returns Spearman
    correlations with Dice (all outlines; unflagged ones), the unflagged poor count,
    and per agreement cut the unflagged poor / good outlines it would flag.
    """
    from scipy.stats import spearmanr

    d = np.asarray(dice, dtype=float)
    c = np.asarray([np.nan if v is None else v for v in confidence], dtype=float)
    a = np.asarray(agreement, dtype=float)
    has = ~np.isnan(c)
    d, c, a = d[has], c[has], a[has]
    kept = c >= flag_threshold
    poor = d < 0.5
    return {
        "n_outlines": int(has.sum()),
        "spearman_all": float(spearmanr(a, d).correlation),
        "spearman_unflagged": float(spearmanr(a[kept], d[kept]).correlation),
        "n_unflagged": int(kept.sum()),
        "unflagged_poor": int((kept & poor).sum()),
        "cuts": {f"{t:g}": {"poor_caught": int((kept & poor & (a < t)).sum()),
                            "good_flagged": int((kept & ~poor & (a < t)).sum())} for t in cuts},
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_dir", type=Path, help="figshare-seg folder (images/, masks/)")
    p.add_argument("--artifacts", default="artifacts/segmentation/resunet")
    p.add_argument("--split", default="artifacts/splits/segmentation_split.csv")
    p.add_argument("--sizes", default="", help="other input sizes, e.g. 224,256")
    p.add_argument("--bn-batches", type=int, default=0, help="batches of 32 training crops")
    p.add_argument("--bfloat16", action="store_true", help="also score a mixed-bfloat16 copy")
    p.add_argument("--agreement", action="store_true",
                   help="score the two TTA passes' agreement beyond the outline confidence")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    split = read_split(args.split)
    ids = split.loc[split["split"] == "val", "id"].astype(str).tolist()
    masks = [read_mask(_find(args.data_dir / "masks", i)) for i in ids]
    seg = load_segmenter(args.artifacts)
    t, post = seg.default_threshold, seg.postprocess
    report: dict = {"split": "val", "n_images": len(ids), "threshold": t, "postprocess": post}

    base = _full_probabilities(seg, args.data_dir, ids)
    report["shipped"] = _mean_dice(base, masks, t, post)
    report["component_oracle"] = component_oracle(base, masks, t)
    scales = {seg.input_size: base}
    for size in [int(s) for s in args.sizes.split(",") if s]:
        scales[size] = _full_probabilities(_at_size(seg, size), args.data_dir, ids)
    if len(scales) > 1:
        report["scales"] = {str(s): _mean_dice(v, masks, t, post) for s, v in scales.items()}
        avg = [np.mean(ps, axis=0) for ps in zip(*scales.values(), strict=True)]
        report["scales"]["average"] = _mean_dice(avg, masks, t, post)
    if args.bfloat16:
        fast = bfloat16_copy(seg)
        b16 = _full_probabilities(fast, args.data_dir, ids)
        ref, new = _dice_list(base, masks, t, post), _dice_list(b16, masks, t, post)
        crops = (
            np.stack(
                [preprocess_slice(g, seg.input_size)[0] for g in _grays(args.data_dir, ids[:64])]
            ).astype(np.float32)[..., None]
            / 255.0
        )
        report["bfloat16"] = {
            "mean_dice": float(np.mean(new)),
            "misses_below_0.05": {
                "float32": sum(d < 0.05 for d in ref),
                "bfloat16": sum(d < 0.05 for d in new),
            },
            "paired": paired_dice_changes(ref, new),
            "max_abs_probability_change": max(
                float(np.abs(a - b).max()) for a, b in zip(base, b16, strict=True)
            ),
            "network_s_per_slice": {
                "float32": _network_s_per_slice(seg, crops),
                "bfloat16": _network_s_per_slice(fast, crops),
                "crops": len(crops),
                "tta": seg.tta,
            },
        }
    if args.agreement:
        from segmentation.confidence import outline_confidence, read_record

        record = read_record(args.artifacts, seg.config["weights_sha256"])
        if record is None:
            raise SystemExit("--agreement needs the outline-confidence record of these weights")
        plain = _single_pass(seg, args.data_dir, ids, mirrored=False)
        mirror = _single_pass(seg, args.data_dir, ids, mirrored=True)
        finals = [probability_to_mask(q, t, post)[0] for q in base]
        agree = [float(dice_coefficient(probability_to_mask(x, t, post)[0],
                                        probability_to_mask(y, t, post)[0]))
                 for x, y in zip(plain, mirror, strict=True)]
        report["agreement"] = {
            "flag_threshold": record["flag_threshold"],
            **agreement_beyond_confidence(
                _dice_list(base, masks, t, post),
                [outline_confidence(q, m) for q, m in zip(base, finals, strict=True)],
                agree, record["flag_threshold"]),
        }
    if args.bn_batches:
        from ensemble.recalibrate import recalibrate_batchnorm

        train = split.loc[split["split"] == "train", "id"].astype(str).tolist()
        pick = np.random.default_rng(0).permutation(len(train))[: 32 * args.bn_batches]
        chosen = [train[i] for i in pick]
        size = seg.input_size
        batches = (
            np.stack(
                [preprocess_slice(g, size)[0] for g in _grays(args.data_dir, chosen[k : k + 32])]
            ).astype(np.float32)[..., None]
            / 255.0
            for k in range(0, len(chosen), 32)
        )
        used = recalibrate_batchnorm(seg.model, batches)
        probs = _full_probabilities(seg, args.data_dir, ids)
        report["precise_bn"] = {"batches": used, "mean_dice": _mean_dice(probs, masks, t, post)}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
