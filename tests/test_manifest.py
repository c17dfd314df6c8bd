"""Manifests: parsing, per-row validation, whole-manifest errors and streaming."""

from __future__ import annotations

import csv
import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from amnst.config import get_preset
from amnst.batch.manifest import (PAIR_ID_PATTERN, ManifestError, Pair, RowError, _FirstRows,
                            derive_pair_id, read_manifest)

BASE = get_preset("default")
FORMATS = ["csv", "jsonl", "parquet"]


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> str:
    """Write ``rows`` in the format of ``path``'s extension; return its URI."""
    columns = list(dict.fromkeys(name for row in rows for name in row))
    if path.suffix == ".csv":
        with path.open("w", newline="") as stream:
            writer = csv.DictWriter(stream, columns)
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        pq.write_table(pa.Table.from_pylist([{name: row.get(name) for name in columns}
                                             for row in rows]), path)
    return str(path)


def read(uri: str) -> list[Pair | RowError]:
    return list(read_manifest(uri, BASE))


def only_errors(items: list[Pair | RowError]) -> dict[int, str]:
    return {item.row: item.reason for item in items if isinstance(item, RowError)}


@pytest.mark.parametrize("fmt", FORMATS)
def test_good_rows_parse(tmp_path: Path, fmt: str) -> None:
    elsewhere = tmp_path / "elsewhere" / "rain.flac"
    uri = write_manifest(tmp_path / f"m.{fmt}", [
        {"pair_id": "first", "content": "music/song.wav", "style": "rain.wav",
         "content_weight": "2.5", "iterations": "7", "style_layers": "4,8", "init": "random",
         "seed": "3"},
        {"pair_id": None, "content": "song.wav", "style": str(elsewhere),
         "content_weight": None, "iterations": None, "style_layers": None, "init": None,
         "seed": None},
    ])
    first, second = read(uri)

    assert (first.row, first.pair_id) == (1, "first")
    assert first.content == str(tmp_path / "music" / "song.wav")
    assert first.style == str(tmp_path / "rain.wav")
    assert first.overrides == {"content_weight": 2.5, "iterations": 7, "style_layers": (4, 8),
                               "init": "random", "seed": 3}
    assert first.preset == BASE.with_overrides(**first.overrides)
    assert first.preset.nst.style_layers == (4, 8) and first.preset.nst.iterations == 7

    # Null cells are not overrides, and an absent pair_id is derived.
    assert second.row == 2
    assert second.content == str(tmp_path / "song.wav") and second.style == str(elsewhere)
    assert second.overrides == {} and second.preset == BASE
    assert second.pair_id == derive_pair_id(second.content, second.style)
    assert second.pair_id.startswith("song__rain-")


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_bad_row_fails_alone(tmp_path: Path, fmt: str) -> None:
    good = {"content": "a.wav", "style": "b.wav"}
    rows = [
        {**good, "pair_id": "ok1"},
        {**good, "pair_id": "p2", "style": ""},
        {**good, "pair_id": "p3", "content_weight": "heavy"},
        {**good, "pair_id": "p4", "iterations": "many"},
        {**good, "pair_id": "p5", "seed": "x"},
        {**good, "pair_id": "p6", "style_layers": "4,99"},
        {**good, "pair_id": "p7", "style_weight": "-1"},
        {**good, "pair_id": "p8", "init": "noise"},
        {**good, "pair_id": "p9", "content": "http://host/a.wav"},
        {**good, "pair_id": "ok1"},
        {**good, "pair_id": "../../x"},
        {**good, "pair_id": "a/b"},
        {**good, "pair_id": "/abs"},
        {**good, "pair_id": "a" * 129},
        {**good, "pair_id": "a..b"},
        {**good, "pair_id": "ok2", "content_layers": "0,x"},
        {**good, "pair_id": "ok3"},
    ]
    items = read(write_manifest(tmp_path / f"m.{fmt}", rows))

    assert [item.row for item in items] == list(range(1, 18))
    assert [item.pair_id for item in items if isinstance(item, Pair)] == ["ok1", "ok3"]
    errors = only_errors(items)
    expected = {
        2: "missing column 'style'",
        3: "content_weight='heavy' is not a finite number",
        4: "iterations='many' is not an integer",
        5: "seed='x' is not an integer",
        6: "style_layers=(4, 99) holds 99",
        7: "style_weight=-1.0 must be >= 0",
        8: "init='noise' must be one of",
        9: "unsupported URI scheme",
        10: "duplicate pair_id 'ok1' (first at row 1)",
        11: "pair_id '../../x' is not a plain name",
        12: "pair_id 'a/b' is not a plain name",
        13: "pair_id '/abs' is not a plain name",
        14: f"pair_id '{'a' * 129}' is not a plain name",
        15: "pair_id 'a..b' is not a plain name",
        16: "content_layers='0,x' is not a list of layer indices",
    }
    assert sorted(errors) == sorted(expected)
    for row, fragment in expected.items():
        assert errors[row].startswith(f"row {row}: ") and fragment in errors[row], errors[row]
    # The row's own id is reported when it is a valid one, never an unsafe one, nor one that
    # another row took: a failure recorded under it would be taken for that pair's record.
    by_row = {item.row: item for item in items}
    assert by_row[3].pair_id == "p3" and by_row[10].pair_id is None
    assert by_row[11].pair_id is None and by_row[14].pair_id is None


@pytest.mark.parametrize("fmt", FORMATS)
def test_strength_column_applies_to_its_row_and_a_bad_one_fails_alone(tmp_path: Path, fmt: str) -> None:
    good = {"content": "a.wav", "style": "b.wav"}
    # Text in every format, as CSV gives it; typed values are in test_typed_values.
    items = read(write_manifest(tmp_path / f"m.{fmt}", [
        {**good, "pair_id": "half", "strength": "0.5"},
        {**good, "pair_id": "dry", "strength": "0"},
        {**good, "pair_id": "base", "strength": None},
        {**good, "pair_id": "over", "strength": "1.5"},
        {**good, "pair_id": "under", "strength": "-0.1"},
        {**good, "pair_id": "word", "strength": "loud"},
        {**good, "pair_id": "nan", "strength": "nan"},
    ]))
    pairs = {item.pair_id: item for item in items if isinstance(item, Pair)}
    assert list(pairs) == ["half", "dry", "base"]
    assert pairs["half"].overrides == {"strength": 0.5}
    assert pairs["half"].preset == BASE.with_overrides(strength=0.5) and pairs["half"].preset.nst.strength == 0.5
    assert pairs["dry"].preset.nst.strength == 0.0
    assert pairs["base"].overrides == {} and pairs["base"].preset == BASE
    assert only_errors(items) == {
        4: "row 4: strength=1.5 must be in [0, 1]",
        5: "row 5: strength=-0.1 must be in [0, 1]",
        6: "row 6: strength='loud' is not a finite number",
        7: "row 7: strength='nan' is not a finite number",
    }
    # Each bad row keeps its own id, for its failure's record.
    assert [item.pair_id for item in items if isinstance(item, RowError)] == ["over", "under", "word", "nan"]


# Each class of bad override the command line refuses (NSTConfig judges both), as a cell
# in text (every format) and, where JSONL or Parquet can hold it, as a typed value.
BAD_OVERRIDES = [
    ("seed", "-5", "seed=-5 must be an integer in [0, 2**32)"),
    ("seed", "4294967296", "seed=4294967296 must be an integer in [0, 2**32)"),
    ("seed", "1.5", "seed='1.5' is not an integer"),
    ("content_weight", "inf", "content_weight='inf' is not a finite number"),
    ("style_weight", "-inf", "style_weight='-inf' is not a finite number"),
    ("style_weight", "nan", "style_weight='nan' is not a finite number"),
    ("strength", "nan", "strength='nan' is not a finite number"),
    ("iterations", "-1", "iterations=-1 must be >= 0"),
    ("content_layers", "-1", "content_layers=(-1,) holds -1"),
    ("style_layers", "4,20", "style_layers=(4, 20) holds 20"),
    ("style_layers", "4,4", "style_layers=(4, 4) has duplicates"),
    ("init", "sideways", "init='sideways' must be one of"),
    ("content", "audio/", "content: audio/: is a directory"),
    ("style", ".", "style: .: is a directory"),
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_overrides_fail_alone_with_their_reasons(tmp_path: Path, fmt: str) -> None:
    good = {"content": "a.wav", "style": "b.wav"}
    rows = [{**good, "pair_id": "first"}]
    rows += [{**good, "pair_id": f"bad{n}", name: value} for n, (name, value, _) in enumerate(BAD_OVERRIDES)]
    rows.append({**good, "pair_id": "last", "seed": "4294967295", "iterations": "0"})
    items = read(write_manifest(tmp_path / f"m.{fmt}", rows))
    assert [item.pair_id for item in items if isinstance(item, Pair)] == ["first", "last"]
    assert items[-1].preset.nst.seed == 2**32 - 1 and items[-1].preset.nst.iterations == 0
    errors = only_errors(items)
    assert sorted(errors) == list(range(2, len(BAD_OVERRIDES) + 2))
    for row, (name, value, reason) in enumerate(BAD_OVERRIDES, start=2):
        assert errors[row].startswith(f"row {row}: {reason}"), errors[row]
        assert items[row - 1].pair_id == f"bad{row - 2}"  # recorded under its own id


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_bad_typed_overrides(tmp_path: Path, fmt: str) -> None:
    good = {"content": "a.wav", "style": "b.wav"}
    # An empty layer list is only expressible as a typed value: an empty CSV cell means "not given".
    rows = [{"pair_id": f"p{n}", **good, **override} for n, override in enumerate(
        [{"seed": -5}, {"content_weight": float("inf")}, {"strength": float("nan")}, {"style_layers": []},
         {"iterations": 2.5}])]
    reasons = list(only_errors(read(write_manifest(tmp_path / f"m.{fmt}", rows))).values())
    assert reasons == ["row 1: seed=-5 must be an integer in [0, 2**32)",
                       "row 2: content_weight=inf is not a finite number",
                       "row 3: strength=nan is not a finite number",
                       "row 4: style_layers=() and content_layers=() cannot both be empty: the transfer "
                       "reads at least one CNN layer",
                       "row 5: iterations=2.5 is not an integer"]
    # On the seed preset, whose content layers remain, an empty style list is refused as no style.
    [error] = list(read_manifest(write_manifest(tmp_path / f"s.{fmt}", [{**good, "style_layers": []}]),
                                 get_preset("seed")))
    assert "style_layers=() leaves no style loss" in error.reason


def test_a_row_reports_all_its_problems(tmp_path: Path) -> None:
    uri = write_manifest(tmp_path / "m.jsonl", [{"content": "a.wav", "colour": "red",
                                                 "iterations": 1.5}])
    [error] = read(uri)
    assert error.reason == ("row 1: unknown column 'colour'; missing column 'style'; "
                            "iterations=1.5 is not an integer")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_tabular_unknown_or_missing_column_fails_every_row(tmp_path: Path, fmt: str) -> None:
    unknown = write_manifest(tmp_path / f"u.{fmt}", [
        {"content": "a.wav", "style": "b.wav", "colour": ""},
        {"content": "c.wav", "style": "d.wav", "colour": "red"}])
    assert only_errors(read(unknown)) == {1: "row 1: unknown column 'colour'",
                                          2: "row 2: unknown column 'colour'"}
    no_style = write_manifest(tmp_path / f"s.{fmt}", [{"content": "a.wav"}])
    assert only_errors(read(no_style)) == {1: "row 1: missing column 'style'"}


def test_jsonl_bad_lines_fail_alone(tmp_path: Path) -> None:
    path = tmp_path / "m.ndjson"
    path.write_text('{"content": "a.wav", "style": "b.wav", "pair_id": "one"}\n'
                    '\n'  # blank lines are skipped, not counted
                    '["a.wav", "b.wav"]\n'
                    '{"content": "a.wav", \n'
                    '{"content": "a.wav", "style": "b.wav", "colour": "red"}\n'
                    '{"content": "c.wav", "style": "b.wav", "pair_id": "five"}\n')
    items = read(str(path))
    assert [item.pair_id for item in items if isinstance(item, Pair)] == ["one", "five"]
    errors = only_errors(items)
    assert errors[2] == "row 2: is a JSON list, not an object"
    assert errors[3].startswith("row 3: is not valid JSON")
    assert errors[4] == "row 4: unknown column 'colour'"
    assert items[-1].row == 5


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_typed_values(tmp_path: Path, fmt: str) -> None:
    """JSON and Parquet carry numbers and lists: integral floats count as integers."""
    uri = write_manifest(tmp_path / f"m.{fmt}", [
        {"content": "a.wav", "style": "b.wav", "iterations": 50.0, "seed": 2.0,
         "content_layers": [0, 2], "content_weight": 3.0, "strength": 1},
        {"content": "c.wav", "style": "b.wav", "iterations": 50.5, "seed": None,
         "content_layers": [1], "content_weight": None, "strength": None},
    ])
    pair, error = read(uri)
    assert pair.overrides == {"iterations": 50, "seed": 2, "content_layers": (0, 2),
                              "content_weight": 3.0, "strength": 1.0}
    assert isinstance(pair.overrides["iterations"], int)
    assert error.reason == "row 2: iterations=50.5 is not an integer"


def test_csv_cells_are_trimmed_and_extra_cells_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("\ufeffcontent,style,iterations\n a.wav , b.wav ,\n"
                    "a.wav,c.wav,50.0\nc.wav,b.wav,1,extra\n")
    first, second, third = read(str(path))
    assert first.content == str(tmp_path / "a.wav") and first.overrides == {}
    assert second.overrides == {"iterations": 50}
    assert third.reason == "row 3: has more cells than the header's 3 columns"


def test_derived_pair_ids() -> None:
    same_names = {derive_pair_id(f"s3://b/{folder}/a.wav", "/x/b.wav") for folder in "pq"}
    assert len(same_names) == 2
    for content, style in [("s3://b/..weird name!.wav", "/x/.hidden"),
                           ("/x/雨.wav", "/x/" + "y" * 300 + ".wav"),
                           ("/x/-a..b.c.wav", "file:///x/")]:
        pair_id = derive_pair_id(content, style)
        assert PAIR_ID_PATTERN.match(pair_id) and ".." not in pair_id, pair_id
    assert derive_pair_id("/x/雨.wav", "/x/b.wav").startswith("content__b-")


def test_identical_pairs_without_ids_are_duplicates(tmp_path: Path) -> None:
    row = {"content": "a.wav", "style": "b.wav"}
    first, second = read(write_manifest(tmp_path / "m.csv", [row, row]))
    assert isinstance(first, Pair)
    assert second.reason == f"row 2: duplicate pair_id {first.pair_id!r} (first at row 1)"
    assert second.pair_id is None


def test_the_duplicate_table_keeps_every_id_as_it_grows() -> None:
    table = _FirstRows(slots=2)
    ids = [f"id{i}" for i in range(5000)]
    rows = list(range(1, len(ids) + 1))
    assert [table.first_row(pair_id, row) for row, pair_id in zip(rows, ids)] == rows
    assert [table.first_row(pair_id, 0) for pair_id in ids] == rows


def test_unusable_manifests(tmp_path: Path) -> None:
    good = [{"content": "a.wav", "style": "b.wav"}]
    cases = {
        str(tmp_path / "absent.csv"): "absent.csv: no such file",
        write_manifest(tmp_path / "m.tsv", good): "unknown extension '.tsv'",
        str(tmp_path): "is a directory",  # a folder is called one, whatever its name
        "http://host/m.csv": "unsupported URI scheme",
    }
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("content,style\ncaf\xe9.wav,b.wav\n".encode("latin-1"))
    headerless = tmp_path / "headerless.csv"
    headerless.write_text("a.wav,b.wav\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    cases |= {str(corrupt): "could not be read", str(latin1): "could not be read",
              str(headerless): "neither a 'content' nor a 'style' column",
              str(empty): "neither a 'content' nor a 'style' column",
              str(folder): "folder.csv: is a directory"}
    for uri, fragment in cases.items():
        with pytest.raises(ManifestError, match=fragment) as caught:
            read(uri)
        assert uri in str(caught.value)


def test_a_large_manifest_streams(tmp_path: Path) -> None:
    """200,000 rows are read one at a time, in bounded memory."""
    rows = 200_000
    path = tmp_path / "big.csv"
    # Given ids and absolute URIs are the cheapest rows, which matters here:
    # tracemalloc makes every allocation ~10x slower.
    with path.open("w") as stream:
        stream.write("pair_id,content,style\n")
        stream.writelines(f"p{i},/music/{i}.wav,/ambience/{i % 97}.wav\n" for i in range(rows))
        stream.write("p0,/music/1.wav,/ambience/1.wav\n")  # row 1's id again, after the rest

    pairs = read_manifest(str(path), BASE)
    assert isinstance(pairs, Iterator)
    tracemalloc.start()
    try:
        count = 0
        for item in pairs:
            count += 1
            last = item
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == rows + 1
    assert last.reason.endswith("(first at row 1)")
    # Holding the rows would take hundreds of MB; the duplicate check keeps
    # ~24 bytes a row.
    assert peak < 20e6, f"peak {peak / 1e6:.1f} MB"


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_s3_manifest_resolves_under_its_prefix(tmp_path: Path, s3_bucket: str,
                                                   fmt: str) -> None:
    import boto3

    local = write_manifest(tmp_path / f"batch.{fmt}", [
        {"content": "audio/song.wav", "style": "../styles/rain.wav"},
        {"content": "s3://elsewhere/a.wav", "style": "/local/b.wav"},
        {"content": "../../../outside.wav", "style": "b.wav"},
    ])
    key = f"runs/night/batch.{fmt}"
    boto3.session.Session().client("s3").put_object(
        Bucket=s3_bucket.removeprefix("s3://"), Key=key, Body=Path(local).read_bytes())

    first, second, third = read(f"{s3_bucket}/{key}")
    assert first.content == f"{s3_bucket}/runs/night/audio/song.wav"
    assert first.style == f"{s3_bucket}/runs/styles/rain.wav"
    assert (second.content, second.style) == ("s3://elsewhere/a.wav", "/local/b.wav")
    assert third.reason.startswith("row 3: content: ../../../outside.wav: leads outside the bucket")
    with pytest.raises(ManifestError, match=f"absent.{fmt}: no such object"):
        read(f"{s3_bucket}/runs/absent.{fmt}")
