"""Several Ray nodes with logical GPUs: fractional GPU tasks, and a node lost mid-run."""

from __future__ import annotations

import os

import pytest

from amnst import reliability


@pytest.fixture(scope="module")
def remove_a_node(moto_server):
    """A head and two GPU nodes, and what takes one of them away at once."""
    os.environ.update(AWS_ENDPOINT_URL=moto_server, AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    with reliability.gpu_cluster() as remove:
        yield remove


def test_removing_a_node_mid_run_still_completes_every_pair(remove_a_node, s3_bucket):
    # Half a GPU per optimise task; once work is under way on both GPU nodes, one goes away.
    outcome = reliability.node_loss(s3_bucket, remove_a_node, pairs=4)
    assert outcome.faults == 1, "the run ended before a node could be removed"
    assert outcome.exit_status == 0
    # Every pair done exactly once, its whole output and nothing else under the output prefix.
    assert outcome.audit.problems == []
    assert (outcome.audit.done, outcome.audit.lost, outcome.audit.duplicates) == (4, 0, 0)
