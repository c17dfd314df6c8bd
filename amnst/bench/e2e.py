"""``amnst bench e2e``: seconds of compute per second of audio, stage by stage,
for pairs of each length, through the batch runner's own stage functions.

Issue #6's cost target and the spread of cost across lengths are judged
here; ``amnst bench capacity`` turns these figures into a batch's budgets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from amnst.bench import evaluation
from amnst.bench.measure import machine
from amnst.bench.variants import parse_variant
from amnst.config import Preset, get_preset
from amnst.engine import audio

if TYPE_CHECKING:
    from amnst.batch.pipeline import PairJob, Weights


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

    presets = [get_preset("default")] + ([parse_variant(baseline)] if baseline else [])
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
        render_pair(job, parts, stages=stages)
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
