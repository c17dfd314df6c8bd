"""``amnst bench nst``, ``invert`` and ``pipeline``: each part of a transfer timed on
its own, against a baseline timed in the same process on the same machine.

The NST step against the original's eager loop and the matmul ceiling; the
fast inversion against librosa's; Ray's overhead per optimise task, the
worker thread pools' effect, and the driver's memory against manifest size.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import keras
import librosa
import numpy as np
import tensorflow as tf

from amnst import synth
from amnst.bench import evaluation
from amnst.bench.measure import best_of, machine, matmul_flops_per_second, nst_step_flops
from amnst.config import AudioConfig, NSTConfig, Preset, get_preset
from amnst.engine import audio, invert, precision
from amnst.engine.model import build_model, feature_extractor
from amnst.engine.nst import StyleTransfer

NST_BATCH = 5


def seed_faithful_loop(model: keras.Model, config: NSTConfig, content: np.ndarray,
                       style: np.ndarray) -> Callable[[int], None]:
    """The original's optimisation loop, for timing: eager, every layer's output
    of content, style and target recomputed at every iteration, Keras SGD."""
    extractor = feature_extractor(model, tuple(range(len(model.layers))))
    target = tf.Variable(content)
    optimizer = keras.optimizers.SGD(config.learning_rate)

    def gram(f: tf.Tensor) -> tf.Tensor:
        flat = tf.reshape(f, [-1, f.shape[-1]])
        return tf.matmul(flat, flat, transpose_a=True)

    def run(iterations: int) -> None:
        for _ in range(iterations):
            with tf.GradientTape() as tape:
                ft, fc, fs = (extractor(x[..., None], training=False) for x in (target, content, style))
                loss = config.content_weight * sum(
                    tf.reduce_sum(tf.square(fc[i] - ft[i])) / tf.cast(tf.size(ft[i]), tf.float32)
                    for i in config.content_layers)
                loss += config.style_weight * sum(
                    tf.reduce_sum(tf.square(gram(fs[i]) - gram(ft[i]))) / tf.cast(tf.size(ft[i]), tf.float32)
                    for i in config.style_layers)
            optimizer.apply_gradients([(tape.gradient(loss, target), target)])
    return run


def bench_nst(quick: bool = False) -> dict[str, Any]:
    """Segment-iterations per second of the compiled ``default`` step at batch 5, at
    each CNN precision (fp32, bf16), against the seed-faithful eager loop and
    against the matmul ceiling.

    Segments are the CNN's full 431 frames (not fitted), the shape whose FLOPs
    ``nst_step_flops`` counts. The precisions are timed in turn within every
    repeat, so a drift of the machine's speed falls on both alike."""
    iterations, repeats = (3, 1) if quick else (10, 3)
    model = build_model()
    preset = get_preset("default").with_overrides(iterations=iterations, segments_per_batch=NST_BATCH,
                                                  fit_segments=False)
    content_y, style_y = evaluation.evaluation_pair(evaluation.EVALUATION_PAIRS[0].name, 30.0)
    content = audio.segment(audio.mel_spectrogram(content_y, preset.audio), preset.audio)[:NST_BATCH]
    style = audio.segment(audio.mel_spectrogram(style_y, preset.audio), preset.audio)[:NST_BATCH]

    transfers = {p: StyleTransfer(model, dataclasses.replace(preset.nst, precision=p), audio=preset.audio)
                 for p in ("fp32", "bf16")}
    targets = {p: transfer.style_targets(style) for p, transfer in transfers.items()}
    for p, transfer in transfers.items():
        transfer.optimise(content, targets[p])  # traces and warms the compiled step
    times: dict[str, list[float]] = {p: [] for p in transfers}
    for _ in range(repeats):
        for p, transfer in transfers.items():
            times[p].append(best_of(1, lambda: transfer.optimise(content, targets[p])))

    seed = get_preset("seed").nst
    baseline = seed_faithful_loop(model, seed, content, style)
    baseline(1)
    eager = best_of(repeats, lambda: baseline(iterations))

    segment_iterations = NST_BATCH * iterations
    flops = nst_step_flops(model, preset.nst)
    peak = matmul_flops_per_second()
    rates = {p: segment_iterations / min(t) for p, t in times.items()}
    default = precision.resolve(preset.nst.precision)
    return {
        "benchmark": "nst", "machine": machine(), "batch": NST_BATCH, "iterations": iterations,
        "native_bf16": precision.native_bf16(), "default_precision": default,
        "compiled_segment_iterations_per_s": rates,
        "bf16_time_over_fp32": min(times["bf16"]) / min(times["fp32"]),
        "seed_faithful_eager_segment_iterations_per_s": segment_iterations / eager,
        "speedup_vs_seed_faithful": {p: rate * eager / segment_iterations for p, rate in rates.items()},
        "step_gflop_per_segment": flops / 1e9,
        "achieved_gflops": {p: rate * flops / 1e9 for p, rate in rates.items()},
        "matmul_gflops": peak / 1e9,
        "fraction_of_fp32_matmul_rate": {p: rate * flops / peak for p, rate in rates.items()},
    }


def bench_invert(quick: bool = False, mel_power: float = 1.0, n_iter: int = 32) -> dict[str, Any]:
    """The fast batched inversion against librosa's ``mel_to_audio`` path at the
    same Griffin-Lim iteration count, on one mel of synthesized music.

    Also splits each path into its mel-to-linear solve and Griffin-Lim, since
    librosa's NNLS returns its starting point here yet costs most of its time.
    """
    seconds, repeats = (10.0, 1) if quick else (30.0, 3)
    config = AudioConfig(mel_power=mel_power)
    y = synth.music(seconds, seed=11)
    mel = audio.mel_spectrogram(y, config)
    paths = {
        "librosa": (lambda: invert.reference_mel_to_audio(mel, config, n_iter, len(y), seed=0),
                    lambda: _librosa_mel_to_stft(mel, config),
                    lambda s: librosa.griffinlim(s, n_iter=n_iter, hop_length=config.hop_length,
                                                 n_fft=config.n_fft, length=len(y), momentum=0.99,
                                                 random_state=0)),
        "fast": (lambda: invert.mel_to_audio(mel, config, n_iter, len(y), seed=0),
                 lambda: invert.mel_to_linear(mel[None], config).numpy()[0],
                 lambda s: invert.griffin_lim(s[None], config, n_iter, len(y)).numpy()),
    }
    figures: dict[str, Any] = {"benchmark": "invert", "machine": machine(), "audio_seconds": seconds,
                               "n_iter": n_iter, "mel_power": mel_power}
    for name, (whole, solve, griffin_lim) in paths.items():
        whole()  # numba compilation, TensorFlow tracing
        output = whole()
        linear = solve()
        figures[name] = {
            "seconds_per_audio_second": best_of(repeats, whole) / seconds,
            "mel_to_linear_seconds": best_of(repeats, solve),
            "griffin_lim_seconds": best_of(repeats, lambda: griffin_lim(linear)),
            "spectral_convergence": invert.spectral_convergence(output, mel, config),
        }
    reference, fast = figures["librosa"], figures["fast"]
    figures["speedup"] = reference["seconds_per_audio_second"] / fast["seconds_per_audio_second"]
    figures["griffin_lim_speedup"] = reference["griffin_lim_seconds"] / fast["griffin_lim_seconds"]
    figures["spectral_convergence_difference"] = (fast["spectral_convergence"]
                                                  - reference["spectral_convergence"])
    return figures


def _librosa_mel_to_stft(mel: np.ndarray, config: AudioConfig) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Empty filters detected", UserWarning)
        return librosa.feature.inverse.mel_to_stft(mel, sr=config.sample_rate, n_fft=config.n_fft,
                                                   power=config.mel_power, fmin=config.fmin,
                                                   fmax=config.fmax)


def bench_pipeline(quick: bool = False) -> dict[str, Any]:
    """Ray's overhead per optimise task, the worker thread pools' effect, and the
    driver's peak memory against manifest size.

    Overhead: one-segment optimise tasks run one at a time on a warm worker at
    the default iterations; the driver's submit-to-result time minus the
    task's own optimisation time, as a share of the latter. Thread pools: as
    many one-CPU optimise tasks side by side as the instance has CPUs, with
    TensorFlow's pools sized to the task (as the runner's workers do) or to
    the machine (TensorFlow's default), in the same run. Memory: ``amnst run``
    as a separate driver process on manifests of tiny pairs (0.5 s,
    1 iteration), its peak resident set (VmHWM) as it exits.
    """
    import ray

    from amnst.batch.pipeline import Weights
    from amnst.batch.ray_runner import _optimise

    tasks, sizes = (3, (20, 200)) if quick else (6, (100, 2000))
    preset = get_preset("default")
    content, style = evaluation.evaluation_pair(evaluation.EVALUATION_PAIRS[0].name, 10.0)
    segments = audio.segment(audio.mel_spectrogram(content, preset.audio), preset.audio)
    transfer = StyleTransfer(build_model(), preset.nst)
    targets = transfer.style_targets(audio.segment(audio.mel_spectrogram(style, preset.audio), preset.audio))
    figures: dict[str, Any] = {"benchmark": "pipeline", "machine": machine(),
                               "iterations": preset.nst.iterations}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        weights = Weights.locate(None, preset.nst.seed)
        segments_ref, targets_ref = ray.put(segments[:1]), ray.put(targets)
        ray.get(_optimise.remote(segments_ref, 0, targets_ref, preset, weights))  # warm the worker
        shares = []
        for _ in range(tasks):
            start = time.perf_counter()
            result = ray.get(_optimise.remote(segments_ref, 0, targets_ref, preset, weights))
            shares.append((time.perf_counter() - start - result.seconds) / result.seconds)
        figures["task_overhead_share"] = float(np.median(shares))
        figures["optimise_task_seconds"] = result.seconds
        window = 5.0 if quick else 30.0
        rates = {pools: _side_by_side_rate(segments_ref, targets_ref, preset, weights, pools == "matched", window)
                 for pools in ("tensorflow-default", "matched")}
        figures["side_by_side_segment_iterations_per_s"] = rates
        figures["matched_pools_speedup"] = rates["matched"] / rates["tensorflow-default"]
        address = ray.get_runtime_context().gcs_address
        figures["driver_peak_mb"] = {str(n): _driver_peak_mb(n, address) for n in sizes}
    finally:
        ray.shutdown()
    small, large = (figures["driver_peak_mb"][str(n)] for n in sizes)
    figures["driver_peak_difference_mb"] = large - small
    return figures


def _side_by_side_rate(segments: Any, targets: Any, preset: Preset, weights: Any, matched: bool,
                       window: float) -> float:
    """Segment-iterations per second of one-CPU optimise tasks, one per CPU of the
    Ray instance, side by side in fresh workers (``matched``: TensorFlow's pools
    sized to the task by the runner's ``setup_worker``). Each warms up, then all
    optimise over one common ``window`` of seconds, so that their timed work
    overlaps."""
    import ray

    from amnst.batch.pipeline import optimise_segments
    from amnst.batch.ray_runner import setup_worker

    def optimise_in_window(segments: np.ndarray, targets: Any, start_at: float) -> float:
        if matched:
            setup_worker()
        optimise_segments(segments, 0, targets, preset, weights)
        time.sleep(max(0.0, start_at - time.time()))
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < window:
            optimise_segments(segments, 0, targets, preset, weights)
            done += 1
        return len(segments) * preset.nst.iterations * done / (time.perf_counter() - started)

    task = ray.remote(num_cpus=1, max_calls=1)(optimise_in_window)
    cpus = int(ray.cluster_resources()["CPU"])
    # Past every worker's start and warm-up (TensorFlow's import, the step's trace).
    start_at = time.time() + 45.0
    return sum(ray.get([task.remote(segments, targets, start_at) for _ in range(cpus)]))


def _driver_peak_mb(pairs: int, address: str) -> float:
    """Peak RSS of an ``amnst run`` driver over a manifest of ``pairs`` tiny pairs."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "c.wav").write_bytes(audio.encode(synth.music(0.5, seed=1), 22050, "wav"))
        (root / "s.wav").write_bytes(audio.encode(synth.rain(0.5, seed=1), 22050, "wav"))
        rows = "".join(f"p{i},c.wav,s.wav\n" for i in range(pairs))
        (root / "manifest.csv").write_text("pair_id,content,style\n" + rows)
        # The driver reports its own high-water mark: a parent's rusage would
        # count the pages of this (TensorFlow-sized) process it was forked from.
        driver = ("import re, sys; from amnst.cli import main; status = main(sys.argv[1:]); "
                  "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1], file=sys.stderr); "
                  "sys.exit(status)")
        done = subprocess.run(
            [sys.executable, "-c", driver, "run", str(root / "manifest.csv"), "--output", str(root / "out"),
             "--iterations", "1", "--max-in-flight", "64"],
            env={**os.environ, "RAY_ADDRESS": address}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        if done.returncode != 0:
            raise RuntimeError(f"amnst run failed: {done.stderr[-1000:]}")
    return int(done.stderr.strip().splitlines()[-1]) / 1024  # VmHWM is in kB
