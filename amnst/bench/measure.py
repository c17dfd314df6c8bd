"""What every benchmark measures with: the machine it ran on, best-of timing,
the machine's matmul ceiling, and the CNN step's operation and Gram-byte counts.

Shared by the speed, end-to-end and capacity benchmarks (and the cluster
tests' memory bound), so that their figures count alike.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from amnst.config import NSTConfig


def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "gpus": gpus, "tensorflow": tf.__version__}


def best_of(repeats: int, run: Callable[[], Any]) -> float:
    """The fastest of ``repeats`` wall-clock timings of ``run()``, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_flops_per_second(size: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 matrix-multiply rate: the ceiling any step can reach."""
    a = tf.random.stateless_normal([size, size], seed=[1, 2])
    product = tf.function(lambda m: tf.reduce_sum(tf.linalg.matmul(m, m)))
    product(a).numpy()
    return 2 * size**3 / best_of(repeats, lambda: product(a).numpy())


def nst_step_flops(model: keras.Model, config: NSTConfig) -> float:
    """Floating-point operations of one NST step for one segment.

    Convolutions up to the deepest used layer, forward and the input gradient
    (the target is the only variable, so no weight gradients): 2 x 2 x MACs.
    Gram matrices at style layers (and of the log-mel's bands, with a spectral
    style weight): 2*H*W*C^2 forward, twice that backward. Element-wise work
    (activations, pooling, losses, the update) is not counted.
    """
    deepest = max(config.content_layers + config.style_layers)
    flops = 0.0
    for layer in model.layers[:deepest + 1]:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw, c_in, _ = layer.kernel.shape
            flops += 4.0 * h * w * c_out * kh * kw * c_in
    for index in config.style_layers:
        _, h, w, c = model.layers[index].output.shape
        flops += 3 * 2.0 * h * w * c * c
    if config.spectral_style_weight:
        _, bands, frames, _ = model.layers[0].output.shape
        flops += 3 * 2.0 * frames * bands * bands
    return flops


def style_gram_bytes(model: keras.Model, config: NSTConfig, n_mels: int = 384) -> int:
    """Bytes of a style's float32 Gram targets: ``C x C`` at every style layer, then
    ``n_mels x n_mels`` for the spectral style loss and ``F x F`` per random network
    (``nst.RANDOM_NET_FILTERS``, one per dilation) where their weights are set."""
    from amnst.engine.nst import RANDOM_NET_DILATIONS, RANDOM_NET_FILTERS

    channels = [model.layers[index].output.shape[-1] for index in config.style_layers]
    channels += [n_mels] * bool(config.spectral_style_weight)
    channels += [RANDOM_NET_FILTERS] * (len(RANDOM_NET_DILATIONS) if config.random_style_weight else 0)
    return sum(4 * c ** 2 for c in channels)
