"""Parquet metadata of runs, pairs and segments.

Layout, under an output URI::

    {output}/_amnst/{table}/date=YYYY-MM-DD/run_id={run_id}/part-{seq:05d}-{uuid8}.parquet
    {output}/_amnst/runs/date=YYYY-MM-DD/run_id={run_id}/_COMMITTED

``date`` (the UTC day the run started, so a run that crosses midnight stays
in one folder) and ``run_id`` are hive partition columns. They live in the
path only, not as columns inside the files: a file can then never disagree
with its folder, and no reader has to choose between the two. Readers with
hive partitioning (pyarrow.dataset, pandas, DuckDB, Spark) add them back;
:func:`read_table` does, as strings. The marker's leading "_" makes those
readers skip it.

Each Parquet file is written with one atomic put, so a reader sees a whole
file or none. A run's pair rows are therefore valid records even when its
driver died before the end; resuming relies on that. ``_COMMITTED`` is written
last, after the run's row: it marks the runs whose metadata is complete.

Schemas evolve additively: a new column is appended, nullable, and
``SCHEMA_VERSION`` goes up; it goes up too when a column's meaning changes.
:func:`read_table` reads every file with the current schema, so older files
return nulls for the columns they lack.
"""

from __future__ import annotations

import datetime
import re
import secrets
import time
import uuid
from collections.abc import Collection, Iterator

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from amnst.batch import storage

SCHEMA_VERSION = 6
# The output's quality measures in a pair row, as amnst.engine.quality.assess names them, in the
# order reports list them.
QUALITY_COLUMNS = ("chroma_similarity", "onset_correlation", "mfcc_distance", "mfcc_progress",
                   "gram_distance", "gram_progress", "texture_distance", "texture_progress",
                   "spectral_convergence", "noise_ratio", "peak")
# Those added in schema version 5: stored after the older ones (columns and struct fields).
_QUALITY_COLUMNS_5 = ("texture_distance", "texture_progress")
_QUALITY_COLUMNS_2 = tuple(name for name in QUALITY_COLUMNS if name not in _QUALITY_COLUMNS_5)
TABLES = ("runs", "pairs", "segments")

COMMIT_MARKER = "_COMMITTED"
PAIR_STATUSES = ("ok", "failed", "skipped")
RUN_STATUSES = ("completed", "partial", "failed")

# Where a table's files lie: hive folders date=YYYY-MM-DD/run_id=ID; the columns are the path's.
PARTITIONING = pa.schema([("date", pa.string()), ("run_id", pa.string())])
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
TIMESTAMP = pa.timestamp("us", tz="UTC")
_QUALITY_STRUCT = pa.struct([(name, pa.float64()) for name in (*_QUALITY_COLUMNS_2, *_QUALITY_COLUMNS_5)])


def table_schema(*fields: tuple[str, pa.DataType] | pa.Field) -> pa.Schema:
    """A table's schema: version and partition columns first, required, then ``fields``.

    A ``(name, type)`` pair is a nullable column; required ones are given as
    ``pa.field(..., nullable=False)``.
    """
    return pa.schema([
        pa.field("schema_version", pa.int16(), nullable=False),
        pa.field("date", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        *fields,
    ])


PAIRS_SCHEMA = table_schema(
    pa.field("pair_id", pa.string(), nullable=False),
    ("row", pa.int32()),
    ("content_uri", pa.string()),
    ("style_uri", pa.string()),
    ("content_sha256", pa.string()),
    ("style_sha256", pa.string()),
    ("fingerprint", pa.string()),
    ("preset", pa.string()),
    ("config_json", pa.string()),
    ("model_id", pa.string()),
    ("output_uri", pa.string()),
    pa.field("status", pa.string(), nullable=False),
    ("error", pa.string()),
    ("audio_seconds", pa.float64()),
    ("segments", pa.int32()),
    ("iterations", pa.int32()),
    ("loss_start", pa.float64()),
    ("loss_end", pa.float64()),
    ("content_loss_start", pa.float64()),
    ("content_loss_end", pa.float64()),
    ("style_loss_start", pa.float64()),
    ("style_loss_end", pa.float64()),
    ("rollbacks", pa.int32()),
    ("seconds_analyse", pa.float64()),
    ("seconds_style", pa.float64()),
    ("seconds_optimise", pa.float64()),
    ("seconds_render", pa.float64()),
    ("seconds_write", pa.float64()),
    ("seconds_total", pa.float64()),
    ("seconds_quality", pa.float64()),
    ("worker_node", pa.string()),
    ("started_at", TIMESTAMP),
    ("finished_at", TIMESTAMP),
    # Schema version 2: the output's quality measures (amnst.engine.quality).
    *((name, pa.float64()) for name in _QUALITY_COLUMNS_2),
    # Schema version 3: the piece's loss per iteration (mean over segments,
    # ``iterations + 1`` values from loss_start to loss_end), and the same
    # measures of the reference rows: the content itself and a plain mix.
    ("loss_curve", pa.list_(pa.float64())),
    ("reference_content", _QUALITY_STRUCT),
    ("reference_mix", _QUALITY_STRUCT),
    # Schema version 4: no new column. The quality measures are taken on levelled
    # spectra (amnst.engine.quality.power_spectrogram), so that gain is not scored: rows of
    # earlier versions hold unlevelled mfcc_*, gram_* and noise_ratio values.
    # Schema version 5: the texture measures (amnst.engine.quality.texture_statistics), here and
    # as fields appended to the reference rows' structs; null in rows of earlier versions.
    *((name, pa.float64()) for name in _QUALITY_COLUMNS_5),
    # Schema version 5 too: the pair's effective strength (its preset's nst.strength,
    # 0 the content's own reconstruction, 1 the full transfer); null for a row
    # whose preset is unknown (a bad manifest row) and in rows of earlier versions,
    # which were all full transfers.
    ("strength", pa.float64()),
    # Schema version 5 too: for a pair skipped because another live run held its claim
    # (amnst.batch.claims), that run's id (the error says which host and process); null otherwise.
    # Such a row says nothing of the pair's state, so resume passes over it.
    ("held_by", pa.string()),
    # Schema version 5 too: what was noticed of the inputs and used all the same
    # (amnst.engine.audio.AudioWarning: a truncated file), one line each; null if nothing.
    ("warnings", pa.list_(pa.string())),
    # Schema version 6: the seconds of the pair its quality measures read (its first
    # ones; amnst.batch.pipeline.QUALITY_SECONDS), and the precision its CNN computed
    # at (NSTConfig.precision as the workers resolved it; "bf16,fp32" where they
    # differed); null in rows of earlier versions, which measured the whole pair in fp32.
    ("quality_seconds", pa.float64()),
    ("precision", pa.string()),
)

SEGMENTS_SCHEMA = table_schema(
    pa.field("pair_id", pa.string(), nullable=False),
    pa.field("segment_index", pa.int32(), nullable=False),
    ("loss_start", pa.float64()),
    ("loss_end", pa.float64()),
    ("content_loss_end", pa.float64()),
    ("style_loss_end", pa.float64()),
    ("rollbacks", pa.int32()),
    ("gave_up", pa.bool_()),
    ("seconds", pa.float64()),
    ("worker_node", pa.string()),
    ("finished_at", TIMESTAMP),
)

RUNS_SCHEMA = table_schema(
    pa.field("status", pa.string(), nullable=False),
    ("manifest_uri", pa.string()),
    ("output_uri", pa.string()),
    ("preset", pa.string()),
    ("config_json", pa.string()),
    ("model_id", pa.string()),
    ("pairs_total", pa.int64()),
    ("pairs_ok", pa.int64()),
    ("pairs_failed", pa.int64()),
    ("pairs_skipped", pa.int64()),
    ("segments", pa.int64()),
    ("audio_seconds", pa.float64()),
    ("seconds", pa.float64()),
    ("nodes", pa.int32()),
    ("started_at", TIMESTAMP),
    ("finished_at", TIMESTAMP),
)

SCHEMAS = {"runs": RUNS_SCHEMA, "pairs": PAIRS_SCHEMA, "segments": SEGMENTS_SCHEMA}
_STATUSES = {"runs": RUN_STATUSES, "pairs": PAIR_STATUSES}


def file_schema(schema: pa.Schema) -> pa.Schema:
    """The columns stored inside a table's files: all but the partition columns."""
    for name in PARTITIONING.names:
        schema = schema.remove(schema.get_field_index(name))
    return schema


_FILE_SCHEMAS = {table: file_schema(SCHEMAS[table]) for table in TABLES}


def new_run_id(now: datetime.datetime) -> str:
    """A run id that sorts by start time and is unique: ``20261125T172301Z-1a2b3c``."""
    return f"{_utc(now, 'now'):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def run_partition(output_uri: str, table: str, run_id: str, date: datetime.date) -> str:
    """The folder URI holding one run's files of ``table``; ``date`` is the run's UTC start day."""
    _check_table(table)
    return partition_uri(output_uri, table, run_id, date)


def partition_uri(output_uri: str, folder: str, run_id: str, date: datetime.date) -> str:
    """``{output_uri}/_amnst/{folder}/date=YYYY-MM-DD/run_id={run_id}``: where one run's files of
    a table laid out as these are (the training's epoch rows too) go."""
    _check_run_id(run_id)
    return storage.join(output_uri, "_amnst", folder, f"date={date:%Y-%m-%d}", f"run_id={run_id}")


class MetadataWriter:
    """Buffers one run's pair and segment rows and writes them as Parquet files.

    Rows are validated as they are added, so a bad row raises at its caller and
    never blocks a later flush. A flush writes each table's buffered rows as one
    file; it happens when any table holds ``flush_rows`` rows, or when the
    oldest buffered row has waited ``flush_seconds`` (checked as rows are
    added, there is no background thread). ``commit`` ends the run.

    Rows are dicts keyed by column name; missing columns are null. The
    writer fills ``schema_version``, ``date`` and ``run_id``; a row may repeat
    them only with the same values. Not thread-safe: the driver owns it.
    """

    def __init__(self, output_uri: str, run_id: str, started_at: datetime.datetime,
                 flush_rows: int = 200, flush_seconds: float = 30.0) -> None:
        _check_run_id(run_id)
        if flush_rows < 1 or flush_seconds < 0:
            raise ValueError(f"flush_rows must be >= 1 and flush_seconds >= 0, "
                             f"got {flush_rows} and {flush_seconds}")
        self.output_uri = output_uri
        self.run_id = run_id
        self.started_at = _utc(started_at, "started_at")
        self.date = self.started_at.date()
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._fixed = {"schema_version": SCHEMA_VERSION, "date": f"{self.date:%Y-%m-%d}",
                       "run_id": run_id}
        # Flushed in this order: a pair's row, the record of truth, is never written
        # before its segments' rows, so a driver killed in between cannot leave a
        # pair recorded done without them.
        self._buffers: dict[str, list[pa.Table]] = {"segments": [], "pairs": []}
        self._oldest: float | None = None
        self._seq = 0
        self._committed = False

    def add_pair(self, row: dict) -> None:
        """Buffer one pair's row (status ``ok``, ``failed`` or ``skipped``)."""
        self._add("pairs", [row])

    def add_segments(self, rows: list[dict]) -> None:
        """Buffer segment rows, usually all of one pair's."""
        self._add("segments", rows)

    def flush(self) -> None:
        """Write each table's buffered rows as one Parquet file, atomically."""
        for table, buffered in self._buffers.items():
            if buffered:
                self._write(table, pa.concat_tables(buffered))
                # Cleared per table only once written: if a later table's write
                # fails, retrying the flush does not write these rows twice.
                buffered.clear()
        self._oldest = None

    def flush_if_due(self) -> None:
        """Flush if the oldest buffered row has waited ``flush_seconds``: for a
        caller that adds rows seldom (a long pair) but wakes often."""
        if self._oldest is not None and time.monotonic() - self._oldest >= self.flush_seconds:
            self.flush()

    @property
    def buffered(self) -> bool:
        """Whether rows wait to be written."""
        return any(self._buffers.values())

    def commit(self, run_row: dict) -> None:
        """Flush, write the run's row, then the commit marker, last.

        ``started_at`` defaults to the writer's. After a commit the writer
        accepts no more rows.
        """
        self._check_open()
        self.flush()
        self._write("runs", self._validate("runs", [{"started_at": self.started_at, **run_row}]))
        marker = storage.join(run_partition(self.output_uri, "runs", self.run_id, self.date),
                              COMMIT_MARKER)
        storage.write_bytes(marker, b"")
        self._committed = True

    def _add(self, table: str, rows: list[dict]) -> None:
        self._check_open()
        if not rows:
            return
        self._buffers[table].append(self._validate(table, rows))
        now = time.monotonic()
        if self._oldest is None:
            self._oldest = now
        fullest = max(sum(part.num_rows for part in parts) for parts in self._buffers.values())
        if fullest >= self.flush_rows or now - self._oldest >= self.flush_seconds:
            self.flush()

    def _validate(self, table: str, rows: list[dict]) -> pa.Table:
        """Rows as an Arrow table of the file schema; raises ``ValueError`` on a bad row."""
        for row in rows:
            _check_row(table, row, self._fixed)
        # Converting now, not at flush, makes a wrongly typed value raise here.
        return pa.Table.from_pylist([{**row, **self._fixed} for row in rows],
                                    schema=_FILE_SCHEMAS[table])

    def _write(self, table: str, data: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(data, sink)
        self._seq += 1
        name = f"part-{self._seq:05d}-{uuid.uuid4().hex[:8]}.parquet"
        # A unique name, not if_absent: a retried put of the same bytes is harmless.
        storage.write_bytes(storage.join(run_partition(self.output_uri, table, self.run_id,
                                                       self.date), name),
                            sink.getvalue().to_pybytes())

    def _check_open(self) -> None:
        if self._committed:
            raise RuntimeError(f"run {self.run_id} is already committed")


def read_table(output_uri: str, table: str, committed_only: bool = False) -> pa.Table:
    """All rows of ``table`` under ``output_uri``, with the current schema.

    Files written with an older schema return nulls for the columns they lack.
    ``date`` and ``run_id`` come from the partition folders. With
    ``committed_only``, only runs that wrote their commit marker are read.
    """
    dataset = _dataset(output_uri, table)
    selected = None
    if committed_only:
        # Typed, so that an empty set (no run committed yet) still compares with strings.
        selected = ds.field("run_id").isin(pa.array(sorted(_committed_run_ids(output_uri)), pa.string()))
    return dataset.to_table(filter=selected)


def scan_run(output_uri: str, table: str, run_id: str, columns: list[str] | None = None,
             pair_ids: Collection[str] | None = None) -> Iterator[pa.RecordBatch]:
    """One run's rows of ``table`` as a stream of record batches, so that a run
    of any size is read in bounded memory; with the current schema, as
    :func:`read_table`. ``pair_ids`` keeps only those pairs' rows."""
    _check_run_id(run_id)
    selected = ds.field("run_id") == run_id
    if pair_ids is not None:
        selected = selected & ds.field("pair_id").isin(pa.array(sorted(pair_ids), pa.string()))
    return _dataset(output_uri, table).to_batches(columns=columns, filter=selected)


def latest_pair_status(output_uri: str) -> dict[str, tuple[str, str | None]]:
    """``pair_id -> (status, fingerprint)`` of each pair's newest row, across all runs.

    Uncommitted runs count: their rows were each written whole. The newest row
    is the one with the latest ``finished_at``; ties go to the later run id.
    Rows of pairs skipped because another run held them (``held_by``) do not
    count: they say nothing of the pair's state.
    """
    index = PairStatusIndex(output_uri)
    index.refresh()
    return index.statuses()


class PairStatusIndex:
    """:func:`latest_pair_status`, kept up to date: :meth:`refresh` reads only the
    pair files written since it last looked (those of runs that overlap this one)."""

    _COLUMNS = ["pair_id", "status", "fingerprint", "finished_at", "run_id"]

    def __init__(self, output_uri: str) -> None:
        self.output_uri = output_uri
        self._read: set[str] = set()
        # pair_id -> ((finished_at known, finished_at, run_id), status, fingerprint)
        self._latest: dict[str, tuple[tuple, str, str | None]] = {}

    def refresh(self) -> None:
        fs, base = storage.filesystem(storage.join(self.output_uri, "_amnst", "pairs"))
        new = [info.path for info in _list_files(fs, base)
               if info.base_name.endswith(".parquet") and not info.base_name.startswith(("_", "."))
               and info.path not in self._read]
        if not new:
            return
        dataset = ds.dataset(new, schema=PAIRS_SCHEMA, format="parquet", filesystem=fs,
                             partitioning=ds.partitioning(PARTITIONING, flavor="hive"),
                             partition_base_dir=base)
        rows = dataset.to_table(columns=self._COLUMNS, filter=ds.field("held_by").is_null())
        # Oldest first, so that within this batch the newest row is met last.
        rows = rows.sort_by([("finished_at", "ascending", "at_start"),
                             ("run_id", "ascending", "at_start")])
        epoch = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
        for pair_id, status, fingerprint, finished_at, run_id in zip(
                *(rows[name].to_pylist() for name in self._COLUMNS)):
            key = (finished_at is not None, finished_at or epoch, run_id or "")
            known = self._latest.get(pair_id)
            if known is None or key >= known[0]:
                self._latest[pair_id] = (key, status, fingerprint)
        self._read.update(new)

    def get(self, pair_id: str) -> tuple[str, str | None] | None:
        """``(status, fingerprint)`` of the pair's newest row, or None."""
        known = self._latest.get(pair_id)
        return None if known is None else known[1:]

    def run_of(self, pair_id: str) -> str | None:
        """The run id of the pair's newest row, or None."""
        known = self._latest.get(pair_id)
        return None if known is None else known[0][2] or None

    def statuses(self) -> dict[str, tuple[str, str | None]]:
        return {pair_id: (status, fingerprint) for pair_id, (_, status, fingerprint) in self._latest.items()}


def _dataset(output_uri: str, table: str) -> ds.Dataset:
    """A table's Parquet files as one dataset with the current schema and hive partitioning."""
    _check_table(table)
    return partitioned_dataset(output_uri, table, SCHEMAS[table])


def partitioned_dataset(output_uri: str, folder: str, schema: pa.Schema) -> ds.Dataset:
    """The Parquet files under ``{output_uri}/_amnst/{folder}`` (:func:`partition_uri`) as one
    dataset of ``schema``, ``date`` and ``run_id`` read from the path."""
    fs, base = storage.filesystem(storage.join(output_uri, "_amnst", folder))
    # Listing the data files ourselves, rather than letting pyarrow discover
    # them, keeps out markers and in-flight temporary files however named.
    paths = [info.path for info in _list_files(fs, base)
             if info.base_name.endswith(".parquet") and not info.base_name.startswith(("_", "."))]
    # The explicit schema is what unifies files of older schema versions.
    return ds.dataset(paths, schema=schema, format="parquet", filesystem=fs,
                      partitioning=ds.partitioning(PARTITIONING, flavor="hive"),
                      partition_base_dir=base)


def _committed_run_ids(output_uri: str) -> set[str]:
    fs, base = storage.filesystem(storage.join(output_uri, "_amnst", "runs"))
    return {_partition_value(info.path, "run_id") for info in _list_files(fs, base)
            if info.base_name == COMMIT_MARKER}


def _list_files(fs: pafs.FileSystem, base: str) -> list[pafs.FileInfo]:
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    return [info for info in fs.get_file_info(selector) if info.type == pafs.FileType.File]


def _partition_value(path: str, key: str) -> str:
    for part in path.split("/"):
        if part.startswith(f"{key}="):
            return part[len(key) + 1:]
    raise ValueError(f"no {key}= folder in {path}")


def _check_row(table: str, row: dict, fixed: dict) -> None:
    schema = SCHEMAS[table]
    unknown = sorted(set(row) - set(schema.names))
    if unknown:
        raise ValueError(f"unknown {table} column(s): {', '.join(unknown)}")
    for name, value in fixed.items():
        if name in row and row[name] != value:
            raise ValueError(f"{table} row has {name}={row[name]!r}, but this writer writes {value!r}")
    for field in _FILE_SCHEMAS[table]:
        value = row.get(field.name)
        if value is None and not field.nullable and field.name not in fixed:
            raise ValueError(f"{table} row lacks required column {field.name}")
        if field.type == TIMESTAMP and isinstance(value, datetime.datetime):
            _utc(value, field.name)
    allowed = _STATUSES.get(table)
    if allowed and row["status"] not in allowed:
        raise ValueError(f"{table} status must be one of {', '.join(allowed)}, got {row['status']!r}")


def _utc(moment: datetime.datetime, name: str) -> datetime.datetime:
    # A naive datetime could be local or UTC time; guessing would shift the
    # record by hours, so it is refused.
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {moment!r}")
    return moment.astimezone(datetime.timezone.utc)


def _check_table(table: str) -> None:
    if table not in TABLES:
        raise ValueError(f"table must be one of {', '.join(TABLES)}, got {table!r}")


def _check_run_id(run_id: str) -> None:
    # The id becomes a folder name: no separators, and no leading "_" or "."
    # that readers would skip as hidden.
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"run_id must match {_RUN_ID.pattern}, got {run_id!r}")
