"""What the machine was doing while the benchmark ran, and its matrix-multiply peak."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")


def _cpu_info() -> dict[str, Any]:
    model, flags = platform.processor() or "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {
        "model": model,
        "logical_cpus": os.cpu_count(),
        "flags": [f for f in _FLAGS_OF_INTEREST if f in flags],
    }


def _cpu_ticks() -> dict[int, tuple[int, str]]:
    """``pid -> (utime + stime in clock ticks, command)`` for every readable process."""
    out: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            ticks = int(fields[11]) + int(fields[12])
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            out[int(entry.name)] = (ticks, cmd.strip() or name)
        except (OSError, ValueError, IndexError):
            continue
    return out


def busy_processes(interval_s: float = 1.0, min_cpu_percent: float = 10.0) -> list[dict[str, Any]]:
    """Other processes using at least ``min_cpu_percent`` of one CPU over ``interval_s``.

    Commands are cut to 100 characters.
    """
    if not Path("/proc/self/stat").exists():
        return []
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    before = _cpu_ticks()
    time.sleep(interval_s)
    after = _cpu_ticks()
    me = {os.getpid(), os.getppid()}
    busy = []
    for pid, (ticks, cmd) in after.items():
        if pid in me or pid not in before:
            continue
        pct = 100.0 * (ticks - before[pid][0]) / hz / interval_s
        if pct >= min_cpu_percent:
            busy.append({"pid": pid, "cpu_percent": round(pct, 1), "command": cmd[:100]})
    return sorted(busy, key=lambda p: -p["cpu_percent"])


def conditions(interval_s: float = 1.0) -> dict[str, Any]:
    """Load average, busy processes and a ``quiet`` verdict at this moment."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    busy = busy_processes(interval_s)
    busy_cpus = sum(p["cpu_percent"] for p in busy) / 100.0
    return {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_1_5_15": [round(v, 2) for v in load],
        "busy_processes": busy,
        "busy_cpus_other_processes": round(busy_cpus, 2),
        "quiet": bool(busy_cpus < 0.25 and load[0] < 0.5 * (os.cpu_count() or 1)),
    }


def environment() -> dict[str, Any]:
    """Versions, CPU, thread-related environment variables and the git commit."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_info(),
        "thread_env": {
            k: os.environ[k]
            for k in sorted(os.environ)
            if k.startswith(("TF_NUM_", "OMP_", "MKL_", "TF_ENABLE_ONEDNN"))
        },
    }
    for mod in ("numpy", "tensorflow", "keras"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            info[mod] = None
    try:
        info["git_commit"] = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--",
                "ensemble",
                "neurostack",
                "segmentation",
                "benchmarks",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        info["git_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def _best(fn: Any, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak(n: int = 4096, repeats: int = 3) -> dict[str, Any]:
    """GFLOP/s of an ``n x n`` matrix multiply (best of ``repeats``): numpy and TensorFlow.

    ``peak_float32_gflops`` is the best float32 figure; the bfloat16 TensorFlow
    figure is the reference for the ``bfloat16`` inference precision.
    """
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flop = 2.0 * n**3
    np_s = _best(lambda: a @ b, repeats)
    ta, tb = tf.constant(a), tf.constant(b)
    tf_s = _best(lambda: tf.linalg.matmul(ta, tb).numpy(), repeats)
    ha, hb = tf.cast(ta, tf.bfloat16), tf.cast(tb, tf.bfloat16)
    bf_s = _best(lambda: tf.linalg.matmul(ha, hb).numpy(), repeats)
    res = {
        "n": n,
        "repeats": repeats,
        "numpy_float32_gflops": round(flop / np_s / 1e9, 2),
        "tf_float32_gflops": round(flop / tf_s / 1e9, 2),
        "tf_bfloat16_gflops": round(flop / bf_s / 1e9, 2),
    }
    res["peak_float32_gflops"] = max(res["numpy_float32_gflops"], res["tf_float32_gflops"])
    return res


def merge_peaks(*runs: dict[str, Any]) -> dict[str, Any]:
    """Best of several :func:`matmul_peak` results (measured before and after the timings)."""
    keys = (
        "numpy_float32_gflops",
        "tf_float32_gflops",
        "tf_bfloat16_gflops",
        "peak_float32_gflops",
    )
    out = dict(runs[0])
    for k in keys:
        out[k] = max(r[k] for r in runs)
    out["measurements"] = len(runs)
    return out
