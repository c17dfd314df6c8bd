"""Nightly batches: every manifest due on a date, run with resume semantics.

Which manifests are due, under the manifests prefix::

    {prefix}/rain.csv                  every night
    {prefix}/2026-11-25/extra.jsonl    on 2026-11-25 only

A manifest is a ``.csv``, ``.jsonl``, ``.ndjson`` or ``.parquet`` file lying
directly under the prefix (due every night) or directly under a
``YYYY-MM-DD/`` folder of it (due on that date only). Names starting with
``_`` or ``.`` are hidden and skipped, as are deeper folders and other files.

Each manifest writes under its own output prefix, ``{output}/{its path under
the manifests prefix}`` (``{output}/rain.csv/``,
``{output}/2026-11-25/extra.jsonl/``). Two manifests can then never write the
same pair id to the same place, and an every-night manifest keeps one output
across nights: each night computes only the pairs that are new, failed before,
or whose inputs or settings changed, and a rerun of the same night finishes
only what is left.

Every attempt at a night leaves one JSON record of its outcome at
``{output}/_amnst/nightly/date=YYYY-MM-DD/night-{UTC start}-{hex}.json``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from amnst.batch import storage

if TYPE_CHECKING:
    from amnst.batch.ray_runner import Progress, RunOptions

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".parquet")
RECORD_FOLDER = ("_amnst", "nightly")


@dataclass(frozen=True)
class DueManifest:
    """A manifest due tonight and the output prefix it runs into."""

    uri: str
    output: str


@dataclass
class ManifestOutcome:
    """What one manifest's run did; ``error`` is set when it could not run at all."""

    manifest: str
    output: str
    run_id: str | None = None
    pairs: int = 0
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.error is None and not self.failed


@dataclass
class NightSummary:
    """The outcome of one attempt at a night, as recorded under the output."""

    date: datetime.date
    started_at: datetime.datetime
    finished_at: datetime.datetime | None = None
    manifests: list[ManifestOutcome] = field(default_factory=list)
    record_uri: str | None = None

    def total(self, counter: str) -> int:
        """The sum of one counter (``pairs``, ``ok``, ``skipped``, ``failed``) over the manifests."""
        return sum(getattr(outcome, counter) for outcome in self.manifests)

    @property
    def status(self) -> str:
        """``completed`` when every manifest ran with no failed pair, else ``partial``."""
        return "completed" if all(m.succeeded for m in self.manifests) else "partial"

    @property
    def exit_status(self) -> int:
        from amnst.batch.ray_runner import EXIT_OK, EXIT_PARTIAL

        return EXIT_OK if self.status == "completed" else EXIT_PARTIAL

    def to_json(self) -> dict[str, Any]:
        return {"date": self.date.isoformat(), "status": self.status, "exit_status": self.exit_status,
                "started_at": self.started_at.isoformat(),
                "finished_at": self.finished_at.isoformat() if self.finished_at else None,
                **{counter: self.total(counter) for counter in ("pairs", "ok", "skipped", "failed")},
                "manifests": [dataclasses.asdict(outcome) for outcome in self.manifests]}


def due_manifests(prefix: str, output: str, date: datetime.date) -> list[DueManifest]:
    """The manifests under ``prefix`` due on ``date``, in listing order, with their outputs.

    Raises :class:`amnst.batch.storage.StorageError` if the prefix cannot be listed.
    """
    base = storage.check_uri(prefix).rstrip("/") + "/"
    due = []
    for uri in storage.list_uris(prefix):
        relative = uri[len(base):].split("/")
        if _is_due(relative, date):
            due.append(DueManifest(uri, storage.join(output, *relative)))
    return due


def _is_due(parts: list[str], date: datetime.date) -> bool:
    name = parts[-1]
    if name.startswith(("_", ".")) or not name.lower().endswith(MANIFEST_SUFFIXES):
        return False
    # Every night directly under the prefix; only on its date inside a date folder.
    return len(parts) == 1 or (len(parts) == 2 and parts[0] == date.isoformat())


def run_night(prefix: str, options: RunOptions, date: datetime.date,
              on_progress: Callable[[Progress], None] | None = None) -> NightSummary:
    """Run every manifest due on ``date``, one after another, and record the night.

    ``options`` is a :class:`amnst.batch.ray_runner.RunOptions` whose ``output`` is
    the night's output prefix; each manifest runs into its own prefix below it.
    Needs a connected Ray. A manifest that cannot be read is recorded as failed
    and the others still run. This is the one place a night's outcome is
    produced: what reports it (the log, metrics) reads the returned summary.
    """
    summary = NightSummary(date, _now())
    for manifest in due_manifests(prefix, options.output, date):
        summary.manifests.append(_run_one(manifest, options, on_progress))
    summary.finished_at = _now()
    summary.record_uri = _record(options.output, summary)
    return summary


def _run_one(manifest: DueManifest, options: RunOptions,
             on_progress: Callable[[Progress], None] | None) -> ManifestOutcome:
    from amnst.batch.manifest import ManifestError
    from amnst.batch.ray_runner import run_manifest

    outcome = ManifestOutcome(manifest.uri, manifest.output)
    try:
        result = run_manifest(manifest.uri, dataclasses.replace(options, output=manifest.output),
                              on_progress)
    except (ManifestError, storage.StorageError) as error:
        outcome.error = str(error)
        return outcome
    progress = result.progress
    outcome.run_id, outcome.seconds = result.run_id, result.seconds
    outcome.pairs, outcome.ok = progress.pairs_seen, progress.ok
    outcome.skipped, outcome.failed = progress.skipped, progress.failed
    return outcome


def _record(output: str, summary: NightSummary) -> str:
    """Write the night's JSON record under ``output``; return its URI."""
    name = f"night-{summary.started_at:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}.json"
    uri = storage.join(output, *RECORD_FOLDER, f"date={summary.date.isoformat()}", name)
    storage.write_bytes(uri, (json.dumps(summary.to_json(), indent=2) + "\n").encode())
    return uri


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)
