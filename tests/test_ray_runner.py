"""The batch service end to end: a real local Ray, a real S3-compatible endpoint (moto)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import boto3
import numpy as np
import ray
import soundfile as sf

from amnst.batch import metadata
from amnst import synth
from amnst.config import get_preset
from amnst.batch.ray_runner import EXIT_PARTIAL, RunOptions, run_manifest
from tests.conftest import wav_bytes, write_wav
from tests.s3_server import aws_environment

PRESET = get_preset("default").with_overrides(iterations=3)
BUCKET = "s3://amnst-test"


def put(key: str, data: bytes) -> str:
    boto3.client("s3").put_object(Bucket="amnst-test", Key=key, Body=data)
    return f"{BUCKET}/{key}"


def write_inputs(pairs: int = 2, seconds: float = 6.0) -> list[str]:
    """Pairs of synthesized music and ambience under inputs/, and their manifest rows."""
    rows = []
    styles = ["rain", "drone"]
    for index in range(pairs):
        put(f"inputs/music{index}.wav", wav_bytes(synth.music(seconds, seed=index)))
        style = styles[index % 2]
        put(f"inputs/{style}.wav", wav_bytes(synth.STYLES[style](5.0, seed=1)))
        rows.append(f"p{index},music{index}.wav,{style}.wav")
    return rows


def write_manifest(rows: list[str], key: str = "inputs/manifest.csv", header: str = "pair_id,content,style") -> str:
    return put(key, (header + "\n" + "\n".join(rows) + "\n").encode())


def pairs_table(output: str) -> dict[str, dict]:
    table = metadata.read_table(output, "pairs").to_pylist()
    latest: dict[str, dict] = {}
    for row in sorted(table, key=lambda r: r["finished_at"]):
        latest[row["pair_id"]] = row
    return latest


def read_output(uri: str) -> np.ndarray:
    key = uri.removeprefix(f"{BUCKET}/")
    body = boto3.client("s3").get_object(Bucket="amnst-test", Key=key)["Body"].read()
    return sf.read(io.BytesIO(body), dtype="float32")[0]


def test_tasks_run_tensorflow_on_the_cpus_they_were_given(local_ray):
    def pools_after_setup() -> tuple[int, int]:
        import tensorflow as tf

        from amnst.batch.ray_runner import setup_worker

        setup_worker()
        tf.constant(1.0) + 1.0  # TensorFlow starts here, with the pools as set
        return (tf.config.threading.get_intra_op_parallelism_threads(),
                tf.config.threading.get_inter_op_parallelism_threads())

    # max_calls=1: a fresh worker process each, as TensorFlow's pools are sized once per process.
    probe = ray.remote(max_calls=1)(pools_after_setup)
    assert ray.get(probe.options(num_cpus=1).remote()) == (1, 1)
    assert ray.get(probe.options(num_cpus=2).remote()) == (2, 2)


def test_a_manifest_in_s3_runs_and_its_records_read_back(local_ray, s3_bucket):
    # p0 overrides strength; p1 leaves its cell empty, so takes the preset's.
    p0, p1 = write_inputs(2)
    manifest = write_manifest([f"{p0},0.25", f"{p1},"], header="pair_id,content,style,strength")
    output = f"{BUCKET}/out"
    summary = run_manifest(manifest, RunOptions(output, PRESET, max_in_flight=8))
    assert summary.exit_status == 0 and summary.progress.ok == 2

    rows = pairs_table(output)
    assert set(rows) == {"p0", "p1"}
    for pair_id, row in rows.items():
        assert row["status"] == "ok" and row["error"] is None
        assert row["output_uri"] == f"{output}/audio/{pair_id}.wav"
        assert len(read_output(row["output_uri"])) == round(6.0 * 22050)
        assert row["segments"] == 2 and row["iterations"] == 3
        assert row["loss_end"] < row["loss_start"]
        assert len(row["content_sha256"]) == 64 and row["fingerprint"]
        assert row["seconds_optimise"] > 0 and row["worker_node"]
        assert all(row[name] is not None for name in metadata.QUALITY_COLUMNS)
        assert 0 < row["chroma_similarity"] <= 1 and row["peak"] < 1
        assert row["schema_version"] == metadata.SCHEMA_VERSION
    assert rows["p0"]["strength"] == 0.25 and rows["p1"]["strength"] == PRESET.nst.strength
    segments = metadata.read_table(output, "segments").to_pylist()
    assert sorted((s["pair_id"], s["segment_index"]) for s in segments) == [
        ("p0", 0), ("p0", 1), ("p1", 0), ("p1", 1)]
    runs = metadata.read_table(output, "runs", committed_only=True).to_pylist()
    assert [r["status"] for r in runs] == ["completed"] and runs[0]["pairs_ok"] == 2


def test_a_rerun_skips_finished_pairs_and_computes_only_new_ones(local_ray, s3_bucket):
    rows = write_inputs(2)
    output = f"{BUCKET}/out"
    first = run_manifest(write_manifest(rows[:1]), RunOptions(output, PRESET))
    assert first.progress.ok == 1
    second = run_manifest(write_manifest(rows), RunOptions(output, PRESET))
    assert (second.progress.skipped, second.progress.ok) == (1, 1)
    latest = pairs_table(output)
    assert latest["p0"]["status"] == "skipped" and latest["p1"]["status"] == "ok"
    # A changed setting is a different fingerprint: the pair is computed again.
    third = run_manifest(write_manifest(rows), RunOptions(output, PRESET.with_overrides(iterations=2)))
    assert third.progress.ok == 2


def test_bad_rows_and_inputs_fail_alone(local_ray, s3_bucket):
    rows = write_inputs(1)
    put("inputs/silent.wav", wav_bytes(np.zeros(22050 * 2, np.float32)))
    put("inputs/noise.mp3", np.random.default_rng(0).bytes(4000))
    whole = wav_bytes(synth.music(3.0, seed=5))
    put("inputs/cut.wav", whole[:len(whole) * 2 // 3])
    rows += ["silent,silent.wav,rain.wav", "noise,music0.wav,noise.mp3", "missing,nothing.wav,rain.wav",
             "p0,music0.wav,rain.wav", "../../x,music0.wav,rain.wav", "cut,cut.wav,rain.wav"]
    output = f"{BUCKET}/out"
    summary = run_manifest(write_manifest(rows), RunOptions(output, PRESET))
    assert summary.exit_status == EXIT_PARTIAL
    assert (summary.progress.ok, summary.progress.failed) == (2, 5)
    table = metadata.read_table(output, "pairs").to_pylist()
    # A truncated file is used, and its shortfall recorded in its pair's row.
    warnings = {r["pair_id"]: r["warnings"] for r in table if r["status"] == "ok"}
    assert warnings["p0"] is None
    assert len(warnings["cut"]) == 1 and "cut.wav: truncated: its header promises 66150 frames" in warnings["cut"][0]
    reasons = {r["row"]: r["error"] for r in table if r["status"] == "failed"}
    assert "silent" in reasons[2] and "cannot decode" in reasons[3] and "no such" in reasons[4]
    assert "duplicate" in reasons[5] and "row 6" in reasons[6]
    # Strength is recorded wherever the row's preset is known: not for a bad manifest row.
    strengths = {r["row"]: r["strength"] for r in table}
    assert strengths[1] == strengths[2] == PRESET.nst.strength
    assert strengths[5] is None and strengths[6] is None
    outputs = sorted(uri for uri in (r["output_uri"] for r in table) if uri)
    assert outputs == [f"{output}/audio/cut.wav", f"{output}/audio/p0.wav"]
    listed = boto3.client("s3").list_objects_v2(Bucket="amnst-test", Prefix="out/audio/")["Contents"]
    assert sorted(o["Key"] for o in listed) == ["out/audio/cut.wav", "out/audio/p0.wav"]


def test_run_matches_transfer_with_one_segment_per_task(local_ray, s3_bucket, tmp_path):
    content, style = synth.music(6.0, seed=4), synth.rain(5.0, seed=4)
    write_wav(tmp_path / "c.wav", content)
    write_wav(tmp_path / "s.wav", style)
    local_out = tmp_path / "transfer.wav"
    from amnst.cli import main
    assert main(["transfer", str(tmp_path / "c.wav"), str(tmp_path / "s.wav"), "-o", str(local_out),
                 "--iterations", "3"]) == 0
    put("inputs/c.wav", wav_bytes(content))
    put("inputs/s.wav", wav_bytes(style))
    output = f"{BUCKET}/out"
    summary = run_manifest(write_manifest(["same,c.wav,s.wav"]),
                           RunOptions(output, PRESET, segments_per_task=1))
    assert summary.progress.ok == 1
    ours = read_output(f"{output}/audio/same.wav")
    reference = sf.read(local_out, dtype="float32")[0]
    assert ours.shape == reference.shape
    # Same stages, seeds and inversion: equal up to the float rounding that
    # different batch sizes give the convolutions (see test_nst).
    assert np.corrcoef(ours, reference)[0, 1] > 0.999


def test_amnst_run_against_moto_with_only_the_endpoint_variable(local_ray, s3_bucket, moto_server):
    manifest = write_manifest(write_inputs(1))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(aws_environment(moto_server), RAY_ADDRESS=local_ray)
    done = subprocess.run([sys.executable, "jobs/nst_batch.py", manifest, "--output", f"{BUCKET}/cli",
                           "--iterations", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 ok, 0 skipped, 0 failed" in done.stdout
    assert "pairs 1/1 done" in done.stderr
    assert pairs_table(f"{BUCKET}/cli")["p0"]["status"] == "ok"
