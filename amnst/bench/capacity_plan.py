"""``amnst bench capacity``: a batch's GPU workers and budgets from measured costs.

The capacity model itself (:mod:`amnst.ops.capacity`) is product code that
takes costs as numbers; this is where the harness measures or reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amnst.bench.e2e import bench_e2e
from amnst.bench.measure import machine, nst_step_flops, style_gram_bytes
from amnst.config import get_preset
from amnst.engine.model import build_model
from amnst.ops import capacity

# The fast inversion on an H100, seconds per audio second (deploy/capacity/h100-tf32.json),
# where no replay on a card is given.
ASSUMED_GPU_INVERT_PER_AUDIO_SECOND = 8.9e-5


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
    H100's FP32 rate. The GPUs render (invert) as ``amnst run`` with GPUs does: the
    inversion's CPU seconds leave the CPU stages, and the card's inversion time
    (the replay's, else ``ASSUMED_GPU_INVERT_PER_AUDIO_SECOND``) joins the GPU work.
    """
    import json

    figures = json.loads(Path(e2e).read_text()) if e2e else bench_e2e(quick, seconds=(30.0,))
    row = min(figures["pairs"], key=lambda r: abs(r["audio_seconds"] - pair_seconds))
    cores = figures["machine"]["cpu_count"]
    preset = get_preset("default")
    model = build_model()
    layout = capacity.Layout()
    gpu_figures = json.loads(Path(gpu).read_text()) if gpu else None
    # A run with GPUs inverts in a GPU task: the inversion leaves the CPU stages, and
    # costs the card what the replay measured (or the H100's figure, docs/performance.md).
    gpu_render = gpu_figures["invert"]["per_audio_second"] if gpu_figures and "invert" in gpu_figures \
        else ASSUMED_GPU_INVERT_PER_AUDIO_SECOND
    cpu_stages = row["cpu_stages_per_audio_second"] - row["per_audio_second"]["invert"]
    costs = capacity.Costs(
        gram_bytes=style_gram_bytes(model, preset.nst, preset.audio.n_mels),
        cpu_core_seconds_per_audio_second=cpu_stages * cores,
        style_core_seconds_per_audio_second=row["per_audio_second"]["style"] * cores,
        storage_reads_per_pair=row["storage"]["reads"], storage_writes_per_pair=row["storage"]["writes"],
        bytes_read_per_audio_second=row["storage"]["bytes_read"] / row["audio_seconds"],
        bytes_written_per_audio_second=row["storage"]["bytes_written"] / row["audio_seconds"],
        gpu_render_seconds_per_audio_second=gpu_render)
    if gpu_figures:
        rate = capacity.GpuRate.replayed(gpu_figures, layout.segments_per_task)
    else:
        rate = capacity.GpuRate.assumed(nst_step_flops(model, preset.nst), gpu_fraction)
    batch = capacity.Batch(pairs=pairs, pair_seconds=pair_seconds, window_seconds=window_hours * 3600)
    return {"benchmark": "capacity", "machine": machine(),
            "cpu_costs_from": {"file": e2e, "audio_seconds": row["audio_seconds"], "cores": cores,
                               "measured_on": figures["machine"]["processor"]},
            **capacity.plan(batch, preset, costs, rate, layout)}
