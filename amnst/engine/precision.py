"""Which floating-point type the CNN computes in.

bfloat16 halves the bytes of every feature map, and the NST step is bound by
memory traffic on the first layers' maps, not by arithmetic. It pays only
where the device computes it natively: NVIDIA GPUs from compute capability
8.0 (A100, H100) and x86 CPUs with AVX512-BF16 or AMX. A CPU with AVX-512 but
neither emulates it in oneDNN; a CPU without AVX-512 has no oneDNN bfloat16
convolution at all, so bf16 is refused there rather than failing inside a step.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

# /proc/cpuinfo flags of the x86 extensions oneDNN uses for bfloat16 convolutions.
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# The least a CPU needs for oneDNN's bfloat16 convolutions at all (its "avx512_core").
CPU_BF16_MINIMUM_FLAGS = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"})
GPU_BF16_CAPABILITY = (8, 0)


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The first processor's feature flags; empty where the file is absent (not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether this process's compute device does bfloat16 natively: every GPU
    TensorFlow sees has compute capability 8.0 or more, or, with no GPU, the
    CPU has one of ``CPU_BF16_FLAGS`` (``flags``: the CPU's, default this one's)."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return all(tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
                   >= GPU_BF16_CAPABILITY for gpu in gpus)
    return bool(CPU_BF16_FLAGS & (cpu_flags() if flags is None else flags))


def resolve(precision: str, flags: frozenset[str] | None = None) -> str:
    """``"fp32"`` or ``"bf16"``: ``precision`` itself, or for ``"auto"`` bf16 where
    :func:`native_bf16` holds. ``"bf16"`` on a CPU (no GPU) without AVX-512 raises
    ValueError: oneDNN has no bfloat16 convolution there. ``flags``: the CPU's,
    default this one's."""
    if precision not in ("fp32", "bf16", "auto"):
        raise ValueError(f"precision={precision!r} must be fp32, bf16 or auto")
    flags = cpu_flags() if flags is None else flags
    if precision == "auto":
        return "bf16" if native_bf16(flags) else "fp32"
    if precision == "bf16" and not tf.config.list_physical_devices("GPU") and not CPU_BF16_MINIMUM_FLAGS <= flags:
        raise ValueError("precision=bf16 needs a GPU or a CPU with AVX-512 (oneDNN has no bfloat16 "
                         "convolution without it); use fp32 or auto on this machine")
    return precision


def compute_dtype(precision: str) -> tf.DType:
    """The TensorFlow type of a resolved precision (:func:`resolve`)."""
    return tf.bfloat16 if precision == "bf16" else tf.float32
