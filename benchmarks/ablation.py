"""Before/after of each speed change, measured side by side in one process.

Usage::

    python benchmarks/ablation.py --make-native-random /tmp/native --json OUT.json
    python benchmarks/ablation.py --artifacts artifacts --repeats 5 --xla
    python benchmarks/ablation.py --artifacts artifacts --thread-sweep 1x1,2x1,2x2

Classification is the stage the changes touch (decode, cropping, segmentation
and morphology are identical), so this times ``Ensemble.predict_crops`` on one
brain crop (batch 1), for several ensembles loaded from the same artifacts:

* ``keras_predict``: each base model and the meta-learner through ``model.predict``
  (the naive dashboard);
* ``per_model``: one compiled ``tf.function`` per model, on the models as rebuilt
  (the code before this work);
* ``per_model_folded``: the same with BatchNormalization folded into the convolutions;
* ``fused``: one compiled graph for all models and the meta-learner (the float32
  default now);
* ``fused_folded``: both;
* ``fused_bf16``: bfloat16 weights and arithmetic, BatchNormalization not folded;
* ``fused_folded_bf16``: bfloat16 with folding (what ``precision="bfloat16"`` does);
* ``fused_folded_xla`` (``--xla``): the default graph compiled with XLA (``jit_compile``).

Variants are interleaved call by call (round robin, order rotated each round) so
a change in background load hits them all alike; medians and minima are
reported. ``--thread-sweep`` instead starts one short process per TensorFlow
thread setting (``INTRAxINTER``), alternating settings across rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import system  # noqa: E402
from benchmarks.native import describe, make_native_random  # noqa: E402

VARIANTS = {
    "per_model": {"fused": False, "fold_batchnorm": False},
    "per_model_folded": {"fused": False, "fold_batchnorm": True},
    "fused": {"fused": True, "fold_batchnorm": False},
    "fused_folded": {"fused": True, "fold_batchnorm": True},
    "fused_bf16": {"fused": True, "fold_batchnorm": False, "precision": "bfloat16"},
    "fused_folded_bf16": {"fused": True, "fold_batchnorm": True, "precision": "bfloat16"},
}


def _log(msg: str) -> None:
    print(f"[ablation] {msg}", file=sys.stderr, flush=True)


def _crops(samples: Path, n: int) -> list[Any]:
    from neurostack.imaging import load_image
    from neurostack.preprocess import crop, find_brain_box

    out = []
    for p in sorted(samples.glob("*.jpg"))[:n]:
        g = load_image(p).gray
        out.append(crop(g, find_brain_box(g)))
    return out


def _keras_predict(ens: Any) -> Any:
    """Classify like the naive dashboard: ``model.predict`` per model on its own input."""
    import importlib

    import numpy as np

    from neurostack.preprocess import resize_square

    mods = {
        "Xception": "xception",
        "InceptionV3": "inception_v3",
        "ResNet50": "resnet50",
        "VGG19": "vgg19",
    }
    prep = {
        n: importlib.import_module(
            "keras.applications." + mods[c.config["keras_application"]]
        ).preprocess_input
        for n, c in ens.members.items()
    }

    def run(crop: Any) -> None:
        probs = {}
        for n, c in ens.members.items():
            rgb = np.repeat(resize_square(crop, c.input_size)[..., None], 3, -1).astype(np.float32)
            probs[n] = c.model.predict(prep[n](rgb[None]), verbose=0)
        if ens.meta is not None:
            ens.meta.model.predict(
                np.concatenate([probs[n] for n in ens.meta.inputs], 1), verbose=0
            )

    return run


def _xla(ens: Any) -> Any:
    """The default fused graph, compiled with XLA."""
    import numpy as np
    import tensorflow as tf

    from neurostack.preprocess import resize_square

    python_fn = ens._fused.python_function
    spec = [tf.TensorSpec((None, s, s), tf.float32) for s in ens.sizes]
    fn = tf.function(python_fn, input_signature=spec, jit_compile=True)

    def run(crop: Any) -> None:
        grays = [resize_square(crop, s)[None].astype(np.float32) for s in ens.sizes]
        [np.asarray(o) for o in fn(*grays)]

    return run


def in_process(
    artifacts: Path, samples: Path, n_crops: int, repeats: int, xla: bool, names: list[str]
) -> dict[str, Any]:
    """Load every variant, then time them round robin on the same crops."""
    from ensemble.inference import load_ensemble

    crops = _crops(samples, n_crops)
    runners: dict[str, Any] = {}
    loads: dict[str, float] = {}
    for name in names:
        t0 = time.perf_counter()
        ens = load_ensemble(artifacts / "classification", strict=False, **VARIANTS[name])
        loads[name] = round(time.perf_counter() - t0, 2)
        runners[name] = (lambda e: lambda c: e.predict_crops([c]))(ens)
        if name == "per_model":
            runners["keras_predict"] = _keras_predict(ens)
        if name == "fused_folded" and xla:
            runners["fused_folded_xla"] = _xla(ens)
        _log(f"loaded {name} in {loads[name]} s")
    first: dict[str, float] = {}
    for name, run in runners.items():  # first call: graph optimisation, kernel creation
        t0 = time.perf_counter()
        run(crops[0])
        first[name] = round(time.perf_counter() - t0, 2)
        run(crops[0])
    times: dict[str, list[float]] = {n: [] for n in runners}
    order = list(runners)
    for r in range(repeats):
        rot = order[r % len(order) :] + order[: r % len(order)]
        for crop in crops:
            for name in rot:
                t0 = time.perf_counter()
                runners[name](crop)
                times[name].append(time.perf_counter() - t0)
        _log(
            f"round {r + 1}/{repeats}: "
            + ", ".join(f"{n} {statistics.median(v):.3f}" for n, v in times.items())
        )
    ref = statistics.median(times["per_model"]) if "per_model" in times else None
    out = {}
    for n, v in times.items():
        med = statistics.median(v)
        out[n] = {
            "median_s": round(med, 4),
            "min_s": round(min(v), 4),
            "n": len(v),
            "first_call_s": first[n],
            "load_s": loads.get(n),
            "speedup_vs_per_model": round(ref / med, 3) if ref else None,
        }
    return out


CHILD = r"""
import json, statistics, sys, time
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["repo"])
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(cfg["intra"])
tf.config.threading.set_inter_op_parallelism_threads(cfg["inter"])
from benchmarks.ablation import _crops
from ensemble.inference import load_ensemble
from pathlib import Path
ens = load_ensemble(Path(cfg["artifacts"]) / "classification", strict=False,
                    precision=cfg["precision"])
crops = _crops(Path(cfg["samples"]), cfg["n_crops"])
ens.predict_crops(crops[:1]); ens.predict_crops(crops[:1])
ts = []
for _ in range(cfg["calls"]):
    for c in crops:
        t0 = time.perf_counter(); ens.predict_crops([c]); ts.append(time.perf_counter() - t0)
t0 = time.perf_counter(); ens.predict_crops(crops * 2); batch = time.perf_counter() - t0
print("RESULT " + json.dumps({"times": ts, "batch_per_slice_s": batch / (2 * len(crops))}))
"""


def thread_sweep(
    artifacts: Path,
    samples: Path,
    settings: list[tuple[int, int]],
    rounds: int,
    n_crops: int,
    calls: int,
    precision: str,
) -> dict[str, Any]:
    """One short process per thread setting, settings alternated across ``rounds``."""
    times: dict[str, list[float]] = {f"{a}x{b}": [] for a, b in settings}
    batch: dict[str, list[float]] = {k: [] for k in times}
    for r in range(rounds):
        for intra, inter in settings:
            key = f"{intra}x{inter}"
            cfg = {
                "repo": str(REPO),
                "artifacts": str(artifacts),
                "samples": str(samples),
                "intra": intra,
                "inter": inter,
                "n_crops": n_crops,
                "calls": calls,
                "precision": precision,
            }
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, json.dumps(cfg)],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=1800,
            )
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                raise RuntimeError(f"thread-sweep child {key} failed:\n{proc.stderr[-2000:]}")
            res = json.loads(line[7:])
            times[key] += res["times"]
            batch[key].append(res["batch_per_slice_s"])
            _log(
                f"round {r + 1}/{rounds} threads {key}: median "
                f"{statistics.median(res['times']):.3f} s"
            )
    return {
        k: {
            "median_s": round(statistics.median(v), 4),
            "min_s": round(min(v), 4),
            "n": len(v),
            "batch8_per_slice_s": round(statistics.median(batch[k]), 4),
        }
        for k, v in times.items()
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the ablation; returns the report (also written to ``--json``)."""
    p = argparse.ArgumentParser(
        prog="python benchmarks/ablation.py", description=__doc__.split("\n")[0]
    )
    p.add_argument("--artifacts", type=Path, default=REPO / "artifacts")
    p.add_argument("--make-native-random", type=Path, default=None, metavar="DIR")
    p.add_argument("--samples", type=Path, default=REPO / "artifacts" / "samples")
    p.add_argument("--crops", type=int, default=4, help="sample slices used")
    p.add_argument("--repeats", type=int, default=3, help="rounds over the crops")
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)}"
    )
    p.add_argument("--xla", action="store_true", help="also time the XLA-compiled fused graph")
    p.add_argument(
        "--thread-sweep",
        default=None,
        metavar="AxB,...",
        help="instead: intra x inter thread settings to compare, e.g. 1x1,2x1,2x2",
    )
    p.add_argument("--sweep-rounds", type=int, default=2)
    p.add_argument("--sweep-calls", type=int, default=3)
    p.add_argument("--precision", default="float32", help="precision for --thread-sweep")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    start = system.conditions()
    _log(
        f"start: load {start['loadavg_1_5_15']}, busy others "
        f"{start['busy_cpus_other_processes']} CPUs"
    )
    artifacts = args.artifacts
    if args.make_native_random is not None:
        artifacts = make_native_random(args.make_native_random, log=_log)
    report: dict[str, Any] = {
        "artifacts": describe(artifacts),
        "environment": system.environment(),
        "conditions": {"start": start},
    }
    if args.thread_sweep:
        settings = [tuple(int(v) for v in s.split("x")) for s in args.thread_sweep.split(",")]
        report["thread_sweep"] = thread_sweep(
            artifacts,
            args.samples,
            settings,
            args.sweep_rounds,
            args.crops,
            args.sweep_calls,
            args.precision,
        )
    else:
        names = [n.strip() for n in args.variants.split(",") if n.strip()]
        unknown = sorted(set(names) - set(VARIANTS))
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
        report["classify_batch1"] = in_process(
            artifacts, args.samples, args.crops, args.repeats, args.xla, names
        )
    report["conditions"]["end"] = system.conditions()
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    for section in ("classify_batch1", "thread_sweep"):
        for name, rec in report.get(section, {}).items():
            print(
                f"{section:16s} {name:20s} median {rec['median_s']:.4f} s  min "
                f"{rec['min_s']:.4f} s  "
                + "  ".join(f"{k} {v}" for k, v in rec.items() if k not in ("median_s", "min_s"))
            )
    return report


if __name__ == "__main__":
    main()
