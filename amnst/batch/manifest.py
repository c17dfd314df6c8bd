"""Manifests: the content/style pairs of a batch run.

A manifest is a CSV, JSONL or Parquet file, chosen by its extension, with one
row per pair: the ``content`` and ``style`` URIs (relative ones resolve
against the manifest's location), an optional ``pair_id`` and optional
per-pair overrides of NST parameters. An empty or null cell means "not given".

Rows are streamed, never all held at once: the only state that grows with the
manifest is the duplicate-``pair_id`` check, at 24 to 48 bytes a row. A bad
row becomes a :class:`RowError` naming its row number while the rows around it
still run; only a manifest that cannot be read at all raises
:class:`ManifestError`.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
import os
import posixpath
import re
from array import array
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from amnst.batch import storage
from amnst.config import ConfigError, Preset, parse_layers

# A pair_id names its output file, so it must be a plain file name: it can
# neither climb out of the output prefix nor open a sub-folder.
PAIR_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

OVERRIDE_COLUMNS = ("content_weight", "style_weight", "iterations", "content_layers",
                    "style_layers", "init", "seed", "strength")
COLUMNS = ("pair_id", "content", "style") + OVERRIDE_COLUMNS

# Each stem of a derived pair_id is cut to this length, so that
# "<stem>__<stem>-<8 hex>" stays within PAIR_ID_PATTERN's 128 characters.
_STEM_CHARS = 56
_UNSAFE_RUNS = re.compile(r"[^A-Za-z0-9._-]+")
_DOT_RUNS = re.compile(r"\.{2,}")
_PARQUET_BATCH_ROWS = 1024
# Text formats are read through a buffer this large, so that an S3 manifest
# costs one ranged GET per MiB rather than one per 8 KiB the decoder asks for.
_READ_BUFFER_BYTES = 1 << 20


class ManifestError(ValueError):
    """The manifest as a whole is unusable; the message names its URI."""


@dataclass(frozen=True, slots=True)
class Pair:
    """A valid manifest row: one content/style pair and its effective preset."""

    row: int  # 1-based data row number, the header not counted
    pair_id: str
    content: str  # resolved URI
    style: str
    preset: Preset  # the base preset with this row's overrides applied
    # The row's own parameter values (already applied to ``preset``), parsed.
    # A dict cannot be hashed, so it is left out of the Pair's hash.
    overrides: dict[str, Any] = field(hash=False)


@dataclass(frozen=True, slots=True)
class RowError:
    """A bad manifest row: that pair fails and the others run."""

    row: int
    # The row's own pair_id when it gave a valid one that no earlier row took:
    # the failure is recorded under it, so it must not be another row's.
    pair_id: str | None
    reason: str  # "row N: ...", every problem of the row, separated by "; "


class _BadRecord(NamedTuple):
    """A record a reader could not turn into columns (e.g. a line that is not JSON)."""

    reason: str


_Record = dict[str, Any] | _BadRecord


def read_manifest(uri: str, base: Preset) -> Iterator[Pair | RowError]:
    """Stream the pairs of the manifest at ``uri``, in order.

    Each row yields a :class:`Pair` with ``base``'s parameters overridden by
    the row's, or a :class:`RowError` that says what is wrong with it.

    Raises :class:`ManifestError` at once for an unknown extension, a
    manifest that does not exist or a directory, and while iterating for one
    that cannot be decoded or has neither a ``content`` nor a ``style`` column.
    """
    reader, anchor, fs, path = _open_manifest(uri)
    return _pairs(anchor, base, _records(uri, reader, fs, path))


def check_manifest(uri: str) -> None:
    """Raise :class:`ManifestError` if ``uri`` can be told not to be a manifest without reading it.

    Its extension, and for a local manifest what :func:`read_manifest` checks
    before reading a row (that it exists and is not a directory); an S3 one is
    checked when it is read, at no request here. The batch commands call it
    before they start Ray.
    """
    try:
        local = not storage.check_uri(uri).startswith("s3://")
    except storage.StorageError as exc:
        raise ManifestError(f"manifest {uri}: {exc}") from exc
    if local:
        _open_manifest(uri)
    else:
        _reader_for(uri)


def _open_manifest(uri: str) -> tuple[_Reader, str, pafs.FileSystem, str]:
    """The manifest's reader, its absolute URI, filesystem and path; ManifestError if unusable."""
    try:
        # Anchored at the working folder, a relative local manifest path still
        # resolves its rows to absolute paths, which any worker can open.
        anchor = storage.resolve(uri, os.path.join(os.getcwd(), ""))
        fs, path = storage.filesystem(anchor)
        kind = fs.get_file_info(path).type
    except OSError as exc:  # StorageError included
        raise ManifestError(f"manifest {uri}: {exc}") from exc
    # A folder is named as one whatever its name, before its "extension" is judged.
    if kind == pafs.FileType.Directory:
        raise ManifestError(f"manifest {uri}: is a directory")
    reader = _reader_for(uri)
    if kind == pafs.FileType.NotFound:
        missing = "no such object" if anchor.startswith("s3://") else "no such file"
        raise ManifestError(f"manifest {uri}: {missing}")
    if kind != pafs.FileType.File:
        raise ManifestError(f"manifest {uri}: is not a file")
    return reader, anchor, fs, path


def derive_pair_id(content: str, style: str) -> str:
    """A readable, unique ``pair_id``: ``<content stem>__<style stem>-<8 hex>``.

    The hex digits hash both URIs, so same-named files in different folders
    still make different ids. The result always matches ``PAIR_ID_PATTERN``.
    """
    digest = hashlib.blake2b(f"{content}\0{style}".encode(), digest_size=4).hexdigest()
    return f"{_stem(content, 'content')}__{_stem(style, 'style')}-{digest}"


def _stem(uri: str, fallback: str) -> str:
    """The file name of ``uri`` without its extension, reduced to pair_id characters."""
    name = uri.rstrip("/")
    name = name[name.rfind("/") + 1:]
    dot = name.rfind(".")
    stem = name[:dot] if dot > 0 else name  # ".hidden" has no extension
    stem = _DOT_RUNS.sub(".", _UNSAFE_RUNS.sub("_", stem)).strip("._-")
    return stem[:_STEM_CHARS] or fallback


def _valid_pair_id(pair_id: str) -> bool:
    return PAIR_ID_PATTERN.fullmatch(pair_id) is not None and ".." not in pair_id


# -- rows ---------------------------------------------------------------------

def _pairs(uri: str, base: Preset, records: Iterator[_Record]) -> Iterator[Pair | RowError]:
    first_rows = _FirstRows()
    for row, record in enumerate(records, start=1):
        yield _parse_row(row, record, uri, base, first_rows)


def _parse_row(row: int, record: _Record, manifest_uri: str, base: Preset,
               first_rows: _FirstRows) -> Pair | RowError:
    """Validate one record; every problem found goes into the RowError's reason."""
    if isinstance(record, _BadRecord):
        return RowError(row, None, f"row {row}: {record.reason}")
    problems = [f"unknown column {name!r}" for name in record if name not in COLUMNS]
    given_id = _given_pair_id(record, problems)
    content = _input_uri(record, "content", manifest_uri, problems)
    style = _input_uri(record, "style", manifest_uri, problems)
    overrides = _overrides(record, problems)
    preset = _apply(base, overrides, problems)
    pair_id = given_id or (derive_pair_id(content, style) if content and style else None)
    # An id counts as taken even when its row has other problems: two records
    # of one pair_id would make the run's metadata ambiguous.
    if pair_id is not None:
        first = first_rows.first_row(pair_id, row)
        if first != row:
            problems.append(f"duplicate pair_id {pair_id!r} (first at row {first})")
            given_id = None
    if problems:
        return RowError(row, given_id, f"row {row}: " + "; ".join(problems))
    return Pair(row, pair_id, content, style, preset, overrides)


def _cell(record: dict[str, Any], name: str) -> Any:
    """The value of column ``name``, or None when absent, null or blank."""
    value = record.get(name)
    if isinstance(value, str):
        value = value.strip()
    return None if value == "" else value


def _given_pair_id(record: dict[str, Any], problems: list[str]) -> str | None:
    value = _cell(record, "pair_id")
    if value is None:
        return None
    if _is_integer(value):  # e.g. an integer Parquet column
        value = str(value)
    if not isinstance(value, str) or not _valid_pair_id(value):
        problems.append(f"pair_id {value!r} is not a plain name: a letter or digit, then up to "
                        "127 letters, digits, '.', '_' or '-', and no '..'")
        return None
    return value


def _input_uri(record: dict[str, Any], name: str, manifest_uri: str,
               problems: list[str]) -> str | None:
    """Column ``name`` as a URI resolved against the manifest's location."""
    value = _cell(record, name)
    if value is None:
        problems.append(f"missing column {name!r}" + (" (empty)" if name in record else ""))
        return None
    if not isinstance(value, str):
        problems.append(f"{name}={value!r} is not a URI")
        return None
    if value.endswith("/") or posixpath.basename(value) in (".", ".."):
        # Resolving would drop the trailing "/" and leave a name that reads as a
        # missing object; the row's author named a folder, so say that.
        problems.append(f"{name}: {value}: is a directory")
        return None
    try:
        return storage.resolve(value, manifest_uri)  # refuses unsupported schemes too
    except storage.StorageError as exc:
        problems.append(f"{name}: {exc}")
        return None


def _overrides(record: dict[str, Any], problems: list[str]) -> dict[str, Any] | None:
    """The row's parsed parameter values, or None if any of them is malformed."""
    overrides = {}
    malformed = False
    for name in record:
        if name not in _PARSERS or (value := _cell(record, name)) is None:
            continue
        try:
            overrides[name] = _PARSERS[name](value)
        except ValueError as exc:
            problems.append(f"{name}={value!r} {exc}")
            malformed = True
    return None if malformed else overrides


def _apply(base: Preset, overrides: dict[str, Any] | None, problems: list[str]) -> Preset | None:
    """``base`` with the overrides; the preset's own checks judge their values."""
    if overrides is None:
        return None
    if not overrides:
        return base
    try:
        return _with_overrides(base, tuple(sorted(overrides.items())))
    except ConfigError as exc:
        problems.append(str(exc))
        return None


@functools.lru_cache(maxsize=256)
def _with_overrides(base: Preset, overrides: tuple[tuple[str, Any], ...]) -> Preset:
    # Cached because building a Preset validates every field, which costs more
    # than the rest of a row, and a manifest's rows share few combinations.
    return base.with_overrides(**dict(overrides))


# -- cell values ----------------------------------------------------------------
# Each parser takes a non-empty cell, as text (CSV) or as a JSON / Parquet
# value, and raises ValueError with the end of a sentence "<name>=<value> ...".

def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_float(value: Any) -> float:
    if isinstance(value, (str, float)) or _is_integer(value):
        with suppress(ValueError):
            number = float(value)
            if math.isfinite(number):
                return number
    raise ValueError("is not a finite number")


def _parse_int(value: Any) -> int:
    if _is_integer(value):
        return value
    if isinstance(value, str):
        with suppress(ValueError):
            return int(value)
        with suppress(ValueError):
            value = float(value)
    # JSON and Parquet may carry integers as floats: 50.0 is 50.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError("is not an integer")


def _parse_layers(value: Any) -> tuple[int, ...]:
    try:
        if isinstance(value, str):
            return parse_layers(value)
        if isinstance(value, list):
            return tuple(_parse_int(index) for index in value)
        return (_parse_int(value),)
    except ValueError:  # ConfigError included
        raise ValueError('is not a list of layer indices such as "0,2" or [0, 2]') from None


def _parse_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("is not text")
    return value


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "content_weight": _parse_float,
    "style_weight": _parse_float,
    "iterations": _parse_int,
    "seed": _parse_int,
    "content_layers": _parse_layers,
    "style_layers": _parse_layers,
    "init": _parse_text,
    "strength": _parse_float,  # in [0, 1]: NSTConfig judges the range
}


# -- formats --------------------------------------------------------------------

_Reader = Callable[[str, pafs.FileSystem, str], Iterator[_Record]]


def _reader_for(uri: str) -> _Reader:
    extension = posixpath.splitext(uri)[1].lower()
    try:
        return _READERS[extension]
    except KeyError:
        raise ManifestError(f"manifest {uri} has an unknown extension {extension!r}: "
                            f"use one of {', '.join(_READERS)}") from None


def _records(uri: str, reader: _Reader, fs: pafs.FileSystem, path: str) -> Iterator[_Record]:
    """The reader's records; a file that cannot be read or decoded is a ManifestError."""
    try:
        yield from reader(uri, fs, path)
    except (OSError, UnicodeDecodeError, csv.Error, pa.ArrowException) as exc:
        raise ManifestError(f"manifest {uri} could not be read: {exc}") from exc


def _check_columns(uri: str, names: list[str]) -> None:
    # A file with neither column is not a manifest (or has no header line);
    # a missing one of the two is the rows' problem, reported per row.
    if "content" not in names and "style" not in names:
        raise ManifestError(f"manifest {uri} has neither a 'content' nor a 'style' column "
                            f"(columns: {', '.join(map(repr, names)) or 'none'})")


def _open_text(fs: pafs.FileSystem, path: str) -> io.TextIOWrapper:
    stream = fs.open_input_stream(path, compression=None, buffer_size=_READ_BUFFER_BYTES)
    # utf-8-sig: spreadsheet programs often start CSV files with a byte-order mark.
    return io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")


def _csv_records(uri: str, fs: pafs.FileSystem, path: str) -> Iterator[_Record]:
    """CSV rows as dicts of strings; blank lines are skipped and not counted."""
    with _open_text(fs, path) as text:
        reader = csv.DictReader(text)
        columns = reader.fieldnames or []
        _check_columns(uri, columns)
        for record in reader:
            if None in record:  # csv.DictReader's key for cells beyond the header
                yield _BadRecord(f"has more cells than the header's {len(columns)} columns")
            else:
                yield record


def _jsonl_records(uri: str, fs: pafs.FileSystem, path: str) -> Iterator[_Record]:
    """One JSON object per line; blank lines are skipped and not counted."""
    with _open_text(fs, path) as text:
        for line in text:
            if line.strip():
                yield _json_record(line)


def _json_record(line: str) -> _Record:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        return _BadRecord(f"is not valid JSON ({exc.msg} at character {exc.pos + 1})")
    if not isinstance(value, dict):
        return _BadRecord(f"is a JSON {type(value).__name__}, not an object")
    return value


def _parquet_records(uri: str, fs: pafs.FileSystem, path: str) -> Iterator[_Record]:
    """Parquet rows as dicts of Python values, read a batch at a time."""
    with fs.open_input_file(path) as source:
        parquet = pq.ParquetFile(source)
        _check_columns(uri, parquet.schema_arrow.names)
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            yield from batch.to_pylist()


_READERS: dict[str, _Reader] = {
    ".csv": _csv_records,
    ".jsonl": _jsonl_records,
    ".ndjson": _jsonl_records,
    ".parquet": _parquet_records,
}


# -- duplicate detection ------------------------------------------------------------

class _FirstRows:
    """The row at which each pair_id first appeared, kept as 64-bit digests.

    A linear-probing hash table over two flat arrays, 12 bytes a slot and a
    quarter to a half of the slots full: 24 to 48 bytes a pair_id where a dict
    of ints takes ~120, so the one part of reading that grows with the
    manifest stays small. Two of n ids share a digest with probability about
    n² / 2⁶⁵.
    """

    def __init__(self, slots: int = 1024) -> None:
        self._keys = array("Q", [0]) * slots  # 0 marks an empty slot
        self._rows = array("I", [0]) * slots
        self._count = 0

    def first_row(self, pair_id: str, row: int) -> int:
        """The row that first used ``pair_id``, recording ``row`` if none did."""
        digest = hashlib.blake2b(pair_id.encode(), digest_size=8).digest()
        key = int.from_bytes(digest, "little") or 1  # 0 is the empty-slot mark
        slot = self._slot(key)
        if self._keys[slot] == key:
            return self._rows[slot]
        self._keys[slot], self._rows[slot] = key, row
        self._count += 1
        if 2 * self._count > len(self._keys):
            self._grow()
        return row

    def _slot(self, key: int) -> int:
        """The slot holding ``key``, or the empty slot where it belongs."""
        keys = self._keys
        mask = len(keys) - 1
        slot = key & mask
        while (found := keys[slot]) and found != key:
            slot = (slot + 1) & mask
        return slot

    def _grow(self) -> None:
        keys, rows = self._keys, self._rows
        self._keys = array("Q", [0]) * (2 * len(keys))
        self._rows = array("I", [0]) * (2 * len(keys))
        for key, row in zip(keys, rows):
            if key:
                slot = self._slot(key)
                self._keys[slot], self._rows[slot] = key, row
