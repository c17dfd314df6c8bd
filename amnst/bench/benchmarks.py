"""``amnst bench ...``: speed measured against baselines in the same run.

Every figure is a ratio against something timed in the same process on the
same machine, so figures from different machines can be compared as ratios.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import librosa
import numpy as np
import tensorflow as tf

from amnst.engine import audio, invert
from amnst.ops import capacity
from amnst import synth
from amnst.bench import evaluation
from amnst.config import AudioConfig, NSTConfig, Preset, get_preset
from amnst.engine.model import build_model, feature_extractor
from amnst.engine.nst import StyleTransfer

if TYPE_CHECKING:
    from amnst.batch.pipeline import PairJob, Weights

NST_BATCH = 5


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


def style_gram_bytes(model: keras.Model, config: NSTConfig) -> int:
    """Bytes of a style's float32 Gram targets: ``C x C`` at every style layer."""
    return sum(4 * model.layers[index].output.shape[-1] ** 2 for index in config.style_layers)


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
    """Segment-iterations per second of the compiled ``default`` step at batch 5,
    against the seed-faithful eager loop and against the matmul ceiling.

    Segments are the CNN's full 431 frames (not fitted), the shape whose FLOPs
    ``nst_step_flops`` counts."""
    iterations, repeats = (3, 1) if quick else (10, 3)
    model = build_model()
    preset = get_preset("default").with_overrides(iterations=iterations, segments_per_batch=NST_BATCH,
                                                  fit_segments=False)
    content_y, style_y = evaluation.evaluation_pair(evaluation.EVALUATION_PAIRS[0].name, 30.0)
    content = audio.segment(audio.mel_spectrogram(content_y, preset.audio), preset.audio)[:NST_BATCH]
    style = audio.segment(audio.mel_spectrogram(style_y, preset.audio), preset.audio)[:NST_BATCH]

    transfer = StyleTransfer(model, preset.nst, audio=preset.audio)
    targets = transfer.style_targets(style)
    transfer.optimise(content, targets)  # traces and warms the compiled step
    compiled = best_of(repeats, lambda: transfer.optimise(content, targets))

    seed = get_preset("seed").nst
    baseline = seed_faithful_loop(model, seed, content, style)
    baseline(1)
    eager = best_of(repeats, lambda: baseline(iterations))

    segment_iterations = NST_BATCH * iterations
    flops = nst_step_flops(model, preset.nst)
    peak = matmul_flops_per_second()
    compiled_rate = segment_iterations / compiled
    return {
        "benchmark": "nst", "machine": machine(), "batch": NST_BATCH, "iterations": iterations,
        "compiled_default_segment_iterations_per_s": compiled_rate,
        "seed_faithful_eager_segment_iterations_per_s": segment_iterations / eager,
        "speedup_vs_seed_faithful": eager / compiled,
        "step_gflop_per_segment": flops / 1e9,
        "achieved_gflops": compiled_rate * flops / 1e9,
        "matmul_gflops": peak / 1e9,
        "fraction_of_matmul_rate": compiled_rate * flops / peak,
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


E2E_PAIR = evaluation.EVALUATION_PAIRS[0].name
E2E_SECONDS = (10.0, 30.0, 120.0)
# Seconds of compute per second of audio (issue #6): this 2-core CPU, and a
# spread of cost per audio second across lengths of at most 10 %.
E2E_TARGET, E2E_SPREAD_TARGET = 0.5, 0.10
# The stages of one pair in the batch runner, in order; "style" and
# "optimise" run as GPU tasks there, the rest on CPUs.
E2E_STAGES = ("read", "decode", "mel", "style", "optimise", "invert", "encode", "quality", "write")
E2E_GPU_STAGES = ("style", "optimise")


def bench_e2e(quick: bool = False, seconds: tuple[float, ...] = E2E_SECONDS,
              segments_per_task: int | None = None, workers: int = 0, rounds: int = 1,
              baseline: str | None = None) -> dict[str, Any]:
    """Seconds of compute per second of audio, stage by stage, for pairs of each length.

    One pair per length (``E2E_PAIR`` synthesized, as wav files in a
    temporary folder) goes through the batch runner's own stage functions,
    one after the other, at the ``default`` preset: ``analyse_pair``,
    ``style_targets_for``, ``optimise_segments`` in tasks of
    ``segments_per_task`` segments (default: ``amnst run``'s) and
    ``render_pair``. With ``workers`` 0 everything runs in this process, on
    TensorFlow's default pools (the whole machine); with ``workers`` N the
    optimise tasks run as the runner runs them, as its one-CPU Ray tasks on a
    local instance of N CPUs, side by side, each worker's pools sized to its
    CPU. Seconds are wall-clock seconds of the machine. Pairs of one segment
    and of half a segment warm every compiled function (every worker's) first,
    the inversion's at two lengths, before anything is timed. ``quick``: 2
    iterations, pairs of 4 and 8 s.
    ``rounds``: time every length that many times, the lengths taken in turn
    within each round, and report for each length its round of median total
    (the lower of the two middle ones for an even count), with every round's
    total beside it.
    The spread is the costliest length's cost per audio second over the
    cheapest's, minus one.
    ``baseline``: a variant (``"base:key=value,..."``, as ``bench quality``
    takes) timed alike in the same rounds, each of its pairs right after the
    default's of the same length; ``cost_ratio`` is the default's total over
    the baseline's, per length.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    import tempfile

    from amnst.batch.pipeline import Weights
    from amnst.batch.ray_runner import RunOptions

    presets = [get_preset("default")] + ([_variant(baseline)] if baseline else [])
    if quick:
        presets, seconds = [p.with_overrides(iterations=2) for p in presets], (4.0, 8.0)
    preset = presets[0]
    width = segments_per_task or RunOptions.segments_per_task
    weights = Weights.locate(None, preset.nst.seed)
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        runners = [stack.enter_context(_optimise_runner(workers, p, weights)) for p in presets]
        for p, optimise in zip(presets, runners):
            for warm_up in (p.audio.segment_seconds, p.audio.segment_seconds / 2):
                _e2e_pair(_e2e_job(Path(folder), warm_up, p), weights, width, optimise, copies=max(1, workers))
        jobs = [[_e2e_job(Path(folder), s, p) for p in presets] for s in seconds]
        # Lengths in turn, round after round: a drift in this shared machine's
        # speed then falls on every length alike instead of on one.
        timed_rounds = [[[_e2e_pair(job, weights, width, optimise) for job, optimise in zip(length, runners)]
                         for length in jobs] for _ in range(rounds)]
    by_preset = [[_median_round([r[length][k] for r in timed_rounds]) for length in range(len(seconds))]
                 for k in range(len(presets))]
    rows = by_preset[0]
    costs = [row["total_per_audio_second"] for row in rows]
    per_segment = [row["seconds"]["optimise"] / row["segments"] for row in rows]
    compared = {}
    if baseline:
        compared = {"baseline": {"variant": baseline, "pairs": by_preset[1]},
                    "cost_ratio": [row["total_per_audio_second"] / base["total_per_audio_second"]
                                   for row, base in zip(rows, by_preset[1])]}
    return {
        "benchmark": "e2e", "machine": machine(), "preset": preset.name, "iterations": preset.nst.iterations,
        "segments_per_task": width, "workers": workers, "rounds": rounds, "target_per_audio_second": E2E_TARGET,
        "spread_target": E2E_SPREAD_TARGET, "pairs": rows, **compared,
        "within_target": [cost <= E2E_TARGET for cost in costs],
        "spread": max(costs) / min(costs) - 1,
        "spread_by_stage": {stage: _spread([row["per_audio_second"][stage] for row in rows])
                            for stage in E2E_STAGES},
        "optimise_spread_per_segment": _spread(per_segment),
    }


OptimiseTasks = Callable[[list[tuple[np.ndarray, int]], Any], list[Any]]


@contextlib.contextmanager
def _optimise_runner(workers: int, preset: Preset, weights: Any) -> Iterator[OptimiseTasks]:
    """Runs a pair's optimise tasks ``[(segments, start), ...]`` against style targets:
    in this process (``workers`` 0), or as the runner's Ray tasks on a local
    instance of ``workers`` CPUs."""
    from amnst.batch.pipeline import optimise_segments

    if not workers:
        yield lambda tasks, targets: [optimise_segments(segments, start, targets, preset, weights)
                                      for segments, start in tasks]
        return
    import ray

    from amnst.batch.ray_runner import _optimise

    ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        def on_ray(tasks: list[tuple[np.ndarray, int]], targets: Any) -> list[Any]:
            shared = ray.put(targets)
            return ray.get([_optimise.options(num_cpus=1).remote(segments, start, shared, preset, weights)
                            for segments, start in tasks])
        yield on_ray
    finally:
        ray.shutdown()


def e2e_table(figures: dict[str, Any]) -> str:
    """Seconds per second of audio by stage (rows) and pair length (columns), as Markdown."""
    rows = figures["pairs"]
    lines = ["| stage | " + " | ".join(f"{r['audio_seconds']:g} s ({r['segments']} segments)" for r in rows)
             + " | spread |", "|---|" + "---:|" * (len(rows) + 1)]
    for stage in E2E_STAGES:
        lines.append(f"| {stage} | " + " | ".join(f"{r['per_audio_second'][stage]:.4f}" for r in rows)
                     + f" | {figures['spread_by_stage'][stage]:+.0%} |")
    lines.append("| **total** | " + " | ".join(f"**{r['total_per_audio_second']:.3f}**" for r in rows)
                 + f" | **{figures['spread']:+.0%}** |")
    if figures.get("rounds", 1) > 1:
        lines.append(f"| total in each of {figures['rounds']} rounds (median above) | " + " | ".join(
            ", ".join(f"{cost:.3f}" for cost in r["round_totals_per_audio_second"]) for r in rows) + " | |")
    if "baseline" in figures:
        lines.append("| baseline total | " + " | ".join(
            f"{r['total_per_audio_second']:.3f}" for r in figures["baseline"]["pairs"]) + " | |")
        lines.append("| **cost over the baseline's** | " + " | ".join(
            f"**{ratio:.2f}x**" for ratio in figures["cost_ratio"]) + " | |")
    return "\n".join(lines)


def _median_round(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Of one length's timed rounds, the one of median total cost, with every
    round's total (``round_totals_per_audio_second``, in round order)."""
    ranked = sorted(rows, key=lambda row: row["total_per_audio_second"])
    return {**ranked[(len(ranked) - 1) // 2],
            "round_totals_per_audio_second": [row["total_per_audio_second"] for row in rows]}


def _spread(values: list[float]) -> float:
    """Largest over smallest, minus one."""
    return max(values) / min(values) - 1


def _e2e_job(folder: Path, seconds: float, preset: Preset) -> PairJob:
    """The pair of ``seconds`` synthesized and written to ``folder`` as wav
    files, as a job of ``preset`` whose output goes there too."""
    from amnst.batch.pipeline import PairJob

    content, style = evaluation.evaluation_pair(E2E_PAIR, seconds)
    uris = []
    for name, y in (("content", content), ("style", style)):
        path = folder / f"{name}-{seconds:g}s.wav"
        path.write_bytes(audio.encode(y, preset.audio.sample_rate, "wav"))
        uris.append(str(path))
    return PairJob(f"e2e-{seconds:g}s", 0, uris[0], uris[1], preset, str(folder / f"out-{seconds:g}s.wav"))


def _e2e_pair(job: PairJob, weights: Weights, width: int, optimise: OptimiseTasks,
              copies: int = 1) -> dict[str, Any]:
    """One pair through the runner's stages; its stage seconds and traffic.
    ``copies``: optimise every task that many times over (side by side on
    Ray), to warm that many workers."""
    from amnst.batch.pipeline import analyse_pair, render_pair, style_targets_for, timed

    preset = job.preset
    stages: dict[str, float] = {}
    with _storage_traffic() as traffic:
        info, segments = analyse_pair(job, weights, stages)
        if info.status != "ready":
            raise RuntimeError(f"{job.pair_id}: {info.status}: {info.error}")
        with timed(stages, "style"):
            targets = style_targets_for(job.style_uri, preset, weights)
        # As the runner splits a piece: coupled Grams need every segment in one task.
        step = len(segments) if preset.nst.couples_segments else width
        tasks = [(segments[start:start + step], start) for start in range(0, len(segments), step)]
        with timed(stages, "optimise"):
            parts = optimise(tasks * copies, targets)[:len(tasks)]
        render_pair(job, info, parts, stages=stages)
    audio_seconds = info.n_samples / preset.audio.sample_rate
    total = sum(stages.values())
    return {"audio_seconds": audio_seconds, "segments": info.n_segments,
            "seconds": {stage: stages[stage] for stage in E2E_STAGES},
            "per_audio_second": {stage: stages[stage] / audio_seconds for stage in E2E_STAGES},
            "total_seconds": total, "total_per_audio_second": total / audio_seconds,
            "cpu_stages_per_audio_second": sum(stages[s] for s in E2E_STAGES if s not in E2E_GPU_STAGES)
            / audio_seconds, "storage": traffic}


@contextlib.contextmanager
def _storage_traffic() -> Iterator[dict[str, int]]:
    """Count the storage reads and writes made in the block: requests and bytes."""
    from amnst.batch import storage

    traffic = {"reads": 0, "writes": 0, "bytes_read": 0, "bytes_written": 0}
    previous = storage.observer

    def observe(operation: str, size: int, failed: bool) -> None:
        traffic["reads" if operation == "read" else "writes"] += 1
        traffic["bytes_read" if operation == "read" else "bytes_written"] += size
        if previous is not None:
            previous(operation, size, failed)

    storage.observer = observe
    try:
        yield traffic
    finally:
        storage.observer = previous


def bench_capacity(quick: bool = False, e2e: str | None = None, pairs: int = 100_000,
                   pair_seconds: float = 180.0, window_hours: float = 8.0,
                   gpu_fraction: float = capacity.ASSUMED_GPU_FRACTION, gpu: str | None = None) -> dict[str, Any]:
    """GPU workers and budgets for a batch (:func:`amnst.ops.capacity.plan`) from measured costs.

    CPU costs come from an ``amnst bench e2e`` figures file (``e2e``), else
    from a fresh ``bench_e2e`` at 30 s; the pair closest to ``pair_seconds``
    is used, its wall seconds counted as core-seconds on every core of the
    machine that measured it (an upper bound). The GPU's cost per
    segment-iteration comes from a ``python -m amnst.bench.xla_replay`` figures file
    (``gpu``), at the layout's segments per task; without one it is the CNN's
    FLOPs per step at an assumed sustained fraction (``gpu_fraction``) of an
    H100's FP32 rate.
    """
    import json

    figures = json.loads(Path(e2e).read_text()) if e2e else bench_e2e(quick, seconds=(30.0,))
    row = min(figures["pairs"], key=lambda r: abs(r["audio_seconds"] - pair_seconds))
    cores = figures["machine"]["cpu_count"]
    preset = get_preset("default")
    model = build_model()
    layout = capacity.Layout()
    costs = capacity.Costs(
        gram_bytes=style_gram_bytes(model, preset.nst),
        cpu_core_seconds_per_audio_second=row["cpu_stages_per_audio_second"] * cores,
        style_core_seconds_per_audio_second=row["per_audio_second"]["style"] * cores,
        storage_reads_per_pair=row["storage"]["reads"], storage_writes_per_pair=row["storage"]["writes"],
        bytes_read_per_audio_second=row["storage"]["bytes_read"] / row["audio_seconds"],
        bytes_written_per_audio_second=row["storage"]["bytes_written"] / row["audio_seconds"])
    if gpu:
        rate = capacity.GpuRate.replayed(json.loads(Path(gpu).read_text()), layout.segments_per_task)
    else:
        rate = capacity.GpuRate.assumed(nst_step_flops(model, preset.nst), gpu_fraction)
    batch = capacity.Batch(pairs=pairs, pair_seconds=pair_seconds, window_seconds=window_hours * 3600)
    return {"benchmark": "capacity", "machine": machine(),
            "cpu_costs_from": {"file": e2e, "audio_seconds": row["audio_seconds"], "cores": cores,
                               "measured_on": figures["machine"]["processor"]},
            **capacity.plan(batch, preset, costs, rate, layout)}




QUALITY_TARGETS = {"chroma_similarity": 0.95, "onset_correlation": 0.8, "mfcc_progress": 0.3}


def bench_quality(quick: bool = False, presets: tuple[str, ...] = ("seed", "default"),
                  variants: tuple[str, ...] = (), weights: str | None = None,
                  seconds: float = 10.0, frontier: bool = False, plot: str | None = None) -> dict[str, Any]:
    """Every preset (and variant) over the synthesized evaluation set, with reference rows.

    With ``frontier``: instead, the trade-off yardstick (:mod:`amnst.bench.frontier`):
    the mix and every design of ``frontier.DESIGNS`` (and variant) swept over
    their strengths, with margins over the mix frontier; ``plot`` is where
    the picture goes (none if not given).

    A variant is ``"base:key=value,key=value"`` (base preset, then overrides).
    Reference rows: the content itself; a plain mix (0.7 content + 0.3
    style), which keeps the content and already moves toward the style: a
    transfer has to beat it; and the content equalised to the style's
    long-term spectrum. Returns per-pair rows and per-method means.
    """
    from amnst.engine import quality
    from amnst.engine.model import load_model
    from amnst.batch.pipeline import transfer_pair

    pairs = evaluation.EVALUATION_PAIRS[:3] if quick else evaluation.EVALUATION_PAIRS
    if frontier:
        return _bench_frontier(pairs, variants, weights, seconds, plot, quick)
    methods = {name: get_preset(name) for name in presets}
    methods.update({variant: _variant(variant) for variant in variants})
    if quick:
        methods = {name: p.with_overrides(iterations=min(p.nst.iterations, 10)) for name, p in methods.items()}
    transfers = {name: StyleTransfer(load_model(weights, seed=p.nst.seed), p.nst, audio=p.audio) for name, p in methods.items()}
    reference_config = get_preset("default").audio
    for name, preset in methods.items():
        # Untimed: a method's first call traces its step, and its first pair would pay for it.
        transfer_pair(*evaluation.evaluation_pair(pairs[0].name, preset.audio.segment_seconds / 2), preset,
                      transfers[name])
    rows = []
    for index, pair in enumerate(pairs):
        content, style = evaluation.evaluation_pair(pair.name, seconds)
        # Content and style are analysed once per pair for every output measured with the
        # same audio configuration (the Gram signature segments as the preset does).
        anchors = {config: quality.Anchors.of(content, style, config)
                   for config in {reference_config, *(p.audio for p in methods.values())}}
        references = {"content": content, "mix": quality.plain_mix(content, style),
                      "equalised": quality.equalised(content, style, reference_config)}
        for name, output in references.items():
            rows.append({"pair": pair.name, "method": name,
                         **quality.measure(output, anchors[reference_config], reference_config)})
        # Each pair starts at the next method: variants doing the same work as
        # `default` took 0.88-0.91x its time when `default` always ran first.
        names = list(methods)
        for name in names[index % len(names):] + names[:index % len(names)]:
            preset = methods[name]
            start = time.perf_counter()
            outcome = transfer_pair(content, style, preset, transfers[name])
            rows.append({"pair": pair.name, "method": name, "seconds": time.perf_counter() - start,
                         "loss_start": float(outcome.result.loss[0].mean()),
                         "loss_end": float(outcome.result.loss[-1].mean()),
                         **quality.measure(outcome.audio, anchors[preset.audio], preset.audio, outcome.mel)})
    return {"benchmark": "quality", "machine": machine(), "seconds_per_pair": seconds, "weights": weights,
            "rows": rows, "summary": _quality_summary(rows)}


def _bench_frontier(pairs: list[evaluation.EvaluationPair], variants: tuple[str, ...], weights: str | None,
                    seconds: float, plot: str | None, quick: bool) -> dict[str, Any]:
    """``bench quality --frontier``: see :func:`bench_quality`."""
    from amnst.bench import frontier

    methods = [*frontier.DESIGNS, *(frontier.Method(v, _variant(v)) for v in variants)]
    strengths = frontier.STRENGTHS
    if quick:
        methods = [dataclasses.replace(m, preset=m.preset.with_overrides(iterations=min(m.preset.nst.iterations, 4)))
                   for m in methods[:2]]
        strengths = (0.0, 0.5, 1.0)
    figures = frontier.run(methods, pairs, seconds, weights, strengths)
    if plot:
        frontier.plot(figures, plot)
    return {"benchmark": "quality-frontier", "machine": machine(), "seconds_per_pair": seconds,
            "weights": weights, "plot": plot, **figures}


def _variant(text: str) -> Preset:
    """A variant ``"base:key=value,key=value"``: the base preset with overrides."""
    from amnst.config import parse_layers

    base, _, settings = text.partition(":")
    overrides = {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        overrides[key] = parse_layers(value.replace("+", ",")) if key.endswith("_layers") else _scalar(value)
    return get_preset(base).with_overrides(**overrides)


def _scalar(text: str) -> int | float | bool | str:
    """A variant's value: an int, a float, a bool, else the text itself."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _quality_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per method: the mean of every measure, the worst pair on each target, on how
    many pairs each target is met (``pairs_ok``), and whether all are met on every pair."""
    summary = {}
    mix = {row["pair"]: row for row in rows if row["method"] == "mix"}
    for method in dict.fromkeys(row["method"] for row in rows):
        mine = [row for row in rows if row["method"] == method]
        numeric = [k for k, v in mine[0].items() if isinstance(v, float)]
        entry: dict[str, Any] = {k: float(np.mean([row[k] for row in mine])) for k in numeric}
        entry.update({f"worst_{k}": float(min(row[k] for row in mine)) for k in QUALITY_TARGETS})
        met = [_targets_met(row, mix[row["pair"]]) for row in mine]
        entry["pairs_ok"] = {target: sum(m[target] for m in met) for target in met[0]}
        entry["targets_met"] = all(all(m.values()) for m in met)
        summary[method] = entry
    return summary


def _targets_met(row: dict[str, Any], mix: dict[str, Any]) -> dict[str, bool]:
    """Which of the quality targets one pair's row meets, against that pair's plain mix."""
    return {
        "chroma": row["chroma_similarity"] >= QUALITY_TARGETS["chroma_similarity"],
        "onset": row["onset_correlation"] >= QUALITY_TARGETS["onset_correlation"],
        "mfcc": row["mfcc_progress"] >= QUALITY_TARGETS["mfcc_progress"]
        and row["mfcc_progress"] > mix["mfcc_progress"],
        "noise": row["noise_ratio"] <= mix["noise_ratio"],
        "no clipping": row["peak"] < 1.0,
        "loss falls": row.get("loss_end", 0) <= row.get("loss_start", 0),
    }


def quality_table(figures: dict[str, Any]) -> str:
    """The summary as a plain-text table, one line per method: means, then on how
    many pairs each target is met."""
    columns = ("chroma_similarity", "onset_correlation", "mfcc_progress", "gram_progress",
               "noise_ratio", "spectral_convergence", "seconds")
    targets = list(next(iter(figures["summary"].values()))["pairs_ok"])
    lines = ["method".ljust(40) + "".join(c[:12].rjust(13) for c in columns)
             + "  pairs ok: " + ", ".join(targets)]
    for method, entry in figures["summary"].items():
        cells = "".join((f"{entry[c]:.3f}" if c in entry else "-").rjust(13) for c in columns)
        ok = "/".join(str(entry["pairs_ok"][t]) for t in targets)
        lines.append(method[:40].ljust(40) + cells + f"  {ok}" + ("  all met" if entry["targets_met"] else ""))
    return "\n".join(lines)


def bench_train(quick: bool = False) -> dict[str, Any]:
    """Training segments per second of the CNN on Ray Train with 1 and with 2 workers
    (and 1 GPU where TensorFlow sees one), against the same compiled step in this
    process without Ray or a distribution strategy.

    Each configuration trains on one synthesized GTZAN-layout dataset (30 s
    tracks, the recipe's global batch of 32) into its own output; its figure
    is its fastest epoch after the first, which traces the step.
    """
    import tempfile

    import ray

    from amnst.train.cnn import train
    from amnst.train.dataset import write_synthetic_gtzan
    from amnst.train.recipe import TrainOptions
    from amnst.train.records import read_epochs

    tracks, epochs, repeats = (4, 2, 1) if quick else (8, 3, 3)
    batch = TrainOptions.batch_size  # the recipe's global batch
    cpus = os.cpu_count() or 1
    gpus = len(tf.config.list_physical_devices("GPU"))
    configurations = {"ray_1_worker": (1, cpus, 0), "ray_2_workers": (2, cpus / 2, 0)}
    if gpus:
        configurations["ray_1_worker_1_gpu"] = (1, cpus, 1)
    figures: dict[str, Any] = {"benchmark": "train", "machine": machine(), "global_batch": batch, "epochs": epochs,
                               "in_process_samples_per_s": _in_process_train_rate(batch, repeats)}
    with tempfile.TemporaryDirectory() as folder:
        data = os.path.join(folder, "data")
        write_synthetic_gtzan(data, tracks, seconds=30.0)
        ray.init(address="local", num_cpus=cpus, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        try:
            for name, (workers, cpus_per_worker, gpus_per_worker) in configurations.items():
                options = TrainOptions(data, os.path.join(folder, name), workers=workers, epochs=epochs,
                                       cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker)
                card = train(options)
                rows = read_epochs(options.output).to_pylist()
                figures[f"{name}_samples_per_s"] = max(r["samples_per_second"] for r in rows if r["epoch"] > 0)
        finally:
            ray.shutdown()
    figures["segments_per_epoch"] = card["dataset"]["segments_train"] // batch * batch
    one, two = figures["ray_1_worker_samples_per_s"], figures["ray_2_workers_samples_per_s"]
    figures["speedup_2_vs_1_worker"] = two / one
    figures["ray_1_worker_vs_in_process"] = one / figures["in_process_samples_per_s"]
    if not gpus:
        figures["gpu"] = "not measured: TensorFlow sees no GPU on this machine"
    return figures


def _in_process_train_rate(batch: int, repeats: int) -> float:
    """Segments per second of the training step at ``batch`` in this process (the default strategy)."""
    from amnst.train.loop import make_steps

    model = build_model()
    train_step, _ = make_steps(model, keras.optimizers.Adam(1e-3), tf.distribute.get_strategy(), batch,
                               num_classes=model.output_shape[-1])
    rng = np.random.default_rng(0)
    inputs = (rng.random((batch, *model.input_shape[1:]), dtype=np.float32),
              rng.integers(0, model.output_shape[-1], batch).astype(np.int32))
    for _ in range(3):  # traces, then lets oneDNN settle: the first steps after tracing run slower
        train_step(inputs).numpy()
    return batch / best_of(repeats, lambda: train_step(inputs).numpy())


def bench_reliability(quick: bool = False) -> dict[str, Any]:
    """Bad inputs and injected faults (``amnst.bench.reliability``): per scenario, inputs tried,
    faults injected, and good pairs expected, done, lost and duplicated."""
    from dataclasses import asdict

    from amnst.bench import reliability

    outcomes = reliability.run_all(quick)
    return {"benchmark": "reliability", "machine": machine(),
            "scenarios": [asdict(outcome) for outcome in outcomes],
            "table": reliability.table(outcomes)}


BENCHMARKS: dict[str, Callable[..., dict[str, Any]]] = {
    "nst": bench_nst, "invert": bench_invert, "pipeline": bench_pipeline, "e2e": bench_e2e,
    "capacity": bench_capacity, "quality": bench_quality, "train": bench_train,
    "reliability": bench_reliability}
