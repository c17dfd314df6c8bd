"""How big a cluster a batch needs, and what it costs the object store, the driver and storage.

A pure model: every input is an argument, nothing is measured here.
:func:`plan` takes a batch (how many pairs, how long, in what window), the
preset (which fixes segments per pair and iterations), the cost of each unit
of work, and how the run is laid out, and returns the workers it needs and
the budgets they imply. ``amnst bench capacity`` feeds it the CPU costs that
``amnst bench e2e`` measured and a GPU's rate (:class:`GpuRate`): measured on
the card by ``python -m amnst.bench.xla_replay``, or assumed from the CNN's FLOPs
per step.

Units: seconds, bytes, requests; "core-seconds" are seconds of one CPU core.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from amnst.engine.audio import num_frames, segment_layout
from amnst.config import Preset

FLOAT32_BYTES = 4
# NVIDIA H100 SXM5 data sheet: 67 TFLOP/s FP32 on the CUDA cores (TF32 on the
# tensor cores: 495 dense). The element-wise half of an NST step runs on the
# CUDA cores, so FP32 is the honest ceiling for the whole step.
H100_FP32_FLOPS = 67e12
# The share of that peak assumed where no card has been measured. The H100 measured
# 10 % on the `default` step (docs/performance.md, On a GPU).
ASSUMED_GPU_FRACTION = 0.2


@dataclass(frozen=True)
class Batch:
    """A batch: ``pairs`` pairs of ``pair_seconds`` each, done within ``window_seconds``.

    ``pairs_per_style``: pairs that share one style recording (its Gram
    targets are computed once); 1 is the worst case, every pair its own style.
    """

    pairs: int = 100_000
    pair_seconds: float = 180.0
    window_seconds: float = 8 * 3600.0
    pairs_per_style: float = 1.0


@dataclass(frozen=True)
class GpuRate:
    """What one GPU spends on one segment-iteration (a segment's forward and
    backward step), in seconds, and where that figure comes from."""

    name: str
    seconds_per_segment_iteration: float
    measured: bool

    @classmethod
    def assumed(cls, step_flops: float, sustained_fraction: float = ASSUMED_GPU_FRACTION,
                peak_flops: float = H100_FP32_FLOPS) -> GpuRate:
        """An H100 running ``step_flops`` per step at ``sustained_fraction`` of its FP32 peak."""
        return cls(f"NVIDIA H100 SXM5 at {sustained_fraction:.0%} of {peak_flops / 1e12:.0f} TFLOP/s "
                   "(assumed, not measured)", step_flops / (peak_flops * sustained_fraction), False)

    @classmethod
    def replayed(cls, figures: dict[str, Any], segments_per_task: int) -> GpuRate:
        """The rate ``python -m amnst.bench.xla_replay`` measured at the largest batch
        that fits in ``segments_per_task`` (the smallest batch if none does)."""
        rows = sorted(figures["optimise"], key=lambda row: row["batch"])
        fitting = [row for row in rows if row["batch"] <= segments_per_task] or rows[:1]
        row = fitting[-1]
        export = figures["export"]
        precision = "BF16" if export.get("precision") == "bf16" else "TF32" if export["tf32"] else "FP32"
        return cls(f"{figures['device']}, {precision}, batch {row['batch']} (measured)",
                   1.0 / row["segment_iterations_per_second"], True)


@dataclass(frozen=True)
class Costs:
    """What units of work cost; the CPU figures come from ``amnst bench e2e``.

    ``cpu_core_seconds_per_audio_second``: the pair's CPU stages (read,
    decode, mel, encode, quality, write, and invert unless the GPUs render)
    in core-seconds per second of the pair's audio.
    ``gpu_render_seconds_per_audio_second``: the inversion where the GPUs render
    (``amnst run`` with GPUs inverts in a GPU task), 0 where the CPUs do.
    ``style_core_seconds_per_audio_second``: a style's Gram targets (they run as
    a GPU task; costed like the CPU stages, an upper bound). Storage figures are per pair: requests and bytes moved
    (inputs read twice, once to analyse and once to assess quality).
    """

    gram_bytes: float
    cpu_core_seconds_per_audio_second: float
    style_core_seconds_per_audio_second: float
    storage_reads_per_pair: float
    storage_writes_per_pair: float
    bytes_read_per_audio_second: float
    bytes_written_per_audio_second: float
    gpu_render_seconds_per_audio_second: float = 0.0


@dataclass(frozen=True)
class Layout:
    """How the run is laid out over the cluster (``amnst run`` options and node shapes).

    ``utilisation``: the share of the window the GPUs are kept busy (ramp-up,
    the tail of the last pairs, retries). ``driver_base_bytes`` is the
    driver's measured peak (``amnst bench pipeline``: about 170 MB, whatever
    the manifest's size); ``driver_bytes_per_task`` is an allowance for each
    task in flight (its job, refs and closures), an assumption. The node
    shape is an assumption too. ``segments_per_task``: on an H100 a step of 7
    segments ran 2.7x the segment-iterations per second of a step of one, and
    larger batches gained at most 14 % more (docs/performance.md, On a GPU). A second task
    per GPU (``tasks_per_gpu``) hides one task's set-up and transfers behind
    the other's steps; two processes of pure steps on one H100 did 0.93x one.
    """

    segments_per_task: int = 7
    tasks_per_gpu: int = 2
    gpus_per_node: int = 8
    cpus_per_node: int = 96
    utilisation: float = 0.8
    metadata_flush_rows: int = 200
    metadata_flush_seconds: float = 30.0
    driver_base_bytes: float = 170e6
    driver_bytes_per_task: float = 64e3


def _layout(preset: Preset, seconds: float) -> tuple[int, int]:
    samples = int(round(seconds * preset.audio.sample_rate))
    return segment_layout(num_frames(samples, preset.audio), preset.audio)


def segment_bytes(preset: Preset, seconds: float) -> int:
    """Bytes of one float32 mel segment ``(n_mels, width)`` of a piece of ``seconds``."""
    return preset.audio.n_mels * _layout(preset, seconds)[1] * FLOAT32_BYTES


def segments_per_pair(preset: Preset, seconds: float) -> int:
    """Segments a piece of ``seconds`` is cut into."""
    return _layout(preset, seconds)[0]


def pair_object_bytes(preset: Preset, seconds: float) -> int:
    """Object-store bytes one pair holds at most: its content segments, their optimised
    copies and, where a GPU task inverts (``amnst run`` with GPUs), the rendered pair
    handed to the CPU task that finishes it: the output and the content as float32
    samples, and the stitched mel.

    An optimised segment also carries its loss record: three float32 curves
    of ``iterations + 1`` values.
    """
    segments = segments_per_pair(preset, seconds)
    losses = 3 * (preset.nst.iterations + 1) * FLOAT32_BYTES
    samples = int(round(seconds * preset.audio.sample_rate))
    rendered = (2 * samples + preset.audio.n_mels * num_frames(samples, preset.audio)) * FLOAT32_BYTES
    return segments * (2 * segment_bytes(preset, seconds) + losses) + rendered


def style_object_bytes(preset: Preset, seconds: float, gram_bytes: float) -> float:
    """Object-store bytes of one style's targets: its Grams and its own segments."""
    return gram_bytes + segments_per_pair(preset, seconds) * segment_bytes(preset, seconds)


def peak_object_bytes(preset: Preset, seconds: float, gram_bytes: float, max_in_flight: int) -> float:
    """Bound on the object store's primary copies during a run of pairs of ``seconds``.

    The runner admits a pair only while fewer than ``max_in_flight`` tasks
    are pending, and every admitted pair keeps one pending until it is
    rendered, so at most ``max_in_flight`` pairs, each with its own style in
    the worst case, are alive at once.
    """
    return max_in_flight * (pair_object_bytes(preset, seconds)
                            + style_object_bytes(preset, seconds, gram_bytes))


def metadata_files(pairs: int, segments: int, seconds: float, flush_rows: int, flush_seconds: float) -> int:
    """Bound on the Parquet files (storage writes) of a run's records.

    A flush writes one file per table (pairs, segments); it happens when the
    segments table, which fills first, holds ``flush_rows`` rows or the
    oldest buffered row has waited ``flush_seconds``; the run lasts
    ``seconds``. The commit adds the runs row and its marker.
    """
    flushes = math.ceil(pairs * segments / flush_rows) + math.ceil(seconds / flush_seconds)
    return 2 * flushes + 2


def plan(batch: Batch, preset: Preset, costs: Costs, gpu: GpuRate, layout: Layout) -> dict[str, Any]:
    """Workers, task slots and budgets for ``batch`` at ``preset``.

    GPU work is the optimise steps (``iterations`` forward-and-backward steps
    per segment), each style's one forward pass (half a step per style
    segment) and, where the GPUs render, the inversions. Workers are the GPUs
    (and CPU cores) that finish the batch's work in ``utilisation * window_seconds``. ``max_in_flight`` gives every
    task slot one task running and one waiting; the object store's bound
    follows from it (:func:`peak_object_bytes`).
    """
    segments = segments_per_pair(preset, batch.pair_seconds)
    styles = math.ceil(batch.pairs / batch.pairs_per_style)
    audio_seconds = batch.pairs * batch.pair_seconds
    segment_iterations = batch.pairs * segments * preset.nst.iterations
    step_seconds = gpu.seconds_per_segment_iteration
    gpu_seconds = (segment_iterations * step_seconds + styles * segments * step_seconds / 2
                   + audio_seconds * costs.gpu_render_seconds_per_audio_second)
    busy = batch.window_seconds * layout.utilisation
    gpus = math.ceil(gpu_seconds / busy)
    cpu_core_seconds = (audio_seconds * costs.cpu_core_seconds_per_audio_second
                        + styles * batch.pair_seconds * costs.style_core_seconds_per_audio_second)
    cpu_cores = math.ceil(cpu_core_seconds / busy)
    nodes = max(math.ceil(gpus / layout.gpus_per_node), math.ceil(cpu_cores / layout.cpus_per_node))
    max_in_flight = 2 * (gpus * layout.tasks_per_gpu + cpu_cores)

    pair_bytes = pair_object_bytes(preset, batch.pair_seconds)
    style_bytes = style_object_bytes(preset, batch.pair_seconds, costs.gram_bytes)
    content_bytes = segments * segment_bytes(preset, batch.pair_seconds)
    # A split task cuts the pair's segments into one object per optimise task,
    # so the segments cross the network at most twice (to the split task,
    # then each chunk to its optimise task) whatever the number of nodes.
    transfer_per_pair = content_bytes + pair_bytes
    records = metadata_files(batch.pairs, segments, batch.window_seconds, layout.metadata_flush_rows,
                             layout.metadata_flush_seconds)
    requests = batch.pairs * (costs.storage_reads_per_pair + costs.storage_writes_per_pair) + records
    return {
        "inputs": {"batch": asdict(batch), "preset": preset.name, "iterations": preset.nst.iterations,
                   "costs": asdict(costs), "gpu": asdict(gpu), "layout": asdict(layout)},
        "segments_per_pair": segments,
        "audio_hours": audio_seconds / 3600,
        "segment_iterations": segment_iterations,
        "gpu_seconds_per_segment_iteration": step_seconds,
        "gpu_seconds_per_audio_second": gpu_seconds / audio_seconds,
        "gpu_hours": gpu_seconds / 3600,
        "gpu_workers": gpus,
        "cpu_core_hours": cpu_core_seconds / 3600,
        "cpu_cores": cpu_cores,
        "cpu_cores_per_gpu": cpu_cores / gpus,
        "nodes": nodes,
        "task_slots": {"gpu": gpus * layout.tasks_per_gpu, "cpu": cpu_cores},
        "max_in_flight": max_in_flight,
        "pairs_per_second": batch.pairs / busy,
        "object_store": {
            "segment_bytes": segment_bytes(preset, batch.pair_seconds),
            "pair_bytes": pair_bytes,
            "style_bytes": style_bytes,
            "peak_bytes_bound": peak_object_bytes(preset, batch.pair_seconds, costs.gram_bytes, max_in_flight),
            "network_bytes_per_pair": transfer_per_pair,
            "network_bytes_per_second": transfer_per_pair * batch.pairs / busy,
        },
        "driver_bytes": (layout.driver_base_bytes + max_in_flight * layout.driver_bytes_per_task),
        "storage": {
            "requests": requests,
            "requests_per_second": requests / busy,
            "metadata_files": records,
            "read_bytes_per_second": audio_seconds * costs.bytes_read_per_audio_second / busy,
            "write_bytes_per_second": audio_seconds * costs.bytes_written_per_audio_second / busy,
        },
    }
