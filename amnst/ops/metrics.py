"""The service's metrics: every name the dashboards and alerts use is defined here, once.

The driver owns one prometheus-client registry (``REGISTRY``), served on
``/metrics`` while a batch runs, and pushes each batch's outcome to a
Pushgateway. Ray worker processes must not serve HTTP themselves (ports
collide, and the server dies with the worker): what they measure goes
through ``ray.util.metrics`` and Ray's per-node metrics agent, under the
names in ``WORKER_METRICS`` (Ray's exporter prefixes them with ``ray_``).
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, pushadd_to_gateway, start_http_server

from amnst.batch import storage

REGISTRY = CollectorRegistry()

# Pair outcomes and work done, as the driver records them.
PAIRS = Counter("amnst_pairs", "Pairs finished, by status (ok, failed, skipped)", ["status"],
                registry=REGISTRY)
# Every status exists from the start, so that rate() sees a batch's first failure.
for _status in ("ok", "failed", "skipped"):
    PAIRS.labels(_status)
SEGMENTS = Counter("amnst_segments", "Mel segments optimised", registry=REGISTRY)
NST_ITERATIONS = Counter("amnst_nst_iterations", "NST iterations, summed over segments", registry=REGISTRY)
AUDIO_SECONDS = Counter("amnst_audio_seconds", "Seconds of audio produced", registry=REGISTRY)
STAGE_SECONDS = Histogram(
    "amnst_stage_seconds", "Seconds one pair spent in a stage (analyse, optimise, render, write, total)",
    ["stage"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
    registry=REGISTRY)
TASKS_IN_FLIGHT = Gauge("amnst_tasks_in_flight", "Ray tasks submitted and not yet finished", registry=REGISTRY)
STORAGE_BYTES = Counter("amnst_storage_bytes", "Bytes read and written by the driver", ["operation"],
                        registry=REGISTRY)
STORAGE_ERRORS = Counter("amnst_storage_errors", "Driver reads and writes that failed", ["operation"],
                         registry=REGISTRY)

# Training, one sample per epoch.
TRAIN_EPOCH = Gauge("amnst_train_epoch", "The last finished training epoch", registry=REGISTRY)
TRAIN_LOSS = Gauge("amnst_train_epoch_loss", "Loss of the last epoch, by split", ["split"], registry=REGISTRY)
TRAIN_ACCURACY = Gauge("amnst_train_epoch_accuracy", "Accuracy of the last epoch, by split", ["split"],
                       registry=REGISTRY)



def _batch_gauges(registry: CollectorRegistry) -> dict[str, Gauge]:
    """A batch's outcome: in the driver registry, and in each push to the Pushgateway."""
    return {
        "pairs": Gauge("amnst_batch_pairs", "Pairs of the last batch, by status", ["status"], registry=registry),
        "seconds": Gauge("amnst_batch_duration_seconds", "Wall-clock seconds of the last batch",
                         registry=registry),
        "finished": Gauge("amnst_batch_finished_timestamp_seconds", "When the last batch ended (Unix time)",
                          registry=registry),
        "last_success": Gauge("amnst_last_successful_batch_timestamp_seconds",
                              "When the last batch with no failed pair ended (Unix time)", registry=registry),
    }


BATCH = _batch_gauges(REGISTRY)

# ray.util.metrics names, recorded in worker processes.
WORKER_METRICS = {
    "amnst_worker_nst_iterations": "NST iterations run by this worker",
    "amnst_worker_storage_bytes": "Bytes read and written by this worker",
    "amnst_worker_storage_errors": "Reads and writes that failed in this worker",
}


def observe_driver_storage() -> None:
    """Count this process's reads and writes in the driver registry."""
    def observe(operation: str, size: int, failed: bool) -> None:
        if failed:
            STORAGE_ERRORS.labels(operation).inc()
        else:
            STORAGE_BYTES.labels(operation).inc(size)
    storage.observer = observe


_worker: dict[str, Any] = {}


def worker_metrics() -> dict[str, Any]:
    """This worker process's ``ray.util.metrics`` counters, created once; also hooks storage."""
    if not _worker:
        from ray.util import metrics as ray_metrics

        for name, description in WORKER_METRICS.items():
            tags = ("operation",) if "storage" in name else ()
            _worker[name] = ray_metrics.Counter(name, description, tag_keys=tags)

        def observe(operation: str, size: int, failed: bool) -> None:
            if failed:
                _worker["amnst_worker_storage_errors"].inc(1, tags={"operation": operation})
            elif size:
                _worker["amnst_worker_storage_bytes"].inc(size, tags={"operation": operation})
        storage.observer = observe
    return _worker


def serve(port: int) -> Any:
    """Serve ``/metrics`` of the driver registry on ``port`` (0: any free port); returns the server."""
    server, _ = start_http_server(port, registry=REGISTRY)
    return server


def push_batch_outcome(gateway: str, job: str, ok: int, failed: int, skipped: int, seconds: float) -> None:
    """Push a batch's outcome to a Pushgateway, add-style.

    Only the metrics pushed replace their previous values in the job's group;
    the last-success time is pushed only when no pair failed, so a failed
    night leaves the previous success standing (and the staleness alert fires).
    """
    registry = CollectorRegistry()
    pushed = _batch_gauges(registry)
    now = time.time()
    for gauges in (pushed, BATCH):
        for status, count in (("ok", ok), ("failed", failed), ("skipped", skipped)):
            gauges["pairs"].labels(status).set(count)
        gauges["seconds"].set(seconds)
        gauges["finished"].set(now)
        if not failed:
            gauges["last_success"].set(now)
    if failed:
        # Left out of the push, so the gateway keeps the previous success's time.
        registry.unregister(pushed["last_success"])
    pushadd_to_gateway(gateway, job=job, registry=registry)


def metric_names() -> set[str]:
    """Every sample name the driver registry can expose, as Prometheus stores it."""
    suffixes = {"counter": ("_total", "_created"), "gauge": ("",),
                "histogram": ("_bucket", "_count", "_sum", "_created")}
    return {family.name + suffix for family in REGISTRY.collect() for suffix in suffixes[family.type]}
