"""What the CPU can do, and the training precision that follows from it.

Mixed bfloat16 is only fast on CPUs with native bfloat16 arithmetic (AVX512_BF16
or AMX_BF16). Without it TensorFlow emulates bfloat16 and a training step gets
much slower: InceptionV3 at 299 px, batch 16, 2 threads, on an AVX2-only AMD
EPYC (2026-12-03): 6313 ms per image in mixed bfloat16 against 1284 ms in
float32 (``python scripts/train_speed_probe.py inceptionv3 299 --policy ...``).
On an AVX512_BF16 CPU mixed bfloat16 was 2.2x faster than float32. The trainers
therefore default to ``"auto"``: bfloat16 where the CPU has it, else float32.
"""

from __future__ import annotations

from pathlib import Path

TRAINING_PRECISIONS: tuple[str, ...] = ("auto", "bfloat16", "float32")
"""Values of the trainers' ``--mixed-precision`` option."""
NATIVE_BF16_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16")
"""``/proc/cpuinfo`` flags that mean native bfloat16 arithmetic."""


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """Return the CPU feature flags of the first processor in ``cpuinfo``.

    An unreadable file or one without a ``flags`` line (e.g. not Linux) gives an
    empty set.
    """
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def has_native_bfloat16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU computes bfloat16 natively (``flags`` default: :func:`cpu_flags`)."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def resolve_training_precision(requested: str, flags: frozenset[str] | None = None) -> str:
    """Turn a ``--mixed-precision`` value into ``"bfloat16"`` or ``"float32"``.

    Args:
        requested: One of :data:`TRAINING_PRECISIONS`; ``"auto"`` picks bfloat16
            only on a CPU with native bfloat16 arithmetic.
        flags: CPU flags (default: read from ``/proc/cpuinfo``).

    Raises:
        ValueError: If ``requested`` is not allowed.
    """
    if requested not in TRAINING_PRECISIONS:
        raise ValueError(
            f"mixed precision must be one of {list(TRAINING_PRECISIONS)}; received {requested!r}"
        )
    if requested != "auto":
        return requested
    return "bfloat16" if has_native_bfloat16(flags) else "float32"


def set_tensorflow_threads(n: int | None) -> None:
    """Limit TensorFlow to ``n`` intra-op threads (at most 2 inter-op); ``None``: its default.

    Must run before TensorFlow executes its first operation.
    """
    if n is None:
        return
    if n < 1:
        raise ValueError(f"threads must be >= 1 or None; received {n}")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(int(n))
    tf.config.threading.set_inter_op_parallelism_threads(min(2, int(n)))
