"""A training's epoch rows: one Parquet file per epoch under ``{output}/_amnst/training``.

The chief worker writes a row per epoch (:mod:`amnst.train.loop`); whoever
looks at a training afterwards (``amnst bench train``, the tests) reads them
back with :func:`read_epochs`. The files are laid out as::

    {output}/_amnst/training/date=YYYY-MM-DD/run_id={run_id}/epoch-NNNNN.parquet

following :mod:`amnst.batch.metadata`'s conventions: hive partitions ``date``
and ``run_id`` in the path only, a ``schema_version`` column, one atomic put
per file.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from amnst.batch import metadata, storage

TRAINING_SCHEMA_VERSION = 1

TRAINING_SCHEMA = metadata.table_schema(
    pa.field("epoch", pa.int32(), nullable=False),
    ("learning_rate", pa.float64()),
    ("train_loss", pa.float64()),
    ("train_accuracy", pa.float64()),
    ("val_loss", pa.float64()),
    ("val_accuracy", pa.float64()),
    ("best_epoch", pa.int32()),
    ("seconds", pa.float64()),  # training and validation
    ("train_seconds", pa.float64()),
    ("samples_per_second", pa.float64()),  # training segments per second of train_seconds
    ("train_samples", pa.int64()),
    ("val_samples", pa.int64()),
    ("workers", pa.int32()),
    ("replicas", pa.int32()),
    ("global_batch", pa.int32()),
    ("resumed", pa.bool_()),  # the first epoch after restoring a checkpoint
    ("fingerprint", pa.string()),
    ("finished_at", metadata.TIMESTAMP),
)
_FILE_SCHEMA = metadata.file_schema(TRAINING_SCHEMA)


def training_partition(output_uri: str, run_id: str, started_at: datetime) -> str:
    """The folder of one run's epoch rows; ``started_at`` (UTC) gives its date."""
    return metadata.partition_uri(output_uri, "training", run_id, started_at.astimezone(timezone.utc).date())


def write_epoch_row(output_uri: str, run_id: str, started_at: datetime, row: dict[str, Any]) -> None:
    """Write one epoch's row as its own Parquet file, atomically.

    The file is named after the epoch, so a redone epoch replaces its row.
    """
    table = pa.Table.from_pylist([{**row, "schema_version": TRAINING_SCHEMA_VERSION}], schema=_FILE_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    uri = storage.join(training_partition(output_uri, run_id, started_at), f"epoch-{row['epoch']:05d}.parquet")
    storage.write_bytes(uri, sink.getvalue().to_pybytes())


def read_epochs(output_uri: str) -> pa.Table:
    """Every epoch row under ``output_uri``, all runs, oldest first; ``date`` and ``run_id`` come from the path."""
    return metadata.partitioned_dataset(output_uri, "training", TRAINING_SCHEMA).to_table().sort_by("finished_at")
