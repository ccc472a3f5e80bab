"""NeuroStack inference benchmark: latency, naive baseline, throughput, cold start, memory, FLOP/s.

Usage::

    python benchmarks/run.py --json OUT.json                       # shipped artifacts/
    python benchmarks/run.py --make-native-random /tmp/native --json OUT.json
    python benchmarks/run.py --artifacts DIR --precision bfloat16 --json OUT.json

Everything is measured in one run on the same machine, so every ratio compares
like with like. The run records the load average and the other busy processes
at its start and end (``conditions``): numbers taken while other jobs run are
only indicative. See ``benchmarks/README.md`` for what each number means.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import system  # noqa: E402
from benchmarks.native import describe, make_native_random  # noqa: E402

SCHEMA_VERSION = 1
TARGETS = {
    "speedup_vs_naive_min": 2.0,
    "throughput_slices_per_s_min": 4.0,
    "cold_start_s_max": 20.0,
    "peak_rss_mb_max": 3072.0,
}
_KERAS_PREPROCESS = {
    "Xception": "xception",
    "InceptionV3": "inception_v3",
    "ResNet50": "resnet50",
    "VGG19": "vgg19",
}

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["repo"])
if cfg.get("intra") or cfg.get("inter"):
    import tensorflow as tf
    if cfg.get("intra"):
        tf.config.threading.set_intra_op_parallelism_threads(cfg["intra"])
    if cfg.get("inter"):
        tf.config.threading.set_inter_op_parallelism_threads(cfg["inter"])
from neurostack.pipeline import load_pipeline
t_import = time.perf_counter()
pipe = load_pipeline(cfg["artifacts"], **cfg["load_kwargs"])
t_load = time.perf_counter()
res = pipe.analyse(cfg["slice"], force_segmentation=True)
t_first = time.perf_counter()
ru = resource.getrusage(resource.RUSAGE_SELF)
print("RESULT " + json.dumps({"import_s": t_import - t0, "load_s": t_load - t_import,
      "first_analyse_s": t_first - t_load, "cpu_s": ru.ru_utime + ru.ru_stime,
      "predicted": res.predicted_class}), flush=True)
for path in cfg["more"]:
    pipe.analyse(path, force_segmentation=True)
print("PEAK " + json.dumps({"ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
      "models": sorted(pipe.model_info)}), flush=True)
"""


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    v = sorted(values)
    return {
        "n": len(v),
        "median": round(_median(v), 5),
        "min": round(v[0], 5),
        "p90": round(v[min(len(v) - 1, int(0.9 * len(v)))], 5),
        "max": round(v[-1], 5),
    }


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _load_kwargs(
    precision: str, tta: str | None = None, runtime: str | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``load_pipeline`` (each option only when it is supported)."""
    from neurostack.pipeline import load_pipeline

    params = inspect.signature(load_pipeline).parameters
    kwargs: dict[str, Any] = {}
    if "precision" in params:
        kwargs["precision"] = precision
    elif precision != "float32":
        raise SystemExit("this checkout's load_pipeline has no precision option")
    if tta is not None:
        if "tta" not in params:
            raise SystemExit("this checkout's load_pipeline has no tta option")
        kwargs["tta"] = tta
    if runtime is not None:
        if "runtime" not in params:
            raise SystemExit("this checkout's load_pipeline has no runtime option")
        kwargs["runtime"] = runtime
    return kwargs


def warm_litert_cache(artifacts: Path, runtime: str | None) -> dict[str, Any]:
    """Fill the LiteRT cache before the cold start, so it measures a start, not a conversion.

    Returns the wall time and, per converted model, the conversion time its cache
    entry recorded when it was made (the one-off cost on a new machine).
    """
    try:
        from ensemble.inference import prepare_litert
    except ImportError:  # a checkout without the LiteRT runtime
        return {}
    seconds, paths = _timed(lambda: prepare_litert(artifacts / "classification", runtime))
    recorded = {
        name: json.loads(path.with_suffix(".json").read_text()).get("conversion_s")
        for name, path in paths.items()
    }
    return {"prepare_s": round(seconds, 2), "conversion_s_when_made": recorded}


# --------------------------------------------------------------------------- cold start
def cold_start(
    artifacts: Path,
    slice_path: Path,
    more: list[Path],
    precision: str,
    intra: int | None,
    inter: int | None,
    timeout_s: float,
    tta: str | None = None,
    runtime: str | None = None,
) -> dict[str, Any]:
    """New ``python -c`` process: import, load every model, analyse one slice; wall time.

    The same process then analyses ``more`` slices and reports its peak RSS
    (every model loaded, several image sizes seen).
    """
    cfg = {
        "repo": str(REPO),
        "artifacts": str(artifacts),
        "slice": str(slice_path),
        "more": [str(p) for p in more],
        "load_kwargs": _load_kwargs(precision, tta, runtime),
        "intra": intra,
        "inter": inter,
    }
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(cfg)],
            cwd=str(REPO),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        result: dict[str, Any] = {}
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("RESULT "):
                    result["cold_start_s"] = time.perf_counter() - t0
                    result["child"] = json.loads(line[7:])
                elif line.startswith("PEAK "):
                    result["peak"] = json.loads(line[5:])
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.returncode != 0 or "cold_start_s" not in result:
            err.seek(0)
            tail = err.read()[-2000:]
            raise RuntimeError(f"cold-start process failed (exit {proc.returncode}):\n{tail}")
    result["rusage_children_maxrss_mb"] = round(
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0, 1
    )
    return result


# --------------------------------------------------------------------------- naive baseline
class NaivePipeline:
    """What most open dashboards do: every model through ``model.predict`` on its own input.

    Per slice: decode, find the brain box and crop; per classifier resize to its
    size, make RGB, apply ``keras.applications.<model>.preprocess_input`` and call
    ``model.predict``; the meta-learner and the Res-UNet through ``model.predict``
    too (the Res-UNet input is prepared from the slice again, as its own
    preprocessing does); then the same morphology and rendering as ours. Uses
    the float32 Keras models as rebuilt from the artifacts. With the ensemble's
    ``tta="hflip"`` each classifier predicts the slice and its mirror image as a
    batch of two, so both pipelines do the same work.
    """

    def __init__(self, pipeline: Any) -> None:
        import importlib

        ens = pipeline.ensemble
        self.members = {}
        for name, clf in ens.members.items():
            module = importlib.import_module(
                "keras.applications." + _KERAS_PREPROCESS[clf.config["keras_application"]]
            )
            self.members[name] = (clf.model, clf.input_size, module.preprocess_input)
        self.meta = ens.meta
        self.mirror = getattr(ens, "tta", "none") == "hflip"
        self.segmenter = pipeline.segmenter

    def analyse(self, data: bytes) -> dict[str, float]:
        """Analyse one slice (segmentation forced); returns per-stage seconds and ``total``."""
        import numpy as np

        from morphology import measure
        from neurostack.imaging import load_image
        from neurostack.preprocess import crop, find_brain_box, paste_crop, resize_square
        from neurostack.render import mask_image, overlay_mask
        from segmentation.data import preprocess_slice

        t: dict[str, float] = {}
        t0 = time.perf_counter()
        img = load_image(data)
        t["decode"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        brain = crop(img.gray, find_brain_box(img.gray))
        t["preprocess"] = time.perf_counter() - t0
        probs = {}
        for name, (model, size, prep) in self.members.items():
            t0 = time.perf_counter()
            rgb = np.repeat(resize_square(brain, size)[..., None], 3, axis=-1).astype(np.float32)
            batch = np.stack([rgb, rgb[:, ::-1]]) if self.mirror else rgb[None]
            probs[name] = model.predict(prep(batch), verbose=0).mean(axis=0, keepdims=True)
            t[f"backbone_{name}"] = time.perf_counter() - t0
        if self.meta is not None:
            t0 = time.perf_counter()
            stacked = np.concatenate([probs[n] for n in self.meta.inputs], axis=1)
            self.meta.model.predict(stacked, verbose=0)
            t["meta_learner"] = time.perf_counter() - t0
        if self.segmenter is not None:
            t0 = time.perf_counter()
            image, box = preprocess_slice(img.gray, self.segmenter.input_size)
            x = image[None, ..., None].astype(np.float32) / 255.0
            prob = self.segmenter.model.predict(x, verbose=0)[0, ..., 0]
            full = np.clip(paste_crop(prob, box, img.gray.shape, fill=0.0), 0.0, 1.0)
            mask = full >= 0.5
            t["segmentation"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            measure(mask, spacing_cm=None, image=img.gray)
            t["morphology"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            overlay_mask(img.display, mask)
            mask_image(mask)
            t["render"] = time.perf_counter() - t0
        t["total"] = sum(t.values())
        return t


# --------------------------------------------------------------------------- measurements
class Recorder:
    """Lists of seconds per key."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}

    def add(self, key: str, seconds: float) -> None:
        self.values.setdefault(key, []).append(float(seconds))

    def medians(self) -> dict[str, float]:
        return {k: round(_median(v), 5) for k, v in self.values.items()}

    def stats(self) -> dict[str, dict[str, float]]:
        return {k: _stats(v) for k, v in self.values.items()}


def measure_latency(
    pipe: Any, naive: NaivePipeline, samples: list[tuple[str, bytes]], repeats: int
) -> tuple[Recorder, Recorder, Recorder]:
    """Interleaved warm measurements of ours, the naive baseline and each stage alone.

    Returns ``(ours, naive, reference)`` recorders; ``reference`` holds each
    backbone called as a plain Keras model (``model(x, training=False)``).
    """
    import numpy as np

    from neurostack.imaging import load_image
    from neurostack.preprocess import crop, find_brain_box

    ours, base, ref = Recorder(), Recorder(), Recorder()
    ens = pipe.ensemble

    def one(data: bytes, record: bool) -> None:
        # ours, end to end, exactly as the dashboard calls it
        dt, res = _timed(lambda: pipe.analyse(data, force_segmentation=True))
        # naive, same slice, right after
        nt = naive.analyse(data)
        # stages of ours, each alone
        img = load_image(data)
        box = find_brain_box(img.gray)
        brain = crop(img.gray, box)
        prepared: dict[tuple[int, str], Any] = {}
        probs = {}
        stage: dict[str, float] = {}
        plain: dict[str, float] = {}
        for name, clf in ens.members.items():
            key = (clf.input_size, clf.preprocess_mode)
            if key not in prepared:
                prepared[key] = clf.prepare([brain])
            stage[f"backbone_{name}"], probs[name] = _timed(
                lambda c=clf, k=key: c.predict_preprocessed(prepared[k])
            )
            plain[f"plain_keras_{name}"], _ = _timed(
                lambda c=clf, k=key: np.asarray(c.model(prepared[k], training=False))
            )
        if ens.meta is not None:
            stacked = np.concatenate([probs[n] for n in ens.meta.inputs], axis=1)
            stage["meta_learner"], _ = _timed(lambda: ens.meta.predict(stacked))
        if not record:
            return
        ours.add("end_to_end", dt)
        for k, v in res.timings_s.items():
            if k != "total":
                ours.add({"segment": "segmentation"}.get(k, k), v)
        for k, v in stage.items():
            ours.add(k, v)
        for k, v in nt.items():
            base.add("naive_end_to_end" if k == "total" else k, v)
        for k, v in plain.items():
            ref.add(k, v)
        ref.add("four_backbones_plain_keras", sum(plain.values()))

    _log("warm-up (traces the naive predict functions and every per-model function)")
    for _, data in samples[:2]:
        one(data, record=False)
    for r in range(repeats):
        for i, (name, data) in enumerate(samples):
            one(data, record=True)
            _log(
                f"latency repeat {r + 1}/{repeats}, slice {i + 1}/{len(samples)} ({name}): "
                f"ours {ours.values['end_to_end'][-1]:.3f} s, "
                f"naive {base.values['naive_end_to_end'][-1]:.3f} s"
            )
    return ours, base, ref


def measure_throughput(
    pipe: Any, samples: list[tuple[str, bytes]], n: int, chunk_sizes: list[int]
) -> dict[str, Any]:
    """``neurostack.batch.run_batch`` over ``n`` slices (samples cycled), segmentation forced.

    Runs once per chunk size (slices per batched network call); the first entry
    of ``chunk_sizes`` is the number of record, the others are its comparison.
    """
    from neurostack.batch import run_batch

    items = [
        (f"{i:03d}_{samples[i % len(samples)][0]}", samples[i % len(samples)][1]) for i in range(n)
    ]
    runs = []
    for chunk in chunk_sizes:
        t0 = time.perf_counter()
        res = run_batch(pipe, items, force_segmentation=True, chunk_size=chunk)
        elapsed = time.perf_counter() - t0
        runs.append(
            {
                "chunk_size": chunk,
                "analysed": res.analysed,
                "failed": res.failed,
                "elapsed_s": round(elapsed, 3),
                "slices_per_s": round(res.analysed / elapsed, 3) if elapsed > 0 else None,
            }
        )
        if "escalated" in res.rows and res.rows["escalated"].notna().any():
            runs[-1]["escalated"] = int(res.rows["escalated"].astype(str).eq("True").sum())
        _log(f"throughput, chunk {chunk}: {runs[-1]['slices_per_s']} slices/s")
    return {
        "n_slices": n,
        **runs[0],
        "by_chunk_size": runs,
        "path": "neurostack.batch.run_batch (pipeline.analyse_many per chunk, no CSV)",
    }


def backbone_flops(pipe: Any, with_profiler: bool) -> dict[str, dict[str, Any]]:
    """Analytic (and optionally TF-profiler) FLOPs per backbone at batch 1."""
    from benchmarks.flops import analytic_flops, profiler_flops

    out = {}
    for name, clf in pipe.ensemble.members.items():
        rec: dict[str, Any] = {
            "input_size": clf.input_size,
            "gflop_analytic": round(analytic_flops(clf.model) / 1e9, 4),
        }
        if with_profiler:
            prof = profiler_flops(clf.model, clf.input_size)
            rec["gflop_tf_profiler"] = None if prof is None else round(prof / 1e9, 4)
        out[name] = rec
    return out


def dashboard_reuse_check(pipe: Any, artifacts: Path) -> dict[str, Any]:
    """Does the dashboard's cached loader hand out one pipeline for every rerun and page?

    Calls ``dashboard.cache.get_pipeline()`` three times with ``load_pipeline``
    replaced by a counter returning the already loaded pipeline.
    """
    try:
        import logging

        logging.getLogger("streamlit").setLevel(logging.ERROR)
        from dashboard import cache
    except Exception as exc:  # noqa: BLE001 - streamlit missing: report, do not fail
        return {"checked": False, "reason": f"{type(exc).__name__}: {exc}"}
    calls = []
    original = cache.load_pipeline
    previous_env = os.environ.get("NEUROSTACK_ARTIFACTS")
    try:
        cache.load_pipeline = lambda *a, **k: calls.append(a) or pipe
        os.environ["NEUROSTACK_ARTIFACTS"] = str(artifacts)
        cache._pipeline_for.clear()
        got = [cache.get_pipeline() for _ in range(3)]
    finally:
        cache.load_pipeline = original
        cache._pipeline_for.clear()
        if previous_env is None:
            os.environ.pop("NEUROSTACK_ARTIFACTS", None)
        else:
            os.environ["NEUROSTACK_ARTIFACTS"] = previous_env
    return {
        "checked": True,
        "loads": len(calls),
        "same_object": all(g is got[0] for g in got),
        "reuses_models": len(calls) == 1 and all(g is got[0] for g in got),
    }


# --------------------------------------------------------------------------- report
def _targets(report: dict[str, Any]) -> dict[str, Any]:
    lat = report["latency_s"]
    ref = report["reference_s"].get("four_backbones_plain_keras")

    def check(value: Any, limit: float, higher_is_better: bool) -> dict[str, Any]:
        if value is None:
            return {"value": None, "target": limit, "met": None}
        met = value >= limit if higher_is_better else value <= limit
        return {"value": value, "target": limit, "met": bool(met)}

    return {
        "speedup_vs_naive": check(
            report["speedup_vs_naive"], TARGETS["speedup_vs_naive_min"], True
        ),
        "end_to_end_le_four_backbones_plain_keras": check(lat.get("end_to_end"), ref, False)
        if ref is not None
        else check(None, 0.0, False),
        "end_to_end_le_four_backbones_compiled_sum": check(
            lat.get("end_to_end"), report["reference_s"]["four_backbones_compiled_sum"], False
        ),
        "throughput_slices_per_s": check(
            report["throughput_slices_per_s"], TARGETS["throughput_slices_per_s_min"], True
        ),
        "cold_start_s": check(report["cold_start_s"], TARGETS["cold_start_s_max"], False),
        "peak_rss_mb": check(report["peak_rss_mb"], TARGETS["peak_rss_mb_max"], False),
        "dashboard_reuses_models": {
            "value": report["dashboard"].get("reuses_models"),
            "target": True,
            "met": report["dashboard"].get("reuses_models"),
        },
    }


def print_table(report: dict[str, Any], out: Any = sys.stdout) -> None:
    """Readable summary of ``report``."""
    art, cond = report["artifacts"], report["conditions"]["start"]
    w = out.write
    w(
        f"\nNeuroStack benchmark  ({art['kind']} artifacts: {art['dir']}; "
        f"precision {report['config']['precision']})\n"
    )
    if report["config"].get("precision_note"):
        w(f"precision: {report['config']['precision_note']}\n")
    if report["config"].get("runtimes"):
        runtimes = ", ".join(f"{n} {r}" for n, r in report["config"]["runtimes"].items())
        w(f"runtimes: {runtimes}; test-time augmentation {report['config'].get('tta')}\n")
    w(
        f"conditions at start: load {cond['loadavg_1_5_15']}, other busy CPUs "
        f"{cond['busy_cpus_other_processes']} ({'quiet' if cond['quiet'] else 'NOT quiet'})\n\n"
    )
    w(f"{'stage (warm, single slice)':36s} {'ours s':>9s} {'naive s':>9s}\n")
    lat, nv = report["latency_s"], report["naive_latency_s"]
    keys = [
        "decode",
        "preprocess",
        "classify",
        *[k for k in lat if k.startswith("backbone_")],
        "meta_learner",
        "segmentation",
        "morphology",
        "render",
    ]
    for k in keys:
        a, b = lat.get(k), nv.get(k)
        if a is None and b is None:
            continue
        fa = f"{a:9.4f}" if a is not None else f"{'-':>9s}"
        fb = f"{b:9.4f}" if b is not None else f"{'-':>9s}"
        w(f"{k:36s} {fa} {fb}\n")
    w(f"{'end to end':36s} {lat['end_to_end']:9.4f} {lat['naive_end_to_end']:9.4f}\n")
    for key, label in (
        ("four_backbones_plain_keras", "four backbones, plain Keras call"),
        ("four_backbones_compiled_sum", "four backbones, compiled, summed"),
        ("four_backbones_model_predict_sum", "four backbones, model.predict"),
    ):
        if report["reference_s"].get(key) is not None:
            w(f"{label:36s} {report['reference_s'][key]:9.4f}\n")
    g = report["backbone_gflops"]
    w(f"\nspeedup vs naive: {report['speedup_vs_naive']:.2f}x\n")
    w(
        f"throughput: {report['throughput_slices_per_s']} slices/s "
        f"({report['throughput']['n_slices']} slices)\n"
    )
    w(f"cold start: {report['cold_start_s']} s; peak RSS: {report['peak_rss_mb']} MB\n")
    made = (report.get("litert_cache") or {}).get("conversion_s_when_made")
    if made:
        w(
            "LiteRT cache was filled before the cold start; converting on a new machine took "
            + ", ".join(f"{n} {s} s" for n, s in made.items())
            + "\n"
        )
    mm = report["matmul_peak"]
    w(
        f"matmul {mm['n']}^2 float32 peak: {mm['peak_float32_gflops']} GFLOP/s "
        f"(bfloat16 {mm['tf_bfloat16_gflops']}); backbones achieved "
        f"{g['all']['achieved_gflops']} GFLOP/s = "
        f"{report['backbone_fraction_of_matmul_peak']:.2f} of the float32 peak\n"
    )
    w("\ntargets:\n")
    for k, v in report["targets"].items():
        flag = {True: "met", False: "NOT met", None: "n/a"}[v["met"]]
        w(f"  {k:42s} {v['value']!s:>12s}  (target {v['target']})  {flag}\n")


def _threads_setup(intra: int | None, inter: int | None) -> dict[str, Any]:
    if intra:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(intra)
    if inter:
        os.environ["TF_NUM_INTEROP_THREADS"] = str(inter)
    import tensorflow as tf

    applied = True
    try:
        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:  # TF already initialised in this process (e.g. in-process tests)
        applied = False
    return {
        "intra_op": intra or "default (all cores)",
        "inter_op": inter or "default",
        "applied_in_process": applied if (intra or inter) else None,
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/run.py", description=__doc__.split("\n")[0])
    p.add_argument(
        "--artifacts",
        type=Path,
        default=REPO / "artifacts",
        help="artifact tree (default: artifacts/)",
    )
    p.add_argument(
        "--make-native-random",
        type=Path,
        default=None,
        metavar="DIR",
        help="build (or reuse) a random-weight tree at the native sizes in DIR "
        "and benchmark it instead of --artifacts",
    )
    p.add_argument(
        "--samples",
        type=Path,
        default=REPO / "artifacts" / "samples",
        help="folder of sample slices (*.jpg, *.png)",
    )
    p.add_argument("--max-samples", type=int, default=None, help="use only the first N samples")
    p.add_argument(
        "--throughput-samples",
        type=Path,
        default=None,
        help="folder of slices for the batch throughput only (default: --samples), e.g. a "
        "random draw of test slices, where the cascade's share of unsure slices is realistic",
    )
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="latency passes over the samples (medians over repeats x samples)",
    )
    p.add_argument("--batch-slices", type=int, default=64, help="slices for the throughput run")
    p.add_argument(
        "--chunk-sizes",
        default=None,
        help="comma-separated run_batch chunk sizes for the throughput run; the first is the "
        "number of record (default: neurostack.batch.DEFAULT_CHUNK, then 1 for comparison)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        help="auto (default, as the dashboard: the recorded bfloat16 check on a CPU with "
        "native bfloat16, else float32), float32, bfloat16, or per model, e.g. "
        "resnet50=bfloat16,vgg19=bfloat16",
    )
    p.add_argument(
        "--tta",
        choices=("none", "hflip", "cascade"),
        default=None,
        help="classifiers' test-time augmentation (default: the meta-learner's input_tta); "
        "cascade: single crops, the default mode only for the slices the first pass is "
        "unsure of",
    )
    p.add_argument(
        "--runtime",
        default=None,
        help="auto, tensorflow, litert or per model, e.g. vgg19=litert "
        "(default: $NEUROSTACK_RUNTIME, else auto)",
    )
    p.add_argument("--intra-op", type=int, default=None, help="TF intra-op threads")
    p.add_argument("--inter-op", type=int, default=None, help="TF inter-op threads")
    p.add_argument("--matmul-size", type=int, default=4096)
    p.add_argument("--matmul-repeats", type=int, default=3)
    p.add_argument("--cold-start-runs", type=int, default=1, help="0 skips the cold start")
    p.add_argument("--cold-start-timeout", type=float, default=600.0)
    p.add_argument(
        "--no-profiler-flops",
        action="store_true",
        help="skip the TF-profiler FLOP count (the analytic count is always made)",
    )
    p.add_argument(
        "--busy-sample-s",
        type=float,
        default=1.0,
        help="seconds over which other processes' CPU use is sampled",
    )
    return p


def _chunk_sizes(text: str | None) -> list[int]:
    from neurostack.batch import DEFAULT_CHUNK

    if text is None:
        return [DEFAULT_CHUNK] + ([1] if DEFAULT_CHUNK != 1 else [])
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise SystemExit(f"--chunk-sizes must be positive integers; received {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the report (also written to ``--json``)."""
    parser = _parser()
    args = parser.parse_args(argv)
    from ensemble.inference import format_precision, parse_precision

    try:
        if args.precision != "auto":
            args.precision = format_precision(parse_precision(args.precision))
    except ValueError as exc:
        parser.error(str(exc))
    t_run = time.perf_counter()
    start = system.conditions(args.busy_sample_s)
    _log(
        f"start: load {start['loadavg_1_5_15']}, busy others {start['busy_cpus_other_processes']}"
        f" CPUs{'' if start['quiet'] else ' -- NOT quiet: numbers are indicative only'}"
    )
    artifacts = args.artifacts
    if args.make_native_random is not None:
        artifacts = make_native_random(args.make_native_random, log=_log)
    art_info = describe(artifacts)
    sample_paths = sorted(
        p for p in args.samples.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )[: args.max_samples]
    if not sample_paths:
        raise SystemExit(f"no sample slices in {args.samples}")

    litert_cache = warm_litert_cache(artifacts, args.runtime)
    if litert_cache:
        _log(f"LiteRT cache ready in {litert_cache['prepare_s']} s")
    cold: list[dict[str, Any]] = []
    for i in range(args.cold_start_runs):
        _log(f"cold start {i + 1}/{args.cold_start_runs} (new process: import, load, analyse)")
        cold.append(
            cold_start(
                artifacts,
                sample_paths[0],
                sample_paths[1:4],
                args.precision,
                args.intra_op,
                args.inter_op,
                args.cold_start_timeout,
                args.tta,
                args.runtime,
            )
        )
        _log(f"cold start {cold[-1]['cold_start_s']:.2f} s, child {cold[-1]['child']}")

    threads = _threads_setup(args.intra_op, args.inter_op)
    from neurostack.pipeline import load_pipeline

    _log(f"loading the pipeline from {artifacts} (precision {args.precision})")
    load_s, pipe = _timed(
        lambda: load_pipeline(artifacts, **_load_kwargs(args.precision, args.tta, args.runtime))
    )
    passes = 2 if getattr(pipe.ensemble, "tta", "none") == "hflip" else 1
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    samples = [(p.name, p.read_bytes()) for p in sample_paths]
    naive = NaivePipeline(pipe)

    _log(f"matmul peak ({args.matmul_size}^2, before the latency runs)")
    peaks = [system.matmul_peak(args.matmul_size, args.matmul_repeats)]
    ours, base, ref = measure_latency(pipe, naive, samples, args.repeats)
    _log("matmul peak (after the latency runs)")
    peaks.append(system.matmul_peak(args.matmul_size, args.matmul_repeats))
    peak = system.merge_peaks(*peaks)
    _log(f"throughput: {args.batch_slices} slices through run_batch")
    thr_samples = samples
    if args.throughput_samples is not None:
        thr_samples = [(p.name, p.read_bytes()) for p in sorted(args.throughput_samples.glob("*"))
                       if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
        if not thr_samples:
            raise SystemExit(f"no slices in {args.throughput_samples}")
    thr = measure_throughput(pipe, thr_samples, args.batch_slices, _chunk_sizes(args.chunk_sizes))
    if args.throughput_samples is not None:
        thr["samples"] = {"folder": str(args.throughput_samples), "n": len(thr_samples)}
    flops = backbone_flops(pipe, not args.no_profiler_flops)
    dash = dashboard_reuse_check(pipe, artifacts)
    end = system.conditions(args.busy_sample_s)

    lat, nlat, rlat = ours.medians(), base.medians(), ref.medians()
    names = list(pipe.ensemble.members)
    rlat["four_backbones_compiled_sum"] = round(sum(lat[f"backbone_{n}"] for n in names), 5)
    rlat["four_backbones_model_predict_sum"] = round(sum(nlat[f"backbone_{n}"] for n in names), 5)
    latency = {k: lat[k] for k in lat}
    latency["naive_end_to_end"] = nlat["naive_end_to_end"]
    speedup = round(nlat["naive_end_to_end"] / lat["end_to_end"], 3)
    total_flop, total_s = 0.0, 0.0
    for name, rec in flops.items():
        s = lat.get(f"backbone_{name}")
        rec["latency_s"] = s
        rec["achieved_gflops"] = round(rec["gflop_analytic"] / s, 2) if s else None
        rec["fraction_of_float32_matmul_peak"] = (
            round(rec["achieved_gflops"] / peak["peak_float32_gflops"], 3) if s else None
        )
        total_flop += rec["gflop_analytic"]
        total_s += s or 0.0
    achieved = total_flop / total_s if total_s else float("nan")
    flops["all"] = {
        "gflop_analytic": round(total_flop, 3),
        "latency_s_sum": round(total_s, 5),
        "achieved_gflops": round(achieved, 2),
        "fused_classify_gflops": round(passes * total_flop / lat["classify"], 2)
        if lat.get("classify")
        else None,
        "fraction_of_bfloat16_matmul_peak": round(achieved / peak["tf_bfloat16_gflops"], 3),
        # the four backbones alone, run at the matmul peak: an upper bound on slices/s
        "bound_slices_per_s_at_float32_matmul_peak": round(
            peak["peak_float32_gflops"] / total_flop, 3
        )
        if total_flop
        else None,
        "bound_slices_per_s_at_bfloat16_matmul_peak": round(
            peak["tf_bfloat16_gflops"] / total_flop, 3
        )
        if total_flop
        else None,
    }
    cold_s = [c["cold_start_s"] for c in cold]
    peak_rss = max((c["peak"]["ru_maxrss_kb"] / 1024.0 for c in cold if "peak" in c), default=None)
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "command": [
            sys.executable,
            *([str(Path(__file__))] + (argv if argv is not None else sys.argv[1:])),
        ],
        "artifacts": art_info,
        "config": {
            "precision": args.precision,
            "precision_per_model": {
                n: i["precision"] for n, i in pipe.model_info.items() if "precision" in i
            },
            "precision_note": getattr(pipe.ensemble, "precision_note", ""),
            "tta": pipe.ensemble.tta,
            "runtimes": getattr(pipe.ensemble, "runtimes", None),
            "repeats": args.repeats,
            "n_samples": len(samples),
            "samples": [n for n, _ in samples],
            "batch_slices": args.batch_slices,
            "threads": threads,
            "segmentation": "forced on every slice (ours and naive)",
        },
        "environment": system.environment(),
        "conditions": {"start": start, "end": end},
        "latency_s": latency,
        "naive_latency_s": nlat,
        "reference_s": rlat,
        "latency_stats_s": {"ours": ours.stats(), "naive": base.stats(), "reference": ref.stats()},
        "speedup_vs_naive": speedup,
        "throughput_slices_per_s": thr["slices_per_s"],
        "throughput": thr,
        "cold_start_s": round(_median(cold_s), 3) if cold_s else None,
        "cold_start": cold,
        "litert_cache": litert_cache,
        "peak_rss_mb": round(peak_rss, 1) if peak_rss is not None else None,
        "memory": {
            "peak_rss_mb_source": "cold-start process: every model loaded, "
            f"{1 + len(sample_paths[1:4])} slices analysed",
            "benchmark_process_after_load_mb": round(rss_loaded, 1),
            "benchmark_process_peak_mb": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1
            ),
        },
        "load_s": round(load_s, 3),
        "matmul_peak": peak,
        "backbone_gflops": flops,
        "backbone_fraction_of_matmul_peak": round(achieved / peak["peak_float32_gflops"], 3),
        "flops_method": "analytic: 2 x multiply-adds of Conv2D/DepthwiseConv2D/SeparableConv2D/"
        "Dense from layer shapes at batch 1 (benchmarks/flops.py); achieved = "
        "FLOPs / median warm latency of the backbone's own compiled call",
        "dashboard": dash,
        "wall_time_s": round(time.perf_counter() - t_run, 1),
    }
    report["targets"] = _targets(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        _log(f"wrote {args.json}")
    print_table(report)
    return report


if __name__ == "__main__":
    main()
