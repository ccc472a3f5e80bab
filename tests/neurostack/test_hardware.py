from __future__ import annotations

import pytest

from neurostack.hardware import (
    cpu_flags,
    has_native_bfloat16,
    resolve_training_precision,
    set_tensorflow_threads,
)

ZEN1 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n\n"
ZEN4 = "processor\t: 0\nflags\t\t: avx2 fma avx512f avx512_vnni avx512_bf16\n"


def test_cpu_flags_reads_the_first_flags_line(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(ZEN1 + "processor\t: 1\nflags\t\t: something_else\n")
    assert cpu_flags(path) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
    (tmp_path / "noflags").write_text("processor : 0\n")
    assert cpu_flags(tmp_path / "noflags") == frozenset()


def test_auto_picks_bfloat16_only_with_native_support(tmp_path):
    (tmp_path / "zen1").write_text(ZEN1)
    (tmp_path / "zen4").write_text(ZEN4)
    zen1, zen4 = cpu_flags(tmp_path / "zen1"), cpu_flags(tmp_path / "zen4")
    assert not has_native_bfloat16(zen1) and has_native_bfloat16(zen4)
    assert has_native_bfloat16(frozenset({"amx_bf16"}))
    assert resolve_training_precision("auto", zen1) == "float32"
    assert resolve_training_precision("auto", zen4) == "bfloat16"
    # an explicit choice is kept whatever the CPU
    assert resolve_training_precision("bfloat16", zen1) == "bfloat16"
    assert resolve_training_precision("float32", zen4) == "float32"


def test_unknown_precision_is_rejected_with_the_allowed_values():
    with pytest.raises(ValueError, match=r"\['auto', 'bfloat16', 'float32'\].*'float16'"):
        resolve_training_precision("float16", frozenset())


def test_thread_limit_is_validated_and_none_is_a_no_op():
    set_tensorflow_threads(None)  # nothing to do, nothing raised
    with pytest.raises(ValueError, match="threads must be >= 1 or None; received 0"):
        set_tensorflow_threads(0)
