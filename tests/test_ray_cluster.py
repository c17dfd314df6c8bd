"""Several Ray nodes with logical GPUs: fractional GPU tasks, and a node lost mid-run."""

from __future__ import annotations

import os

import boto3
import pytest
import ray
from ray.cluster_utils import Cluster

from amnst import audio, metadata, synth
from amnst.config import get_preset
from amnst.ray_runner import RunOptions, run_manifest

PRESET = get_preset("default").with_overrides(iterations=2)


@pytest.fixture(scope="module")
def cluster(moto_server):
    os.environ.update(AWS_ENDPOINT_URL=moto_server, AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    workers = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


def put(key: str, data: bytes) -> str:
    boto3.client("s3").put_object(Bucket="amnst-test", Key=key, Body=data)
    return f"s3://amnst-test/{key}"


def test_removing_a_node_mid_run_still_completes_every_pair(cluster, s3_bucket):
    cluster_handle, workers = cluster
    put("in/rain.wav", audio.encode(synth.rain(5.0, seed=2), 22050, "wav"))
    rows = []
    for index in range(4):
        put(f"in/m{index}.wav", audio.encode(synth.music(6.0, seed=10 + index), 22050, "wav"))
        rows.append(f"p{index},m{index}.wav,rain.wav")
    manifest = put("in/manifest.csv", ("pair_id,content,style\n" + "\n".join(rows)).encode())

    removed = []

    def lose_a_node(progress):
        # Once work is under way on both GPU nodes, take one away.
        if not removed and progress.segments_done >= 1:
            cluster_handle.remove_node(workers[1], allow_graceful=False)
            removed.append(True)

    options = RunOptions("s3://amnst-test/out", PRESET, num_gpus_per_task=0.5, segments_per_task=1,
                         max_in_flight=12)
    summary = run_manifest(manifest, options, on_progress=lose_a_node)
    assert removed, "the run ended before a node could be removed"
    assert summary.progress.ok == 4 and summary.progress.failed == 0
    table = metadata.read_table("s3://amnst-test/out", "pairs").to_pylist()
    assert sorted(r["pair_id"] for r in table) == ["p0", "p1", "p2", "p3"]
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(
        Bucket="amnst-test", Prefix="out/audio/")["Contents"]]
    assert keys == [f"out/audio/p{i}.wav" for i in range(4)]
