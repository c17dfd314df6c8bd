"""The capacity model and the end-to-end bench's smoke run (the model's budgets on a
scaled-down cluster: tests/test_ray_cluster.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from amnst.engine import audio
from amnst.ops import capacity
from amnst.bench.e2e import E2E_STAGES
from amnst.cli import main
from amnst.config import get_preset

PRESET = get_preset("default")
COSTS = capacity.Costs(gram_bytes=1e6, cpu_core_seconds_per_audio_second=0.2,
                       style_core_seconds_per_audio_second=0.05, storage_reads_per_pair=5,
                       storage_writes_per_pair=1, bytes_read_per_audio_second=1e5,
                       bytes_written_per_audio_second=4.4e4)


def plan(**batch) -> dict:
    return capacity.plan(capacity.Batch(**batch), PRESET, COSTS, capacity.GpuRate.assumed(1e9), capacity.Layout())


@pytest.mark.parametrize("seconds", [3.0, 10.0, 30.0, 180.0])
def test_segments_per_pair_is_what_segment_cuts(seconds):
    frames = audio.num_frames(int(seconds * PRESET.audio.sample_rate), PRESET.audio)
    mel = np.zeros((PRESET.audio.n_mels, frames), np.float32)
    segments = audio.segment(mel, PRESET.audio)
    assert capacity.segments_per_pair(PRESET, seconds) == len(segments)
    assert capacity.segment_bytes(PRESET, seconds) == segments[0].nbytes


def test_work_and_workers_grow_linearly_with_the_batch():
    small, large = plan(pairs=10_000), plan(pairs=40_000)
    assert large["gpu_hours"] == pytest.approx(4 * small["gpu_hours"])
    assert large["cpu_core_hours"] == pytest.approx(4 * small["cpu_core_hours"])
    assert 4 * small["gpu_workers"] - 3 <= large["gpu_workers"] <= 4 * small["gpu_workers"]
    # Enough GPUs and cores to finish in the busy part of the window, and not one more.
    busy = 8 * 3600 * capacity.Layout().utilisation
    for figures in (small, large):
        assert (figures["gpu_workers"] - 1) * busy < figures["gpu_hours"] * 3600 <= figures["gpu_workers"] * busy
        assert figures["cpu_core_hours"] * 3600 <= figures["cpu_cores"] * busy


def test_gpu_cost_per_audio_second_does_not_grow_with_pair_length():
    # Only the last segment's padding differs; nothing grows faster than the audio.
    costs = [plan(pair_seconds=s)["gpu_seconds_per_audio_second"] for s in (120.0, 180.0, 600.0)]
    assert max(costs) / min(costs) - 1 < 0.05


def test_budgets_follow_from_max_in_flight():
    figures = plan()
    store = figures["object_store"]
    assert figures["max_in_flight"] == 2 * (figures["task_slots"]["gpu"] + figures["task_slots"]["cpu"])
    assert store["pair_bytes"] > 2 * figures["segments_per_pair"] * store["segment_bytes"]
    assert store["peak_bytes_bound"] == figures["max_in_flight"] * (store["pair_bytes"] + store["style_bytes"])
    assert figures["storage"]["requests"] > figures["inputs"]["batch"]["pairs"] * 6
    assert figures["driver_bytes"] < 1e9


def test_bench_e2e_quick_reports_every_stage_and_the_spread(tmp_path, capsys):
    out = tmp_path / "e2e.json"
    assert main(["bench", "e2e", "--quick", "--rounds", "2", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| **total** |" in table and "| total in each of 2 rounds (median above) |" in table
    figures = json.loads(out.read_text())
    assert figures["iterations"] == 2 and figures["rounds"] == 2 and len(figures["pairs"]) == 2
    for row in figures["pairs"]:
        # Of two rounds, the median is the cheaper one.
        assert len(row["round_totals_per_audio_second"]) == 2
        assert row["total_per_audio_second"] == min(row["round_totals_per_audio_second"])
        assert set(row["seconds"]) == set(E2E_STAGES) and all(v > 0 for v in row["seconds"].values())
        assert row["total_seconds"] == pytest.approx(sum(row["seconds"].values()))
        # Inputs read to analyse, the style for its targets, both again to assess; one output.
        assert row["storage"]["reads"] == 5 and row["storage"]["writes"] == 1
    costs = [row["total_per_audio_second"] for row in figures["pairs"]]
    assert figures["spread"] == pytest.approx(max(costs) / min(costs) - 1)

    assert main(["bench", "capacity", "--e2e", str(out), "--pairs", "1000", "--json",
                 str(tmp_path / "capacity.json")]) == 0
    plan_figures = json.loads((tmp_path / "capacity.json").read_text())
    assert plan_figures["gpu_workers"] >= 1 and plan_figures["cpu_costs_from"]["audio_seconds"] == 8.0
    assert not plan_figures["inputs"]["gpu"]["measured"]

    # The H100's figures from `python -m amnst.bench.xla_replay`, as docs/performance.md's capacity table uses them.
    measured = Path(__file__).parents[1] / "deploy" / "capacity" / "h100-tf32.json"
    assert main(["bench", "capacity", "--e2e", str(out), "--gpu", str(measured), "--json",
                 str(tmp_path / "measured.json")]) == 0
    plan_figures = json.loads((tmp_path / "measured.json").read_text())
    batch_7 = next(row for row in json.loads(measured.read_text())["optimise"] if row["batch"] == 7)
    assert plan_figures["inputs"]["gpu"]["measured"]
    assert plan_figures["gpu_seconds_per_segment_iteration"] == pytest.approx(
        1 / batch_7["segment_iterations_per_second"])


def test_a_replayed_rate_is_taken_at_the_largest_batch_a_task_holds():
    figures = {"device": "card", "export": {"tf32": True},
               "optimise": [{"batch": b, "segment_iterations_per_second": 100.0 * b} for b in (28, 1, 7)]}
    assert capacity.GpuRate.replayed(figures, 8).seconds_per_segment_iteration == pytest.approx(1 / 700)
    assert capacity.GpuRate.replayed(figures, 28).seconds_per_segment_iteration == pytest.approx(1 / 2800)
    # A task smaller than every measured batch takes the smallest.
    figures["optimise"] = figures["optimise"][:1]
    assert capacity.GpuRate.replayed(figures, 4).seconds_per_segment_iteration == pytest.approx(1 / 2800)
