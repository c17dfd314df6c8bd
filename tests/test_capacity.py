"""The capacity model, the end-to-end bench's smoke run, and the model's budgets on a scaled-down cluster."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import ray
from ray._private.internal_api import get_memory_info_reply, get_state_from_address
from ray.cluster_utils import Cluster

from amnst import audio, capacity, metadata, synth
from amnst.bench import E2E_STAGES, style_gram_bytes
from amnst.cli import main
from amnst.config import get_preset
from amnst.model import build_model
from amnst.ray_runner import RunOptions, run_manifest

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
    assert main(["bench", "e2e", "--quick", "--json", str(out)]) == 0
    assert "| **total** |" in capsys.readouterr().out
    figures = json.loads(out.read_text())
    assert figures["iterations"] == 2 and len(figures["pairs"]) == 2
    for row in figures["pairs"]:
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

    # The H100's figures from `python -m amnst.xla_replay`, as the README's capacity table uses them.
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


PAIRS, PAIR_SECONDS, MAX_IN_FLIGHT = 4, 6.0, 6


@pytest.fixture()
def gpu_cluster():
    """A CPU-only head and two nodes of one logical GPU and two CPUs each."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    workers = [cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
def test_a_scaled_down_batch_keeps_the_models_budgets(gpu_cluster, tmp_path):
    cluster, workers = gpu_cluster
    rows = []
    for index in range(2):
        (tmp_path / f"style{index}.wav").write_bytes(audio.encode(synth.rain(4.0, seed=index), 22050, "wav"))
    for index in range(PAIRS):
        y = synth.music(PAIR_SECONDS, seed=20 + index)
        (tmp_path / f"m{index}.wav").write_bytes(audio.encode(y, 22050, "wav"))
        rows.append(f"p{index},m{index}.wav,style{index % 2}.wav")
    (tmp_path / "manifest.csv").write_text("pair_id,content,style\n" + "\n".join(rows) + "\n")
    preset = PRESET.with_overrides(iterations=3)
    output = tmp_path / "out"
    options = RunOptions(str(output), preset, num_gpus_per_task=0.5, segments_per_task=1,
                         max_in_flight=MAX_IN_FLIGHT)
    state = get_state_from_address(cluster.address)
    samples = []

    def sample(progress):
        stats = get_memory_info_reply(state).store_stats
        samples.append((progress.in_flight, stats.object_store_bytes_primary_copy))

    summary = run_manifest(str(tmp_path / "manifest.csv"), options, on_progress=sample)

    assert summary.progress.ok == PAIRS and summary.progress.failed == 0
    segments = metadata.read_table(str(output), "segments").to_pylist()
    per_pair = capacity.segments_per_pair(preset, PAIR_SECONDS)
    assert len(segments) == PAIRS * per_pair
    # Two optimise tasks per logical GPU: every GPU node takes a share, the GPU-less head none.
    assert {row["worker_node"] for row in segments} == {node.node_id for node in workers}

    assert max(in_flight for in_flight, _ in samples) <= MAX_IN_FLIGHT
    peak = max(used for _, used in samples)
    bound = capacity.peak_object_bytes(preset, PAIR_SECONDS, style_gram_bytes(build_model(), preset.nst),
                                       MAX_IN_FLIGHT)
    assert capacity.segment_bytes(preset, PAIR_SECONDS) <= peak <= bound
    audio_files = sorted(p.name for p in (output / "audio").iterdir())
    assert audio_files == [f"p{i}.wav" for i in range(PAIRS)]
    records = list((output / "_amnst").rglob("*.parquet"))
    assert len(records) <= capacity.metadata_files(PAIRS, per_pair, summary.seconds,
                                                   capacity.Layout().metadata_flush_rows,
                                                   options.metadata_flush_seconds)
