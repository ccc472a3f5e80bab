"""Function-preserving widening of a trained Res-UNet (a Net2WiderNet variant).

A wider network (more filters per level, and/or the mirror-image input channel
of ``build_resunet(mirror_input=True)``) is built and initialised so that it
computes exactly the same probabilities as the trained narrow one:

* every old channel keeps its weights, batch-norm parameters and statistics;
* every new channel gets the wide model's fresh random weights from the old
  (and new) channels, so it starts as a random feature;
* every weight *from* a new channel *into* an old channel is zero, so nothing
  new reaches the old channels or the output until training moves those
  weights away from zero (their gradients are not zero: the new activations
  are not).

The extra capacity is then trained from the narrow model's solution instead
of from scratch (``python -m segmentation.train ... --base-filters W
--init-weights WIDE.npz``). Chen, Goodfellow & Shlens, "Net2Net: Accelerating
Learning via Knowledge Transfer", ICLR 2016, split replicated units instead;
zero fan-in from new units is the simpler exact variant used here.

Command line (thin)::

    python -m segmentation.widen artifacts/segmentation/resunet --base-filters 24 --out WIDE.npz
    python -m segmentation.widen artifacts/segmentation/resunet --mirror-input --out MIRROR.npz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from neurostack.artifacts import save_weights_compact
from neurostack.errors import ArtifactError

# Layers whose output channels are their input channels, unchanged.
_PASS_THROUGH = ("BatchNormalization", "Activation", "UpSampling2D", "SpatialDropout2D", "Dropout")
# Layers whose output is their input followed by a copy of it (model.MirrorConcat).
_DOUBLING = ("MirrorConcat",)


def resunet_architecture(model: Any) -> dict[str, Any]:
    """Read ``build_resunet``'s options back from a built Res-UNet.

    Args:
        model: A ``keras.Model`` made by :func:`segmentation.model.build_resunet`.

    Returns:
        ``{"input_size", "base_filters", "depth", "dropout", "bn_momentum",
        "mirror_input"}``.

    Raises:
        ValueError: If the model does not have the Res-UNet's layer names.
    """
    names = {layer.name: layer for layer in model.layers}
    if "enc0_conv1" not in names or "mask" not in names:
        raise ValueError(
            "expected a Res-UNet from segmentation.model.build_resunet (layers 'enc0_conv1' "
            f"and 'mask'); received a model named {model.name!r}"
        )
    depth = sum(1 for n in names if n.startswith("enc") and n.endswith("_conv1"))
    dropout = names["bridge_dropout"].rate if "bridge_dropout" in names else 0.0
    return {
        "input_size": int(model.input_shape[1]),
        "base_filters": int(names["enc0_conv1"].filters),
        "depth": depth,
        "dropout": float(dropout),
        "bn_momentum": float(names["head_bn"].momentum),
        "mirror_input": "mirror" in names,
    }


def _inputs(layer: Any) -> list[Any]:
    x = layer.input
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _producer(tensor: Any) -> str:
    return tensor._keras_history.operation.name


def _old_channel_masks(wide: Any, narrow: Any) -> dict[str, np.ndarray]:
    """For every layer of ``wide``: which of its output channels exist in ``narrow``."""
    narrow_layers = {layer.name: layer for layer in narrow.layers}
    masks: dict[str, np.ndarray] = {}
    for layer in wide.layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            masks[layer.name] = np.ones(int(layer.output.shape[-1]), dtype=bool)
            continue
        ins = [masks[_producer(t)] for t in _inputs(layer)]
        if kind == "Conv2D":
            n_old = int(narrow_layers[layer.name].filters)
            masks[layer.name] = np.arange(int(layer.filters)) < n_old
        elif kind == "Concatenate":
            masks[layer.name] = np.concatenate(ins)
        elif kind == "Add":
            if any(not np.array_equal(m, ins[0]) for m in ins[1:]):
                raise ValueError(f"{layer.name}: the added tensors have different channel layouts")
            masks[layer.name] = ins[0]
        elif kind in _PASS_THROUGH:
            masks[layer.name] = ins[0]
        elif kind in _DOUBLING:  # the copy is new unless the narrow model has the layer too
            copy = ins[0] if layer.name in narrow_layers else np.zeros_like(ins[0])
            masks[layer.name] = np.concatenate([ins[0], copy])
        else:
            raise ValueError(f"cannot widen layer {layer.name!r} of type {kind}")
    return masks


def widen_resunet(
    narrow: Any,
    base_filters: int | None = None,
    *,
    mirror_input: bool = False,
    seed: int = 0,
) -> Any:
    """Build a wider Res-UNet that computes the same function as ``narrow``.

    Args:
        narrow: A trained Res-UNet (``segmentation.model.build_resunet``).
        base_filters: Filters of the wide model's first level; at least the
            narrow model's (the other levels double as usual). ``None``: the
            narrow model's.
        mirror_input: Give the wide model the mirror-image input channel
            (``build_resunet(mirror_input=True)``); its weights start at zero.
            A narrow model that has the channel keeps it.
        seed: Seed of the new channels' random initial weights.

    Returns:
        A new ``keras.Model`` ``(B, S, S, 1) -> (B, S, S, 1)`` whose output
        equals ``narrow``'s in inference and in training mode (up to float
        rounding), with the extra channels ready to be trained.

    Raises:
        ValueError: If ``base_filters`` is smaller than the narrow model's, if
            nothing would change, or ``narrow`` is not a Res-UNet.
    """
    import keras

    from segmentation.model import build_resunet

    arch = resunet_architecture(narrow)
    if base_filters is None:
        base_filters = arch["base_filters"]
    if isinstance(base_filters, bool) or not isinstance(base_filters, int):
        raise ValueError(f"base_filters must be an integer; received {base_filters!r}")
    if base_filters < arch["base_filters"]:
        raise ValueError(
            f"base_filters must be at least the narrow model's {arch['base_filters']}; "
            f"received {base_filters}"
        )
    mirror = bool(mirror_input) or arch["mirror_input"]
    if base_filters == arch["base_filters"] and mirror == arch["mirror_input"]:
        raise ValueError(
            f"nothing to widen: base_filters {base_filters} and mirror_input {mirror} are the "
            "narrow model's; ask for more filters or for mirror_input=True"
        )
    keras.utils.set_random_seed(seed)
    wide = build_resunet(
        **{**arch, "base_filters": base_filters, "mirror_input": mirror}, name=narrow.name
    )
    masks = _old_channel_masks(wide, narrow)
    narrow_layers = {layer.name: layer for layer in narrow.layers}

    for layer in wide.layers:
        old_weights = narrow_layers[layer.name].get_weights() if layer.weights else []
        if not old_weights:
            continue
        in_old = masks[_producer(_inputs(layer)[0])]
        new_weights = [np.array(w) for w in layer.get_weights()]
        kind = type(layer).__name__
        if kind == "Conv2D":
            kernel, old_kernel = new_weights[0], old_weights[0]
            n_out = old_kernel.shape[-1]
            kernel[:, :, ~in_old, :n_out] = 0.0  # nothing new flows into an old channel
            kernel[:, :, in_old, :n_out] = old_kernel
            if len(new_weights) > 1:  # bias
                new_weights[1][:n_out] = old_weights[1]
        elif kind == "BatchNormalization":
            for new, old in zip(new_weights, old_weights, strict=True):
                new[in_old] = old
        else:  # pragma: no cover - build_resunet has no other weighted layers
            raise ValueError(f"cannot widen layer {layer.name!r} of type {kind}")
        layer.set_weights(new_weights)
    return wide


def widen_artifact(
    artifact_dir: str | Path,
    base_filters: int | None,
    out: str | Path,
    *,
    mirror_input: bool = False,
    seed: int = 0,
) -> str:
    """Widen an exported segmentation artifact and save the weights for ``--init-weights``.

    Args:
        artifact_dir: Exported Res-UNet folder (``config.json`` + ``weights.npz``);
            its checksum is verified before loading.
        base_filters: Filters of the wide model's first level (``None``: unchanged).
        out: Destination ``.npz`` (``save_weights_compact`` format, float16).
        mirror_input: Add the mirror-image input channel.
        seed: Seed of the new channels' random weights.

    Returns:
        The SHA-256 of the written file.

    Raises:
        ArtifactError: If the artifact cannot be loaded.
        ValueError: If ``base_filters`` is smaller than the artifact's, or
            nothing would change.
    """
    from neurostack.artifacts import float32_policy
    from segmentation.predict import load_segmenter

    loaded = load_segmenter(artifact_dir)
    if "members" in loaded.config["architecture"]:
        raise ValueError(
            f"{artifact_dir} is an ensemble; extract one member first "
            "(python -m segmentation.combine ENSEMBLE --extract NAME --out DIR) and widen that"
        )
    narrow = loaded.model
    with float32_policy():
        wide = widen_resunet(narrow, base_filters, mirror_input=mirror_input, seed=seed)
    out = Path(out)
    part = out.with_name(out.name + ".part")  # a failed write leaves no half-written .npz
    try:
        digest = save_weights_compact(wide, part)
        part.replace(out)
    finally:
        part.unlink(missing_ok=True)
    return digest


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m segmentation.widen",
        description="Widen a trained Res-UNet without changing its output "
        "(initial weights for training a wider network).",
    )
    p.add_argument("artifact", help="exported segmentation artifact folder")
    p.add_argument(
        "--base-filters", type=int, default=None, help="wide model's first-level filters"
    )
    p.add_argument(
        "--mirror-input",
        action="store_true",
        help="add the left-right mirror image as a second input channel (zero weights)",
    )
    p.add_argument("--out", required=True, help="destination .npz")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 with ``error: ...`` on bad input)."""
    args = _parser().parse_args(argv)
    try:
        digest = widen_artifact(
            args.artifact,
            args.base_filters,
            args.out,
            mirror_input=args.mirror_input,
            seed=args.seed,
        )
    except (ArtifactError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out} (base_filters {args.base_filters or 'unchanged'}, "
        f"mirror_input {args.mirror_input}, sha256 {digest})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
