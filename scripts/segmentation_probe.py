"""Probe the shipped segmenter on the validation patients: inference-only variants.

Scores, on the original image grid with hflip TTA and the artifact's threshold
and post-processing (mean Dice over slices, empty-mask policy of
``segmentation.metrics``):

* ``shipped``: the artifact as it is;
* ``component_oracle``: the best single thresholded component per slice, picked
  with the ground truth (an upper bound for any component-selection rule);
* ``scales``: the same weights run at other input sizes, and their average;
* ``precise_bn``: batch-norm statistics re-estimated on training crops.

Never touches the test split. Usage::

    PYTHONPATH=. python scripts/segmentation_probe.py ../shared/datasets/figshare-seg \
        --sizes 192,224,256 --bn-batches 56 --json /tmp/segmentation_probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
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
    pairs = zip(probs, masks, strict=True)
    scores = [dice_coefficient(m, probability_to_mask(p, t, post)[0]) for p, m in pairs]
    return float(np.mean(scores))


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


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_dir", type=Path, help="figshare-seg folder (images/, masks/)")
    p.add_argument("--artifacts", default="artifacts/segmentation/resunet")
    p.add_argument("--split", default="artifacts/splits/segmentation_split.csv")
    p.add_argument("--sizes", default="", help="other input sizes, e.g. 224,256")
    p.add_argument("--bn-batches", type=int, default=0, help="batches of 32 training crops")
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
