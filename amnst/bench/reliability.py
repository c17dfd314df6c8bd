"""Reliability, tried on purpose: bad inputs, injected faults, and an exactly-once audit.

Each scenario owns a root (a bucket or a folder): it writes synthesized
inputs and a manifest under ``ROOT/inputs/``, runs the manifest on the
connected Ray cluster into ``ROOT/out`` while injecting its fault, and
audits the root: every good pair done exactly once with a whole output,
every bad row failed with its reason and no output, and nothing written
anywhere else. ``amnst bench reliability`` runs them all and prints the
table; ``tests/test_reliability.py`` asserts on the same scenarios.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from amnst.engine import audio
from amnst.batch import metadata, storage
from amnst import synth
from amnst.config import Preset, get_preset
from amnst.bench.bad_inputs import (GOOD_SECONDS, SAMPLE_RATE, Case, OptionCase, bad_input_cases,
                                    bad_input_files, bad_option_cases, wav)
from amnst.bench.faultproxy import FaultPlan, FaultProxy
from amnst.bench.processes import Driver, MemoryWatch, ProcessKiller
from amnst.batch.ray_runner import Progress, RunOptions, RunSummary, run_manifest

# Few iterations: these scenarios try the service, not the sound.
PRESET = get_preset("default").with_overrides(iterations=2)
# The simulated clusters declare a removed node dead after five missed 1 s health
# checks rather than Ray's five missed 3 s ones: the node-loss run took 40 s instead of
# 73 s. A live raylet, even on a loaded machine, answers within the 2 s each check allows.
NODE_HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_timeout_ms": 2000,
                      "health_check_failure_threshold": 5}


# --- inputs --------------------------------------------------------------------------------

def good_pairs(count: int, seconds: float = GOOD_SECONDS) -> tuple[dict[str, bytes], list[Case]]:
    """``count`` pairs of synthesized music with one rain recording, and their cases."""
    files = {"rain.wav": wav(synth.rain(5.0, seed=1))}
    cases = []
    for index in range(count):
        files[f"music-{index}.wav"] = wav(synth.music(seconds, seed=100 + index))
        cases.append(Case("good pair", {"pair_id": f"p{index}", "content": f"music-{index}.wav",
                                        "style": "rain.wav"}))
    return files, cases


def write_inputs(root: str, files: dict[str, bytes], cases: list[Case]) -> str:
    """Write the files and a JSONL manifest of the cases' rows under ``ROOT/inputs``; its URI."""
    for name, data in files.items():
        storage.write_bytes(storage.join(root, "inputs", name), data)
    manifest = storage.join(root, "inputs", "manifest.jsonl")
    storage.write_bytes(manifest, "".join(json.dumps(case.row) + "\n" for case in cases).encode())
    return manifest


def output_of(root: str) -> str:
    return storage.join(root, "out")


# --- the audit -----------------------------------------------------------------------------

@dataclass
class Audit:
    """What a root holds after its runs, against the manifest's cases.

    ``done``: good pairs with exactly one ``ok`` record and a whole output;
    ``lost``: good pairs without; ``duplicates``: records beyond one per
    pair (``ok`` pair rows, segment rows). ``problems`` says what is wrong.
    """

    expected: int = 0
    done: int = 0
    lost: int = 0
    duplicates: int = 0
    failed_as_expected: int = 0
    problems: list[str] = field(default_factory=list)


def audit(root: str, cases: list[Case]) -> Audit:
    """Check every pair record, output and object under ``root`` against ``cases``.

    Cases are matched to pair records by manifest row number. A good pair must
    have exactly one ``ok`` record (later runs may only skip it), its segment
    records exactly once each, and an output that decodes to its full length.
    A bad one must have only ``failed`` records holding its reason and no
    output. Under ``root`` nothing but the inputs and the output prefix may
    exist, and under ``ROOT/out/audio`` nothing but the good pairs' outputs.
    """
    output = output_of(root)
    pairs = metadata.read_table(output, "pairs").sort_by("finished_at").to_pylist()
    segments = metadata.read_table(output, "segments").to_pylist()
    by_row: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    rows_of_id: dict[str, set[int]] = collections.defaultdict(set)
    for record in pairs:
        by_row[record["row"]].append(record)
        rows_of_id[record["pair_id"]].add(record["row"])
    result = Audit(expected=sum(case.reason is None for case in cases))
    wanted_outputs = set()
    for row, case in enumerate(cases, start=1):
        records = by_row.pop(row, [])
        if case.reason is None:
            # Another row's failure under this pair's id would make its record ambiguous.
            rows = rows_of_id[case.row["pair_id"]]
            if rows != {row}:
                result.problems.append(f"{case.row['pair_id']}: records of rows {sorted(rows)}")
            uri = _audit_good(case, records, segments, result)
            if uri:
                wanted_outputs.add(uri)
        elif _audit_bad(case, row, records, result):
            result.failed_as_expected += 1
    result.problems += [f"record of row {row} that the manifest does not have" for row in by_row]
    inputs = storage.join(root, "inputs") + "/"
    for uri in storage.list_uris(root):
        if uri.startswith(storage.join(output, "audio") + "/") and uri not in wanted_outputs:
            result.problems.append(f"{uri}: no ok pair wrote it")
        elif not uri.startswith((inputs, output + "/")):
            result.problems.append(f"{uri}: written outside the output prefix")
    result.lost = result.expected - result.done
    return result


def _audit_good(case: Case, records: list[dict[str, Any]], segments: list[dict[str, Any]],
                result: Audit) -> str | None:
    """Count a good pair as done, lost or duplicated; its output URI when it is whole."""
    pair_id = case.row["pair_id"]
    statuses = [record["status"] for record in records]
    ok = [record for record in records if record["status"] == "ok"]
    if any(status not in ("ok", "skipped") for status in statuses) or statuses[:1] == ["skipped"]:
        errors = [record["error"] for record in records if record["error"]]
        result.problems.append(f"{pair_id}: records {statuses} {errors}, expected ok then only skipped")
    if not ok:
        return None
    result.duplicates += len(ok) - 1
    record = ok[0]
    # The segments of the run that recorded the pair: a killed run may have left
    # segment rows of a pair it never recorded, which the rerun computed again.
    mine = collections.Counter(s["segment_index"] for s in segments
                               if (s["run_id"], s["pair_id"]) == (record["run_id"], pair_id))
    result.duplicates += sum(count - 1 for count in mine.values())
    if sorted(mine) != list(range(record["segments"])):
        result.problems.append(f"{pair_id}: segment records {sorted(mine)} of {record['segments']}")
        return None
    uri = record["output_uri"]
    samples = _decoded_length(uri)
    if samples != round(record["audio_seconds"] * SAMPLE_RATE):
        result.problems.append(f"{uri}: {samples} samples, the record says {record['audio_seconds']} s")
        return None
    result.done += 1
    return uri


def _audit_bad(case: Case, row: int, records: list[dict[str, Any]], result: Audit) -> bool:
    """Whether a bad row failed, every time, with its reason and no output."""
    wrong = [r for r in records if r["status"] != "failed" or case.reason not in (r["error"] or "")
             or r["output_uri"] is not None]
    if not records or wrong:
        found = [(r["status"], r["error"]) for r in records]
        result.problems.append(f"row {row} ({case.name}): {found}, expected failed with {case.reason!r}")
        return False
    return True


def _decoded_length(uri: str) -> int | None:
    """Samples of the mono output at ``uri``; None if it is missing or does not decode whole."""
    try:
        samples, rate = audio.decode(storage.read_bytes(uri), uri)
    except (storage.StorageError, audio.AudioError):
        return None
    return samples.shape[1] if rate == SAMPLE_RATE and samples.shape[0] == 1 else None


def refuse_options(cases: list[OptionCase], result: Audit) -> None:
    """Run each case's ``amnst`` command line in this process and audit its refusal into ``result``:
    its exit status, one error line holding its reason, and no output written."""
    from amnst import cli

    with tempfile.TemporaryDirectory() as temp:
        places = {"missing": os.path.join(temp, "missing.wav"), "folder": os.path.join(temp, "folder.wav"),
                  "out": os.path.join(temp, "out.wav"), "out_dir": os.path.join(temp, "out")}
        os.mkdir(places["folder"])
        for case in cases:
            argv = [arg.format(**places) for arg in case.argv]
            reason = case.reason.format(**places)
            errors = io.StringIO()
            try:
                with contextlib.redirect_stderr(errors):
                    status = cli.main(argv)
            except SystemExit as exit_:  # argparse's refusals exit
                status = exit_.code
            # Only error lines count: a stray log line from elsewhere in the process is no answer.
            lines = [line for line in errors.getvalue().splitlines() if ": error: " in line]
            written = [name for name in ("out", "out_dir") if os.path.exists(places[name])]
            if status != case.status or len(lines) != 1 or reason not in lines[0] or written:
                result.problems.append(f"{case.name}: {argv[1:]} gave status {status}, {lines}, wrote {written}; "
                                       f"expected status {case.status} with {reason!r}")
            else:
                result.failed_as_expected += 1


# --- scenarios -----------------------------------------------------------------------------

@dataclass
class Outcome:
    """One scenario's figures, a row of the reliability table."""

    scenario: str
    inputs: int  # bad or unusual inputs and rows tried
    faults: int  # faults injected
    audit: Audit
    seconds: float
    exit_status: int  # of the scenario's last run
    notes: dict[str, Any] = field(default_factory=dict)


def run_batch(root: str, files: dict[str, bytes], cases: list[Case], preset: Preset = PRESET,
              on_progress: Callable[[Progress], None] | None = None, **options: Any) -> RunSummary:
    """Write the inputs, then run their manifest on the connected cluster into ``ROOT/out``."""
    manifest = write_inputs(root, files, cases)
    return run_manifest(manifest, RunOptions(output_of(root), preset, **options), on_progress)


def bad_inputs(root: str, preset: Preset = PRESET) -> Outcome:
    """The bad-input batch: every bad input and row beside good pairs, in one manifest; then every
    class of bad option and local path on ``amnst``'s command line, each refused before any work."""
    cases, options = bad_input_cases(), bad_option_cases()
    clock = time.perf_counter()
    summary = run_batch(root, bad_input_files(), cases, preset)
    result = audit(root, cases)
    refuse_options(options, result)
    tried = sum(case.name != "good pair" for case in cases) + len(options)
    return Outcome("bad inputs and rows", tried, 0, result, time.perf_counter() - clock,
                   summary.exit_status, {"rows": len(cases), "option_lines": len(options)})


def long_piece(root: str, minutes: float = 10.0,
               preset: Preset = PRESET.with_overrides(griffin_lim_iters=4)) -> Outcome:
    """A piece of ``minutes`` beside a good pair, optimised at one iteration per segment
    and inverted with 4 Griffin-Lim iterations: the inversion's arrays, not how many
    times it updates them, set its memory, and 32 iterations took a third of the run.

    Notes the peak memory of a worker, which holds one piece to render it,
    and the driver's growth: it schedules without holding audio, but the
    run report it writes at the end reads each output whole.
    """
    files, cases = good_pairs(1)
    # Tiled rather than synthesized whole: the same music, in a fraction of the time.
    files["long.wav"] = wav(np.tile(synth.music(30.0, seed=5), round(minutes * 2)))
    cases.append(Case(f"{minutes:g}-minute piece", {"pair_id": "long", "content": "long.wav",
                                                    "style": "rain.wav", "iterations": 1}))
    manifest = write_inputs(root, files, cases)
    clock = time.perf_counter()
    with MemoryWatch() as memory:
        summary = run_manifest(manifest, RunOptions(output_of(root), preset))
    return Outcome(f"{minutes:g}-minute piece", 1, 0, audit(root, cases), time.perf_counter() - clock,
                   summary.exit_status, memory.figures())


def storage_faults(root: str, proxy: FaultProxy, plan: FaultPlan, pairs: int = 3,
                   preset: Preset = PRESET) -> Outcome:
    """Pairs run while the proxy in front of S3 answers errors and vanishes, per ``plan``.

    The inputs are written while the proxy is healthy; the plan holds for the
    whole run, the driver's reads and writes (boto3 and pyarrow) included.
    """
    files, cases = good_pairs(pairs)
    manifest = write_inputs(root, files, cases)
    healthy = proxy.plan
    proxy.plan = plan
    clock = time.perf_counter()
    try:
        summary = run_manifest(manifest, RunOptions(output_of(root), preset))
    finally:
        counts, proxy.plan = proxy.counts, healthy
    name = f"S3 {plan.error_share:.0%} 500/503" + (f", {plan.outage_seconds:g} s outage"
                                                   if plan.outage_after else "")
    return Outcome(name, 0, counts.injected, audit(root, cases), time.perf_counter() - clock,
                   summary.exit_status, {"requests": counts.requests, "errors": counts.errors,
                                         "cut": counts.cut})


# Optimise tasks long enough (tenths of a second) that a killer looking every 20 ms finds one running.
WORKER_KILL_PRESET = PRESET.with_overrides(iterations=20)


def worker_kill(root: str, pairs: int = 3, preset: Preset = WORKER_KILL_PRESET) -> Outcome:
    """Pairs run while a worker is SIGKILLed in the middle of an optimise task, once warm."""
    files, cases = good_pairs(pairs, seconds=11.0)  # three segments a pair
    started = threading.Event()
    killer = ProcessKiller(b"ray::_optimise", armed=started.is_set)

    def arm_once_a_segment_is_done(progress: Progress) -> None:
        if progress.segments_done >= 1:
            started.set()

    clock = time.perf_counter()
    with killer:
        summary = run_batch(root, files, cases, preset, on_progress=arm_once_a_segment_is_done)
    return Outcome("worker killed mid-segment", 0, len(killer.killed), audit(root, cases),
                   time.perf_counter() - clock, summary.exit_status)


def node_loss(root: str, remove_node: Callable[[], None], pairs: int = 4, preset: Preset = PRESET,
              num_gpus_per_task: float = 0.5) -> Outcome:
    """Pairs run on GPU nodes; once work is under way, ``remove_node()`` takes one away."""
    files, cases = good_pairs(pairs)
    removed = []

    def lose_a_node(progress: Progress) -> None:
        if not removed and progress.segments_done >= 1:
            remove_node()
            removed.append(True)

    clock = time.perf_counter()
    summary = run_batch(root, files, cases, preset, on_progress=lose_a_node,
                        num_gpus_per_task=num_gpus_per_task, max_in_flight=12)
    return Outcome("node removed mid-run", 0, len(removed), audit(root, cases),
                   time.perf_counter() - clock, summary.exit_status)


def driver_kill(root: str, address: str, pairs: int = 6, iterations: int = PRESET.nst.iterations,
                timeout: float = 300.0) -> Outcome:
    """``amnst run`` as its own process, SIGKILLed once it has recorded a pair, then run again.

    The driver records every pair at once (``--metadata-flush-seconds 0``),
    so the rerun finds what the killed one finished and computes only the rest.
    """
    files, cases = good_pairs(pairs)
    manifest = write_inputs(root, files, cases)
    args = [manifest, "--output", output_of(root), "--iterations", str(iterations),
            "--metadata-flush-seconds", "0"]
    clock = time.perf_counter()
    first = Driver(args, address)
    deadline = time.monotonic() + timeout
    while not _recorded_ok(output_of(root)):
        if first.process.poll() is not None or time.monotonic() > deadline:
            first.process.kill()
            status, _, stderr = first.wait()
            raise RuntimeError(f"the first driver ended (status {status}) or timed out before it "
                               f"recorded a pair: {stderr[-2000:]}")
        time.sleep(0.2)
    first.process.send_signal(signal.SIGKILL)
    first.wait()
    finished_first = _recorded_ok(output_of(root))
    status, stdout, stderr = Driver(args, address).wait(timeout)
    if status not in (0, 3):
        raise RuntimeError(f"the rerun failed with status {status}: {stderr[-2000:]}")
    return Outcome("driver killed, run again", 0, 1, audit(root, cases), time.perf_counter() - clock,
                   status, {"pairs_done_before_the_kill": finished_first,
                            "rerun": stdout.strip().splitlines()[0]})


def overlapping_runs(root: str, address: str, pairs: int = 4, gap: float = 1.0,
                     iterations: int = PRESET.nst.iterations, timeout: float = 600.0) -> Outcome:
    """Two ``amnst run`` of one manifest into one output, the second started ``gap`` s after the
    first, as a nightly run and a manual rerun would: each pair must be computed once.

    Few tasks in flight (``--max-in-flight 2``), so that both runs get to claim pairs.
    Notes both exit statuses, the pairs each run computed and skipped, and ``computed``:
    ``ok`` records over both runs, which must equal the pairs expected.
    """
    files, cases = good_pairs(pairs)
    manifest = write_inputs(root, files, cases)
    args = [manifest, "--output", output_of(root), "--iterations", str(iterations), "--max-in-flight", "2"]
    clock = time.perf_counter()
    first = Driver(args, address)
    time.sleep(gap)
    second = Driver(args, address)
    ended = [first.wait(timeout), second.wait(timeout)]
    statuses = [status for status, _, _ in ended]
    if any(status not in (0, 3) for status in statuses):
        raise RuntimeError(f"a run failed with status {statuses}: {ended[0][2][-1500:]} {ended[1][2][-1500:]}")
    result = _overlap_audit(root, cases)
    records = metadata.read_table(output_of(root), "pairs").to_pylist()
    runs = sorted({record["run_id"] for record in records})
    per_run = {run: dict(collections.Counter(r["status"] for r in records if r["run_id"] == run)) for run in runs}
    return Outcome("overlapping runs", 0, 1, result, time.perf_counter() - clock, max(statuses),
                   {"exit_statuses": statuses, "computed": sum(r["status"] == "ok" for r in records),
                    "runs": per_run})


def _overlap_audit(root: str, cases: list[Case]) -> Audit:
    """:func:`audit` for runs that overlap: a pair may be recorded ``skipped`` as held by the
    run that computes it before that run's ``ok`` record (then audit would call it out of order),
    so the order is checked here by what the skipped records name instead."""
    result = audit(root, cases)
    records = metadata.read_table(output_of(root), "pairs").to_pylist()
    computed_by = {r["pair_id"]: r["run_id"] for r in records if r["status"] == "ok"}
    fine = set()
    for pair_id, run_id in computed_by.items():
        others = [r for r in records if r["pair_id"] == pair_id and r["status"] != "ok"]
        # Skipped while the computing run held it, or once it had recorded it (as on resume).
        if all(r["status"] == "skipped" and (r["held_by"] == run_id or run_id in (r["error"] or ""))
               for r in others):
            fine.add(pair_id)
    result.problems = [problem for problem in result.problems
                       if not (problem.split(":")[0] in fine and "expected ok then only skipped" in problem)]
    return result


def _recorded_ok(output: str) -> int:
    """Pairs with an ``ok`` record under ``output`` so far."""
    return sum(status == "ok" for status, _ in metadata.latest_pair_status(output).values())


# --- the table -----------------------------------------------------------------------------

COLUMNS = ("scenario", "inputs tried", "faults injected", "pairs expected", "pairs done", "pairs lost",
           "duplicates", "seconds")


def table_rows(outcomes: Iterable[Outcome]) -> list[tuple[Any, ...]]:
    rows = [(o.scenario, o.inputs, o.faults, o.audit.expected, o.audit.done, o.audit.lost,
             o.audit.duplicates, round(o.seconds)) for o in outcomes]
    totals = tuple(sum(row[k] for row in rows) for k in range(1, len(COLUMNS)))
    return [*rows, ("total", *totals)]


def table(outcomes: Iterable[Outcome]) -> str:
    """The reliability table as Markdown, with a total row."""
    rows = table_rows(outcomes)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * (len(COLUMNS) - 1)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# --- every scenario, for amnst bench reliability -------------------------------------------

STORAGE_FAULTS = FaultPlan(error_share=0.2, outage_after=25, outage_seconds=3.0, seed=7)


def run_all(quick: bool = False) -> list[Outcome]:
    """Every scenario, each in a bucket of its own on a private S3 endpoint behind a FaultProxy.

    moto's server (the dev extra) plays S3. The scenarios run on a local Ray,
    node loss on a ``ray.cluster_utils.Cluster`` of a head and two GPU nodes.
    ``quick`` leaves out the ten-minute piece.
    """
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise RuntimeError("amnst bench reliability needs moto's server: pip install -e '.[dev]'") from None
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request
    moto = ThreadedMotoServer("127.0.0.1", 0, verbose=False)
    moto.start()
    try:
        with FaultProxy("http://{}:{}".format(*moto.get_host_and_port())) as proxy, _private_environment(proxy):
            with _local_ray():
                outcomes = [bad_inputs(_bucket("bad-inputs"))]
                if not quick:
                    outcomes.append(long_piece(_bucket("long-piece")))
                outcomes += [storage_faults(_bucket("storage-faults"), proxy, STORAGE_FAULTS),
                             worker_kill(_bucket("worker-kill")),
                             driver_kill(_bucket("driver-kill"), _gcs_address()),
                             overlapping_runs(_bucket("overlapping-runs"), _gcs_address())]
            with gpu_cluster() as (cluster, nodes):
                outcomes.append(node_loss(_bucket("node-loss"),
                                          lambda: cluster.remove_node(nodes[1], allow_graceful=False)))
    finally:
        moto.stop()
    return outcomes


def bench_reliability(quick: bool = False) -> dict[str, Any]:
    """Bad inputs and injected faults: per scenario, inputs tried, faults injected,
    and good pairs expected, done, lost and duplicated."""
    # Imported here: measure imports TensorFlow, which the scenarios never otherwise load in this process.
    from amnst.bench.measure import machine

    outcomes = run_all(quick)
    return {"benchmark": "reliability", "machine": machine(),
            "scenarios": [asdict(outcome) for outcome in outcomes],
            "table": table(outcomes)}


@contextlib.contextmanager
def _private_environment(proxy: FaultProxy) -> Iterator[None]:
    """S3 through ``proxy`` with throwaway keys, and Ray without a token, until the block ends.

    Ray's processes, and so its workers, take this environment when they start.
    """
    settings = {"AWS_ENDPOINT_URL": proxy.url, "AWS_ACCESS_KEY_ID": "amnst-bench",
                "AWS_SECRET_ACCESS_KEY": "amnst-bench", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    # A user's own AWS set-up must not point the scenarios elsewhere.
    cleared = ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_REGION")
    saved = {name: os.environ.get(name) for name in (*settings, *cleared)}
    os.environ.update(settings)
    for name in cleared:
        os.environ.pop(name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _bucket(name: str) -> str:
    """A new bucket for one scenario, as ``s3://amnst-reliability-NAME``."""
    import boto3

    bucket = f"amnst-reliability-{name}"
    boto3.session.Session().client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}"


@contextlib.contextmanager
def _local_ray() -> Iterator[None]:
    import ray

    temp_dir = tempfile.mkdtemp(prefix="rb", dir="/tmp")  # short: Ray's socket paths are limited
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             configure_logging=False, _temp_dir=temp_dir)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _gcs_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


@contextlib.contextmanager
def gpu_cluster(cpus_per_node: int = 1) -> Iterator[tuple[Any, list[Any]]]:
    """A CPU-only head and two nodes of one logical GPU and ``cpus_per_node`` CPUs each,
    joined by this process; yields the ``ray.cluster_utils.Cluster`` and its two GPU nodes."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "num_gpus": 0, "_system_config": NODE_HEALTH_CHECKS})
    try:
        nodes = [cluster.add_node(num_cpus=cpus_per_node, num_gpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        try:
            yield cluster, nodes
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()
