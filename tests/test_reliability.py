"""Reliability, tried on purpose: bad inputs, faults and security (issue #7).

One local Ray for the module; its workers and the drivers reach the moto S3
endpoint through amnst.bench.faultproxy, which stays healthy except where a test
gives it a fault plan. The scenarios are amnst.bench.reliability's, the same that
`amnst bench reliability` tabulates; each ends in an audit of its bucket
(every good pair done exactly once with a whole output, every bad row failed
with its reason and no output, nothing written outside the output prefix).
Elsewhere: node loss in test_ray_cluster, a crafted pickle in `amnst weights
import` in test_model, storage errors without credentials in test_storage.
"""

from __future__ import annotations

import pickle
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from amnst.batch import metadata, storage
from amnst.engine import model
from amnst.bench import reliability
from amnst.bench.bad_inputs import Case, OptionCase, bad_input_cases, bad_option_cases
from amnst.bench.faultproxy import FaultPlan, FaultProxy
from amnst.bench.processes import Driver
from amnst.batch.ray_runner import EXIT_OK, EXIT_PARTIAL, RunOptions, run_manifest
from tests.conftest import local_ray_instance
from tests.s3_server import FAKE_ACCESS_KEY, FAKE_SECRET_KEY, free_port


@pytest.fixture(scope="module")
def proxy(moto_server):
    with FaultProxy(moto_server) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def ray_session(proxy):
    """A local Ray in a private temp dir; yields its session folder (logs included)."""
    temp_dir = tempfile.mkdtemp(prefix="rr", dir="/tmp")  # short: Ray's socket paths are limited
    # Workers inherit the environment: S3 through the proxy, with the planted secret.
    try:
        with local_ray_instance(proxy.url, _temp_dir=temp_dir):
            yield Path(ray._private.worker.global_worker.node.get_session_dir_path())
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def root(ray_session, s3_bucket, proxy, monkeypatch) -> str:
    """An empty bucket, reached through the (healthy) proxy by this process too."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    return s3_bucket


def assert_every_good_pair_done_once(outcome: reliability.Outcome) -> None:
    audit = outcome.audit
    assert audit.problems == []
    assert (audit.done, audit.lost, audit.duplicates) == (audit.expected, 0, 0)


def test_bad_inputs_and_rows_fail_alone_with_their_reasons(root):
    outcome = reliability.bad_inputs(root)
    assert outcome.exit_status == EXIT_PARTIAL
    # Unusual inputs (8 and 96 kHz, stereo, 6 channels, 0.1 s) work beside the good pairs; each
    # bad one fails with its reason, which names the input, and leaves no output; nothing is
    # written outside the output prefix, whatever the pair_id.
    assert_every_good_pair_done_once(outcome)
    # Then every class of bad option and local path on the command line is refused before any work.
    cases, options = bad_input_cases(), bad_option_cases()
    assert outcome.audit.expected == 7
    assert sum(case.reason is not None for case in cases) == 25 and len(options) == 12
    assert outcome.audit.failed_as_expected == 25 + 12
    assert outcome.inputs == 30 + 12  # every row but the two good pairs, and every command line


def test_bad_override_rows_are_refused_as_the_manifest_is_read(tmp_path):
    """The bad-input table's override rows fail at parsing, before any task: no Ray, no S3 here."""
    from amnst.batch.manifest import RowError, read_manifest

    cases = bad_input_cases()
    manifest = reliability.write_inputs(str(tmp_path), {}, cases)
    items = list(read_manifest(manifest, reliability.PRESET))
    refused = {item.row: item.reason for item in items if isinstance(item, RowError)}
    overrides = {"seed", "content_weight", "style_weight", "strength", "style_layers", "content_layers",
                 "iterations", "init"}
    for row, case in enumerate(cases, start=1):
        if case.reason and (overrides & case.row.keys() or case.row.get("content", "").endswith("/")):
            assert case.reason in refused.get(row, ""), (case.name, refused.get(row))


def test_bad_options_and_paths_are_refused_before_any_work():
    """The command lines of the bad-input scenario: each refused in one line, before decoding or Ray."""
    result = reliability.Audit()
    reliability.refuse_options(bad_option_cases(), result)
    assert result.problems == [] and result.failed_as_expected == 12
    # The audit catches a command line that is not refused as expected.
    wrong = OptionCase("accepted", ("transfer", "{missing}", "{missing}", "-o", "{out}"), "seed")
    reliability.refuse_options([wrong], result)
    assert len(result.problems) == 1 and "no such file" in result.problems[0]


def test_storage_errors_and_an_outage_lose_nothing(root, proxy):
    plan = FaultPlan(error_share=0.2, outage_after=25, outage_seconds=3.0, seed=7)
    outcome = reliability.storage_faults(root, proxy, plan)
    assert outcome.exit_status == EXIT_OK
    assert outcome.notes["errors"] > 5 and outcome.notes["cut"] >= 1
    assert_every_good_pair_done_once(outcome)


def test_a_worker_killed_mid_segment_is_retried(root):
    outcome = reliability.worker_kill(root)
    assert outcome.faults == 1, "no optimise task was caught running"
    assert outcome.exit_status == EXIT_OK
    assert_every_good_pair_done_once(outcome)


@pytest.mark.slow  # two drivers of their own, each starting its workers cold
def test_a_killed_driver_run_again_computes_only_what_is_left(root):
    outcome = reliability.driver_kill(root, ray.get_runtime_context().gcs_address)
    assert outcome.exit_status == EXIT_OK
    before = outcome.notes["pairs_done_before_the_kill"]
    assert 1 <= before < 6, "the kill did not land mid-run"
    # The audit holds that a pair done before the kill was skipped, never computed again.
    assert f"{6 - before} ok, {before} skipped, 0 failed" in outcome.notes["rerun"]
    assert_every_good_pair_done_once(outcome)


@pytest.mark.slow  # two drivers of their own, each starting its workers cold
def test_two_overlapping_runs_compute_each_pair_once(root):
    outcome = reliability.overlapping_runs(root, ray.get_runtime_context().gcs_address)
    print("overlapping runs:", outcome.notes, f"{outcome.seconds:.0f} s")
    assert outcome.notes["exit_statuses"] == [EXIT_OK, EXIT_OK]
    assert outcome.notes["computed"] == outcome.audit.expected == 4
    # Each run recorded every pair, computed or skipped: together, each pair computed once.
    runs = outcome.notes["runs"]
    assert len(runs) == 2 and all(sum(counts.values()) == 4 and counts.get("failed", 0) == 0
                                  for counts in runs.values())
    assert_every_good_pair_done_once(outcome)


class _RunsACommand:
    """Unpickling this runs a shell command that leaves a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def test_crafted_weights_are_refused_and_never_unpickled(root, tmp_path):
    marker = tmp_path / "pwned"
    payload = np.empty(28, dtype=object)
    payload[:] = [_RunsACommand(marker)] * 28
    crafted = {"evil.npz": tmp_path / "evil.npz", "evil.weights.h5": tmp_path / "evil.weights.h5"}
    np.savez(crafted["evil.npz"], **{f"w{i:03d}": payload for i in range(28)})  # object arrays: pickles
    crafted["evil.weights.h5"].write_bytes(pickle.dumps(_RunsACommand(marker)))
    for path in crafted.values():
        with pytest.raises(model.WeightsError):
            model.load_model(path)
    assert not marker.exists()

    # In a batch, every worker refuses them too; the pair fails naming the weights.
    files, cases = reliability.good_pairs(1)
    manifest = reliability.write_inputs(root, files, cases)
    weights = storage.join(root, "weights", "evil.npz")
    storage.write_bytes(weights, crafted["evil.npz"].read_bytes())
    summary = run_manifest(manifest, RunOptions(reliability.output_of(root), reliability.PRESET, weights))
    assert (summary.progress.failed, summary.exit_status) == (1, EXIT_PARTIAL)
    [record] = metadata.read_table(reliability.output_of(root), "pairs").to_pylist()
    assert record["error"].startswith(f"{weights}: not a weight archive of this project")
    assert not marker.exists()
    assert not list(storage.list_uris(storage.join(reliability.output_of(root), "audio")))


class _Pushgateway(BaseHTTPRequestHandler):
    """Records what is pushed to it, as a Pushgateway would accept it."""

    bodies: list[bytes] = []

    def do_POST(self) -> None:
        self.bodies.append(self.path.encode() + self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_PUT = do_POST

    def log_message(self, *args) -> None:
        pass


def test_no_secret_reaches_logs_metadata_or_metrics(root, ray_session):
    files, cases = reliability.good_pairs(1)
    # Failures are where a secret would leak: an error message built from a request.
    cases += [Case("missing", {"pair_id": "gone", "content": "nothing.wav", "style": "rain.wav"}),
              Case("undecodable", {"pair_id": "noise", "content": "noise.mp3", "style": "rain.wav"})]
    files["noise.mp3"] = b"\xff\xfb" + bytes(2000)
    manifest = reliability.write_inputs(root, files, cases)
    gateway = ThreadingHTTPServer(("127.0.0.1", 0), _Pushgateway)
    _Pushgateway.bodies = []
    metrics_port = free_port()
    scrapes = []
    with gateway:
        threading.Thread(target=gateway.serve_forever, daemon=True).start()
        driver = Driver(
            [manifest, "--output", reliability.output_of(root), "--iterations", "2",
             "--metrics-port", str(metrics_port), "--pushgateway", f"127.0.0.1:{gateway.server_address[1]}"],
            ray.get_runtime_context().gcs_address)
        while driver.process.poll() is None:
            try:
                scrapes.append(urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                                      timeout=2).read())
            except OSError:
                pass  # not serving yet, or no longer
            time.sleep(0.5)
        status, stdout, stderr = driver.wait()
        gateway.shutdown()
    assert status == EXIT_PARTIAL, stderr[-2000:]
    assert scrapes and b"amnst_pairs_total" in scrapes[-1] and _Pushgateway.bodies

    secret = FAKE_SECRET_KEY.encode()
    places = {"driver stdout": stdout.encode(), "driver stderr": stderr.encode()}
    places |= {f"/metrics scrape {i}": text for i, text in enumerate(scrapes)}
    places |= {f"push {i}": body for i, body in enumerate(_Pushgateway.bodies)}
    for uri in storage.list_uris(reliability.output_of(root)):
        data = storage.read_bytes(uri)
        places[uri] = data
        if uri.endswith(".parquet"):  # compressed pages could hide it from a byte search
            places[uri + " (rows)"] = repr(pq.read_table(pa.BufferReader(data)).to_pylist()).encode()
    logs = [path for path in ray_session.rglob("*") if path.is_file() and not path.is_socket()]
    places |= {str(path): path.read_bytes() for path in logs}
    assert any(b"noise.mp3: cannot decode" in data for data in places.values())  # the errors were written
    assert len(logs) > 10
    assert [name for name, data in places.items() if secret in data] == []
    assert FAKE_ACCESS_KEY.encode() not in stdout.encode() + stderr.encode()


@pytest.mark.slow
def test_a_ten_minute_piece_runs_in_bounded_memory(root):
    outcome = reliability.long_piece(root, minutes=10.0)
    assert outcome.exit_status == EXIT_OK
    assert_every_good_pair_done_once(outcome)
    print("ten-minute piece:", outcome.notes, f"{outcome.seconds:.0f} s")
    # A worker holds one piece to render it (3.7 GB measured). The driver schedules without
    # audio, but the run report it writes reads each output whole (210 MB measured).
    assert outcome.notes["worker_peak_mb"] < 6000
    assert outcome.notes["driver_growth_mb"] < 512


def _statuses(url: str, count: int) -> list[int | str]:
    """What ``count`` GETs of a missing object get: an HTTP status, or "refused"."""
    answers: list[int | str] = []
    for _ in range(count):
        try:
            answers.append(urllib.request.urlopen(f"{url}/amnst-test/nothing", timeout=5).status)
        except urllib.error.HTTPError as error:
            answers.append(error.code)
        except OSError:
            answers.append("refused")
    return answers


def test_the_fault_proxy_follows_its_seeded_plan(s3_bucket, moto_server):
    with FaultProxy(moto_server, FaultPlan(error_share=0.4, seed=3)) as proxy:
        first = _statuses(proxy.url, 30)
        proxy.plan = FaultPlan(error_share=0.4, seed=3)
        assert _statuses(proxy.url, 30) == first  # the same seed, the same faults
        assert set(first) == {404, 500, 503} and 6 <= proxy.counts.errors <= 18

        proxy.plan = FaultPlan(outage_after=2, outage_seconds=1.5)
        assert _statuses(proxy.url, 3) == [404, "refused", "refused"]  # the 2nd is cut, then nobody listens
        time.sleep(2.0)
        assert _statuses(proxy.url, 1) == [404]  # back on the same port
        assert proxy.counts.outages == 1 and proxy.counts.cut >= 1
