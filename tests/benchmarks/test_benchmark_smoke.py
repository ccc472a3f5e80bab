"""Smoke test of ``benchmarks/run.py`` on a tiny random artifact tree, with minimal settings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="module")
def bench_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from neurostack.testing import make_tiny_artifacts

    return make_tiny_artifacts(tmp_path_factory.mktemp("bench_tiny"), with_evaluation=False)


@pytest.mark.slow
def test_benchmark_runs_and_reports_every_number(bench_artifacts: Path, tmp_path: Path) -> None:
    from benchmarks import run

    out = tmp_path / "bench.json"
    # small everything: the cold-start process (TensorFlow import + four backbones) dominates
    small = "--repeats 1 --max-samples 1 --batch-slices 2 --matmul-size 256 --matmul-repeats 1"
    small += " --no-profiler-flops --busy-sample-s 0.2 --tta hflip"  # tiny meta: input_tta none
    # the mixed path with one member in LiteRT (unlisted members would follow "auto")
    small += " --runtime xception=tensorflow,inceptionv3=tensorflow,resnet50=litert"
    report = run.main(["--artifacts", str(bench_artifacts), "--json", str(out), *small.split()])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(report))

    lat = data["latency_s"]
    for key in (
        "decode",
        "preprocess",
        "classify",
        "meta_learner",
        "segmentation",
        "morphology",
        "end_to_end",
        "naive_end_to_end",
        *(f"backbone_{m}" for m in ("xception", "inceptionv3", "resnet50", "vgg19")),
    ):
        assert lat[key] > 0, key
    assert data["speedup_vs_naive"] == pytest.approx(
        lat["naive_end_to_end"] / lat["end_to_end"], rel=1e-3
    )
    assert data["throughput_slices_per_s"] > 0 and data["throughput"]["analysed"] == 2
    from neurostack.batch import DEFAULT_CHUNK

    runs = data["throughput"]["by_chunk_size"]
    assert [r["chunk_size"] for r in runs] == [DEFAULT_CHUNK, 1]  # of record, then comparison
    assert data["throughput_slices_per_s"] == runs[0]["slices_per_s"]
    assert all(r["analysed"] == 2 and r["failed"] == 0 for r in runs)
    assert data["cold_start_s"] > 0 and data["peak_rss_mb"] > 0
    assert 0 < data["backbone_fraction_of_matmul_peak"] < 10
    assert data["matmul_peak"]["peak_float32_gflops"] > 0
    assert data["backbone_gflops"]["vgg19"]["gflop_analytic"] > 0
    assert data["reference_s"]["four_backbones_plain_keras"] > 0

    assert data["artifacts"]["random"] is True and data["artifacts"]["kind"] == "tiny-random"
    assert data["artifacts"]["dir"] == str(bench_artifacts.resolve())
    start = data["conditions"]["start"]
    assert len(start["loadavg_1_5_15"]) == 3 and isinstance(start["busy_processes"], list)
    assert data["config"]["precision"] == "auto" and data["config"]["tta"] == "hflip"
    # no bfloat16 check recorded for the tiny tree: "auto" is float32 everywhere, and says why
    assert set(data["config"]["precision_per_model"].values()) == {"float32"}
    assert data["config"]["precision_note"].startswith("float32: ")
    assert data["config"]["runtimes"] == {
        "xception": "tensorflow", "inceptionv3": "tensorflow", "resnet50": "litert",
        "vgg19": "tensorflow",
    }
    assert set(data["litert_cache"]["conversion_s_when_made"]) == {"resnet50"}
    assert set(data["targets"]) >= {
        "speedup_vs_naive",
        "throughput_slices_per_s",
        "cold_start_s",
        "peak_rss_mb",
    }
    if data["dashboard"]["checked"]:
        assert data["dashboard"]["reuses_models"] is True


def test_analytic_flops_of_a_known_model() -> None:
    import keras

    from benchmarks.flops import analytic_flops

    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inp)  # 8*8*4 outputs x 27 MACs
    x = keras.layers.SeparableConv2D(5, 3, padding="valid")(x)  # 6*6*(4*9 + 4*5)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(2)(x)  # 180 x 2
    model = keras.Model(inp, out)
    assert analytic_flops(model) == 2 * (8 * 8 * 4 * 27 + 6 * 6 * (4 * 9 + 4 * 5) + 180 * 2)
