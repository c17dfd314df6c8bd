"""Several Ray nodes with logical GPUs: fractional GPU tasks within the capacity model's
budgets, and a node lost mid-run.

One cluster serves the module: its start and its workers' TensorFlow imports
are most of a test's time on a small machine.
"""

from __future__ import annotations


import pytest
from ray._private.internal_api import get_memory_info_reply, get_state_from_address

from amnst.ops import capacity
from amnst.batch import metadata
from amnst.bench import reliability
from amnst import synth
from amnst.bench.measure import style_gram_bytes
from amnst.config import get_preset
from amnst.engine.model import build_model
from amnst.batch.ray_runner import RunOptions, run_manifest
from tests.conftest import write_wav
from tests.s3_server import aws_endpoint

PRESET = get_preset("default")
PAIRS, PAIR_SECONDS, MAX_IN_FLIGHT = 4, 6.0, 6


@pytest.fixture(scope="module")
def gpu_cluster(moto_server):
    """A CPU-only head and two nodes of one logical GPU and two CPUs each, whose
    workers reach the moto endpoint through the standard variables."""
    with aws_endpoint(moto_server), reliability.gpu_cluster(cpus_per_node=2) as cluster_and_nodes:
        yield cluster_and_nodes


@pytest.mark.slow
def test_a_scaled_down_batch_keeps_the_models_budgets(gpu_cluster, tmp_path):
    cluster, workers = gpu_cluster
    rows = []
    for index in range(2):
        write_wav(tmp_path / f"style{index}.wav", synth.rain(4.0, seed=index))
    for index in range(PAIRS):
        y = synth.music(PAIR_SECONDS, seed=20 + index)
        write_wav(tmp_path / f"m{index}.wav", y)
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
    grams = style_gram_bytes(build_model(), preset.nst, preset.audio.n_mels)
    bound = capacity.peak_object_bytes(preset, PAIR_SECONDS, grams, MAX_IN_FLIGHT)
    assert capacity.segment_bytes(preset, PAIR_SECONDS) <= peak <= bound
    audio_files = sorted(p.name for p in (output / "audio").iterdir())
    assert audio_files == [f"p{i}.wav" for i in range(PAIRS)]
    records = list((output / "_amnst").rglob("*.parquet"))
    assert len(records) <= capacity.metadata_files(PAIRS, per_pair, summary.seconds,
                                                   capacity.Layout().metadata_flush_rows,
                                                   options.metadata_flush_seconds)


def test_removing_a_node_mid_run_still_completes_every_pair(gpu_cluster, s3_bucket):
    # A third GPU node joins for this run and goes away once work is under way, with
    # tasks placed on it; the module's two nodes stay for whichever test runs next.
    cluster, _ = gpu_cluster
    doomed = cluster.add_node(num_cpus=2, num_gpus=1)
    cluster.wait_for_nodes()
    outcome = reliability.node_loss(s3_bucket, lambda: cluster.remove_node(doomed, allow_graceful=False),
                                    pairs=4)
    assert outcome.faults == 1, "the run ended before a node could be removed"
    assert outcome.exit_status == 0
    # Every pair done exactly once, its whole output and nothing else under the output prefix.
    assert outcome.audit.problems == []
    assert (outcome.audit.done, outcome.audit.lost, outcome.audit.duplicates) == (4, 0, 0)


def test_rendering_in_gpu_tasks_gives_the_cpu_renderings_outputs(gpu_cluster, tmp_path):
    # With GPUs the pair's inversion runs in a GPU task and its encoding and measures in
    # a CPU task; without, one CPU task does both. The same outputs and measures either way.
    write_wav(tmp_path / "style.wav", synth.rain(4.0, seed=5))
    rows = []
    for index in range(2):
        write_wav(tmp_path / f"m{index}.wav", synth.music(PAIR_SECONDS, seed=40 + index))
        rows.append(f"p{index},m{index}.wav,style.wav")
    (tmp_path / "manifest.csv").write_text("pair_id,content,style\n" + "\n".join(rows) + "\n")
    preset = PRESET.with_overrides(iterations=2)
    outputs = {}
    for name, gpus in (("gpu", 0.5), ("cpu", 0.0)):
        output = tmp_path / name
        summary = run_manifest(str(tmp_path / "manifest.csv"),
                               RunOptions(str(output), preset, num_gpus_per_task=gpus, max_in_flight=MAX_IN_FLIGHT))
        assert summary.progress.ok == 2
        outputs[name] = output
    measured = ("chroma_similarity", "onset_correlation", "mfcc_progress", "gram_progress", "texture_progress",
                "spectral_convergence", "quality_seconds", "precision")
    gpu_rows, cpu_rows = ({row["pair_id"]: row for row in metadata.read_table(str(outputs[name]), "pairs").to_pylist()}
                          for name in ("gpu", "cpu"))
    for pair_id in ("p0", "p1"):
        assert (outputs["gpu"] / "audio" / f"{pair_id}.wav").read_bytes() == \
            (outputs["cpu"] / "audio" / f"{pair_id}.wav").read_bytes()
        assert {k: gpu_rows[pair_id][k] for k in measured} == {k: cpu_rows[pair_id][k] for k in measured}
