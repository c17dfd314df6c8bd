"""The Ray runner: a manifest's pairs as tasks over a cluster.

Per pair: ``analyse`` (CPU: read, hash, decode, segment) yields the content
segments; ``optimise`` tasks (GPU when asked, one per ``segments_per_task``
segments) share the style's Gram targets, computed once per distinct style
by a ``style`` task; ``render`` (CPU) stitches, inverts, encodes and writes.
The driver streams the manifest, keeps at most ``max_in_flight`` tasks
outstanding, consumes results in completion order and records every pair.
When the run is committed it writes the run's report page (``amnst.batch.report``).

Runs of one manifest into one output may overlap (a manual rerun during the
nightly one): each pair is claimed before it starts (``amnst.batch.claims``), and a
pair that another live run holds is recorded ``skipped``, ``held_by`` that run.
A claim is released once the pair's record is written, so a run that claims a
pair after another released it finds that run's record (see
``_Driver.done_meanwhile``) and skips the pair as done.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import ray

from amnst.batch import claims, metadata, report, storage
from amnst.ops import metrics
from amnst.config import Preset
from amnst.batch.manifest import Pair, RowError, read_manifest
from amnst.batch.pipeline import (QUALITY_SECONDS, AnalysisInfo, PairJob, RenderedPair, SegmentsResult, Weights,
                                  analyse_pair, finish_pair, invert_pair, optimise_segments, render_pair,
                                  style_targets_for)

EXIT_OK, EXIT_PARTIAL = 0, 3
# An output written since this long before the run read the records may be another
# run's, whose record the run has not read: it looks again before computing the pair.
# Covers a writer's flush interval (metadata_flush_seconds) and clock skew between hosts.
FRESH_OUTPUT_MARGIN = 600.0


@dataclass(frozen=True)
class RunOptions:
    """How a batch runs; ``preset`` is the base that manifest rows override."""

    output: str
    preset: Preset
    weights: str | None = None
    segments_per_task: int = 1
    num_gpus_per_task: float = 0.0
    num_cpus_per_task: float = 1.0
    max_in_flight: int = 32
    output_format: str = "wav"
    # Tasks retried after a worker or node dies; input errors are never retried.
    max_retries: int = 3
    metadata_flush_seconds: float = 30.0
    # Lifetime of a pair's claim (amnst.batch.claims); the run renews it every third of this.
    # A run killed with claims held delays those pairs by at most this much.
    claim_ttl_seconds: float = claims.DEFAULT_TTL_SECONDS
    # Each pair's quality measures read its first this many seconds (None: all).
    quality_seconds: float | None = QUALITY_SECONDS

    def __post_init__(self) -> None:
        if self.segments_per_task < 1:
            raise ValueError(f"segments_per_task={self.segments_per_task} must be >= 1")
        if self.max_in_flight < 2:
            raise ValueError(f"max_in_flight={self.max_in_flight} must be >= 2")
        if self.num_gpus_per_task < 0 or self.num_cpus_per_task <= 0:
            raise ValueError("num_gpus_per_task must be >= 0 and num_cpus_per_task > 0")
        if self.output_format not in ("wav", "flac"):
            raise ValueError(f"output_format={self.output_format!r} must be wav or flac")
        if self.metadata_flush_seconds < 0:
            raise ValueError(f"metadata_flush_seconds={self.metadata_flush_seconds} must be >= 0")
        if not self.claim_ttl_seconds > 0:
            raise ValueError(f"claim_ttl_seconds={self.claim_ttl_seconds} must be > 0")
        if self.quality_seconds is not None and not self.quality_seconds > 0:
            raise ValueError(f"quality_seconds={self.quality_seconds} must be > 0")


@dataclass
class Progress:
    """Counters of a run, for the live progress line and the run row."""

    pairs_seen: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    segments_total: int = 0
    segments_done: int = 0
    in_flight: int = 0
    audio_seconds: float = 0.0

    @property
    def pairs_done(self) -> int:
        return self.ok + self.failed + self.skipped

    def line(self) -> str:
        return (f"pairs {self.pairs_done}/{self.pairs_seen} done ({self.ok} ok, {self.skipped} skipped, "
                f"{self.failed} failed) | segments {self.segments_done}/{self.segments_total} "
                f"| in flight {self.in_flight}")


@dataclass
class RunSummary:
    run_id: str
    progress: Progress
    seconds: float
    # The run's report page (amnst.batch.report), or why it could not be written.
    report_uri: str | None = None
    report_error: str | None = None

    @property
    def exit_status(self) -> int:
        return EXIT_PARTIAL if self.progress.failed else EXIT_OK


# --- tasks -------------------------------------------------------------------
# max_calls=0: worker processes are reused, so TensorFlow is imported and the
# compiled step built once per process (GPU tasks default to max_calls=1).

def _node() -> str:
    return ray.get_runtime_context().get_node_id()


def setup_worker() -> dict[str, Any]:
    """What a TensorFlow task does first in its worker process: size TensorFlow's
    thread pools to the CPUs the task was given, turn on GPU memory growth
    (``amnst.ops.devices.prepare_tensorflow``), and register the worker's metrics,
    which are returned.

    TensorFlow sizes its pools to the whole machine, so N one-CPU tasks on an
    N-core node would each run N threads; matched to the tasks' CPUs, two
    optimise tasks on this project's 2-core machine did 1.23x the work
    (``amnst bench pipeline``, docs/performance.md). Pools can only be sized
    before TensorFlow starts, so a worker keeps those of its first TensorFlow task.
    Memory growth is what lets two tasks share a GPU (``num_gpus_per_task`` 0.5).
    """
    from amnst.ops.devices import prepare_tensorflow

    prepare_tensorflow(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0))
    return metrics.worker_metrics()


@ray.remote(num_returns=2, max_calls=0)
def _analyse(job: PairJob, weights: Weights) -> tuple[AnalysisInfo, Any]:
    # No TensorFlow here (librosa only): importing it would cost this worker
    # seconds and memory; the worker's first TensorFlow task sizes its pools.
    metrics.worker_metrics()
    return analyse_pair(job, weights)


@ray.remote(max_calls=0)
def _style(style_uri: str, preset: Preset, weights: Weights) -> Any:
    setup_worker()
    return style_targets_for(style_uri, preset, weights)


@ray.remote(max_calls=0)
def _split(segments: np.ndarray, width: int) -> tuple[np.ndarray, ...]:
    # One object per optimise task: a node then pulls only the segments it optimises.
    return tuple(segments[start:start + width] for start in range(0, len(segments), width))


@ray.remote(max_calls=0)
def _optimise(segments: Any, start: int, targets: Any, preset: Preset, weights: Weights) -> SegmentsResult:
    worker_metrics = setup_worker()
    result = optimise_segments(segments, start, targets, preset, weights)
    worker_metrics["amnst_worker_nst_iterations"].inc(len(segments) * preset.nst.iterations)
    return dataclasses.replace(result, node=_node())


@ray.remote(max_calls=0)
def _render(job: PairJob, fmt: str, quality_seconds: float | None, *parts: SegmentsResult) -> dict[str, Any]:
    setup_worker()
    return {**render_pair(job, list(parts), fmt, quality_seconds=quality_seconds), "worker_node": _node()}


@ray.remote(max_calls=0)
def _invert(job: PairJob, *parts: SegmentsResult) -> RenderedPair:
    # A run with GPUs inverts here, in a GPU task: the card inverts a pair in a
    # fraction of the time the CPUs take, and no GPU slot waits on the CPU half.
    setup_worker()
    return invert_pair(job, list(parts))


@ray.remote(max_calls=0)
def _finish(job: PairJob, fmt: str, quality_seconds: float | None, rendered: RenderedPair) -> dict[str, Any]:
    setup_worker()
    return {**finish_pair(job, rendered, fmt, quality_seconds=quality_seconds), "worker_node": _node()}


# --- the driver ----------------------------------------------------------------

@dataclass
class _PairState:
    job: PairJob
    started_at: datetime
    info: AnalysisInfo | None = None
    segments_ref: Any = None
    style_key: tuple | None = None
    # Once planned: the first segment of each optimise task, and how many each takes;
    # the segments as those tasks take them (one chunk each, once split); their results.
    starts: list[int] = field(default_factory=list)
    width: int = 0
    chunk_refs: list[Any] = field(default_factory=list)
    part_refs: list[Any] = field(default_factory=list)


@dataclass
class _Driver:
    options: RunOptions
    weights: Weights
    writer: metadata.MetadataWriter
    run_id: str
    claims: claims.ClaimKeeper
    # The pairs' records as this run knows them, and when it first read them.
    status: metadata.PairStatusIndex
    read_at: datetime
    progress: Progress = field(default_factory=Progress)
    # Pairs recorded whose claims are released once their rows are written.
    recorded: list[str] = field(default_factory=list)
    # ref -> (task kind, its pair, segments it covers)
    pending: dict[Any, tuple[str, _PairState, int]] = field(default_factory=dict)
    # Steps of ready pairs waiting for room in flight: (step, pair, optimise task's index).
    queued: collections.deque[tuple[str, _PairState, int]] = field(default_factory=collections.deque)
    styles: dict[tuple, list] = field(default_factory=dict)

    def resources(self, gpu: bool) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.options.num_cpus_per_task,
                                   "max_retries": self.options.max_retries}
        if gpu and self.options.num_gpus_per_task:
            options["num_gpus"] = self.options.num_gpus_per_task
        return options

    # submission

    def submit_pair(self, job: PairJob) -> None:
        state = _PairState(job, datetime.now(timezone.utc))
        try:
            holder = self.claims.acquire(job.pair_id)
        except storage.StorageError as error:
            self.record(state, "failed", error=f"cannot claim the pair: {error}")
            return
        if holder is not None:
            self.record(state, "skipped", error=holder.describe(), held_by=holder.run_id)
            return
        info_ref, segments_ref = _analyse.options(**self.resources(gpu=False)).remote(job, self.weights)
        self.pending[info_ref] = ("analyse", state, 0)
        state.segments_ref = segments_ref

    def plan_optimisation(self, state: _PairState) -> None:
        """Queue a ready pair's optimise tasks, then its render task."""
        job, info = state.job, state.info
        preset = job.preset
        state.style_key = (info.style_sha256, preset.fingerprint(), self.weights.id)
        if state.style_key not in self.styles:
            ref = _style.options(**self.resources(gpu=True)).remote(job.style_uri, preset, self.weights)
            self.styles[state.style_key] = [ref, 0]
            self.pending[ref] = ("style", state, 0)
        style = self.styles[state.style_key]
        style[1] += 1
        state.width = info.n_segments if preset.nst.couples_segments else self.options.segments_per_task
        state.starts = list(range(0, info.n_segments, state.width))
        state.chunk_refs = [state.segments_ref]
        if len(state.starts) > 1:
            self.queued.append(("split", state, 0))
        self.queued.extend(("optimise", state, part) for part in range(len(state.starts)))
        self.queued.append(("render", state, 0))
        self.progress.segments_total += info.n_segments

    def submit_step(self, step: str, state: _PairState, part: int) -> None:
        """Submit one queued step of a planned pair: the split of its segments into the
        optimise tasks' chunks; optimise task ``part``; or the render task, which takes
        every optimise task's result."""
        job, info = state.job, state.info
        if step == "split":
            state.chunk_refs = _split.options(num_returns=len(state.starts), **self.resources(gpu=False)).remote(
                state.segments_ref, state.width)
            self.pending[state.chunk_refs[0]] = ("split", state, 0)
        elif step == "optimise":
            start = state.starts[part]
            stop = min(start + state.width, info.n_segments)
            ref = _optimise.options(**self.resources(gpu=True)).remote(
                state.chunk_refs[part], start, self.styles[state.style_key][0], job.preset, self.weights)
            state.part_refs.append(ref)
            self.pending[ref] = ("optimise", state, stop - start)
        else:
            fmt, seconds = self.options.output_format, self.options.quality_seconds
            if self.options.num_gpus_per_task:
                rendered = _invert.options(**self.resources(gpu=True)).remote(job, *state.part_refs)
                ref = _finish.options(**self.resources(gpu=False)).remote(job, fmt, seconds, rendered)
            else:
                ref = _render.options(**self.resources(gpu=False)).remote(job, fmt, seconds, *state.part_refs)
            self.pending[ref] = ("render", state, 0)
            state.segments_ref = None  # the split or optimise tasks hold it now

    # completion

    def handle(self, ref: Any) -> None:
        kind, state, segments = self.pending.pop(ref)
        if kind == "analyse":
            self.on_analysed(state, ref)
        elif kind == "optimise":
            # Counted without fetching the result: the render task reports failures.
            self.progress.segments_done += segments
        elif kind == "render":
            self.on_rendered(state, ref)

    def on_analysed(self, state: _PairState, ref: Any) -> None:
        try:
            state.info = ray.get(ref)
        except ray.exceptions.RayError as error:
            self.record(state, "failed", error=_reason(error))
            return
        if state.info.status == "ready" and self.done_meanwhile(state):
            self.record(state, "skipped", error=f"done meanwhile by run {self.status.run_of(state.job.pair_id)}")
        elif state.info.status == "ready":
            self.plan_optimisation(state)
        else:
            # A skip says which run's output it kept, as a skip for a live claim does.
            error = state.info.error if state.info.status != "skipped" else \
                f"done by run {self.status.run_of(state.job.pair_id)}"
            self.record(state, state.info.status, error=error)

    def on_rendered(self, state: _PairState, ref: Any) -> None:
        style = self.styles[state.style_key]
        style[1] -= 1
        if style[1] == 0:  # no pair in flight needs these targets any more
            del self.styles[state.style_key]
        try:
            rendered = ray.get(ref)
        except ray.exceptions.RayError as error:
            self.record(state, "failed", error=_reason(error))
            return
        self.progress.audio_seconds += state.info.n_samples / state.job.preset.audio.sample_rate
        self.record(state, "ok", rendered=rendered)

    def done_meanwhile(self, state: _PairState) -> bool:
        """Whether another run finished this pair, with this fingerprint, after this run read
        the records: then its output is fresh and its record, written before it released its
        claim, is in the records now."""
        job = state.job
        try:
            written = storage.modified(job.output_uri)
        except storage.NotFoundError:
            return False
        except storage.StorageError:
            written = self.read_at  # cannot tell: look
        if written < self.read_at - timedelta(seconds=FRESH_OUTPUT_MARGIN):
            return False
        try:
            self.status.refresh()
        except OSError:  # pyarrow's errors and StorageError: computing again is safe
            return False
        latest = self.status.get(job.pair_id)
        return latest is not None and latest[0] in ("ok", "skipped") and latest[1] == state.info.fingerprint

    def release_recorded(self) -> None:
        """Release the claims of recorded pairs once their rows are written."""
        if self.recorded and not self.writer.buffered:
            for pair_id in self.recorded:
                self.claims.release(pair_id)
            self.recorded.clear()

    def record(self, state: _PairState, status: str, error: str | None = None,
               rendered: dict[str, Any] | None = None, held_by: str | None = None) -> None:
        job, info = state.job, state.info
        setattr(self.progress, status, getattr(self.progress, status) + 1)
        metrics.PAIRS.labels(status).inc()
        row = {
            "run_id": self.run_id, "pair_id": job.pair_id, "row": job.row,
            "content_uri": job.content_uri, "style_uri": job.style_uri,
            "preset": job.preset.name, "config_json": _config_json(job.preset),
            "model_id": self.weights.id,
            "output_uri": job.output_uri if status != "failed" and held_by is None else None,
            "status": status, "error": error, "held_by": held_by, "iterations": job.preset.nst.iterations,
            "strength": job.preset.nst.strength,
            "started_at": state.started_at, "finished_at": datetime.now(timezone.utc),
        }
        if info is not None:
            row.update(content_sha256=info.content_sha256, style_sha256=info.style_sha256,
                       fingerprint=info.fingerprint, seconds_analyse=info.seconds)
            if info.n_samples:
                row.update(audio_seconds=info.n_samples / job.preset.audio.sample_rate,
                           segments=info.n_segments)
        if rendered is not None:
            segments = rendered.pop("segments")
            row.update(rendered)
            row["seconds_total"] = (row["finished_at"] - state.started_at).total_seconds()
            _count_work(row)
            self.writer.add_segments([{**s, "run_id": self.run_id, "pair_id": job.pair_id,
                                       "finished_at": row["finished_at"]} for s in segments])
        self.writer.add_pair(row)
        if held_by is None:
            self.recorded.append(job.pair_id)
        self.release_recorded()


def connect(address: str | None, **options: Any) -> None:
    """Join the cluster at ``address`` or ``RAY_ADDRESS``; with neither, start a local Ray.

    ``"local"`` is explicit because a bare ``ray.init()`` would join any
    cluster that ``ray start`` left registered on this machine. ``options``
    are further ``ray.init`` arguments, over these defaults (a local instance's
    size, its dashboard).
    """
    from amnst.ops.devices import job_runtime_env

    # TF_FORCE_GPU_ALLOW_GROWTH=true for every worker of the job (amnst.ops.devices).
    defaults = dict(log_to_driver=False, include_dashboard=False, configure_logging=False,
                    runtime_env=job_runtime_env())
    ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", **{**defaults, **options})


def run_manifest(manifest_uri: str, options: RunOptions,
                 on_progress: Callable[[Progress], None] | None = None) -> RunSummary:
    """Run every pair of a manifest on the connected Ray cluster; record each one.

    Pairs already done with the same fingerprint are skipped (resume), and so
    are pairs that another live run of the output holds (``amnst.batch.claims``).
    Bad rows and bad inputs fail their pair only. Raises ManifestError if the
    manifest itself cannot be read.
    """
    clock = time.perf_counter()
    started_at = datetime.now(timezone.utc)
    run_id = metadata.new_run_id(started_at)
    metrics.observe_driver_storage()
    weights = Weights.locate(options.weights, options.preset.nst.seed)
    status = metadata.PairStatusIndex(options.output)
    read_at = datetime.now(timezone.utc)
    status.refresh()
    writer = metadata.MetadataWriter(options.output, run_id, started_at,
                                     flush_seconds=options.metadata_flush_seconds)
    # Leaving the block releases every claim still held: at the end, after the commit, or
    # when the run fails.
    with claims.ClaimKeeper(options.output, run_id, options.claim_ttl_seconds) as keeper:
        driver = _Driver(options, weights, writer, run_id, keeper, status, read_at)
        _drive(driver, _jobs(read_manifest(manifest_uri, options.preset), options, status), on_progress)
        summary = RunSummary(run_id, driver.progress, time.perf_counter() - clock)
        writer.commit(_run_row(summary, manifest_uri, options, weights, started_at))
    # The report is a view of the records just committed: failing to write it
    # is said, but changes neither the run's records nor its exit status.
    try:
        summary.report_uri = report.write_report(report.RunLocation(options.output, run_id, writer.date))
    except storage.StorageError as error:
        summary.report_error = str(error)
    return summary


def _drive(driver: _Driver, rows: Iterator[PairJob | RowError],
           on_progress: Callable[[Progress], None] | None) -> None:
    """Submit the manifest's pairs and handle their tasks until every pair is recorded."""
    options = driver.options
    exhausted = False
    last_report = 0.0
    while True:
        while driver.queued and len(driver.pending) < options.max_in_flight:
            driver.submit_step(*driver.queued.popleft())
        while not exhausted and not driver.queued and len(driver.pending) < options.max_in_flight:
            item = next(rows, None)
            if item is None:
                exhausted = True
            elif isinstance(item, RowError):
                driver.progress.pairs_seen += 1
                _record_bad_row(driver, item)
            else:
                driver.progress.pairs_seen += 1
                driver.submit_pair(item)
        if exhausted and not driver.pending and not driver.queued:
            break
        ready, _ = ray.wait(list(driver.pending), num_returns=1, timeout=1.0, fetch_local=False)
        for ref in ready:
            driver.handle(ref)
        driver.progress.in_flight = len(driver.pending)
        metrics.TASKS_IN_FLIGHT.set(len(driver.pending))
        # Rows of a long pair must not wait for the next pair's: their claims wait on them.
        driver.writer.flush_if_due()
        driver.release_recorded()
        if on_progress is not None and time.monotonic() - last_report >= 0.5:
            on_progress(driver.progress)
            last_report = time.monotonic()
    if on_progress is not None:
        on_progress(driver.progress)


def _count_work(row: dict[str, Any]) -> None:
    """A finished pair's work in the driver's metrics."""
    metrics.SEGMENTS.inc(row["segments"])
    metrics.NST_ITERATIONS.inc(row["segments"] * row["iterations"])
    metrics.AUDIO_SECONDS.inc(row["audio_seconds"])
    for stage in ("analyse", "optimise", "render", "write", "total"):
        metrics.STAGE_SECONDS.labels(stage).observe(row[f"seconds_{stage}"])


def _jobs(items: Iterator[Pair | RowError], options: RunOptions,
          status: metadata.PairStatusIndex) -> Iterator[PairJob | RowError]:
    for item in items:
        if isinstance(item, RowError):
            yield item
            continue
        output_uri = storage.join(options.output, "audio", f"{item.pair_id}.{options.output_format}")
        latest = status.get(item.pair_id)
        done = latest[1] if latest is not None and latest[0] in ("ok", "skipped") else None
        yield PairJob(item.pair_id, item.row, item.content, item.style, item.preset, output_uri, done)


def _record_bad_row(driver: _Driver, error: RowError) -> None:
    driver.progress.failed += 1
    metrics.PAIRS.labels("failed").inc()
    now = datetime.now(timezone.utc)
    # Without an id of its own the row is named by its number, with a ':' that no
    # pair_id can hold: its failure must never be taken for a pair's record.
    driver.writer.add_pair({"run_id": driver.run_id, "pair_id": error.pair_id or f"row:{error.row}",
                            "row": error.row, "status": "failed", "error": error.reason,
                            "model_id": driver.weights.id, "started_at": now, "finished_at": now})


def _run_row(summary: RunSummary, manifest_uri: str, options: RunOptions, weights: Weights,
             started_at: datetime) -> dict[str, Any]:
    progress = summary.progress
    status = "completed" if not progress.failed else ("failed" if not progress.ok + progress.skipped
                                                      else "partial")
    return {"run_id": summary.run_id, "status": status, "manifest_uri": manifest_uri,
            "output_uri": options.output, "preset": options.preset.name,
            "config_json": _config_json(options.preset), "model_id": weights.id,
            "pairs_total": progress.pairs_seen, "pairs_ok": progress.ok,
            "pairs_failed": progress.failed, "pairs_skipped": progress.skipped,
            "segments": progress.segments_done, "audio_seconds": progress.audio_seconds,
            "seconds": summary.seconds, "nodes": len([n for n in ray.nodes() if n["Alive"]]),
            "started_at": started_at, "finished_at": datetime.now(timezone.utc)}


def _config_json(preset: Preset) -> str:
    import json

    return json.dumps(preset.to_dict(), sort_keys=True)


def _reason(error: ray.exceptions.RayError) -> str:
    """One line: the cause of a task failure (an input error's own message)."""
    cause = getattr(error, "cause", None)
    if isinstance(error, ray.exceptions.RayTaskError) and cause is not None:
        return str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"

