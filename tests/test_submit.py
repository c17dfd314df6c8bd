"""`amnst submit` against a real Ray head with its job server, started as a separate process.

The head runs from a private temp dir on free ports with token authentication
on, as a real cluster does: the client is handed the token the way users hold
it (RAY_AUTH_TOKEN, no RAY_AUTH_MODE). It reaches the moto S3 endpoint through
the standard AWS variables, and is stopped by its PID (never `ray stop`, which
would kill every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import boto3
import pytest
import yaml

from amnst import synth
from amnst.cli import nightly as cli
from amnst.batch import metadata
from amnst.cli import build_parser, main
from amnst.batch.nightly import RECORD_FOLDER
from tests.conftest import wav_bytes
from tests.s3_server import BUCKET, aws_environment, free_port
from tests.servers import answers

# Raised inside Ray's own job client while it follows the logs.
pytestmark = pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning")

SCHEDULE = Path(__file__).resolve().parents[1] / "deploy" / "schedule"
STARTUP_SECONDS = 180.0  # a cold head on two contended cores takes about a minute
RAY_PORT_OPTIONS = ("--port", "--dashboard-port", "--dashboard-agent-listen-port",
                    "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port",
                    "--ray-client-server-port", "--node-manager-port", "--object-manager-port")


class Head(NamedTuple):
    address: str  # the job server's URL
    token: str


@pytest.fixture(scope="module")
def ray_head(moto_server: str) -> Iterator[Head]:
    """A Ray head with the dashboard's job server and token authentication."""
    # Short: Ray's Unix sockets live under it, and their paths are limited to ~107 bytes.
    token = secrets.token_hex(16)
    # A port chosen free can be taken by another process before the head binds
    # it (Ray's own workers pick ports too): then start again on fresh ones.
    for attempt in range(3):
        head, address, temp_dir, log, agent_port = _start_head(moto_server, token)
        if _wait_until_up(head, address, agent_port, log, last_attempt=attempt == 2):
            break
        _stop(head, temp_dir)
    try:
        yield Head(address, token)
    finally:
        _stop(head, temp_dir)


def _start_head(moto_server: str, token: str) -> tuple[subprocess.Popen, str, str, Path, int]:
    # Short: Ray's Unix sockets live under it, and their paths are limited to ~107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    # Every port chosen free, so that another Ray on this machine cannot hold
    # one of the fixed defaults.
    ports = {option: free_port() for option in RAY_PORT_OPTIONS}
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
               "--node-ip-address=127.0.0.1", "--include-dashboard=true", "--num-cpus=2",
               f"--temp-dir={temp_dir}", "--disable-usage-stats",
               *(f"{option}={port}" for option, port in ports.items())]
    log = Path(temp_dir) / "head.log"
    with log.open("wb") as output:
        head = subprocess.Popen(command, env=_head_env(moto_server, token), stdout=output,
                                stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{ports['--dashboard-port']}"
    return head, address, temp_dir, log, ports["--dashboard-agent-listen-port"]


def _head_env(moto_server: str, token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0",
               # Job entrypoints run `python ...`: this venv's.
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               **aws_environment(moto_server), AWS_CONFIG_FILE=os.devnull,
               AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    return env


def _wait_until_up(head: subprocess.Popen, address: str, agent_port: int, log: Path,
                   last_attempt: bool) -> bool:
    """Until the job server answers and the head's job agent listens (it runs the jobs).

    False if the head died early (to start again); on the last attempt, the test fails.
    """
    deadline = time.monotonic() + STARTUP_SECONDS
    while not (answers(f"{address}/api/version") and _listens(agent_port)):
        if head.poll() is not None or time.monotonic() > deadline:
            if last_attempt:
                pytest.fail(f"the Ray head did not start:\n{log.read_text()[-3000:]}")
            return False
        time.sleep(0.5)
    return True


def _listens(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _stop(head: subprocess.Popen, temp_dir: str) -> None:
    """SIGTERM to `ray start --block` stops every process it started; then make sure."""
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait()
    # A process that left the group would still name our private temp dir.
    for pid in _pids_naming(temp_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _pids_naming(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids


def put(key: str, data: bytes | str) -> str:
    body = data.encode() if isinstance(data, str) else data
    boto3.client("s3").put_object(Bucket=BUCKET, Key=key, Body=body)
    return f"s3://{BUCKET}/{key}"


def pairs(output: str) -> dict[str, str]:
    return {row["pair_id"]: row["status"] for row in metadata.read_table(output, "pairs").to_pylist()}


@pytest.fixture
def token_holder(ray_head: Head, monkeypatch: pytest.MonkeyPatch) -> str:
    """This process holds the cluster's token as a user does; yields the job server's URL."""
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_head.token)
    return ray_head.address


def test_submit_without_the_token_is_refused_in_one_line(ray_head, monkeypatch, capsys):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    argv = ["submit", "nst", "--address", ray_head.address, "--", "m.csv", "--output", "out"]
    assert main(argv) == 1
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    assert main(argv) == 1
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2
    assert "Authentication required" in errors[0] and "Authentication failed" in errors[1]
    assert ray_head.token not in "".join(errors)


def test_submit_waits_for_the_job_and_never_runs_an_id_twice(token_holder, ray_head, s3_bucket, capsys):
    content, style = put("inputs/music.wav", wav_bytes(synth.music(5.0, seed=0))), put(
        "inputs/rain.wav", wav_bytes(synth.rain(5.0, seed=1)))
    manifest = put("inputs/manifest.csv", f"pair_id,content,style\np0,{content},{style}\n"
                                          f"gone,s3://{BUCKET}/inputs/missing.wav,{style}\n")
    output = f"s3://{BUCKET}/out"
    argv = ["submit", "nst", "--address", token_holder, "--submission-id", "amnst-test-batch", "--wait",
            "--", manifest, "--output", output, "--iterations", "2"]

    # One pair ok, one failed: the job fails with the batch's own exit status, 3.
    assert main(argv) == 3
    printed = capsys.readouterr()
    assert "submitted job amnst-test-batch: python jobs/nst_batch.py" in printed.out
    assert "1 ok, 0 skipped, 1 failed of 2 pairs" in printed.out  # the job's log, followed
    assert "amnst-test-batch FAILED" in printed.err
    assert pairs(output) == {"p0": "ok", "gone": "failed"}

    assert main(argv) == 3
    printed = capsys.readouterr()
    assert "job amnst-test-batch already exists (FAILED): not submitted again" in printed.out
    assert "submitted job" not in printed.out and "pairs" not in printed.out  # no second run, no replay
    assert len(metadata.read_table(output, "runs")) == 1

    from ray.job_submission import JobSubmissionClient
    job = JobSubmissionClient(token_holder, headers={"Authorization": f"Bearer {ray_head.token}"}
                              ).get_job_info("amnst-test-batch")
    assert job.metadata["who"] and job.metadata["kind"] == "nst"
    assert (job.metadata["manifest"], job.metadata["output"]) == (manifest, output)
    assert job.runtime_env["working_dir"].startswith("gcs://")  # this checkout, uploaded


def test_submit_nightly_uses_the_nights_id(token_holder, s3_bucket, capsys):
    style = put("inputs/rain.wav", wav_bytes(synth.rain(5.0, seed=1)))
    content = put("inputs/music.wav", wav_bytes(synth.music(5.0, seed=1)))
    put("nightly/every.csv", f"pair_id,content,style\np0,{content},{style}\n")
    output = f"s3://{BUCKET}/nights"
    today = time.strftime("%Y-%m-%d", time.gmtime())
    argv = ["submit", "nightly", "--address", token_holder, "--wait", "--",
            "--manifests", f"s3://{BUCKET}/nightly", "--output", output, "--iterations", "2"]

    assert main(argv) == 0
    printed = capsys.readouterr()
    assert f"submitted job amnst-nightly-{today}: python jobs/nightly.py" in printed.out
    assert f"night {today}: completed, 1 manifests, 1 ok" in printed.out
    assert pairs(f"{output}/every.csv") == {"p0": "ok"}
    records = list(boto3.client("s3").list_objects_v2(
        Bucket=BUCKET, Prefix="nights/" + "/".join(RECORD_FOLDER))["Contents"])
    assert [r["Key"].split("/")[3] for r in records] == [f"date={today}"]
    body = boto3.client("s3").get_object(Bucket=BUCKET, Key=records[0]["Key"])["Body"].read()
    assert json.loads(body)["status"] == "completed"

    # A retried schedule on the same day reports the night instead of running it again.
    assert main(argv) == 0
    assert f"job amnst-nightly-{today} already exists (SUCCEEDED)" in capsys.readouterr().out


def test_secrets_are_refused_as_job_environment_before_any_server_is_asked(capsys):
    # No server listens at this address: the refusal must come first.
    nowhere = ["submit", "nst", "--address", "http://127.0.0.1:9"]
    assert main([*nowhere, "--env", "AWS_SECRET_ACCESS_KEY=x", "--", "m.csv"]) == 2
    assert "'AWS_SECRET_ACCESS_KEY': not passed to a job" in capsys.readouterr().err
    assert main([*nowhere, "--env", "AMNST_UNSET_FOR_TEST", "--", "m.csv"]) == 2
    assert "not set in this environment" in capsys.readouterr().err


def test_the_schedules_submit_a_night_that_amnst_accepts():
    cron = yaml.safe_load((SCHEDULE / "cronjob.yaml").read_text())
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["startingDeadlineSeconds"] > 0
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    submitter = pod["containers"][0]
    args = build_parser().parse_args(submitter["command"][1:])
    assert submitter["command"][0] == "amnst" and (args.kind, args.wait) == ("nightly", True)
    assert args.address == "http://amnst-head-svc:8265" and args.submission_id is None  # amnst-nightly-<date>
    night = cli.build_nightly_parser().parse_args(args.job_args)
    token = next(e for e in submitter["env"] if e["name"] == "RAY_AUTH_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "amnst-ray-auth", "key": "auth_token"}

    ray_cron = yaml.safe_load((SCHEDULE / "raycronjob.yaml").read_text())
    assert (ray_cron["apiVersion"], ray_cron["kind"]) == ("ray.io/v1", "RayCronJob")
    template = ray_cron["spec"]["jobTemplate"]
    words = shlex.split(template["entrypoint"])
    assert words[:2] == ["python", "/home/ray/app/jobs/nightly.py"]
    same_night = cli.build_nightly_parser().parse_args(words[2:])
    assert (same_night.manifests, same_night.output) == (night.manifests, night.output)
    assert template["clusterSelector"] == {"ray.io/cluster": "amnst"}
