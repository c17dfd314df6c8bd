"""Parquet metadata: round trips, partitioning, flushing, commits, resume and schema evolution."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from amnst.batch import metadata, storage
from amnst.batch.metadata import (PAIRS_SCHEMA, QUALITY_COLUMNS, RUNS_SCHEMA, SCHEMA_VERSION, SEGMENTS_SCHEMA,
                            MetadataWriter, PairStatusIndex, latest_pair_status, new_run_id, read_table,
                            run_partition)

T0 = datetime(2026, 11, 25, 17, 23, 1, 250_000, tzinfo=timezone.utc)
PART_FILE = re.compile(r"part-\d{5}-[0-9a-f]{8}\.parquet")


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path) -> str:
    """An output URI on a local disk, then on a real (moto) S3 endpoint."""
    if request.param == "s3":
        return storage.join(request.getfixturevalue("s3_bucket"), "out")
    return str(tmp_path / "out")


def pair_row(pair_id: str, status: str = "ok", finished_at: datetime = T0, **columns) -> dict:
    """A pair row with every column filled, so that a round trip checks them all."""
    row = {
        "pair_id": pair_id, "row": 7, "content_uri": f"in/{pair_id}.wav", "style_uri": "in/rain.flac",
        "content_sha256": "c" * 64, "style_sha256": "s" * 64, "fingerprint": f"fp-{pair_id}",
        "preset": "default", "config_json": '{"iterations": 3}', "model_id": "seed-cnn",
        "output_uri": f"out/audio/{pair_id}.wav", "status": status, "error": None,
        "audio_seconds": 7.5, "segments": 2, "iterations": 3, "loss_start": 10.0, "loss_end": 1.5,
        "content_loss_start": 4.0, "content_loss_end": 0.5, "style_loss_start": 6.0,
        "style_loss_end": 1.0, "rollbacks": 1, "seconds_analyse": 0.1, "seconds_style": 0.2,
        "seconds_optimise": 3.0, "seconds_render": 0.4, "seconds_write": 0.05,
        "seconds_total": 3.75, "seconds_quality": 0.3, "worker_node": "node-1",
        "started_at": finished_at - timedelta(seconds=4), "finished_at": finished_at,
        **{name: 0.5 for name in QUALITY_COLUMNS},
        "loss_curve": [10.0, 4.0, 1.5], "reference_content": {name: 1.0 for name in QUALITY_COLUMNS},
        "reference_mix": {name: 0.25 for name in QUALITY_COLUMNS}, "strength": 0.5,
        "held_by": None,  # only a pair skipped as another run's holds it (below)
        "warnings": ["content.wav: truncated: its header promises 44100 frames (2.00 s), the file holds 22050 (1.00 s)"],
        "quality_seconds": 7.5,
        "precision": "bf16",
    }
    return {**row, **columns}


def segment_rows(pair_id: str, count: int = 2) -> list[dict]:
    return [{"pair_id": pair_id, "segment_index": i, "loss_start": 5.0, "loss_end": 0.75,
             "content_loss_end": 0.25, "style_loss_end": 0.5, "rollbacks": 0, "gave_up": False,
             "seconds": 1.5, "worker_node": "node-1", "finished_at": T0} for i in range(count)]


def run_row(status: str = "completed") -> dict:
    return {"status": status, "manifest_uri": "in/manifest.csv", "output_uri": "out",
            "preset": "default", "config_json": "{}", "model_id": "seed-cnn", "pairs_total": 1,
            "pairs_ok": 1, "pairs_failed": 0, "pairs_skipped": 0, "segments": 2,
            "audio_seconds": 7.5, "seconds": 4.0, "nodes": 1, "finished_at": T0}


def files_under(output: str) -> list[str]:
    return sorted(storage.list_uris(storage.join(output, "_amnst")))


def test_round_trip_with_hive_partition_columns(output):
    run_id = new_run_id(T0)
    writer = MetadataWriter(output, run_id, T0)
    writer.add_pair(pair_row("a"))
    writer.add_pair({"pair_id": "b", "status": "skipped"})
    writer.add_segments(segment_rows("a"))
    writer.commit(run_row())

    partition = {"schema_version": SCHEMA_VERSION, "date": "2026-11-25", "run_id": run_id}
    pairs = read_table(output, "pairs")
    assert pairs.schema == PAIRS_SCHEMA
    omitted_are_null = dict.fromkeys(PAIRS_SCHEMA.names) | partition | {"pair_id": "b", "status": "skipped"}
    assert pairs.to_pylist() == [{**partition, **pair_row("a")}, omitted_are_null]
    segments = read_table(output, "segments")
    assert segments.schema == SEGMENTS_SCHEMA
    assert segments.to_pylist() == [{**partition, **row} for row in segment_rows("a")]
    runs = read_table(output, "runs")
    assert runs.schema == RUNS_SCHEMA
    assert runs.to_pylist() == [{**partition, **run_row(), "started_at": T0}]


def test_files_are_plain_hive_parquet_for_external_readers(output):
    run_id = new_run_id(T0)
    writer = MetadataWriter(output, run_id, T0)
    writer.add_pair(pair_row("a"))
    writer.commit(run_row())

    for table, expected in (("pairs", pair_row("a")), ("runs", run_row())):
        fs, path = storage.filesystem(storage.join(output, "_amnst", table))
        # Reading the runs folder also shows that the _COMMITTED marker beside
        # the data is skipped by pyarrow's default ignore_prefixes.
        rows = ds.dataset(path, filesystem=fs, partitioning="hive").to_table().to_pylist()
        assert len(rows) == 1
        assert rows[0]["date"] == "2026-11-25" and rows[0]["run_id"] == run_id
        assert rows[0]["schema_version"] == SCHEMA_VERSION
        assert {k: rows[0][k] for k in expected} == expected
    # The partition columns live in the path only: a file holds no date or run_id.
    (uri,) = storage.list_uris(run_partition(output, "pairs", run_id, T0))
    fs, path = storage.filesystem(uri)
    file_columns = pq.read_schema(path, filesystem=fs).names
    assert "date" not in file_columns and "run_id" not in file_columns


def test_layout_names_and_commit_marker(output):
    run_id = new_run_id(T0)
    writer = MetadataWriter(output, run_id, T0)
    writer.add_pair(pair_row("a"))
    writer.commit(run_row())

    runs_folder = run_partition(output, "runs", run_id, T0.date())
    assert runs_folder == storage.join(output, "_amnst", "runs", "date=2026-11-25", f"run_id={run_id}")
    assert storage.exists(storage.join(runs_folder, "_COMMITTED"))
    names = [uri.rsplit("/", 1)[1] for uri in files_under(output)]
    assert len(names) == 3  # a pairs file, a runs file and the marker
    assert all(PART_FILE.fullmatch(n) for n in names if n != "_COMMITTED")


def test_a_run_stays_in_the_utc_day_it_started(tmp_path):
    evening_in_new_york = datetime(2026, 11, 25, 19, 30, tzinfo=timezone(timedelta(hours=-5)))
    writer = MetadataWriter(str(tmp_path), "run-1", evening_in_new_york)
    writer.add_pair(pair_row("a", finished_at=evening_in_new_york + timedelta(days=1)))
    writer.commit(run_row())
    assert set(read_table(str(tmp_path), "pairs")["date"].to_pylist()) == {"2026-11-26"}
    assert read_table(str(tmp_path), "runs")["started_at"].to_pylist() == [evening_in_new_york]


def test_flush_rows_writes_several_files_per_table_and_no_temporaries(output):
    writer = MetadataWriter(output, new_run_id(T0), T0, flush_rows=3)
    for i in range(7):
        writer.add_pair(pair_row(f"p{i}"))
        writer.add_segments(segment_rows(f"p{i}"))
    writer.commit(run_row())

    per_table = {table: [u for u in files_under(output) if f"/_amnst/{table}/" in u]
                 for table in metadata.TABLES}
    assert len(per_table["pairs"]) > 1 and len(per_table["segments"]) > 1
    names = [uri.rsplit("/", 1)[1] for uris in per_table.values() for uri in uris]
    assert sorted(n for n in names if not PART_FILE.fullmatch(n)) == ["_COMMITTED"]
    assert read_table(output, "pairs").num_rows == 7
    assert read_table(output, "segments").num_rows == 14


def test_flush_seconds_writes_buffered_rows_once_they_are_old(output):
    writer = MetadataWriter(output, new_run_id(T0), T0, flush_seconds=0.05)
    writer.add_pair(pair_row("a"))
    assert read_table(output, "pairs").num_rows == 0
    time.sleep(0.06)
    writer.add_pair(pair_row("b"))
    assert read_table(output, "pairs").column("pair_id").to_pylist() == ["a", "b"]


def test_committed_only_skips_runs_without_a_marker(output):
    done, died = new_run_id(T0), new_run_id(T0 + timedelta(hours=1))
    committed = MetadataWriter(output, done, T0)
    committed.add_pair(pair_row("a"))
    committed.commit(run_row())
    # A driver that died after flushing: its pair rows are still whole files.
    crashed = MetadataWriter(output, died, T0 + timedelta(hours=1))
    crashed.add_pair(pair_row("b"))
    crashed.flush()

    assert sorted(read_table(output, "pairs").column("run_id").to_pylist()) == sorted([done, died])
    assert read_table(output, "pairs", committed_only=True).column("run_id").to_pylist() == [done]
    assert read_table(output, "runs", committed_only=True).column("run_id").to_pylist() == [done]


def test_latest_pair_status_takes_the_newest_row_across_runs(output):
    first = MetadataWriter(output, new_run_id(T0), T0)
    first.add_pair(pair_row("a", "failed", T0, error="decode failed", fingerprint="fp-1"))
    first.add_pair(pair_row("b", "ok", T0, fingerprint="fp-1"))
    first.add_pair(pair_row("c", "ok", T0, fingerprint="fp-1"))
    first.commit(run_row("partial"))
    later = T0 + timedelta(days=1)
    second = MetadataWriter(output, new_run_id(later), later)
    second.add_pair(pair_row("a", "ok", later, fingerprint="fp-2"))
    second.add_pair(pair_row("b", "skipped", later, fingerprint="fp-1"))
    second.flush()  # uncommitted: its rows still count for resume

    assert latest_pair_status(output) == {"a": ("ok", "fp-2"), "b": ("skipped", "fp-1"),
                                          "c": ("ok", "fp-1")}


def test_a_pair_skipped_as_another_runs_does_not_hide_its_record(output):
    holder = MetadataWriter(output, new_run_id(T0), T0)
    holder.add_pair(pair_row("a", "ok", T0, fingerprint="fp-1"))
    holder.flush()
    # An overlapping run met "a" while the holder still held its claim, and recorded it after.
    later = T0 + timedelta(seconds=5)
    other = MetadataWriter(output, new_run_id(later), later)
    other.add_pair({"pair_id": "a", "status": "skipped", "finished_at": later, "held_by": holder.run_id,
                    "error": f"held by run {holder.run_id} (host h, pid 1) until ..."})
    other.add_pair({"pair_id": "b", "status": "skipped", "finished_at": later, "held_by": holder.run_id})
    other.flush()
    assert latest_pair_status(output) == {"a": ("ok", "fp-1")}
    rows = read_table(output, "pairs").to_pylist()
    assert sorted(r["held_by"] or "" for r in rows) == ["", holder.run_id, holder.run_id]


def test_pair_status_index_reads_only_what_was_written_since(output):
    index = PairStatusIndex(output)
    index.refresh()
    assert index.get("a") is None
    first = MetadataWriter(output, new_run_id(T0), T0)
    first.add_pair(pair_row("a", "failed", T0, fingerprint="fp-1"))
    first.flush()
    index.refresh()
    assert index.get("a") == ("failed", "fp-1")
    # A row older than the one known (a slow run's) does not replace it; a newer one does.
    second = MetadataWriter(output, new_run_id(T0), T0)
    second.add_pair(pair_row("a", "ok", T0 - timedelta(hours=1), fingerprint="fp-0"))
    second.add_pair(pair_row("b", "ok", T0, fingerprint="fp-1"))
    second.flush()
    index.refresh()
    assert index.statuses() == {"a": ("failed", "fp-1"), "b": ("ok", "fp-1")}
    first.add_pair(pair_row("a", "ok", T0 + timedelta(hours=1), fingerprint="fp-2"))
    first.flush()
    index.refresh()
    assert index.get("a") == ("ok", "fp-2")
    assert index.statuses() == latest_pair_status(output)


def test_file_with_an_older_schema_reads_with_the_current_one(output):
    writer = MetadataWriter(output, "20261126T000000Z-000002", T0)
    writer.add_pair(pair_row("new"))
    writer.commit(run_row())
    # An older writer that knew no loss_end (nor schema 5's strength) column, in a run that
    # lists first, so that inferring the schema from the first file would lose the columns.
    old_run = "20261125T000000Z-000001"
    lacking = ("loss_end", "strength")
    old_schema = pa.schema([f for f in PAIRS_SCHEMA if f.name not in ("date", "run_id", *lacking)])
    old_row = {k: v for k, v in pair_row("old").items() if k not in lacking}
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist([{"schema_version": 0, **old_row}], schema=old_schema), sink)
    old_file = storage.join(run_partition(output, "pairs", old_run, T0), "part-00001-0000abcd.parquet")
    storage.write_bytes(old_file, sink.getvalue().to_pybytes())

    pairs = read_table(output, "pairs")
    assert pairs.schema == PAIRS_SCHEMA
    rows = {row["pair_id"]: row for row in pairs.to_pylist()}
    assert rows["old"]["loss_end"] is None and rows["old"]["schema_version"] == 0
    assert rows["old"]["strength"] is None
    assert rows["old"]["loss_start"] == 10.0 and rows["old"]["run_id"] == old_run
    assert rows["new"]["loss_end"] == 1.5 and rows["new"]["schema_version"] == SCHEMA_VERSION
    assert rows["new"]["strength"] == 0.5


def test_schema_6_appends_the_measured_seconds_and_the_precision():
    names = PAIRS_SCHEMA.names
    assert names[-2:] == ["quality_seconds", "precision"]
    assert PAIRS_SCHEMA.field("quality_seconds").type == pa.float64()
    assert PAIRS_SCHEMA.field("precision").type == pa.string() and PAIRS_SCHEMA.field("precision").nullable


def test_schema_5_appends_nullable_strength_and_held_by_columns():
    # Additive evolution: appended last, nullable, and the version raised.
    names = PAIRS_SCHEMA.names
    assert names.index("reference_mix") < names.index("strength") < names.index("held_by")
    assert PAIRS_SCHEMA.field("strength").type == pa.float64() and PAIRS_SCHEMA.field("strength").nullable
    assert PAIRS_SCHEMA.field("held_by").type == pa.string() and PAIRS_SCHEMA.field("held_by").nullable
    assert SCHEMA_VERSION >= 5


def test_bad_rows_are_rejected_when_added(output):
    writer = MetadataWriter(output, new_run_id(T0), T0)
    with pytest.raises(ValueError, match="bogus, loss"):
        writer.add_pair(pair_row("a", bogus=1, loss=2))
    with pytest.raises(ValueError, match="status"):
        writer.add_pair(pair_row("a", status="done"))
    with pytest.raises(ValueError, match="pair_id"):
        writer.add_pair({"status": "ok"})
    with pytest.raises(ValueError, match="run_id"):
        writer.add_pair(pair_row("a", run_id="someone-else"))
    with pytest.raises(ValueError, match="timezone"):
        writer.add_pair(pair_row("a", finished_at=datetime(2026, 11, 25, 17, 0)))
    with pytest.raises(ValueError, match="segment_index"):
        writer.add_segments([{"pair_id": "a"}])
    with pytest.raises((TypeError, ValueError)):
        writer.add_pair(pair_row("a", iterations="many"))
    with pytest.raises(ValueError, match="status"):
        writer.commit(run_row("finished"))
    # None of the bad rows reached the buffer, so the run still commits.
    writer.add_pair(pair_row("a"))
    writer.commit(run_row())
    assert read_table(output, "pairs").num_rows == 1
    with pytest.raises(RuntimeError, match="committed"):
        writer.add_pair(pair_row("b"))


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="timezone"):
        MetadataWriter("out", "run-1", datetime(2026, 11, 25))
    with pytest.raises(ValueError, match="run_id"):
        MetadataWriter("out", "../escape", T0)
    with pytest.raises(ValueError, match="table"):
        read_table("out", "training")
    with pytest.raises(ValueError, match="timezone"):
        new_run_id(datetime(2026, 11, 25))


def test_run_ids_sort_by_time_and_are_unique():
    ids = [new_run_id(T0) for _ in range(50)]
    assert len(set(ids)) == 50
    assert all(re.fullmatch(r"20261125T172301Z-[0-9a-f]{6}", i) for i in ids)
    assert new_run_id(T0 + timedelta(seconds=1)) > max(ids)
    assert new_run_id(T0.astimezone(timezone(timedelta(hours=-5)))).startswith("20261125T172301Z-")


def test_empty_output_reads_as_empty_tables(output):
    for table, schema in metadata.SCHEMAS.items():
        assert read_table(output, table) == schema.empty_table()
    assert latest_pair_status(output) == {}
